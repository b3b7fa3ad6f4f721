//! The etcd session of one instance: a lease renewed every TTL/3, the member key bound to it,
//! the leader key (created only where absent, bound to the lease), one watch on the whole
//! prefix, and the topology applied here before any write goes out under it. Reconnects by
//! itself; while it cannot renew the lease the write gate closes (rules.rs, rule 1).

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::values::{Member, Request, SharedTopology};
use super::{Coordination, Handles};

/// What the failover loop and the console use to reach etcd while the session is up.
#[derive(Clone)]
pub struct Session {
    client: Client,
    lease: i64,
    timeout: Duration,
}

type Res<T> = Result<T, String>;

impl Session {
    async fn within<T, F: std::future::Future<Output = Result<T, etcd_client::Error>>>(&self, f: F) -> Res<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("etcd request timed out".into()),
        }
    }

    /// Every live instance's member key.
    pub async fn members(&self, coord: &Coordination) -> Res<Vec<Member>> {
        let mut c = self.client.clone();
        let r = self.within(c.get(coord.keys.members.clone(), Some(GetOptions::new().with_prefix()))).await?;
        Ok(r.kvs().iter().filter_map(|kv| serde_json::from_slice(kv.value()).ok()).collect())
    }

    /// Replaces the topology if it is still at `revision` and this instance still holds the
    /// leader key with its lease. false: someone else changed it, or this one no longer leads.
    pub async fn cas_topology(&self, coord: &Coordination, t: &SharedTopology, revision: i64) -> Res<bool> {
        let value = serde_json::to_vec(t).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(coord.keys.topology.clone(), CompareOp::Equal, revision),
                Compare::value(coord.keys.leader.clone(), CompareOp::Equal, coord.name.clone()),
                Compare::lease(coord.keys.leader.clone(), CompareOp::Equal, self.lease),
            ])
            .and_then(vec![TxnOp::put(coord.keys.topology.clone(), value, None)]);
        let mut c = self.client.clone();
        Ok(self.within(c.txn(txn)).await?.succeeded())
    }

    /// An operator's command for the leader.
    pub async fn put_request(&self, coord: &Coordination, r: &Request) -> Res<()> {
        let value = serde_json::to_vec(r).map_err(|e| e.to_string())?;
        let mut c = self.client.clone();
        self.within(c.put(coord.keys.request.clone(), value, None)).await.map(|_| ())
    }

    /// Takes the pending command, if any (exactly one taker: delete at its revision).
    pub async fn take_request(&self, coord: &Coordination) -> Res<Option<Request>> {
        let mut c = self.client.clone();
        let r = self.within(c.get(coord.keys.request.clone(), None)).await?;
        let Some(kv) = r.kvs().first() else { return Ok(None) };
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(coord.keys.request.clone(), CompareOp::Equal, kv.mod_revision())])
            .and_then(vec![TxnOp::delete(coord.keys.request.clone(), None)]);
        if !self.within(c.txn(txn)).await?.succeeded() {
            return Ok(None);
        }
        match serde_json::from_slice(kv.value()) {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::error!("coordination: ignoring an unreadable request: {e}");
                Ok(None)
            }
        }
    }

    /// PAUSE / RESUME for every instance: the shared list of paused servers.
    pub async fn set_paused(&self, coord: &Coordination, server: &str, pause: bool) -> Res<()> {
        for _ in 0..10 {
            let mut c = self.client.clone();
            let r = self.within(c.get(coord.keys.paused.clone(), None)).await?;
            let (mut list, revision): (Vec<String>, i64) = match r.kvs().first() {
                Some(kv) => (serde_json::from_slice(kv.value()).unwrap_or_default(), kv.mod_revision()),
                None => (Vec::new(), 0),
            };
            list.retain(|s| s != server);
            if pause {
                list.push(server.to_string());
            }
            let value = serde_json::to_vec(&list).map_err(|e| e.to_string())?;
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(coord.keys.paused.clone(), CompareOp::Equal, revision)])
                .and_then(vec![TxnOp::put(coord.keys.paused.clone(), value, None)]);
            if self.within(c.txn(txn)).await?.succeeded() {
                return Ok(());
            }
        }
        Err("the paused list kept changing".into())
    }
}

/// The instance's etcd session, if it has one now.
pub fn current_session(coord: &Coordination) -> Option<Session> {
    coord.session.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// How this instance reaches etcd: timeouts, TLS (its files read now, so a renewed
/// certificate is used at the next reconnect) and etcd authentication.
pub fn connect_options(cc: &super::CoordinationConfig) -> Res<ConnectOptions> {
    let timeout = Duration::from_millis(cc.etcd_timeout_ms);
    let mut options = ConnectOptions::new()
        .with_connect_timeout(timeout)
        .with_timeout(timeout)
        .with_keep_alive(timeout, timeout)
        .with_require_leader(true);
    if cc.tls() {
        let read = |what: &str, path: &str| std::fs::read(path).map_err(|e| format!("coordination.{what} {path}: {e}"));
        let mut tls = etcd_client::TlsOptions::new();
        if !cc.ca.is_empty() {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("ca", &cc.ca)?));
        }
        if !cc.cert.is_empty() {
            tls = tls.identity(etcd_client::Identity::from_pem(read("cert", &cc.cert)?, read("key", &cc.key)?));
        }
        options = options.with_tls(tls);
    }
    if !cc.user.is_empty() {
        // etcd's tokens expire (auth-token-ttl): a new one is asked for when one does.
        options = options.with_user(cc.user.clone(), cc.password.clone()).with_auto_token_refresh(true);
    }
    Ok(options)
}

/// The instance's etcd session, for as long as the proxy runs.
pub async fn run(h: Handles, coord: Arc<Coordination>) {
    let mut lease = None;
    loop {
        match session(&h, &coord, &mut lease).await {
            Ok(()) => {}
            Err(e) => tracing::error!(instance = %coord.name, "coordination: etcd session ended: {e}"),
        }
        *coord.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
        coord.set_leader(false, "");
        h.metrics.coordination_up.set(0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn session(h: &Handles, coord: &Arc<Coordination>, lease: &mut Option<i64>) -> Res<()> {
    let config = h.config.load_full();
    let cc = &config.coordination;
    let timeout = Duration::from_millis(cc.etcd_timeout_ms);
    let options = connect_options(cc)?;
    let endpoints: Vec<String> = cc.etcd.clone();
    let client = match tokio::time::timeout(timeout * 2, Client::connect(endpoints, Some(options))).await {
        Ok(r) => r.map_err(|e| e.to_string())?,
        Err(_) => return Err("cannot connect to etcd".into()),
    };
    let ttl_secs = (cc.lease_ttl_ms / 1000).max(2) as i64;
    let mut c = client.clone();
    // The lease of the last session if etcd still has it (the keys bound to it live on).
    let mut id = None;
    if let Some(old) = *lease
        && let Ok(Ok(r)) = tokio::time::timeout(timeout, c.lease_time_to_live(old, None)).await
        && r.ttl() > 0
    {
        id = Some(old);
    }
    let id = match id {
        Some(id) => id,
        None => {
            let r = tokio::time::timeout(timeout, c.lease_grant(ttl_secs, None))
                .await
                .map_err(|_| "lease grant timed out".to_string())?
                .map_err(|e| e.to_string())?;
            r.id()
        }
    };
    *lease = Some(id);
    let (mut keeper, mut renewals) = c.lease_keep_alive(id).await.map_err(|e| e.to_string())?;
    keeper.keep_alive().await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, renewals.message()).await {
        Ok(Ok(Some(r))) if r.ttl() > 0 => coord.lease_renewed(),
        _ => return Err("the lease could not be renewed".into()),
    }
    let s = Session { client: client.clone(), lease: id, timeout };
    *coord.session.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
    h.metrics.coordination_up.set(1);

    // The topology: etcd's if there is one, else this instance's (the first one up writes it).
    let r = s.within(c.get(coord.keys.prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
    let mut topology = None;
    for kv in r.kvs() {
        on_key(h, coord, &s, kv.key(), Some((kv.value(), kv.mod_revision())), &mut topology).await;
    }
    if topology.is_none() {
        let mine = h.follower.local_topology();
        let value = serde_json::to_vec(&mine).map_err(|e| e.to_string())?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(coord.keys.topology.clone(), CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(coord.keys.topology.clone(), value, None)]);
        if s.within(c.txn(txn)).await?.succeeded() {
            tracing::warn!(primary = %mine.primary, epoch = mine.epoch, "coordination: wrote the first topology");
        }
    }
    // Two instances under one name would count as one and could both act as the leader.
    let r = s.within(c.get(coord.keys.member(&coord.name), None)).await?;
    if let Some(kv) = r.kvs().first()
        && kv.lease() != id
    {
        return Err(format!(
            "another live instance is named {:?} (coordination.instance_name must be unique); retrying",
            coord.name
        ));
    }
    campaign(coord, &s).await?;
    publish_member(coord, &s, h).await?;

    let mut watch = c
        .watch(coord.keys.prefix.clone(), Some(WatchOptions::new().with_prefix().with_start_revision(revision + 1)))
        .await
        .map_err(|e| e.to_string())?;
    let mut view = coord.primary_ok.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(cc.lease_ttl_ms / 3));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut member_epoch = coord.epoch();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // A session whose renewals stopped coming back (a stream stuck behind a lost
                // quorum) is started again rather than trusted: the lease may be gone.
                if coord.since_lease_ok().is_none_or(|d| d >= coord.ttl) {
                    return Err("the lease was not renewed for a whole TTL".into());
                }
                match tokio::time::timeout(timeout, keeper.keep_alive()).await {
                    Ok(r) => r.map_err(|e| e.to_string())?,
                    Err(_) => return Err("a lease renewal could not be sent in time".into()),
                }
                if !coord.leader.load(std::sync::atomic::Ordering::SeqCst) {
                    campaign(coord, &s).await?;
                }
            }
            r = renewals.message() => match r.map_err(|e| e.to_string())? {
                Some(r) if r.ttl() > 0 => {
                    let was = coord.gate();
                    coord.lease_renewed();
                    if was != coord.gate() {
                        tracing::warn!(instance = %coord.name, "coordination: lease renewed, {}", coord.gate().as_str());
                        h.cluster.published.notify_waiters();
                    }
                }
                Some(_) => {
                    *lease = None;
                    coord.lease_lost();
                    return Err("the lease expired".into());
                }
                None => return Err("the lease renewal stream ended".into()),
            },
            w = watch.message() => {
                let Some(w) = w.map_err(|e| e.to_string())? else { return Err("the watch ended".into()) };
                if w.canceled() {
                    return Err(format!("the watch was cancelled: {}", w.cancel_reason()));
                }
                for e in w.events() {
                    let Some(kv) = e.kv() else { continue };
                    let value = (e.event_type() == EventType::Put).then(|| (kv.value(), kv.mod_revision()));
                    on_key(h, coord, &s, kv.key(), value, &mut topology).await;
                }
                if coord.epoch() != member_epoch {
                    member_epoch = coord.epoch();
                    publish_member(coord, &s, h).await?;
                }
            }
            changed = view.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                publish_member(coord, &s, h).await?;
            }
        }
    }
}

/// Takes the leader key if nobody holds it.
async fn campaign(coord: &Coordination, s: &Session) -> Res<()> {
    let txn = Txn::new()
        .when(vec![Compare::create_revision(coord.keys.leader.clone(), CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::put(
            coord.keys.leader.clone(),
            coord.name.clone(),
            Some(PutOptions::new().with_lease(s.lease)),
        )])
        .or_else(vec![TxnOp::get(coord.keys.leader.clone(), None)]);
    let mut c = s.client.clone();
    let r = s.within(c.txn(txn)).await?;
    if r.succeeded() {
        tracing::warn!(instance = %coord.name, "coordination: this instance leads");
        coord.set_leader(true, &coord.name);
    } else {
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                let holder = String::from_utf8_lossy(kv.value()).to_string();
                coord.set_leader(holder == coord.name && kv.lease() == s.lease, &holder);
            }
        }
    }
    Ok(())
}

async fn publish_member(coord: &Coordination, s: &Session, h: &Handles) -> Res<()> {
    let m = Member {
        name: coord.name.clone(),
        epoch: coord.epoch(),
        primary_ok: *coord.primary_ok.borrow(),
        listen: h.config.load().listen.clone(),
    };
    let value = serde_json::to_vec(&m).map_err(|e| e.to_string())?;
    let mut c = s.client.clone();
    s.within(c.put(coord.keys.member(&coord.name), value, Some(PutOptions::new().with_lease(s.lease)))).await?;
    Ok(())
}

/// One key's new value (None: deleted).
async fn on_key(
    h: &Handles,
    coord: &Arc<Coordination>,
    s: &Session,
    key: &[u8],
    value: Option<(&[u8], i64)>,
    topology: &mut Option<SharedTopology>,
) {
    let key = String::from_utf8_lossy(key);
    if *key == *coord.keys.topology {
        let Some((v, revision)) = value else {
            tracing::error!("coordination: the topology key was deleted; writes stay as they were");
            return;
        };
        match serde_json::from_slice::<SharedTopology>(v) {
            Ok(t) => {
                h.follower.apply(&t, revision).await;
                *topology = Some(t);
            }
            Err(e) => tracing::error!("coordination: unreadable topology in etcd ({e}); not applied"),
        }
    } else if *key == *coord.keys.leader {
        match value {
            Some((v, _)) => {
                let holder = String::from_utf8_lossy(v).to_string();
                let me = holder == coord.name;
                if me != coord.leader.load(std::sync::atomic::Ordering::SeqCst) || coord.leader_name() != holder {
                    tracing::info!(leader = %holder, "coordination: leader");
                }
                coord.set_leader(me, &holder);
                h.metrics.coordination_leader.set(me as i64);
            }
            None => {
                coord.set_leader(false, "");
                h.metrics.coordination_leader.set(0);
                if let Err(e) = campaign(coord, s).await {
                    tracing::warn!("coordination: campaign failed: {e}");
                }
                h.metrics.coordination_leader.set(coord.leader.load(std::sync::atomic::Ordering::SeqCst) as i64);
            }
        }
    } else if *key == *coord.keys.request {
        if value.is_some() && coord.is_leader() {
            h.follower.wake();
        }
    } else if *key == *coord.keys.paused {
        let list: Vec<String> = value.and_then(|(v, _)| serde_json::from_slice(v).ok()).unwrap_or_default();
        let t = h.cluster.load();
        for n in t.nodes.iter().filter(|n| !n.removed) {
            let want = list.iter().any(|a| *a == coord.shared_addr(&n.addr));
            if want != n.paused {
                tracing::info!(server = %n.addr, paused = want, "coordination: pause set by an instance");
                h.cluster.set_paused(&n.addr, want);
            }
        }
    }
}
