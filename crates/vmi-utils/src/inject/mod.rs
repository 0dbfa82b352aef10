//! [`Injector`]: runs system calls inside a live Linux process without an agent, by
//! borrowing one of its threads, then gives the thread back exactly as it was.
//!
//! # How
//!
//! 1. **Safe point.** The thread's user instruction pointer saved at its last kernel
//!    entry (`pt_regs->ip`, [`LinuxOs::syscall_frame`], read again every 50 ms while
//!    waiting: a busy thread's moves at each timer interrupt) gets a breakpoint in the
//!    process's own address space only (matched by page-table root; other threads of
//!    the process are told apart by the current task). When the thread runs that
//!    instruction it is in user mode, between two instructions, outside any system
//!    call: no `-ERESTARTSYS` restart can re-run or rewind anything of ours. A thread
//!    that does not get there within [`InjectOptions::safe_point_timeout`] gives
//!    [`InjectError::NoSafePoint`] and the guest is left untouched.
//! 2. **Save.** Every register of the event; the bytes of the *scratch* area, the
//!    writable, present stack pages below the red zone (`rsp - 128`, at most
//!    [`InjectOptions::max_scratch`] bytes).
//! 3. **Steps.** Each step's data ([`Arg::Bytes`], [`Arg::Out`]) goes into the scratch
//!    area; `rip` is set to a `syscall` instruction (`0f 05`) already mapped executable
//!    in the process (its vDSO first, then the text of its mapped files), with
//!    `rax, rdi, rsi, rdx, r10, r8, r9` and `rsp` below the scratch area (a signal
//!    frame lands below our data). A breakpoint right after that instruction reports
//!    the result in `rax` (single-stepping a `syscall` would stop at the kernel's
//!    entry, not at its return); the [`Recipe`] sees it and chooses the next step.
//! 4. **Restore.** The scratch bytes are written back as saved; the general-purpose
//!    registers, `rip`, `rflags`, segment selectors and FS/GS bases are set back (the
//!    control registers are the kernel's and are not touched). With
//!    [`InjectOptions::verify`], a breakpoint at the restored `rip` stops the thread
//!    once more: the registers the driver reads there and the scratch bytes read again
//!    are compared with what was saved ([`InjectReport::restored`]).
//!
//! **A user function** ([`Syscall::function`], found with [`Injector::find_function`]):
//! `rip` is the function, its arguments go in `rdi, rsi, rdx, rcx, r8, r9`, `rsp` points
//! at a return address (inside the scratch area) that leads to the same breakpoint after
//! the `syscall` instruction, with the same `rsp` a system call step returns with; the
//! result is `rax`. The function's own frames go below the scratch area, into stack the
//! thread holds no data in (below its red zone).
//!
//! **A new process** ([`Recipe::exec`]): a `clone` step may carry the `execve` its
//! child runs ([`Syscall::child`]). The child's data is placed before the `clone`, so
//! the child has its own copy; a breakpoint after the `syscall` in any address space
//! catches the child's first return (the new task, `rax` 0, our stack pointer) and
//! points it at `execve`. Until the child's `mm` changes (`execve` has copied its
//! arguments) the parent is held in `sched_yield` steps: restoring our scratch bytes
//! earlier would write through pages the child still shares copy-on-write. An
//! `execve` that returns (failed) makes the child `exit(127)`. `fork`, `vfork`,
//! `execve`, `exit` and the like are refused as plain steps ([`REFUSED_SYSCALLS`]).
//!
//! On a recipe failure, a guest read or write error during a step, a panic in the
//! recipe, too many steps or the stop flag (Ctrl-C), the thread is restored at its next
//! stop before `run` returns. A step that stays inside the kernel longer than
//! [`InjectOptions::step_timeout`] (a blocking read of a pipe) cannot be taken back at
//! once: [`InjectError::StuckInSyscall`] says so, and whether the driver's crash guard
//! gives the thread back when the call returns, after the session (the driver) ends. At most one injection runs per thread in
//! this host process.
//!
//! **A host process that dies mid-recipe** (SIGKILL, OOM killer, crash): before it
//! changes anything, the injector journals the thread to the driver's crash guard
//! ([`VmiEventControl::guard_borrowed_thread`]): the page-table root, the `rip`/`rsp`
//! where each step returns, the saved registers and the scratch bytes. The QEMU driver's
//! guard process then waits for the thread to come back from the step in flight (up to
//! [`InjectOptions::step_timeout`]), writes the user registers and the scratch bytes back,
//! reads them back, sends a process forked by an `exec` step that has not yet reached its
//! `execve` to `exit(127)`, and only then removes the breakpoints and lets the VM go.
//! System calls already made are not undone (a file opened by a cut recipe stays open in
//! the process). A driver without such a guard says so ([`InjectReport::crash_guard`]).
//! A driver that fails in the middle of a step while this process lives leaves the thread
//! with the injector's registers ([`InjectError::Lost`]).
//!
//! **Xen.** The injector needs only the core's traits: over `vmi-driver-xen` its
//! breakpoints are `int3`s the driver plants in the process's frames (the manager
//! follows them by physical address) and the registers travel in vm_event responses.
//! That is tested on the driver's in-memory fake, holding the memory of the live test
//! guest at a moment its busy process runs, with the test playing the vCPU (it raises
//! the breakpoint events and carries out the system calls): `getpid`, a `write` whose
//! bytes it reads, a `read` whose buffer it fills, then the thread restored and
//! verified and the domain's memory byte-identical to the copy. The nested Xen of this
//! project's machines cannot deliver breakpoint events, so there is no live Xen test.
//! The Xen driver has no crash guard ([`InjectReport::crash_guard`] says so).
//!
//! **A buffer** ([`InjectOptions::buffer`], off by default): a step whose data or output
//! does not fit the stack's scratch area makes the injector run `mmap` (private,
//! anonymous, populated) in the process first and place the step's data or output in it;
//! the buffer is unmapped (`munmap`) before the thread is restored, also after a failure
//! or Ctrl-C. [`Recipe::cat`] reads what fits the stack first and asks for whole chunks
//! only once a read filled it (a small file maps nothing).
//!
//! # Measured
//!
//! `benches/inject.rs`, `Recipe::cat` into a busy shell loop of the live test guest
//! under QEMU TCG (2-core host, beside a full test run), 5 rounds each: a 4 KiB file in
//! 100-310 ms (4 system calls with or without a buffer, 6 breakpoint hits: safe point, one per call, the
//! verification stop); a 1 MiB file in 2.6-6.6 s without a buffer (176-199 calls, as
//! many hits plus 2: each `read` gets the 4-6 KiB of present stack below the red zone)
//! and in 0.20-0.38 s with a 1 MiB buffer (7 calls: `openat`, a stack-sized `read`,
//! `mmap`, `read` of the rest, `read` of 0, `close`, `munmap`; 9 hits). The whole
//! `vmi inject cat` command (attach, kernel discovery with a cached profile, debug build)
//! takes 0.45-0.9 s for a small file.

mod elf;
mod recipe;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use recipe::{
    AT_FDCWD, Arg, Decide, MAX_ARGS, Next, O_RDONLY_CLOEXEC, O_WRITE_CREATE_CLOEXEC,
    REFUSED_SYSCALLS, Recipe, StepOutcome, Syscall, errno_text, nr, refusal,
};
use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    AccessContext, AddressContext, BorrowedThread, Pa, Va, VmiCore, VmiError, VmiEvent,
    VmiEventControl, VmiEventResponse, VmiRead, VmiVmControl, VmiWrite,
};
use vmi_os_linux::{LinuxOs, LinuxTask, vm_flags};

use crate::bpm::{AddressSpace, BreakpointId, BreakpointManager, Hit};

/// Bytes below the user stack pointer that a leaf function may use without moving it
/// (the System V x86-64 red zone).
pub const RED_ZONE: u64 = 128;
/// Smallest scratch area an injection accepts.
pub const MIN_SCRATCH: usize = 512;
/// Most bytes of executable mappings read while looking for a `syscall` instruction.
pub const MAX_SYSCALL_SCAN: u64 = 32 << 20;
const PAGE: u64 = 4096;
/// Most safe-point breakpoints set while waiting for one thread.
const MAX_SAFE_POINTS: usize = 16;

/// Limits of one injection.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    /// How long to wait for the thread to reach its safe point (default 10 s).
    pub safe_point_timeout: Duration,
    /// How long one system call may take (default 30 s).
    pub step_timeout: Duration,
    /// Most steps of a recipe (default 100 000).
    pub max_steps: u64,
    /// Most bytes of the scratch area (default 64 KiB).
    pub max_scratch: usize,
    /// Stop the restored thread once more to read its registers and the scratch bytes
    /// back (default on).
    pub verify: bool,
    /// Most bytes of a buffer the injector may map in the process (`mmap` of private
    /// anonymous memory, `munmap` before the restore) for a step whose data or output
    /// does not fit the stack's scratch area: large reads and writes then take one step
    /// per buffer instead of one per few KiB. 0 (the default) never maps: the process's
    /// address space is not touched. A `vmi` killed while the buffer is mapped leaves it
    /// mapped (the crash guard restores the thread, not the mapping).
    pub buffer: usize,
}

impl Default for InjectOptions {
    fn default() -> Self {
        Self {
            safe_point_timeout: Duration::from_secs(10),
            step_timeout: Duration::from_secs(30),
            max_steps: 100_000,
            max_scratch: 64 << 10,
            verify: true,
            buffer: 0,
        }
    }
}

/// Why an injection failed. Unless the variant says otherwise, the thread was restored
/// (or never touched) before the error was returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// The pid is a kernel thread: it has no user mode to borrow.
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user space to inject into")]
    KernelThread {
        /// The pid.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// The process has exited (a zombie) or its thread is exiting.
    #[error("pid {pid} ({comm}) has exited (zombie): nothing runs there")]
    Zombie {
        /// The pid.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// The process has no address space (`mm`) or its page-table root is unreadable.
    #[error("pid {pid} ({comm}) has no usable address space")]
    NoAddressSpace {
        /// The pid.
        pid: u32,
        /// Its name.
        comm: String,
    },
    /// No `syscall` instruction is mapped executable and present in the process (looked
    /// for until the safe-point timeout: a process not yet run since its fork has none).
    #[error(
        "pid {pid}: no syscall instruction found in the pages of its vDSO or mapped code it has in memory ({scanned} bytes scanned, until the safe-point timeout)"
    )]
    NoSyscallInstruction {
        /// The pid.
        pid: u32,
        /// Bytes looked at.
        scanned: u64,
    },
    /// The thread did not reach a safe point in user mode in time; the guest is
    /// untouched.
    #[error(
        "pid {pid}: thread {tid} did not return to user mode at {rip:#x} within {waited:?} (blocked in the kernel?); nothing was changed{}",
        others_hint(others)
    )]
    NoSafePoint {
        /// The pid.
        pid: u32,
        /// The thread waited for.
        tid: u32,
        /// The user instruction waited for.
        rip: u64,
        /// How long.
        waited: Duration,
        /// The process's other threads (one of them may run user code more often).
        others: Vec<u32>,
    },
    /// No ELF object mapped in the process exports the function.
    #[error("pid {pid}: no function {symbol} in {}{}", if objects.is_empty() { "any ELF object it maps".to_string() } else { objects.join(", ") }, if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) })]
    NoSuchFunction {
        /// The pid.
        pid: u32,
        /// The symbol looked for.
        symbol: String,
        /// The objects searched (paths).
        objects: Vec<String>,
        /// Objects whose tables could not be read, with why.
        problems: Vec<String>,
    },
    /// The process has no thread with this id.
    #[error("pid {pid} has no thread {tid}{}", others_hint(others))]
    NoSuchThread {
        /// The pid.
        pid: u32,
        /// The thread asked for.
        tid: u32,
        /// The process's threads.
        others: Vec<u32>,
    },
    /// Too little writable, present stack below the red zone; the guest is untouched.
    #[error(
        "pid {pid}: only {available} bytes of present, writable stack below the red zone at rsp {rsp:#x}"
    )]
    NoScratch {
        /// The pid.
        pid: u32,
        /// The thread's stack pointer.
        rsp: u64,
        /// Bytes available.
        available: usize,
    },
    /// A step asks for what cannot be done (more than six arguments, data larger than
    /// the scratch area, two output buffers, a call in [`REFUSED_SYSCALLS`]).
    #[error("step {step} ({name}): {reason}")]
    InvalidStep {
        /// The step's index.
        step: u64,
        /// The call's name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The recipe gave up ([`Next::Fail`]) or panicked.
    #[error("{0}")]
    Recipe(String),
    /// The recipe ran more than [`InjectOptions::max_steps`] steps.
    #[error("the recipe ran more than {0} steps")]
    TooManySteps(u64),
    /// The stop flag was set (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// Another injection holds this thread.
    #[error("thread {tid} is already hijacked by another injection")]
    AlreadyHijacked {
        /// The thread.
        tid: u32,
    },
    /// A step did not return within [`InjectOptions::step_timeout`]: the thread is still
    /// inside the kernel with the injector's registers. With `guarded`, the driver's
    /// guard process gives it back once the driver is dropped and the step returns (it
    /// waits up to the step timeout again); without, it is **not** restored.
    #[error(
        "step {step} ({name}) did not return within {waited:?}: the thread is still in the system call; {}",
        if *guarded { "the driver's guard process gives it back when the call returns, once this session ends (it waits as long again)" } else { "it could not be restored" }
    )]
    StuckInSyscall {
        /// The step's index.
        step: u64,
        /// The call's name.
        name: &'static str,
        /// How long.
        waited: Duration,
        /// Left to the driver's crash guard.
        guarded: bool,
    },
    /// A guest read or write failed (restored if the thread was hijacked).
    #[error(transparent)]
    Vmi(#[from] VmiError),
    /// The driver failed while the thread was hijacked: it could not be restored.
    #[error("the driver failed while the thread was hijacked; it could not be restored")]
    Lost(#[source] VmiError),
}

/// A function found in a process ([`Injector::find_function`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its address (for an indirect function, its resolver's).
    pub address: Va,
    /// The path of the object that exports it.
    pub object: String,
    /// A GNU indirect function (`STT_GNU_IFUNC`, e.g. glibc's `strlen`): `address` is a
    /// resolver that takes no argument and returns the implementation's address, to
    /// call in a second step.
    pub indirect: bool,
}

/// ` (threads of the process: 1, 2, ...)` for an error message.
fn others_hint(others: &[u32]) -> String {
    if others.is_empty() {
        return String::new();
    }
    let mut list: Vec<String> = others.iter().take(32).map(u32::to_string).collect();
    if others.len() > 32 {
        list.push(format!("... ({} in all)", others.len()));
    }
    format!(" (other threads of the process: {})", list.join(", "))
}

/// The user-visible state of a thread that an injection saves and restores.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)] // register names are their documentation
pub struct UserRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    /// Selectors of CS, SS, DS, ES, FS, GS.
    pub selectors: [u16; 6],
}

impl UserRegisters {
    /// The user state of `r`.
    pub fn of(r: &Registers) -> Self {
        Self {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            rsp: r.rsp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
            fs_base: r.fs_base,
            gs_base: r.gs_base,
            selectors: [
                r.cs.selector,
                r.ss.selector,
                r.ds.selector,
                r.es.selector,
                r.fs.selector,
                r.gs.selector,
            ],
        }
    }

    /// `base` with this user state put back (control registers and MSRs of `base` kept).
    fn apply(&self, base: &Registers) -> Registers {
        let mut r = base.clone();
        r.rax = self.rax;
        r.rbx = self.rbx;
        r.rcx = self.rcx;
        r.rdx = self.rdx;
        r.rsi = self.rsi;
        r.rdi = self.rdi;
        r.rbp = self.rbp;
        r.rsp = self.rsp;
        r.r8 = self.r8;
        r.r9 = self.r9;
        r.r10 = self.r10;
        r.r11 = self.r11;
        r.r12 = self.r12;
        r.r13 = self.r13;
        r.r14 = self.r14;
        r.r15 = self.r15;
        r.rip = self.rip;
        r.rflags = self.rflags;
        r.fs_base = self.fs_base;
        r.gs_base = self.gs_base;
        r.cs.selector = self.selectors[0];
        r.ss.selector = self.selectors[1];
        r.ds.selector = self.selectors[2];
        r.es.selector = self.selectors[3];
        r.fs.selector = self.selectors[4];
        r.gs.selector = self.selectors[5];
        r
    }
}

/// One step as it ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// The call's name.
    pub name: &'static str,
    /// Its number.
    pub nr: u64,
    /// Its arguments (as passed, addresses of placed data included).
    pub args: Vec<u64>,
    /// Its result (`-errno` on failure).
    pub ret: i64,
}

/// What an injection did.
#[derive(Clone, Debug)]
pub struct InjectReport {
    /// The process.
    pub pid: u32,
    /// The thread borrowed.
    pub tid: u32,
    /// The user instruction where the thread was taken (its safe point).
    pub safe_point: Va,
    /// The `syscall` instruction used.
    pub syscall_at: Va,
    /// The scratch area `[start, end)` below the red zone.
    pub scratch: (Va, Va),
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// The thread's user registers when it was taken.
    pub saved: UserRegisters,
    /// Its user registers read back by the driver at the verification stop after the
    /// restore (`None` without [`InjectOptions::verify`] or when the thread did not
    /// stop there in time).
    pub restored: Option<UserRegisters>,
    /// Whether the scratch bytes read back at the verification stop equal those saved.
    pub memory_restored: Option<bool>,
    /// For a recipe that started a process ([`Recipe::exec`]): `Some(None)` when its
    /// `execve` succeeded, `Some(Some(-errno))` when it failed (the child then exited
    /// with code 127).
    pub child_exec: Option<Option<i64>>,
    /// Whether the driver's crash guard would have given the thread back had this
    /// process died mid-recipe (`Err`: why not, e.g. a driver without a guard). `Ok` when
    /// the thread was never taken.
    pub crash_guard: Result<(), String>,
    /// Breakpoint events that were ours (safe point, one per step, verification).
    pub hits: u64,
    /// Breakpoint events at our addresses that were another thread's.
    pub foreign_hits: u64,
    /// From the start of `run` to the thread's arrival at its safe point (most of it
    /// is waiting for the thread to run user code).
    pub taken_after: Duration,
    /// From the start of `run` to the restore.
    pub elapsed: Duration,
}

/// Threads (by `task_struct`) an injection of this host process holds.
static HIJACKED: Mutex<BTreeSet<u64>> = Mutex::new(BTreeSet::new());

/// Holds a thread for one injection; released on drop.
struct ThreadClaim(u64);

impl ThreadClaim {
    fn take(task: Va, tid: u32) -> Result<Self, InjectError> {
        let mut set = HIJACKED.lock().unwrap_or_else(|p| p.into_inner());
        if !set.insert(task.0) {
            return Err(InjectError::AlreadyHijacked { tid });
        }
        Ok(Self(task.0))
    }
}

impl Drop for ThreadClaim {
    fn drop(&mut self) {
        HIJACKED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tag {
    SafePoint,
    Return,
    Verify,
    /// A new process's first return from `clone` (any address space).
    Child,
}

/// The new process of a step with a [`Syscall::child`].
enum Child {
    None,
    /// Waiting for its first return from `clone`: it then runs `call`.
    Expect {
        nr: u64,
        args: [u64; MAX_ARGS],
        rsp: u64,
        bp: BreakpointId,
        since: Instant,
    },
    /// Sent into `execve`: it either returns (failed: it is made to exit) or its address
    /// space changes (done).
    Exec {
        task: Va,
        tid: u32,
        /// Its `mm` before `execve` (its own copy of ours since `clone`).
        mm: Option<Va>,
        bp: BreakpointId,
        since: Instant,
    },
    /// Gone through: `execve`'s error, `None` when it succeeded.
    Done(Option<i64>),
}

/// The call in flight.
struct InCall {
    index: u64,
    /// A step of the injector's own (the buffer's `mmap`/`munmap`), not the recipe's.
    internal: bool,
    name: &'static str,
    nr: u64,
    args: [u64; MAX_ARGS],
    argc: usize,
    out: Option<(u64, usize)>,
    rsp: u64,
    started: Instant,
}

/// The thread is ours: what to give back.
struct Taken {
    saved: Registers,
    lo: u64,
    original: Vec<u8>,
    ret_bp: Option<BreakpointId>,
}

enum Phase {
    Waiting,
    InCall(InCall),
    Verifying {
        since: Instant,
        bp: Option<BreakpointId>,
    },
    Finished,
}

struct Run<'r, 'a> {
    pid: u32,
    tid: u32,
    root: Pa,
    syscall_at: u64,
    recipe: &'r mut Recipe<'a>,
    phase: Phase,
    taken: Option<Taken>,
    steps: Vec<StepRecord>,
    /// The error to return once the thread is restored.
    error: Option<InjectError>,
    restored: Option<UserRegisters>,
    memory_restored: Option<bool>,
    restored_at: Option<Instant>,
    taken_at: Option<Instant>,
    /// Safe-point breakpoints: user instructions of the thread (every `pt_regs->ip`
    /// seen while waiting).
    safe_points: Vec<(u64, BreakpointId)>,
    child: Child,
    /// The parent's result of the `clone`, held back (the parent runs `sched_yield`)
    /// until the child is through `execve`: until then its copy of the scratch area
    /// shares pages with ours, and our restore would rewrite its arguments.
    parked: Option<(InCall, i64)>,
    child_exec: Option<Option<i64>>,
    /// A safe point passed up because the stack below the red zone was not yet
    /// writable (e.g. still shared copy-on-write after a fork): the error if no later
    /// safe point does better.
    scratch_refusal: Option<InjectError>,
    /// The driver's crash guard holds the thread (released once it is given back).
    guard_holds: &'r Cell<bool>,
    /// What the driver said when asked to guard the thread.
    crash_guard: Result<(), String>,
    /// The buffer mapped in the process (address, length).
    buffer: Option<(u64, usize)>,
    /// Mapping it failed: the steps make do with the stack.
    buffer_failed: bool,
    /// The recipe's step waiting for the buffer's `mmap`.
    pending: Option<(u64, Syscall)>,
}

/// Tells the driver's crash guard to forget the thread when an injection ends, however
/// it ends.
struct GuardRelease<'d, D: VmiEventControl> {
    driver: &'d D,
    holds: Cell<bool>,
}

impl<D: VmiEventControl> GuardRelease<'_, D> {
    /// Once the restore is applied (the event's answer is in the vCPU).
    fn release(&self) {
        if self.holds.replace(false) {
            self.driver.release_borrowed_thread();
        }
    }

    /// The thread is still out (a step stuck in the kernel): left to the driver's guard,
    /// which gives it back when the driver is dropped and the step returns.
    fn leave_to_guard(&self) -> bool {
        self.holds.replace(false)
    }
}

impl<D: VmiEventControl> Drop for GuardRelease<'_, D> {
    fn drop(&mut self) {
        self.release();
    }
}

/// `PROT_READ | PROT_WRITE`.
const PROT_READ_WRITE: u64 = 0x3;
/// `MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE`: the pages exist at once, so that the
/// injector can write a step's data into them from outside.
const MAP_PRIVATE_ANONYMOUS: u64 = 0x02 | 0x20 | 0x8000;

/// Bytes at the bottom of the scratch area kept for a function call's return address
/// (at `lo + 8`); the steps' data starts above them.
const STEP_FRAME: u64 = 16;

/// The stack pointer of every step, and of a called function once it returned: the
/// bottom of the data (a signal frame lands below it, and below the red zone under it).
/// `lo` is 16-byte aligned, so a called function's entry `rsp` (`lo + 8`, holding the
/// return address) is 8 modulo 16, as the ABI has it after a `call`.
fn step_rsp(lo: u64) -> u64 {
    lo + STEP_FRAME
}

/// Runs [`Recipe`]s in Linux processes of a live guest. See the [module docs](self).
pub struct Injector<'a, D: VmiRead + VmiEventControl> {
    core: &'a VmiCore<D>,
    os: &'a LinuxOs,
    options: InjectOptions,
    stop: Option<&'a AtomicBool>,
}

impl<'a, D> Injector<'a, D>
where
    D: VmiRead<Architecture = Amd64> + VmiEventControl + VmiWrite + VmiVmControl,
{
    /// An injector over `core` with default options.
    pub fn new(core: &'a VmiCore<D>, os: &'a LinuxOs) -> Self {
        Self {
            core,
            os,
            options: InjectOptions::default(),
            stop: None,
        }
    }

    /// Uses these options.
    pub fn with_options(mut self, options: InjectOptions) -> Self {
        self.options = options;
        self
    }

    /// Stops (restoring the thread) when `stop` is set, e.g. by a Ctrl-C handler.
    pub fn with_stop(mut self, stop: &'a AtomicBool) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopped(&self) -> bool {
        self.stop.is_some_and(|s| s.load(Ordering::SeqCst))
    }

    /// The process `pid`'s main thread, checked to be a user process that can run code.
    pub fn target(&self, pid: u32) -> Result<(LinuxTask, Pa), InjectError> {
        self.target_thread(pid, None)
    }

    /// [`InjectError::NoSafePoint`], with the process's other threads (read with the VM
    /// paused; none when they cannot be read).
    fn no_safe_point(&self, pid: u32, tid: u32, rip: u64, waited: Duration) -> InjectError {
        let others = self
            .core
            .pause_guard()
            .ok()
            .and_then(|_pause| {
                let leader = self.os.find_process(self.core, pid).ok()?;
                let threads = self.os.threads_of(self.core, leader.task).ok()?;
                Some(
                    threads
                        .tasks
                        .iter()
                        .map(|t| t.pid)
                        .filter(|&t| t != tid)
                        .collect(),
                )
            })
            .unwrap_or_default();
        InjectError::NoSafePoint {
            pid,
            tid,
            rip,
            waited,
            others,
        }
    }

    /// Thread `tid` of process `pid` (its main thread for `None`), checked to be a user
    /// thread that can run code.
    pub fn target_thread(
        &self,
        pid: u32,
        tid: Option<u32>,
    ) -> Result<(LinuxTask, Pa), InjectError> {
        let leader = self.os.find_process(self.core, pid)?;
        if leader.is_kernel_thread() {
            return Err(InjectError::KernelThread {
                pid,
                comm: leader.comm,
            });
        }
        let task = match tid {
            Some(tid) if tid != pid => {
                let threads = self.os.threads_of(self.core, leader.task)?.tasks;
                match threads.iter().position(|t| t.pid == tid) {
                    Some(i) => threads.into_iter().nth(i).unwrap_or(leader),
                    None => {
                        return Err(InjectError::NoSuchThread {
                            pid,
                            tid,
                            others: threads.iter().map(|t| t.pid).collect(),
                        });
                    }
                }
            }
            _ => leader,
        };
        if task.is_kernel_thread() {
            return Err(InjectError::KernelThread {
                pid,
                comm: task.comm,
            });
        }
        if task.state.exit_state != 0 {
            return Err(InjectError::Zombie {
                pid,
                comm: task.comm,
            });
        }
        match (task.mm, task.user_root) {
            (Some(_), Some(root)) => Ok((task, root)),
            _ => Err(InjectError::NoAddressSpace {
                pid,
                comm: task.comm,
            }),
        }
    }

    /// The function `symbol` exported by an ELF object mapped in process `pid`: the
    /// program and its shared libraries in mapping order, or only the object whose path
    /// or file name is `object` (a file name without its version also matches:
    /// `libc.so` and `libc` find `libc.so.6`). Read from the process's memory (program
    /// headers, dynamic section, hash table and dynamic symbols, as the dynamic linker
    /// does), with the VM paused.
    pub fn find_function(
        &self,
        pid: u32,
        object: Option<&str>,
        symbol: &str,
    ) -> Result<Function, InjectError> {
        let _pause = self.core.pause_guard()?;
        let (task, root) = self.target(pid)?;
        let vmas = self.os.vmas(self.core, &task)?.vmas;
        let matches = |path: &str| match object {
            None => true,
            Some(o) => {
                let file = path.rsplit('/').next().unwrap_or(path);
                path == o || file == o || file.starts_with(&format!("{o}."))
            }
        };
        let read = |va: u64, len: usize| {
            self.core
                .read_vec(AccessContext::paging(Va(va), root), len)
                .map_err(|e| e.to_string())
        };
        let mut objects: Vec<String> = Vec::new();
        let mut problems = Vec::new();
        for vma in &vmas {
            let Some(path) = vma.path.as_deref() else {
                continue;
            };
            if vma.pgoff != 0 || objects.iter().any(|o| o == path) || !matches(path) {
                continue;
            }
            objects.push(path.to_owned());
            match elf::find(&read, vma.start.0, symbol) {
                Ok(Some(f)) => {
                    return Ok(Function {
                        address: Va(f.address),
                        object: path.to_owned(),
                        indirect: f.indirect,
                    });
                }
                Ok(None) => {}
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        Err(InjectError::NoSuchFunction {
            pid,
            symbol: symbol.to_owned(),
            objects,
            problems,
        })
    }

    /// A `syscall` instruction (`0f 05`) in a present, user-executable page of the
    /// process, with the next instruction on the same page: its vDSO first, then its
    /// other executable mappings.
    pub fn find_syscall(&self, task: &LinuxTask, root: Pa) -> Result<Va, InjectError> {
        let vmas = self.os.vmas(self.core, task)?.vmas;
        let mut exec: Vec<_> = vmas
            .iter()
            .filter(|v| v.flags & vm_flags::VM_EXEC != 0)
            .filter(|v| v.name.as_deref() != Some("[vsyscall]"))
            .collect();
        exec.sort_by_key(|v| v.name.as_deref() != Some("[vdso]"));
        let mut scanned: u64 = 0;
        for vma in exec {
            let mut page = vma.start.0 & !(PAGE - 1);
            while page < vma.end.0 && scanned < MAX_SYSCALL_SCAN {
                scanned += PAGE;
                let ctx = AddressContext { va: Va(page), root };
                let usable = self
                    .core
                    .translate(ctx)
                    .is_ok_and(|t| t.flags.user && !t.flags.no_execute);
                if usable
                    && let Ok(bytes) = self
                        .core
                        .read_vec(AccessContext::paging(Va(page), root), PAGE as usize)
                {
                    // The instruction after `syscall` must be on this page too: its
                    // breakpoint is set before the page could be faulted in.
                    if let Some(i) = bytes[..PAGE as usize - 2]
                        .windows(2)
                        .position(|w| w == [0x0f, 0x05])
                    {
                        return Ok(Va(page + i as u64));
                    }
                }
                let Some(next) = page.checked_add(PAGE) else {
                    break;
                };
                page = next;
            }
        }
        Err(InjectError::NoSyscallInstruction {
            pid: task.tgid,
            scanned,
        })
    }

    /// Runs `recipe` in process `pid` (its main thread) and restores the thread.
    pub fn run(&self, pid: u32, recipe: &mut Recipe<'_>) -> Result<InjectReport, InjectError> {
        self.run_in_thread(pid, None, recipe)
    }

    /// Runs `recipe` in thread `tid` of process `pid` (its main thread for `None`) and
    /// restores the thread. A thread that rarely leaves the kernel (a server's main
    /// thread waiting for its workers) never reaches a safe point: borrow another.
    pub fn run_in_thread(
        &self,
        pid: u32,
        tid: Option<u32>,
        recipe: &mut Recipe<'_>,
    ) -> Result<InjectReport, InjectError> {
        let started = Instant::now();
        // A process that has not run since it was forked has none of its code in its
        // page tables (fork copies no file-backed entries; each page faults in when it
        // first runs): no `syscall` instruction is present yet. It comes as the process
        // runs, so the search is repeated until the safe-point timeout.
        let (task, root, frame, syscall_at) = loop {
            let found = {
                let _pause = self.core.pause_guard()?;
                let (task, root) = self.target_thread(pid, tid)?;
                let frame = self.os.syscall_frame(self.core, &task)?;
                self.find_syscall(&task, root)
                    .map(|at| (task, root, frame, at))
            };
            match found {
                Err(InjectError::NoSyscallInstruction { .. })
                    if started.elapsed() < self.options.safe_point_timeout =>
                {
                    if self.stopped() {
                        return Err(InjectError::Interrupted);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                found => break found?,
            }
        };
        if frame.cs & 3 != 3 || frame.ip == 0 {
            return Err(self.no_safe_point(pid, task.pid, frame.ip, Duration::ZERO));
        }
        let _claim = ThreadClaim::take(task.task, task.pid)?;
        let kpti = self.os.kernel().kpti == Some(true);
        let bpm = BreakpointManager::new(self.core).ignore_root_bits(if kpti { 0x1000 } else { 0 });
        let space = AddressSpace::Process(root);
        let first_bp = bpm.add(space, Va(frame.ip), Tag::SafePoint)?;
        let guard = GuardRelease {
            driver: self.core.driver(),
            holds: Cell::new(false),
        };
        let mut run = Run {
            pid,
            tid: task.pid,
            root,
            syscall_at: syscall_at.0,
            recipe,
            phase: Phase::Waiting,
            taken: None,
            steps: Vec::new(),
            error: None,
            restored: None,
            memory_restored: None,
            restored_at: None,
            taken_at: None,
            safe_points: vec![(frame.ip, first_bp)],
            child: Child::None,
            parked: None,
            child_exec: None,
            scratch_refusal: None,
            guard_holds: &guard.holds,
            crash_guard: Ok(()),
            buffer: None,
            buffer_failed: false,
            pending: None,
        };
        let mut last_look = Instant::now();
        loop {
            // Never leave a new process on the way to its execve behind.
            if matches!(run.phase, Phase::Finished) && self.child_through(&bpm, &mut run) {
                break;
            }
            match &run.phase {
                Phase::Finished => {}
                Phase::Waiting => {
                    if started.elapsed() > self.options.safe_point_timeout {
                        return Err(run.scratch_refusal.take().unwrap_or_else(|| {
                            self.no_safe_point(pid, task.pid, frame.ip, started.elapsed())
                        }));
                    }
                    if self.stopped() {
                        return Err(InjectError::Interrupted);
                    }
                    // The saved user rip moves at each kernel entry (a timer interrupt of
                    // a busy thread; right after an injection it is still our
                    // `syscall`'s): every user instruction seen is a safe point.
                    if last_look.elapsed() > Duration::from_millis(50)
                        && run.safe_points.len() < MAX_SAFE_POINTS
                    {
                        last_look = Instant::now();
                        if let Ok(f) = self.os.syscall_frame(self.core, &task)
                            && f.cs & 3 == 3
                            && f.ip != 0
                            && !run.safe_points.iter().any(|(ip, _)| *ip == f.ip)
                        {
                            let id = bpm.add(space, Va(f.ip), Tag::SafePoint)?;
                            run.safe_points.push((f.ip, id));
                        }
                    }
                }
                Phase::InCall(c) => {
                    if c.started.elapsed() > self.options.step_timeout {
                        return Err(InjectError::StuckInSyscall {
                            step: c.index,
                            name: c.name,
                            waited: c.started.elapsed(),
                            guarded: guard.leave_to_guard(),
                        });
                    }
                }
                Phase::Verifying { since, .. } => {
                    // The thread was restored; it did not come by to be checked.
                    if since.elapsed() > self.options.safe_point_timeout {
                        run.phase = Phase::Finished;
                        continue;
                    }
                }
            }
            let slice = if matches!(run.phase, Phase::Waiting) {
                Duration::from_millis(50)
            } else {
                Duration::from_millis(100)
            };
            let waited = bpm.wait(slice, |event, hits| {
                self.on_event(&bpm, space, &mut run, event, hits)
            });
            // The restore is in the vCPU now: the guard need not give anything back.
            if run.restored_at.is_some() {
                guard.release();
            }
            if let Err(e) = waited {
                return Err(match run.phase {
                    Phase::InCall(_) => InjectError::Lost(e),
                    _ => InjectError::Vmi(e),
                });
            }
        }
        let stats = bpm.stats();
        drop(bpm);
        if let Some(e) = run.error.take() {
            return Err(e);
        }
        let (lo, hi) = run
            .taken
            .as_ref()
            .map_or((0, 0), |t| (t.lo, t.lo + t.original.len() as u64));
        Ok(InjectReport {
            pid,
            tid: task.pid,
            safe_point: Va(frame.ip),
            syscall_at,
            scratch: (Va(lo), Va(hi)),
            steps: run.steps,
            saved: run
                .taken
                .as_ref()
                .map(|t| UserRegisters::of(&t.saved))
                .unwrap_or_default(),
            restored: run.restored,
            memory_restored: run.memory_restored,
            child_exec: run.child_exec,
            crash_guard: run.crash_guard,
            hits: stats.hits,
            foreign_hits: stats.foreign_hits,
            taken_after: run.taken_at.unwrap_or(started) - started,
            elapsed: run.restored_at.unwrap_or_else(Instant::now) - started,
        })
    }

    /// Whether the event is our thread's (by the current task; `None` when it cannot be
    /// read).
    fn is_our_thread(&self, run: &Run<'_, '_>, regs: &Registers) -> Option<bool> {
        self.os
            .current_task_from_registers(self.core, regs)
            .ok()
            .map(|t| t.pid == run.tid)
    }

    fn on_event(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        space: AddressSpace,
        run: &mut Run<'_, '_>,
        event: &VmiEvent<Amd64>,
        hits: &[Hit<Tag>],
    ) -> VmiEventResponse<Amd64> {
        let regs = &event.registers;
        if hits.iter().any(|h| h.tag == Tag::Child) && self.is_our_thread(run, regs) != Some(true) {
            return self.on_child(bpm, run, regs);
        }
        // Two of our breakpoints may share an address: take the one this phase waits for.
        let wanted = match run.phase {
            Phase::Waiting => Tag::SafePoint,
            Phase::InCall(_) => Tag::Return,
            Phase::Verifying { .. } => Tag::Verify,
            Phase::Finished => return VmiEventResponse::default(),
        };
        let Some(hit) = hits.iter().find(|h| h.tag == wanted) else {
            return VmiEventResponse::default();
        };
        match (&run.phase, hit.tag) {
            (Phase::Waiting, Tag::SafePoint) => {
                if regs.cpl() != 3 || self.is_our_thread(run, regs) != Some(true) {
                    return VmiEventResponse::default();
                }
                // Too little writable stack here (a page still shared copy-on-write
                // after a fork is present but read-only until the thread writes it):
                // let the thread run on and take a later safe point.
                let (lo, hi) = match self.scratch(run, regs) {
                    Ok(range) => range,
                    Err(e) => {
                        run.scratch_refusal = Some(e);
                        return VmiEventResponse::default();
                    }
                };
                for (_, id) in std::mem::take(&mut run.safe_points) {
                    let _ = bpm.remove(id);
                }
                self.take(bpm, space, run, regs, lo, hi)
            }
            (Phase::InCall(c), Tag::Return) => {
                if regs.rip != run.syscall_at.wrapping_add(2)
                    || regs.rsp != c.rsp
                    || self.is_our_thread(run, regs) == Some(false)
                {
                    return VmiEventResponse::default();
                }
                self.returned(bpm, run, regs)
            }
            (Phase::Verifying { bp, .. }, Tag::Verify) => {
                let saved = run.taken.as_ref().map(|t| t.saved.clone());
                let Some(saved) = saved else {
                    run.phase = Phase::Finished;
                    return VmiEventResponse::default();
                };
                if regs.rip != saved.rip
                    || regs.rsp != saved.rsp
                    || self.is_our_thread(run, regs) == Some(false)
                {
                    return VmiEventResponse::default();
                }
                if let Some(id) = bp {
                    let _ = bpm.remove(*id);
                }
                run.restored = Some(UserRegisters::of(regs));
                if let Some(t) = &run.taken {
                    run.memory_restored = Some(
                        self.core
                            .read_vec(AccessContext::paging(Va(t.lo), run.root), t.original.len())
                            .is_ok_and(|b| b == t.original),
                    );
                }
                run.phase = Phase::Finished;
                VmiEventResponse::default()
            }
            _ => VmiEventResponse::default(),
        }
    }

    /// The scratch range `[lo, hi)` at a safe point: below the red zone, 16-byte
    /// aligned, on present, writable user pages, at most `max_scratch` bytes.
    fn scratch(&self, run: &Run<'_, '_>, regs: &Registers) -> Result<(u64, u64), InjectError> {
        let no_scratch = |available| InjectError::NoScratch {
            pid: run.pid,
            rsp: regs.rsp,
            available,
        };
        let Some(hi) = regs.rsp.checked_sub(RED_ZONE).map(|v| v & !15) else {
            return Err(no_scratch(0));
        };
        let mut lo = hi;
        while ((hi - lo) as usize) < self.options.max_scratch {
            let Some(below) = lo.checked_sub(1) else {
                break;
            };
            let ok = self
                .core
                .translate(AddressContext {
                    va: Va(below),
                    root: run.root,
                })
                .is_ok_and(|t| t.flags.user && t.flags.writable);
            if !ok {
                break;
            }
            let page_start = below & !(PAGE - 1);
            lo = page_start.max(hi.saturating_sub(self.options.max_scratch as u64));
        }
        let lo = (lo + 15) & !15;
        let available = hi.saturating_sub(lo) as usize;
        if available < MIN_SCRATCH {
            return Err(no_scratch(available));
        }
        Ok((lo, hi))
    }

    /// At the safe point, with the scratch range from [`Self::scratch`]: saves, places
    /// the first step, points the thread at it.
    fn take(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        space: AddressSpace,
        run: &mut Run<'_, '_>,
        regs: &Registers,
        lo: u64,
        hi: u64,
    ) -> VmiEventResponse<Amd64> {
        let untouched = |run: &mut Run<'_, '_>, e: InjectError| {
            run.error = Some(e);
            run.phase = Phase::Finished;
            VmiEventResponse::default()
        };
        let available = hi.saturating_sub(lo) as usize;
        let original = match self
            .core
            .read_vec(AccessContext::paging(Va(lo), run.root), available)
        {
            Ok(b) => b,
            Err(e) => return untouched(run, e.into()),
        };
        let ret_bp = match bpm.add(space, Va(run.syscall_at.wrapping_add(2)), Tag::Return) {
            Ok(id) => id,
            Err(e) => return untouched(run, e.into()),
        };
        // Before anything changes: the driver's guard gives the thread back if this
        // process dies mid-recipe.
        let kpti = self.os.kernel().kpti == Some(true);
        let guarded = self.core.driver().guard_borrowed_thread(&BorrowedThread {
            root: run.root,
            root_ignore: if kpti { 0x1000 } else { 0 },
            stop_ip: Va(run.syscall_at.wrapping_add(2)),
            stop_sp: step_rsp(lo),
            saved: regs,
            memory: Va(lo),
            original: &original,
            syscall_ip: Va(run.syscall_at),
            exit_nr: nr::EXIT,
            wait: self.options.step_timeout,
        });
        run.guard_holds.set(guarded.is_ok());
        run.crash_guard = guarded.map_err(|e| e.to_string());
        run.taken_at = Some(Instant::now());
        run.taken = Some(Taken {
            saved: regs.clone(),
            lo,
            original,
            ret_bp: Some(ret_bp),
        });
        let first = run.recipe.first().clone();
        self.start_step(bpm, run, regs, 0, &first)
    }

    /// Places `call`'s data and points the thread at the `syscall` instruction; on
    /// failure restores.
    fn start_step(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        run: &mut Run<'_, '_>,
        regs: &Registers,
        index: u64,
        call: &Syscall,
    ) -> VmiEventResponse<Amd64> {
        if self.wants_buffer(run, call) {
            run.pending = Some((index, call.clone()));
            let len = self.options.buffer as u64;
            let map = Syscall::new(
                nr::MMAP,
                "mmap (injector buffer)",
                vec![
                    Arg::Value(0),
                    Arg::Value(len),
                    Arg::Value(PROT_READ_WRITE),
                    Arg::Value(MAP_PRIVATE_ANONYMOUS),
                    Arg::int(-1),
                    Arg::Value(0),
                ],
            );
            return self.start_call(bpm, run, regs, index, &map, true);
        }
        self.start_call(bpm, run, regs, index, call, false)
    }

    /// Whether `call` needs the buffer mapped first: its data and output do not fit the
    /// stack's scratch area, a buffer is allowed and not yet tried.
    fn wants_buffer(&self, run: &Run<'_, '_>, call: &Syscall) -> bool {
        if self.options.buffer == 0 || run.buffer.is_some() || run.buffer_failed {
            return false;
        }
        let Some(t) = &run.taken else {
            return false;
        };
        let room = (t.lo + t.original.len() as u64).saturating_sub(step_rsp(t.lo));
        let need: u64 = call
            .args
            .iter()
            .map(|a| match a {
                Arg::Bytes(b) => (b.len() as u64 + 15) & !15,
                Arg::Out(n) => *n as u64,
                _ => 0,
            })
            .sum();
        need > room
    }

    /// Places `call`'s data and points the thread at it (`internal`: one of the
    /// injector's own steps, the buffer's `mmap`/`munmap`); on failure restores.
    fn start_call(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        run: &mut Run<'_, '_>,
        regs: &Registers,
        index: u64,
        call: &Syscall,
        internal: bool,
    ) -> VmiEventResponse<Amd64> {
        let placed = self
            .place(run, index, call)
            .and_then(|(args, out, rsp, end)| {
                if let Some(child) = &call.child {
                    let (cargs, _, _, _) = self.place_from(run, index, child, end)?;
                    let bp = bpm.add(
                        AddressSpace::Kernel(run.root),
                        Va(run.syscall_at.wrapping_add(2)),
                        Tag::Child,
                    )?;
                    run.child = Child::Expect {
                        nr: child.nr,
                        args: cargs,
                        rsp,
                        bp,
                        since: Instant::now(),
                    };
                }
                Ok((args, out, rsp))
            });
        // A function returns, through the address at `lo + 8`, to the breakpoint after
        // the `syscall` instruction, with `rsp` where a system call step has it.
        let placed = placed.and_then(|(args, out, rsp)| match call.function {
            None => Ok((args, out, rsp)),
            Some(_) => {
                let back = run.syscall_at.wrapping_add(2).to_le_bytes();
                let slot = rsp - 8;
                self.core
                    .write(AccessContext::paging(Va(slot), run.root), &back)?;
                Ok((args, out, rsp))
            }
        });
        match placed {
            Ok((args, out, rsp)) => {
                let mut r = regs.clone();
                match call.function {
                    None => {
                        r.rax = call.nr;
                        [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = args;
                        r.rsp = rsp;
                        r.rip = run.syscall_at;
                    }
                    Some(f) => {
                        r.rax = 0;
                        [r.rdi, r.rsi, r.rdx, r.rcx, r.r8, r.r9] = args;
                        r.rsp = rsp - 8;
                        r.rip = f;
                        r.rflags &= !(1 << 10);
                    }
                }
                run.phase = Phase::InCall(InCall {
                    index,
                    internal,
                    name: call.name,
                    nr: call.nr,
                    args,
                    argc: call.args.len(),
                    out,
                    rsp,
                    started: Instant::now(),
                });
                VmiEventResponse::set_registers(r)
            }
            Err(e) => {
                run.error = Some(e);
                self.restore(bpm, run, regs)
            }
        }
    }

    /// Writes a step's data into the scratch area: the argument values, the output
    /// buffer (address, length) and the stack pointer for the call.
    #[allow(clippy::type_complexity)]
    fn place(
        &self,
        run: &Run<'_, '_>,
        index: u64,
        call: &Syscall,
    ) -> Result<([u64; MAX_ARGS], Option<(u64, usize)>, u64, u64), InjectError> {
        // The step itself is checked here; a child's execve by `refusal` of its clone.
        if let Some(why) = recipe::refusal(call) {
            return Err(InjectError::InvalidStep {
                step: index,
                name: call.name,
                reason: why,
            });
        }
        let lo = run.taken.as_ref().map_or(0, |t| t.lo);
        self.place_from(run, index, call, step_rsp(lo))
    }

    /// [`place`](Self::place) from `cursor` on; also returns where the data ends.
    #[allow(clippy::type_complexity)]
    fn place_from(
        &self,
        run: &Run<'_, '_>,
        index: u64,
        call: &Syscall,
        cursor: u64,
    ) -> Result<([u64; MAX_ARGS], Option<(u64, usize)>, u64, u64), InjectError> {
        let invalid = |reason: String| InjectError::InvalidStep {
            step: index,
            name: call.name,
            reason,
        };
        let Some(t) = &run.taken else {
            return Err(invalid("no scratch area".into()));
        };
        let hi = t.lo + t.original.len() as u64;
        let mut cursor = cursor;
        // The mapped buffer, for what does not fit the stack.
        let buffer = run.buffer.map(|(at, len)| (at, at + len as u64));
        let mut bcursor = buffer.map_or(0, |(at, _)| at);
        let mut args = [0u64; MAX_ARGS];
        for (i, a) in call.args.iter().enumerate() {
            let array;
            let b: &[u8] = match a {
                Arg::Bytes(b) => b,
                Arg::StrArray(items) => {
                    array =
                        self.place_strings(run, &mut cursor, hi, items)
                            .map_err(|e| match e {
                                InjectError::InvalidStep { reason, .. } => invalid(reason),
                                e => e,
                            })?;
                    &array
                }
                _ => continue,
            };
            let on_stack = cursor.checked_add(b.len() as u64).filter(|&e| e <= hi);
            let in_buffer = buffer
                .and_then(|(_, bhi)| bcursor.checked_add(b.len() as u64).filter(|&e| e <= bhi));
            match (on_stack, in_buffer) {
                (Some(end), _) => {
                    self.core
                        .write(AccessContext::paging(Va(cursor), run.root), b)?;
                    args[i] = cursor;
                    cursor = (end + 15) & !15;
                }
                (None, Some(end)) => {
                    self.core
                        .write(AccessContext::paging(Va(bcursor), run.root), b)?;
                    args[i] = bcursor;
                    bcursor = (end + 15) & !15;
                }
                (None, None) => {
                    return Err(invalid(format!(
                        "{} bytes of data do not fit the {} bytes of scratch{}",
                        b.len(),
                        t.original.len(),
                        buffer.map_or(String::new(), |(lo, hi)| format!(
                            " or the {} bytes of the buffer",
                            hi - lo
                        ))
                    )));
                }
            }
        }
        let mut out = None;
        for (i, a) in call.args.iter().enumerate() {
            if let Arg::Out(len) = a {
                if out.is_some() {
                    return Err(invalid("two output buffers".into()));
                }
                let room = hi.saturating_sub(cursor) as usize;
                let broom = buffer.map_or(0, |(_, bhi)| bhi.saturating_sub(bcursor) as usize);
                let (at, give) = if *len > room && broom > room {
                    (bcursor, (*len).min(broom))
                } else {
                    (cursor, (*len).min(room))
                };
                if give == 0 {
                    return Err(invalid("no room left for the output buffer".into()));
                }
                args[i] = at;
                out = Some((at, give));
            }
        }
        for (i, a) in call.args.iter().enumerate() {
            match a {
                Arg::Value(v) => args[i] = *v,
                Arg::OutLen => args[i] = out.map_or(0, |(_, n)| n as u64),
                Arg::Bytes(_) | Arg::Out(_) | Arg::StrArray(_) => {}
            }
        }
        let rsp = step_rsp(t.lo);
        // Where the stack's data ends (a child's data goes on from there).
        let end = match out {
            Some((at, n)) if at >= cursor && at < hi => at + n as u64,
            _ => cursor,
        };
        Ok((args, out, rsp, end))
    }

    /// Writes NUL-terminated copies of `items` at `cursor` (moved past them) and
    /// returns the pointer array (NULL-terminated) for the caller to place.
    fn place_strings(
        &self,
        run: &Run<'_, '_>,
        cursor: &mut u64,
        hi: u64,
        items: &[String],
    ) -> Result<Vec<u8>, InjectError> {
        let too_big = || InjectError::InvalidStep {
            step: 0,
            name: "",
            reason: "strings do not fit the scratch area".into(),
        };
        let mut array = Vec::with_capacity((items.len() + 1) * 8);
        for item in items {
            let mut b = item.as_bytes().to_vec();
            b.push(0);
            let end = cursor
                .checked_add(b.len() as u64)
                .filter(|&e| e <= hi)
                .ok_or_else(too_big)?;
            self.core
                .write(AccessContext::paging(Va(*cursor), run.root), &b)?;
            array.extend_from_slice(&cursor.to_le_bytes());
            *cursor = (end + 15) & !15;
        }
        array.extend_from_slice(&0u64.to_le_bytes());
        Ok(array)
    }

    /// A return from `clone` (or from `execve`) in a task that is not the borrowed one.
    fn on_child(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        run: &mut Run<'_, '_>,
        regs: &Registers,
    ) -> VmiEventResponse<Amd64> {
        let Ok(task) = self.os.current_task_from_registers(self.core, regs) else {
            return VmiEventResponse::default();
        };
        match run.child {
            Child::Expect {
                nr, args, rsp, bp, ..
            } => {
                if task.tgid == run.pid
                    || regs.rax != 0
                    || regs.rsp != rsp
                    || regs.rip != run.syscall_at.wrapping_add(2)
                {
                    return VmiEventResponse::default();
                }
                let mut r = regs.clone();
                r.rax = nr;
                [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = args;
                r.rip = run.syscall_at;
                run.child = Child::Exec {
                    task: task.task,
                    tid: task.pid,
                    mm: task.mm,
                    bp,
                    since: Instant::now(),
                };
                VmiEventResponse::set_registers(r)
            }
            Child::Exec { tid, bp, .. } if task.pid == tid => {
                // execve returned: it failed. The child goes.
                let ret = regs.rax as i64;
                let _ = bpm.remove(bp);
                run.child = Child::Done(Some(ret));
                let mut r = regs.clone();
                r.rax = nr::EXIT;
                r.rdi = 127;
                r.rip = run.syscall_at;
                VmiEventResponse::set_registers(r)
            }
            _ => VmiEventResponse::default(),
        }
    }

    /// Whether the child is through `execve` (done or failed), checking its `mm`.
    fn child_through(&self, bpm: &BreakpointManager<'_, D, Tag>, run: &mut Run<'_, '_>) -> bool {
        match run.child {
            Child::None | Child::Done(_) => true,
            Child::Expect { since, bp, .. } | Child::Exec { since, bp, .. }
                if since.elapsed() > self.options.step_timeout =>
            {
                let _ = bpm.remove(bp);
                run.error.get_or_insert(InjectError::Recipe(
                    "the new process did not get through execve in time".into(),
                ));
                run.child = Child::Done(None);
                true
            }
            Child::Expect { .. } => false,
            Child::Exec { task, mm, bp, .. } => {
                // execve gives it a new mm once the arguments are copied.
                let executed = self
                    .os
                    .task(self.core, task)
                    .is_ok_and(|t| t.mm.is_some() && t.mm != mm);
                if executed {
                    let _ = bpm.remove(bp);
                    run.child = Child::Done(None);
                }
                executed
            }
        }
    }

    /// At the return of a step: reports it to the recipe and runs the next or restores.
    fn returned(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        run: &mut Run<'_, '_>,
        regs: &Registers,
    ) -> VmiEventResponse<Amd64> {
        let Phase::InCall(c) = std::mem::replace(&mut run.phase, Phase::Waiting) else {
            return VmiEventResponse::default();
        };
        let mut ret = regs.rax as i64;
        if c.internal {
            run.steps.push(StepRecord {
                name: c.name,
                nr: c.nr,
                args: c.args[..c.argc.min(MAX_ARGS)].to_vec(),
                ret,
            });
            if c.nr == nr::MMAP {
                // An address, or -errno (the last page's values).
                if (-4095..0).contains(&ret) || ret == 0 {
                    run.buffer_failed = true;
                } else {
                    run.buffer = Some((ret as u64, self.options.buffer));
                }
                return match run.pending.take() {
                    Some((index, call)) => self.start_call(bpm, run, regs, index, &call, false),
                    None => self.restore(bpm, run, regs),
                };
            }
            // The munmap before the restore.
            if ret < 0 {
                run.error.get_or_insert(InjectError::Recipe(format!(
                    "munmap of the injector's buffer: {}; the process keeps it mapped",
                    errno_text(ret)
                )));
            }
            return self.restore(bpm, run, regs);
        }
        let mut c = c;
        // A clone's parent waits (yielding) until the child is through execve.
        let parked = run.parked.take();
        let waiting_child = match &parked {
            Some(_) => true,
            None => !matches!(run.child, Child::None | Child::Done(_)) && ret > 0,
        };
        if waiting_child {
            let (orig, orig_ret) = parked.unwrap_or((c, ret));
            if !self.child_through(bpm, run) {
                let mut r = regs.clone();
                r.rax = nr::SCHED_YIELD;
                r.rip = run.syscall_at;
                r.rsp = orig.rsp;
                run.phase = Phase::InCall(InCall {
                    index: orig.index,
                    internal: false,
                    name: orig.name,
                    nr: nr::SCHED_YIELD,
                    args: [0; MAX_ARGS],
                    argc: 0,
                    out: None,
                    rsp: orig.rsp,
                    started: Instant::now(),
                });
                run.parked = Some((orig, orig_ret));
                return VmiEventResponse::set_registers(r);
            }
            c = orig;
            ret = orig_ret;
        } else if ret <= 0
            && let Child::Expect { bp, .. } = run.child
        {
            // clone failed: no child will come.
            let _ = bpm.remove(bp);
            run.child = Child::None;
        }
        if let Child::Done(e) = run.child {
            run.child_exec = Some(e);
            run.child = Child::None;
        }
        let out = match c.out {
            Some((at, len)) if ret > 0 => {
                let n = (ret as u64).min(len as u64) as usize;
                match self
                    .core
                    .read_vec(AccessContext::paging(Va(at), run.root), n)
                {
                    Ok(b) => b,
                    Err(e) => {
                        run.error = Some(e.into());
                        return self.restore(bpm, run, regs);
                    }
                }
            }
            _ => Vec::new(),
        };
        run.steps.push(StepRecord {
            name: c.name,
            nr: c.nr,
            args: c.args[..c.argc.min(MAX_ARGS)].to_vec(),
            ret,
        });
        let outcome = StepOutcome {
            index: c.index,
            nr: c.nr,
            name: c.name,
            args: c.args,
            argc: c.argc,
            ret,
            out,
            scratch: run.taken.as_ref().map_or(0, |t| t.original.len()),
            buffer: if run.buffer_failed {
                0
            } else {
                self.options.buffer
            },
        };
        let recipe = &mut *run.recipe;
        let next = catch_unwind(AssertUnwindSafe(|| recipe.decide(&outcome)))
            .unwrap_or_else(|_| Next::Fail("the recipe panicked".into()));
        if self.stopped() {
            run.error = Some(InjectError::Interrupted);
            return self.restore(bpm, run, regs);
        }
        let index = c.index + 1;
        match next {
            Next::Call(_) if index >= self.options.max_steps => {
                run.error = Some(InjectError::TooManySteps(self.options.max_steps));
                self.restore(bpm, run, regs)
            }
            Next::Call(call) => self.start_step(bpm, run, regs, index, &call),
            Next::Done => self.restore(bpm, run, regs),
            Next::Fail(m) => {
                run.error = Some(InjectError::Recipe(m));
                self.restore(bpm, run, regs)
            }
        }
    }

    /// Writes the scratch bytes back and answers with the saved user registers.
    fn restore(
        &self,
        bpm: &BreakpointManager<'_, D, Tag>,
        run: &mut Run<'_, '_>,
        regs: &Registers,
    ) -> VmiEventResponse<Amd64> {
        if run.taken.is_some()
            && let Some((addr, len)) = run.buffer.take()
        {
            let unmap = Syscall::new(
                nr::MUNMAP,
                "munmap (injector buffer)",
                vec![Arg::Value(addr), Arg::Value(len as u64)],
            );
            let index = run.steps.len() as u64;
            return self.start_call(bpm, run, regs, index, &unmap, true);
        }
        let Some(t) = run.taken.as_mut() else {
            run.phase = Phase::Finished;
            return VmiEventResponse::default();
        };
        if let Err(e) = self
            .core
            .write(AccessContext::paging(Va(t.lo), run.root), &t.original)
        {
            // Registers are restored all the same; the error says what is left.
            run.error.get_or_insert(e.into());
        }
        if let Some(id) = t.ret_bp.take() {
            let _ = bpm.remove(id);
        }
        let back = UserRegisters::of(&t.saved).apply(regs);
        run.restored_at = Some(Instant::now());
        run.phase = Phase::Finished;
        if self.options.verify && run.error.is_none() {
            let bp = bpm
                .add(
                    AddressSpace::Process(run.root),
                    Va(t.saved.rip),
                    Tag::Verify,
                )
                .ok();
            if bp.is_some() {
                run.phase = Phase::Verifying {
                    since: Instant::now(),
                    bp,
                };
            }
        }
        VmiEventResponse::set_registers(back)
    }
}
