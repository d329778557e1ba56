//! The errors every bus adapter returns: `Unavailable { component: "events" }` around the driver's error.

use std::error::Error as StdError;

use hub_core::RegistryError;

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
