//! A private directory for the sockets the driver asks QEMU to create.
//!
//! A socket at a predictable path in a shared directory (`/tmp/…-<pid>-<n>.sock`) can be
//! bound first by any local user, who then serves a fake gdbstub: fake registers, fake
//! events. Instead the driver creates `vmi-qemu-<16 random hex digits>` with `mkdir`
//! (which fails on an existing name or a planted symlink, so the directory is ours),
//! mode 0700, checks owner and mode with `lstat`, and lets QEMU create its socket inside.
//! Nobody but its owner (and root) can create, replace or connect to an entry there.

use std::fs::DirBuilder;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::QemuError;

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A directory only its owner can use, removed with its contents on drop.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
}

fn random_hex() -> Result<String, QemuError> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| QemuError::io("reading /dev/urandom", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Whether `path` is a real directory (not a symlink) owned by `uid` that no one else
/// can write to (and, with `exact`, no one else can enter: mode 0700).
pub(crate) fn check_private(path: &Path, uid: u32, exact: bool) -> Result<(), String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !m.file_type().is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    if m.uid() != uid {
        return Err(format!(
            "{} belongs to uid {}, not {uid}",
            path.display(),
            m.uid()
        ));
    }
    let mode = m.mode() & 0o7777;
    let bad = if exact {
        mode != 0o700
    } else {
        mode & 0o022 != 0
    };
    if bad {
        return Err(format!("{} has mode {mode:o}", path.display()));
    }
    Ok(())
}

/// Where to create the directory: `$XDG_RUNTIME_DIR` when QEMU runs as us and it is a
/// private directory of ours, else the system temporary directory.
fn base_dir(qemu_uid: u32) -> PathBuf {
    let euid = crate::sys::euid();
    if qemu_uid == euid
        && let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && x.is_absolute()
        && check_private(&x, euid, false).is_ok()
        // room for "/vmi-qemu-0123456789abcdef/gdb.sock"
        && x.as_os_str().len() + 36 <= MAX_SOCKET_PATH
    {
        return x;
    }
    std::env::temp_dir()
}

impl PrivateDir {
    /// Creates a private directory in which QEMU, running as `qemu_uid`, can create a
    /// socket. When QEMU runs as another user, only root can do that (it hands the
    /// directory to QEMU's user); anyone else gets an error.
    pub(crate) fn create(qemu_uid: u32) -> Result<PrivateDir, QemuError> {
        Self::create_in(&base_dir(qemu_uid), qemu_uid)
    }

    /// [`PrivateDir::create`] under `base`.
    pub(crate) fn create_in(base: &Path, qemu_uid: u32) -> Result<PrivateDir, QemuError> {
        let euid = crate::sys::euid();
        if qemu_uid != euid && euid != 0 {
            return Err(QemuError::GdbUnavailable(format!(
                "QEMU runs as uid {qemu_uid} and this process as uid {euid}: no private \
                 directory can hold a gdbstub socket for both; start QEMU with -gdb and \
                 give its socket (AttachOptions::gdb_socket)"
            )));
        }
        for _ in 0..16 {
            let path = base.join(format!("vmi-qemu-{}", random_hex()?));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                // Someone made that name first (or planted a symlink there): another.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(QemuError::io(format!("creating {}", path.display()), e)),
            }
            let dir = PrivateDir { path };
            // mkdir's mode went through the umask: set it exactly, then check what is
            // there (lstat: a directory, ours, 0700).
            std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| QemuError::io(format!("chmod {}", dir.path.display()), e))?;
            check_private(&dir.path, euid, true).map_err(QemuError::GdbUnavailable)?;
            if qemu_uid != euid {
                std::os::unix::fs::chown(&dir.path, Some(qemu_uid), None)
                    .map_err(|e| QemuError::io(format!("chown {}", dir.path.display()), e))?;
                check_private(&dir.path, qemu_uid, true).map_err(QemuError::GdbUnavailable)?;
            }
            if dir.path.as_os_str().len() + 9 > MAX_SOCKET_PATH {
                return Err(QemuError::GdbUnavailable(format!(
                    "{} is too long for a unix socket path",
                    dir.path.display()
                )));
            }
            return Ok(dir);
        }
        Err(QemuError::GdbUnavailable(format!(
            "could not create a private directory in {} (16 names taken)",
            base.display()
        )))
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "vmi-qemu-rundir-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        DirBuilder::new().mode(0o700).create(&p).unwrap();
        p
    }

    #[test]
    fn private_dir_is_0700_ours_unpredictable_and_removed() {
        let base = scratch("basic");
        let euid = crate::sys::euid();
        let a = PrivateDir::create_in(&base, euid).unwrap();
        let b = PrivateDir::create_in(&base, euid).unwrap();
        assert_ne!(a.path(), b.path());
        for d in [&a, &b] {
            let m = std::fs::symlink_metadata(d.path()).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o700);
            assert_eq!(m.uid(), euid);
            let name = d.path().file_name().unwrap().to_str().unwrap();
            let hex = name.strip_prefix("vmi-qemu-").unwrap();
            assert_eq!(hex.len(), 16);
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        std::fs::write(pa.join("gdb.sock"), b"x").unwrap();
        drop(a);
        drop(b);
        assert!(!pa.exists() && !pb.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn check_private_refuses_symlinks_shared_modes_and_other_owners() {
        let base = scratch("check");
        let euid = crate::sys::euid();
        let real = base.join("real");
        DirBuilder::new().mode(0o700).create(&real).unwrap();
        assert!(check_private(&real, euid, true).is_ok());
        // A planted symlink to a private directory is not a private directory.
        let link = base.join("link");
        symlink(&real, &link).unwrap();
        assert!(check_private(&link, euid, true).is_err());
        // World-writable or group-readable: refused.
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_private(&real, euid, false).is_err());
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(check_private(&real, euid, false).is_ok());
        assert!(check_private(&real, euid, true).is_err());
        // Someone else's.
        assert!(check_private(&real, euid.wrapping_add(1), false).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
