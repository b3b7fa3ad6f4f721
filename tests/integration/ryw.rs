//! Read-your-writes: after a client's write commits, its reads go only to replicas that have
//! replayed it, with one replica's replay artificially delayed; in session mode for the
//! writer, in global mode for everyone; and across connections with the reported position.

use std::time::Instant;

use crate::check;
use crate::common::{Env, R, connect};
use pgsplit::config::ReadYourWrites;

use crate::register;

/// Where this file's tests run in the sequence (see `register!`).
const RANK: u32 = 10;

/// Delays replay on replica `i` (1-based node index) by `delay` ('0' to stop).
async fn apply_delay(env: &Env, i: usize, delay: &str) -> R {
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| -> Result<(), String> {
        cluster.psql(i, &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'"))?;
        cluster.psql(i, "SELECT pg_reload_conf()")?;
        Ok(())
    })?;
    Ok(())
}

/// Delays replay on both replicas.
async fn apply_delay_all(env: &Env, delay: &str) -> R {
    apply_delay(env, 1, delay).await?;
    apply_delay(env, 2, delay).await
}

/// Runs `work` with both replicas replaying `delay` late, and puts replay back to normal
/// whatever `work` returns.
async fn with_replay_delay(env: &Env, delay: &str, work: impl std::future::Future<Output = R>) -> R {
    apply_delay_all(env, delay).await?;
    let result = work.await;
    apply_delay_all(env, "0").await?;
    result
}

struct Outcome {
    misses: usize,
    on_replicas: usize,
    reads: usize,
    secs: f64,
}

/// `n` iterations of: write a row through `writer`, read it back at once through `reader`.
async fn write_then_read(
    writer: &tokio_postgres::Client,
    reader: &tokio_postgres::Client,
    env: &Env,
    table: &str,
    n: usize,
) -> Result<Outcome, Box<dyn std::error::Error + Send + Sync>> {
    writer.batch_execute(&format!("DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int PRIMARY KEY)")).await?;
    env.caught_up().await?;
    let insert = format!("INSERT INTO {table} (id) VALUES ($1)");
    let select = format!("SELECT inet_server_port() FROM {table} WHERE id = $1");
    let replicas = env.replica_ports();
    let t0 = Instant::now();
    let mut out = Outcome { misses: 0, on_replicas: 0, reads: n, secs: 0.0 };
    for i in 0..n as i32 {
        writer.execute(&insert, &[&i]).await?;
        match reader.query_opt(&select, &[&i]).await? {
            None => out.misses += 1,
            Some(row) => {
                if replicas.contains(&row.get::<_, i32>(0)) {
                    out.on_replicas += 1;
                }
            }
        }
    }
    out.secs = t0.elapsed().as_secs_f64();
    Ok(out)
}

fn report(what: &str, o: &Outcome) {
    println!(
        "    {what}: {} reads, {} misses, {:.1}% on replicas, {:.0} iterations/s",
        o.reads,
        o.misses,
        100.0 * o.on_replicas as f64 / o.reads as f64,
        o.reads as f64 / o.secs
    );
}

pub async fn reads_see_their_own_writes_in_every_mode(env: &Env) -> R {
    // One replica replays 50 ms late: without read-your-writes, reads there miss rows.
    apply_delay(env, 2, "50ms").await?;
    let result = async {
        let session = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
        let c = connect(&env.conn_string(session.addr.port())).await?;
        let o = write_then_read(&c, &c, env, "ryw_session", 10_000).await?;
        report("session mode", &o);
        check!(o.misses == 0, "session mode: {} of {} reads missed their own write", o.misses, o.reads);

        // Global: the write and the read on different connections (an app whose pool hands
        // them to different connections).
        let global = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Global).await?;
        let w = connect(&env.conn_string(global.addr.port())).await?;
        let r = connect(&env.conn_string(global.addr.port())).await?;
        let o = write_then_read(&w, &r, env, "ryw_global", 10_000).await?;
        report("global mode, another connection reads", &o);
        check!(o.misses == 0, "global mode: {} of {} reads missed another client's write", o.misses, o.reads);

        // With the replicas caught up and a short wait allowed, reads stay on the replicas.
        apply_delay(env, 2, "0").await?;
        let waiting = env
            .proxy_with(|c| {
                c.routing.read_your_writes = ReadYourWrites::Session;
                c.routing.causal_wait_ms = 20;
            })
            .await?;
        env.wait_rotation(&waiting, &env.replica_ports()).await?;
        let c = connect(&env.conn_string(waiting.addr.port())).await?;
        let o = write_then_read(&c, &c, env, "ryw_wait", 2_000).await?;
        report("session mode, causal_wait_ms = 20, caught-up replicas", &o);
        check!(o.misses == 0, "causal wait: {} misses", o.misses);
        check!(o.on_replicas * 2 > o.reads, "with caught-up replicas and causal_wait most reads should use them");

        // Off, for comparison: reads may miss (printed, not asserted: timing decides).
        let off = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Off).await?;
        apply_delay(env, 2, "50ms").await?;
        let c = connect(&env.conn_string(off.addr.port())).await?;
        let o = write_then_read(&c, &c, env, "ryw_off", 1_000).await?;
        report("off (for comparison)", &o);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    }
    .await;
    apply_delay(env, 2, "0").await?;
    result
}
register!(reads_see_their_own_writes_in_every_mode);

pub async fn min_lsn_carries_the_floor_between_connections(env: &Env) -> R {
    // Both replicas replay a second late but stay in rotation. A connection that did not
    // write has no floor of its own: with the writer's position set explicitly (SET or the
    // comment) its reads must see the row; read_your_writes is off to show the explicit floor
    // alone does it.
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Off).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.batch_execute("DROP TABLE IF EXISTS ryw_lsn; CREATE TABLE ryw_lsn (id int)").await?;
    env.caught_up().await?;
    with_replay_delay(env, "1s", async {
        env.wait_rotation(&proxy, &env.replica_ports()).await?;
        let mut misses_without = 0;
        for i in 0..5 {
            c.execute("INSERT INTO ryw_lsn VALUES ($1)", &[&i]).await?;
            let after: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await?.get(0);
            let plain = connect(&env.conn_string(proxy.addr.port())).await?;
            let n: i64 = plain.query_one("SELECT count(*) FROM ryw_lsn WHERE id = $1", &[&i]).await?.get(0);
            misses_without += (n == 0) as usize;
            let other = connect(&env.conn_string(proxy.addr.port())).await?;
            other.batch_execute(&format!("SET pgsplit.min_lsn = '{after}'")).await?;
            let shown = crate::common::simple_value(&other, "SHOW pgsplit.min_lsn").await?;
            check!(shown.eq_ignore_ascii_case(&after), "SHOW pgsplit.min_lsn = {shown}, set {after}");
            let n: i64 = other.query_one("SELECT count(*) FROM ryw_lsn WHERE id = $1", &[&i]).await?.get(0);
            check!(n == 1, "a read with pgsplit.min_lsn {after} missed row {i}");
            let q = format!("/* pgsplit:min_lsn={after} */ SELECT count(*) FROM ryw_lsn WHERE id = {i}");
            let n = crate::common::simple_value(&plain, &q).await?;
            check!(n == "1", "a read with the min_lsn comment missed row {i}");
        }
        println!("    without a floor, {misses_without} of 5 reads on another connection missed the row");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
}
register!(min_lsn_carries_the_floor_between_connections);

/// In session mode, a connection opened after another connection's commit reads that commit
/// (a web request commits, a worker connects): it starts at the latest write pgsplit has seen
/// committed. Both replicas replay 300 ms late and stay in rotation; once they have replayed
/// the write, a new connection reads on them again.
pub async fn connections_opened_after_a_commit_see_it(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
    let w = connect(&env.conn_string(proxy.addr.port())).await?;
    w.batch_execute("DROP TABLE IF EXISTS ryw_later; CREATE TABLE ryw_later (id int PRIMARY KEY)").await?;
    env.caught_up().await?;
    let result = with_replay_delay(env, "300ms", async {
        env.wait_rotation(&proxy, &env.replica_ports()).await?;
        let n = 200;
        let mut misses = 0;
        for i in 0..n {
            w.execute("INSERT INTO ryw_later (id) VALUES ($1)", &[&i]).await?;
            let later = connect(&env.conn_string(proxy.addr.port())).await?;
            let found: i64 = later.query_one("SELECT count(*) FROM ryw_later WHERE id = $1", &[&i]).await?.get(0);
            misses += (found == 0) as usize;
        }
        println!("    session mode, replicas 300 ms late: {misses} of {n} reads on connections opened after the commit missed it");
        check!(misses == 0, "{misses} of {n} reads on a connection opened after the commit missed the row");
        // Once the replicas have replayed everything, new connections read there again.
        let t0 = Instant::now();
        let replicas = env.replica_ports();
        loop {
            let c = connect(&env.conn_string(proxy.addr.port())).await?;
            let port = crate::common::port_of(&c, "SELECT inet_server_port()").await?;
            if replicas.contains(&port) {
                println!("    new connections read on a replica again {} ms after the last write", t0.elapsed().as_millis());
                break;
            }
            check!(t0.elapsed().as_secs() < 10, "new connections still read on the primary 10 s after the last write");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    proxy.stop();
    result
}
register!(connections_opened_after_a_commit_see_it);

/// Objects created on one connection and used at once on another that was already open
/// (its floor predates them), replicas replaying a second late: every read answers as on the
/// primary, in both protocols (the replica's "does not exist" is not relayed: the read runs
/// again on the primary, counted by SQLSTATE). A database created a moment ago can be
/// connected to at once (a replica that lacks it is not used), with read-your-writes off too.
pub async fn objects_not_replayed_yet_are_read_on_the_primary(env: &Env) -> R {
    let session = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
    let off = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Off).await?;
    let w = connect(&env.conn_string(session.addr.port())).await?;
    w.batch_execute(
        "DROP TABLE IF EXISTS behind_t; DROP FUNCTION IF EXISTS behind_f(); DROP TYPE IF EXISTS behind_mood; \
         DROP SCHEMA IF EXISTS behind_s CASCADE",
    )
    .await?;
    w.batch_execute("DROP DATABASE IF EXISTS behind_db").await?;
    env.caught_up().await?;
    let result = with_replay_delay(env, "1s", async {
        env.wait_rotation(&session, &env.replica_ports()).await?;
        env.wait_rotation(&off, &env.replica_ports()).await?;
        let reader = connect(&env.conn_string(session.addr.port())).await?;
        let reader_off = connect(&env.conn_string(off.addr.port())).await?;
        let retries = |p: &pgsplit::proxy::Proxy| -> u64 {
            let m = &p.shared.metrics.replica_retries;
            ["3D000", "3F000", "42P01", "42883", "42704", "28000"].iter().map(|c| m.with_label_values(&[c]).get()).sum()
        };
        w.batch_execute(
            "CREATE TABLE behind_t (id int); INSERT INTO behind_t VALUES (1), (2); \
             CREATE FUNCTION behind_f() RETURNS int LANGUAGE sql STABLE AS 'SELECT 7'; \
             CREATE TYPE behind_mood AS ENUM ('calm', 'busy'); \
             CREATE SCHEMA behind_s; CREATE TABLE behind_s.u (v text); INSERT INTO behind_s.u VALUES ('s')",
        )
        .await?;
        for (name, c, proxy) in [("session", &reader, &session), ("off", &reader_off, &off)] {
            let before = retries(proxy);
            // Simple protocol.
            let n = crate::common::simple_value(c, "SELECT count(*) FROM behind_t").await?;
            check!(n == "2", "{name}: simple count {n}");
            let v = crate::common::simple_value(c, "SELECT behind_f()").await?;
            check!(v == "7", "{name}: behind_f() = {v}");
            let v = crate::common::simple_value(c, "SELECT 'busy'::behind_mood::text").await?;
            check!(v == "busy", "{name}: enum {v}");
            let v = crate::common::simple_value(c, "SELECT v FROM behind_s.u").await?;
            check!(v == "s", "{name}: schema table {v}");
            // Extended protocol (Parse/Describe/Sync, then Bind/Execute/Sync).
            let n: i64 = c.query_one("SELECT count(*) FROM behind_t WHERE id > $1", &[&0i32]).await?.get(0);
            check!(n == 2, "{name}: extended count {n}");
            let v: String = c.query_one("SELECT v FROM behind_s.u WHERE v = $1", &[&"s"]).await?.get(0);
            check!(v == "s", "{name}: extended schema table {v}");
            // A table that exists nowhere: the primary's own error.
            let e =
                c.simple_query("SELECT * FROM behind_nowhere").await.err().ok_or("a missing table answered rows")?;
            check!(crate::common::sqlstate(&e) == "42P01", "{name}: missing table: {e}");
            let got = retries(proxy) - before;
            println!("    {name}: objects created a moment ago read correctly, {got} reads re-run on the primary");
            check!(got > 0, "{name}: no read was re-run on the primary (did any reach a replica?)");
        }
        // A new database, connected to at once.
        w.batch_execute("CREATE DATABASE behind_db").await?;
        for (name, proxy) in [("session", &session), ("off", &off)] {
            let conn = format!("host=127.0.0.1 port={} user=postgres dbname=behind_db", proxy.addr.port());
            let c = connect(&conn).await?;
            let v = crate::common::simple_value(&c, "SELECT current_database()").await?;
            check!(v == "behind_db", "{name}: current_database() = {v}");
            let v = crate::common::simple_value(&c, "SELECT set_config('TimeZone', 'UTC', false)").await?;
            check!(v == "UTC", "{name}: set_config = {v}");
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    session.stop();
    off.stop();
    result
}
register!(objects_not_replayed_yet_are_read_on_the_primary);

/// A client that writes now and then reads mostly on the replicas, in the default
/// configuration (no causal wait): the read right after a write may go to the primary, and it
/// sets the replay watch asking the replicas, so the reads after it find one that has the
/// write. Before the watch, replay positions were learned at the monitor's 100 ms probes and
/// such a client read on the primary nearly always.
pub async fn reads_return_to_the_replicas_right_after_a_write(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
    env.wait_rotation(&proxy, &env.replica_ports()).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.batch_execute("DROP TABLE IF EXISTS ryw_watch; CREATE TABLE ryw_watch (id int PRIMARY KEY)").await?;
    env.caught_up().await?;
    let replicas = env.replica_ports();
    let (mut reads, mut on_replicas, mut misses) = (0, 0, 0);
    let t0 = Instant::now();
    for i in 0..200i32 {
        c.execute("INSERT INTO ryw_watch (id) VALUES ($1)", &[&i]).await?;
        // Nine reads of the row, as a client that writes every tenth statement.
        for _ in 0..9 {
            reads += 1;
            match c.query_opt("SELECT inet_server_port() FROM ryw_watch WHERE id = $1", &[&i]).await? {
                None => misses += 1,
                Some(row) if replicas.contains(&row.get::<_, i32>(0)) => on_replicas += 1,
                Some(_) => {}
            }
        }
    }
    let share = on_replicas as f64 / reads as f64;
    println!(
        "    write, then 9 reads, x200 (no causal wait): {reads} reads in {:.1} s, {misses} misses, {:.0}% on replicas",
        t0.elapsed().as_secs_f64(),
        share * 100.0
    );
    check!(misses == 0, "{misses} of {reads} reads missed their own write");
    check!(share >= 0.6, "only {:.0}% of the reads after a write went to the replicas", share * 100.0);

    // The primary's share of reads (routing.primary_read_weight = 1 beside two replicas of
    // weight 1): about a third of the reads of a client that does not write.
    let shared = env.proxy_with(|c| c.routing.primary_read_weight = 1).await?;
    env.wait_rotation(&shared, &env.replica_ports()).await?;
    let r = connect(&env.conn_string(shared.addr.port())).await?;
    let mut on_primary = 0;
    for _ in 0..300 {
        if !replicas.contains(&crate::common::port_of(&r, "SELECT inet_server_port()").await?) {
            on_primary += 1;
        }
    }
    println!("    primary_read_weight = 1: {on_primary} of 300 reads on the primary");
    check!((50..=150).contains(&on_primary), "{on_primary} of 300 reads on the primary, expected about 100");
    Ok(())
}
register!(reads_return_to_the_replicas_right_after_a_write);

/// A plain COMMIT carries the commit-position probe in its own Query: the client still gets
/// exactly its COMMIT's answer, reads its write at once with the replicas 300 ms late, a
/// trailing comment does not swallow the probe, and a COMMIT that fails is the client's error
/// with nothing of the probe in it.
pub async fn a_commit_carries_its_own_probe(env: &Env) -> R {
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.batch_execute(
        "DROP TABLE IF EXISTS ryw_commit; \
         CREATE TABLE ryw_commit (id int, CONSTRAINT ryw_commit_id UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .await?;
    env.caught_up().await?;
    with_replay_delay(env, "300ms", async {
        env.wait_rotation(&proxy, &env.replica_ports()).await?;
        let mut misses = 0;
        for i in 0..20 {
            c.batch_execute("BEGIN").await?;
            c.batch_execute(&format!("INSERT INTO ryw_commit VALUES ({i})")).await?;
            let commit = match i % 3 {
                0 => "COMMIT",
                1 => "END -- done",
                _ => "commit;",
            };
            let answer = c.simple_query(commit).await?;
            let tags: Vec<String> = answer
                .iter()
                .map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => format!("C{n}"),
                    tokio_postgres::SimpleQueryMessage::Row(_) => "row".into(),
                    _ => "other".into(),
                })
                .collect();
            check!(tags == ["C0"], "{commit:?} answered {tags:?} (a direct connection: one CommandComplete)");
            let n = crate::common::simple_value(&c, &format!("SELECT count(*) FROM ryw_commit WHERE id = {i}")).await?;
            misses += (n != "1") as usize;
        }
        check!(misses == 0, "{misses} of 20 reads after COMMIT missed the row");
        // The last COMMIT had a trailing comment: its probe still answered, so once the
        // replicas have replayed it reads go back to them (an unknown position would keep
        // them on the primary).
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        let port: i32 = crate::common::simple_value(&c, "SELECT inet_server_port()").await?.parse()?;
        check!(env.replica_ports().contains(&port), "after the replicas caught up, a read ran on {port}");
        // A COMMIT that fails (a deferred unique violation): the client's error, nothing else;
        // the session goes on.
        c.batch_execute("BEGIN; INSERT INTO ryw_commit VALUES (1000); INSERT INTO ryw_commit VALUES (1000)").await?;
        let e = c.batch_execute("COMMIT").await.err().map(|e| crate::common::sqlstate(&e));
        check!(e.as_deref() == Some("23505"), "a failing COMMIT gave {e:?}");
        let n = crate::common::simple_value(&c, "SELECT count(*) FROM ryw_commit WHERE id = 1000").await?;
        check!(n == "0", "the failed transaction's row is there ({n})");
        println!("    20 COMMITs carrying the probe: 0 misses, one CommandComplete each; a failing COMMIT: 23505");
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await
}
register!(a_commit_carries_its_own_probe);

/// A commit whose position cannot be measured (a COPY FROM in the extended protocol, or a
/// probe lost with its connection) sends the client's reads to the primary until a later
/// write is measured: that write bounds the unmeasured one, and reads return to replicas once
/// they replay it. Before, the unknown floor was kept for the rest of the session.
pub async fn an_unmeasured_commit_holds_reads_only_until_the_next_measured_write(env: &Env) -> R {
    use futures_util::SinkExt;
    let proxy = env.proxy_with(|c| c.routing.read_your_writes = ReadYourWrites::Session).await?;
    let c = connect(&env.conn_string(proxy.addr.port())).await?;
    c.batch_execute("DROP TABLE IF EXISTS ryw_copy; CREATE TABLE ryw_copy (id int)").await?;
    env.caught_up().await?;
    let sink = c.copy_in("COPY ryw_copy FROM STDIN").await?;
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n")).await?;
    sink.as_mut().finish().await?;
    let read = "SELECT inet_server_port() FROM ryw_copy LIMIT 1";
    let p = crate::common::port_of(&c, read).await?;
    check!(p == env.primary_port(), "the read right after an unmeasured COPY ran on {p}");
    c.execute("INSERT INTO ryw_copy VALUES (2)", &[]).await?;
    env.caught_up().await?;
    let t0 = Instant::now();
    let mut ports = Vec::new();
    while t0.elapsed() < std::time::Duration::from_secs(5) {
        let p = crate::common::port_of(&c, read).await?;
        ports.push(p);
        if p != env.primary_port() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let back = ports.last().is_some_and(|p| *p != env.primary_port());
    println!("    after an unmeasured COPY and a measured INSERT: {} reads until one ran on a replica", ports.len());
    check!(back, "reads stayed on the primary after a measured write: {} reads in 5 s", ports.len());
    c.batch_execute("DROP TABLE ryw_copy").await?;
    proxy.stop();
    Ok(())
}
register!(an_unmeasured_commit_holds_reads_only_until_the_next_measured_write);
