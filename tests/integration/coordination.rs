//! Several pgsplit instances coordinated on a real etcd (Debian's etcd-server, started by
//! `pgsplit::localetcd` on loopback), each test with a PostgreSQL cluster of its own. An
//! instance "killed" here is stopped dead in-process: every task aborted, its lease never
//! revoked (etcd lets it expire, as after kill -9).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgsplit::config::Config;
use pgsplit::localcluster::LocalCluster;
use pgsplit::localetcd::LocalEtcd;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::{E, config, own_cluster, postmaster_pid};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 25;

async fn own_etcd(name: &str, members: usize) -> Result<LocalEtcd, E> {
    let base = std::env::temp_dir().join(format!("{name}-etcd-{}", std::process::id()));
    Ok(tokio::task::spawn_blocking(move || LocalEtcd::start(&base, members)).await??)
}

fn coordinated(cluster: &LocalCluster, etcd: &LocalEtcd, cluster_name: &str, i: usize) -> Config {
    let mut c = config(cluster, &cluster.base.join(format!("state-{cluster_name}-{i}")).display().to_string());
    c.coordination.etcd = etcd.endpoints();
    c.coordination.cluster_name = cluster_name.into();
    c.coordination.instance_name = format!("i{i}");
    c.coordination.lease_ttl_ms = 3000;
    c.coordination.etcd_timeout_ms = 1000;
    c.coordination.barrier_timeout_ms = 10_000;
    c
}

fn conn(p: &Proxy) -> String {
    format!("host=127.0.0.1 port={} user=postgres dbname=postgres", p.addr.port())
}

/// Waits until every instance has applied a topology and one of them leads.
async fn settled(proxies: &[&Proxy], limit: Duration) -> Result<usize, E> {
    let t0 = Instant::now();
    loop {
        let open = proxies.iter().all(|p| p.shared.coord_blocked().is_none());
        let leaders: Vec<usize> =
            (0..proxies.len()).filter(|&i| proxies[i].shared.coord.as_ref().is_some_and(|c| c.is_leader())).collect();
        if open && leaders.len() == 1 {
            return Ok(leaders[0]);
        }
        check!(
            t0.elapsed() < limit,
            "instances not settled: leaders {leaders:?}, gates {:?}",
            proxies.iter().map(|p| p.shared.coord_blocked()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every instance routes writes to node `want`.
async fn all_on(proxies: &[&Proxy], want: usize, limit: Duration) -> Result<(), E> {
    let t0 = Instant::now();
    while !proxies.iter().all(|p| p.shared.cluster.load().primary() == want && p.shared.coord_blocked().is_none()) {
        check!(
            t0.elapsed() < limit,
            "not every instance routes to node {want}: {:?}",
            proxies.iter().map(|p| (p.shared.cluster.load().primary(), p.shared.coord_blocked())).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn out_of_recovery(cluster: &LocalCluster, nodes: &[usize]) -> Vec<usize> {
    nodes
        .iter()
        .copied()
        .filter(|&i| {
            tokio::task::block_in_place(|| cluster.psql(i, "SELECT pg_is_in_recovery()")).as_deref() == Ok("f")
        })
        .collect()
}

/// Acknowledged ids with their times, and the failed ones.
type Written = (Vec<(i32, Instant)>, Vec<i32>);

/// One writer per instance: autocommit inserts, acknowledged ids and times recorded.
fn writer(conn: String, tag: i32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Result<Written, E>> {
    tokio::spawn(async move {
        let c = connect(&conn).await?;
        let (mut acked, mut failed, mut id) = (Vec::new(), Vec::new(), tag * 1_000_000);
        while !stop.load(Ordering::Relaxed) {
            id += 1;
            match c.execute("INSERT INTO co_writes (id) VALUES ($1)", &[&id]).await {
                Ok(_) => acked.push((id, Instant::now())),
                Err(_) => failed.push(id),
            }
        }
        Ok((acked, failed))
    })
}

pub async fn three_instances_fail_over_once(_env: &Env) -> R {
    let (base, cluster) = own_cluster("pgsplit-co-kill").await?;
    let etcd = own_etcd("pgsplit-co-kill", 1).await?;
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(Proxy::start(coordinated(&cluster, &etcd, "kill", i)).await?);
    }
    let refs: Vec<&Proxy> = proxies.iter().collect();
    let leader = settled(&refs, Duration::from_secs(20)).await?;
    let setup = connect(&conn(&proxies[0])).await?;
    setup.batch_execute("CREATE TABLE co_writes (id int PRIMARY KEY)").await?;
    crate::common::pgbench_init(cluster.nodes[0].port).await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> =
        proxies.iter().enumerate().map(|(i, p)| writer(conn(p), i as i32 + 1, stop.clone())).collect();
    // pgbench read-write through every instance at once.
    let benches: Vec<_> = proxies
        .iter()
        .map(|p| {
            tokio::spawn(
                crate::common::pgbench(
                    p.addr.port(),
                    &["-n", "-N", "-c", "2", "-j", "1", "-T", "10", "--max-tries=50"],
                )
                .output(),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = postmaster_pid(&cluster, 0)?;
    let killed = Instant::now();
    check!(tokio::process::Command::new("kill").args(["-9", &pid]).status().await?.success(), "kill -9 {pid}");
    // Every instance moves to the same new primary.
    let t0 = Instant::now();
    let new_primary = loop {
        let p = proxies[0].shared.cluster.load().primary();
        if p != 0 {
            break p;
        }
        check!(t0.elapsed() < Duration::from_secs(60), "no failover after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    all_on(&refs, new_primary, Duration::from_secs(20)).await?;
    let everyone = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut firsts = Vec::new();
    let mut acked_all = Vec::new();
    for w in writers {
        let (acked, failed) = w.await??;
        // The first write acknowledged by the new primary: after the first that failed at the
        // kill, or (none failed: it waited through the failover) the first acknowledged after
        // every instance had the new primary.
        let first = match failed.first() {
            Some(f) => acked.iter().find(|(id, _)| id > f),
            None => acked.iter().find(|(_, t)| *t >= killed + everyone),
        }
        .map(|(_, t)| t.duration_since(killed).as_secs_f64());
        firsts.push((first, failed.len()));
        acked_all.extend(acked.into_iter().map(|(id, _)| id));
    }
    let promoted = out_of_recovery(&cluster, &[1, 2]);
    let new_port = cluster.nodes[new_primary].port;
    let direct = connect(&format!("host=127.0.0.1 port={new_port} user=postgres dbname=postgres")).await?;
    let present: BTreeSet<i32> =
        direct.query("SELECT id FROM co_writes", &[]).await?.iter().map(|r| r.get(0)).collect();
    let lost = acked_all.iter().filter(|id| !present.contains(id)).count();
    println!(
        "    3 instances (leader i{leader}), kill -9 of the primary: every instance on node {new_primary} after {:.2} s",
        everyone.as_secs_f64()
    );
    for (i, (first, failed)) in firsts.iter().enumerate() {
        println!(
            "    instance i{i}: first acknowledged write {:.2} s after the kill, {failed} writes failed",
            first.unwrap_or(f64::NAN)
        );
    }
    let mut times: Vec<f64> = firsts.iter().filter_map(|(f, _)| *f).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "    median time to first write over the instances: {:.2} s; {} acknowledged writes, {lost} lost (async replication)",
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN),
        acked_all.len()
    );
    for (i, b) in benches.into_iter().enumerate() {
        let out = b.await??;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = |p: &str| text.lines().find(|l| l.trim_start().starts_with(p)).unwrap_or("").trim().to_string();
        println!("    pgbench -N through i{i}: {}; {}", line("number of transactions actually processed"), line("tps"));
    }
    check!(promoted == vec![new_primary], "promotions: {promoted:?} (exactly one wanted)");
    check!(firsts.iter().all(|(f, _)| f.is_some()), "an instance never wrote after the failover: {firsts:?}");
    let epochs: BTreeSet<u64> = proxies.iter().filter_map(|p| p.shared.coord.as_ref().map(|c| c.epoch())).collect();
    check!(epochs.len() == 1, "instances on different epochs: {epochs:?}");
    let timeline = tokio::task::block_in_place(|| {
        cluster.psql(new_primary, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)::int")
    })?;
    check!(timeline == "2", "the new primary is on timeline {timeline}: promoted more than once?");
    let failovers: Vec<u64> = proxies.iter().map(|p| p.shared.metrics.failovers.get()).collect();
    check!(failovers.iter().all(|&n| n == 1), "failovers counted per instance: {failovers:?}");

    // The old primary comes back writable: no instance sends it a client statement.
    {
        use std::io::Write;
        let conf = cluster.nodes[0].dir.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new().append(true).open(&conf)?;
        writeln!(f, "log_statement = 'all'\nlog_line_prefix = '%m [%p] %a '")?;
    }
    tokio::task::block_in_place(|| cluster.start_node(0))?;
    for (i, p) in proxies.iter().enumerate() {
        let c = connect(&conn(p)).await?;
        for k in 0..10 {
            let id = -100 * (i as i32 + 1) - k;
            let row =
                c.query_one("INSERT INTO co_writes (id) VALUES ($1) RETURNING inet_server_port()", &[&id]).await?;
            let port: i32 = row.get(0);
            check!(port == new_port as i32, "i{i}: a write after the old primary came back ran on {port}");
        }
    }
    // A new instance with the stale configuration learns the primary from etcd.
    let late = Proxy::start(coordinated(&cluster, &etcd, "kill", 9)).await?;
    all_on(&[&late], new_primary, Duration::from_secs(10)).await?;
    let c = connect(&conn(&late)).await?;
    let port: i32 =
        c.query_one("INSERT INTO co_writes (id) VALUES (-999) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(port == new_port as i32, "the late instance wrote on {port}");
    check!(late.shared.cluster.load().nodes[0].fenced, "the late instance does not see the old primary fenced");
    println!("    an instance started after the failover (config naming the old primary) writes on node {new_primary}");
    let log = std::fs::read_to_string(cluster.base.join("primary.log")).unwrap_or_default();
    let leaked = crate::own_cluster::client_statements(&log);
    println!("    the old primary's statement log after its restart: {} client statements", leaked.len());
    check!(leaked.is_empty(), "client statements reached the fenced old primary: {:?}", &leaked[..leaked.len().min(5)]);
    late.stop();
    for p in &proxies {
        p.stop();
    }
    drop((cluster, etcd, base));
    Ok(())
}
register!(three_instances_fail_over_once);

pub async fn one_instance_cut_off_no_promotion(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-co-cut").await?;
    let etcd = own_etcd("pgsplit-co-cut", 1).await?;
    let cut = Arc::new(AtomicBool::new(false));
    let relay = crate::own_cluster::silent_relay(cluster.primary().addr(), cut.clone()).await?;
    // Instance i0 reaches the primary through a relay that will go silent; it starts first,
    // so it leads: the instance that would decide is the one cut off.
    let mut c0 = coordinated(&cluster, &etcd, "cut", 0);
    let relayed = format!("127.0.0.1:{relay}");
    c0.coordination.aliases.insert(relayed.clone(), cluster.primary().addr());
    c0.servers.primary = relayed;
    c0.failover.check_timeout_ms = 500;
    let p0 = Proxy::start(c0).await?;
    settled(&[&p0], Duration::from_secs(20)).await?;
    let p1 = Proxy::start(coordinated(&cluster, &etcd, "cut", 1)).await?;
    let p2 = Proxy::start(coordinated(&cluster, &etcd, "cut", 2)).await?;
    let leader = settled(&[&p0, &p1, &p2], Duration::from_secs(20)).await?;
    check!(leader == 0, "i{leader} leads, not the instance to be cut off");
    let c1 = connect(&conn(&p1)).await?;
    c1.batch_execute("CREATE TABLE co_cut (id int)").await?;
    cut.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    // Past failover_after (3 s) with margin, the leader cut off: no promotion.
    let mut phase = None;
    while t0.elapsed() < Duration::from_secs(7) {
        c1.execute("INSERT INTO co_cut VALUES (1)", &[]).await?;
        phase = Some(p0.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner()).phase.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted = out_of_recovery(&cluster, &[1, 2]);
    println!("    the leader cut off from the primary for {:.1} s: phase {phase:?}", t0.elapsed().as_secs_f64());
    check!(promoted.is_empty(), "a replica was promoted: {promoted:?}");
    check!(
        matches!(&phase, Some(pgsplit::failover::decide::Phase::Vetoed(w)) if w.contains("1 of 3")),
        "the leader's phase: {phase:?}"
    );
    let c2 = connect(&conn(&p2)).await?;
    let port: i32 = c2.query_one("INSERT INTO co_cut VALUES (2) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(port == cluster.primary().port as i32, "a write through i2 ran on {port}");
    let epochs: Vec<u64> = [&p0, &p1, &p2].iter().filter_map(|p| p.shared.coord.as_ref().map(|c| c.epoch())).collect();
    check!(epochs.iter().all(|&e| e == epochs[0]), "the epoch moved: {epochs:?}");
    for p in [&p0, &p1, &p2] {
        p.stop();
    }
    Ok(())
}
register!(one_instance_cut_off_no_promotion);

pub async fn leader_killed_mid_failover(_env: &Env) -> R {
    let (base, cluster) = own_cluster("pgsplit-co-leader").await?;
    let etcd = own_etcd("pgsplit-co-leader", 1).await?;
    // fence_command runs after every instance has stopped writing and before the promotion:
    // the leader is stopped dead while it runs.
    let marker = base.join("fence-runs");
    // (Hooks get their arguments appended: `sh script ADDRESS`.)
    let script = base.join("fence.sh");
    std::fs::write(&script, format!("echo \"$1 $2\" >> {}\nsleep 2\n", marker.display()))?;
    let mut proxies = Vec::new();
    for i in 0..3 {
        let mut c = coordinated(&cluster, &etcd, "leader", i);
        c.failover.fence_command = format!("sh {} i{i}", script.display());
        proxies.push(Proxy::start(c).await?);
    }
    let refs: Vec<&Proxy> = proxies.iter().collect();
    let leader = settled(&refs, Duration::from_secs(20)).await?;
    let setup = connect(&conn(&proxies[0])).await?;
    setup.batch_execute("CREATE TABLE co_writes (id int PRIMARY KEY)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let pid = postmaster_pid(&cluster, 0)?;
    let killed = Instant::now();
    check!(tokio::process::Command::new("kill").args(["-9", &pid]).status().await?.success(), "kill -9 {pid}");
    while std::fs::read_to_string(&marker).unwrap_or_default().is_empty() {
        check!(killed.elapsed() < Duration::from_secs(30), "the leader never reached fence_command");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let candidate = proxies[leader]
        .shared
        .coord
        .as_ref()
        .and_then(|c| c.remote())
        .and_then(|(t, _)| t.barrier)
        .map(|b| b.candidate)
        .ok_or("no barrier in etcd while fence_command runs")?;
    proxies[leader].stop();
    let stopped = Instant::now();
    let rest: Vec<&Proxy> = (0..3).filter(|&i| i != leader).map(|i| &proxies[i]).collect();
    let t0 = Instant::now();
    let new_primary = loop {
        let p = rest[0].shared.cluster.load().primary();
        if p != 0 {
            break p;
        }
        check!(t0.elapsed() < Duration::from_secs(60), "the failover was not finished by another instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    all_on(&rest, new_primary, Duration::from_secs(20)).await?;
    let new_leader = (0..3).find(|&i| i != leader && proxies[i].shared.coord.as_ref().is_some_and(|c| c.is_leader()));
    let promoted = out_of_recovery(&cluster, &[1, 2]);
    let runs = std::fs::read_to_string(&marker).unwrap_or_default();
    println!(
        "    leader i{leader} stopped dead in fence_command; i{} finished the failover {:.2} s later ({:.2} s after the kill)",
        new_leader.map(|i| i.to_string()).unwrap_or("?".into()),
        stopped.elapsed().as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    println!("    fence_command runs: {:?}", runs.lines().collect::<Vec<_>>());
    check!(promoted == vec![new_primary], "promotions: {promoted:?} (exactly one wanted)");
    check!(
        cluster.nodes[new_primary].addr() == candidate,
        "promoted node {new_primary}, the barrier named {candidate}"
    );
    let timeline = tokio::task::block_in_place(|| {
        cluster.psql(new_primary, "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)::int")
    })?;
    check!(timeline == "2", "timeline {timeline}: promoted more than once?");
    let c = connect(&conn(rest[0])).await?;
    let port: i32 = c.query_one("INSERT INTO co_writes VALUES (1) RETURNING inet_server_port()", &[]).await?.get(0);
    check!(port == cluster.nodes[new_primary].port as i32, "a write ran on {port}");
    for p in &proxies {
        p.stop();
    }
    drop(etcd);
    Ok(())
}
register!(leader_killed_mid_failover);

pub async fn etcd_quorum_lost_writes_fail_closed(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-co-quorum").await?;
    let etcd = own_etcd("pgsplit-co-quorum", 3).await?;
    let mut proxies = Vec::new();
    for i in 0..3 {
        let mut c = coordinated(&cluster, &etcd, "quorum", i);
        c.failover.failover_wait_ms = 1000;
        proxies.push(Proxy::start(c).await?);
    }
    let refs: Vec<&Proxy> = proxies.iter().collect();
    settled(&refs, Duration::from_secs(20)).await?;
    let clients = {
        let mut v = Vec::new();
        for p in &proxies {
            v.push(connect(&conn(p)).await?);
        }
        v
    };
    clients[0].batch_execute("CREATE TABLE co_q (id int)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    for c in &clients {
        c.execute("INSERT INTO co_q VALUES (1)", &[]).await?;
    }
    // A transaction open on the primary when etcd goes: it must not commit there.
    let in_tx = connect(&conn(&proxies[1])).await?;
    in_tx.batch_execute("BEGIN; INSERT INTO co_q VALUES (4)").await?;
    etcd.kill_member(1);
    etcd.kill_member(2);
    let lost = Instant::now();
    // Each instance closes its write gate within half the lease TTL.
    while !proxies.iter().all(|p| p.shared.coord_blocked().is_some()) {
        check!(lost.elapsed() < Duration::from_secs(10), "writes still open 10 s after etcd lost its quorum");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = lost.elapsed();
    let primary_port = cluster.primary().port as i32;
    for (i, c) in clients.iter().enumerate() {
        let e = c.execute("INSERT INTO co_q VALUES (2)", &[]).await.err().ok_or(format!("i{i} wrote without etcd"))?;
        check!(crate::common::sqlstate(&e) == "57P03", "i{i}: {e:?}");
        for _ in 0..5 {
            let port: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
            check!(port != primary_port, "i{i}: a read went to the primary");
        }
    }
    let admin =
        connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxies[0].addr.port())).await?;
    let shown = admin.simple_query("SHOW SERVERS").await?.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get("out_reason").is_some_and(|w| w.contains("etcd lost")),
        _ => false,
    });
    check!(shown, "SHOW SERVERS does not say writes are suspended");
    let body = proxies[0].shared.metrics.render();
    check!(body.contains("pgsplit_writes_suspended 1"), "pgsplit_writes_suspended is not 1");
    let e = in_tx.batch_execute("COMMIT").await.err().ok_or("a transaction committed on the primary without etcd")?;
    check!(crate::common::sqlstate(&e) == "40001", "COMMIT without etcd: {e:?}");
    let on_primary = tokio::task::block_in_place(|| cluster.psql(0, "SELECT count(*) FROM co_q WHERE id IN (2, 4)"))?;
    check!(on_primary == "0", "{on_primary} writes reached the primary without etcd");
    println!("    etcd quorum lost: writes closed on all 3 instances after {:.2} s, reads go on", closed.as_secs_f64());
    let restarted = Instant::now();
    tokio::task::block_in_place(|| {
        etcd.start_member(1)?;
        etcd.start_member(2)?;
        etcd.wait_healthy(Duration::from_secs(30))
    })?;
    let back = Instant::now();
    println!("    etcd restarted and healthy after {:.2} s", restarted.elapsed().as_secs_f64());
    for (i, c) in clients.iter().enumerate() {
        loop {
            match c.execute("INSERT INTO co_q VALUES (3)", &[]).await {
                Ok(_) => break,
                Err(e) => {
                    check!(back.elapsed() < Duration::from_secs(30), "i{i}: writes did not resume: {e:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    println!(
        "    etcd back: writes resumed on all 3 instances {:.2} s after the quorum returned",
        back.elapsed().as_secs_f64()
    );
    let promoted = out_of_recovery(&cluster, &[1, 2]);
    check!(promoted.is_empty(), "a replica was promoted: {promoted:?}");
    for p in &proxies {
        p.stop();
    }
    Ok(())
}
register!(etcd_quorum_lost_writes_fail_closed);

/// kill -9 of the primary, one instance alone and three on etcd, interleaved run by run:
/// the median time from the kill to the first write through pgsplit, and the ratio.
pub async fn failover_times_alone_and_three_instances(_env: &Env) -> R {
    let etcd = own_etcd("pgsplit-co-runs", 1).await?;
    let (mut alone, mut three) = (Vec::new(), Vec::new());
    for run in 0..3 {
        for instances in [1, 3] {
            let base = std::env::temp_dir().join(format!("pgsplit-co-runs-{}-{run}-{instances}", std::process::id()));
            let cluster = tokio::task::spawn_blocking(move || LocalCluster::start(&base, 2)).await??;
            let mut proxies = Vec::new();
            for i in 0..instances {
                let cfg = if instances == 1 {
                    config(&cluster, "")
                } else {
                    coordinated(&cluster, &etcd, &format!("runs{run}"), i)
                };
                proxies.push(Proxy::start(cfg).await?);
            }
            if instances > 1 {
                settled(&proxies.iter().collect::<Vec<_>>(), Duration::from_secs(20)).await?;
            }
            // Writes through the last instance (a follower when three run).
            let c = connect(&conn(&proxies[instances - 1])).await?;
            c.batch_execute("CREATE TABLE runs (id serial PRIMARY KEY)").await?;
            tokio::task::block_in_place(|| cluster.wait_caught_up())?;
            let pid = postmaster_pid(&cluster, 0)?;
            tokio::process::Command::new("kill").args(["-9", &pid]).status().await?;
            let killed = Instant::now();
            let old_port = cluster.nodes[0].port as i32;
            let mut wrote = None;
            while killed.elapsed() < Duration::from_secs(60) {
                if let Ok(row) = c.query_one("INSERT INTO runs DEFAULT VALUES RETURNING inet_server_port()", &[]).await
                    && row.get::<_, i32>(0) != old_port
                {
                    wrote = Some(killed.elapsed().as_secs_f64());
                    break;
                }
            }
            let wrote = wrote.ok_or(format!("run {run}, {instances} instances: no write after the failover"))?;
            if instances == 1 { &mut alone } else { &mut three }.push(wrote);
            for p in &proxies {
                p.stop();
            }
            drop(cluster);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, t) = (median(&mut alone), median(&mut three));
    println!(
        "    kill -9 to first write, median of {} runs: one instance {a:.2} s {alone:?}, three on etcd {t:.2} s {three:?}: {:.2}x",
        alone.len(),
        t / a
    );
    Ok(())
}
register!(failover_times_alone_and_three_instances, 27);

/// Console commands given to a follower reach the leader through etcd and act on every
/// instance: PAUSE / RESUME of a replica, then a planned SWITCHOVER.
pub async fn console_commands_act_on_every_instance(_env: &Env) -> R {
    let (_base, cluster) = own_cluster("pgsplit-co-console").await?;
    let etcd = own_etcd("pgsplit-co-console", 1).await?;
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(Proxy::start(coordinated(&cluster, &etcd, "console", i)).await?);
    }
    let refs: Vec<&Proxy> = proxies.iter().collect();
    let leader = settled(&refs, Duration::from_secs(20)).await?;
    let follower = (leader + 1) % 3;
    let admin =
        connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxies[follower].addr.port())).await?;
    let target = cluster.nodes[2].addr();
    admin.simple_query(&format!("PAUSE {target}")).await?;
    let t0 = Instant::now();
    while !proxies.iter().all(|p| p.shared.cluster.load().nodes[2].paused) {
        check!(t0.elapsed() < Duration::from_secs(10), "PAUSE did not reach every instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admin.simple_query(&format!("RESUME {target}")).await?;
    while proxies.iter().any(|p| p.shared.cluster.load().nodes[2].paused) {
        check!(t0.elapsed() < Duration::from_secs(10), "RESUME did not reach every instance");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = connect(&conn(&proxies[leader])).await?;
    c.batch_execute("CREATE TABLE co_sw (id int)").await?;
    tokio::task::block_in_place(|| cluster.wait_caught_up())?;
    let t0 = Instant::now();
    admin.simple_query(&format!("SWITCHOVER TO {target}")).await?;
    all_on(&refs, 2, Duration::from_secs(30)).await?;
    println!(
        "    SWITCHOVER given to follower i{follower}, carried out by leader i{leader}: every instance on the target after {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    for (i, p) in proxies.iter().enumerate() {
        let c = connect(&conn(p)).await?;
        let port: i32 = c.query_one("INSERT INTO co_sw VALUES (1) RETURNING inet_server_port()", &[]).await?.get(0);
        check!(port == cluster.nodes[2].port as i32, "i{i}: a write after the switchover ran on {port}");
    }
    let promoted = out_of_recovery(&cluster, &[0, 1, 2]);
    check!(promoted == vec![0, 2] || promoted == vec![2], "out of recovery: {promoted:?}");
    let ro = tokio::task::block_in_place(|| cluster.psql(0, "SHOW default_transaction_read_only"))?;
    check!(ro == "on", "the old primary is not read-only ({ro})");
    for p in &proxies {
        p.stop();
    }
    drop(etcd);
    Ok(())
}
register!(console_commands_act_on_every_instance);
