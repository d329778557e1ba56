//! Wiring of each backend: one module per backend, each turning its part of the settings into the adapters `Application::build` hands on.

pub(crate) mod auth;
pub(crate) mod buses;
pub(crate) mod dragonfly;
pub(crate) mod events;
pub(crate) mod http;
pub(crate) mod leases;
pub(crate) mod limits;
pub(crate) mod monitor;
pub(crate) mod postgres;
pub(crate) mod store;
pub(crate) mod tenancy;
pub(crate) mod tenants;
pub(crate) mod watch;
