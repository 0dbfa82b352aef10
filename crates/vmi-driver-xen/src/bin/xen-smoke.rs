//! Nested-Xen smoke test binary (filled in below).
fn main() {}
