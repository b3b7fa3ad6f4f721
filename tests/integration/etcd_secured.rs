//! pgsplit on an etcd that speaks only TLS, checks client certificates and has authentication
//! on (a user whose role reads and writes `/pgsplit/` and nothing else), as an operator runs it
//! in production. Certificates are made by the test with openssl, as the TLS tests do.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use pgsplit::localetcd::{EtcdTls, LocalEtcd};

use crate::check;
use crate::common::{Env, R, connect};
use crate::own_cluster::E;

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 26;

const USER: (&str, &str) = ("pgsplit", "etcd-secret");

type Tweak = dyn Fn(&mut pgsplit::config::Config);

/// etcd's certificate (127.0.0.1) and a client certificate (CN pgsplit), one CA.
fn certificates(dir: &Path) -> Result<(), E> {
    crate::tls::make_certs(dir, "127.0.0.1")?;
    std::fs::rename(dir.join("server.pem"), dir.join("etcd.pem"))?;
    std::fs::rename(dir.join("server.key"), dir.join("etcd.key"))?;
    crate::tls::make_certs(dir, "pgsplit")?;
    std::fs::rename(dir.join("server.pem"), dir.join("client.pem"))?;
    std::fs::rename(dir.join("server.key"), dir.join("client.key"))?;
    Ok(())
}

/// Turns authentication on: root, and a `pgsplit` user allowed `/pgsplit/` only.
async fn enable_auth(etcd: &LocalEtcd, dir: &Path) -> R {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(dir.join("ca.pem"))?))
        .identity(Identity::from_pem(std::fs::read(dir.join("client.pem"))?, std::fs::read(dir.join("client.key"))?));
    let mut c = Client::connect(etcd.endpoints(), Some(ConnectOptions::new().with_tls(tls))).await?;
    c.user_add("root", "root-secret", None).await?;
    c.user_grant_role("root", "root").await?;
    c.role_add("pgsplit").await?;
    c.role_grant_permission("pgsplit", Permission::read_write("/pgsplit/").with_prefix()).await?;
    c.user_add(USER.0, USER.1, None).await?;
    c.user_grant_role(USER.0, "pgsplit").await?;
    c.auth_enable().await?;
    Ok(())
}

pub async fn etcd_over_tls_with_authentication(env: &Env) -> R {
    let dir = std::env::temp_dir().join(format!("pgsplit-etcd-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    certificates(&dir)?;
    let tls = EtcdTls { ca: dir.join("ca.pem"), cert: dir.join("etcd.pem"), key: dir.join("etcd.key") };
    let base = dir.join("etcd");
    let etcd = tokio::task::spawn_blocking(move || LocalEtcd::start_with(&base, 1, Some(tls))).await??;
    enable_auth(&etcd, &dir).await?;
    let file = |name: &str| dir.join(name).display().to_string();
    let secured = |c: &mut pgsplit::config::Config| {
        c.coordination.etcd = etcd.endpoints();
        c.coordination.cluster_name = "secured".into();
        c.coordination.lease_ttl_ms = 3000;
        c.coordination.etcd_timeout_ms = 1000;
        c.coordination.ca = file("ca.pem");
        c.coordination.cert = file("client.pem");
        c.coordination.key = file("client.key");
        c.coordination.user = USER.0.into();
        c.coordination.password = USER.1.into();
    };
    // Everything right: the instance syncs, leads, and writes go through.
    let proxy = env.proxy_with(|c| secured(c)).await?;
    let t0 = Instant::now();
    while proxy.shared.coord_blocked().is_some() || !proxy.shared.coord.as_ref().is_some_and(|c| c.is_leader()) {
        check!(t0.elapsed() < Duration::from_secs(20), "never synced over TLS: {:?}", proxy.shared.coord_blocked());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let synced = t0.elapsed();
    let app = connect(&env.conn_string(proxy.addr.port())).await?;
    app.batch_execute("INSERT INTO t (v) VALUES (-901)").await?;
    proxy.stop();
    println!("    TLS + client certificate + user: synced and leading in {synced:?}");
    // No user and password: etcd takes the client certificate's CN as the user (its
    // certificate login), so the certificate alone is enough.
    let proxy = env
        .proxy_with(|c| {
            secured(c);
            c.coordination.user.clear();
            c.coordination.password.clear();
        })
        .await?;
    let t0 = Instant::now();
    while proxy.shared.coord_blocked().is_some() {
        check!(t0.elapsed() < Duration::from_secs(20), "the certificate login did not sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.stop();

    // Each missing piece: never synced, writes held (fail closed), reads go on.
    let wrong: [(&str, Box<Tweak>); 3] = [
        ("wrong password", Box::new(|c| c.coordination.password = "guess".into())),
        (
            "no client certificate",
            Box::new(|c| {
                c.coordination.cert.clear();
                c.coordination.key.clear();
            }),
        ),
        (
            "plaintext",
            Box::new(|c| {
                c.coordination.ca.clear();
                c.coordination.cert.clear();
                c.coordination.key.clear();
            }),
        ),
    ];
    for (label, tweak) in wrong {
        let proxy = env
            .proxy_with(|c| {
                secured(c);
                c.coordination.cluster_name = "secured-wrong".into();
                tweak(c);
            })
            .await?;
        let app = connect(&env.conn_string(proxy.addr.port())).await?;
        // Longer than a connect, a login and a lease grant take when they work.
        tokio::time::sleep(Duration::from_secs(2)).await;
        check!(proxy.shared.coord_blocked().is_some(), "{label}: the instance synced");
        let e = app.batch_execute("INSERT INTO t (v) VALUES (-902)").await.err().map(|e| crate::common::sqlstate(&e));
        check!(e.is_some(), "{label}: a write went through without etcd");
        println!("    {label}: not synced ({:?}), write refused with {e:?}", proxy.shared.coord_blocked());
        proxy.stop();
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
register!(etcd_over_tls_with_authentication);
