//! Extended-protocol batches: queued until Flush or Sync, routed as one unit, and written for
//! the connection that runs them (statements it lacks are prepared first).

use crate::reason::Reason;
use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::extended::{self, Prepared};
use super::reprepare::Checked;
use super::rerun::{Retry, RetryWork};
use super::{End, Expect, Session};
use crate::cluster::Role;
use crate::protocol::{self, Frame, message, put_cstr};
use crate::router::{Decision, NOT_REPLAYED_YET};
use crate::sql::cache::Analysis;
use crate::sql::session_cmd::STANDBY_REFUSES;
use crate::sql::set_config::{self, Resolved};
use crate::sql::{Effect, Target};

/// A client extended-protocol message waiting for Flush or Sync.
#[derive(Clone)]
pub(super) enum BatchItem {
    Parse(Arc<Prepared>),
    Bind(Frame, Arc<Prepared>),
    DescribeStatement(Arc<Prepared>),
    CloseStatement(Bytes),
    /// A Parse of a name the client still has: PostgreSQL's 42P05, raised by the server at
    /// this point of the batch (so what precedes runs and what follows is skipped, as it would
    /// be directly).
    DuplicateParse(String),
    Raw(Frame),
}

pub(super) struct Batch {
    items: Vec<BatchItem>,
    target: Target,
    reason: Reason,
    /// Analyses of the batch's statements whose look-ups are still to be checked.
    lookups: Vec<Arc<Analysis>>,
    hint: Option<crate::sql::Hint>,
    /// A `/* pgsplit:min_lsn=... */` of its statements (the highest).
    min_lsn: Option<crate::lsn::Lsn>,
    /// Some statement commits / opens a transaction (for the commit probe).
    commits: bool,
    opens: bool,
    copies_in: bool,
    /// Statements parsed or bound, and whether all are ROLLBACK / ABORT.
    statements: usize,
    only_rollback: bool,
    /// Bytes of client messages queued (limits.max_batch_bytes).
    bytes: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            items: Vec::new(),
            target: Target::Any,
            reason: Reason::SessionCommand,
            lookups: Vec::new(),
            hint: None,
            min_lsn: None,
            commits: false,
            opens: false,
            copies_in: false,
            statements: 0,
            only_rollback: true,
            bytes: 0,
        }
    }
}

impl Batch {
    /// Raises what the batch needs (a Bind can tell more than its statement's text).
    pub(super) fn require(&mut self, target: Target, reason: Reason) {
        if target > self.target {
            self.target = target;
            self.reason = reason;
        }
    }

    pub(super) fn add_analysis(&mut self, a: &Arc<Analysis>) {
        if a.target > self.target {
            self.target = a.target;
            self.reason = a.reason;
        }
        if a.hint.is_some() {
            self.hint = a.hint;
        }
        self.min_lsn = self.min_lsn.max(a.min_lsn);
        self.commits |= a.commits;
        self.opens |= a.opens;
        self.copies_in |= a.statements.iter().any(|c| c.reason == Reason::CopyFrom);
        self.statements += a.statements.len();
        self.only_rollback &= a.only_rollback;
        if a.statements.iter().any(|c| !c.lookups.is_empty()) && !self.lookups.iter().any(|x| Arc::ptr_eq(x, a)) {
            self.lookups.push(a.clone());
        }
    }
}

/// A batch is written to its server in pieces of about this size.
const WRITE_CHUNK: usize = 256 * 1024;

/// The reason of a batch sent on to the primary before its Sync because it grew too large.
const STREAMED_BATCH: Reason = Reason::StreamedBatch;

impl Session {
    pub(super) fn queue_extended(&mut self, f: Frame) -> Result<(), End> {
        self.batch.bytes += f.bytes.len();
        let item = match f.tag() {
            b'P' => {
                let p = crate::protocol::frontend::read_parse(&f)?;
                if !p.name.is_empty() && self.statements.named.contains_key(p.name) {
                    self.batch.items.push(BatchItem::DuplicateParse(p.name.to_string()));
                    return Ok(());
                }
                if !p.name.is_empty()
                    && self.statements.named.len() >= self.shared.config.load().limits.max_prepared_statements
                {
                    let max = self.shared.config.load().limits.max_prepared_statements;
                    // What the client may make pgsplit keep is bounded: the batch fails here.
                    let msg = format!(
                        "pgsplit: too many prepared statements in this session ({max}, limits.max_prepared_statements): DEALLOCATE some"
                    );
                    self.shared.metrics.error_sent("54000");
                    self.out.extend_from_slice(&protocol::error("54000", &msg));
                    self.batch = Batch::default();
                    self.effects.request.clear();
                    self.skip_until_sync = true;
                    return Ok(());
                }
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
                let (_, stmt, _) = crate::protocol::frontend::read_bind(&f)?;
                match self.statements.get(stmt).cloned() {
                    Some(p) => {
                        self.batch.add_analysis(&p.analysis);
                        for c in &p.analysis.statements {
                            match &c.effect {
                                Effect::SetConfigBound(args) => self.bound_set_config(args, &p, &f)?,
                                e => self.note_effect(e, c.own),
                            }
                        }
                        BatchItem::Bind(f, p)
                    }
                    // Unknown statement: the server answers with the proper error.
                    None => BatchItem::Raw(f),
                }
            }
            b'D' => match crate::protocol::frontend::read_target(&f)? {
                (b'S', name) => match self.statements.get(name).cloned() {
                    Some(p) => BatchItem::DescribeStatement(p),
                    None => BatchItem::Raw(f),
                },
                _ => BatchItem::Raw(f),
            },
            b'C' => match crate::protocol::frontend::read_target(&f)? {
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

    /// A set_config whose arguments this Bind carries: recorded like SET when pgsplit can read
    /// them, else the session is pinned to the primary (as for any set_config it cannot replay).
    fn bound_set_config(&mut self, args: &[set_config::Arg; 3], p: &Prepared, bind: &Frame) -> Result<(), End> {
        let types = crate::protocol::frontend::parse_types(&p.parse)?;
        let values = crate::protocol::frontend::bind_parameters(bind)?;
        let params: Vec<set_config::Param<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, (format, value))| set_config::Param {
                format: *format,
                oid: types.get(i).copied().unwrap_or(0),
                value: *value,
            })
            .collect();
        match set_config::resolved(args, &params) {
            Resolved::Set(e) => self.note_effect(&e, None),
            Resolved::Local => {}
            Resolved::Unknown => {
                let why = Reason::UnreplayableSetConfig;
                self.batch.require(Target::Primary, why);
                self.note_effect(&Effect::Pin(why.label()), None);
            }
        }
        Ok(())
    }

    /// A batch queued past limits.max_batch_bytes goes on to the primary now (as if the client
    /// had sent Flush), and what follows up to Sync joins it there as it arrives: a client
    /// streaming Binds without a Sync never makes pgsplit hold more than that bound.
    pub(super) async fn stream_if_large(&mut self) -> Result<(), End> {
        if self.skip_until_sync || self.batch.bytes <= self.shared.config.load().limits.max_batch_bytes {
            return Ok(());
        }
        self.batch.require(Target::Primary, STREAMED_BATCH);
        self.flush_or_sync(Frame { bytes: protocol::flush() }).await
    }

    pub(super) async fn flush_or_sync(&mut self, f: Frame) -> Result<(), End> {
        let is_sync = f.tag() == b'S';
        if self.skip_until_sync {
            if is_sync {
                self.skip_until_sync = false;
                self.batch = Batch::default();
                self.effects.request.clear();
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            }
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        if self.lost != super::lost::Lost::No {
            // The transaction's connection is gone: answered here (at the Sync).
            if is_sync {
                let rollback = batch.only_rollback && batch.statements > 0;
                let commit = batch.commits;
                self.answer_lost(rollback, commit, Some(&batch.items));
            }
            return Ok(());
        }
        if batch.items.is_empty() && self.server.is_none() {
            // A lone Sync (or Flush) with nothing to run: answered here, no server needed.
            if is_sync {
                self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
            }
            return Ok(());
        }
        let exclusive: Vec<_> = batch
            .items
            .iter()
            .filter_map(|i| if let BatchItem::Bind(_, p) = i { Some(p.analysis.exclusive.iter()) } else { None })
            .flatten()
            .collect();
        if !exclusive.is_empty() && self.tx_status.is_idle() && !Box::pin(self.free_databases(&exclusive)).await {
            self.abandon_batch(is_sync);
            return Ok(());
        }
        let (mut target, mut reason) = self.resolve(batch.target, batch.reason, &batch.lookups).await;
        let mut hint = batch.hint;
        if let Some(begin) = self.fresh_begin.take()
            && target == Target::Primary
            && reason == STANDBY_REFUSES
        {
            // Boxed: rare, and its state (a checkout) is large.
            Box::pin(self.move_fresh_transaction(&begin)).await?;
        }
        if self.batch_open && self.tx_status.is_idle() && target == Target::Primary && self.on_replica() {
            // The start of this batch went to a replica (it looked like a read when the client
            // flushed); the rest needs the primary. Close the replica's part with a Sync of our
            // own and carry on on the primary: prepared statements follow the client.
            if !self.close_open_batch().await? {
                self.abandon_batch(is_sync);
                return Ok(());
            }
        }
        let was_open = self.batch_open;
        let mut attempts = 0;
        let decision = loop {
            let decision = self.decide_waiting(target, reason, hint, batch.min_lsn).await;
            if !self.place(decision).await? {
                self.batch_open = false;
                self.abandon_batch(is_sync);
                return Ok(());
            }
            if was_open {
                break decision;
            }
            match self.prepare_checked(&batch.items).await? {
                Checked::Ready => break decision,
                // The connection died before anything of the batch was sent: another one.
                Checked::Lost if attempts < 3 => attempts += 1,
                Checked::Lost => {
                    let err = protocol::error("08006", "pgsplit: server connections keep failing");
                    self.out.extend_from_slice(&err);
                    self.abandon_batch(is_sync);
                    return Ok(());
                }
                Checked::Refused(err)
                    if let Some(code) = super::rerun::statement_code(&err)
                        && matches!(decision, Decision::Replica { .. })
                        && self.tx_status.is_idle()
                        && self.pin.is_none()
                        && self.outstanding == 0 =>
                {
                    // Re-preparing the client's statement on a replica that has not replayed
                    // what it names yet: the batch goes to the primary instead.
                    self.shared.metrics.replica_retries.with_label_values(&[code]).inc();
                    self.release_server();
                    (target, reason, hint) = (Target::Primary, NOT_REPLAYED_YET, None);
                }
                Checked::Refused(err) => {
                    // The statement's shape changed since the client described it (or it no
                    // longer parses): the client gets the server's error, the batch does not run.
                    self.out.extend_from_slice(&err);
                    self.abandon_batch(is_sync);
                    if self.tx_status.is_idle() && self.pin.is_none() && self.outstanding == 0 {
                        self.release_server();
                    }
                    return Ok(());
                }
            }
        };
        let Some(server) = self.server.as_mut() else {
            // place() leaves a connection; should that ever fail, the client still gets answered.
            self.out.extend_from_slice(&protocol::error("08006", "pgsplit: no server connection"));
            self.abandon_batch(is_sync);
            return Ok(());
        };
        let mut buf = BytesMut::with_capacity(256);
        if self.tx_status.is_idle() && !self.batch_open {
            // No portal can outlive this point, so statements can be closed safely.
            evict_statements(&batch.items, &mut server.conn, &mut self.expect, &mut buf);
        }
        let retryable = is_sync
            && !was_open
            && self.tx_status.is_idle()
            && self.pin.is_none()
            && matches!(decision, Decision::Replica { .. });
        if retryable {
            let work = RetryWork::Batch(batch.items.clone(), f.clone());
            self.retry = Some(Retry { work, target, reason, hint });
        }
        let node = server.conn.node;
        // Written on in pieces: a large batch is never copied whole into one buffer.
        let mut items = batch.items.into_iter();
        loop {
            let Some(server) = self.server.as_mut() else { return Ok(()) };
            let mut rest = false;
            for item in items.by_ref() {
                encode_item(item, &mut server.conn, &mut self.expect, &mut buf)?;
                if buf.len() >= WRITE_CHUNK {
                    rest = true;
                    break;
                }
            }
            if !rest {
                break;
            }
            self.cancel.running();
            let sent = server.conn.send(&buf).await;
            buf.clear();
            if let Err(e) = sent {
                return self.server_lost(e);
            }
        }
        buf.extend_from_slice(&f.bytes);
        if is_sync {
            self.expect.push_back(Expect::Sync);
            self.outstanding += 1;
            self.in_flight = super::lost::InFlight { commits: batch.commits, writes: target == Target::Primary };
            self.batch_open = false;
            self.observe.sent(node, matches!(decision, Decision::Replica { .. }));
            let probe = self.wants_commit_probe(target, batch.opens, batch.commits);
            let copies_in = batch.copies_in;
            if probe && copies_in {
                // COPY in the extended protocol: the probe cannot follow it; until a later
                // write is measured this client's reads go to the primary.
                self.causal.unknown();
            } else if probe {
                self.queue_commit_probe(&mut buf);
            }
        } else {
            self.batch_open = true;
        }
        self.send_server(&buf).await
    }

    /// The batch will not run (the client already has the error): forget what its statements
    /// would have done, and answer the Sync, or skip to it as the server would.
    fn abandon_batch(&mut self, is_sync: bool) {
        self.effects.request.clear();
        if is_sync {
            self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
        } else {
            self.skip_until_sync = true;
        }
    }

    pub(super) fn on_replica(&self) -> bool {
        let Some(s) = self.server.as_ref() else {
            return false;
        };
        self.shared.cluster.load().nodes.get(s.conn.node).is_some_and(|n| n.role == Role::Replica)
    }

    /// Ends the part of a batch already sent (up to a Flush) with a Sync of pgsplit's own and
    /// releases its server, so what follows can be routed on its own. Returns false when that
    /// part failed (the client got the error and the rest of its batch must be skipped).
    pub(super) async fn close_open_batch(&mut self) -> Result<bool, End> {
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
                let status = protocol::backend::ready_status(&f);
                self.tx_status = status;
                let settled = self.effects.settle(status);
                self.apply_effects(settled);
                self.batch_open = false;
                if status.is_idle() && self.pin.is_none() {
                    self.release_server();
                }
                return Ok(!failed);
            }
            self.on_server_frame(f)?;
        }
    }
}

/// Writes one batch item for `conn`, injecting the Parse (or Close) a statement needs there.
pub(super) fn encode_item(
    item: BatchItem,
    conn: &mut crate::backend::ServerConn,
    expect: &mut VecDeque<Expect>,
    buf: &mut BytesMut,
) -> Result<(), End> {
    pub(super) fn ensure(
        p: &Prepared,
        conn: &mut crate::backend::ServerConn,
        expect: &mut VecDeque<Expect>,
        buf: &mut BytesMut,
    ) {
        let present =
            if p.server_name.is_empty() { conn.unnamed == Some(p.key) } else { conn.prepared.contains(&p.server_name) };
        if !present {
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: true, name: p.server_name.clone(), duplicate_of: None });
            note_prepared(p, conn);
        }
    }
    match item {
        BatchItem::Parse(p) => {
            if !p.server_name.is_empty() && conn.prepared.contains(&p.server_name) {
                // Already there (same text and types): close it first so the client's Parse
                // gets its ParseComplete rather than "already exists".
                buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &p.server_name));
                expect.push_back(Expect::Close { swallow: true });
            }
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: false, name: p.server_name.clone(), duplicate_of: None });
            note_prepared(&p, conn);
        }
        BatchItem::Bind(f, p) => {
            ensure(&p, conn, expect, buf);
            if p.server_name.is_empty() {
                buf.extend_from_slice(&f.bytes);
            } else {
                buf.extend_from_slice(&crate::protocol::frontend::rewrite_bind(&f, &p.server_name)?);
            }
        }
        BatchItem::DescribeStatement(p) => {
            ensure(&p, conn, expect, buf);
            buf.extend_from_slice(&crate::protocol::frontend::target_message(b'D', b'S', &p.server_name));
            expect.push_back(Expect::Describe { statement: Some(p) });
        }
        BatchItem::CloseStatement(name) => {
            let name = String::from_utf8_lossy(&name).into_owned();
            conn.prepared.remove(&name);
            buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &name));
            expect.push_back(Expect::Close { swallow: false });
        }
        BatchItem::DuplicateParse(client_name) => {
            // A statement of pgsplit's own prepared twice: the second Parse fails with 42P05,
            // which the relay reports under the client's name.
            let parse = message(b'P', |b| {
                put_cstr(b, DUPLICATE_PROBE);
                put_cstr(b, "SELECT 1");
                b.put_i16(0);
            });
            if !conn.prepared.contains(DUPLICATE_PROBE) {
                buf.extend_from_slice(&parse);
                expect.push_back(Expect::Parse { swallow: true, name: DUPLICATE_PROBE.into(), duplicate_of: None });
                conn.prepared.insert(DUPLICATE_PROBE.into());
            }
            buf.extend_from_slice(&parse);
            expect.push_back(Expect::Parse {
                swallow: false,
                name: DUPLICATE_PROBE.into(),
                duplicate_of: Some(client_name),
            });
        }
        BatchItem::Raw(f) => {
            if f.tag() == b'C' {
                expect.push_back(Expect::Close { swallow: false });
            }
            if f.tag() == b'D' {
                expect.push_back(Expect::Describe { statement: None });
            }
            if f.tag() == b'P' {
                expect.push_back(Expect::Parse { swallow: false, name: String::new(), duplicate_of: None });
            }
            buf.extend_from_slice(&f.bytes);
        }
    }
    Ok(())
}

/// The server name of the statement pgsplit prepares twice to raise 42P05.
const DUPLICATE_PROBE: &str = "pgsplit_duplicate";

/// Server connections keep at most this many prepared statements; beyond it, pgsplit closes
/// some (those this batch does not use) so server memory stays bounded however many distinct
/// statements clients prepare. Evicted ones are prepared again on demand.
const MAX_SERVER_STATEMENTS: usize = 1000;

pub(super) fn evict_statements(
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
        buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &name));
        expect.push_back(Expect::Close { swallow: true });
        conn.prepared.remove(&name);
    }
}

pub(super) fn note_prepared(p: &Prepared, conn: &mut crate::backend::ServerConn) {
    if p.server_name.is_empty() {
        conn.unnamed = Some(p.key);
    } else {
        conn.prepared.insert(p.server_name.clone());
    }
}
