//! The shared rate limiter: one atomic Lua GCRA script over the tenant's and the key's budgets, so that every replica draws from the same budgets.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::ClientLike;
use fred::types::scripts::Script;
use hub_core::ratelimit::{RateDecision, RateLimitError, RateLimiter, RateRequest, combine};

use super::Dragonfly;
use super::keys;

/// GCRA over up to two budgets, atomically: the request passes only if every
/// budget has room, and then (only then) every budget is charged. Each key
/// holds its budget's "theoretical arrival time" in microseconds of the
/// server's clock (one clock for all replicas); it expires once the budget is
/// full again. Every key is passed in KEYS: Dragonfly refuses undeclared ones.
/// ARGV, per key: the emission interval and the burst (microseconds, count).
/// Returns, per key: allowed (0/1), remaining, reset and retry-after (µs).
pub const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local all = 1
local out = {}
local new_tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local cap = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  local new_tat = tat + interval
  local ahead = new_tat - now
  if ahead > cap then
    all = 0
    out[4 * i - 3] = 0
    out[4 * i - 2] = 0
    out[4 * i - 1] = tat - now
    out[4 * i] = ahead - cap
  else
    out[4 * i - 3] = 1
    out[4 * i - 2] = math.floor((cap - ahead) / interval)
    out[4 * i - 1] = ahead
    out[4 * i] = 0
  end
  new_tats[i] = new_tat
end
if all == 1 then
  for i = 1, #KEYS do
    local ttl = math.ceil((new_tats[i] - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%d', new_tats[i]), 'PX', ttl)
  end
end
return out
";

/// Rate limits shared by every replica through Dragonfly.
#[derive(Clone)]
pub struct DragonflyLimiter {
    dragonfly: Dragonfly,
    script: Script,
}

impl std::fmt::Debug for DragonflyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DragonflyLimiter")
            .field("dragonfly", &self.dragonfly)
            .finish_non_exhaustive()
    }
}

impl DragonflyLimiter {
    /// A limiter on a client.
    pub fn new(dragonfly: Dragonfly) -> Self {
        Self {
            dragonfly,
            script: Script::from_lua(GCRA_SCRIPT),
        }
    }
}

fn micros(d: i64) -> Duration {
    Duration::from_micros(u64::try_from(d).unwrap_or(0))
}

#[async_trait]
impl RateLimiter for DragonflyLimiter {
    async fn check(&self, request: &RateRequest) -> Result<RateDecision, RateLimitError> {
        let client = self.dragonfly.client();
        if !client.is_connected() {
            return Err(RateLimitError("Dragonfly is not connected".into()));
        }
        let budgets: Vec<(String, _)> = request
            .budgets
            .iter()
            .map(|(name, quota)| (keys::key(&request.tenant, &["rl", name]), *quota))
            .collect();
        let mut args: Vec<i64> = Vec::with_capacity(budgets.len() * 2);
        for (_, quota) in &budgets {
            let interval = i64::try_from(quota.interval().as_micros()).unwrap_or(i64::MAX);
            args.push(interval.max(1));
            args.push(i64::from(quota.burst.max(1)));
        }
        let names: Vec<String> = budgets.iter().map(|(k, _)| k.clone()).collect();
        // EVALSHA, and SCRIPT LOAD again when the server answers NOSCRIPT
        // (a restarted, empty Dragonfly has forgotten the script).
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(client, names, args)
            .await
            .map_err(|e| RateLimitError(e.to_string()))?;
        if reply.len() != budgets.len() * 4 {
            return Err(RateLimitError(format!(
                "unexpected script reply of {} values",
                reply.len()
            )));
        }
        let decisions = reply
            .chunks(4)
            .zip(&budgets)
            .map(|(r, (_, quota))| RateDecision {
                allowed: r[0] == 1,
                limit: quota.burst,
                remaining: u32::try_from(r[1]).unwrap_or(0),
                reset: micros(r[2]),
                retry_after: micros(r[3]),
            });
        decisions
            .reduce(combine)
            .ok_or_else(|| RateLimitError("no budget in the request".into()))
    }
}
