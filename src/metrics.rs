//! Prometheus metrics (the `prometheus` crate) and the /metrics endpoint. Names under
//! `pgsplit_`, base units (seconds, bytes), labels `server`, `role`, `reason`.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Metrics {
    pub registry: Registry,
    /// Units of work routed, by server, destination role and reason class.
    pub routed: IntCounterVec,
    pub client_connections: IntGauge,
    /// Open server connections per server.
    pub server_connections: IntGaugeVec,
    pub pool_connections: IntGaugeVec,
    pub pool_waiting: IntGaugeVec,
    pub checkout_timeouts: IntCounter,
    pub checkout_wait: HistogramVec,
    pub query_duration: HistogramVec,
    pub server_queries: IntCounterVec,
    pub server_query_seconds: prometheus::CounterVec,
    pub server_bytes: IntCounterVec,
    pub server_errors: IntCounter,
    pub client_protocol_errors: IntCounter,
    /// Reads run again on the primary because a replica had not replayed what they name, by
    /// the replica's SQLSTATE.
    pub replica_retries: IntCounterVec,
    /// CancelRequests from clients, by what became of them.
    pub cancel_requests: IntCounterVec,
    /// Errors relayed to clients, by SQLSTATE class.
    pub errors: IntCounterVec,
    pub server_up: IntGaugeVec,
    pub server_primary: IntGaugeVec,
    pub server_in_rotation: IntGaugeVec,
    pub server_out: IntGaugeVec,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_seconds: GaugeVec,
    pub primary_lsn: Gauge,
    pub monitor_failures: IntCounter,
    pub reloads: IntCounterVec,
    pub failovers: IntCounter,
    pub failover_vetoes: IntCounter,
    pub login_timeouts: IntCounter,
    /// auth_query look-ups by result (hit, fetched, stale, failed).
    pub auth_query: IntCounterVec,
    pub stalled_clients: IntCounter,
    pub last_failover_seconds: Gauge,
    pub split_brain: IntGauge,
    /// Several instances: this one has an etcd session with a live lease.
    pub coordination_up: IntGauge,
    pub coordination_leader: IntGauge,
    /// 1 while the coordination's write gate is closed (etcd lost, failover barrier).
    pub writes_suspended: IntGauge,
    pub topology_epoch: IntGauge,
}

/// Latency buckets, in seconds: 50 µs to 10 s.
const BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

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
        let server = &["server"];
        let gauge = |name: &str, help: &str, labels: &[&str]| reg!(IntGaugeVec::new(Opts::new(name, help), labels));
        let histogram = |name: &str, help: &str| {
            reg!(HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), &["role"]))
        };
        let m = Arc::new(Metrics {
            routed: reg!(IntCounterVec::new(
                Opts::new(
                    "routed_total",
                    "Queries and extended-protocol batches routed, by server, role (primary, replica, held) and reason"
                ),
                &["server", "role", "reason"]
            )),
            client_connections: reg!(IntGauge::new("client_connections", "Connected clients")),
            server_connections: gauge("server_connections", "Open server connections (client pools)", server),
            pool_connections: gauge(
                "pool_connections",
                "Client-pool server connections by state (active: checked out, idle)",
                &["server", "state"],
            ),
            pool_waiting: gauge("pool_waiting_clients", "Clients waiting for a server connection", server),
            checkout_timeouts: reg!(IntCounter::new(
                "pool_checkout_timeouts_total",
                "Clients that waited longer than pool.checkout_timeout_ms for a server connection"
            )),
            checkout_wait: histogram("pool_checkout_wait_seconds", "Time to get a server connection, by role"),
            query_duration: histogram(
                "query_duration_seconds",
                "Time from sending a request to its ReadyForQuery, by role",
            ),
            server_queries: reg!(IntCounterVec::new(
                Opts::new("server_queries_total", "Requests (queries, batches) run, by server"),
                server
            )),
            server_query_seconds: reg!(prometheus::CounterVec::new(
                Opts::new("server_query_seconds_total", "Time spent in requests, by server"),
                server
            )),
            server_bytes: reg!(IntCounterVec::new(
                Opts::new("server_bytes_total", "Bytes relayed from each server to clients"),
                server
            )),
            server_errors: reg!(IntCounter::new(
                "server_failures_total",
                "Server connections lost or refused while serving a client"
            )),
            replica_retries: reg!(IntCounterVec::new(
                Opts::new(
                    "replica_retries_total",
                    "Reads run again on the primary because a replica answered that what they name does not exist yet, by SQLSTATE"
                ),
                &["sqlstate"]
            )),
            cancel_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "cancel_requests_total",
                    "Clients' CancelRequests: forwarded to a running statement, ignored (wrong key or nothing running), limited (too many from one address)"
                ),
                &["outcome"]
            )),
            client_protocol_errors: reg!(IntCounter::new(
                "client_protocol_errors_total",
                "Clients disconnected for malformed messages"
            )),
            errors: reg!(IntCounterVec::new(
                Opts::new("errors_total", "Errors sent to clients, by SQLSTATE class (first two characters)"),
                &["class"]
            )),
            server_up: gauge("server_up", "1 when the server's last health check passed", server),
            server_primary: gauge("server_is_primary", "1 for the server pgsplit sends writes to", server),
            server_in_rotation: gauge("server_in_rotation", "1 when the server takes reads", server),
            server_out: gauge(
                "server_out_of_rotation",
                "1 for the reason a replica takes no reads (lagging, replay paused, ...)",
                &["server", "reason"],
            ),
            replica_lag_bytes: gauge("replica_lag_bytes", "WAL bytes the replica has still to replay", server),
            replica_lag_seconds: reg!(GaugeVec::new(
                Opts::new(
                    "replica_lag_seconds",
                    "Replay delay of the replica (0 when it has replayed all it received)"
                ),
                server
            )),
            primary_lsn: reg!(Gauge::new("primary_wal_insert_lsn_bytes", "The primary's WAL insert position")),
            monitor_failures: reg!(IntCounter::new("monitor_poll_failures_total", "Health and lag probes that failed")),
            reloads: reg!(IntCounterVec::new(
                Opts::new("config_reloads_total", "Configuration reloads, by result (ok, failed)"),
                &["result"]
            )),
            failovers: reg!(IntCounter::new(
                "failovers_total",
                "Failovers carried out (a new primary promoted or adopted)"
            )),
            stalled_clients: reg!(IntCounter::new(
                "client_stalls_total",
                "Clients dropped for taking none of their results within limits.client_stall_timeout_ms"
            )),
            login_timeouts: reg!(IntCounter::new(
                "client_login_timeouts_total",
                "Clients closed for not logging in within limits.client_login_timeout_ms"
            )),
            auth_query: reg!(IntCounterVec::new(
                Opts::new(
                    "auth_query_lookups_total",
                    "Client secrets asked of auth_query, by result: hit (cached), fetched, stale (no server \
                     answered, an expired answer used), failed"
                ),
                &["result"]
            )),
            failover_vetoes: reg!(IntCounter::new(
                "failover_vetoes_total",
                "Times the primary was unreachable from pgsplit but a replica showed it alive (no promotion)"
            )),
            last_failover_seconds: reg!(Gauge::new(
                "last_failover_seconds",
                "From the primary's first failed check to the new primary in the topology, last failover"
            )),
            split_brain: reg!(IntGauge::new(
                "split_brain",
                "1 when a fenced former primary answers writable (it gets no traffic from pgsplit)"
            )),
            coordination_up: reg!(IntGauge::new(
                "coordination_up",
                "1 while this instance holds a live etcd lease ([coordination] only)"
            )),
            coordination_leader: reg!(IntGauge::new(
                "coordination_leader",
                "1 while this instance holds the leader key ([coordination] only)"
            )),
            writes_suspended: reg!(IntGauge::new(
                "writes_suspended",
                "1 while writes are suspended here (etcd lost, no topology yet, a failover barrier)"
            )),
            topology_epoch: reg!(IntGauge::new("topology_epoch", "The topology epoch applied by this instance")),
            registry,
        });
        // Series that exist from the start, so dashboards and alerts see zeros, not gaps.
        for result in ["ok", "failed"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// The names of every metric pgsplit exports (also those with no sample yet).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 32] = [
            &self.stalled_clients,
            &self.auth_query,
            &self.login_timeouts,
            &self.failover_vetoes,
            &self.server_primary,
            &self.failovers,
            &self.last_failover_seconds,
            &self.split_brain,
            &self.routed,
            &self.client_connections,
            &self.server_connections,
            &self.pool_connections,
            &self.pool_waiting,
            &self.checkout_timeouts,
            &self.checkout_wait,
            &self.query_duration,
            &self.server_queries,
            &self.server_query_seconds,
            &self.server_bytes,
            &self.server_errors,
            &self.client_protocol_errors,
            &self.errors,
            &self.server_up,
            &self.server_in_rotation,
            &self.server_out,
            &self.replica_lag_bytes,
            &self.replica_lag_seconds,
            &self.primary_lsn,
            &self.monitor_failures,
            &self.reloads,
            &self.query_duration,
            &self.checkout_wait,
        ];
        let mut names: Vec<String> =
            collectors.iter().flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone())).collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| format!("pgsplit_{n}")).collect()
    }

    /// Counts an error sent to a client.
    pub fn cancel_request(&self, outcome: crate::cancel::Outcome) {
        self.cancel_requests.with_label_values(&[outcome.label()]).inc();
    }

    pub fn error_sent(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("XX");
        self.errors.with_label_values(&[class]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Serves `GET /metrics` (any path, really) as Prometheus text. Deliberately minimal: one
/// request per connection, no keep-alive. `refresh` updates gauges computed at scrape time.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, refresh: Arc<dyn Fn() + Send + Sync>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, refresh) = (metrics.clone(), refresh.clone());
        tokio::spawn(async move {
            let mut req = [0u8; 4096];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut req)).await;
            refresh();
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
