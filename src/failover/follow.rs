//! Every instance on etcd: a topology read from etcd is applied here before another write goes
//! out (a barrier: writes wait, the old primary is fenced from here too; a new primary: routed
//! to), and the failover state follows it.

use std::sync::Arc;
use std::time::Duration;

use super::Handles;
use super::decide::{Phase, State};
use crate::coord::rules::{self, Mapped};
use crate::coord::values::SharedTopology;
use crate::coord::{Coordination, Follower};

pub(super) fn addr_of(h: &Handles, i: usize) -> String {
    h.cluster.load().nodes.get(i).map(|n| n.addr.to_string()).unwrap_or_default()
}

/// A server's address as etcd names it.
pub(super) fn shared_addr(h: &Handles, coord: &Coordination, i: usize) -> String {
    coord.shared_addr(&addr_of(h, i))
}

pub(super) fn mapped(h: &Handles, coord: &Coordination, t: &SharedTopology) -> Result<Mapped, String> {
    let topo = h.cluster.load();
    let addrs: Vec<String> = topo.nodes.iter().map(|n| coord.shared_addr(&n.addr)).collect();
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    rules::map(t, &addrs)
}

/// The failover wing as the etcd session's follower: what coord calls without knowing it.
pub struct Follow {
    pub h: Arc<Handles>,
    pub coord: Arc<Coordination>,
}

impl Follower for Follow {
    fn apply<'a>(
        &'a self,
        t: &'a SharedTopology,
        revision: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(apply(&self.h, &self.coord, t, revision))
    }

    fn local_topology(&self) -> SharedTopology {
        local_topology(&self.h, &self.coord)
    }

    fn wake(&self) {
        self.h.control.wake.notify_one();
    }
}

/// This instance's topology, written when etcd has none yet.
fn local_topology(h: &Handles, coord: &Coordination) -> SharedTopology {
    let t = h.cluster.load();
    let state = h.control.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    SharedTopology {
        epoch: state.epoch,
        primary: t.nodes.get(t.primary()).map(|n| coord.shared_addr(&n.addr)).unwrap_or_default(),
        timeline: state.timeline,
        fenced: t.nodes.iter().filter(|n| n.fenced && !n.removed).map(|n| coord.shared_addr(&n.addr)).collect(),
        barrier: None,
        by: coord.name.clone(),
    }
}

/// Every instance: a topology read from etcd, applied before another write goes out.
pub async fn apply(h: &Arc<Handles>, coord: &Arc<Coordination>, t: &SharedTopology, revision: i64) {
    let m = match mapped(h, coord, t) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("coordination: {e}; writes stay suspended");
            coord.refused();
            return;
        }
    };
    let before = coord.epoch();
    let current = h.cluster.load().primary();
    if t.barrier.is_some() {
        coord.applied(t.clone(), revision);
        let old = addr_of(h, m.primary);
        h.pools.drop_idle(&old);
        if t.epoch != before {
            tracing::warn!(epoch = t.epoch, old_primary = %old, by = %t.by, "coordination: failover in progress, writes suspended");
            // Fence the old primary from here too if this instance still reaches it: nothing
            // of ours, nor of anyone's, commits there once the new primary may exist.
            let config = h.config.load_full();
            if config.failover.fence_old_primary && *coord.primary_ok.borrow() {
                let work = super::sql::fence(h, &config, &old);
                match tokio::time::timeout(Duration::from_millis(config.failover.check_timeout_ms), work).await {
                    Ok(Ok(())) => tracing::warn!(server = %old, "coordination: fenced the old primary"),
                    Ok(Err(e)) => tracing::warn!(server = %old, "coordination: could not fence the old primary: {e}"),
                    Err(_) => tracing::warn!(server = %old, "coordination: fencing the old primary timed out"),
                }
            }
        }
    } else {
        let fenced_now: Vec<usize> =
            h.cluster.load().nodes.iter().enumerate().filter(|(_, n)| n.fenced).map(|(i, _)| i).collect();
        let mut want = m.fenced.clone();
        want.sort();
        if m.primary != current || want != fenced_now {
            tracing::warn!(epoch = t.epoch, primary = %t.primary, fenced = ?t.fenced, "coordination: new topology");
            super::actions::apply_new_primary(h, m.primary, &m.fenced);
            if m.primary != current {
                h.metrics.failovers.inc();
            }
        }
        for (i, n) in h.cluster.load().nodes.iter().enumerate() {
            if n.fenced && !m.fenced.contains(&i) && i != m.primary {
                super::actions::rejoined(h, i);
            }
        }
        coord.applied(t.clone(), revision);
    }
    h.metrics.topology_epoch.set(t.epoch as i64);
    coord.changed.notify_waiters();
    h.cluster.published.notify_waiters();
}

/// The failover state as etcd has it (epoch, primary, fenced, timeline).
pub(super) fn sync(h: &Handles, coord: &Coordination, mut state: State) -> State {
    let Some((t, _)) = coord.remote() else { return state };
    let Ok(m) = mapped(h, coord, &t) else { return state };
    if t.epoch != state.epoch || m.primary != state.primary {
        state.failing_since = None;
        state.positions_at_failure.clear();
    }
    state.epoch = t.epoch;
    state.primary = m.primary;
    state.fenced = m.fenced;
    state.timeline = state.timeline.max(t.timeline);
    if m.candidate.is_none() && matches!(state.phase, Phase::Promoting(_)) {
        state.phase = Phase::Healthy;
    }
    state
}
