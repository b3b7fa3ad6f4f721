//! Extended-protocol batches: queued until Flush or Sync, routed as one unit, and written for
//! the connection that runs them (statements it lacks are prepared first).

use crate::reason::Reason;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::encode::{encode_item, evict_statements};
use super::extended::{self, Prepared};
use super::reprepare::Checked;
use super::work::{Batch, BatchItem, Retry, RetryWork};
use super::{End, Expect, Session};
use crate::cluster::Role;
use crate::protocol::{self, Frame};
use crate::router::Decision;
use crate::sql::set_config::{self, Resolved};
use crate::sql::{Effect, Target};

/// A batch is written to its server in pieces of about this size.
const WRITE_CHUNK: usize = 256 * 1024;

/// The reason of a batch sent on to the primary before its Sync because it grew too large.
const STREAMED_BATCH: Reason = Reason::StreamedBatch;

impl Session {
    pub(super) fn queue_extended(&mut self, f: Frame) -> Result<(), End> {
        self.work.batch.bytes += f.bytes.len();
        let item = match f.tag() {
            b'P' => {
                let p = crate::protocol::frontend::read_parse(&f)?;
                if !p.name.is_empty() && self.state.statements.named.contains_key(p.name) {
                    self.work.batch.items.push(BatchItem::DuplicateParse(p.name.to_string()));
                    return Ok(());
                }
                if !p.name.is_empty()
                    && self.state.statements.named.len() >= self.shared.config.load().limits.max_prepared_statements
                {
                    let max = self.shared.config.load().limits.max_prepared_statements;
                    // What the client may make pgsplit keep is bounded: the batch fails here.
                    let msg = format!(
                        "pgsplit: too many prepared statements in this session ({max}, limits.max_prepared_statements): DEALLOCATE some"
                    );
                    self.shared.metrics.error_sent("54000");
                    self.client.out.extend_from_slice(&protocol::error("54000", &msg));
                    self.work.batch = Batch::default();
                    if let Some(e) = self.state.effects.get_mut() {
                        e.request.clear();
                    }
                    self.work.skip_until_sync = true;
                    return Ok(());
                }
                let analysis = self.shared.analysis.cache.analyze(p.query);
                self.work.batch.route.add_analysis(&analysis);
                self.state.parses += 1;
                let prepared =
                    Arc::new(extended::prepared_from(&p, analysis, (self.client.cancel.pid, self.state.parses)));
                if p.name.is_empty() {
                    self.state.statements.unnamed = Some(prepared.clone());
                } else {
                    self.state.statements.named.insert(p.name.to_string(), prepared.clone());
                }
                BatchItem::Parse(prepared)
            }
            b'B' => {
                let (_, stmt, _) = crate::protocol::frontend::read_bind(&f)?;
                match self.state.statements.get(stmt).cloned() {
                    Some(p) => {
                        self.work.batch.route.add_analysis(&p.analysis);
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
                (b'S', name) => match self.state.statements.get(name).cloned() {
                    Some(p) => BatchItem::DescribeStatement(p),
                    None => BatchItem::Raw(f),
                },
                _ => BatchItem::Raw(f),
            },
            b'C' => match crate::protocol::frontend::read_target(&f)? {
                (b'S', "") => {
                    self.state.statements.unnamed = None;
                    BatchItem::Raw(f)
                }
                (b'S', name) => match self.state.statements.named.remove(name) {
                    Some(p) => BatchItem::CloseStatement(Bytes::from(p.server_name.clone())),
                    None => BatchItem::Raw(f),
                },
                _ => BatchItem::Raw(f),
            },
            _ => BatchItem::Raw(f),
        };
        self.work.batch.items.push(item);
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
                self.work.batch.route.require(Target::Primary, why);
                self.note_effect(&Effect::Pin(why.label()), None);
            }
        }
        Ok(())
    }

    /// A batch queued past limits.max_batch_bytes goes on to the primary now (as if the client
    /// had sent Flush), and what follows up to Sync joins it there as it arrives: a client
    /// streaming Binds without a Sync never makes pgsplit hold more than that bound.
    pub(super) async fn stream_if_large(&mut self) -> Result<(), End> {
        if self.work.skip_until_sync || self.work.batch.bytes <= self.shared.config.load().limits.max_batch_bytes {
            return Ok(());
        }
        self.work.batch.route.require(Target::Primary, STREAMED_BATCH);
        self.flush_or_sync(Frame { bytes: protocol::flush() }).await
    }

    pub(super) async fn flush_or_sync(&mut self, f: Frame) -> Result<(), End> {
        let is_sync = f.tag() == b'S';
        if self.work.skip_until_sync {
            if is_sync {
                self.work.skip_until_sync = false;
                self.work.batch = Batch::default();
                if let Some(e) = self.state.effects.get_mut() {
                    e.request.clear();
                }
                self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            }
            return Ok(());
        }
        let batch = std::mem::take(&mut self.work.batch);
        if self.work.lost != super::work::Lost::No {
            // The transaction's connection is gone: answered here (at the Sync).
            if is_sync {
                let rollback = batch.route.only_rolls_back();
                let commit = batch.route.commits;
                self.answer_lost(rollback, commit, Some(&batch.items));
            }
            return Ok(());
        }
        if batch.items.is_empty() && self.hold.server.is_none() {
            // A lone Sync (or Flush) with nothing to run: answered here, no server needed.
            if is_sync {
                self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            }
            return Ok(());
        }
        let exclusive: Vec<_> = batch
            .items
            .iter()
            .filter_map(|i| if let BatchItem::Bind(_, p) = i { Some(p.analysis.exclusive.iter()) } else { None })
            .flatten()
            .collect();
        if !exclusive.is_empty() && self.hold.tx_status.is_idle() && !Box::pin(self.free_databases(&exclusive)).await {
            self.abandon_batch(is_sync);
            return Ok(());
        }
        let fresh_begin = self.work.fresh_begin.take();
        let Some(mut aim) = self.aim(&batch.route, fresh_begin).await? else {
            self.abandon_batch(is_sync);
            return Ok(());
        };
        let was_open = self.hold.batch_open;
        let mut attempts = 0;
        let decision = loop {
            let Some(decision) = self.dispatch(aim).await? else {
                self.hold.batch_open = false;
                self.abandon_batch(is_sync);
                return Ok(());
            };
            if was_open {
                break decision;
            }
            match self.prepare_checked(&batch.items).await? {
                Checked::Ready => break decision,
                // The connection died before anything of the batch was sent: another one.
                Checked::Lost if attempts < 3 => attempts += 1,
                Checked::Lost => {
                    let err = protocol::error("08006", "pgsplit: server connections keep failing");
                    self.client.out.extend_from_slice(&err);
                    self.abandon_batch(is_sync);
                    return Ok(());
                }
                Checked::Refused(err)
                    if let Some(code) = super::rerun::statement_code(&err)
                        && matches!(decision, Decision::Replica { .. })
                        && self.hold.free_to_route()
                        && self.hold.outstanding == 0 =>
                {
                    // Re-preparing the client's statement on a replica that has not replayed
                    // what it names yet: the batch goes to the primary instead.
                    self.shared.metrics.replica_retries.with_label_values(&[code]).inc();
                    self.release_server();
                    aim = aim.not_replayed();
                }
                Checked::Refused(err) => {
                    // The statement's shape changed since the client described it (or it no
                    // longer parses): the client gets the server's error, the batch does not run.
                    self.client.out.extend_from_slice(&err);
                    self.abandon_batch(is_sync);
                    if self.hold.can_release() {
                        self.release_server();
                    }
                    return Ok(());
                }
            }
        };
        let hold = &mut *self.hold;
        let Some(server) = hold.server.as_mut() else {
            // place() leaves a connection; should that ever fail, the client still gets answered.
            self.client.out.extend_from_slice(&protocol::error("08006", "pgsplit: no server connection"));
            self.abandon_batch(is_sync);
            return Ok(());
        };
        let target = aim.target;
        let mut buf = BytesMut::with_capacity(256);
        if hold.tx_status.is_idle() && !hold.batch_open {
            // No portal can outlive this point, so statements can be closed safely.
            evict_statements(&batch.items, &mut server.conn, &mut hold.expect, &mut buf);
        }
        let retryable = is_sync
            && !was_open
            // (Fields, not free_to_route(): the server connection is borrowed.)
            && hold.tx_status.is_idle()
            && hold.pin.is_none()
            && matches!(decision, Decision::Replica { .. });
        if retryable {
            let work = RetryWork::Batch(batch.items.clone(), f.clone());
            self.work.retry = Some(Retry { work, aim });
        }
        let node = server.conn.node;
        // Written on in pieces: a large batch is never copied whole into one buffer.
        let mut items = batch.items.into_iter();
        loop {
            let hold = &mut *self.hold;
            let Some(server) = hold.server.as_mut() else { return Ok(()) };
            let mut rest = false;
            for item in items.by_ref() {
                encode_item(item, &mut server.conn, &mut hold.expect, &mut buf)?;
                if buf.len() >= WRITE_CHUNK {
                    rest = true;
                    break;
                }
            }
            if !rest {
                break;
            }
            self.client.cancel.running();
            let sent = server.conn.send(&buf).await;
            buf.clear();
            if let Err(e) = sent {
                return self.server_lost(e);
            }
        }
        buf.extend_from_slice(&f.bytes);
        if is_sync {
            self.hold.expect.push_back(Expect::Sync);
            self.hold.outstanding += 1;
            self.work.in_flight =
                super::work::InFlight { commits: batch.route.commits, writes: target == Target::Primary };
            self.hold.batch_open = false;
            self.observe.sent(node, matches!(decision, Decision::Replica { .. }));
            let probe = self.wants_commit_probe(target, batch.route.opens, batch.route.commits);
            let copies_in = batch.route.copies_in;
            if probe && copies_in {
                // COPY in the extended protocol: the probe cannot follow it; until a later
                // write is measured this client's reads go to the primary.
                self.causal.unknown();
            } else if probe {
                self.queue_commit_probe(&mut buf);
            }
        } else {
            self.hold.batch_open = true;
        }
        self.send_server(&buf).await
    }

    /// The batch will not run (the client already has the error): forget what its statements
    /// would have done, and answer the Sync, or skip to it as the server would.
    fn abandon_batch(&mut self, is_sync: bool) {
        if let Some(e) = self.state.effects.get_mut() {
            e.request.clear();
        }
        if is_sync {
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
        } else {
            self.work.skip_until_sync = true;
        }
    }

    pub(super) fn on_replica(&self) -> bool {
        let Some(s) = self.hold.server.as_ref() else {
            return false;
        };
        self.shared.cluster.load().nodes.get(s.conn.node).is_some_and(|n| n.role == Role::Replica)
    }

    /// Ends the part of a batch already sent (up to a Flush) with a Sync of pgsplit's own and
    /// releases its server, so what follows can be routed on its own. Returns false when that
    /// part failed (the client got the error and the rest of its batch must be skipped).
    pub(super) async fn close_open_batch(&mut self) -> Result<bool, End> {
        self.send_server(&protocol::sync()).await?;
        self.hold.expect.push_back(Expect::Sync);
        loop {
            let Some(s) = self.hold.server.as_mut() else {
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
                self.hold.expect.pop_front();
                let failed = self.state.effects.error_in_request;
                let status = protocol::backend::ready_status(&f);
                self.hold.tx_status = status;
                let settled = self.state.effects.get_mut().map(|e| e.settle(status)).unwrap_or_default();
                self.apply_effects(settled);
                self.hold.batch_open = false;
                if status.is_idle() && self.hold.pin.is_none() {
                    self.release_server();
                }
                return Ok(!failed);
            }
            self.on_server_frame(f)?;
        }
    }
}
