//! The operator's tools: the admin console from psql and tokio-postgres, hot reload of a
//! running pgsplit binary (SIGHUP and RELOAD) under pgbench load, the Prometheus exposition
//! scraped by a real Prometheus and checked by promtool, the Grafana dashboard.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::SimpleQueryMessage;

use crate::check;
use crate::common::{Env, R, connect, port_of, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 13;

type E = Box<dyn std::error::Error + Send + Sync>;

/// The rows of a console command, as (column -> value) maps.
async fn console(port: u16, user: &str, cmd: &str) -> Result<Vec<std::collections::HashMap<String, String>>, E> {
    let c = connect(&format!("host=127.0.0.1 port={port} user={user} dbname=pgsplit")).await?;
    rows(&c, cmd).await
}

async fn rows(c: &tokio_postgres::Client, cmd: &str) -> Result<Vec<std::collections::HashMap<String, String>>, E> {
    let mut out = Vec::new();
    for m in c.simple_query(cmd).await? {
        if let SimpleQueryMessage::Row(r) = m {
            let mut row = std::collections::HashMap::new();
            for (i, col) in r.columns().iter().enumerate() {
                row.insert(col.name().to_string(), r.get(i).unwrap_or("").to_string());
            }
            out.push(row);
        }
    }
    Ok(out)
}

pub async fn admin_console(env: &Env) -> R {
    let proxy = env
        .proxy_with(|c| {
            c.admin.users = vec!["postgres".into()];
            c.admin.trust = true;
        })
        .await?;
    let port = proxy.addr.port();
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    let app = connect(&env.conn_string(port)).await?;
    for _ in 0..5 {
        app.simple_query("SELECT 1").await?;
    }
    app.batch_execute("INSERT INTO t (v) VALUES (7)").await?;
    let admin = connect(&format!("host=127.0.0.1 port={port} user=postgres dbname=pgsplit")).await?;
    // Until every server has been probed once its LSN and timeline are unknown.
    let t0 = Instant::now();
    let servers = loop {
        let servers = rows(&admin, "SHOW SERVERS").await?;
        if servers.iter().all(|r| !r["lsn"].is_empty()) || t0.elapsed() > Duration::from_secs(10) {
            break servers;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    check!(servers.len() == 3, "SHOW SERVERS: {servers:?}");
    check!(servers.iter().filter(|r| r["role"] == "replica" && r["in_rotation"] == "true").count() == 2, "{servers:?}");
    check!(
        servers.iter().all(|r| r["state"] == "up" && !r["lsn"].is_empty() && !r["timeline"].is_empty()),
        "{servers:?}"
    );
    let pools = rows(&admin, "SHOW POOLS").await?;
    check!(pools.iter().any(|r| r["user"] == "postgres" && r["database"] == "postgres"), "SHOW POOLS: {pools:?}");
    let clients = rows(&admin, "show clients;").await?;
    check!(clients.iter().any(|r| r["database"] == "postgres"), "SHOW CLIENTS: {clients:?}");
    let stats = rows(&admin, "SHOW STATS").await?;
    let total: u64 = stats.iter().map(|r| r["queries"].parse::<u64>().unwrap_or(0)).sum();
    check!(total >= 6, "SHOW STATS counts {total} queries: {stats:?}");
    let routes = rows(&admin, "SHOW ROUTES").await?;
    check!(routes.iter().any(|r| r["role"] == "replica" && r["reason"] == "read"), "SHOW ROUTES: {routes:?}");
    check!(routes.iter().any(|r| r["role"] == "primary" && r["reason"] == "write"), "SHOW ROUTES: {routes:?}");
    let config = rows(&admin, "SHOW CONFIG").await?;
    check!(config.iter().any(|r| r["key"] == "routing.max_lag_bytes"), "SHOW CONFIG: {config:?}");
    check!(
        config.iter().filter(|r| r["key"].contains("password")).all(|r| r["value"] == "********"),
        "a password shown"
    );
    // PAUSE drains a replica: no new reads there; RESUME brings it back.
    let r1 = env.cluster.nodes[1].addr();
    admin.simple_query(&format!("PAUSE {r1}")).await?;
    let paused = rows(&admin, "SHOW SERVERS").await?;
    check!(
        paused.iter().any(|r| r["server"] == r1 && r["paused"] == "true" && r["out_reason"] == "paused by operator"),
        "{paused:?}"
    );
    for _ in 0..10 {
        let p = port_of(&app, "SELECT inet_server_port()").await?;
        check!(p == env.replica_ports()[1], "a read went to the paused replica ({p})");
    }
    admin.simple_query(&format!("RESUME '{r1}'")).await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    // Errors: unknown commands and servers, the primary, non-admin users.
    let e = admin.simple_query("SHOW NOTHING").await.err().ok_or("SHOW NOTHING succeeded")?;
    check!(sqlstate(&e) == "42601", "unknown command: {e}");
    let e = admin.simple_query("PAUSE 127.0.0.1:1").await.err().ok_or("PAUSE of no server succeeded")?;
    check!(sqlstate(&e) == "42704", "unknown server: {e}");
    let e = admin
        .simple_query(&format!("PAUSE {}", env.cluster.primary().addr()))
        .await
        .err()
        .ok_or("paused the primary")?;
    check!(sqlstate(&e) == "0A000", "pause primary: {e}");
    let md5 = pgsplit::localcluster::MD5_USER.0;
    let refused = connect(&format!("host=127.0.0.1 port={port} user={md5} dbname=pgsplit")).await;
    match refused {
        Err(e) => check!(sqlstate(&e) == "42501", "non-admin: {e}"),
        Ok(_) => return Err("a non-admin user got into the console".into()),
    }
    // psql, as an operator would.
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-c", "SHOW SERVERS", &format!("host=127.0.0.1 port={port} user=postgres dbname=pgsplit")])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    check!(
        out.status.success() && text.contains("primary") && text.contains("(3 rows)"),
        "psql: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop();
    Ok(())
}
register!(admin_console);

fn config_file(env: &Env, listen: u16, metrics: u16, max_lag_bytes: u64, pool: usize) -> String {
    let replicas: Vec<String> = env.cluster.replica_addrs().iter().map(|r| format!("\"{r}\"")).collect();
    format!(
        "listen = \"127.0.0.1:{listen}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_level = \"info\"\n\
         [servers]\nprimary = \"{}\"\nreplicas = [{}]\n\
         [pool]\nsize = {pool}\n\
         [routing]\nmax_lag_bytes = {max_lag_bytes}\nread_your_writes = \"off\"\n\
         [monitor]\ninterval_ms = 100\n\
         [admin]\nusers = [\"postgres\"]\ntrust = true\n",
        env.cluster.primary().addr(),
        replicas.join(", ")
    )
}

async fn config_value(port: u16, key: &str) -> Result<String, E> {
    let rows = console(port, "postgres", "SHOW CONFIG").await?;
    Ok(rows.iter().find(|r| r["key"] == key).map(|r| r["value"].clone()).unwrap_or_default())
}

pub async fn reload_under_load(env: &Env) -> R {
    let dir = std::env::temp_dir().join(format!("pgsplit-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("pgsplit.toml");
    let (listen, metrics) = (pgsplit::localcluster::free_port()?, pgsplit::localcluster::free_port()?);
    std::fs::write(&file, config_file(env, listen, metrics, 1_000_000, 5))?;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgsplit"))
        .args(["--config", file.to_str().unwrap_or_default()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("no pid")?;
    let result = async {
        // Wait for it to listen.
        let t0 = Instant::now();
        while connect(&format!("host=127.0.0.1 port={listen} user=postgres dbname=postgres")).await.is_err() {
            check!(t0.elapsed() < Duration::from_secs(20), "pgsplit did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // pgbench's tables, made directly on the primary.
        crate::common::pgbench_init(env.cluster.primary().port).await?;
        env.caught_up().await?;
        // pgbench read-write load through it for the whole test.
        let bench = tokio::process::Command::new("pgbench")
            .args([
                "-n",
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                "6",
                "-M",
                "extended",
                "-h",
                "127.0.0.1",
                "-p",
                &listen.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .output();
        let changes = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            // A threshold and the pool size, by SIGHUP.
            std::fs::write(&file, config_file(env, listen, metrics, 2_000_000, 8))?;
            tokio::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().await?;
            let t = Instant::now();
            while config_value(listen, "routing.max_lag_bytes").await? != "2000000" {
                check!(t.elapsed() < Duration::from_secs(5), "SIGHUP did not apply the new threshold");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("    SIGHUP applied in {} ms", t.elapsed().as_millis());
            let pools = console(listen, "postgres", "SHOW POOLS").await?;
            check!(pools.iter().all(|r| r["size"] == "8"), "pool size after reload: {pools:?}");
            // A broken file: refused, the running configuration stays.
            std::fs::write(&file, "listen = \"127.0.0.1:1\"\n[routing]\nmax_lag_bytes = \"lots\"\n")?;
            tokio::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().await?;
            let admin = connect(&format!("host=127.0.0.1 port={listen} user=postgres dbname=pgsplit")).await?;
            let e = admin.simple_query("RELOAD").await.err().ok_or("a broken file was accepted")?;
            let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_default();
            check!(sqlstate(&e) == "F0000" && msg.contains("max_lag_bytes"), "RELOAD of a broken file: {msg}");
            check!(
                config_value(listen, "routing.max_lag_bytes").await? == "2000000",
                "the broken file changed the config"
            );
            // RELOAD of a good file from the console.
            std::fs::write(&file, config_file(env, listen, metrics, 3_000_000, 8))?;
            admin.simple_query("RELOAD").await?;
            check!(config_value(listen, "routing.max_lag_bytes").await? == "3000000", "RELOAD did not apply");
            Ok::<_, E>(())
        };
        let (bench, changes) = tokio::join!(bench, changes);
        changes?;
        let bench = bench?;
        let out = String::from_utf8_lossy(&bench.stdout);
        let err = String::from_utf8_lossy(&bench.stderr);
        check!(bench.status.success(), "pgbench failed during reloads: {out}\n{err}");
        let failed = out.lines().find(|l| l.contains("failed")).unwrap_or("");
        check!(!out.contains("aborted") && (failed.is_empty() || failed.contains(" 0 (")), "pgbench saw errors: {out}");
        let tps = out.lines().find(|l| l.starts_with("tps")).unwrap_or("");
        println!("    pgbench during three reloads: {tps}");
        // Still serving.
        let c = connect(&format!("host=127.0.0.1 port={listen} user=postgres dbname=postgres")).await?;
        c.simple_query("SELECT 1").await?;
        Ok::<_, E>(())
    }
    .await;
    let _ = child.start_kill();
    let mut log = String::new();
    if let Some(mut e) = child.stdout.take() {
        let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut log)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        check!(log.contains("configuration reload refused"), "the refused reload was not logged:\n{log}");
    }
    result.map_err(|e| format!("{e}\npgsplit log:\n{log}").into())
}
register!(reload_under_load);

async fn http_get(addr: &str, path: &str) -> Result<String, E> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(body))
}

pub async fn prometheus_scrapes_the_series(env: &Env) -> R {
    let prom = std::path::Path::new("/usr/bin/prometheus");
    check!(prom.exists(), "no Prometheus: run scripts/test (apt-get install prometheus)");
    let proxy = env.proxy_with(|c| c.metrics_listen = "127.0.0.1:0".into()).await?;
    let metrics = proxy.metrics_addr.ok_or("no metrics address")?;
    // promtool on the exposition.
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    for _ in 0..20 {
        c.simple_query("SELECT 1").await?;
    }
    c.batch_execute("INSERT INTO t (v) VALUES (1)").await?;
    let _ = c.simple_query("SELECT 1/0").await;
    let body = http_get(&metrics.to_string(), "/metrics").await?;
    let mut check = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = check.stdin.take() {
        stdin.write_all(body.as_bytes()).await?;
    }
    let out = check.wait_with_output().await?;
    let lint = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    check!(out.status.success(), "promtool check metrics: {lint}");
    // A real Prometheus scraping every 200 ms.
    let dir = std::env::temp_dir().join(format!("pgsplit-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = pgsplit::localcluster::free_port()?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 200ms\nscrape_configs:\n  - job_name: pgsplit\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )?;
    let mut server = tokio::process::Command::new(prom)
        .args([
            &format!("--config.file={}", dir.join("prometheus.yml").display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let api = format!("127.0.0.1:{port}");
    let result = async {
        let query = |q: &str| format!("/api/v1/query?query={}", encode(q));
        let value = |body: &str| -> f64 {
            // "value":[<time>,"<v>"] for the first result.
            body.split("\"value\":[").nth(1).and_then(|v| v.split('"').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
        };
        let routed = "sum(pgsplit_routed_total{role=\"replica\"})";
        let t0 = Instant::now();
        let first = loop {
            let body = http_get(&api, &query(routed)).await.unwrap_or_default();
            if body.contains("\"success\"") && value(&body) >= 20.0 {
                break value(&body);
            }
            check!(t0.elapsed() < Duration::from_secs(30), "Prometheus never scraped pgsplit_routed_total: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // The series move under load.
        for _ in 0..50 {
            c.simple_query("SELECT 1").await?;
        }
        let t1 = Instant::now();
        loop {
            let body = http_get(&api, &query(routed)).await?;
            if value(&body) >= first + 50.0 {
                break;
            }
            check!(t1.elapsed() < Duration::from_secs(10), "pgsplit_routed_total did not move: {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for series in [
            "pgsplit_replica_lag_bytes",
            "pgsplit_replica_lag_seconds",
            "pgsplit_server_up",
            "pgsplit_server_in_rotation",
            "pgsplit_server_out_of_rotation",
            "pgsplit_pool_connections",
            "pgsplit_pool_waiting_clients",
            "pgsplit_pool_checkout_wait_seconds_bucket",
            "pgsplit_query_duration_seconds_bucket",
            "pgsplit_client_connections",
            "pgsplit_errors_total",
            "pgsplit_monitor_poll_failures_total",
            "pgsplit_config_reloads_total",
            "pgsplit_primary_wal_insert_lsn_bytes",
        ] {
            let body = http_get(&api, &query(&format!("count({series})"))).await?;
            check!(value(&body) >= 1.0, "Prometheus has no {series}: {body}");
        }
        // Every expression of the Grafana dashboard is valid PromQL that Prometheus evaluates.
        let dashboard: serde_json::Value = serde_json::from_str(include_str!("../../dashboards/pgsplit.json"))?;
        let mut exprs = 0;
        for p in dashboard["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or("").replace("$__rate_interval", "1m").replace("$__range", "5m");
                let body = http_get(&api, &query(&expr)).await?;
                check!(body.contains("\"status\":\"success\""), "dashboard expression {expr}: {body}");
                exprs += 1;
            }
        }
        println!(
            "    Prometheus (real, 200 ms scrapes) has every series; replica reads counted {first} and moved under load; \
             {exprs} dashboard expressions evaluate"
        );
        Ok::<_, E>(())
    }
    .await;
    let _ = server.start_kill();
    let _ = server.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    proxy.stop();
    result
}
register!(prometheus_scrapes_the_series);

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// The dashboard's structure; its expressions are evaluated by Prometheus in
/// `prometheus_scrapes_the_series`.
pub async fn grafana_dashboard_is_valid(env: &Env) -> R {
    let text = include_str!("../../dashboards/pgsplit.json");
    let v: serde_json::Value = serde_json::from_str(text)?;
    check!(v["title"] == "pgsplit" && v["uid"] == "pgsplit", "title/uid");
    let panels = v["panels"].as_array().ok_or("no panels")?;
    check!(panels.len() >= 6, "{} panels", panels.len());
    let exported = env.proxy.shared.metrics.names();
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or("?");
        check!(ids.insert(p["id"].as_i64().unwrap_or(-1)), "panel ids repeat ({title})");
        check!(p["description"].as_str().is_some_and(|d| d.len() > 40), "panel {title} has no description");
        check!(p["gridPos"]["w"].as_i64().is_some(), "panel {title} has no position");
        let targets = p["targets"].as_array().ok_or(format!("panel {title} has no targets"))?;
        for t in targets {
            let expr = t["expr"].as_str().ok_or(format!("panel {title}: a target without expr"))?;
            let named = exported.iter().any(|k| expr.contains(k.as_str()));
            check!(named || expr.contains("pgsplit_failovers_total"), "panel {title}: {expr} names no exported metric");
        }
    }
    Ok(())
}
register!(grafana_dashboard_is_valid);

/// A reload that removes a replica and adds it back: reads stop going there at once, clients
/// in flight keep their connections, and the new entry takes reads once probed fit.
pub async fn reload_removes_and_adds_replicas(env: &Env) -> R {
    let proxy = env.proxy_with(|_| {}).await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.batch_execute("BEGIN").await?;
    let mut config = (*proxy.shared.config.load_full()).clone();
    let r1 = env.cluster.nodes[1].addr();
    config.servers.replicas.retain(|r| r.addr() != r1);
    let msg = pgsplit::ops::reload::apply(&proxy.shared, config.clone())?;
    check!(msg.contains("replicas removed"), "{msg}");
    for _ in 0..10 {
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "inside the transaction opened before the reload: {p}");
    }
    c.batch_execute("COMMIT").await?;
    for _ in 0..10 {
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.replica_ports()[1], "a read went to {p} after its replica was removed");
    }
    config.servers.replicas.push(r1.clone().into());
    let msg = pgsplit::ops::reload::apply(&proxy.shared, config)?;
    check!(msg.contains("replicas added"), "{msg}");
    let t0 = Instant::now();
    loop {
        let t = proxy.shared.cluster.load();
        if t.nodes.iter().any(|n| *n.addr == *r1 && !n.removed && n.in_rotation) {
            break;
        }
        check!(t0.elapsed() < Duration::from_secs(15), "the re-added replica never took reads: {:?}", t.nodes);
        drop(t);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(port_of(&c, "SELECT inet_server_port()").await?);
    }
    check!(seen.len() == 2 && !seen.contains(&env.primary_port()), "reads after re-adding ran on {seen:?}");
    // A reload that changes the primary is refused.
    let mut bad = (*proxy.shared.config.load_full()).clone();
    bad.servers.primary = "127.0.0.1:1".into();
    check!(pgsplit::ops::reload::apply(&proxy.shared, bad).is_err(), "a reload moved the primary");
    proxy.stop();
    Ok(())
}
register!(reload_removes_and_adds_replicas);
