//! Answers as a direct connection gives them, compared message for message: a server's FATAL
//! reaches the client that was using that connection and ends it (both protocols, a backend
//! terminating itself and an idle-in-transaction timeout); and no client can take a replica out
//! of rotation by ending its own backends.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::check;
use crate::common::{Env, R, connect, port_of};
use crate::differential::login;
use crate::protocol::read_until_ready;

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 16;

/// One message as compared: its type, and for errors and notices severity and SQLSTATE.
fn shape(tag: u8, body: &[u8]) -> String {
    match tag {
        b'E' | b'N' => format!(
            "{} {} {}",
            tag as char,
            pgsplit::protocol::error_field(body, b'V').unwrap_or(""),
            pgsplit::protocol::error_field(body, b'C').unwrap_or("")
        ),
        b'Z' => format!("Z {}", body.first().map(|b| *b as char).unwrap_or('?')),
        t => (t as char).to_string(),
    }
}

/// Every message until the server (or pgsplit) closes the connection, and "EOF"; "open" if it
/// is still open after `wait`.
async fn until_closed(s: &mut tokio::net::TcpStream, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    loop {
        let mut head = [0u8; 5];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read_exact(&mut head)).await {
            Err(_) => {
                out.push("open".into());
                return out;
            }
            Ok(Err(_)) => {
                out.push("EOF".into());
                return out;
            }
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if s.read_exact(&mut body).await.is_err() {
            out.push("EOF".into());
            return out;
        }
        // Parameter reports and notices differ between a server and pgsplit by design.
        if !matches!(head[0], b'S' | b'N') {
            out.push(shape(head[0], &body));
        }
    }
}

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'Q');
    b.put_i32((4 + sql.len() + 1) as i32);
    b.put_slice(sql.as_bytes());
    b.put_u8(0);
    b
}

fn extended(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    crate::protocol::parse(&mut b, "", sql);
    crate::protocol::bind_execute_named(&mut b, "");
    b.put_u8(b'S');
    b.put_i32(4);
    b
}

/// What a client sees for `steps` (all but the last answered with ReadyForQuery) and then the
/// last one, up to the connection's end.
async fn sequence(
    port: u16,
    steps: &[BytesMut],
    wait: Duration,
) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let mut s = login(port).await?;
    let mut seen = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        s.write_all(step).await?;
        if i + 1 < steps.len() {
            for (t, body) in read_until_ready(&mut s).await? {
                if !matches!(t, b'S' | b'N') {
                    seen.push(shape(t, &body));
                }
            }
        }
    }
    seen.extend(until_closed(&mut s, wait).await);
    Ok(seen)
}

pub async fn a_servers_fatal_reaches_the_client_as_directly(env: &Env) -> R {
    let direct = env.primary_port() as u16;
    let through = env.proxy.addr.port();
    let terminate = "SELECT pg_terminate_backend(pg_backend_pid())";
    let cases: Vec<(&str, Vec<BytesMut>, Duration)> = vec![
        ("terminate inside a transaction, simple", vec![query("BEGIN"), query(terminate)], Duration::from_secs(5)),
        ("terminate inside a transaction, extended", vec![query("BEGIN"), extended(terminate)], Duration::from_secs(5)),
        ("terminate in autocommit, simple", vec![query(terminate)], Duration::from_secs(5)),
        (
            "idle-in-transaction timeout",
            vec![query("SET idle_in_transaction_session_timeout = 300"), query("BEGIN"), query("SELECT 1")],
            Duration::from_secs(5),
        ),
    ];
    for (what, steps, wait) in cases {
        let d = sequence(direct, &steps, wait).await?;
        let p = sequence(through, &steps, wait).await?;
        println!("    {what}: directly {d:?}, through pgsplit {p:?}");
        check!(d == p, "{what}: directly {d:?}, through pgsplit {p:?}");
        check!(d.last().map(String::as_str) == Some("EOF"), "{what}: the direct connection stayed open: {d:?}");
    }
    // Nobody else noticed: the replicas are in rotation, the main proxy serves reads.
    env.wait_rotation(&env.proxy, &env.replica_ports()).await?;
    let c = env.client().await?;
    port_of(&c, "SELECT inet_server_port()").await?;
    Ok(())
}
register!(a_servers_fatal_reaches_the_client_as_directly);

/// A hostile client ends its own backend on a replica every 50 ms (`BEGIN READ ONLY` runs on a
/// replica; any user may terminate its own backend), while another reads in autocommit: the
/// reader keeps its reads on the replicas and sees no error; the replicas never leave rotation.
pub async fn no_client_can_eject_a_replica(env: &Env) -> R {
    let proxy = env.proxy_with(|_| {}).await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    let conn = env.conn_string(proxy.addr.port());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hostile = {
        let (conn, stop) = (conn.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ended = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(c) = connect(&conn).await else { continue };
                if c.batch_execute("BEGIN READ ONLY").await.is_ok()
                    && c.simple_query("SELECT pg_terminate_backend(pg_backend_pid())").await.is_err()
                {
                    ended += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ended
        })
    };
    let reader = connect(&conn).await?;
    let replicas = env.replica_ports();
    let (mut on_replicas, mut reads, mut errors) = (0, 0, Vec::new());
    let t0 = Instant::now();
    let mut left_rotation = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        match port_of(&reader, "SELECT inet_server_port()").await {
            Ok(p) => on_replicas += replicas.contains(&p) as usize,
            Err(e) => errors.push(e.to_string()),
        }
        reads += 1;
        left_rotation += proxy.shared.cluster.load().nodes[1..].iter().filter(|n| !n.in_rotation).count();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ended = hostile.await?;
    let share = 100.0 * on_replicas as f64 / reads.max(1) as f64;
    println!(
        "    a client ended its own replica backend {ended} times in 3 s: the reader's {reads} reads, {share:.0} % on replicas, {} errors; replicas seen out of rotation {left_rotation} times",
        errors.len()
    );
    check!(ended >= 10, "the hostile client ended only {ended} backends");
    check!(errors.is_empty(), "the reader saw errors: {errors:?}");
    check!(share >= 90.0, "only {share:.0} % of the reads ran on replicas");
    check!(left_rotation == 0, "a replica left rotation {left_rotation} times");
    proxy.stop();
    Ok(())
}
register!(no_client_can_eject_a_replica);

/// The parameter reports of a COMMIT that carries pgsplit's commit probe: a `SET LOCAL
/// application_name` is undone by the COMMIT and the server reports it before its
/// ReadyForQuery, after the probe's answer; the client gets that report as directly.
pub async fn a_commit_reports_its_parameters_as_directly(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = pgsplit::config::ReadYourWrites::Session).await?;
    env.client().await?.batch_execute("DROP TABLE IF EXISTS fid_commit; CREATE TABLE fid_commit (id int)").await?;
    let reports = |frames: Vec<(u8, Vec<u8>)>| -> Vec<String> {
        frames
            .iter()
            .filter(|(t, _)| *t == b'S')
            .map(|(_, b)| {
                let mut parts = b.split(|c| *c == 0).map(|p| String::from_utf8_lossy(p).into_owned());
                format!("{}={}", parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
            })
            .filter(|s| s.starts_with("application_name="))
            .collect()
    };
    let mut seen = Vec::new();
    for port in [env.primary_port() as u16, proxy.addr.port()] {
        let mut s = login(port).await?;
        for step in ["BEGIN", "SET LOCAL application_name = 'inside'", "INSERT INTO fid_commit VALUES (1)"] {
            s.write_all(&query(step)).await?;
            read_until_ready(&mut s).await?;
        }
        s.write_all(&query("COMMIT")).await?;
        let frames = read_until_ready(&mut s).await?;
        let tags: Vec<String> =
            frames.iter().filter(|(t, _)| !matches!(t, b'S' | b'N')).map(|(t, b)| shape(*t, b)).collect();
        seen.push((tags, reports(frames)));
    }
    println!("    COMMIT undoing SET LOCAL application_name: directly {:?}, through pgsplit {:?}", seen[0], seen[1]);
    check!(seen[0].0 == seen[1].0, "COMMIT's messages: directly {:?}, through pgsplit {:?}", seen[0].0, seen[1].0);
    check!(!seen[0].1.is_empty(), "the server reported no application_name after COMMIT: {:?}", seen[0]);
    check!(
        seen[0].1 == seen[1].1,
        "application_name reports: directly {:?}, through pgsplit {:?}",
        seen[0].1,
        seen[1].1
    );
    Ok(())
}
register!(a_commit_reports_its_parameters_as_directly);

/// What tells a primary from a standby answers as the primary does outside a transaction
/// (libpq's target_session_attrs=read-write and pgJDBC's targetServerType=primary ask
/// `SHOW transaction_read_only` of servers that do not report it): through pgsplit, as
/// directly on the primary; a read-only transaction still says on, and the hint still reaches
/// a replica.
pub async fn read_write_checks_answer_as_the_primary(env: &Env) -> R {
    use crate::common::simple_value;
    let direct = connect(&env.conn_string(env.cluster.primary().port)).await?;
    let c = env.client().await?;
    for name in ["transaction_read_only", "default_transaction_read_only", "in_hot_standby"] {
        let want = simple_value(&direct, &format!("SHOW {name}")).await?;
        // Several times: reads are spread, and one answer from a replica is a failure.
        for _ in 0..6 {
            let got = simple_value(&c, &format!("SHOW {name}")).await?;
            check!(got == want, "SHOW {name}: {got} through pgsplit, {want} directly on the primary");
        }
    }
    let on_replica = simple_value(&c, "/* pgsplit:replica */ SHOW in_hot_standby").await?;
    check!(on_replica == "on", "the replica hint answered in_hot_standby = {on_replica}");
    c.batch_execute("BEGIN READ ONLY").await?;
    let ro = simple_value(&c, "SHOW transaction_read_only").await?;
    c.batch_execute("COMMIT").await?;
    check!(ro == "on", "a read-only transaction says transaction_read_only = {ro}");
    Ok(())
}
register!(read_write_checks_answer_as_the_primary);
