//! TLS to the servers (`tls.server_tls`): for the connections that carry client traffic
//! (backend.rs) and for pgsplit's own (monitor, health checks, failover: through
//! tokio-postgres, adapted here). As libpq's sslmode: `prefer` tries TLS and goes on in
//! plaintext if the server declines; `require` insists on TLS without checking the certificate;
//! `verify-full` checks it against `tls.server_ca` and the server's host name or address.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

pub use crate::config::tls::ServerTlsMode;

use super::TlsConfig;

pub struct Upstream {
    pub connector: TlsConnector,
    pub mode: ServerTlsMode,
}

type Key = (ServerTlsMode, String, Option<std::time::SystemTime>);

/// The last connector built, by settings (and the CA file's modification time, so that a
/// reload after the CA file changed reads it again).
static CACHE: Mutex<Option<(Key, Arc<Upstream>)>> = Mutex::new(None);

/// The connector for `tls.server_tls`; None when it is "disable".
pub fn connector(cfg: &TlsConfig) -> Result<Option<Arc<Upstream>>, String> {
    if cfg.server_tls == ServerTlsMode::Disable {
        return Ok(None);
    }
    let mtime = std::fs::metadata(&cfg.server_ca).and_then(|m| m.modified()).ok();
    let key = (cfg.server_tls, cfg.server_ca.clone(), mtime);
    if let Some((k, up)) = &*CACHE.lock().unwrap_or_else(|p| p.into_inner())
        && *k == key
    {
        return Ok(Some(up.clone()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if cfg.server_tls == ServerTlsMode::VerifyFull {
        if cfg.server_ca.is_empty() {
            return Err("tls.server_tls = \"verify-full\" needs tls.server_ca (the servers' CA, PEM)".into());
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cfg.server_ca)
            .map_err(|e| format!("tls.server_ca {}: {e}", cfg.server_ca))?
        {
            let c = c.map_err(|e| format!("tls.server_ca {}: {e}", cfg.server_ca))?;
            roots.add(c).map_err(|e| format!("tls.server_ca {}: {e}", cfg.server_ca))?;
        }
        if roots.is_empty() {
            return Err(format!("tls.server_ca {}: no certificate in it", cfg.server_ca));
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        // prefer / require: encrypted, the certificate not checked (as libpq's sslmode).
        builder.dangerous().with_custom_certificate_verifier(Arc::new(Unchecked(provider))).with_no_client_auth()
    };
    let up = Arc::new(Upstream { connector: TlsConnector::from(Arc::new(config)), mode: cfg.server_tls });
    *CACHE.lock().unwrap_or_else(|p| p.into_inner()) = Some((key, up.clone()));
    Ok(Some(up))
}

/// A server connection after the SSLRequest.
pub enum Upstreamed {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// SSLRequest, then the TLS handshake if the server accepts ('S'); plaintext if it declines
/// ('N') and the mode is prefer.
pub async fn negotiate(mut stream: TcpStream, host: &str, up: &Upstream) -> io::Result<Upstreamed> {
    stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    match stream.read_u8().await? {
        b'S' => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host}: {e}")))?;
            let s = up.connector.connect(name, stream).await?;
            Ok(Upstreamed::Tls(Box::new(s)))
        }
        b'N' if up.mode == ServerTlsMode::Prefer => Ok(Upstreamed::Plain(stream)),
        b'N' => Err(io::Error::new(io::ErrorKind::PermissionDenied, "the server does not accept TLS (tls.server_tls)")),
        other => {
            Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer to SSLRequest: {other:#x}")))
        }
    }
}

/// Accepts any certificate (prefer / require), still checking the handshake's signatures.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// tokio-postgres's TLS hook on the same connector (pgsplit's own SQL connections).
#[derive(Clone)]
pub struct PgTls(pub Option<Arc<Upstream>>);

impl PgTls {
    /// The connector for one server.
    pub fn connect_to(&self, domain: &str) -> PgTlsConnect {
        PgTlsConnect { up: self.0.clone(), domain: domain.to_string() }
    }

    pub fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        match self.0.as_ref().map(|u| u.mode) {
            None | Some(ServerTlsMode::Disable) => tokio_postgres::config::SslMode::Disable,
            Some(ServerTlsMode::Prefer) => tokio_postgres::config::SslMode::Prefer,
            Some(_) => tokio_postgres::config::SslMode::Require,
        }
    }
}

pub struct PgTlsConnect {
    up: Option<Arc<Upstream>>,
    domain: String,
}

/// The TLS stream, and the watch for a cleartext password request inside it (unless the
/// certificate was verified).
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>, crate::auth::cleartext::Watch);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::MakeTlsConnect<S> for PgTls {
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, io::Error> {
        Ok(self.connect_to(domain))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect {
    type Stream = PgTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let up = self.up.ok_or_else(|| io::Error::other("TLS is disabled (tls.server_tls)"))?;
            let name = ServerName::try_from(self.domain.clone()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("server name {}: {e}", self.domain))
            })?;
            let verified = up.mode == ServerTlsMode::VerifyFull;
            Ok(PgTlsStream(up.connector.connect(name, stream).await?, crate::auth::cleartext::Watch::tls(verified)))
        })
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.1.see(&buf.filled()[before..])?;
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PgTlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        tokio_postgres::tls::ChannelBinding::none()
    }
}
