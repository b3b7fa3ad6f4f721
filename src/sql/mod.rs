//! Statement classification: what a statement needs (primary, any replica, any server) and
//! what it does to the session. Pure functions of the query text, cached by text.

pub mod cache;
pub mod classify;
pub mod database_ddl;
pub mod functions;
pub mod lex;
pub mod session_cmd;
pub mod set_config;

pub use crate::reason::Reason;
pub use lex::Hint;

/// What a statement needs from the server it runs on. Ordered from least to most strict, so a
/// batch of statements needs the `max` of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Session bookkeeping (SET, SHOW, COMMIT outside a transaction...): any server will do.
    Any,
    /// A read: a replica may run it.
    Replica,
    /// A read whose answer is about the server it runs on (pg_stat_activity, pg_locks,
    /// pg_backend_pid()...): the primary, as a client connected to the primary sees it,
    /// unless a hint or `pgsplit.route = replica` asks for a replica.
    Local,
    /// Needs the primary.
    Primary,
}

/// The session's routing mode, set with `SET pgsplit.route = ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteMode {
    #[default]
    Auto,
    Primary,
    Replica,
}

impl RouteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteMode::Auto => "auto",
            RouteMode::Primary => "primary",
            RouteMode::Replica => "replica",
        }
    }
}

/// pgsplit's own session settings, answered by pgsplit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Own {
    /// `SET pgsplit.route = primary | replica | auto`
    Route(RouteMode),
    /// `SET pgsplit.min_lsn = '0/16B3748'`: reads only where this much WAL has been replayed.
    MinLsn(crate::lsn::Lsn),
    /// `SET pgsplit.max_lag = '500ms'`: reads only on replicas at most this far behind.
    MaxLagMs(Option<u64>),
}

/// What a statement does to the client's session, beyond its own result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A session-level setting, replayed on every server connection the client uses next.
    /// `name` is lower-cased; `sql` is the statement that re-applies it.
    Set {
        name: String,
        sql: String,
    },
    /// Several settings at once (`SET SESSION CHARACTERISTICS`): (name, sql) each.
    SetMany(Vec<(String, String)>),
    Reset {
        name: String,
    },
    ResetAll,
    /// DISCARD ALL: forget settings and prepared statements.
    DiscardAll,
    /// Session state that lives only on one server (temp table, session advisory lock, SQL
    /// PREPARE, WITH HOLD cursor, LISTEN): the client stays on the primary connection for good.
    Pin(&'static str),
    /// DEALLOCATE name / DEALLOCATE ALL (None).
    Deallocate(Option<String>),
    /// A set_config whose arguments are bound parameters: resolved at each Bind.
    SetConfigBound([set_config::Arg; 3]),
}

impl Effect {
    /// Effects that carry values from the statement's text (an analysis with one is not
    /// shared between texts that differ only in their literals).
    pub fn carries_values(&self) -> bool {
        matches!(self, Effect::Set { .. } | Effect::SetMany(_) | Effect::SetConfigBound(_))
    }
}

/// A name to check in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// A function not known to pgsplit: read-only only if not VOLATILE in pg_proc.
    Function(String),
    /// A relation: if it is a view, reading it runs the view's functions.
    Relation(String),
}

/// The classification of one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    pub target: Target,
    /// Why, for logs, metrics and tests.
    pub reason: Reason,
    pub effect: Effect,
    /// Names whose safety only the catalog can tell (looked up once per database and cached):
    /// any that may write sends the statement to the primary.
    pub lookups: Vec<Lookup>,
    /// `SET pgsplit.route / pgsplit.min_lsn / pgsplit.max_lag = ...`: pgsplit's own settings.
    pub own: Option<Own>,
    /// The statement commits (COMMIT, END, COMMIT PREPARED).
    pub commits: bool,
    /// The statement opens a transaction (BEGIN, START TRANSACTION).
    pub opens: bool,
    /// The statement ends the transaction with a rollback (ROLLBACK, ABORT; not TO SAVEPOINT).
    pub rolls_back: bool,
}

impl Class {
    pub fn new(target: Target, reason: Reason) -> Class {
        Class {
            target,
            reason,
            effect: Effect::None,
            lookups: Vec::new(),
            own: None,
            commits: false,
            opens: false,
            rolls_back: false,
        }
    }
    pub fn with_effect(mut self, effect: Effect) -> Class {
        self.effect = effect;
        self
    }
}

/// A parsed object name as PostgreSQL resolves it: unquoted parts folded to lower case.
pub(crate) fn object_name(name: &sqlparser::ast::ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            sqlparser::ast::ObjectNamePart::Identifier(id) if id.quote_style.is_some() => out.push_str(&id.value),
            sqlparser::ast::ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_ascii_lowercase()),
            sqlparser::ast::ObjectNamePart::Function(f) => out.push_str(&f.name.value.to_ascii_lowercase()),
        }
    }
    out
}
