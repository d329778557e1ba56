//! hub-store: the PostgreSQL and DragonflyDB adapters of hub-core's ports (not built yet).
//!
//! This crate will hold the `RegistryStore` on tokio-postgres with
//! deadpool-postgres, where every tenant-scoped query runs in a transaction
//! that first sets `app.tenant_id` for row-level security, and the lease,
//! cache and rate-limit stores on DragonflyDB through fred. Until then the
//! server runs on hub-core's in-memory adapters (embedded mode).
