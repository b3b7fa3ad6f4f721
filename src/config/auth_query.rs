//! `[auth_query]`: users the config file does not list, looked up on the servers.

use serde::{Deserialize, Serialize};

/// The query PgBouncer's documentation suggests, on pg_authid (which needs a superuser, or a
/// SECURITY DEFINER function the auth user may call, given as `query`).
pub const DEFAULT_QUERY: &str = "SELECT rolname, rolpassword FROM pg_catalog.pg_authid \
     WHERE rolname = $1 AND rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now())";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthQueryConfig {
    /// Look up users the config file does not list.
    pub enabled: bool,
    /// Takes the user name as $1; gives one row (name, secret) or none. The secret is a SCRAM
    /// verifier or an md5 hash as PostgreSQL stores them (NULL: the user cannot log in).
    pub query: String,
    /// Who runs the query (default: `[monitor]`'s user and password).
    pub user: String,
    pub password: String,
    /// Where it runs (default: `[monitor]`'s database).
    pub database: String,
    /// How long an answer is used before it is fetched again.
    pub cache_ttl_ms: u64,
}

impl Default for AuthQueryConfig {
    fn default() -> Self {
        AuthQueryConfig {
            enabled: false,
            query: DEFAULT_QUERY.into(),
            user: String::new(),
            password: String::new(),
            database: String::new(),
            cache_ttl_ms: 60_000,
        }
    }
}

impl AuthQueryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.enabled && !self.query.contains("$1") {
            return Err("auth_query.query must take the user name as $1".into());
        }
        Ok(())
    }
}
