//! Session and transaction commands, recognised by their leading keywords.
//!
//! These decide what pgsplit records and replays for a client, so they are read with the lexer
//! rather than a full SQL parser: a statement the parser does not know must still be tracked.

use super::{Class, Effect, Own, RouteMode, Target};
use crate::reason::Reason;

/// Returns the classification when `stmt` is a session or transaction command, else None.
/// `kw` are the statement's first keywords (`lex::keywords(stmt, 12)`).
pub fn classify(stmt: &str, kw: &[String]) -> Option<Class> {
    let first = kw.first()?.as_str();
    let second = kw.get(1).map(String::as_str).unwrap_or("");
    let c = match first {
        "set" => return Some(classify_set(stmt, kw)),
        "reset" => match second {
            "all" => Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::ResetAll),
            "" => Class::new(Target::Primary, Reason::UnrecognisedReset),
            "session" if kw.get(2).map(String::as_str) == Some("authorization") => {
                Class::new(Target::Any, Reason::SessionCommand)
                    .with_effect(Effect::Reset { name: "session_authorization".into() })
            }
            name => {
                let mut c =
                    Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::Reset { name: name.into() });
                c.own = match name {
                    "pgsplit.route" => Some(Own::Route(RouteMode::Auto)),
                    "pgsplit.min_lsn" => Some(Own::MinLsn(crate::lsn::Lsn::ZERO)),
                    "pgsplit.max_lag" => Some(Own::MaxLagMs(None)),
                    _ => None,
                };
                c
            }
        },
        // What says whether the server takes writes answers for the primary, as for a client
        // connected to it (a replica would say on: JDBC's and libpq's read-write checks).
        "show" if SERVER_ROLE_PARAMETERS.contains(&second) => Class::new(Target::Local, Reason::ServerLocal),
        "show" => Class::new(Target::Any, Reason::SessionCommand),
        "discard" => match second {
            "all" => Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::DiscardAll),
            _ => Class::new(Target::Any, Reason::SessionCommand),
        },
        "begin" | "start" => {
            // The transaction itself is tracked by ReadyForQuery: nothing to record.
            let mut c = match (is_read_only(kw), kw.iter().any(|w| w == "serializable")) {
                // A standby refuses SERIALIZABLE even for READ ONLY transactions.
                (true, true) => Class::new(Target::Primary, STANDBY_REFUSES),
                (true, false) => Class::new(Target::Replica, READ_ONLY_TRANSACTION),
                (false, _) => Class::new(Target::Primary, Reason::Transaction),
            };
            c.opens = true;
            c
        }
        "commit" | "rollback" | "end" | "abort" if second == "prepared" => {
            let mut c = Class::new(Target::Primary, Reason::TwoPhaseCommit);
            c.commits = first == "commit";
            c
        }
        "commit" | "rollback" | "end" | "abort" | "savepoint" | "release" => {
            let mut c = Class::new(Target::Any, Reason::TransactionControl);
            c.commits = first == "commit" || first == "end";
            c.rolls_back = (first == "rollback" || first == "abort") && !kw.iter().any(|w| w == "to");
            c
        }
        "prepare" if second == "transaction" => Class::new(Target::Primary, Reason::TwoPhaseCommit),
        "prepare" => Class::new(Target::Primary, Reason::SqlPrepare).with_effect(Effect::Pin("SQL PREPARE")),
        "execute" => Class::new(Target::Primary, Reason::SqlExecute),
        "deallocate" => {
            let rest: Vec<&str> = kw[1..].iter().map(String::as_str).filter(|w| *w != "prepare").collect();
            match rest.first() {
                Some(&"all") => Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::Deallocate(None)),
                Some(name) => Class::new(Target::Any, Reason::SessionCommand)
                    .with_effect(Effect::Deallocate(Some(name.to_string()))),
                None => Class::new(Target::Primary, Reason::UnrecognisedDeallocate),
            }
        }
        "listen" => Class::new(Target::Primary, Reason::Listen).with_effect(Effect::Pin("LISTEN")),
        "unlisten" | "notify" => Class::new(Target::Primary, Reason::Notification),
        "declare" => {
            let hold = kw.windows(2).any(|w| w[0] == "with" && w[1] == "hold");
            if hold {
                Class::new(Target::Primary, Reason::WithHoldCursor).with_effect(Effect::Pin("WITH HOLD cursor"))
            } else {
                Class::new(Target::Primary, Reason::Cursor)
            }
        }
        "fetch" | "move" | "close" => Class::new(Target::Any, Reason::CursorCommand),
        // A library loaded into one server session: it cannot follow the client.
        "load" => Class::new(Target::Primary, Reason::Load).with_effect(Effect::Pin("LOAD")),
        "create" if kw[1..kw.len().min(3)].iter().any(|w| w == "temp" || w == "temporary") => {
            Class::new(Target::Primary, Reason::TemporaryObject).with_effect(Effect::Pin("temporary table"))
        }
        _ => return None,
    };
    Some(c)
}

/// READ ONLY without READ WRITE anywhere: PostgreSQL applies every mode given in turn, and a
/// standby refuses READ WRITE even when a later READ ONLY would win.
fn is_read_only(kw: &[String]) -> bool {
    let mode = |m: &str| kw.windows(2).any(|w| w[0] == "read" && w[1] == m);
    mode("only") && !mode("write")
}

/// The reason of a BEGIN READ ONLY that a replica may run.
pub const READ_ONLY_TRANSACTION: Reason = Reason::ReadOnlyTransaction;

/// The reason of statements a standby refuses though the primary accepts them: SERIALIZABLE
/// (even READ ONLY) and READ WRITE transaction modes.
pub const STANDBY_REFUSES: Reason = Reason::StandbyRefuses;

/// Whether setting the transaction-scoped parameter `name` (or `SET TRANSACTION`, name
/// "transaction") as `stmt` does would be refused by a standby.
pub fn standby_refuses(name: &str, stmt: &str) -> bool {
    let lower = stmt.to_ascii_lowercase();
    match name {
        "transaction" => lower.contains("serializable") || lower.split_whitespace().any(|w| w.starts_with("write")),
        "transaction_isolation" => lower.contains("serializable") || set_value(&lower) == "default",
        "transaction_read_only" => !matches!(set_value(&lower).as_str(), "on" | "true" | "yes" | "1" | "t" | "y"),
        _ => false,
    }
}

/// The value of `SET name = value` / `SET name TO value`, lower-cased and unquoted.
fn set_value(lower: &str) -> String {
    let rest = match lower.find('=') {
        Some(i) => &lower[i + 1..],
        None => lower.find(" to ").map(|i| &lower[i + 4..]).unwrap_or(""),
    };
    rest.trim().trim_matches(|c| c == '\'' || c == '"').trim().to_string()
}

/// Settings whose value tells a primary from a standby.
const SERVER_ROLE_PARAMETERS: [&str; 3] = ["transaction_read_only", "default_transaction_read_only", "in_hot_standby"];

/// Parameters that live for one transaction only: never replayed.
const TRANSACTION_PARAMETERS: [&str; 3] = ["transaction_isolation", "transaction_read_only", "transaction_deferrable"];

fn classify_set(stmt: &str, kw: &[String]) -> Class {
    let mut i = 1;
    let mut local = false;
    match kw.get(1).map(String::as_str) {
        Some("session") if kw.get(2).map(String::as_str) == Some("characteristics") => {
            return session_characteristics(kw);
        }
        Some("session") if kw.get(2).map(String::as_str) == Some("authorization") => {
            return session_set("session_authorization", stmt);
        }
        Some("session") => i = 2,
        Some("local") => {
            local = true;
            i = 2
        }
        _ => {}
    }
    let name = match kw.get(i).map(String::as_str) {
        Some(n) => n,
        None => return Class::new(Target::Primary, Reason::UnrecognisedSet),
    };
    // Transaction-scoped forms: they die with the transaction, nothing to replay. Outside a
    // transaction they change nothing, but a standby refuses some of them outright.
    if local || name == "transaction" || name == "constraints" || TRANSACTION_PARAMETERS.contains(&name) {
        if standby_refuses(name, stmt) {
            return Class::new(Target::Primary, STANDBY_REFUSES);
        }
        return Class::new(Target::Any, Reason::TransactionLevelSet);
    }
    let name = match name {
        "time" if kw.get(i + 1).map(String::as_str) == Some("zone") => "timezone",
        "names" => "client_encoding",
        n => n,
    };
    if name == "pgsplit.route" {
        let value = stmt.to_ascii_lowercase();
        let tail = value
            .rsplit(['=', ' '])
            .next()
            .unwrap_or("")
            .trim_matches(|c: char| c == '\'' || c == '"' || c.is_whitespace());
        let mode = match tail {
            "primary" => Some(RouteMode::Primary),
            "replica" => Some(RouteMode::Replica),
            "auto" | "default" => Some(RouteMode::Auto),
            _ => None,
        };
        // Stored quoted: `primary` is a reserved word, so the unquoted form the user may type
        // is answered by pgsplit itself and replayed in a form the server accepts.
        let mut c = match mode {
            Some(m) => session_set(name, &format!("SET pgsplit.route = '{}'", m.as_str())),
            None => session_set(name, stmt),
        };
        c.own = mode.map(Own::Route);
        return c;
    }
    if name == "pgsplit.min_lsn" || name == "pgsplit.max_lag" {
        let value = set_value(&stmt.to_ascii_lowercase());
        let own = if name == "pgsplit.min_lsn" {
            crate::lsn::Lsn::parse(&value).map(Own::MinLsn)
        } else if value == "default" || value.is_empty() || value == "off" {
            Some(Own::MaxLagMs(None))
        } else {
            parse_duration_ms(&value).map(|ms| Own::MaxLagMs(Some(ms)))
        };
        let Some(own) = own else {
            return Class::new(Target::Any, Reason::InvalidPgsplitSetting);
        };
        let mut c = session_set(name, &format!("SET {name} = '{value}'"));
        c.own = Some(own);
        return c;
    }
    session_set(name, stmt)
}

/// "500ms", "2s", "1min", "250" (milliseconds).
pub fn parse_duration_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1000.0,
        "min" => 60_000.0,
        _ => return None,
    };
    Some((n * factor) as u64)
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` sets the defaults of the session's
/// transactions: recorded as the parameters it sets, so that a later statement setting only
/// one of them replaces only that one.
fn session_characteristics(kw: &[String]) -> Class {
    let mut sets = Vec::new();
    let mut push = |name: &str, value: &str| {
        sets.retain(|(n, _): &(String, String)| n != name);
        sets.push((name.to_string(), format!("SET {name} = '{value}'")));
    };
    let mut i = 0;
    while i < kw.len() {
        let next = |k: usize| kw.get(i + k).map(String::as_str).unwrap_or("");
        match kw[i].as_str() {
            "isolation" if next(1) == "level" => {
                let level = match (next(2), next(3)) {
                    ("read", "committed") => "read committed",
                    ("read", "uncommitted") => "read uncommitted",
                    ("repeatable", _) => "repeatable read",
                    _ => "serializable",
                };
                push("default_transaction_isolation", level);
                i += 3;
            }
            "read" if next(1) == "only" => push("default_transaction_read_only", "on"),
            "read" if next(1) == "write" => push("default_transaction_read_only", "off"),
            "not" if next(1) == "deferrable" => {
                push("default_transaction_deferrable", "off");
                i += 1;
            }
            "deferrable" => push("default_transaction_deferrable", "on"),
            _ => {}
        }
        i += 1;
    }
    if sets.is_empty() {
        return Class::new(Target::Primary, Reason::UnrecognisedSetSession);
    }
    Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::SetMany(sets))
}

fn session_set(name: &str, stmt: &str) -> Class {
    Class::new(Target::Any, Reason::SessionCommand)
        .with_effect(Effect::Set { name: name.to_string(), sql: stmt.trim().to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::lex::keywords;

    fn classify(s: &str) -> Option<Class> {
        super::classify(s, &keywords(s, 12))
    }

    fn effect(s: &str) -> Effect {
        classify(s).unwrap().effect
    }

    #[test]
    fn set_forms() {
        assert_eq!(
            effect("SET search_path TO app, public"),
            Effect::Set { name: "search_path".into(), sql: "SET search_path TO app, public".into() }
        );
        assert!(
            matches!(effect("set session statement_timeout = 5"), Effect::Set { name, .. } if name == "statement_timeout")
        );
        assert!(matches!(effect("SET TIME ZONE 'UTC'"), Effect::Set { name, .. } if name == "timezone"));
        assert!(matches!(effect("SET NAMES 'UTF8'"), Effect::Set { name, .. } if name == "client_encoding"));
        assert_eq!(effect("SET LOCAL statement_timeout = 5"), Effect::None);
        assert_eq!(effect("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), Effect::None);
        assert_eq!(
            effect("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
            Effect::SetMany(vec![
                (
                    "default_transaction_isolation".into(),
                    "SET default_transaction_isolation = 'repeatable read'".into()
                ),
                ("default_transaction_read_only".into(), "SET default_transaction_read_only = 'on'".into()),
            ])
        );
        assert_eq!(
            effect("set session characteristics as transaction not deferrable"),
            Effect::SetMany(vec![(
                "default_transaction_deferrable".into(),
                "SET default_transaction_deferrable = 'off'".into()
            )])
        );
        assert_eq!(effect("RESET ALL"), Effect::ResetAll);
        assert_eq!(effect("reset work_mem"), Effect::Reset { name: "work_mem".into() });
        assert_eq!(effect("DISCARD ALL"), Effect::DiscardAll);
    }

    #[test]
    fn own() {
        assert_eq!(classify("SET pgsplit.route = primary").unwrap().own, Some(Own::Route(RouteMode::Primary)));
        assert_eq!(classify("set pgsplit.route to 'replica'").unwrap().own, Some(Own::Route(RouteMode::Replica)));
        assert_eq!(classify("SET pgsplit.route = auto").unwrap().own, Some(Own::Route(RouteMode::Auto)));
        assert_eq!(
            classify("SET pgsplit.min_lsn = '0/16B3748'").unwrap().own,
            Some(Own::MinLsn(crate::lsn::Lsn(0x16B3748)))
        );
        assert_eq!(classify("SET pgsplit.max_lag = '500ms'").unwrap().own, Some(Own::MaxLagMs(Some(500))));
        assert_eq!(classify("SET pgsplit.max_lag TO '2s'").unwrap().own, Some(Own::MaxLagMs(Some(2000))));
        assert_eq!(classify("RESET pgsplit.min_lsn").unwrap().own, Some(Own::MinLsn(crate::lsn::Lsn::ZERO)));
        assert!(classify("COMMIT").unwrap().commits && classify("end").unwrap().commits);
        assert!(!classify("ROLLBACK").unwrap().commits && classify("BEGIN").unwrap().opens);
        assert!(classify("ROLLBACK").unwrap().rolls_back && classify("abort work").unwrap().rolls_back);
        assert!(!classify("ROLLBACK TO SAVEPOINT a").unwrap().rolls_back);
    }

    #[test]
    fn transactions() {
        assert_eq!(classify("BEGIN").unwrap().target, Target::Primary);
        assert_eq!(classify("begin read only").unwrap().target, Target::Replica);
        assert_eq!(
            classify("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").unwrap().target,
            Target::Replica
        );
        assert_eq!(classify("BEGIN READ ONLY READ WRITE").unwrap().target, Target::Primary);
        for refused in [
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "start transaction read only, isolation level serializable",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET TRANSACTION READ WRITE",
            "SET transaction_read_only = off",
            "set transaction_read_only to 'false'",
            "SET transaction_isolation = 'serializable'",
            "SET LOCAL transaction_read_only = 0",
            "SET SESSION transaction_isolation TO SERIALIZABLE",
        ] {
            let c = classify(refused).unwrap();
            assert_eq!((c.target, c.reason), (Target::Primary, STANDBY_REFUSES), "{refused}");
            assert_eq!(c.effect, Effect::None, "{refused}");
        }
        for fine in [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "SET TRANSACTION READ ONLY",
            "SET transaction_read_only = on",
            "SET transaction_isolation = 'repeatable read'",
            "SET transaction_deferrable = on",
        ] {
            let c = classify(fine).unwrap();
            assert_eq!((c.target, &c.effect), (Target::Any, &Effect::None), "{fine}");
        }
        assert_eq!(classify("COMMIT").unwrap().target, Target::Any);
        assert_eq!(classify("COMMIT PREPARED 'x'").unwrap().target, Target::Primary);
        assert_eq!(classify("PREPARE TRANSACTION 'x'").unwrap().target, Target::Primary);
    }

    #[test]
    fn pins() {
        assert!(matches!(effect("LISTEN chan"), Effect::Pin(_)));
        assert!(matches!(effect("PREPARE q AS SELECT 1"), Effect::Pin(_)));
        assert!(matches!(effect("DECLARE c CURSOR WITH HOLD FOR SELECT 1"), Effect::Pin(_)));
        assert_eq!(effect("DECLARE c CURSOR FOR SELECT 1"), Effect::None);
        assert_eq!(effect("DEALLOCATE PREPARE s1"), Effect::Deallocate(Some("s1".into())));
        assert_eq!(effect("DEALLOCATE ALL"), Effect::Deallocate(None));
        assert!(matches!(effect("CREATE TEMP TABLE x (a int)"), Effect::Pin(_)));
        assert!(matches!(effect("create global temporary table x (a int)"), Effect::Pin(_)));
        assert!(matches!(effect("LOAD 'auto_explain'"), Effect::Pin(_)));
    }

    #[test]
    fn not_a_session_command() {
        assert!(classify("SELECT 1").is_none());
        assert!(classify("INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 1").is_none());
    }
}
