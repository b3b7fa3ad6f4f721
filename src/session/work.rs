//! The unit of work: what the client asked, as pgsplit will route it. A simple Query or an
//! extended batch up to Sync, each summed up once as a [`Route`] (what it needs, why, what it
//! does to the transaction) that the one dispatch (`Session::dispatch`) routes; the read in
//! flight that may be run again ([`Retry`]); and the session's part that holds the work in
//! progress ([`Work`]).

use std::sync::Arc;

use bytes::Bytes;

use super::extended::Prepared;
use crate::lsn::Lsn;
use crate::protocol::Frame;
use crate::reason::Reason;
use crate::sql::cache::Analysis;
use crate::sql::{Hint, Target};

/// What a unit of work needs, summed over its statements.
#[derive(Clone)]
pub(super) struct Route {
    pub target: Target,
    pub reason: Reason,
    /// Analyses of the statements whose look-ups are still to be checked.
    pub lookups: Vec<Arc<Analysis>>,
    pub hint: Option<Hint>,
    /// A `/* pgsplit:min_lsn=... */` of its statements (the highest).
    pub min_lsn: Option<Lsn>,
    /// Some statement commits / opens a transaction (for the commit probe).
    pub commits: bool,
    pub opens: bool,
    /// Some statement is a COPY FROM STDIN.
    pub copies_in: bool,
    /// Statements parsed or bound, and whether all are ROLLBACK / ABORT.
    pub statements: usize,
    pub only_rollback: bool,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            target: Target::Any,
            reason: Reason::SessionCommand,
            lookups: Vec::new(),
            hint: None,
            min_lsn: None,
            commits: false,
            opens: false,
            copies_in: false,
            statements: 0,
            only_rollback: true,
        }
    }
}

impl Route {
    /// A simple Query: its one analysis.
    pub fn of(a: &Arc<Analysis>) -> Route {
        let mut r = Route { target: a.target, reason: a.reason, ..Route::default() };
        r.add_rest(a);
        r
    }

    /// Raises what the work needs (a Bind can tell more than its statement's text).
    pub fn require(&mut self, target: Target, reason: Reason) {
        if target > self.target {
            self.target = target;
            self.reason = reason;
        }
    }

    /// One more statement of an extended batch.
    pub fn add_analysis(&mut self, a: &Arc<Analysis>) {
        self.require(a.target, a.reason);
        self.add_rest(a);
    }

    fn add_rest(&mut self, a: &Arc<Analysis>) {
        if a.hint.is_some() {
            self.hint = a.hint;
        }
        self.min_lsn = self.min_lsn.max(a.min_lsn);
        self.commits |= a.commits;
        self.opens |= a.opens;
        self.copies_in |= a.statements.iter().any(|c| c.reason == Reason::CopyFrom);
        self.statements += a.statements.len();
        self.only_rollback &= a.only_rollback;
        if a.statements.iter().any(|c| !c.lookups.is_empty()) && !self.lookups.iter().any(|x| Arc::ptr_eq(x, a)) {
            self.lookups.push(a.clone());
        }
    }

    /// The work only ends the transaction (ROLLBACK, ABORT).
    pub fn only_rolls_back(&self) -> bool {
        self.only_rollback && self.statements > 0
    }
}

/// Where a unit of work is aimed once its look-ups are resolved: what `dispatch` decides on.
#[derive(Clone, Copy, Debug)]
pub(super) struct Aim {
    pub target: Target,
    pub reason: Reason,
    pub hint: Option<Hint>,
    pub min_lsn: Option<Lsn>,
}

impl Aim {
    /// A read a replica has not replayed the objects of: the primary.
    pub fn not_replayed(self) -> Aim {
        Aim { target: Target::Primary, reason: crate::router::NOT_REPLAYED_YET, hint: None, ..self }
    }
}

/// A client extended-protocol message waiting for Flush or Sync.
#[derive(Clone)]
pub(super) enum BatchItem {
    Parse(Arc<Prepared>),
    Bind(Frame, Arc<Prepared>),
    DescribeStatement(Arc<Prepared>),
    CloseStatement(Bytes),
    /// A Parse of a name the client still has: PostgreSQL's 42P05, raised by the server at
    /// this point of the batch (so what precedes runs and what follows is skipped, as it would
    /// be directly).
    DuplicateParse(String),
    Raw(Frame),
}

#[derive(Default)]
pub(super) struct Batch {
    pub items: Vec<BatchItem>,
    pub route: Route,
    /// Bytes of client messages queued (limits.max_batch_bytes).
    pub bytes: usize,
}

/// A read sent outside a transaction to a replica. If that connection dies before the first
/// byte of an answer, the read had no effect and no result: pgsplit runs it again on another
/// server, and the client never knows.
pub(super) struct Retry {
    pub(super) work: RetryWork,
    pub(super) aim: Aim,
}

pub(super) enum RetryWork {
    Query(bytes::Bytes),
    /// The batch's items and its Sync.
    Batch(Vec<BatchItem>, Frame),
}

/// The session's work in progress: the extended batch being queued, what to skip, the read
/// that may run again, a transaction lost under the client.
#[derive(Default)]
pub(super) struct Work {
    pub batch: Batch,
    /// After an error pgsplit raised itself mid-batch: drop messages until Sync.
    pub skip_until_sync: bool,
    /// The read in flight on a replica, until the server starts answering it.
    pub retry: Option<Retry>,
    /// A read whose connection died before any answer: to run again elsewhere.
    pub retry_now: Option<Box<Retry>>,
    /// The BEGIN READ ONLY of a transaction on a replica that has run nothing else yet.
    pub fresh_begin: Option<String>,
    /// The transaction whose server connection was lost.
    pub lost: Lost,
    /// What the request in flight would do (for the error it gets if it is lost).
    pub in_flight: InFlight,
}

impl super::lazy::Clear for Work {
    fn empty() -> &'static Work {
        static NO_WORK: std::sync::LazyLock<Work> = std::sync::LazyLock::new(Work::default);
        &NO_WORK
    }

    fn is_clear(&self) -> bool {
        self.batch.items.is_empty()
            && self.batch.bytes == 0
            && !self.skip_until_sync
            && self.retry.is_none()
            && self.retry_now.is_none()
            && self.fresh_begin.is_none()
            && self.lost == Lost::No
            && !self.in_flight.commits
            && !self.in_flight.writes
    }
}

/// The transaction's state after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Lost {
    #[default]
    No,
    /// Lost while the client was idle in it: the client has not been told yet.
    Unreported,
    /// The client has been told (40001); it is in a failed transaction.
    Reported,
}

/// What the request in flight would have done, for the error it gets if it is lost.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct InFlight {
    pub commits: bool,
    pub writes: bool,
}
