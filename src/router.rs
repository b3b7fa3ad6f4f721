//! The routing decision: a pure function of (what the statements need, the session's state,
//! the topology). No sockets here; `tests` below is the routing table.

use crate::cluster::{Node, Role, Topology, balance};
use crate::config::OnAllLagging;
use crate::lsn::Lsn;
use crate::reason::Reason;
use crate::sql::{Hint, RouteMode, Target};

/// The reason of a read sent to the primary because no replica in rotation has replayed the
/// client's last write yet (or is within its `pgsplit.max_lag`).
pub const CAUSAL: Reason = Reason::Causal;
/// A read run again on the primary because a replica answered that what it names does not
/// exist (it had not replayed it yet).
pub const NOT_REPLAYED_YET: Reason = Reason::NotReplayedYet;
/// A read sent to the least lagged replica because none is in rotation (on_all_lagging).
pub const LAG_FALLBACK: Reason = Reason::LagFallback;
/// A read refused because no replica is in rotation (on_all_lagging = error).
pub const NO_REPLICA_ERROR: Reason = Reason::NoReplicaError;

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
    /// Reads only on replicas that have replayed this far (read-your-writes); 0: anywhere.
    pub min_lsn: Lsn,
    /// Reads only on replicas at most this many milliseconds behind (`pgsplit.max_lag`).
    pub max_lag_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep using the server connection the client holds.
    Held {
        reason: Reason,
    },
    Primary {
        node: usize,
        reason: Reason,
    },
    Replica {
        node: usize,
        reason: Reason,
    },
    /// No server may run it (on_all_lagging = error): the client gets an error.
    Refuse {
        reason: Reason,
    },
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Held { reason }
            | Decision::Primary { reason, .. }
            | Decision::Replica { reason, .. }
            | Decision::Refuse { reason } => *reason,
        }
    }
    pub fn node(&self) -> Option<usize> {
        match self {
            Decision::Held { .. } | Decision::Refuse { .. } => None,
            Decision::Primary { node, .. } | Decision::Replica { node, .. } => Some(*node),
        }
    }
}

/// Decides where a unit of work (a simple Query, or an extended batch up to Sync) runs.
/// `target` is the strictest need of its statements. `exclude` lists replicas that just failed.
pub fn route(
    target: Target,
    reason: Reason,
    hint: Option<Hint>,
    session: SessionView,
    topology: &Topology,
    turn: usize,
    exclude: &[usize],
) -> Decision {
    if session.in_transaction {
        return Decision::Held { reason: Reason::InsideTransaction };
    }
    if session.pinned {
        return Decision::Held { reason: Reason::SessionPinned };
    }
    let primary = topology.primary();
    if session.serializable {
        return Decision::Primary { node: primary, reason: Reason::SerializableIsolation };
    }
    // Nothing overrides a statement that needs the primary: a hint only ever makes a read
    // stricter, never a write looser.
    if target == Target::Primary {
        return Decision::Primary { node: primary, reason };
    }
    if hint == Some(Hint::Primary) {
        return Decision::Primary { node: primary, reason: Reason::PrimaryHint };
    }
    if session.mode == RouteMode::Primary && hint != Some(Hint::Replica) {
        return Decision::Primary { node: primary, reason: Reason::RoutePrimary };
    }
    // A read about the server it runs on answers for the primary, as for a client connected
    // to it, unless the client asks for a replica.
    if target == Target::Local && hint != Some(Hint::Replica) && session.mode != RouteMode::Replica {
        return Decision::Primary { node: primary, reason };
    }
    let reason = match (hint, target) {
        (Some(Hint::Replica), _) => Reason::ReplicaHint,
        (_, Target::Any) => Reason::SessionCommand,
        _ => reason,
    };
    // Session commands (SET, SHOW) run anywhere: freshness does not matter to them.
    let fresh = |n: &Node| {
        target == Target::Any
            || (n.replay_lsn() >= session.min_lsn
                && session.max_lag_ms.is_none_or(|m| n.probe.lag_ms.is_some_and(|l| l <= m)))
    };
    let eligible = |i: usize, n: &Node| n.in_rotation && !exclude.contains(&i) && fresh(n);
    match balance::pick(topology, turn, true, eligible) {
        Some(node) if node != primary => return Decision::Replica { node, reason },
        // The primary's share of reads, while a replica could have taken this one.
        Some(node) if balance::pick(topology, turn, false, eligible).is_some() => {
            return Decision::Primary { node, reason: Reason::PrimaryReadShare };
        }
        _ => {}
    }
    if topology.pick_replica(turn, exclude).is_some() {
        // Replicas take reads, but none has this client's last write yet.
        return Decision::Primary { node: primary, reason: CAUSAL };
    }
    match topology.on_all_lagging {
        OnAllLagging::Primary => Decision::Primary { node: primary, reason: Reason::NoReplica },
        OnAllLagging::LeastLagged => {
            let least = topology
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    n.role == Role::Replica
                        && n.healthy
                        && !n.paused
                        && !n.removed
                        && !exclude.contains(i)
                        && n.probe.observed.as_ref().is_some_and(|o| o.in_recovery)
                        && fresh(n)
                })
                .min_by_key(|(_, n)| n.probe.lag_bytes.unwrap_or(u64::MAX));
            match least {
                Some((node, _)) => Decision::Replica { node, reason: LAG_FALLBACK },
                None => Decision::Primary { node: primary, reason: Reason::NoReplica },
            }
        }
        OnAllLagging::Error if target == Target::Any => Decision::Primary { node: primary, reason: Reason::NoReplica },
        OnAllLagging::Error => Decision::Refuse { reason: NO_REPLICA_ERROR },
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
            ("SELECT count(*) FROM pg_stat_activity", idle, "primary"),
            ("SELECT pg_backend_pid()", idle, "primary"),
            ("SELECT gid FROM pg_catalog.pg_prepared_xacts", idle, "primary"),
            ("/* pgsplit:replica */ SELECT * FROM pg_stat_wal_receiver", idle, "replica"),
            ("SELECT pg_last_wal_replay_lsn()", mode_replica, "replica"),
            ("SELECT * FROM pg_locks", in_tx, "held"),
            ("SELECT * FROM pg_tables", idle, "replica"),
            ("SELECT pg_is_in_recovery()", idle, "replica"),
            ("SHOW transaction_read_only", idle, "primary"),
            ("show in_hot_standby", idle, "primary"),
            ("SHOW default_transaction_read_only", idle, "primary"),
            ("SHOW transaction_read_only", in_tx, "held"),
            ("/* pgsplit:replica */ SHOW transaction_read_only", idle, "replica"),
            ("SHOW work_mem", idle, "replica"),
        ];
        for (sql, s, want) in rows {
            let got = match decide(sql, *s, &t) {
                Decision::Held { .. } => "held",
                Decision::Primary { .. } => "primary",
                Decision::Replica { .. } => "replica",
                Decision::Refuse { .. } => "refuse",
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
        assert_eq!(d, Decision::Primary { node: 0, reason: Reason::NoReplica });
        let t = topo();
        let a = Analysis::of("SELECT 1", 1 << 20);
        let d = route(a.target, a.reason, None, SessionView::default(), &t, 0, &[1, 2]);
        assert_eq!(d.node(), Some(0));
    }

    fn observed(t: &mut Topology, node: usize, replay_lsn: u64, lag_bytes: u64) {
        t.nodes[node].probe.observed = Some(crate::cluster::topology::Observation {
            in_recovery: true,
            replay_lsn: Lsn(replay_lsn),
            ..Default::default()
        });
        t.nodes[node].probe.lag_bytes = Some(lag_bytes);
        t.nodes[node].probe.lag_ms = Some(lag_bytes / 10);
    }

    #[test]
    fn read_your_writes() {
        let mut t = topo();
        observed(&mut t, 1, 100, 0);
        observed(&mut t, 2, 200, 0);
        let a = Analysis::of("SELECT 1", 1 << 20);
        let at = |t: &Topology, min_lsn, max_lag_ms| {
            let s = SessionView { min_lsn, max_lag_ms, ..SessionView::default() };
            (0..6).map(|turn| route(a.target, a.reason, None, s, t, turn, &[])).collect::<Vec<_>>()
        };
        // Only the replica that replayed the floor, or the primary when none has.
        assert!(at(&t, Lsn(150), None).iter().all(|d| d.node() == Some(2)));
        assert!(at(&t, Lsn(100), None).iter().any(|d| d.node() == Some(1)));
        assert!(at(&t, Lsn(201), None).iter().all(|d| *d == Decision::Primary { node: 0, reason: CAUSAL }));
        // pgsplit.max_lag: the client's own tolerance.
        observed(&mut t, 1, 100, 5000);
        assert!(at(&t, Lsn(0), Some(100)).iter().all(|d| d.node() == Some(2)));
        assert!(at(&t, Lsn(0), Some(0)).iter().all(|d| d.node() == Some(2)));
        // Session commands ignore the floor.
        let set = Analysis::of("SET work_mem = '8MB'", 1 << 20);
        let s = SessionView { min_lsn: Lsn(1000), ..SessionView::default() };
        assert!(matches!(route(set.target, set.reason, None, s, &t, 0, &[]), Decision::Replica { .. }));
    }

    #[test]
    fn when_every_replica_lags() {
        let mut t = topo();
        observed(&mut t, 1, 100, 9000);
        observed(&mut t, 2, 100, 5000);
        for n in &mut t.nodes[1..] {
            n.in_rotation = false;
        }
        let a = Analysis::of("SELECT 1", 1 << 20);
        let s = SessionView::default();
        t.on_all_lagging = OnAllLagging::Primary;
        assert_eq!(
            route(a.target, a.reason, None, s, &t, 0, &[]),
            Decision::Primary { node: 0, reason: Reason::NoReplica }
        );
        t.on_all_lagging = OnAllLagging::LeastLagged;
        assert_eq!(route(a.target, a.reason, None, s, &t, 0, &[]), Decision::Replica { node: 2, reason: LAG_FALLBACK });
        // ... but never one without the client's last write.
        let floor = SessionView { min_lsn: Lsn(101), ..s };
        assert_eq!(route(a.target, a.reason, None, floor, &t, 0, &[]).node(), Some(0));
        t.nodes[2].healthy = false;
        assert_eq!(route(a.target, a.reason, None, s, &t, 0, &[]).node(), Some(1));
        t.on_all_lagging = OnAllLagging::Error;
        assert_eq!(route(a.target, a.reason, None, s, &t, 0, &[]), Decision::Refuse { reason: NO_REPLICA_ERROR });
        let set = Analysis::of("SHOW work_mem", 1 << 20);
        assert_eq!(route(set.target, set.reason, None, s, &t, 0, &[]).node(), Some(0));
        let w = Analysis::of("INSERT INTO t VALUES (1)", 1 << 20);
        assert_eq!(route(w.target, w.reason, None, s, &t, 0, &[]).node(), Some(0));
    }

    #[test]
    fn reads_alternate_between_replicas() {
        let mut t = topo();
        t.balance = crate::config::Balance::RoundRobin;
        let a = Analysis::of("SELECT 1", 1 << 20);
        let nodes: Vec<_> =
            (0..4).map(|i| route(a.target, a.reason, None, SessionView::default(), &t, i, &[]).node()).collect();
        assert_eq!(nodes, vec![Some(1), Some(2), Some(1), Some(2)]);
    }

    #[test]
    fn the_primary_takes_its_share_of_reads() {
        let mut t = topo();
        observed(&mut t, 1, 100, 0);
        observed(&mut t, 2, 200, 0);
        t.balance = crate::config::Balance::RoundRobin;
        t.primary_read_weight = 2;
        let read = Analysis::of("SELECT 1", 1 << 20);
        let at = |t: &Topology, s: SessionView| {
            (0..8).map(|turn| route(read.target, read.reason, None, s, t, turn, &[])).collect::<Vec<_>>()
        };
        let idle = SessionView::default();
        // Weights 2 (primary), 1, 1: half the reads on the primary, a quarter on each replica.
        let d = at(&t, idle);
        let on = |n: usize| d.iter().filter(|d| d.node() == Some(n)).count();
        assert_eq!((on(0), on(1), on(2)), (4, 2, 2));
        assert!(d.iter().filter(|d| d.node() == Some(0)).all(|d| d.reason() == Reason::PrimaryReadShare));
        // A floor only replica 2 has: the primary and replica 2 share.
        let d = at(&t, SessionView { min_lsn: Lsn(150), ..idle });
        assert!(d.iter().all(|d| matches!(d.node(), Some(0) | Some(2))));
        // A floor no replica has: the primary, for read-your-writes, not as its share.
        let d = at(&t, SessionView { min_lsn: Lsn(300), ..idle });
        assert!(d.iter().all(|d| *d == Decision::Primary { node: 0, reason: CAUSAL }));
        // No replica in rotation: as without a share.
        for n in &mut t.nodes[1..] {
            n.in_rotation = false;
        }
        assert!(at(&t, idle).iter().all(|d| *d == Decision::Primary { node: 0, reason: Reason::NoReplica }));
        // Weight 0 (the default): never.
        let mut t = topo();
        observed(&mut t, 1, 100, 0);
        observed(&mut t, 2, 200, 0);
        assert!(at(&t, idle).iter().all(|d| matches!(d, Decision::Replica { .. })));
    }
}
