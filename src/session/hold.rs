//! The server connection a session holds, and what it is waiting for on it: the transaction
//! status the last ReadyForQuery reported, the requests outstanding, the answers to messages
//! pgsplit injected. Whether the connection may go back to its pool is decided here, once.

use std::collections::VecDeque;

use super::Expect;
use crate::pool::Checkout;
use crate::protocol::TxStatus;

#[derive(Default)]
pub(super) struct Hold {
    pub server: Option<Checkout>,
    /// The ReadyForQuery status last relayed.
    pub tx_status: TxStatus,
    /// Requests (Query, Sync, FunctionCall) sent whose ReadyForQuery has not come back.
    pub outstanding: usize,
    /// Something sent to the server whose answer must be matched up.
    pub expect: VecDeque<Expect>,
    /// The server is in COPY FROM STDIN.
    pub copy_in: bool,
    /// Part of an extended batch was sent with Flush; the rest (up to Sync) follows.
    pub batch_open: bool,
    /// Why the session keeps its server connection for good (LISTEN, a temporary table, ...).
    pub pin: Option<&'static str>,
    /// Counts this client's work on the node it holds (least-outstanding balancing).
    pub load: Option<crate::cluster::topology::LoadGuard>,
    /// A query-timeout cancel was sent to the server connection held (for the request sent at
    /// that instant): that connection is closed rather than handed on, since a cancel arriving
    /// late would hit its next user.
    pub timeout_cancelled: Option<std::time::Instant>,
    /// The query-timeout timer of the request in flight (sent at that instant), kept across
    /// loop turns: one timer per request, not one per message relayed.
    pub query_timer: Option<(std::time::Instant, std::pin::Pin<Box<tokio::time::Sleep>>)>,
}

impl super::lazy::Clear for Hold {
    fn empty() -> &'static Hold {
        static NO_HOLD: std::sync::LazyLock<Hold> = std::sync::LazyLock::new(Hold::default);
        &NO_HOLD
    }

    fn is_clear(&self) -> bool {
        self.server.is_none()
            && self.tx_status.is_idle()
            && self.outstanding == 0
            && self.expect.is_empty()
            && !self.copy_in
            && !self.batch_open
            && self.pin.is_none()
            && self.load.is_none()
            && self.timeout_cancelled.is_none()
            && self.query_timer.is_none()
    }
}

impl Hold {
    /// Nothing ties the session to its server connection: no transaction, no pin, nothing
    /// outstanding, no open batch, no COPY. Then the connection may serve someone else.
    pub fn can_release(&self) -> bool {
        self.tx_status.is_idle() && self.pin.is_none() && self.outstanding == 0 && !self.batch_open && !self.copy_in
    }

    /// As `can_release`, and the connection is also fit for someone else: no cancel of ours
    /// may still arrive on it.
    pub fn clean(&self) -> bool {
        self.can_release() && self.timeout_cancelled.is_none()
    }

    /// Outside a transaction and unpinned: the next unit of work may go anywhere.
    pub fn free_to_route(&self) -> bool {
        self.tx_status.is_idle() && self.pin.is_none()
    }

    /// The node of the connection held.
    pub fn node(&self) -> Option<usize> {
        self.server.as_ref().map(|s| s.conn.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Case = (&'static str, fn(&mut Hold));

    #[test]
    fn release_only_when_nothing_ties_the_connection() {
        let free = Hold::default();
        assert!(free.can_release() && free.clean() && free.free_to_route());
        let cases: [Case; 6] = [
            ("in a transaction", |h| h.tx_status = TxStatus::InTransaction),
            ("in a failed transaction", |h| h.tx_status = TxStatus::Failed),
            ("pinned", |h| h.pin = Some("LISTEN")),
            ("a request outstanding", |h| h.outstanding = 1),
            ("a batch open", |h| h.batch_open = true),
            ("in COPY", |h| h.copy_in = true),
        ];
        for (what, set) in cases {
            let mut h = Hold::default();
            set(&mut h);
            assert!(!h.can_release(), "{what}");
            assert!(!h.clean(), "{what}");
        }
        let mut cancelled = Hold { timeout_cancelled: Some(std::time::Instant::now()), ..Hold::default() };
        assert!(cancelled.can_release() && !cancelled.clean());
        cancelled.pin = Some("LOAD");
        assert!(!cancelled.free_to_route());
    }
}
