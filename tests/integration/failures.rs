//! Failures: full pools, broken or abandoned server connections, lagging and dead replicas.

use std::time::{Duration, Instant};

use crate::check;
use crate::common::{Env, R, connect, port_of, simple_value, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 8;

pub async fn pool_timeout_is_a_clear_error(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.pool.size = 1;
            c.pool.checkout_timeout_ms = 300;
        })
        .await?;
    let url = env.conn_string(proxy.addr.port());
    let a = connect(&url).await?;
    let b = connect(&url).await?;
    a.batch_execute("BEGIN; INSERT INTO t (v) VALUES (8)").await?;
    let t0 = Instant::now();
    let e = b.batch_execute("BEGIN; INSERT INTO t (v) VALUES (9)").await.err();
    let code = e.as_ref().map(sqlstate);
    check!(code.as_deref() == Some("53300"), "second client got {code:?} ({e:?})");
    check!(t0.elapsed() < Duration::from_secs(5), "timeout took {:?}", t0.elapsed());
    a.batch_execute("COMMIT").await?;
    // Once the connection is free, b is served.
    b.batch_execute("BEGIN; INSERT INTO t (v) VALUES (9); COMMIT").await?;
    proxy.stop();
    Ok(())
}
register!(pool_timeout_is_a_clear_error);

async fn primary_sessions(env: &Env, filter: &str) -> Result<i64, String> {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND {filter}"
    );
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.psql(0, &sql)).and_then(|s| s.parse().map_err(|e| format!("{e}")))
}

/// Waits (up to 10 s) until `want` client sessions on the primary match `filter`.
async fn wait_for_sessions(env: &Env, filter: &str, want: i64, what: &str) -> R {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = primary_sessions(env, filter).await?;
        if n == want {
            return Ok(());
        }
        check!(Instant::now() < deadline, "{what}: {n} sessions, want {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn bad_state_connections_are_not_reused(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.pool.size = 2).await?;
    let url = env.conn_string(proxy.addr.port());
    // A client that leaves in the middle of a transaction.
    let a = connect(&url).await?;
    a.batch_execute("BEGIN; INSERT INTO t (v) VALUES (-777)").await?;
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nobody else ever sees that transaction.
    for _ in 0..4 {
        let b = connect(&url).await?;
        let state = simple_value(&b, "BEGIN; SELECT count(*) FROM t WHERE v = -777").await;
        let _ = b.batch_execute("ROLLBACK").await;
        check!(state.as_deref().unwrap_or("0") == "0", "a later client saw the abandoned transaction's row");
    }
    // The abandoned connection is closed (asynchronously): its session ends, never reused.
    wait_for_sessions(env, "state LIKE 'idle in transaction%'", 0, "server sessions left idle in transaction").await?;
    proxy.stop();
    Ok(())
}
register!(bad_state_connections_are_not_reused);

pub async fn client_gone_mid_query_leaves_nothing_running(env: &Env) -> R {
    use tokio::io::AsyncWriteExt;
    let mut s = crate::protocol::raw_login(env).await?;
    let sql = b"/* pgsplit:primary */ SELECT pg_sleep(30), 'abandoned-probe'\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    q.extend_from_slice(sql);
    s.write_all(&q).await?;
    let probe = "query LIKE '%abandoned-probe%' AND state = 'active'";
    wait_for_sessions(env, probe, 1, "the probe query running").await?;
    drop(s);
    wait_for_sessions(env, probe, 0, "the abandoned query still running on the primary").await
}
register!(client_gone_mid_query_leaves_nothing_running);

pub async fn lagging_replica_leaves_rotation(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.routing.max_lag_bytes = 256 * 1024;
            c.routing.max_lag_ms = 60_000;
        })
        .await?;
    let replicas = env.replica_ports();
    env.wait_rotation(&proxy, &replicas).await?;
    // An idle primary must not make the replicas look lagged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.wait_rotation(&proxy, &replicas).await?;
    let paused = replicas[0];
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.psql(1, "SELECT pg_wal_replay_pause()"))?;
    tokio::task::block_in_place(|| {
        cluster.psql(0, "CREATE TABLE lag_probe AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
    })?;
    let result = async {
        env.wait_rotation(&proxy, &replicas[1..]).await?;
        let c = connect(&env.conn_string(proxy.addr.port())).await?;
        for _ in 0..10 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(p != paused, "a read went to the paused replica {paused}");
        }
        // The lag as the monitor's next probe sees it (the last one may predate the write).
        let t0 = std::time::Instant::now();
        let mut lag = 0;
        while lag <= 256 * 1024 && t0.elapsed() < Duration::from_secs(5) {
            lag = proxy.shared.cluster.load().nodes[1].probe.lag_bytes.unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        check!(lag > 256 * 1024, "lag of the paused replica is {lag} bytes");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    tokio::task::block_in_place(|| cluster.psql(1, "SELECT pg_wal_replay_resume()"))?;
    tokio::task::block_in_place(|| cluster.psql(0, "DROP TABLE lag_probe"))?;
    result?;
    env.wait_rotation(&proxy, &replicas).await?;
    proxy.stop();
    Ok(())
}
register!(lagging_replica_leaves_rotation);

pub async fn replica_down_reads_go_elsewhere(env: &Env) -> R {
    let replicas = env.replica_ports();
    let c = env.client().await?;
    // A read that is running on a replica when it dies gets an error, and the session lives.
    let victim = loop {
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        if p == replicas[1] {
            break p;
        }
    };
    let reader = env.client().await?;
    let in_flight = tokio::spawn(async move {
        let mut last = None;
        for _ in 0..20 {
            match reader.simple_query("SELECT pg_sleep(0.2), inet_server_port()").await {
                Ok(_) => {}
                Err(e) => {
                    last = Some(sqlstate(&e));
                    break;
                }
            }
        }
        (reader, last)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.stop_node(2, "immediate"))?;
    let result = async {
        // Every read started after the crash succeeds, on the other replica or the primary.
        for _ in 0..20 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(p != victim, "a read ran on the stopped replica");
        }
        let (reader, err) = in_flight.await?;
        if let Some(code) = err {
            check!(code == "08006" || code == "57P01", "in-flight read failed with {code}");
        }
        check!(simple_value(&reader, "SELECT 1").await? == "1", "session unusable after its replica died");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    tokio::task::block_in_place(|| cluster.start_node(2))?;
    result?;
    env.wait_rotation(&env.proxy, &replicas).await?;
    let mut back = false;
    for _ in 0..10 {
        back |= port_of(&c, "SELECT inet_server_port()").await? == victim;
    }
    check!(back, "the restarted replica takes no reads");
    Ok(())
}
register!(replica_down_reads_go_elsewhere, 14);

pub async fn metrics_endpoint_reports_routing_and_lag(env: &Env) -> R {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = env.proxy_with(|c| c.metrics_listen = "127.0.0.1:0".into()).await?;
    let addr = proxy.metrics_addr.ok_or("no metrics address")?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    for _ in 0..5 {
        c.simple_query("SELECT 1").await?;
    }
    c.batch_execute("INSERT INTO t (v) VALUES (42)").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    check!(body.starts_with("HTTP/1.1 200"), "metrics answer: {}", &body[..body.len().min(200)]);
    // Sums of the series whose name and labels contain all of `parts`.
    let value = |name: &str, parts: &[&str]| -> f64 {
        body.lines()
            .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let routed = |parts: &[&str]| value("pgsplit_routed_total{", parts);
    check!(routed(&["reason=\"read\"", "role=\"replica\""]) >= 5.0, "replica reads not counted:\n{body}");
    check!(routed(&["reason=\"write\"", "role=\"primary\""]) >= 1.0, "write not counted");
    let primary = format!("server=\"{}\"", env.cluster.primary().addr());
    check!(routed(&["reason=\"write\"", &primary]) >= 1.0, "write not counted under its server");
    check!(body.contains("pgsplit_replica_lag_bytes{server="), "no lag gauge");
    check!(body.contains("pgsplit_replica_lag_seconds{server="), "no lag gauge in seconds");
    check!(
        value("pgsplit_server_in_rotation", &[]) >= 3.0,
        "servers in rotation: {}",
        value("pgsplit_server_in_rotation", &[])
    );
    check!(value("pgsplit_query_duration_seconds_count", &["role=\"replica\""]) >= 5.0, "no query durations");
    check!(value("pgsplit_client_connections", &[]) >= 1.0, "client connections not counted");
    proxy.stop();
    Ok(())
}
register!(metrics_endpoint_reports_routing_and_lag);

pub async fn primary_down_reads_go_on_writes_fail_fast(env: &Env) -> R {
    let replicas = env.replica_ports();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.psql(0, "CREATE TABLE IF NOT EXISTS down_probe AS SELECT 1 AS a"))?;
    env.caught_up().await?;
    tokio::task::block_in_place(|| cluster.stop_node(0, "fast"))?;
    let result = async {
        // New clients can still log in (on a replica) and read, tables and views pgsplit has
        // not looked up before included (the catalog is read on a replica meanwhile).
        let c = env.client().await?;
        for _ in 0..10 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(replicas.contains(&p), "read ran on {p}");
            let p = port_of(&c, "SELECT inet_server_port(), count(*) FROM down_probe").await?;
            check!(replicas.contains(&p), "read of a table ran on {p}");
        }
        // A write fails at once with a connection error, and the session lives on.
        let t0 = Instant::now();
        let e = c.batch_execute("INSERT INTO t (v) VALUES (1)").await.err().map(|e| sqlstate(&e));
        check!(e.as_deref() == Some("08006"), "write with the primary down gave {e:?}");
        check!(t0.elapsed() < Duration::from_secs(5), "the failing write took {:?}", t0.elapsed());
        check!(simple_value(&c, "SELECT 1").await? == "1", "session unusable after the failed write");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    tokio::task::block_in_place(|| cluster.start_node(0))?;
    result?;
    // Writes work again once the primary is back.
    let c = env.client().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.batch_execute("INSERT INTO t (v) VALUES (2)").await {
            Ok(()) => break,
            Err(e) => check!(Instant::now() < deadline, "writes did not come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_rotation(&env.proxy, &replicas).await?;
    Ok(())
}
register!(primary_down_reads_go_on_writes_fail_fast, 14);

pub async fn replay_delay_in_time_leaves_rotation_but_idleness_does_not(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.routing.max_lag_bytes = u64::MAX;
            c.routing.max_lag_ms = 1000;
        })
        .await?;
    let replicas = env.replica_ports();
    // Idle for longer than max_lag_ms: the replicas have replayed everything, so no lag.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.wait_rotation(&proxy, &replicas).await?;
    for _ in 0..20 {
        let t = proxy.shared.cluster.load();
        check!(t.nodes[1..].iter().all(|n| n.in_rotation), "an idle replica left rotation: {:?}", t.nodes);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.psql(2, "SELECT pg_wal_replay_pause()"))?;
    let result = async {
        // A trickle of writes the paused replica receives but does not replay.
        for i in 0..30 {
            let c = &env.cluster;
            tokio::task::block_in_place(|| c.psql(0, &format!("INSERT INTO t (v) VALUES ({i})")))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        env.wait_rotation(&proxy, &replicas[..1]).await?;
        let ms = proxy.shared.cluster.load().nodes[2].probe.lag_ms.unwrap_or(0);
        check!(ms > 1000, "the paused replica's lag is {ms} ms");
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    tokio::task::block_in_place(|| cluster.psql(2, "SELECT pg_wal_replay_resume()"))?;
    result?;
    env.wait_rotation(&proxy, &replicas).await?;
    proxy.stop();
    Ok(())
}
register!(replay_delay_in_time_leaves_rotation_but_idleness_does_not);

/// A TCP forwarder to `target` that, while armed, kills the connection carrying `marker` before
/// forwarding it: to pgsplit that server connection looked healthy until its query was sent.
async fn killing_forwarder(
    target: String,
    marker: &'static [u8],
    armed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    kills: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<(u16, tokio::task::JoinHandle<()>), Box<dyn std::error::Error + Send + Sync>> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else { continue };
            let (armed, kills) = (armed.clone(), kills.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let chunk = &buf[..n];
                    if chunk.windows(marker.len()).any(|w| w == marker)
                        && armed.compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst).is_ok()
                    {
                        kills.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if sw.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    Ok((port, task))
}

pub async fn reads_on_a_dying_connection_run_again_elsewhere(env: &Env) -> R {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let armed = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let (fwd, task) =
        killing_forwarder(env.cluster.nodes[1].addr(), b"retry-probe", armed.clone(), kills.clone()).await?;
    let replica2 = env.cluster.nodes[2].addr();
    let proxy =
        env.proxy_with(|c| c.servers.replicas = vec![format!("127.0.0.1:{fwd}").into(), replica2.into()]).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    for extended in [false, true] {
        let before = kills.load(Ordering::SeqCst);
        armed.store(true, Ordering::SeqCst);
        for i in 0..200 {
            // Every read succeeds, including the one whose connection is killed under it.
            let sql = format!("SELECT 'retry-probe', inet_server_port(), {i}");
            if extended {
                c.query_one(sql.as_str(), &[]).await.map_err(|e| format!("extended read {i}: {e:?}"))?;
            } else {
                simple_value(&c, &sql).await.map_err(|e| format!("simple read {i}: {e}"))?;
            }
            if kills.load(Ordering::SeqCst) > before {
                break;
            }
        }
        check!(
            kills.load(Ordering::SeqCst) > before,
            "no read ever reached the forwarded replica (extended: {extended})"
        );
        // The read after the kill works as well.
        check!(simple_value(&c, "SELECT 1").await? == "1", "session unusable after the rerun");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    proxy.stop();
    task.abort();
    Ok(())
}
register!(reads_on_a_dying_connection_run_again_elsewhere);
