//! Summaries of a tenant's registry for the dashboard: instances counted by status, and per service the newest heartbeat and the latest metrics reported.

use chrono::{DateTime, Utc};

use crate::domain::ids::ServiceName;
use crate::domain::instance::HealthStatus;
use crate::lease::MetricSample;

/// Instances counted by status. `total` is the sum of the three others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusCounts {
    /// Every instance counted.
    pub total: u64,
    /// Instances whose lease is alive and who report `passing`.
    pub passing: u64,
    /// Instances that report `warning`.
    pub warning: u64,
    /// Instances that report `critical` or whose lease ran out.
    pub critical: u64,
}

impl StatusCounts {
    /// Counts `n` more instances of `status`.
    pub fn add(&mut self, status: HealthStatus, n: u64) {
        self.total += n;
        match status {
            HealthStatus::Passing => self.passing += n,
            HealthStatus::Warning => self.warning += n,
            HealthStatus::Critical => self.critical += n,
        }
    }

    /// The sum of two counts (totals across tenants).
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            total: self.total + other.total,
            passing: self.passing + other.passing,
            warning: self.warning + other.warning,
            critical: self.critical + other.critical,
        }
    }

    /// Whether more than half of the instances are critical ("most").
    pub fn most_critical(&self) -> bool {
        self.total > 0 && self.critical * 2 > self.total
    }
}

/// One service of a tenant, as the dashboard shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    /// The service.
    pub service_name: ServiceName,
    /// Its instances by status.
    pub counts: StatusCounts,
    /// The newest `last_heartbeat` among its instances (with leases in
    /// Dragonfly: as of each instance's last change, like every read).
    pub newest_heartbeat: Option<DateTime<Utc>>,
    /// The most recent heartbeat metrics any of its instances reported (as
    /// stored: with leases in Dragonfly, the latest sample).
    pub latest_metrics: Option<MetricSample>,
}
