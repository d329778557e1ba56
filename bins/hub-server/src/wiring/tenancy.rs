//! The HTTP view of the tenant directory: the tenants mode from the settings, the cached key and tenant lookups, and the task writing keys' sampled last use.

use std::sync::Arc;
use std::time::Duration;

use hub_core::tenancy::{TenantDirectory, UsageMeter};
use hub_http::Tenancy;

use crate::settings::TenancySettings;
use crate::tasks::{Tasks, key_use};

/// The tenancy every HTTP worker shares, and its key-use flush task.
pub(crate) fn build(
    settings: &TenancySettings,
    directory: Arc<dyn TenantDirectory>,
    meter: Arc<UsageMeter>,
    tasks: &mut Tasks,
) -> anyhow::Result<Arc<Tenancy>> {
    let mode = settings.tenants_mode()?;
    tracing::info!(mode = mode.as_str(), "tenants mode");
    let tenancy = Arc::new(Tenancy::new(directory, meter, mode));
    tasks.spawn(
        "key use flush",
        key_use::run(
            tenancy.clone(),
            Duration::from_secs(settings.key_use_flush_secs),
            tasks.stop_signal(),
        ),
    );
    Ok(tenancy)
}
