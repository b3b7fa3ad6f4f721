//! The live view of the cluster: which server is the primary, which replicas are healthy, how
//! far behind they are and whether they take reads (and why not). Written by the monitor (and
//! by sessions that see a server refuse connections), read lock-free on the hot path through
//! `ArcSwap`. Node indices are stable for the life of the process: a replica removed by a
//! reload stays as a `removed` slot, a new one is appended.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::config::{Balance, OnAllLagging};
use crate::lsn::{AtomicLsn, Lsn};
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
}

/// Why a replica takes no reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutReason {
    /// Refused connections or failed its health check.
    Unreachable,
    /// Says it is not in recovery: not a streaming replica of this primary.
    NotInRecovery,
    /// Further behind than `max_lag_bytes` or `max_lag_ms`.
    Lagging,
    /// Replay paused (pg_wal_replay_pause).
    ReplayPaused,
    /// Its WAL receiver is not streaming: it gets no new WAL.
    ReceiverDown,
    /// An operator paused it (admin PAUSE).
    Paused,
    /// Removed from the configuration by a reload.
    Removed,
    /// A former primary after a failover: never routed to again.
    Fenced,
    /// A replica that replayed past the new primary's fork point: it needs pg_rewind.
    Diverged,
}

impl OutReason {
    pub fn as_str(self) -> &'static str {
        match self {
            OutReason::Unreachable => "unreachable",
            OutReason::NotInRecovery => "not in recovery",
            OutReason::Lagging => "lagging",
            OutReason::ReplayPaused => "replay paused",
            OutReason::ReceiverDown => "wal receiver down",
            OutReason::Paused => "paused by operator",
            OutReason::Removed => "removed",
            OutReason::Fenced => "fenced (former primary)",
            OutReason::Diverged => "diverged, needs pg_rewind",
        }
    }

    pub const ALL: [OutReason; 9] = [
        OutReason::Unreachable,
        OutReason::NotInRecovery,
        OutReason::Lagging,
        OutReason::ReplayPaused,
        OutReason::ReceiverDown,
        OutReason::Paused,
        OutReason::Removed,
        OutReason::Fenced,
        OutReason::Diverged,
    ];
}

/// What the last probe of a server saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub in_recovery: bool,
    /// pg_current_wal_insert_lsn() on a primary.
    pub insert_lsn: Lsn,
    /// pg_last_wal_receive_lsn() / pg_last_wal_replay_lsn() on a replica.
    pub receive_lsn: Lsn,
    pub replay_lsn: Lsn,
    pub replay_paused: bool,
    /// pg_stat_wal_receiver.status ("streaming", ...); None when there is no receiver.
    pub receiver_status: Option<String>,
    /// The timeline the server is on (a primary's current one, a replica's received one).
    pub timeline: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub addr: Arc<str>,
    pub role: Role,
    /// The last health check (or connection attempt) succeeded.
    pub healthy: bool,
    /// What the monitor's probes found and derived (lag, hysteresis).
    pub probe: Probed,
    /// Healthy and within the lag limits: may take reads.
    pub in_rotation: bool,
    /// Why not, when not.
    pub out: Option<OutReason>,
    /// Its settings from the configuration.
    pub settings: NodeSettings,
    /// Paused by an operator: no new work.
    pub paused: bool,
    /// Gone from the configuration (the slot stays so indices never move).
    pub removed: bool,
    /// A former primary (or a diverged replica): never receives traffic from pgsplit again.
    pub fenced: bool,
    /// Fenced because it diverged from the new primary's timeline.
    pub diverged: bool,
    /// Client work running there now (for least-outstanding balancing), shared by every
    /// snapshot of this node.
    pub load: Arc<AtomicUsize>,
    /// The replay position the replay watch (`replay.rs`) saw since the last probe, shared by
    /// every snapshot of this node: fresher than `probe.observed` while reads wait for it.
    pub replayed: Arc<AtomicLsn>,
}

/// What the monitor keeps about a server between its probes (written by the monitor alone).
#[derive(Debug, Clone, Default)]
pub struct Probed {
    /// The last probe's answers (None until the first probe).
    pub observed: Option<Observation>,
    /// WAL bytes between the primary's current position and this replica's replay position.
    pub lag_bytes: Option<u64>,
    /// Milliseconds of replay delay: the age of the oldest WAL the replica has not replayed
    /// (`lag.rs`); 0 when it has replayed everything the primary had at its last probe,
    /// however long ago the last transaction was.
    pub lag_ms: Option<u64>,
    /// Since when the replica has been fit to come back (hysteresis).
    pub fit_since: Option<Instant>,
    /// Since when its WAL receiver has not been streaming.
    pub receiver_down_since: Option<Instant>,
}

/// A server's settings from the configuration (applied again at each monitor round, so a
/// reload changes them in place).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeSettings {
    /// Share of reads relative to the other replicas.
    pub weight: u32,
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
    /// Failover: tie-break priority, and whether it may be promoted automatically.
    pub priority: i32,
    pub promotable: bool,
}

impl NodeSettings {
    /// A server the configuration says nothing more about: weight 1, no lag limit, promotable.
    pub const PLAIN: NodeSettings =
        NodeSettings { weight: 1, max_lag_bytes: u64::MAX, max_lag_ms: u64::MAX, priority: 0, promotable: true };

    /// A configured replica's, its own limits or the routing section's.
    pub fn of(r: &crate::config::ReplicaEntry, routing: &crate::config::RoutingConfig) -> NodeSettings {
        let (max_lag_bytes, max_lag_ms) = r.limits(routing);
        let (priority, promotable) = r.failover();
        NodeSettings { weight: r.weight(), max_lag_bytes, max_lag_ms, priority, promotable }
    }
}

impl Node {
    pub fn new(addr: &str, role: Role, settings: NodeSettings) -> Node {
        Node {
            addr: addr.into(),
            role,
            healthy: true,
            probe: Probed::default(),
            in_rotation: true,
            out: None,
            settings,
            paused: false,
            removed: false,
            fenced: false,
            diverged: false,
            load: Arc::new(AtomicUsize::new(0)),
            replayed: Arc::new(AtomicLsn::default()),
        }
    }

    /// The replay position the router may rely on (0 when unknown): the last probe's, or the
    /// replay watch's if that is further.
    pub fn replay_lsn(&self) -> Lsn {
        let probed = self.probe.observed.as_ref().map(|o| o.replay_lsn).unwrap_or_default();
        probed.max(self.replayed.load())
    }

    pub fn outstanding(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<Node>,
    /// How reads are spread over the replicas in rotation.
    pub balance: Balance,
    /// The primary's share of plain reads against the replicas' weights (0: none).
    pub primary_read_weight: u32,
    /// What reads do when no replica is in rotation.
    pub on_all_lagging: OnAllLagging,
    /// The primary's insert position at its last probe.
    pub primary_lsn: Lsn,
}

impl Topology {
    /// The configured servers, all healthy until proven otherwise.
    pub fn from_config(c: &crate::config::Config) -> Topology {
        let mut t = Topology::new(&c.servers.primary, &[]);
        for r in &c.servers.replicas {
            t.nodes.push(Node::new(r.addr(), Role::Replica, NodeSettings::of(r, &c.routing)));
        }
        t.balance = c.routing.balance;
        t.primary_read_weight = c.routing.primary_read_weight;
        t.on_all_lagging = c.routing.on_all_lagging;
        t
    }

    /// Node 0 is the primary, the rest replicas, all healthy until proven otherwise (so the
    /// first queries need not wait for the first health check).
    pub fn new(primary: &str, replicas: &[String]) -> Topology {
        let mut nodes = vec![Node::new(primary, Role::Primary, NodeSettings::PLAIN)];
        nodes.extend(replicas.iter().map(|r| Node::new(r, Role::Replica, NodeSettings::PLAIN)));
        Topology {
            nodes,
            balance: Balance::Random,
            primary_read_weight: 0,
            on_all_lagging: OnAllLagging::Primary,
            primary_lsn: Lsn::ZERO,
        }
    }

    pub fn primary(&self) -> usize {
        self.nodes.iter().position(|n| n.role == Role::Primary && !n.removed && !n.fenced).unwrap_or(0)
    }

    /// Where pgsplit's own look-ups run: the primary first, then the replicas in rotation
    /// (same catalog, perhaps a moment behind) for while it does not answer.
    pub fn lookup_order(&self) -> Vec<std::sync::Arc<str>> {
        let primary = self.primary();
        std::iter::once(self.nodes[primary].addr.clone())
            .chain(
                self.nodes
                    .iter()
                    .enumerate()
                    .filter(|(i, n)| *i != primary && n.in_rotation)
                    .map(|(_, n)| n.addr.clone()),
            )
            .collect()
    }

    /// The index of the node at `addr`.
    pub fn find(&self, addr: &str) -> Option<usize> {
        self.nodes.iter().position(|n| &*n.addr == addr && !n.removed)
    }
}

/// The shared handle.
pub struct Cluster {
    pub topology: ArcSwap<Topology>,
    /// Round-robin position.
    pub turn: AtomicUsize,
    /// Wakes the probes at once (a lost server connection: the monitor judges the server).
    pub wake: tokio::sync::Notify,
    /// Signalled after each probe's topology is published.
    pub published: tokio::sync::Notify,
    /// Ticks at every failed health check, so that sessions waiting on a server can give up
    /// on one found unreachable.
    pub unreachable: tokio::sync::watch::Sender<u64>,
    /// What reads wait for the replicas to replay, and the news that they have.
    pub replay: super::replay::ReplayWatch,
}

impl Cluster {
    pub fn new(t: Topology) -> Arc<Cluster> {
        Arc::new(Cluster {
            topology: ArcSwap::from_pointee(t),
            turn: AtomicUsize::new(0),
            wake: tokio::sync::Notify::new(),
            published: tokio::sync::Notify::new(),
            unreachable: tokio::sync::watch::Sender::new(0),
            replay: super::replay::ReplayWatch::default(),
        })
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<Topology>> {
        self.topology.load()
    }

    /// The next turn for balancing: a counter for round robin, a random number otherwise.
    pub fn next_turn(&self, balance: Balance) -> usize {
        match balance {
            Balance::RoundRobin => self.turn.fetch_add(1, Ordering::Relaxed),
            _ => rand::random::<u32>() as usize,
        }
    }

    /// A session could not reach a server: take it out of rotation until the monitor sees it
    /// healthy again (and for the hold-down after that).
    pub fn mark_unreachable(&self, node: usize) {
        self.topology.rcu(|t| {
            let mut t = (**t).clone();
            if let Some(n) = t.nodes.get_mut(node) {
                n.healthy = false;
                n.in_rotation = false;
                n.out = Some(OutReason::Unreachable);
                n.probe.fit_since = None;
            }
            t
        });
    }

    /// Operator pause / resume of a server by address. False when there is no such server.
    pub fn set_paused(&self, addr: &str, paused: bool) -> bool {
        let mut found = false;
        self.topology.rcu(|t| {
            let mut t = (**t).clone();
            found = false;
            if let Some(i) = t.find(addr) {
                found = true;
                let n = &mut t.nodes[i];
                n.paused = paused;
                if paused && n.role == Role::Replica {
                    n.in_rotation = false;
                    n.out = Some(OutReason::Paused);
                }
            }
            t
        });
        found
    }
}

/// Counts a unit of client work on a node while it lives.
pub struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    pub fn new(load: &Arc<AtomicUsize>) -> LoadGuard {
        load.fetch_add(1, Ordering::Relaxed);
        LoadGuard(load.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Topology {
    /// Sets the per-server gauges from this snapshot.
    pub fn publish(&self, m: &Metrics) {
        m.primary_lsn.set(self.primary_lsn.0 as f64);
        for node in self.nodes.iter().filter(|n| !n.removed) {
            let server = [&*node.addr];
            m.server_up.with_label_values(&server).set(node.healthy as i64);
            m.server_primary.with_label_values(&server).set((node.role == Role::Primary && !node.fenced) as i64);
            m.server_in_rotation.with_label_values(&server).set(node.in_rotation as i64);
            if node.role == Role::Replica {
                m.replica_lag_bytes.with_label_values(&server).set(node.probe.lag_bytes.unwrap_or(0) as i64);
                m.replica_lag_seconds.with_label_values(&server).set(node.probe.lag_ms.unwrap_or(0) as f64 / 1000.0);
                for r in OutReason::ALL {
                    let on = node.out == Some(r) && !node.in_rotation;
                    m.server_out.with_label_values(&[&*node.addr, r.as_str()]).set(on as i64);
                }
            }
        }
    }
}
