//! The benchmark suite: pgbench against the primary directly, pgsplit, PgBouncer and Pgpool-II,
//! on the project's own primary + two replicas, interleaved round by round so that machine
//! drift hits every target alike. Prints a table per workload (median TPS of the rounds, p50/p99
//! latency, ratios to direct and to PgBouncer), writes JSON and CSV, and draws a PNG chart
//! with gnuplot when it is installed. Asserts nothing.
//!
//! Run: `scripts/bench` (installs PgBouncer, Pgpool-II and gnuplot from Debian, then this).
//! Environment: BENCH_SECONDS (5), BENCH_ROUNDS (2), BENCH_CLIENTS ("1,16,64,256"),
//! BENCH_WORKLOADS (substrings of the names below, "|"-separated), BENCH_OUT (target/bench),
//! BENCH_TARGETS (names of the targets to run, comma-separated; default all),
//! BENCH_PGSPLIT (pgsplit variants, "name=setting,setting;name=...", e.g.
//! "pgsplit=;pgsplit-1-thread=worker_threads = 1", or "old=@/path/to/pgsplit" for another
//! build, "primary-only" among the settings for no replicas; default: pgsplit as shipped,
//! reads on the two replicas; pgsplit-primary on the primary alone, as PgBouncer is; and
//! that with `worker_threads = 1`, the current-thread scheduler).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use pgsplit::localcluster::LocalCluster;

#[path = "common/mod.rs"]
mod support;
use support::{Run, median, pgbench};

type Target = (&'static str, u16, Option<u32>);

/// Server connections per server for every pooler (PgBouncer and pgsplit pool size).
const POOL: usize = 20;

/// Pgpool-II's children at most: each holds its client's server connections for the whole
/// session, and the servers allow 300 (beside the poolers' own). More clients than children
/// would wait for ever to connect.
const PGPOOL_CHILDREN: usize = 200;

const WORKLOADS: &[(&str, &[&str])] = &[
    ("select-only simple", &["-S", "-M", "simple"]),
    ("select-only extended", &["-S", "-M", "extended"]),
    ("select-only prepared", &["-S", "-M", "prepared"]),
    ("tpcb-like simple", &["-M", "simple"]),
    ("simple-update (-N) simple", &["-N", "-M", "simple"]),
    ("select-only simple, new connection per transaction", &["-S", "-M", "simple", "-C"]),
];

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let seconds = env("BENCH_SECONDS", "5");
    let rounds: usize = env("BENCH_ROUNDS", "2").parse().unwrap_or(2);
    let counts: Vec<usize> =
        env("BENCH_CLIENTS", "1,16,64,256").split(',').filter_map(|c| c.trim().parse().ok()).collect();
    // Workloads whose name contains one of these ("|"-separated; empty: all).
    let filter = env("BENCH_WORKLOADS", "");
    let filters: Vec<&str> = filter.split('|').filter(|f| !f.is_empty()).collect();
    let out_dir = PathBuf::from(env("BENCH_OUT", "target/bench"));
    let _ = std::fs::create_dir_all(&out_dir);
    let max_clients = counts.iter().copied().max().unwrap_or(1);

    let base = std::env::temp_dir().join(format!("pgsplit-suite-{}", std::process::id()));
    let cluster = LocalCluster::start(&base, 2).unwrap_or_else(|e| panic!("cannot start the cluster: {e}"));
    let primary_port = cluster.primary().port;
    if let Err(e) = pgbench(primary_port, &["-i", "-q", "-s", "10"], None) {
        eprintln!("pgbench -i: {e}");
    }
    let _ = cluster.wait_caught_up();
    // pgsplit as users run it (its own process, reads on the two replicas), once per variant:
    // BENCH_PGSPLIT="name=top-level settings;..." (default: as shipped).
    let variants = env(
        "BENCH_PGSPLIT",
        "pgsplit=;pgsplit-primary=primary-only;pgsplit-primary-1-thread=primary-only,worker_threads = 1",
    );
    let mut pgsplits = Vec::new();
    for v in variants.split(';').filter(|v| !v.trim().is_empty()) {
        let (name, top) = v.split_once('=').unwrap_or((v, ""));
        let name: &'static str = Box::leak(name.trim().to_string().into_boxed_str());
        // "@/path/to/pgsplit,settings": another binary (an older build, to compare).
        let (exe, top) = match top.strip_prefix('@') {
            Some(rest) => rest.split_once(',').unwrap_or((rest, "")),
            None => (env!("CARGO_BIN_EXE_pgsplit"), top),
        };
        // "primary-only": no replicas configured, every query on the primary (the servers
        // PgBouncer is given: the proxies' own costs side by side on the same servers).
        let replicas = !top.split(',').any(|t| t.trim() == "primary-only");
        let top: Vec<&str> = top.split(',').filter(|t| t.trim() != "primary-only").collect();
        let top = top.join("\n");
        match support::start_pgsplit(exe, &cluster, name, &top, replicas, POOL) {
            Some((port, child)) => pgsplits.push((name, port, child)),
            None => eprintln!("{name}: pgsplit did not start"),
        }
    }
    let bouncer = support::start_pgbouncer(&cluster, POOL, max_clients + 100);
    // Pgpool-II holds a server session per client: as many children as clients, each with its
    // own connections (the servers allow 300).
    let pgpool_children = max_clients.min(PGPOOL_CHILDREN);
    let pgpool = support::start_pgpool(&cluster, pgpool_children);
    // (name, port, pid of the proxy process for its CPU per transaction)
    let mut targets: Vec<(&str, u16, Option<u32>)> = vec![("direct", primary_port, None)];
    targets.extend(pgsplits.iter().map(|(name, port, child)| (*name, *port, Some(child.id()))));
    match &bouncer {
        Some((port, pid, _)) => targets.push(("pgbouncer", *port, Some(*pid))),
        None => eprintln!("PgBouncer not found (apt-get install pgbouncer): left out"),
    }
    match &pgpool {
        Some((port, _, _)) => targets.push(("pgpool-ii", *port, None)),
        None => eprintln!("Pgpool-II not found or did not start (apt-get install pgpool2): left out"),
    }
    // BENCH_TARGETS: only these targets (comma-separated names; empty: all).
    let only = env("BENCH_TARGETS", "");
    if !only.is_empty() {
        targets.retain(|(name, _, _)| only.split(',').any(|o| o.trim() == *name));
    }
    let about = support::about(&cluster, "pgbench suite");
    println!("{about}");
    println!("{seconds} s per run, {rounds} rounds interleaved, pool {POOL} per server, pgbench -n -j2\n");

    let mut results: Results = BTreeMap::new();
    let log_dir = base.join("pgbench-log");
    for round in 0..rounds {
        for (w, (name, args)) in WORKLOADS.iter().enumerate() {
            if !filters.is_empty() && !filters.iter().any(|f| name.contains(f)) {
                continue;
            }
            for (ci, &clients) in counts.iter().enumerate() {
                for (t, (target, port, pid)) in targets.iter().enumerate() {
                    let c = clients.to_string();
                    let j = if clients > 1 { "2" } else { "1" };
                    let mut a = vec!["-n", "-c", c.as_str(), "-j", j, "-T", seconds.as_str()];
                    a.extend(args.iter().copied());
                    let r = if *target == "direct" && clients > 250 {
                        Err("more clients than the servers' max_connections (300)".into())
                    } else if *target == "pgpool-ii" && clients > pgpool_children {
                        Err(format!("more clients than Pgpool-II's num_init_children ({pgpool_children})"))
                    } else {
                        support::pgbench_cpu(*port, &a, Some(&log_dir), *pid)
                    };
                    match &r {
                        Ok(r) => eprintln!("round {round} {name} {clients} clients {target}: {:.0} tps", r.tps),
                        Err(e) => eprintln!("round {round} {name} {clients} clients {target}: failed: {e}"),
                    }
                    results.entry((w, ci, t)).or_default().push(r);
                }
            }
        }
    }
    let rows = summarize(&results, &targets, &counts);
    print_tables(&rows, &targets, &counts);
    write_outputs(&out_dir, &rows, &about);

    if let Some((_, pid, child)) = bouncer {
        support::stop_pgbouncer(pid, child);
    }
    if let Some((_, pid, child)) = pgpool {
        support::stop_pgbouncer(pid, child);
    }
    for (_, _, mut child) in pgsplits {
        let _ = child.kill();
        let _ = child.wait();
    }
    drop(cluster);
}

/// The runs of each (workload, client count, target), by index.
type Results = BTreeMap<(usize, usize, usize), Vec<Result<Run, String>>>;

#[derive(Default)]
struct Cell {
    tps: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    cpu: Option<f64>,
    error: Option<String>,
}

/// One (workload, clients, target) cell.
struct Row {
    workload: &'static str,
    clients: usize,
    target: &'static str,
    tps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// The proxy's CPU time per transaction, µs.
    cpu_us: Option<f64>,
    vs_direct: Option<f64>,
    vs_pgbouncer: Option<f64>,
    error: Option<String>,
}

fn summarize(results: &Results, targets: &[Target], counts: &[usize]) -> Vec<Row> {
    let cell = |w: usize, ci: usize, t: usize| -> Cell {
        let Some(runs) = results.get(&(w, ci, t)) else { return Cell::default() };
        let ok: Vec<&Run> = runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        if ok.len() < runs.len() {
            let error = runs.iter().find_map(|r| r.as_ref().err().cloned());
            return Cell { error, ..Cell::default() };
        }
        Cell {
            tps: median(ok.iter().map(|r| r.tps).collect()),
            p50: median(ok.iter().map(|r| r.p50_ms).collect()),
            p99: median(ok.iter().map(|r| r.p99_ms).collect()),
            cpu: median(ok.iter().filter_map(|r| r.cpu_us).collect()),
            error: None,
        }
    };
    let index = |name: &str| targets.iter().position(|(n, _, _)| *n == name);
    let mut rows = Vec::new();
    for (w, (workload, _)) in WORKLOADS.iter().enumerate() {
        for (ci, &clients) in counts.iter().enumerate() {
            let base = |name: &str| index(name).and_then(|t| cell(w, ci, t).tps);
            let (direct, bouncer) = (base("direct"), base("pgbouncer"));
            for (t, (target, _, _)) in targets.iter().enumerate() {
                if !results.contains_key(&(w, ci, t)) {
                    continue;
                }
                let Cell { tps, p50, p99, cpu, error } = cell(w, ci, t);
                rows.push(Row {
                    workload,
                    clients,
                    target,
                    tps,
                    p50_ms: p50,
                    p99_ms: p99,
                    cpu_us: cpu,
                    vs_direct: tps.zip(direct).map(|(a, b)| a / b),
                    vs_pgbouncer: tps.zip(bouncer).map(|(a, b)| a / b),
                    error,
                });
            }
        }
    }
    rows
}

fn print_tables(rows: &[Row], targets: &[Target], counts: &[usize]) {
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for (workload, _) in WORKLOADS {
        if !rows.iter().any(|r| r.workload == *workload) {
            continue;
        }
        println!("\n== {workload}");
        println!(
            "{:>7}  {:<18} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "clients", "target", "tps", "p50 ms", "p99 ms", "x direct", "x bouncer", "cpu µs/tx"
        );
        for &clients in counts {
            for (target, _, _) in targets {
                let Some(r) =
                    rows.iter().find(|r| r.workload == *workload && r.clients == clients && r.target == *target)
                else {
                    continue;
                };
                match &r.error {
                    Some(e) => println!("{clients:>7}  {target:<18} failed: {e}"),
                    None => println!(
                        "{clients:>7}  {target:<18} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
                        f(r.tps, 0),
                        f(r.p50_ms, 3),
                        f(r.p99_ms, 3),
                        f(r.vs_direct, 2),
                        f(r.vs_pgbouncer, 2),
                        f(r.cpu_us, 1)
                    ),
                }
            }
        }
    }
}

fn write_outputs(dir: &std::path::Path, rows: &[Row], about: &str) {
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "workload": r.workload, "clients": r.clients, "target": r.target, "tps": r.tps,
                "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "proxy_cpu_us_per_tx": r.cpu_us, "x_direct": r.vs_direct,
                "x_pgbouncer": r.vs_pgbouncer, "error": r.error,
            })
        })
        .collect();
    let doc = serde_json::json!({ "about": about, "results": json });
    let _ = std::fs::write(dir.join("suite.json"), serde_json::to_string_pretty(&doc).unwrap_or_default());
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    let mut csv =
        String::from("workload,clients,target,tps,p50_ms,p99_ms,proxy_cpu_us_per_tx,x_direct,x_pgbouncer,error\n");
    for r in rows {
        csv.push_str(&format!(
            "\"{}\",{},{},{},{},{},{},{},{},\"{}\"\n",
            r.workload,
            r.clients,
            r.target,
            opt(r.tps),
            opt(r.p50_ms),
            opt(r.p99_ms),
            opt(r.cpu_us),
            opt(r.vs_direct),
            opt(r.vs_pgbouncer),
            r.error.clone().unwrap_or_default().replace('"', "'")
        ));
    }
    let _ = std::fs::write(dir.join("suite.csv"), csv);
    chart(dir, rows, about);
    println!("\nwritten: {0}/suite.json, {0}/suite.csv, {0}/suite.png (with gnuplot)", dir.display());
}

/// TPS by client count, one line per target, one panel per workload (gnuplot, pngcairo).
fn chart(dir: &std::path::Path, rows: &[Row], about: &str) {
    let workloads: Vec<&str> =
        WORKLOADS.iter().map(|w| w.0).filter(|w| rows.iter().any(|r| r.workload == *w)).collect();
    let mut targets: Vec<&str> = Vec::new();
    for r in rows {
        if !targets.contains(&r.target) {
            targets.push(r.target);
        }
    }
    let mut script = format!(
        "set terminal pngcairo size 1500,{} font 'sans,10'\nset output '{}/suite.png'\n\
         set multiplot layout {},2 title \"{}\"\nset logscale x 2\nset key top left\nset grid\n\
         set xlabel 'clients'\nset ylabel 'TPS'\nset yrange [0:*]\n",
        420 * workloads.len().div_ceil(2),
        dir.display(),
        workloads.len().div_ceil(2),
        about.lines().next().unwrap_or("").replace('"', "'")
    );
    for w in &workloads {
        script.push_str(&format!("set title \"{w}\"\nplot "));
        let plots: Vec<String> =
            targets.iter().map(|t| format!("'-' using 1:2 with linespoints title '{t}'")).collect();
        script.push_str(&plots.join(", "));
        script.push('\n');
        for t in &targets {
            for r in rows.iter().filter(|r| r.workload == *w && r.target == *t) {
                if let Some(tps) = r.tps {
                    script.push_str(&format!("{} {tps:.0}\n", r.clients));
                }
            }
            script.push_str("e\n");
        }
    }
    script.push_str("unset multiplot\n");
    let path = dir.join("suite.gp");
    let _ = std::fs::write(&path, script);
    match Command::new("gnuplot").arg(&path).status() {
        Ok(s) if s.success() => {}
        _ => eprintln!("gnuplot not run (apt-get install gnuplot-nox): the chart's script is {}", path.display()),
    }
}
