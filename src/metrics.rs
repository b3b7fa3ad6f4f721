//! Prometheus metrics and the /metrics endpoint.

use std::sync::Arc;

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Metrics {
    pub registry: Registry,
    /// Units of work routed, by destination role and reason.
    pub routed: IntCounterVec,
    pub client_connections: IntGauge,
    pub server_connections: IntGaugeVec,
    pub checkout_timeouts: IntCounter,
    pub server_errors: IntCounter,
    pub client_protocol_errors: IntCounter,
    pub node_healthy: IntGaugeVec,
    pub node_in_rotation: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_ms: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new_custom(Some("pgsplit".into()), None).unwrap_or_default();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.unwrap_or_else(|e| panic!("metric definition: {e}"));
                let _ = registry.register(Box::new(m.clone()));
                m
            }};
        }
        let node = &["node"];
        let per_node = |name: &str, help: &str| reg!(IntGaugeVec::new(Opts::new(name, help), node));
        Arc::new(Metrics {
            routed: reg!(IntCounterVec::new(
                Opts::new("routed_total", "Queries and batches routed, by destination role and reason"),
                &["role", "reason"]
            )),
            client_connections: reg!(IntGauge::new("client_connections", "Connected clients")),
            server_connections: per_node("server_connections", "Open server connections per server"),
            checkout_timeouts: reg!(IntCounter::new(
                "pool_checkout_timeouts_total",
                "Clients that waited too long for a server connection"
            )),
            server_errors: reg!(IntCounter::new(
                "server_failures_total",
                "Server connections lost or refused while serving a client"
            )),
            client_protocol_errors: reg!(IntCounter::new(
                "client_protocol_errors_total",
                "Clients disconnected for malformed messages"
            )),
            node_healthy: per_node("node_healthy", "1 when the last health check passed"),
            node_in_rotation: per_node("node_in_rotation", "1 when a replica takes reads"),
            replica_lag_bytes: per_node("replica_lag_bytes", "WAL bytes the replica has still to replay"),
            replica_lag_ms: per_node("replica_lag_milliseconds", "Replay delay of the replica"),
            registry,
        })
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` (any path, really) as Prometheus text. Deliberately minimal: one
/// request per connection, no keep-alive.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut req = [0u8; 4096];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut req)).await;
            let body = metrics.render();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
        });
    }
}
