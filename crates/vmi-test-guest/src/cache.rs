//! Where things live on the host: the workspace, the download/extraction cache, guest dirs,
//! plus small process and file helpers shared by the other modules.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The cache of downloaded `.deb`s, extracted kernels and initramfs images:
/// `$VMI_GUEST_CACHE`, else `<workspace>/target/vmi-guest-cache`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("VMI_GUEST_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target").join("vmi-guest-cache"),
    }
}

/// Where [`crate::TestGuest`] creates its per-guest directories:
/// `$VMI_GUEST_DIRS`, else `<workspace>/target/vmi-guests`, or `<tmp>/vmi-guests` when
/// the workspace path is too long for unix socket names (108 bytes).
pub fn guests_base_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("VMI_GUEST_DIRS").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = workspace_root().join("target").join("vmi-guests");
    // room for "/<unique name>/qmp-aux.sock"
    if base.as_os_str().len() + 48 < 108 {
        base
    } else {
        std::env::temp_dir().join("vmi-guests")
    }
}

/// An exclusive advisory lock on `<cache>/locks/<name>.lock`, released on drop.
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Block until the named lock is held.
    pub fn acquire(name: &str) -> Result<CacheLock> {
        let dir = cache_dir().join("locks");
        mkdir(&dir)?;
        let path = dir.join(format!("{}.lock", sanitize(name)));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(Error::io("open lock", &path))?;
        file.lock().map_err(Error::io("lock", &path))?;
        Ok(CacheLock { _file: file })
    }
}

/// Replace everything but `[A-Za-z0-9._+-]` with `_` (for file names).
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

pub(crate) fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(Error::io("create dir", p))
}

pub(crate) fn read(p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(Error::io("read", p))
}

/// Write via a temporary file in the same directory and rename (readers never see a
/// partial file).
pub(crate) fn write_atomic(p: &Path, data: &[u8]) -> Result<()> {
    let tmp = p.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).map_err(Error::io("write", &tmp))?;
    std::fs::rename(&tmp, p).map_err(Error::io("rename into", p))
}

/// Find a program on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Run a command to completion, capturing output; a non-zero exit is an error.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let out = run_status(cmd)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: describe(cmd),
            detail: format!(
                "{}: {}{}",
                out.status,
                tail(&out.stderr, 8),
                tail(&out.stdout, 4)
            ),
        })
    }
}

/// Run a command to completion, capturing output, whatever its exit status.
pub(crate) fn run_status(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            command: describe(cmd),
            detail: e.to_string(),
        })
}

/// Is process `pid` alive (and not a zombie)?
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(
            s.rsplit_once(") ").map(|(_, r)| r.starts_with('Z')),
            Some(true)
        ),
        Err(_) => false,
    }
}

/// The NUL-separated command line of process `pid`, joined with spaces.
pub fn pid_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&raw).replace('\0', " "))
}

/// Send a signal with `kill(1)` (this crate forbids `unsafe`, so no direct syscall).
pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
