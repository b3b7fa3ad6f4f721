//! What every session and every background task shares: the configuration, the cluster's
//! topology, the pools, the caches, the metrics, the failover and coordination state. Built by
//! `proxy::Proxy::start`; each part says who writes it.

use std::sync::Arc;

use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::clients::Clients;
use crate::cluster::Cluster;
use crate::cluster::monitor::Monitor;
use crate::cluster::sql_pools::SqlPools;
use crate::config::{Live, Source};
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::sql::cache::AnalysisCache;

/// Sets the log filter (a reload changed `log_level`).
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// State shared by all sessions. Who owns what: the configuration is replaced whole by a
/// reload; the topology is written by the monitor and read lock-free; pools own idle server
/// connections; the caches are read-mostly.
pub struct Shared {
    pub config: Live,
    pub cluster: Arc<Cluster>,
    pub pools: Arc<Pools>,
    /// Client secrets (config, auth_query) and server logins.
    pub credentials: Arc<crate::auth::Credentials>,
    pub cache: AnalysisCache,
    pub catalog: Arc<Catalog>,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
    /// pgsplit's own SQL connections (monitor, catalog).
    pub sql: Arc<SqlPools>,
    pub monitor: Arc<Monitor>,
    /// The highest commit bound of any client (read_your_writes = "global").
    pub global_floor: crate::lsn::AtomicLsn,
    pub clients: Arc<Clients>,
    pub source: Source,
    pub log_level: Option<LogLevelSetter>,
    /// The failover state (for the console and the metrics), written by the failover loop.
    pub failover: std::sync::Mutex<crate::failover::State>,
    /// Wakes the failover loop for an immediate check.
    pub failover_wake: tokio::sync::Notify,
    /// Authentication failures by address (attempts from a guessing address are slowed).
    pub auth_failures: crate::auth::failures::AuthFailures,
    /// Connected clients (for limits.max_client_conn).
    pub client_count: std::sync::atomic::AtomicUsize,
    /// A switchover holds new writes (sessions wait as for a failover).
    pub writes_held: std::sync::atomic::AtomicBool,
    /// The failover loop could not write a new topology to the state file yet: it is not
    /// applied, and writes wait until it is recorded (never an unrecorded primary).
    pub unrecorded: std::sync::atomic::AtomicBool,
    /// An operator's FAILOVER or PROMOTE, for the failover loop.
    pub failover_request: std::sync::Mutex<Option<crate::failover::Request>>,
    /// The client TLS certificate in use (replaced by a reload); None: no TLS offered.
    pub tls: arc_swap::ArcSwapOption<crate::tls::ServerTls>,
    /// Several instances on etcd (`[coordination]`); None: this instance alone.
    pub coord: Option<Arc<crate::coord::Coordination>>,
}

impl Shared {
    /// Why writes may not go out now, if they may not (a switchover holds them, or the
    /// coordination's write gate is closed).
    pub fn writes_blocked(&self) -> Option<&'static str> {
        self.fail_closed().or_else(|| {
            self.writes_held.load(std::sync::atomic::Ordering::SeqCst).then_some("writes held by a switchover")
        })
    }

    /// Why held writes must fail rather than go on to the primary pgsplit knows once the wait
    /// is over: etcd's write gate is closed, or a new topology could not be recorded.
    pub fn fail_closed(&self) -> Option<&'static str> {
        self.coord_blocked().or_else(|| {
            self.unrecorded
                .load(std::sync::atomic::Ordering::SeqCst)
                .then_some("the new primary could not be recorded in failover.state_dir (see pgsplit's log)")
        })
    }

    /// Why the coordination's write gate is closed, if it is (never without `[coordination]`).
    pub fn coord_blocked(&self) -> Option<&'static str> {
        let g = self.coord.as_ref()?.gate();
        (g != crate::coord::Gate::Open).then_some(g.as_str())
    }
}
