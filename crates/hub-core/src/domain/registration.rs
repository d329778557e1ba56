//! `Registration`: a validated request to register one service instance, and its parts.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::ids::{InstanceId, ServiceName};
use crate::error::ValidationError;

/// Longest host name accepted (the DNS limit).
pub const MAX_HOST_LEN: usize = 255;
/// Largest metadata object accepted, measured as compact JSON.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Deepest nesting of the metadata object (the object itself is level 1).
/// The value travels inside responses and event envelopes a few levels down,
/// and serde_json (like many JSON readers) stops at 128 levels: without a
/// limit well below that, metadata nested about 126 deep was accepted and
/// then unreadable in list responses and in replicas' envelopes.
pub const MAX_METADATA_DEPTH: usize = 32;
/// Most tags one instance may carry.
pub const MAX_TAGS: usize = 64;
/// Longest tag.
pub const MAX_TAG_LEN: usize = 128;
/// Longest version string.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest health endpoint path.
pub const MAX_HEALTH_ENDPOINT_LEN: usize = 255;
/// Lease length bounds and default, in seconds.
pub const TTL_MIN_SECONDS: u32 = 5;
/// See [`TTL_MIN_SECONDS`].
pub const TTL_MAX_SECONDS: u32 = 3600;
/// See [`TTL_MIN_SECONDS`].
pub const TTL_DEFAULT_SECONDS: u32 = 30;
/// An expired instance is removed after it has been expired this many lease lengths.
pub const DEREGISTER_AFTER_TTLS: u32 = 3;

/// How callers reach the instance; part of its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `http://`, the default.
    #[default]
    Http,
    /// `https://`
    Https,
    /// `grpc://`
    Grpc,
    /// `tcp://`
    Tcp,
    /// `ws://`
    Ws,
    /// `wss://`
    Wss,
}

impl Protocol {
    /// Every protocol, in documentation order.
    pub const ALL: [Protocol; 6] = [
        Protocol::Http,
        Protocol::Https,
        Protocol::Grpc,
        Protocol::Tcp,
        Protocol::Ws,
        Protocol::Wss,
    ];

    /// The URL scheme.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
            Protocol::Ws => "ws",
            Protocol::Wss => "wss",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ValidationError::new(
                    "protocol",
                    format!("{s:?} is not one of http, https, grpc, tcp, ws, wss"),
                )
            })
    }
}

/// A host name or IP address: an IPv4 or IPv6 literal, or DNS labels of
/// `[A-Za-z0-9_-]` (1-63 characters, not starting or ending with `-`), at most
/// 255 characters in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Host(String);

impl Host {
    /// Validates a host.
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        let err = |m: String| Err(ValidationError::new("host", m));
        if value.is_empty() {
            return err("must not be empty".into());
        }
        if value.len() > MAX_HOST_LEN {
            return err(format!(
                "must be at most {MAX_HOST_LEN} characters (got {})",
                value.len()
            ));
        }
        if IpAddr::from_str(&value).is_ok() {
            return Ok(Self(value));
        }
        let labels: Vec<&str> = value.split('.').collect();
        for label in &labels {
            let valid = !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !valid {
                return err(format!(
                    "{value:?} is neither an IP address nor a host name (labels of 1-63 letters, digits, '-' or '_', separated by dots)"
                ));
            }
        }
        if labels.iter().all(|l| l.chars().all(|c| c.is_ascii_digit())) {
            return err(format!("{value:?} is not a valid IP address"));
        }
        Ok(Self(value))
    }

    /// The host as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host as it appears in a URL (IPv6 literals in brackets).
    pub fn url_form(&self) -> UrlHost<'_> {
        UrlHost(&self.0)
    }
}

/// A host written as in a URL: IPv6 literals in brackets. Displays without
/// allocating, for response serialization.
#[derive(Debug, Clone, Copy)]
pub struct UrlHost<'a>(&'a str);

impl fmt::Display for UrlHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.contains(':') {
            write!(f, "[{}]", self.0)
        } else {
            f.write_str(self.0)
        }
    }
}

/// The unvalidated fields of a registration, as an embedder or the HTTP layer
/// received them. Turn it into a [`Registration`] with `Registration::try_from`.
///
/// Numbers are wide (`i64`) so that out-of-range input such as `-1` or `65536`
/// is reported as a rule violation rather than a type error.
#[derive(Debug, Clone, Default)]
pub struct RegistrationInput {
    /// Required.
    pub service_name: String,
    /// Defaults to the service name.
    pub instance_id: Option<String>,
    /// Required: host name or IP.
    pub host: String,
    /// Required: 1-65535.
    pub port: i64,
    /// Defaults to `http`.
    pub protocol: Option<String>,
    /// Defaults to `/health`.
    pub health_endpoint: Option<String>,
    /// Free text, at most 64 characters.
    pub version: Option<String>,
    /// At most 64 tags of 1-128 characters.
    pub tags: Vec<String>,
    /// A JSON object of at most 16 KiB.
    pub metadata: Option<Value>,
    /// Lease length, 5-3600 seconds, default 30.
    pub ttl_seconds: Option<i64>,
}

/// A validated registration: every value here obeys the domain rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    service_name: ServiceName,
    instance_id: InstanceId,
    host: Host,
    port: u16,
    protocol: Protocol,
    health_endpoint: String,
    version: Option<String>,
    tags: Vec<String>,
    metadata: Map<String, Value>,
    ttl_seconds: u32,
}

/// Whether `c` is invisible formatting: the Unicode `Cf` (format) category
/// (bidi controls such as U+202E and U+2066-U+2069, zero-width characters
/// U+200B-U+200D and U+2060, the byte-order mark U+FEFF, the soft hyphen,
/// tag characters...) and the line and paragraph separators U+2028/U+2029.
/// They render as nothing or reorder what is shown, so `prod\u{200b}` would
/// look like `prod` and never match it. The table is `Cf` of Unicode 16,
/// written out so hub-core needs no Unicode-tables crate.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

/// Which rules a registration is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// New input: every rule, and the metadata is put in canonical form.
    New,
    /// A value read back from a store or an event: what the types need
    /// (charsets, ranges, a metadata object), not the admission rules that
    /// were checked when it was written (the metadata size and NUL checks)
    /// or added since (invisible characters, `.` and `..`). A read never
    /// refuses what a write accepted, so no tenant's row can become a 500.
    Stored,
}

/// The first character of `value` that new input may not contain, with what it is.
fn forbidden_char(value: &str) -> Option<(char, &'static str)> {
    value.chars().find_map(|c| {
        if c.is_control() {
            Some((c, "a control character"))
        } else if is_invisible(c) {
            Some((
                c,
                "an invisible formatting character (bidi control or zero-width)",
            ))
        } else {
            None
        }
    })
}

/// Checks a free-text value of 1-`max` bytes (tags, version): no control
/// characters, and for new input no invisible formatting characters.
fn check_text(
    field: impl Into<String>,
    value: &str,
    max: usize,
    admission: Admission,
) -> Result<(), ValidationError> {
    let field = field.into();
    if value.is_empty() || value.len() > max {
        return Err(ValidationError::new(
            field,
            format!(
                "must be 1-{max} printable characters (got {} bytes)",
                value.len()
            ),
        ));
    }
    match forbidden_char(value) {
        Some((c, what)) if admission == Admission::New || c.is_control() => {
            Err(ValidationError::new(
                field,
                format!(
                    "contains U+{:04X}, {what}; must be 1-{max} printable characters",
                    u32::from(c)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Validates one tag as registration and list filters take it (the same rule,
/// so a filter that could never match a stored tag is refused, not run).
pub fn check_tag(field: impl Into<String>, tag: &str) -> Result<(), ValidationError> {
    check_text(field, tag, MAX_TAG_LEN, Admission::New)
}

/// Whether any key or string inside `value` holds a NUL character. JSON
/// allows `\u0000`, but PostgreSQL's JSONB (and most text stores) cannot
/// hold it, so it is refused for every backend alike.
fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map_contains_nul(map),
        _ => false,
    }
}

fn map_contains_nul(map: &Map<String, Value>) -> bool {
    map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v))
}

/// Nesting depth of `value`: 0 for a scalar, 1 + the deepest child for an
/// array or object.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Puts every number inside `value` in the one form that every store reads
/// back alike: a float that is a whole number and fits `i64` or `u64`
/// becomes that integer (`-0.0` and `0.0` become `0`, `1e16` becomes
/// `10000000000000000`). PostgreSQL's JSONB keeps numbers as exact decimals
/// and prints them in plain notation, which serde_json reads back as an
/// integer whenever it is one; without this, `1e16` would come back from
/// PostgreSQL as an integer and from memory as a float, and `-0.0` as `0.0`
/// from one and `-0.0` from the other. JSON does not tell `1.0` from `1`,
/// so the meaning is unchanged. Other floats already read back exactly
/// (serde_json's `float_roundtrip` parses PostgreSQL's digits correctly).
fn canonicalise(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(integer) = n.as_f64().and_then(whole_number) {
                *value = integer;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalise),
        Value::Object(map) => map.values_mut().for_each(canonicalise),
        _ => {}
    }
}

/// `x` as a JSON integer, if it is a whole number within `i64` or `u64`.
fn whole_number(x: f64) -> Option<Value> {
    // 2^63 and 2^64 are exact as f64; the casts below are exact in range.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    if !x.is_finite() || x.fract() != 0.0 {
        return None;
    }
    if (-TWO_63..TWO_63).contains(&x) {
        #[allow(clippy::cast_possible_truncation)]
        return Some(Value::from(x as i64));
    }
    if (0.0..TWO_64).contains(&x) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        return Some(Value::from(x as u64));
    }
    None
}

impl TryFrom<RegistrationInput> for Registration {
    type Error = ValidationError;

    /// Validates new input against every rule.
    fn try_from(input: RegistrationInput) -> Result<Self, Self::Error> {
        Self::validate(input, Admission::New)
    }
}

impl Registration {
    /// Rebuilds a registration read back from a store or an event envelope.
    ///
    /// The checks are those the types need (charsets, lengths, ranges, a
    /// metadata object), not the admission rules that were checked when the
    /// value was written (the 16 KiB metadata limit, NUL) or added since
    /// (invisible characters, `.` and `..` as names): a read never refuses
    /// what a write accepted. New input goes through `Registration::try_from`.
    pub fn restore(input: RegistrationInput) -> Result<Self, ValidationError> {
        Self::validate(input, Admission::Stored)
    }

    fn validate(input: RegistrationInput, admission: Admission) -> Result<Self, ValidationError> {
        let new = admission == Admission::New;
        let service_name = if new {
            ServiceName::parse(input.service_name)?
        } else {
            ServiceName::restore(input.service_name)?
        };
        let instance_id = match input.instance_id {
            Some(id) if new => InstanceId::parse(id)?,
            Some(id) => InstanceId::restore(id)?,
            None => InstanceId::from(&service_name),
        };
        let host = Host::parse(input.host)?;
        let port = u16::try_from(input.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ValidationError::new(
                    "port",
                    format!("must be between 1 and 65535 (got {})", input.port),
                )
            })?;
        let protocol = match input.protocol {
            Some(p) => p.parse()?,
            None => Protocol::default(),
        };
        let health_endpoint = match input.health_endpoint {
            None => "/health".to_owned(),
            Some(path) => {
                if !path.starts_with('/')
                    || path.len() > MAX_HEALTH_ENDPOINT_LEN
                    || path
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || (new && is_invisible(c)))
                {
                    return Err(ValidationError::new(
                        "health_endpoint",
                        format!(
                            "must be a path starting with '/', without spaces, control or invisible characters, at most {MAX_HEALTH_ENDPOINT_LEN} characters"
                        ),
                    ));
                }
                path
            }
        };
        if let Some(v) = &input.version {
            check_text("version", v, MAX_VERSION_LEN, admission)?;
        }
        if input.tags.len() > MAX_TAGS {
            return Err(ValidationError::new(
                "tags",
                format!("at most {MAX_TAGS} tags (got {})", input.tags.len()),
            ));
        }
        for (i, tag) in input.tags.iter().enumerate() {
            check_text(format!("tags[{i}]"), tag, MAX_TAG_LEN, admission)?;
        }
        let metadata = match input.metadata {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(map)) if !new => map,
            Some(Value::Object(mut map)) => {
                if map_contains_nul(&map) {
                    return Err(ValidationError::new(
                        "metadata",
                        "must not contain NUL characters (\\u0000)",
                    ));
                }
                let levels = 1 + map.values().map(depth).max().unwrap_or(0);
                if levels > MAX_METADATA_DEPTH {
                    return Err(ValidationError::new(
                        "metadata",
                        format!(
                            "must be nested at most {MAX_METADATA_DEPTH} levels deep (got {levels})"
                        ),
                    ));
                }
                map.values_mut().for_each(canonicalise);
                // The limit applies to what is stored and served: the
                // canonical form (a whole number written as `1e18` counts
                // with its 19 digits).
                let size = serde_json::to_vec(&map)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                if size > MAX_METADATA_BYTES {
                    return Err(ValidationError::new(
                        "metadata",
                        format!("must be at most {MAX_METADATA_BYTES} bytes as JSON (got {size})"),
                    ));
                }
                map
            }
            Some(_) => {
                return Err(ValidationError::new("metadata", "must be a JSON object"));
            }
        };
        let ttl = input.ttl_seconds.unwrap_or(i64::from(TTL_DEFAULT_SECONDS));
        let ttl_seconds = u32::try_from(ttl)
            .ok()
            .filter(|t| (TTL_MIN_SECONDS..=TTL_MAX_SECONDS).contains(t))
            .ok_or_else(|| {
                ValidationError::new(
                    "ttl_seconds",
                    format!("must be between {TTL_MIN_SECONDS} and {TTL_MAX_SECONDS} (got {ttl})"),
                )
            })?;
        Ok(Self {
            service_name,
            instance_id,
            host,
            port,
            protocol,
            health_endpoint,
            version: input.version,
            tags: input.tags,
            metadata,
            ttl_seconds,
        })
    }
}

impl Registration {
    /// The service this instance belongs to.
    pub fn service_name(&self) -> &ServiceName {
        &self.service_name
    }
    /// The instance id (the service name unless one was given).
    pub fn instance_id(&self) -> &InstanceId {
        &self.instance_id
    }
    /// Where the instance listens.
    pub fn host(&self) -> &Host {
        &self.host
    }
    /// 1-65535.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// URL scheme.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
    /// Path of the instance's own health endpoint.
    pub fn health_endpoint(&self) -> &str {
        &self.health_endpoint
    }
    /// Version string, if given.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }
    /// Tags, in the order given.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }
    /// Metadata object (empty if none was given).
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
    /// Lease length in seconds.
    pub fn ttl_seconds(&self) -> u32 {
        self.ttl_seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input() -> RegistrationInput {
        RegistrationInput {
            service_name: "api-gateway".into(),
            host: "10.0.1.10".into(),
            port: 8000,
            ..Default::default()
        }
    }

    fn field_of(input: RegistrationInput) -> String {
        Registration::try_from(input)
            .expect_err("should be rejected")
            .field()
            .to_owned()
    }

    #[test]
    fn defaults_are_filled_in() {
        let r = Registration::try_from(input()).unwrap();
        assert_eq!(r.instance_id().as_str(), "api-gateway");
        assert_eq!(r.protocol(), Protocol::Http);
        assert_eq!(r.health_endpoint(), "/health");
        assert_eq!(r.ttl_seconds(), 30);
        assert!(r.metadata().is_empty());
        assert!(r.tags().is_empty());
        assert_eq!(r.version(), None);
    }

    #[test]
    fn port_range() {
        for ok in [1, 80, 65535] {
            assert!(
                Registration::try_from(RegistrationInput {
                    port: ok,
                    ..input()
                })
                .is_ok()
            );
        }
        for bad in [0, -1, 65536, i64::MAX, i64::MIN] {
            assert_eq!(
                field_of(RegistrationInput {
                    port: bad,
                    ..input()
                }),
                "port"
            );
        }
    }

    #[test]
    fn host_rules() {
        for ok in [
            "localhost",
            "10.0.0.1",
            "::1",
            "fe80::1",
            "api.internal.example.com",
            "my_container",
            &format!(
                "{}.{}.{}.{}",
                "a".repeat(63),
                "b".repeat(63),
                "c".repeat(63),
                "d".repeat(63)
            ),
        ] {
            assert!(Host::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"a".repeat(256),
            "has space",
            "-leading",
            "trailing-",
            "a..b",
            &"a".repeat(64),
            "999.1.1.1",
            "http://x",
            "x/y",
        ] {
            assert_eq!(
                field_of(RegistrationInput {
                    host: bad.into(),
                    ..input()
                }),
                "host",
                "{bad}"
            );
        }
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(Host::parse("::1").unwrap().url_form().to_string(), "[::1]");
        assert_eq!(Host::parse("a.b").unwrap().url_form().to_string(), "a.b");
    }

    #[test]
    fn protocol_set() {
        for p in ["http", "https", "grpc", "tcp", "ws", "wss"] {
            let r = Registration::try_from(RegistrationInput {
                protocol: Some(p.into()),
                ..input()
            })
            .unwrap();
            assert_eq!(r.protocol().as_str(), p);
        }
        for bad in ["ftp", "HTTP", "", "udp"] {
            assert_eq!(
                field_of(RegistrationInput {
                    protocol: Some(bad.into()),
                    ..input()
                }),
                "protocol"
            );
        }
    }

    #[test]
    fn ttl_range() {
        for ok in [5, 30, 3600] {
            let r = Registration::try_from(RegistrationInput {
                ttl_seconds: Some(ok),
                ..input()
            });
            assert_eq!(r.unwrap().ttl_seconds() as i64, ok);
        }
        for bad in [0, 4, 3601, 100_000, -5] {
            assert_eq!(
                field_of(RegistrationInput {
                    ttl_seconds: Some(bad),
                    ..input()
                }),
                "ttl_seconds"
            );
        }
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        let ok = Registration::try_from(RegistrationInput {
            metadata: Some(json!({"region": "eu", "weight": 3})),
            ..input()
        })
        .unwrap();
        assert_eq!(ok.metadata()["region"], "eu");
        for bad in [
            json!([1, 2]),
            json!("text"),
            json!(5),
            json!(true),
            json!({"k": "a\0b"}),
            json!({"k\0": 1}),
            json!({"nested": [{"x": "\0"}]}),
        ] {
            assert_eq!(
                field_of(RegistrationInput {
                    metadata: Some(bad),
                    ..input()
                }),
                "metadata"
            );
        }
        // Exactly at the limit passes; one byte more fails. `{"k":"..."}` has 8 bytes of framing.
        let at_limit = json!({ "k": "x".repeat(MAX_METADATA_BYTES - 8) });
        assert_eq!(
            serde_json::to_vec(&at_limit).unwrap().len(),
            MAX_METADATA_BYTES
        );
        assert!(
            Registration::try_from(RegistrationInput {
                metadata: Some(at_limit),
                ..input()
            })
            .is_ok()
        );
        let over = json!({ "k": "x".repeat(MAX_METADATA_BYTES - 7) });
        assert_eq!(
            field_of(RegistrationInput {
                metadata: Some(over),
                ..input()
            }),
            "metadata"
        );
    }

    #[test]
    fn tags_version_and_health_endpoint_rules() {
        assert_eq!(
            field_of(RegistrationInput {
                tags: vec!["ok".into(), String::new()],
                ..input()
            }),
            "tags[1]"
        );
        assert_eq!(
            field_of(RegistrationInput {
                tags: vec!["t".into(); MAX_TAGS + 1],
                ..input()
            }),
            "tags"
        );
        assert_eq!(
            field_of(RegistrationInput {
                tags: vec!["x".repeat(MAX_TAG_LEN + 1)],
                ..input()
            }),
            "tags[0]"
        );
        assert_eq!(
            field_of(RegistrationInput {
                version: Some("v\n1".into()),
                ..input()
            }),
            "version"
        );
        assert_eq!(
            field_of(RegistrationInput {
                health_endpoint: Some("health".into()),
                ..input()
            }),
            "health_endpoint"
        );
        assert_eq!(
            field_of(RegistrationInput {
                health_endpoint: Some("/a b".into()),
                ..input()
            }),
            "health_endpoint"
        );
    }

    #[test]
    fn invisible_characters_are_refused_in_text_fields() {
        for c in [
            '\u{061C}',
            '\u{200B}',
            '\u{200C}',
            '\u{200D}',
            '\u{200E}',
            '\u{200F}',
            '\u{202A}',
            '\u{202E}',
            '\u{2060}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{2028}',
            '\u{E0001}',
            '\u{E007F}',
        ] {
            let text = format!("prod{c}");
            assert_eq!(
                field_of(RegistrationInput {
                    tags: vec!["ok".into(), text.clone()],
                    ..input()
                }),
                "tags[1]",
                "{c:?}"
            );
            assert_eq!(
                field_of(RegistrationInput {
                    version: Some(text.clone()),
                    ..input()
                }),
                "version"
            );
            assert_eq!(
                field_of(RegistrationInput {
                    health_endpoint: Some(format!("/{text}")),
                    ..input()
                }),
                "health_endpoint"
            );
        }
        // Visible text from every plane is fine.
        for ok in [
            "prod",
            "\u{e9}t\u{e9}",
            "\u{4e2d}\u{6587}",
            "\u{1F600}",
            "\u{10FFFD}",
            "a b",
        ] {
            let r = Registration::try_from(RegistrationInput {
                tags: vec![ok.into()],
                version: Some(ok.into()),
                ..input()
            });
            assert!(r.is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn metadata_numbers_are_canonical() {
        let r = Registration::try_from(RegistrationInput {
            metadata: Some(json!({
                "neg_zero": -0.0, "zero": 0.0, "one": 1.0, "e16": 1e16, "half": 0.5,
                "max_i64": 9_223_372_036_854_775_807_i64, "min_i64": -(2f64.powi(63)),
                "two_63": 2f64.powi(63), "max_u64": u64::MAX, "two_64": 2f64.powi(64),
                "big": 1.7976931348623157e308, "tiny": 5e-324, "nested": [{"x": -0.0, "y": 2e3}],
            })),
            ..input()
        })
        .unwrap();
        let m = Value::Object(r.metadata().clone());
        assert!(m["neg_zero"].is_u64() && m["neg_zero"] == 0, "{m}");
        assert!(m["zero"].is_u64() && m["one"] == 1 && m["one"].is_u64());
        assert_eq!(m["e16"].as_u64(), Some(10_000_000_000_000_000));
        assert!(m["half"].is_f64());
        assert_eq!(m["max_i64"].as_i64(), Some(i64::MAX));
        assert_eq!(m["min_i64"].as_i64(), Some(i64::MIN));
        assert_eq!(m["two_63"].as_u64(), Some(1 << 63));
        assert_eq!(m["max_u64"].as_u64(), Some(u64::MAX));
        assert!(m["two_64"].is_f64(), "beyond u64 stays a float");
        assert_eq!(m["big"].as_f64(), Some(f64::MAX));
        assert_eq!(m["tiny"].as_f64(), Some(5e-324));
        assert!(m["nested"][0]["x"].is_u64() && m["nested"][0]["y"] == 2000);
        // Canonical form is a fixed point.
        let again = Registration::try_from(RegistrationInput {
            metadata: Some(m.clone()),
            ..input()
        })
        .unwrap();
        assert_eq!(again.metadata(), r.metadata());
    }

    #[test]
    fn metadata_depth_is_limited() {
        let nested = |levels: usize| -> Value {
            let mut v = json!(1);
            for _ in 0..levels {
                v = json!({ "a": v });
            }
            v
        };
        assert!(
            Registration::try_from(RegistrationInput {
                metadata: Some(nested(MAX_METADATA_DEPTH)),
                ..input()
            })
            .is_ok()
        );
        assert_eq!(
            field_of(RegistrationInput {
                metadata: Some(nested(MAX_METADATA_DEPTH + 1)),
                ..input()
            }),
            "metadata"
        );
        let mut arrays = json!([]);
        for _ in 0..MAX_METADATA_DEPTH {
            arrays = json!([arrays]);
        }
        assert_eq!(
            field_of(RegistrationInput {
                metadata: Some(json!({ "a": arrays })),
                ..input()
            }),
            "metadata"
        );
    }

    #[test]
    fn the_size_limit_applies_to_the_canonical_form() {
        // 1e18 is 4 bytes as sent and 19 as stored and served.
        let entries = |n: usize| -> Value {
            Value::Object((0..n).map(|i| (format!("k{i:04}"), json!(1e18))).collect())
        };
        let as_sent = serde_json::to_vec(&entries(1000)).unwrap().len();
        assert!(as_sent < MAX_METADATA_BYTES, "{as_sent}");
        assert_eq!(
            field_of(RegistrationInput {
                metadata: Some(entries(1000)),
                ..input()
            }),
            "metadata"
        );
    }

    #[test]
    fn restore_reads_back_what_was_accepted_under_older_rules() {
        let legacy = RegistrationInput {
            service_name: "..".into(),
            instance_id: Some(".".into()),
            tags: vec!["prod\u{200b}".into()],
            version: Some("\u{202e}1".into()),
            health_endpoint: Some("/h\u{feff}".into()),
            metadata: Some(json!({ "k": "x".repeat(MAX_METADATA_BYTES + 100) })),
            ..input()
        };
        assert!(Registration::try_from(legacy.clone()).is_err());
        let r = Registration::restore(legacy).unwrap();
        assert_eq!(r.service_name().as_str(), "..");
        assert_eq!(r.tags(), ["prod\u{200b}"]);
        // What the types need still holds.
        for broken in [
            RegistrationInput { port: 0, ..input() },
            RegistrationInput {
                tags: vec!["a\nb".into()],
                ..input()
            },
            RegistrationInput {
                metadata: Some(json!([1])),
                ..input()
            },
            RegistrationInput {
                service_name: "a b".into(),
                ..input()
            },
        ] {
            assert!(Registration::restore(broken).is_err());
        }
    }

    #[test]
    fn names_are_validated_with_their_field() {
        assert_eq!(
            field_of(RegistrationInput {
                service_name: "has space".into(),
                ..input()
            }),
            "service_name"
        );
        assert_eq!(
            field_of(RegistrationInput {
                instance_id: Some("a b".into()),
                ..input()
            }),
            "instance_id"
        );
    }
}
