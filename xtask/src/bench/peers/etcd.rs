//! etcd as a peer: started from PATH on a temporary data folder and free ports (fsync as shipped), driven through its HTTP/JSON gateway with the bench's load generator.
//!
//! Registration is a put of the same JSON instance body as the hub's
//! registration under `/hub/<tenant>/<service>/<instance>`; the second
//! figure is a put with a lease, as etcd-based discovery registers: one
//! lease per instance is granted before the clock starts (`/v3/lease/grant`,
//! TTL 3600 s like the hub's registrations), then the puts that attach them
//! are measured, under `/hub-leased/...` so that they create keys too. A
//! lookup is a range read of one service's prefix, over the same services as
//! the hub's lookup phase. The gateway of etcd 3.4 serves `/v3/` (and
//! `/v3beta/`); this uses `/v3/`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};

use super::process::{PeerProcess, TempDir};
use crate::bench::console::progress;
use crate::bench::load::{Figures, OnError, Stop, connect, drive, get_once};
use crate::bench::names::{
    REGISTER_PREFIX, SERVICES_PER_TENANT, TENANT_PREFIX, TENANTS, instance_id, service_name,
    tenant_name,
};
use crate::bench::options::Options;
use crate::bench::servers::free_port;
use crate::bench::workload::{Credential, JSON, Target, Workload, registration_body};

/// The TTL of the granted leases, as the hub's registrations.
const LEASE_TTL_SECS: u64 = 3600;
/// The key roots of plain puts and of puts with a lease.
const ROOT: &str = "/hub";
const LEASED_ROOT: &str = "/hub-leased";

/// The figures of etcd in one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EtcdResult {
    pub(crate) put: Figures,
    /// CPU time of the etcd process during the put phase, in seconds.
    pub(crate) put_cpu_s: f64,
    pub(crate) lease_put: Figures,
    pub(crate) range: Figures,
}

/// Starts etcd, measures it, stops it and removes its data.
pub(crate) async fn measure(
    options: &Options,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<EtcdResult> {
    let dir = TempDir::new("etcd")?;
    let client = free_port()?;
    let peer = free_port()?;
    let mut command = Command::new(binary);
    // A cleared environment keeps ETCD_* variables of the developer out.
    command.env_clear().args([
        "--name".to_owned(),
        "hub-bench".to_owned(),
        "--data-dir".to_owned(),
        dir.path.join("data").display().to_string(),
        "--listen-client-urls".to_owned(),
        format!("http://{client}"),
        "--advertise-client-urls".to_owned(),
        format!("http://{client}"),
        "--listen-peer-urls".to_owned(),
        format!("http://{peer}"),
        "--initial-advertise-peer-urls".to_owned(),
        format!("http://{peer}"),
        "--initial-cluster".to_owned(),
        format!("hub-bench=http://{peer}"),
        "--initial-cluster-state".to_owned(),
        "new".to_owned(),
    ]);
    progress(&format!(
        "  etcd: {} on {client}, data in {} (log: {})",
        binary.display(),
        dir.path.display(),
        log_path.display()
    ));
    let mut etcd = PeerProcess::start("etcd", command, &dir.path, log_path)?;
    etcd.wait_ready(client, |addr| async move {
        let (status, body) = get_once(addr, "/health", None).await?;
        Ok(status == 200 && String::from_utf8_lossy(&body).contains("true"))
    })
    .await?;

    progress("  etcd put...");
    let puts = (0..options.registrations)
        .map(|i| put_body(ROOT, i, None))
        .collect();
    let before = etcd.cpu_seconds()?;
    let put = run(options, client, "/v3/kv/put", puts).await?;
    let put_cpu_s = etcd.cpu_seconds()? - before;
    etcd.check_alive()?;
    verify(client, options.registrations).await?;

    progress("  etcd range...");
    let ranges = (0..TENANTS * SERVICES_PER_TENANT)
        .map(|i| range_body(i % TENANTS, i / TENANTS))
        .collect();
    let workload = workload(client, "/v3/kv/range", ranges)?;
    let range = drive(
        client,
        options.connections,
        Arc::new(workload),
        Stop::At(options.duration),
        OnError::Fail,
    )
    .await
    .context("etcd range")?;
    etcd.check_alive()?;

    progress("  etcd lease grants (unmeasured), then put with a lease...");
    let leases = grant_leases(client, options.connections, options.registrations).await?;
    let puts = leases
        .iter()
        .enumerate()
        .map(|(i, lease)| put_body(LEASED_ROOT, i, Some(lease)))
        .collect();
    let lease_put = run(options, client, "/v3/kv/put", puts).await?;
    etcd.check_alive()?;

    drop(etcd);
    drop(dir);
    Ok(EtcdResult {
        put,
        put_cpu_s,
        lease_put,
        range,
    })
}

/// The key of registration `i` under `root`: `/root/<tenant>/<service>/<instance>`.
fn key(root: &str, i: usize) -> String {
    let (tenant, service, _) = Workload::placement(i, SERVICES_PER_TENANT);
    format!(
        "{root}/{}/{}/{}",
        tenant_name(TENANT_PREFIX, tenant),
        service_name(service),
        instance_id(REGISTER_PREFIX, i)
    )
}

/// The prefix holding every instance of one service of one tenant.
fn service_prefix(tenant: usize, service: usize) -> String {
    format!(
        "{ROOT}/{}/{}/",
        tenant_name(TENANT_PREFIX, tenant),
        service_name(service)
    )
}

fn put_body(root: &str, i: usize, lease: Option<&str>) -> serde_json::Value {
    let value = registration_body(
        REGISTER_PREFIX,
        i,
        Workload::placement(i, SERVICES_PER_TENANT),
    );
    let mut body = serde_json::json!({
        "key": base64(key(root, i).as_bytes()),
        "value": base64(value.to_string().as_bytes()),
    });
    if let (Some(lease), Some(fields)) = (lease, body.as_object_mut()) {
        fields.insert("lease".to_owned(), serde_json::Value::from(lease));
    }
    body
}

/// A range over one service's prefix: `range_end` is the prefix with its
/// last byte (`/`) raised by one, etcd's "every key with this prefix".
fn range_body(tenant: usize, service: usize) -> serde_json::Value {
    let prefix = service_prefix(tenant, service);
    let mut end = prefix.clone().into_bytes();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    serde_json::json!({
        "key": base64(prefix.as_bytes()),
        "range_end": base64(&end),
    })
}

/// POSTs of JSON bodies to `path` of the gateway.
fn workload(
    addr: SocketAddr,
    path: &'static str,
    bodies: Vec<serde_json::Value>,
) -> anyhow::Result<Workload> {
    let uri = Uri::from_static(path);
    Ok(Workload {
        method: Method::POST,
        host: HeaderValue::from_str(&addr.to_string())?,
        content_type: HeaderValue::from_static(JSON),
        targets: bodies
            .into_iter()
            .map(|body| Target {
                uri: uri.clone(),
                tenant: None,
                body: Bytes::from(body.to_string()),
            })
            .collect(),
        // The peers' targets name no tenant, so no credential is sent.
        credential: Credential::OperatorKey,
    })
}

/// Each body sent once, as the registration phase does.
async fn run(
    options: &Options,
    addr: SocketAddr,
    path: &'static str,
    bodies: Vec<serde_json::Value>,
) -> anyhow::Result<Figures> {
    let count = bodies.len();
    let workload = workload(addr, path, bodies)?;
    drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::After(count),
        OnError::Fail,
    )
    .await
    .with_context(|| format!("etcd {path}"))
}

/// The first and the last tenant's first service must hold every instance
/// put there, or the range phase would measure short answers.
async fn verify(addr: SocketAddr, registrations: usize) -> anyhow::Result<()> {
    let expected = registrations / (TENANTS * SERVICES_PER_TENANT);
    for tenant in [0, TENANTS - 1] {
        let body = post_once(addr, "/v3/kv/range", &range_body(tenant, 0)).await?;
        let count = body
            .get("count")
            .and_then(|count| {
                count
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .or(count.as_u64())
            })
            .unwrap_or(0);
        if count != u64::try_from(expected)? {
            bail!(
                "etcd holds {count} keys of tenant {tenant}'s first service, expected {expected}"
            );
        }
    }
    Ok(())
}

/// One POST of `body` on a fresh connection; the answer must be 2xx JSON.
async fn post_once(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let mut sender = connect(addr).await?;
    let request = Request::post(path)
        .header(HOST, addr.to_string())
        .header(CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(body.to_string())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "POST {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).with_context(|| format!("POST {path} answered no JSON"))
}

/// Grants `count` leases over `connections` connections, outside any
/// measurement, and returns their ids (decimal strings, as the gateway
/// writes 64-bit integers).
async fn grant_leases(
    addr: SocketAddr,
    connections: usize,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let next = Arc::new(AtomicUsize::new(0));
    let body = Bytes::from(serde_json::json!({ "TTL": LEASE_TTL_SECS }).to_string());
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut sender = connect(addr).await?;
        let next = Arc::clone(&next);
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    break;
                }
                sender.ready().await?;
                let request = Request::post("/v3/lease/grant")
                    .header(HOST, addr.to_string())
                    .header(CONTENT_TYPE, JSON)
                    .body(Full::new(body.clone()))?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                let bytes = response.into_body().collect().await?.to_bytes();
                let answer: serde_json::Value = serde_json::from_slice(&bytes)
                    .with_context(|| format!("lease grant answered {status}, no JSON"))?;
                let id = answer
                    .get("ID")
                    .and_then(|id| {
                        id.as_str()
                            .map(str::to_owned)
                            .or(id.as_u64().map(|n| n.to_string()))
                    })
                    .with_context(|| {
                        format!("lease grant answered {status} without an ID: {answer}")
                    })?;
                granted.push((index, id));
            }
            anyhow::Ok(granted)
        }));
    }
    let mut leases = vec![String::new(); count];
    for task in tasks {
        for (index, id) in task.await.context("a lease grant task panicked")?? {
            if let Some(slot) = leases.get_mut(index) {
                *slot = id;
            }
        }
    }
    Ok(leases)
}

/// Standard base64 with padding (RFC 4648), which the gateway expects for
/// keys and values.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (position, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if position <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648, section 10.
    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    /// A range covers exactly one service's keys: its end is the prefix with
    /// the last `/` raised to `0`, and the keys of that service sort inside.
    #[test]
    fn range_covers_one_service() {
        let prefix = service_prefix(3, 7);
        assert_eq!(prefix, "/hub/bench-t003/svc-007/");
        let body = range_body(3, 7);
        assert_eq!(body["key"], base64(prefix.as_bytes()));
        assert_eq!(body["range_end"], base64(b"/hub/bench-t003/svc-0070"));
        // Registration 703 goes to tenant 3, service 7.
        let inside = key(ROOT, 703);
        assert!(inside.starts_with(&prefix), "{inside}");
        assert!(inside.as_str() < "/hub/bench-t003/svc-0070");
    }
}
