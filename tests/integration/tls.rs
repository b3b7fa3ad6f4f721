//! TLS between clients and pgsplit: certificates made at test time with openssl (a CA and a
//! server certificate for 127.0.0.1), real clients (psql/libpq with verify-full and channel
//! binding, psycopg, asyncpg, node-postgres, pgJDBC), PostgreSQL 17's direct TLS negotiation
//! from a rustls client, and a certificate renewed by a reload while connections stay up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use crate::check;
use crate::common::{Env, R, connect};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 7;

type E = Box<dyn std::error::Error + Send + Sync>;

fn openssl(dir: &Path, args: &[&str]) -> Result<(), E> {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output()?;
    check!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA, and a certificate for 127.0.0.1 / localhost signed by it with common name `cn`.
pub fn make_certs(dir: &Path, cn: &str) -> Result<(), E> {
    std::fs::create_dir_all(dir)?;
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    if !dir.join("ca.pem").exists() {
        let mut a = vec!["req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=pgsplit-test-ca"]);
        openssl(dir, &a)?;
    }
    let mut a = vec!["req"];
    a.extend(ec);
    let subj = format!("/CN={cn}");
    a.extend(["-keyout", "new.key", "-out", "server.csr", "-subj", &subj]);
    openssl(dir, &a)?;
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "new.pem",
            "-days",
            "2",
            "-extfile",
            "ext",
        ],
    )?;
    // Renamed into place, as a certificate renewal does.
    std::fs::rename(dir.join("new.key"), dir.join("server.key"))?;
    std::fs::rename(dir.join("new.pem"), dir.join("server.pem"))?;
    Ok(())
}

fn cert_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pgsplit-tls-{name}-{}", std::process::id()))
}

fn tls_config(c: &mut pgsplit::config::Config, dir: &Path, mode: pgsplit::tls::ClientTlsMode) {
    c.tls.cert = dir.join("server.pem").display().to_string();
    c.tls.key = dir.join("server.key").display().to_string();
    c.tls.client_tls = mode;
}

async fn run(program: &str, args: &[&str], envs: &[(&str, String)]) -> Result<(bool, String), E> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true).current_dir(env!("CARGO_MANIFEST_DIR"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output()).await??;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// A rustls client that trusts the test CA, offering `alpn`.
fn client_config(dir: &Path, alpn: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, E> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem"))? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    if let Some(a) = alpn {
        cfg.alpn_protocols = vec![a.to_vec()];
    }
    Ok(Arc::new(cfg))
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Direct TLS (no SSLRequest first), then a StartupMessage; returns the stream and the first
/// server message (tag, body).
async fn direct(port: u16, dir: &Path, alpn: Option<&[u8]>, user: &str) -> Result<(Tls, u8, Vec<u8>), E> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let mut s = tokio_rustls::TlsConnector::from(client_config(dir, alpn)?).connect(name, tcp).await?;
    let msg = pgsplit::protocol::startup_message(&[("user", user), ("database", "postgres")]);
    s.write_all(&msg).await?;
    let (tag, body) = read_message(&mut s).await?;
    Ok((s, tag, body))
}

async fn read_message(s: &mut Tls) -> Result<(u8, Vec<u8>), E> {
    let tag = s.read_u8().await?;
    let len = s.read_i32().await? as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

/// A simple query on a logged-in raw connection: the first data row's first column.
async fn raw_query(s: &mut Tls, sql: &str) -> Result<String, E> {
    let mut msg = vec![b'Q'];
    msg.extend_from_slice(&((sql.len() + 5) as i32).to_be_bytes());
    msg.extend_from_slice(sql.as_bytes());
    msg.push(0);
    s.write_all(&msg).await?;
    let mut value = None;
    loop {
        let (tag, body) = read_message(s).await?;
        match tag {
            b'D' if value.is_none() && body.len() >= 6 => {
                let n = i32::from_be_bytes([body[2], body[3], body[4], body[5]]).max(0) as usize;
                value = Some(String::from_utf8_lossy(&body[6..6 + n.min(body.len() - 6)]).to_string());
            }
            b'E' => return Err(format!("error: {}", String::from_utf8_lossy(&body)).into()),
            b'Z' => return value.ok_or_else(|| "no row".into()),
            _ => {}
        }
    }
}

/// The subject of the certificate a new TLS connection is shown (openssl s_client, STARTTLS
/// the PostgreSQL way: SSLRequest first).
async fn served_subject(port: u16) -> Result<String, E> {
    let addr = format!("127.0.0.1:{port}");
    let (_, out) =
        run("sh", &["-c", &format!("openssl s_client -connect {addr} -starttls postgres </dev/null")], &[]).await?;
    Ok(out.lines().find(|l| l.starts_with("subject=")).unwrap_or("").to_string())
}

pub async fn tls_for_every_client_and_channel_binding(env: &Env) -> R {
    use pgsplit::config::AuthMethod;
    let dir = cert_dir("clients");
    make_certs(&dir, "127.0.0.1")?;
    let proxy = env
        .proxy_with(|c| {
            tls_config(c, &dir, pgsplit::tls::ClientTlsMode::Require);
            c.auth = AuthMethod::ScramSha256;
            c.users = vec![crate::common::app_user("app-pw")];
        })
        .await?;
    let port = proxy.addr.port();
    let ca = dir.join("ca.pem").display().to_string();
    let dsn = |extra: &str| {
        format!("host=127.0.0.1 port={port} user=app password=app-pw dbname=postgres sslrootcert={ca} {extra}")
    };
    // libpq: verify-full (the certificate is checked against the CA and 127.0.0.1), and
    // channel_binding=require (SCRAM-SHA-256-PLUS over that TLS connection).
    let (ok, out) = run(
        "psql",
        &["-X", "-A", "-t", "-c", "SELECT 'tls ok'", &dsn("sslmode=verify-full channel_binding=require")],
        &[],
    )
    .await?;
    check!(ok && out.contains("tls ok"), "psql verify-full + channel_binding=require: {out}");
    let (ok, out) = run("psql", &["-X", "-A", "-t", "-c", "SELECT 1", &dsn("sslmode=disable")], &[]).await?;
    check!(!ok && out.contains("accepts only TLS"), "a plaintext client under client_tls = require: {out}");
    let (ok, out) =
        run("psql", &["-X", "-A", "-t", "-c", "SELECT 1", &dsn("sslmode=require password=wrong")], &[]).await?;
    check!(!ok && out.contains("password authentication failed"), "wrong password over TLS: {out}");
    println!("    psql: verify-full and channel_binding=require log in; plaintext refused with a FATAL");

    // The drivers of the client matrix.
    let python = format!("{}/target/clients/venv/bin/python", env!("CARGO_MANIFEST_DIR"));
    let psycopg = format!(
        "import psycopg\nc = psycopg.connect({:?})\nassert c.execute('SELECT 41 + 1').fetchone()[0] == 42\nassert c.pgconn.ssl_in_use\n",
        dsn("sslmode=verify-full channel_binding=require")
    );
    let (ok, out) = run(&python, &["-c", &psycopg], &[]).await?;
    check!(ok, "psycopg over TLS: {out}");
    let asyncpg = format!(
        "import asyncio, ssl, asyncpg\nasync def main():\n    ctx = ssl.create_default_context(cafile={ca:?})\n    c = await asyncpg.connect(host='127.0.0.1', port={port}, user='app', password='app-pw', database='postgres', ssl=ctx)\n    assert await c.fetchval('SELECT 42') == 42\n    await c.close()\nasyncio.run(main())\n"
    );
    let (ok, out) = run(&python, &["-c", &asyncpg], &[]).await?;
    check!(ok, "asyncpg over TLS: {out}");
    let node = format!(
        "const {{ Client }} = require('pg'); const fs = require('fs');\n(async () => {{ const c = new Client({{ host: '127.0.0.1', port: {port}, user: 'app', password: 'app-pw', database: 'postgres', ssl: {{ ca: fs.readFileSync({ca:?}) }} }});\nawait c.connect(); const r = await c.query('SELECT 42 AS v'); if (r.rows[0].v !== 42) throw new Error('bad'); await c.end(); }})().catch(e => {{ console.error(e); process.exit(1); }});\n"
    );
    let modules = format!("{}/target/clients/node/node_modules", env!("CARGO_MANIFEST_DIR"));
    let (ok, out) = run("node", &["-e", &node], &[("NODE_PATH", modules)]).await?;
    check!(ok, "node-postgres over TLS: {out}");
    let java_dir = dir.join("java");
    std::fs::create_dir_all(&java_dir)?;
    let java = java_dir.join("TlsTest.java");
    std::fs::write(
        &java,
        format!(
            "public class TlsTest {{ public static void main(String[] a) throws Exception {{\n\
             var url = \"jdbc:postgresql://127.0.0.1:{port}/postgres?sslmode=verify-full&sslrootcert={ca}\";\n\
             try (var c = java.sql.DriverManager.getConnection(url, \"app\", \"app-pw\"); var r = c.createStatement().executeQuery(\"SELECT 42\")) {{\n\
             r.next(); if (r.getInt(1) != 42) throw new RuntimeException(\"bad\"); }} }} }}\n"
        ),
    )?;
    let (ok, out) = run("java", &["-cp", "/usr/share/java/postgresql.jar", &java.display().to_string()], &[]).await?;
    check!(ok, "pgJDBC over TLS: {out}");
    println!("    psycopg (verify-full, channel binding), asyncpg, node-postgres, pgJDBC (verify-full) over TLS");

    // PostgreSQL 17's direct negotiation: TLS at once, ALPN "postgresql"; SCRAM-SHA-256-PLUS
    // offered inside.
    let (_s, tag, body) = direct(port, &dir, Some(pgsplit::tls::ALPN), "app").await?;
    let mechanisms = String::from_utf8_lossy(&body[4..]).to_string();
    check!(tag == b'R' && mechanisms.contains("SCRAM-SHA-256-PLUS"), "direct TLS: {} {mechanisms:?}", tag as char);
    let refused = direct(port, &dir, None, "app").await;
    check!(refused.is_err(), "direct TLS without the ALPN was accepted");
    println!("    direct TLS (ALPN postgresql) accepted, offers SCRAM-SHA-256-PLUS; without the ALPN refused");

    // Plaintext sent behind an SSLRequest before the handshake (CVE-2021-23214): refused as
    // PostgreSQL refuses it, never answered 'S' nor read as protocol.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut packet = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    packet.extend_from_slice(&pgsplit::protocol::startup_message(&[("user", "app"), ("database", "postgres")]));
    raw.write_all(&packet).await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    check!(
        answer.first() == Some(&b'E') && text.contains("08P01") && text.contains("unencrypted data after SSL request"),
        "bytes after an SSLRequest: {text:?}"
    );
    println!("    plaintext behind an SSLRequest: FATAL 08P01, no handshake");
    proxy.stop();
    Ok(())
}
register!(tls_for_every_client_and_channel_binding);

pub async fn certificates_reload_without_dropping_connections(env: &Env) -> R {
    let dir = cert_dir("reload");
    make_certs(&dir, "pgsplit-first")?;
    let mut cfg = crate::common::base_config(&env.cluster);
    tls_config(&mut cfg, &dir, pgsplit::tls::ClientTlsMode::Allow);
    let proxy = pgsplit::proxy::Proxy::start(cfg.clone()).await?;
    let port = proxy.addr.port();
    let before = served_subject(port).await?;
    check!(before.contains("pgsplit-first"), "served before the renewal: {before:?}");
    // Two connections that must survive the reload: one over TLS, one plain.
    let (mut tls, tag, _) = direct(port, &dir, Some(pgsplit::tls::ALPN), "postgres").await?;
    check!(tag == b'R', "direct TLS login: {}", tag as char);
    while read_message(&mut tls).await?.0 != b'Z' {}
    let plain = connect(&env.conn_string(port)).await?;
    make_certs(&dir, "pgsplit-renewed")?;
    let note = pgsplit::ops::reload::apply(&proxy.shared, cfg)?;
    let after = served_subject(port).await?;
    println!("    certificate served before the reload {before:?}, after {after:?} ({note})");
    check!(after.contains("pgsplit-renewed"), "served after the renewal: {after:?}");
    check!(raw_query(&mut tls, "SELECT 'still here'").await? == "still here", "the TLS connection after the reload");
    plain.simple_query("SELECT 1").await?;
    // A renewal that cannot be read leaves the running certificate in place.
    std::fs::write(dir.join("server.pem"), "not a certificate")?;
    let mut broken = crate::common::base_config(&env.cluster);
    tls_config(&mut broken, &dir, pgsplit::tls::ClientTlsMode::Allow);
    check!(pgsplit::ops::reload::apply(&proxy.shared, broken).is_err(), "an unreadable certificate was accepted");
    let kept = served_subject(port).await?;
    check!(kept.contains("pgsplit-renewed"), "after a failed reload: {kept:?}");
    proxy.stop();
    Ok(())
}
register!(certificates_reload_without_dropping_connections);

/// Turns TLS on (or off) on every server of the shared cluster, with `dir`'s certificate.
fn servers_ssl(env: &Env, dir: &Path, on: bool) -> Result<(), E> {
    use std::os::unix::fs::MetadataExt;
    for (i, node) in env.cluster.nodes.iter().enumerate() {
        if on {
            let owner = std::fs::metadata(&node.dir)?;
            for (from, to) in [("server.pem", "server.crt"), ("server.key", "server.key")] {
                let dest = node.dir.join(to);
                std::fs::copy(dir.join(from), &dest)?;
                std::os::unix::fs::chown(&dest, Some(owner.uid()), Some(owner.gid()))?;
                std::fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            }
        }
        let sql = if on { "ALTER SYSTEM SET ssl = on" } else { "ALTER SYSTEM RESET ssl" };
        tokio::task::block_in_place(|| -> Result<(), String> {
            env.cluster.psql(i, sql)?;
            env.cluster.psql(i, "SELECT pg_reload_conf()")?;
            Ok(())
        })?;
    }
    Ok(())
}

pub async fn servers_over_tls(env: &Env) -> R {
    use pgsplit::tls::upstream::ServerTlsMode;
    let dir = cert_dir("servers");
    make_certs(&dir, "127.0.0.1")?;
    servers_ssl(env, &dir, true)?;
    let result = servers_over_tls_checks(env, &dir).await;
    servers_ssl(env, &dir, false)?;
    result?;
    // The servers without TLS: "require" fails, "prefer" goes on in plaintext.
    let required = env.proxy_with(|c| c.tls.server_tls = ServerTlsMode::Require).await?;
    let refused = connect(&env.conn_string(required.addr.port())).await;
    check!(refused.is_err(), "server_tls = require reached a server without TLS");
    required.stop();
    let preferred = env.proxy_with(|c| c.tls.server_tls = ServerTlsMode::Prefer).await?;
    let c = connect(&env.conn_string(preferred.addr.port())).await?;
    let ssl = crate::common::simple_value(&c, "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await?;
    check!(ssl == "false", "prefer against servers without TLS: ssl {ssl}");
    preferred.stop();
    println!("    servers without TLS: server_tls = require refuses them, prefer goes on in plaintext");
    Ok(())
}
register!(servers_over_tls);

async fn servers_over_tls_checks(env: &Env, dir: &Path) -> R {
    use pgsplit::tls::upstream::ServerTlsMode;
    let ca = dir.join("ca.pem").display().to_string();
    // pgsplit's connections already there (the other proxies'), left out below.
    let others = tokio::task::block_in_place(|| {
        env.cluster.psql(0, "SELECT coalesce(string_agg(pid::text, ','), '0') FROM pg_stat_activity WHERE application_name LIKE 'pgsplit-%'")
    })?;
    let proxy = env
        .proxy_with(|c| {
            c.tls.server_tls = ServerTlsMode::VerifyFull;
            c.tls.server_ca = ca.clone();
        })
        .await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    let ssl_sql = "SELECT ssl::text || ' ' || inet_server_port() FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(crate::common::simple_value(&c, ssl_sql).await?);
    }
    c.batch_execute("BEGIN; INSERT INTO t (v) VALUES (-77)").await?;
    seen.insert(crate::common::simple_value(&c, ssl_sql).await?);
    c.batch_execute("ROLLBACK").await?;
    println!("    client traffic to the servers with server_tls = verify-full: {seen:?}");
    check!(seen.iter().all(|s| s.starts_with("true")), "a server connection without TLS: {seen:?}");
    check!(seen.iter().any(|s| s.ends_with(&env.primary_port().to_string())), "no primary connection seen: {seen:?}");
    // pgsplit's own connections (monitor, health checks) too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let own = tokio::task::block_in_place(|| {
        env.cluster.psql(
            0,
            &format!(
                "SELECT count(*) || ' ' || count(*) FILTER (WHERE s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
                 USING (pid) WHERE a.application_name LIKE 'pgsplit-%' AND a.client_port IS NOT NULL \
                 AND pid NOT IN ({others})"
            ),
        )
    })?;
    let (all, secured) = own.split_once(' ').unwrap_or(("0", ""));
    check!(all != "0" && all == secured, "pgsplit's own connections on TLS: {own}");
    println!("    pgsplit's own connections to the primary: {all}, all on TLS");
    proxy.stop();
    // A CA the servers' certificate does not chain to: refused.
    let other = cert_dir("other-ca");
    make_certs(&other, "127.0.0.1")?;
    let wrong = env
        .proxy_with(|c| {
            c.tls.server_tls = ServerTlsMode::VerifyFull;
            c.tls.server_ca = other.join("ca.pem").display().to_string();
        })
        .await?;
    let refused = connect(&env.conn_string(wrong.addr.port())).await;
    check!(refused.is_err(), "verify-full accepted a server certificate from another CA");
    wrong.stop();
    Ok(())
}

/// A cleartext password goes to a server only over TLS whose certificate pgsplit verified:
/// client traffic's logins and pgsplit's own (tokio-postgres) connections alike.
pub async fn cleartext_passwords_only_over_verified_tls(env: &Env) -> R {
    use pgsplit::tls::upstream::ServerTlsMode;
    let (user, password) = pgsplit::localcluster::CLEARTEXT_USER;
    let primary = env.cluster.primary().port;
    // Directly, the server asks for the password in the clear (pg_hba `password`) and takes it.
    let direct =
        connect(&format!("host=127.0.0.1 port={primary} user={user} password={password} dbname=postgres")).await?;
    direct.simple_query("SELECT 1").await?;
    let dir = cert_dir("cleartext");
    make_certs(&dir, "127.0.0.1")?;
    let ca = dir.join("ca.pem").display().to_string();
    // Without TLS, then with TLS that checks no certificate: refused, the password not sent.
    let plain = cleartext_login(env, ServerTlsMode::Disable, "").await?;
    servers_ssl(env, &dir, true)?;
    let result = async {
        let unverified = cleartext_login(env, ServerTlsMode::Require, "").await?;
        let verified = cleartext_login(env, ServerTlsMode::VerifyFull, &ca).await?;
        println!("    cleartext request: plain {plain:?}; require {unverified:?}; verify-full {verified:?}");
        for (mode, outcome) in [("disable", &plain), ("require", &unverified)] {
            check!(
                outcome.0.contains("28P01") && outcome.0.contains("cleartext"),
                "{mode}: a client's login answered a cleartext request: {}",
                outcome.0
            );
            check!(outcome.1.contains("cleartext"), "{mode}: pgsplit's own connection answered it: {}", outcome.1);
        }
        check!(verified == ("ok".into(), "ok".into()), "verify-full: {verified:?}");
        Ok::<(), E>(())
    }
    .await;
    servers_ssl(env, &dir, false)?;
    result
}
register!(cleartext_passwords_only_over_verified_tls);

/// A client's login and pgsplit's own connection as the cleartext role, with `mode`: "ok" or
/// the error of each.
async fn cleartext_login(
    env: &Env,
    mode: pgsplit::tls::upstream::ServerTlsMode,
    ca: &str,
) -> Result<(String, String), E> {
    let (user, password) = pgsplit::localcluster::CLEARTEXT_USER;
    let proxy = env
        .proxy_with(|c| {
            c.tls.server_tls = mode;
            c.tls.server_ca = ca.into();
            c.users = vec![pgsplit::config::UserConfig {
                name: user.into(),
                password: password.into(),
                password_file: None,
                password_env: None,
                server_user: None,
                server_password: None,
            }];
        })
        .await?;
    let port = proxy.addr.port();
    let client = match connect(&format!("host=127.0.0.1 port={port} user={user} dbname=postgres")).await {
        Ok(c) => match c.simple_query("/* pgsplit:primary */ SELECT 1").await {
            Ok(_) => "ok".to_string(),
            Err(e) => db_error(&e),
        },
        Err(e) => db_error(&e),
    };
    let tls = pgsplit::tls::upstream::PgTls(pgsplit::tls::upstream::connector(&proxy.shared.config.load().tls)?);
    let mut pg = tokio_postgres::Config::new();
    pg.host("127.0.0.1").port(env.cluster.primary().port).user(user).password(password).dbname("postgres");
    pg.ssl_mode(tls.ssl_mode());
    let own = match pgsplit::tls::sql_connect::connect(&pg, tls).await {
        Ok((c, _task)) => c.simple_query("SELECT 1").await.map(|_| "ok".to_string()).unwrap_or_else(|e| e.to_string()),
        Err(e) => std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string()),
    };
    proxy.stop();
    Ok((client, own))
}

fn db_error(e: &tokio_postgres::Error) -> String {
    let message = e.as_db_error().map_or(e.to_string(), |d| d.message().to_string());
    format!("{} {message}", crate::common::sqlstate(e))
}
