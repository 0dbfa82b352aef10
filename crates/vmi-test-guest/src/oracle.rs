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

/// `vol -q --cache-path CACHE` (the directory made if missing): a Volatility run with a
/// private cache. A run drops from its cache every ISF outside its own `-s` path, so runs
/// of concurrent tests sharing `~/.cache/volatility3` could hide each other's ISFs.
pub fn volatility_command(vol: &std::path::Path, cache: &std::path::Path) -> Command {
    // A failure to make it shows as vol's own error about the cache.
    let _ = std::fs::create_dir_all(cache);
    let mut cmd = Command::new(vol);
    cmd.args(["-q", "--cache-path"]).arg(cache);
    cmd
}

/// The drgn release the benchmarks compare against.
pub const DRGN: &str = "drgn==0.3.0";

/// Finds `drgn`: `$VMI_DRGN` if set, else the project venv (installed there with pip if
/// missing). `Err` says why it is unavailable.
pub fn drgn() -> Result<PathBuf, String> {
    if let Some(v) = std::env::var_os("VMI_DRGN").filter(|v| !v.is_empty()) {
        return Ok(v.into());
    }
    let venv = crate::cache::workspace_root().join("target/venv");
    let drgn = venv.join("bin/drgn");
    if drgn.exists() {
        return Ok(drgn);
    }
    let ok = (venv.join("bin/pip").exists()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success()))
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", DRGN])
            .status()
            .is_ok_and(|s| s.success());
    if ok && drgn.exists() {
        Ok(drgn)
    } else {
        Err(format!("could not install {DRGN} into {}", venv.display()))
    }
}

/// The DWARF `vmlinux` of a Debian kernel (`release` as `uname -r` prints it), from its
/// `linux-image-<release>-dbg` package in `suite`: downloaded once (hundreds of MB) and
/// only that file unpacked, into the shared cache. What drgn needs for types.
pub fn debug_vmlinux(suite: &str, release: &str) -> Result<PathBuf, String> {
    let dir = crate::cache::cache_dir().join("dbg").join(release);
    let out = dir.join("vmlinux");
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let spec: crate::KernelSpec = format!("{suite}:linux-image-{release}-dbg")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let apt = crate::apt::Apt::for_spec(&spec);
    let resolved = apt.resolve(&spec.package).map_err(|e| e.to_string())?;
    let deb = apt.download(&resolved, &dir).map_err(|e| e.to_string())?;
    let member = format!("./usr/lib/debug/boot/vmlinux-{release}");
    let tmp = dir.join(format!("vmlinux.tmp{}", std::process::id()));
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"dpkg-deb --fsys-tarfile "$1" | tar -xO "$2" > "$3""#)
        .args(["sh"])
        .arg(&deb)
        .arg(&member)
        .arg(&tmp)
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("extracting {member} from {}", deb.display()));
    }
    std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&deb);
    Ok(out)
}
