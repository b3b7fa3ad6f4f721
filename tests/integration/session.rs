//! Session state that follows the client across pooled server connections.

use std::collections::BTreeSet;

use crate::check;
use crate::common::{Env, R, connect, port_of, simple_value};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 4;

pub async fn settings_follow_the_client(env: &Env) -> R {
    let a = env.client().await?;
    let b = env.client().await?;
    a.batch_execute("SET application_name = 'client_a'; SET search_path TO pg_catalog, public").await?;
    b.batch_execute("SET statement_timeout = '4321ms'").await?;
    let mut ports = BTreeSet::new();
    for _ in 0..30 {
        let row = a
            .query_one(
                "SELECT current_setting('application_name'), current_setting('search_path'), inet_server_port()",
                &[],
            )
            .await?;
        let (app, path, port): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        check!(app == "client_a" && path == "pg_catalog, public", "client a sees {app:?} {path:?} on {port}");
        ports.insert(port);
        let t = simple_value(&b, "SHOW statement_timeout").await?;
        check!(t == "4321ms", "client b sees statement_timeout {t}");
        let app_b = simple_value(&b, "SHOW application_name").await?;
        check!(app_b != "client_a", "client a's setting leaked to client b");
    }
    check!(
        ports.len() == 2,
        "settings were only checked on {ports:?} (replicas {:?}); topology {:?}",
        env.replica_ports(),
        env.proxy.shared.cluster.load().nodes
    );
    a.batch_execute("RESET search_path").await?;
    let path = simple_value(&a, "SHOW search_path").await?;
    check!(path == "\"$user\", public", "after RESET search_path is {path}");
    a.batch_execute("DISCARD ALL").await?;
    let app = simple_value(&a, "SHOW application_name").await?;
    check!(app != "client_a", "after DISCARD ALL application_name is {app}");
    // Startup parameters are settings too.
    let c = crate::common::connect(&format!(
        "{} application_name=from_startup options='-c work_mem=7MB'",
        env.conn_string(env.proxy.addr.port())
    ))
    .await?;
    for _ in 0..4 {
        let v = simple_value(&c, "SELECT current_setting('application_name') || ' ' || current_setting('work_mem')")
            .await?;
        check!(v == "from_startup 7MB", "startup parameters not applied: {v}");
    }
    Ok(())
}
register!(settings_follow_the_client);

pub async fn set_config_is_replayed_not_pinned(env: &Env) -> R {
    // What Django sends on every new connection.
    let c = env.client().await?;
    c.query("SELECT set_config('TimeZone', 'Asia/Tokyo', false)", &[]).await?;
    c.simple_query("SELECT set_config('pgsplit_test.flag', 'on', false)").await?;
    let mut ports = BTreeSet::new();
    for _ in 0..30 {
        let row = c
            .query_one(
                "SELECT current_setting('TimeZone'), current_setting('pgsplit_test.flag'), inet_server_port()",
                &[],
            )
            .await?;
        let (tz, flag, port): (String, String, i32) = (row.get(0), row.get(1), row.get(2));
        check!(tz == "Asia/Tokyo" && flag == "on", "settings lost: {tz} {flag} on {port}");
        ports.insert(port);
    }
    let replicas: BTreeSet<i32> = env.replica_ports().into_iter().collect();
    check!(
        ports == replicas,
        "reads after set_config ran on {ports:?}: the session must not be pinned; topology {:?}",
        env.proxy.shared.cluster.load().nodes
    );
    Ok(())
}
register!(set_config_is_replayed_not_pinned);

pub async fn settings_in_rolled_back_transactions_are_forgotten(env: &Env) -> R {
    let c = env.client().await?;
    c.batch_execute("BEGIN; SET search_path TO rolled_back; ROLLBACK").await?;
    c.batch_execute("BEGIN").await?;
    c.batch_execute("SET work_mem = '9MB'").await?;
    c.batch_execute("COMMIT").await?;
    c.batch_execute("SET LOCAL work_mem = '1MB'").await.ok();
    for _ in 0..4 {
        let v = simple_value(&c, "SELECT current_setting('search_path') || ' ' || current_setting('work_mem')").await?;
        check!(v == "\"$user\", public 9MB", "settings after commit/rollback: {v}");
    }
    Ok(())
}
register!(settings_in_rolled_back_transactions_are_forgotten);

pub async fn session_state_pins_to_the_primary(env: &Env) -> R {
    for (setup, why) in [
        ("CREATE TEMP TABLE pin_probe (a int)", "temporary table"),
        ("SELECT pg_advisory_lock(4242)", "session advisory lock"),
        ("PREPARE pin_q AS SELECT inet_server_port()", "SQL PREPARE"),
        ("BEGIN; DECLARE pin_c CURSOR WITH HOLD FOR SELECT 1; COMMIT", "WITH HOLD cursor"),
        ("LISTEN pin_channel", "LISTEN"),
    ] {
        let c = env.client().await?;
        let before = port_of(&c, "SELECT inet_server_port()").await?;
        check!(env.replica_ports().contains(&before), "{why}: read before pinning ran on {before}");
        c.batch_execute(setup).await.map_err(|e| format!("{setup}: {e}"))?;
        for _ in 0..4 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(p == env.primary_port(), "{why}: read after pinning ran on {p}");
        }
    }
    // The pinned state is usable: the same server connection every time.
    let c = env.client().await?;
    c.batch_execute("CREATE TEMP TABLE pin_rows (a int); INSERT INTO pin_rows VALUES (1), (2)").await?;
    let n = simple_value(&c, "SELECT count(*) FROM pin_rows").await?;
    check!(n == "2", "temp table has {n} rows");
    let p = port_of(&c, "EXECUTE pin_q").await.err();
    check!(p.is_some(), "another session's prepared statement must not be visible");
    Ok(())
}
register!(session_state_pins_to_the_primary);

pub async fn parameter_status_looks_like_a_primary(env: &Env) -> R {
    // libpq's target_session_attrs=read-write checks in_hot_standby and
    // default_transaction_read_only from ParameterStatus: pgsplit must pass.
    let out = tokio::process::Command::new("psql")
        .arg(format!("{} target_session_attrs=read-write", env.conn_string(env.proxy.addr.port())))
        .args(["-X", "-A", "-t", "-c", "SELECT inet_server_port()", "-c", "SELECT pg_is_in_recovery()"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    check!(out.status.success(), "psql read-write failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    check!(lines.len() == 2, "unexpected output {stdout}");
    Ok(())
}
register!(parameter_status_looks_like_a_primary);

pub async fn role_changes_never_leak_to_other_clients(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.pool.size = 1).await?;
    let url = env.conn_string(proxy.addr.port());
    let admin = connect(&url).await?;
    admin
        .batch_execute("DO $$ BEGIN CREATE ROLE pgsplit_low NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .await?;
    env.caught_up().await?;
    let a = connect(&url).await?;
    a.batch_execute("SET ROLE pgsplit_low").await?;
    for _ in 0..4 {
        let who = simple_value(&a, "/* pgsplit:primary */ SELECT current_user").await?;
        check!(who == "pgsplit_low", "client a runs as {who}");
    }
    a.batch_execute("SET SESSION AUTHORIZATION pgsplit_low").await?;
    drop(a);
    // One server connection per server: b gets what a used, and must not be pgsplit_low.
    let b = connect(&url).await?;
    for _ in 0..4 {
        let who = simple_value(&b, "/* pgsplit:primary */ SELECT current_user || ' ' || session_user").await?;
        check!(who == "postgres postgres", "client b runs as {who}");
        let who = simple_value(&b, "SELECT current_user || ' ' || session_user").await?;
        check!(who == "postgres postgres", "client b reads as {who}");
    }
    proxy.stop();
    Ok(())
}
register!(role_changes_never_leak_to_other_clients);
