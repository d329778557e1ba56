//! `cargo xtask seed`: loads a demo data set (three tenants of a trading platform, a dozen services each) through the public HTTP API of a running hub.
//!
//! Going through the API rather than SQL means the seed works on every store
//! (embedded or PostgreSQL), gets the same validation, revisions and audit
//! rows as real clients, and needs no database credentials. Registration is
//! an upsert keyed by (tenant, service name, instance id), so running the
//! seed again updates the same instances instead of adding new ones.

use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

const USAGE: &str = "usage: cargo xtask seed [options]

Registers a demo data set through the HTTP API of a running hub: tenants acme,
globex and initech, with the same twelve services of a trading platform each
(hosts, ports, protocols, tags, metadata; ttl_seconds 3600, so the demo does
not expire at once). Running it again updates the same instances.

options:
  --url URL        the hub (default http://127.0.0.1:7000; plain http only)
  --api-key KEY    an operator key, or one bound to all three tenants (default:
                   the HUB_KEY variable, else the first operator key of
                   CENTRAL_HUB_API_KEYS, else its first key)
  -h, --help       this text";

const DEFAULT_URL: &str = "http://127.0.0.1:7000";

/// Every request gets this long; a hub that takes longer is reported.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease of the demo instances: the longest the API allows, so the data
/// stays `passing` for an hour without heartbeats.
const TTL_SECONDS: u32 = 3600;

/// A tenant of the demo and where its services run.
struct Tenant {
    id: &'static str,
    region: &'static str,
    /// Second octet of the tenant's private network.
    subnet: u8,
}

const TENANTS: [Tenant; 3] = [
    Tenant {
        id: "acme",
        region: "eu-west-1",
        subnet: 10,
    },
    Tenant {
        id: "globex",
        region: "us-east-1",
        subnet: 20,
    },
    Tenant {
        id: "initech",
        region: "ap-southeast-1",
        subnet: 30,
    },
];

/// A service of the demo platform, the same in every tenant.
struct Service {
    name: &'static str,
    port: u16,
    protocol: &'static str,
    health_endpoint: &'static str,
    version: &'static str,
    tags: &'static [&'static str],
    team: &'static str,
    tier: &'static str,
    description: &'static str,
}

const SERVICES: [Service; 12] = [
    Service {
        name: "api-gateway",
        port: 8000,
        protocol: "https",
        health_endpoint: "/health",
        version: "2.4.1",
        tags: &["edge", "public"],
        team: "platform",
        tier: "critical",
        description: "public entry point: routing, TLS, rate limits",
    },
    Service {
        name: "auth",
        port: 8001,
        protocol: "http",
        health_endpoint: "/health",
        version: "1.9.0",
        tags: &["security", "internal"],
        team: "identity",
        tier: "critical",
        description: "accounts, sessions and API tokens",
    },
    Service {
        name: "mt5-connector",
        port: 8443,
        protocol: "tcp",
        health_endpoint: "/health",
        version: "5.0.37",
        tags: &["broker", "mt5", "trading"],
        team: "connectivity",
        tier: "critical",
        description: "bridge to the MetaTrader 5 trading servers",
    },
    Service {
        name: "market-data",
        port: 9300,
        protocol: "ws",
        health_endpoint: "/health",
        version: "3.2.0",
        tags: &["market-data", "streaming"],
        team: "market-data",
        tier: "critical",
        description: "normalised quotes and ticks, streamed to clients",
    },
    Service {
        name: "signal-engine",
        port: 9000,
        protocol: "grpc",
        health_endpoint: "/healthz",
        version: "0.14.2",
        tags: &["trading", "strategy"],
        team: "quant",
        tier: "standard",
        description: "turns market data into trading signals",
    },
    Service {
        name: "risk-engine",
        port: 9200,
        protocol: "grpc",
        health_endpoint: "/healthz",
        version: "1.6.0",
        tags: &["trading", "risk"],
        team: "risk",
        tier: "critical",
        description: "pre-trade limits and exposure checks",
    },
    Service {
        name: "order-router",
        port: 9100,
        protocol: "grpc",
        health_endpoint: "/healthz",
        version: "2.0.5",
        tags: &["trading", "execution"],
        team: "execution",
        tier: "critical",
        description: "routes orders to brokers and venues",
    },
    Service {
        name: "notification",
        port: 8025,
        protocol: "http",
        health_endpoint: "/health",
        version: "1.3.4",
        tags: &["messaging"],
        team: "platform",
        tier: "standard",
        description: "e-mail, push and webhook notifications",
    },
    Service {
        name: "analytics",
        port: 8088,
        protocol: "http",
        health_endpoint: "/health",
        version: "0.9.8",
        tags: &["data", "batch"],
        team: "data",
        tier: "standard",
        description: "trade and performance analytics",
    },
    Service {
        name: "billing",
        port: 8090,
        protocol: "https",
        health_endpoint: "/health",
        version: "1.1.0",
        tags: &["finance"],
        team: "finance",
        tier: "standard",
        description: "subscriptions, invoices and fees",
    },
    Service {
        name: "reporting",
        port: 8091,
        protocol: "http",
        health_endpoint: "/health",
        version: "1.4.2",
        tags: &["finance", "data"],
        team: "data",
        tier: "standard",
        description: "statements and regulatory reports",
    },
    Service {
        name: "scheduler",
        port: 8092,
        protocol: "http",
        health_endpoint: "/health",
        version: "0.7.1",
        tags: &["ops", "cron"],
        team: "platform",
        tier: "standard",
        description: "periodic jobs: end-of-day, rollovers, clean-ups",
    },
];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(seed(&options))
}

/// Command-line options, with the environment's defaults applied.
#[derive(Debug)]
struct Options {
    hub: Hub,
    api_key: Option<String>,
}

impl Options {
    /// `Ok(None)` means help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut url = None;
        let mut api_key = None;
        // Both `--flag value` and `--flag=value` are accepted.
        let mut flags = crate::args::Flags::new(args, USAGE);
        while let Some((flag, inline)) = flags.next_flag() {
            let mut value = || flags.value(flag, inline);
            match flag {
                "--url" => url = Some(value()?),
                "--api-key" => api_key = Some(value()?),
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        let hub = Hub::parse(url.as_deref().unwrap_or(DEFAULT_URL))?;
        let api_key = api_key
            .filter(|k| !k.is_empty())
            .or_else(|| std::env::var("HUB_KEY").ok().filter(|k| !k.is_empty()))
            .or_else(|| {
                std::env::var("CENTRAL_HUB_API_KEYS")
                    .ok()
                    .and_then(|keys| key_from_list(&keys))
            });
        Ok(Some(Self { hub, api_key }))
    }
}

/// The key to use from a `CENTRAL_HUB_API_KEYS` list: the first operator
/// key (an entry without `:`, or ending in `:*`), which may act for every
/// demo tenant, else the first key at all (the hub then says which tenant it
/// refuses). As the hub reads it, an entry splits at its last `:`.
fn key_from_list(list: &str) -> Option<String> {
    let entries: Vec<(&str, Option<&str>)> = list
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.rsplit_once(':') {
            None => (e, None),
            Some((key, scope)) => (key.trim(), Some(scope.trim())),
        })
        .collect();
    entries
        .iter()
        .find(|(_, scope)| matches!(scope, None | Some("*")))
        .or_else(|| entries.first())
        .map(|(key, _)| (*key).to_owned())
        .filter(|k| !k.is_empty())
}

/// Where the hub listens: `http://host[:port]`.
#[derive(Debug)]
struct Hub {
    host: String,
    port: u16,
    /// The `Host` header: the authority as given.
    authority: String,
}

impl Hub {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => bail!(
                "--url {url:?}: https is not supported by this seed client; use the hub's plain http address"
            ),
            _ => bail!("--url {url:?} must start with http://"),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            bail!("--url {url:?} must be the hub's root, like {DEFAULT_URL}");
        }
        let authority = uri
            .authority()
            .with_context(|| format!("--url {url:?} has no host"))?;
        // An IPv6 literal comes bracketed; the socket address wants it bare.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("http://{}", self.authority)
    }
}

/// One keep-alive HTTP/1.1 connection to the hub (the seed is a few dozen
/// requests sent one after another; a pool would add nothing).
struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(hub: &Hub) -> anyhow::Result<Self> {
        let stream = tokio::time::timeout(
            REQUEST_TIMEOUT,
            TcpStream::connect((hub.host.as_str(), hub.port)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
        .and_then(|connected| connected.map_err(anyhow::Error::new))
        .with_context(|| {
            format!(
                "the hub at {} is not reachable; is hub-server running there? (--url sets the address)",
                hub.url()
            )
        })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP/1.1 handshake with the hub")?;
        // A connection error also fails the next `send_request`, which is
        // where it is reported.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }

    /// Sends one request and returns the status and the JSON answer.
    async fn send(
        &mut self,
        hub: &Hub,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, hub.authority.as_str());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(json.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body))?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
            .and_then(|answer| answer)
            .with_context(|| format!("{method} {}{path}", hub.url()))?;
        // Error bodies are JSON too; anything else is kept as text so the
        // message can show it.
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, json))
    }
}

/// The message of an error answer (`{"error":{"code","message"}}`), or the
/// whole body if it is not one.
fn describe_error(status: u16, body: &Value) -> String {
    match body.get("error") {
        Some(error) => format!(
            "{status} {}: {}",
            error.get("code").and_then(Value::as_str).unwrap_or("?"),
            error.get("message").and_then(Value::as_str).unwrap_or("?")
        ),
        None => format!("{status}: {body}"),
    }
}

/// The register body of one service in one tenant. Everything is derived
/// from the two, so a second run sends the same bodies.
fn registration(tenant: &Tenant, index: usize, service: &Service) -> Value {
    json!({
        "service_name": service.name,
        "host": format!("10.{}.{}.10", tenant.subnet, index + 1),
        "port": service.port,
        "protocol": service.protocol,
        "health_endpoint": service.health_endpoint,
        "version": service.version,
        "tags": service.tags.iter().copied().chain(["demo", tenant.region]).collect::<Vec<_>>(),
        "metadata": {
            "team": service.team,
            "tier": service.tier,
            "region": tenant.region,
            "description": service.description,
            "hostname": format!("{}.{}.internal", service.name, tenant.id),
            "environment": "demo",
            "seeded_by": "cargo xtask seed",
        },
        "ttl_seconds": TTL_SECONDS,
    })
}

async fn seed(options: &Options) -> anyhow::Result<()> {
    let hub = &options.hub;
    let mut connection = Connection::open(hub).await?;
    let (status, body) = connection
        .send(hub, Method::GET, "/health", &[], None)
        .await?;
    if status != 200 {
        bail!(
            "the hub at {} answered GET /health with {}; is it a Central Hub?",
            hub.url(),
            describe_error(status, &body)
        );
    }
    if options.api_key.is_none() {
        eprintln!(
            "note: no API key (--api-key, HUB_KEY or CENTRAL_HUB_API_KEYS); this only works if the hub runs with DISABLE_AUTH=true"
        );
    }
    eprintln!("seeding {} via its HTTP API", hub.url());
    for tenant in &TENANTS {
        let mut headers = vec![("x-tenant-id", tenant.id)];
        if let Some(key) = &options.api_key {
            headers.push(("x-api-key", key.as_str()));
        }
        let (mut created, mut updated) = (0, 0);
        for (index, service) in SERVICES.iter().enumerate() {
            let body = registration(tenant, index, service);
            let (status, answer) = connection
                .send(
                    hub,
                    Method::POST,
                    "/api/v1/discovery/register",
                    &headers,
                    Some(&body),
                )
                .await?;
            match status {
                201 => created += 1,
                200 => updated += 1,
                401 => bail!(
                    "the hub did not accept the request ({}); pass an operator key with --api-key or HUB_KEY",
                    describe_error(status, &answer)
                ),
                _ => bail!(
                    "registering {} in tenant {} failed: {}",
                    service.name,
                    tenant.id,
                    describe_error(status, &answer)
                ),
            }
        }
        let (status, list) = connection
            .send(
                hub,
                Method::GET,
                "/api/v1/discovery/services?tag=demo",
                &headers,
                None,
            )
            .await?;
        if status != 200 {
            bail!(
                "listing the services of tenant {} failed: {}",
                tenant.id,
                describe_error(status, &list)
            );
        }
        let listed = list.get("count").and_then(Value::as_u64).unwrap_or(0);
        let revision = list.get("revision").and_then(Value::as_u64).unwrap_or(0);
        eprintln!(
            "{:<8} {} services registered ({created} created, {updated} updated); \
             the tenant lists {listed} demo instances, revision {revision}",
            tenant.id,
            SERVICES.len()
        );
        if listed < SERVICES.len() as u64 {
            bail!(
                "tenant {} lists only {listed} of the {} demo services just registered",
                tenant.id,
                SERVICES.len()
            );
        }
    }
    eprintln!(
        "done: {} tenants x {} services, leases of {TTL_SECONDS} s (they turn critical an hour \
         after the last run without heartbeats)",
        TENANTS.len(),
        SERVICES.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::key_from_list;

    #[test]
    fn picks_the_first_operator_key_as_the_hub_reads_the_list() {
        assert_eq!(
            key_from_list("bound-key-0123456:acme, operator-key-012345").unwrap(),
            "operator-key-012345"
        );
        assert_eq!(
            key_from_list("bound-key-0123456:acme,a:b:operator-key-0123:*").unwrap(),
            "a:b:operator-key-0123"
        );
        assert_eq!(
            key_from_list("a:bound-key-0123456:acme").unwrap(),
            "a:bound-key-0123456"
        );
        assert_eq!(key_from_list(" , "), None);
    }
}
