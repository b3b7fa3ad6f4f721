//! `[coordination]`: several instances on etcd.

use serde::{Deserialize, Serialize};

/// `[coordination]`: several instances on etcd. Empty `etcd`: one instance alone.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinationConfig {
    /// etcd v3 endpoints ("127.0.0.1:2379" or "http://host:2379").
    pub etcd: Vec<String>,
    /// Keys live under /pgsplit/<cluster_name>/; instances in front of one cluster share it.
    pub cluster_name: String,
    /// This instance's name among its peers, unique (default: host name and listen port).
    pub instance_name: String,
    /// The member and leader keys' lease. An instance that cannot renew it for half of this
    /// stops sending writes (fail closed); a dead instance's keys vanish after it.
    pub lease_ttl_ms: u64,
    /// Time limit of one etcd request.
    pub etcd_timeout_ms: u64,
    /// Servers this instance reaches at another address than its peers do (a local tunnel,
    /// NAT): { "this instance's address" = "the address the others list" }. etcd names
    /// servers by the address the others list.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// How long the leader waits for every live instance to acknowledge a failover's first
    /// epoch before it gives up for this round (it retries; it never promotes without them).
    pub barrier_timeout_ms: u64,
    /// TLS to etcd: the CA (PEM) that signed etcd's certificate. Set (or endpoints given as
    /// https://): TLS, the certificate verified. Files are read at each (re)connect.
    pub ca: String,
    /// A client certificate and its key (PEM), for etcd's --client-cert-auth.
    pub cert: String,
    pub key: String,
    /// etcd authentication (etcd's `auth enable`): the user and password pgsplit logs in as.
    pub user: String,
    pub password: String,
}

impl Default for CoordinationConfig {
    fn default() -> Self {
        CoordinationConfig {
            etcd: Vec::new(),
            cluster_name: "pgsplit".into(),
            instance_name: String::new(),
            lease_ttl_ms: 10_000,
            etcd_timeout_ms: 2_000,
            barrier_timeout_ms: 15_000,
            aliases: Default::default(),
            ca: String::new(),
            cert: String::new(),
            key: String::new(),
            user: String::new(),
            password: String::new(),
        }
    }
}

impl CoordinationConfig {
    pub fn enabled(&self) -> bool {
        !self.etcd.is_empty()
    }

    /// Whether etcd is reached over TLS.
    pub fn tls(&self) -> bool {
        !self.ca.is_empty() || !self.cert.is_empty() || self.etcd.iter().any(|e| e.starts_with("https://"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled() {
            return Ok(());
        }
        if !cfg!(feature = "etcd") {
            return Err("[coordination] etcd is set but this pgsplit was built without etcd support \
                        (cargo build --release --features etcd)"
                .into());
        }
        if self.cluster_name.is_empty() || self.cluster_name.contains('/') {
            return Err("coordination.cluster_name must be a non-empty name without '/'".into());
        }
        if self.instance_name.contains('/') {
            return Err("coordination.instance_name must not contain '/'".into());
        }
        if self.cert.is_empty() != self.key.is_empty() {
            return Err("coordination.cert and coordination.key go together (a client certificate and its key)".into());
        }
        if self.user.is_empty() != self.password.is_empty() {
            return Err("coordination.user and coordination.password go together (etcd authentication)".into());
        }
        let https = self.etcd.iter().filter(|e| e.starts_with("https://")).count();
        let http = self.etcd.iter().filter(|e| e.starts_with("http://")).count();
        if self.tls() && http > 0 || https > 0 && https < self.etcd.len() {
            return Err(
                "coordination.etcd: every endpoint speaks TLS or none does (https:// and a ca, or neither)".into()
            );
        }
        if self.tls() && self.ca.is_empty() {
            return Err(
                "coordination: TLS to etcd needs coordination.ca (the CA that signed etcd's certificate)".into()
            );
        }
        if self.lease_ttl_ms < 2_000 {
            return Err("coordination.lease_ttl_ms must be at least 2000 (etcd leases count whole seconds)".into());
        }
        if self.etcd_timeout_ms == 0 || self.etcd_timeout_ms * 2 > self.lease_ttl_ms {
            return Err("coordination.etcd_timeout_ms must be above 0 and at most half of lease_ttl_ms".into());
        }
        Ok(())
    }
}
