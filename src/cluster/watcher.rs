//! The replay watcher: one task per node that, while the node is a replica in rotation, asks it
//! for its replay position whenever a read wants one it has not been seen past
//! (`replay.rs` holds the wanted position and the news; the monitor starts these tasks).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Cluster;
use super::sql_pools::SqlPools;
use super::topology::Role;
use crate::config::Live;
use crate::lsn::Lsn;

/// How long a watcher keeps asking a replica that has not replayed the wanted position.
const WATCH_FOR: Duration = Duration::from_millis(50);

/// The least time between two questions to the same replica.
const SPACING: Duration = Duration::from_millis(1);

/// The time between two questions to a replica whose replay the monitor measured `lag_ms`
/// behind: a millisecond for one that keeps up (the monitor's clock reads up to a probe
/// interval for those), once per watch for one half a second or more behind, which cannot
/// catch up with a fresh write within a watch anyway (asking it every millisecond would only
/// load it).
fn spacing(lag_ms: Option<u64>) -> Duration {
    if lag_ms.unwrap_or(0) >= 500 { WATCH_FOR } else { SPACING }
}

/// One replica's watcher (a task for every node, acting while that node is a replica in
/// rotation). Ends when the node is removed from the configuration.
pub async fn watch(cluster: Arc<Cluster>, sql: Arc<SqlPools>, config: Live, node: usize) {
    let mut wanted = cluster.replay.subscribe();
    let mut asked = Instant::now();
    loop {
        if wanted.changed().await.is_err() {
            return;
        }
        let until = Instant::now() + WATCH_FOR;
        loop {
            let target = *wanted.borrow_and_update();
            let (addr, replayed, known, eligible, lag_ms) = {
                let t = cluster.load();
                let Some(n) = t.nodes.get(node) else { return };
                if n.removed {
                    return;
                }
                let eligible = n.role == Role::Replica && n.in_rotation && !n.fenced;
                (n.addr.clone(), n.replayed.clone(), n.replay_lsn(), eligible, n.probe.lag_ms)
            };
            if !eligible || known >= target || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(spacing(lag_ms).saturating_sub(asked.elapsed())).await;
            asked = Instant::now();
            let Some(lsn) = ask(&sql, &config, &addr).await else { break };
            if lsn > replayed.load() {
                replayed.set(lsn);
                cluster.replay.learned.notify_waiters();
            }
        }
    }
}

/// The replica's replay position, or None when it does not answer promptly.
async fn ask(sql: &SqlPools, config: &Live, addr: &str) -> Option<Lsn> {
    let config = config.load_full();
    let timeout = Duration::from_millis(config.monitor.interval_ms.max(100));
    let work = async {
        let c = sql.get(addr, &config.monitor.database).await?;
        let rows = c.simple_query("SELECT pg_last_wal_replay_lsn()").await.ok()?;
        rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(Lsn::parse),
            _ => None,
        })
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_far_behind_is_asked_less_often() {
        assert_eq!(spacing(None), SPACING);
        assert_eq!(spacing(Some(100)), SPACING);
        assert_eq!(spacing(Some(2000)), WATCH_FOR);
    }
}
