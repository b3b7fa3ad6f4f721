//! The connected clients, for SHOW CLIENTS and for the checks that count them (a database
//! about to be dropped): each session registers a slot it writes with atomics, the console
//! reads them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One client as the admin console shows it. The session writes it, the console reads it.
#[derive(Debug)]
pub struct ClientSlot {
    pub id: u64,
    pub user: Arc<str>,
    pub database: Arc<str>,
    pub addr: Option<std::net::SocketAddr>,
    pub connected: std::time::SystemTime,
    /// The node of the server connection it holds (usize::MAX: none).
    pub server: AtomicUsize,
    /// 'I', 'T', 'E' as the last ReadyForQuery said.
    pub tx_status: AtomicUsize,
    pub requests: AtomicU64,
}

impl ClientSlot {
    pub fn new(id: u64, user: &Arc<str>, database: &Arc<str>, addr: Option<std::net::SocketAddr>) -> ClientSlot {
        ClientSlot {
            id,
            user: user.clone(),
            database: database.clone(),
            addr,
            connected: std::time::SystemTime::now(),
            server: AtomicUsize::new(usize::MAX),
            tx_status: AtomicUsize::new(b'I' as usize),
            requests: AtomicU64::new(0),
        }
    }
}

/// Connected clients, for SHOW CLIENTS.
#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<ClientSlot>>>,
    /// Connections accepted and not yet closed, logged in or not (limits.max_client_conn).
    connected: AtomicUsize,
}

impl Clients {
    /// Counts a new connection until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>) -> Admitted {
        self.connected.fetch_add(1, Ordering::Relaxed);
        Admitted(self.clone())
    }

    /// Connections accepted and not yet closed.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn register(
        &self,
        user: &Arc<str>,
        database: &Arc<str>,
        addr: Option<std::net::SocketAddr>,
    ) -> Arc<ClientSlot> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Arc::new(ClientSlot::new(id, user, database, addr));
        self.map.lock().unwrap_or_else(|p| p.into_inner()).insert(id, slot.clone());
        slot
    }

    /// How many clients other than `except` are connected to `database`.
    pub fn count_on(&self, database: &str, except: u64) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|s| s.id != except && *s.database == *database).count()
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    pub(crate) fn all(&self) -> Vec<Arc<ClientSlot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// Counts a connection against `limits.max_client_conn` while it lives.
pub struct Admitted(Arc<Clients>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Unregisters a client when its session ends.
pub struct Registered(pub Arc<Clients>, pub u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.unregister(self.1);
    }
}
