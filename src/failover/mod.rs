//! Failover, one wing: the pure rules (`decide`), what they are fed (`observe`), the actions
//! (`actions`, with the SQL they run in `sql` and the state file in `state_file`), the loop
//! (`run`), and with several instances on etcd the leader's round (`leader`) and what every
//! instance does with etcd's topology (`follow`). It depends on `cluster` (the topology) and
//! `coord` (the etcd session and its rules); neither depends on it.

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
