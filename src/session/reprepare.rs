//! Statements prepared again on another server connection, ahead of a batch that uses them:
//! the client's Parse replayed with a Sync of pgsplit's own, and the row description compared
//! with the one the client saw (a different shape is the server's own 0A000, not rows the
//! client cannot read).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::extended::Prepared;
use super::work::BatchItem;
use super::{End, Session};
use crate::protocol::{self, ProtocolError};

/// What checking the statements a batch needs on its connection found.
pub(super) enum Checked {
    Ready,
    /// The client gets this error instead of the batch running.
    Refused(Bytes),
    /// The connection died; nothing of the batch was sent.
    Lost,
}

impl Session {
    /// Prepares, ahead of the batch and with a Sync of pgsplit's own, the statements the batch
    /// uses that this connection lacks and whose row description the client has seen, and
    /// checks each still has that shape. Returns the error for the client when one does not.
    pub(super) async fn prepare_checked(&mut self, items: &[BatchItem]) -> Result<Checked, End> {
        let Some(server) = self.hold.server.as_mut() else { return Ok(Checked::Ready) };
        let mut needed: Vec<Arc<Prepared>> = Vec::new();
        for item in items {
            if let BatchItem::Bind(_, p) | BatchItem::DescribeStatement(p) = item
                && !p.server_name.is_empty()
                && p.described.get().is_some()
                && !server.conn.prepared.contains(&p.server_name)
                && !needed.iter().any(|n| Arc::ptr_eq(n, p))
            {
                needed.push(p.clone());
            }
            if let BatchItem::Parse(p) = item {
                // Parsed again in this very batch: nothing to check.
                needed.retain(|n| n.server_name != p.server_name);
            }
        }
        if needed.is_empty() {
            return Ok(Checked::Ready);
        }
        let mut buf = BytesMut::new();
        for p in &needed {
            buf.extend_from_slice(&p.parse);
            buf.extend_from_slice(&crate::protocol::frontend::target_message(b'D', b'S', &p.server_name));
        }
        buf.extend_from_slice(&protocol::sync());
        if let Err(e) = server.conn.send(&buf).await {
            return self.lost_while_checking(e);
        }
        let mut error = None;
        let mut i = 0;
        loop {
            let Some(server) = self.hold.server.as_mut() else { return Ok(Checked::Lost) };
            let f = match server.conn.reader.next().await {
                Ok(f) => f,
                Err(e) => return self.lost_while_checking(e),
            };
            match f.tag() {
                b'1' => {
                    if let Some(p) = needed.get(i) {
                        server.conn.prepared.insert(p.server_name.clone());
                    }
                }
                b'T' | b'n' => {
                    if let Some(p) = needed.get(i)
                        && p.described.get().is_some_and(|d| d[..] != f.bytes[..])
                        && error.is_none()
                    {
                        error = Some(protocol::error("0A000", "cached plan must not change result type"));
                    }
                    i += 1;
                }
                b'E' if error.is_none() => error = Some(f.bytes),
                b'S' => server.conn.note_parameter(&f),
                b'N' => self.client.out.extend_from_slice(&f.bytes),
                b'Z' => {
                    self.hold.tx_status = protocol::backend::ready_status(&f);
                    return Ok(error.map_or(Checked::Ready, Checked::Refused));
                }
                _ => {}
            }
        }
    }

    /// The connection died during the check, before the client's batch was sent: outside a
    /// transaction the batch can simply go to another connection.
    fn lost_while_checking(&mut self, e: ProtocolError) -> Result<Checked, End> {
        if self.hold.free_to_route() {
            self.drop_broken_server(&e);
            return Ok(Checked::Lost);
        }
        self.server_lost(e)?;
        Ok(Checked::Refused(protocol::error("08006", "pgsplit: the server connection was lost")))
    }
}
