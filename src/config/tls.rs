//! `[tls]`: TLS for clients, and to the servers.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// SSLRequest answered 'N': plaintext only.
    Disable,
    /// TLS when the client asks for it (and a certificate is configured), plaintext otherwise.
    Allow,
    /// Plaintext clients are refused with a FATAL.
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (server certificate first) and PEM private key.
    pub cert: String,
    pub key: String,
    pub client_tls: ClientTlsMode,
    /// TLS to the servers, for client traffic and pgsplit's own connections.
    pub server_tls: ServerTlsMode,
    /// CA certificates (PEM) that server certificates must chain to (verify-full).
    pub server_ca: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: String::new(),
            key: String::new(),
            client_tls: ClientTlsMode::Allow,
            server_tls: ServerTlsMode::Disable,
            server_ca: String::new(),
        }
    }
}

impl TlsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.cert.is_empty() != self.key.is_empty() {
            return Err("tls.cert and tls.key go together".into());
        }
        if self.client_tls == ClientTlsMode::Require && self.cert.is_empty() {
            return Err("tls.client_tls = \"require\" needs tls.cert and tls.key".into());
        }
        Ok(())
    }
}
