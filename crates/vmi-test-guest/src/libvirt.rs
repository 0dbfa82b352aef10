//! The test guest run by libvirtd: the same kernel, initramfs and truth as [`TestGuest`],
//! but started as a transient libvirt domain (`virsh create`), so that QEMU's QMP socket
//! is libvirt's and the library under test must go through libvirt.
//!
//! The domain is `<domain type='qemu'>` (TCG), named `vmi-test-<pid>-<n>-<time>`, with
//! its kernel and initramfs copied into a directory of its own under the temporary
//! directory (libvirt hands them to QEMU's user) and its serial console written to a
//! file there, from which the truth is parsed as for [`TestGuest`]. Dropping a
//! [`LibvirtGuest`] destroys the domain, also while a panic unwinds; domains of test
//! processes that died outright are destroyed by the next [`LibvirtGuest::boot`].
//!
//! **The daemon**: a running libvirtd at `qemu:///system` is used as it is. When there is
//! none (a machine without systemd), the guest starts `virtlogd` and `libvirtd` itself
//! (Debian's `libvirt-daemon-system`, installed by `scripts/setup.sh`) and stops them
//! again on drop. One libvirt guest runs at a time on the machine (a file lock in the
//! guest cache): a test must not stop a daemon another test still uses.
//!
//! [`TestGuest`]: crate::TestGuest

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cache;
use crate::error::{Error, Result};
use crate::guest::{GuestConfig, guest_required};
use crate::kernel;
use crate::truth::{self, Truth};

/// The libvirt URI the guest is defined at.
pub const URI: &str = "qemu:///system";

/// Prefix of the test domains' names.
const PREFIX: &str = "vmi-test-";

/// How long `virsh create` and the boot to the ready marker may take (libvirt probes
/// QEMU's capabilities on its first start: tens of seconds on a loaded machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How to boot a [`LibvirtGuest`].
#[derive(Debug, Clone, Default)]
pub struct LibvirtConfig {
    /// Give the domain a shared file backing for its RAM
    /// (`<memoryBacking><source type='file'/><access mode='shared'/>`), which the QEMU
    /// driver maps; by default its RAM is anonymous (read through QEMU's process memory).
    pub shared_file_memory: bool,
}

/// A daemon this guest started, stopped on drop.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    child: Child,
}

/// A running libvirt domain of the test guest, destroyed on drop.
#[derive(Debug)]
pub struct LibvirtGuest {
    name: String,
    dir: PathBuf,
    truth: Truth,
    kernel_release: String,
    vmlinux: PathBuf,
    destroyed: bool,
    /// Stopped after the domain is destroyed.
    daemons: Vec<Daemon>,
    /// Declared last: held until the daemons we started are stopped.
    _lock: cache::CacheLock,
}

/// A program on `PATH`, else in the system directories a non-login `PATH` may lack
/// (libvirtd and virtlogd live in `/usr/sbin`).
fn program(name: &str) -> Option<PathBuf> {
    cache::which(name).or_else(|| {
        ["/usr/sbin", "/usr/bin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.is_file())
    })
}

/// Runs `virsh -c URI ARGS...`, returns its stdout.
fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new(program("virsh").unwrap_or_else(|| "virsh".into()))
        .arg("-c")
        .arg(URI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Command {
            command: format!("virsh {}", args.join(" ")),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("virsh {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn missing(tool: &'static str) -> Error {
    Error::MissingTool {
        tool,
        hint: "apt-get install libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients \
               (scripts/setup.sh)",
    }
}

fn skipped(why: &str) {
    let line = format!("SKIPPED: libvirt test: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Starts `program` in the foreground (its own process group, output into `log`).
fn start_daemon(name: &'static str, log: &Path) -> Result<Daemon> {
    let program = program(name).ok_or_else(|| missing(name))?;
    let out = std::fs::File::create(log).map_err(Error::io("create", log))?;
    let err = out.try_clone().map_err(Error::io("dup", log))?;
    let mut cmd = Command::new(&program);
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().map_err(|e| Error::Command {
        command: program.display().to_string(),
        detail: e.to_string(),
    })?;
    Ok(Daemon { name, child })
}

impl Daemon {
    fn stop(mut self) {
        // SIGTERM: libvirtd and virtlogd shut down cleanly (running domains stay).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "[vmi-test-guest] {} did not stop on SIGTERM: killed",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes sure libvirtd answers at [`URI`]; returns the daemons started for that.
fn ensure_daemon(dir: &Path) -> Result<Vec<Daemon>> {
    if program("virsh").is_none() {
        return Err(missing("virsh"));
    }
    if virsh(&["version"]).is_ok() {
        return Ok(Vec::new());
    }
    if program("libvirtd").is_none() || !Path::new("/etc/libvirt/qemu.conf").exists() {
        return Err(missing("libvirtd"));
    }
    let mut started = Vec::new();
    if !Path::new("/run/libvirt/virtlogd-sock").exists() {
        started.push(start_daemon("virtlogd", &dir.join("virtlogd.log"))?);
    }
    started.push(start_daemon("libvirtd", &dir.join("libvirtd.log"))?);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match virsh(&["version"]) {
            Ok(_) => return Ok(started),
            Err(e) if Instant::now() >= deadline => {
                for d in started {
                    d.stop();
                }
                return Err(Error::Config(format!(
                    "libvirtd started but does not answer at {URI}: {e} (log: {})",
                    dir.join("libvirtd.log").display()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Destroys test domains whose owning test process is gone, and their directories.
fn reap_orphans() {
    let Ok(list) = virsh(&["list", "--name"]) else {
        return;
    };
    for name in list.lines().map(str::trim) {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !cache::pid_alive(pid) {
            eprintln!("[vmi-test-guest] destroying orphaned libvirt domain {name}");
            let _ = virsh(&["destroy", name]);
            let _ = std::fs::remove_dir_all(std::env::temp_dir().join(name));
        }
    }
}

fn unique_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{PREFIX}{}-{n}-{:x}", std::process::id(), t & 0xff_ffff)
}

/// Escapes text for an XML element or attribute.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// The transient domain's definition.
fn domain_xml(
    name: &str,
    cfg: &GuestConfig,
    lv: &LibvirtConfig,
    kernel: &Path,
    initrd: &Path,
    serial: &Path,
) -> String {
    let memory_backing = if lv.shared_file_memory {
        "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
    } else {
        ""
    };
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  {memory_backing}
  <vcpu>{smp}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <cpu mode='custom' match='exact'><model fallback='allow'>{cpu}</model></cpu>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
        name = xml(name),
        mem = cfg.mem_mb,
        smp = cfg.smp,
        kernel = xml(&kernel.display().to_string()),
        initrd = xml(&initrd.display().to_string()),
        cmdline = xml(&cfg.cmdline()),
        cpu = xml(&cfg.cpu),
        serial = xml(&serial.display().to_string()),
    )
}

impl LibvirtGuest {
    /// Starts libvirtd if none runs, defines and starts the transient domain, waits for
    /// the ready marker on its serial console and parses the truth.
    pub fn boot(lv: LibvirtConfig) -> Result<LibvirtGuest> {
        let cfg = GuestConfig::default().userland(crate::Userland::Busybox);
        if cache::which("qemu-system-x86_64").is_none() {
            return Err(Error::MissingTool {
                tool: "qemu-system-x86_64",
                hint: "apt-get install qemu-system-x86",
            });
        }
        let prepared = kernel::prepare_for(&cfg.kernel, cfg.userland)?;
        let lock = cache::CacheLock::acquire("libvirt-guest")?;
        let name = unique_name();
        // QEMU runs as libvirt's user: the directory must be reachable by it (0755 under
        // the temporary directory), and libvirt hands the kernel and initramfs to it.
        let dir = std::env::temp_dir().join(&name);
        cache::mkdir(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(Error::io("chmod", &dir))?;
        let daemons = match ensure_daemon(&dir) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        reap_orphans();
        let mut guest = LibvirtGuest {
            name,
            dir,
            truth: Truth::default(),
            kernel_release: prepared.release.clone(),
            vmlinux: prepared.vmlinux.clone(),
            // Nothing to destroy until `virsh create` succeeds.
            destroyed: true,
            daemons,
            _lock: lock,
        };
        // From here on, an error drops `guest`: domain destroyed, daemons stopped.
        let kernel_copy = guest.dir.join("vmlinuz");
        let initrd_copy = guest.dir.join("initrd");
        std::fs::copy(&prepared.vmlinuz, &kernel_copy).map_err(Error::io("copy", &kernel_copy))?;
        std::fs::copy(&prepared.initrd, &initrd_copy).map_err(Error::io("copy", &initrd_copy))?;
        let serial = guest.serial_log();
        let xml_path = guest.dir.join("domain.xml");
        let xml = domain_xml(&guest.name, &cfg, &lv, &kernel_copy, &initrd_copy, &serial);
        std::fs::write(&xml_path, xml).map_err(Error::io("write", &xml_path))?;
        let t0 = Instant::now();
        guest.destroyed = false;
        if let Err(e) = virsh(&["create", &xml_path.display().to_string()]) {
            guest.destroyed = true;
            return Err(e);
        }
        let text = guest.wait_ready(t0 + BOOT_TIMEOUT)?;
        guest.truth = Truth::from_serial_log(&text)?;
        eprintln!(
            "[vmi-test-guest] libvirt domain {} ready in {:.1} s",
            guest.name,
            t0.elapsed().as_secs_f64()
        );
        Ok(guest)
    }

    /// Like [`LibvirtGuest::boot`], but when libvirt or QEMU is not installed (or the
    /// daemon cannot be started) print a visible `SKIPPED: ...` line and return `None`,
    /// unless `VMI_REQUIRE_GUEST=1`, which makes it panic. Any other failure panics.
    pub fn boot_or_skip(lv: LibvirtConfig) -> Option<LibvirtGuest> {
        match LibvirtGuest::boot(lv) {
            Ok(g) => Some(g),
            Err(e @ (Error::MissingTool { .. } | Error::Config(_))) if !guest_required() => {
                skipped(&e.to_string());
                None
            }
            Err(e) => panic!("booting the libvirt test guest failed: {e}"),
        }
    }

    fn wait_ready(&self, deadline: Instant) -> Result<String> {
        loop {
            let log = std::fs::read(self.serial_log()).unwrap_or_default();
            let text = String::from_utf8_lossy(&log);
            if text
                .split('\n')
                .any(|l| l.trim_end_matches('\r') == truth::READY)
            {
                return Ok(text.into_owned());
            }
            let state = virsh(&["domstate", &self.name]).unwrap_or_default();
            if !state.trim().starts_with("running") && !state.trim().starts_with("paused") {
                return Err(Error::Config(format!(
                    "libvirt domain {} is {:?} before the ready marker; serial log {}",
                    self.name,
                    state.trim(),
                    self.serial_log().display()
                )));
            }
            if Instant::now() >= deadline {
                return Err(Error::BootTimeout {
                    seconds: BOOT_TIMEOUT.as_secs(),
                    serial_tail: text.lines().rev().take(30).collect::<Vec<_>>().join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The domain's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed ground truth of this boot.
    pub fn truth(&self) -> &Truth {
        &self.truth
    }

    /// The guest's directory (kernel copy, serial log, domain XML).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The serial console's log file.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    /// The running kernel's release.
    pub fn kernel_release(&self) -> &str {
        &self.kernel_release
    }

    /// The running kernel's vmlinux (with `.BTF`).
    pub fn vmlinux(&self) -> &Path {
        &self.vmlinux
    }

    /// `virsh` on this domain's URI (e.g. `["domstate", name]`).
    pub fn virsh(&self, args: &[&str]) -> Result<String> {
        virsh(args)
    }

    /// libvirt's state of the domain (`virsh domstate`: `running`, `paused`...).
    pub fn state(&self) -> Result<String> {
        Ok(virsh(&["domstate", &self.name])?.trim().to_owned())
    }

    /// Runs a QMP command through libvirt (`virsh qemu-monitor-command`), for checks of
    /// what QEMU itself says.
    pub fn qmp(&self, command: &str) -> Result<serde_json::Value> {
        let out = virsh(&["qemu-monitor-command", &self.name, command])?;
        Ok(serde_json::from_str(out.trim())?)
    }
}

impl Drop for LibvirtGuest {
    fn drop(&mut self) {
        if !self.destroyed {
            if let Err(e) = virsh(&["destroy", &self.name]) {
                eprintln!("[vmi-test-guest] destroying {}: {e}", self.name);
            }
            self.destroyed = true;
        }
        for d in self.daemons.drain(..).rev() {
            d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
