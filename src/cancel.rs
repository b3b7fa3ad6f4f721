//! Cancel keys. Each client gets a BackendKeyData of pgsplit's own; a CancelRequest carrying it
//! is forwarded to the server connection running that client's query at that moment, with
//! that server's key, and to nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

use crate::protocol;

#[derive(Debug, Clone)]
pub struct ServerKey {
    pub addr: Arc<str>,
    pub pid: i32,
    pub secret: i32,
}

type Slot = Arc<Mutex<Option<ServerKey>>>;

#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Slot)>>,
    next_pid: AtomicI32,
}

/// A client's registration; dropping it unregisters the key.
pub struct CancelHandle {
    pub pid: i32,
    pub secret: i32,
    slot: Slot,
    registry: Arc<CancelRegistry>,
}

impl CancelRegistry {
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0x7fff_ffff;
        let secret: i32 = rand::random();
        let slot: Slot = Arc::new(Mutex::new(None));
        self.lock().insert(pid, (secret, slot.clone()));
        CancelHandle { pid, secret, slot, registry: self.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (i32, Slot)>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards a client's CancelRequest. Wrong keys are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let key = {
            let map = self.lock();
            match map.get(&pid) {
                Some((s, slot)) if *s == secret => slot.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                _ => None,
            }
        };
        if let Some(k) = key {
            send_cancel(&k).await;
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
    pub fn set(&self, key: Option<ServerKey>) {
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.pid);
    }
}
