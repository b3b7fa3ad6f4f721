//! One client's session: startup and authentication, then a loop that reads client messages
//! and server responses, routes each unit of work (a simple Query, or an extended-protocol
//! batch up to Sync) and relays the answers as raw bytes.
//!
//! State ownership: the session owns everything about its client (settings, prepared
//! statements, pin, transaction status from ReadyForQuery) and, while it holds one, its server
//! connection. Pools own idle connections; the topology is shared read-only.

mod batch;
pub mod causal;
mod client;
mod console;
mod dispatch;
mod encode;
mod extended;
mod hold;
mod lazy;
mod lost;
pub mod observe;
mod placement;
mod relay;
mod reprepare;
mod requests;
mod rerun;
mod startup;
pub use crate::auth::failures::AuthFailures;
mod state;
mod work;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::auth;
use crate::cancel::ServerKey;
use crate::protocol::TxStatus;
use crate::protocol::{self, Frame, ProtocolError};
use crate::sql::RouteMode;

use extended::Prepared;
use placement::AttachError;
use state::Settings;

/// Parameters a replica reports that would make libpq's target_session_attrs=read-write
/// reject pgsplit: never relayed; pgsplit reports the primary's values at login.
const HIDDEN_PARAMETERS: [&str; 2] = ["in_hot_standby", "default_transaction_read_only"];

/// Flush relayed bytes to the client once this much is buffered.
const OUT_FLUSH: usize = 64 * 1024;

/// Client messages queued while the server is busy, at most (then the client waits).
const MAX_PENDING: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client terminated")]
    Terminated,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Fatal(String),
}

/// Something sent to the server whose answer must be matched up: injected messages are
/// answered to pgsplit, not to the client.
#[derive(Debug)]
enum Expect {
    Parse {
        swallow: bool,
        name: String,
        /// The second Parse of pgsplit's duplicate probe: its 42P05 is the client's, under
        /// this name.
        duplicate_of: Option<String>,
    },
    Close {
        swallow: bool,
    },
    /// A Describe: answered by ParameterDescription (statements) and RowDescription or NoData.
    /// For a statement, the answer is remembered to check later re-prepares against.
    Describe {
        statement: Option<Arc<Prepared>>,
    },
    Sync,
}

/// One client's session, in parts that each keep their own invariants: the client side, the
/// server connection held, the session's own state, the work in progress, and the observers.
struct Session {
    shared: Arc<Shared>,
    client: client::ClientSide,
    hold: lazy::Lazy<hold::Hold>,
    state: state::SessionState,
    work: lazy::Lazy<work::Work>,
    /// Metrics handles and the console's view of this client.
    observe: observe::Observe,
    /// Read-your-writes: this client's floor and the commit probe in flight.
    causal: causal::Causal,
    /// Ticks while some server fails its health checks.
    unreachable: tokio::sync::watch::Receiver<u64>,
}

/// A client's task, from its first byte to its end. The socket goes in boxed: an async
/// function keeps room for its arguments (twice) for as long as it runs, and a client may idle
/// for hours.
pub fn serve_client(shared: Arc<Shared>, stream: TcpStream) -> impl Future<Output = ()> + Send {
    serve(shared, Box::new(stream))
}

async fn serve(shared: Arc<Shared>, stream: Box<TcpStream>) {
    let _admitted = shared.clients.admit();
    shared.metrics.client_connections.inc();
    if let Err(e) = run_client(&shared, stream).await {
        tracing::debug!("client session ended: {e}");
    }
    shared.metrics.client_connections.dec();
}

async fn run_client(shared: &Arc<Shared>, stream: Box<TcpStream>) -> Result<(), End> {
    let Some((accepted, peer)) = Box::pin(async {
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let accepted = startup::accept(shared, *stream, peer.map(|a| a.ip())).await?;
        Ok::<_, End>(accepted.map(|a| (a, peer)))
    })
    .await?
    else {
        return Ok(());
    };
    // The session boxed, and built outside this function's state: an async function keeps
    // room for every local it ever had (the startup packet, the first output buffer) for as
    // long as it runs.
    let mut s = Box::new(Session::new(shared, accepted));
    if *s.client.database == *crate::ops::admin::DATABASE {
        // The admin console: no server behind it.
        return Box::pin(s.console_session()).await;
    }
    let slot = shared.clients.register(&s.client.user, &s.client.database, peer);
    s.observe.slot = Some(slot.clone());
    let _registered = crate::clients::Registered(shared.clients.clone(), slot.id);
    // Login (once per client) boxed, so that its state does not size the session's task.
    let result = match Box::pin(s.login()).await {
        Ok(()) => s.run().await,
        Err(e) => Err(e),
    };
    // Boxed, as login is: once per session, and not sizing the task.
    Box::pin(s.end(result)).await
}

impl Session {
    /// A logged-in client's session, before its first request.
    fn new(shared: &Arc<Shared>, accepted: startup::Accepted) -> Session {
        let startup::Accepted { user, database, startup, reader, w } = accepted;
        // AuthenticationOk goes out with the server's parameters and ReadyForQuery: one send.
        let mut out = BytesMut::with_capacity(1024);
        out.extend_from_slice(&auth::ok());
        Session {
            shared: shared.clone(),
            client: client::ClientSide {
                reader,
                w,
                out,
                user: user.into(),
                database: database.into(),
                cancel: shared.cancels.register(),
                pending: VecDeque::new(),
                pending_bytes: 0,
            },
            hold: lazy::Lazy::default(),
            state: state::SessionState {
                settings: Settings::new(state::startup_settings(&startup.params)),
                effects: lazy::Lazy::default(),
                statements: lazy::Lazy::default(),
                mode: RouteMode::Auto,
                parses: 0,
                pools: Vec::new(),
            },
            work: lazy::Lazy::default(),
            observe: observe::Observe::default(),
            // Whatever any client had committed through this pgsplit before this one connected
            // is visible to its reads (read_your_writes = "session" and "global").
            causal: causal::Causal::starting_at(&shared.global_floor),
            unreachable: shared.cluster.unreachable.subscribe(),
        }
    }

    /// The admin console's session, to its end.
    async fn console_session(&mut self) -> Result<(), End> {
        let result = self.console().await;
        let _ = self.flush_client().await;
        match result {
            Err(End::Terminated) => Ok(()),
            other => other,
        }
    }

    /// The session's end: a malformed message's FATAL, what is left to send, the server
    /// connection given back or closed.
    async fn end(&mut self, result: Result<(), End>) -> Result<(), End> {
        if let Err(End::Protocol(ProtocolError::Invalid(msg))) = &result {
            // A malformed message: tell the client why before closing. Everyone else carries on.
            self.shared.metrics.client_protocol_errors.inc();
            self.client.out.extend_from_slice(&protocol::fatal("08P01", msg));
        }
        let _ = self.flush_client().await;
        self.finish().await;
        match result {
            Err(End::Terminated) => Ok(()),
            other => other,
        }
    }
}

impl Session {
    /// Checks the client's user and database against a real server (the primary, or a
    /// replica when the primary is down) and sends the server's parameters.
    async fn login(&mut self) -> Result<(), End> {
        let t = self.shared.cluster.load();
        let mut order = vec![t.primary()];
        order.extend((0..t.nodes.len()).filter(|&i| i != t.primary()));
        drop(t);
        let mut last_error = protocol::fatal("08006", "no server is reachable");
        for node in order {
            match self.attach(node).await {
                Ok(()) => {
                    let params = self.hold.server.as_ref().map(|s| s.conn.params.clone()).unwrap_or_default();
                    for (k, v) in params.iter().filter(|(k, _)| !HIDDEN_PARAMETERS.contains(&k.as_str())) {
                        self.client.out.extend_from_slice(&protocol::parameter_status(k, v));
                    }
                    for k in HIDDEN_PARAMETERS {
                        self.client.out.extend_from_slice(&protocol::parameter_status(k, "off"));
                    }
                    self.client.out.extend_from_slice(&protocol::backend_key_data(
                        self.client.cancel.pid,
                        self.client.cancel.secret,
                    ));
                    self.client.out.extend_from_slice(&protocol::ready_for_query(TxStatus::Idle));
                    self.release_server();
                    return Ok(());
                }
                Err(AttachError::Refused(f)) => {
                    // Wrong database, role, password: the server's own FATAL, as is.
                    self.client.out.extend_from_slice(&f);
                    return Err(End::Fatal("login refused by server".into()));
                }
                Err(AttachError::Failed(f)) => last_error = f,
            }
        }
        let err = protocol::backend::error_fields(&last_error);
        let code = err.code().unwrap_or("08006").to_string();
        let msg = err.message().unwrap_or("no server is reachable").to_string();
        self.client.out.extend_from_slice(&protocol::fatal(&code, &msg));
        Err(End::Fatal(msg))
    }

    /// The session's life after login: idle waits in a small state (`wait_idle`), the work
    /// between them in a boxed one (`serve`), so that thousands of idle clients do not each
    /// keep the largest state a request goes through (one allocation per busy period, as a
    /// checkout already takes one).
    async fn run(&mut self) -> Result<(), End> {
        loop {
            if self.idle_waits() {
                self.wait_idle().await?;
            }
            Box::pin(self.serve()).await?;
        }
    }

    /// Idle between requests on plain TCP with nothing buffered: no server, nothing
    /// outstanding or pending, nothing to re-run or to write.
    fn idle_waits(&self) -> bool {
        self.hold.server.is_none()
            && self.hold.outstanding == 0
            && self.client.pending.is_empty()
            && self.work.retry_now.is_none()
            && self.client.out.is_empty()
            && self.client.reader.buffered() == 0
            && self.client.reader.get_ref().is_plain()
    }

    /// Waits with no buffer until the client's socket has bytes (allocating a read buffer only
    /// then; a stale readiness costs one WouldBlock read) or `limits.idle_client_timeout_ms`
    /// passes.
    async fn wait_idle(&mut self) -> Result<(), End> {
        self.client.out = BytesMut::new();
        self.client.reader.release_if_empty();
        self.work.release_if_clear();
        if self.hold.query_timer.is_some() {
            // Only a request in flight has a timer.
            self.hold.query_timer = None;
        }
        self.hold.release_if_clear();
        self.state.effects.release_if_clear();
        self.state.statements.release_if_clear();
        // The idle-session timer boxed, and only when that limit is set (off by default): a
        // timer inline would size every idle client's task.
        let mut timer = self.idle_limit().map(|(d, _)| Box::pin(tokio::time::sleep(d)));
        let client = &mut self.client.reader;
        // Polled by hand rather than with `select!` over `readable()`: the socket's readiness
        // keeps this task's waker itself, so the wait holds a few words, not a waiter node.
        let woke = std::future::poll_fn(|cx| {
            loop {
                match client.get_ref().poll_readable(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => {
                        return match timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                            Some(Poll::Ready(())) => Poll::Ready(None),
                            _ => Poll::Pending,
                        };
                    }
                }
                match client.fill_with(|r, b| r.try_read_buf(b)) {
                    Ok(n) => return Poll::Ready(Some(Ok(n))),
                    // Stale readiness, now cleared: poll again to wait for the next.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        client.release_if_empty();
                    }
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
        })
        .await;
        match woke {
            None => Err(self.idle_timeout()),
            Some(r) => {
                if r.map_err(ProtocolError::from)? == 0 {
                    // EOF between messages: the client went away.
                    return Err(End::Terminated);
                }
                // Back from idle: one allocation for the answers to come, not one per append.
                self.client.out.reserve(1024);
                Ok(())
            }
        }
    }

    /// `limits.idle_client_timeout_ms` passed: the FATAL the client gets, and the end.
    fn idle_timeout(&mut self) -> End {
        let msg = "terminating connection due to idle-session timeout (limits.idle_client_timeout_ms)";
        self.client.out.extend_from_slice(&protocol::fatal("57P05", msg));
        End::Fatal(msg.into())
    }

    /// Requests and their answers until the session is idle again (`idle_waits`); TLS
    /// clients stay here.
    async fn serve(&mut self) -> Result<(), End> {
        loop {
            if let Some(r) = self.work.retry_now.take() {
                Box::pin(self.rerun(*r)).await?;
            }
            while self.hold.outstanding == 0 || self.hold.copy_in {
                let Some(f) = self.client.next_pending() else { break };
                self.on_client_frame(f).await?;
            }
            if !self.client.out.is_empty() {
                self.flush_client().await?;
            }
            let read_client = self.client.pending_bytes < MAX_PENDING;
            let idle = self.idle_limit();
            match self.query_deadline() {
                Some((t0, _)) if self.hold.query_timer.as_ref().is_some_and(|(t, _)| *t == t0) => {}
                Some((t0, at)) => self.hold.query_timer = Some((t0, Box::pin(tokio::time::sleep_until(at)))),
                None => self.hold.query_timer = None,
            }
            if self.idle_waits() {
                return Ok(());
            }
            // TLS between requests: no output buffer while the client thinks.
            let idle_now = self.hold.server.is_none() && self.hold.outstanding == 0 && self.client.pending.is_empty();
            if idle_now && self.client.out.capacity() > 0 {
                self.client.out = BytesMut::new();
            }
            let event = {
                let hold = &mut *self.hold;
                let waiting = hold.outstanding > 0;
                let server = hold.server.as_mut();
                let client = &mut self.client.reader;
                let timer = hold.query_timer.as_mut();
                let timed = timer.is_some();
                tokio::select! {
                    biased;
                    r = async {
                        match server {
                            Some(s) => s.conn.reader.next().await,
                            None => std::future::pending().await,
                        }
                    } => Event::Server(r),
                    r = client.next(), if read_client => Event::Client(r),
                    _ = self.unreachable.changed(), if waiting => Event::Unreachable,
                    // Created only when polled: no timer at all unless a limit applies.
                    _ = async { tokio::time::sleep(idle.map(|(d, _)| d).unwrap_or_default()).await }, if idle.is_some() => {
                        Event::Idle(idle.map(|(_, in_tx)| in_tx).unwrap_or(false))
                    }
                    _ = async {
                        match timer {
                            Some((_, sleep)) => sleep.as_mut().await,
                            None => std::future::pending().await,
                        }
                    }, if timed => Event::QueryTimeout,
                }
            };
            if self.client.out.capacity() == 0 && matches!(event, Event::Client(Ok(_)) | Event::Server(Ok(_))) {
                // Back from idle: one allocation for the answers to come, not one per append.
                self.client.out.reserve(1024);
            }
            match event {
                Event::Server(Ok(f)) => {
                    self.on_server_frame(f)?;
                    self.drain_server().await?;
                }
                Event::Server(Err(e)) => self.server_lost(e)?,
                Event::Client(Ok(f)) => {
                    if (self.hold.outstanding > 0 && !self.hold.copy_in) || !self.client.pending.is_empty() {
                        self.client.queue(f);
                    } else {
                        self.on_client_frame(f).await?;
                    }
                }
                Event::Unreachable => self.check_stuck()?,
                Event::QueryTimeout => self.cancel_timed_out(),
                Event::Idle(true) => {
                    let msg = "terminating connection due to idle-in-transaction timeout (limits.idle_transaction_timeout_ms)";
                    self.client.out.extend_from_slice(&protocol::fatal("25P03", msg));
                    return Err(End::Fatal(msg.into()));
                }
                Event::Idle(false) => return Err(self.idle_timeout()),
                Event::Client(Err(ProtocolError::Closed)) => return Err(End::Terminated),
                Event::Client(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Relays every server message already buffered, without waiting.
    async fn drain_server(&mut self) -> Result<(), End> {
        loop {
            let Some(s) = self.hold.server.as_mut() else {
                return Ok(());
            };
            match s.conn.reader.try_next() {
                Ok(Some(f)) => self.on_server_frame(f)?,
                Ok(None) => return Ok(()),
                Err(e) => return self.server_lost(e),
            }
            if self.client.out.len() >= OUT_FLUSH {
                self.flush_client().await?;
            }
        }
    }

    /// Writes what is buffered for the client. No timer unless the client stops reading: then
    /// it gets `limits.client_stall_timeout_ms` to take its results, after which it is dropped
    /// (its server query cancelled, the connection given back), so a client that never reads
    /// cannot hold a server connection for ever.
    async fn flush_client(&mut self) -> Result<(), End> {
        if self.client.out.is_empty() {
            return Ok(());
        }
        // A client that takes nothing for client_stall_timeout_ms is dropped.
        let stall = std::time::Duration::from_millis(self.shared.config.load().limits.client_stall_timeout_ms);
        let write = async {
            self.client.w.write_all(&self.client.out).await?;
            self.client.w.flush().await
        };
        match tokio::time::timeout(stall, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ProtocolError::from(e).into()),
            Err(_) => {
                self.client.out.clear();
                self.shared.metrics.stalled_clients.inc();
                return Err(End::Fatal("the client does not read its results".into()));
            }
        }
        self.client.out.clear();
        Ok(())
    }

    /// The idle limit that applies now, if any: (how long, inside a transaction?).
    fn idle_limit(&self) -> Option<(std::time::Duration, bool)> {
        if self.hold.outstanding > 0 || !self.client.pending.is_empty() || self.hold.copy_in {
            return None;
        }
        let limits = &self.shared.config.load().limits;
        let (ms, in_tx) = if !self.hold.tx_status.is_idle() {
            (limits.idle_transaction_timeout_ms, true)
        } else {
            (limits.idle_client_timeout_ms, false)
        };
        (ms > 0).then(|| (std::time::Duration::from_millis(ms), in_tx))
    }

    /// When the request in flight passes `limits.query_timeout_ms`, if it applies: once per
    /// request, never during COPY FROM STDIN (the client is the one sending).
    fn query_deadline(&self) -> Option<(std::time::Instant, tokio::time::Instant)> {
        if self.hold.outstanding == 0 || self.hold.copy_in || self.hold.server.is_none() {
            return None;
        }
        let t0 = self.observe.started_at()?;
        if self.hold.timeout_cancelled == Some(t0) {
            return None;
        }
        let ms = self.shared.config.load().limits.query_timeout_ms;
        (ms > 0).then(|| (t0, tokio::time::Instant::from_std(t0 + std::time::Duration::from_millis(ms))))
    }

    /// The request in flight ran past `limits.query_timeout_ms`: the server is asked to cancel
    /// it, as a client's own CancelRequest would. The server answers with 57014 and its
    /// ReadyForQuery, relayed as usual; the connection is then closed, not pooled.
    fn cancel_timed_out(&mut self) {
        let started = self.observe.started_at();
        let hold = &mut *self.hold;
        let Some(s) = hold.server.as_ref() else { return };
        hold.timeout_cancelled = started;
        tracing::info!(server = %s.conn.addr, "cancelling a request past limits.query_timeout_ms");
        let key = ServerKey { addr: s.conn.addr.as_str().into(), pid: s.conn.pid, secret: s.conn.secret };
        tokio::spawn(async move { crate::cancel::send_cancel(&key).await });
    }

    /// A request waits on a server the health checks find unreachable (a link gone silent: no
    /// RST, no FIN, so the socket alone would wait for ever). Past `failover_wait` the
    /// connection is given up: the client gets the error of a lost connection, in terms of
    /// what it was doing, and its pgsplit connection stays usable.
    fn check_stuck(&mut self) -> Result<(), End> {
        let Some(node) = self.hold.node() else { return Ok(()) };
        let wait = std::time::Duration::from_millis(self.shared.config.load().failover.failover_wait_ms);
        let unhealthy = self.shared.cluster.load().nodes.get(node).is_some_and(|n| !n.healthy);
        if unhealthy && self.observe.waiting_longer_than(wait) {
            tracing::warn!(node, "giving up a request on an unreachable server");
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "server unreachable (health checks failing)");
            return self.server_lost(ProtocolError::Io(e));
        }
        Ok(())
    }

    /// The client is gone: a server connection still busy with its work is cancelled and
    /// closed, never handed to someone else.
    async fn finish(&mut self) {
        let Some(s) = self.hold.server.take() else { return };
        let cancelled = self.client.cancel.detach();
        if !cancelled && self.hold.clean() {
            s.release(&self.shared.metrics);
        } else {
            if self.hold.outstanding > 0 {
                crate::cancel::send_cancel(&ServerKey {
                    addr: s.conn.addr.as_str().into(),
                    pid: s.conn.pid,
                    secret: s.conn.secret,
                })
                .await;
            }
            s.discard(&self.shared.metrics);
        }
    }
}

enum Event {
    Server(Result<Frame, ProtocolError>),
    Client(Result<Frame, ProtocolError>),
    /// A server failed a health check (see `check_stuck`).
    Unreachable,
    /// The client was idle past a limit (true: inside a transaction).
    Idle(bool),
    /// The request in flight passed `limits.query_timeout_ms`.
    QueryTimeout,
}
