//! The client side of a session: its socket, what is buffered for it, who it is, its cancel
//! key, and the messages it pipelined while the server was busy.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::cancel::CancelHandle;
use crate::protocol::{Frame, FrameReader};

pub(super) struct ClientSide {
    pub reader: FrameReader<crate::tls::ClientRead>,
    pub w: crate::tls::ClientWrite,
    /// Bytes relayed or answered, written to the client at the next flush.
    pub out: BytesMut,
    /// Shared with the client's row in SHOW CLIENTS.
    pub user: std::sync::Arc<str>,
    pub database: std::sync::Arc<str>,
    pub cancel: CancelHandle,
    /// Client messages that arrived while the server was still busy (pipelining). Reading
    /// them early is also how a client that hangs up mid-query is noticed at once.
    pub pending: VecDeque<Frame>,
    pub pending_bytes: usize,
}

impl ClientSide {
    /// Keeps a pipelined message for when the server is free.
    pub fn queue(&mut self, f: Frame) {
        self.pending_bytes += f.bytes.len();
        self.pending.push_back(f);
    }

    /// The next pipelined message, if any.
    pub fn next_pending(&mut self) -> Option<Frame> {
        let f = self.pending.pop_front()?;
        self.pending_bytes -= f.bytes.len();
        Some(f)
    }
}
