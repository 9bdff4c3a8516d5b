//! Outbox bench (being written).
fn main() {}
