//! Hot reload: SIGHUP and the admin RELOAD re-read the configuration file. Thresholds,
//! weights, balancing, pool sizes, log level, admin users, users and replicas (added or
//! removed) take effect without dropping a client connection or an in-flight transaction. A
//! file with an error is refused with the reason and the running configuration stays.
//!
//! What cannot change while running is refused or kept: the primary (that is a failover),
//! and the listen addresses (they need a restart; the running ones are kept and said so).

use crate::Shared;
use crate::cluster::{Node, NodeSettings, OutReason, Role};
use crate::config::Config;
pub use crate::config::Source;

/// Re-reads the configuration and applies it. Ok: what changed, for the operator.
pub fn reload(shared: &Shared) -> Result<String, String> {
    let result = shared.origin.source.load().and_then(|c| apply(shared, c));
    let label = if result.is_ok() { "ok" } else { "failed" };
    shared.metrics.reloads.with_label_values(&[label]).inc();
    match &result {
        Ok(msg) => tracing::info!("configuration reloaded: {msg}"),
        Err(e) => tracing::error!("configuration reload refused, the running configuration stays: {e}"),
    }
    result
}

/// Applies a new configuration.
pub fn apply(shared: &Shared, mut new: Config) -> Result<String, String> {
    new.validate().map_err(|e| e.to_string())?;
    crate::tls::check(&new.tls)?;
    let old = shared.config.load_full();
    if new.servers.primary != old.servers.primary {
        return Err(format!(
            "servers.primary changed ({} -> {}): the primary changes by failover or switchover, not by reload",
            old.servers.primary, new.servers.primary
        ));
    }
    let mut notes = Vec::new();
    if new.listen != old.listen || new.metrics_listen != old.metrics_listen {
        notes.push("listen and metrics_listen need a restart (kept)".to_string());
        new.listen = old.listen.clone();
        new.metrics_listen = old.metrics_listen.clone();
    }
    if new.log_level != old.log_level {
        match &shared.origin.log_level {
            Some(set) => {
                set(&new.log_level)?;
                notes.push(format!("log_level {}", new.log_level));
            }
            None => notes.push("log_level is not reloadable here".into()),
        }
    }
    // The certificate files are read again (renewed certificates); connections keep theirs.
    let tls = crate::tls::load(&new.tls)?;
    if tls.is_some() || !old.tls.cert.is_empty() {
        notes.push(if tls.is_some() { "TLS certificate loaded".into() } else { "TLS off".to_string() });
    }
    shared.tls.store(tls.map(std::sync::Arc::new));
    let (added, removed) = replicas_changed(&old, &new);
    shared.cluster.topology.rcu(|t| {
        let mut t = (**t).clone();
        for node in t.nodes.iter_mut().filter(|n| n.role == Role::Replica && removed.contains(&n.addr.to_string())) {
            node.removed = true;
            node.in_rotation = false;
            node.out = Some(OutReason::Removed);
        }
        for r in new.servers.replicas.iter().filter(|r| added.iter().any(|a| a == r.addr())) {
            let mut n = Node::new(r.addr(), Role::Replica, NodeSettings::of(r, &new.routing));
            // A new replica takes reads once its first probes show it fit.
            n.in_rotation = false;
            n.out = Some(OutReason::Unreachable);
            t.nodes.push(n);
        }
        t.balance = new.routing.balance;
        t.primary_read_weight = new.routing.primary_read_weight;
        t.on_all_lagging = new.routing.on_all_lagging;
        t
    });
    for addr in &removed {
        shared.pools.drop_idle(addr);
        shared.sql.forget(addr);
    }
    if new.pool.size != old.pool.size {
        shared.pools.resize(new.pool.size);
        notes.push(format!("pool.size {}", new.pool.size));
    }
    if new.monitor.user != old.monitor.user || new.monitor.password != old.monitor.password {
        shared.sql.clear();
    }
    if new.auth_query != old.auth_query || new.monitor != old.monitor {
        shared.logins.auth_query.clear();
    }
    if !added.is_empty() {
        notes.push(format!("replicas added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        notes.push(format!("replicas removed: {}", removed.join(", ")));
    }
    shared.config.store(std::sync::Arc::new(new));
    shared.monitor.ensure_tasks();
    if notes.is_empty() {
        notes.push("settings applied".into());
    }
    Ok(notes.join("; "))
}

fn replicas_changed(old: &Config, new: &Config) -> (Vec<String>, Vec<String>) {
    let (o, n) = (old.replica_addrs(), new.replica_addrs());
    let added = n.iter().filter(|a| !o.contains(a)).cloned().collect();
    let removed = o.iter().filter(|a| !n.contains(a)).cloned().collect();
    (added, removed)
}
