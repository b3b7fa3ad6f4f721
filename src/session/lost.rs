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

use super::work::{BatchItem, Lost};
use super::{End, Session};
use crate::protocol::TxStatus;
use crate::protocol::{self, message};

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
        if let Some(why) = self.hold.pin {
            let msg = format!(
                "pgsplit: the session's server connection was lost; its {why} cannot move to another server ({lost})"
            );
            self.client.out.extend_from_slice(&protocol::fatal("08006", &msg));
            return Err(End::Fatal(msg));
        }
        let in_tx = !self.hold.tx_status.is_idle();
        let requested = self.hold.outstanding > 0;
        self.hold.outstanding = 0;
        self.hold.expect.clear();
        self.state.effects = super::lazy::Lazy::default();
        self.hold.batch_open = false;
        self.hold.copy_in = false;
        self.causal.probe = None;
        if !requested {
            if in_tx {
                self.work.lost = Lost::Unreported;
            }
            return Ok(());
        }
        let f = self.work.in_flight;
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
        self.client.out.extend_from_slice(&protocol::error(code, &msg));
        self.client.out.extend_from_slice(&protocol::ready_for_query(status));
        self.hold.tx_status = status;
        self.work.lost = if status == TxStatus::Failed { Lost::Reported } else { Lost::No };
        Ok(())
    }

    /// A request while the transaction is lost: answered here, never sent to a server.
    /// `rollback` / `commit`: the request only ends the transaction.
    pub(super) fn answer_lost(&mut self, rollback: bool, commit: bool, items: Option<&[BatchItem]>) {
        let reported = self.work.lost == Lost::Reported;
        let ends = rollback || commit;
        if let Some(e) = self.state.effects.get_mut() {
            e.request.clear();
        }
        if ends && (reported || rollback) {
            if let Some(items) = items {
                self.answer_items(items, "ROLLBACK");
            } else {
                self.client.out.extend_from_slice(&protocol::command_complete("ROLLBACK"));
            }
            self.work.lost = Lost::No;
            self.hold.tx_status = TxStatus::Idle;
        } else {
            let (code, msg) = if reported { ("25P02", ABORTED) } else { ("40001", LOST) };
            self.shared.metrics.error_sent(code);
            self.client.out.extend_from_slice(&protocol::error(code, msg));
            if commit {
                self.work.lost = Lost::No;
                self.hold.tx_status = TxStatus::Idle;
            } else {
                self.work.lost = Lost::Reported;
                self.hold.tx_status = TxStatus::Failed;
            }
        }
        self.observe.status(self.hold.tx_status);
        self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
    }

    /// The answers a server gives an extended batch of transaction-control statements.
    fn answer_items(&mut self, items: &[BatchItem], tag: &str) {
        for item in items {
            match item {
                BatchItem::Parse(_) => self.client.out.extend_from_slice(&message(b'1', |_| {})),
                BatchItem::Bind(..) => self.client.out.extend_from_slice(&message(b'2', |_| {})),
                BatchItem::DescribeStatement(_) => {
                    self.client.out.extend_from_slice(&message(b't', |b| b.put_i16(0)));
                    self.client.out.extend_from_slice(&message(b'n', |_| {}));
                }
                BatchItem::CloseStatement(_) => self.client.out.extend_from_slice(&message(b'3', |_| {})),
                BatchItem::DuplicateParse(_) => {}
                BatchItem::Raw(f) => match f.tag() {
                    b'E' => self.client.out.extend_from_slice(&protocol::command_complete(tag)),
                    b'D' => self.client.out.extend_from_slice(&message(b'n', |_| {})),
                    b'C' => self.client.out.extend_from_slice(&message(b'3', |_| {})),
                    _ => {}
                },
            }
        }
    }
}
