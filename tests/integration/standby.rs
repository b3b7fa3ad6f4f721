//! Routing, second pass: statements a standby refuses never reach one, reads sqlparser cannot
//! parse still reach the replicas, set_config with bound parameters is replayed instead of
//! pinning, and PostgreSQL's own answers to duplicate statement names and aborted transactions.
//! Each in the simple and the extended protocol.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::check;
use crate::common::{Env, R, connect, port_of, simple_value, sqlstate};
use crate::differential::login;
use crate::protocol::{bind_execute_named, parse, read_until_ready};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 2;

/// The port of the server that ran `sql` in the extended protocol.
async fn port_extended(c: &tokio_postgres::Client, sql: &str) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    Ok(c.query_one(sql, &[]).await.map_err(|e| format!("{sql}: {e}"))?.get(0))
}

pub async fn serializable_read_only_transactions_run_on_the_primary(env: &Env) -> R {
    let c = env.client().await?;
    for begin in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
    ] {
        // Simple protocol.
        c.batch_execute(begin).await.map_err(|e| format!("{begin}: {e}"))?;
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "{begin}: ran on {p}");
        c.batch_execute("COMMIT").await?;
        // Extended protocol.
        c.execute(begin, &[]).await.map_err(|e| format!("{begin} (extended): {e}"))?;
        let p = port_extended(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "{begin} (extended): ran on {p}");
        c.execute("COMMIT", &[]).await?;
    }
    // A READ ONLY transaction that is not serializable still runs on a replica.
    c.batch_execute("BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ").await?;
    let p = port_of(&c, "SELECT inet_server_port()").await?;
    check!(env.replica_ports().contains(&p), "repeatable read read-only transaction ran on {p}");
    c.batch_execute("COMMIT").await?;
    Ok(())
}
register!(serializable_read_only_transactions_run_on_the_primary);

pub async fn serializable_first_statement_moves_a_fresh_transaction(env: &Env) -> R {
    let c = env.client().await?;
    for (set, protocol) in [
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "simple"),
        ("SET TRANSACTION READ WRITE", "simple"),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "extended"),
    ] {
        c.batch_execute("BEGIN READ ONLY").await?;
        if protocol == "simple" {
            c.batch_execute(set).await.map_err(|e| format!("{set}: {e}"))?;
        } else {
            c.execute(set, &[]).await.map_err(|e| format!("{set} (extended): {e}"))?;
        }
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "after {set}: ran on {p}");
        let iso = simple_value(&c, "SHOW transaction_isolation").await?;
        let ro = simple_value(&c, "SHOW transaction_read_only").await?;
        let want = if set.contains("SERIALIZABLE") { ("serializable", "on") } else { ("read committed", "off") };
        check!((iso.as_str(), ro.as_str()) == want, "after {set}: isolation {iso}, read only {ro}");
        c.batch_execute("COMMIT").await?;
    }
    // Both in one string.
    let msgs = c
        .simple_query("BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT inet_server_port()")
        .await?;
    let port: Option<i32> = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
        _ => None,
    });
    check!(port == Some(env.primary_port()), "one-string serializable transaction ran on {port:?}");
    c.batch_execute("COMMIT").await?;
    Ok(())
}
register!(serializable_first_statement_moves_a_fresh_transaction);

pub async fn transaction_modes_outside_transactions_never_fail(env: &Env) -> R {
    let c = env.client().await?;
    for sql in [
        "SET transaction_read_only = off",
        "SET transaction_isolation = 'serializable'",
        "SET TRANSACTION READ WRITE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
        "SET default_transaction_read_only = off",
    ] {
        for _ in 0..3 {
            c.batch_execute(sql).await.map_err(|e| format!("{sql}: {e}"))?;
            c.execute(sql, &[]).await.map_err(|e| format!("{sql} (extended): {e}"))?;
        }
    }
    // Reads still go to replicas afterwards: none of these changed the session's isolation.
    let p = port_of(&c, "SELECT inet_server_port()").await?;
    check!(env.replica_ports().contains(&p), "read after transaction modes ran on {p}");
    Ok(())
}
register!(transaction_modes_outside_transactions_never_fail);

pub async fn serializable_sessions_read_on_the_primary(env: &Env) -> R {
    let c = env.client().await?;
    for (set, reset) in [
        ("SET default_transaction_isolation = serializable", "RESET default_transaction_isolation"),
        ("SELECT set_config('default_transaction_isolation', 'serializable', false)", "RESET ALL"),
        (
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ),
    ] {
        c.batch_execute(set).await.map_err(|e| format!("{set}: {e}"))?;
        for _ in 0..4 {
            let p = port_of(&c, "SELECT inet_server_port()").await.map_err(|e| format!("after {set}: {e}"))?;
            check!(p == env.primary_port(), "after {set}: read ran on {p}");
            let p = port_extended(&c, "SELECT inet_server_port()").await?;
            check!(p == env.primary_port(), "after {set}: extended read ran on {p}");
        }
        // JDBC's pattern: the session default, then BEGIN READ ONLY.
        c.batch_execute("BEGIN READ ONLY").await?;
        let p = port_of(&c, "SELECT inet_server_port()").await.map_err(|e| format!("{set} + BEGIN READ ONLY: {e}"))?;
        check!(p == env.primary_port(), "{set} + BEGIN READ ONLY ran on {p}");
        c.batch_execute("COMMIT").await?;
        c.batch_execute(reset).await?;
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(env.replica_ports().contains(&p), "after {reset}: read ran on {p}");
    }
    // A connection left SERIALIZABLE by default on a standby (the SET ran there) and reused for
    // a session whose settings include a set_config: the replay must not fail.
    for _ in 0..5 {
        c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE").await?;
        c.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
        c.batch_execute("SELECT set_config('TimeZone', 'UTC', false)").await?;
        for _ in 0..6 {
            let p = port_of(&c, "SELECT inet_server_port()")
                .await
                .map_err(|e| format!("replay after serializable: {e}"))?;
            check!(env.replica_ports().contains(&p), "read committed again, a read ran on {p}");
        }
    }
    // From the startup packet.
    let conn =
        format!("{} options='-c default_transaction_isolation=serializable'", env.conn_string(env.proxy.addr.port()));
    let s = connect(&conn).await?;
    for _ in 0..4 {
        let p = port_of(&s, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "serializable from startup options: read ran on {p}");
    }
    Ok(())
}
register!(serializable_sessions_read_on_the_primary);

pub async fn reads_the_parser_cannot_read_reach_replicas(env: &Env) -> R {
    let c = env.client().await?;
    let reads = [
        "TABLE portview",
        "TABLE portview LIMIT 1",
        "SELECT inet_server_port() FROM t LIMIT 1 FOR READ ONLY",
        // sqlparser has no EXCLUDE in window frames.
        "SELECT inet_server_port(), sum(v) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND 2 FOLLOWING EXCLUDE CURRENT ROW) FROM t LIMIT 1",
        "SELECT inet_server_port() FROM (SELECT pg_current_snapshot(), txid_current_snapshot()) x",
        "SELECT inet_server_port(), last_value FROM s",
    ];
    for sql in reads {
        for _ in 0..3 {
            let p = port_of(&c, sql).await.map_err(|e| format!("{sql}: {e}"))?;
            check!(env.replica_ports().contains(&p), "{sql} ran on {p}");
            let p = port_extended(&c, sql).await?;
            check!(env.replica_ports().contains(&p), "{sql} (extended) ran on {p}");
        }
    }
    // Unparsed statements that might write still go to the primary: a function that writes
    // (known only to the catalog), a view that writes, a locking clause.
    let writes = [
        "SELECT bump(), sum(v) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE TIES) FROM t LIMIT 1",
        "TABLE writing_view",
        "SELECT inet_server_port() FROM t WHERE id = 1 FOR NO KEY UPDATE",
    ];
    for sql in writes {
        let p = port_of(&c, sql).await.map_err(|e| format!("{sql}: {e}"))?;
        check!(p == env.primary_port(), "{sql} ran on {p}");
        let p = port_extended(&c, sql).await?;
        check!(p == env.primary_port(), "{sql} (extended) ran on {p}");
    }
    Ok(())
}
register!(reads_the_parser_cannot_read_reach_replicas);

pub async fn bound_set_config_is_replayed_not_pinned(env: &Env) -> R {
    let c = env.client().await?;
    // Django's TimeZone set-up with server-side binding, and a fully bound one.
    let tz: String = c.query_one("SELECT set_config('TimeZone', $1, false)", &[&"Asia/Tokyo"]).await?.get(0);
    check!(tz == "Asia/Tokyo", "set_config returned {tz}");
    c.query_one("SELECT set_config($1, $2, false)", &[&"application_name", &"bound-app"]).await?;
    let mut replicas = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let row = c
            .query_one(
                "SELECT inet_server_port(), current_setting('TimeZone'), current_setting('application_name')",
                &[],
            )
            .await?;
        let (port, tz, app): (i32, String, String) = (row.get(0), row.get(1), row.get(2));
        check!(env.replica_ports().contains(&port), "a read after a bound set_config ran on {port}: pinned?");
        check!(tz == "Asia/Tokyo" && app == "bound-app", "on {port}: TimeZone {tz}, application_name {app}");
        replicas.insert(port);
        // Other server connections get the setting replayed too (the simple protocol as well).
        let v = simple_value(&c, "SELECT current_setting('TimeZone')").await?;
        check!(v == "Asia/Tokyo", "simple protocol: TimeZone {v}");
    }
    check!(replicas.len() == 2, "reads used replicas {replicas:?}");
    // A transaction-local one changes nothing after the transaction.
    c.batch_execute("BEGIN").await?;
    c.query_one("SELECT set_config('TimeZone', $1, true)", &[&"UTC"]).await?;
    c.batch_execute("COMMIT").await?;
    let v = simple_value(&c, "SHOW TimeZone").await?;
    check!(v == "Asia/Tokyo", "after a local set_config TimeZone is {v}");
    // One pgsplit cannot read (an integer-typed value) pins, to stay correct.
    let pinned = env.client().await?;
    pinned.query_one("SELECT set_config('app.n', $1::int::text, false)", &[&5i32]).await?;
    for _ in 0..4 {
        let p = port_of(&pinned, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "after an unreadable set_config: read ran on {p}");
        let v = simple_value(&pinned, "SELECT current_setting('app.n')").await?;
        check!(v == "5", "app.n = {v}");
    }
    Ok(())
}
register!(bound_set_config_is_replayed_not_pinned);

/// The same bytes sent directly to the primary and through pgsplit get the same answers.
async fn same_answers(
    env: &Env,
    setup: &[u8],
    probe: &[u8],
) -> Result<Vec<(u8, String)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut answers = Vec::new();
    for port in [env.cluster.primary().port, env.proxy.addr.port()] {
        let mut s = login(port).await?;
        s.write_all(setup).await?;
        read_until_ready(&mut s).await?;
        s.write_all(probe).await?;
        let msgs = read_until_ready(&mut s).await?;
        let summary: Vec<(u8, String)> = msgs
            .into_iter()
            .filter(|(t, _)| !matches!(t, b'N' | b'S'))
            .map(|(t, body)| {
                let detail = if t == b'E' {
                    format!(
                        "{} {}",
                        pgsplit::protocol::error_field(&body, b'C').unwrap_or(""),
                        pgsplit::protocol::error_field(&body, b'M').unwrap_or("")
                    )
                } else {
                    String::new()
                };
                (t, detail)
            })
            .collect();
        answers.push(summary);
    }
    let (direct, proxied) = (&answers[0], &answers[1]);
    if direct != proxied {
        return Err(format!("direct {direct:?}\nthrough pgsplit {proxied:?}").into());
    }
    Ok(answers.swap_remove(0))
}

fn sync(b: &mut BytesMut) {
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
}

pub async fn duplicate_statement_names_and_aborted_transactions(env: &Env) -> R {
    // Parse of a name the client still has: 42P05, after what precedes it ran.
    let mut setup = BytesMut::new();
    parse(&mut setup, "s1", "SELECT 1");
    sync(&mut setup);
    let mut probe = BytesMut::new();
    parse(&mut probe, "s2", "SELECT 2");
    bind_execute_named(&mut probe, "s2");
    parse(&mut probe, "s1", "SELECT 3");
    bind_execute_named(&mut probe, "s1");
    sync(&mut probe);
    let answer = same_answers(env, &setup, &probe).await?;
    check!(
        answer.iter().any(|(t, d)| *t == b'E' && d.starts_with("42P05") && d.contains("\"s1\"")),
        "no 42P05 for s1: {answer:?}"
    );
    // s1 still is the first statement, s2 exists; a statement that failed to parse does not.
    let mut probe = BytesMut::new();
    parse(&mut probe, "bad", "SELEC 1");
    sync(&mut probe);
    parse(&mut probe, "bad", "SELECT 4");
    bind_execute_named(&mut probe, "bad");
    sync(&mut probe);
    same_answers(env, &setup, &probe).await?;
    // DEALLOCATE in an aborted transaction: 25P02.
    let mut probe = BytesMut::new();
    for q in ["BEGIN", "SELECT 1/0", "DEALLOCATE s1", "ROLLBACK", "DEALLOCATE s1"] {
        let mut m = BytesMut::new();
        m.extend_from_slice(b"Q");
        m.extend_from_slice(&((4 + q.len() + 1) as i32).to_be_bytes());
        m.extend_from_slice(q.as_bytes());
        m.extend_from_slice(&[0]);
        probe.extend_from_slice(&m);
    }
    let mut answers = Vec::new();
    for port in [env.cluster.primary().port, env.proxy.addr.port()] {
        let mut s = login(port).await?;
        s.write_all(&setup).await?;
        read_until_ready(&mut s).await?;
        s.write_all(&probe).await?;
        let mut codes = Vec::new();
        for _ in 0..5 {
            let msgs = read_until_ready(&mut s).await?;
            codes.push(
                msgs.iter()
                    .find(|(t, _)| *t == b'E')
                    .map(|(_, b)| pgsplit::protocol::error_field(b, b'C').unwrap_or("?").to_string())
                    .unwrap_or_else(|| "ok".into()),
            );
        }
        answers.push(codes);
    }
    check!(answers[0] == answers[1], "DEALLOCATE answers: direct {:?}, pgsplit {:?}", answers[0], answers[1]);
    check!(answers[1][2] == "25P02", "DEALLOCATE in an aborted transaction: {:?}", answers[1]);
    let _ = sqlstate;
    Ok(())
}
register!(duplicate_statement_names_and_aborted_transactions);
