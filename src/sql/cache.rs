//! Whole-query analysis (all statements of a simple Query, or the one of a Parse) cached by
//! query text, so the common case costs one hash look-up instead of a parse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lex::{Hint, leading_hint, split_statements};
use super::{Class, Target, classify::classify};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub statements: Vec<Class>,
    pub hint: Option<Hint>,
    /// The strictest target of all statements.
    pub target: Target,
    pub reason: &'static str,
}

impl Analysis {
    pub fn of(sql: &str, max_parse_len: usize) -> Analysis {
        let statements: Vec<Class> = split_statements(sql).into_iter().map(|s| classify(s, max_parse_len)).collect();
        let strictest = statements.iter().max_by_key(|c| c.target);
        let (target, reason) = strictest.map(|c| (c.target, c.reason)).unwrap_or((Target::Any, "empty query"));
        Analysis { hint: leading_hint(sql), statements, target, reason }
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

    pub fn analyze(&self, sql: &str) -> Arc<Analysis> {
        if let Some(a) = self.lock().get(sql) {
            return a.clone();
        }
        let a = Arc::new(Analysis::of(sql, self.max_parse_len));
        // Very long texts are not kept: they are rarely repeated and would crowd out the rest.
        if sql.len() <= 16 * 1024 {
            let mut map = self.lock();
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(sql.into(), a.clone());
        }
        a
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
}
