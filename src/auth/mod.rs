//! Authentication: clients to pgsplit (trust, md5, SCRAM-SHA-256 and -PLUS), pgsplit to the
//! servers (password, md5 hash, SCRAM pass-through), the secrets' types, and what pgsplit's
//! server logins give for a client's role (`credentials`). Nothing here reaches the servers:
//! `[auth_query]` is `cluster::auth_query`.

pub mod cleartext;
pub mod credentials;
pub mod failures;
pub mod scram;
pub mod secret;
pub mod upstream;

pub use credentials::Credentials;
pub use secret::{Secret, ServerAuth, Verifier};

use bytes::Bytes;
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::AuthMethod;
use crate::protocol::{self, FrameReader, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Runs the exchange of `method` against `secret` (None: an unknown user, who still goes
/// through the whole exchange and fails like a wrong password, so the answer does not reveal
/// which user names exist). On success the caller sends AuthenticationOk; what the client
/// proved is returned (a SCRAM ClientKey lets pgsplit log into servers as that role).
pub async fn authenticate<R, W>(
    method: AuthMethod,
    user: &str,
    secret: Option<&Secret>,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    end_point: Option<&[u8]>,
) -> Result<Proven, AuthError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let unknown = Secret::Plain(String::new());
    // An empty password never logs in (PostgreSQL refuses them too): the exchange still runs,
    // so it looks like any wrong password.
    let known = secret.is_some_and(|s| !matches!(s, Secret::Plain(p) if p.is_empty()));
    let s = secret.unwrap_or(&unknown);
    let proven = match method {
        AuthMethod::Trust => return Ok(Proven::default()),
        AuthMethod::Md5 => md5_exchange(user, s, reader, writer).await?.then(Proven::default),
        AuthMethod::ScramSha256 => scram::exchange(s, reader, writer, end_point).await?.map(|client_key| Proven {
            scram: match s {
                Secret::Scram(v) => Some(ServerAuth::Scram { verifier: v.clone(), client_key }),
                _ => None,
            },
        }),
    };
    match proven {
        Some(p) if known => Ok(p),
        _ => Err(AuthError::Failed(user.to_string())),
    }
}

/// What a client proved beyond "it knows the password".
#[derive(Debug, Default)]
pub struct Proven {
    /// With a SCRAM verifier: the verifier and the client's ClientKey (pass-through logins).
    pub scram: Option<ServerAuth>,
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
    writer.write_all(&protocol::auth_md5(salt)).await.map_err(ProtocolError::from)?;
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
        Secret::Scram(_) => return Ok(false),
    };
    Ok(scram::constant_time_eq(given.as_bytes(), want.as_bytes()))
}

pub(super) async fn expect_password<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<protocol::Frame, AuthError> {
    let f = reader.next().await?;
    if f.tag() != b'p' {
        return Err(invalid("expected a password message"));
    }
    Ok(f)
}

pub(super) fn invalid(msg: &str) -> AuthError {
    AuthError::Protocol(ProtocolError::Invalid(msg.into()))
}

/// AuthenticationOk.
pub fn ok() -> Bytes {
    protocol::auth_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user whose configured password is empty cannot log in, even with the empty password.
    #[tokio::test]
    async fn an_empty_password_never_logs_in() {
        let (client, server) = tokio::io::duplex(4096);
        let (sr, mut sw) = tokio::io::split(server);
        let mut reader = FrameReader::new(sr);
        let login = tokio::spawn(async move {
            let empty = Secret::Plain(String::new());
            authenticate(AuthMethod::Md5, "u", Some(&empty), &mut reader, &mut sw, None).await
        });
        let (cr, mut cw) = tokio::io::split(client);
        let mut creader = FrameReader::new(cr);
        let Ok(request) = creader.next().await else { panic!("no authentication request") };
        let salt: [u8; 4] = request.body()[4..8].try_into().unwrap_or([0; 4]);
        let answer = postgres_protocol::authentication::md5_hash(b"u", b"", salt);
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&((4 + answer.len() + 1) as i32).to_be_bytes());
        msg.extend_from_slice(answer.as_bytes());
        msg.push(0);
        let _ = cw.write_all(&msg).await;
        let outcome = login.await.map_err(|e| e.to_string());
        assert!(matches!(outcome, Ok(Err(AuthError::Failed(_)))), "the empty password logged in");
    }
}
