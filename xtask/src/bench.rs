//! `cargo xtask bench`: starts a release hub-server in embedded mode and measures registration, lookup and `/health` over loopback.
//!
//! Each run starts a fresh server, then drives three closed-loop phases with
//! one keep-alive HTTP/1.1 connection per task: registration of distinct
//! instances, time-bound service lookups, and time-bound `GET /health`, which
//! is the ceiling of this machine (the same HTTP stack with no registry work).
//! The medians over the runs are compared with the targets of the issue.

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const USAGE: &str = "usage: cargo xtask bench [options]

options:
  --duration-secs N   length of the lookup and health phases (default 10)
  --runs N            fresh-server runs; the medians are reported (default 3)
  --connections N     concurrent keep-alive connections (default 64)
  --log-level LEVEL   RUST_LOG of the server (default info: the access log is measured)
  --quick             smoke test: 2 s phases, 1 run, 2000 registrations";

/// The operator key the server is started with; it may act for any tenant.
const API_KEY: &str = "bench-key";
const TENANTS: usize = 100;
const SERVICES_PER_TENANT: usize = 10;
const REGISTRATIONS: usize = 10_000;
const QUICK_REGISTRATIONS: usize = 2_000;
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// Targets of the issue, as ratios of the medians.
const LOOKUP_THROUGHPUT_TARGET: f64 = 0.60;
const LOOKUP_P99_TARGET: f64 = 1.5;
const REGISTER_THROUGHPUT_TARGET: f64 = 0.30;

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(options) = Options::parse(args)? else {
        eprintln!("{USAGE}");
        return Ok(());
    };
    let root = crate::project_root()?;
    crate::run_step(
        "build",
        crate::cargo().args(["build", "--release", "-p", "hub-server"]),
    )?;
    // Cargo resolves a relative CARGO_TARGET_DIR against its working
    // directory, which `crate::cargo()` sets to the root; `join` keeps an
    // absolute one as it is.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    let binary = target.join("release").join("hub-server");
    if !binary.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    let log_dir = target.join("bench");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    // Two workers: the load generator shares the machine's cores with the
    // server, and more threads than cores would only add context switches.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime of the load generator")?;
    runtime.block_on(bench(&options, &binary, &log_dir))
}

/// Command-line options after `--quick` and the explicit flags are applied.
#[derive(Debug)]
struct Options {
    duration: Duration,
    runs: usize,
    connections: usize,
    registrations: usize,
    log_level: String,
}

impl Options {
    /// `Ok(None)` means help was asked for.
    fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        let mut quick = false;
        let mut duration_secs = None;
        let mut runs = None;
        let mut connections = None;
        let mut log_level = None;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            // Both `--flag value` and `--flag=value` are accepted.
            let (flag, inline) = match arg.split_once('=') {
                Some((flag, value)) => (flag, Some(value.to_owned())),
                None => (arg.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .with_context(|| format!("{flag} needs a value\n\n{USAGE}"))
            };
            match flag {
                "--duration-secs" => duration_secs = Some(positive(flag, &value()?)?),
                "--runs" => runs = Some(positive(flag, &value()?)?),
                "--connections" => connections = Some(positive(flag, &value()?)?),
                "--log-level" => log_level = Some(value()?),
                "--quick" => quick = true,
                "--help" | "-h" => return Ok(None),
                other => bail!("unknown option {other:?}\n\n{USAGE}"),
            }
        }
        let duration_secs = duration_secs.unwrap_or(if quick { 2 } else { 10 });
        Ok(Some(Self {
            duration: Duration::from_secs(u64::try_from(duration_secs)?),
            runs: runs.unwrap_or(if quick { 1 } else { 3 }),
            connections: connections.unwrap_or(64),
            registrations: if quick {
                QUICK_REGISTRATIONS
            } else {
                REGISTRATIONS
            },
            log_level: log_level.unwrap_or_else(|| "info".to_owned()),
        }))
    }
}

fn positive(flag: &str, value: &str) -> anyhow::Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bail!("{flag} must be a positive whole number (got {value:?})"),
    }
}

/// The phases of one run, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Register,
    Lookup,
    Health,
}

impl Phase {
    const ALL: [Self; 3] = [Self::Register, Self::Lookup, Self::Health];

    fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Lookup => "lookup",
            Self::Health => "health",
        }
    }
}

/// The figures of one phase of one run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The figures of one run, in `Phase::ALL` order, and the server's peak RSS.
#[derive(Debug)]
struct RunResult {
    phases: [Figures; 3],
    peak_rss_kib: u64,
}

async fn bench(options: &Options, binary: &Path, log_dir: &Path) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    // Other work on the machine (a compiler, say) skews every figure, so the
    // load average before the start is part of the record.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?");
    report(&format!(
        "machine: nproc={cores}, 1-min load {load} before start; the load generator (2 tokio workers) \
         and hub-server share these cores, so absolute figures understate a dedicated server\n\
         setup: {} connections, {} registrations over {TENANTS} tenants, {} s lookup and health phases, \
         {} run(s), server RUST_LOG={}\n",
        options.connections,
        options.registrations,
        options.duration.as_secs(),
        options.runs,
        options.log_level,
    ));
    let mut runs = Vec::with_capacity(options.runs);
    for run in 1..=options.runs {
        let log_path = log_dir.join(format!("server-run{run}.log"));
        progress(&format!(
            "run {run}/{}: starting {} (log: {})",
            options.runs,
            binary.display(),
            log_path.display()
        ));
        let mut server = Server::start(binary, &log_path, &options.log_level)?;
        server.wait_ready().await?;
        let result = one_run(options, &mut server)
            .await
            .with_context(|| format!("run {run} (server log: {})", log_path.display()))?;
        drop(server);
        report(&run_table(run, &result));
        runs.push(result);
    }
    report(&summary(&runs));
    Ok(())
}

/// Registration, then lookups of what was registered, then the health ceiling
/// against the same server (so both time-bound phases see the same state).
async fn one_run(options: &Options, server: &mut Server) -> anyhow::Result<RunResult> {
    let mut phases = Vec::with_capacity(Phase::ALL.len());
    let mut peak_rss_kib = 0;
    for phase in Phase::ALL {
        progress(&format!("  {}...", phase.name()));
        let workload = Workload::new(phase, options, server.addr)?;
        let stop = match phase {
            Phase::Register => Stop::After(options.registrations),
            Phase::Lookup | Phase::Health => Stop::At(options.duration),
        };
        let figures = drive(server.addr, options.connections, Arc::new(workload), stop)
            .await
            .with_context(|| format!("{} phase", phase.name()))?;
        server.check_alive()?;
        peak_rss_kib = peak_rss_kib.max(server.peak_rss_kib()?);
        if phase == Phase::Register {
            verify_registrations(server.addr, options.registrations).await?;
        }
        phases.push(figures);
    }
    let phases = <[Figures; 3]>::try_from(phases)
        .map_err(|_| anyhow::anyhow!("expected one set of figures per phase"))?;
    Ok(RunResult {
        phases,
        peak_rss_kib,
    })
}

/// A hub-server child process, killed when dropped so that no error path
/// leaves it running.
#[derive(Debug)]
struct Server {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
}

impl Server {
    fn start(binary: &Path, log_path: &Path, log_level: &str) -> anyhow::Result<Self> {
        let addr = free_port()?;
        let log =
            File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        // A cleared environment keeps the developer's variables out of the
        // measurement; in particular the server refuses to start when a
        // backend such as POSTGRES_HOST or NATS_URL is set. The log goes to a
        // file so that a terminal cannot become the bottleneck.
        let child = Command::new(binary)
            .env_clear()
            .env("HUB_BIND", addr.to_string())
            .env("CENTRAL_HUB_API_KEYS", API_KEY)
            .env("RUST_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            addr,
            log_path: log_path.to_owned(),
        })
    }

    /// Polls `GET /health` until it answers 200, the process exits, or the
    /// deadline passes.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            self.check_alive()?;
            let last_error = match get_status(self.addr, "/health").await {
                Ok(200) => return Ok(()),
                Ok(status) => format!("status {status}"),
                Err(error) => format!("{error:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "hub-server on {} was not ready after {READY_DEADLINE:?} (last: {last_error}); see {}",
                    self.addr,
                    self.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Fails if the server has exited, which would make every later figure
    /// meaningless.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("checking on hub-server")? {
            bail!(
                "hub-server exited unexpectedly ({status}); see {}",
                self.log_path.display()
            );
        }
        Ok(())
    }

    /// `VmHWM` of the server: the peak resident set size since it started.
    fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        let status = read_proc_status(self.child.id())?;
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .context("no VmHWM line in /proc/<pid>/status")?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse()
            .with_context(|| format!("VmHWM is not a number of kB: {line:?}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The benchmark is over for this server, so there is nothing in flight
        // worth a graceful shutdown; errors mean it has already exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_proc_status(pid: u32) -> anyhow::Result<String> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))
}

/// A port nobody listens on right now. The listener is dropped before the
/// server binds, which leaves a small window for a race that loopback
/// benchmarks can live with.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    listener.local_addr().context("reading the free port")
}

/// One request from a fresh connection; only for readiness and checks.
async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let (status, _) = get_once(addr, path, None).await?;
    Ok(status)
}

async fn get_once(
    addr: SocketAddr,
    path: &str,
    tenant: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut sender = connect(addr).await?;
    let mut request = Request::get(path).header(HOST, addr.to_string());
    if let Some(tenant) = tenant {
        request = request
            .header("x-api-key", API_KEY)
            .header("x-tenant-id", tenant);
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::new()))?)
        .await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// After the registration phase, the first and the last tenant must list
/// every instance of a service, or the lookup phase would measure 404s or
/// short answers.
async fn verify_registrations(addr: SocketAddr, registrations: usize) -> anyhow::Result<()> {
    let expected = registrations / (TENANTS * SERVICES_PER_TENANT);
    for tenant in [0, TENANTS - 1] {
        let tenant = tenant_name(tenant);
        let path = format!("/api/v1/discovery/services/{}", service_name(0));
        let (status, body) = get_once(addr, &path, Some(&tenant)).await?;
        if status != 200 {
            bail!("GET {path} for {tenant} answered {status} after registration");
        }
        let json: serde_json::Value =
            serde_json::from_slice(&body).context("lookup answer is not JSON")?;
        let found = json
            .get("instances")
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if found != expected {
            bail!("GET {path} for {tenant} lists {found} instances, expected {expected}");
        }
    }
    Ok(())
}

async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    // Requests are small and sent one at a time; Nagle would only add delay.
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    // A connection error also fails the next `send_request`, which is where
    // it is counted, so the driver's own result adds nothing.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

fn tenant_name(index: usize) -> String {
    format!("bench-t{index:03}")
}

fn service_name(index: usize) -> String {
    format!("svc-{index:03}")
}

/// Everything a phase sends, built before the clock starts so that the load
/// generator spends its share of the cores on sending, not formatting.
#[derive(Debug)]
struct Workload {
    method: Method,
    host: HeaderValue,
    /// Request `i` uses `targets[i % targets.len()]`.
    targets: Vec<Target>,
}

#[derive(Debug)]
struct Target {
    uri: Uri,
    tenant: Option<HeaderValue>,
    body: Bytes,
}

impl Workload {
    fn new(phase: Phase, options: &Options, addr: SocketAddr) -> anyhow::Result<Self> {
        let host = HeaderValue::from_str(&addr.to_string())?;
        let tenant_header = |t: usize| HeaderValue::from_str(&tenant_name(t));
        let (method, targets) = match phase {
            Phase::Register => {
                let uri = Uri::from_static("/api/v1/discovery/register");
                // Instance `i` goes to tenant `i % 100`, then service, then
                // instance number, so every tenant gets 10 services with an
                // equal share of instances each.
                let targets = (0..options.registrations)
                    .map(|i| {
                        let tenant = i % TENANTS;
                        let rest = i / TENANTS;
                        let service = rest % SERVICES_PER_TENANT;
                        let instance = rest / SERVICES_PER_TENANT;
                        // TTL is the maximum so no lease expires, and no
                        // instance turns critical, while the run is going.
                        let body = serde_json::json!({
                            "service_name": service_name(service),
                            "instance_id": format!("i-{i:05}"),
                            "host": format!("10.{tenant}.{service}.{instance}"),
                            "port": 8080,
                            "tags": ["bench"],
                            "metadata": { "zone": "a" },
                            "ttl_seconds": 3600,
                        });
                        Ok(Target {
                            uri: uri.clone(),
                            tenant: Some(tenant_header(tenant)?),
                            body: Bytes::from(body.to_string()),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                (Method::POST, targets)
            }
            Phase::Lookup => {
                // Round robin over tenants first, then services.
                let targets = (0..TENANTS * SERVICES_PER_TENANT)
                    .map(|i| {
                        let path =
                            format!("/api/v1/discovery/services/{}", service_name(i / TENANTS));
                        Ok(Target {
                            uri: Uri::try_from(path)?,
                            tenant: Some(tenant_header(i % TENANTS)?),
                            body: Bytes::new(),
                        })
                    })
                    .collect::<anyhow::Result<_>>()?;
                (Method::GET, targets)
            }
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
            method,
            host,
            targets,
        })
    }

    fn request(&self, index: usize) -> anyhow::Result<Request<Full<Bytes>>> {
        let target = self
            .targets
            .get(index % self.targets.len().max(1))
            .context("a workload without requests")?;
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(target.uri.clone())
            .header(HOST, self.host.clone());
        if let Some(tenant) = &target.tenant {
            request = request
                .header("x-api-key", HeaderValue::from_static(API_KEY))
                .header("x-tenant-id", tenant.clone());
        }
        if !target.body.is_empty() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Ok(request.body(Full::new(target.body.clone()))?)
    }
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// After this many requests in total (registration).
    After(usize),
    /// When this much time has passed since the start (lookup, health).
    At(Duration),
}

/// What one connection's task measured.
#[derive(Debug)]
struct TaskResult {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs one closed-loop phase: `connections` tasks, each with its own
/// keep-alive connection and one request in flight at a time.
async fn drive(
    addr: SocketAddr,
    connections: usize,
    workload: Arc<Workload>,
    stop: Stop,
) -> anyhow::Result<Figures> {
    // Connections are opened before the clock starts: the figures are about
    // requests, not TCP handshakes.
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = match stop {
        Stop::At(duration) => Some(started + duration),
        Stop::After(_) => None,
    };
    let limit = match stop {
        Stop::After(count) => count,
        Stop::At(_) => usize::MAX,
    };
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let workload = Arc::clone(&workload);
            let next = Arc::clone(&next);
            tokio::spawn(connection_loop(sender, workload, next, limit, deadline))
        })
        .collect();
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let result = task.await.context("a load generator task panicked")??;
        histogram
            .add(&result.histogram)
            .context("merging latency histograms")?;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = histogram.len();
    if let Some(first) = first_error {
        bail!("{errors} of {requests} requests failed; the first: {first}");
    }
    if requests == 0 {
        bail!("no request completed");
    }
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    Ok(Figures {
        requests,
        errors,
        rps: requests as f64 / elapsed,
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds from 1 µs to 60 s with three significant figures, which
    // resolves every latency to 0.1 %.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a latency histogram")
}

/// One connection's closed loop. Every request counts in the histogram,
/// errors included, so `requests` is what the server was asked to do.
async fn connection_loop(
    mut sender: SendRequest<Full<Bytes>>,
    workload: Arc<Workload>,
    next: Arc<AtomicUsize>,
    limit: usize,
    deadline: Option<Instant>,
) -> anyhow::Result<TaskResult> {
    let mut result = TaskResult {
        histogram: new_histogram()?,
        errors: 0,
        first_error: None,
    };
    loop {
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            break;
        }
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= limit {
            break;
        }
        let request = workload.request(index)?;
        let sent = Instant::now();
        let outcome = send(&mut sender, request).await;
        let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
        result.histogram.saturating_record(micros.max(1));
        match outcome {
            Ok(()) => {}
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
                // A transport error leaves the connection unusable, and one
                // error already fails the phase, so this task stops here.
                if error.downcast_ref::<hyper::Error>().is_some() {
                    break;
                }
            }
        }
    }
    Ok(result)
}

/// Sends one request and reads the whole answer; non-2xx is an error.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<()> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {uri} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

const HEADER: &str = "phase          requests        rps   p50 ms   p99 ms   errors";

fn row(out: &mut String, name: &str, requests: u64, figures: &Figures) {
    let _ = writeln!(
        out,
        "{name:<10} {requests:>12} {:>10.1} {:>8.3} {:>8.3} {:>8}",
        figures.rps, figures.p50_ms, figures.p99_ms, figures.errors
    );
}

fn run_table(run: usize, result: &RunResult) -> String {
    let mut out = format!("\nrun {run}\n{HEADER}\n");
    for (phase, figures) in Phase::ALL.iter().zip(&result.phases) {
        row(&mut out, phase.name(), figures.requests, figures);
    }
    let _ = writeln!(out, "peak RSS: {:.1} MiB", mib(result.peak_rss_kib));
    out
}

fn summary(runs: &[RunResult]) -> String {
    let mut out = format!(
        "\nmedians of {} run(s) (each figure separately)\n{HEADER}\n",
        runs.len()
    );
    let mut medians = Vec::new();
    for (i, phase) in Phase::ALL.iter().enumerate() {
        let of = |f: fn(&Figures) -> f64| median(runs.iter().map(|r| f(&r.phases[i])).collect());
        let figures = Figures {
            requests: 0,
            errors: runs.iter().map(|r| r.phases[i].errors).sum(),
            rps: of(|f| f.rps),
            p50_ms: of(|f| f.p50_ms),
            p99_ms: of(|f| f.p99_ms),
        };
        let requests = runs.iter().map(|r| r.phases[i].requests).sum();
        row(&mut out, phase.name(), requests, &figures);
        medians.push((*phase, figures));
    }
    let peak = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "peak RSS: {:.1} MiB (max over runs; requests column is the total of all runs)\n",
        mib(peak)
    );
    let get = |wanted: Phase| {
        medians
            .iter()
            .find(|(phase, _)| *phase == wanted)
            .map(|(_, figures)| *figures)
    };
    if let (Some(register), Some(lookup), Some(health)) =
        (get(Phase::Register), get(Phase::Lookup), get(Phase::Health))
    {
        target(
            &mut out,
            "lookup/health throughput",
            lookup.rps / health.rps,
            Bound::AtLeast(LOOKUP_THROUGHPUT_TARGET),
        );
        target(
            &mut out,
            "lookup/health p99",
            lookup.p99_ms / health.p99_ms,
            Bound::AtMost(LOOKUP_P99_TARGET),
        );
        target(
            &mut out,
            "register/health throughput",
            register.rps / health.rps,
            Bound::AtLeast(REGISTER_THROUGHPUT_TARGET),
        );
    }
    out
}

/// A target of the issue, stated as a bound on a ratio.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

fn target(out: &mut String, name: &str, ratio: f64, bound: Bound) {
    let (pass, relation, bound) = match bound {
        Bound::AtLeast(b) => (ratio >= b, ">=", b),
        Bound::AtMost(b) => (ratio <= b, "<=", b),
    };
    let verdict = if pass { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "{name:<27} {ratio:.2} (target {relation} {bound:.2}) {verdict}"
    );
}

/// The results: the only output on stdout, so it can be redirected to a file.
#[allow(clippy::print_stdout)]
fn report(text: &str) {
    print!("{text}");
}

/// Progress notes go to stderr, next to cargo's own output.
fn progress(text: &str) {
    eprintln!("{text}");
}
