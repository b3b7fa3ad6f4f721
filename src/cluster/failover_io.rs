//! The I/O around the failover rules (`failover.rs`): health checks of the primary (on a kept
//! and on a fresh connection, with a timeout), the replicas' state, and carrying out the
//! actions: pg_promote, the state file, the new topology, re-pointing the other replicas,
//! fencing the old primary, the on_failover_command hook.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::failover::Request;
use super::failover::{self, Action, Check, Phase, Policy, Seen, State};
use super::failover_sql::{diverged, fence, follows, repoint, switchover, warn_about_timeouts};
use super::topology::{OutReason, Role};
use crate::Shared;
use crate::config::{Config, FailoverMode};
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

/// Runs the failover loop for as long as the proxy runs.
pub async fn run(shared: Arc<Shared>) {
    let mut state = {
        let t = shared.cluster.load();
        State {
            fenced: t.nodes.iter().enumerate().filter(|(_, n)| n.fenced).map(|(i, _)| i).collect(),
            ..State::new(t.primary())
        }
    };
    if let Some(saved) = super::state_file::load(&shared) {
        state.epoch = saved.epoch;
        state.timeline = saved.timeline;
    }
    // The primary's synchronous set at its last good check (None: asynchronous).
    let last_sync = std::sync::Mutex::new(None);
    let mut timeouts_checked = false;
    loop {
        let config = shared.config.load_full();
        if shared.unrecorded.load(std::sync::atomic::Ordering::SeqCst) {
            retry_record(&shared, &state);
        }
        let policy = Policy {
            failover_after: Duration::from_millis(config.failover.failover_after_ms),
            max_failover_lag_bytes: config.failover.max_failover_lag_bytes,
            auto: config.failover.mode == FailoverMode::Auto,
        };
        let check = gather(&shared, &config, &state, &last_sync).await;
        if !check.primary_ok {
            shared.cluster.topology.rcu(|t| {
                let mut t = (**t).clone();
                if let Some(n) = t.nodes.get_mut(state.primary) {
                    n.healthy = false;
                }
                t
            });
            shared.cluster.unreachable.send_modify(|n| *n += 1);
        }
        if !timeouts_checked && check.primary_ok {
            timeouts_checked = true;
            warn_about_timeouts(&shared, &config).await;
        }
        // Several instances: etcd's topology is the truth and only the leader decides
        // (coord/leader.rs); alone, this instance decides and acts.
        #[cfg(feature = "etcd")]
        let next = match shared.coord.clone() {
            Some(coord) => crate::coord::leader::round(&shared, &config, &coord, &mut state, check, policy).await,
            None => alone(&shared, &config, &state, &check, policy).await,
        };
        #[cfg(not(feature = "etcd"))]
        let next = alone(&shared, &config, &state, &check, policy).await;
        if next.phase != state.phase {
            tracing::info!(phase = ?next.phase, "failover state");
            if matches!(next.phase, Phase::Vetoed(_)) {
                shared.metrics.failover_vetoes.inc();
            }
        }
        state = next;
        *shared.failover.lock().unwrap_or_else(|p| p.into_inner()) = state.clone();
        let interval = Duration::from_millis(config.failover.health_interval_ms);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shared.failover_wake.notified() => {}
        }
    }
}

/// One instance alone: the rules decide and this instance carries out the actions.
async fn alone(shared: &Arc<Shared>, config: &Arc<Config>, state: &State, check: &Check, policy: Policy) -> State {
    let request = shared.failover_request.lock().unwrap_or_else(|p| p.into_inner()).take();
    let (next, actions) = match request {
        Some(Request::Promote(node)) => match fence_before_promote(shared, config, state, check).await {
            Ok(()) => failover::promote_by_hand(state, node),
            Err(e) => {
                tracing::error!("PROMOTE refused: {e}");
                resume_writes(shared);
                (state.clone(), vec![Action::Report(format!("PROMOTE of node {node} refused: {e}"))])
            }
        },
        Some(Request::Switchover(node)) => match switchover(shared, config, state, node).await {
            Ok(()) => failover::promote_by_hand(state, node),
            Err(e) => {
                tracing::error!("switchover refused: {e}");
                resume_writes(shared);
                (state.clone(), Vec::new())
            }
        },
        Some(Request::Rejoin(node)) => match follows(shared, config, node, state.primary).await {
            Ok(()) => {
                let mut next = state.clone();
                next.fenced.retain(|&f| f != node);
                rejoined(shared, node);
                if let Err(e) = super::state_file::save(shared, &next, &shared.cluster.load()) {
                    tracing::error!("cannot write the state file: {e}");
                }
                (next, vec![Action::Report(format!("node {node} rejoined as a replica"))])
            }
            Err(e) => (state.clone(), vec![Action::Report(format!("REJOIN of node {node} refused: {e}"))]),
        },
        Some(Request::Failover) => {
            let now = Policy { auto: true, failover_after: Duration::ZERO, ..policy };
            failover::step(state, check, &now)
        }
        None => failover::step(state, check, &policy),
    };
    let started = state.failing_since.map(|(t, _)| t);
    let mut next = next;
    for a in actions {
        if let Some(diverged) = execute(shared, config, check, &next, a, started, state.timeline).await
            && !next.fenced.contains(&diverged)
        {
            next.fenced.push(diverged);
            if let Err(e) = super::state_file::save(shared, &next, &shared.cluster.load()) {
                tracing::error!("cannot write the state file: {e}");
            }
        }
    }
    next
}

/// One health check of every server, all at once.
pub(crate) async fn gather(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    state: &State,
    sync: &std::sync::Mutex<Option<Vec<bool>>>,
) -> Check {
    let t = shared.cluster.topology.load_full();
    let timeout = Duration::from_millis(config.failover.check_timeout_ms);
    let now = Instant::now();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let tasks: Vec<_> = t
        .nodes
        .iter()
        .map(|n| {
            let (shared, config, addr, removed) = (shared.clone(), config.clone(), n.addr.clone(), n.removed);
            tokio::spawn(async move {
                if removed {
                    return Answered { seen: Seen::default(), standby_name: String::new(), sync: None };
                }
                seen(&shared, &config, &addr, timeout).await
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
            s.promotable = n.promotable && n.role == Role::Replica && !n.fenced;
            s.priority = n.priority;
        }
    }
    // The primary on a fresh connection too: a kept connection can outlive a server that no
    // longer accepts new ones, and the other way round.
    let p = state.primary;
    let kept_ok = nodes.get(p).is_some_and(|s| s.reachable && !s.in_recovery);
    let fresh_ok = kept_ok && fresh_check(config, &t.nodes[p].addr, timeout).await;
    Check { now, now_ms, primary_ok: kept_ok && fresh_ok, nodes, sync_configured: last_sync.is_some(), peers: None }
}

async fn seen(shared: &Shared, config: &Config, addr: &str, timeout: Duration) -> Answered {
    let work = async {
        let c = shared.sql.get(addr, &config.monitor.database).await?;
        c.query_one(REPLICA_SQL, &[]).await.ok()
    };
    let Ok(Some(row)) = tokio::time::timeout(timeout, work).await else {
        shared.sql.forget(addr);
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

/// A new topology whose state file could not be written: written now if it can be, and only
/// then applied (the held writes go on).
fn retry_record(shared: &Shared, state: &State) {
    match super::state_file::save(shared, state, &shared.cluster.load()) {
        Ok(()) => {
            tracing::warn!("failover: the state file is written: the new primary takes writes");
            shared.unrecorded.store(false, std::sync::atomic::Ordering::SeqCst);
            apply_new_primary(shared, state.primary, &state.fenced);
            shared.metrics.failovers.inc();
        }
        Err(e) => tracing::error!("failover: still cannot write the state file: {e}"),
    }
}

/// Before an operator's PROMOTE: a primary that still answers is fenced first (writes held,
/// read-only, every client backend ended), so nothing pgsplit holds there can write once the
/// new primary takes writes. One that does not answer cannot take writes from pgsplit; if it
/// comes back, the rules report a split brain and it gets no traffic.
async fn fence_before_promote(shared: &Shared, config: &Config, state: &State, check: &Check) -> Result<(), String> {
    if !check.nodes.get(state.primary).is_some_and(|n| n.reachable && !n.in_recovery) {
        return Ok(());
    }
    let addr = shared.cluster.load().nodes.get(state.primary).map(|n| n.addr.to_string()).unwrap_or_default();
    shared.writes_held.store(true, std::sync::atomic::Ordering::SeqCst);
    let c = shared
        .sql
        .get(&addr, &config.monitor.database)
        .await
        .ok_or("the primary answers checks but not pgsplit's connection")?;
    super::failover_sql::end_writes(&c)
        .await
        .map_err(|e| format!("the primary {addr} still answers and could not be fenced ({e})"))?;
    tracing::warn!(server = %addr, "PROMOTE: the old primary is read-only and its sessions ended");
    Ok(())
}

/// Carries out one action. Some(node): that replica turned out diverged (fence it).
pub(crate) async fn execute(
    shared: &Shared,
    config: &Config,
    check: &Check,
    next: &State,
    action: Action,
    started: Option<Instant>,
    old_timeline: u32,
) -> Option<usize> {
    let t = shared.cluster.topology.load_full();
    let addr = |i: usize| t.nodes.get(i).map(|n| n.addr.to_string()).unwrap_or_default();
    match action {
        Action::Report(msg) => tracing::warn!("failover: {msg}"),
        Action::Promote(node) => {
            let a = addr(node);
            match promote(shared, config, &a).await {
                Ok(()) => {
                    // The next check sees it out of recovery at once.
                    shared.failover_wake.notify_one();
                }
                Err(e) => tracing::error!(server = %a, "failover: promotion failed: {e}"),
            }
        }
        Action::Persist => {
            // The new topology is written down before any client sees it: unrecorded, it is
            // not applied, and writes wait (57P03 after failover_wait_ms) until a later turn
            // of the loop records it.
            if let Err(e) = super::state_file::save(shared, next, &t) {
                tracing::error!(
                    "failover: cannot write the state file ({e}): the new primary is not used and writes wait \
                     until it can be written (fix failover.state_dir)"
                );
                shared.unrecorded.store(true, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
            apply_new_primary(shared, next.primary, &next.fenced);
            if shared.coord.is_none() {
                // (With several instances each counts the new primary as it applies it.)
                shared.metrics.failovers.inc();
            }
            if let Some(s) = started {
                shared.metrics.last_failover_seconds.set(s.elapsed().as_secs_f64());
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
            match diverged(shared, config, &p, next.timeline, timeline, seen.position).await {
                Ok(Some(fork)) => {
                    tracing::error!(
                        server = %a,
                        position = %seen.position,
                        fork = %fork,
                        "failover: replica diverged from the new primary (replayed past the fork): \
                         out of rotation, needs pg_rewind; REJOIN it once it streams again"
                    );
                    mark_diverged(shared, node);
                    run_hook("rejoin_command", &config.failover.rejoin_command, vec![a.clone(), p.clone()]);
                    return Some(node);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(server = %a, "failover: cannot check the fork point ({e}); re-pointing anyway")
                }
            }
            match repoint(shared, config, &a, &p).await {
                Ok(()) => tracing::info!(server = %a, primary = %p, "failover: replica re-pointed"),
                Err(e) => tracing::error!(server = %a, "failover: re-pointing failed: {e}"),
            }
        }
        Action::Fence(node) | Action::SplitBrain(node) => {
            let a = addr(node);
            let first_split = matches!(action, Action::SplitBrain(_)) && shared.metrics.split_brain.get() == 0;
            if matches!(action, Action::SplitBrain(_)) {
                shared.metrics.split_brain.set(1);
                tracing::error!(server = %a, "split brain: the fenced former primary answers writable; it gets no traffic");
            }
            // With several instances, fence_command ran before the promotion (coord/leader.rs).
            if (matches!(action, Action::Fence(_)) && shared.coord.is_none()) || first_split {
                run_hook("fence_command", &config.failover.fence_command, vec![a.clone()]);
            }
            if config.failover.fence_old_primary && check.nodes.get(node).is_some_and(|n| n.reachable && !n.in_recovery)
            {
                match fence(shared, config, &a).await {
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
pub(crate) async fn promote(shared: &Shared, config: &Config, a: &str) -> Result<(), String> {
    tracing::warn!(server = %a, "failover: promoting");
    let work = async {
        let c = shared.sql.get(a, &config.monitor.database).await.ok_or("no connection")?;
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
pub(crate) fn apply_new_primary(shared: &Shared, primary: usize, fenced: &[usize]) {
    let old = shared.cluster.load().primary();
    shared.cluster.topology.rcu(|t| {
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
        && let Some(n) = shared.cluster.load().nodes.get(old)
    {
        shared.pools.drop_idle(&n.addr);
    }
    if old != primary {
        // Commit bounds taken on the old primary beyond what the new one had replayed name
        // WAL that no longer exists: the floor new sessions start at (and global mode's) is
        // cut to the new primary's position, or reads would stay on it until it wrote as much.
        let reached = shared.cluster.load().nodes.get(primary).map(|n| n.replay_lsn()).unwrap_or_default();
        shared.global_floor.cut(reached);
    }
    shared.metrics.publish_nodes(&shared.cluster.load());
    resume_writes(shared);
}

pub(crate) fn mark_diverged(shared: &Shared, node: usize) {
    shared.cluster.topology.rcu(|t| {
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

pub(crate) fn resume_writes(shared: &Shared) {
    shared.writes_held.store(false, std::sync::atomic::Ordering::SeqCst);
    shared.cluster.published.notify_waiters();
}

/// A fenced node back as a replica of the current primary.
pub(crate) fn rejoined(shared: &Shared, node: usize) {
    shared.cluster.topology.rcu(|t| {
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
    shared.metrics.split_brain.set(0);
}
