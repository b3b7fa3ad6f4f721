//! How pgsplit's own SQL connections (tokio-postgres: the monitor's, auth_query's, the health
//! checks') reach a server: TLS as `tls.server_tls` says, and no cleartext password unless that
//! TLS verified the certificate (the socket's side of `auth::cleartext`; the TLS side is in
//! `PgTlsStream`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::upstream::PgTls;
use crate::auth::cleartext::Watch;

/// A socket whose incoming bytes are watched until the login is done.
pub struct Watched {
    inner: Result<TcpStream, Option<io::Error>>,
    watch: Watch,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let s = match &mut this.inner {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e.take().unwrap_or_else(|| io::ErrorKind::NotConnected.into()))),
        };
        let before = buf.filled().len();
        let r = Pin::new(s).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.watch.see(&buf.filled()[before..])?;
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e.take().unwrap_or_else(|| io::ErrorKind::NotConnected.into()))),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(_) => Poll::Ready(Ok(())),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(_) => Poll::Ready(Ok(())),
        }
    }
}

/// Connects `pg` (its first host and port) with `tls`, the connection's task spawned. A
/// socket that cannot be opened fails the login as tokio-postgres's own connect would.
pub async fn connect(pg: &tokio_postgres::Config, tls: PgTls) -> Connected {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => String::new(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let timeout = pg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
    let inner = match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(Some(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))),
    };
    let ssl_request = tls.ssl_mode() != tokio_postgres::config::SslMode::Disable;
    let stream = Watched { inner, watch: Watch::socket(ssl_request) };
    let (client, connection) = pg.connect_raw(stream, tls.connect_to(&host)).await?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("pgsplit's own server connection ended: {e}");
        }
    });
    Ok((client, task))
}

type Connected = Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>;

/// deadpool-postgres's connect hook on [`connect`].
pub struct Connector(pub PgTls);

impl deadpool_postgres::Connect for Connector {
    fn connect(&self, pg: &tokio_postgres::Config) -> Pin<Box<dyn Future<Output = Connected> + Send + '_>> {
        let pg = pg.clone();
        let tls = self.0.clone();
        Box::pin(async move { connect(&pg, tls).await })
    }
}
