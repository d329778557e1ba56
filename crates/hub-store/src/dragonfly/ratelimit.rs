//! The shared rate limiter: one atomic Lua GCRA script over the tenant's and the key's budgets, so that every replica draws from the same budgets; it grants a batch of requests at once, which `Limits` in hub-core spends locally.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::ClientLike;
use fred::types::scripts::Script;
use hub_core::ratelimit::{Grant, RateDecision, RateLimitError, RateLimiter, RateRequest, combine};

use super::Dragonfly;
use super::keys;

/// GCRA over up to two budgets, atomically, for a batch of requests ("cells"):
/// it grants as many of the cells asked for as every budget has room for
/// (all of them, or fewer down to 1), and charges every budget that many at
/// once (the "theoretical arrival time" moves ahead by cells × interval); when
/// not even one fits, it charges nothing. Each key holds its budget's
/// theoretical arrival time in microseconds of the server's clock (one clock
/// for all replicas); it expires once the budget is full again. Every key is
/// passed in KEYS: Dragonfly refuses undeclared ones.
/// ARGV, per key: the emission interval and the burst (microseconds, count);
/// then, last, the cells asked for.
/// Returns the cells granted (0: refused), then per key: allowed (0/1),
/// remaining, reset and retry-after (µs), after the whole grant; when
/// refused, each key's figures are those of a single request.
pub const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local grant = tonumber(ARGV[2 * #KEYS + 1])
local tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local cap = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local fit = math.floor((cap - (tat - now)) / interval)
  if fit < grant then grant = fit end
end
if grant < 0 then grant = 0 end
local out = {grant}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local cap = interval * tonumber(ARGV[2 * i])
  local tat = tats[i]
  local charged = grant
  if charged == 0 then charged = 1 end
  local new_tat = tat + charged * interval
  local ahead = new_tat - now
  if ahead > cap then
    out[4 * i - 2] = 0
    out[4 * i - 1] = 0
    out[4 * i] = tat - now
    out[4 * i + 1] = ahead - cap
  else
    out[4 * i - 2] = 1
    out[4 * i - 1] = math.floor((cap - ahead) / interval)
    out[4 * i] = ahead
    out[4 * i + 1] = 0
  end
  if grant > 0 then
    local ttl = math.ceil(ahead / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%d', new_tat), 'PX', ttl)
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

impl DragonflyLimiter {
    /// Runs the script for `cells` requests of `request`.
    async fn run(&self, request: &RateRequest, cells: u32) -> Result<Grant, RateLimitError> {
        let client = self.dragonfly.client();
        if !client.is_connected() {
            return Err(RateLimitError("Dragonfly is not connected".into()));
        }
        let names: Vec<String> = request
            .budgets
            .iter()
            .map(|(name, _)| keys::key(&request.tenant, &["rl", name]))
            .collect();
        let mut args: Vec<i64> = Vec::with_capacity(request.budgets.len() * 2 + 1);
        for (_, quota) in &request.budgets {
            let interval = i64::try_from(quota.interval().as_micros()).unwrap_or(i64::MAX);
            args.push(interval.max(1));
            args.push(i64::from(quota.burst.max(1)));
        }
        args.push(i64::from(cells.max(1)));
        // EVALSHA, and SCRIPT LOAD again when the server answers NOSCRIPT
        // (a restarted, empty Dragonfly has forgotten the script).
        let reply: Vec<i64> = self
            .script
            .evalsha_with_reload(client, names, args)
            .await
            .map_err(|e| RateLimitError(e.to_string()))?;
        let Some((&granted, per_key)) = reply.split_first() else {
            return Err(RateLimitError("empty script reply".into()));
        };
        if per_key.len() != request.budgets.len() * 4 {
            return Err(RateLimitError(format!(
                "unexpected script reply of {} values",
                reply.len()
            )));
        }
        let decision = per_key
            .chunks(4)
            .zip(&request.budgets)
            .map(|(r, (_, quota))| RateDecision {
                allowed: r[0] == 1,
                limit: quota.burst,
                remaining: u32::try_from(r[1]).unwrap_or(0),
                reset: micros(r[2]),
                retry_after: micros(r[3]),
            })
            .reduce(combine)
            .ok_or_else(|| RateLimitError("no budget in the request".into()))?;
        let cells = u32::try_from(granted).unwrap_or(0);
        Ok(Grant {
            cells,
            decision: RateDecision {
                allowed: cells > 0,
                ..decision
            },
        })
    }
}

#[async_trait]
impl RateLimiter for DragonflyLimiter {
    async fn check(&self, request: &RateRequest) -> Result<RateDecision, RateLimitError> {
        Ok(self.run(request, 1).await?.decision)
    }

    async fn take(&self, request: &RateRequest, cells: u32) -> Result<Grant, RateLimitError> {
        self.run(request, cells).await
    }
}
