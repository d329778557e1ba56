//! `--peers`: etcd and r-nacos measured with the same load generator in the same run as the hub's phases, and their figures set beside the hub's.
//!
//! The peers come from PATH; one that is missing is reported once and
//! skipped, which is not an error (neither is installed on a fresh machine
//! or in CI). Each run starts each peer afresh on a temporary folder and
//! free ports, with the same connections and the same distinct instances
//! over 100 tenants as the hub's registration phase.

mod etcd;
mod process;
mod rnacos;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub(crate) use etcd::EtcdResult;
pub(crate) use rnacos::NacosResult;

use crate::bench::console::report;
use crate::bench::load::Figures;
use crate::bench::options::Options;
use crate::bench::report::{Bound, median, median_figures, row, target};

/// Target of issue 11: PostgreSQL-mode registrations against etcd's puts
/// through its HTTP/JSON gateway.
const PG_REGISTER_VS_ETCD_TARGET: f64 = 1.0;

/// The peers found on PATH.
#[derive(Debug)]
pub(crate) struct Peers {
    etcd: Option<PathBuf>,
    rnacos: Option<PathBuf>,
}

/// Looks the peers up once before the runs and says which are missing.
pub(crate) fn find(options: &Options) -> Option<Peers> {
    if !options.peers {
        return None;
    }
    let etcd = process::on_path("etcd");
    let rnacos = process::on_path("rnacos");
    match &etcd {
        Some(path) => report(&format!(
            "peers: etcd {} (HTTP/JSON gateway /v3/; temporary data folder, fsync as shipped)\n",
            path.display()
        )),
        None => report(
            "etcd not on PATH: install with `apt-get install -y etcd-server`; peers skipped\n",
        ),
    }
    match &rnacos {
        Some(path) => report(&format!(
            "peers: rnacos {} (Nacos HTTP API)\n",
            path.display()
        )),
        None => report("rnacos not on PATH: install with `cargo install rnacos`; skipped\n"),
    }
    Some(Peers { etcd, rnacos })
}

/// The peers' figures of one run.
#[derive(Debug)]
pub(crate) struct PeersResult {
    pub(crate) etcd: Option<EtcdResult>,
    pub(crate) rnacos: Option<NacosResult>,
}

/// Measures every peer found, one after the other.
pub(crate) async fn run(
    options: &Options,
    peers: &Peers,
    log_dir: &Path,
    run: usize,
) -> anyhow::Result<PeersResult> {
    let etcd = match &peers.etcd {
        Some(binary) => {
            let log_path = log_dir.join(format!("etcd-run{run}.log"));
            let result = etcd::measure(options, binary, &log_path)
                .await
                .with_context(|| format!("etcd (log: {})", log_path.display()))?;
            Some(result)
        }
        None => None,
    };
    let rnacos = match &peers.rnacos {
        Some(binary) => {
            let log_path = log_dir.join(format!("rnacos-run{run}.log"));
            let result = rnacos::measure(options, binary, &log_path)
                .await
                .with_context(|| format!("rnacos (log: {})", log_path.display()))?;
            Some(result)
        }
        None => None,
    };
    Ok(PeersResult { etcd, rnacos })
}

const ETCD_PUT: &str = "etcd put";
const ETCD_LEASE_PUT: &str = "etcd put+lease";
const ETCD_RANGE: &str = "etcd range";
const NACOS_REGISTER: &str = "rnacos reg";
const NACOS_LIST: &str = "rnacos list";

/// The peers' rows of one run's table.
pub(crate) fn run_rows(out: &mut String, result: &PeersResult) {
    if let Some(etcd) = &result.etcd {
        row(out, ETCD_PUT, etcd.put.requests, &etcd.put);
        row(
            out,
            ETCD_LEASE_PUT,
            etcd.lease_put.requests,
            &etcd.lease_put,
        );
        row(out, ETCD_RANGE, etcd.range.requests, &etcd.range);
    }
    if let Some(nacos) = &result.rnacos {
        row(
            out,
            NACOS_REGISTER,
            nacos.register.requests,
            &nacos.register,
        );
        row(out, NACOS_LIST, nacos.list.requests, &nacos.list);
    }
}

/// The CPU etcd spent per put, beside the PostgreSQL CPU per registration.
pub(crate) fn cpu_lines(out: &mut String, runs: &[&PeersResult]) {
    let per_1k: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.etcd.as_ref())
        .map(|etcd| etcd.put_cpu_s * 1000.0 / (etcd.put.requests as f64 / 1000.0))
        .collect();
    if !per_1k.is_empty() {
        let _ = writeln!(
            out,
            "etcd put CPU-ms per 1,000 puts (the etcd process): {:.0}",
            median(per_1k)
        );
    }
}

/// The medians of the peers' figures, by row name.
#[derive(Debug, Default)]
pub(crate) struct PeerMedians {
    figures: Vec<(&'static str, Figures)>,
}

impl PeerMedians {
    fn get(&self, name: &str) -> Option<Figures> {
        self.figures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, figures)| *figures)
    }
}

/// The peers' rows of the medians table.
pub(crate) fn summary_rows(out: &mut String, runs: &[&PeersResult]) -> PeerMedians {
    let mut medians = PeerMedians::default();
    let mut add = |out: &mut String, name: &'static str, all: Vec<&Figures>| {
        if !all.is_empty() {
            let (requests, figures) = median_figures(&all);
            row(out, name, requests, &figures);
            medians.figures.push((name, figures));
        }
    };
    let etcd: Vec<&EtcdResult> = runs.iter().filter_map(|r| r.etcd.as_ref()).collect();
    add(out, ETCD_PUT, etcd.iter().map(|e| &e.put).collect());
    add(
        out,
        ETCD_LEASE_PUT,
        etcd.iter().map(|e| &e.lease_put).collect(),
    );
    add(out, ETCD_RANGE, etcd.iter().map(|e| &e.range).collect());
    let nacos: Vec<&NacosResult> = runs.iter().filter_map(|r| r.rnacos.as_ref()).collect();
    add(
        out,
        NACOS_REGISTER,
        nacos.iter().map(|n| &n.register).collect(),
    );
    add(out, NACOS_LIST, nacos.iter().map(|n| &n.list).collect());
    medians
}

/// Our medians that the peers are set beside: `(row name, figures, is a
/// registration)`; a lookup is compared with the peers' reads.
pub(crate) type Ours<'a> = [(&'a str, Option<Figures>, bool)];

/// Each of our figures beside each peer's of the same kind, with the ratios
/// (ours / the peer's), then the target against etcd.
pub(crate) fn side_by_side(
    out: &mut String,
    ours: &Ours<'_>,
    peers: &PeerMedians,
    pg_register: Option<Figures>,
) {
    if peers.figures.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nside by side (medians; x = ours / the peer's)\n\
         ours                rps   p99 ms  peer                 rps   p99 ms   rps x   p99 x"
    );
    for (name, figures, registration) in ours {
        let Some(figures) = figures else {
            continue;
        };
        let kinds: &[&str] = if *registration {
            &[ETCD_PUT, ETCD_LEASE_PUT, NACOS_REGISTER]
        } else {
            &[ETCD_RANGE, NACOS_LIST]
        };
        for peer in kinds {
            if let Some(theirs) = peers.get(peer) {
                let _ = writeln!(
                    out,
                    "{name:<14} {:>8.1} {:>8.3}  {peer:<15} {:>8.1} {:>8.3} {:>7.2} {:>7.2}",
                    figures.rps,
                    figures.p99_ms,
                    theirs.rps,
                    theirs.p99_ms,
                    figures.rps / theirs.rps,
                    figures.p99_ms / theirs.p99_ms,
                );
            }
        }
    }
    match (pg_register, peers.get(ETCD_PUT)) {
        (Some(pg), Some(etcd)) => target(
            out,
            "pg register/etcd put",
            pg.rps / etcd.rps,
            Bound::AtLeast(PG_REGISTER_VS_ETCD_TARGET),
        ),
        _ => {
            let _ = writeln!(
                out,
                "pg register/etcd put: not measured (PostgreSQL or etcd skipped)"
            );
        }
    }
}
