//! Protocol corners drivers hit: portals with row limits, huge rows and queries, 65535
//! parameters, prepared statements across replaced connections and DDL, NOTIFY, savepoints.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::check;
use crate::common::{Env, R, connect, port_of, simple_value, sqlstate};
use crate::protocol::{raw_login, read_until_ready};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 15;

pub async fn portals_with_row_limits_in_transactions(env: &Env) -> R {
    let mut c = env.client().await?;
    let tx = c.transaction().await?;
    let st = tx.prepare("SELECT g, inet_server_port() FROM generate_series(1, 10) g").await?;
    let portal = tx.bind(&st, &[]).await?;
    let mut seen = Vec::new();
    loop {
        // Execute with a row limit: PortalSuspended until the last batch.
        let rows = tx.query_portal(&portal, 3).await?;
        if rows.is_empty() {
            break;
        }
        for r in rows {
            check!(r.get::<_, i32>(1) == env.primary_port(), "portal in a transaction ran off the primary");
            seen.push(r.get::<_, i32>(0));
        }
    }
    check!(seen == (1..=10).collect::<Vec<_>>(), "portal rows {seen:?}");
    drop(portal); // Close 'P'
    tx.commit().await?;
    Ok(())
}
register!(portals_with_row_limits_in_transactions);

pub async fn huge_rows_results_and_queries(env: &Env) -> R {
    let c = env.client().await?;
    // 100 MB in one result: 100 rows of 1 MiB.
    let rows = c.query("SELECT repeat('x', 1048576) FROM generate_series(1, 100)", &[]).await?;
    let total: usize = rows.iter().map(|r| r.get::<_, &str>(0).len()).sum();
    check!(total == 100 * 1048576, "got {total} bytes");
    // One 64 MiB row.
    let big: String = c.query_one("SELECT repeat('y', 67108864)", &[]).await?.get(0);
    check!(big.len() == 67108864, "big row {}", big.len());
    // A 1 MiB query text (not parsed for routing: it goes to the primary, and works).
    let long = format!("SELECT length('{}')", "z".repeat(1 << 20));
    let n = simple_value(&c, &long).await?;
    check!(n == (1 << 20).to_string(), "long query returned {n}");
    Ok(())
}
register!(huge_rows_results_and_queries);

pub async fn max_parameters(env: &Env) -> R {
    // 65535 parameters, the protocol's limit (tokio-postgres stops at 32767, so raw messages).
    let mut s = raw_login(env).await?;
    let n: usize = 65535;
    let mut sql = String::from("SELECT count(*) FROM (VALUES ");
    for i in 1..=n {
        if i > 1 {
            sql.push(',');
        }
        sql.push_str(&format!("(${i}::int)"));
    }
    sql.push_str(") v");
    let mut b = BytesMut::new();
    crate::protocol::parse(&mut b, "", &sql);
    let mut bind = BytesMut::new();
    bind.put_u8(0);
    bind.put_u8(0);
    bind.put_u16(0);
    bind.put_u16(n as u16);
    for _ in 0..n {
        bind.put_i32(1);
        bind.put_u8(b'7');
    }
    bind.put_u16(0);
    b.put_u8(b'B');
    b.put_i32((4 + bind.len()) as i32);
    b.extend_from_slice(&bind);
    b.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0, b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let msgs = read_until_ready(&mut s).await?;
    if let Some(e) = msgs.iter().find(|m| m.0 == b'E') {
        return Err(format!("65535 parameters failed: {}", String::from_utf8_lossy(&e.1)).into());
    }
    let row = msgs.iter().find(|m| m.0 == b'D').ok_or("no row")?;
    check!(row.1.ends_with(b"65535"), "count: {:?}", String::from_utf8_lossy(&row.1));
    Ok(())
}
register!(max_parameters);

pub async fn prepared_statements_survive_replaced_connections_and_ddl(env: &Env) -> R {
    let c = env.client().await?;
    let st = c.prepare("SELECT $1::int * 3, inet_server_port()").await?;
    let v: i32 = c.query_one(&st, &[&5]).await?.get(0);
    check!(v == 15, "first run");
    // Every server connection pgsplit has is killed: the statement is prepared again on new ones.
    let cluster = &env.cluster;
    for i in 0..cluster.nodes.len() {
        tokio::task::block_in_place(|| {
            cluster.psql(
                i,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
                 AND application_name NOT IN ('pgsplit-monitor', 'psql')",
            )
        })?;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for i in 0..10 {
        let v: i32 = c.query_one(&st, &[&i]).await?.get(0);
        check!(v == 3 * i, "after reconnect run {i} returned {v}");
    }
    // DDL changing a prepared statement's result type: the server says 0A000 where it has the
    // old plan, or runs the new one; either way re-preparing works.
    c.batch_execute("DROP TABLE IF EXISTS ddl_shape; CREATE TABLE ddl_shape (a int); INSERT INTO ddl_shape VALUES (1)")
        .await?;
    env.caught_up().await?;
    let shape = c.prepare("SELECT * FROM ddl_shape").await?;
    c.query(&shape, &[]).await?;
    c.batch_execute("ALTER TABLE ddl_shape ADD COLUMN b int").await?;
    env.caught_up().await?;
    if let Err(e) = c.query(&shape, &[]).await {
        check!(sqlstate(&e) == "0A000", "after DDL: {e}");
    }
    let again = c.prepare("SELECT * FROM ddl_shape").await?;
    let row = c.query_one(&again, &[]).await?;
    check!(row.len() == 2, "re-prepared statement has {} columns", row.len());
    // DISCARD ALL forgets the client's statements: using one is the server's own 26000.
    c.batch_execute("DISCARD ALL").await?;
    let e = c.query(&again, &[]).await.err().map(|e| sqlstate(&e));
    check!(e.as_deref() == Some("26000"), "statement after DISCARD ALL: {e:?}");
    Ok(())
}
register!(prepared_statements_survive_replaced_connections_and_ddl);

pub async fn notify_reaches_a_listening_session(env: &Env) -> R {
    let url = env.conn_string(env.proxy.addr.port());
    let (listener, mut connection) = tokio_postgres::connect(&url, NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            let _ = tx.send(m);
        }
    });
    listener.batch_execute("LISTEN pgsplit_events").await?;
    // LISTEN pins the session to its primary connection.
    let p = port_of(&listener, "SELECT inet_server_port()").await?;
    check!(p == env.primary_port(), "listening session read on {p}");
    let sender = connect(&url).await?;
    sender.batch_execute("NOTIFY pgsplit_events, 'hello'").await?;
    listener.batch_execute("DO $$ BEGIN RAISE NOTICE 'a notice'; END $$").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (mut notified, mut noticed) = (false, false);
    loop {
        // The listener receives notifications when it next talks to the server, or at once.
        let _ = listener.simple_query("SELECT 1").await?;
        while let Ok(m) = rx.try_recv() {
            match m {
                AsyncMessage::Notification(n) if n.channel() == "pgsplit_events" && n.payload() == "hello" => {
                    notified = true
                }
                AsyncMessage::Notice(n) if n.message() == "a notice" => noticed = true,
                _ => {}
            }
        }
        if notified && noticed {
            return Ok(());
        }
        check!(tokio::time::Instant::now() < deadline, "notification {notified}, notice {noticed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
register!(notify_reaches_a_listening_session);

pub async fn savepoints_and_errors_in_transactions(env: &Env) -> R {
    let c = env.client().await?;
    c.batch_execute("BEGIN; INSERT INTO t (v) VALUES (-31); SAVEPOINT a; INSERT INTO t (v) VALUES (-32)").await?;
    check!(c.batch_execute("SELECT 1/0").await.is_err(), "error expected");
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await?;
    let p = port_of(&c, "SELECT inet_server_port()").await?;
    check!(p == env.primary_port(), "after ROLLBACK TO the transaction moved to {p}");
    c.batch_execute("RELEASE SAVEPOINT a; COMMIT").await?;
    let n = simple_value(&c, "/* pgsplit:primary */ SELECT count(*) FROM t WHERE v IN (-31, -32)").await?;
    check!(n == "1", "savepoint rollback kept {n} rows");
    Ok(())
}
register!(savepoints_and_errors_in_transactions);

/// Database-level DDL through the pool, as test runners and migration tools do it: a client
/// uses a database (reads on the replicas, writes on the primary) and disconnects; then
/// `CREATE DATABASE ... TEMPLATE` it, `ALTER DATABASE ... RENAME`, `DROP DATABASE` (simple and
/// extended protocol) succeed: pgsplit's idle pooled connections to it, on every server, are
/// closed first. A client still connected keeps the statement failing as PostgreSQL would.
pub async fn database_ddl_through_the_pool(env: &Env) -> R {
    let proxy = env.proxy_with(|_| {}).await?;
    let port = proxy.addr.port();
    let on = |db: &str| format!("host=127.0.0.1 port={port} user=postgres dbname={db}");
    let admin = connect(&on("postgres")).await?;
    for db in ["dd_test", "dd_copy", "dd_renamed", "dd_busy"] {
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}")).await?;
    }
    admin.batch_execute("CREATE DATABASE dd_test").await?;
    env.caught_up().await?;
    let use_it = |db: String| async move {
        let c = connect(&db).await?;
        c.batch_execute("CREATE TABLE IF NOT EXISTS x (v int); INSERT INTO x VALUES (1)").await?;
        for _ in 0..20 {
            c.simple_query("SELECT count(*) FROM x").await?;
            c.query("SELECT count(*) FROM x WHERE v > $1", &[&0i32]).await?;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(c)
    };
    drop(use_it(on("dd_test")).await?);
    let pooled = |db: &str| -> usize {
        proxy.shared.pools.stats().iter().filter(|p| p.database == db).map(|p| p.idle + p.active).sum()
    };
    println!("    dd_test used and left: {} pooled server connections to it", pooled("dd_test"));
    admin.batch_execute("CREATE DATABASE dd_copy TEMPLATE dd_test").await?;
    env.caught_up().await?;
    drop(use_it(on("dd_copy")).await?);
    admin.batch_execute("ALTER DATABASE dd_copy RENAME TO dd_renamed").await?;
    admin.batch_execute("DROP DATABASE dd_test").await?;
    // The extended protocol (Parse/Bind/Execute).
    admin.execute("DROP DATABASE dd_renamed", &[]).await?;
    check!(pooled("dd_test") == 0, "connections to the dropped database are still pooled");

    // A client still connected (idle, between requests): PostgreSQL's 55006, after the same
    // 5 s it waits for other backends.
    admin.batch_execute("CREATE DATABASE dd_busy").await?;
    env.caught_up().await?;
    let busy = use_it(on("dd_busy")).await?;
    let t0 = std::time::Instant::now();
    let e = admin
        .batch_execute("DROP DATABASE dd_busy")
        .await
        .err()
        .ok_or("DROP DATABASE of a database in use succeeded")?;
    let db = e.as_db_error().ok_or("not a server error")?;
    println!(
        "    a client still connected: {} {:?} {:?} after {} ms",
        db.code().code(),
        db.message(),
        db.detail(),
        t0.elapsed().as_millis()
    );
    check!(db.code().code() == "55006", "SQLSTATE {}", db.code().code());
    check!(db.message() == "database \"dd_busy\" is being accessed by other users", "message {:?}", db.message());
    check!(db.detail() == Some("There is 1 other session using the database."), "detail {:?}", db.detail());
    drop(busy);
    admin.batch_execute("DROP DATABASE dd_busy").await?;
    proxy.stop();
    Ok(())
}
register!(database_ddl_through_the_pool);
