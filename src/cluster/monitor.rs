//! Health and lag probes. One task per server probes every `monitor.interval_ms` through
//! pgsplit's own SQL pools (apart from client traffic); after each probe the topology is
//! recomputed (`publish`) with the rotation rules of `rotation.rs`.
//!
//! Lag in bytes is the primary's insert position minus the replica's replay position. Lag in
//! time is the age of the oldest WAL the replica has not replayed, read off the monitor's own
//! clock of the primary's positions (`lag.rs`): never the age of the last replayed commit,
//! which grows on an idle primary and says nothing of WAL written without commits. A replica
//! cut off from the primary shows up in both and in its WAL receiver's status.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::lag::WalClock;
use super::rotation::{self, Fitness, Limits};
use super::sql_pools::SqlPools;
use super::topology::{Cluster, NodeSettings, Observation, OutReason, Role};
use crate::config::{Config, Live};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::pool::Pools;

#[derive(Debug, Clone, Default)]
struct Probe {
    /// At least one probe has completed: until then the node keeps its initial state.
    done: bool,
    ok: bool,
    obs: Observation,
}

const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn()::text END, \
     pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
     CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END, \
     (SELECT status FROM pg_stat_wal_receiver LIMIT 1), \
     CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver LIMIT 1)::text \
          ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END";

pub struct Monitor {
    config: Live,
    cluster: Arc<Cluster>,
    pools: Arc<Pools>,
    metrics: Arc<Metrics>,
    sql: Arc<SqlPools>,
    probes: Mutex<Vec<Probe>>,
    /// The primary's insert positions over time (lag in time).
    clock: Mutex<WalClock>,
    /// Per node: its probe task and its replay watch.
    tasks: Mutex<Vec<[JoinHandle<()>; 2]>>,
}

impl Monitor {
    pub fn start(
        config: Live,
        cluster: Arc<Cluster>,
        pools: Arc<Pools>,
        metrics: Arc<Metrics>,
        sql: Arc<SqlPools>,
    ) -> Arc<Monitor> {
        let m = Arc::new(Monitor {
            config,
            cluster,
            pools,
            metrics,
            sql,
            probes: Mutex::new(Vec::new()),
            clock: Mutex::new(WalClock::default()),
            tasks: Mutex::new(Vec::new()),
        });
        m.ensure_tasks();
        m
    }

    /// Starts a probe task for every node that has none (all at start, new ones after a
    /// reload). Tasks of removed nodes end by themselves.
    pub fn ensure_tasks(self: &Arc<Self>) {
        let n = self.cluster.load().nodes.len();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        self.probes.lock().unwrap_or_else(|p| p.into_inner()).resize(n, Probe::default());
        for node in tasks.len()..n {
            let me = self.clone();
            let watch = super::watcher::watch(self.cluster.clone(), self.sql.clone(), self.config.clone(), node);
            tasks.push([tokio::spawn(async move { me.run(node).await }), tokio::spawn(watch)]);
        }
    }

    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).iter().flatten() {
            t.abort();
        }
    }

    async fn run(self: Arc<Self>, node: usize) {
        loop {
            let (addr, removed) = match self.cluster.load().nodes.get(node) {
                Some(n) => (n.addr.clone(), n.removed),
                None => return,
            };
            if removed {
                return;
            }
            let config = self.config.load_full();
            let probe = probe(&self.sql, &config, &addr).await;
            let before = self.probes.lock().unwrap_or_else(|p| p.into_inner())[node].clone();
            if (before.ok || !before.done) && !probe.ok {
                tracing::warn!(
                    node = %addr,
                    user = %config.monitor.user,
                    "health check failed (server down, or [monitor] credentials refused): no reads go there"
                );
                self.pools.drop_idle(&addr);
                self.sql.forget(&addr);
            } else if !before.ok && before.done && probe.ok {
                tracing::info!(node = %addr, "health check passed again");
            }
            if !probe.ok {
                self.metrics.monitor_failures.inc();
                self.cluster.unreachable.send_modify(|n| *n += 1);
            }
            if probe.ok
                && probe.obs.in_recovery
                && let Some(n) = self.cluster.load().nodes.get(node)
            {
                // The probe's answer is the truth now: a replay watch's older, higher position
                // (a node rewound and rejoined) must not outlive it.
                n.replayed.cut(probe.obs.replay_lsn);
            }
            {
                let now = Instant::now();
                let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
                if node == self.cluster.load().primary() && probe.ok && !probe.obs.in_recovery {
                    clock.record(now, probe.obs.insert_lsn, retention(&config));
                }
                let mut all = self.probes.lock().unwrap_or_else(|p| p.into_inner());
                all[node] = probe;
                publish(&config, &self.cluster, &self.metrics, &all, &clock, now);
            }
            self.cluster.published.notify_waiters();
            let interval = Duration::from_millis(config.monitor.interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.cluster.wake.notified() => {}
            }
        }
    }
}

async fn probe(sql: &SqlPools, config: &Config, addr: &str) -> Probe {
    let failed = Probe { done: true, ..Probe::default() };
    let timeout = Duration::from_millis(config.pool.connect_timeout_ms.max(config.monitor.interval_ms));
    let work = async {
        let c = sql.get(addr, &config.monitor.database).await?;
        c.query_one(PROBE_SQL, &[]).await.ok()
    };
    let Ok(Some(row)) = tokio::time::timeout(timeout, work).await else {
        return failed;
    };
    let lsn = |i: usize| row.get::<_, Option<String>>(i).as_deref().and_then(Lsn::parse).unwrap_or_default();
    let timeline: Option<String> = row.get(6);
    let in_recovery: bool = row.get(0);
    Probe {
        done: true,
        ok: true,
        obs: Observation {
            in_recovery,
            insert_lsn: lsn(1),
            receive_lsn: lsn(2),
            replay_lsn: lsn(3),
            replay_paused: row.get(4),
            receiver_status: row.get(5),
            timeline: timeline.and_then(
                |t| {
                    if in_recovery { t.parse().ok() } else { u32::from_str_radix(&t, 16).ok() }
                },
            ),
        },
    }
}

/// How long a replica's WAL receiver may be down before the replica leaves rotation for it.
const RECEIVER_GRACE: Duration = Duration::from_secs(2);

/// How long the clock keeps the primary's positions: twice the largest time limit (so a
/// replica further behind than any sample kept is still reported over its limit), within
/// 10 s and 1 h.
fn retention(config: &Config) -> Duration {
    let limits = config.servers.replicas.iter().map(|r| r.limits(&config.routing).1);
    let longest = limits.chain([config.routing.max_lag_ms]).filter(|&ms| ms < u64::MAX / 4).max().unwrap_or(0);
    Duration::from_millis(longest.saturating_mul(2)).clamp(Duration::from_secs(10), Duration::from_secs(3600))
}

fn publish(config: &Config, cluster: &Cluster, metrics: &Metrics, probes: &[Probe], clock: &WalClock, now: Instant) {
    let hold = Duration::from_millis(config.routing.lag_hold_ms);
    cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        t.balance = config.routing.balance;
        t.primary_read_weight = config.routing.primary_read_weight;
        t.on_all_lagging = config.routing.on_all_lagging;
        let primary = t.primary();
        let pp = probes.get(primary).cloned().unwrap_or_default();
        let primary_up = pp.ok && !pp.obs.in_recovery;
        if primary_up {
            t.primary_lsn = pp.obs.insert_lsn;
        }
        for (i, node) in t.nodes.iter_mut().enumerate() {
            if let Some(r) = config.servers.replicas.iter().find(|r| r.addr() == &*node.addr) {
                node.settings = NodeSettings::of(r, &config.routing);
            }
            let Some(p) = probes.get(i).filter(|p| p.done) else { continue };
            node.healthy = p.ok;
            node.probe.observed = p.ok.then(|| p.obs.clone());
            if node.role != Role::Replica && !node.fenced {
                node.in_rotation = p.ok && !node.removed;
                node.out = if node.in_rotation { None } else { Some(OutReason::Unreachable) };
                continue;
            }
            // Both lags only while the primary answers: with it down every replica stops
            // receiving, and reads must go on during a failover.
            let judged = p.ok && primary_up;
            node.probe.lag_bytes = judged.then(|| pp.obs.insert_lsn.bytes_since(p.obs.replay_lsn));
            node.probe.lag_ms =
                if judged { clock.lag(p.obs.replay_lsn, now).map(|d| d.as_millis() as u64) } else { None };
            // A receiver that stopped streaming counts only after RECEIVER_GRACE: when the
            // primary dies, every receiver stops before the primary's own probe fails, and
            // the replicas must not leave rotation then (reads go on during a failover).
            let streaming = p.obs.receiver_status.as_deref() == Some("streaming");
            node.probe.receiver_down_since =
                if streaming { None } else { Some(node.probe.receiver_down_since.unwrap_or(now)) };
            let receiver_ok =
                streaming || node.probe.receiver_down_since.is_some_and(|t| now.duration_since(t) < RECEIVER_GRACE);
            let fitness = Fitness {
                removed: node.removed,
                fenced: node.fenced,
                diverged: node.diverged,
                paused: node.paused,
                healthy: p.ok,
                in_recovery: p.obs.in_recovery,
                lag_bytes: node.probe.lag_bytes,
                lag_ms: node.probe.lag_ms,
                replay_paused: p.obs.replay_paused,
                streaming: receiver_ok,
                primary_healthy: primary_up,
            };
            let limits =
                Limits { max_lag_bytes: node.settings.max_lag_bytes, max_lag_ms: node.settings.max_lag_ms, hold };
            let prev =
                rotation::State { in_rotation: node.in_rotation, out: node.out, fit_since: node.probe.fit_since };
            let next = rotation::step(prev, &fitness, &limits, now);
            if next.in_rotation != node.in_rotation {
                match next.out {
                    Some(r) => tracing::info!(node = %node.addr, reason = r.as_str(), "replica leaves rotation"),
                    None => tracing::info!(node = %node.addr, "replica back in rotation"),
                }
            }
            (node.in_rotation, node.out, node.probe.fit_since) = (next.in_rotation, next.out, next.fit_since);
        }
        t
    });
    cluster.load().publish(metrics);
}
