//! In-memory adapters of the ports: used by embedded mode, by embedders and by tests.

mod bus;
mod clock;
mod store;

pub use bus::{BUS_CAPACITY, InProcessBus};
pub use clock::{ManualClock, SystemClock};
pub use store::MemoryStore;
