//! Failover, one wing: the pure rules (`decide`), what they are fed (`observe`), the actions
//! (`actions`, with the SQL they run in `sql` and the state file in `state_file`), the loop
//! (`run`), and with several instances on etcd the leader's round (`leader`) and what every
//! instance does with etcd's topology (`follow`). It depends on `cluster` (the topology) and
//! `coord` (the etcd session and its rules); neither depends on it. It runs with [`Handles`]
//! (the subsystems it observes and acts on), not with the whole of `Shared`, and shares
//! [`Control`] with the console and the sessions.

pub mod actions;
pub mod decide;
#[cfg(feature = "etcd")]
pub mod follow;
#[cfg(feature = "etcd")]
pub mod leader;
pub mod observe;
pub mod run;
pub mod sql;
pub mod state_file;

pub use decide::{Request, State};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::Cluster;
use crate::cluster::sql_pools::SqlPools;
use crate::config::Live;
use crate::coord::Coordination;
use crate::lsn::AtomicLsn;
use crate::metrics::Metrics;
use crate::pool::Pools;

/// What the failover wing shares with the console (which shows the state and posts requests)
/// and the sessions (which obey the write holds). Written by the failover loop unless noted.
pub struct Control {
    /// The failover state, for the console and the etcd session's first topology.
    pub state: Mutex<State>,
    /// Wakes the failover loop for an immediate check (a lost primary, an operator's request).
    pub wake: tokio::sync::Notify,
    /// An operator's FAILOVER, PROMOTE, SWITCHOVER or REJOIN, written by the console.
    pub request: Mutex<Option<Request>>,
    /// A switchover holds new writes (sessions wait as for a failover).
    pub writes_held: AtomicBool,
    /// A new topology could not be written to the state file yet: it is not applied, and
    /// writes wait until it is recorded (never an unrecorded primary).
    pub unrecorded: AtomicBool,
}

impl Control {
    pub fn new(primary: usize) -> Control {
        Control {
            state: Mutex::new(State::new(primary)),
            wake: tokio::sync::Notify::new(),
            request: Mutex::new(None),
            writes_held: AtomicBool::new(false),
            unrecorded: AtomicBool::new(false),
        }
    }

    /// A copy of the failover state.
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn writes_held(&self) -> bool {
        self.writes_held.load(Ordering::SeqCst)
    }

    pub fn unrecorded(&self) -> bool {
        self.unrecorded.load(Ordering::SeqCst)
    }
}

/// What the failover wing runs with: the subsystems it observes and acts on, nothing more.
#[derive(Clone)]
pub struct Handles {
    pub config: Live,
    pub cluster: Arc<Cluster>,
    pub pools: Arc<Pools>,
    pub metrics: Arc<Metrics>,
    /// pgsplit's own SQL connections (checks, promotion, fencing).
    pub sql: Arc<SqlPools>,
    pub coord: Option<Arc<Coordination>>,
    /// Raised past a promotion's position so no session reads older data after it.
    pub global_floor: Arc<AtomicLsn>,
    pub control: Arc<Control>,
}
