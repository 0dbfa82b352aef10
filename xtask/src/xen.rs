//! `cargo xtask xen smoke --xen 4.17|4.20`: the nested-Xen smoke test of
//! `vmi-driver-xen`.
//!
//! Downloads Debian's Xen hypervisor, tools, libraries and a stock kernel with apt
//! (never installed: unpacked with `dpkg-deb -x`; trixie through a private apt
//! configuration), builds the `xen-smoke` binary (crate `vmi-test-xen`) against that Xen's headers and
//! static libraries, packs a dom0 initramfs (busybox, Xen modules and tools, their
//! libraries, the binary, a domU kernel and initramfs) and boots Xen under QEMU TCG with
//! `-cpu qemu64,+svm,+npt`. Dom0's `/init` starts a PV and a PVH guest and runs the
//! binary against each; its marker lines come back on the serial log. For the PVH guest
//! the binary also builds the Linux OS layer from guest memory alone and lists the
//! processes (`XEN_TASK` lines); the guest prints its own `/proc/<pid>/stat` pid and comm
//! list on its console (`XEN_DOMU` lines, relayed by dom0 from xenconsoled's log), and
//! `PROCESS_MATCH` requires every long-lived one to be listed by the driver with the same
//! comm. Prints what each check saw and one summary line; fails unless every check passed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use vmi_test_guest::KernelSpec;
use vmi_test_guest::apt::Apt;
use vmi_test_guest::cpio::CpioBuilder;

/// One Xen release's packages.
struct XenSet {
    version: &'static str,
    suite: &'static str,
    packages: &'static [&'static str],
    /// The suite's Python (`3.11`), whose interpreter and standard library dom0 gets for
    /// the Python package's checks.
    python: &'static str,
}

const COMMON_LIBS: &[&str] = &[
    "libxen-dev",
    "libxencall1",
    "libxendevicemodel1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxenstore4",
    "libxentoolcore1",
    "libxentoollog1",
    "libyajl2",
];

fn xen_set(version: &str) -> Result<XenSet> {
    Ok(match version {
        "4.17" => XenSet {
            version: "4.17",
            suite: "bookworm",
            packages: &[
                "xen-hypervisor-4.17-amd64",
                "xen-utils-4.17",
                "libxenmisc4.17",
                "python3.11-minimal",
                "libpython3.11-minimal",
                "libpython3.11-stdlib",
            ],
            python: "3.11",
        },
        "4.20" => XenSet {
            version: "4.20",
            suite: "trixie",
            packages: &[
                "xen-hypervisor-4.20-amd64",
                "xen-utils-4.20",
                "libxenmisc4.20",
                // the tools need trixie's C library at run time
                "libc6",
                "libgcc-s1",
                "zlib1g",
                "liblzma5",
                "libzstd1",
                "libuuid1",
                "libtinfo6",
                "libncursesw6",
                "libexpat1",
                "python3.13-minimal",
                "libpython3.13-minimal",
                "libpython3.13-stdlib",
            ],
            python: "3.13",
        },
        other => bail!("--xen must be 4.17 or 4.20, not `{other}`"),
    })
}

fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(out)
}

/// Downloads (cached) and unpacks every package of `set` plus the dom0/domU kernel into
/// `root`; returns the kernel's release.
fn prepare_root(set: &XenSet, work: &Path) -> Result<PathBuf> {
    // One process unpacks at a time (scripts/test.sh fetches in the background).
    let _lock = vmi_test_guest::cache::CacheLock::acquire(&format!("xen-{}", set.version))?;
    let root = work.join("root");
    // The marker names the packages: a root unpacked for another list is unpacked again.
    let ready = set.packages.join(" ");
    if std::fs::read_to_string(root.join(".ready")).is_ok_and(|r| r == ready) {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let apt_for = |suite: &str| {
        Apt::for_spec(&KernelSpec {
            suite: Some(suite.to_owned()),
            package: String::new(),
        })
    };
    let xen_apt = apt_for(set.suite);
    let mut wanted: Vec<(Apt, String)> = Vec::new();
    for p in set.packages.iter().chain(COMMON_LIBS) {
        wanted.push((xen_apt.clone(), (*p).to_owned()));
    }
    // The stock bookworm kernel works as dom0 and domU for both Xen releases.
    wanted.push((apt_for("bookworm"), "linux-image-amd64".to_owned()));
    for (apt, pkg) in wanted {
        let r = apt
            .resolve(&pkg)
            .with_context(|| format!("resolving {pkg}"))?;
        let deb = apt
            .download(&r, &debs)
            .with_context(|| format!("downloading {pkg}"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    std::fs::write(root.join(".ready"), ready)?;
    Ok(root)
}

fn find_file(dir: &Path, pred: &dyn Fn(&Path) -> bool, depth: usize) -> Option<PathBuf> {
    let rd = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            subdirs.push(p);
        } else if pred(&p) {
            return Some(p);
        }
    }
    if depth == 0 {
        return None;
    }
    subdirs.iter().find_map(|d| find_file(d, pred, depth - 1))
}

fn file_name_is(p: &Path, name: &str) -> bool {
    p.file_name().is_some_and(|n| n == name)
}

fn starts_with(p: &Path, prefix: &str) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix))
}

/// Shared libraries `binaries` need (by `ldd`, preferring the unpacked root's).
fn needed_libs(binaries: &[PathBuf], lib_dirs: &str) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for b in binaries {
        let out = Command::new("ldd")
            .arg(b)
            .env("LD_LIBRARY_PATH", lib_dirs)
            .output()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some((_, rest)) = line.split_once("=> ")
                && let Some(path) = rest.split_whitespace().next()
                && path.starts_with('/')
            {
                libs.insert(PathBuf::from(path));
            }
        }
    }
    Ok(libs)
}

const DOM0_INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin:/usr/lib/xen-@V@/bin
export LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts; mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /tmp
mkdir -p /var/lib/xen /var/lib/xenstored /var/log/xen/console /var/run/xen /var/run/xenstored
for m in xen-privcmd xen-evtchn xen-gntdev xen-gntalloc xenfs; do insmod /lib/modules/$m.ko; done
mount -t xenfs xenfs /proc/xen
echo "XEN_SMOKE dom0 BOOT INFO caps=$(cat /proc/xen/capabilities)"
xenstored --pid-file /var/run/xenstored.pid
sleep 1; xen-init-dom0 >/dev/null 2>&1
xenconsoled --log=guest --log-dir=/var/log/xen/console --pid-file=/var/run/xenconsoled.pid
echo "XEN_SMOKE dom0 XL_INFO INFO $(xl info | grep -E '^(xen_version|virt_caps)' | tr -s ' ' | tr '\n' ';')"
for t in pv pvh; do
  if xl create /root/guest-$t.cfg >/tmp/create-$t.log 2>&1; then
    echo "XEN_SMOKE $t CREATE OK"
  else
    echo "XEN_SMOKE $t CREATE FAIL $(tail -n 3 /tmp/create-$t.log | tr '\n' ' ')"; continue
  fi
  i=0; while [ $i -lt 40 ] && ! grep -q DOMU_ALIVE /var/log/xen/console/guest-guest$t.log 2>/dev/null; do sleep 1; i=$((i+1)); done
  echo "XEN_SMOKE $t ALIVE INFO after ${i}s: $(grep -m1 DOMU_ALIVE /var/log/xen/console/guest-guest$t.log)"
  if [ $t = pvh ]; then
    i=0; while [ $i -lt 30 ] && ! grep -q DOMU_PS_END /var/log/xen/console/guest-guest$t.log; do sleep 1; i=$((i+1)); done
    tr -d '\r' < /var/log/xen/console/guest-guest$t.log | grep '^DOMU_PS ' | sed "s/^DOMU_PS /XEN_DOMU $t /"
  fi
  id=$(xl domid guest$t)
  # The Python package first: xen-smoke's last probe plants an int3 that may kill the guest.
  [ $t = pvh ] && PYTHONPATH=/root/py python3 -S -B /root/xen_dom0.py $t $id
  /root/xen-smoke $id $t @BANNER@ @EVENTS@
  xl destroy $id
done
echo "XEN_SMOKE dom0 DONE INFO"
poweroff -f
"#;

const DOMU_INIT: &str = r#"#!/bin/sh
mount -t proc proc /proc; mount -t devtmpfs devtmpfs /dev
printf '#!/bin/sh\nwhile :; do sleep 3600; done\n' > /bin/vmi-idle; chmod 755 /bin/vmi-idle
/bin/vmi-idle & /bin/vmi-idle &
sleep 1
echo "DOMU_ALIVE $(cat /proc/version)"
for s in /proc/[0-9]*/stat; do set -f; read -r l < $s && set -- $l && echo "DOMU_PS $1 $2"; set +f; done 2>/dev/null
echo DOMU_PS_END
while true; do ls / >/dev/null; cat /proc/uptime >/dev/null; sleep 0.05; done
"#;

/// Directories every initramfs of the smoke test starts with.
const BASE_DIRS: [&str; 13] = [
    "/bin",
    "/sbin",
    "/usr",
    "/usr/bin",
    "/usr/sbin",
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/root",
    "/var",
    "/etc",
];

fn busybox_cpio(c: &mut CpioBuilder, busybox: &[u8]) -> Result<()> {
    for d in BASE_DIRS {
        c.dir(d, 0o755);
    }
    c.file("/bin/busybox", 0o755, busybox.to_vec());
    let out = Command::new("/bin/busybox").arg("--list-full").output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let a = applet.trim();
        if a.is_empty() || a == "bin/busybox" {
            continue;
        }
        c.symlink(&format!("/{a}"), "/bin/busybox");
    }
    Ok(())
}

fn mkdirs(c: &mut CpioBuilder, seen: &mut BTreeSet<String>, path: &str) {
    let mut cur = String::new();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        cur.push('/');
        cur.push_str(p);
        if seen.insert(cur.clone()) {
            c.dir(&cur, 0o755);
        }
    }
}

/// Adds the tree `rel` under `root` (files, directories, symbolic links) at `/rel`, but
/// for what the test guest leaves out of a Python standard library, `config-*`
/// directories and byte code.
fn add_tree(
    c: &mut CpioBuilder,
    seen: &mut BTreeSet<String>,
    root: &Path,
    rel: &str,
) -> Result<()> {
    let dir = root.join(rel);
    mkdirs(c, seen, &format!("/{rel}/x"));
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .with_context(|| format!("{}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if vmi_test_guest::userland::PYTHON_SKIP.contains(&name.as_str())
            || name.starts_with("config-")
            || name == "__pycache__"
        {
            continue;
        }
        let (path, dest) = (e.path(), format!("/{rel}/{name}"));
        let ft = e.file_type()?;
        if ft.is_symlink() {
            let to = std::fs::read_link(&path)?;
            c.symlink(&dest, &to.to_string_lossy());
        } else if ft.is_dir() {
            add_tree(c, seen, root, &format!("{rel}/{name}"))?;
        } else {
            c.file(&dest, 0o644, std::fs::read(&path)?);
        }
    }
    Ok(())
}

/// The extension module of the Python package built with the `xen` feature against this
/// Xen release's libraries: the one `scripts/setup.sh` installed into the package
/// (`maturin develop --features xen`) when it links this release's libxenctrl, else one
/// built here against the unpacked headers (the host's libxen-dev is another release).
fn python_module(set: &XenSet, root: &Path, ws: &Path) -> Result<PathBuf> {
    let soname = format!("libxenctrl.so.{}", set.version);
    let links = |p: &Path| {
        std::fs::read(p).is_ok_and(|b| b.windows(soname.len()).any(|w| w == soname.as_bytes()))
    };
    let installed = ws.join("crates/vmi-python/python/vmi/_vmi.abi3.so");
    if links(&installed) {
        eprintln!("[xen] the Python package's module: {}", installed.display());
        return Ok(installed);
    }
    eprintln!(
        "[xen] building the Python package's module against Xen {} headers",
        set.version
    );
    let target = ws
        .join("target")
        .join(format!("xen-python-{}", set.version));
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(ws)
            .args([
                "build",
                "-q",
                "-p",
                "vmi-python",
                "--features",
                "xen",
                "--lib",
            ])
            .env("CARGO_TARGET_DIR", &target)
            .env("XEN_HEADERS_DIR", root.join("usr/include"))
            .env("XEN_LIB_DIR", root.join("usr/lib/x86_64-linux-gnu"))
            .env("XEN_STATIC", "0"),
    )?;
    let built = target.join("debug/lib_vmi.so");
    if !links(&built) {
        bail!("{} does not link {soname}", built.display());
    }
    Ok(built)
}

/// The virtual address of `linux_banner` (`"Linux version <digit>..."`) in the vmlinux
/// inside a bzImage, from the ELF program headers; hex without `0x`.
fn banner_va(vmlinuz: &[u8]) -> Result<String> {
    let (_, elf) = vmi_test_guest::vmlinuz::vmlinux_from_vmlinuz(vmlinuz)?;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(..4) != Some(b"\x7fELF") {
        bail!("vmlinux is not an ELF file");
    }
    let phoff = u64_at(0x20).context("e_phoff")? as usize;
    let phentsize = usize::from(u16_at(0x36).context("e_phentsize")?);
    let phnum = usize::from(u16_at(0x38).context("e_phnum")?);
    let needle = b"Linux version ";
    let mut from = 0;
    let off = loop {
        let pos = elf[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .context("no `Linux version ` string in vmlinux")?
            + from;
        if elf
            .get(pos + needle.len())
            .is_some_and(|c| c.is_ascii_digit())
        {
            break pos as u64;
        }
        from = pos + 1;
    };
    for i in 0..phnum.min(64) {
        let ph = phoff + i * phentsize;
        let ptype = u16_at(ph).context("p_type")?;
        let (o, va, sz) = (
            u64_at(ph + 8).context("p_offset")?,
            u64_at(ph + 16).context("p_vaddr")?,
            u64_at(ph + 32).context("p_filesz")?,
        );
        if ptype == 1 && off >= o && off < o + sz {
            return Ok(format!("{:x}", va + (off - o)));
        }
    }
    bail!("banner at file offset {off:#x} is in no PT_LOAD segment")
}

/// Entry point of `cargo xtask xen headers`: downloads (cached) and unpacks
/// `libxen-dev` and the libraries it links against for one Xen release, without the
/// hypervisor, tools or kernel; returns the unpacked root (`usr/include`,
/// `usr/lib/x86_64-linux-gnu`).
pub fn headers(version: &str) -> Result<PathBuf> {
    let set = xen_set(version)?;
    let work = vmi_test_guest::cache::cache_dir()
        .join("xen")
        .join(set.version);
    let _lock = vmi_test_guest::cache::CacheLock::acquire(&format!("xen-{}", set.version))?;
    let root = work.join("headers");
    if root.join(".ready").is_file() {
        return Ok(root);
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let debs = work.join("debs");
    std::fs::create_dir_all(&debs)?;
    let apt = Apt::for_spec(&KernelSpec {
        suite: Some(set.suite.to_owned()),
        package: String::new(),
    });
    let misc = format!("libxenmisc{}", set.version);
    for pkg in COMMON_LIBS.iter().copied().chain([misc.as_str()]) {
        let r = apt
            .resolve(pkg)
            .with_context(|| format!("resolving {pkg}"))?;
        let deb = apt
            .download(&r, &debs)
            .with_context(|| format!("downloading {pkg}"))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    std::fs::write(root.join(".ready"), b"")?;
    Ok(root)
}

/// Whether `cargo xtask xen smoke` builds the xen-smoke binary, and in which profile.
pub enum Build {
    /// Build it in this profile, then run the test.
    Then(String),
    /// Only build it.
    Only(String),
    /// Run the test with the binary an earlier build left.
    Prebuilt,
    /// Only download and unpack the packages.
    FetchOnly,
}

/// Builds xen-smoke against this Xen's headers and static libraries, in the `release`
/// profile (a target directory of its own) or `dev` (the workspace's: the dependencies are
/// the ones the tests build; vmi-driver-xen is built again for these headers, and again by
/// the next build without them), and copies it to `dest`.
fn build_smoke(set: &XenSet, root: &Path, ws: &Path, profile: &str, dest: &Path) -> Result<()> {
    let (target, dir) = match profile {
        "release" => (dest.parent().context("dest")?.to_path_buf(), "release"),
        "dev" => (
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| ws.join("target")),
            "debug",
        ),
        other => bail!("--profile must be release or dev, not `{other}`"),
    };
    eprintln!(
        "[xen] building xen-smoke ({profile}) against Xen {} headers",
        set.version
    );
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(ws)
            .args(["build", "-q", "--profile", profile, "-p", "vmi-test-xen"])
            .args(["--features", "smoke", "--bin", "xen-smoke"])
            .env("CARGO_TARGET_DIR", &target)
            .env("XEN_HEADERS_DIR", root.join("usr/include"))
            .env("XEN_LIB_DIR", root.join("usr/lib/x86_64-linux-gnu"))
            .env("XEN_STATIC", "1"),
    )?;
    std::fs::create_dir_all(dest.parent().context("dest")?)?;
    std::fs::copy(target.join(dir).join("xen-smoke"), dest)
        .with_context(|| format!("copying xen-smoke to {}", dest.display()))?;
    Ok(())
}

/// Entry point of `cargo xtask xen smoke`.
pub fn smoke(version: &str, events: usize, timeout: Duration, build: Build) -> Result<bool> {
    let set = xen_set(version)?;
    let ws = vmi_test_guest::cache::workspace_root();
    let work = vmi_test_guest::cache::cache_dir()
        .join("xen")
        .join(set.version);
    std::fs::create_dir_all(&work)?;
    let t0 = Instant::now();
    eprintln!(
        "[xen] preparing Xen {} packages in {}",
        set.version,
        work.display()
    );
    let root = prepare_root(&set, &work)?;
    if matches!(build, Build::FetchOnly) {
        return Ok(true);
    }
    let lib = root.join("usr/lib/x86_64-linux-gnu");

    // The kernel and its Xen modules.
    let boot = root.join("boot");
    let vmlinuz = find_file(&boot, &|p| starts_with(p, "vmlinuz-"), 0).context("no vmlinuz")?;
    // Debian's System.map is a placeholder: find `linux_banner` in the kernel image.
    let banner = banner_va(&std::fs::read(&vmlinuz)?)?;
    let xen_gz = find_file(
        &boot,
        &|p| {
            starts_with(p, &format!("xen-{}", set.version))
                && p.extension().is_some_and(|e| e == "gz")
        },
        0,
    )
    .context("no xen-*.gz in the hypervisor package")?;
    let xen_elf = work.join("xen");
    {
        use std::io::Read as _;
        let gz = std::fs::read(&xen_gz)?;
        let out = Command::new("gzip")
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut child = out;
        let mut stdin = child.stdin.take().context("gzip stdin")?;
        let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &gz));
        let mut data = Vec::new();
        child
            .stdout
            .take()
            .context("gzip stdout")?
            .read_to_end(&mut data)?;
        let _ = writer.join();
        child.wait()?;
        std::fs::write(&xen_elf, data)?;
    }

    let smoke_bin = ws
        .join("target")
        .join(format!("xen-smoke-{}", set.version))
        .join("xen-smoke");
    match &build {
        Build::FetchOnly => {}
        Build::Prebuilt => {
            if !smoke_bin.is_file() {
                bail!(
                    "{}: no xen-smoke binary (run `cargo xtask xen smoke --xen {} --build-only` first)",
                    smoke_bin.display(),
                    set.version
                );
            }
        }
        Build::Only(profile) | Build::Then(profile) => {
            build_smoke(&set, &root, &ws, profile, &smoke_bin)?;
            if matches!(build, Build::Only(_)) {
                println!("{}", smoke_bin.display());
                return Ok(true);
            }
        }
    }
    let py_module = python_module(&set, &root, &ws)?;

    // domU initramfs
    let busybox = std::fs::read("/bin/busybox").context("/bin/busybox (busybox-static) needed")?;
    let mut du = CpioBuilder::new();
    busybox_cpio(&mut du, &busybox)?;
    du.file("/init", 0o755, DOMU_INIT.as_bytes().to_vec());
    let domu = du.to_bytes();

    // dom0 initramfs
    let mut c = CpioBuilder::new();
    busybox_cpio(&mut c, &busybox)?;
    let mut seen: BTreeSet<String> = BASE_DIRS.iter().map(|s| s.to_string()).collect();
    let init = DOM0_INIT
        .replace("@V@", set.version)
        .replace("@BANNER@", &banner)
        .replace("@EVENTS@", &events.to_string());
    c.file("/init", 0o755, init.into_bytes());
    for m in [
        "xen-privcmd",
        "xen-evtchn",
        "xen-gntdev",
        "xen-gntalloc",
        "xenfs",
    ] {
        let ko = find_file(
            &root.join("lib/modules"),
            &|p| file_name_is(p, &format!("{m}.ko")),
            8,
        )
        .with_context(|| format!("module {m}.ko"))?;
        mkdirs(&mut c, &mut seen, "/lib/modules/x");
        c.file(&format!("/lib/modules/{m}.ko"), 0o644, std::fs::read(&ko)?);
    }
    let tools_dir = root.join(format!("usr/lib/xen-{}/bin", set.version));
    let mut binaries = Vec::new();
    for t in ["xl", "xenstored", "xenconsoled", "xen-init-dom0"] {
        let p = find_file(
            &root.join(format!("usr/lib/xen-{}", set.version)),
            &|p| file_name_is(p, t),
            3,
        )
        .or_else(|| find_file(&root.join("usr/sbin"), &|p| file_name_is(p, t), 0))
        .with_context(|| format!("tool {t} in {}", tools_dir.display()))?;
        let dest = format!("/usr/lib/xen-{}/bin/{t}", set.version);
        mkdirs(&mut c, &mut seen, &dest);
        c.file(&dest, 0o755, std::fs::read(&p)?);
        binaries.push(p);
    }
    // The suite's Python (its standard library below) and the package `vmi` with the Xen
    // driver, for xen_dom0.py.
    let python = root.join(format!("usr/bin/python{}", set.python));
    mkdirs(&mut c, &mut seen, "/usr/bin/x");
    c.file(
        "/usr/bin/python3",
        0o755,
        std::fs::read(&python).with_context(|| format!("{}", python.display()))?,
    );
    add_tree(
        &mut c,
        &mut seen,
        &root,
        &format!("usr/lib/python{}", set.python),
    )?;
    let package = ws.join("crates/vmi-python/python/vmi");
    mkdirs(&mut c, &mut seen, "/root/py/vmi/x");
    c.file(
        "/root/py/vmi/__init__.py",
        0o644,
        std::fs::read(package.join("__init__.py"))?,
    );
    c.file(
        "/root/py/vmi/_vmi.abi3.so",
        0o755,
        std::fs::read(&py_module)?,
    );
    c.file(
        "/root/xen_dom0.py",
        0o644,
        include_bytes!("xen_dom0.py").to_vec(),
    );
    binaries.push(python);
    binaries.push(py_module);
    let lib_dirs = format!(
        "{}:{}",
        lib.display(),
        root.join("lib/x86_64-linux-gnu").display()
    );
    let mut libs = needed_libs(&binaries, &lib_dirs)?;
    libs.insert(PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1")); // xl's pthread_cancel
    // `ldd` with the host's loader misses libraries of binaries built for a newer glibc
    // (4.20 on trixie): take every versioned shared library of the unpacked packages too.
    for dir in [lib.clone(), root.join("lib/x86_64-linux-gnu")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so."))
            {
                libs.insert(p);
            }
        }
    }
    for l in libs {
        let name = l
            .file_name()
            .and_then(|n| n.to_str())
            .context("lib name")?
            .to_owned();
        // prefer the unpacked root's copy (trixie's libc for 4.20)
        let src = [
            lib.join(&name),
            root.join("lib/x86_64-linux-gnu").join(&name),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or(l);
        let dest = format!("/lib/x86_64-linux-gnu/{name}");
        mkdirs(&mut c, &mut seen, &dest);
        c.file(
            &dest,
            0o755,
            std::fs::read(&src).with_context(|| format!("{}", src.display()))?,
        );
    }
    let ld = [
        root.join("lib64/ld-linux-x86-64.so.2"),
        root.join("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        lib.join("ld-linux-x86-64.so.2"),
        PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .context("ld-linux")?;
    mkdirs(&mut c, &mut seen, "/lib64/x");
    c.file("/lib64/ld-linux-x86-64.so.2", 0o755, std::fs::read(&ld)?);
    mkdirs(&mut c, &mut seen, "/usr/lib/x86_64-linux-gnu/x");
    c.file("/root/xen-smoke", 0o755, std::fs::read(&smoke_bin)?);
    c.file("/root/vmlinuz", 0o644, std::fs::read(&vmlinuz)?);
    c.file("/root/domu.cpio", 0o644, domu);
    for t in ["pv", "pvh"] {
        let cfg = format!(
            "name=\"guest{t}\"\ntype=\"{t}\"\nkernel=\"/root/vmlinuz\"\nramdisk=\"/root/domu.cpio\"\nextra=\"console=hvc0 rdinit=/init loglevel=4\"\nmemory=256\nvcpus=1\non_crash=\"preserve\"\n"
        );
        c.file(&format!("/root/guest-{t}.cfg"), 0o644, cfg.into_bytes());
    }
    let dom0_cpio = work.join("dom0.cpio");
    std::fs::write(&dom0_cpio, c.to_bytes())?;
    eprintln!(
        "[xen] prepared in {:.0} s (banner at {banner}, {} KiB initramfs); booting Xen {} under QEMU TCG",
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&dom0_cpio)?.len() / 1024,
        set.version
    );

    // Boot.
    let log = work.join("serial.log");
    let _ = std::fs::remove_file(&log);
    let t1 = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "qemu64,+svm,+npt", "-m", "3072", "-smp", "2"])
        .args(["-nographic", "-monitor", "none", "-no-reboot", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(&xen_elf)
        .args(["-append", "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1024M,max:1024M noreboot"])
        .arg("-initrd")
        .arg(format!("{} console=hvc0 earlyprintk=xen,{}", vmlinuz.display(), dom0_cpio.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut timed_out = false;
    loop {
        if qemu.try_wait()?.is_some() {
            break;
        }
        if t1.elapsed() > timeout {
            timed_out = true;
            let _ = qemu.kill();
            let _ = qemu.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let boot_secs = t1.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();

    // Report.
    let mut ok = 0;
    let mut failed = Vec::new();
    let mut seen_checks = BTreeSet::new();
    for line in text
        .lines()
        .filter_map(|l| l.find("XEN_SMOKE ").map(|i| &l[i..]))
    {
        let mut it = line.splitn(5, ' ');
        let (_, guest, check, status) = (
            it.next(),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let detail = it.next().unwrap_or("");
        println!("{guest:>4} {check:<22} {status:<4} {detail}");
        seen_checks.insert(format!("{guest} {check}"));
        match status {
            "OK" => ok += 1,
            "FAIL" => failed.push(format!("{guest} {check}")),
            _ => {}
        }
    }
    // The checks made here, against what the guest printed about itself.
    for (check, (matched, detail)) in [
        ("PROCESS_MATCH", compare_processes(&text, "XEN_TASK pvh ")),
        (
            "PY_PROCESS_MATCH",
            compare_processes(&text, "XEN_PYTASK pvh "),
        ),
        ("PY_RELEASE", compare_release(&text)),
    ] {
        println!(
            "{:>4} {check:<22} {:<4} {detail}",
            "pvh",
            if matched { "OK" } else { "FAIL" }
        );
        seen_checks.insert(format!("pvh {check}"));
        if matched {
            ok += 1;
        } else {
            failed.push(format!("pvh {check}"));
        }
    }
    // Checks both guests must pass; the PVH guest adds the event, probe and OS-layer ones.
    const BOTH: [&str; 11] = [
        "CREATE",
        "LIST",
        "ATTACH",
        "KIND",
        "PAUSE",
        "REGS",
        "BANNER",
        "TRANSLATE",
        "RIP_BYTES",
        "WRITE_RESTORE",
        "RESUME",
    ];
    const PVH_ONLY: [&str; 11] = [
        "PERF_READS_NOCACHE",
        "PERF_READS_CACHE",
        "PERF_READS_BATCHED",
        "PROBE_MEM_ACCESS",
        "PROBE_ALTP2M",
        "PROBE_SINGLESTEP",
        "CR3_EVENTS",
        "LINUX_OS",
        "PROCESS_LIST",
        "PROCESS_MATCH",
        "PROCESS_EVENTS",
    ];
    // The Python package on the PVH guest (xen_dom0.py).
    const PYTHON: [&str; 10] = [
        "PY_OPEN",
        "PY_INFO",
        "PY_READ",
        "PY_OBJECT",
        "PY_PROCESSES",
        "PY_PROCESS_MATCH",
        "PY_RELEASE",
        "PY_PAUSED",
        "PY_ERRORS",
        "PY_CLOSE",
    ];
    const LAST: [&str; 2] = ["CLEANUP", "END"];
    let pv = BOTH.iter().chain(&LAST).map(|c| format!("pv {c}"));
    let pvh = BOTH
        .iter()
        .chain(&PVH_ONLY)
        .chain(&PYTHON)
        .chain(&LAST)
        .map(|c| format!("pvh {c}"));
    let required: Vec<String> = pv.chain(pvh).chain(["dom0 DONE".to_string()]).collect();
    let missing: Vec<&String> = required
        .iter()
        .filter(|r| !seen_checks.contains(*r))
        .collect();
    let pass = failed.is_empty() && missing.is_empty() && !timed_out;
    if !pass {
        let tail: Vec<&str> = text.lines().rev().take(25).collect();
        eprintln!("[xen] serial log {} (last lines):", log.display());
        for l in tail.iter().rev() {
            eprintln!("  | {l}");
        }
    }
    println!(
        "xen smoke {}: {} ({} checks ok, {} failed{}, {} missing{}; QEMU ran {:.0} s, total {:.0} s)",
        set.version,
        if pass { "PASS" } else { "FAIL" },
        ok,
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(": {}", failed.join(", "))
        },
        missing.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        boot_secs,
        t0.elapsed().as_secs_f64(),
    );
    if timed_out {
        eprintln!("[xen] QEMU killed after {} s", timeout.as_secs());
    }
    Ok(pass)
}

/// Commands of the domU's busy loop (and its `sleep`s): too short-lived to compare.
const TRANSIENT: &[&str] = &["ls", "cat", "sleep"];

/// Whether the driver's `comm` (`task->comm`, at most 15 bytes) is what the guest's
/// `/proc/<pid>/stat` showed: equal, truncated, or a workqueue worker's name plus its
/// `-queue` / `+queue` suffix. A name that carries a suffix itself (the Python package's
/// `Process.name`, as `ps` shows it) is compared without it: a worker moves from one
/// queue to another between the guest's listing and ours.
fn same_comm(driver: &str, guest: &str) -> bool {
    let driver = match driver.strip_prefix("kworker/") {
        Some(rest) => &driver[..8 + rest.find(['-', '+']).unwrap_or(rest.len())],
        None => driver,
    };
    driver == guest
        || (driver.len() >= 15 && guest.starts_with(driver))
        || guest
            .strip_prefix(driver)
            .is_some_and(|rest| rest.starts_with('-') || rest.starts_with('+'))
}

/// Whether the kernel release the Python package's `Target.info` gave (`XEN_PYINFO pvh
/// <release>`) is the one the PVH guest's `/proc/version` names (its `DOMU_ALIVE` line).
fn compare_release(text: &str) -> (bool, String) {
    let after = |tag: &str| {
        text.lines()
            .find_map(|l| l.find(tag).map(|i| l[i + tag.len()..].trim().to_owned()))
    };
    let ours = after("XEN_PYINFO pvh ");
    let guest = text
        .lines()
        .filter(|l| l.contains("pvh ALIVE"))
        .find_map(|l| l.split_once("DOMU_ALIVE Linux version "))
        .and_then(|(_, v)| v.split_whitespace().next().map(str::to_owned));
    match (ours, guest) {
        (Some(o), Some(g)) if !o.is_empty() && o == g => (
            true,
            format!("kernel_release {o}, as the guest's /proc/version"),
        ),
        (o, g) => (
            false,
            format!("kernel_release {o:?}, guest's /proc/version {g:?}"),
        ),
    }
}

/// Compares the PVH guest's own process list (`XEN_DOMU pvh <pid> (<comm>)`, from its
/// console) with what the driver and the Linux OS layer listed (lines `<tag><pid>
/// <ppid> <comm>`: `XEN_TASK pvh ` from xen-smoke, `XEN_PYTASK pvh ` from the Python
/// package): every long-lived guest process must be there with the same comm.
fn compare_processes(text: &str, tag: &str) -> (bool, String) {
    let mut guest = Vec::new();
    let mut ours = std::collections::BTreeMap::new();
    for l in text.lines() {
        if let Some(i) = l.find("XEN_DOMU pvh ") {
            let mut it = l[i + 13..].trim_end().splitn(2, ' ');
            if let (Some(Ok(pid)), Some(comm)) = (it.next().map(str::parse::<u32>), it.next()) {
                let comm = comm.trim_start_matches('(').trim_end_matches(')');
                guest.push((pid, comm.to_owned()));
            }
        } else if let Some(i) = l.find(tag) {
            let mut it = l[i + tag.len()..].trim_end().splitn(3, ' ');
            if let (Some(Ok(pid)), Some(_ppid), Some(comm)) =
                (it.next().map(str::parse::<u32>), it.next(), it.next())
            {
                ours.insert(pid, comm.to_owned());
            }
        }
    }
    let long_lived: Vec<&(u32, String)> = guest
        .iter()
        .filter(|(_, c)| !TRANSIENT.contains(&c.as_str()))
        .collect();
    let mut missing = Vec::new();
    for (pid, comm) in &long_lived {
        match ours.get(pid) {
            Some(c) if same_comm(c, comm) => {}
            Some(c) => missing.push(format!("{pid}:{comm}!={c}")),
            None => missing.push(format!("{pid}:{comm} absent")),
        }
    }
    let init_ok = ours.get(&1).is_some_and(|c| c == "init");
    let idle = ours.values().filter(|c| *c == "vmi-idle").count();
    let pass = !long_lived.is_empty() && missing.is_empty() && init_ok && idle == 2;
    let detail = format!(
        "{} of {} long-lived guest processes ({} listed by the guest) found by the driver with the same pid and comm; driver lists {}; pid 1 init: {init_ok}, vmi-idle: {idle}{}",
        long_lived.len() - missing.len(),
        long_lived.len(),
        guest.len(),
        ours.len(),
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "; mismatched: {}",
                missing
                    .iter()
                    .take(12)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    (pass, detail)
}

#[cfg(test)]
mod tests {
    use super::{compare_processes, compare_release, same_comm};

    #[test]
    fn the_release_is_compared_with_the_guests_proc_version() {
        let alive =
            "  pvh ALIVE INFO after 13s: DOMU_ALIVE Linux version 6.1.0-57-amd64 (debian) #1 SMP\n";
        let (ok, d) = compare_release(&format!("{alive}XEN_PYINFO pvh 6.1.0-57-amd64\n"));
        assert!(ok, "{d}");
        let (ok, _) = compare_release(&format!("{alive}XEN_PYINFO pvh 6.1.0-58-amd64\n"));
        assert!(!ok);
        let (ok, _) = compare_release(&format!("{alive}XEN_PYINFO pvh \n"));
        assert!(!ok);
        assert!(!compare_release(alive).0);
    }

    #[test]
    fn comms_match_exactly_truncated_or_with_a_workqueue_suffix() {
        assert!(same_comm("init", "init"));
        assert!(same_comm("rcu_tasks_kthre", "rcu_tasks_kthread"));
        assert!(same_comm("kworker/0:1", "kworker/0:1-events"));
        assert!(same_comm("kworker/u2:1", "kworker/u2:1+events_unbound"));
        assert!(!same_comm("kworker/0:1", "kworker/0:10"));
        assert!(same_comm(
            "kworker/0:0-events_power_efficient",
            "kworker/0:0-events"
        ));
        assert!(!same_comm("kworker/0:0-events", "kworker/0:1-events"));
        assert!(!same_comm("sh", "init"));
    }

    #[test]
    fn process_lists_are_compared_without_transient_commands() {
        let guest = "(d2) XEN_DOMU pvh 1 (init)\nXEN_DOMU pvh 2 (kthreadd)\n\
                     XEN_DOMU pvh 70 (vmi-idle)\nXEN_DOMU pvh 71 (vmi-idle)\nXEN_DOMU pvh 90 (ls)\n";
        let ours = "XEN_TASK pvh 1 0 init\nXEN_TASK pvh 2 0 kthreadd\n\
                    XEN_TASK pvh 70 1 vmi-idle\nXEN_TASK pvh 71 1 vmi-idle\nXEN_TASK pvh 99 1 exe\n";
        let (ok, detail) = compare_processes(&format!("{guest}{ours}"), "XEN_TASK pvh ");
        assert!(ok, "{detail}");
        let (ok, _) = compare_processes(&format!("{guest}{ours}"), "XEN_PYTASK pvh ");
        assert!(!ok, "another tag's listing is not this one's");
        // a long-lived guest process the driver missed, or saw under another name
        let (ok, detail) = compare_processes(
            &format!(
                "{guest}{}",
                ours.replace("XEN_TASK pvh 2 0 kthreadd\n", "XEN_TASK pvh 2 0 other\n")
            ),
            "XEN_TASK pvh ",
        );
        assert!(!ok && detail.contains("2:kthreadd!=other"), "{detail}");
        let (ok, _) = compare_processes(ours, "XEN_TASK pvh ");
        assert!(!ok, "nothing from the guest is not a match");
    }
}
