//! The failover loop: each turn gathers what every server says, feeds it to the rules alone
//! (this instance decides) or to the leader's round (several instances on etcd), and carries
//! out the actions.

use std::sync::Arc;
use std::time::Duration;

use super::Handles;
use super::actions::*;
use super::decide::{self, Action, Check, Phase, Policy, Request, State};
use super::observe::gather;
use super::sql::{follows, switchover, warn_about_timeouts};
use crate::config::{Config, FailoverMode};

/// Runs the failover loop for as long as the proxy runs.
pub async fn run(h: Arc<Handles>) {
    let mut state = {
        let t = h.cluster.load();
        State {
            fenced: t.nodes.iter().enumerate().filter(|(_, n)| n.fenced).map(|(i, _)| i).collect(),
            ..State::new(t.primary())
        }
    };
    if let Some(saved) = super::state_file::load(&h) {
        state.epoch = saved.epoch;
        state.timeline = saved.timeline;
    }
    // The primary's synchronous set at its last good check (None: asynchronous).
    let last_sync = std::sync::Mutex::new(None);
    let mut timeouts_checked = false;
    loop {
        let config = h.config.load_full();
        if h.control.unrecorded.load(std::sync::atomic::Ordering::SeqCst) {
            retry_record(&h, &state);
        }
        let policy = Policy {
            failover_after: Duration::from_millis(config.failover.failover_after_ms),
            max_failover_lag_bytes: config.failover.max_failover_lag_bytes,
            auto: config.failover.mode == FailoverMode::Auto,
        };
        let check = gather(&h, &config, &state, &last_sync).await;
        if !check.primary_ok {
            h.cluster.topology.rcu(|t| {
                let mut t = (**t).clone();
                if let Some(n) = t.nodes.get_mut(state.primary) {
                    n.healthy = false;
                }
                t
            });
            h.cluster.unreachable.send_modify(|n| *n += 1);
        }
        if !timeouts_checked && check.primary_ok {
            timeouts_checked = true;
            warn_about_timeouts(&h, &config).await;
        }
        // Several instances: etcd's topology is the truth and only the leader decides
        // (failover/leader.rs); alone, this instance decides and acts.
        #[cfg(feature = "etcd")]
        let next = match h.coord.clone() {
            Some(coord) => super::leader::round(&h, &config, &coord, &mut state, check, policy).await,
            None => alone(&h, &config, &state, &check, policy).await,
        };
        #[cfg(not(feature = "etcd"))]
        let next = alone(&h, &config, &state, &check, policy).await;
        if next.phase != state.phase {
            tracing::info!(phase = ?next.phase, "failover state");
            if matches!(next.phase, Phase::Vetoed(_)) {
                h.metrics.failover_vetoes.inc();
            }
        }
        state = next;
        *h.control.state.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
        let interval = Duration::from_millis(config.failover.health_interval_ms);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = h.control.wake.notified() => {}
        }
    }
}

/// One instance alone: the rules decide and this instance carries out the actions.
async fn alone(h: &Arc<Handles>, config: &Arc<Config>, state: &State, check: &Check, policy: Policy) -> State {
    let request = h.control.request.lock().unwrap_or_else(|p| p.into_inner()).take();
    let (next, actions) = match request {
        Some(Request::Promote(node)) => match fence_before_promote(h, config, state, check).await {
            Ok(()) => decide::promote_by_hand(state, node),
            Err(e) => {
                tracing::error!("PROMOTE refused: {e}");
                resume_writes(h);
                (state.clone(), vec![Action::Report(format!("PROMOTE of node {node} refused: {e}"))])
            }
        },
        Some(Request::Switchover(node)) => match switchover(h, config, state, node).await {
            Ok(()) => decide::promote_by_hand(state, node),
            Err(e) => {
                tracing::error!("switchover refused: {e}");
                resume_writes(h);
                (state.clone(), Vec::new())
            }
        },
        Some(Request::Rejoin(node)) => match follows(h, config, node, state.primary).await {
            Ok(()) => {
                let mut next = state.clone();
                next.fenced.retain(|&f| f != node);
                rejoined(h, node);
                if let Err(e) = super::state_file::save(h, &next, &h.cluster.load()) {
                    tracing::error!("cannot write the state file: {e}");
                }
                (next, vec![Action::Report(format!("node {node} rejoined as a replica"))])
            }
            Err(e) => (state.clone(), vec![Action::Report(format!("REJOIN of node {node} refused: {e}"))]),
        },
        Some(Request::Failover) => {
            let now = Policy { auto: true, failover_after: Duration::ZERO, ..policy };
            decide::step(state, check, &now)
        }
        None => decide::step(state, check, &policy),
    };
    let started = state.failing_since.map(|(t, _)| t);
    let mut next = next;
    for a in actions {
        if let Some(diverged) = execute(h, config, check, &next, a, started, state.timeline).await
            && !next.fenced.contains(&diverged)
        {
            next.fenced.push(diverged);
            if let Err(e) = super::state_file::save(h, &next, &h.cluster.load()) {
                tracing::error!("cannot write the state file: {e}");
            }
        }
    }
    next
}
