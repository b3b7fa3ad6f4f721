//! SCRAM-SHA-256 (RFC 5802/7677) both ways: checking a client (and SCRAM-SHA-256-PLUS over
//! TLS), and logging into a server with the ClientKey a client proved (pass-through: pgsplit
//! holds a verifier, never the password, yet can log in as that role where the server keeps the
//! same verifier).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::secret::{Secret, Verifier};
use super::{AuthError, expect_password, invalid};
use crate::protocol::{self, FrameReader, ProtocolError};

/// SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over TLS (`end_point`: the tls-server-end-point
/// channel binding, RFC 5929), as PostgreSQL offers them.
pub(super) async fn exchange<R, W>(
    secret: &Secret,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    end_point: Option<&[u8]>,
) -> Result<Option<[u8; 32]>, AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let offer: &[&str] =
        if end_point.is_some() { &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"] } else { &["SCRAM-SHA-256"] };
    writer.write_all(&protocol::auth_sasl(offer)).await.map_err(ProtocolError::from)?;
    // SASLInitialResponse: mechanism, length, client-first-message.
    let f = expect_password(reader).await?;
    let mut body = f.body();
    let mechanism = protocol::read_cstr(&mut body)?;
    let plus = match mechanism {
        "SCRAM-SHA-256" => false,
        "SCRAM-SHA-256-PLUS" if end_point.is_some() => true,
        _ => return Err(invalid("unsupported SASL mechanism")),
    };
    let len = protocol::read_i32(&mut body)?;
    if len < 0 || len as usize != body.len() {
        return Err(invalid("bad SASLInitialResponse length"));
    }
    let client_first = std::str::from_utf8(body).map_err(|_| invalid("SCRAM message is not UTF-8"))?;
    // gs2 header: "p=tls-server-end-point,," with -PLUS; otherwise "n,," (no channel binding)
    // or "y,," (the client could bind but thinks the server cannot: refused when this server
    // offered -PLUS, a downgrade).
    const PLUS_HEADER: &str = "p=tls-server-end-point,,";
    let (header, bare) = if plus {
        (
            PLUS_HEADER,
            client_first.strip_prefix(PLUS_HEADER).ok_or_else(|| invalid("unsupported SCRAM channel binding"))?,
        )
    } else if let Some(b) = client_first.strip_prefix("n,,") {
        ("n,,", b)
    } else if let Some(b) = client_first.strip_prefix("y,,") {
        if end_point.is_some() {
            return Err(invalid("SCRAM channel binding negotiation failed (the server supports it)"));
        }
        ("y,,", b)
    } else {
        return Err(invalid("unsupported SCRAM channel binding"));
    };
    let client_nonce =
        bare.split(',').find_map(|a| a.strip_prefix("r=")).ok_or_else(|| invalid("SCRAM client nonce missing"))?;

    // The keys: from the verifier, or derived from the password with a fresh salt. An md5
    // hash cannot answer SCRAM: the exchange runs and fails, as for a wrong password.
    let (salt, iterations, keys) = match secret {
        Secret::Scram(v) => (v.salt.clone(), v.iterations, Some((v.stored_key.clone(), v.server_key.clone()))),
        Secret::Plain(password) => {
            let salt: [u8; 16] = rand::random();
            let salted = hi(password.as_bytes(), &salt, 4096);
            let stored = Sha256::digest(hmac(&salted, b"Client Key")).to_vec();
            (salt.to_vec(), 4096, Some((stored, hmac(&salted, b"Server Key").to_vec())))
        }
        Secret::Md5(_) => (rand::random::<[u8; 16]>().to_vec(), 4096, None),
    };
    let server_nonce: [u8; 18] = rand::random();
    let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
    let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
    writer.write_all(&protocol::auth_sasl_continue(server_first.as_bytes())).await.map_err(ProtocolError::from)?;

    let f = expect_password(reader).await?;
    let client_final = std::str::from_utf8(f.body()).map_err(|_| invalid("SCRAM message is not UTF-8"))?;
    let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(|| invalid("SCRAM proof missing"))?;
    if !without_proof.split(',').any(|a| a == format!("r={nonce}")) {
        return Ok(None);
    }
    // The channel binding the client saw: the gs2 header, and with -PLUS the certificate hash.
    let mut cbind = header.as_bytes().to_vec();
    if plus {
        cbind.extend_from_slice(end_point.unwrap_or_default());
    }
    if without_proof.split(',').find_map(|a| a.strip_prefix("c=")) != Some(B64.encode(&cbind).as_str()) {
        return Ok(None);
    }
    let proof = B64.decode(proof).map_err(|_| invalid("SCRAM proof is not base64"))?;

    let Some((stored_key, server_key)) = keys else { return Ok(None) };
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Ok(None);
    }
    let recovered: Vec<u8> = proof.iter().zip(client_signature.iter()).map(|(a, b)| a ^ b).collect();
    if !constant_time_eq(&Sha256::digest(&recovered), &stored_key) {
        return Ok(None);
    }
    let server_signature = hmac(&server_key, auth_message.as_bytes());
    let fin = format!("v={}", B64.encode(server_signature));
    writer.write_all(&protocol::auth_sasl_final(fin.as_bytes())).await.map_err(ProtocolError::from)?;
    let mut client_key = [0u8; 32];
    client_key.copy_from_slice(&recovered);
    Ok(Some(client_key))
}

/// The client side of SCRAM-SHA-256 with a ClientKey instead of a password. The server must
/// hold the same verifier (salt and iteration count are checked against it).
pub struct PassThrough<'a> {
    verifier: &'a Verifier,
    client_key: &'a [u8; 32],
    client_nonce: String,
    /// AuthMessage, once the server's first message came.
    auth_message: Option<String>,
}

impl<'a> PassThrough<'a> {
    pub fn new(verifier: &'a Verifier, client_key: &'a [u8; 32]) -> PassThrough<'a> {
        let nonce: [u8; 18] = rand::random();
        PassThrough { verifier, client_key, client_nonce: B64.encode(nonce), auth_message: None }
    }

    /// client-first-message (no channel binding).
    pub fn first(&self) -> String {
        format!("n,,n=,r={}", self.client_nonce)
    }

    /// Takes server-first-message, gives client-final-message.
    pub fn answer(&mut self, server_first: &[u8]) -> Result<String, String> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| "SCRAM message is not UTF-8")?;
        let attr = |k: &str| server_first.split(',').find_map(|a| a.strip_prefix(k));
        let nonce = attr("r=").ok_or("SCRAM nonce missing")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("SCRAM nonce does not extend ours".into());
        }
        let salt = attr("s=").and_then(|s| B64.decode(s).ok()).ok_or("SCRAM salt missing")?;
        let iterations: u32 = attr("i=").and_then(|i| i.parse().ok()).ok_or("SCRAM iteration count missing")?;
        if salt != self.verifier.salt || iterations != self.verifier.iterations {
            return Err("the server keeps another SCRAM verifier for this role than pgsplit has \
                 (was the password changed?)"
                .into());
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("n=,r={},{server_first},{without_proof}", self.client_nonce);
        let stored_key = Sha256::digest(self.client_key);
        let signature = hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = self.client_key.iter().zip(signature.iter()).map(|(a, b)| a ^ b).collect();
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final-message: the server knows the ServerKey, so it is the server.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|_| "SCRAM message is not UTF-8")?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("SCRAM: the server refused: {e}"));
        }
        let v = text.strip_prefix("v=").and_then(|v| B64.decode(v).ok()).ok_or("SCRAM server signature missing")?;
        let auth_message = self.auth_message.as_deref().ok_or("SCRAM out of order")?;
        let want = hmac(&self.verifier.server_key, auth_message.as_bytes());
        if !constant_time_eq(&v, &want) {
            return Err("SCRAM: the server's signature is wrong".into());
        }
        Ok(())
    }
}

pub(super) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block, as SCRAM's Hi().
pub(super) fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs our server side against a client side over an in-memory pipe; the ClientKey the
    /// server recovered on success.
    async fn login(server_secret: Secret, client: Client<'_>) -> Option<[u8; 32]> {
        let (c, s) = tokio::io::duplex(4096);
        let (sr, mut sw) = tokio::io::split(s);
        let srv = tokio::spawn(async move {
            let mut reader = FrameReader::new(sr);
            exchange(&server_secret, &mut reader, &mut sw, None).await.ok().flatten()
        });
        let (cr, mut cw) = tokio::io::split(c);
        let mut reader = FrameReader::new(cr);
        let _sasl = reader.next().await.unwrap();
        let first = |msg: &[u8]| protocol::sasl_initial_response("SCRAM-SHA-256", msg);
        match client {
            Client::Password(pw) => {
                let mut scram = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                cw.write_all(&first(scram.message())).await.unwrap();
                let cont = reader.next().await.unwrap();
                scram.update(&cont.body()[4..]).unwrap();
                cw.write_all(&protocol::sasl_response(scram.message())).await.unwrap();
                let key = srv.await.unwrap();
                if key.is_some() {
                    let fin = reader.next().await.unwrap();
                    scram.finish(&fin.body()[4..]).unwrap();
                }
                key
            }
            Client::Key(v, k) => {
                let mut p = PassThrough::new(v, k);
                cw.write_all(&first(p.first().as_bytes())).await.unwrap();
                let cont = reader.next().await.unwrap();
                let Ok(fin) = p.answer(&cont.body()[4..]) else { return None };
                cw.write_all(&protocol::sasl_response(fin.as_bytes())).await.unwrap();
                let key = srv.await.unwrap();
                if key.is_some() {
                    let fin = reader.next().await.unwrap();
                    p.finish(&fin.body()[4..]).unwrap();
                }
                key
            }
        }
    }

    enum Client<'a> {
        Password(&'a str),
        Key(&'a Verifier, &'a [u8; 32]),
    }

    fn verifier_of(password: &str, salt: [u8; 16]) -> String {
        let salted = hi(password.as_bytes(), &salt, 4096);
        let stored = Sha256::digest(hmac(&salted, b"Client Key"));
        let server = hmac(&salted, b"Server Key");
        format!("SCRAM-SHA-256$4096:{}${}:{}", B64.encode(salt), B64.encode(stored), B64.encode(server))
    }

    #[tokio::test]
    async fn scram_accepts_right_password_and_rejects_wrong() {
        let p = Secret::parse;
        assert!(login(p("secret"), Client::Password("secret")).await.is_some());
        assert!(login(p("secret"), Client::Password("wrong")).await.is_none());
        // A verifier as PostgreSQL stores it (made here from "secret" like PostgreSQL does).
        let verifier = verifier_of("secret", [7; 16]);
        assert!(matches!(p(&verifier), Secret::Scram(Verifier { iterations: 4096, .. })));
        assert!(login(p(&verifier), Client::Password("secret")).await.is_some());
        assert!(login(p(&verifier), Client::Password("wrong")).await.is_none());
        // An md5 hash cannot answer SCRAM.
        assert!(login(p("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), Client::Password("secret")).await.is_none());
    }

    #[tokio::test]
    async fn pass_through_logs_in_with_the_proven_client_key() {
        let text = verifier_of("secret", [7; 16]);
        let Secret::Scram(v) = Secret::parse(&text) else { panic!("not a verifier") };
        let key = login(Secret::parse(&text), Client::Password("secret")).await.unwrap();
        // The ClientKey a client proved logs in where the same verifier is kept...
        assert_eq!(login(Secret::parse(&text), Client::Key(&v, &key)).await, Some(key));
        // ...not with another key...
        let mut other = key;
        other[0] ^= 1;
        assert!(login(Secret::parse(&text), Client::Key(&v, &other)).await.is_none());
        // ...nor where the server keeps another verifier (the password changed: another salt).
        let changed = verifier_of("secret", [8; 16]);
        assert!(login(Secret::parse(&changed), Client::Key(&v, &key)).await.is_none());
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
