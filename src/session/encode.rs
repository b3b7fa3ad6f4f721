//! Encoding a batch for one server connection: each item as that connection needs it
//! (the Parse a statement lacks there, a Close before a re-Parse, the duplicate probe), and
//! the eviction that keeps a connection's prepared statements bounded. No I/O: bytes and the
//! replies to expect.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};

use super::extended::Prepared;
use super::work::BatchItem;
use super::{End, Expect};
use crate::protocol::{message, put_cstr};

/// Writes one batch item for `conn`, injecting the Parse (or Close) a statement needs there.
pub(super) fn encode_item(
    item: BatchItem,
    conn: &mut crate::backend::ServerConn,
    expect: &mut VecDeque<Expect>,
    buf: &mut BytesMut,
) -> Result<(), End> {
    pub(super) fn ensure(
        p: &Prepared,
        conn: &mut crate::backend::ServerConn,
        expect: &mut VecDeque<Expect>,
        buf: &mut BytesMut,
    ) {
        let present =
            if p.server_name.is_empty() { conn.unnamed == Some(p.key) } else { conn.prepared.contains(&p.server_name) };
        if !present {
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: true, name: p.server_name.clone(), duplicate_of: None });
            note_prepared(p, conn);
        }
    }
    match item {
        BatchItem::Parse(p) => {
            if !p.server_name.is_empty() && conn.prepared.contains(&p.server_name) {
                // Already there (same text and types): close it first so the client's Parse
                // gets its ParseComplete rather than "already exists".
                buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &p.server_name));
                expect.push_back(Expect::Close { swallow: true });
            }
            buf.extend_from_slice(&p.parse);
            expect.push_back(Expect::Parse { swallow: false, name: p.server_name.clone(), duplicate_of: None });
            note_prepared(&p, conn);
        }
        BatchItem::Bind(f, p) => {
            ensure(&p, conn, expect, buf);
            if p.server_name.is_empty() {
                buf.extend_from_slice(&f.bytes);
            } else {
                buf.extend_from_slice(&crate::protocol::frontend::rewrite_bind(&f, &p.server_name)?);
            }
        }
        BatchItem::DescribeStatement(p) => {
            ensure(&p, conn, expect, buf);
            buf.extend_from_slice(&crate::protocol::frontend::target_message(b'D', b'S', &p.server_name));
            expect.push_back(Expect::Describe { statement: Some(p) });
        }
        BatchItem::CloseStatement(name) => {
            let name = String::from_utf8_lossy(&name).into_owned();
            conn.prepared.remove(&name);
            buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &name));
            expect.push_back(Expect::Close { swallow: false });
        }
        BatchItem::DuplicateParse(client_name) => {
            // A statement of pgsplit's own prepared twice: the second Parse fails with 42P05,
            // which the relay reports under the client's name.
            let parse = message(b'P', |b| {
                put_cstr(b, DUPLICATE_PROBE);
                put_cstr(b, "SELECT 1");
                b.put_i16(0);
            });
            if !conn.prepared.contains(DUPLICATE_PROBE) {
                buf.extend_from_slice(&parse);
                expect.push_back(Expect::Parse { swallow: true, name: DUPLICATE_PROBE.into(), duplicate_of: None });
                conn.prepared.insert(DUPLICATE_PROBE.into());
            }
            buf.extend_from_slice(&parse);
            expect.push_back(Expect::Parse {
                swallow: false,
                name: DUPLICATE_PROBE.into(),
                duplicate_of: Some(client_name),
            });
        }
        BatchItem::Raw(f) => {
            if f.tag() == b'C' {
                expect.push_back(Expect::Close { swallow: false });
            }
            if f.tag() == b'D' {
                expect.push_back(Expect::Describe { statement: None });
            }
            if f.tag() == b'P' {
                expect.push_back(Expect::Parse { swallow: false, name: String::new(), duplicate_of: None });
            }
            buf.extend_from_slice(&f.bytes);
        }
    }
    Ok(())
}

/// The server name of the statement pgsplit prepares twice to raise 42P05.
const DUPLICATE_PROBE: &str = "pgsplit_duplicate";

/// Server connections keep at most this many prepared statements; beyond it, pgsplit closes
/// some (those this batch does not use) so server memory stays bounded however many distinct
/// statements clients prepare. Evicted ones are prepared again on demand.
const MAX_SERVER_STATEMENTS: usize = 1000;

pub(super) fn evict_statements(
    items: &[BatchItem],
    conn: &mut crate::backend::ServerConn,
    expect: &mut VecDeque<Expect>,
    buf: &mut BytesMut,
) {
    if conn.prepared.len() < MAX_SERVER_STATEMENTS {
        return;
    }
    let used = |name: &str| {
        items.iter().any(|i| match i {
            BatchItem::Parse(p) | BatchItem::Bind(_, p) | BatchItem::DescribeStatement(p) => p.server_name == name,
            _ => false,
        })
    };
    let victims: Vec<String> =
        conn.prepared.iter().filter(|n| !used(n)).take(MAX_SERVER_STATEMENTS / 4).cloned().collect();
    for name in victims {
        buf.extend_from_slice(&crate::protocol::frontend::target_message(b'C', b'S', &name));
        expect.push_back(Expect::Close { swallow: true });
        conn.prepared.remove(&name);
    }
}

pub(super) fn note_prepared(p: &Prepared, conn: &mut crate::backend::ServerConn) {
    if p.server_name.is_empty() {
        conn.unnamed = Some(p.key);
    } else {
        conn.prepared.insert(p.server_name.clone());
    }
}
