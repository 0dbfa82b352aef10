//! [`QemuDriver`]: attach, memory, registers, control, events and clean-up.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmi_arch_amd64::instruction::{MAX_NOP_LENGTH, nop_length};
use vmi_arch_amd64::{Amd64, EventReason, Registers};
use vmi_core::{
    BorrowedThread, BreakpointAddress, BreakpointKind, EventAction, EventCallback, EventMonitor,
    Gfn, MemoryAccess, MonitorChange, Pa, PageAbsence, PageRead, Va, VcpuId, VmState, VmiDriver,
    VmiError, VmiEvent, VmiEventControl, VmiInfo, VmiQueryRegisters, VmiRead, VmiSetRegisters,
    VmiVmControl, VmiWrite,
};

use crate::error::QemuError;
use crate::gdb::{GdbAddress, GdbConn, RegMap, StopReply, decode_hex, encode_le, parse_stop_reply};
use crate::libvirt::LibvirtDomain;
use crate::memory::{Access, AccessPath, Layout, Memory};
use crate::monitor::Monitor;
use crate::qmp::QmpClient;
use crate::regs;
use crate::rundir::PrivateDir;
use crate::shadow::ShadowByte;
use crate::watchdog::{Giveback, MAX_GIVEBACK_REGS, Plan, RawAddr, RawCommand, RegSlot, Watchdog};

const PAGE: u64 = 4096;

/// Which gdbstub the driver uses for registers and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum GdbMode {
    /// Use the gdbstub QEMU already has (found with `query-chardev`, label `gdb`); when
    /// there is none, start one on a private unix socket with HMP `gdbserver` and stop it
    /// again when the driver is dropped.
    #[default]
    Auto,
    /// Use this gdbstub.
    Address(GdbAddress),
    /// Never touch the gdbstub: registers come from HMP `info registers`, events are
    /// not supported.
    Disabled,
}

/// Options of [`QemuDriver::attach_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct AttachOptions {
    /// Force a memory access path (default: the fastest that works).
    pub access_path: Option<AccessPath>,
    /// Which gdbstub to use.
    pub gdb: GdbMode,
    /// How long to wait for QEMU's greeting before calling a socket busy.
    pub greeting_timeout: Duration,
    /// How long to wait for the answer to one command.
    pub command_timeout: Duration,
    /// Also read segment descriptors, GDTR/IDTR and debug registers through HMP for each
    /// event (slower; by default event registers carry what the gdbstub has).
    pub full_event_registers: bool,
    /// When the VM is found in the `debug` state (stopped by a gdb client that went away,
    /// e.g. a killed VMI session), remove all gdbstub breakpoints and resume it.
    pub recover_debug_state: bool,
    /// Allow writing guest memory and vCPU registers (default: off). A read-only attach
    /// opens QEMU's RAM file and `/proc/<pid>/mem` read-only, and writes fail with
    /// [`QemuError::ReadOnly`].
    pub writable: bool,
    /// Start the guard process that undoes breakpoints and pauses if this process dies
    /// without detaching (default: on; see the crate docs).
    pub guard: bool,
    /// Whether QEMU writes software breakpoints into guest RAM, which the driver then
    /// hides from reads (see the crate docs). `None` (the default) asks QEMU: yes under
    /// KVM, no under TCG. `Some(true)` under TCG runs the KVM code path on a guest whose
    /// RAM QEMU leaves alone: for tests of that path.
    pub kvm_breakpoints: Option<bool>,
}

impl Default for AttachOptions {
    fn default() -> Self {
        Self {
            access_path: None,
            gdb: GdbMode::Auto,
            greeting_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_secs(1),
            full_event_registers: false,
            recover_debug_state: true,
            writable: false,
            guard: true,
            kvm_breakpoints: None,
        }
    }
}

impl AttachOptions {
    /// Forces a memory access path.
    pub fn access_path(mut self, path: AccessPath) -> Self {
        self.access_path = Some(path);
        self
    }

    /// Uses the gdbstub at `socket` (a unix socket path).
    pub fn gdb_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.gdb = GdbMode::Address(GdbAddress::Unix(socket.into()));
        self
    }

    /// Chooses the gdbstub mode.
    pub fn gdb(mut self, mode: GdbMode) -> Self {
        self.gdb = mode;
        self
    }

    /// Sets the per-command timeout.
    pub fn command_timeout(mut self, t: Duration) -> Self {
        self.command_timeout = t;
        self
    }

    /// Sets how long a silent socket may take before it counts as busy.
    pub fn greeting_timeout(mut self, t: Duration) -> Self {
        self.greeting_timeout = t;
        self
    }

    /// Reads full registers (HMP too) for each event.
    pub fn full_event_registers(mut self, on: bool) -> Self {
        self.full_event_registers = on;
        self
    }

    /// Allows (or not) writing guest memory and registers; see [`AttachOptions::writable`].
    pub fn writable(mut self, on: bool) -> Self {
        self.writable = on;
        self
    }

    /// Starts (or not) the guard process; see [`AttachOptions::guard`].
    pub fn guard(mut self, on: bool) -> Self {
        self.guard = on;
        self
    }

    /// Overrides what the driver assumes of software breakpoints; see
    /// [`AttachOptions::kvm_breakpoints`].
    pub fn kvm_breakpoints(mut self, in_memory: bool) -> Self {
        self.kvm_breakpoints = Some(in_memory);
        self
    }
}

/// A gdbstub breakpoint or watchpoint we inserted (`Z<type>,<addr>,<kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    ztype: u8,
    addr: u64,
    len: u64,
}

impl Installed {
    fn packet(&self, insert: bool) -> String {
        format!(
            "{}{},{:x},{:x}",
            if insert { 'Z' } else { 'z' },
            self.ztype,
            self.addr,
            self.len
        )
    }

    fn is_exec(&self) -> bool {
        self.ztype <= 1
    }
}

/// State of a connected gdbstub.
#[derive(Debug)]
struct GdbSession {
    conn: GdbConn,
    regmap: RegMap,
    /// Thread ids as the stub names them; index = vCPU.
    threads: Vec<String>,
    /// The thread selected with `Hg`.
    current_g: Option<usize>,
    /// A resume was sent and no stop reply has been seen since.
    running: bool,
    /// Stops received but not yet handed to a handler.
    pending: VecDeque<StopReply>,
    /// vCPU stopped on one of our execution breakpoints: step it over before continuing.
    step_over: Option<(usize, u64)>,
    /// vCPU single-stepped at a handler's request.
    stepping: Option<usize>,
    /// A breakpoint removed for a step (KVM), to insert again after it.
    reinsert: Option<Installed>,
    installed: Vec<Installed>,
    /// The gdbstub was started by us (socket in a private directory): stop it on drop.
    started: Option<PrivateDir>,
    /// The guard process, told about each breakpoint.
    guard: Option<Arc<Watchdog>>,
    /// The VM was paused by someone else (a `T02` we did not ask for).
    external_pause: bool,
    /// Unknown stops already reported on stderr.
    warned_unknown: bool,
}

#[derive(Debug)]
enum GdbState {
    NotConnected,
    Connected(Box<GdbSession>),
    Unavailable(String),
}

/// The guard process, started at the first action that changes the VM.
#[derive(Debug)]
enum GuardState {
    NotStarted,
    Armed(Arc<Watchdog>),
    /// Disabled by [`AttachOptions::guard`], or it could not start (said on stderr).
    Off,
}

#[derive(Debug)]
struct Inner {
    gdb: GdbState,
    /// The user asked for the VM to be paused (or it was found paused).
    user_paused: bool,
    /// Declared after `gdb`: dropped after the gdbstub connection is closed.
    guard: GuardState,
}

/// A live QEMU guest, attached through its QMP socket. See the crate docs.
#[derive(Debug)]
pub struct QemuDriver {
    // Field order matters: `qmp` closes before `inner` drops the guard, so that a guard
    // left to clean up (our clean-up failed) finds the QMP socket free.
    qmp: Mutex<Monitor>,
    memory: Memory,
    inner: Mutex<Inner>,
    /// The guard and what it needs of the gdbstub to give a borrowed thread back; its own
    /// lock, as the injector asks from inside an event handler (which holds `inner`).
    borrow: Mutex<Option<BorrowLink>>,
    options: AttachOptions,
    /// The QMP socket path (for the guard); `None` for libvirt, which owns the socket.
    qmp_path: Option<PathBuf>,
    /// Where to make the private directory of a gdbstub we start (`None`: the default,
    /// see `rundir`); a libvirt domain's own directory, where its confined QEMU may
    /// create sockets.
    gdb_base: Option<PathBuf>,
    vcpus: u16,
    pid: Option<u32>,
    /// QEMU's user id (peer credentials of the QMP socket).
    qemu_uid: Option<u32>,
    kvm: bool,
    /// Software breakpoints are `int3` bytes in guest RAM (KVM, or forced by
    /// [`AttachOptions::kvm_breakpoints`]): removed for each step over them, hidden from
    /// reads by [`Memory::shadow`].
    kvm_bps: bool,
    found_running: bool,
    qemu_version: String,
}

/// The registers a thread owns in user mode, as the gdbstub names them: what the guard
/// writes back into a borrowed thread.
const USER_REGISTERS: [&str; 26] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15", "rip", "eflags", "fs_base", "gs_base", "cs", "ss", "ds", "es", "fs", "gs",
];

/// What [`VmiEventControl::guard_borrowed_thread`] needs, kept apart from the session.
#[derive(Debug)]
struct BorrowLink {
    guard: Arc<Watchdog>,
    threads: Vec<String>,
    /// [`USER_REGISTERS`] with their slots, or the first one the description lacks.
    slots: Result<Vec<(&'static str, RegSlot)>, &'static str>,
    /// The guard holds a borrowed thread (journaled, not yet released).
    held: bool,
}

impl BorrowLink {
    fn new(guard: Arc<Watchdog>, s: &GdbSession) -> BorrowLink {
        let slots = USER_REGISTERS
            .iter()
            .chain(["cr3"].iter())
            .map(|&name| {
                let d = s.regmap.get(name).ok_or(name)?;
                let num = u16::try_from(d.regnum).map_err(|_| name)?;
                let size = u8::try_from(d.size).ok().filter(|&n| (1..=8).contains(&n));
                Ok((
                    name,
                    RegSlot {
                        num,
                        size: size.ok_or(name)?,
                    },
                ))
            })
            .collect();
        BorrowLink {
            guard,
            threads: s.threads.clone(),
            slots,
            held: false,
        }
    }

    fn plan(&self, t: &BorrowedThread<'_, Registers>) -> Result<Giveback, VmiError> {
        let slots = self.slots.as_ref().map_err(|name| {
            VmiError::from(QemuError::GdbUnavailable(format!(
                "register {name} is not in the gdbstub's description: a borrowed thread \
                 cannot be given back after a crash"
            )))
        })?;
        let slot = |name: &str| {
            slots
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| *s)
                .unwrap_or_default()
        };
        let mut saved = t.saved.clone();
        let mut values: Vec<(RegSlot, u64)> = Vec::with_capacity(USER_REGISTERS.len());
        for &name in &USER_REGISTERS {
            let value = if let Some((_, f)) = regs::GDB_FIELDS.iter().find(|(n, _)| *n == name) {
                *f(&mut saved)
            } else if let Some((_, f)) = regs::GDB_SEGMENTS.iter().find(|(n, _)| *n == name) {
                u64::from(f(&mut saved).selector)
            } else {
                continue;
            };
            values.push((slot(name), value));
        }
        let mut regs_out = [(RegSlot::default(), 0u64); MAX_GIVEBACK_REGS];
        for (d, s) in regs_out.iter_mut().zip(&values) {
            *d = *s;
        }
        let root_mask = !(0xfff | t.root_ignore | (1 << 63));
        Ok(Giveback {
            stop_ip: t.stop_ip.0,
            stop_sp: t.stop_sp,
            saved_ip: t.saved.rip,
            saved_sp: t.saved.rsp,
            root: t.root.0 & root_mask,
            root_mask,
            syscall_ip: t.syscall_ip.0,
            exit_nr: t.exit_nr,
            wait_ms: u64::try_from(t.wait.as_millis()).unwrap_or(u64::MAX),
            mem_va: t.memory.0,
            mem_len: t.original.len() as u64,
            ip: slot("rip"),
            sp: slot("rsp"),
            root_reg: slot("cr3"),
            ret_reg: slot("rax"),
            arg0_reg: slot("rdi"),
            regs: regs_out,
            nregs: values.len().min(MAX_GIVEBACK_REGS),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while holding the lock leaves plain data behind; keep going
    // (clean-up in Drop must still run).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// QEMU's run state name as a [`VmState`].
pub(crate) fn vm_state(status: &str) -> VmState {
    match status {
        "running" => VmState::Running,
        "paused" => VmState::Paused,
        "debug" => VmState::Debug,
        other => VmState::Other(match other {
            "inmigrate" => "inmigrate",
            "internal-error" => "internal-error",
            "io-error" => "io-error",
            "postmigrate" => "postmigrate",
            "prelaunch" => "prelaunch",
            "finish-migrate" => "finish-migrate",
            "restore-vm" => "restore-vm",
            "save-vm" => "save-vm",
            "shutdown" => "shutdown",
            "suspended" => "suspended",
            "watchdog" => "watchdog",
            "guest-panicked" => "guest-panicked",
            "colo" => "colo",
            _ => "unknown",
        }),
    }
}

fn query_status(qmp: &mut Monitor) -> Result<String, QemuError> {
    let v = qmp.execute("query-status", None)?;
    v.get("status")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| QemuError::protocol("query-status", v.to_string()))
}

/// The QEMU pid: the QMP socket's peer credentials, else a vCPU thread's thread group.
fn qemu_pid(qmp: &mut Monitor) -> Option<u32> {
    if let Some((pid, _)) = qmp.peer_cred() {
        return Some(pid);
    }
    let cpus = qmp.execute("query-cpus-fast", None).ok()?;
    let tid = cpus.as_array()?.first()?.get("thread-id")?.as_u64()?;
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// `virsh [-c URI] resume NAME`, for the guard (it cannot call libvirt after a fork):
/// `None` without `virsh` in `PATH` or `/usr/bin`.
fn libvirt_resume_command(d: &LibvirtDomain) -> Option<RawCommand> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let virsh = path
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| Path::new(std::ffi::OsStr::from_bytes(dir)).join("virsh"))
        .chain([PathBuf::from("/usr/bin/virsh")])
        .find(|p| p.is_absolute() && p.is_file())?;
    let mut args: Vec<&[u8]> = vec![virsh.as_os_str().as_bytes(), b"-q"];
    if let Some(uri) = d.uri() {
        args.extend([b"-c".as_slice(), uri.as_bytes()]);
    }
    args.extend([b"resume".as_slice(), d.name().as_bytes()]);
    RawCommand::new(&args)
}

/// The directory of libvirt's monitor socket for the domain (libvirt's per-domain
/// private directory, `/var/lib/libvirt/qemu/domain-ID-NAME`): the place a confined QEMU
/// (AppArmor, SELinux) may create a socket.
fn libvirt_domain_dir(qmp: &mut Monitor) -> Option<PathBuf> {
    let v = qmp.execute("query-chardev", None).ok()?;
    v.as_array()?.iter().find_map(|c| {
        if c.get("label")?.as_str()? != "charmonitor" {
            return None;
        }
        let f = c.get("filename")?.as_str()?;
        let path = f.strip_prefix("unix:")?.split(',').next()?;
        let dir = Path::new(path).parent()?;
        (dir.is_absolute() && dir.is_dir()).then(|| dir.to_path_buf())
    })
}

/// Finds the address of QEMU's existing gdbstub (`query-chardev`, label `gdb`).
fn find_gdbstub(qmp: &mut Monitor) -> Result<Option<GdbAddress>, QemuError> {
    let v = qmp.execute("query-chardev", None)?;
    Ok(v.as_array().into_iter().flatten().find_map(|c| {
        (c.get("label")?.as_str()? == "gdb")
            .then(|| GdbAddress::from_chardev_filename(c.get("filename")?.as_str()?))
            .flatten()
    }))
}

/// Connects to a gdbstub and does the handshake; the VM is stopped afterwards.
fn gdb_handshake(
    addr: &GdbAddress,
    greeting: Duration,
    timeout: Duration,
) -> Result<(GdbConn, RegMap, Vec<String>), QemuError> {
    let mut conn = GdbConn::connect(addr, greeting)?;
    let sup = match conn.request("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+") {
        Ok(s) => s,
        Err(QemuError::Timeout { .. }) => {
            return Err(QemuError::GdbUnavailable(format!(
                "busy: another client holds the gdbstub socket {addr}"
            )));
        }
        Err(e) => return Err(e),
    };
    conn.set_timeout(timeout);
    if !sup.contains("qXfer:features:read+") {
        return Err(QemuError::GdbUnavailable(format!(
            "the gdbstub at {addr} offers no target description ({sup})"
        )));
    }
    let regmap = RegMap::load(&mut conn)?;
    let mut threads = Vec::new();
    let mut r = conn.request("qfThreadInfo")?;
    for _ in 0..4096 {
        let Some(list) = r.strip_prefix('m') else {
            break;
        };
        threads.extend(list.split(',').filter(|t| !t.is_empty()).map(str::to_owned));
        r = conn.request("qsThreadInfo")?;
    }
    if threads.is_empty() {
        return Err(QemuError::protocol("qfThreadInfo", r));
    }
    Ok((conn, regmap, threads))
}

/// Parses a thread id `p01.02` / `02` into its thread number.
fn thread_number(t: &str) -> Option<u64> {
    let t = t
        .strip_prefix('p')
        .map_or(t, |x| x.split('.').nth(1).unwrap_or(x));
    u64::from_str_radix(t, 16).ok()
}

impl GdbSession {
    fn vcpu_of(&self, thread: Option<&str>) -> usize {
        thread
            .and_then(thread_number)
            .and_then(|n| {
                self.threads
                    .iter()
                    .position(|t| thread_number(t) == Some(n))
            })
            .unwrap_or(0)
    }

    fn select(&mut self, vcpu: usize) -> Result<(), QemuError> {
        if self.current_g != Some(vcpu) {
            let t = self
                .threads
                .get(vcpu)
                .ok_or_else(|| QemuError::protocol("vCPU", format!("no vCPU {vcpu}")))?
                .clone();
            self.conn.request_ok(&format!("Hg{t}"))?;
            self.current_g = Some(vcpu);
        }
        Ok(())
    }

    fn read_registers(&mut self, vcpu: usize) -> Result<Registers, QemuError> {
        self.select(vcpu)?;
        let g = self.conn.request("g")?;
        let bytes = decode_hex(&g).ok_or_else(|| QemuError::protocol("g reply", g.clone()))?;
        let mut r = Registers::default();
        let missing = regs::from_gdb(&self.regmap, &bytes, &mut r);
        // Registers beyond the `g` packet are fetched one by one.
        for name in missing {
            if let Some(d) = self.regmap.get(name).cloned() {
                let p = self.conn.request(&format!("p{:x}", d.regnum))?;
                if let Some(b) = decode_hex(&p).filter(|b| !b.is_empty()) {
                    let mut one = vec![0u8; d.offset];
                    one.extend_from_slice(&b);
                    let mut tmp = Registers::default();
                    regs::from_gdb(&self.regmap, &one, &mut tmp);
                    copy_named(&mut r, &tmp, name);
                }
            }
        }
        Ok(r)
    }

    fn write_registers(
        &mut self,
        vcpu: usize,
        old: &Registers,
        new: &Registers,
    ) -> Result<(), QemuError> {
        let diff = regs::gdb_diff(old, new);
        if diff.is_empty() {
            return Ok(());
        }
        self.select(vcpu)?;
        for (name, value) in diff {
            let d = self.regmap.get(name).cloned().ok_or_else(|| {
                QemuError::GdbUnavailable(format!("register {name} is not in the description"))
            })?;
            self.conn
                .request_ok(&format!("P{:x}={}", d.regnum, encode_le(value, d.size)))?;
        }
        Ok(())
    }

    /// Records a stop reply that came while the VM ran under us: a `SIGINT` stop we did
    /// not ask for is a pause by another client (QMP `stop`), anything else an event.
    fn stopped_with(&mut self, reply: &str) -> Result<(), QemuError> {
        self.running = false;
        let stop = parse_stop_reply(reply)?;
        if stop.signal == 2 && self.stepping.is_none() {
            self.external_pause = true;
        } else {
            self.pending.push_back(stop);
        }
        Ok(())
    }

    /// Stops the VM if it runs under us; a real event that raced the interrupt is queued.
    fn ensure_stopped(&mut self) -> Result<(), QemuError> {
        if !self.running {
            return Ok(());
        }
        self.conn.interrupt()?;
        let deadline = Instant::now() + self.conn.timeout();
        let Some(p) = self.conn.wait_stop(deadline)? else {
            return Err(QemuError::Timeout {
                what: "gdbstub",
                request: "interrupt".into(),
                millis: self.conn.timeout().as_millis(),
            });
        };
        self.running = false;
        let stop = parse_stop_reply(&p)?;
        if stop.signal != 2 {
            self.pending.push_back(stop);
        }
        Ok(())
    }

    /// Lets the VM run (stepping over a breakpoint we reported first), unless events wait.
    fn resume(&mut self, kvm: bool) -> Result<(), QemuError> {
        if self.running || !self.pending.is_empty() {
            return Ok(());
        }
        if let Some((vcpu, addr)) = self.step_over.take() {
            if !kvm && self.skip_nop(vcpu, addr)? {
                self.send_resume("vCont;c")?;
                return Ok(());
            }
            let bps: Vec<Installed> = self
                .installed
                .iter()
                .filter(|i| i.is_exec() && i.addr == addr)
                .copied()
                .collect();
            if kvm {
                for b in &bps {
                    self.conn.request_ok(&b.packet(false))?;
                }
            }
            let t = self.threads[vcpu].clone();
            self.current_g = None;
            self.conn.send(&format!("vCont;s:{t}"))?;
            let deadline = Instant::now() + self.conn.timeout();
            let p = self.conn.wait_stop(deadline)?;
            if kvm {
                for b in &bps {
                    self.conn.request_ok(&b.packet(true))?;
                }
            }
            let Some(p) = p else {
                // The step did not finish (e.g. the instruction blocks): stop everything.
                self.running = true;
                return self.ensure_stopped();
            };
            let stop = parse_stop_reply(&p)?;
            if stop.watch.is_some() || self.vcpu_of(stop.thread.as_deref()) != vcpu {
                self.pending.push_back(stop);
                return Ok(());
            }
        }
        self.send_resume("vCont;c")
    }

    /// Sends a resume (`vCont`). QEMU makes the vCPU of the next debug stop its `Hg`
    /// thread, so the one selected before is forgotten.
    fn send_resume(&mut self, packet: &str) -> Result<(), QemuError> {
        self.current_g = None;
        self.conn.send(packet)?;
        self.running = true;
        Ok(())
    }

    /// Steps over the breakpoint at `addr` without a single-step when the instruction
    /// there is a no-op ([`nop_length`]): `rip` moves past it, which is all executing it
    /// would do. Under TCG this halves what an event costs: QEMU's gdbstub flushes every
    /// translated block at each debug stop (breakpoint and single-step alike; not at
    /// watchpoints), and the guest then runs on freshly translated code. The bytes are
    /// read at each hit (the kernel patches its `__fentry__` sites when ftrace is turned
    /// on). TCG only: under KVM the breakpoint's `int3` is in memory, and the CPU's
    /// indirect-branch tracking may need the `endbr64` to run.
    fn skip_nop(&mut self, vcpu: usize, addr: u64) -> Result<bool, QemuError> {
        let Some(rip) = self.regmap.get("rip").cloned() else {
            return Ok(false);
        };
        self.select(vcpu)?;
        let m = self
            .conn
            .request(&format!("m{addr:x},{:x}", MAX_NOP_LENGTH))?;
        let Some(len) = decode_hex(&m).and_then(|b| nop_length(&b)) else {
            return Ok(false);
        };
        let next = addr.wrapping_add(len as u64);
        self.conn
            .request_ok(&format!("P{:x}={}", rip.regnum, encode_le(next, rip.size)))?;
        Ok(true)
    }

    fn exec_bp_at(&self, rip: u64) -> Option<Installed> {
        self.installed
            .iter()
            .find(|i| i.is_exec() && i.addr == rip)
            .copied()
    }

    fn install(&mut self, bp: Installed) -> Result<(), QemuError> {
        if self.installed.contains(&bp) {
            return Ok(());
        }
        // The guard hears of it first: if we die between the two, it removes a
        // breakpoint that may or may not be there (QEMU refuses the `z` of an absent one).
        if let Some(g) = &self.guard {
            g.note_insert(bp.ztype, bp.addr, bp.len);
        }
        let r = self.conn.request(&bp.packet(true));
        if r.as_deref().ok() != Some("OK")
            && let Some(g) = &self.guard
        {
            g.note_remove(bp.ztype, bp.addr, bp.len);
        }
        let r = r?;
        if r != "OK" {
            return Err(QemuError::GdbRefused {
                request: bp.packet(true),
                reply: if r.starts_with('E') && bp.ztype != 0 {
                    format!("{r} (hardware debug registers exhausted? KVM has 4)")
                } else {
                    r
                },
            });
        }
        self.installed.push(bp);
        Ok(())
    }

    fn uninstall(&mut self, bp: Installed) -> Result<(), QemuError> {
        let Some(i) = self.installed.iter().position(|x| *x == bp) else {
            return Ok(());
        };
        self.installed.remove(i);
        if self.reinsert == Some(bp) {
            self.reinsert = None;
        } else {
            self.conn.request_ok(&bp.packet(false))?;
        }
        if let Some(g) = &self.guard {
            g.note_remove(bp.ztype, bp.addr, bp.len);
        }
        Ok(())
    }
}

/// Whether `va` lies in the lower (user) half of the canonical address space.
fn is_user_address(va: u64) -> bool {
    va < 0x8000_0000_0000_0000
}

/// The address of HMP `gva2gpa`'s answer (`gpa: 0x1234`); `None` for `Unmapped` or
/// anything else.
fn parse_gva2gpa(out: &str) -> Option<u64> {
    let hex = out.trim().strip_prefix("gpa:")?.trim();
    u64::from_str_radix(hex.strip_prefix("0x").unwrap_or(hex), 16).ok()
}

fn copy_named(dst: &mut Registers, src: &Registers, name: &str) {
    for (n, f) in regs::GDB_FIELDS {
        if *n == name {
            let mut s = src.clone();
            *f(dst) = *f(&mut s);
        }
    }
}

impl QemuDriver {
    /// Attaches to the QEMU whose QMP socket is `qmp_socket`, with default options.
    pub fn attach(qmp_socket: impl AsRef<Path>) -> Result<Self, VmiError> {
        Self::attach_with(qmp_socket, AttachOptions::default())
    }

    /// Attaches with `options`.
    pub fn attach_with(
        qmp_socket: impl AsRef<Path>,
        options: AttachOptions,
    ) -> Result<Self, VmiError> {
        let path = qmp_socket.as_ref();
        let qmp = QmpClient::connect(path, options.greeting_timeout, options.command_timeout)?;
        // The guard connects after we are gone, possibly from elsewhere: an absolute path.
        let qmp_path = std::path::absolute(path)
            .ok()
            .filter(|p| RawAddr::unix(p).is_some())
            .unwrap_or_else(|| path.to_path_buf());
        Self::attach_monitor(Monitor::Qmp(qmp), Some(qmp_path), options)
    }

    /// Attaches to the libvirt domain called `domain` at the libvirt `uri` (`None`:
    /// libvirt's default, `LIBVIRT_DEFAULT_URI` or `qemu:///system` for root), through
    /// libvirt itself: monitor commands pass through `virDomainQemuMonitorCommand`,
    /// pause and resume are libvirt's, memory is the domain's file backing when it has a
    /// shared one, else the QEMU process's memory; a gdbstub is started on a socket in
    /// the domain's private directory when needed. The domain's definition is not
    /// changed. The QEMU process must run on this host (its pid is checked by its
    /// `-name guest=NAME` argument), and reading it needs root (or its user).
    pub fn attach_libvirt(
        uri: Option<&str>,
        domain: &str,
        options: AttachOptions,
    ) -> Result<Self, VmiError> {
        let dom = LibvirtDomain::open(uri, domain)?;
        Self::attach_monitor(Monitor::Libvirt(Box::new(dom)), None, options)
    }

    fn attach_monitor(
        mut qmp: Monitor,
        qmp_path: Option<PathBuf>,
        options: AttachOptions,
    ) -> Result<Self, VmiError> {
        let target = qmp.execute("query-target", None)?;
        let arch = target
            .get("arch")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if arch != "x86_64" {
            return Err(QemuError::WrongArchitecture { arch }.into());
        }
        let version = qmp
            .execute("query-version", None)
            .ok()
            .and_then(|v| {
                let q = v.get("qemu")?;
                Some(format!(
                    "{}.{}.{}",
                    q.get("major")?,
                    q.get("minor")?,
                    q.get("micro")?
                ))
            })
            .unwrap_or_default();
        let kvm = qmp
            .execute("query-kvm", None)
            .ok()
            .and_then(|v| v.get("enabled").and_then(Value::as_bool))
            .unwrap_or(false);
        let vcpus = qmp
            .execute("query-cpus-fast", None)?
            .as_array()
            .map_or(0, |a| a.len());
        let vcpus = u16::try_from(vcpus).unwrap_or(u16::MAX);
        let mut status = query_status(&mut qmp)?;
        if status == "debug" && options.recover_debug_state && options.gdb != GdbMode::Disabled {
            let addr = match &options.gdb {
                GdbMode::Address(a) => Some(a.clone()),
                _ => find_gdbstub(&mut qmp)?,
            };
            if let Some(addr) = addr {
                eprintln!(
                    "vmi-driver-qemu: VM found in `debug` state with a free gdbstub \
                     (a debugger went away): removing its breakpoints and resuming"
                );
                detach_gdbstub(&addr, &options)?;
                status = query_status(&mut qmp)?;
            }
        }
        let layout = Layout::discover(&mut qmp)?;
        let (pid, qemu_uid, gdb_base) = match &qmp {
            Monitor::Qmp(_) => (
                qemu_pid(&mut qmp),
                qmp.peer_cred().map(|(_, uid)| uid),
                None,
            ),
            Monitor::Libvirt(d) => {
                let name = d.name().to_owned();
                let pid = qemu_pid(&mut qmp)
                    .filter(|&p| crate::sys::is_libvirt_qemu(p, &name))
                    .ok_or_else(|| QemuError::Libvirt {
                        operation: format!("finding the QEMU process of domain {name}"),
                        message: "no local process runs it (libvirt targets must run on \
                                      this host)"
                            .into(),
                    })?;
                (
                    Some(pid),
                    crate::sys::process_uid(pid),
                    libvirt_domain_dir(&mut qmp),
                )
            }
        };
        let access = open_access(
            &layout,
            &mut qmp,
            pid,
            options.access_path,
            options.writable,
        )?;
        let found_running = status == "running";
        let kvm_bps = options.kvm_breakpoints.unwrap_or(kvm);
        Ok(QemuDriver {
            qmp: Mutex::new(qmp),
            memory: Memory {
                layout,
                access,
                warned_xp: AtomicBool::new(false),
                shadow: Default::default(),
            },
            inner: Mutex::new(Inner {
                gdb: GdbState::NotConnected,
                user_paused: !found_running,
                guard: GuardState::NotStarted,
            }),
            borrow: Mutex::new(None),
            options,
            qmp_path,
            gdb_base,
            vcpus,
            pid,
            qemu_uid,
            kvm,
            kvm_bps,
            found_running,
            qemu_version: version,
        })
    }

    /// Removes every gdbstub breakpoint and watchpoint of the QEMU behind `qmp_socket`
    /// and resumes it: what to run after a VMI process died without cleaning up (e.g.
    /// `SIGKILL`). QEMU keeps the breakpoints of a gdb client that vanished, and the VM
    /// stops at the first hit. A VM that was paused (not `debug`) stays paused.
    pub fn recover(qmp_socket: impl AsRef<Path>) -> Result<VmState, VmiError> {
        let options = AttachOptions::default();
        let mut qmp = Monitor::Qmp(QmpClient::connect(
            qmp_socket.as_ref(),
            options.greeting_timeout,
            options.command_timeout,
        )?);
        let before = query_status(&mut qmp)?;
        if let Some(addr) = find_gdbstub(&mut qmp)? {
            detach_gdbstub(&addr, &options)?;
            if before == "paused" {
                qmp.execute("stop", None)?;
            }
        }
        Ok(vm_state(&query_status(&mut qmp)?))
    }

    /// The memory access path in use.
    pub fn access_path(&self) -> AccessPath {
        self.memory.access.path()
    }

    /// Whether QEMU runs the guest with KVM (else TCG).
    pub fn is_kvm(&self) -> bool {
        self.kvm
    }

    /// QEMU's process id, when known.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.pid
    }

    /// QEMU's version (`major.minor.micro`).
    pub fn qemu_version(&self) -> &str {
        &self.qemu_version
    }

    /// Guest-physical ranges of RAM and where they live in the RAM backends:
    /// `(guest-physical range, backend id, offset in the backend)`.
    pub fn ram_layout(&self) -> Vec<(Range<u64>, String, u64)> {
        let l = &self.memory.layout;
        l.ranges
            .iter()
            .map(|r| {
                (
                    r.gpa..r.gpa + r.len,
                    l.backends[r.backend].id.clone(),
                    r.offset,
                )
            })
            .collect()
    }

    /// Runs an HMP command line (through our QMP connection).
    pub fn hmp(&self, command_line: &str) -> Result<String, VmiError> {
        Ok(lock(&self.qmp).hmp(command_line, None)?)
    }

    /// Runs a QMP command.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value, VmiError> {
        Ok(lock(&self.qmp).execute(command, arguments)?)
    }

    /// Registers of `vcpu` from HMP `info registers` alone (no gdbstub: no
    /// KERNEL_GS_BASE, CR8).
    pub fn monitor_registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        self.check_vcpu(vcpu)?;
        let text = lock(&self.qmp).hmp("info registers", Some(vcpu.0))?;
        regs::parse_info_registers(&text)
            .ok_or_else(|| QemuError::protocol("info registers", text).into())
    }

    /// Whether the gdbstub is in use, and if not, why.
    pub fn gdbstub_status(&self) -> Result<(), String> {
        match &lock(&self.inner).gdb {
            GdbState::Connected(_) | GdbState::NotConnected => Ok(()),
            GdbState::Unavailable(why) => Err(why.clone()),
        }
    }

    fn check_vcpu(&self, vcpu: VcpuId) -> Result<usize, VmiError> {
        if vcpu.0 >= self.vcpus {
            return Err(VmiError::NotFound {
                kind: "vCPU",
                name: vcpu.0.to_string(),
            });
        }
        Ok(usize::from(vcpu.0))
    }

    /// Connects the gdbstub if needed; `Err` with the reason when unavailable.
    fn session<'a>(&self, inner: &'a mut Inner) -> Result<&'a mut GdbSession, QemuError> {
        if let GdbState::NotConnected = inner.gdb {
            let guard = self.arm_guard(inner);
            inner.gdb = match self.connect_gdb(inner.user_paused, guard.clone()) {
                Ok(s) => {
                    if let Some(g) = guard {
                        *lock(&self.borrow) = Some(BorrowLink::new(g, &s));
                    }
                    GdbState::Connected(Box::new(s))
                }
                Err(e) => GdbState::Unavailable(e.to_string()),
            };
        }
        match &mut inner.gdb {
            GdbState::Connected(s) => Ok(s),
            GdbState::Unavailable(why) => Err(QemuError::GdbUnavailable(why.clone())),
            GdbState::NotConnected => Err(QemuError::GdbUnavailable("not connected".into())),
        }
    }

    /// Starts the guard process unless it runs, was refused or could not start.
    fn arm_guard(&self, inner: &mut Inner) -> Option<Arc<Watchdog>> {
        if let GuardState::NotStarted = inner.guard {
            inner.guard = if !self.options.guard {
                GuardState::Off
            } else {
                let qmp = match &self.qmp_path {
                    None => Ok(None),
                    Some(p) => RawAddr::unix(p).map(Some).ok_or_else(|| {
                        QemuError::protocol(
                            "QMP socket path",
                            format!("{} does not fit a unix address", p.display()),
                        )
                    }),
                };
                let resume = match &*lock(&self.qmp) {
                    Monitor::Libvirt(d) => libvirt_resume_command(d),
                    Monitor::Qmp(_) => None,
                };
                let started = qmp.and_then(|qmp| {
                    Watchdog::spawn(Plan {
                        qmp,
                        resume,
                        found_running: self.found_running,
                    })
                });
                match started {
                    Ok(w) => GuardState::Armed(Arc::new(w)),
                    Err(e) => {
                        eprintln!(
                            "vmi-driver-qemu: cannot start the guard process ({e}): if this \
                             process dies without detaching, the VM may stay stopped or keep \
                             breakpoints (recover with QemuDriver::recover)"
                        );
                        GuardState::Off
                    }
                }
            };
        }
        match &inner.guard {
            GuardState::Armed(w) => Some(Arc::clone(w)),
            _ => None,
        }
    }

    /// Makes a private directory and asks QEMU to start a gdbstub on a socket in it.
    fn start_private_gdbstub(
        &self,
        qmp: &mut Monitor,
        guard: Option<&Watchdog>,
    ) -> Result<(GdbAddress, PrivateDir), QemuError> {
        let qemu_uid = self.qemu_uid.unwrap_or_else(crate::sys::euid);
        let dir = match &self.gdb_base {
            Some(base) => PrivateDir::create_in(base, qemu_uid)?,
            None => PrivateDir::create(qemu_uid)?,
        };
        let path = dir.path().join("gdb.sock");
        if let Some(g) = guard {
            g.note_private(&path);
        }
        let spec = format!(
            "unix:{},server=on,wait=off",
            path.display().to_string().replace(',', ",,")
        );
        let started = qmp.hmp(&format!("gdbserver {spec}"), None).and_then(|out| {
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_socket() && m.uid() == qemu_uid => Ok(()),
                Ok(m) => {
                    let _ = qmp.hmp("gdbserver none", None);
                    Err(QemuError::GdbUnavailable(format!(
                        "{} is not QEMU's socket (type {:?}, uid {})",
                        path.display(),
                        m.file_type(),
                        m.uid()
                    )))
                }
                Err(_) => Err(QemuError::GdbUnavailable(format!(
                    "HMP gdbserver {spec} failed: {}",
                    out.trim()
                ))),
            }
        });
        match started {
            Ok(()) => Ok((GdbAddress::Unix(path), dir)),
            Err(e) => {
                if let Some(g) = guard {
                    g.note_private_gone();
                }
                Err(e)
            }
        }
    }

    fn connect_gdb(
        &self,
        user_paused: bool,
        guard: Option<Arc<Watchdog>>,
    ) -> Result<GdbSession, QemuError> {
        let (addr, started) = match &self.options.gdb {
            GdbMode::Disabled => {
                return Err(QemuError::GdbUnavailable(
                    "disabled by AttachOptions::gdb".into(),
                ));
            }
            GdbMode::Address(a) => (a.clone(), None),
            GdbMode::Auto => {
                let mut qmp = lock(&self.qmp);
                match find_gdbstub(&mut qmp)? {
                    // A gdbstub whose socket is gone (its directory removed by a guard
                    // after our predecessor died, a guard that could not reach QMP:
                    // libvirt) is stopped and replaced.
                    Some(GdbAddress::Unix(p)) if !p.exists() => {
                        qmp.hmp("gdbserver none", None)?;
                        let (a, dir) = self.start_private_gdbstub(&mut qmp, guard.as_deref())?;
                        (a, Some(dir))
                    }
                    Some(a) => (a, None),
                    None => {
                        let (a, dir) = self.start_private_gdbstub(&mut qmp, guard.as_deref())?;
                        (a, Some(dir))
                    }
                }
            }
        };
        if let Some(g) = &guard {
            g.note_gdb(&addr);
        }
        let handshake = gdb_handshake(
            &addr,
            self.options.greeting_timeout,
            self.options.command_timeout,
        );
        let (mut conn, regmap, threads) = match handshake {
            Ok(x) => x,
            Err(e) => {
                let mut qmp = lock(&self.qmp);
                if let Some(g) = &guard {
                    g.note_gdb_gone();
                }
                if started.is_some() {
                    let _ = qmp.hmp("gdbserver none", None);
                    if let Some(g) = &guard {
                        g.note_private_gone();
                    }
                }
                // Accepting us stopped the VM: let it run again if it ran.
                if !user_paused && query_status(&mut qmp).is_ok_and(|s| s != "running") {
                    let _ = qmp.cont();
                }
                return Err(e);
            }
        };
        // The stub stopped the VM when it accepted us and may have said so (`T02`).
        conn.stops.clear();
        let mut s = GdbSession {
            conn,
            regmap,
            threads,
            current_g: None,
            running: false,
            pending: VecDeque::new(),
            step_over: None,
            stepping: None,
            reinsert: None,
            installed: Vec::new(),
            started,
            guard,
            external_pause: false,
            warned_unknown: false,
        };
        if !user_paused {
            s.resume(self.kvm_bps)?;
        }
        Ok(s)
    }

    /// Runs `f` with the VM stopped under the gdbstub, then lets it run again if it ran.
    fn with_stopped<T>(
        &self,
        f: impl FnOnce(&mut GdbSession) -> Result<T, QemuError>,
    ) -> Result<T, QemuError> {
        let mut inner = lock(&self.inner);
        let s = self.session(&mut inner)?;
        let was_running = s.running;
        s.ensure_stopped()?;
        let r = f(s);
        if was_running {
            self.resume_confirmed(s)?;
        }
        r
    }

    /// Lets the VM run again ([`GdbSession::resume`]) and returns once QEMU runs it. The
    /// gdbstub answers a continue only at the next stop, and QEMU may serve a QMP
    /// command sent after it first: without this, a `query-status` (ours or another
    /// client's: libvirt, a test harness) right after a resume could still say `paused`
    /// or `debug`. A stop that came meanwhile (an event, a pause by another client) is
    /// kept for [`VmiEventControl::wait_for_events`]: QEMU writes its stop reply before
    /// it answers a later QMP command, so `paused`/`debug` with no stop reply waiting
    /// means the continue is not processed yet. One `query-status` when it was.
    fn resume_confirmed(&self, s: &mut GdbSession) -> Result<(), QemuError> {
        s.resume(self.kvm_bps)?;
        if !s.running {
            return Ok(()); // events wait: the VM stays stopped for them
        }
        let deadline = Instant::now() + s.conn.timeout();
        loop {
            let status = query_status(&mut lock(&self.qmp))?;
            if status != "paused" && status != "debug" {
                return Ok(());
            }
            if let Some(p) = s
                .conn
                .wait_stop(Instant::now() + Duration::from_millis(2))?
            {
                return s.stopped_with(&p);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    what: "gdbstub",
                    request: "vCont;c (QEMU still reports the VM stopped)".into(),
                    millis: s.conn.timeout().as_millis(),
                });
            }
        }
    }

    fn event_registers(&self, s: &mut GdbSession, vcpu: usize) -> Result<Registers, QemuError> {
        let mut r = s.read_registers(vcpu)?;
        if self.options.full_event_registers
            && let Ok(text) = lock(&self.qmp).hmp("info registers", Some(vcpu as u16))
            && let Some(m) = regs::parse_info_registers(&text)
        {
            regs::merge_monitor(&mut r, &m);
        }
        Ok(r)
    }

    /// Hands one stop to the handler and applies its answer. Returns whether the handler
    /// ran.
    fn deliver(
        &self,
        s: &mut GdbSession,
        stop: StopReply,
        handler: &mut EventCallback<'_, Amd64>,
    ) -> Result<bool, VmiError> {
        let vcpu = s.vcpu_of(stop.thread.as_deref());
        if let Some(b) = s.reinsert.take() {
            s.conn.request_ok(&b.packet(true))?;
        }
        let registers = self.event_registers(s, vcpu)?;
        let stepped = s.stepping.take() == Some(vcpu);
        let mut hit_bp = None;
        let reason = if let Some((kind, addr)) = &stop.watch {
            EventReason::MemoryAccess {
                va: Some(Va(*addr)),
                pa: None,
                access: match kind.as_str() {
                    "watch" => MemoryAccess::Write,
                    "rwatch" => MemoryAccess::Read,
                    _ => MemoryAccess::ReadWrite,
                },
            }
        } else if stepped {
            EventReason::SingleStep
        } else if let Some(bp) = s.exec_bp_at(registers.rip) {
            hit_bp = Some(bp);
            EventReason::Breakpoint {
                va: Va(registers.rip),
                pa: None,
                kind: if bp.ztype == 0 {
                    BreakpointKind::Software
                } else {
                    BreakpointKind::Hardware
                },
            }
        } else if stop.signal == 5 {
            // Not ours: a breakpoint left behind by an earlier client. Remove it and go on.
            let _ = s.conn.request(&format!("z0,{:x},1", registers.rip));
            let _ = s.conn.request(&format!("z1,{:x},1", registers.rip));
            if !s.warned_unknown {
                s.warned_unknown = true;
                eprintln!(
                    "vmi-driver-qemu: stop not caused by this driver ({}) at {:#x}: \
                     removed a stale breakpoint there and continued",
                    stop.raw, registers.rip
                );
            }
            s.resume(self.kvm_bps)?;
            return Ok(false);
        } else {
            EventReason::Other(format!("gdbstub stop {}", stop.raw))
        };
        let event = VmiEvent {
            vcpu: VcpuId(vcpu as u16),
            reason,
            registers,
        };
        let response = handler(&event);
        let mut rip = event.registers.rip;
        if let Some(new) = &response.set_registers {
            if !self.options.writable {
                // The event is consumed unanswered; the next wait (or the clean-up on
                // drop) lets the VM run again, over the breakpoint.
                if let Some(b) = hit_bp {
                    s.step_over = Some((vcpu, b.addr));
                }
                return Err(QemuError::ReadOnly {
                    operation: "setting vCPU registers in an event response",
                }
                .into());
            }
            s.write_registers(vcpu, &event.registers, new)?;
            rip = new.rip;
        }
        if response.remove_monitor {
            if let Some(bp) = hit_bp {
                self.uninstall(s, bp)?;
            } else if let Some((_, addr)) = &stop.watch {
                let w: Vec<Installed> = s
                    .installed
                    .iter()
                    .filter(|i| i.ztype >= 2 && i.addr <= *addr && *addr < i.addr + i.len)
                    .copied()
                    .collect();
                for i in w {
                    self.uninstall(s, i)?;
                }
            }
        }
        // Monitors the handler started or stopped, while the VM is still stopped.
        for change in &response.monitors {
            match *change {
                MonitorChange::Enable(m) => self.install(s, Self::monitor_to_bp(m)?)?,
                MonitorChange::Disable(m) => self.uninstall(s, Self::monitor_to_bp(m)?)?,
            }
        }
        let at_bp = hit_bp
            .filter(|b| b.addr == rip)
            .and_then(|_| s.exec_bp_at(rip));
        match response.action {
            EventAction::SingleStep => {
                if let (true, Some(b)) = (self.kvm_bps, at_bp) {
                    s.conn.request_ok(&b.packet(false))?;
                    s.reinsert = Some(b);
                }
                let t = s.threads[vcpu].clone();
                s.send_resume(&format!("vCont;s:{t}"))?;
                s.stepping = Some(vcpu);
            }
            _ => {
                if let Some(b) = at_bp {
                    s.step_over = Some((vcpu, b.addr));
                }
                s.resume(self.kvm_bps)?;
            }
        }
        Ok(true)
    }

    /// Inserts `bp`. Under KVM a software breakpoint is an `int3` that QEMU writes into
    /// guest RAM through the page tables of its current vCPU: the driver makes a vCPU
    /// that maps the address current, records the frame byte it replaces (hidden from
    /// reads from then on) and only then lets QEMU write it.
    fn install(&self, s: &mut GdbSession, bp: Installed) -> Result<(), QemuError> {
        if !self.kvm_bps || bp.ztype != 0 || s.installed.contains(&bp) {
            return s.install(bp);
        }
        let mut found = None;
        for vcpu in 0..s.threads.len() {
            if let Some(pa) = self.gva2gpa(vcpu, bp.addr)? {
                found = Some((vcpu, pa));
                break;
            }
        }
        let Some((vcpu, pa)) = found else {
            return Err(QemuError::GdbRefused {
                request: bp.packet(true),
                reply: "no vCPU maps the address (a software breakpoint under KVM is \
                        written into the frame it maps to)"
                    .into(),
            });
        };
        let mut original = [0u8];
        if !self.memory.read_ram(pa, &mut original, &self.qmp)? {
            return Err(QemuError::protocol(
                "gva2gpa",
                format!("{:#x} maps to {pa:#x}, outside guest RAM", bp.addr),
            ));
        }
        // QEMU 7.2 plants through the `Hc` vCPU, later versions through the `Hg` one.
        s.select(vcpu)?;
        let t = s.threads[vcpu].clone();
        s.conn.request_ok(&format!("Hc{t}"))?;
        self.memory.shadow.add(bp.addr, pa, original[0]);
        let r = s.install(bp);
        if r.is_err() {
            self.memory.shadow.remove(bp.addr);
        }
        r
    }

    /// Removes `bp`; under KVM, also its record in the shadow, and a byte written over
    /// its `int3` through the driver reaches RAM now that QEMU put its own back.
    fn uninstall(&self, s: &mut GdbSession, bp: Installed) -> Result<(), QemuError> {
        s.uninstall(bp)?;
        if self.kvm_bps
            && bp.ztype == 0
            && !s
                .installed
                .iter()
                .any(|i| i.addr == bp.addr && i.ztype == 0)
        {
            self.forget_planted(self.memory.shadow.remove(bp.addr))?;
        }
        Ok(())
    }

    /// Writes the byte a user wrote over a removed breakpoint's `int3`.
    fn forget_planted(&self, planted: Option<ShadowByte>) -> Result<(), QemuError> {
        if let Some(b) = planted.filter(|b| b.dirty) {
            self.memory.write_ram(b.pa, &[b.original])?;
        }
        Ok(())
    }

    /// The guest-physical address `va` maps to on `vcpu` (HMP `gva2gpa`), `None` if
    /// unmapped there.
    fn gva2gpa(&self, vcpu: usize, va: u64) -> Result<Option<u64>, QemuError> {
        let cpu = u16::try_from(vcpu).map_err(|_| QemuError::protocol("vCPU", vcpu.to_string()))?;
        let out = lock(&self.qmp).hmp(&format!("gva2gpa {va:#x}"), Some(cpu))?;
        Ok(parse_gva2gpa(&out))
    }

    fn monitor_to_bp(monitor: EventMonitor) -> Result<Installed, VmiError> {
        const BY: &str = "the QEMU gdbstub driver";
        match monitor {
            EventMonitor::Breakpoint {
                address: BreakpointAddress::Virtual(va),
                kind,
            } => Ok(Installed {
                // A user-space address goes to QEMU as a hardware breakpoint: under KVM
                // a software one would be written through the page tables of whatever
                // process the selected vCPU runs (and removed through those of the
                // process it runs then). Under TCG the two kinds are the same thing.
                ztype: match kind {
                    BreakpointKind::Software if !is_user_address(va.0) => 0,
                    _ => 1,
                },
                addr: va.0,
                len: 1,
            }),
            EventMonitor::Watchpoint {
                address: BreakpointAddress::Virtual(va),
                len,
                access,
            } => {
                if access == MemoryAccess::Execute {
                    return Ok(Installed {
                        ztype: 1,
                        addr: va.0,
                        len: 1,
                    });
                }
                if !matches!(len, 1 | 2 | 4 | 8) {
                    return Err(VmiError::InvalidArgument(format!(
                        "watchpoint length {len} (1, 2, 4 or 8)"
                    )));
                }
                Ok(Installed {
                    ztype: match access {
                        MemoryAccess::Write => 2,
                        MemoryAccess::Read => 3,
                        _ => 4,
                    },
                    addr: va.0,
                    len,
                })
            }
            EventMonitor::Breakpoint {
                address: BreakpointAddress::Physical(_),
                ..
            }
            | EventMonitor::Watchpoint {
                address: BreakpointAddress::Physical(_),
                ..
            } => Err(VmiError::not_supported(
                "breakpoints and watchpoints at guest-physical addresses \
                 (QEMU's gdbstub matches virtual addresses only)",
                BY,
            )),
            EventMonitor::PageAccess { .. } => Err(VmiError::not_supported(
                "page-access monitoring (needs second-level paging control)",
                BY,
            )),
            EventMonitor::ControlRegisterWrite(_) => {
                Err(VmiError::not_supported("control-register write events", BY))
            }
            EventMonitor::MsrWrite(_) => Err(VmiError::not_supported("MSR write events", BY)),
            EventMonitor::Cpuid => Err(VmiError::not_supported("CPUID events", BY)),
            EventMonitor::GuestRequest => Err(VmiError::not_supported("guest requests", BY)),
            _ => Err(VmiError::not_supported("this event monitor", BY)),
        }
    }

    /// The clean-up of `Drop`, reporting errors.
    fn cleanup(&mut self) -> Result<(), QemuError> {
        // A borrowed thread still out (a step stuck in the kernel) goes to the guard,
        // which needs the gdbstub: a gdbstub we started is left to it.
        let handover = self
            .borrow
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .is_some_and(|l| l.held);
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let gdb = std::mem::replace(&mut inner.gdb, GdbState::NotConnected);
        let mut first_err = None;
        let mut note = |r: Result<(), QemuError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        if let GdbState::Connected(mut s) = gdb {
            note(s.ensure_stopped());
            if let Some(b) = s.reinsert.take() {
                s.installed.retain(|i| *i != b);
            }
            for b in std::mem::take(&mut s.installed) {
                note(s.conn.request_ok(&b.packet(false)));
            }
            // QEMU put its saved bytes back; a byte written over an `int3` goes now.
            for b in self.memory.shadow.take_all() {
                note(self.forget_planted(Some(b)));
            }
            if self.found_running {
                // Detach: QEMU removes anything left and resumes the VM.
                note(s.conn.request_ok("D;1"));
            }
            drop(s.conn);
            if let Some(dir) = s.started.take() {
                if handover {
                    // The guard stops it and removes the directory.
                    std::mem::forget(dir);
                } else {
                    note(lock(&self.qmp).hmp("gdbserver none", None).map(drop));
                    drop(dir);
                }
            }
        }
        // Whatever happened, leave the run state as found.
        let qmp = self.qmp.get_mut().unwrap_or_else(|p| p.into_inner());
        match query_status(qmp) {
            Ok(status) => {
                if self.found_running && status != "running" {
                    note(qmp.cont());
                } else if !self.found_running && status == "running" {
                    note(qmp.stop());
                }
            }
            Err(e) => note(Err(e)),
        }
        let result = first_err.map_or(Ok(()), Err);
        // All undone: the guard may go. Otherwise it tries again once we are gone.
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        if let GuardState::Armed(w) = &inner.guard {
            if result.is_err() {
                w.note_cleanup_failed();
            } else if handover {
                w.hand_over();
            } else {
                w.disarm();
            }
        }
        result
    }
}

/// Connects to the gdbstub at `addr`, detaches (`D`: QEMU removes every gdb breakpoint
/// and watchpoint and resumes the VM) and disconnects.
fn detach_gdbstub(addr: &GdbAddress, options: &AttachOptions) -> Result<(), QemuError> {
    let mut conn = GdbConn::connect(addr, options.greeting_timeout)?;
    match conn.request("qSupported:multiprocess+") {
        Ok(_) => {}
        Err(QemuError::Timeout { .. }) => {
            return Err(QemuError::GdbUnavailable(format!(
                "busy: another client holds the gdbstub socket {addr}"
            )));
        }
        Err(e) => return Err(e),
    }
    conn.set_timeout(options.command_timeout);
    conn.request_ok("D;1")
}

fn open_access(
    layout: &Layout,
    qmp: &mut Monitor,
    pid: Option<u32>,
    force: Option<AccessPath>,
    writable: bool,
) -> Result<Access, QemuError> {
    let mut why = Vec::new();
    let order: &[AccessPath] = match &force {
        Some(p) => std::slice::from_ref(p),
        None => &[
            AccessPath::Mmap,
            AccessPath::ProcessMemory,
            AccessPath::MonitorXp,
        ],
    };
    for p in order {
        let r = match p {
            AccessPath::Mmap => Access::open_mmap(layout, writable),
            AccessPath::ProcessMemory => match pid {
                Some(pid) => Access::open_process(layout, qmp, pid, writable),
                None => Err("QEMU's pid is unknown".to_string()),
            },
            AccessPath::MonitorXp if writable => {
                Err("read-only (writes were asked for: AttachOptions::writable)".to_string())
            }
            AccessPath::MonitorXp => Ok(Access::Xp),
        };
        match r {
            Ok(a) => return Ok(a),
            Err(e) => why.push(format!("{p:?}: {e}")),
        }
    }
    Err(QemuError::NoRam(format!(
        "no memory access path works: {}",
        why.join("; ")
    )))
}

impl Drop for QemuDriver {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("vmi-driver-qemu: clean-up on detach: {e}");
        }
    }
}

impl VmiDriver for QemuDriver {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        let end = self.memory.layout.end();
        Ok(VmiInfo {
            page_size: PAGE,
            max_gfn: Gfn(end.div_ceil(PAGE).saturating_sub(1)),
            vcpus: self.vcpus,
            live: true,
            cache_pages: self.memory.access.path() != AccessPath::Mmap,
            kind: "qemu",
        })
    }
}

impl QemuDriver {
    fn page_args(gfn: Gfn, offset: usize, len: usize) -> Result<u64, VmiError> {
        if offset.checked_add(len).is_none_or(|e| e as u64 > PAGE) {
            return Err(VmiError::InvalidArgument(format!(
                "offset {offset} + length {len} exceeds the page"
            )));
        }
        gfn.0
            .checked_mul(PAGE)
            .and_then(|b| b.checked_add(offset as u64))
            .ok_or(VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::BeyondMemory,
            })
    }

    fn absent(&self, gfn: Gfn) -> VmiError {
        let beyond = gfn.0.saturating_mul(PAGE) >= self.memory.layout.end();
        VmiError::PageUnavailable {
            gfn,
            reason: if beyond {
                PageAbsence::BeyondMemory
            } else {
                PageAbsence::NotRam
            },
        }
    }
}

impl VmiRead for QemuDriver {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        let gpa = Self::page_args(gfn, offset, buf.len())?;
        if self.memory.read(gpa, buf, &self.qmp)? {
            Ok(())
        } else {
            Err(self.absent(gfn))
        }
    }

    /// With the process-memory access path, every piece in one `process_vm_readv` pass
    /// over QEMU's memory (per 1024 pieces); a piece the pass could not read, and every
    /// piece on the other paths, is read on its own (its own error).
    fn read_pages(&self, reads: &mut [PageRead<'_>]) -> Vec<Result<(), VmiError>> {
        let mut done = vec![false; reads.len()];
        if self.memory.access.path() == AccessPath::ProcessMemory {
            let mut pid = None;
            let mut pieces: Vec<(u64, &mut [u8])> = Vec::with_capacity(reads.len());
            let mut ids = Vec::with_capacity(reads.len());
            for (i, r) in reads.iter_mut().enumerate() {
                let address = Self::page_args(r.gfn, r.offset, r.buf.len())
                    .ok()
                    .and_then(|gpa| self.memory.process_address(gpa, r.buf.len()));
                if let Some((p, hva)) = address {
                    pid = Some(p);
                    pieces.push((hva, &mut *r.buf));
                    ids.push(i);
                }
            }
            if let Some(pid) = pid {
                let read = crate::sys::process_vm_read(pid, &mut pieces);
                for &i in &ids[..read] {
                    done[i] = true;
                }
            }
        }
        reads
            .iter_mut()
            .zip(done)
            .map(|(r, done)| {
                if done {
                    Ok(())
                } else {
                    self.read_page(r.gfn, r.offset, r.buf)
                }
            })
            .collect()
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        Ok(self
            .memory
            .layout
            .merged()
            .into_iter()
            .map(|(s, e)| Pa(s)..Pa(e))
            .collect())
    }
}

impl VmiWrite for QemuDriver {
    fn write_page(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), VmiError> {
        let gpa = Self::page_args(gfn, offset, data.len())?;
        if !self.options.writable {
            return Err(QemuError::ReadOnly {
                operation: "writing guest memory",
            }
            .into());
        }
        if !self.memory.access.writable() {
            return Err(VmiError::not_supported(
                "writing guest memory on this access path",
                "the QEMU driver (HMP xp)",
            ));
        }
        if self.memory.write(gpa, data)? {
            Ok(())
        } else {
            Err(self.absent(gfn))
        }
    }
}

impl VmiQueryRegisters for QemuDriver {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        let v = self.check_vcpu(vcpu)?;
        let r = self.with_stopped(|s| {
            let mut r = s.read_registers(v)?;
            let text = lock(&self.qmp).hmp("info registers", Some(vcpu.0))?;
            if let Some(m) = regs::parse_info_registers(&text) {
                regs::merge_monitor(&mut r, &m);
            }
            Ok(r)
        });
        match r {
            Ok(r) => Ok(r),
            Err(QemuError::GdbUnavailable(_)) => self.monitor_registers(vcpu),
            Err(e) => Err(e.into()),
        }
    }
}

impl VmiSetRegisters for QemuDriver {
    fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), VmiError> {
        let v = self.check_vcpu(vcpu)?;
        if !self.options.writable {
            return Err(QemuError::ReadOnly {
                operation: "setting vCPU registers",
            }
            .into());
        }
        self.with_stopped(|s| {
            let old = s.read_registers(v)?;
            s.write_registers(v, &old, registers)
        })
        .map_err(|e| match e {
            QemuError::GdbUnavailable(_) => {
                VmiError::not_supported("setting registers without the gdbstub", "the QEMU driver")
            }
            e => e.into(),
        })
    }
}

impl VmiVmControl for QemuDriver {
    fn pause(&self) -> Result<(), VmiError> {
        let mut inner = lock(&self.inner);
        self.arm_guard(&mut inner);
        inner.user_paused = true;
        if let GdbState::Connected(s) = &mut inner.gdb {
            s.ensure_stopped()?;
            return Ok(());
        }
        lock(&self.qmp).stop()?;
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        let mut inner = lock(&self.inner);
        self.arm_guard(&mut inner);
        inner.user_paused = false;
        if let GdbState::Connected(s) = &mut inner.gdb {
            s.external_pause = false;
            self.resume_confirmed(s)?;
            return Ok(());
        }
        lock(&self.qmp).cont()?;
        Ok(())
    }

    /// QEMU's run state (`query-status`). On a libvirt domain with no gdbstub session,
    /// libvirt's own state when it is certain (running, or suspended through libvirt):
    /// nothing but libvirt and our gdbstub can stop or start that QEMU, and libvirt
    /// updates its state before its suspend and resume return, in 1 ms instead of the
    /// 5 ms of a monitor command (measured on libvirt 9.0 under load).
    ///
    /// On a libvirt domain held stopped by our gdbstub session, `debug` (what
    /// `query-status` says then) without asking.
    fn state(&self) -> Result<VmState, VmiError> {
        let libvirt = matches!(*lock(&self.qmp), Monitor::Libvirt(_));
        if !libvirt {
            return Ok(vm_state(&query_status(&mut lock(&self.qmp))?));
        }
        let gdb_idle = match &lock(&self.inner).gdb {
            GdbState::Connected(s) if !s.running && !s.external_pause => {
                return Ok(VmState::Debug);
            }
            GdbState::Connected(_) => false,
            GdbState::NotConnected | GdbState::Unavailable(_) => true,
        };
        let mut qmp = lock(&self.qmp);
        if gdb_idle && let Monitor::Libvirt(d) = &mut *qmp {
            match d.quick_state()? {
                Some(true) => return Ok(VmState::Running),
                Some(false) => return Ok(VmState::Paused),
                None => {}
            }
        }
        Ok(vm_state(&query_status(&mut qmp)?))
    }
}

impl VmiEventControl for QemuDriver {
    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        let bp = Self::monitor_to_bp(monitor)?;
        Ok(self.with_stopped(|s| self.install(s, bp))?)
    }

    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        let bp = Self::monitor_to_bp(monitor)?;
        Ok(self.with_stopped(|s| self.uninstall(s, bp))?)
    }

    fn wait_for_events(
        &self,
        timeout: Duration,
        handler: &mut EventCallback<'_, Amd64>,
    ) -> Result<usize, VmiError> {
        let deadline = Instant::now() + timeout;
        let mut inner = lock(&self.inner);
        if matches!(inner.gdb, GdbState::NotConnected) {
            // Nothing was ever monitored: there is nothing to wait for.
            drop(inner);
            std::thread::sleep(timeout);
            return Ok(0);
        }
        // The VM runs while we wait for events.
        inner.user_paused = false;
        let s = self.session(&mut inner)?;
        loop {
            if let Some(stop) = s.pending.pop_front() {
                if self.deliver(s, stop, handler)? {
                    return Ok(1);
                }
                continue;
            }
            if s.external_pause {
                // Paused by another QMP client: wait until someone resumes it.
                let status = query_status(&mut lock(&self.qmp))?;
                if status == "running" {
                    s.external_pause = false;
                    s.running = true;
                } else {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(0);
                    }
                    std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
                    continue;
                }
            }
            if !s.running {
                s.resume(self.kvm_bps)?;
                continue;
            }
            match s.conn.wait_stop(deadline)? {
                None => return Ok(0),
                Some(p) => s.stopped_with(&p)?,
            }
        }
    }

    /// Journals the thread to the guard process, which gives it back if this process
    /// dies first: see the `watchdog` module. Needs the guard (on by default) and a
    /// connected gdbstub (the caller's breakpoints connect it).
    fn guard_borrowed_thread(
        &self,
        thread: &BorrowedThread<'_, Registers>,
    ) -> Result<(), VmiError> {
        let mut link = lock(&self.borrow);
        let Some(link) = link.as_mut() else {
            return Err(VmiError::not_supported(
                "giving a borrowed thread back after a crash",
                "the QEMU driver without its guard process or gdbstub connection",
            ));
        };
        let plan = link.plan(thread)?;
        link.held = false;
        link.guard
            .note_borrowed(&plan, thread.original, &link.threads)
            .map_err(|m| VmiError::from(QemuError::protocol("guard journal", m)))?;
        link.held = true;
        Ok(())
    }

    fn release_borrowed_thread(&self) {
        if let Some(link) = lock(&self.borrow).as_mut() {
            link.guard.note_released();
            link.held = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gva2gpa_answers() {
        assert_eq!(parse_gva2gpa("gpa: 0x1a2b3c\r\n"), Some(0x1a2b3c));
        assert_eq!(parse_gva2gpa("gpa: 0x0\n"), Some(0));
        assert_eq!(parse_gva2gpa("Unmapped\r\n"), None);
        assert_eq!(parse_gva2gpa("gpa: 0xzz\n"), None);
        assert_eq!(parse_gva2gpa(""), None);
    }

    #[test]
    fn user_space_software_breakpoints_go_to_qemu_as_hardware_ones() {
        let bp = |va: u64, kind| {
            QemuDriver::monitor_to_bp(EventMonitor::Breakpoint {
                address: BreakpointAddress::Virtual(Va(va)),
                kind,
            })
            .unwrap()
            .ztype
        };
        assert_eq!(bp(0x7f00_0000_1000, BreakpointKind::Software), 1);
        assert_eq!(bp(0x40_1000, BreakpointKind::Hardware), 1);
        assert_eq!(bp(0xffff_ffff_8100_0000, BreakpointKind::Software), 0);
        assert_eq!(bp(0xffff_ffff_8100_0000, BreakpointKind::Hardware), 1);
    }
}
