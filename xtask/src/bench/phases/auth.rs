//! `cargo xtask bench`, what authentication costs: PostgreSQL-mode lookups authenticated with the environment (operator) key, a database key, and JWT bearer tokens (HS256, ES256), on one server.
//!
//! Issue 12's closing note must say what the auth checks cost per request,
//! with the target that lookups with a database key reach at least 0.95x of
//! those with an environment key. Every credential is measured on the same
//! server against the same services of the same tenant, so that only the
//! authentication differs: the tenant and its database key are created
//! through the admin API, the instances are registered outside the
//! measurement, and then the lookups take turns in one-second slices
//! (rotating which credential goes first), as the request metrics' phase
//! does, so that every side sees the same load of the machine. Before the
//! slices each credential must answer 200, and the database key and the JWT
//! must be refused where they do not apply (another tenant, a forged
//! signature), so that a server which ignored them cannot pass.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::bench::console::progress;
use crate::bench::load::{Figures, OnError, Stop, connect, drive};
use crate::bench::names::{API_KEY, SERVICES_PER_TENANT, random_hex, service_name, tenant_name};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::metrics::combine;
use crate::bench::phases::prepare::register_unmeasured;
use crate::bench::report::{Bound, median, median_figures, row, target};
use crate::bench::servers::Server;
use crate::bench::workload::{Credential, JSON, Target, Workload};

/// The issue's target: lookups with a database key (and with a JWT, whose
/// verification is remembered per token) at least this share of lookups with
/// an environment key.
const RATIO_TARGET: f64 = 0.95;
const SLICE: Duration = Duration::from_secs(1);

/// The tenants of this phase; the lookups are those of the first one, which
/// is also the one created through the admin API.
const TENANTS: &str = "bench-auth-t";
const ISSUER: &str = "cargo-xtask-bench";
const AUDIENCE: &str = "central-hub-bench";
/// The `kid` of the ES256 key in the server's JWKS file.
const ES256_KID: &str = "bench-es256";
/// A test-only P-256 key of hub-http's JWT tests, reused here: the bench's
/// tokens protect nothing.
const ES256_PEM: &str = "crates/hub-http/tests/fixtures/jwt/ec1.pem";

/// The credentials measured, in report order; the first is the baseline.
const SIDES: [Side; 4] = [Side::EnvKey, Side::DbKey, Side::JwtHs256, Side::JwtEs256];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    EnvKey,
    DbKey,
    JwtHs256,
    JwtEs256,
}

impl Side {
    fn row(self) -> &'static str {
        match self {
            Self::EnvKey => "auth env key",
            Self::DbKey => "auth db key",
            Self::JwtHs256 => "auth jwt HS256",
            Self::JwtEs256 => "auth jwt ES256",
        }
    }
}

/// The lookups of one run with each credential.
#[derive(Debug)]
pub(crate) struct AuthResult {
    /// In [`SIDES`] order.
    sides: Vec<Figures>,
    /// Slices per side.
    slices: usize,
}

/// One PostgreSQL-mode server with JWTs enabled, every credential in turn.
pub(crate) async fn pg_auth_run(
    options: &Options,
    admin: &PgAdmin,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<AuthResult> {
    let secret = random_hex(32)?;
    let pem_path = crate::project_root()?.join(ES256_PEM);
    let pem =
        std::fs::read(&pem_path).with_context(|| format!("reading {}", pem_path.display()))?;
    let es256_key = EncodingKey::from_ec_pem(&pem).context("the bench's ES256 key")?;
    let jwks_path = log_dir.join(format!("auth-jwks-run{run}.json"));
    write_jwks(&jwks_path, &es256_key)?;

    let log_path = log_dir.join(format!("server-pg-auth-run{run}.log"));
    progress(&format!(
        "  auth: PostgreSQL-mode server with JWTs enabled (log: {})",
        log_path.display()
    ));
    let env = [
        // All the load goes to one tenant, far over its default budget; the
        // limiter's cost is the limiter phase's to measure, not this one's.
        ("HUB_RATE_LIMIT_RPS", "0".to_owned()),
        ("HUB_RATE_LIMIT_KEY_RPS", "0".to_owned()),
        ("HUB_JWT_SECRET", secret.clone()),
        ("HUB_JWT_JWKS_PATH", jwks_path.display().to_string()),
        ("HUB_JWT_ISSUER", ISSUER.to_owned()),
        ("HUB_JWT_AUDIENCE", AUDIENCE.to_owned()),
    ];
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(options, admin, binary, &log_path, &env).await?;

    let tenant = tenant_name(TENANTS, 0);
    // Created before any registration: in the open mode a registration
    // records its tenant, and creating it afterwards would be a conflict.
    let (status, body) = post_json(
        server.addr,
        "/api/v1/admin/tenants",
        &serde_json::json!({ "tenant_id": tenant }),
    )
    .await?;
    if status != 201 {
        bail!("creating tenant {tenant} through the admin API answered {status}: {body}");
    }
    let (status, body) = post_json(
        server.addr,
        &format!("/api/v1/admin/tenants/{tenant}/keys"),
        &serde_json::json!({ "name": "bench", "scopes": ["read", "write"] }),
    )
    .await?;
    let db_key = match (status, body["key"].as_str()) {
        (201, Some(key)) => key.to_owned(),
        _ => bail!("creating a key of {tenant} through the admin API answered {status}: {body}"),
    };
    progress("  auth: registering (outside the measurement)...");
    register_unmeasured(options, &mut server, TENANTS)
        .await
        .with_context(|| format!("registrations (server log: {})", log_path.display()))?;

    let claims = serde_json::json!({
        "sub": "bench",
        "iss": ISSUER,
        "aud": AUDIENCE,
        // Valid for the whole run and then some.
        "exp": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 24 * 3600,
        "tenant_id": tenant,
        "scope": "read",
    });
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).context("the HS256 secret")?,
    )?;
    let mut es256_header = Header::new(Algorithm::ES256);
    es256_header.kid = Some(ES256_KID.to_owned());
    let es256 = jsonwebtoken::encode(&es256_header, &claims, &es256_key)?;

    let mut workloads = Vec::with_capacity(SIDES.len());
    for side in SIDES {
        let credential = match side {
            Side::EnvKey => Credential::OperatorKey,
            Side::DbKey => Credential::ApiKey(HeaderValue::from_str(&db_key)?),
            Side::JwtHs256 => bearer(&hs256)?,
            Side::JwtEs256 => bearer(&es256)?,
        };
        workloads.push(Arc::new(lookups(server.addr, &tenant, credential)?));
    }
    check_credentials(&server, &workloads, &db_key, &hs256).await?;

    let slices = usize::try_from(options.duration.as_secs())?.max(2);
    progress(&format!(
        "  auth: {slices} one-second slices of lookups per credential, in rotation"
    ));
    let mut measured: Vec<Vec<Figures>> = vec![Vec::new(); SIDES.len()];
    for slice in 0..slices {
        for turn in 0..SIDES.len() {
            let side = (slice + run + turn) % SIDES.len();
            let figures = drive(
                server.addr,
                options.connections,
                Arc::clone(&workloads[side]),
                Stop::At(SLICE),
                OnError::Fail,
            )
            .await
            .with_context(|| format!("lookups with {}", SIDES[side].row()))?;
            server.check_alive()?;
            measured[side].push(figures);
        }
    }
    drop(server);
    drop(scratch);
    let _ = std::fs::remove_file(&jwks_path);
    Ok(AuthResult {
        sides: measured.iter().map(|slices| combine(slices)).collect(),
        slices,
    })
}

fn bearer(token: &str) -> anyhow::Result<Credential> {
    Ok(Credential::Authorization(HeaderValue::from_str(&format!(
        "Bearer {token}"
    ))?))
}

/// The server's JWKS file: the public half of the ES256 key.
fn write_jwks(path: &Path, key: &EncodingKey) -> anyhow::Result<()> {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::ES256)?;
    jwk.common.key_id = Some(ES256_KID.to_owned());
    let document = serde_json::json!({ "keys": [jwk] });
    std::fs::write(path, serde_json::to_vec_pretty(&document)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Lookups of the tenant's services with `credential`.
fn lookups(addr: SocketAddr, tenant: &str, credential: Credential) -> anyhow::Result<Workload> {
    let tenant = HeaderValue::from_str(tenant)?;
    let targets = (0..SERVICES_PER_TENANT)
        .map(|service| {
            Ok(Target {
                uri: format!("/api/v1/discovery/services/{}", service_name(service)).try_into()?,
                tenant: Some(tenant.clone()),
                body: Bytes::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Workload {
        method: Method::GET,
        host: HeaderValue::from_str(&addr.to_string())?,
        content_type: HeaderValue::from_static(JSON),
        targets,
        credential,
    })
}

/// Every credential finds the tenant's services; the database key and the
/// HS256 token are refused for another tenant and with a forged signature,
/// which proves the server checks them rather than ignoring them.
async fn check_credentials(
    server: &Server,
    workloads: &[Arc<Workload>],
    db_key: &str,
    hs256: &str,
) -> anyhow::Result<()> {
    for (side, workload) in SIDES.iter().zip(workloads) {
        let (status, body) = once(server.addr, workload.request(0)?).await?;
        if status != 200 {
            bail!("a lookup with the {} answered {status}: {body}", side.row());
        }
    }
    let path = format!("/api/v1/discovery/services/{}", service_name(0));
    let other_tenant = tenant_name(TENANTS, 1);
    let request = |name: &str, value: &str, tenant: &str| -> anyhow::Result<Request<Full<Bytes>>> {
        Ok(Request::get(path.as_str())
            .header(HOST, server.addr.to_string())
            .header(name, value)
            .header("x-tenant-id", tenant)
            .body(Full::new(Bytes::new()))?)
    };
    let (status, _) = once(server.addr, request("x-api-key", db_key, &other_tenant)?).await?;
    if status != 403 {
        bail!(
            "the database key of {} was used for {other_tenant} and answered {status}, not 403",
            tenant_name(TENANTS, 0)
        );
    }
    // The same token with the last character of its signature changed.
    let mut forged = hs256.to_owned();
    let last = if forged.ends_with('A') { "B" } else { "A" };
    forged.pop();
    forged.push_str(last);
    let tenant = tenant_name(TENANTS, 0);
    let (status, _) = once(
        server.addr,
        request(AUTHORIZATION.as_str(), &format!("Bearer {forged}"), &tenant)?,
    )
    .await?;
    if status != 401 {
        bail!("a JWT with a forged signature answered {status}, not 401");
    }
    Ok(())
}

/// One request on a fresh connection: its status and JSON body (`null` when
/// the body is not JSON).
async fn once(
    addr: SocketAddr,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut sender = connect(addr).await?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// A POST of `body` to `path` with the operator key.
async fn post_json(
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let request = Request::post(path)
        .header(HOST, addr.to_string())
        .header("x-api-key", API_KEY)
        .header(CONTENT_TYPE, JSON)
        .body(Full::new(Bytes::from(body.to_string())))?;
    once(addr, request).await
}

/// The rows of one run.
pub(crate) fn run_lines(out: &mut String, result: &AuthResult) {
    for (side, figures) in SIDES.iter().zip(&result.sides) {
        row(out, side.row(), figures.requests, figures);
    }
    let base = result.sides[0].rps;
    let ratios: Vec<String> = SIDES
        .iter()
        .zip(&result.sides)
        .skip(1)
        .map(|(side, figures)| format!("{} {:.2}x", side.row(), figures.rps / base))
        .collect();
    let _ = writeln!(
        out,
        "auth lookups against the env key (PostgreSQL mode, {} one-second slices each): {}",
        result.slices,
        ratios.join(", ")
    );
}

/// The medians over the runs, and the targets.
pub(crate) fn summary_lines(out: &mut String, runs: &[&AuthResult]) {
    if runs.is_empty() {
        let _ = writeln!(
            out,
            "auth checks' cost: not measured (--skip-auth, or the PostgreSQL mode did not run)"
        );
        return;
    }
    let _ = writeln!(
        out,
        "auth checks' cost: PostgreSQL-mode lookups of one tenant with the env (operator) key, \
         a database key, JWTs (HS256, ES256); one server, one-second slices in rotation"
    );
    let medians: Vec<Figures> = (0..SIDES.len())
        .map(|i| {
            let all: Vec<&Figures> = runs.iter().map(|r| &r.sides[i]).collect();
            let (requests, figures) = median_figures(&all);
            Figures {
                requests,
                ..figures
            }
        })
        .collect();
    for (side, figures) in SIDES.iter().zip(&medians) {
        row(out, side.row(), figures.requests, figures);
    }
    let _ = writeln!(
        out,
        "auth: p50 {}",
        SIDES
            .iter()
            .zip(&medians)
            .map(|(side, figures)| format!("{:.3} ms {}", figures.p50_ms, side.row()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // The target is on the median of each run's ratio: within a run the
    // sides take turns in the same seconds, so a run's ratio is paired,
    // while the medians of different runs saw different loads.
    for (i, side) in SIDES.iter().enumerate().skip(1) {
        let ratio = median(
            runs.iter()
                .map(|r| r.sides[i].rps / r.sides[0].rps)
                .collect(),
        );
        let name = format!("{}/env lookups", side.row().trim_start_matches("auth "));
        target(out, &name, ratio, Bound::AtLeast(RATIO_TARGET));
    }
}
