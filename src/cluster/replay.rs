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
//! position or `watcher::WATCH_FOR` has passed, at most once per `watcher::SPACING` (a replica the monitor finds
//! further behind is asked less often, `watcher::spacing`). What it learns goes into the
//! node's shared `replayed` (read by the router through `Node::replay_lsn`, no new topology
//! is published) and wakes the reads that wait for it (`routing.causal_wait_ms`).
//!
//! This file holds the shared state (`Cluster::replay`); the watcher task is `watcher.rs`.
//!
//! Idle when no read waits: the cost is a query per replica per write that a read follows
//! (at most 1,000 a second per replica), on a connection of pgsplit's own.

use tokio::sync::{Notify, watch};

use crate::lsn::Lsn;

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
    /// The watchers' view of the wanted position.
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.wanted.subscribe()
    }

    /// A read waits for a replica to replay `floor`: the watchers ask the replicas that have
    /// not been seen past the furthest position wanted (each at most once per `watcher::SPACING`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
