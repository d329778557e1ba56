//! Route tables, one module per area of the API.

pub mod dashboard;
pub mod dashboard_health;
pub mod discovery;
pub mod health;
pub mod prometheus;
