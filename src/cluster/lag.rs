//! Lag in time, from the monitor's own clock of the primary's WAL.
//!
//! A replica's time lag is the age of the oldest WAL it has not replayed. PostgreSQL 15 does
//! not say when a WAL position was written, but the monitor samples the primary's insert
//! position at every probe: the time at which the primary was first seen past a replica's
//! replay position is (to within one poll) when the first WAL the replica still lacks was
//! written. So lag = now − that time, and 0 when the replica has replayed everything the
//! primary had at its last probe. A replica of an idle primary is never "behind" however old
//! its last replayed commit is (`pg_last_xact_replay_timestamp()` measures that age, not lag),
//! and WAL without commits (VACUUM, CREATE DATABASE) counts as soon as it is written.
//!
//! The clock keeps one sample per position the primary moved to, first sighting only; an idle
//! primary adds none. Samples older than the retention are dropped, and when the cap is hit
//! the older half is thinned to every other sample, so a replica further behind than the
//! oldest sample is reported at least that old (never less lagged than it is by more than the
//! thinning's resolution).

use crate::lsn::Lsn;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Most samples kept (16 bytes each).
const CAP: usize = 4096;

#[derive(Debug, Default)]
pub struct WalClock {
    /// (first seen, position), positions strictly increasing.
    samples: VecDeque<(Instant, Lsn)>,
}

impl WalClock {
    /// The primary's insert position as a probe read it at `at`. A position below the last
    /// one (a new primary after a failover that had less WAL) starts the clock over.
    pub fn record(&mut self, at: Instant, lsn: impl Into<Lsn>, retention: Duration) {
        let lsn = lsn.into();
        match self.samples.back() {
            Some(&(_, last)) if lsn == last => {}
            Some(&(_, last)) if lsn < last => {
                self.samples.clear();
                self.samples.push_back((at, lsn));
            }
            _ => self.samples.push_back((at, lsn)),
        }
        // Keep the newest sample whatever its age: it is the position "now".
        while self.samples.len() > 1 && self.samples.front().is_some_and(|&(t, _)| at.duration_since(t) > retention) {
            self.samples.pop_front();
        }
        if self.samples.len() > CAP {
            let half = self.samples.len() / 2;
            let mut i = 0;
            self.samples.retain(|_| {
                i += 1;
                i > half || i % 2 == 1
            });
        }
    }

    /// How long ago the primary first passed `replay` (None before any sample).
    pub fn lag(&self, replay: impl Into<Lsn>, now: Instant) -> Option<Duration> {
        let replay = replay.into();
        let &(_, newest) = self.samples.back()?;
        if replay >= newest {
            return Some(Duration::ZERO);
        }
        // The first sample past the replica's position (there is one: the newest).
        let i = self.samples.partition_point(|&(_, lsn)| lsn <= replay);
        let (passed_at, _) = self.samples[i];
        Some(now.saturating_duration_since(passed_at))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(60);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unreplayed_wal() {
        let t0 = Instant::now();
        let mut c = WalClock::default();
        assert_eq!(c.lag(0, t0), None, "nothing known before the first sample");
        // (sample at ms, primary position)
        for (at, lsn) in [(0, 100), (100, 100), (200, 150), (300, 150), (400, 220), (500, 220)] {
            c.record(t0 + ms(at), lsn, KEEP);
        }
        let now = t0 + ms(550);
        // (replica replay position, lag in ms at 550 ms)
        let rows: &[(u64, u64)] = &[
            (220, 0),   // replayed everything the primary had at its last probe
            (300, 0),   // ahead of the last sample (probes taken at different moments)
            (219, 150), // the primary first passed 219 at 400 ms
            (150, 150),
            (149, 350), // first passed at 200 ms
            (100, 350),
            (99, 550), // behind the oldest sample: at least that old
            (0, 550),
        ];
        for &(replay, want) in rows {
            assert_eq!(c.lag(replay, now), Some(ms(want)), "replay {replay}");
        }
    }

    #[test]
    fn idle_primary_then_one_write() {
        // The case: 10 s without writes, then one INSERT; the replica replays 300 ms late.
        let t0 = Instant::now();
        let mut c = WalClock::default();
        for i in 0..100 {
            c.record(t0 + ms(i * 100), 5000, KEEP);
        }
        assert_eq!(c.len(), 1, "an idle primary adds no samples");
        c.record(t0 + ms(10_000), 5100, KEEP);
        // Polls while the replica has not replayed the insert yet: lag grows from 0, never 10 s.
        for (at, want) in [(10_000, 0), (10_100, 100), (10_200, 200), (10_300, 300)] {
            assert_eq!(c.lag(5000, t0 + ms(at)), Some(ms(want)));
        }
        assert_eq!(c.lag(5100, t0 + ms(10_400)), Some(Duration::ZERO), "replayed: no lag");
    }

    #[test]
    fn a_steady_delay_is_measured_within_a_poll() {
        // Writes all the time; the replica replays exactly 300 ms behind.
        let t0 = Instant::now();
        let mut c = WalClock::default();
        let pos = |t: u64| t * 10; // 10 bytes a millisecond
        for i in 0..=50 {
            let at = i * 100;
            c.record(t0 + ms(at), pos(at), KEEP);
            if at >= 300 {
                let lag = c.lag(pos(at - 300), t0 + ms(at)).unwrap_or_default();
                assert!(lag >= ms(200) && lag <= ms(300), "{lag:?} at {at} ms");
            }
        }
    }

    #[test]
    fn a_paused_replica_ages() {
        let t0 = Instant::now();
        let mut c = WalClock::default();
        for i in 0..30 {
            c.record(t0 + ms(i * 100), 1000 + i, KEEP);
        }
        // Paused at position 1000 since the first sample: 2.9 s of WAL unreplayed.
        assert_eq!(c.lag(1000, t0 + ms(2900)), Some(ms(2800)));
        assert_eq!(c.lag(999, t0 + ms(2900)), Some(ms(2900)));
    }

    #[test]
    fn a_new_primary_with_less_wal_starts_over() {
        let t0 = Instant::now();
        let mut c = WalClock::default();
        c.record(t0, 1000, KEEP);
        c.record(t0 + ms(100), 2000, KEEP);
        c.record(t0 + ms(200), 1500, KEEP);
        assert_eq!(c.len(), 1);
        assert_eq!(c.lag(1500, t0 + ms(300)), Some(Duration::ZERO));
        assert_eq!(c.lag(1400, t0 + ms(300)), Some(ms(100)));
    }

    #[test]
    fn retention_and_cap_bound_the_samples_but_not_the_lag() {
        let t0 = Instant::now();
        let mut c = WalClock::default();
        for i in 0..1000u64 {
            c.record(t0 + ms(i * 100), i + 1, ms(10_000));
        }
        assert!(c.len() <= 102, "{} samples kept for 10 s", c.len());
        // Behind everything kept: reported at least as old as the oldest kept sample.
        let lag = c.lag(0, t0 + ms(99_900)).unwrap_or_default();
        assert!(lag >= ms(10_000), "{lag:?}");

        let mut c = WalClock::default();
        for i in 0..(3 * CAP as u64) {
            c.record(t0 + ms(i), i + 1, Duration::from_secs(3600));
        }
        assert!(c.len() <= CAP, "{}", c.len());
        let now = t0 + ms(3 * CAP as u64);
        // The oldest sample survives thinning; a recent position keeps full resolution.
        assert_eq!(c.lag(0, now), Some(ms(3 * CAP as u64)));
        assert_eq!(c.lag(3 * CAP as u64 - 10, now), Some(ms(10)));
        // Old positions: never more lagged than the truth, and less by no more than the thinning's gaps.
        let truth = now.duration_since(t0 + ms(1000));
        let got = c.lag(1000, now).unwrap_or_default();
        assert!(got <= truth && truth - got < ms(64), "{got:?} vs {truth:?}");
    }
}
