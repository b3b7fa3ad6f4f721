//! Server to client: relaying answers as bytes, and what they tell the session (transaction
//! status, errors, parameters, answers to messages pgsplit injected).

use bytes::Bytes;

use super::extended::Statements;
use super::state::PendingEffects;
use super::{End, Expect, HIDDEN_PARAMETERS, Session};
use crate::protocol::{self, Frame, ProtocolError};
use crate::sql::{Effect, RouteMode};

impl Session {
    pub(super) fn on_server_frame(&mut self, f: Frame) {
        if self.retry.is_some() {
            // The server has started answering: the work may have had effects now.
            self.retry = None;
        }
        match f.tag() {
            b'Z' => {
                let status = f.body().first().copied().unwrap_or(b'I');
                if matches!(self.expect.front(), Some(Expect::Sync)) {
                    self.expect.pop_front();
                }
                self.outstanding = self.outstanding.saturating_sub(1);
                self.tx_status = status;
                let settled = self.effects.settle(status);
                self.apply_effects(settled);
                self.out.extend_from_slice(&f.bytes);
                if status == b'I' && self.outstanding == 0 && !self.batch_open && self.pin.is_none() && !self.copy_in {
                    self.release_server();
                }
            }
            b'E' => {
                self.effects.error_in_request = true;
                self.copy_in = false;
                let duplicate = match self.expect.front() {
                    Some(Expect::Parse { duplicate_of: Some(n), .. }) => Some(n.clone()),
                    _ => None,
                };
                // The server skips to the next Sync: whatever was queued before it gets no answer.
                while let Some(e) = self.expect.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    let Some(Expect::Parse { name, swallow, duplicate_of: None }) = self.expect.pop_front() else {
                        continue;
                    };
                    // Statements that failed or were skipped exist neither on the server nor
                    // for the client.
                    if let Some(s) = self.server.as_mut() {
                        if name.is_empty() {
                            s.conn.unnamed = None;
                        } else {
                            s.conn.prepared.remove(&name);
                        }
                    }
                    if !swallow && !name.is_empty() {
                        self.statements.named.retain(|_, p| p.server_name != name);
                    }
                }
                if let Some(name) = duplicate {
                    let msg = format!("prepared statement \"{name}\" already exists");
                    self.out.extend_from_slice(&protocol::error("42P05", &msg));
                    return;
                }
                if protocol::error_field(f.body(), b'C') == Some("25006") {
                    tracing::warn!("server reported read-only transaction (25006) to a client");
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'1' => {
                if !matches!(self.expect.pop_front(), Some(Expect::Parse { swallow: true, .. })) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'3' => {
                if !matches!(self.expect.pop_front(), Some(Expect::Close { swallow: true })) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'T' | b'n' if matches!(self.expect.front(), Some(Expect::Describe { .. })) => {
                if let Some(Expect::Describe { statement: Some(p) }) = self.expect.pop_front() {
                    // A copy: a slice would keep the whole read buffer it came from alive.
                    let _ = p.described.set(Bytes::copy_from_slice(&f.bytes));
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'S' => {
                if let Some(s) = self.server.as_mut() {
                    s.conn.note_parameter(&f);
                }
                let mut body = f.body();
                let name = protocol::read_cstr(&mut body).unwrap_or("");
                if !HIDDEN_PARAMETERS.contains(&name) {
                    self.out.extend_from_slice(&f.bytes);
                }
            }
            b'G' => {
                self.copy_in = true;
                // In extended mode the server ignores Sync while in copy-in; the client sends
                // another after CopyDone/CopyFail. That first Sync gets no ReadyForQuery.
                if let Some(i) = self.expect.iter().position(|e| matches!(e, Expect::Sync)) {
                    self.expect.remove(i);
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                self.out.extend_from_slice(&f.bytes);
            }
            b'C' => {
                let body = f.body();
                if body.starts_with(b"ROLLBACK") {
                    self.effects.rolled_back = true;
                } else if body.starts_with(b"COMMIT") {
                    self.effects.rolled_back = false;
                }
                self.out.extend_from_slice(&f.bytes);
            }
            _ => self.out.extend_from_slice(&f.bytes),
        }
    }

    pub(super) fn apply_effects(&mut self, effects: Vec<(Effect, Option<RouteMode>)>) {
        if effects.is_empty() {
            return;
        }
        for (e, mode) in &effects {
            match e {
                Effect::DiscardAll => {
                    self.statements = Statements::default();
                    if let Some(s) = self.server.as_mut() {
                        s.conn.prepared.clear();
                        s.conn.unnamed = None;
                    }
                }
                Effect::Deallocate(None) => self.statements.named.clear(),
                Effect::Deallocate(Some(name)) => {
                    self.statements.named.remove(name);
                }
                _ => {}
            }
            self.settings.apply(e);
            if let Some(m) = mode {
                self.mode = *m;
            }
        }
        // The connection ran these statements: it now has exactly the client's settings.
        if let Some(s) = self.server.as_mut() {
            s.conn.settings = self.settings.hash();
            s.conn.identity_changed |= self.settings.changes_identity();
        }
    }

    /// The server connection broke while the client was using it.
    pub(super) fn server_lost(&mut self, e: ProtocolError) -> Result<(), End> {
        if !self.drop_broken_server(&e) {
            return Ok(());
        }
        if self.outstanding == 1
            && self.tx_status == b'I'
            && let Some(r) = self.retry.take()
        {
            self.expect.clear();
            self.outstanding = 0;
            self.retry_now = Some(r);
            return Ok(());
        }
        let recoverable = self.tx_status == b'I' && self.pin.is_none() && !self.batch_open && !self.copy_in;
        self.out.extend_from_slice(&protocol::error(
            "08006",
            "pgsplit: the server connection was lost while running this statement",
        ));
        if !recoverable {
            return Err(End::Fatal("server lost in the middle of a transaction or session".into()));
        }
        self.expect.clear();
        self.effects = PendingEffects::default();
        if self.outstanding > 0 {
            self.outstanding = 0;
            self.out.extend_from_slice(&protocol::ready_for_query(b'I'));
        }
        Ok(())
    }

    /// Closes the client's server connection after it broke, takes that server out of rotation
    /// until the monitor sees it healthy, and closes its idle connections. False when the client
    /// held no connection.
    pub(super) fn drop_broken_server(&mut self, e: &ProtocolError) -> bool {
        self.shared.metrics.server_errors.inc();
        let Some(server) = self.server.take() else {
            return false;
        };
        tracing::warn!(server = %server.conn.addr, "server connection lost: {e}");
        self.shared.cluster.mark_unreachable(server.conn.node);
        self.shared.pools.drop_idle(&server.conn.addr);
        server.discard(&self.shared.metrics);
        self.cancel.set(None);
        true
    }

    // ---- client to server -------------------------------------------------------------
}
