//! CPU sampling from /proc: the server, every `postgres` process, the event brokers, the load generator and the whole machine.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;

/// Linux reports process CPU time in clock ticks of `USER_HZ`, which the
/// kernel fixes at 100 for user space on every architecture it supports.
pub(crate) const USER_HZ: f64 = 100.0;

/// CPU time consumed during a phase, in seconds, and how busy the whole
/// machine was (0 to 1 over all cores).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuUsage {
    pub(crate) wall_s: f64,
    pub(crate) server_s: f64,
    pub(crate) postgres_s: f64,
    /// The part of `postgres_s` spent by backends connected to the bench's
    /// database; the rest is the cluster's own processes and other users.
    pub(crate) postgres_bench_s: f64,
    /// The event brokers (`nats-server`, `tansu`), whoever uses them.
    pub(crate) brokers_s: f64,
    pub(crate) generator_s: f64,
    pub(crate) machine_busy: f64,
}

impl CpuUsage {
    /// Percent of one core.
    pub(crate) fn percent(&self, seconds: f64) -> f64 {
        if self.wall_s > 0.0 {
            seconds / self.wall_s * 100.0
        } else {
            f64::NAN
        }
    }
}

/// CPU counters at one instant, in clock ticks.
#[derive(Debug)]
pub(crate) struct CpuSample {
    pub(crate) at: Instant,
    pub(crate) server: u64,
    /// Every process whose comm is `postgres`: ticks, and whether it is a
    /// backend of the bench's database.
    pub(crate) postgres: HashMap<u32, (u64, bool)>,
    /// Every process whose comm is one of `BROKERS`: ticks.
    pub(crate) brokers: HashMap<u32, u64>,
    pub(crate) generator: u64,
    pub(crate) machine_total: u64,
    pub(crate) machine_idle: u64,
}

impl CpuSample {
    pub(crate) fn take(server_pid: u32, database: &str) -> anyhow::Result<Self> {
        let server =
            process_ticks(&server_pid.to_string()).context("reading the CPU time of hub-server")?;
        let generator = process_ticks("self").context("reading the CPU time of the bench")?;
        let (machine_total, machine_idle) = machine_ticks()?;
        let (postgres, brokers) = other_ticks(database);
        Ok(Self {
            at: Instant::now(),
            server,
            postgres,
            brokers,
            generator,
            machine_total,
            machine_idle,
        })
    }

    pub(crate) fn since(&self, before: &Self) -> CpuUsage {
        let seconds = |ticks: u64| ticks as f64 / USER_HZ;
        // Per process, so that a backend that exits during the phase only
        // loses its own share instead of making the sum go down; one that
        // starts during the phase counts whole.
        let (mut postgres, mut bench) = (0, 0);
        for (pid, (ticks, ours)) in &self.postgres {
            let start = before.postgres.get(pid).map_or(0, |(ticks, _)| *ticks);
            let spent = ticks.saturating_sub(start);
            postgres += spent;
            if *ours {
                bench += spent;
            }
        }
        let brokers: u64 = self
            .brokers
            .iter()
            .map(|(pid, ticks)| ticks.saturating_sub(before.brokers.get(pid).copied().unwrap_or(0)))
            .sum();
        let total = self.machine_total.saturating_sub(before.machine_total);
        let idle = self.machine_idle.saturating_sub(before.machine_idle);
        CpuUsage {
            wall_s: self.at.duration_since(before.at).as_secs_f64(),
            server_s: seconds(self.server.saturating_sub(before.server)),
            postgres_s: seconds(postgres),
            postgres_bench_s: seconds(bench),
            brokers_s: seconds(brokers),
            generator_s: seconds(self.generator.saturating_sub(before.generator)),
            machine_busy: if total > 0 {
                1.0 - idle as f64 / total as f64
            } else {
                f64::NAN
            },
        }
    }
}

/// utime + stime of `/proc/<pid>/stat`.
pub(crate) fn process_ticks(pid: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name in parentheses may hold spaces, so the fields are
    // counted from the last ')': state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index - 3)
            .and_then(|value| value.parse().ok())
            .with_context(|| format!("field {index} of {path} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// The command names (`comm`) of the event brokers whose CPU time is counted.
pub(crate) const BROKERS: [&str; 2] = ["nats-server", "tansu"];

/// The ticks of every `postgres` process and of every event broker this user
/// can see. Processes come and go while /proc is read, so one that cannot be
/// read is left out.
pub(crate) fn other_ticks(database: &str) -> (HashMap<u32, (u64, bool)>, HashMap<u32, u64>) {
    let mut found = HashMap::new();
    let mut brokers = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (found, brokers);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
            continue;
        };
        let comm = comm.trim_end();
        let is_broker = BROKERS.contains(&comm);
        if comm != "postgres" && !is_broker {
            continue;
        }
        let Ok(ticks) = process_ticks(&pid.to_string()) else {
            continue;
        };
        if is_broker {
            brokers.insert(pid, ticks);
            continue;
        }
        // A backend's title is "postgres: <cluster>: <user> <database> ...".
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
            String::from_utf8_lossy(&cmdline)
                .split(|c: char| c.is_whitespace() || c == '\0')
                .any(|word| word == database)
        });
        found.insert(pid, (ticks, ours));
    }
    (found, brokers)
}

/// All and idle (idle + iowait) ticks of the machine, from `/proc/stat`.
pub(crate) fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("/proc/stat does not start with the cpu line")?
        .split_whitespace()
        .filter_map(|value| value.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time is already
    // part of user, so the later columns are not added again.
    let total = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total, idle))
}
