//! The closed-loop HTTP load generator: one keep-alive HTTP/1.1 connection per task, one request in flight each, latencies in a histogram.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::bench::console::progress;
use crate::bench::names::API_KEY;
use crate::bench::workload::Workload;

/// The figures of one phase of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) rps: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// What a failed request does to a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnError {
    /// The phase fails.
    Fail,
    /// The phase goes on; the error answers are counted and the first one is
    /// shown. A lost connection still fails it: that is a server going away,
    /// not a slow store.
    Count,
}

/// When a phase ends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stop {
    /// After this many requests in total (registration).
    After(usize),
    /// When this much time has passed since the start (lookup, health).
    At(Duration),
}

/// What one connection's task measured.
#[derive(Debug)]
pub(crate) struct TaskResult {
    pub(crate) histogram: Histogram<u64>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Why the connection was lost, if it was (which ended this task).
    pub(crate) lost: Option<String>,
}

/// Runs one closed-loop phase: `connections` tasks, each with its own
/// keep-alive connection and one request in flight at a time.
pub(crate) async fn drive(
    addr: SocketAddr,
    connections: usize,
    workload: Arc<Workload>,
    stop: Stop,
    on_error: OnError,
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
    let mut lost = None;
    for task in tasks {
        let result = task.await.context("a load generator task panicked")??;
        histogram
            .add(&result.histogram)
            .context("merging latency histograms")?;
        errors += result.errors;
        first_error = first_error.or(result.first_error);
        lost = lost.or(result.lost);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = histogram.len();
    if let Some(lost) = lost {
        bail!("{errors} of {requests} requests failed, and a connection was lost: {lost}");
    }
    if let Some(first) = first_error {
        if on_error == OnError::Fail {
            bail!("{errors} of {requests} requests failed; the first: {first}");
        }
        progress(&format!(
            "  warning: {errors} of {requests} requests failed; the first: {first}"
        ));
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

pub(crate) fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds from 1 µs to 60 s with three significant figures, which
    // resolves every latency to 0.1 %.
    Histogram::new_with_bounds(1, 60_000_000, 3).context("creating a latency histogram")
}

/// One connection's closed loop. Every request counts in the histogram,
/// errors included, so `requests` is what the server was asked to do.
pub(crate) async fn connection_loop(
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
        lost: None,
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
                // A transport error leaves the connection unusable, and it
                // fails the phase, so this task stops here.
                if error.downcast_ref::<hyper::Error>().is_some() {
                    result.lost = Some(format!("{error:#}"));
                    break;
                }
            }
        }
    }
    Ok(result)
}

/// Sends one request and reads the whole answer; non-2xx is an error.
pub(crate) async fn send(
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

pub(crate) async fn connect(addr: SocketAddr) -> anyhow::Result<SendRequest<Full<Bytes>>> {
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

/// One request from a fresh connection; only for readiness and checks.
pub(crate) async fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let (status, _) = get_once(addr, path, None).await?;
    Ok(status)
}

pub(crate) async fn get_once(
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
