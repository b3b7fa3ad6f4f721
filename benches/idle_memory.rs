//! Memory of idle clients: the resident memory (VmRSS) of the pgsplit binary and of PgBouncer
//! (when installed) before and after each holds N idle, logged-in client connections, in the
//! same run. Prints figures; never fails a build.
//! Then the memory per prepared statement a session keeps.
//! Run: `cargo bench --bench idle_memory` (IDLE_CLIENTS, default 10000).

use std::time::{Duration, Instant};

use pgsplit::localcluster::LocalCluster;

#[path = "common/mod.rs"]
mod support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let n: usize = std::env::var("IDLE_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let me = std::process::id().to_string();
    let base = std::env::temp_dir().join(format!("pgsplit-idle-{me}"));
    let cluster = match LocalCluster::start(&base, 0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start the cluster: {e}");
            std::process::exit(1);
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    println!("{n} idle clients (logged in, then silent), RSS of the proxy process");
    let (port, mut child) = match support::start_pgsplit(env!("CARGO_BIN_EXE_pgsplit"), &cluster, "idle", "", false, 4)
    {
        Some(p) => p,
        None => {
            eprintln!("cannot start pgsplit");
            std::process::exit(1);
        }
    };
    // Prepared statements first, in a fresh process (memory freed by the idle clients would
    // hide what they take).
    prepared(&rt, port, child.id());
    measure(&rt, "pgsplit", port, child.id(), n);
    let _ = child.kill();
    let _ = child.wait();
    match support::start_pgbouncer(&cluster, 4, 100_000) {
        Some((port, pid, child)) => {
            measure(&rt, "pgbouncer", port, pid, n);
            support::stop_pgbouncer(pid, child);
        }
        None => println!("pgbouncer: not installed (apt-get install pgbouncer)"),
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn measure(rt: &tokio::runtime::Runtime, name: &str, port: u16, pid: u32, n: usize) {
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(pid);
    let t0 = Instant::now();
    let held = rt.block_on(async {
        let mut held = Vec::with_capacity(n);
        let mut failed = 0;
        let mut tasks = Vec::new();
        for _ in 0..n {
            tasks.push(tokio::spawn(tokio::time::timeout(Duration::from_secs(10), login(port))));
            if tasks.len() == 200 {
                for t in tasks.drain(..) {
                    match t.await {
                        Ok(Ok(Ok(s))) => held.push(s),
                        _ => failed += 1,
                    }
                }
            }
        }
        for t in tasks {
            match t.await {
                Ok(Ok(Ok(s))) => held.push(s),
                _ => failed += 1,
            }
        }
        if failed > 0 {
            println!("{name}: {failed} logins failed");
        }
        held
    });
    let logged_in = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    println!(
        "{name:<10} {:>6} clients: RSS {:>7.1} MiB -> {:>7.1} MiB, {:>5.1} KiB per idle client (logins took {:.1} s)",
        held.len(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / held.len().max(1) as f64,
        logged_in.as_secs_f64()
    );
    drop(held);
}

/// Memory per prepared statement a client keeps (pgsplit remembers each one's Parse so that it
/// can prepare it again on whichever server connection runs it). PgBouncer 1.18 has no
/// prepared statements in transaction pooling: nothing to compare.
fn prepared(rt: &tokio::runtime::Runtime, port: u16, pid: u32) {
    const N: usize = 5_000;
    let r: Result<(u64, u64), tokio_postgres::Error> = rt.block_on(async {
        let conn = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
        let (c, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        c.prepare("SELECT 1").await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = rss_kib(pid);
        let mut keep = Vec::with_capacity(N);
        for i in 0..N {
            keep.push(c.prepare(&format!("SELECT $1::int + {i} AS n, 'statement number {i}' AS label")).await?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok((before, rss_kib(pid)))
    });
    match r {
        Ok((before, after)) => println!(
            "pgsplit    {N} prepared statements in one session: RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per statement",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            after.saturating_sub(before) as f64 * 1024.0 / N as f64
        ),
        Err(e) => println!("pgsplit    prepared statements: {e}"),
    }
}

/// A client that logs in (trust) and then says nothing.
async fn login(port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let msg = pgsplit::protocol::startup_message(&[("user", "postgres"), ("database", "postgres")]);
    s.write_all(&msg).await?;
    loop {
        let tag = s.read_u8().await?;
        let len = s.read_i32().await? as usize;
        let mut rest = vec![0u8; len.saturating_sub(4)];
        s.read_exact(&mut rest).await?;
        match tag {
            b'Z' => return Ok(s),
            b'E' => return Err(std::io::Error::other(String::from_utf8_lossy(&rest).to_string())),
            _ => {}
        }
    }
}
