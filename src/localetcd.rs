//! A local etcd cluster on loopback (Debian's `etcd-server`), for the tests and for trying
//! several pgsplit instances by hand: one or three members, each stoppable (kill -9) and
//! restartable on its data directory. Torn down on drop.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::localcluster::free_port;

pub struct LocalEtcd {
    pub base: PathBuf,
    pub members: Vec<EtcdMember>,
    children: Mutex<Vec<Option<Child>>>,
    tls: Option<EtcdTls>,
}

/// TLS for the client port: etcd's certificate and key, and the CA its clients' certificates
/// must be signed by (client certificate authentication on).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// Plain HTTP /health and /metrics, whatever the client port speaks.
    pub metrics_port: u16,
}

impl EtcdMember {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

fn find_bin() -> Result<PathBuf, String> {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err("etcd not found (install the Debian package etcd-server)".into())
}

impl LocalEtcd {
    /// Starts `n` members under `base` and waits until the cluster answers.
    pub fn start(base: &Path, n: usize) -> Result<LocalEtcd, String> {
        Self::start_with(base, n, None)
    }

    /// Starts `n` members whose client port speaks TLS only (with `tls`) and waits.
    pub fn start_with(base: &Path, n: usize, tls: Option<EtcdTls>) -> Result<LocalEtcd, String> {
        let _ = std::fs::remove_dir_all(base);
        std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(EtcdMember {
                name: format!("etcd{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
            });
        }
        let etcd =
            LocalEtcd { base: base.to_path_buf(), children: Mutex::new((0..n).map(|_| None).collect()), members, tls };
        for i in 0..n {
            etcd.start_member(i)?;
        }
        etcd.wait_healthy(Duration::from_secs(30))?;
        Ok(etcd)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// Starts (or restarts, on its data directory) member `i`.
    pub fn start_member(&self, i: usize) -> Result<(), String> {
        let m = &self.members[i];
        let cluster: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port)).collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join(format!("{}.log", m.name)))
            .map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let mut cmd = Command::new(find_bin()?);
        if let Some(t) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key);
        }
        let child = cmd
            .args(["--name", &m.name])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", m.metrics_port)])
            .arg("--data-dir")
            .arg(self.base.join(&m.name))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "pgsplit-test"])
            // Fast elections on loopback: a lost leader is replaced within a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        self.children.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(child);
        Ok(())
    }

    /// kill -9 member `i`.
    pub fn kill_member(&self, i: usize) {
        if let Some(mut c) = self.children.lock().unwrap_or_else(|p| p.into_inner())[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether member `i` answers /health with a leader.
    pub fn healthy(&self, i: usize) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.members[i].metrics_port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// Waits until every running member reports a healthy cluster.
    pub fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        let t0 = Instant::now();
        loop {
            let running: Vec<usize> = {
                let c = self.children.lock().unwrap_or_else(|p| p.into_inner());
                (0..c.len()).filter(|&i| c[i].is_some()).collect()
            };
            if running.iter().all(|&i| self.healthy(i)) {
                return Ok(());
            }
            if t0.elapsed() > limit {
                let log = std::fs::read_to_string(self.base.join("etcd0.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(format!("etcd not healthy after {limit:?}: {tail:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
