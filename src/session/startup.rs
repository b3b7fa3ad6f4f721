//! A client's first moments: the startup packet (TLS when asked for and configured, GSS
//! requests declined, cancel requests forwarded), the limits on connections, and authentication, all within
//! `limits.client_login_timeout_ms`: a socket that says nothing, or too slowly, is closed, so
//! thousands of silent sockets cost a bounded amount.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::End;
use crate::Shared;
use crate::auth::{self, AuthError};
use crate::config::AuthMethod;
use crate::protocol::frontend::FirstPacket;
use crate::protocol::{self, FrameReader, ProtocolError, Startup};
use crate::tls::{ClientRead, ClientWrite};

/// A client that logged in.
pub(super) struct Accepted {
    pub user: String,
    pub database: String,
    pub startup: Startup,
    pub reader: FrameReader<ClientRead>,
    pub w: ClientWrite,
}

/// Takes a client through startup and authentication. None: it was answered and is done
/// (cancel request, refused, timed out).
pub(super) async fn accept(
    shared: &Arc<Shared>,
    stream: TcpStream,
    ip: Option<std::net::IpAddr>,
) -> Result<Option<Accepted>, End> {
    let config = shared.config.load_full();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(config.limits.client_login_timeout_ms);
    let timed_out = || {
        shared.metrics.login_timeouts.inc();
        "pgsplit: the client did not log in within limits.client_login_timeout_ms"
    };
    // The packets before the StartupMessage, and TLS, on the whole stream (held by the
    // future: on a timeout it is closed only after the timeout is counted).
    let mut negotiating = Box::pin(negotiate(shared, stream));
    let (body, r, mut w, end_point, after) = match tokio::time::timeout_at(deadline, &mut negotiating).await {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            timed_out();
            drop(negotiating);
            return Ok(None);
        }
    };
    drop(negotiating);
    match tokio::time::timeout_at(deadline, Box::pin(handshake(shared, body, (r, after), &mut w, ip, end_point))).await
    {
        Ok(Ok(Some((user, database, startup, reader)))) => Ok(Some(Accepted { user, database, startup, reader, w })),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let msg = timed_out();
            let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&protocol::fatal("08006", msg))).await;
            Ok(None)
        }
    }
}

/// The StartupMessage body, the connection's halves, and the TLS channel binding if on TLS.
/// The bytes after the StartupMessage already read (plaintext only) come last.
type Negotiated = (Bytes, ClientRead, ClientWrite, Option<Arc<[u8]>>, BytesMut);

/// SSLRequest (answered 'S' and a TLS handshake when a certificate is configured, else 'N'),
/// GSSENCRequest ('N'), CancelRequest (forwarded), direct TLS (PostgreSQL 17: a TLS ClientHello
/// first, ALPN "postgresql"), up to the StartupMessage. Packets are read with whole reads into
/// a buffer (one `recv` per packet, not one for the length and one for the body), and what
/// follows the StartupMessage goes on to the session's reader. Nothing is read ahead of a
/// handshake: direct TLS is recognised by a peek, and bytes after an SSLRequest that is
/// answered 'S' are refused as PostgreSQL refuses them (CVE-2021-23214), never taken as
/// protocol or fed to the handshake.
async fn negotiate(shared: &Arc<Shared>, mut stream: TcpStream) -> Result<Option<Negotiated>, End> {
    let tls = shared.tls.load_full();
    if let Some(t) = &tls {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.map_err(ProtocolError::from)? == 0 {
            return Err(ProtocolError::Closed.into());
        }
        if first[0] == 0x16 {
            // A TLS record (handshake) where a length would be: direct TLS negotiation.
            let s = t.acceptor.accept(stream).await.map_err(ProtocolError::from)?;
            if s.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN) {
                // PostgreSQL requires the ALPN for direct TLS (it proves the client means it).
                return Ok(None);
            }
            return in_tls(shared, s, t).await;
        }
    }
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        let body = loop {
            if buf.first() == Some(&0x16) {
                // A TLS ClientHello where no handshake can follow (none configured, or not first).
                return Ok(None);
            }
            if let Some(body) = protocol::take_startup(&mut buf)? {
                break body;
            }
            if stream.read_buf(&mut buf).await.map_err(ProtocolError::from)? == 0 {
                return Err(ProtocolError::Closed.into());
            }
        };
        match FirstPacket::read(&body)? {
            FirstPacket::SslRequest => match &tls {
                Some(t) => {
                    if !buf.is_empty() {
                        let msg = "received unencrypted data after SSL request";
                        let _ = stream.write_all(&protocol::fatal("08P01", msg)).await;
                        return Ok(None);
                    }
                    stream.write_all(&[protocol::SSL_ACCEPT]).await.map_err(ProtocolError::from)?;
                    let s = t.acceptor.accept(stream).await.map_err(ProtocolError::from)?;
                    return in_tls(shared, s, t).await;
                }
                None => stream.write_all(&[protocol::SSL_REFUSE]).await.map_err(ProtocolError::from)?,
            },
            FirstPacket::GssEncRequest => {
                stream.write_all(&[protocol::GSSENC_REFUSE]).await.map_err(ProtocolError::from)?
            }
            FirstPacket::Cancel { pid, secret } => {
                cancel(shared, stream.peer_addr().ok().map(|a| a.ip()), pid, secret).await;
                return Ok(None);
            }
            FirstPacket::Startup { .. } => {
                if tls.as_ref().is_some_and(|t| t.mode == crate::tls::ClientTlsMode::Require) {
                    let msg =
                        "pgsplit accepts only TLS connections (tls.client_tls = \"require\"): use sslmode=require";
                    let _ = stream.write_all(&protocol::fatal("28000", msg)).await;
                    return Ok(None);
                }
                let (r, w) = crate::tls::plain(stream);
                return Ok(Some((body, r, w, None, buf)));
            }
        }
    }
}

/// After the TLS handshake: the StartupMessage (or a CancelRequest) inside TLS.
async fn in_tls(
    shared: &Arc<Shared>,
    mut s: tokio_rustls::server::TlsStream<TcpStream>,
    t: &crate::tls::ServerTls,
) -> Result<Option<Negotiated>, End> {
    let body = protocol::read_startup(&mut s).await?;
    match FirstPacket::read(&body)? {
        FirstPacket::Cancel { pid, secret } => {
            cancel(shared, s.get_ref().0.peer_addr().ok().map(|a| a.ip()), pid, secret).await;
            return Ok(None);
        }
        FirstPacket::SslRequest | FirstPacket::GssEncRequest => {
            let _ = s.write_all(&protocol::fatal("08P01", "SSLRequest inside TLS")).await;
            return Ok(None);
        }
        FirstPacket::Startup { .. } => {}
    }
    let end_point = t.end_point.clone();
    let (r, w) = crate::tls::secured(s);
    Ok(Some((body, r, w, Some(end_point), BytesMut::new())))
}

async fn cancel(shared: &Arc<Shared>, from: Option<std::net::IpAddr>, pid: i32, secret: i32) {
    let outcome = shared.cancels.cancel(from, pid, secret).await;
    shared.metrics.cancel_request(outcome);
}

type Handshake = (String, String, Startup, FrameReader<ClientRead>);

async fn handshake(
    shared: &Arc<Shared>,
    body: Bytes,
    (r, after): (ClientRead, BytesMut),
    w: &mut ClientWrite,
    ip: Option<std::net::IpAddr>,
    end_point: Option<Arc<[u8]>>,
) -> Result<Option<Handshake>, End> {
    if !FirstPacket::read(&body)?.is_protocol_3() {
        let _ = w.write_all(&protocol::fatal("0A000", "unsupported frontend protocol")).await;
        return Ok(None);
    }
    let startup = protocol::parse_startup(&body)?;
    let Some(user) = startup.get("user").filter(|u| !u.is_empty()).map(str::to_string) else {
        let _ = w.write_all(&protocol::fatal("28000", "no PostgreSQL user name specified in startup packet")).await;
        return Ok(None);
    };
    if startup.get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        let _ = w.write_all(&protocol::fatal("08P01", "pgsplit does not proxy replication connections")).await;
        return Ok(None);
    }
    let database = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();
    let config = shared.config.load_full();
    if shared.clients.connected() > config.limits.max_client_conn {
        shared.metrics.error_sent("53300");
        let _ =
            w.write_all(&protocol::fatal("53300", "sorry, too many clients already (limits.max_client_conn)")).await;
        return Ok(None);
    }
    // Before authentication a client is a stranger: its password and SASL messages are held to
    // PostgreSQL's own bound (64 KiB), whatever limits.max_message_size allows later.
    let mut reader =
        FrameReader::lazy(r).with_max(config.limits.max_message_size.min(AUTH_MESSAGE_LEN)).with_buffered(after);
    let console = database == crate::ops::admin::DATABASE && config.auth == AuthMethod::Trust && !config.admin.trust;
    let method = if console { AuthMethod::ScramSha256 } else { config.auth };
    if method != AuthMethod::Trust
        && let Some(delay) = ip.and_then(|ip| shared.logins.failures.delay(ip))
    {
        // Repeated failures from this address: each further attempt waits first.
        tokio::time::sleep(delay).await;
    }
    let secret = match method {
        AuthMethod::Trust => None,
        _ => match shared.logins.auth_query.client_secret(&user).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(user, "cannot check a client's password: {e}");
                let msg = format!("pgsplit cannot check the password of user \"{user}\" now (auth_query): try again");
                let _ = w.write_all(&protocol::fatal("08006", &msg)).await;
                return Ok(None);
            }
        },
    };
    // The admin console asks for a password even when clients are trusted ([admin] trust
    // lifts that); a user whose password is kept as an md5 hash proves it with md5.
    let method = match (&secret, console) {
        (Some(auth::Secret::Md5(_)), true) => AuthMethod::Md5,
        _ => method,
    };
    match auth::authenticate(method, &user, secret.as_ref(), &mut reader, w, end_point.as_deref()).await {
        Ok(proven) => shared.logins.credentials.proven(&user, secret.as_ref(), proven),
        Err(AuthError::Failed(u)) => {
            if let Some(ip) = ip {
                shared.logins.failures.failed(ip);
            }
            let msg = format!("password authentication failed for user \"{u}\"");
            let _ = w.write_all(&protocol::fatal("28P01", &msg)).await;
            return Ok(None);
        }
        Err(AuthError::Protocol(e)) => {
            let _ = w.write_all(&protocol::fatal("08P01", &e.to_string())).await;
            return Err(e.into());
        }
    }
    reader.set_max(config.limits.max_message_size);
    Ok(Some((user, database, startup, reader)))
}

/// The largest message read before authentication (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH).
const AUTH_MESSAGE_LEN: usize = 65_535;
