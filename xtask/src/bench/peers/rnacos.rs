//! r-nacos as a peer: started from PATH in a temporary folder on free ports, driven through the Nacos 1.x HTTP API (register instance, list instances) with the bench's load generator.
//!
//! The hub's tenants become Nacos namespaces, its services Nacos services;
//! each registration carries the instance's host, port and metadata (with
//! the instance id) as query parameters and, for handlers that read a form,
//! the same parameters as an `application/x-www-form-urlencoded` body.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper::{Method, Uri};

use super::process::{PeerProcess, TempDir};
use crate::bench::console::progress;
use crate::bench::load::{Figures, OnError, Stop, drive, get_once};
use crate::bench::names::{
    REGISTER_PREFIX, SERVICES_PER_TENANT, TENANT_PREFIX, TENANTS, instance_id, service_name,
    tenant_name,
};
use crate::bench::options::Options;
use crate::bench::servers::free_port;
use crate::bench::workload::{Credential, Target, Workload};

const FORM: &str = "application/x-www-form-urlencoded";

/// The figures of r-nacos in one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NacosResult {
    pub(crate) register: Figures,
    pub(crate) list: Figures,
}

/// Starts r-nacos, measures it, stops it and removes its data.
pub(crate) async fn measure(
    options: &Options,
    binary: &Path,
    log_path: &Path,
) -> anyhow::Result<NacosResult> {
    let dir = TempDir::new("rnacos")?;
    let http = free_port()?;
    let grpc = free_port()?;
    let mut command = Command::new(binary);
    command
        .env_clear()
        .env("RNACOS_HTTP_PORT", http.port().to_string())
        .env("RNACOS_GRPC_PORT", grpc.port().to_string())
        // 0 turns the separate console off.
        .env("RNACOS_HTTP_CONSOLE_PORT", "0")
        .env(
            "RNACOS_CONFIG_DB_DIR",
            dir.path.join("db").display().to_string(),
        )
        .env("RNACOS_RAFT_NODE_ADDR", grpc.to_string());
    progress(&format!(
        "  rnacos: {} on {http}, data in {} (log: {})",
        binary.display(),
        dir.path.display(),
        log_path.display()
    ));
    let mut nacos = PeerProcess::start("rnacos", command, &dir.path, log_path)?;
    // Any HTTP answer means it listens; the API needs no set-up.
    nacos
        .wait_ready(http, |addr| async move {
            let (status, _) =
                get_once(addr, "/nacos/v1/ns/instance/list?serviceName=probe", None).await?;
            Ok(status < 500)
        })
        .await?;

    progress("  rnacos register...");
    let targets = (0..options.registrations)
        .map(registration)
        .collect::<anyhow::Result<_>>()?;
    let workload = requests(http, Method::POST, targets)?;
    let register = drive(
        http,
        options.connections,
        Arc::new(workload),
        Stop::After(options.registrations),
        OnError::Fail,
    )
    .await
    .context("rnacos register")?;
    nacos.check_alive()?;

    progress("  rnacos list...");
    let targets = (0..TENANTS * SERVICES_PER_TENANT)
        .map(|i| list(i % TENANTS, i / TENANTS))
        .collect::<anyhow::Result<_>>()?;
    let workload = requests(http, Method::GET, targets)?;
    let list = drive(
        http,
        options.connections,
        Arc::new(workload),
        Stop::At(options.duration),
        OnError::Fail,
    )
    .await
    .context("rnacos list")?;
    nacos.check_alive()?;
    drop(nacos);
    drop(dir);
    Ok(NacosResult { register, list })
}

fn requests(addr: SocketAddr, method: Method, targets: Vec<Target>) -> anyhow::Result<Workload> {
    Ok(Workload {
        method,
        host: HeaderValue::from_str(&addr.to_string())?,
        content_type: HeaderValue::from_static(FORM),
        targets,
        // The peers' targets name no tenant, so no credential is sent.
        credential: Credential::OperatorKey,
    })
}

/// Registration `i`, placed as the hub's registration `i`.
fn registration(i: usize) -> anyhow::Result<Target> {
    let (tenant, service, instance) = Workload::placement(i, SERVICES_PER_TENANT);
    let metadata = serde_json::json!({
        "zone": "a",
        "instance_id": instance_id(REGISTER_PREFIX, i),
    });
    let query = form(&[
        ("namespaceId", &tenant_name(TENANT_PREFIX, tenant)),
        ("serviceName", &service_name(service)),
        ("ip", &format!("10.{tenant}.{service}.{instance}")),
        ("port", "8080"),
        ("ephemeral", "true"),
        ("metadata", &metadata.to_string()),
    ]);
    Ok(Target {
        uri: Uri::try_from(format!("/nacos/v1/ns/instance?{query}"))?,
        tenant: None,
        body: Bytes::from(query),
    })
}

/// The instances of one service of one tenant.
fn list(tenant: usize, service: usize) -> anyhow::Result<Target> {
    let query = form(&[
        ("namespaceId", &tenant_name(TENANT_PREFIX, tenant)),
        ("serviceName", &service_name(service)),
    ]);
    Ok(Target {
        uri: Uri::try_from(format!("/nacos/v1/ns/instance/list?{query}"))?,
        tenant: None,
        body: Bytes::new(),
    })
}

/// `name=value&...`, percent-encoded (every byte but unreserved ones).
fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encodes_json_metadata() {
        assert_eq!(
            form(&[("serviceName", "svc-001"), ("metadata", "{\"zone\":\"a\"}")]),
            "serviceName=svc-001&metadata=%7B%22zone%22%3A%22a%22%7D"
        );
    }
}
