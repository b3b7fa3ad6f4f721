//! pgbench through pgsplit, against direct connections and PgBouncer, in the same run on the
//! same throw-away cluster. Prints figures and ratios; asserts nothing (a noisy machine must not
//! fail a build). Run: `cargo bench --bench compare` (PgBouncer from `apt-get install pgbouncer`
//! is used when installed). Environment: BENCH_SECONDS (default 10), BENCH_CLIENTS (default 8).

use std::process::Command;

use pgsplit::config::Config;
use pgsplit::localcluster::LocalCluster;
use pgsplit::proxy::Proxy;

#[path = "common/mod.rs"]
mod support;

fn main() {
    let seconds = std::env::var("BENCH_SECONDS").unwrap_or_else(|_| "10".into());
    let clients = std::env::var("BENCH_CLIENTS").unwrap_or_else(|_| "8".into());
    let base = std::env::temp_dir().join(format!("pgsplit-bench-{}", std::process::id()));
    let cluster = match LocalCluster::start(&base, 2) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let primary_port = cluster.primary().port;
    if let Err(e) = pgbench(primary_port, &["-i", "-q", "-s", "10"]) {
        eprintln!("pgbench -i: {e}");
    }
    let _ = cluster.wait_caught_up();

    let mut only_primary = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
    only_primary.servers.primary = cluster.primary().addr();
    only_primary.pool.size = 16;
    let mut split = only_primary.clone();
    split.servers.replicas = cluster.replica_addrs().into_iter().map(Into::into).collect();
    // The cost of read-your-writes (the commit-position probe behind each write): the same
    // split without it.
    let mut split_off = split.clone();
    split_off.routing.read_your_writes = pgsplit::config::ReadYourWrites::Off;
    let (proxy_primary, proxy_split, proxy_split_off) = rt.block_on(async {
        (
            Proxy::start(only_primary).await.unwrap_or_else(|e| panic!("{e}")),
            Proxy::start(split).await.unwrap_or_else(|e| panic!("{e}")),
            Proxy::start(split_off).await.unwrap_or_else(|e| panic!("{e}")),
        )
    });
    let bouncer = support::start_pgbouncer(&cluster, 16, 1000);

    let mut targets: Vec<(&str, u16)> = vec![("direct to primary", primary_port)];
    if let Some((port, _, _)) = &bouncer {
        targets.push(("pgbouncer -> primary", *port));
    }
    targets.push(("pgsplit -> primary only", proxy_primary.addr.port()));
    targets.push(("pgsplit -> primary + 2 replicas", proxy_split.addr.port()));
    targets.push(("pgsplit -> split, read_your_writes off", proxy_split_off.addr.port()));

    println!("pgbench, {clients} clients, {seconds}s per run, 2-core machine shared by servers, proxy and pgbench");
    for (workload, extra) in [
        ("select-only, simple", vec!["-S", "-M", "simple"]),
        ("select-only, prepared", vec!["-S", "-M", "prepared"]),
        ("tpcb-like, prepared", vec!["-M", "prepared"]),
    ] {
        println!("\n== {workload}");
        let mut results = Vec::new();
        for (name, port) in &targets {
            let mut args = vec!["-n", "-c", clients.as_str(), "-j", "2", "-T", seconds.as_str()];
            args.extend(extra.iter().copied());
            match pgbench(*port, &args) {
                Ok((tps, lat)) => {
                    println!("{name:<40} {tps:>10.0} tps  {lat:>7.3} ms avg latency");
                    results.push((*name, Some(tps)));
                }
                Err(why) => {
                    println!("{name:<40}     failed: {why}");
                    results.push((*name, None));
                }
            }
        }
        let tps_of = |prefix: &str| results.iter().find(|(n, _)| n.starts_with(prefix)).and_then(|r| r.1);
        let (direct, bouncer) = (tps_of("direct"), tps_of("pgbouncer"));
        for (name, tps) in results.iter().filter(|(n, _)| n.starts_with("pgsplit")) {
            let Some(tps) = tps else { continue };
            print!("{name:<40}");
            if let Some(d) = direct {
                print!(" {:>6.2}x direct", tps / d);
            }
            if let Some(b) = bouncer {
                print!("  {:>6.2}x pgbouncer", tps / b);
            }
            println!();
        }
    }
    if let Some((_, pid, child)) = bouncer {
        support::stop_pgbouncer(pid, child);
    }
    drop(cluster);
}

/// Runs pgbench and returns (tps, average latency in ms), or why the run failed (any client
/// error makes the run's figures meaningless).
fn pgbench(port: u16, args: &[&str]) -> Result<(f64, f64), String> {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "postgres"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("pgbench: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(error) = stderr.lines().find(|l| l.contains("error")) {
        return Err(error.chars().take(100).collect());
    }
    if !out.status.success() {
        return Err(format!("pgbench exited with {}", out.status));
    }
    Ok((field("tps ="), field("latency average =")))
}
