//! Protocol behaviour: prepared statements across connections, extended batches, COPY,
//! cancel, errors and notices, malformed input (authentication: credentials.rs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

use crate::check;
use crate::common::{Env, R, connect, simple_value, sqlstate};

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 5;

pub async fn named_prepared_statements_on_any_connection(env: &Env) -> R {
    // tokio-postgres prepares named statements ("s0", "s1"...) and binds them later, in other
    // batches that pgsplit may run on other server connections.
    let clients = [env.client().await?, env.client().await?, env.client().await?];
    let mut ports = BTreeSet::new();
    for c in &clients {
        let read = c.prepare("SELECT $1::int + 1, inet_server_port()").await?;
        let write = c.prepare("INSERT INTO t (v) VALUES ($1) RETURNING inet_server_port()").await?;
        for i in 0..10 {
            let row = c.query_one(&read, &[&i]).await?;
            check!(row.get::<_, i32>(0) == i + 1, "wrong result");
            ports.insert(row.get::<_, i32>(1));
            let p: i32 = c.query_one(&write, &[&i]).await?.get(0);
            check!(p == env.primary_port(), "prepared INSERT ran on {p}");
        }
    }
    let replicas: BTreeSet<i32> = env.replica_ports().into_iter().collect();
    check!(ports == replicas, "prepared reads ran on {ports:?}");
    // Closing a statement, then preparing it again under the same text.
    let c = &clients[0];
    let st = c.prepare("SELECT 42").await?;
    drop(st);
    let again = c.prepare("SELECT 42").await?;
    let v: i32 = c.query_one(&again, &[]).await?.get(0);
    check!(v == 42, "re-prepared statement returned {v}");
    // DEALLOCATE ALL forgets the client's statements without touching anyone else's.
    c.batch_execute("DEALLOCATE ALL").await?;
    let other: i32 = clients[1].query_one("SELECT 7", &[]).await?.get(0);
    check!(other == 7, "another client broken by DEALLOCATE ALL");
    Ok(())
}
register!(named_prepared_statements_on_any_connection);

pub async fn extended_batches_route_as_one_unit(env: &Env) -> R {
    // A pipeline of Parse/Bind/Execute for a write then a read, one Sync: all on the primary.
    let mut s = raw_login(env).await?;
    let mut b = BytesMut::new();
    parse(&mut b, "", "INSERT INTO t (v) VALUES (77)");
    bind_execute(&mut b);
    parse(&mut b, "", "SELECT inet_server_port()");
    bind_execute(&mut b);
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let msgs = read_until_ready(&mut s).await?;
    let rows: Vec<String> = data_rows(&msgs);
    check!(rows == vec![env.primary_port().to_string()], "pipelined batch read ran on {rows:?}");

    // Parse + Describe + Flush, wait, then Bind/Execute/Sync (asyncpg's way): answered at the
    // Flush, and the statement then runs where it belongs.
    let mut b = BytesMut::new();
    parse(&mut b, "st1", "SELECT inet_server_port()");
    b.put_u8(b'D');
    b.put_i32(4 + 1 + 4);
    b.put_u8(b'S');
    b.put_slice(b"st1\0");
    b.extend_from_slice(&[b'H', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let mut got = Vec::new();
    while !got.iter().any(|(t, _)| *t == b'T') {
        got.push(read_msg(&mut s).await?);
    }
    check!(
        got[0].0 == b'1',
        "no ParseComplete before RowDescription: {:?}",
        got.iter().map(|m| m.0 as char).collect::<String>()
    );
    let mut b = BytesMut::new();
    bind_execute_named(&mut b, "st1");
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let rows = data_rows(&read_until_ready(&mut s).await?);
    let port: i32 = rows.first().ok_or("no row")?.parse()?;
    check!(env.replica_ports().contains(&port), "flushed read ran on {port}");

    // Flush after a read-looking Parse, then a write in the same batch: the write still
    // reaches the primary.
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 1");
    b.extend_from_slice(&[b'H', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    check!(read_msg(&mut s).await?.0 == b'1', "no ParseComplete");
    let mut b = BytesMut::new();
    parse(&mut b, "", "INSERT INTO t (v) VALUES (78) RETURNING inet_server_port()");
    bind_execute(&mut b);
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let msgs = read_until_ready(&mut s).await?;
    let errors: Vec<_> = msgs.iter().filter(|m| m.0 == b'E').collect();
    check!(errors.is_empty(), "write after flush failed: {:?}", String::from_utf8_lossy(&errors[0].1));
    let rows = data_rows(&msgs);
    check!(rows == vec![env.primary_port().to_string()], "write after a flushed read ran on {rows:?}");

    // An error in the middle of a batch: the rest is skipped until Sync.
    let mut b = BytesMut::new();
    parse(&mut b, "", "SELECT 1/0");
    bind_execute(&mut b);
    parse(&mut b, "", "SELECT 2");
    bind_execute(&mut b);
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    let msgs = read_until_ready(&mut s).await?;
    check!(msgs.iter().filter(|m| m.0 == b'E').count() == 1, "expected one error");
    check!(data_rows(&msgs).is_empty(), "statements after the error ran");
    let c = env.client().await?;
    let v = simple_value(&c, "SELECT 3").await?;
    check!(v == "3", "proxy unwell after batch error");
    Ok(())
}
register!(extended_batches_route_as_one_unit);

pub async fn copy_in_and_out(env: &Env) -> R {
    use futures_util::SinkExt;
    let c = env.client().await?;
    c.batch_execute("CREATE TABLE IF NOT EXISTS copy_probe (a int, b text)").await?;
    let sink = c.copy_in("COPY copy_probe FROM STDIN").await?;
    let mut sink = std::pin::pin!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data)).await?;
    let n = sink.as_mut().finish().await?;
    check!(n == 1000, "COPY FROM copied {n}");
    env.caught_up().await?;
    let stream = c.copy_out("COPY copy_probe TO STDOUT").await?;
    let chunks: Vec<_> = futures_util::TryStreamExt::try_collect::<Vec<_>>(stream).await?;
    let lines = chunks.iter().map(|c| c.iter().filter(|&&b| b == b'\n').count()).sum::<usize>();
    check!(lines == 1000, "COPY TO returned {lines} lines");
    // A failing COPY leaves the session usable.
    let bad = c.copy_in::<_, bytes::Bytes>("COPY copy_probe FROM STDIN").await?;
    let mut bad = std::pin::pin!(bad);
    bad.send(bytes::Bytes::from_static(b"not-a-number\tx\n")).await?;
    check!(bad.as_mut().finish().await.is_err(), "bad COPY data accepted");
    let v = simple_value(&c, "SELECT count(*) FROM copy_probe").await?;
    check!(v == "1000" || v == "0" || !v.is_empty(), "count {v}");
    c.batch_execute("DROP TABLE copy_probe").await?;
    Ok(())
}
register!(copy_in_and_out);

pub async fn cancel_reaches_the_right_server(env: &Env) -> R {
    for (label, setup) in [("replica", ""), ("primary", "BEGIN")] {
        let c = env.client().await?;
        let bystander = env.client().await?;
        if !setup.is_empty() {
            c.batch_execute(setup).await?;
        }
        let token = c.cancel_token();
        let t0 = Instant::now();
        // Cancel until it takes: a cancel sent before the query reached a server is dropped.
        let canceller = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(400)).await;
                token.cancel_query(NoTls).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), tokio_postgres::Error>(())
        });
        let long = tokio::spawn(async move {
            // A second query in flight at the same time on another client must survive.
            bystander.query_one("SELECT pg_sleep(1.5)::text", &[]).await.map(|_| ())
        });
        let r = c.simple_query("SELECT pg_sleep(20)").await;
        canceller.abort();
        // A cancel still on its way finds the session idle and is ignored.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let code = r.as_ref().err().map(sqlstate);
        check!(code.as_deref() == Some("57014"), "{label}: cancel gave {code:?}");
        check!(t0.elapsed() < Duration::from_secs(10), "{label}: cancel took {:?}", t0.elapsed());
        long.await?.map_err(|e| format!("{label}: the bystander's query was hit: {e}"))?;
        if !setup.is_empty() {
            c.batch_execute("ROLLBACK").await?;
        }
        let v = simple_value(&c, "SELECT 5").await?;
        check!(v == "5", "session unusable after cancel");
    }
    Ok(())
}
register!(cancel_reaches_the_right_server);

pub async fn errors_notices_and_empty_queries(env: &Env) -> R {
    let c = env.client().await?;
    let e = c.simple_query("SELECT * FROM no_such_table").await.err().map(|e| sqlstate(&e));
    check!(e.as_deref() == Some("42P01"), "missing table gave {e:?}");
    let e = c.simple_query("SELEC 1").await.err().map(|e| sqlstate(&e));
    check!(e.as_deref() == Some("42601"), "syntax error gave {e:?}");
    // An empty query answers exactly as the server does directly.
    let direct = connect(&env.conn_string(env.cluster.primary().port)).await?;
    let (via, want) = (c.simple_query("").await?.len(), direct.simple_query("").await?.len());
    check!(via == want, "empty query returned {via} messages, directly {want}");
    c.batch_execute(";;").await?;
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello'; END $$").await?;
    let v = simple_value(&c, "SELECT 'still fine'").await?;
    check!(v == "still fine", "got {v}");
    Ok(())
}
register!(errors_notices_and_empty_queries);

pub async fn malformed_message_gets_08p01(env: &Env) -> R {
    let mut s = raw_login(env).await?;
    // A message with a negative length.
    s.write_all(&[b'Q', 0xff, 0xff, 0xff, 0xff]).await?;
    let (tag, body) = read_msg(&mut s).await?;
    check!(tag == b'E', "expected ErrorResponse, got {}", tag as char);
    check!(String::from_utf8_lossy(&body).contains("08P01"), "expected 08P01: {:?}", String::from_utf8_lossy(&body));
    // An unknown message type.
    let mut s = raw_login(env).await?;
    s.write_all(&[b'?', 0, 0, 0, 4]).await?;
    let (tag, body) = read_msg(&mut s).await?;
    check!(tag == b'E' && String::from_utf8_lossy(&body).contains("08P01"), "unknown message type not rejected");
    // A Bind that is cut short.
    let mut s = raw_login(env).await?;
    s.write_all(&[b'B', 0, 0, 0, 6, b'x', 0]).await?;
    s.write_all(&[b'S', 0, 0, 0, 4]).await?;
    let (tag, _) = read_msg(&mut s).await?;
    check!(tag == b'E', "short Bind not rejected");
    // Everyone else is fine.
    let c = env.client().await?;
    check!(simple_value(&c, "SELECT 1").await? == "1", "proxy hurt by a bad client");
    Ok(())
}
register!(malformed_message_gets_08p01);

// ---- raw protocol helpers ----------------------------------------------------------------

pub async fn raw_login(env: &Env) -> Result<tokio::net::TcpStream, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = tokio::net::TcpStream::connect(env.proxy.addr).await?;
    s.write_all(&pgsplit::protocol::startup_message(&[("user", "postgres"), ("database", "postgres")])).await?;
    read_until_ready(&mut s).await?;
    Ok(s)
}

pub async fn read_msg(
    s: &mut tokio::net::TcpStream,
) -> Result<(u8, Vec<u8>), Box<dyn std::error::Error + Send + Sync>> {
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head)).await??;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).await?;
    Ok((head[0], body))
}

pub async fn read_until_ready(
    s: &mut tokio::net::TcpStream,
) -> Result<Vec<(u8, Vec<u8>)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut out = Vec::new();
    loop {
        let m = read_msg(s).await?;
        let done = m.0 == b'Z';
        out.push(m);
        if done {
            return Ok(out);
        }
    }
}

fn data_rows(msgs: &[(u8, Vec<u8>)]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.0 == b'D')
        .map(|m| {
            let len = i32::from_be_bytes([m.1[2], m.1[3], m.1[4], m.1[5]]) as usize;
            String::from_utf8_lossy(&m.1[6..6 + len]).into_owned()
        })
        .collect()
}

/// Appends a Parse message with no parameter types.
pub fn parse(b: &mut BytesMut, name: &str, sql: &str) {
    b.put_u8(b'P');
    b.put_i32((4 + name.len() + 1 + sql.len() + 1 + 2) as i32);
    b.put_slice(name.as_bytes());
    b.put_u8(0);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
}

fn bind_execute(b: &mut BytesMut) {
    bind_execute_named(b, "");
}

pub fn bind_execute_named(b: &mut BytesMut, stmt: &str) {
    b.put_u8(b'B');
    b.put_i32((4 + 1 + stmt.len() + 1 + 2 + 2 + 2) as i32);
    b.put_u8(0);
    b.put_slice(stmt.as_bytes());
    b.put_u8(0);
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(0);
    b.put_u8(b'E');
    b.put_i32(4 + 1 + 4);
    b.put_u8(0);
    b.put_i32(0);
}

pub async fn many_statements_keep_server_memory_bounded(env: &Env) -> R {
    // One server connection (no replicas, pool of one) and 2,500 distinct statements kept open
    // by the client: the server holds at most pgsplit's limit, and every statement still works.
    let proxy = env
        .proxy_with(|c| {
            c.servers.replicas.clear();
            c.pool.size = 1;
        })
        .await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    let mut statements = Vec::new();
    for i in 0..2500 {
        statements.push(c.prepare(&format!("SELECT {i}::int AS n")).await?);
    }
    for (i, st) in statements.iter().enumerate().step_by(97) {
        let v: i32 = c.query_one(st, &[]).await?.get(0);
        check!(v == i as i32, "statement {i} returned {v}");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM pg_prepared_statements", &[]).await?.get(0);
    check!(n <= 1001, "the server connection holds {n} prepared statements");
    proxy.stop();
    Ok(())
}
register!(many_statements_keep_server_memory_bounded);
