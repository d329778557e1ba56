//! API keys: the authentication the HTTP layer enforces, from `CENTRAL_HUB_API_KEYS` and `DISABLE_AUTH`.

use hub_http::jwt::{JwtConfig, JwtVerifier};
use hub_http::{ApiKeys, Auth};
use secrecy::ExposeSecret;

use crate::settings::{AuthSettings, TenancySettings};

/// 32 random bytes as hex: the key generated when auth is on and none is configured.
fn generate_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
    Ok(hex::encode(bytes))
}

/// The API keys from the settings; with none configured (and auth on), one
/// operator key made for this run.
pub(crate) fn build(settings: &AuthSettings) -> anyhow::Result<Auth> {
    if settings.disabled {
        tracing::warn!(
            "DISABLE_AUTH=true: every endpoint is open to anyone who can reach this port; use only for development"
        );
        return Ok(Auth::Disabled);
    }
    let keys = ApiKeys::parse(settings.api_keys.expose_secret())
        .map_err(|e| anyhow::anyhow!("CENTRAL_HUB_API_KEYS is invalid: {e}"))?;
    if keys.is_empty() {
        let key = generate_key()?;
        // The one place a key is ever logged: it was made here, for this run,
        // so that the first request of the README works without configuration.
        tracing::warn!(
            bootstrap_api_key = %key,
            "no API key configured (CENTRAL_HUB_API_KEYS): generated an operator key for this run only"
        );
        return Ok(Auth::Keys(keys.with_operator_key(&key)));
    }
    tracing::info!(keys = keys.len(), "API keys loaded");
    Ok(Auth::Keys(keys))
}

/// The bearer-token verifier, when `HUB_JWT_SECRET` or `HUB_JWT_JWKS_PATH`
/// is set; a configuration it cannot use stops the start with its reason.
pub(crate) fn jwt(settings: &TenancySettings) -> anyhow::Result<Option<JwtVerifier>> {
    let config = JwtConfig {
        secret: settings.jwt_secret.clone(),
        jwks_path: settings.jwt_jwks_path.clone(),
        issuer: settings.jwt_issuer.clone().filter(|s| !s.is_empty()),
        audience: settings.jwt_audience.clone().filter(|s| !s.is_empty()),
        tenant_claim: settings.jwt_tenant_claim.trim().to_owned(),
        leeway_secs: settings.jwt_leeway_secs,
    };
    if !config.is_enabled() {
        return Ok(None);
    }
    let verifier = JwtVerifier::new(config)
        .map_err(|e| anyhow::anyhow!("bearer tokens cannot be verified: {e}"))?;
    tracing::info!(?verifier, "bearer tokens accepted");
    Ok(Some(verifier))
}
