//! Catalog look-ups on the primary, for what statement text alone cannot tell:
//! - a function pgsplit does not know is safe on a replica only if pg_proc says it is not
//!   VOLATILE;
//! - a relation that is a view (or a view over views) calling a VOLATILE function may write
//!   when read: `SELECT * FROM v` goes to the primary.
//!
//! Answers are cached per database. Look-ups run on the primary; while it is unreachable, on a
//! replica (same catalog, perhaps a moment behind). A look-up that fails everywhere is not
//! cached and counts as "may write": unknown means primary.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::cluster::sql_pools::SqlPools;
use crate::config::Live;
use crate::sql::Lookup;
use crate::sql::cache::Analysis;

pub struct Catalog {
    config: Live,
    cluster: Arc<Cluster>,
    sql: Arc<SqlPools>,
    /// database -> look-up -> read-only?
    cache: std::sync::Mutex<HashMap<String, HashMap<Lookup, bool>>>,
    /// (database, server address) that refused a catalog connection, and until when not to
    /// try again: a broken monitor login must not cost every query a connection attempt.
    refused: std::sync::Mutex<HashMap<(String, Arc<str>), Instant>>,
}

/// Functions: found, and none of that name (any overload) is VOLATILE.
const FUNCTION_SQL: &str = "SELECT count(*) > 0 AND NOT coalesce(bool_or(p.provolatile = 'v'), false) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.proname = $1 AND ($2::text IS NULL OR n.nspname = $2)";

/// Relations: true unless it is a view that, directly or through other views, depends on a
/// VOLATILE function. A name that resolves to nothing is not a view (a CTE, a table in a schema
/// the client's search_path has), so it is read-only as far as views go.
const RELATION_SQL: &str = "WITH RECURSIVE views(oid) AS ( \
       SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1) AND c.relkind IN ('v', 'm') \
       UNION \
       SELECT d.refobjid FROM views v \
         JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
           AND d.refclassid = 'pg_catalog.pg_class'::regclass \
         JOIN pg_catalog.pg_class c2 ON c2.oid = d.refobjid AND c2.relkind IN ('v', 'm') AND c2.oid <> v.oid) \
     SELECT NOT EXISTS ( \
       SELECT 1 FROM views v JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid \
         JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
           AND d.refclassid = 'pg_catalog.pg_proc'::regclass \
         JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid AND p.provolatile = 'v')";

impl Catalog {
    pub fn new(config: Live, cluster: Arc<Cluster>, sql: Arc<SqlPools>) -> Arc<Catalog> {
        Arc::new(Catalog {
            config,
            cluster,
            sql,
            cache: std::sync::Mutex::new(HashMap::new()),
            refused: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// True when nothing the statements look up may write. The common case (everything
    /// cached) takes one lock and no await.
    pub async fn all_read_only<A: std::ops::Deref<Target = Analysis>>(&self, database: &str, analyses: &[A]) -> bool {
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            let known = cache.get(database);
            for l in analyses.iter().flat_map(|a| a.statements.iter()).flat_map(|c| c.lookups.iter()) {
                match known.and_then(|k| k.get(l)) {
                    Some(false) => return false,
                    Some(true) => {}
                    None => missing.push(l.clone()),
                }
            }
        }
        for l in missing {
            // Boxed: a catalog query is a large, rare state (a cache miss).
            match Box::pin(self.lookup(database, &l)).await {
                Some(ro) => {
                    let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                    let db = cache.entry(database.to_string()).or_default();
                    if db.len() > 100_000 {
                        db.clear();
                    }
                    db.insert(l, ro);
                    if !ro {
                        return false;
                    }
                }
                None => return false,
            }
        }
        true
    }

    async fn lookup(&self, database: &str, l: &Lookup) -> Option<bool> {
        let candidates = self.cluster.load().lookup_order();
        for addr in candidates {
            let key = (database.to_string(), addr.clone());
            let backoff = self.refused.lock().unwrap_or_else(|p| p.into_inner()).get(&key).copied();
            if backoff.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            let Some(client) = self.sql.get(&addr, database).await else {
                tracing::warn!(
                    server = %addr,
                    database,
                    user = %self.config.load().monitor.user,
                    "catalog look-up connection failed (check [monitor] credentials): \
                     statements that need a look-up go to the primary"
                );
                self.refused
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, Instant::now() + Duration::from_secs(2));
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(2), Self::query(&client, l)).await {
                Ok(Ok(row)) => return row.try_get::<_, bool>(0).ok(),
                _ => self.sql.forget(&addr),
            }
        }
        None
    }

    async fn query(client: &tokio_postgres::Client, l: &Lookup) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        match l {
            Lookup::Function(name) => {
                let (schema, func) = match name.rsplit_once('.') {
                    Some((s, f)) => (Some(s), f),
                    None => (None, name.as_str()),
                };
                client.query_one(FUNCTION_SQL, &[&func, &schema]).await
            }
            Lookup::Relation(name) => {
                // to_regclass wants SQL syntax: quote each part.
                let quoted: Vec<String> = name.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect();
                client.query_one(RELATION_SQL, &[&quoted.join(".")]).await
            }
        }
    }
}
