//! The routing decision: a pure function of (what the statements need, the session's state,
//! the topology). No sockets here; `tests` below is the routing table.

use crate::sql::{Hint, RouteMode, Target};
use crate::topology::Topology;

/// What the session knows about itself when a statement arrives.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionView {
    /// Inside an explicit transaction (ReadyForQuery said 'T' or 'E'): stay on its server.
    pub in_transaction: bool,
    /// Pinned to its primary connection for good (temp table, session lock, LISTEN...).
    pub pinned: bool,
    pub mode: RouteMode,
    /// The session's transactions default to SERIALIZABLE: a standby refuses to run them.
    pub serializable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep using the server connection the client holds.
    Held {
        reason: &'static str,
    },
    Primary {
        node: usize,
        reason: &'static str,
    },
    Replica {
        node: usize,
        reason: &'static str,
    },
}

impl Decision {
    pub fn reason(&self) -> &'static str {
        match self {
            Decision::Held { reason } | Decision::Primary { reason, .. } | Decision::Replica { reason, .. } => reason,
        }
    }
    pub fn node(&self) -> Option<usize> {
        match self {
            Decision::Held { .. } => None,
            Decision::Primary { node, .. } | Decision::Replica { node, .. } => Some(*node),
        }
    }
}

/// Decides where a unit of work (a simple Query, or an extended batch up to Sync) runs.
/// `target` is the strictest need of its statements. `exclude` lists replicas that just failed.
pub fn route(
    target: Target,
    reason: &'static str,
    hint: Option<Hint>,
    session: SessionView,
    topology: &Topology,
    turn: usize,
    exclude: &[usize],
) -> Decision {
    if session.in_transaction {
        return Decision::Held { reason: "inside a transaction" };
    }
    if session.pinned {
        return Decision::Held { reason: "session pinned to the primary" };
    }
    let primary = topology.primary();
    if session.serializable {
        return Decision::Primary { node: primary, reason: "serializable isolation" };
    }
    // Nothing overrides a statement that needs the primary: a hint only ever makes a read
    // stricter, never a write looser.
    if target == Target::Primary {
        return Decision::Primary { node: primary, reason };
    }
    if hint == Some(Hint::Primary) {
        return Decision::Primary { node: primary, reason: "pgsplit:primary hint" };
    }
    if session.mode == RouteMode::Primary && hint != Some(Hint::Replica) {
        return Decision::Primary { node: primary, reason: "pgsplit.route = primary" };
    }
    let reason = match (hint, target) {
        (Some(Hint::Replica), _) => "pgsplit:replica hint",
        (_, Target::Any) => "session command",
        _ => reason,
    };
    match topology.pick_replica(turn, exclude) {
        Some(node) => Decision::Replica { node, reason },
        None => Decision::Primary { node: primary, reason: "no replica in rotation" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::cache::Analysis;

    fn topo() -> Topology {
        Topology::new("p:1", &["r1:1".into(), "r2:1".into()])
    }

    fn decide(sql: &str, s: SessionView, t: &Topology) -> Decision {
        let a = Analysis::of(sql, 1 << 20);
        route(a.target, a.reason, a.hint, s, t, 0, &[])
    }

    #[test]
    fn table() {
        let t = topo();
        let idle = SessionView::default();
        let in_tx = SessionView { in_transaction: true, ..idle };
        let pinned = SessionView { pinned: true, ..idle };
        let mode_primary = SessionView { mode: RouteMode::Primary, ..idle };
        let mode_replica = SessionView { mode: RouteMode::Replica, ..idle };
        let serializable = SessionView { serializable: true, ..idle };
        let rows: &[(&str, SessionView, &str)] = &[
            ("SELECT 1", idle, "replica"),
            ("INSERT INTO t VALUES (1)", idle, "primary"),
            ("SELECT * FROM t FOR UPDATE", idle, "primary"),
            ("SELECT 1; UPDATE t SET a = 1", idle, "primary"),
            ("SELECT 1", in_tx, "held"),
            ("INSERT INTO t VALUES (1)", in_tx, "held"),
            ("SELECT 1", pinned, "held"),
            ("/* pgsplit:primary */ SELECT 1", idle, "primary"),
            ("/* pgsplit:replica */ SELECT 1", idle, "replica"),
            ("/* pgsplit:replica */ DELETE FROM t", idle, "primary"),
            ("SELECT 1", mode_primary, "primary"),
            ("/* pgsplit:replica */ SELECT 1", mode_primary, "replica"),
            ("SELECT 1", mode_replica, "replica"),
            ("UPDATE t SET a = 1", mode_replica, "primary"),
            ("SET search_path = x", idle, "replica"),
            ("BEGIN", idle, "primary"),
            ("BEGIN READ ONLY", idle, "replica"),
            ("SELEC oops", idle, "primary"),
            ("SELECT 1", serializable, "primary"),
            ("/* pgsplit:replica */ SELECT 1", serializable, "primary"),
            ("SHOW search_path", serializable, "primary"),
            ("SELECT 1", SessionView { in_transaction: true, ..serializable }, "held"),
            ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", idle, "primary"),
            ("SET transaction_read_only = off", idle, "primary"),
        ];
        for (sql, s, want) in rows {
            let got = match decide(sql, *s, &t) {
                Decision::Held { .. } => "held",
                Decision::Primary { .. } => "primary",
                Decision::Replica { .. } => "replica",
            };
            assert_eq!(got, *want, "{sql} with {s:?}");
        }
    }

    #[test]
    fn no_replica_means_primary() {
        let mut t = topo();
        for n in &mut t.nodes[1..] {
            n.in_rotation = false;
        }
        let d = decide("SELECT 1", SessionView::default(), &t);
        assert_eq!(d, Decision::Primary { node: 0, reason: "no replica in rotation" });
        let t = topo();
        let a = Analysis::of("SELECT 1", 1 << 20);
        let d = route(a.target, a.reason, None, SessionView::default(), &t, 0, &[1, 2]);
        assert_eq!(d.node(), Some(0));
    }

    #[test]
    fn reads_alternate_between_replicas() {
        let t = topo();
        let a = Analysis::of("SELECT 1", 1 << 20);
        let nodes: Vec<_> =
            (0..4).map(|i| route(a.target, a.reason, None, SessionView::default(), &t, i, &[]).node()).collect();
        assert_eq!(nodes, vec![Some(1), Some(2), Some(1), Some(2)]);
    }
}
