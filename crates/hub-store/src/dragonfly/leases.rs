//! The lease cache on Dragonfly: each tenant's heartbeat leases in a few hashes and a sorted set of expiries, every operation one atomic Lua script.
//!
//! Layout, per tenant (every key built by [`keys::key`], so all of them share
//! the tenant's Redis Cluster slot):
//!
//! | key                       | type | holds                                        |
//! |---------------------------|------|----------------------------------------------|
//! | `hub:{t}:lease:synced`    | str  | present while the tenant is synced           |
//! | `hub:{t}:lease:rec`       | hash | member → record (see below)                  |
//! | `hub:{t}:lease:status`    | hash | member → cached status                       |
//! | `hub:{t}:lease:ttl`       | hash | member → ttl in seconds                      |
//! | `hub:{t}:lease:rev`       | hash | member → revision of the record              |
//! | `hub:{t}:lease:hb`        | hash | member → last heartbeat, µs since the epoch  |
//! | `hub:{t}:lease:exp`       | zset | member scored by its expiry, µs since epoch  |
//! | `hub:{t}:lease:metrics`   | hash | member → latest reported metrics (JSON)      |
//! | `hub:{t}:lease:taken`     | hash | member → when its metrics were last taken, µs |
//!
//! A member is `service/instance` (neither name may contain `/`). A record is
//! the registration as the JSON envelope of a synthetic event (the tested
//! round trip of [`envelope`]), prefixed with `registered_at` in µs and a
//! space, because the envelope keeps times to the millisecond only; status,
//! lease times and revision come from their own fields.
//!
//! **Invariant:** every time is the caller's (`now` arguments), never the
//! server's clock, and is kept in whole microseconds: PostgreSQL keeps µs,
//! and the reaper's later `lease_expires_at <= judged` in PostgreSQL must see
//! exactly the expiry the cache judged. Scores of 16 decimal digits are exact
//! in a double until the year 2255.
//!
//! **Invariant:** every script is passed all nine keys of its tenant, in the
//! order above, whether it touches them or not: Dragonfly refuses keys a
//! script did not declare, and one fixed list keeps that true by
//! construction.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use fred::prelude::ClientLike;
use fred::types::FromValue;
use fred::types::scripts::Script;
use hub_core::domain::envelope;
use hub_core::lease::{CacheRenewal, CachedLease, DueLeases, LeaseCache, MetricSample};
use hub_core::{
    EventKind, HealthStatus, Heartbeat, HeartbeatMetrics, Instance, InstanceId, RegistryError,
    RegistryEvent, Revision, ServiceName, TenantId,
};

use super::Dragonfly;
use super::keys;

/// Most instances one refill, forget or conditional script handles: a
/// tenant of tens of thousands is written in several bounded scripts, so
/// that no single script blocks Dragonfly for long.
pub const CHUNK: usize = 500;

/// Most due leases one [`LeaseCache::due`] call returns (the earliest
/// expiries first); the rest come at the next reaper pass.
pub const DUE_CAP: usize = 10_000;

/// The names of a tenant's keys, in the order every script receives them.
const PARTS: [&str; 9] = [
    "synced", "rec", "status", "ttl", "rev", "hb", "exp", "metrics", "taken",
];

/// Shared by every script: names for the keys, and the two ways a lease is
/// written and dropped (so that no script forgets one of the fields).
const PRELUDE: &str = r"
local SYNCED, REC, STATUS, TTL, REV, HB, EXP, METRICS, TAKEN =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local function int(x) return string.format('%.0f', x) end
local function write(m, record, status, ttl, rev, hb, exp)
  redis.call('HSET', REC, m, record)
  redis.call('HSET', STATUS, m, status)
  redis.call('HSET', TTL, m, ttl)
  redis.call('HSET', REV, m, rev)
  redis.call('HSET', HB, m, hb)
  redis.call('ZADD', EXP, exp, m)
end
local function drop(m)
  redis.call('HDEL', REC, m)
  redis.call('HDEL', STATUS, m)
  redis.call('HDEL', TTL, m)
  redis.call('HDEL', REV, m)
  redis.call('HDEL', HB, m)
  redis.call('HDEL', METRICS, m)
  redis.call('HDEL', TAKEN, m)
  redis.call('ZREM', EXP, m)
end
local function unchanged(m, exp)
  local score = redis.call('ZSCORE', EXP, m)
  return score and tonumber(score) == tonumber(exp)
end
";

/// ARGV: member, reported status, now (µs), metrics JSON or '', the
/// revision whose record the caller already holds or ''. Nil on a miss (not
/// synced, unknown, other status); else record ('' when the caller holds
/// that revision's), ttl, revision.
const RENEW: &str = r"
if redis.call('EXISTS', SYNCED) == 0 then return false end
local m = ARGV[1]
if redis.call('HGET', STATUS, m) ~= ARGV[2] then return false end
local ttl = redis.call('HGET', TTL, m)
local rev = redis.call('HGET', REV, m)
if not ttl or not rev then return false end
local record = ''
if rev ~= ARGV[5] then
  record = redis.call('HGET', REC, m)
  if not record then return false end
end
redis.call('ZADD', EXP, int(tonumber(ARGV[3]) + tonumber(ttl) * 1000000), m)
redis.call('HSET', HB, m, ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', METRICS, m, ARGV[4]) end
return {record, ttl, rev}
";

/// ARGV: member, record, status, ttl, revision, last heartbeat, expiry.
/// Returns 1 if written, 0 if the cached record was newer.
const PUT: &str = r"
local m = ARGV[1]
local cached = redis.call('HGET', REV, m)
if cached then
  local have, new = tonumber(cached), tonumber(ARGV[5])
  if have > new then return 0 end
  if have == new then
    local score = redis.call('ZSCORE', EXP, m)
    if score and tonumber(score) >= tonumber(ARGV[7]) then return 0 end
  end
end
write(m, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
";

/// ARGV: groups of member, record, status, ttl, revision, last heartbeat,
/// expiry if added (floored), expiry as stored. Adds missing leases;
/// replaces older records, keeping the later expiry.
const REFILL: &str = r"
for i = 1, #ARGV, 8 do
  local m = ARGV[i]
  local cached = redis.call('HGET', REV, m)
  if not cached then
    write(m, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
  elseif tonumber(cached) < tonumber(ARGV[i + 4]) then
    local kept = tonumber(ARGV[i + 7])
    local score = tonumber(redis.call('ZSCORE', EXP, m) or '0')
    if score > kept then kept = score end
    write(m, ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], int(kept))
  end
end
return 1
";

/// Drops every lease of the tenant and its synced marker (metrics stay).
const CLEAR: &str = r"
redis.call('DEL', SYNCED, REC, STATUS, TTL, REV, HB, EXP)
return 1
";

/// Marks the tenant synced.
const MARK_SYNCED: &str = r"
redis.call('SET', SYNCED, '1')
return 1
";

/// Marks the tenant not synced.
const UNSYNC: &str = r"
redis.call('DEL', SYNCED)
return 1
";

/// 1 if the tenant is synced, else 0.
const SYNCED: &str = r"
return redis.call('EXISTS', SYNCED)
";

/// Every cached member of the tenant.
const MEMBERS: &str = r"
return redis.call('HKEYS', REC)
";

/// ARGV: members to drop.
const FORGET: &str = r"
for i = 1, #ARGV do drop(ARGV[i]) end
return 1
";

/// ARGV: now (µs), most leases to return. Returns the tenant's count of
/// leases, how many are due, then per due lease (earliest first) member,
/// expiry, status, ttl, last heartbeat ('' for a field that is missing).
const DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', EXP, '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {tostring(redis.call('HLEN', REC)), tostring(redis.call('ZCOUNT', EXP, '-inf', ARGV[1]))}
for i = 1, #due, 2 do
  local m = due[i]
  out[#out + 1] = m
  out[#out + 1] = int(tonumber(due[i + 1]))
  out[#out + 1] = redis.call('HGET', STATUS, m) or ''
  out[#out + 1] = redis.call('HGET', TTL, m) or ''
  out[#out + 1] = redis.call('HGET', HB, m) or ''
end
return out
";

/// ARGV: pairs of member and expiry (µs). Marks critical those whose cached
/// expiry is still the one given; returns their (1-based) pair numbers.
const MARK_CRITICAL: &str = r"
local out = {}
for i = 1, #ARGV, 2 do
  if unchanged(ARGV[i], ARGV[i + 1]) then
    redis.call('HSET', STATUS, ARGV[i], 'critical')
    out[#out + 1] = (i + 1) / 2
  end
end
return out
";

/// ARGV: pairs of member and expiry (µs). Drops those whose cached expiry
/// is still the one given.
const FORGET_UNRENEWED: &str = r"
for i = 1, #ARGV, 2 do
  if unchanged(ARGV[i], ARGV[i + 1]) then drop(ARGV[i]) end
end
return 1
";

/// ARGV: now, every (µs). Takes the latest metrics of each member whose
/// metrics were never taken or taken at least `every` ago; returns pairs of
/// member and metrics.
const TAKE_METRICS: &str = r"
local now, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local all = redis.call('HGETALL', METRICS)
local out = {}
for i = 1, #all, 2 do
  local m = all[i]
  local taken = redis.call('HGET', TAKEN, m)
  if not taken or tonumber(taken) + every <= now then
    redis.call('HDEL', METRICS, m)
    redis.call('HSET', TAKEN, m, ARGV[1])
    out[#out + 1] = m
    out[#out + 1] = all[i + 1]
  end
end
return out
";

/// The metrics not taken yet, left in place: member, JSON, member, JSON...
const PEEK_METRICS: &str = r"
return redis.call('HGETALL', METRICS)
";

/// The scripts, each with the prelude, loaded once per server (EVALSHA).
#[derive(Clone)]
struct Scripts {
    renew: Script,
    put: Script,
    refill: Script,
    clear: Script,
    mark_synced: Script,
    unsync: Script,
    synced: Script,
    members: Script,
    forget: Script,
    due: Script,
    mark_critical: Script,
    forget_unrenewed: Script,
    take_metrics: Script,
    peek_metrics: Script,
}

impl Scripts {
    fn new() -> Self {
        let script = |body: &str| Script::from_lua(format!("{PRELUDE}{body}"));
        Self {
            renew: script(RENEW),
            put: script(PUT),
            refill: script(REFILL),
            clear: script(CLEAR),
            mark_synced: script(MARK_SYNCED),
            unsync: script(UNSYNC),
            synced: script(SYNCED),
            members: script(MEMBERS),
            forget: script(FORGET),
            due: script(DUE),
            mark_critical: script(MARK_CRITICAL),
            forget_unrenewed: script(FORGET_UNRENEWED),
            take_metrics: script(TAKE_METRICS),
            peek_metrics: script(PEEK_METRICS),
        }
    }
}

/// Heartbeat leases shared by every replica through Dragonfly: the
/// [`LeaseCache`] of PostgreSQL mode.
///
/// Differences from [`hub_core::MemoryLeases`], none of which the contract
/// rules out: times are kept in whole microseconds (a renewal at a `now`
/// with nanoseconds returns it truncated); forgetting an instance also
/// forgets when its metrics were last taken (so that the hash does not grow
/// with every instance ever seen); [`LeaseCache::due`] returns at most
/// [`DUE_CAP`] leases (see there).
#[derive(Clone)]
pub struct DragonflyLeases {
    dragonfly: Dragonfly,
    scripts: Scripts,
    /// Records already decoded, by tenant and member, with their revision:
    /// a revision names one change, so its record never changes, and a
    /// renewal of an unchanged instance then carries and parses no record.
    decoded: Arc<RwLock<Decoded>>,
}

/// Decoded records by (tenant, member), with the revision each is of.
type Decoded = HashMap<(TenantId, String), (u64, Instance)>;

/// Decoded records kept before the memo is emptied and refilled (bounds
/// memory to that many instances' records).
const DECODED_CAPACITY: usize = 100_000;

impl std::fmt::Debug for DragonflyLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DragonflyLeases")
            .field("dragonfly", &self.dragonfly)
            .finish_non_exhaustive()
    }
}

/// `Unavailable` for the `leases` component.
fn unavailable(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> RegistryError {
    RegistryError::Unavailable {
        component: "leases",
        source: source.into(),
    }
}

/// An answer of a script this module did not expect (a bug, or keys
/// written by something else).
fn unexpected(what: String) -> RegistryError {
    RegistryError::Unexpected(what.into())
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(us)
}

fn ttl(seconds: u32) -> Duration {
    Duration::seconds(i64::from(seconds))
}

fn member(service: &ServiceName, instance: &InstanceId) -> String {
    format!("{}/{}", service.as_str(), instance.as_str())
}

fn member_of(instance: &Instance) -> String {
    member(instance.service_name(), instance.instance_id())
}

fn parse_member(m: &str) -> Option<(ServiceName, InstanceId)> {
    let (service, instance) = m.split_once('/')?;
    Some((
        ServiceName::restore(service).ok()?,
        InstanceId::restore(instance).ok()?,
    ))
}

/// The record of `instance` as cached: `registered_at` in µs, a space, the
/// envelope of a synthetic event about it.
fn encode_record(instance: &Instance) -> String {
    let event = RegistryEvent::new(
        EventKind::Updated,
        instance.clone(),
        None,
        instance.last_heartbeat(),
    );
    let json = String::from_utf8_lossy(&envelope::to_json(&event)).into_owned();
    format!("{} {json}", micros(instance.registered_at()))
}

/// The record back, with `registered_at` to the microsecond (its status,
/// lease times and revision are the envelope's, which callers replace).
fn decode_record(record: &str) -> Result<Instance, String> {
    let (registered, json) = record
        .split_once(' ')
        .ok_or_else(|| "no registered_at prefix".to_owned())?;
    let registered_at = registered
        .parse::<i64>()
        .ok()
        .and_then(from_micros)
        .ok_or_else(|| format!("registered_at {registered:?}"))?;
    let event = envelope::from_json(json.as_bytes()).map_err(|e| e.to_string())?;
    let i = event.instance();
    Ok(Instance::restore(
        i.tenant_id().clone(),
        i.registration().clone(),
        i.status(),
        registered_at,
        i.last_heartbeat(),
        i.lease_expires_at(),
        i.revision(),
    ))
}

fn encode_metrics(status: HealthStatus, metrics: &HeartbeatMetrics, now: DateTime<Utc>) -> String {
    serde_json::json!({
        "status": status.as_str(),
        "at": micros(now),
        "rt": metrics.response_time_ms(),
        "cpu": metrics.cpu_usage(),
        "mem": metrics.memory_usage(),
        "err": metrics.error_rate(),
    })
    .to_string()
}

fn decode_metrics(m: &str, json: &str) -> Result<MetricSample, String> {
    let (service, instance) = parse_member(m).ok_or_else(|| format!("member {m:?}"))?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let status = v["status"]
        .as_str()
        .and_then(|s| s.parse::<HealthStatus>().ok())
        .ok_or_else(|| "status".to_owned())?;
    let recorded_at = v["at"]
        .as_i64()
        .and_then(from_micros)
        .ok_or_else(|| "at".to_owned())?;
    let metrics = HeartbeatMetrics::new(
        v["rt"].as_f64(),
        v["cpu"].as_f64(),
        v["mem"].as_f64(),
        v["err"].as_f64(),
    )
    .map_err(|e| e.to_string())?;
    Ok(MetricSample {
        service,
        instance,
        status,
        metrics,
        recorded_at,
    })
}

/// The `total` to report when only `returned` of `due` run-out leases are
/// returned (the cap): scaled down so that `returned / total` is the share
/// `due / total` of the whole tenant (rounded towards holding), because
/// that share decides the mass-expiry hold. Unscaled when nothing was cut.
fn scaled_total(total: usize, due: usize, returned: usize) -> usize {
    if due > returned {
        (total.saturating_mul(returned) / due).max(returned)
    } else {
        total
    }
}

/// One due lease from the fields the `DUE` script answers: member, expiry,
/// status, ttl, last heartbeat.
fn parse_lease(fields: &[String]) -> Option<CachedLease> {
    let [m, exp, status, ttl_seconds, hb] = fields else {
        return None;
    };
    let (service, instance) = parse_member(m)?;
    Some(CachedLease {
        service,
        instance,
        status: status.parse().ok()?,
        ttl_seconds: ttl_seconds.parse().ok()?,
        last_heartbeat: hb.parse().ok().and_then(from_micros)?,
        expires_at: exp.parse().ok().and_then(from_micros)?,
    })
}

/// The ARGV of one lease as `write` in the prelude takes it (after the
/// member and before the expiry): record, status, ttl, revision, heartbeat.
fn lease_args(instance: &Instance) -> [String; 5] {
    [
        encode_record(instance),
        instance.status().as_str().to_owned(),
        instance.registration().ttl_seconds().to_string(),
        instance.revision().get().to_string(),
        micros(instance.last_heartbeat()).to_string(),
    ]
}

impl DragonflyLeases {
    /// The lease cache on a client.
    pub fn new(dragonfly: Dragonfly) -> Self {
        Self {
            dragonfly,
            scripts: Scripts::new(),
            decoded: Arc::default(),
        }
    }

    /// Runs `script` on the tenant's keys: EVALSHA, and SCRIPT LOAD again
    /// when the server answers NOSCRIPT (a restarted Dragonfly forgot it).
    async fn run<R: FromValue>(
        &self,
        script: &Script,
        tenant: &TenantId,
        args: Vec<String>,
    ) -> Result<R, RegistryError> {
        let client = self.dragonfly.client();
        if !client.is_connected() {
            return Err(unavailable("Dragonfly is not connected"));
        }
        let names: Vec<String> = PARTS
            .iter()
            .map(|part| keys::key(tenant, &["lease", part]))
            .collect();
        script
            .evalsha_with_reload(client, names, args)
            .await
            .map_err(unavailable)
    }

    /// Runs `script` once per chunk of `items`, each turned into its ARGV
    /// by `args`.
    async fn run_chunked<T>(
        &self,
        script: &Script,
        tenant: &TenantId,
        items: &[T],
        args: impl Fn(&T) -> Vec<String>,
    ) -> Result<(), RegistryError> {
        for chunk in items.chunks(CHUNK) {
            let argv: Vec<String> = chunk.iter().flat_map(&args).collect();
            let _: i64 = self.run(script, tenant, argv).await?;
        }
        Ok(())
    }

    /// The members `leases` name, paired with their expiry, for the
    /// conditional scripts.
    fn conditional_args(lease: &CachedLease) -> Vec<String> {
        vec![
            member(&lease.service, &lease.instance),
            micros(lease.expires_at).to_string(),
        ]
    }
}

#[async_trait]
impl LeaseCache for DragonflyLeases {
    async fn renew(
        &self,
        tenant: &TenantId,
        service: &ServiceName,
        instance: &InstanceId,
        heartbeat: &Heartbeat,
        now: DateTime<Utc>,
    ) -> Result<CacheRenewal, RegistryError> {
        let now_us = micros(now);
        let metrics = heartbeat
            .metrics()
            .map(|m| encode_metrics(heartbeat.status(), m, now))
            .unwrap_or_default();
        let key = (tenant.clone(), member(service, instance));
        let known = self
            .decoded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned();
        let args = vec![
            key.1.clone(),
            heartbeat.status().as_str().to_owned(),
            now_us.to_string(),
            metrics,
            known
                .as_ref()
                .map(|(revision, _)| revision.to_string())
                .unwrap_or_default(),
        ];
        let reply: Option<Vec<String>> = self.run(&self.scripts.renew, tenant, args).await?;
        let Some(reply) = reply else {
            return Ok(CacheRenewal::Miss);
        };
        let [text, ttl_seconds, revision] = reply.as_slice() else {
            return Err(unexpected(format!("renew answered {} values", reply.len())));
        };
        let decoded = (|| {
            let ttl_seconds = ttl_seconds.parse::<u32>().map_err(|e| e.to_string())?;
            let revision = revision.parse::<u64>().map_err(|e| e.to_string())?;
            let record = match known {
                Some((held, cached)) if text.is_empty() && held == revision => cached,
                _ => {
                    let record = decode_record(text)?;
                    let mut memo = self.decoded.write().unwrap_or_else(PoisonError::into_inner);
                    if memo.len() >= DECODED_CAPACITY {
                        memo.clear();
                    }
                    memo.insert(key.clone(), (revision, record.clone()));
                    record
                }
            };
            if ttl_seconds != record.registration().ttl_seconds() {
                return Err(format!("ttl {ttl_seconds} beside a record of another"));
            }
            let at = from_micros(now_us).ok_or_else(|| "now".to_owned())?;
            Ok::<_, String>(
                record
                    .renewed(at, heartbeat.status())
                    .with_revision(Revision::new(revision)),
            )
        })();
        match decoded {
            Ok(renewed) => Ok(CacheRenewal::Renewed(renewed)),
            Err(error) => {
                tracing::error!(
                    tenant = %tenant,
                    service = %service.as_str(),
                    instance = %instance.as_str(),
                    %error,
                    "cached lease record unreadable; the heartbeat goes to the store, which rewrites it"
                );
                Ok(CacheRenewal::Miss)
            }
        }
    }

    async fn put(&self, instance: &Instance) -> Result<(), RegistryError> {
        let mut args = vec![member_of(instance)];
        args.extend(lease_args(instance));
        args.push(micros(instance.lease_expires_at()).to_string());
        let _: i64 = self
            .run(&self.scripts.put, instance.tenant_id(), args)
            .await?;
        Ok(())
    }

    async fn forget(
        &self,
        tenant: &TenantId,
        instances: &[(ServiceName, InstanceId)],
    ) -> Result<(), RegistryError> {
        self.run_chunked(&self.scripts.forget, tenant, instances, |(s, i)| {
            vec![member(s, i)]
        })
        .await
    }

    async fn synced(&self, tenant: &TenantId) -> Result<bool, RegistryError> {
        let synced: i64 = self.run(&self.scripts.synced, tenant, Vec::new()).await?;
        Ok(synced == 1)
    }

    /// Not atomic as a whole (a tenant may be too large for one script):
    /// with `replace`, the tenant is un-synced and emptied first, so no
    /// heartbeat renews in the cache until the last chunk is written and
    /// the tenant marked synced; without, each chunk only adds or updates.
    async fn refill(
        &self,
        tenant: &TenantId,
        instances: &[Instance],
        floor: DateTime<Utc>,
        replace: bool,
    ) -> Result<(), RegistryError> {
        // Drop what the store no longer has, with its metrics.
        let cached: Vec<String> = self.run(&self.scripts.members, tenant, Vec::new()).await?;
        let present: HashSet<String> = instances.iter().map(member_of).collect();
        let gone: Vec<String> = cached
            .into_iter()
            .filter(|m| !present.contains(m))
            .collect();
        self.run_chunked(&self.scripts.forget, tenant, &gone, |m| vec![m.clone()])
            .await?;
        if replace {
            let _: i64 = self.run(&self.scripts.clear, tenant, Vec::new()).await?;
        }
        self.run_chunked(&self.scripts.refill, tenant, instances, |instance| {
            let floored = instance
                .lease_expires_at()
                .max(floor + ttl(instance.registration().ttl_seconds()));
            let mut args = vec![member_of(instance)];
            args.extend(lease_args(instance));
            args.push(micros(floored).to_string());
            args.push(micros(instance.lease_expires_at()).to_string());
            args
        })
        .await?;
        let _: i64 = self
            .run(&self.scripts.mark_synced, tenant, Vec::new())
            .await?;
        Ok(())
    }

    async fn unsync(&self, tenant: &TenantId) -> Result<(), RegistryError> {
        let _: i64 = self.run(&self.scripts.unsync, tenant, Vec::new()).await?;
        Ok(())
    }

    /// At most [`DUE_CAP`] leases, the earliest expiries first. When more
    /// are due, `total` is scaled down in proportion (`total × returned /
    /// due`), so that the share of run-out leases, which decides the
    /// mass-expiry hold, is the tenant's true share and not a cap's.
    async fn due(&self, tenant: &TenantId, now: DateTime<Utc>) -> Result<DueLeases, RegistryError> {
        let args = vec![micros(now).to_string(), DUE_CAP.to_string()];
        let reply: Vec<String> = self.run(&self.scripts.due, tenant, args).await?;
        let (Some(total), Some(due_count), rest) = (
            reply.first().and_then(|s| s.parse::<usize>().ok()),
            reply.get(1).and_then(|s| s.parse::<usize>().ok()),
            reply.get(2..).unwrap_or_default(),
        ) else {
            return Err(unexpected(format!("due answered {reply:?}")));
        };
        let mut leases = Vec::with_capacity(rest.len() / 5);
        for fields in rest.chunks(5) {
            let lease = parse_lease(fields);
            match lease {
                Some(lease) => leases.push(lease),
                None => tracing::error!(
                    tenant = %tenant,
                    fields = ?fields,
                    "cached lease unreadable; skipped (the store's own expiry covers it)"
                ),
            }
        }
        let total = scaled_total(total, due_count, rest.len() / 5);
        Ok(DueLeases { leases, total })
    }

    async fn mark_critical(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<Vec<CachedLease>, RegistryError> {
        let mut marked = Vec::new();
        for chunk in leases.chunks(CHUNK) {
            let args: Vec<String> = chunk.iter().flat_map(Self::conditional_args).collect();
            let numbers: Vec<i64> = self.run(&self.scripts.mark_critical, tenant, args).await?;
            for n in numbers {
                let lease = usize::try_from(n)
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .and_then(|i| chunk.get(i))
                    .ok_or_else(|| unexpected(format!("mark_critical answered {n}")))?;
                marked.push(lease.clone());
            }
        }
        Ok(marked)
    }

    async fn forget_unrenewed(
        &self,
        tenant: &TenantId,
        leases: &[CachedLease],
    ) -> Result<(), RegistryError> {
        self.run_chunked(
            &self.scripts.forget_unrenewed,
            tenant,
            leases,
            Self::conditional_args,
        )
        .await
    }

    async fn take_metrics(
        &self,
        tenant: &TenantId,
        now: DateTime<Utc>,
        every: Duration,
    ) -> Result<Vec<MetricSample>, RegistryError> {
        let every_us = every.num_microseconds().unwrap_or(i64::MAX).max(0);
        let args = vec![micros(now).to_string(), every_us.to_string()];
        let reply: Vec<String> = self.run(&self.scripts.take_metrics, tenant, args).await?;
        decode_samples(tenant, &reply)
    }

    async fn peek_metrics(&self, tenant: &TenantId) -> Result<Vec<MetricSample>, RegistryError> {
        let reply: Vec<String> = self
            .run(&self.scripts.peek_metrics, tenant, Vec::new())
            .await?;
        decode_samples(tenant, &reply)
    }
}

/// Samples from a script's `member, JSON, ...` answer; an unreadable one is
/// logged and skipped.
fn decode_samples(tenant: &TenantId, reply: &[String]) -> Result<Vec<MetricSample>, RegistryError> {
    let mut samples = Vec::with_capacity(reply.len() / 2);
    for pair in reply.chunks(2) {
        let [m, json] = pair else {
            return Err(unexpected("a metrics script answered an odd count".into()));
        };
        match decode_metrics(m, json) {
            Ok(sample) => samples.push(sample),
            Err(error) => tracing::error!(
                tenant = %tenant,
                member = %m,
                %error,
                "cached heartbeat metrics unreadable; skipped"
            ),
        }
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_due_keeps_the_tenants_share_of_run_out_leases() {
        assert_eq!(scaled_total(50, 3, 3), 50, "nothing cut");
        // 30 000 of 50 000 ran out; 10 000 returned: still 60 %.
        assert_eq!(scaled_total(50_000, 30_000, 10_000), 16_666);
        let policy = hub_core::MassExpiry::default();
        assert!(policy.holds(10_000, scaled_total(50_000, 30_000, 10_000)));
        assert!(!policy.holds(10_000, scaled_total(50_000, 20_000, 10_000)));
    }

    #[test]
    fn records_and_members_round_trip() {
        let at = DateTime::from_timestamp_micros(1_800_000_000_123_457).unwrap_or_default();
        let whole = DateTime::from_timestamp(1_800_000_100, 0).unwrap_or_default();
        let registration = hub_core::Registration::try_from(hub_core::RegistrationInput {
            service_name: "billing".into(),
            instance_id: Some("b-1".into()),
            host: "10.0.0.7".into(),
            port: 8080,
            ..Default::default()
        })
        .unwrap();
        let instance = Instance::restore(
            TenantId::parse("t").unwrap(),
            registration,
            HealthStatus::Passing,
            at,
            whole,
            whole + ttl(30),
            Revision::new(9),
        );
        // The envelope keeps milliseconds: registered_at, kept apart, keeps
        // its microseconds; the lease times come from their own fields.
        assert_eq!(
            decode_record(&encode_record(&instance)),
            Ok(instance.clone())
        );
        assert_eq!(
            parse_member(&member_of(&instance)),
            Some((
                instance.service_name().clone(),
                instance.instance_id().clone()
            ))
        );
        assert!(decode_record("garbage").is_err());
    }
}
