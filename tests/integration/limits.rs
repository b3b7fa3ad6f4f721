//! Limits that protect everyone from one client: login timeout (silent sockets shed), a cap on
//! client connections, a bound on message size, idle timeouts in and out of transactions.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::check;
use crate::common::{Env, R, connect, sqlstate};

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

/// No password, verifier or SCRAM message in the logs, at trace level.
pub async fn no_secret_in_the_logs(env: &Env) -> R {
    use pgsplit::localcluster::{SCRAM_USER, free_port};
    let dir = std::env::temp_dir().join(format!("pgsplit-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let listen = free_port()?;
    let replicas: Vec<String> = env.cluster.replica_addrs().iter().map(|r| format!("\"{r}\"")).collect();
    let config = format!(
        "listen = \"127.0.0.1:{listen}\"\nauth = \"scram-sha-256\"\n[servers]\nprimary = \"{}\"\nreplicas = [{}]\n\
         [[users]]\nname = \"app\"\npassword = \"s3cret-client-pw\"\nserver_user = \"{}\"\nserver_password = \"{}\"\n",
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

/// Repeated wrong passwords from one address are slowed down; a wrong password and an unknown
/// user are refused alike.
pub async fn password_guessing_is_slowed(env: &Env) -> R {
    use pgsplit::config::{AuthMethod, UserConfig};
    use pgsplit::localcluster::SCRAM_USER;
    let proxy = env
        .proxy_with(|c| {
            c.auth = AuthMethod::ScramSha256;
            c.users = vec![UserConfig {
                name: "app".into(),
                password: "right-pw".into(),
                password_file: None,
                password_env: None,
                server_user: Some(SCRAM_USER.0.into()),
                server_password: Some(SCRAM_USER.1.into()),
            }];
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
