//! Shared by the CLI's tests: running the real `vmi` binary.

use std::process::{Command, Output};

/// `vmi --target TARGET ARGS…`, with a profile cache of the test runs' own: each run
/// builds its profile from guest memory once, then uses the cache.
pub fn vmi(target: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
        .arg("--target")
        .arg(target)
        .args(args)
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .output()
        .expect("run vmi")
}
