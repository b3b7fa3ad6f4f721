//! What pgsplit knows about functions without asking the server.
//!
//! Volatility alone is not enough: `txid_current()` is STABLE yet assigns an xid, and the
//! advisory-lock functions run happily on a standby while meaning nothing there. Every function
//! of PostgreSQL 15's pg_catalog was audited once; the verdicts are data, in
//! `builtin_functions.tsv` beside this file. Functions elsewhere (user and extension functions)
//! are looked up in pg_proc: read-only unless VOLATILE.

use crate::reason::Reason;
use std::collections::HashMap;
use std::sync::OnceLock;

/// What a call to a function means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionKind {
    /// Known to be harmless on a replica.
    ReadOnly,
    /// Needs the primary.
    Primary(&'static str),
    /// Needs the primary and leaves state in the session (session advisory locks).
    PinsSession(&'static str),
    /// Answers about the server it runs on: the primary unless hinted (`Target::Local`).
    ServerLocal,
    /// Not known here: decided by pg_proc volatility.
    Unknown,
}

const BUILTINS_TSV: &str = include_str!("builtin_functions.tsv");
const VIEWS_TSV: &str = include_str!("server_local_views.tsv");

/// The reason of a read sent to the primary because it answers about the server it runs on.
pub const SERVER_LOCAL: Reason = Reason::ServerLocal;

/// The audited pg_catalog views (and extensions' views) whose answers differ per server.
fn local_views() -> &'static std::collections::HashSet<&'static str> {
    static SET: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        VIEWS_TSV
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split('\t');
                let (name, verdict) = (f.next()?, f.next()?);
                (verdict == "local").then_some(name)
            })
            .collect()
    })
}

/// Whether a relation (lower-cased, possibly qualified) is a view whose answer depends on the
/// server: a pg_catalog view (unqualified names resolve there first) or pg_stat_statements in
/// any schema.
pub fn is_server_local_relation(qualified: &str) -> bool {
    let (schema, name) = match qualified.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, qualified),
    };
    local_views().contains(name)
        && (matches!(schema, None | Some("pg_catalog")) || name.starts_with("pg_stat_statements"))
}

/// The audited views, for the test that checks them against a live server: (name, verdict).
pub fn audited_views() -> impl Iterator<Item = (&'static str, &'static str)> {
    VIEWS_TSV.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let mut f = l.split('\t');
        Some((f.next()?, f.next()?))
    })
}

/// Extension functions (found in any schema) known to be harmless though VOLATILE.
const EXTENSION_READ_ONLY: &[&str] =
    &["uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v3", "uuid_generate_v4", "uuid_generate_v5"];

/// The audited built-ins: name -> kind.
fn builtins() -> &'static HashMap<&'static str, FunctionKind> {
    static MAP: OnceLock<HashMap<&'static str, FunctionKind>> = OnceLock::new();
    MAP.get_or_init(|| BUILTINS_TSV.lines().filter_map(parse_line).collect())
}

fn parse_line(line: &'static str) -> Option<(&'static str, FunctionKind)> {
    if line.starts_with('#') {
        return None;
    }
    let mut fields = line.split('\t');
    let (name, _volatility, verdict, why) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let kind = match verdict {
        "replica" => FunctionKind::ReadOnly,
        "primary" => FunctionKind::Primary(why),
        "pin" => FunctionKind::PinsSession(why),
        "local" => FunctionKind::ServerLocal,
        _ => return None,
    };
    Some((name, kind))
}

/// Classifies a function by its (lower-cased, possibly schema-qualified) name.
pub fn function_kind(qualified: &str) -> FunctionKind {
    let (schema, name) = match qualified.rsplit_once('.') {
        Some((s, n)) => (Some(s), n),
        None => (None, qualified),
    };
    // Unqualified names resolve in pg_catalog first (it is implicitly first on the
    // search_path); a name qualified with another schema is a user function.
    if matches!(schema, None | Some("pg_catalog"))
        && let Some(k) = builtins().get(name)
    {
        return *k;
    }
    if EXTENSION_READ_ONLY.contains(&name) {
        return FunctionKind::ReadOnly;
    }
    FunctionKind::Unknown
}

/// Whether `name` is a function of pg_catalog (any verdict).
pub fn is_builtin(name: &str) -> bool {
    builtins().contains_key(name)
}

/// The audited list, for the tests that check it against a live server: (name, volatility).
pub fn audited() -> impl Iterator<Item = (&'static str, &'static str)> {
    BUILTINS_TSV.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let mut f = l.split('\t');
        Some((f.next()?, f.next()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_well_formed_and_sorted() {
        let lines: Vec<&str> = BUILTINS_TSV.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(lines.len() > 2500, "{} functions", lines.len());
        for l in &lines {
            assert!(parse_line(l).is_some(), "bad line: {l}");
            let vol = l.split('\t').nth(1).unwrap_or("");
            assert!(matches!(vol, "immutable" | "stable" | "volatile"), "bad volatility: {l}");
        }
        let names: Vec<&str> = lines.iter().map(|l| l.split('\t').next().unwrap_or("")).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, names, "names must be unique and sorted");
    }

    #[test]
    fn views_are_well_formed_and_sorted() {
        let rows: Vec<(&str, &str)> = audited_views().collect();
        assert!(rows.len() >= 75, "{} views", rows.len());
        assert!(rows.iter().all(|(_, v)| matches!(*v, "local" | "same")), "verdicts are local or same");
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "names must be unique and sorted");
        for local in ["pg_stat_activity", "pg_catalog.pg_locks", "pg_prepared_xacts", "public.pg_stat_statements"] {
            assert!(is_server_local_relation(local), "{local}");
        }
        for same in ["pg_class", "pg_tables", "pg_catalog.pg_roles", "myschema.pg_stat_activity", "orders"] {
            assert!(!is_server_local_relation(same), "{same}");
        }
    }

    #[test]
    fn kinds() {
        assert_eq!(function_kind("count"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("pg_catalog.now"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("random"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("pg_current_snapshot"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("txid_current_snapshot"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("pg_snapshot_xmin"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("table_to_xml"), FunctionKind::ReadOnly);
        assert!(matches!(function_kind("nextval"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("txid_current"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_current_wal_lsn"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("lo_import"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("query_to_xml"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_terminate_backend"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_advisory_xact_lock"), FunctionKind::Primary(_)));
        assert!(matches!(function_kind("pg_advisory_lock"), FunctionKind::PinsSession(_)));
        assert!(matches!(function_kind("setseed"), FunctionKind::PinsSession(_)));
        assert_eq!(function_kind("pg_backend_pid"), FunctionKind::ServerLocal);
        assert_eq!(function_kind("pg_stat_get_numscans"), FunctionKind::ServerLocal);
        assert_eq!(function_kind("pg_last_wal_replay_lsn"), FunctionKind::ServerLocal);
        assert_eq!(function_kind("pg_is_in_recovery"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("inet_server_port"), FunctionKind::ReadOnly);
        assert_eq!(function_kind("myschema.count"), FunctionKind::Unknown);
        assert_eq!(function_kind("my_func"), FunctionKind::Unknown);
        assert_eq!(function_kind("public.uuid_generate_v4"), FunctionKind::ReadOnly);
    }
}
