//! What the failover rules are fed: one health check of every server at once (on a kept and on
//! a fresh connection, with a timeout), each answer turned into a `Seen`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Handles;
use super::decide::{Check, Seen, State};
use crate::cluster::topology::Role;
use crate::config::Config;
use crate::lsn::Lsn;

const REPLICA_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text \
          ELSE pg_current_wal_insert_lsn()::text END, \
     CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)::text \
          ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END, \
     coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver LIMIT 1), false), \
     (SELECT (extract(epoch FROM last_msg_receipt_time) * 1000)::int8 FROM pg_stat_wal_receiver LIMIT 1), \
     current_setting('primary_conninfo'), current_setting('cluster_name'), \
     current_setting('default_transaction_read_only') = 'on', \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE current_setting('synchronous_standby_names') END, \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE (SELECT string_agg(application_name, ',') \
          FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')) END";

/// What one node answered, beyond what the rules need.
struct Answered {
    seen: Seen,
    /// The name its WAL receiver gives the primary (application_name).
    standby_name: String,
    /// On a primary: synchronous_standby_names is set, and the names in its sync set.
    sync: Option<(bool, Vec<String>)>,
}

/// One health check of every server, all at once.
pub(crate) async fn gather(
    h: &Arc<Handles>,
    config: &Arc<Config>,
    state: &State,
    sync: &std::sync::Mutex<Option<Vec<bool>>>,
) -> Check {
    let t = h.cluster.topology.load_full();
    let timeout = Duration::from_millis(config.failover.check_timeout_ms);
    let now = Instant::now();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let tasks: Vec<_> = t
        .nodes
        .iter()
        .map(|n| {
            let (h, config, addr, removed) = (h.clone(), config.clone(), n.addr.clone(), n.removed);
            tokio::spawn(async move {
                if removed {
                    return Answered { seen: Seen::default(), standby_name: String::new(), sync: None };
                }
                seen(&h, &config, &addr, timeout).await
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.unwrap_or(Answered { seen: Seen::default(), standby_name: String::new(), sync: None }));
    }
    // The primary's synchronous set, as last observed while it answered: only its members may
    // be promoted, so that no acknowledged commit is lost.
    if let Some(Some((configured, members))) = answers.get(state.primary).map(|a| a.sync.clone()) {
        let in_set = answers.iter().map(|a| members.contains(&a.standby_name)).collect();
        *sync.lock().unwrap_or_else(|p| p.into_inner()) = configured.then_some(in_set);
    }
    let last_sync = sync.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut nodes: Vec<Seen> = answers.into_iter().map(|a| a.seen).collect();
    if let Some(set) = &last_sync {
        for (n, member) in nodes.iter_mut().zip(set) {
            n.sync = *member;
        }
    }
    for (i, n) in t.nodes.iter().enumerate() {
        if let Some(s) = nodes.get_mut(i) {
            s.promotable = n.settings.promotable && n.role == Role::Replica && !n.fenced;
            s.priority = n.settings.priority;
        }
    }
    // The primary on a fresh connection too: a kept connection can outlive a server that no
    // longer accepts new ones, and the other way round.
    let p = state.primary;
    let kept_ok = nodes.get(p).is_some_and(|s| s.reachable && !s.in_recovery);
    let fresh_ok = kept_ok && fresh_check(config, &t.nodes[p].addr, timeout).await;
    Check { now, now_ms, primary_ok: kept_ok && fresh_ok, nodes, sync_configured: last_sync.is_some(), peers: None }
}

async fn seen(h: &Handles, config: &Config, addr: &str, timeout: Duration) -> Answered {
    let work = async {
        let c = h.sql.get(addr, &config.monitor.database).await?;
        c.query_one(REPLICA_SQL, &[]).await.ok()
    };
    let Ok(Some(row)) = tokio::time::timeout(timeout, work).await else {
        h.sql.forget(addr);
        return Answered { seen: Seen::default(), standby_name: String::new(), sync: None };
    };
    let in_recovery: bool = row.get(0);
    let timeline: Option<String> = row.get(2);
    let conninfo: String = row.get(5);
    let cluster_name: String = row.get(6);
    let standby_name = conninfo_value(&conninfo, "application_name")
        .or_else(|| (!cluster_name.is_empty()).then_some(cluster_name))
        .unwrap_or_else(|| "walreceiver".into());
    let sync = row.get::<_, Option<String>>(8).map(|names| {
        let members: Option<String> = row.get(9);
        (
            !names.trim().is_empty(),
            members.unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        )
    });
    let seen = Seen {
        reachable: true,
        in_recovery,
        position: row.get::<_, Option<String>>(1).as_deref().and_then(Lsn::parse).unwrap_or_default(),
        timeline: timeline.and_then(|t| if in_recovery { t.parse().ok() } else { u32::from_str_radix(&t, 16).ok() }),
        streaming: row.get(3),
        heard_ms: row.get::<_, Option<i64>>(4).map(|v| v.max(0) as u64),
        read_only: row.get(7),
        ..Seen::default()
    };
    Answered { seen, standby_name, sync }
}

/// A value of a conninfo string.
fn conninfo_value(conninfo: &str, key: &str) -> Option<String> {
    conninfo.split_whitespace().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.trim_matches('\'').to_string())
    })
}

/// A new connection and a round trip, within `timeout`.
async fn fresh_check(config: &Config, addr: &str, timeout: Duration) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let Ok(port) = port.parse() else { return false };
    let mut pg = tokio_postgres::Config::new();
    pg.host(host)
        .port(port)
        .user(&config.monitor.user)
        .dbname(&config.monitor.database)
        .application_name("pgsplit-health")
        .connect_timeout(timeout);
    if !config.monitor.password.is_empty() {
        pg.password(&config.monitor.password);
    }
    let work = async {
        // Never plaintext in place of the TLS asked for: no connector, no check.
        let tls = crate::tls::upstream::PgTls(crate::tls::upstream::connector(&config.tls).ok()?);
        pg.ssl_mode(tls.ssl_mode());
        let (client, task) = crate::tls::sql_connect::connect(&pg, tls).await.ok()?;
        let ok = client.query_one("SELECT NOT pg_is_in_recovery()", &[]).await.ok()?.get::<_, bool>(0);
        drop(client);
        task.abort();
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, work).await, Ok(Some(true)))
}
