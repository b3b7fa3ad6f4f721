//! Classifies one statement: session commands by keyword, everything else with sqlparser.
//! Anything that does not parse, or that is not provably a plain read, needs the primary.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, ObjectNamePart, Query, SelectItem,
    SetExpr, Statement, TableFactor, UtilityOption, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::functions::{FunctionKind, function_kind};
use super::lex::keywords;
use super::{Class, Effect, Lookup, Target, session_cmd};

/// Classifies a single statement (no top-level semicolons).
pub fn classify(stmt: &str, max_parse_len: usize) -> Class {
    let kw = keywords(stmt, 12);
    if let Some(c) = session_cmd::classify(stmt, &kw) {
        return c;
    }
    let first = kw.first().map(String::as_str).unwrap_or("");
    // Only these can be reads; anything else is a write or utility statement.
    if !matches!(first, "select" | "with" | "values" | "table" | "explain" | "copy")
        && !stmt.trim_start().starts_with('(')
    {
        return Class::new(Target::Primary, "write or utility statement");
    }
    if stmt.len() > max_parse_len {
        return Class::new(Target::Primary, "too long to parse");
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, stmt) {
        Ok(s) => s,
        Err(_) => return Class::new(Target::Primary, "does not parse"),
    };
    let [statement] = statements.as_slice() else {
        return Class::new(Target::Primary, "not a single statement");
    };
    classify_statement(statement)
}

fn classify_statement(statement: &Statement) -> Class {
    match statement {
        Statement::Query(q) => classify_query(q),
        Statement::Explain { analyze, statement, options, .. } => {
            let analyze = *analyze || options.as_deref().is_some_and(has_analyze_option);
            let inner = classify_statement(statement);
            if inner.target == Target::Primary {
                return Class { reason: if analyze { "EXPLAIN ANALYZE of a write" } else { inner.reason }, ..inner };
            }
            // EXPLAIN of a read runs (or only plans) a read.
            Class { effect: Effect::None, ..inner }
        }
        Statement::Copy { source, to: true, .. } => match source {
            sqlparser::ast::CopySource::Query(q) => classify_query(q),
            sqlparser::ast::CopySource::Table { .. } => Class::new(Target::Replica, "COPY TO"),
        },
        Statement::Copy { .. } => Class::new(Target::Primary, "COPY FROM"),
        _ => Class::new(Target::Primary, "write or utility statement"),
    }
}

fn has_analyze_option(options: &[UtilityOption]) -> bool {
    options.iter().any(|o| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && !matches!(&o.arg, Some(Expr::Value(v)) if matches!(v.value, Value::Boolean(false)))
            && !matches!(&o.arg, Some(Expr::Identifier(i)) if i.value.eq_ignore_ascii_case("off") || i.value.eq_ignore_ascii_case("false"))
    })
}

fn classify_query(q: &Query) -> Class {
    if let Some(set) = replayable_set_config(q) {
        return set;
    }
    let mut scan = QueryScan::default();
    let _ = q.visit(&mut scan);
    let mut c = match scan.primary {
        Some(reason) => Class::new(Target::Primary, reason),
        None => Class::new(Target::Replica, "read"),
    };
    if let Some(pin) = scan.pin {
        c.effect = Effect::Pin(pin);
    }
    c.lookups = scan.lookups;
    c
}

/// Walks every node of a query (subqueries, CTEs, LATERAL, expressions) looking for anything
/// that makes it more than a read.
#[derive(Default)]
struct QueryScan {
    primary: Option<&'static str>,
    pin: Option<&'static str>,
    lookups: Vec<Lookup>,
}

impl QueryScan {
    fn needs_primary(&mut self, why: &'static str) {
        if self.primary.is_none() {
            self.primary = Some(why);
        }
    }

    fn function(&mut self, name: &ObjectName, args: Option<&FunctionArguments>) {
        let qualified = object_name(name);
        match function_kind(&qualified) {
            FunctionKind::ReadOnly => {}
            FunctionKind::Primary(why) => {
                self.needs_primary(why);
                if qualified.ends_with("set_config") && !args.is_some_and(is_local_set_config) {
                    // A session-level set_config we cannot replay (not literal arguments).
                    self.pin.get_or_insert("set_config that cannot be replayed");
                }
            }
            FunctionKind::PinsSession(why) => {
                self.needs_primary(why);
                self.pin.get_or_insert(why);
            }
            FunctionKind::Unknown => self.lookup(Lookup::Function(qualified)),
        }
    }

    fn lookup(&mut self, l: Lookup) {
        if !self.lookups.contains(&l) {
            self.lookups.push(l);
        }
    }
}

impl Visitor for QueryScan {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.needs_primary("locking clause");
        }
        if matches!(*q.body, SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)) {
            self.needs_primary("data-modifying CTE");
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &sqlparser::ast::Select) -> ControlFlow<()> {
        if let Some(into) = &s.into {
            self.needs_primary("SELECT INTO");
            if into.temporary {
                self.pin.get_or_insert("temporary table");
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        // Only reached for statements nested in a query: INSERT/UPDATE/DELETE/MERGE in a CTE.
        self.needs_primary("data-modifying CTE");
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.function(&f.name, Some(&f.args));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
        let qualified = object_name(name);
        // The catalogs are never views that write.
        if !qualified.starts_with("pg_") && !qualified.starts_with("information_schema.") {
            self.lookup(Lookup::Relation(qualified));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            TableFactor::Table { name, args: Some(_), .. } => self.function(name, None),
            TableFactor::Function { name, .. } => self.function(name, None),
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// `SELECT set_config('name', 'value', false)` with literal arguments and nothing else: a
/// session setting pgsplit can record and replay like SET (Django sends one per connection).
fn replayable_set_config(q: &Query) -> Option<Class> {
    let SetExpr::Select(s) = &*q.body else {
        return None;
    };
    if q.with.is_some() || !s.from.is_empty() || s.selection.is_some() || s.projection.len() != 1 {
        return None;
    }
    let f = match &s.projection[0] {
        SelectItem::UnnamedExpr(Expr::Function(f)) | SelectItem::ExprWithAlias { expr: Expr::Function(f), .. } => f,
        _ => return None,
    };
    let name = object_name(&f.name);
    if name != "set_config" && name != "pg_catalog.set_config" {
        return None;
    }
    let [a, b, c] = literal_args(f)?[..] else {
        return None;
    };
    let (Lit::Str(param), Lit::Str(value), Lit::Bool(local)) = (a, b, c) else {
        return None;
    };
    if local {
        return Some(Class::new(Target::Any, "transaction-local set_config"));
    }
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = format!("SELECT pg_catalog.set_config({}, {}, false)", quote(param), quote(value));
    Some(Class::new(Target::Any, "session command").with_effect(Effect::Set { name: param.to_ascii_lowercase(), sql }))
}

#[derive(Clone, Copy)]
enum Lit<'a> {
    Str(&'a str),
    Bool(bool),
}

fn literal_args(f: &Function) -> Option<Vec<Lit<'_>>> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                Value::SingleQuotedString(s) => Some(Lit::Str(s.as_str())),
                Value::Boolean(b) => Some(Lit::Bool(*b)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// set_config(..., ..., true) is transaction-local: nothing to replay.
fn is_local_set_config(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else {
        return false;
    };
    matches!(list.args.get(2), Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) if matches!(v.value, Value::Boolean(true)))
}

fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) if id.quote_style.is_some() => out.push_str(&id.value),
            ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_ascii_lowercase()),
            ObjectNamePart::Function(f) => out.push_str(&f.name.value.to_ascii_lowercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tests/corpus/routing.tsv: NEED<TAB>SQL per line.
    fn corpus() -> Vec<(&'static str, Target)> {
        include_str!("../../tests/corpus/routing.tsv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (need, sql) = l.split_once('\t').unwrap();
                let t = match need {
                    "primary" => Target::Primary,
                    "replica" => Target::Replica,
                    "any" => Target::Any,
                    other => panic!("bad need {other}"),
                };
                (sql, t)
            })
            .collect()
    }

    fn target(sql: &str) -> Target {
        classify(sql, 1 << 20).target
    }

    /// The routing table: statement -> what it needs. Every rule of the router has a row here.
    #[test]
    fn routing_table() {
        let rows = corpus();
        let wrong: Vec<_> = rows
            .iter()
            .filter(|(sql, want)| target(sql) != *want)
            .map(|(sql, want)| (sql, want, target(sql)))
            .collect();
        assert!(wrong.is_empty(), "misclassified: {wrong:?}");
    }

    #[test]
    fn unknown_functions_are_looked_up() {
        let c = classify("SELECT my_func(id), lower(x) FROM t", 1 << 20);
        assert_eq!(c.target, Target::Replica);
        assert_eq!(c.lookups, vec![Lookup::Function("my_func".into()), Lookup::Relation("t".into())]);
        let c = classify("SELECT * FROM app.report(1)", 1 << 20);
        assert!(c.lookups.contains(&Lookup::Function("app.report".into())));
        let c = classify("SELECT * FROM pg_class JOIN \"Odd\".v ON true", 1 << 20);
        assert_eq!(c.lookups, vec![Lookup::Relation("Odd.v".into())]);
    }

    #[test]
    fn set_config_is_replayed() {
        let c = classify("SELECT set_config('TimeZone', 'UTC', false)", 1 << 20);
        assert_eq!(c.target, Target::Any);
        assert_eq!(
            c.effect,
            Effect::Set {
                name: "timezone".into(),
                sql: "SELECT pg_catalog.set_config('TimeZone', 'UTC', false)".into()
            }
        );
    }

    #[test]
    fn pins() {
        assert!(matches!(classify("SELECT pg_advisory_lock(42)", 1 << 20).effect, Effect::Pin(_)));
        assert!(matches!(classify("CREATE TEMP TABLE x (a int)", 1 << 20).target, Target::Primary));
    }

    #[test]
    fn long_queries_are_not_parsed() {
        let big = format!("SELECT * FROM t WHERE id IN ({})", vec!["1"; 10_000].join(","));
        assert_eq!(classify(&big, 1000).target, Target::Primary);
        assert_eq!(classify(&big, 1 << 20).target, Target::Replica);
    }
}
