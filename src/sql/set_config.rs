//! `SELECT set_config(name, value, is_local)`: a session setting pgsplit records and replays
//! like SET when it can know the name and value, from literals in the text or, for drivers that
//! bind them (psycopg 3 server-side binding, asyncpg, JDBC, node-postgres), from the Bind
//! message's parameters. Only a set_config pgsplit cannot know pins the session.

use crate::reason::Reason;
use sqlparser::ast::{
    DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Query, SelectItem, SetExpr, Value,
};

use super::{Class, Effect, Target, object_name};

/// One argument of a set_config pgsplit can replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Bool(bool),
    /// `$n` (1-based), known only at Bind.
    Param(usize),
}

/// `SELECT set_config(a, b, c)` and nothing else, each argument a literal or a parameter.
pub fn replayable(q: &Query) -> Option<Class> {
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
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let args: Vec<Arg> = list
        .args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => arg(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let [a, b, c]: [Arg; 3] = args.try_into().ok()?;
    if c == Arg::Bool(true) {
        return Some(Class::new(Target::Any, Reason::TransactionLocalSetConfig));
    }
    let args = [a, b, c];
    if args.iter().any(|a| matches!(a, Arg::Param(_))) {
        return Some(Class::new(Target::Any, Reason::SessionCommand).with_effect(Effect::SetConfigBound(args)));
    }
    match resolved(&args, &[]) {
        Resolved::Set(e) => Some(Class::new(Target::Any, Reason::SessionCommand).with_effect(e)),
        Resolved::Local => Some(Class::new(Target::Any, Reason::TransactionLocalSetConfig)),
        Resolved::Unknown => None,
    }
}

fn arg(e: &Expr) -> Option<Arg> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(Arg::Text(s.clone())),
            Value::Boolean(b) => Some(Arg::Bool(*b)),
            Value::Placeholder(p) => p.strip_prefix('$')?.parse().ok().filter(|n| *n > 0).map(Arg::Param),
            _ => None,
        },
        Expr::Nested(e) => arg(e),
        // `$1::text` (asyncpg and others cast their parameters).
        Expr::Cast {
            expr,
            data_type: DataType::Text | DataType::Varchar(_) | DataType::CharacterVarying(_) | DataType::Boolean,
            ..
        } => arg(expr),
        _ => None,
    }
}

/// set_config(..., ..., true) is transaction-local: nothing to replay.
pub fn is_local(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else {
        return false;
    };
    matches!(list.args.get(2), Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) if matches!(v.value, Value::Boolean(true)))
}

/// A parameter of a Bind: its format code, the type the Parse declared (0 if none) and its
/// value (None for NULL).
#[derive(Debug, Clone, Copy)]
pub struct Param<'a> {
    pub format: i16,
    pub oid: u32,
    pub value: Option<&'a [u8]>,
}

/// Types whose binary form is the text's bytes.
const TEXT_LIKE: [u32; 6] = [0, 25, 1043, 19, 1042, 705];
const BOOL_OID: u32 = 16;

/// What a set_config does once its parameters are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// A session setting to record and replay.
    Set(Effect),
    /// Transaction-local: nothing to replay.
    Local,
    /// pgsplit cannot know the name or value (a NULL, a type it cannot read): the caller pins
    /// the session.
    Unknown,
}

/// The effect of a set_config whose arguments are `args` and whose Bind carried `params`.
pub fn resolved(args: &[Arg; 3], params: &[Param<'_>]) -> Resolved {
    match resolve(args, params) {
        Some(Some(e)) => Resolved::Set(e),
        Some(None) => Resolved::Local,
        None => Resolved::Unknown,
    }
}

fn resolve(args: &[Arg; 3], params: &[Param<'_>]) -> Option<Option<Effect>> {
    let text = |a: &Arg| -> Option<String> {
        match a {
            Arg::Text(s) => Some(s.clone()),
            Arg::Bool(_) => None,
            Arg::Param(n) => {
                let p = params.get(n - 1)?;
                if p.format != 0 && !TEXT_LIKE.contains(&p.oid) {
                    return None;
                }
                let bytes = p.value?;
                std::str::from_utf8(bytes).ok().map(str::to_string)
            }
        }
    };
    let local = match &args[2] {
        Arg::Bool(b) => *b,
        Arg::Text(s) => parse_bool(s)?,
        Arg::Param(n) => {
            let p = params.get(n - 1)?;
            let bytes = p.value?;
            match p.format {
                0 => parse_bool(std::str::from_utf8(bytes).ok()?)?,
                _ if (p.oid == 0 || p.oid == BOOL_OID) && bytes.len() == 1 => bytes[0] != 0,
                _ => return None,
            }
        }
    };
    if local {
        return Some(None);
    }
    let (name, value) = (text(&args[0])?, text(&args[1])?);
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let sql = format!("SELECT pg_catalog.set_config({}, {}, false)", quote(&name), quote(&value));
    Some(Some(Effect::Set { name: name.to_ascii_lowercase(), sql }))
}

/// PostgreSQL's boolean input: true/false, yes/no, on/off, 1/0 and unique prefixes.
fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty() {
        return None;
    }
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.starts_with(s.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || s == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || s == "0" {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::classify::classify;

    fn effect(sql: &str) -> Effect {
        classify(sql, 1 << 20).effect
    }

    #[test]
    fn literal_set_config_is_replayed() {
        let c = classify("SELECT set_config('TimeZone', 'UTC', false)", 1 << 20);
        assert_eq!(c.target, Target::Any);
        assert_eq!(
            c.effect,
            Effect::Set {
                name: "timezone".into(),
                sql: "SELECT pg_catalog.set_config('TimeZone', 'UTC', false)".into()
            }
        );
        assert_eq!(effect("SELECT set_config('a.b', 'c', true)"), Effect::None);
    }

    #[test]
    fn bound_set_config_waits_for_bind() {
        let c = classify("SELECT set_config('TimeZone', $1, false)", 1 << 20);
        assert_eq!(c.target, Target::Any);
        let Effect::SetConfigBound(args) = &c.effect else { panic!("{:?}", c.effect) };
        assert_eq!(args[1], Arg::Param(1));
        let text = |v: &'static [u8]| Param { format: 0, oid: 0, value: Some(v) };
        assert_eq!(
            resolved(args, &[text(b"Europe/Paris")]),
            Resolved::Set(Effect::Set {
                name: "timezone".into(),
                sql: "SELECT pg_catalog.set_config('TimeZone', 'Europe/Paris', false)".into()
            })
        );
        let Effect::SetConfigBound(args) = effect("SELECT set_config($1::text, $2::text, $3)") else { panic!() };
        let binary = |oid, v: &'static [u8]| Param { format: 1, oid, value: Some(v) };
        let set = resolved(&args, &[binary(25, b"work_mem"), binary(1043, b"8MB"), binary(16, &[0])]);
        assert!(matches!(set, Resolved::Set(Effect::Set { ref name, .. }) if name == "work_mem"));
        // Transaction-local: nothing to replay.
        assert_eq!(resolved(&args, &[text(b"a.b"), text(b"x"), text(b"on")]), Resolved::Local);
        assert_eq!(resolved(&args, &[text(b"a.b"), text(b"x"), binary(16, &[1])]), Resolved::Local);
        // What pgsplit cannot read pins.
        assert_eq!(resolved(&args, &[text(b"a.b"), binary(23, &[0, 0, 0, 1]), text(b"f")]), Resolved::Unknown);
        assert_eq!(
            resolved(&args, &[text(b"a.b"), Param { format: 0, oid: 0, value: None }, text(b"f")]),
            Resolved::Unknown
        );
        assert_eq!(resolved(&args, &[text(b"a.b")]), Resolved::Unknown);
        // Values that need quoting are replayed quoted.
        let set = resolved(&args, &[text(b"search_path"), text(b"a'b"), text(b"false")]);
        assert!(matches!(set, Resolved::Set(Effect::Set { ref sql, .. }) if sql.contains("'a''b'")));
    }

    #[test]
    fn set_config_that_cannot_be_known_pins() {
        let c = classify("SELECT set_config('a.b', x, false) FROM t", 1 << 20);
        assert_eq!(c.target, Target::Primary);
        assert!(matches!(c.effect, Effect::Pin(_)));
        let c = classify("SELECT set_config('a.b', $1 || 'x', false)", 1 << 20);
        assert!(matches!(c.effect, Effect::Pin(_)));
        assert_eq!(parse_bool("of"), Some(false));
        assert_eq!(parse_bool("o"), None);
    }
}
