//! Booting, controlling and stopping a guest.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::apt::KernelSpec;
use crate::cache::{self, pid_alive};
use crate::ctl::{CTL_SOCKET, Ctl, CtlOutput};
use crate::error::{Error, Result};
use crate::kernel::{self, PreparedKernel};
use crate::qmp;
use crate::truth::{self, Truth};
use crate::userland::Userland;

/// Default time allowed from QEMU start to the ready marker (CI machines are slow).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(240);

const QMP_TIMEOUT: Duration = Duration::from_secs(300);

/// Accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM if `/dev/kvm` is usable and backed by `kvm_intel`/`kvm_amd`, else TCG.
    #[default]
    Auto,
    /// QEMU's software emulation.
    Tcg,
    /// Hardware virtualisation.
    Kvm,
}

impl Accel {
    /// The accelerator actually used (`"tcg"` or `"kvm"`).
    pub fn pick(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
            Accel::Auto => {
                // /dev/kvm can be a paravirtual nested hypervisor (kvm_pvm) that cannot run
                // stock kernels: only trust real VT-x/AMD-V modules.
                let real = Path::new("/sys/module/kvm_intel").exists()
                    || Path::new("/sys/module/kvm_amd").exists();
                let usable = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if real && usable { "kvm" } else { "tcg" }
            }
        }
    }
}

/// How to boot a guest; a builder (`GuestConfig::default().cpu("max").smp(2)`).
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// QEMU `-cpu` model (default `qemu64`: 4-level paging, AMD vendor under TCG so no KPTI).
    pub cpu: String,
    /// Number of vCPUs.
    pub smp: u32,
    /// RAM in MiB (default 256).
    pub mem_mb: u64,
    /// KASLR on (default) or `nokaslr`.
    pub kaslr: bool,
    /// Kernel package (default [`crate::apt::DEFAULT_KERNEL`]).
    pub kernel: KernelSpec,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// Dump the whole `/proc/kallsyms` into `DIR/kallsyms.txt` (`vmi_kallsyms`).
    pub kallsyms: bool,
    /// Accelerator.
    pub accel: Accel,
    /// Boot timeout.
    pub boot_timeout: Duration,
    /// Guest directory; `None`: a fresh unique one under [`cache::guests_base_dir`].
    pub dir: Option<PathBuf>,
    /// The userland in the initramfs (default: busybox only, or `$VMI_GUEST_USERLAND`).
    pub userland: Userland,
    /// Start the guest's command channel ([`TestGuest::run`]): a second serial port and
    /// `vmi_ctl` in the guest, started after the truth is printed (so not in it).
    pub control: bool,
    /// How long the guest may live before the test is taken as hung: the watchdog then
    /// prints every thread's backtrace, stops the guest and aborts (see
    /// [`crate::watchdog`]). `None`: no watchdog.
    pub watchdog: Option<Duration>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            cpu: "qemu64".into(),
            smp: 1,
            mem_mb: 256,
            kaslr: true,
            kernel: KernelSpec::default(),
            append: Vec::new(),
            kallsyms: false,
            accel: Accel::Auto,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            dir: None,
            userland: Userland::from_env().unwrap_or_default(),
            control: false,
            watchdog: crate::watchdog::deadline_from_env(),
        }
    }
}

impl GuestConfig {
    /// Set the QEMU CPU model (`max` → 5-level paging; `qemu64,vendor=GenuineIntel` → KPTI).
    pub fn cpu(mut self, model: &str) -> Self {
        model.clone_into(&mut self.cpu);
        self
    }
    /// Set the number of vCPUs.
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }
    /// Set RAM in MiB (≥ 2816 on q35 splits RAM around the PCI hole).
    pub fn mem_mb(mut self, mb: u64) -> Self {
        self.mem_mb = mb;
        self
    }
    /// Enable or disable KASLR.
    pub fn kaslr(mut self, on: bool) -> Self {
        self.kaslr = on;
        self
    }
    /// Set the kernel (`[suite:]package`, e.g. `trixie:linux-image-cloud-amd64`).
    pub fn kernel(mut self, spec: KernelSpec) -> Self {
        self.kernel = spec;
        self
    }
    /// Append a word to the kernel command line.
    pub fn append(mut self, word: &str) -> Self {
        self.append.push(word.to_owned());
        self
    }
    /// Ask for the full `/proc/kallsyms` (written to `DIR/kallsyms.txt`).
    pub fn kallsyms(mut self, on: bool) -> Self {
        self.kallsyms = on;
        self
    }
    /// Choose the accelerator.
    pub fn accel(mut self, accel: Accel) -> Self {
        self.accel = accel;
        self
    }
    /// Set the boot timeout.
    pub fn boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }
    /// Use this guest directory (created if missing).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }
    /// Choose the userland ([`Userland::Realistic`]: Debian programs, production-shaped
    /// processes, the truth of every process).
    pub fn userland(mut self, userland: Userland) -> Self {
        self.userland = userland;
        self
    }

    /// Give the host a command channel into the guest ([`TestGuest::run`]).
    pub fn control(mut self, on: bool) -> Self {
        self.control = on;
        self
    }

    /// Set the watchdog's deadline (`None`: no watchdog), e.g. for a soak run longer than
    /// the default 20 minutes.
    pub fn watchdog(mut self, deadline: Option<Duration>) -> Self {
        self.watchdog = deadline;
        self
    }

    /// The kernel command line this configuration boots with.
    pub fn cmdline(&self) -> String {
        let mut s = String::from("console=ttyS0 panic=1");
        if !self.kaslr {
            s.push_str(" nokaslr");
        }
        if self.kallsyms {
            s.push_str(" vmi_kallsyms");
        }
        if self.control {
            s.push_str(" vmi_ctl");
        }
        for w in &self.append {
            s.push(' ');
            s.push_str(w);
        }
        s
    }

    fn validate(&self) -> Result<()> {
        Userland::from_env()?;
        if self.smp == 0 || self.smp > 64 {
            return Err(Error::Config(format!("smp {} out of 1..=64", self.smp)));
        }
        if !(64..=65536).contains(&self.mem_mb) {
            return Err(Error::Config(format!(
                "mem {} MiB out of 64..=65536",
                self.mem_mb
            )));
        }
        if self.cpu.is_empty() || self.cpu.contains(char::is_whitespace) {
            return Err(Error::Config(format!("bad cpu model `{}`", self.cpu)));
        }
        Ok(())
    }
}

/// Dump format for `dump-guest-memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpFormat {
    /// ELF core (one `PT_LOAD` per RAM block, notes incl. VMCOREINFO).
    Elf,
    /// kdump compressed with zlib, in makedumpfile's *flattened* format (QEMU 7.2).
    KdumpZlib,
}

impl DumpFormat {
    /// The QMP name.
    pub fn qmp_name(self) -> &'static str {
        match self {
            DumpFormat::Elf => "elf",
            DumpFormat::KdumpZlib => "kdump-zlib",
        }
    }
}

impl std::str::FromStr for DumpFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "elf" => Ok(DumpFormat::Elf),
            "kdump-zlib" => Ok(DumpFormat::KdumpZlib),
            _ => Err(Error::Config(format!(
                "unknown dump format `{s}` (elf|kdump-zlib)"
            ))),
        }
    }
}

/// The contents of `DIR/guest.env`: everything a test or tool needs to reach the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestEnv {
    /// The guest directory.
    pub dir: PathBuf,
    /// PID of QEMU.
    pub qemu_pid: u32,
    /// PID of the process that owns the guest (0: detached, e.g. `cargo xtask guest up`).
    pub owner_pid: u32,
    /// QMP socket reserved for the library under test.
    pub qmp_socket: PathBuf,
    /// QMP socket used by the harness (stop, dump, quit).
    pub qmp_aux_socket: PathBuf,
    /// gdbstub unix socket (`target remote <path>`).
    pub gdb_socket: PathBuf,
    /// Guest RAM file (`/dev/shm/...`); file offset = guest physical address below the
    /// PCI hole, see [`gpa_to_file_offset`].
    pub mem_file: PathBuf,
    /// RAM size in bytes.
    pub mem_size: u64,
    /// Serial console log.
    pub serial_log: PathBuf,
    /// QEMU's own stdout/stderr.
    pub qemu_log: PathBuf,
    /// The parsed truth as JSON.
    pub truth_json: PathBuf,
    /// `uname -r` of the guest kernel.
    pub kernel_release: String,
    /// The image package booted.
    pub kernel_package: String,
    /// Its Debian version.
    pub kernel_version: String,
    /// vmlinux ELF with `.BTF`.
    pub vmlinux: PathBuf,
    /// The bzImage booted.
    pub vmlinuz: PathBuf,
    /// The kernel `.config`.
    pub kernel_config: PathBuf,
    /// The initramfs booted.
    pub initrd: PathBuf,
    /// CPU model.
    pub cpu: String,
    /// vCPUs.
    pub smp: u32,
    /// KASLR requested.
    pub kaslr: bool,
    /// `tcg` or `kvm`.
    pub accel: String,
    /// Kernel command line.
    pub cmdline: String,
    /// Full `/proc/kallsyms` dump, if requested.
    pub kallsyms: Option<PathBuf>,
    /// Seconds from QEMU start to the ready marker.
    pub boot_seconds: f64,
    /// The userland booted (`busybox` or `realistic`).
    pub userland: Userland,
}

impl GuestEnv {
    /// Render as `KEY=VALUE` lines.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut kv = |k: &str, v: &dyn std::fmt::Display| {
            let _ = writeln!(s, "{k}={v}");
        };
        kv("GUEST_DIR", &self.dir.display());
        kv("QEMU_PID", &self.qemu_pid);
        kv("OWNER_PID", &self.owner_pid);
        kv("QMP_SOCKET", &self.qmp_socket.display());
        kv("QMP_AUX_SOCKET", &self.qmp_aux_socket.display());
        kv("GDB_SOCKET", &self.gdb_socket.display());
        kv("MEM_FILE", &self.mem_file.display());
        kv("MEM_SIZE", &self.mem_size);
        kv("SERIAL_LOG", &self.serial_log.display());
        kv("QEMU_LOG", &self.qemu_log.display());
        kv("TRUTH_JSON", &self.truth_json.display());
        kv("KERNEL_RELEASE", &self.kernel_release);
        kv("KERNEL_PACKAGE", &self.kernel_package);
        kv("KERNEL_VERSION", &self.kernel_version);
        kv("VMLINUX", &self.vmlinux.display());
        kv("VMLINUZ", &self.vmlinuz.display());
        kv("KERNEL_CONFIG", &self.kernel_config.display());
        kv("INITRD", &self.initrd.display());
        kv("CPU", &self.cpu);
        kv("SMP", &self.smp);
        kv("KASLR", &u8::from(self.kaslr));
        kv("ACCEL", &self.accel);
        kv("CMDLINE", &self.cmdline);
        if let Some(k) = &self.kallsyms {
            kv("KALLSYMS", &k.display());
        }
        kv("BOOT_SECONDS", &format!("{:.2}", self.boot_seconds));
        kv("USERLAND", &self.userland);
        s
    }

    /// Parse `KEY=VALUE` lines (unknown keys are ignored).
    pub fn parse(path: &Path, text: &str) -> Result<GuestEnv> {
        let map: std::collections::HashMap<&str, &str> =
            text.lines().filter_map(|l| l.split_once('=')).collect();
        let bad = |d: String| Error::GuestEnv {
            path: path.to_path_buf(),
            detail: d,
        };
        let get = |k: &str| {
            map.get(k)
                .copied()
                .ok_or_else(|| bad(format!("missing key {k}")))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("{k} is not a number")))
        };
        let small = |k: &str| -> Result<u32> {
            u32::try_from(num(k)?).map_err(|_| bad(format!("{k} too large")))
        };
        let p = |k: &str| get(k).map(PathBuf::from);
        Ok(GuestEnv {
            dir: p("GUEST_DIR")?,
            qemu_pid: small("QEMU_PID")?,
            owner_pid: small("OWNER_PID").unwrap_or(0),
            qmp_socket: p("QMP_SOCKET")?,
            qmp_aux_socket: p("QMP_AUX_SOCKET")?,
            gdb_socket: p("GDB_SOCKET")?,
            mem_file: p("MEM_FILE")?,
            mem_size: num("MEM_SIZE")?,
            serial_log: p("SERIAL_LOG")?,
            qemu_log: p("QEMU_LOG").unwrap_or_default(),
            truth_json: p("TRUTH_JSON")?,
            kernel_release: get("KERNEL_RELEASE")?.to_owned(),
            kernel_package: get("KERNEL_PACKAGE").unwrap_or_default().to_owned(),
            kernel_version: get("KERNEL_VERSION").unwrap_or_default().to_owned(),
            vmlinux: p("VMLINUX")?,
            vmlinuz: p("VMLINUZ")?,
            kernel_config: p("KERNEL_CONFIG").unwrap_or_default(),
            initrd: p("INITRD").unwrap_or_default(),
            cpu: get("CPU").unwrap_or_default().to_owned(),
            smp: small("SMP").unwrap_or(1),
            kaslr: get("KASLR").map(|v| v == "1").unwrap_or(true),
            accel: get("ACCEL").unwrap_or_default().to_owned(),
            cmdline: get("CMDLINE").unwrap_or_default().to_owned(),
            kallsyms: p("KALLSYMS").ok(),
            boot_seconds: get("BOOT_SECONDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
            userland: get("USERLAND")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or_default(),
        })
    }

    /// Read `DIR/guest.env`.
    pub fn load(dir: &Path) -> Result<GuestEnv> {
        let path = dir.join("guest.env");
        let text = std::fs::read_to_string(&path).map_err(Error::io("read", &path))?;
        GuestEnv::parse(&path, &text)
    }

    /// Is the QEMU process of this guest still running (and still QEMU)?
    pub fn qemu_running(&self) -> bool {
        pid_alive(self.qemu_pid)
            && cache::pid_cmdline(self.qemu_pid).is_some_and(|c| {
                c.contains("qemu-system") && c.contains(&*self.mem_file.to_string_lossy())
            })
    }

    /// Run a QMP command on the aux socket; returns its `return` value.
    pub fn qmp(&self, cmd: &Value) -> Result<Value> {
        qmp::command(&self.qmp_aux_socket, cmd, QMP_TIMEOUT)
    }

    /// Run an HMP command (e.g. `info registers`) on the aux socket.
    pub fn hmp(&self, command_line: &str) -> Result<String> {
        qmp::hmp(&self.qmp_aux_socket, command_line, QMP_TIMEOUT)
    }

    /// `dump-guest-memory` (physical memory, `paging=false`) to `out` (made absolute).
    pub fn dump(&self, format: DumpFormat, out: &Path) -> Result<()> {
        let out = std::path::absolute(out).map_err(Error::io("absolute path", out))?;
        self.qmp(&json!({
            "execute": "dump-guest-memory",
            "arguments": {
                "paging": false,
                "format": format.qmp_name(),
                "protocol": format!("file:{}", out.display()),
            }
        }))?;
        Ok(())
    }

    /// Stop QEMU: `quit` over the aux socket, then `SIGTERM`/`SIGKILL` by PID if it lingers;
    /// finally remove the RAM file. Idempotent.
    pub fn stop(&self) -> Result<()> {
        if self.qemu_running() {
            let _ = qmp::command(
                &self.qmp_aux_socket,
                &json!({"execute": "quit"}),
                Duration::from_secs(5),
            );
            if !wait_gone(self, Duration::from_secs(5)) {
                cache::signal(self.qemu_pid, "TERM");
                if !wait_gone(self, Duration::from_secs(5)) {
                    cache::signal(self.qemu_pid, "KILL");
                    wait_gone(self, Duration::from_secs(5));
                }
            }
        }
        match std::fs::remove_file(&self.mem_file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                what: "remove",
                path: self.mem_file.clone(),
                source: e,
            }),
        }
    }
}

fn wait_gone(env: &GuestEnv, t: Duration) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if !env.qemu_running() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !env.qemu_running()
}

/// File offset in the RAM file of guest physical address `gpa` for a q35 guest with
/// `mem_size` bytes of RAM (QEMU puts 2 GiB below 4 GiB when RAM ≥ 2.75 GiB, else all of
/// it up to 2.75 GiB; the rest starts at 4 GiB). `None` if `gpa` is not RAM.
pub fn gpa_to_file_offset(mem_size: u64, gpa: u64) -> Option<u64> {
    const FOUR_G: u64 = 1 << 32;
    let lowmem = if mem_size >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    let below = mem_size.min(lowmem);
    if gpa < below {
        Some(gpa)
    } else if gpa >= FOUR_G && gpa - FOUR_G < mem_size - below {
        Some(gpa - FOUR_G + below)
    } else {
        None
    }
}

/// Read the VMCOREINFO text from the RAM file at the note the guest reported.
fn read_vmcoreinfo(env: &GuestEnv, note: truth::VmcoreinfoNote) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let off = gpa_to_file_offset(env.mem_size, note.paddr)?;
    let size = usize::try_from(note.size.min(1 << 20)).ok()?;
    let mut f = std::fs::File::open(&env.mem_file).ok()?;
    f.seek(SeekFrom::Start(off)).ok()?;
    let mut buf = vec![0u8; size.max(24)];
    f.read_exact(&mut buf).ok()?;
    let u32_at = |i: usize| {
        buf.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let (namesz, descsz) = (u32_at(0)? as usize, u32_at(4)? as usize);
    if namesz != 11 || buf.get(12..22)? != b"VMCOREINFO" {
        return None;
    }
    let desc = buf.get(24..24usize.checked_add(descsz)?)?;
    let end = desc.iter().position(|&b| b == 0).unwrap_or(desc.len());
    Some(String::from_utf8_lossy(&desc[..end]).into_owned())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique_suffix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{}-{n}-{:x}", std::process::id(), t & 0xff_ffff)
}

/// Escape a path for a QEMU option value (commas are doubled).
fn qopt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

fn tail_file(p: &Path, lines: usize) -> String {
    let text = std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
        .unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Kill guests left behind by test processes that died without running their `Drop`
/// (e.g. killed by a signal): any `guest.env` under `base` whose owner is gone.
pub fn reap_orphans(base: &Path) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(env) = GuestEnv::load(&e.path()) else {
            continue;
        };
        if env.owner_pid != 0 && !pid_alive(env.owner_pid) {
            eprintln!(
                "[vmi-test-guest] reaping orphaned guest {}",
                env.dir.display()
            );
            let _ = env.stop();
            let _ = std::fs::remove_dir_all(&env.dir);
        }
    }
}

/// Is `VMI_REQUIRE_GUEST=1` set (CI: a guest test that cannot boot must fail)?
pub fn guest_required() -> bool {
    std::env::var("VMI_REQUIRE_GUEST").is_ok_and(|v| v == "1")
}

/// `true` if `qemu-system-x86_64` is installed. Otherwise print a visible `SKIPPED: ...`
/// line and return `false` — or panic when [`guest_required`]. For tests that drive QEMU
/// without [`TestGuest::boot_or_skip`].
pub fn qemu_available_or_skip() -> bool {
    if cache::which("qemu-system-x86_64").is_some() {
        return true;
    }
    let why = "qemu-system-x86_64 not found (apt-get install qemu-system-x86)";
    if guest_required() {
        panic!("VMI_REQUIRE_GUEST=1 but {why}");
    }
    skipped(why);
    false
}

/// Print `SKIPPED: ...` straight to the process's stderr: libtest captures `eprintln!` of
/// passing tests, and a skip must stay visible.
fn skipped(why: &str) {
    use std::io::Write as _;
    // one write, so parallel tests' lines do not interleave
    let line = format!("SKIPPED: live-guest test: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A running guest, stopped (QEMU quit, RAM file removed) when dropped — also during a
/// panic's unwinding.
#[derive(Debug)]
pub struct TestGuest {
    env: GuestEnv,
    truth: Truth,
    child: Option<Child>,
    remove_dir: bool,
    ctl: std::sync::Mutex<Option<Ctl>>,
    /// Declared last: dropped after the guest is stopped.
    watchdog: Option<crate::watchdog::Watchdog>,
}

impl TestGuest {
    /// Build what is missing, boot, wait for the ready marker and parse the truth.
    pub fn boot(cfg: GuestConfig) -> Result<TestGuest> {
        cfg.validate()?;
        let qemu = cache::which("qemu-system-x86_64").ok_or(Error::MissingTool {
            tool: "qemu-system-x86_64",
            hint: "apt-get install qemu-system-x86",
        })?;
        let kernel = kernel::prepare_for(&cfg.kernel, cfg.userland)?;
        let (dir, remove_dir) = match &cfg.dir {
            Some(d) => (d.clone(), false),
            None => {
                let base = cache::guests_base_dir();
                reap_orphans(&base);
                (base.join(unique_suffix()), true)
            }
        };
        cache::mkdir(&dir)?;
        let dir = std::path::absolute(&dir).map_err(Error::io("absolute path", &dir))?;
        if let Ok(old) = GuestEnv::load(&dir) {
            if old.qemu_running() {
                return Err(Error::Config(format!(
                    "a guest is already running in {} (QEMU pid {}); stop it first",
                    dir.display(),
                    old.qemu_pid
                )));
            }
            let _ = old.stop();
        }
        launch(&qemu, &cfg, &kernel, dir, remove_dir)
    }

    /// Like [`TestGuest::boot`], but when QEMU (or another required host tool such as
    /// busybox-static) is not installed print a visible `SKIPPED: ...` line to stderr and
    /// return `None` — unless `VMI_REQUIRE_GUEST=1`, in which case it panics. Any other
    /// boot failure panics (it is a real test failure).
    pub fn boot_or_skip(cfg: GuestConfig) -> Option<TestGuest> {
        if !qemu_available_or_skip() {
            return None;
        }
        let required = guest_required();
        match TestGuest::boot(cfg) {
            Ok(g) => Some(g),
            Err(e @ Error::MissingTool { .. }) if !required => {
                skipped(&e.to_string());
                None
            }
            Err(e) => panic!("booting the test guest failed: {e}"),
        }
    }

    /// Paths, sockets and facts of this guest.
    pub fn env(&self) -> &GuestEnv {
        &self.env
    }
    /// The parsed ground truth of this boot.
    pub fn truth(&self) -> &Truth {
        &self.truth
    }
    /// The guest directory.
    pub fn dir(&self) -> &Path {
        &self.env.dir
    }
    /// QMP socket reserved for the library under test.
    pub fn qmp_socket(&self) -> &Path {
        &self.env.qmp_socket
    }
    /// QMP socket the harness uses.
    pub fn qmp_aux_socket(&self) -> &Path {
        &self.env.qmp_aux_socket
    }
    /// gdbstub unix socket.
    pub fn gdb_socket(&self) -> &Path {
        &self.env.gdb_socket
    }
    /// Guest RAM file.
    pub fn mem_file(&self) -> &Path {
        &self.env.mem_file
    }
    /// Serial console log.
    pub fn serial_log(&self) -> &Path {
        &self.env.serial_log
    }
    /// vmlinux ELF with `.BTF`.
    pub fn vmlinux(&self) -> &Path {
        &self.env.vmlinux
    }
    /// The booted bzImage.
    pub fn vmlinuz(&self) -> &Path {
        &self.env.vmlinuz
    }

    /// Run a QMP command (aux socket), e.g. `json!({"execute": "query-status"})`.
    pub fn qmp(&self, cmd: Value) -> Result<Value> {
        self.env.qmp(&cmd)
    }
    /// Run an HMP command (aux socket), e.g. `info registers`.
    pub fn hmp(&self, command_line: &str) -> Result<String> {
        self.env.hmp(command_line)
    }
    /// Dump guest physical memory to `out`.
    pub fn dump(&self, format: DumpFormat, out: &Path) -> Result<()> {
        self.env.dump(format, out)
    }
    /// Pause the vCPUs (`stop`).
    pub fn pause(&self) -> Result<()> {
        self.qmp(json!({"execute": "stop"})).map(drop)
    }
    /// Resume the vCPUs (`cont`).
    pub fn resume(&self) -> Result<()> {
        self.qmp(json!({"execute": "cont"})).map(drop)
    }

    /// Run a shell command in the guest through its command channel (booted with
    /// [`GuestConfig::control`]) and wait up to `timeout` for it to end. Commands are
    /// serialised; the first call waits (within `timeout`) for the channel to come up.
    pub fn run(&self, command: &str, timeout: Duration) -> Result<CtlOutput> {
        if !self.env.cmdline.split(' ').any(|w| w == "vmi_ctl") {
            return Err(Error::Config(
                "the guest has no command channel: boot it with GuestConfig::control(true)".into(),
            ));
        }
        let mut ctl = self
            .ctl
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ctl.is_none() {
            *ctl = Some(Ctl::connect(&self.env.dir.join(CTL_SOCKET), timeout)?);
        }
        let res = ctl.as_mut().map(|c| c.request(command, timeout));
        match res {
            Some(Ok(out)) => Ok(out),
            Some(Err(e)) => {
                // A timed-out command may still answer later: start afresh next time.
                *ctl = None;
                Err(e)
            }
            None => Err(Error::Ctl("not connected".into())),
        }
    }

    /// The number the guest file `path` holds (e.g. a counter a guest loop renames into
    /// place), read again while the file is missing or holds no number yet, up to
    /// `timeout`.
    pub fn read_number(&self, path: &str, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run(&format!("cat {path}"), timeout)?;
            if let Ok(n) = out.output.trim().parse() {
                return Ok(n);
            }
            if Instant::now() >= deadline {
                return Err(Error::Ctl(format!(
                    "{path} holds no number: {:?}",
                    out.output
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop the guest now (what `Drop` does), reporting errors.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_inner()
    }

    /// Leave QEMU running after this value is gone (for `cargo xtask guest up`); returns the
    /// environment needed to reach and stop it later.
    pub fn detach(mut self) -> GuestEnv {
        self.child = None;
        self.env.owner_pid = 0;
        let _ = std::fs::write(self.env.dir.join("guest.env"), self.env.render());
        self.remove_dir = false;
        let env = self.env.clone();
        // Nothing left to clean up: forget the value so Drop does not stop the guest.
        std::mem::forget(self);
        env
    }

    fn stop_inner(&mut self) -> Result<()> {
        let res = self.env.stop();
        if let Some(mut c) = self.child.take() {
            if !matches!(c.try_wait(), Ok(Some(_))) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if self.remove_dir {
            if std::thread::panicking() {
                eprintln!(
                    "[vmi-test-guest] keeping {} for inspection",
                    self.env.dir.display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&self.env.dir);
            }
            self.remove_dir = false;
        }
        res
    }
}

impl Drop for TestGuest {
    fn drop(&mut self) {
        if let Err(e) = self.stop_inner() {
            eprintln!("[vmi-test-guest] stopping {}: {e}", self.env.dir.display());
        }
    }
}

fn launch(
    qemu: &Path,
    cfg: &GuestConfig,
    kernel: &PreparedKernel,
    dir: PathBuf,
    remove_dir: bool,
) -> Result<TestGuest> {
    let shm = Path::new("/dev/shm");
    let mem_dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let mem_file = mem_dir.join(format!("vmi-guest-{}.ram", unique_suffix()));
    let accel = cfg.accel.pick();
    let env = GuestEnv {
        qemu_pid: 0,
        owner_pid: std::process::id(),
        qmp_socket: dir.join("qmp.sock"),
        qmp_aux_socket: dir.join("qmp-aux.sock"),
        gdb_socket: dir.join("gdb.sock"),
        mem_file,
        mem_size: cfg.mem_mb << 20,
        serial_log: dir.join("serial.log"),
        qemu_log: dir.join("qemu.log"),
        truth_json: dir.join("truth.json"),
        kernel_release: kernel.release.clone(),
        kernel_package: kernel.package.clone(),
        kernel_version: kernel.version.clone(),
        vmlinux: kernel.vmlinux.clone(),
        vmlinuz: kernel.vmlinuz.clone(),
        kernel_config: kernel.config.clone(),
        initrd: kernel.initrd.clone(),
        cpu: cfg.cpu.clone(),
        smp: cfg.smp,
        kaslr: cfg.kaslr,
        accel: accel.into(),
        cmdline: cfg.cmdline(),
        kallsyms: cfg.kallsyms.then(|| dir.join("kallsyms.txt")),
        boot_seconds: 0.0,
        userland: cfg.userland,
        dir,
    };
    for p in [
        &env.qmp_socket,
        &env.qmp_aux_socket,
        &env.gdb_socket,
        &env.serial_log,
        &env.truth_json,
    ] {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_file(env.dir.join("guest.env"));
    let log = std::fs::File::create(&env.qemu_log).map_err(Error::io("create", &env.qemu_log))?;
    let log2 = log.try_clone().map_err(Error::io("dup", &env.qemu_log))?;
    let mem = format!("{}M", cfg.mem_mb);
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-nodefaults",
        "-no-user-config",
        "-accel",
        accel,
        "-cpu",
        &cfg.cpu,
    ])
    .args(["-smp", &cfg.smp.to_string(), "-m", &mem])
    .arg("-object")
    .arg(format!(
        "memory-backend-file,id=ram0,size={mem},mem-path={},share=on",
        qopt(&env.mem_file)
    ))
    .args(["-machine", "q35,memory-backend=ram0"])
    .arg("-kernel")
    .arg(&kernel.vmlinuz)
    .arg("-initrd")
    .arg(&kernel.initrd)
    .arg("-append")
    .arg(&env.cmdline)
    .args(["-display", "none", "-serial"])
    .arg(format!("file:{}", qopt(&env.serial_log)));
    if cfg.control {
        let ctl = env.dir.join(CTL_SOCKET);
        let _ = std::fs::remove_file(&ctl);
        cmd.arg("-serial")
            .arg(format!("unix:{},server=on,wait=off", qopt(&ctl)));
    }
    cmd.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qopt(&env.qmp_socket)))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            qopt(&env.qmp_aux_socket)
        ))
        .arg("-gdb")
        .arg(format!("unix:{},server=on,wait=off", qopt(&env.gdb_socket)))
        .args(["-device", "vmcoreinfo", "-no-reboot"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Own process group: a Ctrl-C aimed at `cargo xtask` must not kill a detached guest.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let t0 = Instant::now();
    let child = cmd.spawn().map_err(|e| Error::Command {
        command: qemu.display().to_string(),
        detail: e.to_string(),
    })?;
    let mut guest = TestGuest {
        env: GuestEnv {
            qemu_pid: child.id(),
            ..env
        },
        truth: Truth::default(),
        child: Some(child),
        ctl: std::sync::Mutex::new(None),
        watchdog: None,
        // Removed on drop only once the boot succeeded: a failed boot keeps its serial and
        // QEMU logs for inspection.
        remove_dir: false,
    };
    // From here on, any error drops `guest`, which stops QEMU and removes the RAM file.
    std::fs::write(guest.env.dir.join("guest.env"), guest.env.render())
        .map_err(Error::io("write", guest.env.dir.join("guest.env")))?;
    let serial = wait_ready(&mut guest, cfg.boot_timeout)?;
    guest.env.boot_seconds = t0.elapsed().as_secs_f64();
    guest.watchdog = cfg
        .watchdog
        .map(|deadline| crate::watchdog::Watchdog::start(guest.env.clone(), deadline));
    let mut truth = Truth::from_serial_log(&serial)?;
    if let Some(note) = truth.vmcoreinfo_note {
        truth.vmcoreinfo = read_vmcoreinfo(&guest.env, note);
    }
    if let Some(path) = &guest.env.kallsyms {
        let text = truth::section(&serial, truth::KALLSYMS_BEGIN, truth::KALLSYMS_END).ok_or_else(
            || Error::Truth {
                line: 0,
                detail: "vmi_kallsyms requested but no kallsyms block".into(),
            },
        )?;
        cache::write_atomic(path, text.as_bytes())?;
        truth.kallsyms_path = Some(path.clone());
    }
    cache::write_atomic(&guest.env.truth_json, &serde_json::to_vec_pretty(&truth)?)?;
    guest.truth = truth;
    guest.remove_dir = remove_dir;
    std::fs::write(guest.env.dir.join("guest.env"), guest.env.render())
        .map_err(Error::io("write", guest.env.dir.join("guest.env")))?;
    Ok(guest)
}

/// Poll the serial log until the ready marker line; detects QEMU's death and the timeout.
fn wait_ready(guest: &mut TestGuest, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read(&guest.env.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        if text
            .split('\n')
            .any(|l| l.trim_end_matches('\r') == truth::READY)
        {
            return Ok(text.into_owned());
        }
        if let Some(Ok(Some(status))) = guest.child.as_mut().map(Child::try_wait) {
            return Err(Error::QemuExited {
                status: status.to_string(),
                serial_tail: tail_file(&guest.env.serial_log, 30),
                qemu_log: tail_file(&guest.env.qemu_log, 30),
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::BootTimeout {
                seconds: timeout.as_secs(),
                serial_tail: tail_file(&guest.env.serial_log, 30),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stop the guest described by `DIR/guest.env` (for `cargo xtask guest down`).
pub fn stop_dir(dir: &Path) -> Result<GuestEnv> {
    let env = GuestEnv::load(dir)?;
    env.stop()?;
    Ok(env)
}
