//! Configuration: a TOML file, overridden by command-line flags.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so a typo names the key instead of being
//! silently ignored; `validate` checks what serde cannot.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    Trust,
    Md5,
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
}

impl std::str::FromStr for AuthMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trust" => Ok(AuthMethod::Trust),
            "md5" => Ok(AuthMethod::Md5),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            other => Err(format!("unknown auth method {other:?} (trust, md5, scram-sha-256)")),
        }
    }
}

/// The running configuration, replaced whole by a reload: readers `load()` it when they need
/// it and so always see one consistent version.
pub type Live = std::sync::Arc<arc_swap::ArcSwap<Config>>;

pub fn live(c: Config) -> Live {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(c))
}

/// How reads are spread over the replicas in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Random, in proportion to each replica's weight.
    Random,
    /// In turn, in proportion to each replica's weight.
    RoundRobin,
    /// The replica with the least client work running per unit of weight (ties: random):
    /// a slow or busy replica gets less, an idle one more. The default.
    #[default]
    LeastOutstanding,
}

/// What a read does when no replica is in rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnAllLagging {
    /// Run it on the primary.
    #[default]
    Primary,
    /// Run it on the healthy replica that is least behind, however far.
    LeastLagged,
    /// Refuse it (SQLSTATE 57P03).
    Error,
}

/// Read-your-writes: after a client's write commits, where its reads may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadYourWrites {
    /// Reads go to any replica in rotation.
    Off,
    /// A client's reads go only to replicas that have replayed its last write.
    #[default]
    Session,
    /// Every client's reads go only to replicas that have replayed the last write of anyone.
    Global,
}

/// A replica: its address, or a table with its own settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ReplicaEntry {
    Addr(String),
    Settings(ReplicaSettings),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    pub addr: String,
    /// Share of reads relative to the other replicas (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Overrides of routing.max_lag_bytes / routing.max_lag_ms for this replica.
    pub max_lag_bytes: Option<u64>,
    pub max_lag_ms: Option<u64>,
    /// Breaks ties between equally advanced failover candidates (higher first).
    #[serde(default)]
    pub priority: i32,
    /// false: never promoted automatically.
    #[serde(default = "yes")]
    pub promotable: bool,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl From<String> for ReplicaEntry {
    fn from(s: String) -> Self {
        ReplicaEntry::Addr(s)
    }
}

impl ReplicaEntry {
    pub fn addr(&self) -> &str {
        match self {
            ReplicaEntry::Addr(a) => a,
            ReplicaEntry::Settings(s) => &s.addr,
        }
    }
    pub fn weight(&self) -> u32 {
        match self {
            ReplicaEntry::Addr(_) => 1,
            ReplicaEntry::Settings(s) => s.weight,
        }
    }
    /// (priority, promotable) for failover.
    pub fn failover(&self) -> (i32, bool) {
        match self {
            ReplicaEntry::Addr(_) => (0, true),
            ReplicaEntry::Settings(s) => (s.priority, s.promotable),
        }
    }

    /// (max_lag_bytes, max_lag_ms) for this replica.
    pub fn limits(&self, r: &RoutingConfig) -> (u64, u64) {
        match self {
            ReplicaEntry::Addr(_) => (r.max_lag_bytes, r.max_lag_ms),
            ReplicaEntry::Settings(s) => {
                (s.max_lag_bytes.unwrap_or(r.max_lag_bytes), s.max_lag_ms.unwrap_or(r.max_lag_ms))
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients connect to.
    pub listen: String,
    /// Address of the Prometheus /metrics endpoint; empty disables it.
    pub metrics_listen: String,
    /// How clients authenticate to pgsplit.
    pub auth: AuthMethod,
    /// Allow `auth = "trust"` on a `listen` address other than loopback: anyone who can reach
    /// it logs in as any user. Off: such a configuration is refused.
    pub trust_network: bool,
    pub servers: Servers,
    pub pool: PoolConfig,
    pub routing: RoutingConfig,
    pub monitor: MonitorConfig,
    pub admin: AdminConfig,
    pub failover: FailoverConfig,
    pub limits: LimitsConfig,
    /// TLS for clients.
    pub tls: tls::TlsConfig,
    /// Several instances on etcd (empty: this instance alone).
    pub coordination: coordination::CoordinationConfig,
    /// Threads that run sessions; 0: one per core. Read at start only.
    pub worker_threads: usize,
    /// How sessions are spread over those threads (`runtime.rs`). Read at start only.
    pub scheduler: Scheduler,
    /// tracing filter (`info`, `debug`, `pgsplit=debug,warn`...); RUST_LOG overrides it at start.
    pub log_level: String,
    pub users: Vec<UserConfig>,
    /// Users the config does not list, looked up on the servers.
    pub auth_query: auth_query::AuthQueryConfig,
}

/// Limits that protect everyone from one client.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// A client that has not finished startup and authentication by then is closed.
    pub client_login_timeout_ms: u64,
    /// Clients beyond this get FATAL 53300; those connected are unaffected.
    pub max_client_conn: usize,
    /// A client message larger than this gets 08P01 and a close, its body never buffered.
    pub max_message_size: usize,
    /// A client idle (outside a transaction) this long is closed; 0: never.
    pub idle_client_timeout_ms: u64,
    /// A client idle inside a transaction (holding a server connection) this long is closed
    /// with FATAL 25P03 and its transaction rolled back; 0: never.
    pub idle_transaction_timeout_ms: u64,
    /// A client that takes none of its results for this long is dropped (its query cancelled,
    /// its server connection freed).
    pub client_stall_timeout_ms: u64,
    /// A request still running on its server after this long is cancelled there (the client
    /// gets the server's 57014, its connection stays usable); 0: never.
    pub query_timeout_ms: u64,
    /// An extended-protocol batch (messages up to Flush or Sync) queued past this many bytes is
    /// sent on to the primary as it arrives instead of being held whole.
    pub max_batch_bytes: usize,
    /// Named prepared statements one client may keep (a Parse past it gets 54000).
    pub max_prepared_statements: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            client_login_timeout_ms: 60_000,
            max_client_conn: 10_000,
            max_message_size: MAX_MESSAGE_SIZE,
            idle_client_timeout_ms: 0,
            idle_transaction_timeout_ms: 0,
            client_stall_timeout_ms: 30_000,
            query_timeout_ms: 0,
            max_batch_bytes: 16 * 1024 * 1024,
            max_prepared_statements: 10_000,
        }
    }
}

/// Where the failover state is kept by default (a volume in the Docker image).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/pgsplit";

/// Automatic failover.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// "auto": promote by itself; "manual": detect, report and wait for the admin PROMOTE.
    pub mode: FailoverMode,
    /// How often the primary is health-checked (a kept and a fresh connection).
    pub health_interval_ms: u64,
    /// A health check that takes longer than this failed.
    pub check_timeout_ms: u64,
    /// The primary is dead after failing its checks for this long.
    pub failover_after_ms: u64,
    /// Writes outside a transaction wait this long for a new primary before they fail.
    pub failover_wait_ms: u64,
    /// Refuse an automatic promotion that would lose more WAL than this.
    pub max_failover_lag_bytes: u64,
    /// Where the topology (primary, epoch, fenced servers) is kept across restarts (created if
    /// missing). Required with mode = "auto"; empty (manual mode only): not kept, and a restart
    /// believes the config file again.
    pub state_dir: String,
    /// Make a fenced old primary that comes back read-only and end its client sessions.
    pub fence_old_primary: bool,
    /// Run after a failover with the old and the new primary (HOST:PORT) as arguments.
    pub on_failover_command: String,
    /// Run for a replica that diverged from the new primary (it needs pg_rewind), with the
    /// replica and the new primary (HOST:PORT) as arguments.
    pub rejoin_command: String,
    /// Run to fence a former primary (STONITH, a cloud API...), with its HOST:PORT as argument:
    /// at the failover, and again when it comes back writable.
    pub fence_command: String,
}

/// How sessions are spread over the worker threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// One current-thread runtime per thread; a client stays on the thread it was given.
    PerCore,
    /// tokio's multi-threaded runtime: any task on any worker.
    #[default]
    WorkStealing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailoverMode {
    #[default]
    Auto,
    Manual,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            mode: FailoverMode::Auto,
            health_interval_ms: 500,
            check_timeout_ms: 1000,
            failover_after_ms: 3000,
            failover_wait_ms: 10_000,
            max_failover_lag_bytes: 1024 * 1024,
            state_dir: DEFAULT_STATE_DIR.into(),
            fence_old_primary: true,
            on_failover_command: String::new(),
            rejoin_command: String::new(),
            fence_command: String::new(),
        }
    }
}

/// The admin console: the virtual database `pgsplit`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Users who may log into the console. They authenticate like any client, and with a
    /// password even when `auth = "trust"`, unless `trust` is set.
    pub users: Vec<String>,
    /// With `auth = "trust"`: let the console's users in without a password too (the demo on
    /// 127.0.0.1). Anyone who can reach `listen` can then fail over the cluster.
    pub trust: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Servers {
    pub primary: String,
    pub replicas: Vec<ReplicaEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Server connections per server and (user, database).
    pub size: usize,
    /// How long a client waits for a server connection before it gets an error.
    pub checkout_timeout_ms: u64,
    /// How long opening a server connection may take.
    pub connect_timeout_ms: u64,
    /// Idle server connections older than this are closed.
    pub idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// A replica further behind the primary than this many bytes of WAL gets no reads.
    pub max_lag_bytes: u64,
    /// A replica whose replay is this many milliseconds behind gets no reads.
    pub max_lag_ms: u64,
    /// Entries in the classification cache (by query text).
    pub cache_size: usize,
    /// Queries longer than this are not parsed and go to the primary (bounds parse cost).
    pub max_parse_len: usize,
    /// A replica that left rotation comes back only after staying fit this long (hysteresis).
    pub lag_hold_ms: u64,
    /// When no replica is in rotation: "primary", "least_lagged" or "error".
    pub on_all_lagging: OnAllLagging,
    /// "random", "round_robin" or "least_outstanding" (all weighted).
    pub balance: Balance,
    /// The primary's share of plain reads, weighed against the replicas' `weight`s (0: the
    /// primary takes reads only when no replica may).
    pub primary_read_weight: u32,
    /// "off", "session" or "global".
    pub read_your_writes: ReadYourWrites,
    /// How long a read may wait for a replica to replay the client's last write before it goes
    /// to the primary; 0 sends it to the primary at once.
    pub causal_wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// How often each server is checked for health and lag.
    pub interval_ms: u64,
    /// Credentials of the monitor's own connections (health, lag, catalog look-ups).
    pub user: String,
    pub password: String,
    pub database: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// What clients must prove they know: the password, or a hash as PostgreSQL stores it
    /// (`SCRAM-SHA-256$4096:salt$StoredKey:ServerKey`, or `md5` + 32 hex digits). Empty when
    /// `password_file` or `password_env` gives it.
    #[serde(default)]
    pub password: String,
    /// Read the password (or hash) from this file (its first line) instead.
    #[serde(default)]
    pub password_file: Option<String>,
    /// Read the password (or hash) from this environment variable instead.
    #[serde(default)]
    pub password_env: Option<String>,
    /// The role pgsplit logs into the servers as; defaults to `name`.
    pub server_user: Option<String>,
    /// The password pgsplit gives the servers; defaults to `password` when that is a password,
    /// not a hash (with a hash, give it here, or let the servers trust pgsplit).
    pub server_password: Option<String>,
}

impl UserConfig {
    /// The password is a hash, not the password itself.
    pub fn is_hash(&self) -> bool {
        self.password.starts_with("SCRAM-SHA-256$") || (self.password.len() == 35 && self.password.starts_with("md5"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:6432".into(),
            metrics_listen: String::new(),
            auth: AuthMethod::Trust,
            trust_network: false,
            servers: Servers::default(),
            pool: PoolConfig::default(),
            routing: RoutingConfig::default(),
            monitor: MonitorConfig::default(),
            admin: AdminConfig::default(),
            failover: FailoverConfig::default(),
            limits: LimitsConfig::default(),
            tls: tls::TlsConfig::default(),
            coordination: coordination::CoordinationConfig::default(),
            worker_threads: 0,
            scheduler: Scheduler::default(),
            log_level: "info".into(),
            users: Vec::new(),
            auth_query: Default::default(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig { size: 20, checkout_timeout_ms: 5000, connect_timeout_ms: 3000, idle_timeout_ms: 600_000 }
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_lag_bytes: 16 * 1024 * 1024,
            max_lag_ms: 5000,
            cache_size: 10_000,
            max_parse_len: 256 * 1024,
            lag_hold_ms: 2000,
            on_all_lagging: OnAllLagging::Primary,
            balance: Balance::LeastOutstanding,
            primary_read_weight: 0,
            read_your_writes: ReadYourWrites::Session,
            causal_wait_ms: 0,
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            interval_ms: 100,
            user: "postgres".into(),
            password: String::new(),
            database: "postgres".into(),
        }
    }
}

pub mod auth_query;
pub mod coordination;
mod load;
pub mod tls;
pub use load::ConfigError;

/// Where the configuration comes from: the file, and the command-line flags laid over it.
pub struct Source {
    pub path: Option<std::path::PathBuf>,
    pub overrides: Box<dyn Fn(&mut Config) + Send + Sync>,
}

impl Source {
    pub fn none() -> Source {
        Source { path: None, overrides: Box::new(|_| {}) }
    }

    pub fn load(&self) -> Result<Config, String> {
        let path = self.path.as_ref().ok_or("pgsplit was started without --config: there is no file to re-read")?;
        let mut c = Config::load(path).map_err(|e| e.to_string())?;
        (self.overrides)(&mut c);
        Ok(c)
    }
}

/// The largest message PostgreSQL accepts (1 GiB): `limits.max_message_size`'s default.
pub const MAX_MESSAGE_SIZE: usize = 1 << 30;

/// Whether a setting (a key, a dotted path, or a config line) holds a secret: a password, a
/// secret or token, or a hook command (which may carry credentials). Such values are never
/// shown: not in SHOW CONFIG, not in a parse error.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "_command"].iter().any(|s| key.contains(s))
}
