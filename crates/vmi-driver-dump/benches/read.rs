//! Read benchmarks (filled in later).
fn main() {}
