//! A transaction whose server connection was lost (its primary died or was failed over). The
//! transaction is gone; the client's connection to pgsplit stays usable:
//! - a statement in flight gets SQLSTATE 40001 (serialization_failure): the transaction was
//!   certainly rolled back, and 40001 is what frameworks and pgbench --max-tries retry safely;
//! - a COMMIT in flight gets 08007 (transaction_resolution_unknown): it may have committed,
//!   so it must never be retried blindly;
//! - an autocommit write in flight likewise gets 08007; a read 08006;
//! - then, as PostgreSQL does for a failed transaction, everything but ROLLBACK (or COMMIT,
//!   answered ROLLBACK) gets 25P02 until the client ends the transaction. The session's settings
//!   follow it to the next server connection as usual.
//!
//! Sessions pinned to the lost connection (temporary tables, session locks, LISTEN) cannot move:
//! they get a FATAL that says why.

use bytes::BufMut;

use super::batch::BatchItem;
use super::{End, Session};
use crate::protocol::TxStatus;
use crate::protocol::{self, message};

/// The transaction's state after its connection was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Lost {
    #[default]
    No,
    /// Lost while the client was idle in it: the client has not been told yet.
    Unreported,
    /// The client has been told (40001); it is in a failed transaction.
    Reported,
}

/// What the request in flight would have done, for the error it gets if it is lost.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct InFlight {
    pub commits: bool,
    pub writes: bool,
}

/// A transaction lost while the client was idle in it, told at its next statement.
const LOST: &str = "pgsplit: the transaction was rolled back: its server connection was lost; retry it";
const ABORTED: &str = "current transaction is aborted, commands ignored until end of transaction block";

impl Session {
    /// The server connection to `server` broke (`seen`: what pgsplit saw) with a transaction
    /// open or a request in flight. Err closes the client (pinned sessions). The message names
    /// the server and what was seen; "the primary failed" only once the monitor says so.
    pub(super) fn transaction_lost(&mut self, server: &str, seen: &str) -> Result<(), End> {
        let failed = {
            let t = self.shared.cluster.load();
            let known_down = t.nodes.iter().any(|n| &*n.addr == server && !n.healthy);
            let demoted = t.nodes.get(t.primary()).is_some_and(|p| &*p.addr != server)
                && t.nodes.iter().any(|n| &*n.addr == server && n.fenced);
            if known_down || demoted { " (the primary failed)" } else { "" }
        };
        let lost = format!("its server connection to {server} was lost{failed}: {seen}");
        if let Some(why) = self.pin {
            let msg = format!(
                "pgsplit: the session's server connection was lost; its {why} cannot move to another server ({lost})"
            );
            self.out.extend_from_slice(&protocol::fatal("08006", &msg));
            return Err(End::Fatal(msg));
        }
        let in_tx = !self.tx_status.is_idle();
        let requested = self.outstanding > 0;
        self.outstanding = 0;
        self.expect.clear();
        self.effects = super::state::PendingEffects::default();
        self.batch_open = false;
        self.copy_in = false;
        self.causal.probe = None;
        if !requested {
            if in_tx {
                self.lost = Lost::Unreported;
            }
            return Ok(());
        }
        let f = self.in_flight;
        let (code, msg, status) = match (in_tx, f.commits, f.writes) {
            (true, true, _) | (false, _, true) | (false, true, _) => (
                "08007",
                format!("pgsplit: {lost}, during COMMIT (or an autocommit write): its outcome is unknown"),
                TxStatus::Idle,
            ),
            (true, false, _) => {
                ("40001", format!("pgsplit: the transaction was rolled back: {lost}; retry it"), TxStatus::Failed)
            }
            (false, false, false) => {
                ("08006", format!("pgsplit: {lost}, while running this statement"), TxStatus::Idle)
            }
        };
        self.shared.metrics.error_sent(code);
        self.out.extend_from_slice(&protocol::error(code, &msg));
        self.out.extend_from_slice(&protocol::ready_for_query(status));
        self.tx_status = status;
        self.lost = if status == TxStatus::Failed { Lost::Reported } else { Lost::No };
        Ok(())
    }

    /// A request while the transaction is lost: answered here, never sent to a server.
    /// `rollback` / `commit`: the request only ends the transaction.
    pub(super) fn answer_lost(&mut self, rollback: bool, commit: bool, items: Option<&[BatchItem]>) {
        let reported = self.lost == Lost::Reported;
        let ends = rollback || commit;
        self.effects.request.clear();
        if ends && (reported || rollback) {
            if let Some(items) = items {
                self.answer_items(items, "ROLLBACK");
            } else {
                self.out.extend_from_slice(&protocol::command_complete("ROLLBACK"));
            }
            self.lost = Lost::No;
            self.tx_status = TxStatus::Idle;
        } else {
            let (code, msg) = if reported { ("25P02", ABORTED) } else { ("40001", LOST) };
            self.shared.metrics.error_sent(code);
            self.out.extend_from_slice(&protocol::error(code, msg));
            if commit {
                self.lost = Lost::No;
                self.tx_status = TxStatus::Idle;
            } else {
                self.lost = Lost::Reported;
                self.tx_status = TxStatus::Failed;
            }
        }
        self.observe.status(self.tx_status);
        self.out.extend_from_slice(&protocol::ready_for_query(self.tx_status));
    }

    /// The answers a server gives an extended batch of transaction-control statements.
    fn answer_items(&mut self, items: &[BatchItem], tag: &str) {
        for item in items {
            match item {
                BatchItem::Parse(_) => self.out.extend_from_slice(&message(b'1', |_| {})),
                BatchItem::Bind(..) => self.out.extend_from_slice(&message(b'2', |_| {})),
                BatchItem::DescribeStatement(_) => {
                    self.out.extend_from_slice(&message(b't', |b| b.put_i16(0)));
                    self.out.extend_from_slice(&message(b'n', |_| {}));
                }
                BatchItem::CloseStatement(_) => self.out.extend_from_slice(&message(b'3', |_| {})),
                BatchItem::DuplicateParse(_) => {}
                BatchItem::Raw(f) => match f.tag() {
                    b'E' => self.out.extend_from_slice(&protocol::command_complete(tag)),
                    b'D' => self.out.extend_from_slice(&message(b'n', |_| {})),
                    b'C' => self.out.extend_from_slice(&message(b'3', |_| {})),
                    _ => {}
                },
            }
        }
    }
}
