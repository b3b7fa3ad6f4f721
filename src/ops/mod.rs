//! Operating pgsplit: the admin console (`admin`) and configuration reload (`reload`). The
//! Prometheus metrics are a floor of their own (`crate::metrics`): everything below writes them.

pub mod admin;
pub mod reload;
