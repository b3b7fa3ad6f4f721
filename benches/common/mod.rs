//! What the benchmarks share: PgBouncer started beside the project's cluster, configured as
//! pgsplit is (transaction pooling, the same pool size).

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
    let mut cmd = match &cluster.run_as {
        Some(u) => {
            let _ = Command::new("chown").args(["-R", &format!("{u}:"), dir.to_str()?]).status();
            // runuser resets the soft file-descriptor limit: raise it to the hard one.
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "sh", "-c", "ulimit -n $(ulimit -Hn); exec \"$0\" \"$1\"", exe]);
            c
        }
        None => Command::new(exe),
    };
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

/// Stops PgBouncer by its pid (under runuser, the child is only the wrapper).
pub fn stop_pgbouncer(pid: u32, mut child: Child) {
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.kill();
    let _ = child.wait();
}
