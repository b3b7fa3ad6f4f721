//! Several pgsplit instances, one truth: coordination on etcd.
//!
//! Without a `[coordination]` section an instance is alone and its failover loop decides by
//! itself (with the state file). With one, every instance keeps a lease-bound member key
//! (its view of the primary, the topology epoch it has applied), one instance at a time holds
//! the leader key, and the topology (epoch, primary, timeline, fenced servers, a failover in
//! progress) lives in one key that only the leader changes, by compare-and-swap. Every instance
//! watches it and applies a new epoch before it routes another write.
//!
//! - `rules.rs`: the pure rules (majority, barrier acknowledgement, the write gate, mapping the
//!   shared topology onto this instance's servers), table-tested.
//! - `values.rs`: the keys and the JSON values stored under them.
//! - `etcd.rs` (feature `etcd`): the etcd session: lease, keepalive, leader key, watches,
//!   members, compare-and-swap; and the leader's side of a failover (`leader.rs`).
//!
//! [`Coordination`] is what the rest of pgsplit sees: whether writes may go out now (the gate),
//! whether this instance leads, and the topology last read from etcd.

pub mod rules;
pub mod values;

#[cfg(feature = "etcd")]
pub mod etcd;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use crate::config::coordination::CoordinationConfig;
pub use rules::Gate;
pub use values::{Member, SharedTopology};

/// What the etcd session needs of the instance around it, implemented by the failover wing
/// (`failover::follow::Follow`): coord knows nothing of failover, and failover reaches coord
/// only through [`Coordination`] and the etcd session's client.
pub trait Follower: Send + Sync {
    /// A topology read from etcd: applied here before any write goes out under it.
    fn apply<'a>(
        &'a self,
        t: &'a SharedTopology,
        revision: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
    /// This instance's own topology, written when etcd has none yet.
    fn local_topology(&self) -> SharedTopology;
    /// An operator's request was posted: the leader's failover loop looks at once.
    fn wake(&self);
}

/// The handles the etcd session runs with: configuration, the cluster (its topology, the
/// paused servers), the metrics, and the instance it follows for.
#[derive(Clone)]
pub struct Handles {
    pub config: crate::config::Live,
    pub cluster: std::sync::Arc<crate::cluster::Cluster>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub follower: std::sync::Arc<dyn Follower>,
}

/// What the rest of pgsplit sees of the coordination. Written by the etcd session and the
/// failover loop, read by sessions (the write gate) and the console.
pub struct Coordination {
    pub name: String,
    pub keys: values::Keys,
    pub ttl: Duration,
    aliases: std::collections::BTreeMap<String, String>,
    origin: Instant,
    /// When the lease was last renewed (ms since `origin`; 0: never).
    lease_ok_ms: AtomicU64,
    /// A topology from etcd has been applied since start.
    synced: AtomicBool,
    /// The applied topology has a failover in progress (no primary).
    barrier: AtomicBool,
    /// This instance holds the leader key.
    leader: AtomicBool,
    /// The epoch applied here.
    epoch: AtomicU64,
    /// The topology last read from etcd and its mod revision.
    remote: Mutex<Option<(SharedTopology, i64)>>,
    /// This instance's view of the primary, as published in its member key.
    pub primary_ok: tokio::sync::watch::Sender<bool>,
    /// Signalled after each topology applied.
    pub changed: tokio::sync::Notify,
    /// Who leads (the leader key's value), for the console.
    leader_name: Mutex<String>,
    /// The etcd session's client, for the failover loop's compare-and-swaps.
    #[cfg(feature = "etcd")]
    pub session: Mutex<Option<etcd::Session>>,
}

impl Coordination {
    pub fn new(config: &CoordinationConfig, listen: &str) -> Coordination {
        // Default: this host's name and the port clients use (a listen address alone, such as
        // 0.0.0.0:6432, is the same on every host).
        let name = if config.instance_name.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or(listen);
            match host.trim() {
                "" => listen.to_string(),
                h => format!("{h}:{port}"),
            }
        } else {
            config.instance_name.clone()
        };
        Coordination {
            name,
            keys: values::Keys::new(&config.cluster_name),
            ttl: Duration::from_millis(config.lease_ttl_ms),
            aliases: config.aliases.clone(),
            origin: Instant::now(),
            lease_ok_ms: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            barrier: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            remote: Mutex::new(None),
            primary_ok: tokio::sync::watch::Sender::new(true),
            leader_name: Mutex::new(String::new()),
            changed: tokio::sync::Notify::new(),
            #[cfg(feature = "etcd")]
            session: Mutex::new(None),
        }
    }

    /// A server's address as etcd names it (this instance's own address unless aliased).
    pub fn shared_addr(&self, local: &str) -> String {
        self.aliases.get(local).cloned().unwrap_or_else(|| local.to_string())
    }

    /// The lease was renewed now.
    pub fn lease_renewed(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.lease_ok_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// The lease is gone (expired, or the session ended).
    pub fn lease_lost(&self) {
        self.lease_ok_ms.store(0, Ordering::SeqCst);
        self.leader.store(false, Ordering::SeqCst);
    }

    /// Time since the lease was last renewed; None: no lease.
    pub fn since_lease_ok(&self) -> Option<Duration> {
        match self.lease_ok_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(self.origin.elapsed().saturating_sub(Duration::from_millis(ms))),
        }
    }

    /// May this instance send writes now?
    pub fn gate(&self) -> Gate {
        rules::write_gate(&rules::GateInput {
            synced: self.synced.load(Ordering::SeqCst),
            barrier: self.barrier.load(Ordering::SeqCst),
            since_lease_ok: self.since_lease_ok(),
            ttl: self.ttl,
        })
    }

    /// This instance leads, and its lease is healthy enough to act on it.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst) && self.gate() != Gate::EtcdLost
    }

    pub fn set_leader(&self, me: bool, name: &str) {
        self.leader.store(me, Ordering::SeqCst);
        *self.leader_name.lock().unwrap_or_else(|p| p.into_inner()) = name.to_string();
    }

    pub fn leader_name(&self) -> String {
        self.leader_name.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A topology read from etcd has been applied here.
    pub fn applied(&self, t: SharedTopology, revision: i64) {
        self.epoch.store(t.epoch, Ordering::SeqCst);
        self.barrier.store(t.barrier.is_some(), Ordering::SeqCst);
        *self.remote.lock().unwrap_or_else(|p| p.into_inner()) = Some((t, revision));
        self.synced.store(true, Ordering::SeqCst);
    }

    /// etcd's topology could not be applied here (it names servers this instance does not
    /// know): writes stay suspended until one can.
    pub fn refused(&self) {
        self.synced.store(false, Ordering::SeqCst);
    }

    /// The topology last applied, with its revision.
    pub fn remote(&self) -> Option<(SharedTopology, i64)> {
        self.remote.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// For the console: state of the coordination in one line.
    pub fn describe(&self) -> String {
        let lease = match self.since_lease_ok() {
            None => "no lease".to_string(),
            Some(d) => format!("lease renewed {:.1}s ago", d.as_secs_f64()),
        };
        format!(
            "{}; instance {}, leader {}, epoch {}, {lease}",
            self.gate().as_str(),
            self.name,
            match self.leader_name() {
                n if n.is_empty() => "none".to_string(),
                n => n,
            },
            self.epoch()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = CoordinationConfig { etcd: vec!["127.0.0.1:2379".into()], ..Default::default() };
        assert_eq!(ok.validate().is_ok(), cfg!(feature = "etcd"), "needs the etcd feature");
        assert!(CoordinationConfig::default().validate().is_ok(), "no etcd: alone, nothing to check");
        if cfg!(feature = "etcd") {
            let bad = |c: CoordinationConfig| c.validate().unwrap_err();
            assert!(bad(CoordinationConfig { lease_ttl_ms: 1000, ..ok.clone() }).contains("lease_ttl_ms"));
            assert!(bad(CoordinationConfig { etcd_timeout_ms: 6000, ..ok.clone() }).contains("etcd_timeout_ms"));
            assert!(bad(CoordinationConfig { cluster_name: "a/b".into(), ..ok.clone() }).contains("cluster_name"));
        }
        let c = Coordination::new(&CoordinationConfig { instance_name: "app1".into(), ..ok.clone() }, "0.0.0.0:6432");
        assert_eq!(c.name, "app1");
        let c = Coordination::new(&ok, "0.0.0.0:6432");
        assert!(c.name.ends_with(":6432") && !c.name.starts_with("0.0.0.0"), "{}", c.name);
        assert_eq!(c.gate(), Gate::EtcdLost, "no lease yet: writes closed");
        c.lease_renewed();
        assert_eq!(c.gate(), Gate::NotSynced);
    }
}
