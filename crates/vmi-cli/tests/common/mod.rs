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

/// `vmi --target TARGET --json ARGS…`, which must succeed: its JSON output.
#[allow(dead_code)] // not every test binary reads JSON this way
pub fn json(target: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = vmi(target, &all);
    assert!(
        out.status.success(),
        "vmi {args:?} on {target} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

/// `vmi --json trace hrtimer_nanosleep --count 2` on a live test guest: two hits at the
/// function's address `at` (the guest's `vmi_loop` sleeps every second); the JSON hits.
#[allow(dead_code)] // not every test binary traces
pub fn trace_two_sleeps(target: &str, at: u64) -> Vec<serde_json::Value> {
    let out = vmi(
        target,
        &["--json", "trace", "hrtimer_nanosleep", "--count", "2"],
    );
    assert!(
        out.status.success(),
        "trace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[0]["rip"], format!("{at:#x}"));
    hits
}
