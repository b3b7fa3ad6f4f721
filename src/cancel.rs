//! Cancel keys. Each client gets a BackendKeyData of pgsplit's own (pid and secret both
//! random); a CancelRequest carrying it is forwarded only while that client's statement is
//! running on the server connection it holds, with that server's key, and to nothing else. A
//! server connection a cancel was sent to is never pooled for someone else (the signal may
//! land after the statement ended), and cancels from one address are rate-limited.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::protocol;

#[derive(Debug, Clone)]
pub struct ServerKey {
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

/// What a client's key may reach at this moment.
#[derive(Debug, Default)]
struct Hold {
    /// The server connection the client holds.
    key: Option<ServerKey>,
    /// A statement of the client's is running on it (sent, its ReadyForQuery not yet back).
    running: bool,
    /// A cancel was forwarded to it during this hold.
    cancelled: bool,
}

type Slot = Arc<Mutex<Hold>>;

fn lock(slot: &Slot) -> MutexGuard<'_, Hold> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// What became of a CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to the server running the client's statement.
    Forwarded,
    /// No such key, or nothing of that client's running: dropped, as PostgreSQL does.
    Ignored,
    /// Too many cancels from that address: dropped unread.
    Limited,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Ignored => "ignored",
            Outcome::Limited => "limited",
        }
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Slot)>>,
    rate: Mutex<HashMap<IpAddr, Bucket>>,
}

/// A client's registration; dropping it unregisters the key.
pub struct CancelHandle {
    pub pid: i32,
    pub secret: i32,
    slot: Slot,
    registry: Arc<CancelRegistry>,
}

/// Cancels one address may send: `BURST` at once, refilled at `PER_SECOND`.
const BURST: f64 = 50.0;
const PER_SECOND: f64 = 20.0;
/// Addresses remembered before idle ones are forgotten.
const ADDRESSES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes one token at `now`; false when none is left.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let slot: Slot = Arc::new(Mutex::new(Hold::default()));
        let mut map = self.lock();
        // Random and positive, as a PostgreSQL backend pid is; unique among the clients.
        let pid = loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid != 0 && !map.contains_key(&pid) {
                break pid;
            }
        };
        let secret: i32 = rand::random();
        map.insert(pid, (secret, slot.clone()));
        CancelHandle { pid, secret, slot, registry: self.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, (i32, Slot)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` may send another cancel now.
    fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut rate = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate.len() >= ADDRESSES && !rate.contains_key(&ip) {
            let full = Duration::from_secs_f64(BURST / PER_SECOND);
            rate.retain(|_, b| now.saturating_duration_since(b.at) < full);
        }
        rate.entry(ip).or_insert(Bucket { tokens: BURST, at: now }).take(now)
    }

    /// Forwards a client's CancelRequest. Wrong keys are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, from: Option<IpAddr>, pid: i32, secret: i32) -> Outcome {
        if let Some(ip) = from
            && !self.allow(ip, Instant::now())
        {
            return Outcome::Limited;
        }
        let key = {
            let map = self.lock();
            match map.get(&pid) {
                Some((s, slot)) if *s == secret => {
                    let mut hold = lock(slot);
                    match (&hold.key, hold.running) {
                        (Some(k), true) => {
                            let k = k.clone();
                            hold.cancelled = true;
                            Some(k)
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        };
        match key {
            Some(k) => {
                send_cancel(&k).await;
                Outcome::Forwarded
            }
            None => Outcome::Ignored,
        }
    }
}

pub async fn send_cancel(k: &ServerKey) {
    if let Ok(Ok(mut s)) =
        tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(&*k.addr)).await
    {
        let _ = s.write_all(&protocol::cancel_request(k.pid, k.secret)).await;
        let _ = s.shutdown().await;
    }
}

impl CancelHandle {
    /// The client now holds this server connection, nothing of its running yet.
    pub fn attach(&self, key: ServerKey) {
        *lock(&self.slot) = Hold { key: Some(key), running: false, cancelled: false };
    }

    /// Work of the client's was sent to the server connection it holds.
    pub fn running(&self) {
        lock(&self.slot).running = true;
    }

    /// The server finished all the client's work (its last ReadyForQuery arrived).
    pub fn finished(&self) {
        lock(&self.slot).running = false;
    }

    /// The client gives the server connection up. True when a cancel was forwarded to it
    /// meanwhile: it may still arrive, so the connection must not serve anyone else.
    #[must_use]
    pub fn detach(&self) -> bool {
        std::mem::take(&mut *lock(&self.slot)).cancelled
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServerKey {
        // A port nothing listens on: a forwarded cancel fails to connect, quietly.
        ServerKey { addr: "127.0.0.1:9".into(), pid: 7, secret: 8 }
    }

    #[tokio::test]
    async fn a_cancel_reaches_only_a_running_statement() {
        let registry = Arc::new(CancelRegistry::default());
        let h = registry.register();
        let (pid, secret) = (h.pid, h.secret);
        // Holding nothing, holding an idle connection, a wrong secret: ignored.
        assert_eq!(registry.cancel(None, pid, secret).await, Outcome::Ignored);
        h.attach(key());
        assert_eq!(registry.cancel(None, pid, secret).await, Outcome::Ignored);
        h.running();
        assert_eq!(registry.cancel(None, pid, secret.wrapping_add(1)).await, Outcome::Ignored);
        assert!(!h.detach(), "no cancel was sent: the connection may be pooled");
        // Running: forwarded, and the connection is marked as not to be pooled.
        h.attach(key());
        h.running();
        assert_eq!(registry.cancel(None, pid, secret).await, Outcome::Forwarded);
        h.finished();
        assert_eq!(registry.cancel(None, pid, secret).await, Outcome::Ignored);
        assert!(h.detach(), "a cancel may still land: never pooled");
        // The next hold starts clean.
        h.attach(key());
        assert!(!h.detach());
        drop(h);
        assert_eq!(registry.cancel(None, pid, secret).await, Outcome::Ignored);
    }

    #[test]
    fn keys_are_random_and_unique() {
        let registry = Arc::new(CancelRegistry::default());
        let handles: Vec<_> = (0..1000).map(|_| registry.register()).collect();
        let mut pids: Vec<i32> = handles.iter().map(|h| h.pid).collect();
        assert!(pids.iter().all(|p| *p > 0));
        pids.sort_unstable();
        pids.dedup();
        assert_eq!(pids.len(), 1000);
        // Not a sequence: consecutive registrations are far apart.
        let close = handles.windows(2).filter(|w| (w[0].pid - w[1].pid).abs() < 1000).count();
        assert!(close < 5, "{close} pids follow each other");
    }

    #[test]
    fn cancels_are_rate_limited_per_address() {
        let registry = CancelRegistry::default();
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let t0 = Instant::now();
        let allowed = (0..200).filter(|_| registry.allow(a, t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert!(registry.allow(b, t0), "another address is not affected");
        assert!(registry.allow(a, t0 + Duration::from_secs(1)), "the bucket refills");
        let later = (0..200).filter(|_| registry.allow(a, t0 + Duration::from_secs(1))).count();
        assert!(later < PER_SECOND as usize);
    }
}
