//! Reads run again on another server, the client none the wiser: a read sent outside a
//! transaction to a replica whose connection died before the first byte of an answer (it had
//! no effect and no result), and a read whose replica had not replayed an object yet.
//!
//! A read on a replica can name a database, schema, table, function or type that the primary
//! created after the replica's replay position: the replica answers "does not exist" where the
//! primary would answer rows. That is lag, not an error. When the first answer to a read sent
//! outside a transaction is such an error (nothing has reached the client yet), pgsplit drops
//! the replica's connection (its answer is never read further, nothing else ran on it) and
//! runs the read again on the primary, which is the authority on what exists: if the object
//! really does not exist, the client gets the primary's own error. Whether the replica was
//! behind cannot be decided from the monitor's samples (up to a poll old: the object may be
//! younger than the last probe), so every such error from a replica is taken as "possibly not
//! replayed yet"; the cost is one more round trip for a read of a missing object. Counted in
//! `pgsplit_replica_retries_total{sqlstate}`.
//!
//! At login the same holds for the connection itself: a replica that refuses a database or a
//! role it does not have yet sends the client's work to the primary.

use bytes::BytesMut;

use super::encode::encode_item;
use super::work::{Retry, RetryWork};
use super::{End, Expect, Session};
use crate::protocol::backend::error_fields;
use crate::protocol::{self, Frame};
use crate::router::NOT_REPLAYED_YET;

/// SQLSTATEs a read can get on a replica only because it lacks an object the primary has:
/// invalid_catalog_name (database), invalid_schema_name, undefined_table, undefined_function,
/// undefined_object (type, collation, ...).
const STATEMENT: [&str; 5] = ["3D000", "3F000", "42P01", "42883", "42704"];

/// At login also: invalid_authorization_specification (a role not replayed yet; a replica's
/// pg_hba refusal too, which the primary then answers for).
const LOGIN_ONLY: &str = "28000";

/// The code of an ErrorResponse that a read on a lagging replica can get, as a static label.
pub(super) fn statement_code(error: &[u8]) -> Option<&'static str> {
    let code = error_fields(error).code()?;
    STATEMENT.iter().copied().find(|c| *c == code)
}

/// The code of a replica's refusal of a connection (or of the client's settings) that may only
/// mean it has not replayed the database, role or object yet. `frame` is a whole ErrorResponse.
pub(super) fn login_refusal(frame: &[u8]) -> Option<&'static str> {
    statement_code(frame).or_else(|| (error_fields(frame).code()? == LOGIN_ONLY).then_some(LOGIN_ONLY))
}

impl Session {
    /// Runs again, elsewhere, a read whose replica connection died before answering.
    pub(super) async fn rerun(&mut self, r: Retry) -> Result<(), End> {
        if r.aim.reason != NOT_REPLAYED_YET {
            tracing::info!(reason = %r.aim.reason, "rerunning a read whose replica connection died before answering");
        }
        if self.dispatch(r.aim).await?.is_none() {
            // The client has the error; it still waits for its ReadyForQuery.
            if let Some(e) = self.state.effects.get_mut() {
                e.request.clear();
            }
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        }
        if self.hold.server.is_none() {
            self.client.out.extend_from_slice(&protocol::error("08006", "pgsplit: no server connection"));
            self.client.out.extend_from_slice(&protocol::ready_for_query(self.hold.tx_status));
            return Ok(());
        }
        let hold = &mut *self.hold;
        let Some(server) = hold.server.as_mut() else { return Ok(()) };
        hold.outstanding += 1;
        match r.work {
            RetryWork::Query(bytes) => {
                server.conn.unnamed = None;
                self.send_server(&bytes).await
            }
            RetryWork::Batch(items, sync) => {
                let mut buf = BytesMut::with_capacity(256);
                for item in items {
                    encode_item(item, &mut server.conn, &mut hold.expect, &mut buf)?;
                }
                buf.extend_from_slice(&sync.bytes);
                self.hold.expect.push_back(Expect::Sync);
                self.send_server(&buf).await
            }
        }
    }

    /// The first answer to a read on a replica. True when it was an error that only says the
    /// replica has not replayed an object yet: the read goes again to the primary, and the
    /// frame must not reach the client.
    pub(super) fn rerun_if_not_replayed(&mut self, f: &Frame, r: Retry) -> bool {
        if f.tag() != b'E'
            || self.hold.outstanding != 1
            || !self.hold.tx_status.is_idle()
            || self.causal.probe.is_some()
        {
            return false;
        }
        let err = error_fields(&f.bytes);
        if err.is_fatal() {
            return false;
        }
        let Some(code) = statement_code(&f.bytes) else { return false };
        self.shared.metrics.replica_retries.with_label_values(&[code]).inc();
        let server = self.discard_server().map(|(_, addr)| addr).unwrap_or_default();
        tracing::debug!(
            %server,
            code,
            "a read on a replica found no such object ({}): running it on the primary",
            err.message().unwrap_or("")
        );
        self.observe.abandoned();
        self.hold.expect.clear();
        self.hold.outstanding = 0;
        self.work.retry_now = Some(Box::new(Retry { aim: r.aim.not_replayed(), ..r }));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(code: &str) -> bytes::Bytes {
        protocol::error(code, "relation \"x\" does not exist")
    }

    #[test]
    fn which_errors_mean_not_replayed_yet() {
        for (code, statement, login) in [
            ("42P01", true, true),
            ("3D000", true, true),
            ("3F000", true, true),
            ("42883", true, true),
            ("42704", true, true),
            ("28000", false, true),
            ("42501", false, false), // permission denied: the same on every server
            ("42601", false, false), // syntax error
            ("25006", false, false),
            ("57P03", false, false),
        ] {
            let f = error(code);
            assert_eq!(statement_code(&f).is_some(), statement, "{code}");
            assert_eq!(login_refusal(&f).is_some(), login, "{code}");
        }
        assert_eq!(statement_code(&error("42P01")), Some("42P01"));
        assert_eq!(login_refusal(b"E\0\0"), None, "a truncated frame is not a refusal");
    }
}
