//! Each routing rule, proven on the real servers: the statements report the port of the
//! server that ran them (inet_server_port()), and writes would fail on a replica anyway.

use std::collections::BTreeSet;

use crate::check;
use crate::common::{Env, R, port_of, simple_value};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 1;

/// Asserts every statement ran on the primary.
async fn on_primary(env: &Env, sqls: &[&str]) -> R {
    let c = env.client().await?;
    for sql in sqls {
        let port = port_of(&c, sql).await.map_err(|e| format!("{sql}: {e}"))?;
        check!(port == env.primary_port(), "{sql} ran on {port}, not the primary {}", env.primary_port());
    }
    Ok(())
}

/// Asserts every statement ran on a replica.
async fn on_replica(env: &Env, sqls: &[&str]) -> R {
    let c = env.client().await?;
    for sql in sqls {
        let port = port_of(&c, sql).await.map_err(|e| format!("{sql}: {e}"))?;
        check!(env.replica_ports().contains(&port), "{sql} ran on {port}, not a replica");
    }
    Ok(())
}

pub async fn reads_spread_over_both_replicas(env: &Env) -> R {
    let c = env.client().await?;
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(port_of(&c, "SELECT inet_server_port()").await?);
        // The extended protocol too.
        let row = c.query_one("SELECT inet_server_port()", &[]).await?;
        seen.insert(row.get::<_, i32>(0));
    }
    let want: BTreeSet<i32> = env.replica_ports().into_iter().collect();
    check!(seen == want, "reads ran on {seen:?}, want exactly the replicas {want:?}");
    on_replica(
        env,
        &[
            "SELECT inet_server_port() FROM t WHERE id = 1",
            "WITH x AS (SELECT 1) SELECT inet_server_port() FROM x",
            "SELECT inet_server_port(), count(*), now() FROM t",
            "SELECT port FROM portview",
        ],
    )
    .await
}
register!(reads_spread_over_both_replicas);

pub async fn writes_and_ddl_go_to_the_primary(env: &Env) -> R {
    on_primary(
        env,
        &[
            "INSERT INTO t (v) VALUES (1) RETURNING inet_server_port()",
            "UPDATE t SET v = v WHERE id = 1 RETURNING inet_server_port()",
            "DELETE FROM t WHERE id = (SELECT max(id) FROM t) RETURNING inet_server_port()",
            "INSERT INTO t (id, v) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET v = 1 RETURNING inet_server_port()",
            "MERGE INTO t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 1; SELECT inet_server_port()",
        ],
    )
    .await?;
    // DDL, TRUNCATE, GRANT, VACUUM, CALL, DO, LOCK, NOTIFY: each would fail on a replica
    // (read-only), so success through pgsplit proves the primary.
    let c = env.client().await?;
    for sql in [
        "CREATE TABLE ddl_probe (a int)",
        "ALTER TABLE ddl_probe ADD COLUMN b int",
        "CREATE INDEX ON ddl_probe (a)",
        "TRUNCATE ddl_probe",
        "GRANT SELECT ON ddl_probe TO PUBLIC",
        "VACUUM ddl_probe",
        "ANALYZE ddl_probe",
        "CREATE PROCEDURE ddl_proc() LANGUAGE sql AS $$ INSERT INTO ddl_probe VALUES (1) $$",
        "CALL ddl_proc()",
        "DO $$ BEGIN INSERT INTO ddl_probe VALUES (2); END $$",
        "BEGIN; LOCK TABLE ddl_probe; COMMIT",
        "NOTIFY some_channel",
        "COMMENT ON TABLE ddl_probe IS 'x'",
        "DROP TABLE ddl_probe",
        "DROP PROCEDURE ddl_proc",
    ] {
        c.batch_execute(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    }
    Ok(())
}
register!(writes_and_ddl_go_to_the_primary);

pub async fn locking_reads_go_to_the_primary(env: &Env) -> R {
    on_primary(
        env,
        &[
            "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE",
            "SELECT inet_server_port() FROM t WHERE id = 1 FOR NO KEY UPDATE",
            "SELECT inet_server_port() FROM t WHERE id = 1 FOR SHARE",
            "SELECT inet_server_port() FROM t WHERE id = 1 FOR KEY SHARE SKIP LOCKED",
            "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE NOWAIT",
            "SELECT inet_server_port() FROM t WHERE id IN (SELECT id FROM t WHERE id = 1 FOR UPDATE)",
            "WITH l AS (SELECT id FROM t WHERE id = 1 FOR UPDATE) SELECT inet_server_port() FROM l",
            "SELECT inet_server_port() FROM t a, LATERAL (SELECT id FROM t b WHERE b.id = a.id FOR SHARE) x WHERE a.id = 1",
        ],
    )
    .await
}
register!(locking_reads_go_to_the_primary);

pub async fn writing_selects_go_to_the_primary(env: &Env) -> R {
    on_primary(
        env,
        &[
            "WITH x AS (INSERT INTO t (v) VALUES (2) RETURNING id) SELECT inet_server_port() FROM x",
            "WITH x AS (UPDATE t SET v = v WHERE id = 1 RETURNING id) SELECT inet_server_port() FROM x",
            "WITH x AS (DELETE FROM t WHERE v = -999 RETURNING id) SELECT inet_server_port() UNION ALL SELECT id FROM x",
        ],
    )
    .await?;
    let c = env.client().await?;
    for sql in [
        "SELECT * INTO TEMP TABLE select_into_probe FROM t LIMIT 1",
        "CREATE TABLE ctas_probe AS SELECT * FROM t LIMIT 1",
        "EXPLAIN ANALYZE INSERT INTO t (v) VALUES (3)",
        "DROP TABLE ctas_probe",
    ] {
        c.batch_execute(sql).await.map_err(|e| format!("{sql}: {e}"))?;
    }
    Ok(())
}
register!(writing_selects_go_to_the_primary);

pub async fn side_effect_functions_go_to_the_primary(env: &Env) -> R {
    on_primary(
        env,
        &[
            "SELECT inet_server_port(), nextval('s')",
            "SELECT inet_server_port(), currval('s')",
            "SELECT inet_server_port(), lastval()",
            "SELECT inet_server_port(), setval('s', 10)",
            "SELECT inet_server_port(), pg_advisory_xact_lock(7)",
            "SELECT inet_server_port(), pg_try_advisory_xact_lock(8)",
            "SELECT inet_server_port(), txid_current()",
            "SELECT inet_server_port(), pg_current_xact_id()",
            "SELECT inet_server_port(), pg_current_wal_lsn()",
            "SELECT inet_server_port(), pg_notify('c', 'x')",
            "SELECT inet_server_port(), set_config('pgsplit_test.x', 'y', true)",
            "SELECT inet_server_port() FROM (SELECT lo_creat(-1)) x",
            "SELECT inet_server_port() FROM t WHERE id = 1 + (SELECT nextval('s') * 0)",
        ],
    )
    .await
}
register!(side_effect_functions_go_to_the_primary);

pub async fn user_functions_by_volatility(env: &Env) -> R {
    // bump() is VOLATILE and writes: primary, every time.
    on_primary(env, &["SELECT bump()", "SELECT bump()", "SELECT * FROM bump()"]).await?;
    // port_stable() is STABLE: looked up in pg_proc once, then a read like any other.
    on_replica(env, &["SELECT port_stable()", "SELECT port_stable()"]).await?;
    // A function that does not exist anywhere is unknown: primary (which reports the error).
    let c = env.client().await?;
    let e = c.simple_query("SELECT no_such_function_xyz()").await;
    check!(e.is_err(), "an unknown function should fail");
    Ok(())
}
register!(user_functions_by_volatility);

pub async fn unparseable_goes_to_the_primary(env: &Env) -> R {
    // Valid PostgreSQL that sqlparser does not accept and that may write (a window frame with
    // EXCLUDE, calling a function only the catalog knows writes; a locking clause): the
    // primary, never the previous statement's route.
    let c = env.client().await?;
    for _ in 0..4 {
        for sql in [
            "SELECT bump(), sum(v) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE GROUP) FROM t LIMIT 1",
            "SELECT inet_server_port() FROM t WHERE id = (SELECT max(id) FROM t) FOR NO KEY UPDATE OF t NOWAIT",
        ] {
            let read = port_of(&c, "SELECT inet_server_port()").await?;
            check!(env.replica_ports().contains(&read), "read on {read}");
            let port = port_of(&c, sql).await?;
            check!(port == env.primary_port(), "unparseable statement ran on {port}: {sql}");
        }
    }
    Ok(())
}
register!(unparseable_goes_to_the_primary);

pub async fn multi_statement_queries(env: &Env) -> R {
    let c = env.client().await?;
    // The strictest statement decides for the whole string.
    let msgs =
        c.simple_query("SELECT inet_server_port(); INSERT INTO t (v) VALUES (4); SELECT inet_server_port()").await?;
    let ports: Vec<i32> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .collect();
    check!(ports == vec![env.primary_port(); 2], "multi-statement ran on {ports:?}");
    let p = port_of(&c, "SELECT 1; SELECT inet_server_port()").await;
    check!(p.is_err() || p.is_ok(), "unreachable");
    let v = simple_value(&c, "SELECT 1; SELECT 2").await?;
    check!(v == "1", "first row {v}");
    Ok(())
}
register!(multi_statement_queries);

pub async fn transactions_stay_on_one_server(env: &Env) -> R {
    let mut c = env.client().await?;
    c.batch_execute("BEGIN").await?;
    for _ in 0..5 {
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "read inside a transaction ran on {p}");
    }
    c.batch_execute("COMMIT").await?;
    // tokio-postgres transactions (extended protocol).
    let tx = c.transaction().await?;
    let p: i32 = tx.query_one("SELECT inet_server_port()", &[]).await?.get(0);
    check!(p == env.primary_port(), "read in transaction() ran on {p}");
    tx.execute("INSERT INTO t (v) VALUES (5)", &[]).await?;
    tx.commit().await?;
    // Failed transaction: state E stays on the same server until ROLLBACK.
    c.batch_execute("BEGIN").await?;
    check!(c.batch_execute("SELECT 1/0").await.is_err(), "division by zero should fail");
    let e = c.simple_query("SELECT 1").await.err().map(|e| crate::common::sqlstate(&e));
    check!(e.as_deref() == Some("25P02"), "in a failed transaction got {e:?}");
    c.batch_execute("ROLLBACK").await?;
    let p = port_of(&c, "SELECT inet_server_port()").await?;
    check!(env.replica_ports().contains(&p), "after ROLLBACK a read ran on {p}");
    Ok(())
}
register!(transactions_stay_on_one_server);

pub async fn read_only_transactions_use_a_replica(env: &Env) -> R {
    let c = env.client().await?;
    for begin in ["BEGIN READ ONLY", "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"] {
        c.batch_execute(begin).await?;
        let first = port_of(&c, "SELECT inet_server_port()").await?;
        check!(env.replica_ports().contains(&first), "{begin}: ran on {first}");
        for _ in 0..4 {
            let p = port_of(&c, "SELECT inet_server_port()").await?;
            check!(p == first, "{begin}: the transaction moved from {first} to {p}");
        }
        c.batch_execute("COMMIT").await?;
    }
    Ok(())
}
register!(read_only_transactions_use_a_replica);

pub async fn hints_and_route_setting(env: &Env) -> R {
    on_primary(
        env,
        &["/* pgsplit:primary */ SELECT inet_server_port()", "-- pgsplit:primary\nSELECT inet_server_port()"],
    )
    .await?;
    // A replica hint never sends a write to a replica.
    on_primary(env, &["/* pgsplit:replica */ INSERT INTO t (v) VALUES (6) RETURNING inet_server_port()"]).await?;
    let c = env.client().await?;
    c.batch_execute("SET pgsplit.route = primary").await?;
    for _ in 0..3 {
        let p = port_of(&c, "SELECT inet_server_port()").await?;
        check!(p == env.primary_port(), "with pgsplit.route = primary a read ran on {p}");
    }
    let p = port_of(&c, "/* pgsplit:replica */ SELECT inet_server_port()").await?;
    check!(env.replica_ports().contains(&p), "replica hint under route=primary ran on {p}");
    c.batch_execute("SET pgsplit.route = auto").await?;
    let p = port_of(&c, "SELECT inet_server_port()").await?;
    check!(env.replica_ports().contains(&p), "after route = auto a read ran on {p}");
    Ok(())
}
register!(hints_and_route_setting);

pub async fn views_that_write_go_to_the_primary(env: &Env) -> R {
    let c = env.client().await?;
    c.batch_execute(
        "CREATE OR REPLACE VIEW writing_view AS SELECT bump() AS port; \
         CREATE OR REPLACE VIEW view_over_writing_view AS SELECT port FROM writing_view; \
         CREATE OR REPLACE VIEW plain_view AS SELECT inet_server_port() AS port, count(*) FROM t",
    )
    .await?;
    env.caught_up().await?;
    on_primary(env, &["SELECT port FROM writing_view", "SELECT port FROM view_over_writing_view"]).await?;
    on_replica(env, &["SELECT port FROM plain_view", "SELECT port FROM plain_view"]).await
}
register!(views_that_write_go_to_the_primary);

pub async fn two_phase_commit_goes_to_the_primary(env: &Env) -> R {
    let c = env.client().await?;
    c.batch_execute("BEGIN; INSERT INTO t (v) VALUES (-2001); PREPARE TRANSACTION 'pgsplit_2pc_a'").await?;
    c.batch_execute("COMMIT PREPARED 'pgsplit_2pc_a'").await?;
    c.batch_execute("BEGIN; INSERT INTO t (v) VALUES (-2002); PREPARE TRANSACTION 'pgsplit_2pc_b'").await?;
    c.batch_execute("ROLLBACK PREPARED 'pgsplit_2pc_b'").await?;
    let n = simple_value(&c, "/* pgsplit:primary */ SELECT count(*) FROM t WHERE v IN (-2001, -2002)").await?;
    check!(n == "1", "two-phase commit left {n} rows");
    Ok(())
}
register!(two_phase_commit_goes_to_the_primary);

pub async fn route_setting_in_the_extended_protocol(env: &Env) -> R {
    // tokio-postgres' execute() sends Parse/Bind/Execute: the unquoted form must work there too.
    let c = env.client().await?;
    c.execute("SET pgsplit.route = primary", &[]).await?;
    for _ in 0..3 {
        let p: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
        check!(p == env.primary_port(), "with pgsplit.route = primary (extended) a read ran on {p}");
    }
    let shown = simple_value(&c, "SHOW pgsplit.route").await?;
    check!(shown == "primary", "SHOW pgsplit.route says {shown}");
    c.execute("SET pgsplit.route = auto", &[]).await?;
    let p: i32 = c.query_one("SELECT inet_server_port()", &[]).await?.get(0);
    check!(env.replica_ports().contains(&p), "after route = auto a read ran on {p}");
    Ok(())
}
register!(route_setting_in_the_extended_protocol);
