//! What a client's session carries from one server connection to the next: its settings (SET,
//! set_config, startup parameters), its routing mode. Effects of statements are collected per
//! request and applied only once the server confirms them: at ReadyForQuery without error
//! outside a transaction, or at COMMIT.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use crate::protocol::TxStatus;
use crate::sql::{Effect, Own};

/// The session's own state: its settings and their pending changes, its prepared statements,
/// its routing mode, and its pools.
pub(super) struct SessionState {
    pub settings: Settings,
    pub effects: super::lazy::Lazy<PendingEffects>,
    pub statements: super::lazy::Lazy<super::extended::Statements>,
    pub mode: crate::sql::RouteMode,
    /// Parse messages seen, for unique server statement names.
    pub parses: u64,
    /// This client's pool on each server, looked up once.
    pub pools: Vec<Option<Arc<crate::pool::Pool>>>,
}

#[derive(Debug, Default)]
pub struct Settings {
    /// Settings from the client's startup packet: what RESET goes back to. (Name, statement)
    /// pairs shared with `current`, not copied: every client keeps them for its whole life.
    base: Vec<Setting>,
    /// Current settings in the order they were made, one entry per parameter name.
    current: Vec<Setting>,
    hash: u64,
    serializable: bool,
}

/// A setting's lower-cased name and the statement that makes it.
type Setting = (Arc<str>, Arc<str>);

impl Settings {
    pub fn new(base: Vec<(String, String)>) -> Settings {
        let base: Vec<Setting> = base.into_iter().map(|(n, sql)| (n.into(), sql.into())).collect();
        let mut s = Settings { current: base.clone(), base, hash: 0, serializable: false };
        s.rehash();
        s
    }

    /// Identifies the settings: a server connection whose `settings` equals this needs no
    /// replay. 0 means "server defaults".
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The settings change who the session is (SET ROLE, SET SESSION AUTHORIZATION).
    pub fn changes_identity(&self) -> bool {
        self.current.iter().any(|(n, _)| &**n == "role" || &**n == "session_authorization")
    }

    /// The statements that bring a server connection to these settings: `RESET ALL`, then the
    /// settings. Two queries, run one after the other: the settings must not run in the
    /// implicit transaction RESET ALL ran in, which started with the connection's previous
    /// defaults (a SERIALIZABLE default left on a standby connection would make a replayed
    /// `SELECT set_config(...)` fail there).
    pub fn replay_sql(&self) -> (&'static str, String) {
        let mut sql = String::new();
        for (_, stmt) in &self.current {
            if !sql.is_empty() {
                sql.push_str("; ");
            }
            sql.push_str(stmt);
        }
        ("RESET ALL", sql)
    }

    /// The session's transactions default to SERIALIZABLE, which a standby refuses to run.
    pub fn serializable(&self) -> bool {
        self.serializable
    }

    pub fn apply(&mut self, e: &Effect) {
        match e {
            Effect::Set { name, sql } => self.set(name, sql),
            Effect::SetMany(sets) => {
                for (name, sql) in sets {
                    self.set(name, sql);
                }
            }
            Effect::Reset { name } => {
                self.current.retain(|(n, _)| &**n != name);
                if let Some(b) = self.base.iter().find(|(n, _)| &**n == name) {
                    self.current.push(b.clone());
                }
            }
            Effect::ResetAll | Effect::DiscardAll => self.current = self.base.clone(),
            _ => return,
        }
        self.rehash();
    }

    fn set(&mut self, name: &str, sql: &str) {
        self.current.retain(|(n, _)| &**n != name);
        self.current.push((name.into(), sql.into()));
    }

    fn rehash(&mut self) {
        self.serializable = self.current.iter().any(|(n, sql)| {
            &**n == "default_transaction_isolation" && sql.to_ascii_lowercase().contains("serializable")
        });
        self.hash = if self.current.is_empty() {
            0
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.current.hash(&mut h);
            h.finish() | 1
        };
    }
}

/// Turns startup parameters into SET statements (the pooled server connections were opened
/// with pgsplit's own startup packet).
pub fn startup_settings(params: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut push = |name: &str, value: &str| {
        let lname = name.to_ascii_lowercase();
        out.retain(|(n, _): &(String, String)| *n != lname);
        out.push((lname, format!("SET {} TO {}", quote_ident(name), quote_literal(value))));
    };
    for (k, v) in params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                // "-c name=value" and "--name=value" pairs.
                let words: Vec<&str> = v.split_whitespace().collect();
                let mut i = 0;
                while i < words.len() {
                    let kv = if words[i] == "-c" {
                        i += 1;
                        words.get(i).copied()
                    } else {
                        words[i].strip_prefix("--").or_else(|| words[i].strip_prefix("-c"))
                    };
                    if let Some((n, val)) = kv.and_then(|kv| kv.split_once('=')) {
                        push(&n.replace('-', "_"), val);
                    }
                    i += 1;
                }
            }
            _ => push(k, v),
        }
    }
    out
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Effects waiting for the server's confirmation.
#[derive(Debug, Default)]
pub struct PendingEffects {
    /// Effects of statements sent since the last ReadyForQuery.
    pub request: Vec<(Effect, Option<Own>)>,
    /// Effects of earlier requests in the open transaction.
    pub transaction: Vec<(Effect, Option<Own>)>,
    pub error_in_request: bool,
    /// The last CommandComplete of the request was ROLLBACK (also what a failed COMMIT says).
    pub rolled_back: bool,
}

impl super::lazy::Clear for PendingEffects {
    fn empty() -> &'static PendingEffects {
        static NONE: PendingEffects = PendingEffects {
            request: Vec::new(),
            transaction: Vec::new(),
            error_in_request: false,
            rolled_back: false,
        };
        &NONE
    }

    fn is_clear(&self) -> bool {
        self.request.is_empty() && self.transaction.is_empty() && !self.error_in_request && !self.rolled_back
    }
}

impl PendingEffects {
    /// At ReadyForQuery: returns the effects that now hold, if the transaction is over.
    pub fn settle(&mut self, status: TxStatus) -> Vec<(Effect, Option<Own>)> {
        let request = std::mem::take(&mut self.request);
        if !self.error_in_request {
            self.transaction.extend(request);
        }
        let rolled_back = self.rolled_back || self.error_in_request;
        self.error_in_request = false;
        self.rolled_back = false;
        if !status.is_idle() {
            return Vec::new();
        }
        let done = std::mem::take(&mut self.transaction);
        if rolled_back { Vec::new() } else { done }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: &str, v: &str) -> Effect {
        Effect::Set { name: n.into(), sql: format!("SET {n} = {v}") }
    }

    #[test]
    fn settings_replay_and_reset() {
        let base = startup_settings(&[("user".into(), "u".into()), ("application_name".into(), "app".into())]);
        let mut s = Settings::new(base);
        let h0 = s.hash();
        assert_ne!(h0, 0);
        s.apply(&set("search_path", "a"));
        s.apply(&set("search_path", "b"));
        assert_eq!(s.replay_sql(), ("RESET ALL", "SET \"application_name\" TO 'app'; SET search_path = b".to_string()));
        s.apply(&Effect::Reset { name: "search_path".into() });
        assert_eq!(s.hash(), h0);
        s.apply(&set("x.y", "1"));
        s.apply(&Effect::DiscardAll);
        assert_eq!(s.hash(), h0);
        assert_eq!(Settings::new(vec![]).hash(), 0);
    }

    #[test]
    fn serializable_sessions_are_known() {
        let base = startup_settings(&[("options".into(), "-c default_transaction_isolation=serializable".into())]);
        let mut s = Settings::new(base);
        assert!(s.serializable());
        s.apply(&set("default_transaction_isolation", "'read committed'"));
        assert!(!s.serializable());
        s.apply(&Effect::SetMany(vec![(
            "default_transaction_isolation".into(),
            "SET default_transaction_isolation = 'serializable'".into(),
        )]));
        assert!(s.serializable());
        s.apply(&Effect::ResetAll);
        assert!(s.serializable(), "RESET ALL goes back to the startup options");
        let mut s = Settings::new(vec![]);
        s.apply(&Effect::Set {
            name: "default_transaction_isolation".into(),
            sql: "SELECT pg_catalog.set_config('default_transaction_isolation', 'SERIALIZABLE', false)".into(),
        });
        assert!(s.serializable());
        s.apply(&Effect::Reset { name: "default_transaction_isolation".into() });
        assert!(!s.serializable());
    }

    #[test]
    fn options_become_settings() {
        let s = startup_settings(&[("options".into(), "-c search_path=x --statement-timeout=5".into())]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].1, "SET \"search_path\" TO 'x'");
        assert_eq!(s[1].0, "statement_timeout");
    }

    #[test]
    fn effects_wait_for_commit() {
        let mut p = PendingEffects::default();
        p.request.push((set("a", "1"), None));
        assert!(p.settle(TxStatus::InTransaction).is_empty());
        p.request.push((set("b", "1"), None));
        assert_eq!(p.settle(TxStatus::Idle).len(), 2);

        p.request.push((set("a", "1"), None));
        assert!(p.settle(TxStatus::InTransaction).is_empty());
        p.rolled_back = true;
        assert!(p.settle(TxStatus::Idle).is_empty());

        p.request.push((set("a", "1"), None));
        p.error_in_request = true;
        assert!(p.settle(TxStatus::Idle).is_empty());
    }
}
