//! DragonflyDB: the client, when `DRAGONFLY_HOST` is set. It connects in the background, so an unreachable Dragonfly never stops start-up.

use hub_store::dragonfly::Dragonfly;

use crate::settings::DragonflySettings;

/// The client, or `None` without `DRAGONFLY_HOST`. Malformed settings were
/// refused when the settings were loaded; this only fails if the client
/// library refuses them too.
pub(crate) fn connect(settings: &DragonflySettings) -> anyhow::Result<Option<Dragonfly>> {
    let Some(config) = settings.client_config()? else {
        return Ok(None);
    };
    let client = Dragonfly::connect(&config)?;
    tracing::info!(
        host = %config.host,
        port = config.port,
        "Dragonfly configured (connecting in the background)"
    );
    Ok(Some(client))
}
