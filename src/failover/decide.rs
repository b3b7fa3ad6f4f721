//! Failover decisions: a pure step from what the last health check saw and the failover
//! state to the actions to carry out and the next state. Every rule that decides whether to
//! promote, whom, and what becomes of the old primary is here, in order; `tests` is the table.
//! The I/O around it: the checks in `observe.rs`; pg_promote, re-pointing, fencing and the state
//! file in `actions.rs`.
//!
//! The rules, in order:
//! 1. A fenced node is never the primary again, whatever it says (split brain is reported).
//! 2. The candidate being promoted now answers out of recovery: it is the new primary, in a
//!    new epoch; the old one is fenced; the others are re-pointed.
//! 3. Another node answers out of recovery while the primary is failing (an operator or
//!    Patroni promoted it): adopt it rather than promote a second one.
//! 4. The primary answers (on a kept and a fresh connection, out of recovery): healthy.
//! 5. It has failed for less than `failover_after`: suspect, nothing else. With several
//!    instances (coordination on etcd): unless a strict majority of the live ones find the
//!    primary unreachable, this one is the one cut off. No promotion.
//! 6. A replica shows positive evidence the primary is alive (its WAL receiver still streams,
//!    heard from it after pgsplit's first failed check, or received more WAL since): pgsplit is
//!    the one cut off. No promotion, and the failure counts again from this check: the primary
//!    is down only once it has shown no sign of life for `failover_after` (backends of a killed
//!    postmaster may still commit and stream for a moment; that delays the failover, it must not
//!    veto it for good).
//! 7. `failover = "manual"`: report, wait for the operator.
//! 8. The candidate: reachable, in recovery, promotable, on the cluster's timeline, in the last
//!    observed synchronous set when there is one; the highest of received and replayed
//!    position, then the higher priority, then the first configured.
//! 9. Refuse a promotion that would lose more than `max_failover_lag_bytes` of the last
//!    primary position pgsplit saw (a manual PROMOTE can override).

use crate::lsn::Lsn;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub failover_after: Duration,
    pub max_failover_lag_bytes: u64,
    pub auto: bool,
}

/// One node at one check.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    pub reachable: bool,
    pub in_recovery: bool,
    /// A primary's insert position; a replica's max(received, replayed).
    pub position: Lsn,
    pub timeline: Option<u32>,
    /// The replica's WAL receiver is streaming.
    pub streaming: bool,
    /// When the replica's WAL receiver last heard from its primary (ms since the epoch).
    pub heard_ms: Option<u64>,
    pub promotable: bool,
    pub priority: i32,
    /// Listed in the primary's synchronous_standby_names (as last observed).
    pub sync: bool,
    /// default_transaction_read_only is on (a fenced or switched-over former primary).
    pub read_only: bool,
}

/// What one health check saw.
#[derive(Debug, Clone)]
pub struct Check {
    pub now: Instant,
    /// Wall clock, ms since the epoch (to compare with the replicas' receipt times).
    pub now_ms: u64,
    /// The primary answered on its kept connection and on a fresh one, out of recovery.
    pub primary_ok: bool,
    pub nodes: Vec<Seen>,
    /// The primary had synchronous standbys configured at its last good check.
    pub sync_configured: bool,
    /// Several instances: the live ones, and how many find the primary unreachable.
    pub peers: Option<crate::coord::rules::Peers>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    Healthy,
    /// Failing for less than failover_after.
    Suspect,
    /// Dead to pgsplit but alive to a replica: no promotion.
    Vetoed(String),
    /// No automatic promotion possible or allowed; the reason.
    Blocked(String),
    /// pg_promote sent to this node.
    Promoting(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct State {
    /// Changes with every new primary.
    pub epoch: u64,
    pub primary: usize,
    pub timeline: u32,
    pub fenced: Vec<usize>,
    /// The primary's position at its last good check.
    pub last_primary_lsn: Lsn,
    /// When the primary started failing (monotonic, wall ms), and every node's position then.
    pub failing_since: Option<(Instant, u64)>,
    pub positions_at_failure: Vec<Lsn>,
    pub phase: Phase,
    /// WAL the last automatic promotion left behind: the old primary's last observed position
    /// minus the candidate's (asynchronous replication's loss, as far as pgsplit saw).
    pub last_loss_bytes: Option<u64>,
}

impl State {
    pub fn new(primary: usize) -> State {
        State {
            epoch: 1,
            primary,
            timeline: 0,
            fenced: Vec::new(),
            last_primary_lsn: Lsn::ZERO,
            failing_since: None,
            positions_at_failure: Vec::new(),
            phase: Phase::Healthy,
            last_loss_bytes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// pg_promote this replica.
    Promote(usize),
    /// The new topology: write it to the state file before any client sees it.
    Persist,
    /// Point a replica at the new primary.
    Repoint { node: usize, primary: usize },
    /// Keep the old primary out for good (and make it read-only if it answers).
    Fence(usize),
    /// A fenced node answers writable.
    SplitBrain(usize),
    /// Something for the log and the console.
    Report(String),
}

/// The candidate for promotion, if any (rule 8), with the reason when there is none.
pub fn candidate(state: &State, check: &Check) -> Result<usize, String> {
    let mut best: Option<(usize, &Seen)> = None;
    for (i, n) in check.nodes.iter().enumerate() {
        let eligible = i != state.primary
            && !state.fenced.contains(&i)
            && n.reachable
            && n.in_recovery
            && n.promotable
            && (state.timeline == 0 || n.timeline.is_none_or(|t| t == state.timeline))
            && (!check.sync_configured || n.sync);
        if !eligible {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b)) => (n.position, n.priority) > (b.position, b.priority),
        };
        if better {
            best = Some((i, n));
        }
    }
    best.map(|(i, _)| i).ok_or_else(|| {
        if check.sync_configured {
            "no reachable, promotable synchronous standby on the cluster's timeline".to_string()
        } else {
            "no reachable, promotable replica on the cluster's timeline".to_string()
        }
    })
}

/// Positive evidence that the primary is alive, from the replicas (rule 6).
fn alive_per_replicas(state: &State, check: &Check) -> Option<String> {
    let (_, since_ms) = state.failing_since?;
    for (i, n) in check.nodes.iter().enumerate() {
        if i == state.primary || state.fenced.contains(&i) || !n.reachable || !n.in_recovery {
            continue;
        }
        if n.streaming {
            return Some(format!("replica {i}'s WAL receiver still streams from the primary"));
        }
        if n.heard_ms.is_some_and(|h| h > since_ms) {
            return Some(format!("replica {i} heard from the primary after pgsplit's first failed check"));
        }
        if state.positions_at_failure.get(i).is_some_and(|p| n.position > *p) {
            return Some(format!("replica {i} received WAL after pgsplit's first failed check"));
        }
    }
    None
}

/// One step.
pub fn step(state: &State, check: &Check, policy: &Policy) -> (State, Vec<Action>) {
    let mut s = state.clone();
    let mut actions = Vec::new();
    let writable = |i: usize| check.nodes.get(i).is_some_and(|n| n.reachable && !n.in_recovery);

    // 1. Fenced nodes that answer writable: split brain, never the primary.
    for &f in &state.fenced {
        if writable(f) && !check.nodes[f].read_only {
            actions.push(Action::SplitBrain(f));
        }
    }
    // 2. The candidate has been promoted.
    if let Phase::Promoting(c) = state.phase
        && writable(c)
    {
        return new_primary(s, c, check, actions, "promoted");
    }
    // 3. Someone else promoted a replica.
    let others: Vec<usize> =
        (0..check.nodes.len()).filter(|&i| i != state.primary && !state.fenced.contains(&i) && writable(i)).collect();
    if !check.primary_ok
        && !matches!(state.phase, Phase::Promoting(_))
        && let [adopt] = others.as_slice()
    {
        return new_primary(s, *adopt, check, actions, "adopted (promoted outside pgsplit)");
    }
    // 4. Healthy.
    if check.primary_ok {
        if let Some(p) = check.nodes.get(state.primary) {
            s.last_primary_lsn = s.last_primary_lsn.max(p.position);
            if let Some(t) = p.timeline {
                s.timeline = t;
            }
        }
        if !others.is_empty() {
            actions.push(Action::Report(format!(
                "nodes {others:?} answer writable besides the primary: not routed to (not adopted while the primary is up)"
            )));
        }
        s.failing_since = None;
        s.positions_at_failure.clear();
        s.phase = Phase::Healthy;
        return (s, actions);
    }
    if matches!(state.phase, Phase::Promoting(_)) {
        // Waiting for the promotion to show.
        return (s, actions);
    }
    // 5. Suspect.
    let (since, _) = *s.failing_since.get_or_insert((check.now, check.now_ms));
    if s.positions_at_failure.is_empty() {
        s.positions_at_failure = check.nodes.iter().map(|n| n.position).collect();
    }
    if check.now.duration_since(since) < policy.failover_after {
        if !matches!(s.phase, Phase::Vetoed(_)) {
            s.phase = Phase::Suspect;
        }
        return (s, actions);
    }
    // 6. Veto.
    if let Some(p) = check.peers
        && !crate::coord::rules::majority_down(p)
    {
        let why = format!("only {} of {} live pgsplit instances find the primary unreachable", p.down, p.live);
        if s.phase != Phase::Vetoed(why.clone()) {
            actions.push(Action::Report(format!("primary unreachable from this instance: {why}; no failover")));
        }
        s.phase = Phase::Vetoed(why);
        return (s, actions);
    }
    if let Some(why) = alive_per_replicas(&s, check) {
        if s.phase != Phase::Vetoed(why.clone()) {
            actions.push(Action::Report(format!("primary unreachable from pgsplit but alive: {why}; no failover")));
        }
        s.phase = Phase::Vetoed(why);
        // A sign of life: the failure counts from here.
        s.failing_since = Some((check.now, check.now_ms));
        s.positions_at_failure = check.nodes.iter().map(|n| n.position).collect();
        return (s, actions);
    }
    // 7. Manual.
    if !policy.auto {
        let why = "failover = \"manual\": waiting for FAILOVER or PROMOTE".to_string();
        if s.phase != Phase::Blocked(why.clone()) {
            actions.push(Action::Report(format!("primary down; {why}")));
        }
        s.phase = Phase::Blocked(why);
        return (s, actions);
    }
    // 8, 9. Candidate and lag guard.
    let c = match candidate(&s, check) {
        Ok(c) => c,
        Err(why) => {
            if s.phase != Phase::Blocked(why.clone()) {
                actions.push(Action::Report(format!("primary down; {why}")));
            }
            s.phase = Phase::Blocked(why);
            return (s, actions);
        }
    };
    let behind = s.last_primary_lsn.bytes_since(check.nodes[c].position);
    if behind > policy.max_failover_lag_bytes {
        let why = format!(
            "the best replica ({c}) is {behind} bytes behind the primary's last position, more than \
             max_failover_lag_bytes = {}: PROMOTE it by hand to accept the loss",
            policy.max_failover_lag_bytes
        );
        if s.phase != Phase::Blocked(why.clone()) {
            actions.push(Action::Report(why.clone()));
        }
        s.phase = Phase::Blocked(why);
        return (s, actions);
    }
    s.phase = Phase::Promoting(c);
    s.last_loss_bytes = Some(behind);
    actions.push(Action::Report(format!(
        "primary down since {:?}; promoting node {c} ({behind} bytes behind)",
        check.now.duration_since(since)
    )));
    actions.push(Action::Promote(c));
    (s, actions)
}

/// A manual PROMOTE of `node` (no lag guard, no veto: the operator decided).
pub fn promote_by_hand(state: &State, node: usize) -> (State, Vec<Action>) {
    let mut s = state.clone();
    s.phase = Phase::Promoting(node);
    (s, vec![Action::Report(format!("PROMOTE of node {node} by an operator")), Action::Promote(node)])
}

fn new_primary(mut s: State, p: usize, check: &Check, mut actions: Vec<Action>, how: &str) -> (State, Vec<Action>) {
    let old = s.primary;
    s.epoch += 1;
    s.primary = p;
    if !s.fenced.contains(&old) {
        s.fenced.push(old);
    }
    s.timeline = check.nodes[p].timeline.unwrap_or(s.timeline + 1);
    s.last_primary_lsn = check.nodes[p].position;
    s.failing_since = None;
    s.positions_at_failure.clear();
    s.phase = Phase::Healthy;
    actions
        .push(Action::Report(format!("node {p} {how}: the new primary (epoch {}, timeline {})", s.epoch, s.timeline)));
    actions.push(Action::Persist);
    actions.push(Action::Fence(old));
    for i in 0..check.nodes.len() {
        if i != p && !s.fenced.contains(&i) {
            actions.push(Action::Repoint { node: i, primary: p });
        }
    }
    (s, actions)
}

/// An operator's request (admin console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Fail over now if the primary is down, even with failover = "manual".
    Failover,
    /// Promote this replica, whatever its lag and whatever the old primary's state (which is
    /// fenced).
    Promote(usize),
    /// A planned switchover to this replica: no write lost, no client error outside
    /// transactions.
    Switchover(usize),
    /// Re-admit a fenced node that now streams from the current primary as a replica.
    Rejoin(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy =
        Policy { failover_after: Duration::from_secs(3), max_failover_lag_bytes: 1 << 20, auto: true };

    fn replica(position: u64) -> Seen {
        Seen {
            reachable: true,
            in_recovery: true,
            position: Lsn(position),
            timeline: Some(1),
            promotable: true,
            ..Seen::default()
        }
    }

    fn primary(position: u64) -> Seen {
        Seen { reachable: true, in_recovery: false, position: Lsn(position), timeline: Some(1), ..Seen::default() }
    }

    fn check(t0: Instant, secs: u64, primary_ok: bool, nodes: Vec<Seen>) -> Check {
        Check {
            now: t0 + Duration::from_secs(secs),
            now_ms: 1_000_000 + secs * 1000,
            primary_ok,
            nodes,
            sync_configured: false,
            peers: None,
        }
    }

    fn healthy(t0: Instant) -> State {
        let (s, _) =
            step(&State::new(0), &check(t0, 0, true, vec![primary(5000), replica(5000), replica(4000)]), &POLICY);
        s
    }

    #[test]
    fn dead_primary_is_replaced_by_the_most_advanced_replica() {
        let t0 = Instant::now();
        let s = healthy(t0);
        assert_eq!((s.phase.clone(), s.last_primary_lsn, s.timeline), (Phase::Healthy, Lsn(5000), 1));
        let down = vec![Seen::default(), replica(4900), replica(4800)];
        let (s, a) = step(&s, &check(t0, 1, false, down.clone()), &POLICY);
        assert_eq!((s.phase.clone(), a.len()), (Phase::Suspect, 0));
        let (s, a) = step(&s, &check(t0, 3, false, down.clone()), &POLICY);
        assert_eq!(s.phase, Phase::Suspect, "2 s of failures < failover_after");
        assert!(a.is_empty());
        let (s, a) = step(&s, &check(t0, 5, false, down.clone()), &POLICY);
        assert_eq!(s.phase, Phase::Promoting(1));
        assert!(a.contains(&Action::Promote(1)));
        // Not yet out of recovery: wait.
        let (s, a) = step(&s, &check(t0, 6, false, down), &POLICY);
        assert_eq!((s.phase.clone(), a), (Phase::Promoting(1), vec![]));
        // Promoted.
        let promoted = vec![Seen::default(), Seen { timeline: Some(2), ..primary(4900) }, replica(4800)];
        let (s, a) = step(&s, &check(t0, 7, false, promoted), &POLICY);
        assert_eq!((s.primary, s.epoch, s.timeline, s.fenced.clone()), (1, 2, 2, vec![0]));
        assert_eq!(s.phase, Phase::Healthy);
        let i = |x: &Action| a.iter().position(|y| y == x);
        assert!(i(&Action::Persist) < i(&Action::Repoint { node: 2, primary: 1 }), "persisted before anything else");
        assert!(a.contains(&Action::Fence(0)));
        assert!(!a.iter().any(|x| matches!(x, Action::Repoint { node: 0, .. })), "the old primary is not re-pointed");
    }

    #[test]
    fn the_old_primary_coming_back_stays_fenced() {
        let t0 = Instant::now();
        let s = State { primary: 1, fenced: vec![0], epoch: 2, timeline: 2, ..State::new(1) };
        let back = vec![primary(9999), Seen { timeline: Some(2), ..primary(5000) }, replica(5000)];
        let (s2, a) = step(&s, &check(t0, 0, true, back), &POLICY);
        assert_eq!((s2.primary, s2.epoch), (1, 2));
        assert!(a.contains(&Action::SplitBrain(0)));
        assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))));
        // Once made read-only, it is no longer a split brain (and still fenced).
        let fenced_ro =
            vec![Seen { read_only: true, ..primary(9999) }, Seen { timeline: Some(2), ..primary(5000) }, replica(5000)];
        let (s3, a) = step(&s2, &check(t0, 1, true, fenced_ro), &POLICY);
        assert!(!a.contains(&Action::SplitBrain(0)));
        assert_eq!(s3.fenced, vec![0]);
    }

    #[test]
    fn positive_evidence_of_life_vetoes() {
        let t0 = Instant::now();
        let s = healthy(t0);
        for (evidence, why) in [
            (Seen { streaming: true, ..replica(4900) }, "streams"),
            (Seen { heard_ms: Some(1_000_000 + 2000), ..replica(4900) }, "heard"),
            (replica(6000), "received"),
        ] {
            let first = vec![Seen::default(), replica(4900), replica(4800)];
            let (s, _) = step(&s, &check(t0, 1, false, first), &POLICY);
            let later = vec![Seen::default(), evidence, replica(4800)];
            let (s, a) = step(&s, &check(t0, 5, false, later), &POLICY);
            assert!(matches!(&s.phase, Phase::Vetoed(w) if w.contains(why)), "{why}: {:?}", s.phase);
            assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))));
        }
        // Heard from the primary, but before pgsplit's first failed check: no evidence.
        let (s1, _) = step(&s, &check(t0, 1, false, vec![Seen::default(), replica(4900), replica(4800)]), &POLICY);
        let old_news = vec![Seen::default(), Seen { heard_ms: Some(1_000_000), ..replica(4900) }, replica(4800)];
        let (s1, _) = step(&s1, &check(t0, 5, false, old_news), &POLICY);
        assert_eq!(s1.phase, Phase::Promoting(1));
    }

    #[test]
    fn a_sign_of_life_delays_the_failover_it_does_not_cancel_it() {
        // kill -9 of the postmaster: its backends may commit and stream for a moment after
        // pgsplit's first failed check. The veto holds while WAL arrives, and the failure counts
        // again from the last sign of life.
        let t0 = Instant::now();
        let s = healthy(t0);
        let (s, _) = step(&s, &check(t0, 1, false, vec![Seen::default(), replica(4900), replica(4800)]), &POLICY);
        let more = vec![Seen::default(), replica(5100), replica(5000)];
        let (s, a) = step(&s, &check(t0, 5, false, more.clone()), &POLICY);
        assert!(matches!(&s.phase, Phase::Vetoed(w) if w.contains("received")), "{:?}", s.phase);
        assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))));
        // Nothing new since, but less than failover_after since the sign of life: still vetoed.
        let (s, a) = step(&s, &check(t0, 7, false, more.clone()), &POLICY);
        assert!(matches!(&s.phase, Phase::Vetoed(_)), "{:?}", s.phase);
        assert!(a.is_empty());
        // failover_after of silence: promoted, the most advanced replica.
        let (s, a) = step(&s, &check(t0, 8, false, more), &POLICY);
        assert_eq!(s.phase, Phase::Promoting(1));
        assert!(a.contains(&Action::Promote(1)));
        // A live primary that keeps streaming is vetoed at every window, never promoted.
        let mut s = healthy(t0);
        for secs in 1..30 {
            let live = vec![Seen::default(), Seen { streaming: true, ..replica(4900) }, replica(4800)];
            let (next, a) = step(&s, &check(t0, secs, false, live), &POLICY);
            assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))), "at {secs} s");
            s = next;
        }
        assert!(matches!(&s.phase, Phase::Vetoed(w) if w.contains("streams")), "{:?}", s.phase);
    }

    #[test]
    fn who_may_be_promoted() {
        let t0 = Instant::now();
        let s = healthy(t0);
        let run = |nodes: Vec<Seen>, sync: bool, policy: Policy| {
            let mut c = check(t0, 1, false, nodes.clone());
            c.sync_configured = sync;
            let (s1, _) = step(&s, &c, &policy);
            let mut c = check(t0, 5, false, nodes);
            c.sync_configured = sync;
            step(&s1, &c, &policy).0.phase
        };
        let dead = Seen::default;
        // Priority breaks ties only.
        assert_eq!(
            run(vec![dead(), replica(4900), Seen { priority: 9, ..replica(4900) }], false, POLICY),
            Phase::Promoting(2)
        );
        assert_eq!(
            run(vec![dead(), replica(4901), Seen { priority: 9, ..replica(4900) }], false, POLICY),
            Phase::Promoting(1)
        );
        // promotable = false never; another timeline never.
        assert_eq!(
            run(vec![dead(), Seen { promotable: false, ..replica(4999) }, replica(4900)], false, POLICY),
            Phase::Promoting(2)
        );
        assert_eq!(
            run(vec![dead(), Seen { timeline: Some(7), ..replica(4999) }, replica(4900)], false, POLICY),
            Phase::Promoting(2)
        );
        // Synchronous replication: only the sync set.
        assert_eq!(
            run(vec![dead(), replica(4999), Seen { sync: true, ..replica(4900) }], true, POLICY),
            Phase::Promoting(2)
        );
        assert!(matches!(run(vec![dead(), replica(4999), replica(4900)], true, POLICY), Phase::Blocked(_)));
        // Too far behind: refused, said why.
        let far =
            run(vec![dead(), replica(100), replica(50)], false, Policy { max_failover_lag_bytes: 1000, ..POLICY });
        assert!(matches!(&far, Phase::Blocked(w) if w.contains("max_failover_lag_bytes")), "{far:?}");
        // Manual: never by itself.
        let manual = run(vec![dead(), replica(4900), replica(4800)], false, Policy { auto: false, ..POLICY });
        assert!(matches!(&manual, Phase::Blocked(w) if w.contains("manual")));
        // Nobody reachable.
        assert!(matches!(run(vec![dead(), dead(), dead()], false, POLICY), Phase::Blocked(_)));
    }

    #[test]
    fn a_replica_promoted_elsewhere_is_adopted() {
        let t0 = Instant::now();
        let s = healthy(t0);
        let nodes = vec![Seen::default(), Seen { timeline: Some(2), ..primary(5000) }, replica(4800)];
        let (s, a) = step(&s, &check(t0, 1, false, nodes.clone()), &POLICY);
        assert_eq!((s.primary, s.epoch), (1, 2));
        assert!(a.contains(&Action::Persist));
        assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))), "never a second promotion");
        // While the primary is healthy, a second writable node is reported, not adopted.
        let s = healthy(t0);
        let both = vec![primary(5000), Seen { timeline: Some(2), ..primary(5000) }, replica(4800)];
        let (s, a) = step(&s, &check(t0, 1, true, both), &POLICY);
        assert_eq!(s.primary, 0);
        assert!(a.iter().any(|x| matches!(x, Action::Report(_))));
    }

    #[test]
    fn recovery_before_failover_after_clears_suspicion() {
        let t0 = Instant::now();
        let s = healthy(t0);
        let (s, _) = step(&s, &check(t0, 1, false, vec![Seen::default(), replica(1), replica(1)]), &POLICY);
        assert_eq!(s.phase, Phase::Suspect);
        let (s, _) = step(&s, &check(t0, 2, true, vec![primary(5000), replica(5000), replica(5000)]), &POLICY);
        assert_eq!((s.phase, s.failing_since), (Phase::Healthy, None));
    }

    #[test]
    fn several_instances_promote_only_on_a_majority() {
        use crate::coord::rules::Peers;
        let t0 = Instant::now();
        let s = healthy(t0);
        let down = vec![Seen::default(), replica(5000), replica(4000)];
        let (s, _) = step(&s, &check(t0, 1, false, down.clone()), &POLICY);
        let mut c = check(t0, 4, false, down);
        c.peers = Some(Peers { live: 3, down: 1 });
        let (v, a) = step(&s, &c, &POLICY);
        assert!(matches!(v.phase, Phase::Vetoed(ref w) if w.contains("1 of 3")), "{:?}", v.phase);
        assert!(!a.iter().any(|x| matches!(x, Action::Promote(_))));
        c.peers = Some(Peers { live: 3, down: 2 });
        let (p, a) = step(&s, &c, &POLICY);
        assert_eq!(p.phase, Phase::Promoting(1));
        assert!(a.contains(&Action::Promote(1)));
    }
}
