//! What a session counts for the metrics and the admin console: routing decisions by server,
//! role and reason, request durations, bytes relayed, and its own row in SHOW CLIENTS. Label
//! look-ups hash and lock, so each session keeps the handles it has used.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use prometheus::{Counter, Histogram, IntCounter};

pub use crate::clients::ClientSlot;
use crate::metrics::Metrics;
use crate::protocol::TxStatus;
use crate::reason::Reason;

struct ServerCounters {
    queries: IntCounter,
    seconds: Counter,
    bytes: IntCounter,
}

#[derive(Default)]
pub(super) struct Observe {
    routed: Vec<(&'static str, &'static str, usize, IntCounter)>,
    servers: Vec<Option<ServerCounters>>,
    durations: [Option<Histogram>; 2],
    /// pgsplit_pool_checkout_wait_seconds by role (primary, replica).
    checkout_waits: [Option<Histogram>; 2],
    /// The request in flight: when it was sent, to which node, on a replica or not.
    started: Option<(Instant, usize, bool)>,
    bytes: u64,
    pub slot: Option<Arc<ClientSlot>>,
}

impl Observe {
    /// Counts a routing decision.
    pub fn route(&mut self, metrics: &Metrics, server: &str, node: usize, role: &'static str, reason: Reason) {
        let class = reason.class();
        if let Some((_, _, _, c)) = self.routed.iter().find(|(r, why, n, _)| *r == role && *why == class && *n == node)
        {
            c.inc();
            return;
        }
        let c = metrics.routed.with_label_values(&[server, role, class]);
        c.inc();
        self.routed.push((role, class, node, c));
    }

    /// How long a checkout waited for a server connection.
    pub fn checkout_waited(&mut self, metrics: &Metrics, replica: bool, secs: f64) {
        let h = self.checkout_waits[replica as usize].get_or_insert_with(|| {
            metrics.checkout_wait.with_label_values(&[if replica { "replica" } else { "primary" }])
        });
        h.observe(secs);
    }

    /// A request was sent to `node`.
    pub fn sent(&mut self, node: usize, replica: bool) {
        if self.started.is_none() {
            self.started = Some((Instant::now(), node, replica));
        }
        if let Some(s) = &self.slot {
            s.requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn relayed(&mut self, bytes: usize) {
        self.bytes += bytes as u64;
    }

    /// The request's ReadyForQuery came back.
    pub fn done(&mut self, metrics: &Metrics, server: impl FnOnce(usize) -> Option<Arc<str>>) {
        let Some((t0, node, replica)) = self.started.take() else { return };
        let secs = t0.elapsed().as_secs_f64();
        let h = self.durations[replica as usize].get_or_insert_with(|| {
            metrics.query_duration.with_label_values(&[if replica { "replica" } else { "primary" }])
        });
        h.observe(secs);
        if self.servers.len() <= node {
            self.servers.resize_with(node + 1, || None);
        }
        if self.servers[node].is_none() {
            let Some(addr) = server(node) else { return };
            let label = [&*addr];
            self.servers[node] = Some(ServerCounters {
                queries: metrics.server_queries.with_label_values(&label),
                seconds: metrics.server_query_seconds.with_label_values(&label),
                bytes: metrics.server_bytes.with_label_values(&label),
            });
        }
        if let Some(c) = &self.servers[node] {
            c.queries.inc();
            c.seconds.inc_by(secs);
            c.bytes.inc_by(std::mem::take(&mut self.bytes));
        }
    }

    /// When the request in flight was sent, if one is.
    pub fn started_at(&self) -> Option<Instant> {
        self.started.map(|(t0, _, _)| t0)
    }

    /// The request in flight has waited longer than `d`.
    pub fn waiting_longer_than(&self, d: std::time::Duration) -> bool {
        self.started.is_some_and(|(t0, _, _)| t0.elapsed() > d)
    }

    /// The request will never complete (its connection broke).
    pub fn abandoned(&mut self) {
        self.started = None;
        self.bytes = 0;
    }

    pub fn attached(&self, node: Option<usize>) {
        if let Some(s) = &self.slot {
            s.server.store(node.unwrap_or(usize::MAX), Ordering::Relaxed);
        }
    }

    pub fn status(&self, status: TxStatus) {
        if let Some(s) = &self.slot {
            s.tx_status.store(status.byte() as usize, Ordering::Relaxed);
        }
    }
}
