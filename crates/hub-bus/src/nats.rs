//! `NatsPublisher`: hub-core's `EventSink` on NATS (async-nats), with JetStream acks when the server has JetStream.
//!
//! Each event's envelope goes to `{prefix}.{tenant}.registry.{short_type}`
//! (see [`crate::subjects`]) with the headers `Nats-Msg-Id` (the event id,
//! so JetStream drops a re-publish within the stream's duplicate window) and
//! `event-type`.
//!
//! At start the publisher gets or creates the stream (`HUB_REGISTRY` by
//! default) over `{prefix}.*.registry.>`. If the server has no JetStream it
//! falls back to plain publish and says so in the log: events then reach the
//! subscribers connected at that moment and nobody else.
//!
//! Compatibility: the Debian nats-server is 2.9. async-nats is built without
//! its `server_2_10`+ features (and without `kv`, which needs newer servers),
//! so it sends no stream fields that 2.9 does not know. Streams, stream info
//! and publish acks are all 2.9-era APIs.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::jetstream::{self, context::CreateStreamErrorKind};
use async_nats::{ConnectOptions, HeaderMap, ServerAddr};
use async_trait::async_trait;
use futures_util::StreamExt;
use hub_core::domain::envelope;
use hub_core::domain::event::RegistryEvent;
use hub_core::error::{RegistryError, ValidationError};
use hub_core::ports::EventSink;
use secrecy::{ExposeSecret, SecretString};

use crate::subjects::SubjectPrefix;

/// The stream name used when none is configured.
pub const DEFAULT_STREAM: &str = "HUB_REGISTRY";

/// The header naming the event type (`service.registered`, ...).
pub const EVENT_TYPE_HEADER: &str = "event-type";

/// The header naming the replica a change was made through, so that a
/// replica following the bus can skip its own events.
pub const ORIGIN_HEADER: &str = "hub-origin";

/// How the client authenticates, besides anything embedded in the URLs.
#[derive(Clone, Debug, Default)]
pub enum NatsAuth {
    /// No credentials (or credentials in the server URLs).
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user name.
        user: String,
        /// The password; `Debug` prints it redacted.
        password: SecretString,
    },
    /// An authentication token; `Debug` prints it redacted.
    Token(SecretString),
}

/// Settings of the NATS publisher. Build it with [`NatsConfig::new`] and
/// override fields as needed.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222` or `host:4222`).
    pub servers: Vec<String>,
    /// Credentials.
    pub auth: NatsAuth,
    /// First token(s) of every subject (`hub`).
    pub subject_prefix: SubjectPrefix,
    /// The JetStream stream that stores the events (`HUB_REGISTRY`).
    pub stream_name: String,
    /// How long the stream keeps an event (7 days). Only applies when this
    /// process creates the stream; an existing stream keeps its own limits.
    pub stream_max_age: Duration,
    /// Whether to use JetStream at all (true). When false, or when the server
    /// has no JetStream, events go out with plain publish.
    pub jetstream: bool,
    /// The name this connection shows in the server's monitoring.
    pub connection_name: String,
    /// Bound on connecting to each server (2 s), so that start-up reports an
    /// unreachable server instead of hanging.
    pub connect_timeout: Duration,
    /// Bound on each JetStream request and publish ack, and on a plain
    /// publish batch (5 s): `publish` must not block the caller for long.
    pub ack_timeout: Duration,
}

impl NatsConfig {
    /// Defaults for the servers in `nats_url`, a comma-separated list (the
    /// `NATS_URL` variable). Blank entries are ignored; at least one server
    /// is required.
    pub fn new(nats_url: &str) -> Result<Self, ValidationError> {
        let servers: Vec<String> = nats_url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            return Err(ValidationError::new(
                "NATS_URL",
                "must name at least one server",
            ));
        }
        Ok(Self {
            servers,
            auth: NatsAuth::None,
            subject_prefix: SubjectPrefix::default(),
            stream_name: DEFAULT_STREAM.to_owned(),
            stream_max_age: Duration::from_secs(7 * 24 * 60 * 60),
            jetstream: true,
            connection_name: "central-hub".to_owned(),
            connect_timeout: Duration::from_secs(2),
            ack_timeout: Duration::from_secs(5),
        })
    }
}

/// Hides a password embedded in a server URL (`nats://user:pass@host`).
fn redact_url(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((userinfo, host)) => {
            let scheme_end = userinfo.find("://").map_or(0, |i| i + 3);
            format!("{}***@{}", &userinfo[..scheme_end], host)
        }
        None => url.to_owned(),
    }
}

// Written by hand so that credentials embedded in the URLs never reach a log.
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        f.debug_struct("NatsConfig")
            .field("servers", &servers)
            .field("auth", &self.auth)
            .field("subject_prefix", &self.subject_prefix)
            .field("stream_name", &self.stream_name)
            .field("stream_max_age", &self.stream_max_age)
            .field("jetstream", &self.jetstream)
            .field("connection_name", &self.connection_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("ack_timeout", &self.ack_timeout)
            .finish()
    }
}

/// How events are published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishMode {
    /// Into a JetStream stream; `publish` returns after the server stored them.
    JetStream,
    /// Core NATS publish: at most once, to the subscribers of the moment.
    Plain,
}

/// Publishes registry events to NATS. Cheap to share: the async-nats client
/// multiplexes one connection and reconnects by itself after start-up.
#[derive(Debug)]
pub struct NatsPublisher {
    client: async_nats::Client,
    /// Present in JetStream mode.
    jetstream: Option<jetstream::Context>,
    prefix: SubjectPrefix,
    ack_timeout: Duration,
}

use crate::error::{nats_jetstream, nats_publish, nats_too_large};
pub(crate) use crate::error::{unavailable, unavailable_msg};

/// Whether the stream subject `pattern` matches every subject that
/// `wanted` (itself possibly a wildcard) matches, token by token.
fn covers(pattern: &str, wanted: &str) -> bool {
    let mut pattern = pattern.split('.');
    let mut wanted = wanted.split('.');
    loop {
        match (pattern.next(), wanted.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(w)) if w != ">" => {}
            (Some(p), Some(w)) if p == w => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl NatsPublisher {
    /// Connects, then (if `config.jetstream`) gets or creates the stream.
    ///
    /// Returns `Invalid` for a malformed server URL, `Unavailable` when no
    /// server can be reached within `connect_timeout` per server or a
    /// JetStream request fails, and `Unavailable` as well when an existing
    /// stream of that name does not cover the event subjects (publishing
    /// with acks to it could never succeed). A server without JetStream is
    /// not an error: the publisher falls back to plain publish.
    pub async fn connect(config: NatsConfig) -> Result<Self, RegistryError> {
        let servers = config
            .servers
            .iter()
            .map(|url| {
                ServerAddr::from_str(url).map_err(|err| {
                    ValidationError::new("NATS_URL", format!("{}: {err}", redact_url(url)))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // Initial-connect retry stays off (the default) so that an unreachable
        // server is reported at start-up; after that the client reconnects by
        // itself. The request timeout bounds JetStream API calls.
        let options = ConnectOptions::new()
            .name(&config.connection_name)
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.ack_timeout));
        let options = match &config.auth {
            NatsAuth::None => options,
            NatsAuth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose_secret().to_owned())
            }
            NatsAuth::Token(token) => options.token(token.expose_secret().to_owned()),
        };
        // The connection timeout only bounds each TCP connect; this outer
        // bound also covers a peer that accepts but never speaks NATS.
        let server_count = u32::try_from(servers.len()).unwrap_or(u32::MAX);
        let bound = config.connect_timeout.saturating_mul(server_count.max(1));
        let client = tokio::time::timeout(bound, options.connect(servers))
            .await
            .map_err(|_| unavailable_msg(format!("connecting to NATS timed out after {bound:?}")))?
            .map_err(unavailable)?;

        let jetstream = if config.jetstream {
            Self::ensure_stream(&client, &config).await?
        } else {
            None
        };
        match &jetstream {
            Some(_) => tracing::info!(
                stream = %config.stream_name,
                subjects = %config.subject_prefix.all_events(),
                "NATS events via JetStream stream {} with acks",
                config.stream_name
            ),
            None => tracing::info!(
                subjects = %config.subject_prefix.all_events(),
                "NATS events via plain publish (no JetStream)"
            ),
        }
        Ok(Self {
            client,
            jetstream,
            prefix: config.subject_prefix,
            ack_timeout: config.ack_timeout,
        })
    }

    /// The JetStream context if the server has JetStream and the stream is
    /// there (created if missing); `None` if the server has no JetStream.
    async fn ensure_stream(
        client: &async_nats::Client,
        config: &NatsConfig,
    ) -> Result<Option<jetstream::Context>, RegistryError> {
        let mut context = jetstream::new(client.clone());
        context.set_timeout(config.ack_timeout);
        let wanted = config.subject_prefix.all_events();
        let stream = context
            .get_or_create_stream(jetstream::stream::Config {
                name: config.stream_name.clone(),
                subjects: vec![wanted.clone()],
                max_age: config.stream_max_age,
                ..Default::default()
            })
            .await;
        let stream = match stream {
            Ok(stream) => stream,
            // No responders on the JetStream API: the server runs without it.
            Err(err) if err.kind() == CreateStreamErrorKind::JetStreamUnavailable => {
                tracing::warn!(error = %err, "NATS server has no JetStream");
                return Ok(None);
            }
            // 503 "JetStream not enabled for account": same thing, per account.
            Err(err)
                if matches!(
                    err.kind(),
                    CreateStreamErrorKind::JetStream(ref js) if js.code() == 503
                ) =>
            {
                tracing::warn!(error = %err, "JetStream not enabled for this NATS account");
                return Ok(None);
            }
            Err(err) => return Err(unavailable(err)),
        };
        let info = stream.cached_info();
        if !info.config.subjects.iter().any(|s| covers(s, &wanted)) {
            return Err(unavailable_msg(format!(
                "JetStream stream {} exists with subjects {:?}, which do not cover {wanted}",
                config.stream_name, info.config.subjects
            )));
        }
        if info.config.max_age != config.stream_max_age {
            tracing::warn!(
                stream = %config.stream_name,
                existing = ?info.config.max_age,
                configured = ?config.stream_max_age,
                "JetStream stream exists with another max age; keeping it"
            );
        }
        Ok(Some(context))
    }

    /// Whether events go through JetStream (with acks) or plain publish.
    pub fn mode(&self) -> PublishMode {
        if self.jetstream.is_some() {
            PublishMode::JetStream
        } else {
            PublishMode::Plain
        }
    }

    fn headers(event: &RegistryEvent) -> HeaderMap {
        let mut headers = HeaderMap::new();
        // The typed name, not the string "Nats-Msg-Id": async-nats keeps
        // standard and custom header names apart, so only the constant
        // compares equal to the name it parses back from the wire.
        headers.insert(NATS_MESSAGE_ID, event.id());
        headers.insert(EVENT_TYPE_HEADER, event.kind().as_str());
        if let Some(origin) = event.origin() {
            headers.insert(ORIGIN_HEADER, origin);
        }
        headers
    }

    /// The headers and payload of `event`, or `Invalid` if together they
    /// are larger than the connected server's `max_payload` (which it
    /// counts over both, and enforces by closing the connection).
    fn message(&self, event: &RegistryEvent) -> Result<(HeaderMap, Vec<u8>), RegistryError> {
        let headers = Self::headers(event);
        let payload = envelope::to_json(event);
        // As async-nats writes them: a version line, `name: value` lines,
        // and an empty line.
        let header_size = "NATS/1.0\r\n".len()
            + headers
                .iter()
                .flat_map(|(name, values)| {
                    values.iter().map(move |value| {
                        AsRef::<[u8]>::as_ref(name).len() + value.as_str().len() + 4
                    })
                })
                .sum::<usize>()
            + 2;
        let max_payload = self.client.server_info().max_payload;
        match nats_too_large(header_size + payload.len(), max_payload) {
            Some(refusal) => Err(refusal),
            None => Ok((headers, payload)),
        }
    }

    /// Follows every tenant's registry events on `{prefix}.*.registry.>`
    /// (a core subscription: events published from now on), skipping those
    /// whose `hub-origin` header is `skip_origin` (this replica's own), and
    /// hands each to `apply` in the order received. Bytes that are not a
    /// valid envelope are logged and dropped. The subscription survives
    /// reconnects (the client resubscribes); the task ends when `stop`
    /// turns true.
    pub async fn follow<F>(
        &self,
        skip_origin: Option<String>,
        mut apply: F,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, RegistryError>
    where
        F: FnMut(RegistryEvent) + Send + 'static,
    {
        let mut subscription = self
            .client
            .subscribe(self.prefix.all_events())
            .await
            .map_err(unavailable)?;
        // The subscription is registered once the server has seen it.
        self.client.flush().await.map_err(unavailable)?;
        Ok(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscription.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    _ = stop.changed() => break,
                };
                let origin = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(ORIGIN_HEADER))
                    .map(|v| v.as_str());
                if origin.is_some() && origin == skip_origin.as_deref() {
                    continue;
                }
                match envelope::from_json(&message.payload) {
                    Ok(event) => apply(match origin {
                        Some(origin) => event.with_origin(origin),
                        None => event,
                    }),
                    Err(error) => {
                        tracing::warn!(subject = %message.subject, %error, "ignoring a message that is not a registry event");
                    }
                }
            }
            let _ = subscription.unsubscribe().await;
        }))
    }

    async fn publish_plain(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        for event in events {
            let subject = self.prefix.event_subject(event.tenant_id(), event.kind());
            let (headers, payload) = self.message(event)?;
            self.client
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(nats_publish)?;
        }
        // A flush (a PING/PONG round trip) makes Ok mean "written to the
        // server", and surfaces a broken connection here rather than never.
        self.client.flush().await.map_err(unavailable)
    }
}

impl NatsPublisher {
    /// The monitor's check: the connection is up (not reconnecting) and a
    /// flush, a PING/PONG round trip with the server, completes. The caller
    /// bounds it with a timeout: a flush waits while the client reconnects.
    pub async fn check(&self) -> Result<(), RegistryError> {
        let state = self.client.connection_state();
        if state != async_nats::connection::State::Connected {
            return Err(unavailable_msg(format!("nats connection is {state}")));
        }
        self.client.flush().await.map_err(unavailable)
    }
}

#[async_trait]
impl EventSink for NatsPublisher {
    /// Publishes the events in order. In JetStream mode the publishes go out
    /// back to back on the one connection (so the server stores them in
    /// order) and then every ack is awaited: Ok means every event is stored.
    /// On error, events after the failed one may or may not be stored. Returns
    /// `Invalid` for an event larger than the server or stream takes (before
    /// sending it; nothing else counts as a refusal for good, see
    /// `error.rs`), and `Unavailable { component: "events" }` on any other
    /// failure (the outcome of the failed event is then unknown; a retry is
    /// deduplicated by id).
    async fn publish(&self, events: &[RegistryEvent]) -> Result<(), RegistryError> {
        match &self.jetstream {
            Some(context) => {
                let mut acks = Vec::with_capacity(events.len());
                for event in events {
                    let subject = self.prefix.event_subject(event.tenant_id(), event.kind());
                    let (headers, payload) = self.message(event)?;
                    acks.push(
                        context
                            .publish_with_headers(subject, headers, payload.into())
                            .await
                            .map_err(nats_jetstream)?,
                    );
                }
                // Both the send and each ack are bounded by the context's
                // timeout (`ack_timeout`).
                for ack in acks {
                    ack.await.map_err(nats_jetstream)?;
                }
                Ok(())
            }
            None => tokio::time::timeout(self.ack_timeout, self.publish_plain(events))
                .await
                .map_err(|_| {
                    unavailable_msg(format!(
                        "plain NATS publish not flushed within {:?}",
                        self.ack_timeout
                    ))
                })?,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn nats_url_is_a_comma_separated_list() {
        let config = NatsConfig::new(" nats://a:4222, b:4222 ,,").unwrap();
        assert_eq!(config.servers, ["nats://a:4222", "b:4222"]);
        assert_eq!(config.stream_name, "HUB_REGISTRY");
        assert_eq!(config.stream_max_age, Duration::from_secs(604_800));
        assert!(config.jetstream);
        assert!(NatsConfig::new(" , ").is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let mut config = NatsConfig::new("nats://alice:hunter2@a:4222,nats://b:4222").unwrap();
        config.auth = NatsAuth::UserPassword {
            user: "bob".into(),
            password: SecretString::from("s3cret"),
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("nats://***@a:4222"), "{printed}");
        assert!(printed.contains("nats://b:4222"), "{printed}");
        let token = format!("{:?}", NatsAuth::Token(SecretString::from("tok-123")));
        assert!(!token.contains("tok-123"), "{token}");
    }

    #[test]
    fn stream_subjects_cover_the_wildcard() {
        let wanted = "hub.*.registry.>";
        assert!(covers("hub.*.registry.>", wanted));
        assert!(covers("hub.>", wanted));
        assert!(covers(">", wanted));
        assert!(!covers("hub.tenant1.registry.>", wanted));
        assert!(!covers("hub.*.registry.*", wanted));
        assert!(!covers("other.*.registry.>", wanted));
        assert!(!covers("hub", wanted));
    }
}
