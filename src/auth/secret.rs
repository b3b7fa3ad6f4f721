//! What pgsplit knows of a password: for checking clients (`Secret`), and for logging into the
//! servers (`ServerAuth`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// What pgsplit knows of a client's password: the password, or a hash as PostgreSQL stores it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    /// "md5" + md5(password + user), hex.
    Md5(String),
    /// A SCRAM-SHA-256 verifier.
    Scram(Verifier),
}

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it (`SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`).
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

// Never print a secret (logs at any level must not carry one).
impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(..)",
            Secret::Md5(_) => "Secret::Md5(..)",
            Secret::Scram(_) => "Secret::Scram(..)",
        })
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier(iterations {}, ..)", self.iterations)
    }
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
            Some(Secret::Scram(Verifier {
                iterations: iterations.parse().ok().filter(|i| *i > 0)?,
                salt: B64.decode(salt).ok()?,
                stored_key: B64.decode(stored).ok().filter(|k: &Vec<u8>| k.len() == 32)?,
                server_key: B64.decode(server).ok().filter(|k: &Vec<u8>| k.len() == 32)?,
            }))
        };
        scram().unwrap_or_else(|| Secret::Plain(s.to_string()))
    }

    /// A hash, not the password itself.
    pub fn is_hash(&self) -> bool {
        !matches!(self, Secret::Plain(_))
    }
}

/// How pgsplit proves itself to a server for one role.
#[derive(Clone, Default)]
pub enum ServerAuth {
    /// Nothing to give: only a server that trusts pgsplit lets it in.
    #[default]
    None,
    /// The password (answers cleartext, md5 and SCRAM requests).
    Password(String),
    /// The md5 hash as the server stores it (answers md5 requests: md5(hash + salt)).
    Md5(String),
    /// A SCRAM verifier and the ClientKey a client proved at its login (SCRAM pass-through:
    /// answers SCRAM requests of a server that stores the same verifier).
    Scram { verifier: Verifier, client_key: [u8; 32] },
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ServerAuth::None => "ServerAuth::None",
            ServerAuth::Password(_) => "ServerAuth::Password(..)",
            ServerAuth::Md5(_) => "ServerAuth::Md5(..)",
            ServerAuth::Scram { .. } => "ServerAuth::Scram(..)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        assert_eq!(
            Secret::parse("md5ABCDEF0123456789abcdef0123456789"),
            Secret::Md5("md5abcdef0123456789abcdef0123456789".into())
        );
        assert_eq!(Secret::parse("plain"), Secret::Plain("plain".into()));
        assert_eq!(Secret::parse("SCRAM-SHA-256$x"), Secret::Plain("SCRAM-SHA-256$x".into()));
        // Keys that are not 32 bytes are no verifier.
        assert_eq!(
            Secret::parse("SCRAM-SHA-256$4096:AAAA$AAAA:AAAA"),
            Secret::Plain("SCRAM-SHA-256$4096:AAAA$AAAA:AAAA".into())
        );
        assert!(!format!("{:?}", Secret::parse("hunter2")).contains("hunter2"));
    }
}
