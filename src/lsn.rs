//! A WAL position (PostgreSQL's `pg_lsn`): parsed from and written as `X/X`, compared, and
//! subtracted into a distance in bytes. Used by the monitor, failover, read-your-writes and
//! coordination; stored as a plain number in JSON (state file, etcd) and in atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);
    /// Beyond any position: "unknown, assume not replayed anywhere".
    pub const MAX: Lsn = Lsn(u64::MAX);

    /// `16/B374D848` as PostgreSQL writes it (hex digits either case).
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return None;
        }
        Some(Lsn((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?))
    }

    /// How many bytes of WAL lie between `earlier` and this position (0 when it is not later).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// A position shared between threads (the global read-your-writes floor).
#[derive(Debug, Default)]
pub struct AtomicLsn(AtomicU64);

impl AtomicLsn {
    pub fn load(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Relaxed))
    }
    /// Raises it to `lsn` if that is further.
    pub fn raise(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::Relaxed);
    }
    /// Sets it to `lsn`.
    pub fn set(&self, lsn: Lsn) {
        self.0.store(lsn.0, Ordering::Relaxed);
    }
    /// Lowers it to `lsn` if that is behind (a failover to a server with less WAL).
    pub fn cut(&self, lsn: Lsn) {
        self.0.fetch_min(lsn.0, Ordering::Relaxed);
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Lsn {
        Lsn(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_formats_and_compares() {
        let l = Lsn::parse("16/B374D848").unwrap_or_default();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("0/0"), Some(Lsn::ZERO));
        assert_eq!(Lsn::parse("0/16b3748"), Some(Lsn(0x16B_3748)));
        for bad in ["", "/", "1/", "/1", "x/1", "1/2/3", "123456789/0", "1"] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
        assert!(Lsn(5) > Lsn(3));
        assert_eq!(Lsn(5).bytes_since(Lsn(3)), 2);
        assert_eq!(Lsn(3).bytes_since(Lsn(5)), 0);
        assert_eq!(serde_json::to_string(&Lsn(42)).unwrap_or_default(), "42");
    }
}
