//! Extended-protocol bookkeeping: the client's prepared statements and the rewriting that lets
//! them run on any pooled server connection.
//!
//! Each client Parse of a named statement gets a server name of its own,
//! "pgsplit_<session>_<n>": no client's names collide with another's, and a statement parsed
//! again after DDL never meets an old plan cached under the same name elsewhere. pgsplit keeps
//! each client's Parse message and prepares it on whichever connection runs a Bind or Describe
//! that needs it. When the client has seen the statement's row description, that re-prepare
//! is checked against it: a different shape (DDL in between) is the server's own
//! "cached plan must not change result type" (0A000), never rows of a shape the client does
//! not expect.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::protocol::frontend::ParseMsg;
use crate::protocol::{message, put_cstr};
use crate::sql::cache::Analysis;

#[derive(Debug)]
pub struct Prepared {
    /// The name on the servers; empty for the unnamed statement.
    pub server_name: String,
    /// The Parse message that creates it on a server (with `server_name`).
    pub parse: Bytes,
    pub analysis: Arc<Analysis>,
    /// Identifies query text + parameter types.
    pub key: u64,
    /// The RowDescription (or NoData) the client got when it described the statement.
    pub described: std::sync::OnceLock<Bytes>,
}

#[derive(Default)]
pub struct Statements {
    pub named: HashMap<String, Arc<Prepared>>,
    pub unnamed: Option<Arc<Prepared>>,
}

impl super::lazy::Clear for Statements {
    fn empty() -> &'static Statements {
        static NONE: std::sync::LazyLock<Statements> = std::sync::LazyLock::new(Statements::default);
        &NONE
    }

    fn is_clear(&self) -> bool {
        self.named.is_empty() && self.unnamed.is_none()
    }
}

impl Statements {
    pub fn get(&self, name: &str) -> Option<&Arc<Prepared>> {
        if name.is_empty() { self.unnamed.as_ref() } else { self.named.get(name) }
    }
}

/// `unique` distinguishes this Parse from every other one of live sessions.
pub fn prepared_from(p: &ParseMsg<'_>, analysis: Arc<Analysis>, unique: (i32, u64)) -> Prepared {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.query.hash(&mut h);
    p.types.hash(&mut h);
    let key = h.finish();
    let server_name = if p.name.is_empty() { String::new() } else { format!("pgsplit_{:x}_{:x}", unique.0, unique.1) };
    // `SET pgsplit.route = primary` is pgsplit's own (and `primary` is a reserved word): the
    // server gets the quoted form it accepts.
    let query = match analysis.statements.as_slice() {
        [c] if c.own.is_some() => match &c.effect {
            crate::sql::Effect::Set { sql, .. } => sql.as_str(),
            _ => p.query,
        },
        _ => p.query,
    };
    let parse = message(b'P', |b| {
        put_cstr(b, &server_name);
        put_cstr(b, query);
        b.put_slice(p.types);
    });
    Prepared { server_name, parse, analysis, key, described: std::sync::OnceLock::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Frame;
    use crate::protocol::frontend::read_parse;

    fn frame(b: Bytes) -> Frame {
        Frame { bytes: b }
    }

    #[test]
    fn parse_and_rename() {
        let f = frame(message(b'P', |b| {
            put_cstr(b, "s1");
            put_cstr(b, "select $1::int");
            b.put_i16(1);
            b.put_i32(23);
        }));
        let p = read_parse(&f).unwrap();
        assert_eq!((p.name, p.query), ("s1", "select $1::int"));
        let a = Arc::new(Analysis::of(p.query, 1000));
        let prep = prepared_from(&p, a.clone(), (7, 1));
        assert!(prep.server_name.starts_with("pgsplit_"));
        let again_frame = frame(prep.parse.clone());
        let again = read_parse(&again_frame).unwrap();
        assert_eq!(again.name, prep.server_name);
        assert_eq!(again.types, p.types);
        // Every Parse gets its own server name; the key still identifies text and types.
        let other = prepared_from(&p, a, (7, 2));
        assert_ne!(other.server_name, prep.server_name);
        assert_eq!(other.key, prep.key);
    }
}
