pub mod config;
pub mod protocol;
pub mod sql;
pub mod router;
pub mod topology;
