//! Where work runs: resolving catalog look-ups, the routing decision, checking out a server
//! connection and bringing it to the client's settings.

use crate::reason::Reason;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{End, Session};
use crate::backend::BackendError;
use crate::cancel::ServerKey;
use crate::cluster::Role;
use crate::cluster::topology::LoadGuard;
use crate::pool::CheckoutError;
use crate::protocol;
use crate::protocol::TxStatus;
use crate::router::{CAUSAL, Decision, NOT_REPLAYED_YET, SessionView, route};
use crate::sql::Target;
use crate::sql::cache::Analysis;
use crate::sql::database_ddl::Exclusive;

/// Why a server connection could not be had for the client.
pub(super) enum AttachError {
    /// The server said no (authentication, missing database): relay its message.
    Refused(Bytes),
    /// The server could not be used; the message is pgsplit's.
    Failed(Bytes),
}

impl Session {
    /// Resolves functions that need a catalog look-up: any not provably read-only makes the
    /// work need the primary.
    pub(super) async fn resolve(
        &self,
        target: Target,
        reason: Reason,
        analyses: &[impl std::ops::Deref<Target = Analysis>],
    ) -> (Target, Reason) {
        if target == Target::Primary || analyses.iter().all(|a| a.statements.iter().all(|c| c.lookups.is_empty())) {
            return (target, reason);
        }
        // Boxed: a catalog look-up is rare and its state large; inline, it would size every
        // client's task.
        if Box::pin(self.shared.analysis.catalog.all_read_only(&self.client.database, analyses)).await {
            (target.max(Target::Replica), reason)
        } else {
            (Target::Primary, Reason::UnknownFunction)
        }
    }

    /// The position a read of this session needs a replica to have replayed.
    fn floor(&self, statement_lsn: Option<crate::lsn::Lsn>) -> crate::lsn::Lsn {
        let mode = self.shared.config.load().routing.read_your_writes;
        self.causal.min_lsn(mode, &self.shared.global_floor, statement_lsn)
    }

    /// The routing decision for work that needs replicas past `floor` (see `floor`).
    fn decide(
        &self,
        target: Target,
        reason: Reason,
        hint: Option<crate::sql::Hint>,
        floor: crate::lsn::Lsn,
    ) -> Decision {
        let view = SessionView {
            in_transaction: !self.hold.tx_status.is_idle() || self.hold.batch_open,
            pinned: self.hold.pin.is_some(),
            mode: self.state.mode,
            serializable: self.state.settings.serializable(),
            min_lsn: floor,
            max_lag_ms: self.causal.max_lag_ms,
        };
        let topology = self.shared.cluster.load();
        // A random turn (least outstanding breaks ties with it, random uses it whole): it
        // spreads reads evenly whatever the client's pattern of reads and writes (a shared
        // round-robin counter aliases with periodic patterns).
        let turn = self.shared.cluster.next_turn(topology.balance);
        route(target, reason, hint, view, &topology, turn, &[])
    }

    /// `decide`, and when the read would go to the primary only because no replica has
    /// replayed the client's last write yet, has the replay watch ask the replicas and waits
    /// up to `routing.causal_wait_ms` for one (a replica's round trip, not a poll interval).
    pub(super) async fn decide_waiting(
        &self,
        target: Target,
        reason: Reason,
        hint: Option<crate::sql::Hint>,
        statement_lsn: Option<crate::lsn::Lsn>,
    ) -> Decision {
        let floor = self.floor(statement_lsn);
        let d = self.decide(target, reason, hint, floor);
        if d.reason() != CAUSAL {
            return d;
        }
        // No replica is known to have this client's last write yet: the replay watch asks
        // them now, for this read if it may wait, else for the next.
        self.shared.cluster.replay.want(floor);
        let wait = self.shared.config.load().routing.causal_wait_ms;
        if wait == 0 {
            return d;
        }
        // The wait boxed: the rare path's state does not size every client's task.
        Box::pin(self.wait_for_replica(target, reason, hint, statement_lsn, wait)).await
    }

    async fn wait_for_replica(
        &self,
        target: Target,
        reason: Reason,
        hint: Option<crate::sql::Hint>,
        statement_lsn: Option<crate::lsn::Lsn>,
        wait: u64,
    ) -> Decision {
        let deadline = Instant::now() + Duration::from_millis(wait);
        loop {
            let now = Instant::now();
            // The floor again each turn: in global mode other clients' commits raise it.
            let floor = self.floor(statement_lsn);
            if now >= deadline {
                return self.decide(target, reason, hint, floor);
            }
            let learned = self.shared.cluster.replay.learned.notified();
            tokio::pin!(learned);
            learned.as_mut().enable();
            self.shared.cluster.replay.want(floor);
            let _ = tokio::time::timeout(deadline - now, learned).await;
            let d = self.decide(target, reason, hint, self.floor(statement_lsn));
            if d.reason() != CAUSAL {
                return d;
            }
        }
    }

    /// Before statements that need a database free of other sessions (DROP DATABASE, ALTER
    /// DATABASE ... RENAME, CREATE DATABASE ... TEMPLATE): waits up to 5 s, as PostgreSQL
    /// waits for other backends, for pgsplit's other clients of that database to leave; if some
    /// remain the client gets PostgreSQL's 55006 and false (the work does not run). Then every
    /// pooled connection to that database closes, on every server, pgsplit's own included.
    /// With DROP DATABASE ... WITH (FORCE) PostgreSQL ends the other sessions itself.
    pub(super) async fn free_databases(&mut self, exclusive: &[&Exclusive]) -> bool {
        const WAIT: Duration = Duration::from_secs(5);
        let me = self.observe.slot.as_ref().map_or(0, |s| s.id);
        for e in exclusive {
            let database = e.database();
            let deadline = Instant::now() + WAIT;
            loop {
                let others = if e.forces() { 0 } else { self.shared.clients.count_on(database, me) };
                if others == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    let detail = if others == 1 {
                        "There is 1 other session using the database.".to_string()
                    } else {
                        format!("There are {others} other sessions using the database.")
                    };
                    self.shared.metrics.error_sent("55006");
                    self.client.out.extend_from_slice(&protocol::error_detail("55006", &e.busy_message(), &detail));
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Connections still checked out close as they come back while PostgreSQL waits.
            let (closed, busy) = self.shared.pools.drain_database(database, WAIT + Duration::from_secs(1));
            self.shared.sql.forget_database(database);
            tracing::debug!(
                database,
                closed,
                busy,
                "closed pooled connections before a statement that needs the database alone"
            );
        }
        true
    }

    /// Makes sure the client holds the server the decision names. Returns false when none
    /// could be had; the client then already has an ErrorResponse in `out`.
    pub(super) async fn place(&mut self, decision: Decision) -> Result<bool, End> {
        let (role, node) = match decision {
            Decision::Held { .. } => ("held", self.hold.node()),
            Decision::Primary { node, .. } => ("primary", Some(node)),
            Decision::Replica { node, .. } => ("replica", Some(node)),
            Decision::Refuse { .. } => ("none", None),
        };
        let server = node.and_then(|n| self.shared.cluster.load().nodes.get(n).map(|n| n.addr.clone()));
        let server_label = server.as_deref().unwrap_or("none");
        self.observe.route(&self.shared.metrics, server_label, node.unwrap_or(usize::MAX), role, decision.reason());
        if let Decision::Refuse { reason } = decision {
            self.shared.metrics.error_sent("57P03");
            self.client.out.extend_from_slice(&protocol::error("57P03", &format!("pgsplit: {reason}")));
            return Ok(false);
        }
        if let Some(s) = &self.hold.server {
            if matches!(decision, Decision::Held { .. }) && self.held_on_old_primary(s.conn.node) {
                return self.leave_old_primary();
            }
            return Ok(true);
        }
        // Boxed: getting a server connection (waits, checkout, settings replay, reconnects) is
        // the largest state a session goes through; inline, it would size every idle
        // client's task for it. One small allocation per checkout instead.
        Box::pin(self.checkout_for(decision)).await
    }

    /// Whether the connection the session holds is on a former primary: fenced by a failover,
    /// switchover or PROMOTE, or (for a pinned session, always on the primary) no longer the
    /// primary. Nothing pgsplit holds may write there again.
    fn held_on_old_primary(&self, node: usize) -> bool {
        let t = self.shared.cluster.load();
        t.nodes.get(node).is_some_and(|n| n.fenced) || (self.hold.pin.is_some() && node != t.primary())
    }

    /// The session held a connection to a former primary: it is closed before anything more is
    /// sent there. A pinned session cannot move (FATAL); a transaction is over (40001, as for a
    /// lost connection; ROLLBACK then goes on).
    fn leave_old_primary(&mut self) -> Result<bool, End> {
        let addr = self.discard_server().map(|(_, a)| a).unwrap_or_default();
        tracing::warn!(server = %addr, "a session held a connection to the former primary: closed");
        if let Some(why) = self.hold.pin {
            let msg = format!(
                "pgsplit: {addr} is no longer the primary (failover or switchover): this session's {why} was there and cannot move; reconnect"
            );
            self.shared.metrics.error_sent("57P01");
            self.client.out.extend_from_slice(&protocol::fatal("57P01", &msg));
            return Err(End::Fatal(msg));
        }
        let msg = format!(
            "pgsplit: the transaction was rolled back: {addr} is no longer the primary (failover or switchover); retry it"
        );
        self.shared.metrics.error_sent("40001");
        self.client.out.extend_from_slice(&protocol::error("40001", &msg));
        self.state.effects = super::lazy::Lazy::default();
        self.hold.tx_status = TxStatus::Failed;
        self.work.lost = super::work::Lost::Reported;
        Ok(false)
    }

    /// Gets the server connection a decision names (the client holds none).
    async fn checkout_for(&mut self, decision: Decision) -> Result<bool, End> {
        let mut exclude = Vec::new();
        let mut decision = decision;
        let mut primary_deadline = None;
        if matches!(decision, Decision::Primary { .. })
            && self.hold.free_to_route()
            && self.shared.writes_blocked().is_some()
        {
            // A switchover or a failover barrier holds new work on the primary, or this
            // instance has lost etcd: wait for the new primary (or etcd), then fail closed.
            let wait = self.shared.config.load().failover.failover_wait_ms;
            let deadline = Instant::now() + Duration::from_millis(wait);
            while self.shared.writes_blocked().is_some() && Instant::now() < deadline {
                let published = self.shared.cluster.published.notified();
                tokio::pin!(published);
                published.as_mut().enable();
                if self.shared.writes_blocked().is_none() {
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_millis(100));
                let _ = tokio::time::timeout(left, published).await;
            }
            if let Some(why) = self.shared.fail_closed() {
                self.shared.metrics.error_sent("57P03");
                self.client.out.extend_from_slice(&protocol::error("57P03", &format!("pgsplit: {why}; try again")));
                return Ok(false);
            }
            decision = Decision::Primary { node: self.shared.cluster.load().primary(), reason: decision.reason() };
        }
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
                        None => Decision::Primary { node: primary, reason: Reason::NoReplicaReachable },
                    };
                    let _ = f;
                }
                Err(AttachError::Failed(f))
                    if matches!(decision, Decision::Primary { .. }) && self.hold.free_to_route() =>
                {
                    // The primary is down: outside a transaction nothing has started, so the
                    // work waits for a new primary (a failover) up to failover_wait.
                    let wait = self.shared.config.load().failover.failover_wait_ms;
                    let deadline = *primary_deadline.get_or_insert(Instant::now() + Duration::from_millis(wait));
                    match self.wait_for_primary(node, deadline).await {
                        Some(p) => decision = Decision::Primary { node: p, reason: decision.reason() },
                        None => {
                            self.client.out.extend_from_slice(&as_error(&f));
                            return Ok(false);
                        }
                    }
                }
                Err(AttachError::Refused(f))
                    if let Some(code) = super::rerun::login_refusal(&f)
                        && matches!(decision, Decision::Replica { .. }) =>
                {
                    // The replica lacks the database or role (or what the client's settings
                    // name): it has not replayed it yet. The primary answers for it.
                    self.shared.metrics.replica_retries.with_label_values(&[code]).inc();
                    tracing::debug!(node, "a replica refused the login (not replayed yet?): using the primary");
                    decision =
                        Decision::Primary { node: self.shared.cluster.load().primary(), reason: NOT_REPLAYED_YET };
                }
                Err(AttachError::Failed(f)) | Err(AttachError::Refused(f)) => {
                    self.client.out.extend_from_slice(&as_error(&f));
                    return Ok(false);
                }
            }
        }
    }

    /// Waits until the topology names a primary other than `failed` (or `failed` is healthy
    /// again), up to `deadline`. None when the deadline passed.
    async fn wait_for_primary(&self, failed: usize, deadline: Instant) -> Option<usize> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let published = self.shared.cluster.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            {
                let t = self.shared.cluster.load();
                let p = t.primary();
                if p != failed || t.nodes.get(p).is_some_and(|n| n.healthy) {
                    return Some(p);
                }
            }
            let _ = tokio::time::timeout(deadline - now, published).await;
        }
    }

    /// Checks out a connection to `node` and brings it to the client's settings.
    pub(super) async fn attach(&mut self, node: usize) -> Result<(), AttachError> {
        let addr = match self.shared.cluster.load().nodes.get(node) {
            Some(n) => n.addr.clone(),
            None => {
                return Err(AttachError::Failed(protocol::error("08006", "no such server")));
            }
        };
        if self.state.pools.len() <= node {
            self.state.pools.resize(node + 1, None);
        }
        let pool = match &self.state.pools[node] {
            Some(p) => p.clone(),
            None => {
                let p = self.shared.pools.pool_for(&addr, &self.client.user, &self.client.database);
                self.state.pools[node] = Some(p.clone());
                p
            }
        };
        let (replica, load) = {
            let t = self.shared.cluster.load();
            t.nodes.get(node).map(|n| (n.role == Role::Replica, n.load.clone())).unwrap_or((false, Default::default()))
        };
        let waited = Instant::now();
        let checkout = self.shared.pools.checkout(&pool, node).await;
        self.observe.checkout_waited(&self.shared.metrics, replica, waited.elapsed().as_secs_f64());
        let mut co = match checkout {
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
        if co.conn.settings != self.state.settings.hash() {
            let (reset, settings) = self.state.settings.replay_sql();
            let replay = if settings.is_empty() { vec![reset] } else { vec![reset, settings.as_str()] };
            match co.conn.run_silently_each(&replay).await {
                Ok(None) => {
                    co.conn.settings = self.state.settings.hash();
                    co.conn.identity_changed |= self.state.settings.changes_identity();
                }
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
        self.client.cancel.attach(ServerKey { addr, pid: co.conn.pid, secret: co.conn.secret });
        self.hold.server = Some(co);
        self.hold.timeout_cancelled = None;
        self.hold.load = Some(LoadGuard::new(&load));
        self.observe.attached(Some(node));
        Ok(())
    }

    pub(super) fn release_server(&mut self) {
        if let Some(s) = self.hold.server.take() {
            // A connection a cancel went to may still get it: never pooled for someone else.
            let cancelled = self.client.cancel.detach();
            self.hold.load = None;
            self.observe.attached(None);
            if self.hold.timeout_cancelled.take().is_some() || cancelled {
                s.discard(&self.shared.metrics);
            } else {
                s.release(&self.shared.metrics);
            }
        }
    }

    pub(super) async fn send_server(&mut self, bytes: &[u8]) -> Result<(), End> {
        let Some(s) = self.hold.server.as_mut() else {
            return Ok(());
        };
        self.client.cancel.running();
        if let Err(e) = s.conn.send(bytes).await {
            self.server_lost(e)?;
        }
        Ok(())
    }
}

/// A server's FATAL during connection set-up becomes an ERROR for a client whose session
/// goes on.
pub(super) fn as_error(f: &[u8]) -> Bytes {
    let err = protocol::backend::error_fields(f);
    let code = err.code().unwrap_or("08006");
    let msg = err.message().unwrap_or("server error");
    protocol::error(code, msg)
}
