//! What every session and every background task shares: the configuration, the cluster's
//! topology, the pools, the caches, the metrics, the failover and coordination state. Built by
//! `proxy::Proxy::start`; each part says who writes it.

use std::sync::Arc;

use crate::auth::Credentials;
use crate::auth::failures::AuthFailures;
use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::clients::Clients;
use crate::cluster::Cluster;
use crate::cluster::auth_query::AuthQuery;
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
    /// Who may log in and how pgsplit logs into the servers for them.
    pub logins: Logins,
    /// What statements are: the analysis cache and the functions looked up in pg_proc.
    pub analysis: Analysis,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
    /// pgsplit's own SQL connections (monitor, catalog).
    pub sql: Arc<SqlPools>,
    pub monitor: Arc<Monitor>,
    /// The highest commit bound of any client (read_your_writes = "global").
    pub global_floor: Arc<crate::lsn::AtomicLsn>,
    /// Connected clients: their count (limits.max_client_conn) and rows for SHOW CLIENTS.
    pub clients: Arc<Clients>,
    /// Where a reload re-reads the configuration and how it sets the log level.
    pub origin: Origin,
    /// The failover wing's state, its operator requests and the write holds it sets.
    pub failover: Arc<crate::failover::Control>,
    /// The client TLS certificate in use (replaced by a reload); None: no TLS offered.
    pub tls: arc_swap::ArcSwapOption<crate::tls::ServerTls>,
    /// Several instances on etcd (`[coordination]`); None: this instance alone.
    pub coord: Option<Arc<crate::coord::Coordination>>,
}

/// Who may log in, and what pgsplit gives the servers for them.
pub struct Logins {
    /// What a client must prove: its `[[users]]` entry, or `[auth_query]` on the servers.
    pub auth_query: AuthQuery,
    /// What pgsplit's server logins give for a client's role (the pools hold it too).
    pub credentials: Arc<Credentials>,
    /// Authentication failures by address (attempts from a guessing address are slowed).
    pub failures: AuthFailures,
}

/// What a statement is: read through the cache, with pg_proc's word on unknown functions.
pub struct Analysis {
    pub cache: AnalysisCache,
    pub catalog: Arc<Catalog>,
}

/// Where the configuration came from, for a reload.
pub struct Origin {
    pub source: Source,
    pub log_level: Option<LogLevelSetter>,
}

impl Shared {
    /// The handles the failover wing runs with.
    pub fn failover_handles(&self) -> crate::failover::Handles {
        crate::failover::Handles {
            config: self.config.clone(),
            cluster: self.cluster.clone(),
            pools: self.pools.clone(),
            metrics: self.metrics.clone(),
            sql: self.sql.clone(),
            coord: self.coord.clone(),
            global_floor: self.global_floor.clone(),
            control: self.failover.clone(),
        }
    }

    /// Why writes may not go out now, if they may not (a switchover holds them, or the
    /// coordination's write gate is closed).
    pub fn writes_blocked(&self) -> Option<&'static str> {
        self.fail_closed().or_else(|| self.failover.writes_held().then_some("writes held by a switchover"))
    }

    /// Why held writes must fail rather than go on to the primary pgsplit knows once the wait
    /// is over: etcd's write gate is closed, or a new topology could not be recorded.
    pub fn fail_closed(&self) -> Option<&'static str> {
        self.coord_blocked().or_else(|| {
            self.failover
                .unrecorded()
                .then_some("the new primary could not be recorded in failover.state_dir (see pgsplit's log)")
        })
    }

    /// Why the coordination's write gate is closed, if it is (never without `[coordination]`).
    pub fn coord_blocked(&self) -> Option<&'static str> {
        let g = self.coord.as_ref()?.gate();
        (g != crate::coord::Gate::Open).then_some(g.as_str())
    }
}
