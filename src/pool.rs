//! Server connection pools: one per (server, user, database), transaction pooling.
//!
//! A semaphore bounds the connections of a pool (idle + checked out); a client waits at most
//! `checkout_timeout` for a permit. A connection goes back to the idle list only in a known,
//! clean state; anything else is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, ConnectParams, ServerConn};
use crate::config::Config;
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: String,
    pub user: String,
    pub database: String,
}

pub struct Pool {
    key: PoolKey,
    idle: Mutex<Vec<ServerConn>>,
    permits: Arc<Semaphore>,
}

/// A checked-out connection. Dropping it without `release` closes the connection (the safe
/// default for any error path) and frees its slot.
pub struct Checkout {
    pub conn: ServerConn,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("timed out after {0} ms waiting for a server connection (pool full)")]
    Timeout(u64),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

impl Pools {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> Arc<Pools> {
        let pools = Arc::new(Pools { pools: Mutex::new(HashMap::new()), config, metrics });
        let weak = Arc::downgrade(&pools);
        tokio::spawn(async move {
            // Close idle connections past idle_timeout, so a quiet pool gives them back.
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(p) = weak.upgrade() else { break };
                p.reap_idle();
            }
        });
        pools
    }

    /// The pool for a server and (user, database), created on first use. Sessions keep the
    /// handle, so the hot path does not build keys or take this map's lock.
    pub fn pool_for(&self, addr: &str, user: &str, database: &str) -> Arc<Pool> {
        self.pool(&PoolKey { addr: addr.to_string(), user: user.to_string(), database: database.to_string() })
    }

    fn pool(&self, key: &PoolKey) -> Arc<Pool> {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Pool {
                    key: key.clone(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(self.config.pool.size)),
                })
            })
            .clone()
    }

    /// Checks out a connection from `pool` (to server `node`), reusing an idle one when it can.
    pub async fn checkout(&self, pool: &Arc<Pool>, node: usize) -> Result<Checkout, CheckoutError> {
        let addr = pool.key.addr.as_str();
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: wait, but not forever.
                let timeout = self.config.pool.checkout_timeout_ms;
                let wait = pool.permits.clone().acquire_owned();
                match tokio::time::timeout(Duration::from_millis(timeout), wait).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.metrics.checkout_timeouts.inc();
                        return Err(CheckoutError::Timeout(timeout));
                    }
                }
            }
        };
        while let Some(conn) = pool.pop_idle() {
            if conn.node == node && !conn.is_stale() {
                return Ok(Checkout { conn, pool: pool.clone(), _permit: permit });
            }
            self.metrics.server_connections.with_label_values(&[addr]).dec();
        }
        let (server_user, password) = self.config.server_credentials(&pool.key.user);
        let conn = ServerConn::connect(ConnectParams {
            node,
            addr,
            user: &server_user,
            database: &pool.key.database,
            password: password.as_deref(),
            timeout: Duration::from_millis(self.config.pool.connect_timeout_ms),
        })
        .await?;
        self.metrics.server_connections.with_label_values(&[addr]).inc();
        Ok(Checkout { conn, pool: pool.clone(), _permit: permit })
    }

    fn reap_idle(&self) {
        let max_idle = Duration::from_millis(self.config.pool.idle_timeout_ms);
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools {
            let expired: Vec<ServerConn> = {
                let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                let (keep, expired) = idle.drain(..).partition(|c| c.last_used.elapsed() < max_idle && !c.is_stale());
                *idle = keep;
                expired
            };
            for c in expired {
                self.metrics.server_connections.with_label_values(&[&pool.key.addr]).dec();
                tokio::spawn(c.terminate());
            }
        }
    }

    /// Closes every idle connection to `addr` (the server died or changed role).
    pub fn drop_idle(&self, addr: &str) {
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools.iter().filter(|p| p.key.addr == addr) {
            let n = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).drain(..).count();
            self.metrics.server_connections.with_label_values(&[addr]).sub(n as i64);
        }
    }
}

impl Pool {
    fn pop_idle(&self) -> Option<ServerConn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }
}

impl Checkout {
    /// Returns a connection that is idle ('I') with nothing unread to its pool.
    pub fn release(mut self, metrics: &Metrics) {
        if self.conn.reader.buffered() > 0 || self.conn.identity_changed {
            return self.discard(metrics);
        }
        self.conn.last_used = Instant::now();
        self.conn.reader.shrink();
        let Checkout { conn, pool, _permit } = self;
        pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(conn);
    }

    /// Closes the connection (bad state, broken, or session state that must not leak).
    pub fn discard(self, metrics: &Metrics) {
        metrics.server_connections.with_label_values(&[&self.conn.addr]).dec();
        tokio::spawn(self.conn.terminate());
    }
}
