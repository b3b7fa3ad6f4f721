//! The shared test environment: the cluster, a proxy in front of it, and helpers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pgsplit::config::Config;
use pgsplit::localcluster::LocalCluster;
use pgsplit::proxy::Proxy;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

pub type R = Result<(), Box<dyn std::error::Error + Send + Sync>>;
pub type TestFn = for<'a> fn(&'a Env) -> Pin<Box<dyn Future<Output = R> + 'a>>;

/// One integration test, registered beside its definition by [`register!`].
pub struct Test {
    /// `file::function`, what the runner prints and filters on.
    pub name: &'static str,
    /// Where it runs in the sequence: tests that stop, kill or promote servers run late (their
    /// file's `RANK`, or the rank given to `register!`); within a rank, by file then by line.
    pub rank: u32,
    pub file: &'static str,
    pub line: u32,
    pub run: TestFn,
}

inventory::collect!(Test);

/// Registers the async test function named, right after its definition: `register!(f)` runs it
/// at its file's `RANK`, `register!(f, 14)` at rank 14. A test without it is a compile warning
/// (dead code), never silently skipped.
#[macro_export]
macro_rules! register {
    ($name:ident) => {
        $crate::register!($name, RANK);
    };
    ($name:ident, $rank:expr) => {
        const _: () = {
            fn run<'a>(
                e: &'a $crate::common::Env,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = $crate::common::R> + 'a>> {
                Box::pin($name(e))
            }
            inventory::submit! {
                $crate::common::Test {
                    name: concat!(module_path!(), "::", stringify!($name)),
                    rank: $rank,
                    file: file!(),
                    line: line!(),
                    run,
                }
            }
        };
    };
}

#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if let false = $cond {
            return Err(format!($($fmt)+).into());
        }
    };
}

pub struct Env {
    pub cluster: LocalCluster,
    /// The main proxy: as the binary runs it, sessions spread over shards (`runtime.rs`): the
    /// test runtime's and one thread of its own.
    pub proxy: Proxy,
    pub shards: std::sync::Arc<pgsplit::runtime::Shards>,
}

/// Objects every test may use, created before the first test.
const SCHEMA: &str = "
CREATE TABLE t (id serial PRIMARY KEY, v int);
INSERT INTO t (v) SELECT g FROM generate_series(1, 100) g;
CREATE SEQUENCE s;
CREATE VIEW portview AS SELECT inet_server_port() AS port;
CREATE FUNCTION bump() RETURNS int LANGUAGE sql VOLATILE AS
  $$ INSERT INTO t (v) VALUES (-1) RETURNING inet_server_port() $$;
CREATE FUNCTION port_stable() RETURNS int LANGUAGE sql STABLE AS $$ SELECT inet_server_port() $$;
";

impl Env {
    pub async fn start() -> Result<Env, String> {
        let base = std::env::temp_dir().join(format!("pgsplit-test-{}", std::process::id()));
        let cluster =
            tokio::task::spawn_blocking(move || LocalCluster::start(&base, 2)).await.map_err(|e| e.to_string())??;
        cluster.psql(0, SCHEMA)?;
        cluster.psql(0, include_str!("../corpus/routing_setup.sql"))?;
        cluster.wait_caught_up()?;
        let shards = pgsplit::runtime::Shards::start(tokio::runtime::Handle::current(), 1)?;
        let proxy =
            Proxy::start_on(base_config(&cluster), pgsplit::config::Source::none(), None, Some(shards.clone())).await?;
        Ok(Env { cluster, proxy, shards })
    }

    pub async fn stop(&self) {
        self.proxy.stop();
    }

    pub fn primary_port(&self) -> i32 {
        self.cluster.nodes[0].port as i32
    }

    pub fn replica_ports(&self) -> Vec<i32> {
        self.cluster.nodes[1..].iter().map(|n| n.port as i32).collect()
    }

    pub fn conn_string(&self, port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
    }

    /// A client connected through the main proxy.
    pub async fn client(&self) -> Result<Client, tokio_postgres::Error> {
        connect(&self.conn_string(self.proxy.addr.port())).await
    }

    /// Starts another proxy in front of the same cluster with some settings changed.
    pub async fn proxy_with(&self, tweak: impl FnOnce(&mut Config)) -> Result<Proxy, String> {
        let mut c = base_config(&self.cluster);
        tweak(&mut c);
        Proxy::start(c).await
    }

    /// Waits until every replica has replayed what the primary wrote.
    pub async fn caught_up(&self) -> Result<(), String> {
        let cluster = &self.cluster;
        tokio::task::block_in_place(|| cluster.wait_caught_up())
    }

    /// Waits (up to 30 s) until the proxy sees `want` replicas in rotation.
    pub async fn wait_rotation(&self, proxy: &Proxy, want: &[i32]) -> Result<(), String> {
        for _ in 0..300 {
            let t = proxy.shared.cluster.load();
            let mut in_rotation: Vec<i32> = t.nodes[1..]
                .iter()
                .filter(|n| n.in_rotation)
                .filter_map(|n| n.addr.rsplit(':').next()?.parse().ok())
                .collect();
            in_rotation.sort();
            let mut want = want.to_vec();
            want.sort();
            if in_rotation == want {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("replicas in rotation never became {want:?}: {:?}", proxy.shared.cluster.load().nodes))
    }
}

pub fn base_config(cluster: &LocalCluster) -> Config {
    let mut c = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
    c.servers.primary = cluster.primary().addr();
    c.servers.replicas = cluster.replica_addrs().into_iter().map(Into::into).collect();
    c.routing.lag_hold_ms = 300;
    // Most tests check where reads go right after their own writes; read-your-writes has
    // tests of its own (ryw.rs), each with its own proxy.
    c.routing.read_your_writes = pgsplit::config::ReadYourWrites::Off;
    // The shared cluster is never failed over (tests stop its primary on purpose); failover
    // tests make clusters of their own.
    c.failover.mode = pgsplit::config::FailoverMode::Manual;
    c.failover.state_dir = String::new();
    c.failover.failover_wait_ms = 0;
    c.monitor.interval_ms = 100;
    c.pool.size = 10;
    c.pool.checkout_timeout_ms = 10_000;
    c
}

/// A client user "app" with its own password, logging into the servers as the cluster's SCRAM
/// user.
pub fn app_user(password: &str) -> pgsplit::config::UserConfig {
    use pgsplit::localcluster::SCRAM_USER;
    pgsplit::config::UserConfig {
        name: "app".into(),
        password: password.into(),
        password_file: None,
        password_env: None,
        server_user: Some(SCRAM_USER.0.into()),
        server_password: Some(SCRAM_USER.1.into()),
    }
}

pub async fn connect(conn: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// First column of the first row of a simple-protocol query, as text.
pub async fn simple_value(c: &Client, sql: &str) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    for m in c.simple_query(sql).await? {
        if let SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("").to_string());
        }
    }
    Err(format!("no rows from {sql}").into())
}

/// The port of the server that ran `sql` (whose first column is inet_server_port()).
pub async fn port_of(c: &Client, sql: &str) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    Ok(simple_value(c, sql).await?.parse()?)
}

/// SQLSTATE of an error, or "" when it is not a server error.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// pgbench's tables, made directly on the server at `port`.
pub async fn pgbench_init(port: u16) -> R {
    let init = pgbench(port, &["-i", "-q", "-s", "1"]).output().await?;
    check!(init.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
    Ok(())
}

/// pgbench against the server (or pgsplit) at `port`, with `args` (connection options set).
pub fn pgbench(port: u16, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("pgbench");
    c.args(args).args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "postgres"]);
    c
}
