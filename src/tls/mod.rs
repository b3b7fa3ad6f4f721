//! TLS for clients, on rustls (through tokio-rustls, the `ring` provider; no OpenSSL):
//! `[tls] cert`, `key`, `client_tls`. The certificate is loaded at start and again at every
//! reload (SIGHUP, RELOAD): new handshakes use the new one, connections open keep theirs.
//!
//! A client's stream is a [`ClientRead`] / [`ClientWrite`] pair, plain TCP halves or the halves
//! of a TLS stream, so that the session's relay is the same either way (`stream.rs`). TLS to
//! the servers (`server_tls`, for client traffic and pgsplit's own connections) is in
//! `upstream.rs`.

pub use crate::config::tls::{ClientTlsMode, TlsConfig};
pub use stream::{Read, Write};

/// A client's connection halves.
pub type ClientRead = Read<tokio_rustls::server::TlsStream<TcpStream>>;
pub type ClientWrite = Write<tokio_rustls::server::TlsStream<TcpStream>>;

/// A plain connection's halves.
pub fn plain<T>(stream: TcpStream) -> (Read<T>, Write<T>) {
    let (r, w) = stream.into_split();
    (Read::Plain(r), Write::Plain(w))
}

/// A TLS connection's halves.
pub fn secured<T: tokio::io::AsyncRead + tokio::io::AsyncWrite>(stream: T) -> (Read<T>, Write<T>) {
    let (r, w) = tokio::io::split(stream);
    (Read::Tls(r), Write::Tls(w))
}

pub mod sql_connect;
pub mod stream;
pub mod upstream;

use std::sync::Arc;

use sha2::Digest;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol of PostgreSQL's direct TLS negotiation (PostgreSQL 17, `sslnegotiation=direct`).
pub const ALPN: &[u8] = b"postgresql";

/// Checks `[tls]` against the files it names: the settings, the certificate and key, the CA.
pub fn check(config: &TlsConfig) -> Result<(), String> {
    config.validate()?;
    if !config.cert.is_empty() {
        load(config)?;
    }
    upstream::connector(config)?;
    Ok(())
}

/// A loaded certificate: the acceptor for handshakes and the channel-binding data.
pub struct ServerTls {
    pub acceptor: TlsAcceptor,
    /// tls-server-end-point (RFC 5929): the hash of the server certificate, for
    /// SCRAM-SHA-256-PLUS.
    pub end_point: Arc<[u8]>,
    pub mode: ClientTlsMode,
}

/// Loads `[tls]`; None when no certificate is configured or TLS is disabled.
pub fn load(config: &TlsConfig) -> Result<Option<ServerTls>, String> {
    if config.cert.is_empty() || config.client_tls == ClientTlsMode::Disable {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert)
        .map_err(|e| format!("tls.cert {}: {e}", config.cert))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.cert {}: {e}", config.cert))?;
    let Some(leaf) = certs.first() else { return Err(format!("tls.cert {}: no certificate in it", config.cert)) };
    let end_point = end_point_hash(leaf);
    let key = PrivateKeyDer::from_pem_file(&config.key).map_err(|e| format!("tls.key {}: {e}", config.key))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.cert / tls.key: {e}"))?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Some(ServerTls { acceptor: TlsAcceptor::from(Arc::new(server)), end_point, mode: config.client_tls }))
}

/// RFC 5929 tls-server-end-point: the certificate hashed with its signature's hash, SHA-256
/// for MD5, SHA-1 and SHA-256 signatures.
fn end_point_hash(cert: &[u8]) -> Arc<[u8]> {
    // The signature algorithm OIDs (DER) of SHA-384 and SHA-512 signatures, RSA and ECDSA.
    const SHA384: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]];
    const SHA512: [&[u8]; 2] =
        [&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d], &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04]];
    // The signatureAlgorithm field follows the certificate body: look near the end.
    let tail = &cert[cert.len().saturating_sub(600)..];
    let has = |oids: &[&[u8]]| oids.iter().any(|o| tail.windows(o.len()).any(|w| w == *o));
    if has(&SHA512) {
        sha2::Sha512::digest(cert).to_vec().into()
    } else if has(&SHA384) {
        sha2::Sha384::digest(cert).to_vec().into()
    } else {
        sha2::Sha256::digest(cert).to_vec().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(TlsConfig::default().validate().is_ok());
        let half = TlsConfig { cert: "/x.pem".into(), ..TlsConfig::default() };
        assert!(half.validate().unwrap_err().contains("together"));
        let req = TlsConfig { client_tls: ClientTlsMode::Require, ..TlsConfig::default() };
        assert!(req.validate().unwrap_err().contains("require"));
        let missing =
            TlsConfig { cert: "/nonexistent.pem".into(), key: "/nonexistent.key".into(), ..Default::default() };
        assert!(check(&missing).unwrap_err().contains("/nonexistent.pem"));
    }

    #[test]
    fn end_point_hash_follows_the_signature() {
        let mut fake = vec![0u8; 100];
        assert_eq!(end_point_hash(&fake).len(), 32);
        fake.extend_from_slice(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(end_point_hash(&fake).len(), 48);
    }
}
