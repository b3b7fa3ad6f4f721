//! Authentication: md5 and SCRAM, stored hashes and password files, `auth_query` with its
//! cache, and SCRAM pass-through (pgsplit logs into the servers with the ClientKey a client
//! proved, holding only a verifier).

use std::time::{Duration, Instant};

use crate::check;
use crate::common::{Env, R, connect, simple_value, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 6;

pub async fn md5_and_scram_authentication(env: &Env) -> R {
    use pgsplit::config::{AuthMethod, UserConfig};
    use pgsplit::localcluster::{MD5_USER, SCRAM_USER};
    for method in [AuthMethod::Md5, AuthMethod::ScramSha256] {
        let proxy = env
            .proxy_with(|c| {
                c.auth = method;
                c.users = vec![
                    // Clients log in with their own password; pgsplit uses the server's.
                    UserConfig {
                        name: "app".into(),
                        password: "app-pw".into(),
                        password_file: None,
                        password_env: None,
                        server_user: Some(SCRAM_USER.0.into()),
                        server_password: Some(SCRAM_USER.1.into()),
                    },
                    UserConfig {
                        name: MD5_USER.0.into(),
                        password: MD5_USER.1.into(),
                        password_file: None,
                        password_env: None,
                        server_user: None,
                        server_password: None,
                    },
                ];
            })
            .await?;
        let port = proxy.addr.port();
        for (user, pw) in [("app", "app-pw"), (MD5_USER.0, MD5_USER.1)] {
            let c = connect(&format!("host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres"))
                .await
                .map_err(|e| format!("{method:?} {user}: {e}"))?;
            let who = simple_value(&c, "SELECT current_user").await?;
            let want = if user == "app" { SCRAM_USER.0 } else { MD5_USER.0 };
            check!(who == want, "{method:?}: logged into the servers as {who}");
            let r: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
            check!(env.replica_ports().contains(&r), "{method:?}: read ran on {r}");
        }
        let bad = connect(&format!("host=127.0.0.1 port={port} user=app password=wrong dbname=postgres")).await;
        let code = bad.err().map(|e| sqlstate(&e));
        check!(code.as_deref() == Some("28P01"), "{method:?}: wrong password gave {code:?}");
        let unknown = connect(&format!("host=127.0.0.1 port={port} user=nobody password=x dbname=postgres")).await;
        check!(unknown.is_err(), "{method:?}: unknown user accepted");
        proxy.stop();
    }
    // Trust mode relays the server's own refusal (no such database).
    let e = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=no_such_db", env.proxy.addr.port())).await;
    let code = e.err().map(|e| sqlstate(&e));
    check!(code.as_deref() == Some("3D000"), "missing database gave {code:?}");
    Ok(())
}
register!(md5_and_scram_authentication);

/// Client passwords kept as PostgreSQL keeps them (a SCRAM verifier, an md5 hash), or read from
/// a file: clients log in with the password, pgsplit never holds it.
pub async fn stored_hashes_and_password_files(env: &Env) -> R {
    use pgsplit::config::{AuthMethod, UserConfig};
    use pgsplit::localcluster::{MD5_USER, SCRAM_USER};
    let cluster = &env.cluster;
    let stored = |role: &str| {
        let sql = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
        tokio::task::block_in_place(|| cluster.psql(0, &sql))
    };
    let (verifier, md5) = (stored(SCRAM_USER.0)?, stored(MD5_USER.0)?);
    check!(verifier.starts_with("SCRAM-SHA-256$") && md5.starts_with("md5"), "stored: {verifier} {md5}");
    let file = std::env::temp_dir().join(format!("pgsplit-pw-{}", std::process::id()));
    std::fs::write(&file, "file-pw\n")?;
    let user = |name: &str, password: &str, server_password: &str| UserConfig {
        name: name.into(),
        password: password.into(),
        password_file: None,
        password_env: None,
        server_user: None,
        server_password: Some(server_password.into()),
    };
    for (method, name, secret, pw) in [
        (AuthMethod::ScramSha256, SCRAM_USER.0, verifier.as_str(), SCRAM_USER.1),
        (AuthMethod::Md5, MD5_USER.0, md5.as_str(), MD5_USER.1),
    ] {
        let proxy = env
            .proxy_with(|c| {
                c.auth = method;
                c.users = vec![
                    user(name, secret, pw),
                    UserConfig {
                        password_file: Some(file.display().to_string()),
                        server_user: Some(SCRAM_USER.0.into()),
                        ..user("fileuser", "", SCRAM_USER.1)
                    },
                ];
                let _ = c.resolve_secrets();
            })
            .await?;
        let port = proxy.addr.port();
        for (u, p) in [(name, pw), ("fileuser", "file-pw")] {
            let c = connect(&format!("host=127.0.0.1 port={port} user={u} password={p} dbname=postgres"))
                .await
                .map_err(|e| format!("{method:?} {u}: {e}"))?;
            c.simple_query("SELECT 1").await?;
        }
        let bad = connect(&format!("host=127.0.0.1 port={port} user={name} password=wrong dbname=postgres")).await;
        check!(bad.err().map(|e| sqlstate(&e)).as_deref() == Some("28P01"), "{method:?}: a wrong password got in");
        proxy.stop();
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}
register!(stored_hashes_and_password_files);

/// A proxy that knows no user and asks the servers (`auth_query`, as the monitor's superuser).
async fn auth_query_proxy(
    env: &Env,
    method: pgsplit::config::AuthMethod,
    ttl_ms: u64,
) -> Result<pgsplit::proxy::Proxy, String> {
    env.proxy_with(|c| {
        c.auth = method;
        c.users = Vec::new();
        c.auth_query.enabled = true;
        c.auth_query.cache_ttl_ms = ttl_ms;
    })
    .await
}

fn lookups(proxy: &pgsplit::proxy::Proxy, result: &str) -> u64 {
    proxy.shared.metrics.auth_query.with_label_values(&[result]).get()
}

/// Users the config does not list log in with the password the servers keep; pgsplit then logs
/// into servers that demand SCRAM (pg_hba) with nothing but the verifier and the ClientKey the
/// client proved, and into servers that demand md5 with the stored hash.
pub async fn auth_query_users_and_pass_through(env: &Env) -> R {
    use pgsplit::config::AuthMethod;
    use pgsplit::localcluster::{MD5_USER, SCRAM_USER};
    let proxy = auth_query_proxy(env, AuthMethod::ScramSha256, 60_000).await?;
    let port = proxy.addr.port();
    let url = |user: &str, pw: &str| format!("host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres");
    let (user, pw) = SCRAM_USER;
    for i in 0..6 {
        let c = connect(&url(user, pw)).await.map_err(|e| format!("login {i}: {e}"))?;
        check!(simple_value(&c, "SELECT current_user").await? == user, "logged in as someone else");
        // A read on a replica and a transaction on the primary: both servers asked for SCRAM.
        let read: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        check!(env.replica_ports().contains(&read), "read ran on {read}");
        c.batch_execute("BEGIN").await?;
        let primary: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        c.batch_execute("COMMIT").await?;
        check!(primary == env.cluster.primary().port as i32, "transaction ran on {primary}");
    }
    // One query for six logins: the answer is cached.
    let (fetched, hits) = (lookups(&proxy, "fetched"), lookups(&proxy, "hit"));
    println!("    6 logins of {user}: auth_query fetched {fetched}, cache hits {hits}");
    check!(fetched == 1 && hits == 5, "auth_query ran {fetched} times for 6 logins ({hits} hits)");
    // A session that logged in keeps getting new server connections after the cache is gone
    // (a reload clears it; eviction and re-fetches do the same): they use what its login proved.
    let c = connect(&url(user, pw)).await?;
    proxy.shared.logins.auth_query.clear();
    for n in &env.cluster.nodes {
        proxy.shared.pools.drop_idle(&n.addr());
    }
    c.batch_execute("BEGIN; SELECT 1; COMMIT").await.map_err(|e| format!("after the cache was cleared: {e}"))?;
    let read: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
    check!(env.replica_ports().contains(&read), "read after the cache was cleared ran on {read}");
    let wrong = connect(&url(user, "wrong")).await.err().map(|e| sqlstate(&e));
    check!(wrong.as_deref() == Some("28P01"), "wrong password gave {wrong:?}");
    let unknown = connect(&url("no_such_role", "x")).await.err().map(|e| sqlstate(&e));
    check!(unknown.as_deref() == Some("28P01"), "unknown user gave {unknown:?} (must look like a wrong password)");
    // An md5 hash cannot answer SCRAM: refused like a wrong password.
    let md5 = connect(&url(MD5_USER.0, MD5_USER.1)).await.err().map(|e| sqlstate(&e));
    check!(md5.as_deref() == Some("28P01"), "md5 user over SCRAM gave {md5:?}");
    proxy.stop();

    // md5 clients: the stored hash checks them and logs pgsplit into the md5 servers.
    let proxy = auth_query_proxy(env, AuthMethod::Md5, 60_000).await?;
    let port = proxy.addr.port();
    let url = |user: &str, pw: &str| format!("host=127.0.0.1 port={port} user={user} password={pw} dbname=postgres");
    let c = connect(&url(MD5_USER.0, MD5_USER.1)).await.map_err(|e| format!("md5 login: {e}"))?;
    check!(simple_value(&c, "SELECT current_user").await? == MD5_USER.0, "md5: logged in as someone else");
    c.batch_execute("BEGIN").await?;
    c.batch_execute("COMMIT").await?;
    let wrong = connect(&url(MD5_USER.0, "wrong")).await.err().map(|e| sqlstate(&e));
    check!(wrong.as_deref() == Some("28P01"), "md5: wrong password gave {wrong:?}");
    proxy.stop();
    Ok(())
}
register!(auth_query_users_and_pass_through);

/// A password changed on the servers takes effect through pgsplit once the cached answer
/// expires (cache_ttl_ms), not before and not never.
pub async fn auth_query_cache_follows_password_changes(env: &Env) -> R {
    use pgsplit::config::AuthMethod;
    let cluster = &env.cluster;
    let psql = |sql: &str| tokio::task::block_in_place(|| cluster.psql(0, sql));
    psql(
        "DROP ROLE IF EXISTS aq_rotating; SET password_encryption = 'scram-sha-256'; CREATE ROLE aq_rotating LOGIN PASSWORD 'one'",
    )?;
    let ttl = 1500;
    let proxy = auth_query_proxy(env, AuthMethod::ScramSha256, ttl).await?;
    let port = proxy.addr.port();
    let url = |pw: &str| format!("host=127.0.0.1 port={port} user=aq_rotating password={pw} dbname=postgres");
    connect(&url("one")).await.map_err(|e| format!("first login: {e}"))?.simple_query("SELECT 1").await?;
    psql("ALTER ROLE aq_rotating PASSWORD 'two'")?;
    let changed = Instant::now();
    let mut took = None;
    while changed.elapsed() < Duration::from_millis(ttl * 5) {
        if connect(&url("two")).await.is_ok() {
            took = Some(changed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = connect(&url("one")).await.err().map(|e| sqlstate(&e));
    proxy.stop();
    psql("DROP ROLE aq_rotating")?;
    let took = took.ok_or("the new password never worked through pgsplit")?;
    println!("    new password accepted {} ms after ALTER ROLE (cache_ttl_ms {ttl})", took.as_millis());
    check!(took <= Duration::from_millis(ttl + 1000), "the cached answer outlived its TTL: {took:?}");
    check!(old.as_deref() == Some("28P01"), "the old password still works after the TTL: {old:?}");
    Ok(())
}
register!(auth_query_cache_follows_password_changes);
