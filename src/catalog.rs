//! Function look-ups in pg_proc: a function pgsplit does not know is safe on a replica only
//! when the primary's catalog says it is not VOLATILE. Results are cached per database and
//! function name; a function that cannot be found or looked up is unknown, and unknown means
//! primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use crate::config::Config;
use crate::topology::Cluster;

pub struct Catalog {
    config: Arc<Config>,
    cluster: Arc<Cluster>,
    /// (database, function) -> read-only?
    cache: std::sync::Mutex<HashMap<(String, String), bool>>,
    clients: Mutex<HashMap<String, tokio_postgres::Client>>,
}

const LOOKUP_SQL: &str = "SELECT count(*), coalesce(bool_or(p.provolatile = 'v'), false) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.proname = $1 AND ($2::text IS NULL OR n.nspname = $2)";

impl Catalog {
    pub fn new(config: Arc<Config>, cluster: Arc<Cluster>) -> Arc<Catalog> {
        Arc::new(Catalog {
            config,
            cluster,
            cache: std::sync::Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// True when every function in `names` is known not to be VOLATILE in `database`.
    pub async fn all_read_only(&self, database: &str, names: &[String]) -> bool {
        for name in names {
            if !self.read_only(database, name).await {
                return false;
            }
        }
        true
    }

    async fn read_only(&self, database: &str, name: &str) -> bool {
        let key = (database.to_string(), name.to_string());
        if let Some(&ro) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return ro;
        }
        match self.lookup(database, name).await {
            Some(ro) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > 100_000 {
                    cache.clear();
                }
                cache.insert(key, ro);
                ro
            }
            // Not found (maybe created later) or look-up failed: primary, and ask again next time.
            None => false,
        }
    }

    async fn lookup(&self, database: &str, name: &str) -> Option<bool> {
        let (schema, func) = match name.rsplit_once('.') {
            Some((s, f)) => (Some(s.to_string()), f.to_string()),
            None => (None, name.to_string()),
        };
        let mut clients = self.clients.lock().await;
        if clients.get(database).is_none_or(|c| c.is_closed()) {
            let t = self.cluster.load();
            let addr = t.nodes[t.primary()].addr.clone();
            let c = crate::monitor::connect(&self.config, &addr, database).await?;
            clients.insert(database.to_string(), c);
        }
        let client = clients.get(database)?;
        let row = tokio::time::timeout(Duration::from_secs(2), client.query_one(LOOKUP_SQL, &[&func, &schema]))
            .await
            .ok()?
            .ok()?;
        let count: i64 = row.get(0);
        let volatile: bool = row.get(1);
        (count > 0).then_some(!volatile)
    }
}
