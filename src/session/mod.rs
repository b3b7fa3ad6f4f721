//! One client's session: startup and authentication, then a loop that reads client messages
//! and server responses, routes each unit of work (a simple Query, or an extended-protocol
//! batch up to Sync) and relays the answers as raw bytes.
//!
//! State ownership: the session owns everything about its client (settings, prepared
//! statements, pin, transaction status from ReadyForQuery) and, while it holds one, its server
//! connection. Pools own idle connections; the topology is shared read-only.

mod extended;
mod state;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Shared;
use crate::auth::{self, AuthError};
use crate::backend::BackendError;
use crate::cancel::{CancelHandle, ServerKey};
use crate::pool::{Checkout, CheckoutError};
use crate::protocol::{self, Frame, FrameReader, ProtocolError};
use crate::router::{Decision, SessionView, route};
use crate::sql::cache::Analysis;
use crate::sql::{Effect, RouteMode, Target};
use crate::topology::Role;

use extended::{Prepared, Statements};
use state::{PendingEffects, Settings};

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

/// A client extended-protocol message waiting for Flush or Sync.
enum BatchItem {
    Parse(Arc<Prepared>),
    Bind(Frame, Arc<Prepared>),
    DescribeStatement(Arc<Prepared>),
    CloseStatement(Bytes),
    Raw(Frame),
}

struct Batch {
    items: Vec<BatchItem>,
    target: Target,
    reason: &'static str,
    /// Analyses of the batch's statements whose look-ups are still to be checked.
    lookups: Vec<Arc<Analysis>>,
    hint: Option<crate::sql::Hint>,
}

impl Default for Batch {
    fn default() -> Self {
        Batch { items: Vec::new(), target: Target::Any, reason: "session command", lookups: Vec::new(), hint: None }
    }
}

impl Batch {
    fn add_analysis(&mut self, a: &Arc<Analysis>) {
        if a.target > self.target {
            self.target = a.target;
            self.reason = a.reason;
        }
        if a.hint.is_some() {
            self.hint = a.hint;
        }
        if a.statements.iter().any(|c| !c.lookups.is_empty()) && !self.lookups.iter().any(|x| Arc::ptr_eq(x, a)) {
            self.lookups.push(a.clone());
        }
    }
}

struct Session {
    shared: Arc<Shared>,
    client: FrameReader<OwnedReadHalf>,
    client_w: OwnedWriteHalf,
    out: BytesMut,
    user: String,
    database: String,
    cancel: CancelHandle,

    settings: Settings,
    effects: PendingEffects,
    statements: Statements,
    mode: RouteMode,
    pin: Option<&'static str>,

    server: Option<Checkout>,
    /// The ReadyForQuery status last relayed: 'I', 'T' or 'E'.
    tx_status: u8,
    /// Requests (Query, Sync, FunctionCall) sent whose ReadyForQuery has not come back.
    outstanding: usize,
    batch: Batch,
    /// Part of an extended batch was sent with Flush; the rest (up to Sync) follows.
    batch_open: bool,
    /// After an error pgsplit raised itself mid-batch: drop messages until Sync.
    skip_until_sync: bool,
    expect: VecDeque<Expect>,
    copy_in: bool,
    /// Client messages that arrived while the server was still busy (pipelining). Reading
    /// them early is also how a client that hangs up mid-query is noticed at once.
    pending: VecDeque<Frame>,
    pending_bytes: usize,
    /// This client's pool on each server, looked up once.
    pools: Vec<Option<Arc<crate::pool::Pool>>>,
    /// Parse messages seen, for unique server statement names.
    parses: u64,
}

pub async fn serve_client(shared: Arc<Shared>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    shared.metrics.client_connections.inc();
    if let Err(e) = run_client(&shared, stream).await {
        tracing::debug!("client session ended: {e}");
    }
    shared.metrics.client_connections.dec();
}

async fn run_client(shared: &Arc<Shared>, stream: TcpStream) -> Result<(), End> {
    let (mut r, mut w) = stream.into_split();
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
                return Ok(());
            }
            v if v >> 16 == 3 => break protocol::parse_startup_params(&body[4..])?,
            _ => {
                let _ = w.write_all(&protocol::fatal("0A000", "unsupported frontend protocol")).await;
                return Ok(());
            }
        }
    };
    let Some(user) = startup.get("user").map(str::to_string) else {
        let _ = w.write_all(&protocol::fatal("28000", "no PostgreSQL user name specified in startup packet")).await;
        return Ok(());
    };
    if startup.get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        let _ = w.write_all(&protocol::fatal("08P01", "pgsplit does not proxy replication connections")).await;
        return Ok(());
    }
    let database = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(&user).to_string();
    let mut reader = FrameReader::new(r);
    match auth::authenticate(&shared.config, &user, &mut reader, &mut w).await {
        Ok(()) => {}
        Err(AuthError::Failed(u)) => {
            let msg = format!("password authentication failed for user \"{u}\"");
            let _ = w.write_all(&protocol::fatal("28P01", &msg)).await;
            return Ok(());
        }
        Err(AuthError::Protocol(e)) => {
            let _ = w.write_all(&protocol::fatal("08P01", &e.to_string())).await;
            return Err(e.into());
        }
    }
    w.write_all(&auth::ok()).await.map_err(ProtocolError::from)?;
    let mut s = Session {
        shared: shared.clone(),
        client: reader,
        client_w: w,
        out: BytesMut::with_capacity(OUT_FLUSH),
        user,
        database,
        cancel: shared.cancels.register(),
        settings: Settings::new(state::startup_settings(&startup.params)),
        effects: PendingEffects::default(),
        statements: Statements::default(),
        mode: RouteMode::Auto,
        pin: None,
        server: None,
        tx_status: b'I',
        outstanding: 0,
        batch: Batch::default(),
        batch_open: false,
        skip_until_sync: false,
        expect: VecDeque::new(),
        copy_in: false,
        pending: VecDeque::new(),
        pending_bytes: 0,
        pools: Vec::new(),
        parses: 0,
    };
    let result = match s.login().await {
        Ok(()) => s.run().await,
        Err(e) => Err(e),
    };
    if let Err(End::Protocol(ProtocolError::Invalid(msg))) = &result {
        // A malformed message: tell the client why before closing. Everyone else carries on.
        s.shared.metrics.client_protocol_errors.inc();
        s.out.extend_from_slice(&protocol::fatal("08P01", msg));
    }
    let _ = s.flush_client().await;
    s.finish().await;
    match result {
        Err(End::Terminated) => Ok(()),
        other => other,
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
                    let params = self.server.as_ref().map(|s| s.conn.params.clone()).unwrap_or_default();
                    for (k, v) in params.iter().filter(|(k, _)| !HIDDEN_PARAMETERS.contains(&k.as_str())) {
                        self.out.extend_from_slice(&protocol::parameter_status(k, v));
                    }
                    for k in HIDDEN_PARAMETERS {
                        self.out.extend_from_slice(&protocol::parameter_status(k, "off"));
                    }
                    self.out.extend_from_slice(&protocol::backend_key_data(self.cancel.pid, self.cancel.secret));
                    self.out.extend_from_slice(&protocol::ready_for_query(b'I'));
                    self.release_server();
                    return Ok(());
                }
                Err(AttachError::Refused(f)) => {
                    // Wrong database, role, password: the server's own FATAL, as is.
                    self.out.extend_from_slice(&f);
                    return Err(End::Fatal("login refused by server".into()));
                }
                Err(AttachError::Failed(f)) => last_error = f,
            }
        }
        let code = protocol::error_field(&last_error[5..], b'C').unwrap_or("08006").to_string();
        let msg = protocol::error_field(&last_error[5..], b'M').unwrap_or("no server is reachable").to_string();
        self.out.extend_from_slice(&protocol::fatal(&code, &msg));
        Err(End::Fatal(msg))
    }

    async fn run(&mut self) -> Result<(), End> {
        loop {
            while self.outstanding == 0 || self.copy_in {
                let Some(f) = self.pending.pop_front() else { break };
                self.pending_bytes -= f.bytes.len();
                self.on_client_frame(f).await?;
            }
            if !self.out.is_empty() {
                self.flush_client().await?;
            }
            let read_client = self.pending_bytes < MAX_PENDING;
            let event = {
                let server = self.server.as_mut();
                tokio::select! {
                    biased;
                    r = async {
                        match server {
                            Some(s) => s.conn.reader.next().await,
                            None => std::future::pending().await,
                        }
                    } => Event::Server(r),
                    r = self.client.next(), if read_client => Event::Client(r),
                }
            };
            match event {
                Event::Server(Ok(f)) => {
                    self.on_server_frame(f);
                    self.drain_server().await?;
                }
                Event::Server(Err(e)) => self.server_lost(e)?,
                Event::Client(Ok(f)) => {
                    if (self.outstanding > 0 && !self.copy_in) || !self.pending.is_empty() {
                        self.pending_bytes += f.bytes.len();
                        self.pending.push_back(f);
                    } else {
                        self.on_client_frame(f).await?;
                    }
                }
                Event::Client(Err(ProtocolError::Closed)) => return Err(End::Terminated),
                Event::Client(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Relays every server message already buffered, without waiting.
    async fn drain_server(&mut self) -> Result<(), End> {
        loop {
            let Some(s) = self.server.as_mut() else {
                return Ok(());
            };
            match s.conn.reader.try_next() {
                Ok(Some(f)) => self.on_server_frame(f),
                Ok(None) => return Ok(()),
                Err(e) => return self.server_lost(e),
            }
            if self.out.len() >= OUT_FLUSH {
                self.flush_client().await?;
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.client_w.write_all(&self.out).await.map_err(ProtocolError::from)?;
            self.out.clear();
        }
        Ok(())
    }

    // ---- server to client -------------------------------------------------------------

    fn on_server_frame(&mut self, f: Frame) {
        match f.tag() {
            b'Z' => {
                let status = f.body().first().copied().unwrap_or(b'I');
                if matches!(self.expect.front(), Some(Expect::Sync)) {
                    self.expect.pop_front();
                }
                self.outstanding = self.outstanding.saturating_sub(1);
                self.tx_status = status;
                let settled = self.effects.settle(status);
                self.apply_effects(settled);
                self.out.extend_from_slice(&f.bytes);
                if status == b'I' && self.outstanding == 0 && !self.batch_open && self.pin.is_none() && !self.copy_in {
                    self.release_server();
                }
            }
            b'E' => {
                self.effects.error_in_request = true;
                self.copy_in = false;
                // The server skips to the next Sync: whatever was queued before it gets no answer.
                while let Some(e) = self.expect.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    if let (Some(Expect::Parse { name, .. }), Some(s)) = (self.expect.pop_front(), self.server.as_mut())
                    {
                        if name.is_empty() {
                            s.conn.unnamed = None;
                        } else {
                            s.conn.prepared.remove(&name);
                        }
                    }
                }
                if protocol::error_field(f.body(), b'C') == Some("25006") {
                    tracing::warn!("server reported read-only transaction (25006) to a client");
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'1' => {
                if !matches!(self.expect.pop_front(), Some(Expect::Parse { swallow: true, .. })) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'3' => {
                if !matches!(self.expect.pop_front(), Some(Expect::Close { swallow: true })) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'T' | b'n' if matches!(self.expect.front(), Some(Expect::Describe { .. })) => {
                if let Some(Expect::Describe { statement: Some(p) }) = self.expect.pop_front() {
                    // A copy: a slice would keep the whole read buffer it came from alive.
                    let _ = p.described.set(Bytes::copy_from_slice(&f.bytes));
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'S' => {
                if let Some(s) = self.server.as_mut() {
                    s.conn.note_parameter(&f);
                }
                let mut body = f.body();
                let name = protocol::read_cstr(&mut body).unwrap_or("");
                if !HIDDEN_PARAMETERS.contains(&name) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'G' => {
                self.copy_in = true;
                // In extended mode the server ignores Sync while in copy-in; the client sends
                // another after CopyDone/CopyFail. That first Sync gets no ReadyForQuery.
                if let Some(i) = self.expect.iter().position(|e| matches!(e, Expect::Sync)) {
                    self.expect.remove(i);
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'C' => {
                let body = f.body();
                if body.starts_with(b"ROLLBACK") {
                    self.effects.rolled_back = true;
                } else if body.starts_with(b"COMMIT") {
                    self.effects.rolled_back = false;
                }
                self.out.extend_from_slice(&f.bytes);
            }
            _ => self.out.extend_from_slice(&f.bytes),
        }
    }

    fn apply_effects(&mut self, effects: Vec<(Effect, Option<RouteMode>)>) {
        if effects.is_empty() {
            return;
        }
        for (e, mode) in &effects {
            match e {
                Effect::DiscardAll => {
                    self.statements = Statements::default();
                    if let Some(s) = self.server.as_mut() {
                        s.conn.prepared.clear();
                        s.conn.unnamed = None;
                    }
                }
                Effect::Deallocate(None) => self.statements.named.clear(),
                Effect::Deallocate(Some(name)) => {
                    self.statements.named.remove(name);
                }
                _ => {}
            }
            self.settings.apply(e);
            if let Some(m) = mode {
                self.mode = *m;
            }
        }
        // The connection ran these statements: it now has exactly the client's settings.
        if let Some(s) = self.server.as_mut() {
            s.conn.settings = self.settings.hash();
        }
    }

    /// The server connection broke while the client was using it.
    fn server_lost(&mut self, e: ProtocolError) -> Result<(), End> {
        self.shared.metrics.server_errors.inc();
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        tracing::warn!(server = %server.conn.addr, "server connection lost: {e}");
        self.shared.cluster.mark_unreachable(server.conn.node);
        self.shared.pools.drop_idle(&server.conn.addr);
        server.discard(&self.shared.metrics);
        self.cancel.set(None);
        let recoverable = self.tx_status == b'I' && self.pin.is_none() && !self.batch_open && !self.copy_in;
        self.out.extend_from_slice(&protocol::error(
            "08006",
            "pgsplit: the server connection was lost while running this statement",
        ));
        if !recoverable {
            return Err(End::Fatal("server lost in the middle of a transaction or session".into()));
        }
        self.expect.clear();
        self.effects = PendingEffects::default();
        if self.outstanding > 0 {
            self.outstanding = 0;
            self.out.extend_from_slice(&protocol::ready_for_query(b'I'));
        }
        Ok(())
    }

    // ---- client to server -------------------------------------------------------------

    async fn on_client_frame(&mut self, f: Frame) -> Result<(), End> {
        match f.tag() {
            b'Q' => self.simple_query(f).await,
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if !self.skip_until_sync {
                    self.queue_extended(f)?;
                }
                Ok(())
            }
            b'H' | b'S' => self.flush_or_sync(f).await,
            b'd' | b'c' | b'f' => {
                if self.copy_in {
                    if f.tag() != b'd' {
                        self.copy_in = false;
                    }
                    self.send_server(&f.bytes).await?;
                }
                // Outside COPY these are ignored, as PostgreSQL does.
                Ok(())
            }
            b'F' => {
                // FunctionCall (fast-path): may do anything, so the primary.
                let primary = self.shared.cluster.load().primary();
                let d = Decision::Primary { node: primary, reason: "fast-path function call" };
                if self.place(d).await? {
                    self.outstanding += 1;
                    self.send_server(&f.bytes).await?;
                }
                Ok(())
            }
            b'X' => Err(End::Terminated),
            other => {
                Err(End::Protocol(ProtocolError::Invalid(format!("unexpected message type 0x{other:02x} from client"))))
            }
        }
    }

    async fn simple_query(&mut self, f: Frame) -> Result<(), End> {
        let mut body = f.body();
        let sql = protocol::read_cstr(&mut body)?;
        let analysis = self.shared.cache.analyze(sql);
        if self.batch_open && self.tx_status == b'I' && self.pin.is_none() {
            // A simple Query after Parse/Describe/Flush with no Sync (asyncpg prepares that
            // way): the flushed part is over; the query is routed on its own.
            self.close_open_batch().await?;
        }
        if let [c] = analysis.statements.as_slice()
            && let Effect::Deallocate(name) = &c.effect
            && self.deallocate_locally(name.as_deref())
        {
            let tag = if name.is_some() { "DEALLOCATE" } else { "DEALLOCATE ALL" };
            self.out.extend_from_slice(&protocol::command_complete(tag));
            self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            return Ok(());
        }
        if let [c] = analysis.statements.as_slice()
            && let Some(mode) = c.route_mode
        {
            // SET pgsplit.route is pgsplit's own: answered here, replayed (quoted) for SHOW.
            self.mode = mode;
            self.settings.apply(&c.effect);
            self.out.extend_from_slice(&protocol::command_complete("SET"));
            self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            return Ok(());
        }
        let (target, reason) = self.resolve(analysis.target, analysis.reason, &[&*analysis]).await;
        let decision = self.decide(target, reason, analysis.hint);
        if !self.place(decision).await? {
            self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            return Ok(());
        }
        for c in &analysis.statements {
            self.note_effect(&c.effect, c.route_mode);
        }
        self.outstanding += 1;
        if let Some(s) = self.server.as_mut() {
            // A simple Query destroys the unnamed prepared statement.
            s.conn.unnamed = None;
        }
        self.send_server(&f.bytes).await
    }

    /// DEALLOCATE of a statement pgsplit renamed (or ALL, outside a pinned session) is
    /// answered here: the server knows the statement under another name, or not at all.
    fn deallocate_locally(&mut self, name: Option<&str>) -> bool {
        match name {
            Some(n) => self.statements.named.remove(n).is_some(),
            None if self.pin.is_none() => {
                self.statements.named.clear();
                true
            }
            None => {
                self.statements.named.clear();
                false
            }
        }
    }

    fn note_effect(&mut self, effect: &Effect, mode: Option<RouteMode>) {
        match effect {
            Effect::None | Effect::Begin { .. } => {}
            Effect::Pin(why) => {
                if self.pin.is_none() {
                    tracing::debug!(reason = why, "session pinned to its server connection");
                }
                self.pin = Some(why);
            }
            e => self.effects.request.push((e.clone(), mode)),
        }
    }

    fn queue_extended(&mut self, f: Frame) -> Result<(), End> {
        let item = match f.tag() {
            b'P' => {
                let p = extended::read_parse(&f)?;
                let analysis = self.shared.cache.analyze(p.query);
                self.batch.add_analysis(&analysis);
                self.parses += 1;
                let prepared = Arc::new(extended::prepared_from(&p, analysis, (self.cancel.pid, self.parses)));
                if p.name.is_empty() {
                    self.statements.unnamed = Some(prepared.clone());
                } else {
                    self.statements.named.insert(p.name.to_string(), prepared.clone());
                }
                BatchItem::Parse(prepared)
            }
            b'B' => {
                let (_, stmt, _) = extended::read_bind(&f)?;
                match self.statements.get(stmt).cloned() {
                    Some(p) => {
                        self.batch.add_analysis(&p.analysis);
                        for c in &p.analysis.statements {
                            self.note_effect(&c.effect, c.route_mode);
                        }
                        BatchItem::Bind(f, p)
                    }
                    // Unknown statement: the server answers with the proper error.
                    None => BatchItem::Raw(f),
                }
            }
            b'D' => match extended::read_target(&f)? {
                (b'S', name) => match self.statements.get(name).cloned() {
                    Some(p) => BatchItem::DescribeStatement(p),
                    None => BatchItem::Raw(f),
                },
                _ => BatchItem::Raw(f),
            },
            b'C' => match extended::read_target(&f)? {
                (b'S', "") => {
                    self.statements.unnamed = None;
                    BatchItem::Raw(f)
                }
                (b'S', name) => match self.statements.named.remove(name) {
                    Some(p) => BatchItem::CloseStatement(Bytes::from(p.server_name.clone())),
                    None => BatchItem::Raw(f),
                },
                _ => BatchItem::Raw(f),
            },
            _ => BatchItem::Raw(f),
        };
        self.batch.items.push(item);
        Ok(())
    }

    async fn flush_or_sync(&mut self, f: Frame) -> Result<(), End> {
        let is_sync = f.tag() == b'S';
        if self.skip_until_sync {
            if is_sync {
                self.skip_until_sync = false;
                self.batch = Batch::default();
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            }
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        if batch.items.is_empty() && self.server.is_none() {
            // A lone Sync (or Flush) with nothing to run: answered here, no server needed.
            if is_sync {
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            }
            return Ok(());
        }
        let analyses: Vec<&Analysis> = batch.lookups.iter().map(|a| &**a).collect();
        let (target, reason) = self.resolve(batch.target, batch.reason, &analyses).await;
        if self.batch_open && self.tx_status == b'I' && target == Target::Primary && self.on_replica() {
            // The start of this batch went to a replica (it looked like a read when the client
            // flushed); the rest needs the primary. Close the replica's part with a Sync of our
            // own and carry on on the primary: prepared statements follow the client.
            if !self.close_open_batch().await? {
                self.skip_until_sync = !is_sync;
                if is_sync {
                    self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
                }
                return Ok(());
            }
        }
        let decision = self.decide(target, reason, batch.hint);
        if !self.place(decision).await? {
            self.batch_open = false;
            if is_sync {
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            } else {
                self.skip_until_sync = true;
            }
            return Ok(());
        }
        if !self.batch_open
            && let Some(err) = self.prepare_checked(&batch.items).await?
        {
            // The statement's shape changed since the client described it (or it no longer
            // parses): the client gets the server's error and the batch does not run.
            self.effects.request.clear();
            self.out.extend_from_slice(&err);
            if is_sync {
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            } else {
                self.skip_until_sync = true;
            }
            if self.tx_status == b'I' && self.pin.is_none() && self.outstanding == 0 {
                self.release_server();
            }
            return Ok(());
        }
        let Some(server) = self.server.as_mut() else {
            return Ok(());
        };
        let mut buf = BytesMut::with_capacity(256);
        if self.tx_status == b'I' && !self.batch_open {
            // No portal can outlive this point, so statements can be closed safely.
            evict_statements(&batch.items, &mut server.conn, &mut self.expect, &mut buf);
        }
        for item in batch.items {
            encode_item(item, &mut server.conn, &mut self.expect, &mut buf)?;
        }
        buf.extend_from_slice(&f.bytes);
        if is_sync {
            self.expect.push_back(Expect::Sync);
            self.outstanding += 1;
            self.batch_open = false;
        } else {
            self.batch_open = true;
        }
        self.send_server(&buf).await
    }

    /// Prepares, ahead of the batch and with a Sync of pgsplit's own, the statements the batch
    /// uses that this connection lacks and whose row description the client has seen, and
    /// checks each still has that shape. Returns the error for the client when one does not.
    async fn prepare_checked(&mut self, items: &[BatchItem]) -> Result<Option<Bytes>, End> {
        let Some(server) = self.server.as_mut() else { return Ok(None) };
        let mut needed: Vec<Arc<Prepared>> = Vec::new();
        for item in items {
            if let BatchItem::Bind(_, p) | BatchItem::DescribeStatement(p) = item
                && !p.server_name.is_empty()
                && p.described.get().is_some()
                && !server.conn.prepared.contains(&p.server_name)
                && !needed.iter().any(|n| Arc::ptr_eq(n, p))
            {
                needed.push(p.clone());
            }
            if let BatchItem::Parse(p) = item {
                // Parsed again in this very batch: nothing to check.
                needed.retain(|n| n.server_name != p.server_name);
            }
        }
        if needed.is_empty() {
            return Ok(None);
        }
        let mut buf = BytesMut::new();
        for p in &needed {
            buf.extend_from_slice(&p.parse);
            buf.extend_from_slice(&extended::target_message(b'D', b'S', &p.server_name));
        }
        buf.extend_from_slice(&protocol::sync());
        if let Err(e) = server.conn.send(&buf).await {
            self.server_lost(e)?;
            return Ok(Some(protocol::error("08006", "pgsplit: the server connection was lost")));
        }
        let mut error = None;
        let mut i = 0;
        loop {
            let Some(server) = self.server.as_mut() else { return Ok(error) };
            let f = match server.conn.reader.next().await {
                Ok(f) => f,
                Err(e) => {
                    self.server_lost(e)?;
                    return Ok(Some(protocol::error("08006", "pgsplit: the server connection was lost")));
                }
            };
            match f.tag() {
                b'1' => {
                    if let Some(p) = needed.get(i) {
                        server.conn.prepared.insert(p.server_name.clone());
                    }
                }
                b'T' | b'n' => {
                    if let Some(p) = needed.get(i)
                        && p.described.get().is_some_and(|d| d[..] != f.bytes[..])
                        && error.is_none()
                    {
                        error = Some(protocol::error("0A000", "cached plan must not change result type"));
                    }
                    i += 1;
                }
                b'E' if error.is_none() => error = Some(f.bytes),
                b'S' => server.conn.note_parameter(&f),
                b'N' => self.out.extend_from_slice(&f.bytes),
                b'Z' => {
                    self.tx_status = f.body().first().copied().unwrap_or(self.tx_status);
                    return Ok(error);
                }
                _ => {}
            }
        }
    }

    fn on_replica(&self) -> bool {
        let Some(s) = self.server.as_ref() else {
            return false;
        };
        self.shared.cluster.load().nodes.get(s.conn.node).is_some_and(|n| n.role == Role::Replica)
    }

    /// Ends the part of a batch already sent (up to a Flush) with a Sync of pgsplit's own and
    /// releases its server, so what follows can be routed on its own. Returns false when that
    /// part failed (the client got the error and the rest of its batch must be skipped).
    async fn close_open_batch(&mut self) -> Result<bool, End> {
        self.send_server(&protocol::sync()).await?;
        self.expect.push_back(Expect::Sync);
        loop {
            let Some(s) = self.server.as_mut() else {
                return Ok(false);
            };
            let f = match s.conn.reader.next().await {
                Ok(f) => f,
                Err(e) => {
                    self.server_lost(e)?;
                    return Ok(false);
                }
            };
            if f.tag() == b'Z' {
                // Our own Sync's answer: the client never sees it.
                self.expect.pop_front();
                let failed = self.effects.error_in_request;
                let status = f.body().first().copied().unwrap_or(b'I');
                self.tx_status = status;
                let settled = self.effects.settle(status);
                self.apply_effects(settled);
                self.batch_open = false;
                if status == b'I' && self.pin.is_none() {
                    self.release_server();
                }
                return Ok(!failed);
            }
            self.on_server_frame(f);
        }
    }

    /// Resolves functions that need a catalog look-up: any not provably read-only makes the
    /// work need the primary.
    async fn resolve(&self, target: Target, reason: &'static str, analyses: &[&Analysis]) -> (Target, &'static str) {
        if target == Target::Primary || analyses.iter().all(|a| a.statements.iter().all(|c| c.lookups.is_empty())) {
            return (target, reason);
        }
        if self.shared.catalog.all_read_only(&self.database, analyses).await {
            (target.max(Target::Replica), reason)
        } else {
            (Target::Primary, "function or view not known to be read-only")
        }
    }

    fn decide(&self, target: Target, reason: &'static str, hint: Option<crate::sql::Hint>) -> Decision {
        let view = SessionView {
            in_transaction: self.tx_status != b'I' || self.batch_open,
            pinned: self.pin.is_some(),
            mode: self.mode,
        };
        let topology = self.shared.cluster.load();
        // A random pick spreads reads evenly whatever the client's pattern of reads and
        // writes (a shared round-robin counter aliases with periodic patterns).
        route(target, reason, hint, view, &topology, rand::random::<u32>() as usize, &[])
    }

    /// Makes sure the client holds the server the decision names. Returns false when none
    /// could be had; the client then already has an ErrorResponse in `out`.
    async fn place(&mut self, decision: Decision) -> Result<bool, End> {
        let role = match decision {
            Decision::Held { .. } => "held",
            Decision::Primary { .. } => "primary",
            Decision::Replica { .. } => "replica",
        };
        self.shared.metrics.routed.with_label_values(&[role, decision.reason()]).inc();
        if self.server.is_some() {
            return Ok(true);
        }
        let mut exclude = Vec::new();
        let mut decision = decision;
        loop {
            let node = match decision {
                Decision::Held { .. } => self.shared.cluster.load().primary(),
                d => d.node().unwrap_or(0),
            };
            match self.attach(node).await {
                Ok(()) => return Ok(true),
                Err(AttachError::Failed(f)) if matches!(decision, Decision::Replica { .. }) => {
                    // A replica that cannot serve: the next one, or the primary. The client's
                    // statement has not started, so it sees nothing of this.
                    tracing::warn!(node, "replica unavailable, rerouting");
                    exclude.push(node);
                    let topology = self.shared.cluster.load();
                    let primary = topology.primary();
                    decision = match topology.pick_replica(rand::random::<u32>() as usize, &exclude) {
                        Some(n) => Decision::Replica { node: n, reason: decision.reason() },
                        None => Decision::Primary { node: primary, reason: "no replica reachable" },
                    };
                    let _ = f;
                }
                Err(AttachError::Failed(f)) | Err(AttachError::Refused(f)) => {
                    self.out.extend_from_slice(&as_error(&f));
                    return Ok(false);
                }
            }
        }
    }

    /// Checks out a connection to `node` and brings it to the client's settings.
    async fn attach(&mut self, node: usize) -> Result<(), AttachError> {
        let addr = match self.shared.cluster.load().nodes.get(node) {
            Some(n) => n.addr.clone(),
            None => {
                return Err(AttachError::Failed(protocol::error("08006", "no such server")));
            }
        };
        if self.pools.len() <= node {
            self.pools.resize(node + 1, None);
        }
        let pool = match &self.pools[node] {
            Some(p) => p.clone(),
            None => {
                let p = self.shared.pools.pool_for(&addr, &self.user, &self.database);
                self.pools[node] = Some(p.clone());
                p
            }
        };
        let mut co = match self.shared.pools.checkout(&pool, node).await {
            Ok(co) => co,
            Err(CheckoutError::Timeout(ms)) => {
                let msg = format!("pgsplit: no server connection to {addr} became free within {ms} ms");
                return Err(AttachError::Failed(protocol::error("53300", &msg)));
            }
            Err(CheckoutError::Backend(BackendError::Refused(f))) => {
                return Err(AttachError::Refused(f.bytes));
            }
            Err(CheckoutError::Backend(e @ BackendError::Unreachable { .. })) => {
                self.shared.cluster.mark_unreachable(node);
                self.shared.metrics.server_errors.inc();
                return Err(AttachError::Failed(protocol::error("08006", &format!("pgsplit: {e}"))));
            }
        };
        if co.conn.settings != self.settings.hash() {
            match co.conn.run_silently(&self.settings.replay_sql()).await {
                Ok(None) => co.conn.settings = self.settings.hash(),
                Ok(Some(err)) => {
                    co.discard(&self.shared.metrics);
                    return Err(AttachError::Refused(err.bytes));
                }
                Err(e) => {
                    co.discard(&self.shared.metrics);
                    self.shared.cluster.mark_unreachable(node);
                    return Err(AttachError::Failed(protocol::error("08006", &format!("pgsplit: {addr}: {e}"))));
                }
            }
        }
        self.cancel.set(Some(ServerKey { addr, pid: co.conn.pid, secret: co.conn.secret }));
        self.server = Some(co);
        Ok(())
    }

    fn release_server(&mut self) {
        if let Some(s) = self.server.take() {
            self.cancel.set(None);
            s.release(&self.shared.metrics);
        }
    }

    async fn send_server(&mut self, bytes: &[u8]) -> Result<(), End> {
        let Some(s) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = s.conn.send(bytes).await {
            self.server_lost(e)?;
        }
        Ok(())
    }

    /// The client is gone: a server connection still busy with its work is cancelled and
    /// closed, never handed to someone else.
    async fn finish(&mut self) {
        let Some(s) = self.server.take() else { return };
        self.cancel.set(None);
        let clean =
            self.outstanding == 0 && self.tx_status == b'I' && self.pin.is_none() && !self.batch_open && !self.copy_in;
        if clean {
            s.release(&self.shared.metrics);
        } else {
            if self.outstanding > 0 {
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
}

enum AttachError {
    /// The server said no (authentication, missing database): relay its message.
    Refused(Bytes),
    /// The server could not be used; the message is pgsplit's.
    Failed(Bytes),
}

/// A server's FATAL during connection set-up becomes an ERROR for a client whose session
/// goes on.
fn as_error(f: &[u8]) -> Bytes {
    let body = &f[5..];
    let code = protocol::error_field(body, b'C').unwrap_or("08006");
    let msg = protocol::error_field(body, b'M').unwrap_or("server error");
    protocol::error(code, msg)
}

/// Writes one batch item for `conn`, injecting the Parse (or Close) a statement needs there.
fn encode_item(
    item: BatchItem,
    conn: &mut crate::backend::ServerConn,
    expect: &mut VecDeque<Expect>,
    buf: &mut BytesMut,
) -> Result<(), End> {
    fn ensure(p: &Prepared, conn: &mut crate::backend::ServerConn, expect: &mut VecDeque<Expect>, buf: &mut BytesMut) {
        let present =
            if p.server_name.is_empty() { conn.unnamed == Some(p.key) } else { conn.prepared.contains(&p.server_name) };
        if !present {
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: true, name: p.server_name.clone() });
            note_prepared(p, conn);
        }
    }
    match item {
        BatchItem::Parse(p) => {
            if !p.server_name.is_empty() && conn.prepared.contains(&p.server_name) {
                // Already there (same text and types): close it first so the client's Parse
                // gets its ParseComplete rather than "already exists".
                buf.extend_from_slice(&extended::target_message(b'C', b'S', &p.server_name));
                expect.push_back(Expect::Close { swallow: true });
            }
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: false, name: p.server_name.clone() });
            note_prepared(&p, conn);
        }
        BatchItem::Bind(f, p) => {
            ensure(&p, conn, expect, buf);
            if p.server_name.is_empty() {
                buf.extend_from_slice(&f.bytes);
            } else {
                buf.extend_from_slice(&extended::rewrite_bind(&f, &p.server_name)?);
            }
        }
        BatchItem::DescribeStatement(p) => {
            ensure(&p, conn, expect, buf);
            buf.extend_from_slice(&extended::target_message(b'D', b'S', &p.server_name));
            expect.push_back(Expect::Describe { statement: Some(p) });
        }
        BatchItem::CloseStatement(name) => {
            let name = String::from_utf8_lossy(&name).into_owned();
            conn.prepared.remove(&name);
            buf.extend_from_slice(&extended::target_message(b'C', b'S', &name));
            expect.push_back(Expect::Close { swallow: false });
        }
        BatchItem::Raw(f) => {
            if f.tag() == b'C' {
                expect.push_back(Expect::Close { swallow: false });
            }
            if f.tag() == b'D' {
                expect.push_back(Expect::Describe { statement: None });
            }
            if f.tag() == b'P' {
                expect.push_back(Expect::Parse { swallow: false, name: String::new() });
            }
            buf.extend_from_slice(&f.bytes);
        }
    }
    Ok(())
}

/// Server connections keep at most this many prepared statements; beyond it, pgsplit closes
/// some (those this batch does not use) so server memory stays bounded however many distinct
/// statements clients prepare. Evicted ones are prepared again on demand.
const MAX_SERVER_STATEMENTS: usize = 1000;

fn evict_statements(
    items: &[BatchItem],
    conn: &mut crate::backend::ServerConn,
    expect: &mut VecDeque<Expect>,
    buf: &mut BytesMut,
) {
    if conn.prepared.len() < MAX_SERVER_STATEMENTS {
        return;
    }
    let used = |name: &str| {
        items.iter().any(|i| match i {
            BatchItem::Parse(p) | BatchItem::Bind(_, p) | BatchItem::DescribeStatement(p) => p.server_name == name,
            _ => false,
        })
    };
    let victims: Vec<String> =
        conn.prepared.iter().filter(|n| !used(n)).take(MAX_SERVER_STATEMENTS / 4).cloned().collect();
    for name in victims {
        buf.extend_from_slice(&extended::target_message(b'C', b'S', &name));
        expect.push_back(Expect::Close { swallow: true });
        conn.prepared.remove(&name);
    }
}

fn note_prepared(p: &Prepared, conn: &mut crate::backend::ServerConn) {
    if p.server_name.is_empty() {
        conn.unnamed = Some(p.key);
    } else {
        conn.prepared.insert(p.server_name.clone());
    }
}
