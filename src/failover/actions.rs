//! Carrying out the failover rules' actions: pg_promote, the state file, the new topology,
//! re-pointing the other replicas, fencing the old primary, the on_failover_command hook.

use std::time::{Duration, Instant};

use super::Handles;
use super::decide::{Action, Check, Phase, State};
use super::sql::{diverged, fence, repoint};
use crate::cluster::topology::{OutReason, Role};
use crate::config::Config;

/// A new topology whose state file could not be written: written now if it can be, and only
/// then applied (the held writes go on).
pub(super) fn retry_record(h: &Handles, state: &State) {
    match super::state_file::save(h, state, &h.cluster.load()) {
        Ok(()) => {
            tracing::warn!("failover: the state file is written: the new primary takes writes");
            h.control.unrecorded.store(false, std::sync::atomic::Ordering::SeqCst);
            apply_new_primary(h, state.primary, &state.fenced);
            h.metrics.failovers.inc();
        }
        Err(e) => tracing::error!("failover: still cannot write the state file: {e}"),
    }
}

/// Before an operator's PROMOTE: a primary that still answers is fenced first (writes held,
/// read-only, every client backend ended), so nothing pgsplit holds there can write once the
/// new primary takes writes. One that does not answer cannot take writes from pgsplit; if it
/// comes back, the rules report a split brain and it gets no traffic.
pub(super) async fn fence_before_promote(
    h: &Handles,
    config: &Config,
    state: &State,
    check: &Check,
) -> Result<(), String> {
    if !check.nodes.get(state.primary).is_some_and(|n| n.reachable && !n.in_recovery) {
        return Ok(());
    }
    let addr = h.cluster.load().nodes.get(state.primary).map(|n| n.addr.to_string()).unwrap_or_default();
    h.control.writes_held.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = h
        .sql
        .get(&addr, &config.monitor.database)
        .await
        .ok_or("the primary answers checks but not pgsplit's connection")?;
    super::sql::end_writes(&c)
        .await
        .map_err(|e| format!("the primary {addr} still answers and could not be fenced ({e})"))?;
    tracing::warn!(server = %addr, "PROMOTE: the old primary is read-only and its sessions ended");
    Ok(())
}

/// Carries out one action. Some(node): that replica turned out diverged (fence it).
pub(crate) async fn execute(
    h: &Handles,
    config: &Config,
    check: &Check,
    next: &State,
    action: Action,
    started: Option<Instant>,
    old_timeline: u32,
) -> Option<usize> {
    let t = h.cluster.topology.load_full();
    let addr = |i: usize| t.nodes.get(i).map(|n| n.addr.to_string()).unwrap_or_default();
    match action {
        Action::Report(msg) => tracing::warn!("failover: {msg}"),
        Action::Promote(node) => {
            let a = addr(node);
            match promote(h, config, &a).await {
                Ok(()) => {
                    // The next check sees it out of recovery at once.
                    h.control.wake.notify_one();
                }
                Err(e) => tracing::error!(server = %a, "failover: promotion failed: {e}"),
            }
        }
        Action::Persist => {
            // The new topology is written down before any client sees it: unrecorded, it is
            // not applied, and writes wait (57P03 after failover_wait_ms) until a later turn
            // of the loop records it.
            if let Err(e) = super::state_file::save(h, next, &t) {
                tracing::error!(
                    "failover: cannot write the state file ({e}): the new primary is not used and writes wait \
                     until it can be written (fix failover.state_dir)"
                );
                h.control.unrecorded.store(true, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
            apply_new_primary(h, next.primary, &next.fenced);
            if h.coord.is_none() {
                // (With several instances each counts the new primary as it applies it.)
                h.metrics.failovers.inc();
            }
            if let Some(s) = started {
                h.metrics.last_failover_seconds.set(s.elapsed().as_secs_f64());
            }
            let old = t.primary();
            run_hook("on_failover_command", &config.failover.on_failover_command, vec![addr(old), addr(next.primary)]);
        }
        Action::Repoint { node, primary } => {
            let (a, p) = (addr(node), addr(primary));
            let Some(seen) = check.nodes.get(node).filter(|n| n.reachable) else {
                tracing::warn!(server = %a, "failover: cannot re-point an unreachable replica");
                return None;
            };
            let timeline = seen.timeline.unwrap_or(old_timeline);
            match diverged(h, config, &p, next.timeline, timeline, seen.position).await {
                Ok(Some(fork)) => {
                    tracing::error!(
                        server = %a,
                        position = %seen.position,
                        fork = %fork,
                        "failover: replica diverged from the new primary (replayed past the fork): \
                         out of rotation, needs pg_rewind; REJOIN it once it streams again"
                    );
                    mark_diverged(h, node);
                    run_hook("rejoin_command", &config.failover.rejoin_command, vec![a.clone(), p.clone()]);
                    return Some(node);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(server = %a, "failover: cannot check the fork point ({e}); re-pointing anyway")
                }
            }
            match repoint(h, config, &a, &p).await {
                Ok(()) => tracing::info!(server = %a, primary = %p, "failover: replica re-pointed"),
                Err(e) => tracing::error!(server = %a, "failover: re-pointing failed: {e}"),
            }
        }
        Action::Fence(node) | Action::SplitBrain(node) => {
            let a = addr(node);
            let first_split = matches!(action, Action::SplitBrain(_)) && h.metrics.split_brain.get() == 0;
            if matches!(action, Action::SplitBrain(_)) {
                h.metrics.split_brain.set(1);
                tracing::error!(server = %a, "split brain: the fenced former primary answers writable; it gets no traffic");
            }
            // With several instances, fence_command ran before the promotion (failover/leader.rs).
            if (matches!(action, Action::Fence(_)) && h.coord.is_none()) || first_split {
                run_hook("fence_command", &config.failover.fence_command, vec![a.clone()]);
            }
            if config.failover.fence_old_primary && check.nodes.get(node).is_some_and(|n| n.reachable && !n.in_recovery)
            {
                match fence(h, config, &a).await {
                    Ok(()) => tracing::warn!(server = %a, "fenced: read-only, client sessions ended"),
                    Err(e) => tracing::error!(server = %a, "fencing failed: {e}"),
                }
            }
        }
    }
    let _ = Phase::Healthy;
    None
}

/// pg_promote on `addr` (unless it is already out of recovery), and the proof that it takes
/// writes.
pub(crate) async fn promote(h: &Handles, config: &Config, a: &str) -> Result<(), String> {
    tracing::warn!(server = %a, "failover: promoting");
    let work = async {
        let c = h.sql.get(a, &config.monitor.database).await.ok_or("no connection")?;
        let in_recovery: bool = c.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(|e| e.to_string())?.get(0);
        if in_recovery {
            let _ = c.batch_execute("SELECT pg_wal_replay_resume()").await;
            let promoted: bool =
                c.query_one("SELECT pg_promote(true, 60)", &[]).await.map_err(|e| e.to_string())?.get(0);
            if !promoted {
                return Err("pg_promote did not finish within 60 s".to_string());
            }
        }
        // Out of recovery and taking writes (an xid is assigned).
        c.query_one("SELECT txid_current()", &[]).await.map_err(|e| e.to_string())?;
        // Where its WAL stands now, past the new timeline's switchpoint: the read-your-writes
        // floor is cut to the new primary's position when it is applied, and a position older
        // than the last WAL it replayed (a probe from before the promotion) would cut below
        // commits it has, letting new sessions read them on a replica that has not.
        // The promotion stands if this fails: the cut then uses the last probe, as before.
        match c.query_one("SELECT pg_catalog.pg_current_wal_insert_lsn()::text", &[]).await {
            Ok(row) => {
                let at: String = row.get(0);
                let t = h.cluster.load();
                if let (Some(lsn), Some(n)) = (crate::lsn::Lsn::parse(&at), t.find(a).and_then(|i| t.nodes.get(i))) {
                    n.replayed.raise(lsn);
                }
            }
            Err(e) => tracing::warn!(server = %a, "failover: cannot read the new primary's WAL position: {e}"),
        }
        Ok::<_, String>(())
    };
    match tokio::time::timeout(Duration::from_secs(70), work).await {
        Ok(Ok(())) => {
            tracing::warn!(server = %a, "failover: promoted");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("promotion timed out".into()),
    }
}

/// The new primary and the fenced servers in the topology sessions read; the old primary's
/// idle connections closed; held writes released.
pub(crate) fn apply_new_primary(h: &Handles, primary: usize, fenced: &[usize]) {
    let old = h.cluster.load().primary();
    h.cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        for (i, n) in t.nodes.iter_mut().enumerate() {
            if i == primary {
                n.role = Role::Primary;
                n.fenced = false;
                n.healthy = true;
                n.in_rotation = true;
                n.out = None;
            } else if fenced.contains(&i) {
                n.role = Role::Replica;
                n.fenced = true;
                n.in_rotation = false;
                n.out = Some(OutReason::Fenced);
            } else if n.role == Role::Primary {
                n.role = Role::Replica;
            }
        }
        t
    });
    if old != primary
        && let Some(n) = h.cluster.load().nodes.get(old)
    {
        h.pools.drop_idle(&n.addr);
    }
    if old != primary {
        // Commit bounds taken on the old primary beyond what the new one had replayed name
        // WAL that no longer exists: the floor new sessions start at (and global mode's) is
        // cut to the new primary's position, or reads would stay on it until it wrote as much.
        // (`promote` raised it to where the new primary's WAL stood after its promotion; an
        // instance that follows another's promotion has its last probe's.)
        let reached = h.cluster.load().nodes.get(primary).map(|n| n.replay_lsn()).unwrap_or_default();
        h.global_floor.cut(reached);
    }
    h.cluster.load().publish(&h.metrics);
    resume_writes(h);
}

pub(crate) fn mark_diverged(h: &Handles, node: usize) {
    h.cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        if let Some(n) = t.nodes.get_mut(node) {
            n.fenced = true;
            n.diverged = true;
            n.in_rotation = false;
            n.out = Some(OutReason::Diverged);
        }
        t
    });
}

/// Runs an operator's hook in the background: `sh -c "<cmd> $0 $1 ..."` with `args`.
pub(crate) fn run_hook(name: &'static str, cmd: &str, args: Vec<String>) {
    if cmd.is_empty() {
        return;
    }
    let script = format!("{cmd}{}", (0..args.len()).map(|i| format!(" \"${i}\"")).collect::<String>());
    tokio::spawn(async move {
        let r = tokio::process::Command::new("sh").arg("-c").arg(&script).args(&args).status().await;
        tracing::info!(hook = name, "hook finished: {r:?}");
    });
}

pub(crate) fn resume_writes(h: &Handles) {
    h.control.writes_held.store(false, std::sync::atomic::Ordering::SeqCst);
    h.cluster.published.notify_waiters();
}

/// A fenced node back as a replica of the current primary.
pub(crate) fn rejoined(h: &Handles, node: usize) {
    h.cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        if let Some(n) = t.nodes.get_mut(node) {
            n.fenced = false;
            n.diverged = false;
            n.role = Role::Replica;
            n.in_rotation = false;
            n.out = Some(OutReason::Unreachable);
        }
        t
    });
    h.metrics.split_brain.set(0);
}
