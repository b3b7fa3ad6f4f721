//! Server to client: relaying answers as bytes, and what they tell the session (transaction
//! status, errors, parameters, answers to messages pgsplit injected).

use bytes::Bytes;

use super::causal;
use super::extended::Statements;
use super::{End, Expect, HIDDEN_PARAMETERS, Session};
use crate::cluster::monitor::{format_lsn, parse_lsn};
use crate::protocol::{self, Frame, ProtocolError};
use crate::sql::{Effect, Own};

impl Session {
    pub(super) fn on_server_frame(&mut self, f: Frame) {
        if let Some(r) = self.retry.take() {
            // The server has started answering: the work may have had effects now, unless the
            // answer says the replica has not replayed what the read names yet.
            if self.rerun_if_not_replayed(&f, r) {
                return;
            }
        }
        if self.causal.probe.as_ref().is_some_and(|p| p.client_ready.is_some()) {
            return self.on_probe_frame(f);
        }
        self.observe.relayed(f.bytes.len());
        match f.tag() {
            b'Z' => {
                let status = f.body().first().copied().unwrap_or(b'I');
                if matches!(self.expect.front(), Some(Expect::Sync)) {
                    self.expect.pop_front();
                }
                self.outstanding = self.outstanding.saturating_sub(1);
                self.tx_status = status;
                let committed = !self.effects.error_in_request && !self.effects.rolled_back;
                let settled = self.effects.settle(status);
                self.apply_effects(settled);
                let cluster = &self.shared.cluster;
                self.observe.done(&self.shared.metrics, |n| cluster.load().nodes.get(n).map(|n| n.addr.clone()));
                self.observe.status(status);
                if !self.copy_in {
                    // A COPY that never started (or ended): nothing to follow.
                    self.causal.after_copy = false;
                }
                if let Some(p) = self.causal.probe.as_mut() {
                    // The commit-position probe follows: the client's ReadyForQuery waits for it.
                    p.client_ready = Some(f.bytes);
                    p.committed = committed;
                    return;
                }
                self.out.extend_from_slice(&f.bytes);
                self.release_if_idle();
            }
            b'E' if matches!(protocol::error_field(f.body(), b'V'), Some("FATAL" | "PANIC")) => {
                // The server ends this connection (shutdown, crash of another backend): that is
                // pgsplit's connection, not the client's. The client hears of it as a lost
                // connection, when it goes (server_lost), in terms of what it was doing.
                tracing::warn!(
                    code = protocol::error_field(f.body(), b'C').unwrap_or(""),
                    "server ends the connection: {}",
                    protocol::error_field(f.body(), b'M').unwrap_or("")
                );
            }
            b'E' => {
                if let Some(code) = protocol::error_field(f.body(), b'C') {
                    self.shared.metrics.error_sent(code);
                }
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
                if protocol::error_field(f.body(), b'C') == Some("25006") && !self.on_replica() {
                    // The server pgsplit takes for the primary is read-only: the topology may
                    // have changed under it. Check now.
                    tracing::warn!("the primary answered 25006 (read-only): checking the topology");
                    self.shared.failover_wake.notify_one();
                    self.shared.cluster.wake.notify_waiters();
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

    fn release_if_idle(&mut self) {
        if self.tx_status == b'I' && self.outstanding == 0 && !self.batch_open && self.pin.is_none() && !self.copy_in {
            self.release_server();
        }
    }

    /// The answer to the commit-position probe, after the client's own ReadyForQuery: the
    /// floor rises, the client is told (ParameterStatus `pgsplit.last_write_lsn`) and then gets
    /// its ReadyForQuery.
    fn on_probe_frame(&mut self, f: Frame) {
        let Some(p) = self.causal.probe.as_mut() else { return };
        match f.tag() {
            b'D' => p.lsn = causal::data_row_text(f.body()).and_then(parse_lsn),
            b'E' => p.lsn = None,
            b'Z' => {
                self.outstanding = self.outstanding.saturating_sub(1);
                let Some(p) = self.causal.probe.take() else { return };
                match p.lsn {
                    Some(lsn) => {
                        self.causal.wrote(lsn, &self.shared.global_floor);
                        if p.committed {
                            let value = format_lsn(lsn);
                            self.out.extend_from_slice(&protocol::parameter_status(causal::LAST_WRITE_LSN, &value));
                        }
                    }
                    None => self.causal.unknown(),
                }
                if let Some(ready) = p.client_ready {
                    self.out.extend_from_slice(&ready);
                }
                self.release_if_idle();
            }
            _ => {}
        }
    }

    pub(super) fn apply_effects(&mut self, effects: Vec<(Effect, Option<Own>)>) {
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
            if let Some(own) = mode {
                self.apply_own(*own);
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
        self.observe.abandoned();
        if let Some(p) = self.causal.probe.take() {
            if let Some(ready) = p.client_ready {
                // The client's request completed; only the probe behind it was lost.
                self.causal.unknown();
                self.out.extend_from_slice(&ready);
                self.outstanding = 0;
                self.expect.clear();
                return Ok(());
            }
            // The probe never ran: the request itself is what was lost.
            self.outstanding = self.outstanding.saturating_sub(1);
            self.causal.unknown();
        }
        if self.outstanding == 1
            && self.tx_status == b'I'
            && let Some(r) = self.retry.take()
        {
            self.expect.clear();
            self.outstanding = 0;
            self.retry_now = Some(Box::new(r));
            return Ok(());
        }
        self.transaction_lost()
    }

    /// Closes the client's server connection after it broke, takes that server out of rotation
    /// until the monitor sees it healthy, and closes its idle connections. False when the client
    /// held no connection.
    pub(super) fn drop_broken_server(&mut self, e: &ProtocolError) -> bool {
        self.shared.metrics.server_errors.inc();
        let Some((node, addr)) = self.discard_server() else {
            return false;
        };
        tracing::warn!(server = %addr, "server connection lost: {e}");
        self.shared.cluster.mark_unreachable(node);
        self.shared.pools.drop_idle(&addr);
        true
    }

    /// Closes the server connection the client holds (never pooled: its state is unknown or
    /// must not go on) and forgets it. Its node and address, if there was one.
    pub(super) fn discard_server(&mut self) -> Option<(usize, String)> {
        let server = self.server.take()?;
        let held = (server.conn.node, server.conn.addr.clone());
        server.discard(&self.shared.metrics);
        self.cancel.set(None);
        self.load = None;
        self.observe.attached(None);
        Some(held)
    }

    // ---- client to server -------------------------------------------------------------
}
