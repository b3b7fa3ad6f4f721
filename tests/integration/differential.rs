//! The differential check: every query of tests/corpus/differential.sql runs directly on the
//! primary and through pgsplit (where it runs on a replica), in the text and binary formats of
//! the extended protocol and in the simple protocol, and the answers are compared byte for
//! byte: row descriptions, rows, command tags, error codes.

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

use crate::check;
use crate::common::{Env, R};
use crate::protocol::read_until_ready;

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 17;

const SETUP: &str = include_str!("../corpus/differential_setup.sql");
const CORPUS: &str = include_str!("../corpus/differential.sql");
const ROUTING: &str = include_str!("../corpus/routing.tsv");

/// The routing corpus's reads, except those whose answer depends on the server or the moment
/// (marked `-- varies`), COPY (not a query of the extended protocol) and those with parameters.
fn routing_reads() -> impl Iterator<Item = &'static str> {
    ROUTING
        .lines()
        .filter_map(|l| l.strip_prefix("replica\t"))
        .filter(|q| !q.ends_with("-- varies") && !q.starts_with("COPY") && !q.contains("$1"))
}

pub async fn login(port: u16) -> Result<tokio::net::TcpStream, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&pgsplit::protocol::startup_message(&[("user", "postgres"), ("database", "postgres")])).await?;
    read_until_ready(&mut s).await?;
    Ok(s)
}

/// The answer's messages that must match: everything but ReadyForQuery's transaction status
/// (the same), notices and parameter reports. Errors are compared by SQLSTATE.
fn comparable(msgs: Vec<(u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
    msgs.into_iter()
        .filter(|(t, _)| !matches!(t, b'N' | b'S' | b'A'))
        .map(|(t, body)| {
            if t == b'E' {
                let code = pgsplit::protocol::error_field(&body, b'C').unwrap_or("").as_bytes().to_vec();
                (t, code)
            } else {
                (t, body)
            }
        })
        .collect()
}

async fn extended(
    s: &mut tokio::net::TcpStream,
    sql: &str,
    format: i16,
) -> Result<Vec<(u8, Vec<u8>)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut b = BytesMut::new();
    crate::protocol::parse(&mut b, "", sql);
    // Bind: no parameters, one result format code for all columns.
    b.put_u8(b'B');
    b.put_i32(4 + 1 + 1 + 2 + 2 + 2 + 2);
    b.put_u8(0);
    b.put_u8(0);
    b.put_i16(0);
    b.put_i16(0);
    b.put_i16(1);
    b.put_i16(format);
    b.extend_from_slice(&[b'D', 0, 0, 0, 6, b'P', 0]);
    b.extend_from_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&[b'S', 0, 0, 0, 4]);
    s.write_all(&b).await?;
    Ok(comparable(read_until_ready(s).await?))
}

pub async fn simple(
    s: &mut tokio::net::TcpStream,
    sql: &str,
) -> Result<Vec<(u8, Vec<u8>)>, Box<dyn std::error::Error + Send + Sync>> {
    let mut b = BytesMut::new();
    b.put_u8(b'Q');
    b.put_i32((4 + sql.len() + 1) as i32);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    s.write_all(&b).await?;
    Ok(comparable(read_until_ready(s).await?))
}

pub async fn results_match_the_primary_byte_for_byte(env: &Env) -> R {
    let c = env.client().await?;
    c.batch_execute(SETUP).await?;
    env.caught_up().await?;
    // (A test before may have restarted a server: the replicas come back after their hold-down.)
    env.wait_rotation(&env.proxy, &env.replica_ports()).await?;
    let mut direct = login(env.cluster.primary().port).await?;
    let mut proxied = login(env.proxy.addr.port()).await?;
    let mut queries: Vec<&str> =
        CORPUS.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with("--")).collect();
    queries.extend(routing_reads());
    check!(queries.len() >= 20, "corpus has {} queries", queries.len());
    let mut differences = Vec::new();
    let mut rows = 0;
    for q in &queries {
        for (label, format) in [("text", 0), ("binary", 1)] {
            let a = extended(&mut direct, q, format).await?;
            let b = extended(&mut proxied, q, format).await?;
            rows += a.iter().filter(|m| m.0 == b'D').count();
            if a != b {
                differences.push(format!("{label}: {q}"));
            }
        }
        let a = simple(&mut direct, q).await?;
        let b = simple(&mut proxied, q).await?;
        if a != b {
            differences.push(format!("simple: {q}"));
        }
    }
    check!(differences.is_empty(), "answers differ:\n{}", differences.join("\n"));
    check!(rows > 2000, "the corpus compared only {rows} rows");
    // The reads did run on replicas (otherwise the check proves little).
    let p: i32 = c.query_one("SELECT inet_server_port() FROM diff_types LIMIT 1", &[]).await?.get(0);
    check!(env.replica_ports().contains(&p), "corpus reads ran on {p}");
    Ok(())
}
register!(results_match_the_primary_byte_for_byte);
