//! Rate limits: the policy from the settings, on Dragonfly's shared script when Dragonfly is configured, with the in-process limiter as fallback (or alone).

use std::sync::Arc;

use hub_core::ratelimit::{Limits, RateLimiter};
use hub_store::dragonfly::{Dragonfly, DragonflyLimiter};

use crate::settings::RateLimitSettings;

/// The limits every HTTP worker shares.
pub(crate) fn build(
    settings: &RateLimitSettings,
    dragonfly: Option<&Dragonfly>,
) -> anyhow::Result<Arc<Limits>> {
    let shared =
        dragonfly.map(|d| Arc::new(DragonflyLimiter::new(d.clone())) as Arc<dyn RateLimiter>);
    Ok(Arc::new(Limits::new(settings.policy()?, shared)))
}
