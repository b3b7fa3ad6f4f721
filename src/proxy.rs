//! The listener: accepts clients and hands each to its own session task. Everything sessions
//! share lives in [`Shared`] (`shared.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::cluster::monitor::Monitor;
use crate::cluster::sql_pools::SqlPools;
use crate::cluster::{Cluster, Topology};
use crate::config::Config;
use crate::config::Source;
use crate::metrics::{self, Metrics};
use crate::pool::Pools;
use crate::shared::{Analysis, Logins, Origin};
pub use crate::shared::{LogLevelSetter, Shared};
use crate::sql::cache::AnalysisCache;

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Binds the listeners and starts accepting clients and monitoring servers.
    pub async fn start(config: Config) -> Result<Proxy, String> {
        Proxy::start_with(config, Source::none(), None).await
    }

    /// As `start`, with where a reload re-reads the configuration and how it sets the log level.
    pub async fn start_with(
        config: Config,
        source: Source,
        log_level: Option<LogLevelSetter>,
    ) -> Result<Proxy, String> {
        Proxy::start_on(config, source, log_level, None).await
    }

    /// As `start_with`, handing clients over to `shards` (`runtime.rs`) if given; this task's
    /// runtime must be their shard 0.
    pub async fn start_on(
        config: Config,
        source: Source,
        log_level: Option<LogLevelSetter>,
        shards: Option<Arc<crate::runtime::Shards>>,
    ) -> Result<Proxy, String> {
        config.validate().map_err(|e| e.to_string())?;
        crate::tls::check(&config.tls)?;
        let live = crate::config::live(config.clone());
        let metrics = Metrics::new();
        let mut topology = Topology::from_config(&config);
        if config.failover.mode == crate::config::FailoverMode::Auto {
            let dir = &config.failover.state_dir;
            std::fs::create_dir_all(dir).map_err(|e| {
                format!("failover.state_dir {dir}: {e}: pgsplit keeps the failover state there; make it writable or set another directory")
            })?;
        }
        if let Some(saved) = crate::failover::state_file::load_from(&config.failover.state_dir)? {
            crate::failover::state_file::check(&saved, &topology, &config.failover.state_dir)?;
            crate::failover::state_file::apply(&saved, &mut topology);
        }
        let first_primary = topology.primary();
        let listener =
            TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let coord = config
            .coordination
            .enabled()
            .then(|| Arc::new(crate::coord::Coordination::new(&config.coordination, &addr.to_string())));
        let cluster = Cluster::new(topology);
        let credentials = crate::auth::Credentials::new(live.clone());
        let pools = Pools::new(live.clone(), metrics.clone(), credentials.clone());
        let auth_query = crate::cluster::auth_query::AuthQuery::new(live.clone(), cluster.clone(), metrics.clone());
        let sql = Arc::new(SqlPools::new(live.clone(), crate::cluster::sql_pools::Who::Monitor));
        let monitor = Monitor::start(live.clone(), cluster.clone(), pools.clone(), metrics.clone(), sql.clone());
        let shared = Arc::new(Shared {
            analysis: Analysis {
                cache: AnalysisCache::new(config.routing.cache_size, config.routing.max_parse_len),
                catalog: Catalog::new(live.clone(), cluster.clone(), sql.clone()),
            },
            cancels: Arc::new(CancelRegistry::default()),
            config: live,
            cluster,
            pools,
            logins: Logins { auth_query, credentials, failures: Default::default() },
            metrics: metrics.clone(),
            sql,
            monitor,
            global_floor: Default::default(),
            clients: Default::default(),
            origin: Origin { source, log_level },
            failover: Arc::new(crate::failover::Control::new(first_primary)),
            coord,
            tls: arc_swap::ArcSwapOption::new(crate::tls::load(&config.tls)?.map(Arc::new)),
        });
        let mut tasks = vec![tokio::spawn(crate::failover::run::run(Arc::new(shared.failover_handles())))];
        #[cfg(feature = "etcd")]
        if let Some(c) = shared.coord.clone() {
            let handles = crate::coord::Handles {
                config: shared.config.clone(),
                cluster: shared.cluster.clone(),
                metrics: shared.metrics.clone(),
                follower: Arc::new(crate::failover::follow::Follow {
                    h: Arc::new(shared.failover_handles()),
                    coord: c.clone(),
                }),
            };
            tasks.push(tokio::spawn(crate::coord::etcd::run(handles, c)));
        }
        let mut metrics_addr = None;
        if !config.metrics_listen.is_empty() {
            let l = TcpListener::bind(&config.metrics_listen)
                .await
                .map_err(|e| format!("cannot listen on {} (metrics_listen): {e}", config.metrics_listen))?;
            metrics_addr = l.local_addr().ok();
            let s = shared.clone();
            let refresh: Arc<dyn Fn() + Send + Sync> = Arc::new(move || refresh_gauges(&s));
            tasks.push(tokio::spawn(metrics::serve(l, metrics, refresh)));
        }
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => match &shards {
                        Some(shards) => {
                            let s = s.clone();
                            shards.hand_over(stream, move |stream| crate::session::serve_client(s, stream));
                        }
                        None => {
                            tokio::spawn(crate::session::serve_client(s.clone(), stream));
                        }
                    },
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::error!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
        Ok(Proxy { addr, metrics_addr, shared, tasks })
    }

    /// Stops accepting clients and monitoring. Sessions already running finish on their own.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.monitor.stop();
    }
}

/// Gauges computed when Prometheus scrapes: pool connections by state, waiting clients.
fn refresh_gauges(shared: &Shared) {
    let m = &shared.metrics;
    if let Some(c) = &shared.coord {
        m.writes_suspended.set((c.gate() != crate::coord::Gate::Open) as i64);
        m.coordination_leader.set(c.is_leader() as i64);
    }
    let mut by_server: std::collections::BTreeMap<String, (i64, i64, i64)> = Default::default();
    for p in shared.pools.stats() {
        let e = by_server.entry(p.addr).or_default();
        e.0 += p.active as i64;
        e.1 += p.idle as i64;
        e.2 += p.waiting as i64;
    }
    for (server, (active, idle, waiting)) in by_server {
        m.pool_connections.with_label_values(&[&server, "active"]).set(active);
        m.pool_connections.with_label_values(&[&server, "idle"]).set(idle);
        m.pool_waiting.with_label_values(&[&server]).set(waiting);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
