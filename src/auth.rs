//! Client authentication to pgsplit: trust, md5 and SCRAM-SHA-256 (RFC 5802/7677, as
//! PostgreSQL speaks it, without channel binding).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::{AuthMethod, Config};
use crate::protocol::{self, FrameReader, ProtocolError, auth_request};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Runs the configured authentication exchange; on success the caller sends AuthenticationOk.
pub async fn authenticate<R, W>(
    config: &Config,
    user: &str,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    end_point: Option<&[u8]>,
) -> Result<(), AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let password = match (config.auth, config.user(user)) {
        (AuthMethod::Trust, _) => return Ok(()),
        (_, Some(u)) => u.password.clone(),
        // Unknown users still go through the exchange, so the answer does not reveal which
        // user names exist.
        (_, None) => String::new(),
    };
    let known = config.user(user).is_some();
    let secret = Secret::parse(&password);
    let ok = match config.auth {
        AuthMethod::Trust => true,
        AuthMethod::Md5 => md5_exchange(user, &secret, reader, writer).await?,
        AuthMethod::ScramSha256 => scram_exchange(&secret, reader, writer, end_point).await?,
    };
    if ok && known { Ok(()) } else { Err(AuthError::Failed(user.to_string())) }
}

/// What pgsplit knows of a client's password: the password, or a hash as PostgreSQL stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// "md5" + md5(password + user), hex.
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram {
        iterations: u32,
        salt: Vec<u8>,
        stored_key: Vec<u8>,
        server_key: Vec<u8>,
    },
}

impl Secret {
    pub fn parse(s: &str) -> Secret {
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Secret::Md5(s.to_ascii_lowercase());
        }
        let scram = || -> Option<Secret> {
            let rest = s.strip_prefix("SCRAM-SHA-256$")?;
            let (params, keys) = rest.split_once('$')?;
            let (iterations, salt) = params.split_once(':')?;
            let (stored, server) = keys.split_once(':')?;
            Some(Secret::Scram {
                iterations: iterations.parse().ok().filter(|i| *i > 0)?,
                salt: B64.decode(salt).ok()?,
                stored_key: B64.decode(stored).ok()?,
                server_key: B64.decode(server).ok()?,
            })
        };
        scram().unwrap_or_else(|| Secret::Plain(s.to_string()))
    }
}

async fn md5_exchange<R, W>(
    user: &str,
    secret: &Secret,
    reader: &mut FrameReader<R>,
    writer: &mut W,
) -> Result<bool, AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let salt: [u8; 4] = rand::random();
    writer.write_all(&auth_request(5, &salt)).await.map_err(ProtocolError::from)?;
    let f = expect_password(reader).await?;
    let mut body = f.body();
    let given = protocol::read_cstr(&mut body)?;
    let want = match secret {
        Secret::Plain(password) => {
            postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt)
        }
        // The stored hash is what the client hashes again with the salt.
        Secret::Md5(stored) => {
            let mut input = stored.as_bytes()[3..].to_vec();
            input.extend_from_slice(&salt);
            let digest = md5::Md5::digest(&input);
            format!("md5{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
        // A SCRAM verifier cannot check an md5 answer.
        Secret::Scram { .. } => return Ok(false),
    };
    Ok(constant_time_eq(given.as_bytes(), want.as_bytes()))
}

/// SCRAM-SHA-256, and SCRAM-SHA-256-PLUS over TLS (`end_point`: the tls-server-end-point
/// channel binding, RFC 5929), as PostgreSQL offers them.
async fn scram_exchange<R, W>(
    secret: &Secret,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    end_point: Option<&[u8]>,
) -> Result<bool, AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let offer: &[u8] =
        if end_point.is_some() { b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0" } else { b"SCRAM-SHA-256\0\0" };
    writer.write_all(&auth_request(10, offer)).await.map_err(ProtocolError::from)?;
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
        Secret::Scram { iterations, salt, stored_key, server_key } => {
            (salt.clone(), *iterations, Some((stored_key.clone(), server_key.clone())))
        }
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
    writer.write_all(&auth_request(11, server_first.as_bytes())).await.map_err(ProtocolError::from)?;

    let f = expect_password(reader).await?;
    let client_final = std::str::from_utf8(f.body()).map_err(|_| invalid("SCRAM message is not UTF-8"))?;
    let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or_else(|| invalid("SCRAM proof missing"))?;
    if !without_proof.split(',').any(|a| a == format!("r={nonce}")) {
        return Ok(false);
    }
    // The channel binding the client saw: the gs2 header, and with -PLUS the certificate hash.
    let mut cbind = header.as_bytes().to_vec();
    if plus {
        cbind.extend_from_slice(end_point.unwrap_or_default());
    }
    if without_proof.split(',').find_map(|a| a.strip_prefix("c=")) != Some(B64.encode(&cbind).as_str()) {
        return Ok(false);
    }
    let proof = B64.decode(proof).map_err(|_| invalid("SCRAM proof is not base64"))?;

    let Some((stored_key, server_key)) = keys else { return Ok(false) };
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let client_signature = hmac(&stored_key, auth_message.as_bytes());
    if proof.len() != client_signature.len() {
        return Ok(false);
    }
    let recovered: Vec<u8> = proof.iter().zip(client_signature.iter()).map(|(a, b)| a ^ b).collect();
    if !constant_time_eq(&Sha256::digest(&recovered), &stored_key) {
        return Ok(false);
    }
    let server_signature = hmac(&server_key, auth_message.as_bytes());
    let fin = format!("v={}", B64.encode(server_signature));
    writer.write_all(&auth_request(12, fin.as_bytes())).await.map_err(ProtocolError::from)?;
    Ok(true)
}

async fn expect_password<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<protocol::Frame, AuthError> {
    let f = reader.next().await?;
    if f.tag() != b'p' {
        return Err(invalid("expected a password message"));
    }
    Ok(f)
}

fn invalid(msg: &str) -> AuthError {
    AuthError::Protocol(ProtocolError::Invalid(msg.into()))
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block, as SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// AuthenticationOk.
pub fn ok() -> Bytes {
    auth_request(0, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs our server side against postgres-protocol's client side over an in-memory pipe.
    async fn scram_login(server_pw: &'static str, client_pw: &'static str) -> bool {
        let (client, server) = tokio::io::duplex(4096);
        let (sr, mut sw) = tokio::io::split(server);
        let srv = tokio::spawn(async move {
            let mut reader = FrameReader::new(sr);
            scram_exchange(&Secret::parse(server_pw), &mut reader, &mut sw, None).await.unwrap()
        });
        let (cr, mut cw) = tokio::io::split(client);
        let mut reader = FrameReader::new(cr);
        let _sasl = reader.next().await.unwrap();
        let mut scram = ScramSha256::new(client_pw.as_bytes(), ChannelBinding::unsupported());
        let first = protocol::message(b'p', |b| {
            protocol::put_cstr(b, "SCRAM-SHA-256");
            b.put_i32(scram.message().len() as i32);
            b.put_slice(scram.message());
        });
        cw.write_all(&first).await.unwrap();
        let cont = reader.next().await.unwrap();
        scram.update(&cont.body()[4..]).unwrap();
        cw.write_all(&protocol::message(b'p', |b| b.put_slice(scram.message()))).await.unwrap();
        let ok = srv.await.unwrap();
        if ok {
            let fin = reader.next().await.unwrap();
            scram.finish(&fin.body()[4..]).unwrap();
        }
        ok
    }

    #[tokio::test]
    async fn scram_accepts_right_password_and_rejects_wrong() {
        assert!(scram_login("secret", "secret").await);
        assert!(!scram_login("secret", "wrong").await);
        // A verifier as PostgreSQL stores it (made here from "secret" like PostgreSQL does).
        let verifier: &'static str = Box::leak(verifier_of("secret").into_boxed_str());
        assert!(matches!(Secret::parse(verifier), Secret::Scram { iterations: 4096, .. }));
        assert!(scram_login(verifier, "secret").await);
        assert!(!scram_login(verifier, "wrong").await);
        // An md5 hash cannot answer SCRAM.
        assert!(!scram_login("md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "secret").await);
    }

    fn verifier_of(password: &str) -> String {
        let salt = [7u8; 16];
        let salted = hi(password.as_bytes(), &salt, 4096);
        let stored = Sha256::digest(hmac(&salted, b"Client Key"));
        let server = hmac(&salted, b"Server Key");
        format!("SCRAM-SHA-256$4096:{}${}:{}", B64.encode(salt), B64.encode(stored), B64.encode(server))
    }

    #[test]
    fn secrets() {
        assert_eq!(
            Secret::parse("md5ABCDEF0123456789abcdef0123456789"),
            Secret::Md5("md5abcdef0123456789abcdef0123456789".into())
        );
        assert_eq!(Secret::parse("plain"), Secret::Plain("plain".into()));
        assert_eq!(Secret::parse("SCRAM-SHA-256$x"), Secret::Plain("SCRAM-SHA-256$x".into()));
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
