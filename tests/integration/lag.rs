//! Lag-aware routing on the real cluster: a replica whose replay stops leaves rotation within
//! two polls and comes back only after the hold-down; what reads do when every replica is out;
//! weights.

use std::time::{Duration, Instant};

use crate::check;
use crate::common::{Env, R, connect, port_of, sqlstate};
use pgsplit::cluster::OutReason;
use pgsplit::config::{Balance, OnAllLagging};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 9;

fn psql(env: &Env, node: usize, sql: &str) -> Result<String, String> {
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.psql(node, sql))
}

/// Waits (up to `limit`) until node `i` of `proxy` is in rotation (`want`), returns how long.
async fn until_rotation(
    proxy: &pgsplit::proxy::Proxy,
    i: usize,
    want: bool,
    limit: Duration,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if proxy.shared.cluster.load().nodes[i].in_rotation == want {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(format!("node {i} in_rotation never became {want}: {:?}", proxy.shared.cluster.load().nodes[i]))
}

pub async fn a_stalled_replica_leaves_at_once_and_returns_after_the_hold(env: &Env) -> R {
    let interval = 100;
    let hold = 1500;
    let proxy = env
        .proxy_with(|c| {
            c.monitor.interval_ms = interval;
            c.routing.lag_hold_ms = hold;
            c.routing.max_lag_bytes = 64 * 1024;
        })
        .await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    psql(env, 1, "SELECT pg_wal_replay_pause()")?;
    let result = async {
        let left = until_rotation(&proxy, 1, false, Duration::from_secs(10)).await?;
        let out = proxy.shared.cluster.load().nodes[1].out;
        println!("    replay paused: out of rotation after {} ms ({:?})", left.as_millis(), out);
        check!(out == Some(OutReason::ReplayPaused), "reason {out:?}");
        // Two polls, and slack for a loaded machine (the figure is printed above).
        check!(left <= Duration::from_millis(2 * interval + 500), "left after {left:?}, more than two polls");
        // Reads avoid it meanwhile.
        let c = connect(&env.conn_string(proxy.addr.port())).await?;
        for _ in 0..10 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(p == env.replica_ports()[1], "a read went to {p}");
        }
        // Lag in bytes: write while it is paused, then resume replay: the reason moves to
        // lagging (over 64 KiB), and back in only after `hold` of being fit.
        c.batch_execute("CREATE TABLE IF NOT EXISTS lag_fill (x text); INSERT INTO lag_fill SELECT repeat('x', 1000) FROM generate_series(1, 500)").await?;
        psql(env, 1, "SELECT pg_wal_replay_resume()")?;
        let t_resume = Instant::now();
        // Fit again once caught up; the hold starts then.
        let mut fit_at = None;
        while t_resume.elapsed() < Duration::from_secs(15) {
            let t = proxy.shared.cluster.load();
            let n = &t.nodes[1];
            if n.in_rotation {
                break;
            }
            if fit_at.is_none() && n.probe.fit_since.is_some() {
                fit_at = Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let back = until_rotation(&proxy, 1, true, Duration::from_secs(15)).await?;
        let held = fit_at.map(|f| f.elapsed()).unwrap_or_default();
        println!(
            "    replay resumed: back in rotation {} ms after resume, {} ms after it was fit again (hold {hold} ms)",
            (t_resume.elapsed()).as_millis(),
            held.as_millis()
        );
        let _ = back;
        check!(held + Duration::from_millis(interval) >= Duration::from_millis(hold), "came back after {held:?}, before the hold");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    let _ = psql(env, 1, "SELECT pg_wal_replay_resume()");
    result
}
register!(a_stalled_replica_leaves_at_once_and_returns_after_the_hold);

pub async fn when_every_replica_is_out(env: &Env) -> R {
    psql(env, 1, "SELECT pg_wal_replay_pause()")?;
    psql(env, 2, "SELECT pg_wal_replay_pause()")?;
    let result = async {
        for (policy, expect) in
            [(OnAllLagging::Primary, "primary"), (OnAllLagging::LeastLagged, "replica"), (OnAllLagging::Error, "error")]
        {
            let proxy = env.proxy_with(|c| c.routing.on_all_lagging = policy).await?;
            env.wait_rotation(&proxy, &[]).await?;
            let c = connect(&env.conn_string(proxy.addr.port())).await?;
            for _ in 0..3 {
                let got = match port_of(&c, "SELECT inet_server_port()").await {
                    Ok(p) if p == env.primary_port() => "primary".to_string(),
                    Ok(p) if env.replica_ports().contains(&p) => "replica".to_string(),
                    Ok(p) => format!("port {p}"),
                    Err(e) => match e.downcast_ref::<tokio_postgres::Error>() {
                        Some(pe) if sqlstate(pe) == "57P03" => "error".to_string(),
                        _ => format!("{e}"),
                    },
                };
                check!(got == expect, "on_all_lagging = {policy:?}: a read went to {got}");
                // Writes and session commands are never refused.
                let p = port_of(&c, "INSERT INTO t (v) VALUES (1) RETURNING inet_server_port()").await?;
                check!(p == env.primary_port(), "a write went to {p}");
                c.batch_execute("SET work_mem = '8MB'").await?;
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    psql(env, 1, "SELECT pg_wal_replay_resume()")?;
    psql(env, 2, "SELECT pg_wal_replay_resume()")?;
    result
}
register!(when_every_replica_is_out);

pub async fn weights_share_the_reads(env: &Env) -> R {
    let (r1, r2) = (env.cluster.nodes[1].addr(), env.cluster.nodes[2].addr());
    let proxy = env
        .proxy_with(|c| {
            c.routing.balance = Balance::RoundRobin;
            c.servers.replicas = vec![
                pgsplit::config::ReplicaEntry::Addr(r1.clone()),
                pgsplit::config::ReplicaEntry::Settings(pgsplit::config::ReplicaSettings {
                    addr: r2.clone(),
                    weight: 3,
                    max_lag_bytes: None,
                    max_lag_ms: None,
                    priority: 0,
                    promotable: true,
                }),
            ];
        })
        .await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    let mut second = 0;
    for _ in 0..400 {
        if port_of(&c, "SELECT inet_server_port()").await? == env.replica_ports()[1] {
            second += 1;
        }
    }
    println!("    weights 1 and 3, round robin: {second} of 400 reads on the weight-3 replica");
    check!((280..=320).contains(&second), "the weight-3 replica took {second} of 400 reads");
    Ok(())
}
register!(weights_share_the_reads);

/// Replicas that replay 300 ms late (`recovery_min_apply_delay`) are 300 ms behind, however
/// long the primary was idle before a write: with `max_lag_ms = 1000` they stay in rotation
/// through an idle spell and the write after it (the age of the last replayed commit would
/// have called them seconds behind); with `max_lag_ms = 100` a trickle of writes takes them
/// out as lagging.
pub async fn lag_in_time_after_idleness(env: &Env) -> R {
    for node in [1, 2] {
        psql(env, node, "ALTER SYSTEM SET recovery_min_apply_delay = '300ms'")?;
        psql(env, node, "SELECT pg_reload_conf()")?;
    }
    // A proxy that judges lag in time only.
    let limited = |ms: u64| {
        env.proxy_with(move |c| {
            c.routing.max_lag_bytes = u64::MAX;
            c.routing.max_lag_ms = ms;
        })
    };
    let result = async {
        let proxy = limited(1000).await?;
        env.wait_rotation(&proxy, &env.replica_ports()).await?;
        // Idle for well over max_lag_ms, then one write.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        psql(env, 0, "INSERT INTO t (v) VALUES (300)")?;
        let (t0, mut worst) = (Instant::now(), 0);
        while t0.elapsed() < Duration::from_millis(2000) {
            let t = proxy.shared.cluster.load();
            for n in &t.nodes[1..] {
                worst = worst.max(n.probe.lag_ms.unwrap_or(0));
                check!(n.in_rotation, "a replica 300 ms behind left rotation after an idle spell: {n:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!("    idle 2.5 s, then one INSERT, replicas 300 ms late: largest lag_ms seen {worst}");
        check!((50..1000).contains(&worst), "lag_ms peaked at {worst}, the replicas replay 300 ms late");
        proxy.stop();

        let strict = limited(100).await?;
        env.wait_rotation(&strict, &env.replica_ports()).await?;
        let t0 = Instant::now();
        let mut left = [None, None];
        for i in 0..40 {
            psql(env, 0, &format!("INSERT INTO t (v) VALUES ({i})"))?;
            let t = strict.shared.cluster.load();
            for (k, n) in t.nodes[1..].iter().enumerate() {
                if !n.in_rotation && left[k].is_none() {
                    left[k] = Some((t0.elapsed(), n.out, n.probe.lag_ms));
                }
            }
            if left.iter().all(Option::is_some) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("    max_lag_ms = 100, writes every 50 ms: replicas left rotation {left:?}");
        for (k, l) in left.iter().enumerate() {
            let Some((_, out, _)) = l else { return Err(format!("replica {k} never left rotation").into()) };
            check!(*out == Some(OutReason::Lagging), "replica {k} left as {out:?}");
        }
        strict.stop();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    for node in [1, 2] {
        psql(env, node, "ALTER SYSTEM RESET recovery_min_apply_delay")?;
        psql(env, node, "SELECT pg_reload_conf()")?;
    }
    env.caught_up().await?;
    result
}
register!(lag_in_time_after_idleness);
