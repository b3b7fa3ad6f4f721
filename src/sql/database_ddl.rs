//! Statements that need a database free of other sessions: `DROP DATABASE x`, `ALTER DATABASE
//! x RENAME TO ...` / `SET TABLESPACE ...`, and `CREATE DATABASE y [TEMPLATE x]` (the
//! template, `template1` by default, must have no sessions). PostgreSQL refuses them while any
//! other backend is connected to x, and pgsplit's own pooled connections are such backends
//! (on a standby, replaying DROP DATABASE conflicts with them too): the session closes them
//! first (`session/placement.rs`).

use super::lex::{strip_leading_comments, words};

/// Which form, for the error PostgreSQL gives when other sessions remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusive {
    /// DROP DATABASE; `force`: WITH (FORCE), PostgreSQL ends the other sessions itself.
    Drop { database: String, force: bool },
    /// ALTER DATABASE ... RENAME TO / SET TABLESPACE.
    Alter { database: String },
    /// CREATE DATABASE from this template.
    Template { database: String },
}

impl Exclusive {
    pub fn database(&self) -> &str {
        match self {
            Exclusive::Drop { database, .. } | Exclusive::Alter { database } | Exclusive::Template { database } => {
                database
            }
        }
    }

    /// PostgreSQL's own words when other sessions use the database (SQLSTATE 55006).
    pub fn busy_message(&self) -> String {
        match self {
            Exclusive::Template { database } => {
                format!("source database \"{database}\" is being accessed by other users")
            }
            other => format!("database \"{}\" is being accessed by other users", other.database()),
        }
    }

    /// PostgreSQL ends the other sessions itself.
    pub fn forces(&self) -> bool {
        matches!(self, Exclusive::Drop { force: true, .. })
    }
}

/// The database `stmt` needs free of other sessions, if any.
pub fn exclusive(stmt: &str) -> Option<Exclusive> {
    let s = strip_leading_comments(stmt);
    let first = s.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("");
    if !["drop", "alter", "create"].iter().any(|k| first.eq_ignore_ascii_case(k)) {
        return None;
    }
    let w = words(s);
    let is = |i: usize, k: &str| w.get(i).is_some_and(|x| !x.quoted && x.text == k);
    let name = |i: usize| w.get(i).map(|x| x.text.clone());
    if !is(1, "database") {
        return None;
    }
    if is(0, "drop") {
        let at = if is(2, "if") && is(3, "exists") { 4 } else { 2 };
        let database = name(at)?;
        let force = w[at + 1..].iter().any(|x| !x.quoted && x.text == "force");
        return Some(Exclusive::Drop { database, force });
    }
    if is(0, "alter") {
        let rename = is(3, "rename");
        let tablespace = is(3, "set") && is(4, "tablespace");
        return (rename || tablespace).then(|| name(2).map(|database| Exclusive::Alter { database })).flatten();
    }
    if is(0, "create") {
        name(2)?;
        let template = w.iter().skip(3).position(|x| !x.quoted && x.text == "template").map(|i| i + 3);
        let database = match template {
            // TEMPLATE [=] name
            Some(i) => w.get(i + 1).map(|x| x.text.clone())?,
            None => "template1".to_string(),
        };
        return Some(Exclusive::Template { database });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop(db: &str, force: bool) -> Option<Exclusive> {
        Some(Exclusive::Drop { database: db.into(), force })
    }

    #[test]
    fn forms() {
        let rows: &[(&str, Option<Exclusive>)] = &[
            ("DROP DATABASE dtest", drop("dtest", false)),
            ("drop database if exists \"Test_DB\"", drop("Test_DB", false)),
            ("DROP DATABASE IF EXISTS DTest WITH (FORCE)", drop("dtest", true)),
            ("/* c */ DROP DATABASE d (FORCE);", drop("d", true)),
            ("ALTER DATABASE a RENAME TO b", Some(Exclusive::Alter { database: "a".into() })),
            ("ALTER DATABASE a SET TABLESPACE ts", Some(Exclusive::Alter { database: "a".into() })),
            ("ALTER DATABASE a SET work_mem = '1MB'", None),
            ("ALTER DATABASE a OWNER TO bob", None),
            ("CREATE DATABASE copy TEMPLATE dtest", Some(Exclusive::Template { database: "dtest".into() })),
            (
                "CREATE DATABASE \"c\" WITH OWNER = u ENCODING 'UTF8' TEMPLATE = \"Src\"",
                Some(Exclusive::Template { database: "Src".into() }),
            ),
            ("CREATE DATABASE test_default", Some(Exclusive::Template { database: "template1".into() })),
            (
                "CREATE DATABASE x ENCODING 'UTF8' LC_COLLATE 'C'",
                Some(Exclusive::Template { database: "template1".into() }),
            ),
            ("CREATE TABLE database (x int)", None),
            ("DROP TABLE t", None),
            ("DROP DATABASE", None),
            ("SELECT 1", None),
            ("CREATE DATABASE \"template\"", Some(Exclusive::Template { database: "template1".into() })),
        ];
        for (sql, want) in rows {
            assert_eq!(&exclusive(sql), want, "{sql}");
        }
    }

    #[test]
    fn messages_are_postgresqls() {
        assert_eq!(
            drop("d", false).map(|e| e.busy_message()).as_deref(),
            Some("database \"d\" is being accessed by other users")
        );
        let t = Exclusive::Template { database: "t".into() };
        assert_eq!(t.busy_message(), "source database \"t\" is being accessed by other users");
        assert!(drop("d", true).is_some_and(|e| e.forces()));
    }
}
