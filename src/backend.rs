//! One server connection: opening it (startup, authentication with trust, cleartext, md5 or
//! SCRAM-SHA-256) and what pgsplit tracks about it while it is pooled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::auth::upstream::{Login, LoginError};
use crate::protocol::{self, Frame, FrameReader, ProtocolError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The server could not be reached or broke the protocol: try another server.
    #[error("server {addr} unreachable: {msg}")]
    Unreachable { addr: String, msg: String },
    /// The server answered with an ErrorResponse (bad password, no such database...): the
    /// client should see it as is.
    #[error("server refused the connection")]
    Refused(Frame),
}

/// A server connection's halves: plain TCP or TLS (`tls.server_tls`).
pub type ServerRead = crate::tls::Read<tokio_rustls::client::TlsStream<TcpStream>>;
pub type ServerWrite = crate::tls::Write<tokio_rustls::client::TlsStream<TcpStream>>;

pub struct ServerConn {
    pub node: usize,
    pub addr: String,
    pub reader: FrameReader<ServerRead>,
    pub writer: ServerWrite,
    /// The server's BackendKeyData, for forwarding cancel requests.
    pub pid: i32,
    pub secret: i32,
    /// ParameterStatus values as last reported by the server.
    pub params: Vec<(String, String)>,
    /// Prepared statements (pgsplit's names) that exist on this connection.
    pub prepared: HashSet<String>,
    /// Hash of the statement in this connection's unnamed slot, if known.
    pub unnamed: Option<u64>,
    /// Hash of the session settings applied here (0 = server defaults).
    pub settings: u64,
    /// A client changed the role or session authorization here: RESET ALL does not undo
    /// that reliably, so the connection is closed rather than pooled.
    pub identity_changed: bool,
    pub last_used: Instant,
    /// The shard (`runtime.rs`) whose reactor watches this socket.
    pub shard: usize,
}

pub struct ConnectParams<'a> {
    pub node: usize,
    pub addr: &'a str,
    pub user: &'a str,
    pub database: &'a str,
    /// How pgsplit proves itself for `user`.
    pub auth: &'a crate::auth::ServerAuth,
    pub timeout: Duration,
    /// TLS to the server (tls.server_tls), None: plaintext.
    pub tls: Option<std::sync::Arc<crate::tls::upstream::Upstream>>,
}

impl ServerConn {
    pub async fn connect(p: ConnectParams<'_>) -> Result<ServerConn, BackendError> {
        let unreachable = |msg: String| BackendError::Unreachable { addr: p.addr.to_string(), msg };
        match tokio::time::timeout(p.timeout, Self::connect_inner(&p)).await {
            Ok(r) => r,
            Err(_) => Err(unreachable(format!("no answer within {} ms", p.timeout.as_millis()))),
        }
    }

    async fn connect_inner(p: &ConnectParams<'_>) -> Result<ServerConn, BackendError> {
        let unreachable = |msg: String| BackendError::Unreachable { addr: p.addr.to_string(), msg };
        let stream = TcpStream::connect(p.addr).await.map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        // A server behind a link that goes silent (no RST, no FIN) must not hang anyone:
        // keepalives probe an idle connection, and unacknowledged data fails it after the
        // user timeout.
        let sock = socket2::SockRef::from(&stream);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(5))
            .with_interval(Duration::from_secs(2))
            .with_retries(3);
        let _ = sock.set_tcp_keepalive(&keepalive);
        #[cfg(target_os = "linux")]
        let _ = sock.set_tcp_user_timeout(Some(Duration::from_secs(10)));
        let mut verified = false;
        let (r, mut w) = match &p.tls {
            None => crate::tls::plain(stream),
            Some(up) => {
                let host = p.addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(p.addr);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                match crate::tls::upstream::negotiate(stream, host, up).await.map_err(|e| unreachable(e.to_string()))? {
                    crate::tls::upstream::Upstreamed::Plain(s) => crate::tls::plain(s),
                    crate::tls::upstream::Upstreamed::Tls(s) => {
                        verified = up.mode == crate::tls::upstream::ServerTlsMode::VerifyFull;
                        crate::tls::secured(*s)
                    }
                }
            }
        };
        let mut reader = FrameReader::new(r);
        let startup = protocol::startup_message(&[("user", p.user), ("database", p.database)]);
        w.write_all(&startup).await.map_err(|e| unreachable(e.to_string()))?;
        let mut login = Login::new(p.user, p.auth).verified(verified);
        let mut conn_params = Vec::new();
        let (mut pid, mut secret) = (0, 0);
        loop {
            let f = reader.next().await.map_err(|e| unreachable(e.to_string()))?;
            match f.tag() {
                b'R' => {
                    let mut body = f.body();
                    let code = protocol::read_i32(&mut body).map_err(|e| unreachable(e.to_string()))?;
                    let reply = login.answer(code, body).map_err(|e| match e {
                        LoginError::Cannot(msg) => BackendError::Refused(Frame {
                            bytes: protocol::fatal("28P01", &format!("{}: {msg}", p.addr)),
                        }),
                        LoginError::Protocol(msg) => unreachable(msg),
                    })?;
                    if let Some(reply) = reply {
                        w.write_all(&reply).await.map_err(|e| unreachable(e.to_string()))?;
                    }
                }
                b'S' => {
                    if let Some(kv) = parse_parameter_status(&f) {
                        conn_params.push(kv);
                    }
                }
                b'K' => {
                    let mut body = f.body();
                    pid = protocol::read_i32(&mut body).unwrap_or(0);
                    secret = protocol::read_i32(&mut body).unwrap_or(0);
                }
                b'E' => return Err(BackendError::Refused(f)),
                b'Z' => break,
                _ => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do
            }
        }
        let now = Instant::now();
        Ok(ServerConn {
            node: p.node,
            addr: p.addr.to_string(),
            reader,
            writer: w,
            pid,
            secret,
            params: conn_params,
            prepared: HashSet::new(),
            unnamed: None,
            settings: 0,
            identity_changed: false,
            last_used: now,
            shard: crate::runtime::current(),
        })
    }

    /// Records a ParameterStatus the server sent.
    pub fn note_parameter(&mut self, f: &Frame) {
        if let Some((k, v)) = parse_parameter_status(f) {
            match self.params.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => self.params.push((k, v)),
            }
        }
    }

    /// An idle pooled connection that has something to read (a FATAL on server shutdown) or
    /// has reached EOF is dead; one with nothing to read is presumed alive.
    pub fn is_stale(&mut self) -> bool {
        self.reader.buffered() > 0 || self.reader.get_mut().has_news()
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Runs a simple query to completion, discarding its results. Returns the first
    /// ErrorResponse, if any. ParameterStatus messages are recorded.
    pub async fn run_silently(&mut self, sql: &str) -> Result<Option<Frame>, ProtocolError> {
        self.run_silently_each(&[sql]).await
    }

    /// Runs simple queries one after another, each in its own implicit transaction, sent in
    /// one write (no round trip between them). Returns the first ErrorResponse, if any.
    pub async fn run_silently_each(&mut self, sqls: &[&str]) -> Result<Option<Frame>, ProtocolError> {
        let mut buf = bytes::BytesMut::new();
        for sql in sqls {
            buf.extend_from_slice(&protocol::simple_query(sql));
        }
        self.send(&buf).await?;
        let mut error = None;
        let mut pending = sqls.len();
        loop {
            let f = self.reader.next().await?;
            match f.tag() {
                b'Z' => {
                    pending -= 1;
                    if pending == 0 {
                        return Ok(error);
                    }
                }
                b'E' if error.is_none() => error = Some(f),
                b'S' => self.note_parameter(&f),
                _ => {}
            }
        }
    }

    pub async fn terminate(mut self) {
        let _ = self.writer.write_all(&protocol::terminate()).await;
    }
}

pub fn parse_parameter_status(f: &Frame) -> Option<(String, String)> {
    let mut body = f.body();
    let k = protocol::read_cstr(&mut body).ok()?;
    let v = protocol::read_cstr(&mut body).ok()?;
    Some((k.to_string(), v.to_string()))
}
