//! `cargo xtask bench`, the rate limiter's cost: service lookups with the limits on (set so high they never refuse) against lookups with the limits off, in embedded mode and in PostgreSQL mode with Dragonfly.
//!
//! Limits are start-up settings, so each side gets a server of its own: the
//! same registrations (outside the measurement), then closed-loop lookups
//! for the phase's length, as the lookup phase does. "On" sets the tenant's
//! and the API key's budgets to `HIGH_LIMIT` requests/s with the same burst;
//! "off" sets every rate to 0, which turns the budgets off (`Quota` in
//! hub-core's `ratelimit`). Each server's first lookup is checked for the
//! `RateLimit-Limit` header (present with limits on, absent with them off),
//! so that a misspelt variable cannot make both sides measure the same thing.
//! With Dragonfly, "on" means the shared GCRA script runs on every lookup;
//! the report gives the server-wide count of script calls during each side
//! as evidence (other clients of the same Redis count too). The two sides
//! take turns at going first.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use http_body_util::BodyExt as _;

use crate::bench::console::progress;
use crate::bench::dragonfly::{Endpoint, RunKeys};
use crate::bench::load::{Figures, OnError, Stop, connect, drive};
use crate::bench::names::{TENANT_PREFIX, fresh_tenant_prefix};
use crate::bench::options::Options;
use crate::bench::pg::{PgAdmin, PgServer};
use crate::bench::phases::prepare::register_unmeasured;
use crate::bench::report::{Bound, median_figures, row, target};
use crate::bench::servers::Server;
use crate::bench::workload::Workload;

/// The rate and the burst of "limits on": one request per microsecond, the
/// finest interval the shared script resolves, and far above what the load
/// generator can send to one tenant.
const HIGH_LIMIT: u32 = 1_000_000;
/// The target: lookups with limits on at least this share of
/// lookups with them off.
const RATIO_TARGET: f64 = 0.9;
const LIMIT_VARIABLES: [&str; 4] = [
    "HUB_RATE_LIMIT_RPS",
    "HUB_RATE_LIMIT_BURST",
    "HUB_RATE_LIMIT_KEY_RPS",
    "HUB_RATE_LIMIT_KEY_BURST",
];

/// Lookups of one mode with the limits on and off.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) on: Figures,
    pub(crate) off: Figures,
    /// With Dragonfly: its script calls (EVAL and EVALSHA, server-wide)
    /// during the lookups with limits on and off, when it reports them.
    pub(crate) script_calls: Option<[Option<u64>; 2]>,
}

/// The limiter's cost in one run.
#[derive(Debug)]
pub(crate) struct LimiterResult {
    pub(crate) embedded: Pair,
    /// The PostgreSQL+Dragonfly mode, when it ran.
    pub(crate) dragonfly: Option<Pair>,
}

/// Both modes of one run; `pg_dragonfly` is `None` when that mode does not
/// run (PostgreSQL or Dragonfly skipped).
pub(crate) async fn run(
    options: &Options,
    pg_dragonfly: Option<(&PgAdmin, &Endpoint)>,
    binary: &Path,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<LimiterResult> {
    let on_first = run % 2 == 1;
    let mut embedded = [None, None];
    for on in [on_first, !on_first] {
        let log_path = log_dir.join(format!("server-limits-{}-run{run}.log", side(on)));
        progress(&format!(
            "  limiter: embedded, limits {} (log: {})",
            side(on),
            log_path.display()
        ));
        let mut server = Server::start(binary, &log_path, &options.log_level, &limits_env(on))?;
        server.wait_ready("/health").await?;
        let (figures, _) = lookups(options, &mut server, TENANT_PREFIX, on, None)
            .await
            .with_context(|| {
                format!(
                    "embedded, limits {} (server log: {})",
                    side(on),
                    log_path.display()
                )
            })?;
        embedded[usize::from(on)] = Some(figures);
    }
    let embedded = pair(embedded, None)?;
    let dragonfly = match pg_dragonfly {
        Some((admin, endpoint)) => {
            let mut figures = [None, None];
            let mut calls = [None, None];
            for on in [on_first, !on_first] {
                let log_path = log_dir.join(format!(
                    "server-pg-dragonfly-limits-{}-run{run}.log",
                    side(on)
                ));
                let (measured, script_calls) =
                    pg_dragonfly_side(options, admin, endpoint, binary, &log_path, on)
                        .await
                        .with_context(|| {
                            format!(
                                "PostgreSQL+Dragonfly, limits {} (server log: {})",
                                side(on),
                                log_path.display()
                            )
                        })?;
                figures[usize::from(on)] = Some(measured);
                calls[usize::from(on)] = script_calls;
            }
            Some(pair(figures, Some([calls[1], calls[0]]))?)
        }
        None => None,
    };
    Ok(LimiterResult {
        embedded,
        dragonfly,
    })
}

fn side(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// `[off, on]` as measured, into a pair.
fn pair(
    figures: [Option<Figures>; 2],
    script_calls: Option<[Option<u64>; 2]>,
) -> anyhow::Result<Pair> {
    let [Some(off), Some(on)] = figures else {
        bail!("a side of the limiter's phase was not measured");
    };
    Ok(Pair {
        on,
        off,
        script_calls,
    })
}

/// The server's rate-limit variables: every budget at `HIGH_LIMIT`, or off.
fn limits_env(on: bool) -> Vec<(&'static str, String)> {
    let value = if on { HIGH_LIMIT } else { 0 }.to_string();
    LIMIT_VARIABLES
        .iter()
        .map(|name| (*name, value.clone()))
        .collect()
}

/// One side in the PostgreSQL+Dragonfly mode, on a fresh database with
/// tenants of its own; returns its lookups and the script calls Dragonfly
/// counted meanwhile.
async fn pg_dragonfly_side(
    options: &Options,
    admin: &PgAdmin,
    endpoint: &Endpoint,
    binary: &Path,
    log_path: &Path,
    on: bool,
) -> anyhow::Result<(Figures, Option<u64>)> {
    progress(&format!(
        "  limiter: PostgreSQL+Dragonfly, limits {}",
        side(on)
    ));
    let tenants = fresh_tenant_prefix()?;
    // Declared before the server, so that it is dropped after it.
    let keys = RunKeys::new(endpoint, &tenants);
    let mut env = endpoint.env();
    env.extend(limits_env(on));
    let PgServer {
        mut server,
        scratch,
    } = PgServer::start(options, admin, binary, log_path, &env).await?;
    let (figures, calls) = lookups(options, &mut server, &tenants, on, Some(endpoint)).await?;
    // The server first: the database and the keys go away only once nothing
    // uses them.
    drop(server);
    drop(scratch);
    drop(keys);
    Ok((figures, calls))
}

/// Dragonfly's script calls so far, or `None` (said once per call) when
/// they cannot be read.
async fn script_calls(endpoint: &Endpoint) -> Option<u64> {
    let endpoint = endpoint.clone();
    match tokio::task::spawn_blocking(move || endpoint.script_calls()).await {
        Ok(Ok(calls)) => Some(calls),
        Ok(Err(error)) => {
            progress(&format!(
                "  warning: could not read Dragonfly's script calls: {error:#}"
            ));
            None
        }
        Err(error) => {
            progress(&format!(
                "  warning: could not read Dragonfly's script calls: {error}"
            ));
            None
        }
    }
}

/// Registrations (not measured), a check that the limits are as asked, then
/// lookups for the phase's length. With a Dragonfly, its script calls during
/// the lookups are returned too, and errors are counted (as in the PostgreSQL
/// mode's lookup phase); without, an error fails the phase (as in the
/// embedded one).
async fn lookups(
    options: &Options,
    server: &mut Server,
    tenants: &str,
    on: bool,
    dragonfly: Option<&Endpoint>,
) -> anyhow::Result<(Figures, Option<u64>)> {
    register_unmeasured(options, server, tenants).await?;
    let addr = server.addr;
    let workload = Workload::lookups(addr, tenants)?;
    let limit = limit_header(addr, &workload).await?;
    match (on, &limit) {
        (true, None) => bail!(
            "limits are set on, but a lookup's answer has no RateLimit-Limit header; \
             are the variables {LIMIT_VARIABLES:?} still the server's?"
        ),
        (false, Some(limit)) => bail!(
            "limits are set off, but a lookup's answer has RateLimit-Limit: {limit}; \
             are the variables {LIMIT_VARIABLES:?} still the server's?"
        ),
        _ => {}
    }
    let before = match dragonfly {
        Some(endpoint) => script_calls(endpoint).await,
        None => None,
    };
    let on_error = if dragonfly.is_some() {
        OnError::Count
    } else {
        OnError::Fail
    };
    let figures = drive(
        addr,
        options.connections,
        Arc::new(workload),
        Stop::At(options.duration),
        on_error,
    )
    .await
    .context("lookup phase of the limiter")?;
    let after = match dragonfly {
        Some(endpoint) => script_calls(endpoint).await,
        None => None,
    };
    server.check_alive()?;
    let calls = before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before));
    Ok((figures, calls))
}

/// The `RateLimit-Limit` header of the answer to the workload's first
/// request, which must succeed.
async fn limit_header(addr: SocketAddr, workload: &Workload) -> anyhow::Result<Option<String>> {
    let mut sender = connect(addr).await?;
    sender.ready().await?;
    let response = sender.send_request(workload.request(0)?).await?;
    let status = response.status();
    let limit = response
        .headers()
        .get("ratelimit-limit")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "the first lookup answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(limit)
}

const EMBEDDED_ON: &str = "rl emb on";
const EMBEDDED_OFF: &str = "rl emb off";
const DRAGONFLY_ON: &str = "rl df on";
const DRAGONFLY_OFF: &str = "rl df off";

fn calls_text(calls: Option<u64>) -> String {
    calls.map_or_else(|| "?".to_owned(), |calls| calls.to_string())
}

/// The rows of one run.
pub(crate) fn run_lines(out: &mut String, result: &LimiterResult) {
    let embedded = &result.embedded;
    row(out, EMBEDDED_ON, embedded.on.requests, &embedded.on);
    row(out, EMBEDDED_OFF, embedded.off.requests, &embedded.off);
    if let Some(dragonfly) = &result.dragonfly {
        row(out, DRAGONFLY_ON, dragonfly.on.requests, &dragonfly.on);
        row(out, DRAGONFLY_OFF, dragonfly.off.requests, &dragonfly.off);
    }
    let _ = write!(
        out,
        "limiter on/off lookups: embedded {:.2}x",
        embedded.on.rps / embedded.off.rps
    );
    match &result.dragonfly {
        Some(dragonfly) => {
            let _ = write!(out, ", pg+df {:.2}x", dragonfly.on.rps / dragonfly.off.rps);
            if let Some([on, off]) = dragonfly.script_calls {
                let _ = write!(
                    out,
                    " (Dragonfly script calls during the lookups: {} with limits on, {} off)",
                    calls_text(on),
                    calls_text(off)
                );
            }
            out.push('\n');
        }
        None => out.push_str(", pg+df not measured\n"),
    }
}

/// The medians over the runs, and the targets.
pub(crate) fn summary_lines(out: &mut String, runs: &[&LimiterResult]) {
    if runs.is_empty() {
        let _ = writeln!(out, "rate limiter's cost: not measured (--skip-limiter)");
        return;
    }
    let _ = writeln!(
        out,
        "rate limiter's cost: lookups with every budget at {HIGH_LIMIT}/s (never refusing) against \
         lookups with limits off, a server each, as in the lookup phase"
    );
    let embedded: Vec<&Pair> = runs.iter().map(|r| &r.embedded).collect();
    mode_lines(out, "embedded", [EMBEDDED_ON, EMBEDDED_OFF], &embedded);
    let dragonfly: Vec<&Pair> = runs.iter().filter_map(|r| r.dragonfly.as_ref()).collect();
    if dragonfly.is_empty() {
        let _ = writeln!(
            out,
            "rl on/off pg+df: not measured (PostgreSQL or Dragonfly skipped)"
        );
    } else {
        mode_lines(out, "pg+df", [DRAGONFLY_ON, DRAGONFLY_OFF], &dragonfly);
    }
}

fn mode_lines(out: &mut String, mode: &str, names: [&str; 2], pairs: &[&Pair]) {
    let on: Vec<&Figures> = pairs.iter().map(|p| &p.on).collect();
    let off: Vec<&Figures> = pairs.iter().map(|p| &p.off).collect();
    let (on_requests, on) = median_figures(&on);
    let (off_requests, off) = median_figures(&off);
    row(out, names[0], on_requests, &on);
    row(out, names[1], off_requests, &off);
    let _ = writeln!(
        out,
        "rl {mode}: p99 {:.3} ms on, {:.3} ms off",
        on.p99_ms, off.p99_ms
    );
    target(
        out,
        &format!("rl on/off lookups {mode}"),
        on.rps / off.rps,
        Bound::AtLeast(RATIO_TARGET),
    );
}
