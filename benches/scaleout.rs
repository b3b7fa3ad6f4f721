//! Read scale-out, as on separate machines. Each PostgreSQL server (its postmaster and every
//! process it forks) runs in a CPU cgroup of its own capped at a fraction of a core
//! (BENCH_SERVER_CPU, 0.25 by default), so each server is the bottleneck as it would be on its
//! own host and the proxies, which are not capped, are not. Then pgbench, interleaved round by
//! round, against the primary directly, PgBouncer (the primary), Pgpool-II (load balancing over
//! all three) and pgsplit (reads on the replicas; with read_your_writes off, session and global;
//! with the primary taking a share of the reads too; and with the former default balance,
//! random), for `-S` and a 90/10 read/write mix.
//! Prints TPS, the ratio to PgBouncer and the share of the reads the replicas served (pgsplit's
//! own count, `pgsplit_routed_total`; Pgpool-II's `SHOW POOL_NODES`), writes JSON and CSV.
//! Asserts nothing.
//!
//! Run: `scripts/bench` (all the suites) or `cargo bench --bench scaleout`, as root (cgroups).
//! Environment: BENCH_SERVER_CPU (0.25), BENCH_SECONDS (8), BENCH_ROUNDS (2), BENCH_CLIENTS
//! ("16,64"), BENCH_WORKLOADS (substring filter), BENCH_TARGETS (substrings of the rows to run, comma-separated),
//! BENCH_OLD (another pgsplit binary, an older build, run as shipped beside this one),
//! BENCH_OUT (target/bench).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pgsplit::localcluster::LocalCluster;

#[path = "common/mod.rs"]
mod support;
use support::median;

/// Server connections per server for every pooler.
const POOL: usize = 20;

/// Rows of pgbench_accounts at scale 10.
const ACCOUNTS: u32 = 1_000_000;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

/// The pgsplit variants: name, settings (TOML sections added to the config).
const PGSPLIT: &[(&str, &str)] = &[
    ("pgsplit ryw=off", "read_your_writes = \"off\""),
    ("pgsplit ryw=session", "read_your_writes = \"session\""),
    ("pgsplit ryw=global", "read_your_writes = \"global\""),
    ("pgsplit +primary reads", "primary_read_weight = 1"),
    ("pgsplit balance=random", "balance = \"random\""),
    ("pgsplit ryw=global, wait 5 ms", "read_your_writes = \"global\"\ncausal_wait_ms = 5"),
];

/// How a target tells where its reads ran.
#[derive(Clone, Copy)]
enum Count {
    /// Every read on the primary.
    Primary,
    /// pgsplit's metrics endpoint at this port.
    Pgsplit(u16),
    /// Pgpool-II's SHOW POOL_NODES at its port.
    Pgpool(u16),
}

fn main() {
    let share: f64 = env("BENCH_SERVER_CPU", "0.25").parse().unwrap_or(0.25);
    let seconds = env("BENCH_SECONDS", "8");
    let rounds: usize = env("BENCH_ROUNDS", "2").parse().unwrap_or(2);
    let counts: Vec<usize> = env("BENCH_CLIENTS", "16,64").split(',').filter_map(|c| c.trim().parse().ok()).collect();
    let filter = env("BENCH_WORKLOADS", "");
    let out_dir = PathBuf::from(env("BENCH_OUT", "target/bench"));
    let _ = std::fs::create_dir_all(&out_dir);

    let base = std::env::temp_dir().join(format!("pgsplit-scaleout-{}", std::process::id()));
    let cluster = LocalCluster::start(&base, 2).unwrap_or_else(|e| panic!("cannot start the cluster: {e}"));
    let primary_port = cluster.primary().port;
    if let Err(e) = support::pgbench(primary_port, &["-i", "-q", "-s", "10"], None) {
        eprintln!("pgbench -i: {e}");
    }
    let _ = cluster.wait_caught_up();
    let caps = match Caps::apply(&cluster, share) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot cap the servers' CPU ({e}): the scale-out figures need cgroups (run as root)");
            return;
        }
    };

    let scripts = base.join("scripts");
    let _ = std::fs::create_dir_all(&scripts);
    let read = scripts.join("read.sql");
    let write = scripts.join("write.sql");
    let _ = std::fs::write(
        &read,
        format!("\\set aid random(1, {ACCOUNTS})\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"),
    );
    let _ = std::fs::write(
        &write,
        format!(
            "\\set aid random(1, {ACCOUNTS})\n\\set delta random(-5000, 5000)\n\
             UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
        ),
    );
    let mix = [format!("{}@9", read.display()), format!("{}@1", write.display())];
    let workloads: Vec<(&str, Vec<String>)> = vec![
        ("select-only (-S)", vec!["-S".into()]),
        ("90/10 read/write mix", vec!["-f".into(), mix[0].clone(), "-f".into(), mix[1].clone()]),
    ];

    let mut targets: Vec<(String, u16, Count)> = vec![("direct".into(), primary_port, Count::Primary)];
    let only = env("BENCH_TARGETS", "");
    let only: Vec<&str> = only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.contains(o));
    let mut children = Vec::new();
    let old = std::env::var("BENCH_OLD").ok().map(|exe| ("pgsplit before (BENCH_OLD)", exe, ""));
    let this = PGSPLIT.iter().map(|(name, settings)| (*name, env!("CARGO_BIN_EXE_pgsplit").to_string(), *settings));
    for (name, exe, settings) in this.chain(old).filter(|(n, _, _)| wanted(n)) {
        match start_pgsplit_with(&exe, &cluster, name, settings) {
            Some((port, metrics, child)) => {
                children.push(child);
                targets.push((name.to_string(), port, Count::Pgsplit(metrics)));
            }
            None => eprintln!("{name}: pgsplit did not start"),
        }
    }
    let max_clients = counts.iter().copied().max().unwrap_or(1);
    let bouncer = support::start_pgbouncer(&cluster, POOL, max_clients + 100);
    if let Some((port, _, _)) = bouncer.as_ref().filter(|_| wanted("pgbouncer")) {
        targets.push(("pgbouncer".into(), *port, Count::Primary));
    }
    let pgpool = support::start_pgpool(&cluster, max_clients.min(200));
    if let Some((port, _, _)) = pgpool.as_ref().filter(|_| wanted("pgpool-ii")) {
        targets.push(("pgpool-ii".into(), *port, Count::Pgpool(*port)));
    }
    let about = format!(
        "{}\neach server capped at {share} core (cgroup {}); pool {POOL}; {seconds} s per run, {rounds} rounds; pgbench -n -j2",
        support::about(&cluster, "scale-out"),
        caps.kind,
    );
    println!("{about}\n");

    // (workload, clients, target) -> runs of (tps, share of the reads on the replicas)
    let mut results: BTreeMap<(usize, usize, usize), Vec<(f64, f64)>> = BTreeMap::new();
    for round in 0..rounds {
        for (w, (wname, args)) in workloads.iter().enumerate() {
            if !wname.contains(filter.as_str()) {
                continue;
            }
            for (ci, &clients) in counts.iter().enumerate() {
                for (t, (target, port, count)) in targets.iter().enumerate() {
                    let c = clients.to_string();
                    let mut a: Vec<&str> = vec!["-n", "-c", c.as_str(), "-j", "2", "-T", seconds.as_str()];
                    a.extend(args.iter().map(String::as_str));
                    let before = reads(*count);
                    match support::pgbench(*port, &a, None) {
                        Ok(r) => {
                            let (on_replicas, all) = reads(*count);
                            let share = (on_replicas - before.0) / (all - before.1).max(1.0);
                            eprintln!(
                                "round {round} {wname} {clients} clients {target}: {:.0} tps, {:.0}% of the reads on replicas",
                                r.tps,
                                share * 100.0
                            );
                            results.entry((w, ci, t)).or_default().push((r.tps, share));
                        }
                        Err(e) => eprintln!("round {round} {wname} {clients} clients {target}: failed: {e}"),
                    }
                }
            }
        }
    }

    let mut json = Vec::new();
    let mut csv = String::from("workload,clients,target,tps,x_pgbouncer,replica_read_share\n");
    let bouncer_index = targets.iter().position(|(n, _, _)| n == "pgbouncer");
    for (w, (wname, _)) in workloads.iter().enumerate() {
        if !results.keys().any(|k| k.0 == w) {
            continue;
        }
        println!("\n== {wname}");
        println!("{:>7}  {:<30} {:>8} {:>9} {:>13}", "clients", "target", "tps", "x bouncer", "on replicas");
        for (ci, &clients) in counts.iter().enumerate() {
            let tps_of =
                |t: usize| results.get(&(w, ci, t)).and_then(|runs| median(runs.iter().map(|r| r.0).collect()));
            let bouncer_tps = bouncer_index.and_then(tps_of);
            for (t, (target, _, _)) in targets.iter().enumerate() {
                let Some(tps) = tps_of(t) else { continue };
                let runs = &results[&(w, ci, t)];
                let replica_share = median(runs.iter().map(|r| r.1).collect()).unwrap_or(0.0);
                let x = bouncer_tps.map(|b| tps / b);
                println!(
                    "{clients:>7}  {target:<30} {tps:>8.0} {:>9} {:>12.0}%",
                    x.map_or("-".into(), |x| format!("{x:.2}")),
                    replica_share * 100.0
                );
                json.push(serde_json::json!({
                    "workload": wname, "clients": clients, "target": target, "tps": tps,
                    "x_pgbouncer": x, "replica_share": replica_share,
                }));
                csv.push_str(&format!(
                    "\"{wname}\",{clients},\"{target}\",{tps:.1},{},{replica_share:.3}\n",
                    x.map_or(String::new(), |x| format!("{x:.3}"))
                ));
            }
        }
    }
    println!("\n(\"on replicas\": the share of the reads the replicas ran, as the proxy counts them)");
    let doc = serde_json::json!({ "about": about, "results": json });
    let _ = std::fs::write(out_dir.join("scaleout.json"), serde_json::to_string_pretty(&doc).unwrap_or_default());
    let _ = std::fs::write(out_dir.join("scaleout.csv"), csv);
    chart(&out_dir, &json, &about);
    println!("written: {0}/scaleout.json, {0}/scaleout.csv, {0}/scaleout.png (with gnuplot)", out_dir.display());

    if let Some((_, pid, child)) = bouncer {
        support::stop_pgbouncer(pid, child);
    }
    if let Some((_, pid, child)) = pgpool {
        support::stop_pgbouncer(pid, child);
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(cluster);
    drop(caps);
}

/// pgsplit with its variant's `[routing]` settings, reads on the replicas, and a metrics
/// endpoint (where its reads ran): the port, the metrics port, the process.
fn start_pgsplit_with(
    exe: &str,
    cluster: &LocalCluster,
    name: &str,
    routing: &str,
) -> Option<(u16, u16, std::process::Child)> {
    let metrics = pgsplit::localcluster::free_port().ok()?;
    let top = format!("metrics_listen = \"127.0.0.1:{metrics}\"\n[routing]\n{routing}");
    let dir = name.replace([' ', '=', '+', ','], "-");
    let (port, child) = support::start_pgsplit(exe, cluster, &dir, &top, true, POOL)?;
    Some((port, metrics, child))
}

/// Reads so far on the replicas, and in all (for the primary alone: 0 of 0).
fn reads(count: Count) -> (f64, f64) {
    match count {
        Count::Primary => (0.0, 0.0),
        Count::Pgsplit(port) => {
            // pgsplit_routed_total{reason="read",role="replica",server="..."} 123
            let (mut replica, mut all) = (0.0, 0.0);
            for l in http_get(port, "/metrics").lines().filter(|l| l.starts_with("pgsplit_routed_total{")) {
                let value: f64 = l.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
                if l.contains("reason=\"write\"") {
                    continue;
                }
                all += value;
                if l.contains("role=\"replica\"") {
                    replica += value;
                }
            }
            (replica, all)
        }
        Count::Pgpool(port) => {
            // SHOW POOL_NODES: node_id | hostname | port | status | pg_status | lb_weight |
            // role | pg_role | select_cnt | ...
            let out = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    "postgres",
                    "-AtF",
                    "|",
                    "-c",
                    "SHOW POOL_NODES",
                    "postgres",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let (mut replica, mut all) = (0.0, 0.0);
            for l in out.lines() {
                let f: Vec<&str> = l.split('|').collect();
                let selects: f64 = f.get(8).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
                all += selects;
                if f.get(6).is_some_and(|r| r.trim() == "standby") {
                    replica += selects;
                }
            }
            (replica, all)
        }
    }
}

/// A plain HTTP GET on loopback (the metrics endpoint), the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

/// The servers' CPU caps: one cgroup per server, removed on drop (its processes moved back).
struct Caps {
    kind: &'static str,
    groups: Vec<PathBuf>,
    root: PathBuf,
}

impl Caps {
    fn apply(cluster: &LocalCluster, share: f64) -> Result<Caps, String> {
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists();
        let (kind, root) = if v1 {
            ("v1 cpu.cfs_quota_us", PathBuf::from("/sys/fs/cgroup/cpu"))
        } else if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+cpu");
            ("v2 cpu.max", PathBuf::from("/sys/fs/cgroup"))
        } else {
            return Err("no cgroup cpu controller found".into());
        };
        let mut caps = Caps { kind, groups: Vec::new(), root: root.clone() };
        let period = 100_000u64;
        let quota = ((share * period as f64) as u64).max(1000);
        for node in &cluster.nodes {
            let group = root.join(format!("pgsplit-bench-{}-{}", std::process::id(), node.name));
            std::fs::create_dir_all(&group).map_err(|e| format!("{}: {e}", group.display()))?;
            caps.groups.push(group.clone());
            let w = |file: &str, value: String| {
                std::fs::write(group.join(file), value).map_err(|e| format!("{}/{file}: {e}", group.display()))
            };
            if v1 {
                w("cpu.cfs_period_us", period.to_string())?;
                w("cpu.cfs_quota_us", quota.to_string())?;
            } else {
                w("cpu.max", format!("{quota} {period}"))?;
            }
            let pid = std::fs::read_to_string(node.dir.join("postmaster.pid"))
                .ok()
                .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok())
                .ok_or_else(|| format!("{}: no postmaster.pid", node.dir.display()))?;
            // The postmaster and what it has forked already; later backends inherit the group.
            for p in std::iter::once(pid).chain(children_of(pid)) {
                w("cgroup.procs", p.to_string())?;
            }
        }
        Ok(caps)
    }
}

impl Drop for Caps {
    fn drop(&mut self) {
        for g in &self.groups {
            if let Ok(procs) = std::fs::read_to_string(g.join("cgroup.procs")) {
                for p in procs.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), p);
                }
            }
            let _ = std::fs::remove_dir(g);
        }
    }
}

/// The pids whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// TPS as a ratio to PgBouncer, one bar per target, one group per (workload, clients), drawn
/// with gnuplot (pngcairo) when it is installed.
fn chart(dir: &Path, rows: &[serde_json::Value], about: &str) {
    let mut targets: Vec<String> = Vec::new();
    let mut groups: Vec<String> = Vec::new();
    for r in rows {
        let t = r["target"].as_str().unwrap_or("").to_string();
        if !targets.contains(&t) {
            targets.push(t);
        }
        let g = format!("{}, {} clients", r["workload"].as_str().unwrap_or(""), r["clients"]);
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut data = String::new();
    for g in &groups {
        data.push_str(&format!("\"{g}\""));
        for t in &targets {
            let x = rows
                .iter()
                .find(|r| {
                    r["target"].as_str() == Some(t.as_str())
                        && format!("{}, {} clients", r["workload"].as_str().unwrap_or(""), r["clients"]) == *g
                })
                .and_then(|r| r["x_pgbouncer"].as_f64());
            data.push_str(&x.map_or(" NaN".into(), |x| format!(" {x:.3}")));
        }
        data.push('\n');
    }
    let _ = std::fs::write(dir.join("scaleout.dat"), data);
    let plots: Vec<String> = (0..targets.len())
        .map(|i| {
            format!("'{}/scaleout.dat' using {}:xtic(1) title '{}'", dir.display(), i + 2, targets[i].replace('\'', ""))
        })
        .collect();
    let title = about.lines().next().unwrap_or("").replace('"', "'");
    let script = format!(
        "set terminal pngcairo size 1500,600 font 'sans,10'\nset output '{}/scaleout.png'\n\
         set title \"{title}\\nTPS x PgBouncer, each server capped at a fraction of a core\"\n\
         set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.8 border -1\n\
         set key outside right\nset grid ytics\nset yrange [0:*]\nset ylabel 'x PgBouncer'\nplot {}\n",
        dir.display(),
        plots.join(", ")
    );
    let path = dir.join("scaleout.gp");
    let _ = std::fs::write(&path, script);
    match Command::new("gnuplot").arg(&path).status() {
        Ok(s) if s.success() => {}
        _ => eprintln!("gnuplot not run (apt-get install gnuplot-nox): the chart's script is {}", path.display()),
    }
}
