//! Where work runs: resolving catalog look-ups, the routing decision, checking out a server
//! connection and bringing it to the client's settings.

use bytes::Bytes;

use super::{End, Session};
use crate::backend::BackendError;
use crate::cancel::ServerKey;
use crate::pool::CheckoutError;
use crate::protocol;
use crate::router::{Decision, SessionView, route};
use crate::sql::Target;
use crate::sql::cache::Analysis;

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
        reason: &'static str,
        analyses: &[impl std::ops::Deref<Target = Analysis>],
    ) -> (Target, &'static str) {
        if target == Target::Primary || analyses.iter().all(|a| a.statements.iter().all(|c| c.lookups.is_empty())) {
            return (target, reason);
        }
        if self.shared.catalog.all_read_only(&self.database, analyses).await {
            (target.max(Target::Replica), reason)
        } else {
            (Target::Primary, "function or view not known to be read-only")
        }
    }

    pub(super) fn decide(&self, target: Target, reason: &'static str, hint: Option<crate::sql::Hint>) -> Decision {
        let view = SessionView {
            in_transaction: self.tx_status != b'I' || self.batch_open,
            pinned: self.pin.is_some(),
            mode: self.mode,
            serializable: self.settings.serializable(),
        };
        let topology = self.shared.cluster.load();
        // A random pick spreads reads evenly whatever the client's pattern of reads and
        // writes (a shared round-robin counter aliases with periodic patterns).
        route(target, reason, hint, view, &topology, rand::random::<u32>() as usize, &[])
    }

    /// Makes sure the client holds the server the decision names. Returns false when none
    /// could be had; the client then already has an ErrorResponse in `out`.
    pub(super) async fn place(&mut self, decision: Decision) -> Result<bool, End> {
        let role = match decision {
            Decision::Held { .. } => "held",
            Decision::Primary { .. } => "primary",
            Decision::Replica { .. } => "replica",
        };
        self.count_route(role, decision.reason());
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

    /// Counts a routing decision. Looking a labelled counter up hashes and locks, so each
    /// session keeps the few it uses.
    fn count_route(&mut self, role: &'static str, reason: &'static str) {
        if let Some((_, _, c)) = self.routed.iter().find(|(r, why, _)| *r == role && *why == reason) {
            c.inc();
            return;
        }
        let c = self.shared.metrics.routed.with_label_values(&[role, reason]);
        c.inc();
        self.routed.push((role, reason, c));
    }

    /// Checks out a connection to `node` and brings it to the client's settings.
    pub(super) async fn attach(&mut self, node: usize) -> Result<(), AttachError> {
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
                Ok(None) => {
                    co.conn.settings = self.settings.hash();
                    co.conn.identity_changed |= self.settings.changes_identity();
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
        self.cancel.set(Some(ServerKey { addr, pid: co.conn.pid, secret: co.conn.secret }));
        self.server = Some(co);
        Ok(())
    }

    pub(super) fn release_server(&mut self) {
        if let Some(s) = self.server.take() {
            self.cancel.set(None);
            s.release(&self.shared.metrics);
        }
    }

    pub(super) async fn send_server(&mut self, bytes: &[u8]) -> Result<(), End> {
        let Some(s) = self.server.as_mut() else {
            return Ok(());
        };
        if let Err(e) = s.conn.send(bytes).await {
            self.server_lost(e)?;
        }
        Ok(())
    }
}

/// A server's FATAL during connection set-up becomes an ERROR for a client whose session
/// goes on.
pub(super) fn as_error(f: &[u8]) -> Bytes {
    let body = &f[5..];
    let code = protocol::error_field(body, b'C').unwrap_or("08006");
    let msg = protocol::error_field(body, b'M').unwrap_or("server error");
    protocol::error(code, msg)
}
