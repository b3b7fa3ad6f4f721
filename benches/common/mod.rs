//! What the benchmarks share: PgBouncer started beside the project's cluster, configured as
//! pgsplit is (transaction pooling, the same pool size), Pgpool-II, and pgbench runs.
#![allow(dead_code)] // each benchmark uses part of it

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgsplit::localcluster::{LocalCluster, free_port};

/// PgBouncer, transaction pooling, same pool size; its own pid (it may run under runuser).
pub fn start_pgbouncer(cluster: &LocalCluster, pool_size: usize, max_clients: usize) -> Option<(u16, u32, Child)> {
    let exe = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let port = free_port().ok()?;
    let dir = cluster.base.join("pgbouncer");
    std::fs::create_dir_all(&dir).ok()?;
    std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n").ok()?;
    let ini = format!(
        "[databases]\npostgres = host=127.0.0.1 port={}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
         auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\ndefault_pool_size = {pool_size}\n\
         max_client_conn = {max_clients}\nunix_socket_dir =\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
        cluster.primary().port,
        d = dir.display()
    );
    std::fs::write(dir.join("pgbouncer.ini"), ini).ok()?;
    let mut cmd = as_server_user(cluster, &dir, exe)?;
    let child = cmd.arg(dir.join("pgbouncer.ini")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().ok()?;
    let t0 = Instant::now();
    loop {
        if let Some(pid) = std::fs::read_to_string(dir.join("pgbouncer.pid")).ok().and_then(|p| p.trim().parse().ok())
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Some((port, pid, child));
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `exe` as the user the cluster's servers run as (PostgreSQL's tools refuse root), owning
/// `dir`; its arguments are added by the caller.
fn as_server_user(cluster: &LocalCluster, dir: &std::path::Path, exe: &str) -> Option<Command> {
    Some(match &cluster.run_as {
        Some(u) => {
            let _ = Command::new("chown").args(["-R", &format!("{u}:"), dir.to_str()?]).status();
            // runuser resets the soft file-descriptor limit: raise it to the hard one.
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "sh", "-c", "ulimit -n $(ulimit -Hn); exec \"$0\" \"$@\"", exe]);
            c
        }
        None => Command::new(exe),
    })
}

/// Stops PgBouncer by its pid (under runuser, the child is only the wrapper).
pub fn stop_pgbouncer(pid: u32, mut child: Child) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Pgpool-II in streaming-replication mode with load balancing over the primary and the
/// replicas (its children hold a session each: `children` must be at least the client count).
pub fn start_pgpool(cluster: &LocalCluster, children: usize) -> Option<(u16, u32, Child)> {
    let exe = ["/usr/sbin/pgpool", "/usr/bin/pgpool"].into_iter().find(|p| std::path::Path::new(p).exists())?;
    let port = free_port().ok()?;
    let pcp = free_port().ok()?;
    let dir = cluster.base.join("pgpool");
    std::fs::create_dir_all(&dir).ok()?;
    let mut backends = String::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        backends.push_str(&format!(
            "backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {}\nbackend_weight{i} = 1\n\
             backend_flag{i} = 'DISALLOW_TO_FAILOVER'\n",
            n.port
        ));
    }
    let d = dir.display();
    let conf = format!(
        "backend_clustering_mode = 'streaming_replication'\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
         socket_dir = '{d}'\npcp_listen_addresses = ''\npcp_port = {pcp}\npcp_socket_dir = '{d}'\n{backends}\
         num_init_children = {children}\nmax_pool = 1\nconnection_cache = off\nload_balance_mode = on\n\
         sr_check_period = 0\nsr_check_user = 'postgres'\nsr_check_database = 'postgres'\nhealth_check_period = 0\nfailover_on_backend_error = off\nenable_pool_hba = off\n\
         pid_file_name = '{d}/pgpool.pid'\nlogdir = '{d}'\nlog_destination = 'stderr'\n\
         listen_backlog_multiplier = 4\nreserved_connections = 0\n"
    );
    std::fs::write(dir.join("pgpool.conf"), conf).ok()?;
    std::fs::write(dir.join("pcp.conf"), "").ok()?;
    let mut cmd = as_server_user(cluster, &dir, exe)?;
    let log = std::fs::File::create(dir.join("pgpool.log")).ok()?;
    let child = cmd
        .args(["-n", "-f"])
        .arg(dir.join("pgpool.conf"))
        .arg("-F")
        .arg(dir.join("pcp.conf"))
        .stdout(log.try_clone().ok()?)
        .stderr(log)
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    loop {
        // (Pgpool-II's pid file may carry more than the number.)
        let pid = std::fs::read(dir.join("pgpool.pid")).ok().and_then(|p| {
            String::from_utf8_lossy(&p).split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty())?.parse().ok()
        });
        if let Some(pid) = pid
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return Some((port, pid, child));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let log = std::fs::read_to_string(dir.join("pgpool.log")).unwrap_or_default();
            let files: Vec<String> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            eprintln!(
                "Pgpool-II did not start (files {files:?}, port {port} listening: {listening}): {}",
                &log[log.len().saturating_sub(1500)..]
            );
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The median of some figures (None for none).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// One pgbench run: throughput, latency percentiles (from the per-transaction log), or why it
/// failed (any client error makes the run's figures meaningless).
#[derive(Debug, Clone)]
pub struct Run {
    pub tps: f64,
    pub transactions: f64,
    /// CPU time the proxy process used per transaction (µs), when its pid is known.
    pub cpu_us: Option<f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

pub fn pgbench(port: u16, args: &[&str], log_dir: Option<&std::path::Path>) -> Result<Run, String> {
    pgbench_cpu(port, args, log_dir, None)
}

/// CPU time of a process (all threads, user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime the 14th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// pgbench, and the CPU the process `pid` (the proxy) used per transaction meanwhile.
pub fn pgbench_cpu(
    port: u16,
    args: &[&str],
    log_dir: Option<&std::path::Path>,
    pid: Option<u32>,
) -> Result<Run, String> {
    let cpu0 = pid.and_then(cpu_seconds);
    // A run that cannot finish (a pooler that never lets a client in) must not hang the suite.
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "pgbench"]);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "postgres"]).args(args);
    let prefix = log_dir.map(|d| {
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::create_dir_all(d);
        d.join("tx")
    });
    if let Some(p) = &prefix {
        cmd.arg("-l").arg(format!("--log-prefix={}", p.display()));
    }
    let out = cmd.output().map_err(|e| format!("pgbench: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().find_map(|w| w.parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(error) = stderr.lines().find(|l| l.contains("error") || l.contains("FATAL")) {
        return Err(error.chars().take(100).collect());
    }
    if !out.status.success() {
        return Err(format!("pgbench exited with {}", out.status));
    }
    let tps = field("tps =");
    let transactions = field("number of transactions actually processed:");
    let cpu_us =
        cpu0.zip(pid.and_then(cpu_seconds)).filter(|_| transactions > 0.0).map(|(a, b)| (b - a) * 1e6 / transactions);
    let (mut p50_ms, mut p99_ms) = (field("latency average ="), f64::NAN);
    if let Some(dir) = log_dir {
        // Per-transaction log lines: client, transaction, latency in µs, ...
        let mut lat: Vec<u32> = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(t) = std::fs::read_to_string(e.path()) else { continue };
            lat.extend(t.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u32>().ok()));
        }
        let _ = std::fs::remove_dir_all(dir);
        if !lat.is_empty() {
            lat.sort_unstable();
            let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
            p50_ms = at(0.50);
            p99_ms = at(0.99);
        }
    }
    Ok(Run { tps, transactions, cpu_us, p50_ms, p99_ms })
}

/// A pgsplit binary (`exe`: this build, or an older one to compare) as users run it, with a
/// config file: `top` holds top-level settings
/// (`worker_threads = 1`...), `replicas` whether reads go to the cluster's replicas.
pub fn start_pgsplit(
    exe: &str,
    cluster: &LocalCluster,
    name: &str,
    top: &str,
    replicas: bool,
    pool: usize,
) -> Option<(u16, Child)> {
    let port = free_port().ok()?;
    let dir = cluster.base.join(format!("pgsplit-{name}"));
    std::fs::create_dir_all(&dir).ok()?;
    let replicas = if replicas {
        cluster.replica_addrs().iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")
    } else {
        String::new()
    };
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nlog_level = \"warn\"\n{top}\n[servers]\nprimary = \"{}\"\nreplicas = [{replicas}]\n\
         [pool]\nsize = {pool}\n[limits]\nmax_client_conn = 100000\n",
        cluster.primary().addr()
    );
    std::fs::write(dir.join("pgsplit.toml"), config).ok()?;
    let child = Command::new(exe)
        .arg("--config")
        .arg(dir.join("pgsplit.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((port, child))
}

/// Date, machine and versions, for the table and the chart.
pub fn about(cluster: &LocalCluster, what: &str) -> String {
    let out = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                String::from_utf8_lossy(&[o.stdout, o.stderr].concat()).lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map_or(String::new(), |kb| format!("{} GiB", kb / 1024 / 1024));
    let pg = out(&cluster.bin.join("postgres").display().to_string(), &["--version"]);
    format!(
        "{what} {} on {cores} cores ({cpu}), {mem}; pgsplit {} ({}); {pg}; {}; {}",
        out("date", &["-u", "+%Y-%m-%d"]),
        env!("CARGO_PKG_VERSION"),
        out("git", &["rev-parse", "--short", "HEAD"]),
        out("pgbouncer", &["--version"]),
        out("pgpool", &["--version"]),
    )
}
