//! Which replicas take reads: a pure step from what a probe saw to the replica's rotation
//! state, with hysteresis. A replica leaves at the first poll that finds it unfit, and comes
//! back only after it has stayed fit for `hold`, so one hovering near a threshold does not
//! flap in and out. Every rule is here; `tests` is the table.

use std::time::{Duration, Instant};

use super::topology::OutReason;

/// A replica's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_lag_bytes: u64,
    pub max_lag_ms: u64,
    pub hold: Duration,
}

/// What is known about a replica at one poll.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fitness {
    pub removed: bool,
    pub fenced: bool,
    pub diverged: bool,
    pub paused: bool,
    pub healthy: bool,
    pub in_recovery: bool,
    pub lag_bytes: Option<u64>,
    pub lag_ms: Option<u64>,
    pub replay_paused: bool,
    /// Its WAL receiver is streaming.
    pub streaming: bool,
    /// The primary answered its last probe: only then can a replica be judged cut off from it
    /// (with the primary down every replica is, and reads must go on).
    pub primary_healthy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub in_rotation: bool,
    pub out: Option<OutReason>,
    pub fit_since: Option<Instant>,
}

/// The first rule that keeps the replica out, if any.
pub fn unfit(f: &Fitness, l: &Limits) -> Option<OutReason> {
    if f.removed {
        return Some(OutReason::Removed);
    }
    if f.diverged {
        return Some(OutReason::Diverged);
    }
    if f.fenced {
        return Some(OutReason::Fenced);
    }
    if f.paused {
        return Some(OutReason::Paused);
    }
    if !f.healthy {
        return Some(OutReason::Unreachable);
    }
    if !f.in_recovery {
        return Some(OutReason::NotInRecovery);
    }
    if f.replay_paused {
        return Some(OutReason::ReplayPaused);
    }
    if f.primary_healthy && !f.streaming {
        return Some(OutReason::ReceiverDown);
    }
    if f.lag_bytes.is_some_and(|b| b > l.max_lag_bytes) || f.lag_ms.is_some_and(|ms| ms > l.max_lag_ms) {
        return Some(OutReason::Lagging);
    }
    None
}

/// The replica's next state.
pub fn step(prev: State, f: &Fitness, l: &Limits, now: Instant) -> State {
    match unfit(f, l) {
        Some(reason) => State { in_rotation: false, out: Some(reason), fit_since: None },
        None if prev.in_rotation => State { in_rotation: true, out: None, fit_since: None },
        None => {
            let since = prev.fit_since.unwrap_or(now);
            if now.duration_since(since) >= l.hold {
                State { in_rotation: true, out: None, fit_since: None }
            } else {
                State { in_rotation: false, out: prev.out, fit_since: Some(since) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_lag_bytes: 1000, max_lag_ms: 500, hold: Duration::from_secs(2) };

    fn fit() -> Fitness {
        Fitness {
            healthy: true,
            in_recovery: true,
            streaming: true,
            primary_healthy: true,
            lag_bytes: Some(0),
            lag_ms: Some(0),
            ..Fitness::default()
        }
    }

    #[test]
    fn rules() {
        let rows: &[(Fitness, Option<OutReason>)] = &[
            (fit(), None),
            (Fitness { lag_bytes: Some(1000), lag_ms: Some(500), ..fit() }, None),
            (Fitness { lag_bytes: Some(1001), ..fit() }, Some(OutReason::Lagging)),
            (Fitness { lag_ms: Some(501), ..fit() }, Some(OutReason::Lagging)),
            (Fitness { lag_bytes: None, lag_ms: None, ..fit() }, None),
            (Fitness { healthy: false, ..fit() }, Some(OutReason::Unreachable)),
            (Fitness { in_recovery: false, ..fit() }, Some(OutReason::NotInRecovery)),
            (Fitness { replay_paused: true, ..fit() }, Some(OutReason::ReplayPaused)),
            (Fitness { streaming: false, ..fit() }, Some(OutReason::ReceiverDown)),
            // The primary is down: every receiver is, and reads must go on.
            (Fitness { streaming: false, primary_healthy: false, lag_bytes: None, ..fit() }, None),
            (Fitness { paused: true, ..fit() }, Some(OutReason::Paused)),
            (Fitness { removed: true, paused: true, ..fit() }, Some(OutReason::Removed)),
            (Fitness { fenced: true, ..fit() }, Some(OutReason::Fenced)),
            (Fitness { paused: true, healthy: false, ..fit() }, Some(OutReason::Paused)),
        ];
        for (f, want) in rows {
            assert_eq!(unfit(f, &L), *want, "{f:?}");
        }
    }

    #[test]
    fn leaves_at_once_returns_after_the_hold() {
        let t0 = Instant::now();
        let s = State { in_rotation: true, out: None, fit_since: None };
        let lagging = Fitness { lag_bytes: Some(5000), ..fit() };
        let s = step(s, &lagging, &L, t0);
        assert_eq!((s.in_rotation, s.out), (false, Some(OutReason::Lagging)));
        // Fit again: held out, the reason kept, until 2 s have passed.
        let s = step(s, &fit(), &L, t0 + Duration::from_millis(100));
        assert_eq!((s.in_rotation, s.out), (false, Some(OutReason::Lagging)));
        let s = step(s, &fit(), &L, t0 + Duration::from_millis(1500));
        assert!(!s.in_rotation);
        // A relapse restarts the hold.
        let s = step(s, &lagging, &L, t0 + Duration::from_millis(1600));
        let s = step(s, &fit(), &L, t0 + Duration::from_millis(1700));
        let s = step(s, &fit(), &L, t0 + Duration::from_millis(3600));
        assert!(!s.in_rotation, "hold restarted at 1.7 s");
        let s = step(s, &fit(), &L, t0 + Duration::from_millis(3700));
        assert_eq!((s.in_rotation, s.out, s.fit_since), (true, None, None));
        // In rotation and fit: stays.
        assert_eq!(step(s, &fit(), &L, t0 + Duration::from_secs(9)), s);
    }
}
