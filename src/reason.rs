//! Why a unit of work goes where it goes: one closed vocabulary shared by the classifier, the
//! router, the session and the metrics. `label()` is the text the console and the logs show;
//! `class()` the `reason` label of `pgsplit_queries_routed_total` (a handful of values, so the
//! series stay few).

/// A routing reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// "read"
    Read,
    /// "read (checked word by word)"
    ReadCheckedWordByWord,
    /// "COPY TO"
    CopyTo,
    /// "read-only transaction"
    ReadOnlyTransaction,
    /// "session command"
    SessionCommand,
    /// "transaction-level SET"
    TransactionLevelSet,
    /// "transaction control"
    TransactionControl,
    /// "cursor command"
    CursorCommand,
    /// "transaction-local set_config"
    TransactionLocalSetConfig,
    /// "empty query"
    EmptyQuery,
    /// "locking clause"
    LockingClause,
    /// "inside a transaction"
    InsideTransaction,
    /// "transaction"
    Transaction,
    /// "two-phase commit"
    TwoPhaseCommit,
    /// "serializable isolation"
    SerializableIsolation,
    /// "transaction mode a standby refuses"
    StandbyRefuses,
    /// "session pinned to the primary"
    SessionPinned,
    /// "pgsplit:primary hint"
    PrimaryHint,
    /// "pgsplit:replica hint"
    ReplicaHint,
    /// "pgsplit.route = primary"
    RoutePrimary,
    /// "read your writes"
    Causal,
    /// "not replayed on the replica yet"
    NotReplayedYet,
    /// "all replicas lagging: least lagged"
    LagFallback,
    /// "the primary's share of reads"
    PrimaryReadShare,
    /// "does not parse"
    DoesNotParse,
    /// "too long to parse"
    TooLongToParse,
    /// "not a single statement"
    NotSingleStatement,
    /// "no replica in rotation"
    NoReplica,
    /// "no replica reachable"
    NoReplicaReachable,
    /// "no replica in rotation (on_all_lagging = error)"
    NoReplicaError,
    /// "function or view not known to be read-only"
    UnknownFunction,
    /// "set_config that cannot be replayed"
    UnreplayableSetConfig,
    /// "server-local view or function"
    ServerLocal,
    /// "write or utility statement"
    Write,
    /// "COPY TO a server file"
    CopyToServerFile,
    /// "COPY FROM"
    CopyFrom,
    /// "data-modifying CTE"
    DataModifyingCte,
    /// "SELECT INTO"
    SelectInto,
    /// "EXPLAIN ANALYZE of a write"
    ExplainAnalyzeWrite,
    /// "SQL PREPARE"
    SqlPrepare,
    /// "SQL EXECUTE"
    SqlExecute,
    /// "LISTEN"
    Listen,
    /// "notification"
    Notification,
    /// "WITH HOLD cursor"
    WithHoldCursor,
    /// "cursor"
    Cursor,
    /// "LOAD"
    Load,
    /// "temporary object"
    TemporaryObject,
    /// "unrecognised SET"
    UnrecognisedSet,
    /// "unrecognised SET SESSION CHARACTERISTICS"
    UnrecognisedSetSession,
    /// "unrecognised RESET"
    UnrecognisedReset,
    /// "unrecognised DEALLOCATE"
    UnrecognisedDeallocate,
    /// "invalid pgsplit setting"
    InvalidPgsplitSetting,
    /// "fast-path function call"
    FastPath,
    /// "extended batch past limits.max_batch_bytes"
    StreamedBatch,
    /// A function of the audited list that must run on the primary (or pins the session):
    /// its verdict's words ("sequence function", "session advisory lock", ...).
    Function(&'static str),
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::ReadCheckedWordByWord => "read (checked word by word)",
            Reason::CopyTo => "COPY TO",
            Reason::ReadOnlyTransaction => "read-only transaction",
            Reason::SessionCommand => "session command",
            Reason::TransactionLevelSet => "transaction-level SET",
            Reason::TransactionControl => "transaction control",
            Reason::CursorCommand => "cursor command",
            Reason::TransactionLocalSetConfig => "transaction-local set_config",
            Reason::EmptyQuery => "empty query",
            Reason::LockingClause => "locking clause",
            Reason::InsideTransaction => "inside a transaction",
            Reason::Transaction => "transaction",
            Reason::TwoPhaseCommit => "two-phase commit",
            Reason::SerializableIsolation => "serializable isolation",
            Reason::StandbyRefuses => "transaction mode a standby refuses",
            Reason::SessionPinned => "session pinned to the primary",
            Reason::PrimaryHint => "pgsplit:primary hint",
            Reason::ReplicaHint => "pgsplit:replica hint",
            Reason::RoutePrimary => "pgsplit.route = primary",
            Reason::Causal => "read your writes",
            Reason::NotReplayedYet => "not replayed on the replica yet",
            Reason::LagFallback => "all replicas lagging: least lagged",
            Reason::PrimaryReadShare => "the primary's share of reads",
            Reason::DoesNotParse => "does not parse",
            Reason::TooLongToParse => "too long to parse",
            Reason::NotSingleStatement => "not a single statement",
            Reason::NoReplica => "no replica in rotation",
            Reason::NoReplicaReachable => "no replica reachable",
            Reason::NoReplicaError => "no replica in rotation (on_all_lagging = error)",
            Reason::UnknownFunction => "function or view not known to be read-only",
            Reason::UnreplayableSetConfig => "set_config that cannot be replayed",
            Reason::ServerLocal => "server-local view or function",
            Reason::Write => "write or utility statement",
            Reason::CopyToServerFile => "COPY TO a server file",
            Reason::CopyFrom => "COPY FROM",
            Reason::DataModifyingCte => "data-modifying CTE",
            Reason::SelectInto => "SELECT INTO",
            Reason::ExplainAnalyzeWrite => "EXPLAIN ANALYZE of a write",
            Reason::SqlPrepare => "SQL PREPARE",
            Reason::SqlExecute => "SQL EXECUTE",
            Reason::Listen => "LISTEN",
            Reason::Notification => "notification",
            Reason::WithHoldCursor => "WITH HOLD cursor",
            Reason::Cursor => "cursor",
            Reason::Load => "LOAD",
            Reason::TemporaryObject => "temporary object",
            Reason::UnrecognisedSet => "unrecognised SET",
            Reason::UnrecognisedSetSession => "unrecognised SET SESSION CHARACTERISTICS",
            Reason::UnrecognisedReset => "unrecognised RESET",
            Reason::UnrecognisedDeallocate => "unrecognised DEALLOCATE",
            Reason::InvalidPgsplitSetting => "invalid pgsplit setting",
            Reason::FastPath => "fast-path function call",
            Reason::StreamedBatch => "extended batch past limits.max_batch_bytes",
            Reason::Function(why) => why,
        }
    }

    /// The metrics class: read, session, lock, transaction, session_pin, hint, causal,
    /// not_replayed, lag_fallback, parse_error, no_replica, function, server_local, write.
    pub fn class(self) -> &'static str {
        match self {
            Reason::Read
            | Reason::ReadCheckedWordByWord
            | Reason::CopyTo
            | Reason::ReadOnlyTransaction
            | Reason::PrimaryReadShare => "read",
            Reason::SessionCommand
            | Reason::TransactionLevelSet
            | Reason::TransactionControl
            | Reason::CursorCommand
            | Reason::TransactionLocalSetConfig
            | Reason::EmptyQuery => "session",
            Reason::LockingClause => "lock",
            Reason::InsideTransaction
            | Reason::Transaction
            | Reason::TwoPhaseCommit
            | Reason::SerializableIsolation
            | Reason::StandbyRefuses => "transaction",
            Reason::SessionPinned => "session_pin",
            Reason::PrimaryHint | Reason::ReplicaHint | Reason::RoutePrimary => "hint",
            Reason::Causal => "causal",
            Reason::NotReplayedYet => "not_replayed",
            Reason::LagFallback => "lag_fallback",
            Reason::DoesNotParse | Reason::TooLongToParse | Reason::NotSingleStatement => "parse_error",
            Reason::NoReplica | Reason::NoReplicaReachable | Reason::NoReplicaError => "no_replica",
            Reason::UnknownFunction | Reason::UnreplayableSetConfig => "function",
            Reason::ServerLocal => "server_local",
            Reason::Write
            | Reason::CopyToServerFile
            | Reason::CopyFrom
            | Reason::DataModifyingCte
            | Reason::SelectInto
            | Reason::ExplainAnalyzeWrite
            | Reason::SqlPrepare
            | Reason::SqlExecute
            | Reason::Listen
            | Reason::Notification
            | Reason::WithHoldCursor
            | Reason::Cursor
            | Reason::Load
            | Reason::TemporaryObject
            | Reason::UnrecognisedSet
            | Reason::UnrecognisedSetSession
            | Reason::UnrecognisedReset
            | Reason::UnrecognisedDeallocate
            | Reason::InvalidPgsplitSetting
            | Reason::FastPath
            | Reason::StreamedBatch => "write",
            Reason::Function(_) => "function",
        }
    }

    /// Every reason but the audited functions', for the tests and the dashboards.
    pub const ALL: &[Reason] = &[
        Reason::Read,
        Reason::ReadCheckedWordByWord,
        Reason::CopyTo,
        Reason::ReadOnlyTransaction,
        Reason::SessionCommand,
        Reason::TransactionLevelSet,
        Reason::TransactionControl,
        Reason::CursorCommand,
        Reason::TransactionLocalSetConfig,
        Reason::EmptyQuery,
        Reason::LockingClause,
        Reason::InsideTransaction,
        Reason::Transaction,
        Reason::TwoPhaseCommit,
        Reason::SerializableIsolation,
        Reason::StandbyRefuses,
        Reason::SessionPinned,
        Reason::PrimaryHint,
        Reason::ReplicaHint,
        Reason::RoutePrimary,
        Reason::Causal,
        Reason::NotReplayedYet,
        Reason::LagFallback,
        Reason::PrimaryReadShare,
        Reason::DoesNotParse,
        Reason::TooLongToParse,
        Reason::NotSingleStatement,
        Reason::NoReplica,
        Reason::NoReplicaReachable,
        Reason::NoReplicaError,
        Reason::UnknownFunction,
        Reason::UnreplayableSetConfig,
        Reason::ServerLocal,
        Reason::Write,
        Reason::CopyToServerFile,
        Reason::CopyFrom,
        Reason::DataModifyingCte,
        Reason::SelectInto,
        Reason::ExplainAnalyzeWrite,
        Reason::SqlPrepare,
        Reason::SqlExecute,
        Reason::Listen,
        Reason::Notification,
        Reason::WithHoldCursor,
        Reason::Cursor,
        Reason::Load,
        Reason::TemporaryObject,
        Reason::UnrecognisedSet,
        Reason::UnrecognisedSetSession,
        Reason::UnrecognisedReset,
        Reason::UnrecognisedDeallocate,
        Reason::InvalidPgsplitSetting,
        Reason::FastPath,
        Reason::StreamedBatch,
    ];
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_classes_few() {
        let mut labels: Vec<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Reason::ALL.len());
        let mut classes: Vec<_> = Reason::ALL.iter().map(|r| r.class()).collect();
        classes.sort_unstable();
        classes.dedup();
        assert_eq!(classes.len(), 14, "{classes:?}");
        assert_eq!(Reason::Function("sequence function").class(), "function");
        assert_eq!(Reason::Function("sequence function").to_string(), "sequence function");
        assert_eq!(Reason::NoReplicaError.class(), "no_replica");
    }
}
