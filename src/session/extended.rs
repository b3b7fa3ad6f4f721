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

use crate::protocol::{Frame, ProtocolError, message, put_cstr, read_cstr};
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

impl Statements {
    pub fn get(&self, name: &str) -> Option<&Arc<Prepared>> {
        if name.is_empty() { self.unnamed.as_ref() } else { self.named.get(name) }
    }
}

/// The fields of a Parse message.
pub struct ParseMsg<'a> {
    pub name: &'a str,
    pub query: &'a str,
    /// Parameter count and types, as sent.
    pub types: &'a [u8],
}

pub fn read_parse(f: &Frame) -> Result<ParseMsg<'_>, ProtocolError> {
    let mut body = f.body();
    let name = read_cstr(&mut body)?;
    let query = read_cstr(&mut body)?;
    if body.len() < 2 {
        return Err(ProtocolError::Invalid("Parse message too short".into()));
    }
    // The count is unsigned on the wire: up to 65535 parameters.
    let n = u16::from_be_bytes([body[0], body[1]]);
    if body.len() != 2 + 4 * n as usize {
        return Err(ProtocolError::Invalid("bad parameter types in Parse".into()));
    }
    Ok(ParseMsg { name, query, types: body })
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

/// Portal and statement names of a Bind, and the offset of the rest of the body.
pub fn read_bind(f: &Frame) -> Result<(&str, &str, usize), ProtocolError> {
    let body = f.body();
    let mut rest = body;
    let portal = read_cstr(&mut rest)?;
    let stmt = read_cstr(&mut rest)?;
    Ok((portal, stmt, body.len() - rest.len()))
}

pub fn rewrite_bind(f: &Frame, server_name: &str) -> Result<Bytes, ProtocolError> {
    let (portal, _, rest_at) = read_bind(f)?;
    let rest = &f.body()[rest_at..];
    Ok(message(b'B', |b| {
        put_cstr(b, portal);
        put_cstr(b, server_name);
        b.put_slice(rest);
    }))
}

/// The parameter type OIDs a Parse message declares.
pub fn parse_types(parse: &Bytes) -> Result<Vec<u32>, ProtocolError> {
    let f = Frame { bytes: parse.clone() };
    let p = read_parse(&f)?;
    Ok(p.types[2..].chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// One parameter of a Bind: its format code and its value (None for NULL).
pub type BindParameter<'a> = (i16, Option<&'a [u8]>);

/// The parameters of a Bind.
pub fn bind_parameters(f: &Frame) -> Result<Vec<BindParameter<'_>>, ProtocolError> {
    let bad = || ProtocolError::Invalid("malformed Bind message".into());
    let (_, _, at) = read_bind(f)?;
    let mut rest = &f.body()[at..];
    let mut take = |n: usize| -> Result<&[u8], ProtocolError> {
        if rest.len() < n {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let i16_at = |b: &[u8]| i16::from_be_bytes([b[0], b[1]]);
    // Counts are unsigned on the wire (as in Parse): up to 65535.
    let u16_at = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
    let nformats = u16_at(take(2)?);
    let formats: Vec<i16> = take(2 * nformats)?.chunks_exact(2).map(i16_at).collect();
    let nparams = u16_at(take(2)?);
    if nformats > 1 && nformats != nparams {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(nparams);
    for i in 0..nparams {
        let len = take(4)?;
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        let value = if len < 0 { None } else { Some(take(len as usize)?) };
        let format = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats[i],
        };
        out.push((format, value));
    }
    Ok(out)
}

/// Describe and Close: a kind byte ('S' statement, 'P' portal) and a name.
pub fn read_target(f: &Frame) -> Result<(u8, &str), ProtocolError> {
    let body = f.body();
    let (&kind, mut rest) = body.split_first().ok_or_else(|| ProtocolError::Invalid("empty Describe/Close".into()))?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Invalid("Describe/Close must name 'S' or 'P'".into()));
    }
    Ok((kind, read_cstr(&mut rest)?))
}

pub fn target_message(tag: u8, kind: u8, name: &str) -> Bytes {
    message(tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn bind_rewrite_keeps_parameters() {
        let f = frame(message(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_slice(&[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        }));
        let r = frame(rewrite_bind(&f, "pgsplit_x").unwrap());
        let (portal, stmt, at) = read_bind(&r).unwrap();
        assert_eq!((portal, stmt), ("", "pgsplit_x"));
        assert_eq!(&r.body()[at..], &[0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
    }

    #[test]
    fn bind_parameters_are_read() {
        let f = frame(message(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_i16(2);
            b.put_i16(0);
            b.put_i16(1);
            b.put_i16(2);
            b.put_i32(3);
            b.put_slice(b"UTC");
            b.put_i32(-1);
            b.put_i16(0);
        }));
        let p = bind_parameters(&f).unwrap();
        assert_eq!(p, vec![(0, Some(&b"UTC"[..])), (1, None)]);
        let truncated = frame(message(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_i16(0);
            b.put_i16(1);
            b.put_i32(10);
            b.put_slice(b"abc");
        }));
        assert!(bind_parameters(&truncated).is_err());
        let parse = message(b'P', |b| {
            put_cstr(b, "s1");
            put_cstr(b, "select $1, $2");
            b.put_i16(2);
            b.put_u32(25);
            b.put_u32(0);
        });
        assert_eq!(parse_types(&parse).unwrap(), vec![25, 0]);
        // More than 32767 parameters: the counts are unsigned, as PostgreSQL reads them.
        let many = frame(message(b'B', |b| {
            put_cstr(b, "");
            put_cstr(b, "s1");
            b.put_u16(0);
            b.put_u16(40_000);
            for _ in 0..40_000 {
                b.put_i32(-1);
            }
            b.put_u16(0);
        }));
        assert_eq!(bind_parameters(&many).unwrap().len(), 40_000);
    }

    proptest::proptest! {
        /// Parse, Bind, Describe/Close bodies of any bytes: decoded or refused, never a panic.
        #[test]
        fn decoding_survives_anything(tag in proptest::sample::select(vec![b'P', b'B', b'D', b'C']), body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let f = frame(message(tag, |b| b.put_slice(&body)));
            let _ = read_parse(&f);
            let _ = read_bind(&f);
            let _ = bind_parameters(&f);
            let _ = read_target(&f);
            let _ = parse_types(&f.bytes);
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(read_parse(&frame(message(b'P', |b| put_cstr(b, "s1")))).is_err());
        assert!(read_target(&frame(message(b'D', |b| b.put_u8(b'X')))).is_err());
        assert!(read_bind(&frame(message(b'B', |_| {}))).is_err());
    }
}
