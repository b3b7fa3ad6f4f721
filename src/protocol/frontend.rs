//! Readers of the client messages pgsplit must look into (the untagged first packets, Query,
//! Parse, Bind, Describe, Close) and the rewrites it makes of them. Zero-copy over a
//! [`Frame`], bounds-checked: a malformed message is a [`ProtocolError`], never a panic.

use bytes::{BufMut, Bytes};

use super::{
    CANCEL_REQUEST, Frame, GSSENC_REQUEST, ProtocolError, SSL_REQUEST, message, put_cstr, read_cstr, read_i32,
};

/// What an untagged first packet of a connection (its body, after the length word) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPacket {
    SslRequest,
    GssEncRequest,
    /// A CancelRequest of the right length: the key of the session whose statement to cancel.
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A StartupMessage, or anything else: the protocol version word (3.x is `3 << 16 | x`).
    Startup {
        version: i32,
    },
}

impl FirstPacket {
    /// Reads the packet's code (and a cancel's key). A body too short for its code is an error.
    pub fn read(body: &[u8]) -> Result<FirstPacket, ProtocolError> {
        let mut rest = body;
        let code = read_i32(&mut rest)?;
        Ok(match code {
            SSL_REQUEST => FirstPacket::SslRequest,
            GSSENC_REQUEST => FirstPacket::GssEncRequest,
            CANCEL_REQUEST if rest.len() == 8 => {
                FirstPacket::Cancel { pid: read_i32(&mut rest)?, secret: read_i32(&mut rest)? }
            }
            version => FirstPacket::Startup { version },
        })
    }

    /// A StartupMessage of protocol 3 (the only major version PostgreSQL speaks).
    pub fn is_protocol_3(&self) -> bool {
        matches!(self, FirstPacket::Startup { version } if version >> 16 == 3)
    }
}

/// The SQL text of a simple Query.
pub fn read_query(f: &Frame) -> Result<&str, ProtocolError> {
    let mut body = f.body();
    read_cstr(&mut body)
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
    #[test]
    fn first_packets_read_from_their_bytes() {
        use super::FirstPacket;
        let read = |b: &[u8]| FirstPacket::read(b);
        assert_eq!(read(&[0x04, 0xd2, 0x16, 0x2f]).ok(), Some(FirstPacket::SslRequest));
        assert_eq!(read(&[0x04, 0xd2, 0x16, 0x30]).ok(), Some(FirstPacket::GssEncRequest));
        let cancel = [0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xfe];
        assert_eq!(read(&cancel).ok(), Some(FirstPacket::Cancel { pid: 7, secret: -2 }));
        // A cancel of the wrong length is no cancel (PostgreSQL then refuses its version).
        let short = read(&cancel[..11]).ok();
        assert_eq!(short, Some(FirstPacket::Startup { version: 80877102 }));
        assert!(!short.is_some_and(|p| p.is_protocol_3()));
        let v3 = read(&[0, 3, 0, 0, b'u', 0]).ok();
        assert!(v3.is_some_and(|p| p.is_protocol_3()));
        assert!(read(&[0, 3, 0]).is_err());
        assert!(read(&[]).is_err());
    }

    use super::*;

    fn frame(b: Bytes) -> Frame {
        Frame { bytes: b }
    }

    #[test]
    fn query_text() {
        assert_eq!(read_query(&frame(super::super::simple_query("select 1"))).unwrap(), "select 1");
        assert!(read_query(&frame(message(b'Q', |b| b.put_slice(b"no terminator")))).is_err());
    }

    #[test]
    fn parse_fields() {
        let f = frame(message(b'P', |b| {
            put_cstr(b, "s1");
            put_cstr(b, "select $1::int");
            b.put_i16(1);
            b.put_i32(23);
        }));
        let p = read_parse(&f).unwrap();
        assert_eq!((p.name, p.query), ("s1", "select $1::int"));
        assert_eq!(p.types, &[0, 1, 0, 0, 0, 23]);
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
