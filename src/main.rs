use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pgsplit::config::{AuthMethod, Config};
use pgsplit::proxy::Proxy;

/// A PostgreSQL proxy that sends writes to the primary and reads to streaming replicas.
#[derive(Parser, Debug)]
#[command(name = "pgsplit", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Configuration file (TOML); the flags below override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, global = true)]
    listen: Option<String>,
    /// The primary, HOST:PORT.
    #[arg(long, global = true)]
    primary: Option<String>,
    /// A streaming replica, HOST:PORT (repeat for each).
    #[arg(long = "replica", global = true)]
    replicas: Vec<String>,
    /// Client authentication: trust, md5 or scram-sha-256.
    #[arg(long, global = true)]
    auth: Option<AuthMethod>,
    /// Address of the Prometheus /metrics endpoint.
    #[arg(long, global = true)]
    metrics_listen: Option<String>,
    /// Where the failover state is kept [default: /var/lib/pgsplit].
    #[arg(long, global = true)]
    state_dir: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs pgsplit in front of a throw-away local primary and two streaming replicas made
    /// from the PostgreSQL binaries on this machine (unless a cluster is configured).
    Demo,
}

fn main() {
    let cli = Cli::parse();
    // The log filter: RUST_LOG, else the config's log_level (reloadable), else info.
    let initial = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| cli.config.as_ref().and_then(|p| Config::load(p).ok()).map(|c| c.log_level));
    let filter = tracing_subscriber::EnvFilter::try_new(initial.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry().with(filter).with(tracing_subscriber::fmt::layer()).init();
    let set_level: pgsplit::proxy::LogLevelSetter = Box::new(move |level: &str| {
        let f = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| format!("log_level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    });
    // Worker threads and how sessions are spread over them (runtime.rs).
    let (threads, scheduler) = cli
        .config
        .as_ref()
        .and_then(|p| Config::load(p).ok())
        .map_or((0, Default::default()), |c| (c.worker_threads, c.scheduler));
    let (runtime, extra_shards) = match pgsplit::runtime::build(threads, scheduler) {
        Ok(r) => r,
        Err(e) => fail(&e),
    };
    let code = runtime.block_on(async move {
        let shards = match extra_shards {
            0 => None,
            n => match pgsplit::runtime::Shards::start(tokio::runtime::Handle::current(), n) {
                Ok(s) => Some(s),
                Err(e) => fail(&e),
            },
        };
        match run(cli, set_level, shards).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("pgsplit: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}

fn fail(msg: &str) -> ! {
    eprintln!("pgsplit: {msg}");
    std::process::exit(1)
}

/// The command-line flags laid over a configuration (at start and at every reload).
#[derive(Clone)]
struct Overrides {
    listen: Option<String>,
    primary: Option<String>,
    replicas: Vec<String>,
    auth: Option<AuthMethod>,
    metrics_listen: Option<String>,
    state_dir: Option<String>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(l) = &self.listen {
            config.listen = l.clone();
        }
        if let Some(p) = &self.primary {
            config.servers.primary = p.clone();
        }
        if !self.replicas.is_empty() {
            config.servers.replicas = self.replicas.iter().cloned().map(Into::into).collect();
        }
        if let Some(a) = self.auth {
            config.auth = a;
        }
        if let Some(m) = &self.metrics_listen {
            config.metrics_listen = m.clone();
        }
        if let Some(d) = &self.state_dir {
            config.failover.state_dir = d.clone();
        }
    }
}

async fn run(
    cli: Cli,
    set_level: pgsplit::proxy::LogLevelSetter,
    shards: Option<std::sync::Arc<pgsplit::runtime::Shards>>,
) -> Result<(), String> {
    let overrides = Overrides {
        listen: cli.listen.clone(),
        primary: cli.primary.clone(),
        replicas: cli.replicas.clone(),
        auth: cli.auth,
        metrics_listen: cli.metrics_listen.clone(),
        state_dir: cli.state_dir.clone(),
    };
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    overrides.apply(&mut config);
    let demo = matches!(cli.command, Some(Cmd::Demo));
    let mut cluster = None;
    if demo && config.servers.primary.is_empty() {
        let base = std::env::temp_dir().join(format!("pgsplit-demo-{}", std::process::id()));
        println!("Creating a primary and two streaming replicas in {} ...", base.display());
        let c = tokio::task::spawn_blocking(move || pgsplit::localcluster::LocalCluster::start(&base, 2))
            .await
            .map_err(|e| e.to_string())??;
        config.servers.primary = c.primary().addr();
        config.servers.replicas = c.replica_addrs().into_iter().map(Into::into).collect();
        // Failover state next to the demo's servers.
        if config.failover.state_dir.is_empty() {
            config.failover.state_dir = c.base.join("pgsplit-state").display().to_string();
        }
        // The console for the demo's own user, and Prometheus on a local port.
        if config.admin.users.is_empty() {
            config.admin.users.push("postgres".into());
            // The demo trusts its console as it trusts its clients, on loopback only.
            config.admin.trust = config.auth == AuthMethod::Trust && !config.trust_network;
        }
        if config.metrics_listen.is_empty() {
            config.metrics_listen = "127.0.0.1:0".into();
        }
        c.psql(0, "CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text); INSERT INTO demo (note) VALUES ('hello from the primary');")?;
        cluster = Some(c);
    }
    let demo_servers = cluster.as_ref().map(|c: &pgsplit::localcluster::LocalCluster| c.replica_addrs());
    let source = pgsplit::ops::reload::Source {
        path: cli.config.clone(),
        overrides: {
            let o = overrides.clone();
            // The demo's servers are not in any file: a reload keeps them.
            let demo = demo_servers.clone().map(|r| (config.servers.primary.clone(), r));
            Box::new(move |c: &mut Config| {
                o.apply(c);
                if let Some((p, r)) = &demo {
                    c.servers.primary = p.clone();
                    c.servers.replicas = r.iter().cloned().map(Into::into).collect();
                }
            })
        },
    };
    let proxy = Proxy::start_on(config.clone(), source, Some(set_level), shards).await?;
    println!("pgsplit listening on {}", proxy.addr);
    println!("  primary:  {}", config.servers.primary);
    for r in &config.servers.replicas {
        println!("  replica:  {}", r.addr());
    }
    let shared = proxy.shared.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            let _ = pgsplit::ops::reload::reload(&shared);
        }
    });
    if let Some(m) = proxy.metrics_addr {
        println!("  metrics:  http://{m}/metrics");
    }
    if cluster.is_some() {
        println!();
        println!("Connect with:");
        println!("  psql \"host={} port={} user=postgres dbname=postgres\"", proxy.addr.ip(), proxy.addr.port());
        println!("The admin console (SHOW SERVERS; SHOW POOLS; SHOW ROUTES; ...):");
        println!("  psql \"host={} port={} user=postgres dbname=pgsplit\"", proxy.addr.ip(), proxy.addr.port());
        if let Some(c) = &cluster {
            println!("The servers (kill -9 the primary's PID and watch SHOW SERVERS: pgsplit promotes a replica):");
            for (i, n) in c.nodes.iter().enumerate() {
                let pid = std::fs::read_to_string(n.dir.join("postmaster.pid"))
                    .ok()
                    .and_then(|t| t.lines().next().map(str::to_string))
                    .unwrap_or_default();
                let role = if i == 0 { "primary" } else { "replica" };
                println!("  {role:<8} 127.0.0.1:{:<6} pid {pid:<8} data {}", n.port, n.dir.display());
            }
        }
        println!("Try: SELECT inet_server_port(), pg_is_in_recovery();   -- a read, on a replica");
        println!("     BEGIN; SELECT inet_server_port(); COMMIT;          -- a transaction, on the primary");
        println!("Ctrl-C stops pgsplit and removes the demo cluster.");
    }
    wait_for_signal().await;
    println!("stopping");
    proxy.stop();
    if let Some(mut c) = cluster {
        let _ = tokio::task::spawn_blocking(move || c.destroy()).await;
    }
    Ok(())
}

/// Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
