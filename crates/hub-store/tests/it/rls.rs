//! placeholder
pub fn _y() {}
