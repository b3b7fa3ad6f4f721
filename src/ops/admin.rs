//! The admin console: the virtual database `pgsplit`, which `[admin] users` log into with
//! psql (or any client; results are ordinary row sets). Commands:
//! SHOW SERVERS | POOLS | CLIENTS | STATS | CONFIG | ROUTES | FAILOVER | VERSION, RELOAD,
//! PAUSE <server>, RESUME <server>, FAILOVER, PROMOTE <server>, SWITCHOVER TO <server>,
//! REJOIN <server>.
//!
//! This module turns a command into answers; `session/console.rs` speaks the protocol.

use crate::protocol::TxStatus;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use crate::Shared;
use crate::cluster::Role;

/// The console's database name.
pub const DATABASE: &str = "pgsplit";

/// What a command answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Rows {
        columns: Vec<&'static str>,
        rows: Vec<Vec<Option<String>>>,
    },
    /// A command tag, with a notice to show first.
    Done {
        tag: String,
        notice: Option<String>,
    },
}

/// A refused command: SQLSTATE and message.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { code, message: message.into() }
}

/// Runs one console command.
pub fn execute(shared: &Shared, sql: &str) -> Result<Answer, Refusal> {
    let words: Vec<String> =
        sql.trim().trim_end_matches(';').split_whitespace().map(|w| w.to_ascii_lowercase()).collect();
    let arg = || -> Result<String, Refusal> {
        // The server argument keeps its case and may be quoted.
        let raw = sql.trim().trim_end_matches(';').split_whitespace().nth(1).unwrap_or("");
        let a = raw.trim_matches(|c| c == '\'' || c == '"');
        if a.is_empty() {
            Err(refuse("42601", "which server? (HOST:PORT as SHOW SERVERS lists it)"))
        } else {
            Ok(a.to_string())
        }
    };
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["show", "servers"] => Ok(servers(shared)),
        ["show", "pools"] => Ok(pools(shared)),
        ["show", "clients"] => Ok(clients(shared)),
        ["show", "stats"] => Ok(stats(shared)),
        ["show", "config"] => Ok(config(shared)),
        ["show", "routes"] => Ok(routes(shared)),
        ["show", "version"] => Ok(Answer::Rows {
            columns: vec!["version"],
            rows: vec![vec![Some(format!("pgsplit {}", env!("CARGO_PKG_VERSION")))]],
        }),
        ["show", "failover"] => Ok(failover_state(shared)),
        ["failover"] => {
            let t = shared.cluster.load();
            if t.nodes.get(t.primary()).is_some_and(|n| n.healthy) {
                return Err(refuse("55000", "the primary is healthy: nothing to fail over"));
            }
            drop(t);
            request(shared, crate::failover::Request::Failover)?;
            Ok(Answer::Done {
                tag: "FAILOVER".into(),
                notice: Some("failover requested: SHOW FAILOVER, SHOW SERVERS".into()),
            })
        }
        ["promote", _] => {
            let server = arg()?;
            let t = shared.cluster.load();
            match t.find(&server).map(|i| (i, &t.nodes[i])) {
                None => Err(refuse("42704", format!("no server {server} (SHOW SERVERS lists them)"))),
                Some((_, n)) if n.role == Role::Primary => Err(refuse("55000", format!("{server} is the primary"))),
                Some((_, n)) if n.fenced => Err(refuse("55000", format!("{server} is fenced"))),
                Some((i, _)) => {
                    drop(t);
                    request(shared, crate::failover::Request::Promote(i))?;
                    Ok(Answer::Done {
                        tag: "PROMOTE".into(),
                        notice: Some(format!("promoting {server}; the current primary will be fenced")),
                    })
                }
            }
        }
        ["switchover", "to", _] | ["switchover", _] | ["rejoin", _] => {
            let raw = sql.trim().trim_end_matches(';').split_whitespace().last().unwrap_or("");
            let server = raw.trim_matches(|c| c == '\'' || c == '"').to_string();
            let t = shared.cluster.load();
            let Some(i) = t.nodes.iter().position(|n| *n.addr == *server && !n.removed) else {
                return Err(refuse("42704", format!("no server {server} (SHOW SERVERS lists them)")));
            };
            let n = &t.nodes[i];
            if words[0] == "rejoin" {
                if !n.fenced {
                    return Err(refuse("55000", format!("{server} is not fenced")));
                }
                drop(t);
                request(shared, crate::failover::Request::Rejoin(i))?;
                return Ok(Answer::Done {
                    tag: "REJOIN".into(),
                    notice: Some(format!(
                        "{server} rejoins once it is checked to stream from the primary (SHOW SERVERS)"
                    )),
                });
            }
            if n.role != Role::Replica || n.fenced {
                return Err(refuse("55000", format!("{server} is not a replica")));
            }
            drop(t);
            request(shared, crate::failover::Request::Switchover(i))?;
            Ok(Answer::Done {
                tag: "SWITCHOVER".into(),
                notice: Some(format!("switching over to {server}: new writes wait, then run there (SHOW FAILOVER)")),
            })
        }
        ["reload"] => match crate::ops::reload::reload(shared) {
            Ok(msg) => Ok(Answer::Done { tag: "RELOAD".into(), notice: Some(msg) }),
            Err(e) => Err(refuse("F0000", format!("reload refused, the running configuration stays: {e}"))),
        },
        ["pause", _] | ["resume", _] => {
            let server = arg()?;
            let pause = words[0] == "pause";
            let t = shared.cluster.load();
            match t.find(&server).map(|i| &t.nodes[i]) {
                None => Err(refuse("42704", format!("no server {server} (SHOW SERVERS lists them)"))),
                Some(n) if n.role == Role::Primary => {
                    Err(refuse("0A000", format!("{server} is the primary: PAUSE and RESUME drain replicas")))
                }
                Some(_) => {
                    drop(t);
                    set_paused(shared, &server, pause)?;
                    tracing::info!(server, "{} by an operator", if pause { "paused" } else { "resumed" });
                    let tag = if pause { "PAUSE" } else { "RESUME" };
                    let notice = if pause {
                        format!("{server} takes no new work; work in flight finishes")
                    } else {
                        format!("{server} takes reads again once its health checks pass")
                    };
                    Ok(Answer::Done { tag: tag.into(), notice: Some(notice) })
                }
            }
        }
        _ => Err(refuse(
            "42601",
            format!(
                "unknown admin command {:?}: SHOW SERVERS | POOLS | CLIENTS | STATS | CONFIG | ROUTES | FAILOVER | \
                 VERSION, RELOAD, PAUSE <server>, RESUME <server>, FAILOVER, PROMOTE <server>, SWITCHOVER TO <server>, \
                 REJOIN <server>",
                sql.trim()
            ),
        )),
    }
}

fn request(shared: &Shared, r: crate::failover::Request) -> Result<(), Refusal> {
    #[cfg(feature = "etcd")]
    if let Some(c) = &shared.coord {
        // Several instances: the leader carries it out, whichever instance was asked.
        use crate::failover::Request as R;
        let s = crate::coord::etcd::current_session(c).ok_or_else(|| {
            refuse("57P03", "etcd is unreachable from this instance: the command cannot reach the leader")
        })?;
        let t = shared.cluster.load();
        let addr = |i: usize| t.nodes.get(i).map(|n| c.shared_addr(&n.addr));
        let (kind, server) = match r {
            R::Failover => ("failover", None),
            R::Promote(i) => ("promote", addr(i)),
            R::Switchover(i) => ("switchover", addr(i)),
            R::Rejoin(i) => ("rejoin", addr(i)),
        };
        let cmd = crate::coord::values::Request { kind: kind.into(), server, from: c.name.clone() };
        let c = c.clone();
        tokio::spawn(async move {
            match s.put_request(&c, &cmd).await {
                Ok(()) => tracing::warn!(request = ?cmd, "coordination: request sent to the leader"),
                Err(e) => tracing::error!(request = ?cmd, "coordination: request not sent: {e}"),
            }
        });
        return Ok(());
    }
    *shared.failover.request.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    shared.failover.wake.notify_one();
    Ok(())
}

/// PAUSE / RESUME: here, or with several instances on all of them (through etcd).
fn set_paused(shared: &Shared, server: &str, pause: bool) -> Result<(), Refusal> {
    #[cfg(feature = "etcd")]
    if let Some(c) = &shared.coord {
        let s = crate::coord::etcd::current_session(c)
            .ok_or_else(|| refuse("57P03", "etcd is unreachable from this instance: PAUSE cannot reach the others"))?;
        let (c, server) = (c.clone(), c.shared_addr(server));
        tokio::spawn(async move {
            if let Err(e) = s.set_paused(&c, &server, pause).await {
                tracing::error!(server, "coordination: PAUSE/RESUME not shared: {e}");
            }
        });
        return Ok(());
    }
    shared.cluster.set_paused(server, pause);
    Ok(())
}

fn failover_state(shared: &Shared) -> Answer {
    let s = shared.failover.state();
    let t = shared.cluster.load();
    let addr = |i: usize| t.nodes.get(i).map(|n| n.addr.to_string()).unwrap_or_default();
    let config = shared.config.load();
    let rows = vec![
        vec![text("mode"), text(format!("{:?}", config.failover.mode).to_ascii_lowercase())],
        vec![text("epoch"), text(s.epoch)],
        vec![text("primary"), text(addr(s.primary))],
        vec![text("timeline"), text(s.timeline)],
        vec![text("phase"), text(format!("{:?}", s.phase))],
        vec![text("fenced"), text(s.fenced.iter().map(|&i| addr(i)).collect::<Vec<_>>().join(", "))],
        vec![text("last_primary_lsn"), text(s.last_primary_lsn.to_string())],
        vec![text("failovers"), text(shared.metrics.failovers.get())],
    ];
    let mut rows = rows;
    if let Some(c) = &shared.coord {
        rows.push(vec![text("coordination"), text(c.describe())]);
    }
    Answer::Rows { columns: vec!["key", "value"], rows }
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn servers(shared: &Shared) -> Answer {
    let t = shared.cluster.load();
    let connections: BTreeMap<String, usize> = shared.pools.stats().into_iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.addr).or_default() += p.active + p.idle;
        m
    });
    let rows = t
        .nodes
        .iter()
        .filter(|n| !n.removed)
        .map(|n| {
            let o = n.probe.observed.as_ref();
            let role = match n.role {
                Role::Primary => "primary",
                Role::Replica => "replica",
            };
            let lsn = o.map(|o| if n.role == Role::Primary { o.insert_lsn } else { o.replay_lsn });
            let why = if let Some(blocked) = shared.coord_blocked().filter(|_| n.role == Role::Primary) {
                // Several instances: the primary gets no writes from here while the gate is shut.
                Some(blocked.to_string())
            } else if n.diverged {
                Some(crate::cluster::OutReason::Diverged.as_str().to_string())
            } else if n.fenced {
                Some(crate::cluster::OutReason::Fenced.as_str().to_string())
            } else if n.in_rotation {
                None
            } else {
                n.out.map(|r| r.as_str().to_string())
            };
            vec![
                text(&n.addr),
                text(role),
                text(if n.healthy { "up" } else { "down" }),
                text(n.in_rotation),
                why,
                o.and_then(|o| o.timeline).map(|t| t.to_string()),
                lsn.map(|l| l.to_string()),
                o.filter(|_| n.role == Role::Replica).map(|o| o.receive_lsn.to_string()),
                n.probe.lag_bytes.map(|b| b.to_string()),
                n.probe.lag_ms.map(|ms| format!("{:.3}", ms as f64 / 1000.0)),
                o.and_then(|o| o.receiver_status.clone()),
                text(n.settings.weight),
                text(n.paused),
                text(connections.get(&*n.addr).copied().unwrap_or(0)),
                text(n.outstanding()),
            ]
        })
        .collect();
    Answer::Rows {
        columns: vec![
            "server",
            "role",
            "state",
            "in_rotation",
            "out_reason",
            "timeline",
            "lsn",
            "receive_lsn",
            "lag_bytes",
            "lag_seconds",
            "wal_receiver",
            "weight",
            "paused",
            "connections",
            "outstanding",
        ],
        rows,
    }
}

fn pools(shared: &Shared) -> Answer {
    let rows = shared
        .pools
        .stats()
        .into_iter()
        .map(|p| {
            vec![
                text(p.addr),
                text(p.user),
                text(p.database),
                text(p.size),
                text(p.active),
                text(p.idle),
                text(p.waiting),
            ]
        })
        .collect();
    Answer::Rows { columns: vec!["server", "user", "database", "size", "active", "idle", "waiting"], rows }
}

fn clients(shared: &Shared) -> Answer {
    let t = shared.cluster.load();
    let rows = shared
        .clients
        .all()
        .iter()
        .map(|c| {
            let server = c.server.load(Ordering::Relaxed);
            let status = TxStatus::from_byte(c.tx_status.load(Ordering::Relaxed) as u8).unwrap_or_default();
            let state = match status {
                TxStatus::Idle if server != usize::MAX => "active",
                s => s.label(),
            };
            let since = c.connected.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            vec![
                text(c.id),
                text(&c.user),
                text(&c.database),
                text(c.addr.map(|a| a.to_string()).unwrap_or_default()),
                text(since),
                text(state),
                t.nodes.get(server).map(|n| n.addr.to_string()),
                text(c.requests.load(Ordering::Relaxed)),
            ]
        })
        .collect();
    Answer::Rows {
        columns: vec!["id", "user", "database", "addr", "connected_since_epoch", "state", "server", "requests"],
        rows,
    }
}

fn stats(shared: &Shared) -> Answer {
    let t = shared.cluster.load();
    let m = &shared.metrics;
    let rows = t
        .nodes
        .iter()
        .filter(|n| !n.removed)
        .map(|n| {
            let label = [&*n.addr];
            let queries = m.server_queries.with_label_values(&label).get();
            let seconds = m.server_query_seconds.with_label_values(&label).get();
            let bytes = m.server_bytes.with_label_values(&label).get();
            let avg_ms = if queries == 0 { 0.0 } else { seconds * 1000.0 / queries as f64 };
            vec![text(&n.addr), text(queries), text(bytes), text(format!("{seconds:.3}")), text(format!("{avg_ms:.3}"))]
        })
        .collect();
    Answer::Rows { columns: vec!["server", "queries", "bytes", "total_seconds", "avg_ms"], rows }
}

fn config(shared: &Shared) -> Answer {
    let c = shared.config.load();
    let mut rows = Vec::new();
    let value = toml::Value::try_from(&**c).unwrap_or(toml::Value::Table(Default::default()));
    flatten("", &value, &mut rows);
    Answer::Rows { columns: vec!["key", "value"], rows }
}

fn flatten(prefix: &str, v: &toml::Value, rows: &mut Vec<Vec<Option<String>>>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&key, v, rows);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, rows);
            }
        }
        other => {
            // Secrets never leave pgsplit.
            let shown = if crate::config::is_secret_key(prefix) { "********".to_string() } else { other.to_string() };
            rows.push(vec![Some(prefix.to_string()), Some(shown)]);
        }
    }
}

fn routes(shared: &Shared) -> Answer {
    let mut rows = Vec::new();
    for family in shared.metrics.registry.gather() {
        if family.name() != "pgsplit_routed_total" {
            continue;
        }
        for m in family.get_metric() {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_string());
            rows.push(vec![label("role"), label("reason"), label("server"), text(m.get_counter().value() as u64)]);
        }
    }
    rows.sort();
    Answer::Rows { columns: vec!["role", "reason", "server", "count"], rows }
}
