//! What phases do before they measure: registering instances outside the measurement, and checking that a registration phase left every instance findable.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::bench::load::{OnError, Stop, drive, get_once};
use crate::bench::names::{
    REGISTER_PREFIX, SERVICES_PER_TENANT, TENANTS, service_name, tenant_name,
};
use crate::bench::options::Options;
use crate::bench::servers::Server;
use crate::bench::workload::Workload;

/// Registers `options.registrations` instances of the tenants named
/// `{tenants}NNN`, as the registration phase does, but outside any
/// measurement: the set-up of a phase that measures something else.
pub(crate) async fn register_unmeasured(
    options: &Options,
    server: &mut Server,
    tenants: &str,
) -> anyhow::Result<()> {
    let addr = server.addr;
    let workload = Workload::registrations(addr, options.registrations, REGISTER_PREFIX, tenants)?;
    drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::After(options.registrations),
        OnError::Fail,
    )
    .await
    .context("registering the instances (outside the measurement)")?;
    server.check_alive()?;
    verify_registrations(addr, options.registrations, tenants).await
}

/// Registers `count` instances over `services` services of each of the 100
/// tenants named `{tenants}NNN`, outside any measurement (the set-up of the
/// larger registry), and checks that they can be found.
pub(crate) async fn register_unmeasured_over(
    options: &Options,
    server: &mut Server,
    tenants: &str,
    count: usize,
    services: usize,
) -> anyhow::Result<()> {
    let addr = server.addr;
    let workload = Workload::registrations_over(addr, count, REGISTER_PREFIX, tenants, services)?;
    drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::After(count),
        OnError::Fail,
    )
    .await
    .context("registering the instances of the larger registry (outside the measurement)")?;
    server.check_alive()?;
    verify_registrations_over(addr, count, tenants, services).await
}

/// After the registration phase, the first and the last tenant must list
/// every instance of a service, or the lookup phase would measure 404s or
/// short answers.
pub(crate) async fn verify_registrations(
    addr: SocketAddr,
    registrations: usize,
    tenants: &str,
) -> anyhow::Result<()> {
    verify_registrations_over(addr, registrations, tenants, SERVICES_PER_TENANT).await
}

/// [`verify_registrations`] of a registry of `services` services per tenant.
pub(crate) async fn verify_registrations_over(
    addr: SocketAddr,
    registrations: usize,
    tenants: &str,
    services: usize,
) -> anyhow::Result<()> {
    let expected = registrations / (TENANTS * services);
    for tenant in [0, TENANTS - 1] {
        let tenant = tenant_name(tenants, tenant);
        let path = format!("/api/v1/discovery/services/{}", service_name(0));
        let (status, body) = get_once(addr, &path, Some(&tenant)).await?;
        if status != 200 {
            bail!("GET {path} for {tenant} answered {status} after registration");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).context("lookup answer is not JSON")?;
        let found = json
            .get("instances")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if found != expected {
            bail!("GET {path} for {tenant} lists {found} instances, expected {expected}");
        }
    }
    Ok(())
}
