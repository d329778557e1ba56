//! The errors every bus adapter returns: `Unavailable { component: "events" }` around the driver's error, or `Invalid` for the few refusals that are for good.

use std::error::Error as StdError;

use hub_core::RegistryError;
use hub_core::error::ValidationError;

/// The `component` of the `Unavailable` errors of this crate's adapters.
pub(crate) const COMPONENT: &str = "events";

/// The bus could not take the events; `source` says why (for the log).
pub(crate) fn unavailable(source: impl StdError + Send + Sync + 'static) -> RegistryError {
    RegistryError::Unavailable {
        component: COMPONENT,
        source: Box::new(source),
    }
}

/// Like [`unavailable`], with a message instead of a driver error.
pub(crate) fn unavailable_msg(message: String) -> RegistryError {
    RegistryError::Unavailable {
        component: COMPONENT,
        source: message.into(),
    }
}

/// The bus refused the events for good: retrying the same bytes can never
/// succeed, so the relay sets the refused event aside (see `relay.rs`).
fn refused(message: String) -> RegistryError {
    RegistryError::Invalid(ValidationError::new("event", message))
}

/// A message of `size` bytes (headers and payload, as the server counts
/// them) that the NATS server cannot take, or `None` if it fits.
///
/// Only size is permanent on NATS: the server's `max_payload` is fixed for
/// the connection, and a message over it is refused (the server even drops
/// the connection) every time, whereas every other failure (no connection,
/// a timeout, a missing ack, a stream not there yet) can pass. async-nats
/// 0.46 checks `max_payload` only in `Client::publish`, not for messages
/// with headers, so the publisher checks before sending.
pub(crate) fn nats_too_large(size: usize, max_payload: usize) -> Option<RegistryError> {
    (size > max_payload).then(|| {
        refused(format!(
            "a message of {size} bytes is larger than the NATS server's max_payload of {max_payload} bytes"
        ))
    })
}

/// A core NATS publish error: `Invalid` for async-nats's own max_payload
/// check (`MaxPayloadExceeded`), else `Unavailable`.
pub(crate) fn nats_publish(err: async_nats::PublishError) -> RegistryError {
    if err.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded {
        refused(format!("larger than the NATS server's max_payload ({err})"))
    } else {
        unavailable(err)
    }
}

/// A JetStream publish or ack error: `Invalid` when the stream refuses the
/// message for its size (the stream's `max_msg_size`, or its header limit),
/// else `Unavailable`. See [`nats_too_large`] for why only size counts.
pub(crate) fn nats_jetstream(err: async_nats::jetstream::context::PublishError) -> RegistryError {
    use async_nats::jetstream::ErrorCode;
    let refusal = err
        .source()
        .and_then(|source| source.downcast_ref::<async_nats::jetstream::Error>())
        .filter(|js| {
            let code = js.error_code();
            code == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                || code == ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
        })
        .map(|js| format!("the JetStream stream refused the message: {js}"));
    match refusal {
        Some(message) => refused(message),
        None => unavailable(err),
    }
}

/// A Kafka produce error: `Invalid` for the broker's answers that the
/// records themselves are unacceptable, else `Unavailable`.
///
/// Permanent are only `MessageTooLarge` and `RecordListTooLarge` (the batch
/// is over the topic's `max.message.bytes` / the broker's
/// `message.max.bytes`) and `InvalidRecord` (the broker's checks of the
/// record refuse it): the same records get the same answer every time. A
/// batch over the limit as a whole is refused too, and then the relay sends
/// its events one at a time, so only an event too large on its own is set
/// aside. Connection, leader, timeout and `CorruptMessage` (a CRC mismatch,
/// which a resend can cure) errors stay `Unavailable`.
pub(crate) fn kafka_produce(err: rskafka::client::error::Error) -> RegistryError {
    use rskafka::client::error::{Error, ProtocolError};
    match &err {
        Error::ServerError {
            protocol_error:
                protocol_error @ (ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord),
            error_message,
            ..
        } => refused(format!(
            "the Kafka broker refused the records ({protocol_error}: {})",
            error_message.as_deref().unwrap_or("no message")
        )),
        _ => unavailable(err),
    }
}

#[cfg(test)]
mod tests {
    // Tansu (the test broker) has no setting for a maximum message size and
    // so never answers `MessageTooLarge` or `RecordListTooLarge`; the mapping
    // is checked here on rskafka's own errors, as its produce call returns
    // them. `InvalidRecord` from a real Tansu is tested in tests/it/kafka.rs.
    use rskafka::client::error::{Error, ProtocolError, RequestContext};

    use super::*;

    fn server_error(protocol_error: ProtocolError) -> Error {
        Error::ServerError {
            protocol_error,
            error_message: Some("the broker's words".to_owned()),
            request: RequestContext::Partition("hub.registry.events".to_owned(), 3),
            response: None,
            is_virtual: false,
        }
    }

    #[test]
    fn kafka_refusals_of_the_records_are_permanent() {
        for refusal in [
            ProtocolError::MessageTooLarge,
            ProtocolError::RecordListTooLarge,
            ProtocolError::InvalidRecord,
        ] {
            match kafka_produce(server_error(refusal)) {
                RegistryError::Invalid(error) => {
                    let text = error.to_string();
                    assert!(text.contains("event"), "{text}");
                    assert!(text.contains("the broker's words"), "{text}");
                }
                other => panic!("{other:?} is not Invalid"),
            }
        }
    }

    #[test]
    fn kafka_connection_and_leader_errors_stay_unavailable() {
        for passing in [
            server_error(ProtocolError::NotLeaderOrFollower),
            server_error(ProtocolError::LeaderNotAvailable),
            server_error(ProtocolError::RequestTimedOut),
            server_error(ProtocolError::CorruptMessage),
            server_error(ProtocolError::NotEnoughReplicas),
            Error::Timeout,
            Error::InvalidResponse("cut short".to_owned()),
        ] {
            let error = kafka_produce(passing);
            assert!(
                matches!(
                    error,
                    RegistryError::Unavailable {
                        component: "events",
                        ..
                    }
                ),
                "{error:?}"
            );
        }
    }

    #[test]
    fn nats_size_refusal_names_both_sizes() {
        assert!(nats_too_large(1024, 1024).is_none());
        match nats_too_large(1025, 1024) {
            Some(RegistryError::Invalid(error)) => {
                let text = error.to_string();
                assert!(text.contains("1025 bytes"), "{text}");
                assert!(text.contains("max_payload of 1024 bytes"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }
}
