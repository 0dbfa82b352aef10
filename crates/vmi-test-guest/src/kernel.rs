//! Preparing a kernel: download the image `.deb`, unpack the few files needed (never install),
//! extract `vmlinux`, decompress the modules the guest loads, build the initramfs.
//!
//! Cache layout (`<cache>` = [`crate::cache::cache_dir`]):
//!
//! ```text
//! <cache>/debs/<suite>/<package>_<version>_amd64.deb
//! <cache>/kernels/<package>_<version>/{vmlinuz,vmlinux,config,release,compression,modules/*.ko,
//!                                      initramfs-<digest>.cpio.gz,ready}
//! <cache>/apt/<suite>/...          private apt configuration (other suites)
//! <cache>/locks/*.lock             file locks (parallel test processes)
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::apt::{Apt, KernelSpec};
use crate::cache::{self, CacheLock};
use crate::error::{Error, Result};
use crate::initramfs::{self, Fnv};
use crate::userland::{self, Userland};
use crate::vmlinuz;

/// Modules put into the initramfs and loaded by `/init`, in order (those without
/// dependencies; `qemu_fw_cfg` lets `-device vmcoreinfo` put VMCOREINFO into dumps).
pub const GUEST_MODULES: &[&str] = &["qemu_fw_cfg", "dummy", "crc7"];

/// Host path of the static busybox put into the guest.
pub const BUSYBOX: &str = "/bin/busybox";

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedKernel {
    /// The image package (`linux-image-6.1.0-56-cloud-amd64`).
    pub package: String,
    /// Its Debian version.
    pub version: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `vmlinux` ELF (with `.BTF`) extracted from the bzImage.
    pub vmlinux: PathBuf,
    /// The kernel `.config`.
    pub config: PathBuf,
    /// Compression of the bzImage payload.
    pub compression: String,
    /// The gzip newc initramfs.
    pub initrd: PathBuf,
    /// Cache directory of this kernel.
    pub dir: PathBuf,
}

/// Download (if needed) and unpack a kernel package and build its busybox initramfs; safe
/// to call from parallel processes (file lock per package).
pub fn prepare(spec: &KernelSpec) -> Result<PreparedKernel> {
    prepare_for(spec, Userland::Busybox)
}

/// [`prepare`] with the initramfs of the given userland.
pub fn prepare_for(spec: &KernelSpec, userland: Userland) -> Result<PreparedKernel> {
    let busybox = match userland {
        Userland::Busybox => cache::read(Path::new(BUSYBOX)).map_err(|_| Error::MissingTool {
            tool: "busybox",
            hint: "apt-get install busybox-static (a static /bin/busybox)",
        })?,
        Userland::Realistic => Vec::new(),
    };
    if cache::which("dpkg-deb").is_none() || cache::which("apt-get").is_none() {
        return Err(Error::MissingTool {
            tool: "dpkg-deb",
            hint: "a Debian host with apt and dpkg",
        });
    }
    let apt = Apt::for_spec(spec);
    let resolved = apt.resolve(&spec.package)?;
    let dir = cache::cache_dir()
        .join("kernels")
        .join(cache::sanitize(&format!(
            "{}_{}",
            resolved.package, resolved.version
        )));
    let _lock = CacheLock::acquire(&format!("kernel-{}", resolved.package))?;
    if !dir.join("ready").is_file() {
        let suite = spec.suite.clone().unwrap_or_else(|| "host".into());
        let debs = cache::cache_dir()
            .join("debs")
            .join(cache::sanitize(&suite));
        cache::mkdir(&debs)?;
        let deb = match apt.download(&resolved, &debs) {
            Ok(d) => d,
            Err(e) => {
                // Stale lists (the mirror dropped that version): update once and retry.
                eprintln!("[vmi-test-guest] download failed ({e}); updating apt lists");
                apt.update()?;
                let again = apt.resolve_cached_lists(&spec.package)?;
                if again != resolved {
                    return Err(Error::KernelResolve {
                        spec: spec.to_string(),
                        detail: format!(
                            "resolved to {} {} after apt-get update; retry",
                            again.package, again.version
                        ),
                    });
                }
                apt.download(&resolved, &debs)?
            }
        };
        unpack(&deb, &dir)?;
    }
    let read_text = |name: &str| -> Result<String> {
        let p = dir.join(name);
        Ok(String::from_utf8_lossy(&cache::read(&p)?).trim().to_owned())
    };
    let release = read_text("release")?;
    let compression = read_text("compression")?;
    let mut modules = Vec::new();
    let mut digest = Fnv::default();
    digest.write(&initramfs::script_digest().to_le_bytes());
    digest.write(&busybox);
    let staged = match userland {
        Userland::Busybox => None,
        Userland::Realistic => {
            let s = userland::stage()?;
            digest.write(&initramfs::realistic_digest().to_le_bytes());
            digest.write(&s.digest.to_le_bytes());
            Some(s)
        }
    };
    for m in GUEST_MODULES {
        let p = dir.join("modules").join(format!("{m}.ko"));
        if let Ok(ko) = std::fs::read(&p) {
            digest.write(m.as_bytes());
            digest.write(&ko);
            modules.push(((*m).to_owned(), ko));
        }
    }
    let initrd = match &staged {
        None => dir.join(format!("initramfs-{:016x}.cpio.gz", digest.0)),
        Some(_) => dir.join(format!("initramfs-realistic-{:016x}.cpio.gz", digest.0)),
    };
    if !initrd.is_file() {
        let img = match &staged {
            None => initramfs::build(&busybox, &modules)?,
            Some(s) => {
                let t = std::time::Instant::now();
                let (img, added) = initramfs::build_realistic(s, &modules)?;
                eprintln!(
                    "[vmi-test-guest] realistic initramfs: {} files, {:.1} MB ({:.1} MB gzip'd), \
                     {} libraries, {} Python modules left out, {:.1} s",
                    added.files,
                    added.bytes as f64 / 1e6,
                    img.len() as f64 / 1e6,
                    added.libraries.len(),
                    added.skipped_modules.len(),
                    t.elapsed().as_secs_f64()
                );
                img
            }
        };
        cache::write_atomic(&initrd, &img)?;
    }
    Ok(PreparedKernel {
        package: resolved.package,
        version: resolved.version,
        release,
        vmlinuz: dir.join("vmlinuz"),
        vmlinux: dir.join("vmlinux"),
        config: dir.join("config"),
        compression,
        initrd,
        dir,
    })
}

/// Unpack the needed files of an image `.deb` into `dir` and mark it ready.
fn unpack(deb: &Path, dir: &Path) -> Result<()> {
    eprintln!("[vmi-test-guest] unpacking {}", deb.display());
    let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    cache::mkdir(&tmp)?;
    let result = unpack_into(deb, &tmp, dir);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn unpack_into(deb: &Path, tmp: &Path, dir: &Path) -> Result<()> {
    // dpkg-deb --fsys-tarfile DEB | tar -x --wildcards <boot files and wanted modules>
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| Error::Command {
            command: "dpkg-deb --fsys-tarfile".into(),
            detail: e.to_string(),
        })?;
    let Some(stdout) = dpkg.stdout.take() else {
        return Err(Error::Command {
            command: "dpkg-deb".into(),
            detail: "no stdout pipe".into(),
        });
    };
    let mut tar = Command::new("tar");
    tar.arg("-x")
        .arg("-C")
        .arg(tmp)
        .arg("--wildcards")
        .arg("./boot/*");
    for m in GUEST_MODULES {
        tar.arg(format!("*/{m}.ko*"));
    }
    let out = tar.stdin(Stdio::from(stdout)).output();
    let dpkg_status = dpkg.wait();
    let out = out.map_err(|e| Error::Command {
        command: "tar -x".into(),
        detail: e.to_string(),
    })?;
    if !dpkg_status.map(|s| s.success()).unwrap_or(false) {
        return Err(Error::Command {
            command: format!("dpkg-deb --fsys-tarfile {}", deb.display()),
            detail: "failed".into(),
        });
    }
    // tar complains (exit 2) when a wildcard matched nothing: a missing module is fine.
    if !out.status.success()
        && !String::from_utf8_lossy(&out.stderr).contains("Not found in archive")
    {
        return Err(Error::Command {
            command: "tar -x".into(),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let boot = tmp.join("boot");
    let vmlinuz_name = std::fs::read_dir(&boot)
        .map_err(Error::io("read dir", &boot))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vmlinuz-"))
        .ok_or_else(|| Error::Vmlinuz(format!("no boot/vmlinuz-* in {}", deb.display())))?;
    let release = vmlinuz_name.trim_start_matches("vmlinuz-").to_owned();
    cache::mkdir(&dir.join("modules"))?;
    let bz = cache::read(&boot.join(&vmlinuz_name))?;
    let (kind, vmlinux) = vmlinuz::vmlinux_from_vmlinuz(&bz)?;
    cache::write_atomic(&dir.join("vmlinux"), &vmlinux)?;
    cache::write_atomic(&dir.join("vmlinuz"), &bz)?;
    let config = boot.join(format!("config-{release}"));
    if config.is_file() {
        cache::write_atomic(&dir.join("config"), &cache::read(&config)?)?;
    }
    for m in GUEST_MODULES {
        if let Some(ko) = find_module(tmp, m)? {
            if modinfo_depends(&ko).is_empty() {
                cache::write_atomic(&dir.join("modules").join(format!("{m}.ko")), &ko)?;
            } else {
                eprintln!("[vmi-test-guest] skipping module {m}: it has dependencies");
            }
        }
    }
    cache::write_atomic(&dir.join("release"), release.as_bytes())?;
    cache::write_atomic(&dir.join("compression"), kind.to_string().as_bytes())?;
    cache::write_atomic(&dir.join("ready"), b"ok\n")
}

/// Find `<name>.ko[.xz|.zst|.gz]` below `root` (bounded walk) and return it uncompressed.
fn find_module(root: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    let mut visited = 0usize;
    while let Some((d, depth)) = stack.pop() {
        visited += 1;
        if visited > 10_000 || depth > 16 {
            break;
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let fname = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push((p, depth + 1));
                continue;
            }
            let Some(ext) = fname.strip_prefix(name).and_then(|r| r.strip_prefix(".ko")) else {
                continue;
            };
            let raw = cache::read(&p)?;
            let ko = match ext {
                "" => raw,
                ".xz" => vmlinuz::xz_decompress(&raw, 64 << 20)?,
                ".zst" => {
                    let mut out = Vec::new();
                    let dec = ruzstd::decoding::StreamingDecoder::new(raw.as_slice())
                        .map_err(|e| Error::Vmlinuz(format!("module {name}: zstd: {e}")))?;
                    std::io::Read::read_to_end(&mut std::io::Read::take(dec, 64 << 20), &mut out)
                        .map_err(Error::io("decompress", &p))?;
                    out
                }
                ".gz" => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut std::io::Read::take(
                            flate2::read::GzDecoder::new(raw.as_slice()),
                            64 << 20,
                        ),
                        &mut out,
                    )
                    .map_err(Error::io("decompress", &p))?;
                    out
                }
                _ => continue,
            };
            return Ok(Some(ko));
        }
    }
    Ok(None)
}

/// The `depends=` value of a module's `.modinfo` (empty: no dependencies).
pub fn modinfo_depends(ko: &[u8]) -> String {
    let key = b"\0depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            let rest = &ko[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        })
        .unwrap_or_default()
}
