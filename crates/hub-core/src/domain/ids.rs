//! Identifier newtypes (`TenantId`, `ServiceName`, `InstanceId`): validated once, trusted everywhere after.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::error::ValidationError;

/// Checks `value` against a length range and a per-character predicate, naming
/// `field` in the error so HTTP callers learn exactly what to fix.
fn check(
    field: &'static str,
    value: &str,
    max_len: usize,
    allowed: fn(char) -> bool,
    charset: &str,
) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_len} characters (got {})", value.len()),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        return Err(ValidationError::new(
            field,
            format!("contains {bad:?}; only {charset} are allowed"),
        ));
    }
    Ok(())
}

/// `.` and `..` are path segments: a client that normalises URLs (most do)
/// turns `/services/..` into `/`, so an instance so named could never be
/// addressed again.
fn refuse_dot_segments(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value == "." || value == ".." {
        return Err(ValidationError::new(
            field,
            format!("must not be {value:?}: clients that normalise URL paths cannot address it"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, field = $field:literal, max = $max:expr, allowed = $allowed:expr, charset = $charset:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value, in bytes (all accepted characters are ASCII).
            pub const MAX_LEN: usize = $max;

            /// Validates `value`; the error names the field and the broken rule.
            pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check($field, &value, Self::MAX_LEN, $allowed, $charset)?;
                refuse_dot_segments($field, &value)?;
                Ok(Self(value))
            }

            /// Validates a value read back from a store or an event: the
            /// rules of [`Self::parse`] except those added after values were
            /// first stored (`.` and `..`), so that nothing a store once
            /// accepted becomes unreadable. New input goes through `parse`.
            pub fn restore(value: impl Into<String>) -> Result<Self, ValidationError> {
                let value = value.into();
                check($field, &value, Self::MAX_LEN, $allowed, $charset)?;
                Ok(Self(value))
            }

            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ValidationError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }
    };
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn service_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn instance_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

id_type!(
    /// A tenant: 1-100 characters of `[A-Za-z0-9_-]`.
    ///
    /// No dots, spaces or other punctuation, because tenant ids become NATS
    /// subject tokens and Redis key parts. A `&str` tenant never travels past
    /// the HTTP edge: everything inside takes a `TenantId`.
    TenantId, field = "tenant_id", max = 100, allowed = tenant_char, charset = "letters, digits, '_' and '-'"
);

id_type!(
    /// A service name: 1-128 characters of `[A-Za-z0-9_.-]` (DNS-label friendly,
    /// like Consul's recommendation, plus `_` and `.` used by the original hub).
    ServiceName, field = "service_name", max = 128, allowed = service_char, charset = "letters, digits, '_', '-' and '.'"
);

id_type!(
    /// One instance of a service: 1-128 characters of `[A-Za-z0-9_.:-]`, so that
    /// the common `host:port` style of Nacos and Consul instance ids is accepted.
    InstanceId, field = "instance_id", max = 128, allowed = instance_char, charset = "letters, digits, '_', '-', '.' and ':'"
);

impl TenantId {
    /// The tenant used when a request names none, as in the original hub.
    pub fn system() -> Self {
        Self("system".to_owned())
    }
}

impl From<&ServiceName> for InstanceId {
    /// The default instance id is the service name, so re-registering a name
    /// updates the same record (the original schema had `UNIQUE(tenant_id, service_name)`).
    fn from(name: &ServiceName) -> Self {
        // Every service-name character is also an instance-id character and the
        // length limits are equal, so no re-validation is needed.
        Self(name.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_accepts_the_documented_charset() {
        for ok in ["system", "tenant1", "a", "A-b_C-9", &"x".repeat(100)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn tenant_rejects_empty_long_and_foreign_characters() {
        for bad in [
            "",
            &"x".repeat(101),
            "tenant.1",
            "tenant 1",
            "t1' OR '1'='1",
            "t1;DROP TABLE x",
            "tënant",
            "a/b",
            "a*",
            "a>",
        ] {
            let err = TenantId::parse(bad).expect_err(bad);
            assert_eq!(err.field(), "tenant_id");
        }
    }

    #[test]
    fn service_name_rules() {
        assert!(ServiceName::parse("api-gateway_v2.eu").is_ok());
        assert!(ServiceName::parse("x".repeat(128)).is_ok());
        for bad in [
            "",
            "api gateway",
            &"x".repeat(129),
            &"x".repeat(300),
            "a/b",
            "a:b",
            ".",
            "..",
            "a\u{200b}",
            "\u{202e}a",
        ] {
            let err = ServiceName::parse(bad).expect_err(bad);
            assert_eq!(err.field(), "service_name");
        }
    }

    #[test]
    fn instance_id_rules() {
        assert!(InstanceId::parse("10.0.0.1:8080").is_ok());
        for bad in ["", "a b", &"x".repeat(129), "a/b", ".", "..", "a\u{feff}"] {
            let err = InstanceId::parse(bad).expect_err(bad);
            assert_eq!(err.field(), "instance_id");
        }
        // Dots are fine inside a name; only the bare path segments are refused.
        for ok in ["...", ".a", "a..", "10.0.0.1:80"] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok}");
            assert!(ServiceName::parse(ok.replace(':', "-")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn restore_reads_back_dot_segments_stored_before_they_were_refused() {
        for legacy in [".", ".."] {
            assert_eq!(ServiceName::restore(legacy).unwrap().as_str(), legacy);
            assert_eq!(InstanceId::restore(legacy).unwrap().as_str(), legacy);
        }
        assert!(ServiceName::restore("a b").is_err());
        assert!(InstanceId::restore("").is_err());
    }

    #[test]
    fn default_instance_id_is_the_service_name() {
        let name = ServiceName::parse("billing").unwrap();
        assert_eq!(InstanceId::from(&name).as_str(), "billing");
        let longest = ServiceName::parse("s".repeat(ServiceName::MAX_LEN)).unwrap();
        assert!(InstanceId::parse(InstanceId::from(&longest).as_str()).is_ok());
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let t = TenantId::parse("tenant1").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"tenant1\"");
    }
}
