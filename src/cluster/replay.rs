//! The replay watch: a replica's replay position learned within about a millisecond of a read
//! needing it, not at the monitor's next probe.
//!
//! With read-your-writes, a read after a write may go to a replica only once the replica has
//! replayed the write. The monitor learns replay positions every `monitor.interval_ms`
//! (100 ms), while a replica on a fast network replays a commit in about a millisecond: a
//! client that writes every few transactions would read on the primary for ever. So a read
//! that finds no replica known to have its floor raises the wanted position here
//! (`ReplayWatch::want`), and one watcher per replica asks that replica for its replay
//! position (`pg_last_wal_replay_lsn()`, one simple query) until it has replayed the wanted
//! position or `WATCH_FOR` has passed, at most once per `SPACING` (a replica the monitor finds
//! further behind is asked less often, `spacing`). What it learns goes into the
//! node's shared `replayed` (read by the router through `Node::replay_lsn`, no new topology
//! is published) and wakes the reads that wait for it (`routing.causal_wait_ms`).
//!
//! Idle when no read waits: the cost is a query per replica per write that a read follows
//! (at most 1,000 a second per replica), on a connection of pgsplit's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

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

pub struct ReplayWatch {
    /// The furthest position a read waits for (raised by sessions, read by the watchers).
    wanted: watch::Sender<Lsn>,
    /// Signalled whenever a watcher learns a replica's position.
    pub learned: Notify,
}

impl Default for ReplayWatch {
    fn default() -> Self {
        ReplayWatch { wanted: watch::Sender::new(Lsn::ZERO), learned: Notify::new() }
    }
}

impl ReplayWatch {
    /// A read waits for a replica to replay `floor`: the watchers ask the replicas that have
    /// not been seen past the furthest position wanted (each at most once per `SPACING`).
    pub fn want(&self, floor: Lsn) {
        if floor == Lsn::MAX || floor.is_zero() {
            return;
        }
        self.wanted.send_if_modified(|w| {
            *w = floor.max(*w);
            true
        });
    }
}

/// One replica's watcher (a task for every node, acting while that node is a replica in
/// rotation). Ends when the node is removed from the configuration.
pub async fn watch(cluster: Arc<Cluster>, sql: Arc<SqlPools>, config: Live, node: usize) {
    let mut wanted = cluster.replay.wanted.subscribe();
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
                (n.addr.clone(), n.replayed.clone(), n.replay_lsn(), eligible, n.lag_ms)
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

    #[test]
    fn the_wanted_position_only_rises_and_every_want_wakes_the_watchers() {
        let w = ReplayWatch::default();
        let mut rx = w.wanted.subscribe();
        w.want(Lsn(500));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), Lsn(500));
        // A lower floor wakes them again (a replica may have been seen behind since), but the
        // wanted position stays the furthest.
        w.want(Lsn(300));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(*rx.borrow_and_update(), Lsn(500));
        // No floor, or one no replica can have (a COPY's unknown end): nothing to ask.
        w.want(Lsn::ZERO);
        w.want(Lsn::MAX);
        assert!(!rx.has_changed().unwrap_or(true));
    }
}
