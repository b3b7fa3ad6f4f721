//! Failover with several instances: what every instance does with a topology it reads from
//! etcd (`apply`), and the leader's turn of the failover loop (`turn`): the peers' verdict
//! fed to the failover rules, the barrier epoch, the wait for every instance, STONITH, the
//! promotion, and the new primary published by compare-and-swap before anyone writes to it.
//!
//! The life of a coordinated failover, epoch N being the healthy one:
//! 1. every instance publishes whether it reaches the primary (member key);
//! 2. the leader's rules decide to promote C (a majority finds the primary down, no replica
//!    hears from it) and it writes "epoch N+1, barrier: candidate C" (CAS);
//! 3. each instance applies N+1: writes wait, idle connections to the old primary close, the
//!    old primary is fenced if this instance still reaches it; then it acknowledges N+1;
//! 4. once every live instance has, the leader runs fence_command and promotes C;
//! 5. the leader writes "epoch N+2, primary C, old primary fenced" (CAS); every instance
//!    applies it and writes resume there.
//!
//! A leader that dies between 2 and 5 leaves the barrier in etcd; the next leader finds it and
//! runs 4 and 5 for the same candidate (rule 4 of `rules.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Handles;
use super::actions;
use super::decide::{self as failover, Action, Check, Phase, Policy, Request, State};
use super::follow::{addr_of, mapped, shared_addr, sync};
use super::sql as failover_sql;
use crate::config::Config;
use crate::coord::Coordination;
use crate::coord::etcd::{Session, current_session as session};
use crate::coord::rules;
use crate::coord::values::{Barrier, Request as Command, SharedTopology};

/// One round of the failover loop with several instances: this instance's view goes to its
/// member key, the state follows etcd's topology, and the leader decides (followers observe).
pub async fn round(
    h: &Arc<Handles>,
    config: &Arc<Config>,
    coord: &Arc<Coordination>,
    state: &mut State,
    check: Check,
    policy: Policy,
) -> State {
    coord.primary_ok.send_if_modified(|v| std::mem::replace(v, check.primary_ok) != check.primary_ok);
    *state = sync(h, coord, state.clone());
    if coord.is_leader() {
        turn(h, config, coord, state.clone(), check, policy).await
    } else {
        follow(state.clone(), &check)
    }
}

/// A follower's turn: it only observes (its view is in its member key).
fn follow(state: State, check: &Check) -> State {
    State {
        phase: if check.primary_ok { Phase::Healthy } else { Phase::Suspect },
        failing_since: None,
        positions_at_failure: Vec::new(),
        ..state
    }
}

/// The leader's turn of the failover loop.
async fn turn(
    h: &Arc<Handles>,
    config: &Arc<Config>,
    coord: &Arc<Coordination>,
    state: State,
    mut check: Check,
    policy: Policy,
) -> State {
    let Some(s) = session(coord) else { return state };
    let Some((t, _)) = coord.remote() else { return state };
    let Ok(m) = mapped(h, coord, &t) else { return state };
    match s.members(coord).await {
        Ok(members) => check.peers = Some(rules::peers(&members)),
        Err(e) => {
            tracing::warn!("coordination: cannot read the members: {e}");
            return state;
        }
    }
    let promoting = match state.phase {
        Phase::Promoting(c) => Some(c),
        _ => None,
    };
    if let Some(c) = rules::to_finish(&m, promoting) {
        tracing::warn!(epoch = t.epoch, candidate = %addr_of(h, c), "coordination: finishing the failover etcd records");
        return match finish(h, config, coord, &s, c).await {
            Ok(()) => State { phase: Phase::Promoting(c), ..state },
            Err(e) => {
                tracing::error!("coordination: failover not finished yet: {e}");
                State { phase: Phase::Blocked(e), ..state }
            }
        };
    }
    let request = match s.take_request(coord).await {
        Ok(Some(r)) => to_request(h, coord, &r),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("coordination: cannot read requests: {e}");
            None
        }
    };
    let (next, actions) = match request {
        Some(Request::Promote(n)) => failover::promote_by_hand(&state, n),
        Some(Request::Failover) => {
            let now = Policy { auto: true, failover_after: Duration::ZERO, ..policy };
            failover::step(&state, &check, &now)
        }
        Some(Request::Switchover(n)) => return switchover(h, config, coord, &s, state, n).await,
        Some(Request::Rejoin(n)) => return rejoin(h, config, coord, &s, state, n).await,
        None => failover::step(&state, &check, &policy),
    };
    let started = state.failing_since.map(|(t, _)| t);
    let mut next = next;
    for a in actions {
        match a {
            Action::Promote(c) => {
                let loss = next.last_loss_bytes.unwrap_or(0);
                let done = match begin(h, coord, &s, c, loss).await {
                    Ok(()) => finish(h, config, coord, &s, c).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::error!("coordination: failover not finished yet: {e}");
                    // Next turn: to_finish resumes a published barrier; else the rules decide anew.
                    next.phase = Phase::Blocked(e);
                }
            }
            Action::Persist => {
                if let Err(e) = publish(h, coord, &s, &next).await {
                    tracing::error!("coordination: cannot publish the new primary: {e}");
                    return state;
                }
                actions::execute(h, config, &check, &next, Action::Persist, started, state.timeline).await;
            }
            a => {
                if let Some(diverged) = actions::execute(h, config, &check, &next, a, started, state.timeline).await
                    && !next.fenced.contains(&diverged)
                {
                    next.fenced.push(diverged);
                    if let Err(e) = publish(h, coord, &s, &next).await {
                        tracing::error!("coordination: cannot publish a diverged replica's fence: {e}");
                    }
                }
            }
        }
    }
    next
}

fn to_request(h: &Handles, coord: &Coordination, r: &Command) -> Option<Request> {
    let node =
        r.server.as_deref().and_then(|a| h.cluster.load().nodes.iter().position(|n| coord.shared_addr(&n.addr) == a));
    let req = match (r.kind.as_str(), node) {
        ("failover", _) => Some(Request::Failover),
        ("promote", Some(n)) => Some(Request::Promote(n)),
        ("switchover", Some(n)) => Some(Request::Switchover(n)),
        ("rejoin", Some(n)) => Some(Request::Rejoin(n)),
        _ => None,
    };
    match &req {
        Some(q) => tracing::warn!(from = %r.from, request = ?q, "coordination: an operator's request"),
        None => {
            tracing::error!(from = %r.from, kind = %r.kind, server = ?r.server, "coordination: unknown request ignored")
        }
    }
    req
}

/// Waits until this instance has applied `epoch` (its own compare-and-swap comes back through
/// the watch).
async fn applied(coord: &Coordination, epoch: u64, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let changed = coord.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if coord.epoch() >= epoch {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() && coord.epoch() < epoch {
            return Err(format!("epoch {epoch} did not come back from etcd"));
        }
    }
}

/// Step 2: "epoch N+1, no primary, candidate C".
async fn begin(h: &Handles, coord: &Coordination, s: &Session, c: usize, loss: u64) -> Result<(), String> {
    let (t, revision) = coord.remote().ok_or("no topology from etcd")?;
    if t.barrier.is_some() {
        return Err("a failover is already in progress".into());
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let next = SharedTopology {
        epoch: t.epoch + 1,
        barrier: Some(Barrier { candidate: shared_addr(h, coord, c), since_ms: now_ms, loss_bytes: loss }),
        by: coord.name.clone(),
        ..t
    };
    if !s.cas_topology(coord, &next, revision).await? {
        return Err("the topology changed in etcd, or this instance no longer leads".into());
    }
    tracing::warn!(epoch = next.epoch, candidate = %addr_of(h, c), "coordination: barrier published");
    applied(coord, next.epoch, coord.ttl).await
}

/// Steps 3 and 4: every live instance has stopped writing; STONITH; promote.
async fn finish(h: &Handles, config: &Config, coord: &Coordination, s: &Session, c: usize) -> Result<(), String> {
    wait_for_everyone(coord, s, config).await?;
    let (t, _) = coord.remote().ok_or("no topology from etcd")?;
    let old = mapped(h, coord, &t)?.primary;
    run_fence_command(config, &addr_of(h, old)).await;
    actions::promote(h, config, &addr_of(h, c)).await?;
    h.control.wake.notify_one();
    Ok(())
}

async fn wait_for_everyone(coord: &Coordination, s: &Session, config: &Config) -> Result<(), String> {
    let epoch = coord.epoch();
    let deadline = Instant::now() + Duration::from_millis(config.coordination.barrier_timeout_ms);
    let t0 = Instant::now();
    loop {
        let missing = rules::unacknowledged(&s.members(coord).await?, epoch);
        if missing.is_empty() {
            tracing::warn!(
                epoch,
                waited_ms = t0.elapsed().as_millis() as u64,
                "coordination: every live instance stopped writing"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("instances {missing:?} have not acknowledged epoch {epoch}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// fence_command, awaited before a promotion (several instances: STONITH first).
async fn run_fence_command(config: &Config, old: &str) {
    let cmd = &config.failover.fence_command;
    if cmd.is_empty() {
        return;
    }
    let limit = Duration::from_millis(config.coordination.barrier_timeout_ms);
    let run = tokio::process::Command::new("sh").arg("-c").arg(format!("{cmd} \"$0\"")).arg(old).status();
    match tokio::time::timeout(limit, run).await {
        Ok(r) => tracing::warn!(server = %old, "fence_command finished before the promotion: {r:?}"),
        Err(_) => tracing::error!(server = %old, "fence_command still running after barrier_timeout_ms; promoting"),
    }
}

/// Step 5: "epoch N+2, primary C".
async fn publish(h: &Handles, coord: &Coordination, s: &Session, next: &State) -> Result<(), String> {
    let (t, revision) = coord.remote().ok_or("no topology from etcd")?;
    let addr = |i: usize| shared_addr(h, coord, i);
    let new = SharedTopology {
        epoch: next.epoch.max(t.epoch),
        primary: addr(next.primary),
        timeline: next.timeline,
        fenced: next.fenced.iter().map(|&i| addr(i)).collect(),
        barrier: None,
        by: coord.name.clone(),
    };
    if !s.cas_topology(coord, &new, revision).await? {
        return Err("the topology changed in etcd, or this instance no longer leads".into());
    }
    tracing::warn!(epoch = new.epoch, primary = %new.primary, "coordination: topology published");
    applied(coord, new.epoch, coord.ttl).await
}

/// A planned switchover with several instances: the barrier stops writes everywhere, then the
/// single-instance switchover (in-flight transactions finish, the old primary turns read-only,
/// the target replays everything), then the promotion.
async fn switchover(
    h: &Arc<Handles>,
    config: &Arc<Config>,
    coord: &Coordination,
    s: &Session,
    state: State,
    n: usize,
) -> State {
    if let Err(e) = begin(h, coord, s, n, 0).await {
        tracing::error!("switchover refused: {e}");
        return state;
    }
    let done = async {
        wait_for_everyone(coord, s, config).await?;
        failover_sql::switchover(h, config, &state, n).await?;
        actions::promote(h, config, &addr_of(h, n)).await
    };
    match done.await {
        Ok(()) => {
            h.control.wake.notify_one();
            State { phase: Phase::Promoting(n), ..state }
        }
        Err(e) => {
            // Nothing was promoted: the old primary stays, in a new epoch without a barrier.
            tracing::error!("switchover failed, writes resume on the old primary: {e}");
            let back = State { epoch: coord.epoch() + 1, ..state.clone() };
            if let Err(e) = publish(h, coord, s, &back).await {
                tracing::error!("coordination: cannot lift the barrier: {e}");
            }
            actions::resume_writes(h);
            back
        }
    }
}

async fn rejoin(
    h: &Arc<Handles>,
    config: &Arc<Config>,
    coord: &Coordination,
    s: &Session,
    state: State,
    n: usize,
) -> State {
    match failover_sql::follows(h, config, n, state.primary).await {
        Ok(()) => {
            let mut next = state.clone();
            next.fenced.retain(|&f| f != n);
            match publish(h, coord, s, &next).await {
                Ok(()) => {
                    tracing::warn!(server = %addr_of(h, n), "rejoined as a replica");
                    next
                }
                Err(e) => {
                    tracing::error!("REJOIN not published: {e}");
                    state
                }
            }
        }
        Err(e) => {
            tracing::error!("REJOIN of node {n} refused: {e}");
            state
        }
    }
}
