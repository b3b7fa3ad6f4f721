//! The cluster as pgsplit sees it: the servers, their roles, health and replay positions
//! (`topology`), the probes that observe them (`monitor`), the pure rules that decide which
//! replicas take reads (`rotation`) and which one a read goes to (`balance`); pgsplit's own SQL
//! connections to them (`sql_pools`) and the `[auth_query]` look-up that runs on them
//! (`auth_query`).

pub mod auth_query;
pub mod balance;
pub mod lag;
pub mod monitor;
pub mod replay;
pub mod rotation;
pub mod sql_pools;
pub mod topology;
pub mod watcher;

pub use topology::{Cluster, Node, NodeSettings, OutReason, Probed, Role, Topology};
