//! pgsplit logging into a server: the answers to its authentication requests (cleartext, md5,
//! SCRAM-SHA-256) from what pgsplit holds for the role (`ServerAuth`).

use bytes::Bytes;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use sha2::Digest;

use super::ServerAuth;
use super::scram::PassThrough;
use crate::protocol;

/// Why pgsplit could not answer a server's authentication request.
#[derive(Debug)]
pub enum LoginError {
    /// pgsplit holds nothing that answers this request (an authentication problem: the client
    /// gets 28P01 with this text).
    Cannot(String),
    /// The server broke the exchange.
    Protocol(String),
}

/// One login's authentication exchange.
pub struct Login<'a> {
    user: &'a str,
    auth: &'a ServerAuth,
    scram: Option<Scram<'a>>,
    /// The connection is TLS with a verified certificate: a cleartext password may go.
    verified: bool,
}

enum Scram<'a> {
    Password(ScramSha256),
    PassThrough(PassThrough<'a>),
}

impl<'a> Login<'a> {
    pub fn new(user: &'a str, auth: &'a ServerAuth) -> Login<'a> {
        Login { user, auth, scram: None, verified: false }
    }

    /// Over TLS whose certificate was verified: a cleartext request may be answered.
    pub fn verified(mut self, verified: bool) -> Login<'a> {
        self.verified = verified;
        self
    }

    /// The answer to an AuthenticationRequest (`code` and the rest of its body); None when
    /// nothing is to be sent (AuthenticationOk, SASLFinal).
    pub fn answer(&mut self, code: i32, body: &[u8]) -> Result<Option<Bytes>, LoginError> {
        let protocol_err = |m: &str| LoginError::Protocol(m.to_string());
        match code {
            0 => Ok(None),
            super::cleartext::CLEARTEXT if !self.verified => Err(LoginError::Cannot(super::cleartext::REFUSED.into())),
            3 => match self.auth {
                ServerAuth::Password(pw) => Ok(Some(protocol::password(pw))),
                _ => Err(self.cannot("a cleartext password")),
            },
            5 => {
                let salt: [u8; 4] = body.try_into().map_err(|_| protocol_err("bad md5 salt"))?;
                let hash = match self.auth {
                    ServerAuth::Password(pw) => {
                        postgres_protocol::authentication::md5_hash(self.user.as_bytes(), pw.as_bytes(), salt)
                    }
                    // The stored hash is what a client hashes again with the salt.
                    ServerAuth::Md5(stored) if stored.len() == 35 => {
                        let mut input = stored.as_bytes()[3..].to_vec();
                        input.extend_from_slice(&salt);
                        let digest = md5::Md5::digest(&input);
                        format!("md5{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
                    }
                    _ => return Err(self.cannot("an md5 password")),
                };
                Ok(Some(protocol::password(&hash)))
            }
            10 => {
                let mechanisms = String::from_utf8_lossy(body);
                if !mechanisms.split('\0').any(|m| m == SCRAM_SHA_256) {
                    return Err(protocol_err(&format!("unsupported SASL mechanisms {mechanisms:?}")));
                }
                let (scram, first) = match self.auth {
                    ServerAuth::Password(pw) => {
                        let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                        let first = s.message().to_vec();
                        (Scram::Password(s), first)
                    }
                    ServerAuth::Scram { verifier, client_key } => {
                        let p = PassThrough::new(verifier, client_key);
                        let first = p.first().into_bytes();
                        (Scram::PassThrough(p), first)
                    }
                    _ => return Err(self.cannot("SCRAM-SHA-256")),
                };
                self.scram = Some(scram);
                Ok(Some(protocol::sasl_initial_response(SCRAM_SHA_256, &first)))
            }
            11 => {
                let reply = match self.scram.as_mut().ok_or_else(|| protocol_err("SASL out of order"))? {
                    Scram::Password(s) => {
                        s.update(body).map_err(|e| protocol_err(&format!("SCRAM: {e}")))?;
                        s.message().to_vec()
                    }
                    Scram::PassThrough(p) => p.answer(body).map_err(|e| self.cannot_because(&e))?.into_bytes(),
                };
                Ok(Some(protocol::sasl_response(&reply)))
            }
            12 => {
                match self.scram.as_mut().ok_or_else(|| protocol_err("SASL out of order"))? {
                    Scram::Password(s) => s.finish(body).map_err(|e| protocol_err(&format!("SCRAM: {e}")))?,
                    Scram::PassThrough(p) => p.finish(body).map_err(|e| protocol_err(&e))?,
                }
                Ok(None)
            }
            other => Err(protocol_err(&format!("unsupported authentication request {other}"))),
        }
    }

    fn cannot(&self, what: &str) -> LoginError {
        let have = match self.auth {
            ServerAuth::None => "no password for this role (set server_password)",
            ServerAuth::Password(_) => "a password",
            ServerAuth::Md5(_) => "only an md5 hash for this role",
            ServerAuth::Scram { .. } => "only a SCRAM verifier for this role",
        };
        LoginError::Cannot(format!("the server asks user \"{}\" for {what} and pgsplit has {have}", self.user))
    }

    fn cannot_because(&self, why: &str) -> LoginError {
        LoginError::Cannot(format!("SCRAM pass-through for user \"{}\": {why}", self.user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_what_it_can() {
        let none = ServerAuth::None;
        assert!(matches!(Login::new("u", &none).answer(3, &[]), Err(LoginError::Cannot(_))));
        let pw = ServerAuth::Password("pw".into());
        assert!(matches!(Login::new("u", &pw).answer(3, &[]), Err(LoginError::Cannot(m)) if m.contains("verified")));
        assert!(Login::new("u", &pw).verified(true).answer(3, &[]).unwrap().is_some());
        assert!(matches!(Login::new("u", &none).answer(0, &[]), Ok(None)));
        let pw = ServerAuth::Password("pw".into());
        let md5 = Login::new("u", &pw).answer(5, &[1, 2, 3, 4]).unwrap().unwrap();
        // The stored hash answers the same as the password it was made from.
        let hash = format!("md5{}", md5::Md5::digest(b"pwu").iter().map(|b| format!("{b:02x}")).collect::<String>());
        let from_hash = Login::new("u", &ServerAuth::Md5(hash)).answer(5, &[1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!(md5, from_hash);
        assert!(matches!(Login::new("u", &pw).answer(5, &[1, 2]), Err(LoginError::Protocol(_))));
        assert!(matches!(Login::new("u", &pw).answer(11, b"r=x"), Err(LoginError::Protocol(_))));
        assert!(matches!(Login::new("u", &pw).answer(10, b"OTHER\0\0"), Err(LoginError::Protocol(_))));
    }
}
