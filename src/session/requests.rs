//! Client to server: dispatching client messages; simple queries.

use super::causal::Causal;
use super::placement::AttachError;
use super::work::Route;
use super::{End, Session};
use crate::protocol::TxStatus;
use crate::protocol::{self, Frame, ProtocolError};
use crate::reason::Reason;
use crate::router::Decision;
use crate::sql::session_cmd::READ_ONLY_TRANSACTION;
use crate::sql::{Effect, Own, Target};

impl Session {
    pub(super) async fn on_client_frame(&mut self, f: Frame) -> Result<(), End> {
        if matches!(f.tag(), b'Q' | b'S' | b'F') {
            self.cut_if_writes_suspended()?;
        }
        match f.tag() {
            b'Q' => self.simple_query(f).await,
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if !self.work.skip_until_sync {
                    self.queue_extended(f)?;
                    self.stream_if_large().await?;
                }
                Ok(())
            }
            b'H' | b'S' => self.flush_or_sync(f).await,
            b'd' | b'c' | b'f' => {
                if self.hold.copy_in {
                    if f.tag() != b'd' {
                        self.hold.copy_in = false;
                        if std::mem::take(&mut self.causal.after_copy) {
                            let mut buf = bytes::BytesMut::from(&f.bytes[..]);
                            self.queue_commit_probe(&mut buf);
                            return self.send_server(&buf).await;
                        }
                    }
                    self.send_server(&f.bytes).await?;
                }
                // Outside COPY these are ignored, as PostgreSQL does.
                Ok(())
            }
            b'F' => {
                // FunctionCall (fast-path): may do anything, so the primary.
                let primary = self.shared.cluster.load().primary();
                let d = Decision::Primary { node: primary, reason: Reason::FastPath };
                if self.place(d).await? {
                    self.hold.outstanding += 1;
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

    /// Several instances: once this instance's write gate is shut (etcd lost, or a failover
    /// barrier), a transaction it holds open on the primary must not commit there: its server
    /// connection is closed (the server rolls it back) and the client's request is answered as
    /// for a lost transaction (40001, safe to retry; ROLLBACK succeeds).
    fn cut_if_writes_suspended(&mut self) -> Result<(), End> {
        if self.shared.coord.is_none()
            || self.hold.tx_status.is_idle()
            || self.hold.copy_in
            || self.hold.outstanding > 0
        {
            return Ok(());
        }
        let Some(node) = self.hold.node() else { return Ok(()) };
        let on_primary =
            self.shared.cluster.load().nodes.get(node).is_some_and(|n| n.role == crate::cluster::Role::Primary);
        let Some(why) = self.shared.coord_blocked().filter(|_| on_primary) else { return Ok(()) };
        let addr = self.discard_server().map(|(_, addr)| addr).unwrap_or_default();
        tracing::warn!(server = %addr, "ending a transaction on the primary: {why}");
        self.transaction_lost(&addr, why)
    }

    pub(super) async fn simple_query(&mut self, f: Frame) -> Result<(), End> {
        let sql = protocol::frontend::read_query(&f)?;
        let analysis = self.shared.analysis.cache.analyze(sql);
        if self.work.lost != super::work::Lost::No {
            let rollback = analysis.only_rollback && !analysis.statements.is_empty();
            self.answer_lost(rollback, analysis.commits, None);
            return Ok(());
        }
        if !analysis.exclusive.is_empty() && self.hold.tx_status.is_idle() {
            let exclusive: Vec<_> = analysis.exclusive.iter().collect();
            if !Box::pin(self.free_databases(&exclusive)).await {
                self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
                return Ok(());
            }
        }
        let fresh_begin = self.work.fresh_begin.take();
        if self.hold.batch_open && self.hold.free_to_route() {
            // A simple Query after Parse/Describe/Flush with no Sync (asyncpg prepares that
            // way): the flushed part is over; the query is routed on its own.
            self.close_open_batch().await?;
        }
        if let [c] = analysis.statements.as_slice()
            && let Effect::Deallocate(_) = &c.effect
            && self.hold.tx_status == TxStatus::Failed
        {
            // As PostgreSQL answers it in an aborted transaction.
            let msg = "current transaction is aborted, commands ignored until end of transaction block";
            self.client.out.extend_from_slice(&protocol::error("25P02", msg));
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        }
        if let [c] = analysis.statements.as_slice()
            && let Effect::Deallocate(name) = &c.effect
            && self.deallocate_locally(name.as_deref())
        {
            let tag = if name.is_some() { "DEALLOCATE" } else { "DEALLOCATE ALL" };
            self.client.out.extend_from_slice(&protocol::command_complete(tag));
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        }
        if let [c] = analysis.statements.as_slice()
            && let Some(own) = c.own
        {
            // pgsplit's own settings: answered here, replayed (quoted) for SHOW.
            self.apply_own(own);
            self.state.settings.apply(&c.effect);
            self.client.out.extend_from_slice(&protocol::command_complete("SET"));
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        }
        let route = Route::of(&analysis);
        let aimed = match self.aim(&route, fresh_begin).await? {
            Some(aim) => self.dispatch(aim).await?.map(|d| (aim, d)),
            None => None,
        };
        let Some((aim, decision)) = aimed else {
            // The client has its error; it still waits for its ReadyForQuery.
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        };
        let target = aim.target;
        let probe = self.wants_commit_probe(target, route.opens, route.commits);
        for c in &analysis.statements {
            self.note_effect(&c.effect, c.own);
        }
        if self.hold.free_to_route() && matches!(decision, Decision::Replica { .. }) {
            let work = super::work::RetryWork::Query(f.bytes.clone());
            self.work.retry = Some(super::work::Retry { work, aim });
            if let [c] = analysis.statements.as_slice()
                && c.reason == READ_ONLY_TRANSACTION
            {
                self.work.fresh_begin = Some(sql.to_string());
            }
        }
        self.hold.outstanding += 1;
        self.work.in_flight = super::work::InFlight { commits: route.commits, writes: target == Target::Primary };
        let Some(s) = self.hold.server.as_mut() else { return Ok(()) };
        // A simple Query destroys the unnamed prepared statement.
        s.conn.unnamed = None;
        let (node, replica) = (s.conn.node, matches!(decision, Decision::Replica { .. }));
        self.observe.sent(node, replica);
        if probe && route.copies_in {
            // The server will be in COPY: the probe follows the client's CopyDone instead.
            self.causal.after_copy = true;
        } else if probe
            && let [c] = analysis.statements.as_slice()
            && c.commits
            && c.reason == crate::reason::Reason::TransactionControl
        {
            // One plain COMMIT: the probe rides in its text (see causal.rs).
            let merged = super::causal::Causal::merged_commit(sql);
            self.causal.probe = Some(super::causal::Probe { merged: true, ..Default::default() });
            return self.send_server(&merged).await;
        } else if probe {
            let mut buf = bytes::BytesMut::with_capacity(f.bytes.len() + 64);
            buf.extend_from_slice(&f.bytes);
            self.queue_commit_probe(&mut buf);
            return self.send_server(&buf).await;
        }
        self.send_server(&f.bytes).await
    }

    /// Whether the request about to go to the server needs the commit-position probe.
    pub(super) fn wants_commit_probe(&self, target: Target, opens: bool, commits: bool) -> bool {
        let mode = self.shared.config.load().routing.read_your_writes;
        !self.on_replica()
            && Causal::wanted(mode, !self.hold.tx_status.is_idle(), target == Target::Primary, opens, commits)
    }

    /// Appends the commit-position probe behind a request (see `causal.rs`).
    pub(super) fn queue_commit_probe(&mut self, buf: &mut bytes::BytesMut) {
        buf.extend_from_slice(&super::causal::PROBE_MESSAGE);
        self.hold.outstanding += 1;
        self.causal.probe = Some(super::causal::Probe::default());
    }

    /// pgsplit's own settings take effect.
    pub(super) fn apply_own(&mut self, own: Own) {
        match own {
            Own::Route(m) => self.state.mode = m,
            Own::MinLsn(lsn) => self.causal.explicit = lsn,
            Own::MaxLagMs(ms) => self.causal.max_lag_ms = ms,
        }
    }

    /// A transaction that has run nothing but its BEGIN READ ONLY on a replica, whose next
    /// statement a standby refuses (SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE):
    /// it has no snapshot and no effects yet, so it starts again on the primary and the client
    /// never knows. If that fails the client's transaction is gone: its connection is closed.
    pub(super) async fn move_fresh_transaction(&mut self, begin: &str) -> Result<(), End> {
        if self.hold.tx_status != TxStatus::InTransaction || !self.on_replica() || self.hold.outstanding > 0 {
            return Ok(());
        }
        if let Some(s) = self.hold.server.as_mut() {
            match s.conn.run_silently("ROLLBACK").await {
                Ok(_) => self.release_server(),
                Err(e) => {
                    self.drop_broken_server(&e);
                }
            }
        }
        let primary = self.shared.cluster.load().primary();
        if let Err(AttachError::Failed(f) | AttachError::Refused(f)) = self.attach(primary).await {
            self.client.out.extend_from_slice(&super::placement::as_error(&f));
            return Err(End::Fatal("could not move a transaction to the primary".into()));
        }
        tracing::debug!("read-only transaction moved to the primary before its first statement");
        let Some(s) = self.hold.server.as_mut() else {
            return Err(End::Fatal("could not move a transaction to the primary".into()));
        };
        match s.conn.run_silently(begin).await {
            Ok(None) => Ok(()),
            Ok(Some(err)) => {
                self.client.out.extend_from_slice(&err.bytes);
                Err(End::Fatal("could not begin the transaction again on the primary".into()))
            }
            Err(e) => {
                self.drop_broken_server(&e);
                self.client
                    .out
                    .extend_from_slice(&protocol::error("08006", "pgsplit: the primary connection was lost"));
                Err(End::Fatal("primary lost while moving a transaction".into()))
            }
        }
    }

    /// DEALLOCATE of a statement pgsplit renamed (or ALL, outside a pinned session) is
    /// answered here: the server knows the statement under another name, or not at all.
    pub(super) fn deallocate_locally(&mut self, name: Option<&str>) -> bool {
        match name {
            Some(n) => self.state.statements.named.remove(n).is_some(),
            None if self.hold.pin.is_none() => {
                self.state.statements.named.clear();
                true
            }
            None => {
                self.state.statements.named.clear();
                false
            }
        }
    }

    pub(super) fn note_effect(&mut self, effect: &Effect, mode: Option<Own>) {
        match effect {
            Effect::None => {}
            Effect::Pin(why) => {
                if self.hold.pin.is_none() {
                    tracing::debug!(reason = why, "session pinned to its server connection");
                }
                self.hold.pin = Some(why);
            }
            e => self.state.effects.request.push((e.clone(), mode)),
        }
    }
}
