//! A client's first moments: the startup packet (SSL and GSS requests declined, cancel
//! requests forwarded), the limits on connections, and authentication, all within
//! `limits.client_login_timeout_ms`: a socket that says nothing, or too slowly, is closed, so
//! thousands of silent sockets cost a bounded amount.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use super::End;
use crate::Shared;
use crate::auth::{self, AuthError};
use crate::protocol::{self, FrameReader, ProtocolError, Startup};

/// A client that logged in.
pub(super) struct Accepted {
    pub user: String,
    pub database: String,
    pub startup: Startup,
    pub reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

/// Counts a client against `limits.max_client_conn` while it lives.
pub(super) struct Admitted(pub Arc<Shared>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.client_count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a client through startup and authentication. None: it was answered and is done
/// (cancel request, refused, timed out).
pub(super) async fn accept(shared: &Arc<Shared>, stream: TcpStream) -> Result<Option<Accepted>, End> {
    let config = shared.config.load_full();
    let timeout = Duration::from_millis(config.limits.client_login_timeout_ms);
    let ip = stream.peer_addr().map(|a| a.ip()).ok();
    let (r, mut w) = stream.into_split();
    match tokio::time::timeout(timeout, handshake(shared, r, &mut w, ip)).await {
        Ok(Ok(Some((user, database, startup, reader)))) => Ok(Some(Accepted { user, database, startup, reader, w })),
        Ok(Ok(None)) => Ok(None),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            shared.metrics.login_timeouts.inc();
            let msg = "pgsplit: the client did not log in within limits.client_login_timeout_ms";
            let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(&protocol::fatal("08006", msg))).await;
            Ok(None)
        }
    }
}

type Handshake = (String, String, Startup, FrameReader<tokio::net::tcp::OwnedReadHalf>);

async fn handshake(
    shared: &Arc<Shared>,
    mut r: tokio::net::tcp::OwnedReadHalf,
    w: &mut OwnedWriteHalf,
    ip: Option<std::net::IpAddr>,
) -> Result<Option<Handshake>, End> {
    let startup = loop {
        let body = protocol::read_startup(&mut r).await?;
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match code {
            protocol::SSL_REQUEST | protocol::GSSENC_REQUEST => {
                w.write_all(b"N").await.map_err(ProtocolError::from)?;
            }
            protocol::CANCEL_REQUEST if body.len() == 12 => {
                let pid = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
                let secret = i32::from_be_bytes([body[8], body[9], body[10], body[11]]);
                shared.cancels.cancel(pid, secret).await;
                return Ok(None);
            }
            v if v >> 16 == 3 => break protocol::parse_startup_params(&body[4..])?,
            _ => {
                let _ = w.write_all(&protocol::fatal("0A000", "unsupported frontend protocol")).await;
                return Ok(None);
            }
        }
    };
    let Some(user) = startup.get("user").map(str::to_string) else {
        let _ = w.write_all(&protocol::fatal("28000", "no PostgreSQL user name specified in startup packet")).await;
        return Ok(None);
    };
    if startup.get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        let _ = w.write_all(&protocol::fatal("08P01", "pgsplit does not proxy replication connections")).await;
        return Ok(None);
    }
    let database = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();
    let config = shared.config.load_full();
    if shared.client_count.load(Ordering::Relaxed) > config.limits.max_client_conn {
        shared.metrics.error_sent("53300");
        let _ =
            w.write_all(&protocol::fatal("53300", "sorry, too many clients already (limits.max_client_conn)")).await;
        return Ok(None);
    }
    let mut reader = FrameReader::new(r).with_max(config.limits.max_message_size);
    if config.auth != crate::config::AuthMethod::Trust
        && let Some(delay) = ip.and_then(|ip| shared.auth_failures.delay(ip))
    {
        // Repeated failures from this address: each further attempt waits first.
        tokio::time::sleep(delay).await;
    }
    match auth::authenticate(&config, &user, &mut reader, w).await {
        Ok(()) => {}
        Err(AuthError::Failed(u)) => {
            if let Some(ip) = ip {
                shared.auth_failures.failed(ip);
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
    Ok(Some((user, database, startup, reader)))
}

/// Authentication failures by source address: after `FREE` failures within `WINDOW`, each
/// further attempt from that address waits a second more (up to `MAX_DELAY`) before it is
/// answered, so guessing passwords is slow while others are not affected.
#[derive(Default)]
pub struct AuthFailures {
    by_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u32, std::time::Instant)>>,
}

const FREE: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
const MAX_DELAY: Duration = Duration::from_secs(10);

impl AuthFailures {
    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            m.retain(|_, (_, t)| t.elapsed() < WINDOW);
        }
        let e = m.entry(ip).or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() > WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
    }

    pub fn delay(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        let (n, since) = m.get(&ip)?;
        if since.elapsed() > WINDOW || *n < FREE {
            return None;
        }
        Some(Duration::from_secs(u64::from(n - FREE + 1)).min(MAX_DELAY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_an_address_down() {
        let f = AuthFailures::default();
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let other: std::net::IpAddr = [10, 0, 0, 2].into();
        for _ in 0..FREE - 1 {
            f.failed(ip);
        }
        assert_eq!(f.delay(ip), None);
        f.failed(ip);
        assert_eq!(f.delay(ip), Some(Duration::from_secs(1)));
        for _ in 0..20 {
            f.failed(ip);
        }
        assert_eq!(f.delay(ip), Some(MAX_DELAY));
        assert_eq!(f.delay(other), None);
    }
}
