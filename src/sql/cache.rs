//! Whole-query analysis (all statements of a simple Query, or the one of a Parse) cached by
//! query text, so the common case costs one hash look-up instead of a parse.

use crate::reason::Reason;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::database_ddl::{self, Exclusive};
use super::lex::{Hint, leading_hint, leading_min_lsn, normalize_into, split_statements};
use super::{Class, Target, classify::classify};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<Class>,
    pub hint: Option<Hint>,
    /// The strictest target of all statements.
    pub target: Target,
    pub reason: Reason,
    /// `/* pgsplit:min_lsn=... */`: read only where this much WAL has been replayed.
    pub min_lsn: Option<crate::lsn::Lsn>,
    /// Some statement commits / opens a transaction.
    pub commits: bool,
    pub opens: bool,
    /// Every statement is a ROLLBACK / ABORT (or there is none).
    pub only_rollback: bool,
    /// Databases that statements need free of other sessions (DROP DATABASE, ...).
    pub exclusive: Vec<Exclusive>,
}

impl Analysis {
    pub fn of(sql: &str, max_parse_len: usize) -> Analysis {
        let texts = split_statements(sql);
        let exclusive = texts.iter().filter_map(|s| database_ddl::exclusive(s)).collect();
        let statements: Vec<Class> = texts.into_iter().map(|s| classify(s, max_parse_len)).collect();
        let strictest = statements.iter().max_by_key(|c| c.target);
        let (target, reason) = strictest.map(|c| (c.target, c.reason)).unwrap_or((Target::Any, Reason::EmptyQuery));
        let commits = statements.iter().any(|c| c.commits);
        let opens = statements.iter().any(|c| c.opens);
        let only_rollback = statements.iter().all(|c| c.rolls_back);
        Analysis {
            hint: leading_hint(sql),
            min_lsn: leading_min_lsn(sql),
            statements,
            target,
            reason,
            commits,
            opens,
            only_rollback,
            exclusive,
        }
    }
}

/// A bounded cache. When full it is emptied: simple, bounded, and a working set smaller than
/// the capacity is re-filled at once.
pub struct AnalysisCache {
    map: Mutex<HashMap<Box<str>, Arc<Analysis>>>,
    capacity: usize,
    max_parse_len: usize,
}

impl AnalysisCache {
    pub fn new(capacity: usize, max_parse_len: usize) -> Self {
        AnalysisCache { map: Mutex::new(HashMap::new()), capacity, max_parse_len }
    }

    /// The analysis of `sql`, cached under its text with literals blanked out: routing never
    /// depends on a literal's value, so `WHERE id = 1` and `WHERE id = 2` share one entry.
    /// Analyses that carry literal values (a SET's text to replay) are not cached.
    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        // Very long texts are neither normalized nor kept: rarely repeated, they would crowd
        // out the rest.
        if sql.len() > 16 * 1024 {
            return Arc::new(Analysis::of(sql, self.max_parse_len));
        }
        thread_local! {
            static KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        KEY.with_borrow_mut(|key| {
            normalize_into(sql, key);
            if let Some(a) = self.lock().get(key.as_str()) {
                return a.clone();
            }
            let a = Arc::new(Analysis::of(sql, self.max_parse_len));
            let literal_dependent =
                a.min_lsn.is_some() || a.statements.iter().any(|c| c.effect.carries_values() || c.own.is_some());
            if !literal_dependent {
                let mut map = self.lock();
                if map.len() >= self.capacity {
                    map.clear();
                }
                map.insert(key.as_str().into(), a.clone());
            }
            a
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Analysis>>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_statement_takes_the_strictest() {
        let a = Analysis::of("SELECT 1; INSERT INTO t VALUES (1); SELECT 2", 1 << 20);
        assert_eq!(a.statements.len(), 3);
        assert_eq!(a.target, Target::Primary);
        let a = Analysis::of("SET x.y = 1; SELECT 1", 1 << 20);
        assert_eq!(a.target, Target::Replica);
        let a = Analysis::of("", 1 << 20);
        assert_eq!(a.target, Target::Any);
        assert!(a.statements.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let c = AnalysisCache::new(2, 1 << 20);
        for i in 0..10 {
            c.analyze(&format!("SELECT {i}"));
        }
        assert!(c.lock().len() <= 2);
        assert_eq!(c.analyze("SELECT 1").target, Target::Replica);
    }

    #[test]
    fn literals_share_an_entry_but_settings_keep_their_values() {
        let c = AnalysisCache::new(100, 1 << 20);
        let a = c.analyze("SELECT * FROM t WHERE id = 1");
        let b = c.analyze("SELECT * FROM t WHERE id = 2");
        assert!(Arc::ptr_eq(&a, &b));
        let x = c.analyze("SELECT set_config('a.b', 'x', false)");
        let y = c.analyze("SELECT set_config('a.b', 'y', false)");
        assert_ne!(x.statements[0].effect, y.statements[0].effect);
        let p = c.analyze("SET search_path = a");
        let q = c.analyze("SET search_path = b");
        assert_ne!(p.statements[0].effect, q.statements[0].effect);
    }
}
