//! Helpers for tests that run on a cluster of their own (failover, fencing, coordination): the
//! shared cluster is never failed over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pgsplit::config::{Config, FailoverMode, ReadYourWrites};
use pgsplit::localcluster::LocalCluster;

pub type E = Box<dyn std::error::Error + Send + Sync>;

pub fn config(cluster: &LocalCluster, state_dir: &str) -> Config {
    let mut c = Config { listen: "127.0.0.1:0".into(), ..Config::default() };
    c.servers.primary = cluster.primary().addr();
    c.servers.replicas = cluster.replica_addrs().into_iter().map(Into::into).collect();
    c.monitor.interval_ms = 100;
    c.pool.size = 10;
    c.routing.lag_hold_ms = 300;
    c.routing.read_your_writes = ReadYourWrites::Session;
    c.failover.mode = FailoverMode::Auto;
    // Each cluster keeps its failover state apart (empty: under the cluster's own directory).
    c.failover.state_dir =
        if state_dir.is_empty() { cluster.base.join("state").display().to_string() } else { state_dir.into() };
    c.admin.users = vec!["postgres".into()];
    c.admin.trust = true;
    c
}

/// A primary and two replicas of the test's own, under the temp directory.
pub async fn own_cluster(name: &str) -> Result<(std::path::PathBuf, LocalCluster), E> {
    let base = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let cluster = tokio::task::spawn_blocking({
        let base = base.clone();
        move || LocalCluster::start(&base, 2)
    })
    .await??;
    Ok((base, cluster))
}

/// The client statements in a server's log (log_statement = all, %a in the prefix): everything
/// but pgsplit's own checks and the test's psql.
pub fn client_statements(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("statement:") || l.contains("execute "))
        .filter(|l| !l.contains("pgsplit-monitor") && !l.contains("pgsplit-health") && !l.contains(" psql "))
        .collect()
}

pub fn postmaster_pid(cluster: &LocalCluster, i: usize) -> Result<String, E> {
    let text = std::fs::read_to_string(cluster.nodes[i].dir.join("postmaster.pid"))?;
    Ok(text.lines().next().unwrap_or("").trim().to_string())
}

/// A TCP relay that can go silent: connections stay open, bytes stop (a partition that drops
/// packets: no RST, no FIN), new connections are accepted and never answered.
pub async fn silent_relay(target: String, cut: Arc<AtomicBool>) -> Result<u16, E> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (cut, target) = (cut.clone(), target.clone());
            tokio::spawn(async move {
                if cut.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else { return };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pipe = |mut r: tokio::net::tcp::OwnedReadHalf,
                            mut w: tokio::net::tcp::OwnedWriteHalf,
                            cut: Arc<AtomicBool>| async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let Ok(n) = r.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        if cut.load(Ordering::Relaxed) {
                            // Silence: hold the connection, deliver nothing.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                tokio::join!(pipe(cr, sw, cut.clone()), pipe(sr, cw, cut));
            });
        }
    });
    Ok(port)
}
