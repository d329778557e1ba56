//! What a phase sends: every request built before the clock starts (registrations, heartbeats, lookups, health).

use std::net::SocketAddr;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};

use crate::bench::names::{
    API_KEY, REGISTER_PREFIX, SERVICES_PER_TENANT, TENANT_PREFIX, TENANTS, instance_id,
    service_name, tenant_name,
};
use crate::bench::options::Options;

/// The phases of one run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Register,
    Lookup,
    Health,
}

/// Where the health figures are in `Phase::ALL` order.
pub(crate) const HEALTH: usize = 2;

impl Phase {
    pub(crate) const ALL: [Self; 3] = [Self::Register, Self::Lookup, Self::Health];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Lookup => "lookup",
            Self::Health => "health",
        }
    }
}

/// The content type of the hub's request bodies.
pub(crate) const JSON: &str = "application/json";

/// Everything a phase sends, built before the clock starts so that the load
/// generator spends its share of the cores on sending, not formatting.
#[derive(Debug)]
pub(crate) struct Workload {
    pub(crate) method: Method,
    pub(crate) host: HeaderValue,
    /// The content type of the requests that have a body.
    pub(crate) content_type: HeaderValue,
    /// Request `i` uses `targets[i % targets.len()]`.
    pub(crate) targets: Vec<Target>,
    /// How the requests that name a tenant authenticate.
    pub(crate) credential: Credential,
}

/// How a workload's tenant requests authenticate: the operator key every
/// server is started with, unless a phase measures another kind (the auth
/// phase: a database key, a JWT).
#[derive(Debug, Clone, Default)]
pub(crate) enum Credential {
    /// `X-API-Key: ` [`API_KEY`].
    #[default]
    OperatorKey,
    /// `X-API-Key` with this value.
    ApiKey(HeaderValue),
    /// `Authorization` with this value (`Bearer <jwt>`).
    Authorization(HeaderValue),
}

#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) uri: Uri,
    pub(crate) tenant: Option<HeaderValue>,
    pub(crate) body: Bytes,
}

impl Workload {
    pub(crate) fn new(phase: Phase, options: &Options, addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let (method, targets) = match phase {
            Phase::Register => {
                return Self::registrations(
                    addr,
                    options.registrations,
                    REGISTER_PREFIX,
                    TENANT_PREFIX,
                );
            }
            Phase::Lookup => return Self::lookups(addr, TENANT_PREFIX),
            Phase::Health => {
                let target = Target {
                    uri: Uri::from_static("/health"),
                    tenant: None,
                    body: Bytes::new(),
                };
                (Method::GET, vec![target])
            }
        };
        Ok(Self {
            content_type: HeaderValue::from_static(JSON),
            method,
            host,
            targets,
            credential: Credential::OperatorKey,
        })
    }

    /// Lookups of every service of every tenant named `{tenants}NNN`, round
    /// robin over tenants first, then services.
    pub(crate) fn lookups(addr: SocketAddr, tenants: &str) -> anyhow::Result<Self> {
        Self::lookups_over(addr, tenants, SERVICES_PER_TENANT)
    }

    /// [`Workload::lookups`] over `services` services per tenant (the larger
    /// registry has 100).
    pub(crate) fn lookups_over(
        addr: SocketAddr,
        tenants: &str,
        services: usize,
    ) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let targets = (0..TENANTS * services)
            .map(|i| {
                let path = format!("/api/v1/discovery/services/{}", service_name(i / TENANTS));
                Ok(Target {
                    uri: Uri::try_from(path)?,
                    tenant: Some(HeaderValue::from_str(&tenant_name(tenants, i % TENANTS))?),
                    body: Bytes::new(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            content_type: HeaderValue::from_static(JSON),
            method: Method::GET,
            host,
            targets,
            credential: Credential::OperatorKey,
        })
    }

    /// Where registration `i` of [`Workload::registrations`] goes: its
    /// tenant, service and instance number within the service.
    /// `services` is the number of services per tenant.
    pub(crate) fn placement(i: usize, services: usize) -> (usize, usize, usize) {
        let tenant = i % TENANTS;
        let rest = i / TENANTS;
        (tenant, rest % services, rest / services)
    }

    /// `count` registrations of distinct instances, instance `i` named
    /// `{prefix}-{i:05}`, of the tenants named `{tenants}NNN`. Instance `i`
    /// goes to tenant `i % 100`, then service, then instance number, so every
    /// tenant gets 10 services with an equal share of instances each.
    pub(crate) fn registrations(
        addr: SocketAddr,
        count: usize,
        prefix: &str,
        tenants: &str,
    ) -> anyhow::Result<Self> {
        Self::registrations_over(addr, count, prefix, tenants, SERVICES_PER_TENANT)
    }

    /// [`Workload::registrations`] spread over `services` services per
    /// tenant.
    pub(crate) fn registrations_over(
        addr: SocketAddr,
        count: usize,
        prefix: &str,
        tenants: &str,
        services: usize,
    ) -> anyhow::Result<Self> {
        Self::per_instance(
            addr,
            "/api/v1/discovery/register",
            count,
            tenants,
            services,
            |i, placement| registration_body(prefix, i, placement),
        )
    }

    /// A heartbeat for each of the `count` instances of
    /// [`Workload::registrations`] with the same `prefix` and `tenants`, in
    /// the same order (round robin over the tenants), without a status or
    /// metrics: a plain lease renewal.
    pub(crate) fn heartbeats(
        addr: SocketAddr,
        count: usize,
        prefix: &str,
        tenants: &str,
    ) -> anyhow::Result<Self> {
        Self::per_instance(
            addr,
            "/api/v1/discovery/heartbeat",
            count,
            tenants,
            SERVICES_PER_TENANT,
            |i, (_, service, _)| {
                serde_json::json!({
                    "service_name": service_name(service),
                    "instance_id": instance_id(prefix, i),
                })
            },
        )
    }

    /// One POST to `path` per instance `i < count`, as the tenant of its
    /// [`Workload::placement`] over `services` services per tenant, with the body `body(i, placement)`.
    pub(crate) fn per_instance(
        addr: SocketAddr,
        path: &'static str,
        count: usize,
        tenants: &str,
        services: usize,
        body: impl Fn(usize, (usize, usize, usize)) -> serde_json::Value,
    ) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let uri = Uri::from_static(path);
        let targets = (0..count)
            .map(|i| {
                let placement = Self::placement(i, services);
                Ok(Target {
                    uri: uri.clone(),
                    tenant: Some(HeaderValue::from_str(&tenant_name(tenants, placement.0))?),
                    body: Bytes::from(body(i, placement).to_string()),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            content_type: HeaderValue::from_static(JSON),
            method: Method::POST,
            host,
            targets,
            credential: Credential::OperatorKey,
        })
    }

    pub(crate) fn request(&self, index: usize) -> anyhow::Result<Request<Full<Bytes>>> {
        let target = self
            .targets
            .get(index % self.targets.len().max(1))
            .context("a workload without requests")?;
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(target.uri.clone())
            .header(HOST, self.host.clone());
        if let Some(tenant) = &target.tenant {
            request = match &self.credential {
                Credential::OperatorKey => {
                    request.header("x-api-key", HeaderValue::from_static(API_KEY))
                }
                Credential::ApiKey(key) => request.header("x-api-key", key.clone()),
                Credential::Authorization(value) => request.header(AUTHORIZATION, value.clone()),
            }
            .header("x-tenant-id", tenant.clone());
        }
        if !target.body.is_empty() {
            request = request.header(CONTENT_TYPE, self.content_type.clone());
        }
        Ok(request.body(Full::new(target.body.clone()))?)
    }
}

/// The body of registration `i` of instances named `{prefix}-NNNNN` at
/// `(tenant, service, instance)`: what the hub gets, and what the peers store
/// as the value of their key.
pub(crate) fn registration_body(
    prefix: &str,
    i: usize,
    (tenant, service, instance): (usize, usize, usize),
) -> serde_json::Value {
    // TTL is the maximum so no lease expires, and no instance turns
    // critical, while the run is going.
    serde_json::json!({
        "service_name": service_name(service),
        "instance_id": instance_id(prefix, i),
        "host": format!("10.{tenant}.{service}.{instance}"),
        "port": 8080,
        "tags": ["bench"],
        "metadata": { "zone": "a" },
        "ttl_seconds": 3600,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn body(workload: &Workload, i: usize) -> (String, serde_json::Value) {
        let target = &workload.targets[i];
        let tenant = target.tenant.as_ref().unwrap().to_str().unwrap().to_owned();
        (tenant, serde_json::from_slice(&target.body).unwrap())
    }

    /// Each credential puts its own header on the requests that name a
    /// tenant, and only that one: the auth phase must measure the credential
    /// it names, not the operator key beside it.
    #[test]
    fn the_credential_decides_the_auth_header() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let header = |credential: Credential, name: &str| {
            let mut workload = Workload::lookups(addr, "bench-t").unwrap();
            workload.credential = credential;
            let request = workload.request(0).unwrap();
            assert_eq!(request.headers()["x-tenant-id"], "bench-t000");
            request
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap().to_owned())
        };
        assert_eq!(
            header(Credential::OperatorKey, "x-api-key").as_deref(),
            Some(API_KEY)
        );
        let key = HeaderValue::from_static("hubk_0123_abcd");
        assert_eq!(
            header(Credential::ApiKey(key.clone()), "x-api-key").as_deref(),
            Some("hubk_0123_abcd")
        );
        assert_eq!(header(Credential::ApiKey(key), "authorization"), None);
        let bearer = HeaderValue::from_static("Bearer a.b.c");
        assert_eq!(
            header(Credential::Authorization(bearer.clone()), "authorization").as_deref(),
            Some("Bearer a.b.c")
        );
        assert_eq!(header(Credential::Authorization(bearer), "x-api-key"), None);
    }

    /// Heartbeat `i` renews the instance registration `i` created (same
    /// tenant, service and instance id), so the heartbeat phase never meets
    /// a 404, and it carries no status (a plain renewal).
    #[test]
    fn heartbeats_name_the_registered_instances() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 1));
        let count = 2000;
        let tenants = "bench-0a1b2c3d-t";
        let registrations = Workload::registrations(addr, count, REGISTER_PREFIX, tenants).unwrap();
        let heartbeats = Workload::heartbeats(addr, count, REGISTER_PREFIX, tenants).unwrap();
        assert_eq!(heartbeats.method, Method::POST);
        assert_eq!(heartbeats.targets.len(), count);
        let mut seen = std::collections::HashSet::new();
        for i in [0, 1, 99, 100, 999, 1000, 1999] {
            let (reg_tenant, registration) = body(&registrations, i);
            let (hb_tenant, heartbeat) = body(&heartbeats, i);
            assert_eq!(hb_tenant, reg_tenant);
            assert!(hb_tenant.starts_with(tenants));
            assert_eq!(heartbeat["service_name"], registration["service_name"]);
            assert_eq!(heartbeat["instance_id"], registration["instance_id"]);
            assert!(heartbeat.get("status").is_none());
            assert_eq!(
                heartbeats.targets[i].uri.path(),
                "/api/v1/discovery/heartbeat"
            );
            seen.insert(heartbeat["instance_id"].to_string());
        }
        assert_eq!(seen.len(), 7, "heartbeats of distinct instances");
        // Round robin over the 100 tenants.
        assert_ne!(body(&heartbeats, 0).0, body(&heartbeats, 1).0);
        assert_eq!(body(&heartbeats, 0).0, body(&heartbeats, 100).0);
    }
}
