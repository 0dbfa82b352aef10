//! Independent tools the tests compare against.

use std::path::PathBuf;
use std::process::Command;

/// The Volatility 3 release the tests use.
pub const VOLATILITY: &str = "volatility3==2.28.2";

/// Finds Volatility 3's `vol`: `$VMI_VOL` if set, else the project venv
/// `<workspace>/target/venv/bin/vol` (made by `scripts/setup.sh`), which is created here
/// with pip if missing. `Err` says why it is unavailable; callers skip visibly, or fail
/// when [`guest_required`](crate::guest_required).
pub fn volatility() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("VMI_VOL").filter(|v| !v.is_empty()) {
        return Ok(v.into());
    }
    let venv = crate::cache::workspace_root().join("target/venv");
    let vol = venv.join("bin/vol");
    if vol.exists() {
        return Ok(vol);
    }
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", VOLATILITY])
            .status()
            .is_ok_and(|s| s.success());
    if ok && vol.exists() {
        Ok(vol)
    } else {
        Err(format!(
            "could not install {VOLATILITY} into {}",
            venv.display()
        ))
    }
}
