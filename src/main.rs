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
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Runs pgsplit in front of a throw-away local primary and two streaming replicas made
    /// from the PostgreSQL binaries on this machine (unless a cluster is configured).
    Demo,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => fail(&format!("cannot start the runtime: {e}")),
    };
    let code = runtime.block_on(async move {
        match run(cli).await {
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

fn load_config(cli: &Cli) -> Result<Config, String> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    if let Some(l) = &cli.listen {
        config.listen = l.clone();
    }
    if let Some(p) = &cli.primary {
        config.servers.primary = p.clone();
    }
    if !cli.replicas.is_empty() {
        config.servers.replicas = cli.replicas.clone();
    }
    if let Some(a) = cli.auth {
        config.auth = a;
    }
    if let Some(m) = &cli.metrics_listen {
        config.metrics_listen = m.clone();
    }
    Ok(config)
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut config = load_config(&cli)?;
    let mut cluster = None;
    if matches!(cli.command, Some(Cmd::Demo)) && config.servers.primary.is_empty() {
        let base = std::env::temp_dir().join(format!("pgsplit-demo-{}", std::process::id()));
        println!("Creating a primary and two streaming replicas in {} ...", base.display());
        let c = tokio::task::spawn_blocking(move || pgsplit::cluster::LocalCluster::start(&base, 2))
            .await
            .map_err(|e| e.to_string())??;
        config.servers.primary = c.primary().addr();
        config.servers.replicas = c.replica_addrs();
        c.psql(0, "CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, note text); INSERT INTO demo (note) VALUES ('hello from the primary');")?;
        cluster = Some(c);
    }
    let proxy = Proxy::start(config.clone()).await?;
    println!("pgsplit listening on {}", proxy.addr);
    println!("  primary:  {}", config.servers.primary);
    for r in &config.servers.replicas {
        println!("  replica:  {r}");
    }
    if let Some(m) = proxy.metrics_addr {
        println!("  metrics:  http://{m}/metrics");
    }
    if cluster.is_some() {
        println!();
        println!("Connect with:");
        println!("  psql \"host={} port={} user=postgres dbname=postgres\"", proxy.addr.ip(), proxy.addr.port());
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
