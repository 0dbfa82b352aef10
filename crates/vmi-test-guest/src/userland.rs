//! The guest's userland: busybox alone (the default, fastest) or a **realistic** one built
//! from Debian packages: busybox for init and tools plus glibc-linked programs (bash, a few
//! GNU coreutils, Python 3.11 with a trimmed standard library, the `dropbear` SSH daemon)
//! and their shared libraries.
//!
//! The realistic userland is taken from Debian 12 (bookworm) packages only: resolved with
//! `apt-cache show` (one call for all of them), downloaded with `apt-get download` and
//! unpacked with `dpkg-deb -x` into the shared cache, never installed and never read from
//! the host's own files. The shared libraries are the `DT_NEEDED` closure of the programs
//! (parsed with `object`), looked up in the unpacked packages; a library no package
//! provides is an error naming it, so the package list is checked on every build.
//!
//! Cache layout:
//!
//! ```text
//! <cache>/debs/<suite>/<package>_<version>_amd64.deb
//! <cache>/userland/<suite>-<digest>/root/...   all packages unpacked (digest of the versions)
//! <cache>/userland/<suite>-<digest>/ready
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use object::read::elf::{Dyn as _, FileHeader as _};

use crate::apt::{Apt, KernelSpec};
use crate::cache::{self, CacheLock};
use crate::cpio::CpioBuilder;
use crate::error::{Error, Result};
use crate::initramfs::Fnv;

/// Which userland the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Userland {
    /// The host's static busybox only: small, boots fastest (the classic `vmi_*` processes).
    #[default]
    Busybox,
    /// Debian packages: glibc programs, Python, a daemon, and processes shaped like
    /// production ones, plus the truth of every process (see the crate README).
    Realistic,
}

impl Userland {
    /// The default of [`crate::GuestConfig`]: `$VMI_GUEST_USERLAND` (`busybox` or
    /// `realistic`) if set, else [`Userland::Busybox`]; so every test that boots the
    /// default configuration can run on the realistic userland unchanged. An unknown value
    /// is an error (booting then fails with it).
    pub fn from_env() -> Result<Userland> {
        match std::env::var("VMI_GUEST_USERLAND") {
            Ok(v) if !v.is_empty() => v.parse().map_err(|_| {
                Error::Config(format!(
                    "VMI_GUEST_USERLAND=`{v}` is not a userland (busybox|realistic)"
                ))
            }),
            _ => Ok(Userland::Busybox),
        }
    }

    /// The name used on the command line and in `guest.env` (`busybox`, `realistic`).
    pub fn name(self) -> &'static str {
        match self {
            Userland::Busybox => "busybox",
            Userland::Realistic => "realistic",
        }
    }
}

impl std::fmt::Display for Userland {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Userland {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "busybox" => Ok(Userland::Busybox),
            "realistic" => Ok(Userland::Realistic),
            _ => Err(Error::Config(format!(
                "unknown userland `{s}` (busybox|realistic)"
            ))),
        }
    }
}

/// The Debian suite the realistic userland comes from (whatever the kernel's suite).
pub const SUITE: &str = "bookworm";

/// The packages unpacked for the realistic userland: the programs and every library
/// their `DT_NEEDED` closure reaches (checked at build time).
pub const PACKAGES: &[&str] = &[
    "busybox-static",
    "libc6",
    "libgcc-s1",
    "bash",
    "libtinfo6",
    "coreutils",
    "libacl1",
    "libattr1",
    "libgmp10",
    "libselinux1",
    "libpcre2-8-0",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libexpat1",
    "zlib1g",
    "libffi8",
    "dropbear-bin",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
];

/// The static busybox (init, shell, tools); shipped with the classic hard links.
pub const BUSYBOX: &str = "bin/busybox";

/// The glibc programs shipped, at their Debian paths (relative to `/`).
pub const PROGRAMS: &[&str] = &[
    "bin/bash",
    "bin/cat",
    "bin/sleep",
    "bin/ls",
    "usr/bin/env",
    "usr/bin/python3.11",
    "usr/sbin/dropbear",
];

/// Where the libraries go in the guest (and where the loader is).
pub const LIB_DIR: &str = "lib/x86_64-linux-gnu";

/// The dynamic loader (`PT_INTERP` of every program is `/lib64/<this>`).
const LOADER: &str = "ld-linux-x86-64.so.2";

/// The Python standard library directory.
const PYTHON_LIB: &str = "usr/lib/python3.11";

/// Standard-library directories left out (tests, GUI, packaging; ~40 MB less); also by
/// the nested Xen smoke test's dom0.
pub const PYTHON_SKIP: &[&str] = &[
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "config-3.11-x86_64-linux-gnu",
];

/// Version of the staging recipe (part of the cache key: bump when [`stage`] changes what
/// it produces).
const STAGE_RECIPE: u32 = 2;

/// Run by the packaged interpreter on the host after unpacking: byte-compile the modules
/// the guest's Python programs import (unchecked-hash `.pyc`, valid whatever the files'
/// times), so the guest does not compile them at every boot (seconds under TCG).
const PRECOMPILE: &str = r#"
import sys, py_compile
root = sys.argv[1]
import ctypes, mmap, os, re, select, signal, socket, threading, time
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f and f.endswith(".py") and f.startswith(root):
        py_compile.compile(f, dfile=f[len(root):], doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"#;

/// Bound on files walked in the unpacked packages.
const MAX_FILES: usize = 20_000;

/// The unpacked packages of the realistic userland.
#[derive(Debug, Clone)]
pub struct Staged {
    /// Root of the union of all unpacked packages.
    pub root: PathBuf,
    /// `(package, version)` of each package.
    pub versions: Vec<(String, String)>,
    /// Digest of the package versions (part of the initramfs cache key).
    pub digest: u64,
}

/// Resolve, download (if missing) and unpack the realistic userland's packages; safe to
/// call from parallel processes (file lock).
pub fn stage() -> Result<Staged> {
    let apt = Apt::for_spec(&KernelSpec {
        suite: Some(SUITE.into()),
        package: PACKAGES[0].into(),
    });
    let resolved = apt.versions(PACKAGES)?;
    let mut digest = Fnv::default();
    digest.write(&STAGE_RECIPE.to_le_bytes());
    digest.write(PRECOMPILE.as_bytes());
    for r in &resolved {
        digest.write(r.package.as_bytes());
        digest.write(b"=");
        digest.write(r.version.as_bytes());
        digest.write(&[0]);
    }
    let dir = cache::cache_dir()
        .join("userland")
        .join(format!("{SUITE}-{:016x}", digest.0));
    let root = dir.join("root");
    let staged = Staged {
        root: root.clone(),
        versions: resolved
            .iter()
            .map(|r| (r.package.clone(), r.version.clone()))
            .collect(),
        digest: digest.0,
    };
    if dir.join("ready").is_file() {
        return Ok(staged);
    }
    let _lock = CacheLock::acquire("userland")?;
    if dir.join("ready").is_file() {
        return Ok(staged);
    }
    let debs = cache::cache_dir().join("debs").join(SUITE);
    cache::mkdir(&debs)?;
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    cache::mkdir(&tmp.join("root"))?;
    for r in &resolved {
        let deb = apt.download(r, &debs)?;
        cache::run(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(tmp.join("root")),
        )?;
    }
    precompile(&tmp.join("root"))?;
    cache::write_atomic(&tmp.join("ready"), b"ok\n")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(Error::io("rename into", &dir))?;
    Ok(staged)
}

/// Byte-compile the modules the guest imports with the unpacked interpreter, run on the
/// host through the unpacked loader and libraries (nothing of the host's Python is used).
fn precompile(root: &Path) -> Result<()> {
    let root = std::path::absolute(root).map_err(Error::io("absolute path", root))?;
    let libs = format!(
        "{}:{}",
        root.join("lib/x86_64-linux-gnu").display(),
        root.join("usr/lib/x86_64-linux-gnu").display()
    );
    let mut prefix = root.display().to_string();
    prefix.truncate(prefix.trim_end_matches('/').len());
    cache::run(
        Command::new(root.join(LIB_DIR).join(LOADER))
            .arg("--library-path")
            .arg(libs)
            .arg(root.join("usr/bin/python3.11"))
            .args(["-S", "-B", "-c", PRECOMPILE])
            .arg(&prefix)
            .env("PYTHONHOME", root.join("usr"))
            .env_remove("PYTHONPATH"),
    )?;
    Ok(())
}

/// The `DT_NEEDED` entries of an ELF file (empty for static programs).
pub fn needed_libraries(data: &[u8]) -> Result<Vec<String>> {
    let bad = |e: object::read::Error| Error::Config(format!("ELF: {e}"));
    let header = object::elf::FileHeader64::<object::Endianness>::parse(data).map_err(bad)?;
    let endian = header.endian().map_err(bad)?;
    let sections = header.sections(endian, data).map_err(bad)?;
    let Some((dynamic, link)) = sections.dynamic(endian, data).map_err(bad)? else {
        return Ok(Vec::new());
    };
    let strings = sections.strings(endian, data, link).map_err(bad)?;
    let mut out = Vec::new();
    for d in dynamic {
        if d.tag32(endian) == Some(object::elf::DT_NEEDED) {
            let name = d.string(endian, strings).map_err(bad)?;
            out.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(out)
}

/// Where the packages put a library named `name`.
fn find_library(root: &Path, name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.is_file())
}

/// Add the libraries `elf` needs (transitively) to `libs` (name → file in the packages).
/// Returns the first library no package provides, if any (then `libs` is left unchanged).
fn add_closure(
    root: &Path,
    elf: &[u8],
    libs: &mut BTreeMap<String, PathBuf>,
) -> Result<Option<String>> {
    let mut found = BTreeMap::new();
    let mut todo = needed_libraries(elf)?;
    while let Some(name) = todo.pop() {
        if libs.contains_key(&name) || found.contains_key(&name) {
            continue;
        }
        let Some(path) = find_library(root, &name) else {
            return Ok(Some(name));
        };
        todo.extend(needed_libraries(&cache::read(&path)?)?);
        found.insert(name, path);
        if found.len() > 1000 {
            return Err(Error::Config("library closure larger than 1000".into()));
        }
    }
    libs.extend(found);
    Ok(None)
}

/// Permission bits of a file in the unpacked packages.
fn perm(p: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let m = std::fs::metadata(p).map_err(Error::io("stat", p))?;
    Ok(m.permissions().mode() & 0o7777)
}

/// Add the parent directories of `path` not yet in `dirs`, outermost first.
fn parents(c: &mut CpioBuilder, dirs: &mut BTreeSet<String>, path: &str) {
    let mut acc = String::new();
    let comps: Vec<&str> = path.split('/').collect();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(comp);
        if dirs.insert(acc.clone()) {
            c.dir(&acc, 0o755);
        }
    }
}

/// What [`add_files`] put into the archive.
#[derive(Debug, Clone, Default)]
pub struct Added {
    /// Number of regular files.
    pub files: usize,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Libraries shipped (names).
    pub libraries: Vec<String>,
    /// Python extension modules left out because a library they need is in no package.
    pub skipped_modules: Vec<String>,
}

/// Add the realistic userland's programs, the trimmed Python standard library and the
/// shared libraries to `c`. `dirs` tracks directories already in the archive.
pub fn add_files(
    staged: &Staged,
    c: &mut CpioBuilder,
    dirs: &mut BTreeSet<String>,
) -> Result<Added> {
    let root = &staged.root;
    let mut added = Added::default();
    let mut libs = BTreeMap::new();
    let mut add_file = |c: &mut CpioBuilder,
                        dirs: &mut BTreeSet<String>,
                        rel: &str,
                        src: &Path,
                        data: Vec<u8>|
     -> Result<()> {
        parents(c, dirs, rel);
        added.files += 1;
        added.bytes += data.len() as u64;
        c.file(rel, perm(src)?, data);
        Ok(())
    };
    for prog in PROGRAMS {
        let src = root.join(prog);
        let data = cache::read(&src)?;
        if let Some(missing) = add_closure(root, &data, &mut libs)? {
            return Err(Error::Config(format!(
                "/{prog} needs {missing}, which no package of userland::PACKAGES provides"
            )));
        }
        add_file(c, dirs, prog, &src, data)?;
    }
    // The standard library, trimmed; extension modules only when their libraries exist.
    let mut skipped = Vec::new();
    let mut stack = vec![PathBuf::from(PYTHON_LIB)];
    let mut walked = 0usize;
    while let Some(rel_dir) = stack.pop() {
        let abs = root.join(&rel_dir);
        let mut entries: Vec<_> = std::fs::read_dir(&abs)
            .map_err(Error::io("read dir", &abs))?
            .flatten()
            .collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            walked += 1;
            if walked > MAX_FILES {
                return Err(Error::Config(format!(
                    "more than {MAX_FILES} files under {}",
                    root.join(PYTHON_LIB).display()
                )));
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = rel_dir.join(&name);
            let rel_s = rel.to_string_lossy().into_owned();
            let ft = e.file_type().map_err(Error::io("stat", e.path()))?;
            if ft.is_dir() {
                if !PYTHON_SKIP.contains(&name.as_str()) {
                    stack.push(rel);
                }
            } else if ft.is_symlink() {
                // e.g. sitecustomize.py → /etc/python3.11/...: keep only links inside the tree
                let target =
                    std::fs::read_link(e.path()).map_err(Error::io("readlink", e.path()))?;
                if target.is_relative() && abs.join(&target).is_file() {
                    parents(c, dirs, &rel_s);
                    c.symlink(&rel_s, &target.to_string_lossy());
                }
            } else if ft.is_file() {
                let data = cache::read(&e.path())?;
                if name.ends_with(".so") {
                    if name.starts_with("_test") || name.starts_with("xx") {
                        continue;
                    }
                    if let Some(missing) = add_closure(root, &data, &mut libs)? {
                        skipped.push(format!("{name} (needs {missing})"));
                        continue;
                    }
                }
                add_file(c, dirs, &rel_s, &e.path(), data)?;
            }
        }
    }
    add_closure_libs(c, dirs, &libs, &mut added)?;
    // glibc itself is loaded by PT_INTERP, not DT_NEEDED.
    let loader = root.join(LIB_DIR).join(LOADER);
    let data = cache::read(&loader)?;
    let rel = format!("{LIB_DIR}/{LOADER}");
    parents(c, dirs, &rel);
    added.files += 1;
    added.bytes += data.len() as u64;
    c.file(&rel, 0o755, data);
    parents(c, dirs, &format!("lib64/{LOADER}"));
    c.symlink(&format!("lib64/{LOADER}"), &format!("/{LIB_DIR}/{LOADER}"));
    c.symlink("usr/bin/python3", "python3.11");
    added.skipped_modules = skipped;
    Ok(added)
}

fn add_closure_libs(
    c: &mut CpioBuilder,
    dirs: &mut BTreeSet<String>,
    libs: &BTreeMap<String, PathBuf>,
    added: &mut Added,
) -> Result<()> {
    for (name, src) in libs {
        if name == LOADER {
            continue;
        }
        let rel = format!("{LIB_DIR}/{name}");
        let data = cache::read(src)?;
        parents(c, dirs, &rel);
        added.files += 1;
        added.bytes += data.len() as u64;
        c.file(&rel, perm(src)?, data);
        added.libraries.push(name.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userland_names_round_trip() {
        for u in [Userland::Busybox, Userland::Realistic] {
            assert_eq!(u.name().parse::<Userland>().unwrap(), u);
        }
        assert!("alpine".parse::<Userland>().is_err());
    }

    #[test]
    fn needed_of_non_elf_is_an_error() {
        assert!(needed_libraries(b"#!/bin/sh\n").is_err());
        assert!(needed_libraries(&[]).is_err());
    }

    #[test]
    fn parents_are_added_once_outermost_first() {
        let mut c = CpioBuilder::new();
        let mut dirs = BTreeSet::new();
        parents(&mut c, &mut dirs, "usr/lib/python3.11/os.py");
        parents(&mut c, &mut dirs, "usr/lib/x.so");
        assert_eq!(
            dirs.iter().map(String::as_str).collect::<Vec<_>>(),
            ["usr", "usr/lib", "usr/lib/python3.11"]
        );
    }
}
