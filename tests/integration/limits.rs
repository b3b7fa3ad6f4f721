//! Limits that protect everyone from one client: login timeout (silent sockets shed), a cap on
//! client connections, a bound on message size, idle timeouts in and out of transactions.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::check;
use crate::common::{Env, R, connect, simple_value, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 11;

/// Whether the peer closes `s` within `limit`.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

pub async fn silent_sockets_are_shed(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.limits.client_login_timeout_ms = 300).await?;
    let mut sockets = Vec::new();
    for _ in 0..200 {
        sockets.push(tokio::net::TcpStream::connect(proxy.addr).await?);
    }
    // Clients go on meanwhile.
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.simple_query("SELECT 1").await?;
    let t0 = Instant::now();
    for s in &mut sockets {
        check!(closed_within(s, Duration::from_secs(5)).await, "a silent socket was kept open");
    }
    println!(
        "    200 silent sockets closed {:.2} s after they connected (login timeout 0.3 s)",
        t0.elapsed().as_secs_f64()
    );
    check!(
        proxy.shared.metrics.login_timeouts.get() >= 200,
        "login timeouts counted: {}",
        proxy.shared.metrics.login_timeouts.get()
    );
    c.simple_query("SELECT 1").await?;
    proxy.stop();
    Ok(())
}
register!(silent_sockets_are_shed);

pub async fn too_many_clients_get_53300(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.limits.max_client_conn = 3).await?;
    let conn = env.conn_string(proxy.addr.port());
    let (a, b, c) = (connect(&conn).await?, connect(&conn).await?, connect(&conn).await?);
    let refused = connect(&conn).await.err().ok_or("a fourth client got in")?;
    check!(sqlstate(&refused) == "53300", "fourth client: {refused:?}");
    for x in [&a, &b, &c] {
        x.simple_query("SELECT 1").await?;
    }
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = connect(&conn).await?;
    d.simple_query("SELECT 1").await?;
    proxy.stop();
    Ok(())
}
register!(too_many_clients_get_53300);

pub async fn oversized_messages_are_refused_unread(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.limits.max_message_size = 64 * 1024).await?;
    let ok = connect(&env.conn_string(proxy.addr.port())).await?;
    let mut s = crate::differential::login(proxy.addr.port()).await?;
    // A Query claiming 100 MB: refused from its header, nothing more sent.
    s.write_all(&[b'Q', 0x06, 0x40, 0x00, 0x00]).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    check!(answer.first() == Some(&b'E') && text.contains("08P01"), "answer to an oversized message: {text:?}");
    // Up to the limit works.
    let big = "x".repeat(60 * 1024);
    ok.simple_query(&format!("SELECT length('{big}')")).await?;
    proxy.stop();
    Ok(())
}
register!(oversized_messages_are_refused_unread);

pub async fn idle_clients_and_idle_transactions_are_closed(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.limits.idle_transaction_timeout_ms = 300;
            c.limits.idle_client_timeout_ms = 1500;
        })
        .await?;
    let conn = env.conn_string(proxy.addr.port());
    let setup = connect(&conn).await?;
    setup.batch_execute("CREATE TABLE IF NOT EXISTS idle_probe (id int PRIMARY KEY, v int); INSERT INTO idle_probe VALUES (1, 0) ON CONFLICT DO NOTHING").await?;
    // Idle in a transaction holding a row lock: closed, the transaction rolled back, the lock freed.
    let holder = connect(&conn).await?;
    holder.batch_execute("BEGIN; UPDATE idle_probe SET v = v + 1 WHERE id = 1").await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    check!(holder.simple_query("SELECT 1").await.is_err(), "an idle transaction survived its timeout");
    let t0 = Instant::now();
    let other = connect(&conn).await?;
    other.batch_execute("SET lock_timeout = '5s'; UPDATE idle_probe SET v = 10 WHERE id = 1").await?;
    println!("    the lock of a transaction idle past its limit was free {:.2} s later", t0.elapsed().as_secs_f64());
    // Outside a transaction, a longer limit: busy clients are not affected, idle ones closed.
    for _ in 0..5 {
        other.simple_query("SELECT 1").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let e = other.simple_query("SELECT 1").await.err().ok_or("an idle client survived its timeout")?;
    check!(other.is_closed() || sqlstate(&e) == "57P05", "idle client: {e:?}");
    proxy.stop();
    Ok(())
}
register!(idle_clients_and_idle_transactions_are_closed);

/// No password, verifier or SCRAM message in the logs, at trace level.
pub async fn no_secret_in_the_logs(env: &Env) -> R {
    use pgsplit::localcluster::{SCRAM_USER, free_port};
    let dir = std::env::temp_dir().join(format!("pgsplit-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let listen = free_port()?;
    let replicas: Vec<String> = env.cluster.replica_addrs().iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        "listen = \"127.0.0.1:{listen}\"\nauth = \"scram-sha-256\"\n[servers]\nprimary = \"{}\"\nreplicas = [{}]\n\
         [[users]]\nname = \"app\"\npassword = \"s3cret-client-pw\"\nserver_user = \"{}\"\nserver_password = \"{}\"\n\
         [auth_query]\nenabled = true\n",
        env.cluster.primary().addr(),
        replicas.join(", "),
        SCRAM_USER.0,
        SCRAM_USER.1
    );
    let file = dir.join("pgsplit.toml");
    std::fs::write(&file, config)?;
    let log = std::fs::File::create(dir.join("log"))?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["--config", file.to_str().unwrap_or_default()])
        .env("RUST_LOG", "trace")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let result = async {
        let conn = format!("host=127.0.0.1 port={listen} user=app password=s3cret-client-pw dbname=postgres");
        let t0 = Instant::now();
        let c = loop {
            match connect(&conn).await {
                Ok(c) => break c,
                Err(e) => check!(t0.elapsed() < Duration::from_secs(20), "pgsplit did not start: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        c.simple_query("SELECT 1").await?;
        c.batch_execute("INSERT INTO t (v) VALUES (1)").await?;
        // A user found by auth_query (its verifier fetched), logged into the servers by
        // SCRAM pass-through.
        let (u, p) = SCRAM_USER;
        let c = connect(&format!("host=127.0.0.1 port={listen} user={u} password={p} dbname=postgres")).await?;
        c.batch_execute("BEGIN; SELECT 1; COMMIT").await?;
        let bad =
            connect(&format!("host=127.0.0.1 port={listen} user=app password=wrong-pw-123 dbname=postgres")).await;
        check!(bad.is_err(), "a wrong password got in");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = std::fs::read_to_string(dir.join("log"))?;
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| format!("{e}; log: {}", &text[..text.len().min(2000)]))?;
    check!(text.len() > 1000, "the trace log is nearly empty ({} bytes)", text.len());
    for secret in ["s3cret-client-pw", SCRAM_USER.1, "wrong-pw-123", "c=biws", "SCRAM-SHA-256$"] {
        check!(!text.contains(secret), "the trace log contains {secret:?}");
    }
    println!("    a trace-level log of {} bytes has no password, verifier or SCRAM message", text.len());
    Ok(())
}
register!(no_secret_in_the_logs);

/// Repeated wrong passwords from one address are slowed down; a wrong password and an unknown
/// user are refused alike.
pub async fn password_guessing_is_slowed(env: &Env) -> R {
    use pgsplit::config::AuthMethod;
    let proxy = env
        .proxy_with(|c| {
            c.auth = AuthMethod::ScramSha256;
            c.users = vec![crate::common::app_user("right-pw")];
        })
        .await?;
    let port = proxy.addr.port();
    let attempt = |user: &'static str, pw: &'static str| async move {
        let t0 = Instant::now();
        let r = connect(&format!("host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres")).await;
        (r.err().map(|e| sqlstate(&e)), t0.elapsed())
    };
    let mut times = Vec::new();
    for i in 0..7 {
        let (code, took) = attempt(if i % 2 == 0 { "app" } else { "nobody" }, "wrong").await;
        check!(code.as_deref() == Some("28P01"), "attempt {i}: {code:?}");
        times.push(took);
    }
    println!("    7 wrong logins from one address took {:?}", times.iter().map(|t| t.as_millis()).collect::<Vec<_>>());
    check!(times[6] >= Duration::from_millis(1900), "the 7th failure was not slowed: {:?}", times[6]);
    proxy.stop();
    Ok(())
}
register!(password_guessing_is_slowed);

async fn pgbench_s(port: u16, secs: &str) -> Result<(f64, String), Box<dyn std::error::Error + Send + Sync>> {
    let out = crate::common::pgbench(port, &["-n", "-S", "-c", "2", "-j", "1", "-T", secs]).output().await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    check!(out.status.success() && !text.contains("error") && !text.contains("aborted"), "pgbench: {text}");
    Ok((tps, text))
}

/// Hostile clients next to pgbench: garbage, truncated and oversized messages, a flood of
/// silent connections, a client that never reads its results, one that pipelines 10,000
/// queries without reading. pgbench's clients see no error; the figures are printed.
pub async fn hostile_clients_beside_pgbench(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.limits.client_stall_timeout_ms = 1000;
            c.limits.client_login_timeout_ms = 1000;
            c.limits.max_message_size = 1 << 20;
            c.pool.size = 20;
        })
        .await?;
    let port = proxy.addr.port();
    crate::common::pgbench_init(env.cluster.primary().port).await?;
    env.caught_up().await?;
    let (alone, _) = pgbench_s(port, "3").await?;
    let hostile = async {
        let mut tasks = Vec::new();
        // Garbage and truncated messages.
        for i in 0..20u8 {
            tasks.push(tokio::spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    let junk: Vec<u8> = (0..512).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i)).collect();
                    let _ = s.write_all(&junk).await;
                    let mut buf = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
                }
            }));
        }
        for _ in 0..10 {
            tasks.push(tokio::spawn(async move {
                if let Ok(mut s) = crate::differential::login(port).await {
                    let _ = s.write_all(&[b'Q', 0, 0, 0x10]).await; // cut in the middle of a header
                    let _ = s.write_all(&[b'Q', 0x06, 0x40, 0, 0]).await; // 100 MB claimed
                    let mut buf = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
                }
            }));
        }
        // A flood of connections that say nothing.
        let mut silent = Vec::new();
        for _ in 0..300 {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                silent.push(s);
            }
        }
        // A client that never reads a large result, and one that pipelines without reading.
        let never = crate::differential::login(port).await?;
        let q = "SELECT repeat('x', 100000) AS hostile_big FROM generate_series(1, 10000)";
        let mut m = vec![b'Q'];
        m.extend_from_slice(&((4 + q.len() + 1) as u32).to_be_bytes());
        m.extend_from_slice(q.as_bytes());
        m.push(0);
        let (_nr, mut nw) = never.into_split();
        nw.write_all(&m).await?;
        let mut pipe = crate::differential::login(port).await?;
        let one = b"Q\0\0\0\x0dSELECT 1\0";
        let mut many = Vec::with_capacity(one.len() * 10_000);
        for _ in 0..10_000 {
            many.extend_from_slice(one);
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), pipe.write_all(&many)).await;
        for t in tasks {
            let _ = t.await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(silent);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((nw, pipe))
    };
    let (bench, hostile) = tokio::join!(pgbench_s(port, "4"), hostile);
    let (beside, _) = bench?;
    let _keep = hostile?;
    println!(
        "    pgbench -S alone {alone:.0} tps, beside hostile clients {beside:.0} tps ({:.0}%), 0 errors; \
         stalled clients dropped: {}",
        100.0 * beside / alone.max(1.0),
        proxy.shared.metrics.stalled_clients.get()
    );
    check!(proxy.shared.metrics.stalled_clients.get() >= 1, "the client that never reads was not dropped");
    // Its query no longer runs on any server.
    let t0 = Instant::now();
    loop {
        let mut running = 0;
        for i in 0..env.cluster.nodes.len() {
            let n = tokio::task::block_in_place(|| {
                env.cluster.psql(i, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%hostile_big%' AND state = 'active' AND pid <> pg_backend_pid()")
            })?;
            running += n.parse::<i64>().unwrap_or(0);
        }
        if running == 0 {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(10), "the unread query still runs");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let c = connect(&env.conn_string(port)).await?;
    c.simple_query("SELECT 1").await?;
    proxy.stop();
    Ok(())
}
register!(hostile_clients_beside_pgbench);

/// A request past `limits.query_timeout_ms` is cancelled on its server: the client gets 57014 in
/// both protocols and keeps a usable connection; inside a transaction the transaction is
/// aborted like any error; quick requests are untouched; the server connection that was sent
/// the cancel is closed, never handed to another client.
pub async fn long_queries_are_cancelled(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.limits.query_timeout_ms = 400).await?;
    let conn = env.conn_string(proxy.addr.port());
    let c = connect(&conn).await?;
    let t0 = Instant::now();
    let e = c.simple_query("SELECT pg_sleep(5)").await.err().ok_or("a 5 s query outlived a 0.4 s timeout")?;
    let secs = t0.elapsed().as_secs_f64();
    check!(sqlstate(&e) == "57014", "simple protocol: {e:?}");
    check!(secs < 3.0, "cancelled only after {secs:.2} s");
    let e = c.query("SELECT pg_sleep($1::float8)", &[&5.0f64]).await.err().ok_or("extended: not cancelled")?;
    check!(sqlstate(&e) == "57014", "extended protocol: {e:?}");
    check!(simple_value(&c, "SELECT 41 + 1").await? == "42", "the connection is unusable after a timeout");
    // Each request gets the whole limit: many short ones in a row are not cancelled.
    for _ in 0..6 {
        c.simple_query("SELECT pg_sleep(0.1)").await?;
    }
    // In a transaction: aborted, then ROLLBACK; the backend that got the cancel goes away.
    c.batch_execute("BEGIN").await?;
    let pid: i32 = simple_value(&c, "SELECT pg_backend_pid()").await?.parse()?;
    let e = c.simple_query("SELECT pg_sleep(5)").await.err().ok_or("in a transaction: not cancelled")?;
    check!(sqlstate(&e) == "57014", "in a transaction: {e:?}");
    let e = c.simple_query("SELECT 1").await.err().ok_or("the transaction was not aborted")?;
    check!(sqlstate(&e) == "25P02", "after the timeout: {e:?}");
    c.batch_execute("ROLLBACK").await?;
    let direct = connect(&env.conn_string(env.primary_port() as u16)).await?;
    let t1 = Instant::now();
    loop {
        let n = simple_value(&direct, &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")).await?;
        if n == "0" {
            break;
        }
        check!(t1.elapsed() < Duration::from_secs(5), "the cancelled server connection {pid} was kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check!(simple_value(&c, "SELECT 'still here'").await? == "still here", "the client lost its connection");
    println!("    a 5 s query cancelled {secs:.2} s after it was sent (limit 0.4 s); its server connection closed");
    proxy.stop();
    Ok(())
}
register!(long_queries_are_cancelled);

/// Resident memory of this process (pgsplit runs inside the test), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// What one client can make pgsplit hold is bounded: 200 Bind+Execute messages of 1 MB each
/// without a Sync (before: all 200 MB held until the Sync) stream on to the primary past
/// `limits.max_batch_bytes` and the client gets every answer; a Parse past
/// `limits.max_prepared_statements` gets 54000 naming the limit; a password message larger than
/// PostgreSQL's 64 KiB is refused before its body is read.
pub async fn one_client_cannot_exhaust_memory(env: &Env) -> R {
    use bytes::{BufMut, BytesMut};
    let bound = 16 * 1024 * 1024;
    let proxy = env
        .proxy_with(|c| {
            c.limits.max_batch_bytes = bound;
            c.limits.max_prepared_statements = 50;
        })
        .await?;
    let mut s = crate::differential::login(proxy.addr.port()).await?;
    let mut b = BytesMut::new();
    crate::protocol::parse(&mut b, "big", "SELECT length($1::text)");
    s.write_all(&b).await?;
    let value = vec![b'x'; 1 << 20];
    let sampler = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let base = rss();
        let task = tokio::spawn(async move {
            let mut peak = base;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak.saturating_sub(base)
        });
        (stop, task)
    };
    let n = 200;
    for _ in 0..n {
        let mut m = BytesMut::new();
        m.put_u8(b'B');
        m.put_i32((4 + 1 + 4 + 2 + 2 + 4 + value.len() + 2) as i32);
        m.put_u8(0);
        m.put_slice(b"big\0");
        m.put_i16(0);
        m.put_i16(1);
        m.put_i32(value.len() as i32);
        m.put_slice(&value);
        m.put_i16(0);
        m.put_u8(b'E');
        m.put_i32(4 + 1 + 4);
        m.put_u8(0);
        m.put_i32(0);
        s.write_all(&m).await?;
    }
    s.write_all(&pgsplit::protocol::sync()).await?;
    let answer = crate::protocol::read_until_ready(&mut s).await?;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let grew = sampler.1.await?;
    let rows = answer.iter().filter(|(t, _)| *t == b'D').count();
    let errors: Vec<String> = answer
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| pgsplit::protocol::error_field(b, b'M').unwrap_or("").to_string())
        .collect();
    println!(
        "    {n} Binds of 1 MB without a Sync, max_batch_bytes {} MiB: {rows} rows back, resident memory grew by {:.1} MiB at most",
        bound >> 20,
        grew as f64 / (1 << 20) as f64
    );
    check!(errors.is_empty() && rows == n, "{rows} rows, errors {errors:?}");
    // The batch bound, the buffers around it, the allocator's keep: at most 4x the bound and
    // 32 MiB (unbounded before: all 200 MB held until the Sync).
    check!(grew <= 4 * bound as u64 + (32 << 20), "memory grew by {grew} bytes, more than 4x the batch bound + 32 MiB");

    // Named statements past the limit.
    let mut b = BytesMut::new();
    for i in 0..60 {
        crate::protocol::parse(&mut b, &format!("s{i}"), "SELECT 1");
    }
    b.put_slice(&pgsplit::protocol::sync());
    s.write_all(&b).await?;
    let answer = crate::protocol::read_until_ready(&mut s).await?;
    let refused: Vec<String> = answer
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| {
            format!(
                "{} {}",
                pgsplit::protocol::error_field(b, b'C').unwrap_or(""),
                pgsplit::protocol::error_field(b, b'M').unwrap_or("")
            )
        })
        .collect();
    println!("    60 named statements, limit 50: {refused:?}");
    check!(
        refused.len() == 1 && refused[0].starts_with("54000") && refused[0].contains("max_prepared_statements"),
        "past the statement limit: {refused:?}"
    );
    // The session goes on.
    let mut q = BytesMut::new();
    q.put_u8(b'Q');
    q.put_i32(4 + 9);
    q.put_slice(b"SELECT 1\0");
    s.write_all(&q).await?;
    let answer = crate::protocol::read_until_ready(&mut s).await?;
    check!(answer.iter().any(|(t, _)| *t == b'D'), "the session did not go on: {answer:?}");
    proxy.stop();

    // Before authentication: a password message over 64 KiB is refused unread (08P01).
    let proxy = env
        .proxy_with(|c| {
            c.auth = pgsplit::config::AuthMethod::Md5;
            c.users = vec![crate::common::app_user("app-pw")];
        })
        .await?;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
    s.write_all(&pgsplit::protocol::startup_message(&[("user", "app"), ("database", "postgres")])).await?;
    let (tag, _) = crate::protocol::read_msg(&mut s).await?;
    check!(tag == b'R', "no authentication request: {}", tag as char);
    let mut p = BytesMut::new();
    p.put_u8(b'p');
    p.put_i32(4 + 100_000);
    s.write_all(&p).await?;
    let (tag, body) = crate::protocol::read_msg(&mut s).await?;
    let code = pgsplit::protocol::error_field(&body, b'C').unwrap_or("").to_string();
    println!("    a 100 kB password message before authentication: {} {code}", tag as char);
    check!(tag == b'E' && code == "08P01", "a 100 kB password message got {} {code}", tag as char);
    proxy.stop();
    Ok(())
}
register!(one_client_cannot_exhaust_memory);
