//! Topology changes pgsplit did not make itself, on clusters of their own: a replica whose
//! history diverged from the primary's is kept out; a replica promoted by someone else is adopted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pgsplit::config::FailoverMode;
use pgsplit::proxy::Proxy;

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::{config, own_cluster, postmaster_pid};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 20;

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
register!(a_diverged_replica_is_kept_out);

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
            *proxy.shared.failover.state.lock().unwrap_or_else(|p| p.into_inner())
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
register!(a_replica_promoted_by_someone_else_is_adopted);
