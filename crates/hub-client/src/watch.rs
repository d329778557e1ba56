//! `HubClient::watch`: the hub's Server-Sent Events stream of registry changes, decoded into typed [`WatchEvent`]s.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::client::{HubClient, error_for_status};
use crate::error::HubError;
use crate::sse::{Frame, Parser};
use crate::types::{HealthStatus, Instance};

/// What kind of change an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `service.registered`: a new instance.
    Registered,
    /// `service.updated`: an instance registered again with other details.
    Updated,
    /// `service.deregistered`: removed on request.
    Deregistered,
    /// `service.status_changed`: its health changed (lease expiry or a heartbeat).
    StatusChanged,
    /// `service.expired`: removed because its lease stayed expired.
    Expired,
}

impl ChangeKind {
    /// The wire name (`service.registered`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Registered => "service.registered",
            ChangeKind::Updated => "service.updated",
            ChangeKind::Deregistered => "service.deregistered",
            ChangeKind::StatusChanged => "service.status_changed",
            ChangeKind::Expired => "service.expired",
        }
    }

    pub fn from_wire(name: &str) -> Option<Self> {
        [
            ChangeKind::Registered,
            ChangeKind::Updated,
            ChangeKind::Deregistered,
            ChangeKind::StatusChanged,
            ChangeKind::Expired,
        ]
        .into_iter()
        .find(|k| k.as_str() == name)
    }

    /// The instance is gone after this change.
    pub fn removes(self) -> bool {
        matches!(self, ChangeKind::Deregistered | ChangeKind::Expired)
    }
}

/// One change of the registry (the envelope the hub also publishes on NATS
/// and Kafka).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryChange {
    /// The event's unique id (consumers dedupe on it).
    pub id: String,
    pub kind: ChangeKind,
    /// The tenant revision this change made.
    pub revision: u64,
    pub occurred_at: DateTime<Utc>,
    /// The instance after the change (its last state, for removals).
    pub instance: Instance,
    /// The status before a `status_changed`.
    pub previous_status: Option<HealthStatus>,
}

/// One item of a watch stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The current instances (matching the filter) at `revision`: the first
    /// event of a watch opened without a resume point.
    Snapshot {
        revision: u64,
        instances: Vec<Instance>,
    },
    /// A change, in revision order (boxed: it is much larger than the
    /// other variants).
    Change(Box<RegistryChange>),
    /// The resume point is older than the hub retains: replace the local
    /// state with these instances (like etcd's compaction answer).
    Reset {
        revision: u64,
        instances: Vec<Instance>,
        oldest_retained: Option<u64>,
        requested: Option<u64>,
    },
    /// The hub cut this stream off because it was read too slowly; the
    /// stream ends after this, and a new watch resumes from `resume_from`.
    Lagged { resume_from: u64 },
    /// A keep-alive comment: the connection is alive and nothing changed.
    KeepAlive,
}

/// What to watch: every change of the tenant by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchFilter {
    service_names: Vec<String>,
    kinds: Vec<ChangeKind>,
    since: Option<u64>,
}

impl WatchFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Only this service (may be given several times).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service_names.push(name.into());
        self
    }

    /// Only changes of this kind (may be given several times).
    pub fn kind(mut self, kind: ChangeKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Resume after this revision (sent as `Last-Event-ID`): the hub
    /// replays every retained change after it, then follows live. Without
    /// it the stream starts with a [`WatchEvent::Snapshot`].
    pub fn since(mut self, revision: u64) -> Self {
        self.since = Some(revision);
        self
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        let names = self
            .service_names
            .iter()
            .map(|n| ("service_name", n.as_str()));
        let kinds = self.kinds.iter().map(|k| ("type", k.as_str()));
        names.chain(kinds).collect()
    }
}

impl HubClient {
    /// Opens a watch stream. The stream ends when the connection does
    /// (after a [`WatchEvent::Lagged`], or when the hub stops); open
    /// another with [`WatchFilter::since`] set to
    /// [`WatchStream::last_revision`] to go on without a gap.
    ///
    /// A hub without the watch endpoint answers 404 or 405
    /// ([`HubError::Api`]). A stream silent for longer than the client's
    /// watch idle timeout ends with [`HubError::Idle`].
    pub async fn watch(&self, filter: &WatchFilter) -> Result<WatchStream, HubError> {
        let mut request = self
            .request(Method::GET, "/api/v1/discovery/watch")
            .query(&filter.pairs())
            .header("accept", "text/event-stream");
        if let Some(since) = filter.since {
            request = request.header("last-event-id", since.to_string());
        }
        // No overall timeout: the stream is meant to stay open. The connect
        // timeout bounds the opening and the idle timeout the silences.
        let response = self.send(request).await?;
        let base = self.base_url().to_owned();
        let response = error_for_status(response, &base).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        if !content_type.starts_with("text/event-stream") {
            return Err(HubError::InvalidResponse {
                status,
                detail: format!("a watch answered with content type {content_type:?}"),
            });
        }
        let body = futures_util::StreamExt::map(response.bytes_stream(), |chunk| {
            chunk.map(|b| b.to_vec())
        });
        Ok(WatchStream::new(
            Box::pin(body),
            filter.since,
            self.inner.watch_idle_timeout,
            base,
        ))
    }
}

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Vec<u8>>> + Send>>;

/// The events of one watch connection, in the order the hub sent them.
pub struct WatchStream {
    body: Body,
    parser: Parser,
    pending: VecDeque<Result<WatchEvent, HubError>>,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    last_revision: Option<u64>,
    base: String,
    done: bool,
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("base", &self.base)
            .field("last_revision", &self.last_revision)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl WatchStream {
    fn new(body: Body, since: Option<u64>, idle: Duration, base: String) -> Self {
        Self {
            body,
            parser: Parser::default(),
            pending: VecDeque::new(),
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            last_revision: since,
            base,
            done: false,
        }
    }

    /// The revision to resume from: the `id:` of the last event handed
    /// out (or `resume_from` after [`WatchEvent::Lagged`]), else the
    /// filter's `since`.
    pub fn last_revision(&self) -> Option<u64> {
        self.last_revision
    }

    fn decode(&mut self, frame: Frame) -> Result<Option<WatchEvent>, HubError> {
        let (event, data, id) = match frame {
            Frame::Comment => return Ok(Some(WatchEvent::KeepAlive)),
            Frame::Event { event, data, id } => (event, data, id),
        };
        let invalid = |detail: String| HubError::InvalidResponse {
            status: 200,
            detail: format!("watch event {event:?}: {detail}"),
        };
        let decoded = match event.as_str() {
            "snapshot" => {
                let s: SnapshotData = parse(&data).map_err(invalid)?;
                WatchEvent::Snapshot {
                    revision: s.revision,
                    instances: s.instances,
                }
            }
            "reset" => {
                let r: ResetData = parse(&data).map_err(invalid)?;
                WatchEvent::Reset {
                    revision: r.revision,
                    instances: r.instances,
                    oldest_retained: r.oldest_retained,
                    requested: r.requested,
                }
            }
            "lagged" => {
                let l: LaggedData = parse(&data).map_err(invalid)?;
                self.last_revision = Some(l.resume_from);
                return Ok(Some(WatchEvent::Lagged {
                    resume_from: l.resume_from,
                }));
            }
            name => match ChangeKind::from_wire(name) {
                Some(kind) => {
                    let e: EnvelopeData = parse(&data).map_err(invalid)?;
                    WatchEvent::Change(Box::new(e.into_change(kind)))
                }
                None => {
                    // An event a newer hub sends that this client does not
                    // know: skipped, so that adding one breaks no client.
                    tracing::debug!(event = name, "unknown watch event skipped");
                    return Ok(None);
                }
            },
        };
        // The `id:` is the tenant revision of the event; events without one
        // fall back to the revision in their data.
        let revision = id.and_then(|id| id.trim().parse().ok()).or(match &decoded {
            WatchEvent::Snapshot { revision, .. } | WatchEvent::Reset { revision, .. } => {
                Some(*revision)
            }
            WatchEvent::Change(c) => Some(c.revision),
            _ => None,
        });
        if revision.is_some() {
            self.last_revision = revision;
        }
        Ok(Some(decoded))
    }
}

fn parse<T: serde::de::DeserializeOwned>(data: &str) -> Result<T, String> {
    serde_json::from_str(data).map_err(|e| e.to_string())
}

impl Stream for WatchStream {
    type Item = Result<WatchEvent, HubError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.pending.pop_front() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    let reset = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(reset);
                    let frames = match this.parser.feed(&bytes) {
                        Ok(frames) => frames,
                        Err(_) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(HubError::InvalidResponse {
                                status: 200,
                                detail: "a watch stream line longer than 16 MiB".into(),
                            })));
                        }
                    };
                    for frame in frames {
                        match this.decode(frame) {
                            Ok(Some(event)) => {
                                let lagged = matches!(event, WatchEvent::Lagged { .. });
                                this.pending.push_back(Ok(event));
                                if lagged {
                                    // The hub ends the stream after this;
                                    // nothing after it belongs to it.
                                    this.done = true;
                                    break;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                // Events decoded before it go out first;
                                // the error then ends the stream.
                                this.done = true;
                                this.pending.push_back(Err(e));
                                break;
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(source))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(HubError::Unreachable {
                        url: this.base.clone(),
                        source,
                    })));
                }
                Poll::Ready(None) => {
                    this.done = true;
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(Some(Err(HubError::Idle(this.idle))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct SnapshotData {
    revision: u64,
    instances: Vec<Instance>,
}

#[derive(Deserialize)]
struct ResetData {
    revision: u64,
    instances: Vec<Instance>,
    #[serde(default)]
    oldest_retained: Option<u64>,
    #[serde(default)]
    requested: Option<u64>,
}

#[derive(Deserialize)]
struct LaggedData {
    resume_from: u64,
}

/// The envelope `{id, type, tenant_id, service_name, instance_id, revision,
/// occurred_at, data}`; `type` is also the SSE event name.
#[derive(Deserialize)]
struct EnvelopeData {
    id: String,
    tenant_id: String,
    service_name: String,
    instance_id: String,
    revision: u64,
    occurred_at: DateTime<Utc>,
    data: EnvelopeInstance,
}

#[derive(Deserialize)]
struct EnvelopeInstance {
    host: String,
    port: u16,
    protocol: String,
    url: String,
    health_endpoint: String,
    version: Option<String>,
    tags: Vec<String>,
    metadata: Map<String, Value>,
    ttl_seconds: u32,
    status: HealthStatus,
    #[serde(default)]
    previous_status: Option<HealthStatus>,
    registered_at: DateTime<Utc>,
    last_heartbeat: DateTime<Utc>,
    lease_expires_at: DateTime<Utc>,
}

impl EnvelopeData {
    fn into_change(self, kind: ChangeKind) -> RegistryChange {
        let d = self.data;
        RegistryChange {
            id: self.id,
            kind,
            revision: self.revision,
            occurred_at: self.occurred_at,
            previous_status: d.previous_status,
            instance: Instance {
                tenant_id: self.tenant_id,
                service_name: self.service_name,
                instance_id: self.instance_id,
                host: d.host,
                port: d.port,
                protocol: d.protocol,
                url: d.url,
                health_endpoint: d.health_endpoint,
                version: d.version,
                tags: d.tags,
                metadata: d.metadata,
                ttl_seconds: d.ttl_seconds,
                status: d.status,
                registered_at: d.registered_at,
                last_heartbeat: d.last_heartbeat,
                lease_expires_at: d.lease_expires_at,
                revision: self.revision,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::{WatchEvent, WatchStream};
    use crate::HubError;

    /// A stream over fixed chunks of bytes, then silence or the end.
    fn stream(chunks: &[&str], then_silent: bool, idle: Duration) -> WatchStream {
        let items: Vec<reqwest::Result<Vec<u8>>> =
            chunks.iter().map(|c| Ok(c.as_bytes().to_vec())).collect();
        let body = futures_util::stream::iter(items);
        let body: super::Body = if then_silent {
            Box::pin(body.chain(futures_util::stream::pending()))
        } else {
            Box::pin(body)
        };
        WatchStream::new(body, Some(3), idle, "http://hub".into())
    }

    #[tokio::test]
    async fn lagged_gives_the_resume_point_and_ends_the_stream() {
        let mut s = stream(
            &[
                ": keep-alive\n\n",
                "event: lagged\ndata: {\"resume_from\":9}\n\nevent: snapshot\ndata: {}\n\n",
            ],
            false,
            Duration::from_secs(5),
        );
        assert_eq!(s.next().await.unwrap().unwrap(), WatchEvent::KeepAlive);
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            WatchEvent::Lagged { resume_from: 9 }
        );
        assert!(s.next().await.is_none(), "nothing after lagged");
        assert_eq!(s.last_revision(), Some(9));
    }

    #[tokio::test]
    async fn unknown_events_are_skipped_and_bad_data_is_an_error() {
        let mut s = stream(
            &[
                "event: service.teleported\nid: 5\ndata: {}\n\nevent: snapshot\nid: 6\ndata: {\"revision\":6,\"instances\":[]}\n\nevent: reset\ndata: nope\n\n",
            ],
            false,
            Duration::from_secs(5),
        );
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            WatchEvent::Snapshot {
                revision: 6,
                instances: vec![]
            }
        );
        assert_eq!(s.last_revision(), Some(6));
        let err = s.next().await.unwrap().unwrap_err();
        assert!(matches!(err, HubError::InvalidResponse { .. }), "{err:?}");
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_with_idle() {
        let mut s = stream(&[": keep-alive\n\n"], true, Duration::from_secs(45));
        assert_eq!(s.next().await.unwrap().unwrap(), WatchEvent::KeepAlive);
        let err = s.next().await.unwrap().unwrap_err();
        assert!(
            matches!(err, HubError::Idle(d) if d == Duration::from_secs(45)),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert!(s.next().await.is_none());
    }
}
