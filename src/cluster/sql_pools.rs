//! pgsplit's own SQL connections (health and lag probes, catalog look-ups; failover later):
//! one small deadpool-postgres pool per (server, database), with connect and recycle
//! timeouts, made with the `[monitor]` credentials (or `[auth_query]`'s, for its look-ups).
//! Apart from client traffic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};

use crate::config::Live;

/// Whose credentials the connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    /// `[monitor]`: health, lag, catalog look-ups, failover.
    Monitor,
    /// `[auth_query]` (its user and password, or the monitor's when not given).
    AuthQuery,
}

pub struct SqlPools {
    config: Live,
    who: Who,
    pools: Mutex<HashMap<(String, String), Pool>>,
}

impl SqlPools {
    pub fn new(config: Live, who: Who) -> SqlPools {
        SqlPools { config, who, pools: Mutex::new(HashMap::new()) }
    }

    /// A connection to `addr`'s `database`, or None when none can be had in time.
    pub async fn get(&self, addr: &str, database: &str) -> Option<Object> {
        let pool = self.pool(addr, database)?;
        match pool.get().await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(server = addr, database, "monitor connection failed: {e}");
                None
            }
        }
    }

    fn pool(&self, addr: &str, database: &str) -> Option<Pool> {
        let key = (addr.to_string(), database.to_string());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = pools.get(&key) {
            return Some(p.clone());
        }
        let config = self.config.load();
        let (host, port) = addr.rsplit_once(':')?;
        let timeout = Duration::from_millis(config.pool.connect_timeout_ms);
        let aq = &config.auth_query;
        let (user, password, application) = match self.who {
            Who::AuthQuery if !aq.user.is_empty() => (&aq.user, &aq.password, "pgsplit-auth-query"),
            Who::AuthQuery => (&config.monitor.user, &config.monitor.password, "pgsplit-auth-query"),
            Who::Monitor => (&config.monitor.user, &config.monitor.password, "pgsplit-monitor"),
        };
        let mut pg = tokio_postgres::Config::new();
        pg.host(host)
            .port(port.parse().ok()?)
            .user(user)
            .dbname(database)
            .application_name(application)
            .connect_timeout(timeout);
        if !password.is_empty() {
            pg.password(password);
        }
        // TLS as for client traffic (tls.server_tls).
        let tls = match crate::tls::upstream::connector(&config.tls) {
            Ok(up) => crate::tls::upstream::PgTls(up),
            Err(e) => {
                // Never plaintext in place of the TLS asked for.
                tracing::error!(server = addr, "no TLS connector for pgsplit's own connection: {e}");
                return None;
            }
        };
        pg.ssl_mode(tls.ssl_mode());
        let manager = Manager::from_connect(
            pg,
            crate::tls::sql_connect::Connector(tls),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(2)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .ok()?;
        pools.insert(key, pool.clone());
        Some(pool)
    }

    /// Forgets every pool (after a reload changed the credentials, or a server went away).
    pub fn clear(&self) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Forgets the pools of one database on every server (it is about to be dropped or
    /// renamed): their idle connections close.
    pub fn forget_database(&self, database: &str) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).retain(|(_, d), _| d != database);
    }

    /// Forgets the pools of one server (its connections are broken).
    pub fn forget(&self, addr: &str) {
        self.pools.lock().unwrap_or_else(|p| p.into_inner()).retain(|(a, _), _| a != addr);
    }
}
