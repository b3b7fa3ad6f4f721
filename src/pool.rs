//! Server connection pools: one per (server, user, database), transaction pooling.
//!
//! A semaphore bounds the connections of a pool (idle + checked out); a client waits at most
//! `checkout_timeout` for a permit. A connection goes back to the idle list only in a known,
//! clean state; anything else is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendError, ConnectParams, ServerConn};
use crate::config::Live;
use crate::metrics::Metrics;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: String,
    pub user: String,
    pub database: String,
}

pub struct Pool {
    key: PoolKey,
    /// Boxed, as checked out (a session keeps a pointer, not the connection, in its task), so
    /// that a checkout moves the box and allocates nothing.
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<ServerConn>>>,
    permits: Arc<Semaphore>,
    /// The size the semaphore was made for (pool.size when last resized).
    size: AtomicUsize,
    /// Permits still to be taken out of circulation after the pool shrank.
    shrink: AtomicUsize,
    /// Connections checked out, and clients waiting for one.
    active: AtomicUsize,
    waiting: AtomicUsize,
    /// Drains of this pool's database in progress: connections coming back are closed.
    draining: AtomicUsize,
}

/// One pool's state, for the console and the metrics.
#[derive(Debug, Clone)]
pub struct PoolStats {
    pub addr: String,
    pub user: String,
    pub database: String,
    pub size: usize,
    pub active: usize,
    pub idle: usize,
    pub waiting: usize,
}

/// A checked-out connection. Dropping it without `release` closes the connection (the safe
/// default for any error path) and frees its slot.
pub struct Checkout {
    pub conn: Box<ServerConn>,
    pool: Arc<Pool>,
    _permit: Permit,
}

/// A pool slot: counted as active while held; when the pool has shrunk, it is taken out of
/// circulation instead of going back.
struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    pool: Arc<Pool>,
}

impl Permit {
    fn new(permit: OwnedSemaphorePermit, pool: &Arc<Pool>) -> Permit {
        pool.active.fetch_add(1, Ordering::Relaxed);
        Permit { permit: Some(permit), pool: pool.clone() }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.active.fetch_sub(1, Ordering::Relaxed);
        let shrinking =
            self.pool.shrink.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
        if shrinking && let Some(p) = self.permit.take() {
            p.forget();
        }
    }
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
    config: Live,
    metrics: Arc<Metrics>,
    credentials: Arc<crate::auth::Credentials>,
}

impl Pools {
    pub fn new(config: Live, metrics: Arc<Metrics>, credentials: Arc<crate::auth::Credentials>) -> Arc<Pools> {
        let pools = Arc::new(Pools { pools: Mutex::new(HashMap::new()), config, metrics, credentials });
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
                let size = self.config.load().pool.size;
                Arc::new(Pool {
                    key: key.clone(),
                    idle: Mutex::new(Vec::new()),
                    permits: Arc::new(Semaphore::new(size)),
                    size: AtomicUsize::new(size),
                    shrink: AtomicUsize::new(0),
                    active: AtomicUsize::new(0),
                    waiting: AtomicUsize::new(0),
                    draining: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Checks out a connection from `pool` (to server `node`), reusing an idle one when it can.
    pub async fn checkout(&self, pool: &Arc<Pool>, node: usize) -> Result<Checkout, CheckoutError> {
        let addr = pool.key.addr.as_str();
        let config = self.config.load();
        let permit = match pool.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full: wait, but not forever.
                let timeout = config.pool.checkout_timeout_ms;
                let wait = pool.permits.clone().acquire_owned();
                pool.waiting.fetch_add(1, Ordering::Relaxed);
                let got = tokio::time::timeout(Duration::from_millis(timeout), wait).await;
                pool.waiting.fetch_sub(1, Ordering::Relaxed);
                match got {
                    Ok(Ok(p)) => p,
                    _ => {
                        self.metrics.checkout_timeouts.inc();
                        return Err(CheckoutError::Timeout(timeout));
                    }
                }
            }
        };
        let permit = Permit::new(permit, pool);
        while let Some(mut conn) = pool.pop_idle(crate::runtime::current()) {
            if conn.node == node && !conn.is_stale() {
                return Ok(Checkout { conn, pool: pool.clone(), _permit: permit });
            }
            self.metrics.server_connections.with_label_values(&[addr]).dec();
        }
        let (server_user, auth) = self.credentials.server_login(&pool.key.user);
        // TLS as configured; a connector that cannot be built (an unreadable CA) fails the
        // connection, never falls back to plaintext.
        let tls = crate::tls::upstream::connector(&config.tls)
            .map_err(|msg| BackendError::Unreachable { addr: addr.to_string(), msg })?;
        // Boxed: the connect path (TCP, TLS, authentication) is large and rare; inline it would
        // size every session's task for it.
        let conn = Box::pin(ServerConn::connect(ConnectParams {
            node,
            addr,
            user: &server_user,
            database: &pool.key.database,
            auth: &auth,
            timeout: Duration::from_millis(config.pool.connect_timeout_ms),
            tls,
        }))
        .await?;
        self.metrics.server_connections.with_label_values(&[addr]).inc();
        Ok(Checkout { conn: Box::new(conn), pool: pool.clone(), _permit: permit })
    }

    fn reap_idle(&self) {
        let max_idle = Duration::from_millis(self.config.load().pool.idle_timeout_ms);
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools {
            let expired: Vec<Box<ServerConn>> = {
                let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                let mut keep = Vec::new();
                let mut expired = Vec::new();
                for mut c in idle.drain(..) {
                    if c.last_used.elapsed() < max_idle && !c.is_stale() {
                        keep.push(c);
                    } else {
                        expired.push(c);
                    }
                }
                *idle = keep;
                expired
            };
            for c in expired {
                self.metrics.server_connections.with_label_values(&[&pool.key.addr]).dec();
                tokio::spawn(c.terminate());
            }
        }
    }

    /// Applies a new pool.size to every pool: grows at once, shrinks as connections come back.
    pub fn resize(&self, size: usize) {
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        for pool in pools {
            let old = pool.size.swap(size, Ordering::Relaxed);
            if size > old {
                let mut grow = size - old;
                // Cancel a shrink still pending first.
                while grow > 0
                    && pool.shrink.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
                {
                    grow -= 1;
                }
                pool.permits.add_permits(grow);
            } else if size < old {
                let cut = old - size;
                let now = pool.permits.forget_permits(cut);
                pool.shrink.fetch_add(cut - now, Ordering::Relaxed);
            }
        }
    }

    /// Every pool's state.
    pub fn stats(&self) -> Vec<PoolStats> {
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let mut out: Vec<PoolStats> = pools
            .iter()
            .map(|p| PoolStats {
                addr: p.key.addr.clone(),
                user: p.key.user.clone(),
                database: p.key.database.clone(),
                size: p.size.load(Ordering::Relaxed),
                active: p.active.load(Ordering::Relaxed),
                idle: p.idle.lock().unwrap_or_else(|p| p.into_inner()).len(),
                waiting: p.waiting.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| (&a.addr, &a.user, &a.database).cmp(&(&b.addr, &b.user, &b.database)));
        out
    }

    /// Before a statement that needs `database` free of other sessions (DROP DATABASE, ...):
    /// closes every idle connection to it on every server (Terminate, so the backends exit at
    /// once), and for `hold` closes the ones checked out as they come back instead of pooling
    /// them (PostgreSQL waits up to 5 s for other backends to leave). Returns how many were
    /// closed now, and how many are still checked out.
    pub fn drain_database(&self, database: &str, hold: Duration) -> (usize, usize) {
        let pools: Vec<_> = self.pools.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        let (mut closed, mut busy) = (0, 0);
        for pool in pools.into_iter().filter(|p| p.key.database == database) {
            pool.draining.fetch_add(1, Ordering::Relaxed);
            let idle: Vec<Box<ServerConn>> = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
            closed += idle.len();
            busy += pool.active.load(Ordering::Relaxed);
            self.metrics.server_connections.with_label_values(&[&pool.key.addr]).sub(idle.len() as i64);
            for c in idle {
                tokio::spawn(c.terminate());
            }
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                pool.draining.fetch_sub(1, Ordering::Relaxed);
            });
        }
        (closed, busy)
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
    /// The most recently used idle connection opened on `shard` (its socket's wake-ups stay on
    /// this thread), else any.
    fn pop_idle(&self, shard: usize) -> Option<Box<ServerConn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.iter().rposition(|c| c.shard == shard) {
            Some(i) => Some(idle.remove(i)),
            None => idle.pop(),
        }
    }
}

impl Checkout {
    /// Returns a connection that is idle ('I') with nothing unread to its pool.
    pub fn release(mut self, metrics: &Metrics) {
        let draining = self.pool.draining.load(Ordering::Relaxed) > 0;
        if self.conn.reader.buffered() > 0 || self.conn.identity_changed || draining {
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
