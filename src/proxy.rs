//! The listener: accepts clients and hands each to its own session task. Everything sessions
//! share lives in [`Shared`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cancel::CancelRegistry;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::pool::Pools;
use crate::sql::cache::AnalysisCache;
use crate::topology::{Cluster, Topology};

/// State shared by all sessions. Who owns what: the topology is written by the monitor and
/// read lock-free; pools own idle server connections; the caches are read-mostly.
pub struct Shared {
    pub config: Arc<Config>,
    pub cluster: Arc<Cluster>,
    pub pools: Arc<Pools>,
    pub cache: AnalysisCache,
    pub catalog: Arc<Catalog>,
    pub cancels: Arc<CancelRegistry>,
    pub metrics: Arc<Metrics>,
}

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
        config.validate().map_err(|e| e.to_string())?;
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let cluster = Cluster::new(Topology::new(&config.servers.primary, &config.servers.replicas));
        let pools = Pools::new(config.clone(), metrics.clone());
        let shared = Arc::new(Shared {
            cache: AnalysisCache::new(config.routing.cache_size, config.routing.max_parse_len),
            catalog: Catalog::new(config.clone(), cluster.clone()),
            cancels: Arc::new(CancelRegistry::default()),
            config: config.clone(),
            cluster: cluster.clone(),
            pools: pools.clone(),
            metrics: metrics.clone(),
        });
        let listener =
            TcpListener::bind(&config.listen).await.map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let mut tasks = crate::monitor::spawn(config.clone(), cluster, pools, metrics.clone());
        let mut metrics_addr = None;
        if !config.metrics_listen.is_empty() {
            let l = TcpListener::bind(&config.metrics_listen)
                .await
                .map_err(|e| format!("cannot listen on {} (metrics_listen): {e}", config.metrics_listen))?;
            metrics_addr = l.local_addr().ok();
            tasks.push(tokio::spawn(metrics::serve(l, metrics)));
        }
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(crate::session::serve_client(s.clone(), stream));
                    }
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
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}
