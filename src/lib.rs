//! pgsplit: a PostgreSQL wire-protocol proxy that sends writes, locking reads and transactions
//! to the primary and plain reads to streaming replicas. See docs/architecture.md.

pub mod auth;
pub mod backend;
pub mod cancel;
pub mod catalog;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod failover;
pub mod localcluster;
pub mod localetcd;
pub mod lsn;
pub mod metrics;
pub mod ops;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reason;
pub mod router;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod sql;
pub mod tls;

pub use shared::Shared;
