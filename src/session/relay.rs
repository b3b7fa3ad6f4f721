//! Server to client: relaying answers as bytes, and what they tell the session (transaction
//! status, errors, parameters, answers to messages pgsplit injected).

use bytes::Bytes;

use super::causal;
use super::{End, Expect, HIDDEN_PARAMETERS, Session};
use crate::lsn::Lsn;
use crate::protocol::backend::{self, ErrorFields, error_fields};
use crate::protocol::{self, Frame, ProtocolError};
use crate::sql::{Effect, Own};

impl Session {
    /// One server message for the client. Err ends the client's session: the server ended the
    /// connection the client was using with a FATAL, relayed as a direct connection gets it.
    pub(super) fn on_server_frame(&mut self, f: Frame) -> Result<(), End> {
        let err = error_fields(&f.bytes);
        let fatal = f.tag() == b'E' && err.is_fatal();
        if fatal && self.work.retry.is_some() {
            // A read on a replica that had not started answering (a shutdown, a recovery
            // conflict): it runs again elsewhere when the connection closes (server_lost),
            // and the client never knows.
            tracing::info!(
                code = err.code().unwrap_or(""),
                "a replica ended the connection of a read before answering: {}",
                err.message().unwrap_or("")
            );
            return Ok(());
        }
        if let Some(r) = self.work.retry.take() {
            // The server has started answering: the work may have had effects now, unless the
            // answer says the replica has not replayed what the read names yet.
            if self.rerun_if_not_replayed(&f, r) {
                return Ok(());
            }
        }
        if let Some(p) = self.causal.probe.as_mut() {
            // Merged: only the probe's own answers (row description, row, command tag, error)
            // are diverted; parameter reports and notices the server sends before its
            // ReadyForQuery are the client's (a SET LOCAL undone by the COMMIT).
            let probes = matches!(f.tag(), b'T' | b'D' | b'C' | b'E');
            if p.client_ready.is_some() || (p.merged && p.client_done && probes) {
                self.on_probe_frame(f);
                return Ok(());
            }
            if p.merged && matches!(f.tag(), b'C' | b'E' | b'I') {
                // The client's COMMIT has its answer: the probe's come next (none if it failed).
                p.client_done = true;
            }
        }
        self.observe.relayed(f.bytes.len());
        match f.tag() {
            b'Z' => {
                let status = protocol::backend::ready_status(&f);
                if matches!(self.hold.expect.front(), Some(Expect::Sync)) {
                    self.hold.expect.pop_front();
                }
                self.hold.outstanding = self.hold.outstanding.saturating_sub(1);
                if self.hold.outstanding == 0 {
                    self.client.cancel.finished();
                }
                self.hold.tx_status = status;
                let committed = !self.state.effects.error_in_request && !self.state.effects.rolled_back;
                let settled = self.state.effects.get_mut().map(|e| e.settle(status)).unwrap_or_default();
                self.apply_effects(settled);
                let cluster = &self.shared.cluster;
                self.observe.done(&self.shared.metrics, |n| cluster.load().nodes.get(n).map(|n| n.addr.clone()));
                self.observe.status(status);
                if !self.hold.copy_in {
                    // A COPY that never started (or ended): nothing to follow.
                    self.causal.after_copy = false;
                }
                if let Some(p) = self.causal.probe.as_mut() {
                    if p.merged {
                        // The probe rode in the client's COMMIT: its answer came before this.
                        let failed = self.state.effects.error_in_request;
                        if let Some(p) = self.causal.probe.take() {
                            self.settle_probe(p.lsn, committed, failed);
                        }
                    } else {
                        // The commit-position probe follows: the client's ReadyForQuery waits for it.
                        p.client_ready = Some(f.bytes);
                        p.committed = committed;
                        return Ok(());
                    }
                }
                self.client.out.extend_from_slice(&f.bytes);
                self.release_if_idle();
            }
            b'E' if fatal && self.server_going_away(err) => {
                // The server itself is going away (its postmaster died, a crash, a failover's
                // fence): that is the "server lost" path, told when the connection closes
                // (server_lost), in terms of what the client was doing; its session goes on.
                tracing::warn!(
                    code = err.code().unwrap_or(""),
                    "server ends the connection: {}",
                    err.message().unwrap_or("")
                );
            }
            b'E' if fatal => {
                // The server ends the connection the client is using (pg_terminate_backend,
                // idle_in_transaction_session_timeout, idle_session_timeout): as on a direct
                // connection, the client gets the FATAL and its connection ends. Only that
                // server connection is gone; the server stays in rotation (the monitor judges).
                let code = err.code().unwrap_or("").to_string();
                let msg = err.message().unwrap_or("").to_string();
                let server = self.discard_server().map(|(_, addr)| addr).unwrap_or_default();
                tracing::info!(%server, code, "the server ended the client's connection: {msg}");
                self.shared.metrics.error_sent(&code);
                self.client.out.extend_from_slice(&f.bytes);
                self.shared.cluster.wake.notify_waiters();
                return Err(End::Fatal(format!("{code} from {server}: {msg}")));
            }
            b'E' => {
                if let Some(code) = err.code() {
                    self.shared.metrics.error_sent(code);
                }
                self.state.effects.error_in_request = true;
                self.hold.copy_in = false;
                let duplicate = match self.hold.expect.front() {
                    Some(Expect::Parse { duplicate_of: Some(n), .. }) => Some(n.clone()),
                    _ => None,
                };
                // The server skips to the next Sync: whatever was queued before it gets no answer.
                while let Some(e) = self.hold.expect.front() {
                    if matches!(e, Expect::Sync) {
                        break;
                    }
                    let Some(Expect::Parse { name, swallow, duplicate_of: None }) = self.hold.expect.pop_front() else {
                        continue;
                    };
                    // Statements that failed or were skipped exist neither on the server nor
                    // for the client.
                    if let Some(s) = self.hold.server.as_mut() {
                        if name.is_empty() {
                            s.conn.unnamed = None;
                        } else {
                            s.conn.prepared.remove(&name);
                        }
                    }
                    if !swallow && !name.is_empty() {
                        self.state.statements.named.retain(|_, p| p.server_name != name);
                    }
                }
                if let Some(name) = duplicate {
                    let msg = format!("prepared statement \"{name}\" already exists");
                    self.client.out.extend_from_slice(&protocol::error("42P05", &msg));
                    return Ok(());
                }
                if err.code() == Some("25006") && !self.on_replica() {
                    // The server pgsplit takes for the primary is read-only: the topology may
                    // have changed under it. Check now.
                    tracing::warn!("the primary answered 25006 (read-only): checking the topology");
                    self.shared.failover.wake.notify_one();
                    self.shared.cluster.wake.notify_waiters();
                }
                self.client.out.extend_from_slice(&f.bytes);
            }
            b'1' => {
                if !matches!(self.hold.expect.pop_front(), Some(Expect::Parse { swallow: true, .. })) {
                    self.client.out.extend_from_slice(&f.bytes);
                }
            }
            b'3' => {
                if !matches!(self.hold.expect.pop_front(), Some(Expect::Close { swallow: true })) {
                    self.client.out.extend_from_slice(&f.bytes);
                }
            }
            b'T' | b'n' if matches!(self.hold.expect.front(), Some(Expect::Describe { .. })) => {
                if let Some(Expect::Describe { statement: Some(p) }) = self.hold.expect.pop_front() {
                    // A copy: a slice would keep the whole read buffer it came from alive.
                    let _ = p.described.set(Bytes::copy_from_slice(&f.bytes));
                }
                self.client.out.extend_from_slice(&f.bytes);
            }
            b'S' => {
                if let Some(s) = self.hold.server.as_mut() {
                    s.conn.note_parameter(&f);
                }
                let name = backend::parameter_name(&f);
                if !HIDDEN_PARAMETERS.contains(&name) {
                    self.client.out.extend_from_slice(&f.bytes);
                }
            }
            b'G' => {
                self.hold.copy_in = true;
                // In extended mode the server ignores Sync while in copy-in; the client sends
                // another after CopyDone/CopyFail. That first Sync gets no ReadyForQuery.
                if let Some(i) = self.hold.expect.iter().position(|e| matches!(e, Expect::Sync)) {
                    self.hold.expect.remove(i);
                    self.hold.outstanding = self.hold.outstanding.saturating_sub(1);
                }
                self.client.out.extend_from_slice(&f.bytes);
            }
            b'C' => {
                let tag = backend::command_tag(&f);
                if tag.starts_with("ROLLBACK") {
                    self.state.effects.rolled_back = true;
                } else if tag.starts_with("COMMIT")
                    && let Some(e) = self.state.effects.get_mut()
                {
                    e.rolled_back = false;
                }
                self.client.out.extend_from_slice(&f.bytes);
            }
            _ => self.client.out.extend_from_slice(&f.bytes),
        }
        Ok(())
    }

    /// Whether a FATAL means the server is going away rather than ending this one connection:
    /// its postmaster died (57P01 "unexpected postmaster exit"), a crash (57P02), a server
    /// that refuses connections (57P03), or pgsplit itself is fencing or switching over (its
    /// fence terminates the old primary's backends).
    fn server_going_away(&self, err: ErrorFields<'_>) -> bool {
        let code = err.code().unwrap_or("");
        let msg = err.message().unwrap_or("");
        let node = self.hold.node();
        let t = self.shared.cluster.load();
        let fenced = node.and_then(|n| t.nodes.get(n)).is_some_and(|n| n.fenced);
        matches!(code, "57P02" | "57P03")
            || (code == "57P01" && msg.contains("postmaster exit"))
            || fenced
            || self.shared.writes_blocked().is_some()
    }

    fn release_if_idle(&mut self) {
        if self.hold.can_release() {
            self.release_server();
        }
    }

    /// The answer to the commit-position probe, after the client's own ReadyForQuery: the
    /// floor rises, the client is told (ParameterStatus `pgsplit.last_write_lsn`) and then gets
    /// its ReadyForQuery.
    fn on_probe_frame(&mut self, f: Frame) {
        let Some(p) = self.causal.probe.as_mut() else { return };
        match f.tag() {
            b'D' => p.lsn = backend::single_text(&f).and_then(Lsn::parse),
            b'E' => p.lsn = None,
            b'Z' => {
                self.hold.outstanding = self.hold.outstanding.saturating_sub(1);
                if self.hold.outstanding == 0 {
                    self.client.cancel.finished();
                }
                let Some(p) = self.causal.probe.take() else { return };
                self.settle_probe(p.lsn, p.committed, false);
                if let Some(ready) = p.client_ready {
                    self.client.out.extend_from_slice(&ready);
                }
                self.release_if_idle();
            }
            _ => {}
        }
    }

    /// What the probe's answer means: the floor rises to `lsn` and a client whose request
    /// committed is told; no answer leaves the commit's position unknown (reads on the primary
    /// until a later write is measured), unless the client's COMMIT itself failed before the
    /// probe could run (`commit_failed`: nothing was written).
    fn settle_probe(&mut self, lsn: Option<Lsn>, committed: bool, commit_failed: bool) {
        match lsn {
            Some(lsn) => {
                self.causal.wrote(lsn, &self.shared.global_floor);
                if committed {
                    let value = lsn.to_string();
                    self.client.out.extend_from_slice(&protocol::parameter_status(causal::LAST_WRITE_LSN, &value));
                }
            }
            None if commit_failed => {}
            None => self.causal.unknown(),
        }
    }

    pub(super) fn apply_effects(&mut self, effects: Vec<(Effect, Option<Own>)>) {
        if effects.is_empty() {
            return;
        }
        for (e, mode) in &effects {
            match e {
                Effect::DiscardAll => {
                    self.state.statements = super::lazy::Lazy::default();
                    if let Some(s) = self.hold.server.as_mut() {
                        s.conn.prepared.clear();
                        s.conn.unnamed = None;
                    }
                }
                Effect::Deallocate(None) => self.state.statements.named.clear(),
                Effect::Deallocate(Some(name)) => {
                    self.state.statements.named.remove(name);
                }
                _ => {}
            }
            self.state.settings.apply(e);
            if let Some(own) = mode {
                self.apply_own(*own);
            }
        }
        // The connection ran these statements: it now has exactly the client's settings.
        if let Some(s) = self.hold.server.as_mut() {
            s.conn.settings = self.state.settings.hash();
            s.conn.identity_changed |= self.state.settings.changes_identity();
        }
    }

    /// The server connection broke while the client was using it.
    pub(super) fn server_lost(&mut self, e: ProtocolError) -> Result<(), End> {
        let Some(addr) = self.drop_broken_server(&e) else {
            return Ok(());
        };
        self.observe.abandoned();
        if let Some(p) = self.causal.probe.take() {
            if let Some(ready) = p.client_ready {
                // The client's request completed; only the probe behind it was lost.
                self.causal.unknown();
                self.client.out.extend_from_slice(&ready);
                self.hold.outstanding = 0;
                self.hold.expect.clear();
                return Ok(());
            }
            // The probe never ran: the request itself is what was lost. (A merged probe rode in
            // the client's own COMMIT: it added no request of its own.)
            if !p.merged {
                self.hold.outstanding = self.hold.outstanding.saturating_sub(1);
            }
            self.causal.unknown();
        }
        if self.hold.outstanding == 1
            && self.hold.tx_status.is_idle()
            && let Some(r) = self.work.retry.take()
        {
            self.hold.expect.clear();
            self.hold.outstanding = 0;
            self.work.retry_now = Some(Box::new(r));
            return Ok(());
        }
        self.transaction_lost(&addr, &e.to_string())
    }

    /// Closes the client's server connection after it broke. One lost connection costs its
    /// client the statement or transaction and nothing else (a client can end its own backend):
    /// only the monitor's health check or a failed connect takes a server out of rotation, so
    /// the monitor (and the failover check, for the primary) is woken to look now. Its address;
    /// None when the client held no connection.
    pub(super) fn drop_broken_server(&mut self, e: &ProtocolError) -> Option<String> {
        self.shared.metrics.server_errors.inc();
        let (_, addr) = self.discard_server()?;
        tracing::warn!(server = %addr, "server connection lost: {e}");
        self.shared.cluster.wake.notify_waiters();
        self.shared.failover.wake.notify_one();
        Some(addr)
    }

    /// Closes the server connection the client holds (never pooled: its state is unknown or
    /// must not go on) and forgets it. Its node and address, if there was one.
    pub(super) fn discard_server(&mut self) -> Option<(usize, String)> {
        let server = self.hold.server.take()?;
        let held = (server.conn.node, server.conn.addr.clone());
        server.discard(&self.shared.metrics);
        let _ = self.client.cancel.detach();
        self.hold.load = None;
        self.observe.attached(None);
        Some(held)
    }

    // ---- client to server -------------------------------------------------------------
}
