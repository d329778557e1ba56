//! Inputs of reads and heartbeats: `ListQuery` with its `ListCursor`, and `Heartbeat` with its metrics.

use crate::error::ValidationError;

use super::ids::{InstanceId, ServiceName};
use super::instance::{HealthStatus, Instance};
use super::registration::{MAX_TAGS, check_tag};

/// Default page size of a list.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest page size of a list.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Largest size of the instances one list page carries, as
/// [`listed_size`] counts them: a page ends at the query's limit or here,
/// whichever comes first, and a `next_cursor` continues it. Ten thousand
/// instances with large metadata made a 49 MB answer without it.
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Where the next page of a list starts: just after this (service, instance).
///
/// On the wire it is an opaque string; clients pass back what they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    service_name: ServiceName,
    instance_id: InstanceId,
}

impl ListCursor {
    /// The cursor that continues after this instance.
    pub fn after(service_name: ServiceName, instance_id: InstanceId) -> Self {
        Self {
            service_name,
            instance_id,
        }
    }

    /// Last service name of the previous page.
    pub fn service_name(&self) -> &ServiceName {
        &self.service_name
    }

    /// Last instance id of the previous page.
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance_id
    }

    /// The opaque wire form: hex of `service/instance` (neither may contain `/`).
    pub fn encode(&self) -> String {
        let raw = format!("{}/{}", self.service_name, self.instance_id);
        raw.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses what [`ListCursor::encode`] produced.
    pub fn decode(wire: &str) -> Result<Self, ValidationError> {
        let invalid = || ValidationError::new("cursor", "is not a cursor returned by this API");
        if !wire.len().is_multiple_of(2)
            || wire.len() > 2 * (ServiceName::MAX_LEN + InstanceId::MAX_LEN + 1)
        {
            return Err(invalid());
        }
        let bytes = (0..wire.len())
            .step_by(2)
            .map(|i| {
                wire.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(invalid)?;
        let raw = String::from_utf8(bytes).map_err(|_| invalid())?;
        let (service, instance) = raw.split_once('/').ok_or_else(invalid)?;
        // `restore`, not `parse`: a cursor may point just after an instance
        // stored before `.` and `..` were refused, and paging must go on.
        Ok(Self {
            service_name: ServiceName::restore(service).map_err(|_| invalid())?,
            instance_id: InstanceId::restore(instance).map_err(|_| invalid())?,
        })
    }
}

/// Filters and paging of a list. Results are ordered by service name, then
/// instance id, so paging is stable while the registry changes.
#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    service_name: Option<ServiceName>,
    tags: Vec<String>,
    status: Option<HealthStatus>,
    limit: usize,
    after: Option<ListCursor>,
}

impl Default for ListQuery {
    fn default() -> Self {
        Self {
            service_name: None,
            tags: Vec::new(),
            status: None,
            limit: DEFAULT_LIST_LIMIT,
            after: None,
        }
    }
}

impl ListQuery {
    /// A query; `limit` must be 1-10000 (default 1000 when `None`). Each tag
    /// obeys the rule of registered tags (field `tag`): a filter that no
    /// stored tag could ever match (empty, too long, NUL, control or
    /// invisible characters) is refused rather than run, so every store
    /// answers it alike.
    pub fn new(
        service_name: Option<ServiceName>,
        tags: Vec<String>,
        status: Option<HealthStatus>,
        limit: Option<i64>,
        after: Option<ListCursor>,
    ) -> Result<Self, ValidationError> {
        let limit = match limit {
            None => DEFAULT_LIST_LIMIT,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                .ok_or_else(|| {
                    ValidationError::new(
                        "limit",
                        format!("must be between 1 and {MAX_LIST_LIMIT} (got {n})"),
                    )
                })?,
        };
        if tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tag",
                format!(
                    "at most {MAX_TAGS} tags (got {}): an instance carries no more",
                    tags.len()
                ),
            ));
        }
        for tag in &tags {
            check_tag("tag", tag)?;
        }
        Ok(Self {
            service_name,
            tags,
            status,
            limit,
            after,
        })
    }

    /// Only this service.
    pub fn service_name(&self) -> Option<&ServiceName> {
        self.service_name.as_ref()
    }
    /// Only instances carrying all these tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    /// Only instances in this status.
    pub fn status(&self) -> Option<HealthStatus> {
        self.status
    }
    /// Page size.
    pub fn limit(&self) -> usize {
        self.limit
    }
    /// Continue after this position.
    pub fn after(&self) -> Option<&ListCursor> {
        self.after.as_ref()
    }
}

/// About how many bytes `instance` takes in a list answer: its metadata as
/// compact JSON, its strings, and a fixed allowance for the field names,
/// timestamps and numbers. Both stores cut pages with this one measure, so
/// embedded and PostgreSQL answers page identically.
pub fn listed_size(instance: &Instance) -> usize {
    /// Field names, quotes, three timestamps, port, revision and the url's
    /// scheme: what every instance's JSON carries besides its own values.
    const FIXED: usize = 400;
    /// Counts serialized bytes without keeping them.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut metadata = Counter(0);
    // Writing to a counter cannot fail; a map always serializes.
    let _ = serde_json::to_writer(&mut metadata, instance.metadata());
    let r = instance.registration();
    FIXED
        + metadata.0
        + instance.tenant_id().as_str().len()
        + 2 * instance.service_name().as_str().len()
        + instance.instance_id().as_str().len()
        + 2 * instance.host().as_str().len()
        + r.health_endpoint().len()
        + r.version().map_or(0, str::len)
        + instance.tags().iter().map(|t| t.len() + 3).sum::<usize>()
}

/// Builds one list page from the matching instances in list order: it takes
/// them until the query's limit or [`MAX_LIST_BYTES`] is reached (always at
/// least one, however large), and then knows that another page follows.
/// Every store fills its pages through this, so both modes cut them alike.
#[derive(Debug)]
pub struct PageBuilder {
    limit: usize,
    budget: usize,
    used: usize,
    instances: Vec<Instance>,
    more: bool,
}

impl PageBuilder {
    /// An empty page for `query`.
    pub fn new(query: &ListQuery) -> Self {
        Self::with_budget(query, MAX_LIST_BYTES)
    }

    /// An empty page for `query` cut at `budget` bytes (tests use a small one).
    pub fn with_budget(query: &ListQuery, budget: usize) -> Self {
        Self {
            limit: query.limit(),
            budget,
            used: 0,
            instances: Vec::new(),
            more: false,
        }
    }

    /// Offers the next matching instance. `false` when the page is full: the
    /// instance was not taken and another page follows; offer no more.
    pub fn offer(&mut self, instance: Instance) -> bool {
        if self.more {
            return false;
        }
        let size = listed_size(&instance);
        if self.instances.len() == self.limit
            || (!self.instances.is_empty() && self.used.saturating_add(size) > self.budget)
        {
            self.more = true;
            return false;
        }
        self.used = self.used.saturating_add(size);
        self.instances.push(instance);
        true
    }

    /// Whether the page is full (another page follows).
    pub fn is_full(&self) -> bool {
        self.more
    }

    /// The page's instances and, when another page follows, the cursor that
    /// continues after the last one.
    pub fn finish(self) -> (Vec<Instance>, Option<ListCursor>) {
        let next = if self.more {
            self.instances
                .last()
                .map(|l| ListCursor::after(l.service_name().clone(), l.instance_id().clone()))
        } else {
            None
        };
        (self.instances, next)
    }
}

/// Resource figures an instance may report with its heartbeat (stored as
/// health metrics by stores that keep history).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct HeartbeatMetrics {
    response_time_ms: Option<f64>,
    cpu_usage: Option<f64>,
    memory_usage: Option<f64>,
    error_rate: Option<f64>,
}

impl HeartbeatMetrics {
    /// Validates: every figure is finite; `response_time_ms` and `memory_usage`
    /// are non-negative; `cpu_usage` is a percentage (0-100, per core summed
    /// values above 100 are not accepted); `error_rate` is a fraction (0-1).
    pub fn new(
        response_time_ms: Option<f64>,
        cpu_usage: Option<f64>,
        memory_usage: Option<f64>,
        error_rate: Option<f64>,
    ) -> Result<Self, ValidationError> {
        fn check(
            field: &'static str,
            v: Option<f64>,
            max: f64,
            what: &str,
        ) -> Result<(), ValidationError> {
            match v {
                Some(x) if !x.is_finite() || x < 0.0 || x > max => Err(ValidationError::new(
                    format!("metrics.{field}"),
                    format!("must be {what} (got {x})"),
                )),
                _ => Ok(()),
            }
        }
        check(
            "response_time_ms",
            response_time_ms,
            f64::MAX,
            "a non-negative number",
        )?;
        check(
            "cpu_usage",
            cpu_usage,
            100.0,
            "a percentage between 0 and 100",
        )?;
        check(
            "memory_usage",
            memory_usage,
            f64::MAX,
            "a non-negative number",
        )?;
        check("error_rate", error_rate, 1.0, "a fraction between 0 and 1")?;
        Ok(Self {
            response_time_ms,
            cpu_usage,
            memory_usage,
            error_rate,
        })
    }

    /// Milliseconds the instance took to answer its own health check.
    pub fn response_time_ms(&self) -> Option<f64> {
        self.response_time_ms
    }
    /// CPU usage, percent.
    pub fn cpu_usage(&self) -> Option<f64> {
        self.cpu_usage
    }
    /// Memory usage as reported (the unit is the instance's).
    pub fn memory_usage(&self) -> Option<f64> {
        self.memory_usage
    }
    /// Fraction of failed requests.
    pub fn error_rate(&self) -> Option<f64> {
        self.error_rate
    }
}

/// A heartbeat: the status the instance reports (passing unless it says
/// otherwise, like a Consul TTL check) and optional metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    status: HealthStatus,
    metrics: Option<HeartbeatMetrics>,
}

impl Heartbeat {
    /// A heartbeat reporting `status`.
    pub fn new(status: HealthStatus, metrics: Option<HeartbeatMetrics>) -> Self {
        Self { status, metrics }
    }
    /// Reported status.
    pub fn status(&self) -> HealthStatus {
        self.status
    }
    /// Reported metrics.
    pub fn metrics(&self) -> Option<&HeartbeatMetrics> {
        self.metrics.as_ref()
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new(HealthStatus::Passing, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = ListCursor::after(
            ServiceName::parse("svc.a").unwrap(),
            InstanceId::parse("10.0.0.1:80").unwrap(),
        );
        assert_eq!(ListCursor::decode(&c.encode()).unwrap(), c);
        for bad in ["", "zz", "abc", "2f", "612f", "61", &"61".repeat(400), "é1"] {
            assert_eq!(
                ListCursor::decode(bad).unwrap_err().field(),
                "cursor",
                "{bad}"
            );
        }
    }

    #[test]
    fn limit_bounds() {
        assert_eq!(
            ListQuery::new(None, vec![], None, None, None)
                .unwrap()
                .limit(),
            1000
        );
        assert_eq!(
            ListQuery::new(None, vec![], None, Some(10_000), None)
                .unwrap()
                .limit(),
            10_000
        );
        for bad in [0, -1, 10_001] {
            assert_eq!(
                ListQuery::new(None, vec![], None, Some(bad), None)
                    .unwrap_err()
                    .field(),
                "limit"
            );
        }
    }

    fn instance(id: &str, metadata_bytes: usize) -> Instance {
        let registration = crate::Registration::try_from(crate::RegistrationInput {
            service_name: "svc".into(),
            instance_id: Some(id.into()),
            host: "10.0.0.1".into(),
            port: 80,
            metadata: Some(serde_json::json!({ "k": "x".repeat(metadata_bytes) })),
            ..Default::default()
        })
        .unwrap();
        Instance::registered(
            crate::TenantId::parse("t").unwrap(),
            registration,
            chrono::DateTime::UNIX_EPOCH,
            None,
            crate::Revision::new(1),
        )
    }

    #[test]
    fn pages_stop_at_the_limit_or_the_byte_budget() {
        let query = ListQuery::new(None, vec![], None, Some(3), None).unwrap();
        // The limit.
        let mut page = PageBuilder::new(&query);
        for id in ["a", "b", "c"] {
            assert!(page.offer(instance(id, 10)));
        }
        assert!(!page.offer(instance("d", 10)));
        let (taken, next) = page.finish();
        assert_eq!(taken.len(), 3);
        assert_eq!(next.unwrap().instance_id().as_str(), "c");
        // The budget: two instances fit, the third does not.
        let size = listed_size(&instance("a", 1000));
        assert!(size > 1000);
        let mut page = PageBuilder::with_budget(&query, 2 * size + size / 2);
        assert!(page.offer(instance("a", 1000)));
        assert!(page.offer(instance("b", 1000)));
        assert!(!page.offer(instance("c", 1000)));
        assert!(page.is_full());
        let (taken, next) = page.finish();
        assert_eq!(taken.len(), 2);
        assert_eq!(next.unwrap().instance_id().as_str(), "b");
        // One instance larger than the budget still makes a page.
        let mut page = PageBuilder::with_budget(&query, 10);
        assert!(page.offer(instance("a", 1000)));
        assert!(!page.offer(instance("b", 1)));
        // All matches taken: no cursor.
        let mut page = PageBuilder::new(&query);
        assert!(page.offer(instance("a", 1)));
        assert_eq!(page.finish().1, None);
    }

    #[test]
    fn tag_filters_obey_the_tag_rule() {
        let query = |tags: Vec<&str>| {
            ListQuery::new(
                None,
                tags.into_iter().map(str::to_owned).collect(),
                None,
                None,
                None,
            )
        };
        assert!(query(vec!["prod", "eu-1", "\u{1F600}"]).is_ok());
        let long = "x".repeat(129);
        for bad in [
            vec!["\0"],
            vec!["a\0b"],
            vec!["ok", ""],
            vec!["\u{7f}"],
            vec!["prod\u{200b}"],
            vec!["\u{202e}x"],
            vec!["\u{feff}"],
            vec![long.as_str()],
        ] {
            assert_eq!(query(bad.clone()).unwrap_err().field(), "tag", "{bad:?}");
        }
        assert_eq!(query(vec!["t"; 65]).unwrap_err().field(), "tag");
        assert!(query(vec!["t"; 64]).is_ok());
    }

    #[test]
    fn a_cursor_may_point_after_a_legacy_dot_name() {
        let legacy = ListCursor::after(
            ServiceName::restore("..").unwrap(),
            InstanceId::restore(".").unwrap(),
        );
        assert_eq!(ListCursor::decode(&legacy.encode()).unwrap(), legacy);
    }

    #[test]
    fn metric_ranges() {
        assert!(HeartbeatMetrics::new(Some(12.5), Some(99.0), Some(1e9), Some(0.01)).is_ok());
        for (m, field) in [
            (
                HeartbeatMetrics::new(Some(-1.0), None, None, None),
                "metrics.response_time_ms",
            ),
            (
                HeartbeatMetrics::new(None, Some(100.5), None, None),
                "metrics.cpu_usage",
            ),
            (
                HeartbeatMetrics::new(None, None, Some(f64::NAN), None),
                "metrics.memory_usage",
            ),
            (
                HeartbeatMetrics::new(None, None, None, Some(1.5)),
                "metrics.error_rate",
            ),
        ] {
            assert_eq!(m.unwrap_err().field(), field);
        }
    }
}
