//! Health and lag checks. One task per server keeps a tokio-postgres connection and probes
//! every `monitor.interval_ms`; after each probe the topology is recomputed and published.
//!
//! Lag in bytes is the primary's current WAL position minus the replica's replay position.
//! Lag in time is the age of the last replayed transaction, but only while the replica has
//! received WAL it has not replayed yet: a replica that has replayed everything it received has
//! no time lag however idle the primary is (the age alone would call an idle cluster lagged,
//! and comparing positions from probes taken at different moments would make it flap). A
//! replica cut off from the primary shows up in the bytes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_postgres::NoTls;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::pool::Pools;
use crate::topology::{Cluster, Role};

#[derive(Debug, Clone, Default)]
struct Probe {
    /// At least one probe has completed: until then the node keeps its initial state.
    done: bool,
    ok: bool,
    in_recovery: bool,
    /// pg_current_wal_lsn() on a primary, pg_last_wal_replay_lsn() on a replica.
    lsn: u64,
    /// Milliseconds since the last replayed transaction (replicas).
    replay_age_ms: Option<u64>,
    /// The replica has WAL received but not yet replayed.
    replay_pending: bool,
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::float8, \
     coalesce(pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn(), false)";

pub fn spawn(
    config: Arc<Config>,
    cluster: Arc<Cluster>,
    pools: Arc<Pools>,
    metrics: Arc<Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let n = cluster.load().nodes.len();
    let probes = Arc::new(Mutex::new(vec![Probe::default(); n]));
    let mut tasks = Vec::new();
    for node in 0..n {
        let (config, cluster, pools, metrics, probes) =
            (config.clone(), cluster.clone(), pools.clone(), metrics.clone(), probes.clone());
        tasks.push(tokio::spawn(async move {
            let addr = cluster.load().nodes[node].addr.clone();
            let interval = Duration::from_millis(config.monitor.interval_ms);
            let mut client: Option<tokio_postgres::Client> = None;
            loop {
                let probe = probe(&config, &addr, &mut client).await;
                let before = { probes.lock().unwrap_or_else(|p| p.into_inner())[node].clone() };
                if (before.ok || !before.done) && !probe.ok {
                    tracing::warn!(
                        node = %addr,
                        user = %config.monitor.user,
                        "health check failed (server down, or [monitor] credentials refused): no reads go there"
                    );
                    pools.drop_idle(&addr);
                } else if !before.ok && before.done && probe.ok {
                    tracing::info!(node = %addr, "health check passed again");
                }
                {
                    let mut all = probes.lock().unwrap_or_else(|p| p.into_inner());
                    all[node] = probe;
                    publish(&config, &cluster, &metrics, &all);
                }
                tokio::time::sleep(interval).await;
            }
        }));
    }
    tasks
}

async fn probe(config: &Config, addr: &str, client: &mut Option<tokio_postgres::Client>) -> Probe {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        *client = connect(config, addr, &config.monitor.database).await;
    }
    let Some(c) = client.as_ref() else {
        return Probe::default();
    };
    let timeout = Duration::from_millis(config.pool.connect_timeout_ms.max(config.monitor.interval_ms));
    match tokio::time::timeout(timeout, c.query_one(PROBE_SQL, &[])).await {
        Ok(Ok(row)) => {
            let in_recovery: bool = row.get(0);
            let lsn: Option<String> = row.get(1);
            let age: Option<f64> = row.get(2);
            Probe {
                done: true,
                ok: true,
                in_recovery,
                lsn: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
                replay_age_ms: age.map(|a| a.max(0.0) as u64),
                replay_pending: row.get(3),
            }
        }
        _ => {
            *client = None;
            Probe { done: true, ..Probe::default() }
        }
    }
}

/// Opens a monitor connection (also used for catalog look-ups).
pub async fn connect(config: &Config, addr: &str, database: &str) -> Option<tokio_postgres::Client> {
    let (host, port) = addr.rsplit_once(':')?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port.parse().ok()?)
        .user(&config.monitor.user)
        .dbname(database)
        .application_name("pgsplit-monitor")
        .connect_timeout(Duration::from_millis(config.pool.connect_timeout_ms));
    if !config.monitor.password.is_empty() {
        pg.password(&config.monitor.password);
    }
    let (client, conn) = pg.connect(NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// Parses a textual LSN ("16/B374D848") into a byte position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

fn publish(config: &Config, cluster: &Cluster, metrics: &Metrics, probes: &[Probe]) {
    cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        let primary = t.primary();
        let primary_lsn = probes.get(primary).filter(|p| p.ok && !p.in_recovery).map(|p| p.lsn);
        for (i, node) in t.nodes.iter_mut().enumerate() {
            let p = &probes[i];
            if !p.done {
                continue;
            }
            node.healthy = p.ok;
            if node.role == Role::Replica {
                // A node that says it is not in recovery is not a streaming replica any more:
                // never send it reads meant for a replica of this primary.
                let behind = primary_lsn.map(|plsn| plsn.saturating_sub(p.lsn));
                node.lag_bytes = behind;
                node.lag_ms = if behind == Some(0) || !p.replay_pending { Some(0) } else { p.replay_age_ms };
                let lag_ok = node.lag_bytes.is_none_or(|b| b <= config.routing.max_lag_bytes)
                    && node.lag_ms.is_none_or(|ms| ms <= config.routing.max_lag_ms);
                node.in_rotation = p.ok && p.in_recovery && lag_ok;
            } else {
                node.in_rotation = p.ok;
            }
        }
        t
    });
    let t = cluster.load();
    for node in &t.nodes {
        let label = [&*node.addr];
        metrics.node_healthy.with_label_values(&label).set(node.healthy as i64);
        metrics.node_in_rotation.with_label_values(&label).set(node.in_rotation as i64);
        if node.role == Role::Replica {
            metrics.replica_lag_bytes.with_label_values(&label).set(node.lag_bytes.unwrap_or(0) as i64);
            metrics.replica_lag_ms.with_label_values(&label).set(node.lag_ms.unwrap_or(0) as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("nope"), None);
    }
}
