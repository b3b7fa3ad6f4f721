//! `auth_query` (PgBouncer's model): the secret of a client user that the config file does not
//! list is fetched from the servers (`pg_authid`, or a SECURITY DEFINER function) and cached
//! for `cache_ttl_ms`, "no such user" included, so that neither logins nor a flood of unknown
//! names cost the servers a query each. One query per user at a time: concurrent logins of a
//! user not cached wait for the same answer. While no server answers, a cached answer past
//! its TTL is still used (logged); with none, the login fails with 08006.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Cluster;
use super::sql_pools::{SqlPools, Who};
use crate::auth::Secret;
use crate::config::Live;
pub use crate::config::auth_query::{AuthQueryConfig, DEFAULT_QUERY};
use crate::metrics::Metrics;

/// Users at most in the cache (beyond, answers past their TTL go first, then any).
const MAX_ENTRIES: usize = 10_000;

/// A fetched answer: the secret, or None for "no such user (or no password)".
#[derive(Clone)]
struct Found {
    secret: Option<Arc<str>>,
    at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Found>>>;

pub struct AuthQuery {
    config: Live,
    cluster: Arc<Cluster>,
    metrics: Arc<Metrics>,
    sql: SqlPools,
    slots: Mutex<HashMap<String, Slot>>,
}

impl AuthQuery {
    pub fn new(config: Live, cluster: Arc<Cluster>, metrics: Arc<Metrics>) -> AuthQuery {
        let sql = SqlPools::new(config.clone(), Who::AuthQuery);
        AuthQuery { config, cluster, metrics, sql, slots: Mutex::new(HashMap::new()) }
    }

    /// The secret a client logging in as `user` must prove: its `[[users]]` entry's, else (with
    /// `[auth_query]` enabled) the one stored on the servers. None: no such user. An error when
    /// auth_query cannot tell now (no server answers and nothing is cached).
    pub async fn client_secret(&self, user: &str) -> Result<Option<Secret>, String> {
        let config = self.config.load_full();
        if let Some(u) = config.user(user) {
            return Ok(Some(Secret::parse(&u.password)));
        }
        if !config.auth_query.enabled {
            return Ok(None);
        }
        Ok(self.secret(user).await?.map(|s| Secret::parse(&s)))
    }

    /// The stored secret of `user` (None: no such user), from the cache or the servers.
    pub async fn secret(&self, user: &str) -> Result<Option<Arc<str>>, String> {
        let ttl = Duration::from_millis(self.config.load().auth_query.cache_ttl_ms);
        let slot = self.slot(user, ttl);
        let mut found = slot.lock().await;
        if let Some(f) = found.as_ref().filter(|f| f.at.elapsed() < ttl) {
            self.count("hit");
            return Ok(f.secret.clone());
        }
        match self.fetch(user).await {
            Ok(secret) => {
                self.count("fetched");
                *found = Some(Found { secret: secret.clone(), at: Instant::now() });
                Ok(secret)
            }
            Err(e) => match found.as_ref() {
                Some(f) => {
                    self.count("stale");
                    tracing::warn!(user, "auth_query failed ({e}): using the answer fetched {:?} ago", f.at.elapsed());
                    Ok(f.secret.clone())
                }
                None => {
                    self.count("failed");
                    Err(e)
                }
            },
        }
    }

    /// Forgets every answer and connection (a reload changed the settings).
    pub fn clear(&self) {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.sql.clear();
    }

    fn count(&self, result: &str) {
        self.metrics.auth_query.with_label_values(&[result]).inc();
    }

    fn slot(&self, user: &str, ttl: Duration) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(user) {
            return s.clone();
        }
        if slots.len() >= MAX_ENTRIES {
            // Keep answers in use or still fresh; if that is still too many, keep only those in use.
            let fresh = |s: &Slot| s.try_lock().map_or(true, |f| f.as_ref().is_some_and(|f| f.at.elapsed() < ttl));
            slots.retain(|_, s| fresh(s));
            if slots.len() >= MAX_ENTRIES {
                slots.retain(|_, s| s.try_lock().is_err());
            }
        }
        slots.entry(user.to_string()).or_default().clone()
    }

    /// Runs the query on the primary, or while it does not answer on a replica in rotation.
    async fn fetch(&self, user: &str) -> Result<Option<Arc<str>>, String> {
        let config = self.config.load_full();
        let aq = &config.auth_query;
        let database = if aq.database.is_empty() { &config.monitor.database } else { &aq.database };
        let candidates = self.cluster.load().lookup_order();
        let timeout = Duration::from_millis(config.pool.connect_timeout_ms);
        let mut last = String::from("no server");
        for addr in candidates {
            let Some(client) = self.sql.get(&addr, database).await else {
                last = format!("{addr}: cannot connect (check [auth_query] user and password)");
                continue;
            };
            match tokio::time::timeout(timeout, client.query_opt(aq.query.as_str(), &[&user])).await {
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(row))) => {
                    let column = if row.len() > 1 { 1 } else { 0 };
                    return match row.try_get::<_, Option<String>>(column) {
                        Ok(secret) => Ok(secret.filter(|s| !s.is_empty()).map(Arc::from)),
                        Err(e) => Err(format!("auth_query's secret column is not text: {e}")),
                    };
                }
                Ok(Err(e)) => {
                    // A query error (bad SQL, no permission) is the same on every server.
                    let msg = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
                    if e.as_db_error().is_some() {
                        return Err(format!("auth_query failed on {addr}: {msg}"));
                    }
                    self.sql.forget(&addr);
                    last = format!("{addr}: {msg}");
                }
                Err(_) => {
                    self.sql.forget(&addr);
                    last = format!("{addr}: no answer within {} ms", timeout.as_millis());
                }
            }
        }
        Err(last)
    }
}
