//! Operating pgsplit: the admin console (`admin`), configuration reload (`reload`) and the
//! Prometheus metrics (`metrics`).

pub mod admin;
pub mod metrics;
pub mod reload;
