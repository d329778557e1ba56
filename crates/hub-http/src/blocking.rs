//! Blocking queries (Consul's `?index=&wait=`): reading `index` and `wait`, waiting on the watch hub, and the `X-Hub-Index` header.

use std::time::Duration;

use actix_web::HttpResponseBuilder;
use hub_core::{Revision, ServiceName, TenantId, ValidationError};

use crate::error::ApiError;
use crate::routes::watch::WatchDeps;

/// The header every list and service answer carries: the revision it reflects.
pub const INDEX_HEADER: &str = "X-Hub-Index";

/// How long a blocking query waits without `wait` (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
/// The longest wait honoured by default (`HUB_BLOCKING_MAX_WAIT_SECS`);
/// longer ones are cut to it, as Consul does.
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// `?index=N&wait=D` of a request; `index` absent means no blocking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Blocking {
    index: Option<Revision>,
    wait: Option<Duration>,
}

impl Blocking {
    /// Takes `index` and `wait` from the query pairs; other keys are left.
    pub fn take(&mut self, key: &str, value: &str) -> Result<bool, ApiError> {
        match key {
            "index" => {
                let index = value.trim().parse::<u64>().map_err(|_| {
                    ValidationError::new(
                        "index",
                        format!("{value:?} is not a revision (a whole number from 0)"),
                    )
                })?;
                self.index = Some(Revision::new(index));
                Ok(true)
            }
            "wait" => {
                self.wait = Some(parse_wait(value).ok_or_else(|| {
                    ValidationError::new(
                        "wait",
                        format!(
                            "{value:?} is not a duration (such as 30s, 5m, 500ms or plain seconds)"
                        ),
                    )
                })?);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Waits, if asked to, until the tenant's revision (with `service`: a
    /// change of that service) passes the index, or the wait (plus up to a
    /// sixteenth of jitter, so that many clients do not all come back at
    /// once) ends, cut to `deps.max_wait`. Answers at once when the index is 0 or older than
    /// `current`, the revision the caller just read.
    pub async fn wait(
        &self,
        deps: &WatchDeps,
        tenant: &TenantId,
        service: Option<&ServiceName>,
        current: Revision,
    ) -> Result<bool, ApiError> {
        let Some(index) = self.index else {
            return Ok(false);
        };
        if index == Revision::ZERO || index < current {
            return Ok(false);
        }
        let hub = &deps.hub;
        let wait = self.wait.unwrap_or(DEFAULT_WAIT).min(deps.max_wait);
        let jitter = wait.mul_f64(random_fraction() / 16.0);
        match tokio::time::timeout(wait + jitter, hub.wait(tenant, service, index)).await {
            Ok(result) => result?,
            Err(_elapsed) => {}
        }
        Ok(true)
    }
}

/// A number in `[0, 1)` from the process's random source (a v4 UUID's bits).
fn random_fraction() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// `10s`, `5m`, `500ms`, `1h` or plain seconds.
pub fn parse_wait(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => value.split_at(at),
        None => (value, "s"),
    };
    let number: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Adds `X-Hub-Index: revision`.
pub fn index_header(builder: &mut HttpResponseBuilder, revision: Revision) {
    builder.insert_header((INDEX_HEADER, revision.get().to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_as_consul_writes_them() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_wait("1.5s"), Some(Duration::from_millis(1500)));
        for bad in ["", "s", "10x", "-1s", "ten"] {
            assert_eq!(parse_wait(bad), None, "{bad}");
        }
        let f = random_fraction();
        assert!((0.0..1.0).contains(&f));
    }
}
