//! hub-server as a library: settings, logging and the `Application` that wires adapters together.
//!
//! The binary in `main.rs` is a thin shell over this, so black-box tests can
//! start the very same application on port 0.

pub mod cli;
pub mod settings;
pub mod startup;
mod tasks;
pub mod telemetry;
mod wiring;

pub use settings::Settings;
pub use startup::{Application, StopHandle};
