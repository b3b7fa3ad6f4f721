//! Read-your-writes for one client.
//!
//! PostgreSQL 15 does not report a commit's LSN. The insert position read by a query that
//! starts after the commit completed is an upper bound on it: pgsplit sends
//! `SELECT pg_current_wal_insert_lsn()` on the same primary connection right behind a request
//! that commits a write (pipelined: no extra round trip, only that query's execution), holds
//! the client's ReadyForQuery until the answer is in, then sends the client the ParameterStatus
//! `pgsplit.last_write_lsn` and its ReadyForQuery. Until a replica has replayed that far, the
//! client's reads go to the primary (or wait for a replica, `routing.causal_wait_ms`).
//!
//! A simple Query that is one plain COMMIT (or END) carries the probe in its own text instead,
//! `COMMIT` + newline + `;SELECT ...` (`merged`): the COMMIT has completed when the SELECT
//! starts, and the server answers both in one flush with one ReadyForQuery, which saves the
//! server a second request and pgsplit a second read of the connection. An autocommit write
//! cannot: in one Query string it would commit only after the probe had read the position.

use bytes::Bytes;

use crate::config::ReadYourWrites;
use crate::lsn::{AtomicLsn, Lsn};

/// The query whose answer bounds the commit's position.
pub const PROBE_SQL: &str = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";

/// The probe's Query message, built once (it follows every write that commits).
pub static PROBE_MESSAGE: std::sync::LazyLock<bytes::Bytes> =
    std::sync::LazyLock::new(|| crate::protocol::simple_query(PROBE_SQL));

/// The ParameterStatus that reports a client's last write.
pub const LAST_WRITE_LSN: &str = "pgsplit.last_write_lsn";

#[derive(Debug, Default)]
pub struct Causal {
    /// The bound of this client's last committed write.
    pub floor: Lsn,
    /// A commit went unmeasured (its probe was lost, or it was a COPY FROM in the extended
    /// protocol): reads go to the primary until a later write is measured, which bounds it.
    pub unmeasured: bool,
    /// `SET pgsplit.min_lsn`.
    pub explicit: Lsn,
    /// `SET pgsplit.max_lag`.
    pub max_lag_ms: Option<u64>,
    /// A probe in flight.
    pub probe: Option<Probe>,
    /// A COPY FROM that commits is running: the probe goes behind the client's CopyDone.
    pub after_copy: bool,
}

/// A commit-position probe sent behind a client's request.
#[derive(Debug, Default)]
pub struct Probe {
    /// Carried in the client's own COMMIT Query: its answers come before the one
    /// ReadyForQuery, after the client's CommandComplete (or ErrorResponse).
    pub merged: bool,
    /// Merged: the client's statement has had its answer; what follows is the probe's.
    pub client_done: bool,
    /// The client's own ReadyForQuery, held until the probe answers.
    pub client_ready: Option<Bytes>,
    /// The client's request committed (no error, no ROLLBACK).
    pub committed: bool,
    pub lsn: Option<Lsn>,
}

impl Causal {
    /// A new client's state: its floor starts at the latest commit any client made through
    /// this pgsplit (one atomic read), so a connection opened after another one's commit
    /// reads it, as web requests, job workers and test runners expect.
    pub fn starting_at(global: &AtomicLsn) -> Causal {
        Causal { floor: global.load(), ..Causal::default() }
    }

    /// How far a replica must have replayed to take this client's next read.
    pub fn min_lsn(&self, mode: ReadYourWrites, global: &AtomicLsn, statement: Option<Lsn>) -> Lsn {
        let own = if self.unmeasured { Lsn::MAX } else { self.floor };
        let implicit = match mode {
            ReadYourWrites::Off => Lsn::ZERO,
            ReadYourWrites::Session => own,
            ReadYourWrites::Global => own.max(global.load()),
        };
        implicit.max(self.explicit).max(statement.unwrap_or_default())
    }

    /// A probe answered: the floor rises (global too in that mode). The probe ran after any
    /// unmeasured commit of this client had completed, so it bounds that one too.
    pub fn wrote(&mut self, lsn: Lsn, global: &AtomicLsn) {
        self.floor = self.floor.max(lsn);
        self.unmeasured = false;
        global.raise(lsn);
    }

    /// The Query message of a COMMIT with the probe merged into its text, written once. The
    /// newline ends a trailing `--` comment of the client's.
    pub fn merged_commit(sql: &str) -> Bytes {
        crate::protocol::message(b'Q', |b| {
            b.extend_from_slice(sql.as_bytes());
            b.extend_from_slice(b"\n;");
            crate::protocol::put_cstr(b, PROBE_SQL);
        })
    }

    /// The probe failed (the primary connection broke) or could not run: nothing is known of
    /// the commit's position, so reads go to the primary until a later write is measured.
    pub fn unknown(&mut self) {
        self.unmeasured = true;
    }

    /// Whether a request sent to the primary needs a probe behind it: it ends a transaction
    /// that may have written (an autocommit write, a string that commits, a COMMIT), and
    /// does not leave one open (the probe would run inside it).
    pub fn wanted(mode: ReadYourWrites, in_transaction: bool, writes: bool, opens: bool, commits: bool) -> bool {
        mode != ReadYourWrites::Off && if in_transaction { commits } else { writes && (!opens || commits) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_by_mode() {
        let global = AtomicLsn::default();
        let mut a = Causal::default();
        let b = Causal::default();
        a.wrote(Lsn(500), &global);
        assert_eq!(a.min_lsn(ReadYourWrites::Session, &global, None), Lsn(500));
        assert_eq!(b.min_lsn(ReadYourWrites::Session, &global, None), Lsn(0));
        assert_eq!(b.min_lsn(ReadYourWrites::Global, &global, None), Lsn(500));
        assert_eq!(a.min_lsn(ReadYourWrites::Off, &global, None), Lsn(0));
        assert_eq!(b.min_lsn(ReadYourWrites::Off, &global, Some(Lsn(7))), Lsn(7));
        let mut c = Causal { explicit: Lsn(900), ..Causal::default() };
        assert_eq!(c.min_lsn(ReadYourWrites::Off, &global, None), Lsn(900));
        c.unknown();
        assert_eq!(c.min_lsn(ReadYourWrites::Session, &global, None), Lsn::MAX);
        // A client that connects later starts at everyone's last write, in session mode too.
        let late = Causal::starting_at(&global);
        assert_eq!(late.min_lsn(ReadYourWrites::Session, &global, None), Lsn(500));
        assert_eq!(late.min_lsn(ReadYourWrites::Off, &global, None), Lsn(0));
    }

    #[test]
    fn an_unmeasured_commit_holds_reads_until_a_later_write_is_measured() {
        let global = AtomicLsn::default();
        let mut c = Causal::default();
        c.wrote(Lsn(100), &global);
        c.unknown();
        assert_eq!(c.min_lsn(ReadYourWrites::Session, &global, None), Lsn::MAX);
        // Before, the unknown floor stayed at its maximum for the rest of the session.
        c.wrote(Lsn(300), &global);
        assert_eq!(c.min_lsn(ReadYourWrites::Session, &global, None), Lsn(300));
        assert_eq!(c.min_lsn(ReadYourWrites::Off, &global, None), Lsn(0));
    }

    #[test]
    fn a_merged_probe_survives_a_trailing_comment() {
        let m = Causal::merged_commit("END -- done");
        assert_eq!(m, crate::protocol::simple_query(&format!("END -- done\n;{PROBE_SQL}")));
    }

    #[test]
    fn when_to_probe() {
        use ReadYourWrites::*;
        // (mode, in transaction, writes, opens, commits)
        assert!(Causal::wanted(Session, false, true, false, false), "autocommit write");
        assert!(Causal::wanted(Session, false, true, true, true), "BEGIN; ...; COMMIT in one string");
        assert!(!Causal::wanted(Session, false, true, true, false), "BEGIN left open");
        assert!(!Causal::wanted(Session, false, false, false, false), "a read");
        assert!(Causal::wanted(Global, true, false, false, true), "COMMIT");
        assert!(!Causal::wanted(Session, true, true, false, false), "a write inside a transaction");
        assert!(!Causal::wanted(Off, false, true, false, false));
    }
}
