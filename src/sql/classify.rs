//! Classifies one statement: session commands by keyword, everything else with sqlparser.
//! Anything that does not parse, or that is not provably a plain read, needs the primary.

use crate::reason::Reason;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FunctionArguments, ObjectName, Query, SetExpr, Statement, TableFactor, UtilityOption, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::functions::{FunctionKind, SERVER_LOCAL, function_kind, is_server_local_relation};
use super::lex::{Word, keywords, rewrite_for_parser, words};
use super::{Class, Effect, Lookup, Target, object_name, session_cmd};

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
        return Class::new(Target::Primary, Reason::Write);
    }
    if stmt.len() > max_parse_len {
        return Class::new(Target::Primary, Reason::TooLongToParse);
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, stmt) {
        Ok(s) => s,
        Err(_) => {
            // Forms sqlparser lacks (`TABLE t`, `FOR READ ONLY`) rewritten; failing that, a
            // read is checked word by word; failing that, the primary.
            let reparsed = rewrite_for_parser(stmt).and_then(|r| Parser::parse_sql(&PostgreSqlDialect {}, &r).ok());
            match reparsed {
                Some(s) => s,
                None if first != "explain" && first != "copy" => return word_check(stmt),
                None => return Class::new(Target::Primary, Reason::DoesNotParse),
            }
        }
    };
    let [statement] = statements.as_slice() else {
        return Class::new(Target::Primary, Reason::NotSingleStatement);
    };
    classify_statement(statement)
}

/// Reads that look like reads but that sqlparser cannot parse, checked word by word. Anything
/// that could make a query write sends it to the primary: the words that start a write or a
/// locking clause (INSERT, UPDATE, DELETE, MERGE, INTO, FOR SHARE / KEY SHARE...), any
/// function not known to be read-only (looked up like the parser's), and every other name is
/// looked up as a relation in case it is a view that writes.
fn word_check(stmt: &str) -> Class {
    let words = words(stmt);
    let mut scan = QueryScan::default();
    for (i, w) in words.iter().enumerate() {
        let bare = !w.quoted;
        if bare && matches!(w.text.as_str(), "insert" | "update" | "delete" | "merge" | "into") {
            return Class::new(Target::Primary, Reason::DoesNotParse);
        }
        if bare
            && w.text == "for"
            && words.get(i + 1).is_some_and(|n| !n.quoted && matches!(n.text.as_str(), "share" | "key" | "no"))
        {
            return Class::new(Target::Primary, Reason::DoesNotParse);
        }
        let keyword = bare && (RESERVED.contains(&w.text.as_str()) || COLUMN_NAME_KEYWORDS.contains(&w.text.as_str()));
        if w.call {
            let syntax = bare && (keyword || SYNTAX_CALLS.contains(&w.text.as_str()));
            if !syntax || function_kind(&w.text) != FunctionKind::Unknown {
                scan.named_function(&w.text, None);
            }
        } else if is_server_local_relation(&w.text) {
            scan.local = true;
        } else if may_be_relation(w) {
            scan.lookup(Lookup::Relation(w.text.clone()));
        }
    }
    if scan.lookups.len() > MAX_WORD_LOOKUPS {
        return Class::new(Target::Primary, Reason::DoesNotParse);
    }
    let mut c = match scan.primary {
        Some(reason) => Class::new(Target::Primary, reason),
        None if scan.local => Class::new(Target::Local, SERVER_LOCAL),
        None => Class::new(Target::Replica, Reason::ReadCheckedWordByWord),
    };
    if let Some(pin) = scan.pin {
        c.effect = Effect::Pin(pin);
    }
    c.lookups = scan.lookups;
    c
}

/// A word that may name a view (the catalogs never are views that write).
fn may_be_relation(w: &Word) -> bool {
    let reserved = !w.quoted && RESERVED.contains(&w.text.as_str());
    !(reserved || w.text.starts_with("pg_") || w.text.starts_with("information_schema."))
}

/// Beyond this many names to look up, an unparsed statement is not worth the catalog queries.
const MAX_WORD_LOOKUPS: usize = 64;

/// PostgreSQL's reserved and type/function-name keywords: never a relation's bare name.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
    "authorization",
    "binary",
    "collation",
    "concurrently",
    "cross",
    "current_schema",
    "freeze",
    "full",
    "ilike",
    "inner",
    "is",
    "isnull",
    "join",
    "left",
    "like",
    "natural",
    "notnull",
    "outer",
    "overlaps",
    "right",
    "similar",
    "tablesample",
    "verbose",
];

/// Column-name keywords: before a parenthesis they are grammar (`VALUES (`, `EXISTS (`,
/// `COALESCE (`), never a function.
const COLUMN_NAME_KEYWORDS: &[&str] = &[
    "between",
    "bigint",
    "bit",
    "boolean",
    "char",
    "character",
    "coalesce",
    "dec",
    "decimal",
    "exists",
    "extract",
    "float",
    "greatest",
    "grouping",
    "inout",
    "int",
    "integer",
    "interval",
    "least",
    "national",
    "nchar",
    "none",
    "normalize",
    "nullif",
    "numeric",
    "out",
    "overlay",
    "position",
    "precision",
    "real",
    "row",
    "setof",
    "smallint",
    "substring",
    "time",
    "timestamp",
    "treat",
    "trim",
    "values",
    "varchar",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// Unreserved keywords that precede a parenthesis in the grammar.
const SYNTAX_CALLS: &[&str] =
    &["over", "filter", "sets", "cube", "rollup", "repeatable", "varying", "columns", "passing"];

fn classify_statement(statement: &Statement) -> Class {
    match statement {
        Statement::Query(q) => classify_query(q),
        Statement::Explain { analyze, statement, options, .. } => {
            let analyze = *analyze || options.as_deref().is_some_and(has_analyze_option);
            let inner = classify_statement(statement);
            if inner.target == Target::Primary {
                return Class { reason: if analyze { Reason::ExplainAnalyzeWrite } else { inner.reason }, ..inner };
            }
            // EXPLAIN of a read runs (or only plans) a read.
            Class { effect: Effect::None, ..inner }
        }
        // COPY TO a file or a program acts on the server's machine: the primary's.
        Statement::Copy { to: true, target, .. } if !matches!(target, sqlparser::ast::CopyTarget::Stdout) => {
            Class::new(Target::Primary, Reason::CopyToServerFile)
        }
        Statement::Copy { source, to: true, .. } => match source {
            sqlparser::ast::CopySource::Query(q) => classify_query(q),
            sqlparser::ast::CopySource::Table { .. } => Class::new(Target::Replica, Reason::CopyTo),
        },
        Statement::Copy { .. } => Class::new(Target::Primary, Reason::CopyFrom),
        _ => Class::new(Target::Primary, Reason::Write),
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
    if let Some(set) = super::set_config::replayable(q) {
        return set;
    }
    let mut scan = QueryScan::default();
    let _ = q.visit(&mut scan);
    let mut c = match scan.primary {
        Some(reason) => Class::new(Target::Primary, reason),
        None if scan.local => Class::new(Target::Local, SERVER_LOCAL),
        None => Class::new(Target::Replica, Reason::Read),
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
    primary: Option<Reason>,
    /// Reads a server-local view or function (`Target::Local`).
    local: bool,
    pin: Option<&'static str>,
    lookups: Vec<Lookup>,
}

impl QueryScan {
    fn needs_primary(&mut self, why: Reason) {
        if self.primary.is_none() {
            self.primary = Some(why);
        }
    }

    fn function(&mut self, name: &ObjectName, args: Option<&FunctionArguments>) {
        self.named_function(&object_name(name), args);
    }

    fn named_function(&mut self, qualified: &str, args: Option<&FunctionArguments>) {
        match function_kind(qualified) {
            FunctionKind::ReadOnly => {}
            FunctionKind::Primary(why) => {
                self.needs_primary(Reason::Function(why));
                if qualified.ends_with("set_config") && !args.is_some_and(super::set_config::is_local) {
                    // A session-level set_config we cannot replay (not literal arguments).
                    self.pin.get_or_insert("set_config that cannot be replayed");
                }
            }
            FunctionKind::PinsSession(why) => {
                self.needs_primary(Reason::Function(why));
                self.pin.get_or_insert(why);
            }
            FunctionKind::ServerLocal => self.local = true,
            FunctionKind::Unknown => self.lookup(Lookup::Function(qualified.to_string())),
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
            self.needs_primary(Reason::LockingClause);
        }
        if matches!(*q.body, SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)) {
            self.needs_primary(Reason::DataModifyingCte);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &sqlparser::ast::Select) -> ControlFlow<()> {
        if let Some(into) = &s.into {
            self.needs_primary(Reason::SelectInto);
            if into.temporary {
                self.pin.get_or_insert("temporary table");
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        // Only reached for statements nested in a query: INSERT/UPDATE/DELETE/MERGE in a CTE.
        self.needs_primary(Reason::DataModifyingCte);
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
        if is_server_local_relation(&qualified) {
            self.local = true;
        }
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
                    "local" => Target::Local,
                    "any" => Target::Any,
                    other => panic!("bad need {other}"),
                };
                (sql, t)
            })
            .collect()
    }

    /// What the routing tests' setup makes that writes: the stand-in for the catalog.
    const WRITERS: [&str; 5] =
        ["bump", "public.bump", "writing_view", "unknown_function_pgsplit_never_saw", "dblink_exec"];

    /// The target once the catalog has judged the statement's look-ups.
    fn target(sql: &str) -> Target {
        let c = classify(sql, 1 << 20);
        let writes = c.lookups.iter().any(|l| match l {
            Lookup::Function(n) | Lookup::Relation(n) => WRITERS.contains(&n.as_str()),
        });
        if writes { Target::Primary } else { c.target }
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
        assert!(wrong.is_empty(), "misclassified ({} of {}): {wrong:#?}", wrong.len(), rows.len());
        assert!(rows.len() > 500, "the corpus has {} statements", rows.len());
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
