//! Failover on a cluster of its own (the shared one is never failed over): kill -9 the primary
//! under load through pgsplit; pgsplit promotes the most advanced replica, re-points the
//! other, fences the old primary (which stays fenced when it comes back writable), and a
//! restarted pgsplit keeps the new topology. Prints what it measured; asserts correctness.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgsplit::config::{Config, FailoverMode, ReadYourWrites};
use pgsplit::localcluster::LocalCluster;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};

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

pub async fn kill_the_primary_under_load(_env: &Env) -> R {
    let (base, cluster) = own_cluster("pgsplit-failover").await?;
    let state_dir = base.join("state");
    let state_dir = state_dir.to_str().unwrap_or_default().to_string();
    let mut cfg = config(&cluster, &state_dir);
    let fenced_marker = base.join("fence-called");
    cfg.failover.fence_command = format!("echo \"$0\" >> {}", fenced_marker.display());
    let proxy = Proxy::start(cfg.clone()).await?;
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
    let setup = connect(&conn).await?;
    setup.batch_execute("CREATE TABLE fo_writes (id int PRIMARY KEY, at timestamptz DEFAULT now())").await?;
    crate::common::pgbench_init(cluster.nodes[0].port).await?;
    let (primary_port, replica_ports) =
        (cluster.nodes[0].port as i32, [cluster.nodes[1].port as i32, cluster.nodes[2].port as i32]);
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;

    // Readers: pgbench-like select loops outside transactions, counting errors.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (conn, stop) = (conn.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let c = connect(&conn).await?;
            let (mut ok, mut errors) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match c.query_one("SELECT count(*) FROM fo_writes", &[]).await {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            Ok::<_, E>((ok, errors))
        }));
    }
    // The writer: autocommit inserts, each acknowledged id recorded.
    let writer = {
        let (conn, stop) = (conn.clone(), stop.clone());
        tokio::spawn(async move {
            let c = connect(&conn).await?;
            let mut acked = Vec::new();
            let mut failures = Vec::new();
            let mut id = 0;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                match c.execute("INSERT INTO fo_writes (id) VALUES ($1)", &[&id]).await {
                    Ok(_) => acked.push((id, Instant::now())),
                    Err(e) => failures.push((id, e.code().map(|c| c.code().to_string()), Instant::now())),
                }
            }
            Ok::<_, E>((acked, failures))
        })
    };
    // A client inside a transaction, and one pinned to its primary connection.
    let in_tx = connect(&conn).await?;
    in_tx.batch_execute("SET application_name = 'fo-tx'").await?;
    in_tx.batch_execute("BEGIN").await?;
    in_tx.batch_execute("INSERT INTO fo_writes (id) VALUES (-5)").await?;
    let pinned = connect(&conn).await?;
    pinned.batch_execute("CREATE TEMP TABLE fo_tmp (a int)").await?;
    // And pgbench, select-only (outside transactions), through the whole failover.
    let bench = crate::common::pgbench(proxy.addr.port(), &["-n", "-S", "-c", "2", "-j", "1", "-T", "9"]).output();
    let bench = tokio::spawn(bench);
    // pgbench read-write (tpcb-like) too: transactions caught by the kill get 40001 and are
    // retried (--max-tries); a COMMIT caught by it gets 08007 and ends that client: reported.
    let rw =
        crate::common::pgbench(proxy.addr.port(), &["-n", "-c", "2", "-j", "1", "-T", "9", "--max-tries=20"]).output();
    let rw = tokio::spawn(rw);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = postmaster_pid(&cluster, 0)?;
    let killed = Instant::now();
    let status = tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    check!(status.success(), "kill -9 {pid}");
    // Wait for the new primary in the topology.
    let new_primary = loop {
        let t = proxy.shared.cluster.load();
        let p = t.primary();
        if p != 0 {
            break p;
        }
        check!(
            killed.elapsed() < Duration::from_secs(60),
            "no failover after 60 s: {:?}",
            *proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner())
        );
        drop(t);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let promoted_after = killed.elapsed();
    // Let the writer run on the new primary for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failures) = writer.await??;
    // The first write acknowledged by the new primary: after the one that failed at the kill,
    // or (none failed) the first sent after the kill was noticed.
    let first_failed = failures.first().map(|(id, _, _)| *id).unwrap_or(i32::MAX);
    let first_write_after = acked
        .iter()
        .find(|(id, t)| *id > first_failed || (first_failed == i32::MAX && *t > killed + promoted_after))
        .map(|(_, t)| t.duration_since(killed));
    let mut read_ok = 0;
    let mut read_errors = Vec::new();
    for r in readers {
        let (ok, errors) = r.await??;
        read_ok += ok;
        read_errors.extend(errors);
    }
    // Acknowledged writes missing on the new primary (asynchronous replication may lose some).
    let new_port = cluster.nodes[new_primary].port;
    let direct = connect(&format!("host=127.0.0.1 port={new_port} user=postgres dbname=postgres")).await?;
    let present: BTreeSet<i32> =
        direct.query("SELECT id FROM fo_writes", &[]).await?.iter().map(|r| r.get(0)).collect();
    let lost: Vec<i32> = acked.iter().map(|(id, _)| *id).filter(|id| !present.contains(id)).collect();
    println!(
        "    kill -9 of the primary: new primary (node {new_primary}) after {:.2} s, first acknowledged write after {:.2} s",
        promoted_after.as_secs_f64(),
        first_write_after.map(|d| d.as_secs_f64()).unwrap_or(f64::NAN)
    );
    println!(
        "    {} writes acknowledged, {} failed (in flight at the kill or waiting past failover_wait: {:?}), {} acknowledged rows lost (async replication)",
        acked.len(),
        failures.len(),
        failures.iter().map(|(_, c, _)| c.clone().unwrap_or_default()).collect::<BTreeSet<_>>(),
        lost.len()
    );
    println!("    reads outside transactions: {read_ok} ok, {} failed", read_errors.len());
    let loss = proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner()).last_loss_bytes;
    println!("    WAL behind the old primary's last observed position at the promotion: {loss:?} bytes");
    check!(first_write_after.is_some(), "no write succeeded after the failover");
    check!(read_errors.is_empty(), "reads outside transactions failed: {:?}", &read_errors[..read_errors.len().min(5)]);
    check!(failures.len() <= 1, "more than the write in flight at the kill failed: {failures:?}");

    // The transaction is gone: 40001 (safe to retry), then ROLLBACK works and the session
    // goes on, its settings on the new servers.
    let e = in_tx
        .simple_query("INSERT INTO fo_writes (id) VALUES (-6)")
        .await
        .err()
        .ok_or("the lost transaction went on")?;
    check!(crate::common::sqlstate(&e) == "40001", "in a lost transaction: {e:?}");
    let e = in_tx.simple_query("SELECT 1").await.err().ok_or("the failed transaction went on")?;
    check!(crate::common::sqlstate(&e) == "25P02", "after the loss, before ROLLBACK: {e:?}");
    in_tx.batch_execute("ROLLBACK").await?;
    let app = crate::common::simple_value(&in_tx, "SELECT current_setting('application_name')").await?;
    check!(app == "fo-tx", "settings after the lost transaction: {app}");
    in_tx.batch_execute("INSERT INTO fo_writes (id) VALUES (-7)").await?;
    // The pinned session cannot move: a FATAL that says why.
    let e = pinned.simple_query("SELECT * FROM fo_tmp").await.err().ok_or("a pinned session survived its primary")?;
    // (pgsplit sends the FATAL when the connection goes; a client idle then sees its
    // connection closed, one with a query in flight sees the message.)
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
    check!(pinned.is_closed() || msg.contains("cannot move"), "pinned session: {e:?}");

    let rw = rw.await??;
    let rw_out = String::from_utf8_lossy(&rw.stdout);
    let line = |p: &str| rw_out.lines().find(|l| l.trim_start().starts_with(p)).unwrap_or("").trim().to_string();
    println!(
        "    pgbench tpcb-like through the failover: {}; {}; {}; clients ended by an unknown COMMIT outcome: {}",
        line("tps"),
        line("number of transactions actually processed"),
        line("number of transactions retried"),
        String::from_utf8_lossy(&rw.stderr).matches("08007").count() + rw_out.matches("aborted").count()
    );
    let bench = bench.await??;
    let out = String::from_utf8_lossy(&bench.stdout);
    let err = String::from_utf8_lossy(&bench.stderr);
    println!("    pgbench -S through the failover: {}", out.lines().find(|l| l.starts_with("tps")).unwrap_or(""));
    check!(
        bench.status.success() && !err.contains("error") && !out.contains("aborted"),
        "pgbench -S saw errors: {out}\n{err}"
    );
    check!(
        std::fs::read_to_string(&fenced_marker).unwrap_or_default().contains(&cluster.nodes[0].addr()),
        "fence_command was not run"
    );

    // The other replica follows the new primary and serves reads again.
    let other = 3 - new_primary;
    let new_addr = cluster.nodes[new_primary].addr();
    let t0 = Instant::now();
    loop {
        let sender = tokio::task::block_in_place(|| {
            cluster.psql(other, "SELECT coalesce(sender_port::text, '') || ' ' || status FROM pg_stat_wal_receiver")
        })
        .unwrap_or_default();
        let in_rotation = proxy.shared.cluster.load().nodes[other].in_rotation;
        if sender == format!("{new_port} streaming") && in_rotation {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(30), "node {other} never followed {new_addr}: receiver {sender:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "    the other replica streams from the new primary {:.2} s after the promotion",
        t0.elapsed().as_secs_f64()
    );
    // A new session starts at the last write pgsplit saw committed (read-your-writes): once the
    // other replica has replayed it, that session's reads go there.
    let floor = proxy.shared.global_floor.load();
    while proxy.shared.cluster.load().nodes[other].replay_lsn() < floor {
        check!(t0.elapsed() < Duration::from_secs(30), "node {other} never replayed the last write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let c = connect(&conn).await?;
    let mut ports = BTreeSet::new();
    for _ in 0..20 {
        ports.insert(c.query_one("SELECT inet_server_port()", &[]).await?.get::<_, i32>(0));
    }
    check!(ports == BTreeSet::from([cluster.nodes[other].port as i32]), "reads after the failover ran on {ports:?}");
    let p: i32 = c.query_one("INSERT INTO fo_writes (id) VALUES (-1) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(p == new_port as i32, "a write ran on {p}");

    // The old primary restarted: it comes back writable, stays fenced, is made read-only,
    // and gets none of pgsplit's client traffic.
    // Its statement log, from now on, proves no client statement reaches it.
    {
        use std::io::Write;
        let conf = cluster.nodes[0].dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new().append(true).open(&conf)?;
        writeln!(f, "log_statement = 'all'\nlog_line_prefix = '%m [%p] %a '")?;
    }
    tokio::task::block_in_place(|| cluster.start_node(0))?;
    let t0 = Instant::now();
    while proxy.shared.metrics.split_brain.get() == 0 {
        check!(t0.elapsed() < Duration::from_secs(20), "split brain not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        let p: i32 = c
            .query_one("INSERT INTO fo_writes (id) VALUES ($1) RETURNING inet_server_port()", &[&(-100 - i)])
            .await?
            .get(0);
        check!(p == new_port as i32, "a write after the old primary came back ran on {p}");
        let r: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        check!(r != primary_port, "a read reached the fenced old primary");
    }
    let on_old = tokio::task::block_in_place(|| cluster.psql(0, "SELECT count(*) FROM fo_writes WHERE id <= -1"))?;
    check!(on_old == "0", "{on_old} rows written after the failover reached the old primary");
    let log = std::fs::read_to_string(cluster.base.join("primary.log")).unwrap_or_default();
    let leaked = client_statements(&log);
    let pgsplit_own = log.lines().filter(|l| l.contains("statement:") && l.contains("pgsplit-monitor")).count();
    println!(
        "    the old primary's statement log after its restart: {} client statements, {pgsplit_own} of pgsplit's own checks",
        leaked.len()
    );
    check!(leaked.is_empty(), "client statements reached the fenced old primary: {:?}", &leaked[..leaked.len().min(5)]);
    let t0 = Instant::now();
    loop {
        let ro =
            tokio::task::block_in_place(|| cluster.psql(0, "SHOW default_transaction_read_only")).unwrap_or_default();
        if ro == "on" {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(10), "the old primary was not made read-only ({ro})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    let servers = admin.simple_query("SHOW SERVERS").await?;
    let fenced = servers.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            r.get("server") == Some(cluster.nodes[0].addr().as_str())
                && r.get("out_reason").is_some_and(|w| w.contains("fenced"))
        }
        _ => false,
    });
    check!(fenced, "SHOW SERVERS does not show the old primary fenced");
    let body = proxy.shared.metrics.render();
    check!(body.contains("pgsplit_failovers_total 1"), "failovers_total");
    proxy.stop();

    // A restarted pgsplit with the old (now stale) configuration keeps the fence and the new
    // primary, from the state file.
    let again = Proxy::start(cfg).await?;
    let t = again.shared.cluster.load();
    check!(
        t.primary() == new_primary && t.nodes[0].fenced,
        "after a restart: primary {}, fenced {}",
        t.primary(),
        t.nodes[0].fenced
    );
    drop(t);
    let c = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", again.addr.port())).await?;
    let p: i32 =
        c.query_one("INSERT INTO fo_writes (id) VALUES (-1000) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(p == new_port as i32, "after a restart a write ran on {p}");
    again.stop();
    let _ = (replica_ports, &direct);
    drop(cluster);
    Ok(())
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

pub async fn cut_off_from_a_live_primary_no_promotion(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-partition").await?;
    let cut = Arc::new(AtomicBool::new(false));
    let relay = silent_relay(cluster.primary().addr(), cut.clone()).await?;
    let mut cfg = config(&cluster, "");
    cfg.servers.primary = format!("127.0.0.1:{relay}");
    cfg.failover.failover_wait_ms = 1000;
    cfg.failover.check_timeout_ms = 500;
    let proxy = Proxy::start(cfg).await?;
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
    let c = connect(&conn).await?;
    c.batch_execute("CREATE TABLE part_writes (id int)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    // Writes keep going on the primary directly, so the replicas keep hearing from it.
    let stop = Arc::new(AtomicBool::new(false));
    let direct_writer = {
        let (addr, stop) = (cluster.primary().port, stop.clone());
        tokio::spawn(async move {
            let d = connect(&format!("host=127.0.0.1 port={addr} user=postgres dbname=postgres")).await?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                d.execute("INSERT INTO part_writes VALUES (1)", &[]).await?;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, E>(n)
        })
    };
    // A statement on the primary when the link goes silent: it must not wait for ever.
    let stuck = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let c = connect(&conn).await?;
            let t0 = Instant::now();
            let r = c.simple_query("/* pgsplit:primary */ SELECT pg_sleep(1)").await;
            Ok::<_, E>((r.err().map(|e| crate::common::sqlstate(&e)), t0.elapsed()))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    cut.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    // Well past failover_after (3 s): no promotion, the phase says why.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let phase = proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner()).phase.clone();
    let t = proxy.shared.cluster.load();
    let promoted: Vec<usize> = (1..3).filter(|&i| t.nodes[i].role == pgsplit::cluster::Role::Primary).collect();
    drop(t);
    let in_recovery: Vec<String> = (1..3)
        .map(|i| tokio::task::block_in_place(|| cluster.psql(i, "SELECT pg_is_in_recovery()")).unwrap_or_default())
        .collect();
    println!("    cut off from the primary for {:.1} s: phase {phase:?}", t0.elapsed().as_secs_f64());
    check!(
        promoted.is_empty() && in_recovery.iter().all(|r| r == "t"),
        "a replica was promoted: {promoted:?} {in_recovery:?}"
    );
    check!(matches!(phase, pgsplit::failover::decide::Phase::Vetoed(_)), "phase {phase:?}");
    check!(proxy.shared.metrics.failover_vetoes.get() >= 1, "the veto was not counted");
    // Reads go on (replicas); writes through pgsplit fail after failover_wait, they never hang.
    let r: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
    check!(r != cluster.primary().port as i32, "a read went through the cut link");
    let w0 = Instant::now();
    let fresh = connect(&conn).await?;
    let write =
        tokio::time::timeout(Duration::from_secs(20), fresh.execute("INSERT INTO part_writes VALUES (2)", &[])).await;
    println!("    a write through the cut link failed after {:.1} s", w0.elapsed().as_secs_f64());
    check!(matches!(write, Ok(Err(_))), "a write through the cut link did not fail in time: {write:?}");
    let (code, waited) = tokio::time::timeout(Duration::from_secs(30), stuck).await???;
    println!("    a statement caught by the silent link got {code:?} after {:.1} s", waited.as_secs_f64());
    check!(code.as_deref().is_some_and(|c| c.starts_with("08")), "the stuck statement: {code:?}");
    stop.store(true, Ordering::Relaxed);
    let n = direct_writer.await??;
    check!(n > 10, "the direct writer wrote {n} rows");
    proxy.stop();
    drop(cluster);
    Ok(())
}

pub async fn manual_mode_waits_for_promote(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-manual").await?;
    let mut cfg = config(&cluster, "");
    cfg.failover.mode = FailoverMode::Manual;
    let proxy = Proxy::start(cfg).await?;
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    let e = admin.simple_query("FAILOVER").await.err().ok_or("FAILOVER with a healthy primary")?;
    check!(crate::common::sqlstate(&e) == "55000", "FAILOVER with a healthy primary: {e:?}");
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let pid = postmaster_pid(&cluster, 0)?;
    tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let phase = proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner()).phase.clone();
    check!(proxy.shared.cluster.load().primary() == 0, "manual mode promoted by itself");
    check!(matches!(&phase, pgsplit::failover::decide::Phase::Blocked(w) if w.contains("manual")), "{phase:?}");
    // The operator picks the second replica.
    let target = cluster.nodes[2].addr();
    admin.simple_query(&format!("PROMOTE {target}")).await?;
    let t0 = Instant::now();
    while proxy.shared.cluster.load().primary() != 2 {
        check!(t0.elapsed() < Duration::from_secs(30), "PROMOTE did not take effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("    manual mode: PROMOTE {target} took effect in {:.2} s", t0.elapsed().as_secs_f64());
    let c = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port())).await?;
    c.batch_execute("CREATE TABLE manual_probe2 (a int)").await?;
    let port: i32 = c.query_one("INSERT INTO manual_probe2 VALUES (1) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(port == cluster.nodes[2].port as i32, "a write after PROMOTE ran on {port}");
    let state = admin.simple_query("SHOW FAILOVER").await?;
    check!(state.len() > 3, "SHOW FAILOVER: {}", state.len());
    proxy.stop();
    drop(cluster);
    Ok(())
}

pub async fn synchronous_replication_loses_no_acknowledged_commit(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-sync").await?;
    // Name the standbys, then make commits wait for one of them.
    let psql = |i: usize, sql: &str| tokio::task::block_in_place(|| cluster.psql(i, sql));
    for i in 1..3 {
        let current = psql(i, "SHOW primary_conninfo")?;
        let named = format!("{current} application_name=r{i}").replace('\'', "''");
        psql(i, &format!("ALTER SYSTEM SET primary_conninfo = '{named}'"))?;
        psql(i, "SELECT pg_reload_conf()")?;
    }
    psql(0, "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (r1, r2)'")?;
    psql(0, "SELECT pg_reload_conf()")?;
    let t0 = Instant::now();
    while psql(0, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'quorum'")? != "2" {
        check!(t0.elapsed() < Duration::from_secs(30), "the standbys never became synchronous");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let proxy = Proxy::start(config(&cluster, "")).await?;
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
    let c = connect(&conn).await?;
    c.batch_execute("CREATE TABLE sync_writes (id int PRIMARY KEY)").await?;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (conn, stop) = (conn.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&conn).await?;
                let mut acked = Vec::new();
                let mut id = w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    if c.execute("INSERT INTO sync_writes VALUES ($1)", &[&id]).await.is_ok() {
                        acked.push(id);
                    }
                }
                Ok::<_, E>(acked)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = postmaster_pid(&cluster, 0)?;
    tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    let killed = Instant::now();
    while proxy.shared.cluster.load().primary() == 0 {
        check!(killed.elapsed() < Duration::from_secs(60), "no failover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await??);
    }
    let p = proxy.shared.cluster.load().primary();
    let direct =
        connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.nodes[p].port)).await?;
    let present: BTreeSet<i32> =
        direct.query("SELECT id FROM sync_writes", &[]).await?.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i32> = acked.iter().filter(|id| !present.contains(id)).collect();
    println!(
        "    synchronous (ANY 1): {} commits acknowledged, {} lost after the failover to node {p} ({:.2} s)",
        acked.len(),
        lost.len(),
        killed.elapsed().as_secs_f64()
    );
    check!(
        lost.is_empty(),
        "acknowledged commits lost with synchronous replication: {:?}",
        &lost[..lost.len().min(10)]
    );
    proxy.stop();
    drop(cluster);
    Ok(())
}

pub async fn switchover_loses_nothing(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-switchover").await?;
    let proxy = Proxy::start(config(&cluster, "")).await?;
    let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
    let c = connect(&conn).await?;
    c.batch_execute("CREATE TABLE sw_writes (id int PRIMARY KEY)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|w| {
            let (conn, stop) = (conn.clone(), stop.clone());
            tokio::spawn(async move {
                let c = connect(&conn).await?;
                let (mut acked, mut errors) = (0u64, Vec::new());
                let mut id = w * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    match c.execute("INSERT INTO sw_writes VALUES ($1)", &[&id]).await {
                        Ok(_) => acked += 1,
                        Err(e) => errors.push(format!("write: {e:?}")),
                    }
                    if let Err(e) = c.query_one("SELECT count(*) FROM sw_writes", &[]).await {
                        errors.push(format!("read: {e:?}"));
                    }
                }
                Ok::<_, E>((acked, errors))
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    let target = cluster.nodes[1].addr();
    let t0 = Instant::now();
    admin.simple_query(&format!("SWITCHOVER TO {target}")).await?;
    while proxy.shared.cluster.load().primary() != 1 {
        check!(
            t0.elapsed() < Duration::from_secs(30),
            "the switchover did not happen: {:?}",
            *proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut acked, mut errors) = (0, Vec::new());
    for cl in clients {
        let (a, e) = cl.await??;
        acked += a;
        errors.extend(e);
    }
    let direct =
        connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", cluster.nodes[1].port)).await?;
    let rows: i64 = direct.query_one("SELECT count(*) FROM sw_writes", &[]).await?.get(0);
    println!(
        "    switchover to {target} in {:.2} s: {acked} writes acknowledged, {rows} rows on the new primary, {} client errors",
        took.as_secs_f64(),
        errors.len()
    );
    check!(errors.is_empty(), "clients saw errors: {:?}", &errors[..errors.len().min(5)]);
    check!(rows as u64 == acked, "{acked} acknowledged, {rows} on the new primary");
    let ro = tokio::task::block_in_place(|| cluster.psql(0, "SHOW default_transaction_read_only"))?;
    check!(ro == "on", "the old primary is not read-only: {ro}");
    check!(proxy.shared.cluster.load().nodes[0].fenced, "the old primary is not fenced");
    proxy.stop();
    drop(cluster);
    Ok(())
}

pub async fn a_diverged_replica_is_kept_out(_env: &Env) -> R {
    let (base, cluster) = own_cluster("pgsplit-diverged").await?;
    let psql = |i: usize, sql: &str| tokio::task::block_in_place(|| cluster.psql(i, sql));
    let mut cfg = config(&cluster, "");
    cfg.failover.mode = FailoverMode::Manual;
    let marker = base.join("rejoin-called");
    cfg.failover.rejoin_command = format!("echo \"$0 $1\" > {}", marker.display());
    let proxy = Proxy::start(cfg).await?;
    // Replica 1 stops receiving; replica 2 goes on and gets ahead of it.
    psql(1, "ALTER SYSTEM SET primary_conninfo = ''")?;
    psql(1, "SELECT pg_reload_conf()")?;
    psql(0, "CREATE TABLE div_rows AS SELECT g FROM generate_series(1, 1000) g")?;
    let lsn = psql(0, "SELECT pg_current_wal_insert_lsn()")?;
    let t0 = Instant::now();
    while psql(2, &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"))? != "t" {
        check!(t0.elapsed() < Duration::from_secs(30), "replica 2 did not catch up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = postmaster_pid(&cluster, 0)?;
    tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The operator promotes the replica that is behind: the other has replayed past the fork.
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    admin.simple_query(&format!("PROMOTE {}", cluster.nodes[1].addr())).await?;
    let t0 = Instant::now();
    while !proxy.shared.cluster.load().nodes[2].diverged {
        check!(
            t0.elapsed() < Duration::from_secs(30),
            "the diverged replica was not detected: {:?}",
            proxy.shared.cluster.load().nodes[2]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "    a replica past the fork point detected as diverged {:.2} s after PROMOTE",
        t0.elapsed().as_secs_f64()
    );
    let t = proxy.shared.cluster.load();
    check!(
        t.primary() == 1 && !t.nodes[2].in_rotation,
        "primary {}, diverged in rotation {}",
        t.primary(),
        t.nodes[2].in_rotation
    );
    drop(t);
    let c = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port())).await?;
    for _ in 0..10 {
        let p: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        check!(p != cluster.nodes[2].port as i32, "a read went to the diverged replica");
    }
    let t0 = Instant::now();
    while !marker.exists() {
        check!(t0.elapsed() < Duration::from_secs(10), "rejoin_command was not run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // REJOIN is refused until the node streams from the primary; after the operator rebuilt it
    // from the new primary, it is re-admitted and takes reads again.
    let r2 = cluster.nodes[2].addr();
    admin.simple_query(&format!("REJOIN {r2}")).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    check!(proxy.shared.cluster.load().nodes[2].fenced, "a diverged node was re-admitted without streaming");
    tokio::task::block_in_place(|| cluster.reclone(2, 1))?;
    let t0 = Instant::now();
    loop {
        admin.simple_query(&format!("REJOIN {r2}")).await.ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = proxy.shared.cluster.load();
        if !t.nodes[2].fenced && t.nodes[2].in_rotation {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(30), "the rebuilt replica was not re-admitted: {:?}", t.nodes[2]);
    }
    let mut ports = BTreeSet::new();
    for _ in 0..20 {
        ports.insert(c.query_one("SELECT inet_server_port()", &[]).await?.get::<_, i32>(0));
    }
    check!(ports.contains(&(cluster.nodes[2].port as i32)), "the rejoined replica takes no reads: {ports:?}");
    println!(
        "    rebuilt from the new primary and REJOINed: back in rotation after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    proxy.stop();
    drop(cluster);
    Ok(())
}

/// Kill -9 and time to the new primary and to the first write, over several runs (fresh
/// clusters): printed, median and max; only correctness is asserted.
#[cfg_attr(feature = "etcd", allow(dead_code))]
pub async fn failover_times_over_several_runs(_env: &Env) -> R {
    let mut to_primary = Vec::new();
    let mut to_write = Vec::new();
    for run in 0..3 {
        let base = std::env::temp_dir().join(format!("pgsplit-runs-{}-{run}", std::process::id()));
        let cluster = tokio::task::spawn_blocking({
            let base = base.clone();
            move || LocalCluster::start(&base, 2)
        })
        .await??;
        let proxy = Proxy::start(config(&cluster, "")).await?;
        let conn = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port());
        let c = connect(&conn).await?;
        c.batch_execute("CREATE TABLE runs (id serial PRIMARY KEY)").await?;
        tokio::task::block_in_place(|| cluster.wait_caught_up())?;
        let w = connect(&conn).await?;
        let pid = postmaster_pid(&cluster, 0)?;
        tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
        let killed = Instant::now();
        // Wait for the topology to name a new primary.
        while proxy.shared.cluster.load().primary() == 0 {
            check!(killed.elapsed() < Duration::from_secs(60), "run {run}: no new primary");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A client that writes until one goes through on it (each write waits up to failover_wait).
        let mut wrote = None;
        while killed.elapsed() < Duration::from_secs(60) {
            if let Ok(row) = w.query_one("INSERT INTO runs DEFAULT VALUES RETURNING inet_server_port()", &[]).await
                && row.get::<_, i32>(0) != cluster.nodes[0].port as i32
            {
                wrote = Some(killed.elapsed());
                break;
            }
        }
        let primary = proxy.shared.metrics.last_failover_seconds.get();
        let wrote = wrote.ok_or("no write after the failover")?;
        to_primary.push(primary);
        to_write.push(wrote.as_secs_f64());
        proxy.stop();
        drop(cluster);
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[v.len() - 1])
    };
    let ((pm, px), (wm, wx)) = (stats(&mut to_primary), stats(&mut to_write));
    println!(
        "    {} kill -9 runs: first failed check to new primary median {pm:.2} s (max {px:.2}); kill to first write median {wm:.2} s (max {wx:.2})",
        to_write.len()
    );
    Ok(())
}

pub async fn a_replica_promoted_by_someone_else_is_adopted(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-adopt").await?;
    let mut cfg = config(&cluster, "");
    // pgsplit would wait 60 s before promoting by itself: the operator is faster.
    cfg.failover.failover_after_ms = 60_000;
    let proxy = Proxy::start(cfg).await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let pid = postmaster_pid(&cluster, 0)?;
    tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
    tokio::task::block_in_place(|| cluster.psql(2, "SELECT pg_promote()"))?;
    let t0 = Instant::now();
    while proxy.shared.cluster.load().primary() != 2 {
        check!(
            t0.elapsed() < Duration::from_secs(30),
            "the promoted replica was not adopted: {:?}",
            *proxy.shared.failover.lock().unwrap_or_else(|p| p.into_inner())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("    a replica promoted outside pgsplit adopted {:.2} s after pg_promote", t0.elapsed().as_secs_f64());
    let still_replica = tokio::task::block_in_place(|| cluster.psql(1, "SELECT pg_is_in_recovery()"))?;
    check!(still_replica == "t", "a second replica was promoted");
    let c = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.addr.port())).await?;
    c.batch_execute("CREATE TABLE adopted (a int)").await?;
    let p: i32 = c.query_one("INSERT INTO adopted VALUES (1) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(p == cluster.nodes[2].port as i32, "a write after adoption ran on {p}");
    proxy.stop();
    drop(cluster);
    Ok(())
}
