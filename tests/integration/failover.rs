//! Failover on a cluster of its own (the shared one is never failed over): kill -9 the primary
//! under load through pgsplit; pgsplit promotes the most advanced replica, re-points the
//! other, fences the old primary (which stays fenced when it comes back writable), and a
//! restarted pgsplit keeps the new topology. Prints what it measured; asserts correctness.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgsplit::config::FailoverMode;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::{E, client_statements, config, own_cluster, postmaster_pid, silent_relay};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 18;

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
            *proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner())
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
    let loss = proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner()).last_loss_bytes;
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
register!(kill_the_primary_under_load);

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
    let phase = proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner()).phase.clone();
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
register!(cut_off_from_a_live_primary_no_promotion);

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
    let phase = proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner()).phase.clone();
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
register!(manual_mode_waits_for_promote);

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
register!(synchronous_replication_loses_no_acknowledged_commit);

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
            *proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner())
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
register!(switchover_loses_nothing);
