//! The SQL pgsplit runs on the servers for a failover, a switchover or a rejoin: re-pointing
//! a replica, fencing a former primary, reading the new timeline's fork point, draining and
//! handing over for a switchover, checking a node follows the primary. Called by
//! `actions.rs` and `leader.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Handles;
use super::decide::State;
use crate::cluster::topology::Role;
use crate::config::Config;
use crate::lsn::Lsn;

/// The fork point when a replica at `position` on `timeline` cannot follow a primary on
/// `new_timeline` (it has replayed past the switchpoint recorded in the new timeline's history
/// file); None when it can.
pub(crate) async fn diverged(
    h: &Handles,
    config: &Config,
    primary: &str,
    new_timeline: u32,
    timeline: u32,
    position: Lsn,
) -> Result<Option<Lsn>, String> {
    if timeline >= new_timeline {
        return Ok(None);
    }
    let c = h.sql.get(primary, &config.monitor.database).await.ok_or("the new primary does not answer")?;
    let file = format!("pg_wal/{new_timeline:08X}.history");
    let bytes: Vec<u8> =
        c.query_one("SELECT pg_read_binary_file($1)", &[&file]).await.map_err(|e| e.to_string())?.get(0);
    let text = String::from_utf8_lossy(&bytes);
    Ok(fork_point(&text, timeline).filter(|fork| position > *fork))
}

/// The switchpoint of `timeline` in a timeline history file ("parent<TAB>switchpoint<TAB>reason").
pub fn fork_point(history: &str, timeline: u32) -> Option<Lsn> {
    history.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let tli: u32 = f.next()?.parse().ok()?;
        if tli == timeline { f.next().and_then(Lsn::parse) } else { None }
    })
}

/// The switchover's first half: writes are held (sessions wait, as during a failover), the
/// transactions in flight on the primary finish (up to half of failover_wait, then they are
/// ended), the primary is made read-only, and the target replays everything it wrote. Then
/// the target is promoted like any candidate; the old primary stays read-only and fenced,
/// awaiting REJOIN.
pub(crate) async fn switchover(h: &Arc<Handles>, config: &Config, state: &State, target: usize) -> Result<(), String> {
    let t = h.cluster.topology.load_full();
    let (old, new) = (
        t.nodes.get(state.primary).map(|n| n.addr.to_string()).unwrap_or_default(),
        t.nodes.get(target).map(|n| n.addr.to_string()).ok_or("no such server")?,
    );
    if target == state.primary || t.nodes[target].role != Role::Replica || t.nodes[target].fenced {
        return Err(format!("{new} is not a replica"));
    }
    tracing::warn!(from = %old, to = %new, "switchover: holding writes");
    h.control.writes_held.store(true, std::sync::atomic::Ordering::SeqCst);
    let p = h.sql.get(&old, &config.monitor.database).await.ok_or("the primary does not answer")?;
    let deadline = Instant::now() + Duration::from_millis(config.failover.failover_wait_ms / 2);
    const IN_FLIGHT: &str = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
         AND xact_start IS NOT NULL AND pid <> pg_backend_pid()";
    loop {
        let n: i64 = p.query_one(IN_FLIGHT, &[]).await.map_err(|e| e.to_string())?.get(0);
        if n == 0 {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(transactions = n, "switchover: ending the transactions still open");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fence, before the promotion: read-only by default, and every client backend ended
    // (pgsplit's own held connections too: a pinned session's SET default_transaction_read_only
    // = off must not write here after the target takes writes). Refused: no promotion.
    if let Err(e) = end_writes(&p).await {
        let _ = p.batch_execute("ALTER SYSTEM RESET default_transaction_read_only; SELECT pg_reload_conf()").await;
        return Err(format!("the old primary could not be fenced ({e}): switchover aborted, nothing promoted"));
    }
    let last: String =
        p.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.map_err(|e| e.to_string())?.get(0);
    let r = h.sql.get(&new, &config.monitor.database).await.ok_or("the target does not answer")?;
    let t0 = Instant::now();
    loop {
        let caught: bool = r
            .query_one("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn", &[&last])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if caught {
            break;
        }
        if t0.elapsed() > Duration::from_millis(config.failover.failover_wait_ms) {
            p.batch_execute("ALTER SYSTEM RESET default_transaction_read_only").await.map_err(|e| e.to_string())?;
            p.batch_execute("SELECT pg_reload_conf()").await.map_err(|e| e.to_string())?;
            return Err(format!("{new} did not replay up to {last} in time"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(to = %new, lsn = %last, "switchover: the target has every write; promoting");
    Ok(())
}

/// Whether `node` is a replica streaming from `primary`.
pub(crate) async fn follows(h: &Handles, config: &Config, node: usize, primary: usize) -> Result<(), String> {
    let t = h.cluster.load();
    let (addr, paddr) = (
        t.nodes.get(node).map(|n| n.addr.to_string()).ok_or("no such node")?,
        t.nodes.get(primary).map(|n| n.addr.to_string()).ok_or("no primary")?,
    );
    drop(t);
    let c = h.sql.get(&addr, &config.monitor.database).await.ok_or("it does not answer")?;
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT sender_port::text FROM pg_stat_wal_receiver WHERE status = 'streaming')",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let (in_recovery, sender_port): (bool, Option<String>) = (row.get(0), row.get(1));
    let port = paddr.rsplit_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
    if !in_recovery {
        return Err(format!("{addr} is not in recovery (rebuild it as a replica of {paddr} first)"));
    }
    if sender_port.as_deref() != Some(port.as_str()) {
        return Err(format!("{addr} does not stream from {paddr} (its receiver: {sender_port:?})"));
    }
    Ok(())
}

/// Detection behind a silent partition waits for the replicas' wal_receiver_timeout (their
/// receivers keep "streaming" until then, which vetoes a failover): say so when it is long.
pub(crate) async fn warn_about_timeouts(h: &Handles, config: &Config) {
    let t = h.cluster.topology.load_full();
    for n in t.nodes.iter().filter(|n| !n.removed) {
        let Some(c) = h.sql.get(&n.addr, &config.monitor.database).await else { continue };
        let Ok(row) = c
            .query_one(
                "SELECT current_setting('wal_receiver_timeout'), current_setting('wal_sender_timeout'), \
                 extract(epoch FROM current_setting('wal_receiver_timeout')::interval)::int8",
                &[],
            )
            .await
        else {
            continue;
        };
        let (receiver, sender, secs): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        if n.role == Role::Replica && secs > 30 {
            tracing::warn!(
                server = %n.addr,
                wal_receiver_timeout = %receiver,
                wal_sender_timeout = %sender,
                "behind a network partition a failover waits for this replica's wal_receiver_timeout; \
                 set it (and wal_sender_timeout on the primary) to a few seconds for quick detection"
            );
        }
    }
}

/// Points a replica's WAL receiver at a new primary: its primary_conninfo with the new host and
/// port (the rest kept), then a reload (PostgreSQL 13+ restarts the receiver by itself; the
/// default recovery_target_timeline = latest follows the promotion).
pub(crate) async fn repoint(h: &Handles, config: &Config, replica: &str, primary: &str) -> Result<(), String> {
    let (host, port) = primary.rsplit_once(':').ok_or("bad address")?;
    let c = h.sql.get(replica, &config.monitor.database).await.ok_or("no connection")?;
    let current: String = c.query_one("SHOW primary_conninfo", &[]).await.map_err(|e| e.to_string())?.get(0);
    let conninfo = with_host_port(&current, host, port);
    let quoted = conninfo.replace('\'', "''");
    c.batch_execute(&format!("ALTER SYSTEM SET primary_conninfo = '{quoted}'")).await.map_err(|e| e.to_string())?;
    c.batch_execute("SELECT pg_reload_conf()").await.map_err(|e| e.to_string())?;
    Ok(())
}

/// `conninfo` (key=value pairs, values maybe single-quoted) with host and port replaced.
pub fn with_host_port(conninfo: &str, host: &str, port: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let b = conninfo.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &conninfo[ks..i];
        while i < b.len() && (b[i] == b'=' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        let vs = i;
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        let value = &conninfo[vs..i.min(b.len())];
        if key.is_empty() || matches!(key, "host" | "hostaddr" | "port") {
            continue;
        }
        out.push(format!("{key}={value}"));
    }
    out.insert(0, format!("host={host} port={port}"));
    out.join(" ")
}

/// Ends writes on a primary that is being replaced: read-only by default for new
/// transactions, then every client backend but the one running this ended, waiting for each
/// to exit. Backends are told apart by PID only: an application_name is the client's to choose.
/// Err when any step is refused or a backend outlives its termination.
pub(crate) async fn end_writes(c: &deadpool_postgres::Object) -> Result<(), String> {
    c.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await.map_err(|e| e.to_string())?;
    c.batch_execute("SELECT pg_reload_conf()").await.map_err(|e| e.to_string())?;
    // pg_terminate_backend says false for a backend that did not exit in time, and also for
    // one that had already gone (a connection closing meanwhile): those are checked again, in
    // a statement of their own (pg_stat_activity is a snapshot per transaction).
    let unsure: Vec<i32> = c
        .query_one(
            // The terminate in a target list: only rows that passed the filter (in a WHERE clause
            // the planner may call it first, on any process, this one included).
            "SELECT coalesce(array_agg(pid) FILTER (WHERE NOT ended), '{}') FROM ( \
               SELECT pid, pg_terminate_backend(pid, 2000) AS ended FROM pg_stat_activity \
               WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() OFFSET 0) t",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if unsure.is_empty() {
        return Ok(());
    }
    let alive: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", &[&unsure])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if alive > 0 {
        return Err(format!("{alive} client backend(s) did not exit within 2 s of their termination"));
    }
    Ok(())
}

/// Against a former primary that answers after a failover: `end_writes`. The real fence is
/// that pgsplit never sends it anything again (sessions drop what they held there).
pub(crate) async fn fence(h: &Handles, config: &Config, addr: &str) -> Result<(), String> {
    let c = h.sql.get(addr, &config.monitor.database).await.ok_or("no connection")?;
    end_writes(&c).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_points() {
        let h = "1\t0/3000148\tno recovery target specified\n2\t0/5000000\tbefore 2000-01-01\n";
        assert_eq!(fork_point(h, 1), Some(Lsn(0x3000148)));
        assert_eq!(fork_point(h, 2), Some(Lsn(0x5000000)));
        assert_eq!(fork_point(h, 3), None);
    }

    #[test]
    fn conninfo_gets_the_new_primary() {
        let c = "user=postgres passfile='/var/lib/x y' channel_binding=prefer host=127.0.0.1 port=5432 sslmode=prefer application_name=r1";
        assert_eq!(
            with_host_port(c, "10.0.0.2", "5433"),
            "host=10.0.0.2 port=5433 user=postgres passfile='/var/lib/x y' channel_binding=prefer sslmode=prefer application_name=r1"
        );
        assert_eq!(with_host_port("", "h", "1"), "host=h port=1");
    }
}
