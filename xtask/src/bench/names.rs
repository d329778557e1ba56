//! The names the bench gives things: the API key, the tenants, services and instances of its phases, random suffixes.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read as _;

use anyhow::Context;

/// The operator key the server is started with; it may act for any tenant.
pub(crate) const API_KEY: &str = "bench-key-0123456789";
pub(crate) const TENANTS: usize = 100;
pub(crate) const SERVICES_PER_TENANT: usize = 10;

/// The tenants of the phases that get a server of their own state (a fresh
/// process or database) are `bench-t000` to `bench-t099`.
pub(crate) const TENANT_PREFIX: &str = "bench-t";

/// Tenant `index` of the tenants named `{prefix}000`, `{prefix}001`, ...
pub(crate) fn tenant_name(prefix: &str, index: usize) -> String {
    format!("{prefix}{index:03}")
}

/// A tenant prefix of its own, `bench-<hex>-t`, for phases whose state
/// outlives the server (Dragonfly's keys): repeated runs then never meet each
/// other's keys, and the keys of one run can be found (and deleted) by it.
pub(crate) fn fresh_tenant_prefix() -> anyhow::Result<String> {
    Ok(format!("bench-{}-t", random_hex(4)?))
}

pub(crate) fn service_name(index: usize) -> String {
    format!("svc-{index:03}")
}

/// The instances of the registration phases are `i-00000`, `i-00001`, ...
pub(crate) const REGISTER_PREFIX: &str = "i";

/// The id of registration `index` of a phase whose instances start with
/// `prefix`; the event phases find an event's registration by it.
pub(crate) fn instance_id(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index:05}")
}

pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buffer = vec![0_u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("reading /dev/urandom")?;
    Ok(buffer.iter().fold(String::new(), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    }))
}
