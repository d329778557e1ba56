//! The open-loop sender of the event latency phase: request `i` at `start + i / rate`, noting when each answer came.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;

use crate::bench::console::progress;
use crate::bench::load::{connect, new_histogram, send};
use crate::bench::workload::Workload;
/// A send this far behind its schedule counts as late: the sender, not the
/// server, paced it. Above the tokio timer's millisecond resolution.
pub(super) const LATE: Duration = Duration::from_millis(5);
/// The open-loop phase starts this long after its connections are open, so
/// that every sender task is waiting on its first slot before it comes.
pub(super) const LEAD: Duration = Duration::from_millis(50);

/// What the open-loop sender measured.
#[derive(Debug)]
pub(crate) struct Paced {
    /// When the 2xx answer to registration `i` was read.
    pub(crate) acks: Vec<Option<Instant>>,
    pub(super) http: Histogram<u64>,
    pub(crate) late: usize,
    pub(super) max_lag: Duration,
    pub(crate) errors: u64,
    pub(super) first_error: Option<String>,
}

/// One sender task's share of it.
#[derive(Debug)]
pub(super) struct PacedTask {
    pub(super) acks: Vec<(usize, Instant)>,
    pub(super) http: Histogram<u64>,
    pub(super) late: usize,
    pub(super) max_lag: Duration,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) lost: Option<String>,
}

/// Sends request `i` of `workload` at `start + i / rate`, `total` in all,
/// over `connections` keep-alive connections: each task takes the next
/// request, waits for its slot, sends it and reads the answer. With enough
/// tasks one is always waiting for the next slot, so the server's answers do
/// not pace the sends; a send that starts more than `LATE` behind its slot
/// is counted.
pub(crate) async fn paced(
    addr: SocketAddr,
    connections: usize,
    workload: Arc<Workload>,
    total: usize,
    rate: usize,
) -> anyhow::Result<Paced> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now() + LEAD;
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let workload = Arc::clone(&workload);
            let next = Arc::clone(&next);
            tokio::spawn(paced_loop(sender, workload, next, total, start, rate))
        })
        .collect();
    let mut paced = Paced {
        acks: vec![None; total],
        http: new_histogram()?,
        late: 0,
        max_lag: Duration::ZERO,
        errors: 0,
        first_error: None,
    };
    let mut lost = None;
    for task in tasks {
        let result = task.await.context("a load generator task panicked")??;
        for (index, at) in result.acks {
            if let Some(slot) = paced.acks.get_mut(index) {
                *slot = Some(at);
            }
        }
        paced
            .http
            .add(&result.http)
            .context("merging latency histograms")?;
        paced.late += result.late;
        paced.max_lag = paced.max_lag.max(result.max_lag);
        paced.errors += result.errors;
        paced.first_error = paced.first_error.or(result.first_error);
        lost = lost.or(result.lost);
    }
    if let Some(lost) = lost {
        bail!(
            "{} of {total} registrations failed, and a connection was lost: {lost}",
            paced.errors
        );
    }
    if let Some(first) = &paced.first_error {
        progress(&format!(
            "  warning: {} of {total} registrations failed; the first: {first}",
            paced.errors
        ));
    }
    Ok(paced)
}

pub(super) async fn paced_loop(
    mut sender: SendRequest<Full<Bytes>>,
    workload: Arc<Workload>,
    next: Arc<AtomicUsize>,
    total: usize,
    start: Instant,
    rate: usize,
) -> anyhow::Result<PacedTask> {
    let mut result = PacedTask {
        acks: Vec::new(),
        http: new_histogram()?,
        late: 0,
        max_lag: Duration::ZERO,
        errors: 0,
        first_error: None,
        lost: None,
    };
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= total {
            break;
        }
        let slot = start + Duration::from_secs_f64(index as f64 / rate as f64);
        tokio::time::sleep_until(slot.into()).await;
        let lag = Instant::now().saturating_duration_since(slot);
        if lag > LATE {
            result.late += 1;
        }
        result.max_lag = result.max_lag.max(lag);
        let request = workload.request(index)?;
        let outcome = send(&mut sender, request).await;
        let answered = Instant::now();
        let micros =
            u64::try_from(answered.saturating_duration_since(slot).as_micros()).unwrap_or(u64::MAX);
        result.http.saturating_record(micros.max(1));
        match outcome {
            Ok(()) => result.acks.push((index, answered)),
            Err(error) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
                if error.downcast_ref::<hyper::Error>().is_some() {
                    result.lost = Some(format!("{error:#}"));
                    break;
                }
            }
        }
    }
    Ok(result)
}
