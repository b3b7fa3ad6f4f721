//! A throw-away local cluster: a primary and streaming replicas made with initdb and
//! pg_basebackup -R on free loopback ports. Used by `pgsplit demo` and by the integration
//! tests. PostgreSQL refuses to run as root, so as root the servers run as an unprivileged OS
//! user (`postgres` when it exists, else a `pgsplit` system user created for the purpose).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct LocalCluster {
    pub base: PathBuf,
    pub bin: PathBuf,
    pub run_as: Option<String>,
    /// nodes[0] is the primary.
    pub nodes: Vec<LocalNode>,
    removed: bool,
}

pub struct LocalNode {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl LocalNode {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Passwords of the roles the cluster creates for authentication tests.
pub const MD5_USER: (&str, &str) = ("pgsplit_md5", "md5-secret");
pub const SCRAM_USER: (&str, &str) = ("pgsplit_scram", "scram-secret");
/// A role the servers ask for a cleartext password (pg_hba `password`).
pub const CLEARTEXT_USER: (&str, &str) = ("pgsplit_cleartext", "cleartext-secret");

/// Finds the PostgreSQL server binaries: $PGSPLIT_PG_BIN, the newest
/// /usr/lib/postgresql/*/bin, or the PATH.
pub fn find_bin() -> Result<PathBuf, String> {
    const HINT: &str = "PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) not found: install them with \
         `apt-get install postgresql` (Debian/Ubuntu), or point PGSPLIT_PG_BIN at their directory";
    if let Ok(dir) = std::env::var("PGSPLIT_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            Ok(dir)
        } else {
            Err(format!("{HINT} ({} has no initdb)", dir.display()))
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v initdb"]).output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    Err(HINT.into())
}

pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// The unprivileged user to run servers as when we are root.
fn server_user() -> Result<Option<String>, String> {
    if !is_root() {
        return Ok(None);
    }
    for u in ["postgres", "pgsplit"] {
        if Command::new("id").arg(u).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
            return Ok(Some(u.into()));
        }
    }
    let out = Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "pgsplit"])
        .output()
        .map_err(|e| format!("useradd: {e}"))?;
    if !out.status.success() {
        return Err(format!("cannot create the pgsplit OS user: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(Some("pgsplit".into()))
}

impl LocalCluster {
    /// Creates and starts a primary and `replicas` streaming replicas under `base` (which is
    /// wiped first).
    pub fn start(base: &Path, replicas: usize) -> Result<LocalCluster, String> {
        let bin = find_bin()?;
        let run_as = server_user()?;
        let _ = std::fs::remove_dir_all(base);
        std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
        let base = base.canonicalize().map_err(|e| e.to_string())?;
        let mut c = LocalCluster { base: base.clone(), bin, run_as, nodes: Vec::new(), removed: false };
        if let Some(u) = &c.run_as {
            c.run(Command::new("chown").args([&format!("{u}:"), base.to_str().unwrap_or_default()]))?;
        }
        let primary = LocalNode { name: "primary".into(), dir: base.join("primary"), port: free_port()? };
        c.pg(
            "initdb",
            &["-D", path(&primary.dir), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
        )?;
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\n\
             max_wal_senders = 10\nhot_standby = on\nfsync = off\nmax_connections = 300\nmax_prepared_transactions = 10\nshared_buffers = 32MB\n\
             wal_keep_size = 256MB\nhot_standby_feedback = on\nwal_receiver_status_interval = 1s\n",
            primary.port,
            path(&base)
        );
        c.append(&primary.dir.join("postgresql.conf"), &conf)?;
        let hba = format!(
            "host all {md5} 127.0.0.1/32 md5\nhost all {scram} 127.0.0.1/32 scram-sha-256\n\
             host all {cleartext} 127.0.0.1/32 password\n\
             host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
            md5 = MD5_USER.0,
            scram = SCRAM_USER.0,
            cleartext = CLEARTEXT_USER.0
        );
        c.write(&primary.dir.join("pg_hba.conf"), &hba)?;
        c.nodes.push(primary);
        c.start_node(0)?;
        c.psql(
            0,
            &format!(
                "SET password_encryption = 'md5'; CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}'; \
                 SET password_encryption = 'scram-sha-256'; CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}'; \
                 CREATE ROLE {} LOGIN SUPERUSER PASSWORD '{}';",
                MD5_USER.0, MD5_USER.1, SCRAM_USER.0, SCRAM_USER.1, CLEARTEXT_USER.0, CLEARTEXT_USER.1
            ),
        )?;
        for i in 1..=replicas {
            let node =
                LocalNode { name: format!("replica{i}"), dir: base.join(format!("replica{i}")), port: free_port()? };
            let primary_port = c.nodes[0].port.to_string();
            c.pg(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary_port,
                    "-U",
                    "postgres",
                    "-D",
                    path(&node.dir),
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                ],
            )?;
            c.append(&node.dir.join("postgresql.conf"), &format!("port = {}\n", node.port))?;
            c.nodes.push(node);
            c.start_node(i)?;
        }
        c.wait_streaming(replicas)?;
        Ok(c)
    }

    /// Rebuilds node `i` as a fresh streaming replica of node `from` (what an operator does
    /// with a diverged replica, short of pg_rewind): stop, new base backup, start.
    pub fn reclone(&self, i: usize, from: usize) -> Result<(), String> {
        let _ = self.stop_node(i, "immediate");
        let n = &self.nodes[i];
        std::fs::remove_dir_all(&n.dir).map_err(|e| format!("{}: {e}", n.dir.display()))?;
        let port = self.nodes[from].port.to_string();
        self.pg(
            "pg_basebackup",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-D", path(&n.dir), "-R", "-X", "stream", "-c", "fast"],
        )?;
        self.append(&n.dir.join("postgresql.conf"), &format!("port = {}\n", n.port))?;
        self.start_node(i)
    }

    pub fn primary(&self) -> &LocalNode {
        &self.nodes[0]
    }

    pub fn replica_addrs(&self) -> Vec<String> {
        self.nodes[1..].iter().map(LocalNode::addr).collect()
    }

    pub fn start_node(&self, i: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        let log = self.base.join(format!("{}.log", n.name));
        self.pg("pg_ctl", &["-D", path(&n.dir), "-l", path(&log), "-w", "-t", "60", "start"]).map(|_| ())
    }

    /// Stops a server: "fast" (clean) or "immediate" (as if it crashed).
    pub fn stop_node(&self, i: usize, mode: &str) -> Result<(), String> {
        let n = &self.nodes[i];
        self.pg("pg_ctl", &["-D", path(&n.dir), "-m", mode, "-w", "stop"]).map(|_| ())
    }

    /// Runs SQL on a node as the superuser and returns psql's unaligned output.
    pub fn psql(&self, i: usize, sql: &str) -> Result<String, String> {
        let port = self.nodes[i].port.to_string();
        let out = self.pg(
            "psql",
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn wait_streaming(&self, replicas: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.psql(0, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")?;
            if n.parse::<usize>().unwrap_or(0) >= replicas {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("replicas did not start streaming (logs in {})", self.base.display()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every running replica has replayed everything the primary has written.
    pub fn wait_caught_up(&self) -> Result<(), String> {
        let target = self.psql(0, "SELECT pg_current_wal_lsn()")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 1..self.nodes.len() {
            loop {
                let q = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
                if self.psql(i, &q).map(|s| s == "t").unwrap_or(true) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} did not catch up", self.nodes[i].name));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops every server and removes the files.
    pub fn destroy(&mut self) {
        for i in (0..self.nodes.len()).rev() {
            let _ = self.stop_node(i, "immediate");
        }
        if !self.removed {
            let _ = std::fs::remove_dir_all(&self.base);
            self.removed = true;
        }
    }

    fn pg(&self, tool: &str, args: &[&str]) -> Result<Output, String> {
        let exe = self.bin.join(tool);
        let mut cmd = match &self.run_as {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(args).current_dir(&self.base);
        self.run(&mut cmd)
    }

    fn run(&self, cmd: &mut Command) -> Result<Output, String> {
        let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{cmd:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{:?} failed: {}{}",
                cmd.get_program(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }

    fn write(&self, file: &Path, text: &str) -> Result<(), String> {
        std::fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
    }

    fn append(&self, file: &Path, text: &str) -> Result<(), String> {
        use std::io::Write;
        let mut f =
            std::fs::OpenOptions::new().append(true).open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        f.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", file.display()))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}
