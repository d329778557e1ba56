//! placeholder
pub fn _x() {}
