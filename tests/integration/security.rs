//! Hostile clients at the door: the admin console behind a password, cancel keys that reach
//! nothing but the statement they were given for.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::check;
use crate::common::{Env, R, connect, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 12;

/// A cancel counter of the proxy's metrics, by outcome.
fn cancels(proxy: &pgsplit::proxy::Proxy, outcome: &str) -> u64 {
    proxy.shared.metrics.cancel_requests.with_label_values(&[outcome]).get()
}

/// Waits (up to 5 s) for a cancel counter to reach `n`: pgsplit reads a CancelRequest after
/// the client has sent it and gone.
async fn counted(proxy: &pgsplit::proxy::Proxy, outcome: &str, n: u64) {
    let t0 = Instant::now();
    while cancels(proxy, outcome) < n && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn the_console_asks_for_a_password_when_clients_are_trusted(env: &Env) -> R {
    let mut ops = crate::common::app_user("console-secret");
    ops.name = "ops".into();
    let proxy = env
        .proxy_with(|c| {
            c.admin.users = vec!["ops".into()];
            c.users = vec![ops.clone()];
        })
        .await?;
    let port = proxy.addr.port();
    let console = |password: &str| {
        let pw = if password.is_empty() { String::new() } else { format!(" password={password}") };
        format!("host=127.0.0.1 port={port} user=ops dbname=pgsplit{pw}")
    };
    // Clients are still trusted.
    let app = connect(&env.conn_string(port)).await?;
    app.simple_query("SELECT 1").await?;
    // No password, a wrong one: no console. Before, both ran SHOW SERVERS.
    let e = connect(&console("")).await.err().map(|e| format!("{e:?}")).unwrap_or_default();
    check!(e.contains("password"), "the console let a user in without a password: {e:?}");
    let e = connect(&console("guess")).await.err().map(|e| sqlstate(&e));
    check!(e.as_deref() == Some("28P01"), "a wrong console password gave {e:?}");
    // The right password: the console.
    let admin = connect(&console("console-secret")).await?;
    let servers = admin.simple_query("SHOW SERVERS").await?;
    check!(servers.len() > 3, "SHOW SERVERS answered {} messages", servers.len());
    // A client who is not an admin, trusted or not, gets no console.
    let e = connect(&env.conn_string(port).replace("dbname=postgres", "dbname=pgsplit")).await.err();
    check!(e.is_some(), "a non-admin reached the console");
    proxy.stop();

    // [admin] trust = true: the console is trusted as the clients are.
    let proxy = env
        .proxy_with(|c| {
            c.admin.users = vec!["postgres".into()];
            c.admin.trust = true;
        })
        .await?;
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    admin.simple_query("SHOW POOLS").await?;
    proxy.stop();

    // A console user without a password and no [admin] trust: refused at start, with the way out.
    let e = env.proxy_with(|c| c.admin.users = vec!["postgres".into()]).await.err().unwrap_or_default();
    check!(e.contains("[admin] trust"), "an admin without a password was accepted: {e:?}");
    // Trust on a network address: refused at start.
    let e = env.proxy_with(|c| c.listen = "0.0.0.0:0".into()).await.err().unwrap_or_default();
    check!(e.contains("trust_network"), "trust on 0.0.0.0 was accepted: {e:?}");
    Ok(())
}
register!(the_console_asks_for_a_password_when_clients_are_trusted);

pub async fn cancels_reach_only_running_statements(env: &Env) -> R {
    // One server connection per server: whoever runs next on the primary gets the same backend
    // unless pgsplit closed it.
    let proxy = env.proxy_with(|c| c.pool.size = 1).await?;
    let port = proxy.addr.port();
    let on_primary = "/* pgsplit:primary */ SELECT pg_backend_pid()";
    let a = connect(&env.conn_string(port)).await?;
    let b = connect(&env.conn_string(port)).await?;

    // Keys are random: two clients' pids are not neighbours (before: 1, 2, 3, ...).
    let mut keys = Vec::new();
    for _ in 0..8 {
        keys.push(backend_key(proxy.addr).await?);
    }
    let neighbours = keys.windows(2).filter(|w| (w[0] - w[1]).abs() < 100).count();
    check!(neighbours == 0, "cancel keys follow each other: {keys:?}");

    // A cancel for a client with nothing running is dropped: B's statement on the same server
    // connection (A's key found nothing of A's running) is not touched.
    // Simple protocol: tokio-postgres closes an extended query's statement (Close + Sync) after
    // it returns, and a cancel sent while that Close runs is rightly forwarded.
    a.batch_execute("BEGIN").await?;
    a.simple_query(on_primary).await?;
    let ignored = cancels(&proxy, "ignored");
    a.cancel_token().cancel_query(NoTls).await?;
    counted(&proxy, "ignored", ignored + 1).await;
    check!(cancels(&proxy, "forwarded") == 0, "a cancel for an idle transaction was forwarded");
    a.batch_execute("COMMIT").await?;
    let long = b.query_one("/* pgsplit:primary */ SELECT pg_sleep(0.5)::text", &[]);
    let token = a.cancel_token();
    let (r, _) = tokio::join!(long, async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        token.cancel_query(NoTls).await
    });
    check!(r.is_ok(), "another client's statement was cancelled by A's key: {:?}", r.err());

    // A cancelled statement's server connection is closed, never pooled: the signal may land
    // after the statement ended, on whoever ran next there.
    let before: i32 = a.query_one(on_primary, &[]).await?.get(0);
    let token = a.cancel_token();
    let t0 = Instant::now();
    let canceller = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            token.cancel_query(NoTls).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), tokio_postgres::Error>(())
    });
    let r = a.simple_query("/* pgsplit:primary */ SELECT pg_sleep(20)").await;
    canceller.abort();
    let code = r.as_ref().err().map(sqlstate);
    check!(code.as_deref() == Some("57014"), "the cancel gave {code:?} after {:?}", t0.elapsed());
    let after: i32 = b.query_one(on_primary, &[]).await?.get(0);
    check!(after != before, "the connection a cancel went to (backend {before}) was pooled and reused");

    // Cancels from one address are rate-limited.
    let limited = cancels(&proxy, "limited");
    for _ in 0..120 {
        let mut s = tokio::net::TcpStream::connect(proxy.addr).await?;
        use tokio::io::AsyncWriteExt;
        s.write_all(&pgsplit::protocol::cancel_request(12345, 678)).await?;
        let _ = s.shutdown().await;
    }
    counted(&proxy, "limited", limited + 50).await;
    let n = cancels(&proxy, "limited") - limited;
    check!(n >= 50, "{n} of 120 cancels from one address were limited");
    println!(
        "cancels: ignored {}, forwarded {}, limited {n} of 120",
        cancels(&proxy, "ignored"),
        cancels(&proxy, "forwarded")
    );
    proxy.stop();
    Ok(())
}
register!(cancels_reach_only_running_statements);

/// The pid pgsplit gives a new client in its BackendKeyData.
async fn backend_key(addr: std::net::SocketAddr) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&pgsplit::protocol::startup_message(&[("user", "postgres"), ("database", "postgres")])).await?;
    let msgs = crate::protocol::read_until_ready(&mut s).await?;
    let (_, key) = msgs.iter().find(|(tag, _)| *tag == b'K').ok_or("no BackendKeyData")?;
    Ok(i32::from_be_bytes([key[0], key[1], key[2], key[3]]))
}

pub async fn no_secret_in_show_config_or_config_errors(env: &Env) -> R {
    let dir = std::env::temp_dir().join(format!("pgsplit-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("pgsplit.toml");
    let replicas: Vec<String> = env.cluster.replica_addrs().iter().map(|r| format!("\"{r}\"")).collect();
    let good = format!(
        "listen = \"127.0.0.1:0\"\n[servers]\nprimary = \"{}\"\nreplicas = [{}]\n\
         [monitor]\npassword = \"monitor-hunter2\"\n\
         [failover]\nmode = \"manual\"\nfence_command = \"fence --token hook-hunter2\"\n\
         [admin]\nusers = [\"postgres\"]\ntrust = true\n\
         [[users]]\nname = \"app\"\npassword = \"app-hunter2\"\n",
        env.cluster.primary().addr(),
        replicas.join(", ")
    );
    std::fs::write(&file, &good)?;
    let config = pgsplit::config::Config::load(&file).map_err(|e| e.to_string())?;
    let source = pgsplit::ops::reload::Source { path: Some(file.clone()), overrides: Box::new(|_| {}) };
    let proxy = pgsplit::proxy::Proxy::start_with(config, source, None).await?;
    let admin = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=pgsplit", proxy.addr.port())).await?;
    let shown: Vec<String> = admin
        .simple_query("SHOW CONFIG")
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some(format!("{} = {}", r.get(0).unwrap_or(""), r.get(1).unwrap_or("")))
            }
            _ => None,
        })
        .collect();
    let leaked: Vec<&String> = shown.iter().filter(|l| l.contains("hunter2")).collect();
    check!(leaked.is_empty(), "SHOW CONFIG shows secrets: {leaked:?}");
    check!(shown.iter().any(|l| l == "failover.fence_command = ********"), "the hook command is not masked");

    // A broken secret line: RELOAD in the console says where, not what.
    let broken = good.replace("\"app-hunter2\"", "app-hunter2").replace("\"monitor-hunter2\"", "4242");
    std::fs::write(&file, &broken)?;
    let e = admin.simple_query("RELOAD").await.err().map(|e| format!("{e:?}")).unwrap_or_default();
    check!(e.contains("line "), "RELOAD of a broken file answered {e:?}");
    check!(!e.contains("hunter2") && !e.contains("4242"), "RELOAD's error shows the secret: {e}");
    // Nor at start.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["--config", file.to_str().unwrap_or_default()])
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    check!(!out.status.success() && stderr.contains("line "), "pgsplit started on a broken file: {stderr}");
    check!(!stderr.contains("hunter2") && !stderr.contains("4242"), "the start error shows the secret: {stderr}");
    println!("start error: {}", stderr.trim());
    proxy.stop();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
register!(no_secret_in_show_config_or_config_errors);

/// Logs in as `user` with the empty password by hand (libpq refuses to send one): md5 or
/// SCRAM-SHA-256, as the proxy asks. The SQLSTATE of the answer, or "ok".
async fn empty_password_login(
    addr: std::net::SocketAddr,
    user: &str,
) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(&pgsplit::protocol::startup_message(&[("user", user), ("database", "postgres")])).await?;
    let message = |body: &[u8]| {
        let mut m = vec![b'p'];
        m.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    let mut scram = None;
    loop {
        let (tag, body) = crate::protocol::read_msg(&mut s).await?;
        match tag {
            b'R' => {
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                match code {
                    0 => return Ok("ok".into()),
                    5 => {
                        let salt: [u8; 4] = body[4..8].try_into()?;
                        let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), b"", salt);
                        let mut b = hash.into_bytes();
                        b.push(0);
                        s.write_all(&message(&b)).await?;
                    }
                    10 => {
                        let sc = ScramSha256::new(b"", ChannelBinding::unsupported());
                        let mut b = SCRAM_SHA_256.as_bytes().to_vec();
                        b.push(0);
                        b.extend_from_slice(&(sc.message().len() as i32).to_be_bytes());
                        b.extend_from_slice(sc.message());
                        s.write_all(&message(&b)).await?;
                        scram = Some(sc);
                    }
                    11 => {
                        let sc = scram.as_mut().ok_or("SASLContinue before SASL")?;
                        sc.update(&body[4..])?;
                        s.write_all(&message(sc.message())).await?;
                    }
                    12 => {}
                    other => return Err(format!("authentication request {other}").into()),
                }
            }
            b'E' => {
                let text = String::from_utf8_lossy(&body).to_string();
                let code = text.split('\0').find_map(|f| f.strip_prefix('C')).unwrap_or("").to_string();
                return Ok(code);
            }
            _ => {}
        }
    }
}

pub async fn empty_passwords_never_log_in(env: &Env) -> R {
    use pgsplit::config::AuthMethod;
    for method in [AuthMethod::Md5, AuthMethod::ScramSha256] {
        let proxy = env
            .proxy_with(|c| {
                c.auth = method;
                c.users = vec![crate::common::app_user("app-secret")];
            })
            .await?;
        // A user the config does not list: before, the empty password logged in as them.
        for user in ["ghost", "app"] {
            let outcome = empty_password_login(proxy.addr, user).await?;
            println!("    {method:?}, user {user} with the empty password: {outcome}");
            check!(outcome == "28P01", "{method:?}: {user} with the empty password got {outcome}");
        }
        proxy.stop();
    }
    // A [[users]] entry or a password file without a password: a configuration error.
    let dir = std::env::temp_dir().join(format!("pgsplit-empty-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pw"), "\n")?;
    let mut c = crate::common::base_config(&env.cluster);
    c.auth = AuthMethod::ScramSha256;
    let mut u = crate::common::app_user("");
    u.password_file = Some(dir.join("pw").display().to_string());
    c.users = vec![u];
    c.resolve_secrets().map_err(|e| e.to_string())?;
    let e = c.validate().err().map(|e| e.to_string()).unwrap_or_default();
    check!(e.contains("empty password"), "an empty password file was accepted: {e:?}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
register!(empty_passwords_never_log_in);
