//! Measures how many read statements pgsplit's classifier fails to parse (and so sends to the
//! primary for want of proof that they are reads), over SQL files given as arguments: for
//! example PostgreSQL's own regression tests (`scripts/parse-rate` fetches them) or a server
//! log of an application's statements.
//!
//! `cargo run --release --example parse_rate -- FILE.sql...` prints the totals and the most
//! common parser errors. psql meta-commands and COPY data are skipped; statements that use psql
//! variables (`:name`, `:'name'`) are not SQL and are not counted. A file ending in `.log` is
//! read as a PostgreSQL server log written with `log_statement = 'all'`: the statements of
//! `statement:` and `execute <name>:` lines are measured (what an application really sends).

use std::collections::HashMap;

use pgsplit::sql::classify::classify;
use pgsplit::sql::lex::{keywords, split_statements};

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: parse_rate FILE.sql...");
        std::process::exit(2);
    }
    let verbose = std::env::var("PARSE_RATE_SHOW").is_ok();
    let (mut reads, mut unparsed, mut parser_failed, mut word_checked) = (0usize, 0usize, 0usize, 0usize);
    let mut by_error: HashMap<String, (usize, String)> = HashMap::new();
    for file in &files {
        let Ok(text) = std::fs::read_to_string(file) else {
            eprintln!("cannot read {file}");
            continue;
        };
        let sql = if file.ends_with(".log") { logged_statements(&text) } else { sql_only(&text) };
        for stmt in split_statements(&sql) {
            if uses_psql_variables(stmt) {
                continue;
            }
            let kw = keywords(stmt, 1);
            let first = kw.first().map(String::as_str).unwrap_or("");
            let read_like =
                matches!(first, "select" | "with" | "values" | "table") || stmt.trim_start().starts_with('(');
            if !read_like {
                continue;
            }
            reads += 1;
            let c = classify(stmt, 1 << 20);
            if sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, stmt).is_err() {
                parser_failed += 1;
            }
            if c.reason == pgsplit::reason::Reason::ReadCheckedWordByWord {
                word_checked += 1;
            }
            if c.reason == pgsplit::reason::Reason::DoesNotParse {
                unparsed += 1;
                let err = match sqlparser::parser::Parser::parse_sql(&sqlparser::dialect::PostgreSqlDialect {}, stmt) {
                    Err(e) => shape(&e.to_string()),
                    Ok(_) => "parses after pgsplit's rewrites fail".to_string(),
                };
                if verbose {
                    println!("UNPARSED [{err}] {}", stmt.replace('\n', " "));
                }
                let e = by_error.entry(err).or_insert((0, stmt.replace('\n', " ")));
                e.0 += 1;
            }
        }
    }
    let mut errors: Vec<_> = by_error.into_iter().collect();
    errors.sort_by_key(|e| std::cmp::Reverse(e.1.0));
    println!("files: {}", files.len());
    println!("read-like statements: {reads}");
    let pct = |n: usize| if reads == 0 { 0.0 } else { 100.0 * n as f64 / reads as f64 };
    println!("sqlparser alone fails on: {parser_failed} ({:.2}%)", pct(parser_failed));
    println!("read after the word-by-word check: {word_checked} ({:.2}%)", pct(word_checked));
    println!("not parsed (sent to the primary): {unparsed} ({:.2}%)", pct(unparsed));
    for (err, (n, example)) in errors.iter().take(25) {
        let example: String = example.chars().take(160).collect();
        println!("{n:6}  {err}\n        e.g. {example}");
    }
}

/// The statements of a server log (log_statement = 'all'), one per line-group, `;`-separated.
fn logged_statements(text: &str) -> String {
    let mut out = String::new();
    let mut in_statement = false;
    for line in text.lines() {
        if let Some(rest) = line
            .split_once("LOG:  statement: ")
            .map(|(_, r)| r)
            .or_else(|| line.split_once("LOG:  execute ").and_then(|(_, r)| r.split_once(": ")).map(|(_, sql)| sql))
        {
            out.push_str(";\n");
            out.push_str(rest);
            in_statement = true;
        } else if in_statement && line.starts_with('\t') {
            out.push('\n');
            out.push_str(line);
        } else {
            in_statement = false;
        }
    }
    out.push_str(";\n");
    out
}

/// The file without psql meta-command lines and COPY ... FROM stdin data.
fn sql_only(text: &str) -> String {
    let mut out = String::new();
    let mut in_copy_data = false;
    for line in text.lines() {
        if in_copy_data {
            if line.trim() == "\\." {
                in_copy_data = false;
            }
            continue;
        }
        let t = line.trim_start();
        if t.starts_with('\\') {
            continue;
        }
        let lower = t.to_ascii_lowercase();
        if lower.starts_with("copy ") && lower.contains("from stdin") {
            in_copy_data = true;
        }
        // A meta-command ending a statement (`SELECT ... \gset`): keep the SQL part.
        match line.find(" \\g").or_else(|| line.find("\\gset")).or_else(|| line.find("\\gexec")) {
            Some(i) => {
                out.push_str(&line[..i]);
                out.push_str(";\n");
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn uses_psql_variables(stmt: &str) -> bool {
    let b = stmt.as_bytes();
    (1..b.len().saturating_sub(1)).any(|i| {
        b[i] == b':'
            && b[i - 1] != b':'
            && b[i + 1] != b':'
            && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'\'' || b[i + 1] == b'"')
    })
}

/// An error message without its position, so alike errors group.
fn shape(e: &str) -> String {
    e.split(" at Line").next().unwrap_or(e).to_string()
}
