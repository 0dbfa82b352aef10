//! [`SyscallTracer`]: Linux system calls of a live guest with decoded arguments and,
//! on request, their return values.
//!
//! # Where it hooks
//!
//! The entry point of each traced call, `__x64_sys_<name>(const struct pt_regs *regs)`:
//! since 4.17 every 64-bit system call enters through such a wrapper whose only
//! argument is the user registers, whether the dispatcher is the `sys_call_table`
//! indirect call (5.10, 6.1 before the backport) or the `x64_sys_call` switch (6.9+ and
//! the stable backports of the branch-history mitigation). Hooking the wrappers, not
//! `x64_sys_call`, means only the traced calls stop the guest. The arguments are read from
//! `regs` (`di`, `si`, `dx`, `r10`, `r8`, `r9`, offsets from the profile), the task from
//! the per-CPU current-task pointer. 32-bit (`__ia32_sys_*`) and x32 entries are not
//! hooked.
//!
//! # Return values
//!
//! At the entry, the return address is read from the top of the kernel stack and a
//! breakpoint set there for this thread: a hit counts only when it comes from the same
//! thread with the stack pointer just above that return address (another thread, or a
//! nested call, going through the same address is ignored), and is then removed. A
//! call that never returns (`exit`, `exit_group`, a successful `execve` of a thread
//! group's non-leader) leaves its return breakpoint until the tracer drops; at most
//! [`MAX_PENDING_RETURNS`] wait, the oldest given up first.
//!
//! # Decoding
//!
//! A built-in table gives each known call its argument names and kinds (the x86-64
//! ABI's constants, stable by definition): paths and strings are read from user memory
//! through the event's page-table root (at most [`MAX_STRING`] bytes), `argv` as an array
//! (at most [`MAX_ARGV`] entries), `open` flags by their `O_*` names, descriptors and
//! sizes as numbers, pointers as hex strings. What cannot be read (a string in a page not
//! yet faulted in) is reported in [`SyscallEvent::problems`]; other calls get `arg0`..`arg5`.

use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    AccessContext, Pa, Registers as _, Va, VcpuId, VmiCore, VmiError, VmiEventControl,
    VmiEventResponse, VmiRead,
};
use vmi_os_linux::LinuxOs;

use crate::bpm::{AddressSpace, BreakpointId, BreakpointManager, ManagerStats};
use crate::returns::Waiting;

/// Most bytes of one string argument (`PATH_MAX`).
pub const MAX_STRING: usize = 4096;
/// Most entries of an `argv` array.
pub const MAX_ARGV: usize = 1024;
pub use crate::returns::MAX_PENDING_RETURNS;

/// How an argument is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A signed integer (descriptors, `AT_FDCWD`).
    Int,
    /// An unsigned size or count.
    Uint,
    /// A user pointer, shown in hex.
    Ptr,
    /// A NUL-terminated string in user memory.
    Str,
    /// A NULL-terminated array of string pointers in user memory.
    StrArray,
    /// `open` flags (`O_*`).
    OpenFlags,
    /// A mode in octal.
    Mode,
    /// Flags shown in hex.
    Hex,
}

/// Known system calls: name, then (argument name, kind) in order.
const TABLE: &[(&str, &[(&str, Kind)])] = &[
    (
        "read",
        &[("fd", Kind::Int), ("buf", Kind::Ptr), ("count", Kind::Uint)],
    ),
    (
        "write",
        &[("fd", Kind::Int), ("buf", Kind::Ptr), ("count", Kind::Uint)],
    ),
    (
        "open",
        &[
            ("filename", Kind::Str),
            ("flags", Kind::OpenFlags),
            ("mode", Kind::Mode),
        ],
    ),
    ("close", &[("fd", Kind::Int)]),
    (
        "openat",
        &[
            ("dfd", Kind::Int),
            ("filename", Kind::Str),
            ("flags", Kind::OpenFlags),
            ("mode", Kind::Mode),
        ],
    ),
    ("creat", &[("pathname", Kind::Str), ("mode", Kind::Mode)]),
    (
        "execve",
        &[
            ("filename", Kind::Str),
            ("argv", Kind::StrArray),
            ("envp", Kind::Ptr),
        ],
    ),
    (
        "execveat",
        &[
            ("dfd", Kind::Int),
            ("filename", Kind::Str),
            ("argv", Kind::StrArray),
            ("envp", Kind::Ptr),
            ("flags", Kind::Hex),
        ],
    ),
    ("unlink", &[("pathname", Kind::Str)]),
    (
        "unlinkat",
        &[
            ("dfd", Kind::Int),
            ("pathname", Kind::Str),
            ("flags", Kind::Hex),
        ],
    ),
    ("mkdir", &[("pathname", Kind::Str), ("mode", Kind::Mode)]),
    (
        "mkdirat",
        &[
            ("dfd", Kind::Int),
            ("pathname", Kind::Str),
            ("mode", Kind::Mode),
        ],
    ),
    ("chdir", &[("filename", Kind::Str)]),
    ("rename", &[("oldname", Kind::Str), ("newname", Kind::Str)]),
    (
        "renameat2",
        &[
            ("olddfd", Kind::Int),
            ("oldname", Kind::Str),
            ("newdfd", Kind::Int),
            ("newname", Kind::Str),
            ("flags", Kind::Hex),
        ],
    ),
    (
        "newfstatat",
        &[
            ("dfd", Kind::Int),
            ("filename", Kind::Str),
            ("statbuf", Kind::Ptr),
            ("flag", Kind::Hex),
        ],
    ),
    ("kill", &[("pid", Kind::Int), ("sig", Kind::Int)]),
    ("exit", &[("error_code", Kind::Int)]),
    ("exit_group", &[("error_code", Kind::Int)]),
    (
        "wait4",
        &[
            ("upid", Kind::Int),
            ("stat_addr", Kind::Ptr),
            ("options", Kind::Hex),
            ("ru", Kind::Ptr),
        ],
    ),
    (
        "clone",
        &[
            ("clone_flags", Kind::Hex),
            ("newsp", Kind::Ptr),
            ("parent_tidptr", Kind::Ptr),
            ("child_tidptr", Kind::Ptr),
            ("tls", Kind::Ptr),
        ],
    ),
    (
        "connect",
        &[
            ("fd", Kind::Int),
            ("uservaddr", Kind::Ptr),
            ("addrlen", Kind::Uint),
        ],
    ),
    ("nanosleep", &[("rqtp", Kind::Ptr), ("rmtp", Kind::Ptr)]),
    (
        "clock_nanosleep",
        &[
            ("which_clock", Kind::Int),
            ("flags", Kind::Hex),
            ("rqtp", Kind::Ptr),
            ("rmtp", Kind::Ptr),
        ],
    ),
];

/// `O_*` flags of x86-64 (`include/uapi/asm-generic/fcntl.h`), besides the access mode.
const OPEN_FLAGS: &[(u64, &str)] = &[
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o400, "O_NOCTTY"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o10000, "O_DSYNC"),
    (0o20000, "FASYNC"),
    (0o40000, "O_DIRECT"),
    (0o100000, "O_LARGEFILE"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"),
    (0o4010000, "O_SYNC"),
    (0o10000000, "O_PATH"),
    (0o20200000, "O_TMPFILE"),
];

/// `open` flags by name: `O_WRONLY|O_CREAT|O_TRUNC`; unknown bits in octal.
pub fn open_flags(flags: u64) -> String {
    let mut parts = vec![match flags & 3 {
        0 => "O_RDONLY".to_string(),
        1 => "O_WRONLY".to_string(),
        2 => "O_RDWR".to_string(),
        _ => "O_ACCMODE".to_string(),
    }];
    let mut rest = flags & !3;
    // Composite flags first (O_SYNC includes O_DSYNC, O_TMPFILE includes O_DIRECTORY).
    let mut ordered: Vec<&(u64, &str)> = OPEN_FLAGS.iter().collect();
    ordered.sort_by_key(|(bits, _)| std::cmp::Reverse(bits.count_ones()));
    let mut named = Vec::new();
    for (bits, name) in ordered {
        if rest & bits == *bits {
            rest &= !bits;
            named.push((*bits, *name));
        }
    }
    named.sort_by_key(|(bits, _)| *bits);
    parts.extend(named.into_iter().map(|(_, n)| n.to_string()));
    if rest != 0 {
        parts.push(format!("{rest:#o}"));
    }
    parts.join("|")
}

/// One decoded argument value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgValue {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    Uint(u64),
    /// A pointer or flags in hex (`0x…`), or a mode in octal (`0o…`).
    Text(String),
    /// A string read from user memory (`None`: unreadable, see the problems).
    Str(Option<String>),
    /// An array of strings read from user memory (`None`: unreadable).
    StrArray(Option<Vec<String>>),
}

/// One traced call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallEvent {
    /// Host time of the entry, nanoseconds since the Unix epoch.
    pub time_ns: u128,
    /// The vCPU at the entry.
    pub vcpu: VcpuId,
    /// Process id (tgid).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// `comm` at the entry.
    pub comm: String,
    /// The system call's name.
    pub syscall: String,
    /// Decoded arguments, by name, in order.
    pub args: Vec<(String, ArgValue)>,
    /// The return value, when returns are traced and the call returned.
    pub ret: Option<i64>,
    /// What could not be read (the call is real; these answers are missing).
    pub problems: Vec<String>,
}

/// Options of a [`SyscallTracer`].
#[derive(Clone, Debug, Default)]
pub struct SyscallOptions {
    /// Only calls of this process (tgid).
    pub pid: Option<u32>,
    /// Report each call at its return, with the return value.
    pub returns: bool,
}

#[derive(Clone, Debug)]
enum Tag {
    Entry(usize),
    Return { tid: u32, sp: u64 },
}

struct Pt {
    di: u64,
    si: u64,
    dx: u64,
    r10: u64,
    r8: u64,
    r9: u64,
}

/// Traces system calls by breakpoints on their entry wrappers. See the [module docs](self).
pub struct SyscallTracer<'a, D: VmiRead + VmiEventControl> {
    core: &'a VmiCore<D>,
    os: &'a LinuxOs,
    bpm: BreakpointManager<'a, D, Tag>,
    names: Vec<String>,
    options: SyscallOptions,
    pt: Pt,
    /// Calls waiting for their return.
    waiting: Waiting<SyscallEvent>,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl<'a, D> SyscallTracer<'a, D>
where
    D: VmiRead<Architecture = Amd64> + VmiEventControl,
{
    /// Hooks the entries of `names` (`openat`, `execve`...). Fails, hooking none, when
    /// a name has no `__x64_sys_` entry in the profile or `pt_regs` is not described.
    pub fn new(
        core: &'a VmiCore<D>,
        os: &'a LinuxOs,
        names: &[&str],
        options: SyscallOptions,
    ) -> Result<Self, VmiError> {
        if names.is_empty() {
            return Err(VmiError::InvalidArgument("no system call to trace".into()));
        }
        let off = |field: &str| {
            os.profile()
                .offset_of("pt_regs", field)
                .map_err(|_| VmiError::NotFound {
                    kind: "field",
                    name: format!("pt_regs.{field}"),
                })
        };
        let pt = Pt {
            di: off("di")?,
            si: off("si")?,
            dx: off("dx")?,
            r10: off("r10")?,
            r8: off("r8")?,
            r9: off("r9")?,
        };
        let mut entries = Vec::new();
        for name in names {
            let symbol = format!("__x64_sys_{name}");
            let va = os
                .symbol_address(&symbol)
                .ok_or_else(|| VmiError::NotFound {
                    kind: "system call entry",
                    name: symbol.clone(),
                })?;
            entries.push(va);
        }
        let bpm = BreakpointManager::new(core);
        let kernel = AddressSpace::Kernel(os.kernel().kernel_root);
        for (i, va) in entries.into_iter().enumerate() {
            bpm.add(kernel, va, Tag::Entry(i))?;
        }
        Ok(Self {
            core,
            os,
            bpm,
            names: names.iter().map(|n| n.to_string()).collect(),
            options,
            pt,
            waiting: Waiting::new(),
        })
    }

    /// The breakpoint manager's counters.
    pub fn stats(&self) -> ManagerStats {
        self.bpm.stats()
    }

    /// Runs until `stop` is set, handing each call to `sink` (at its entry, or at its
    /// return with [`SyscallOptions::returns`]).
    pub fn run_until(
        &self,
        stop: &AtomicBool,
        mut sink: impl FnMut(SyscallEvent),
    ) -> Result<(), VmiError> {
        self.bpm.run_until(stop, |event, hits| {
            for h in hits {
                match &h.tag {
                    Tag::Entry(i) => {
                        if let Some(e) = self.entry(*i, event.vcpu, &event.registers) {
                            sink(e);
                        }
                    }
                    Tag::Return { tid, sp } => {
                        if let Some(e) = self.ret(h.id, *tid, *sp, &event.registers) {
                            sink(e);
                        }
                    }
                }
            }
            VmiEventResponse::default()
        })
    }

    /// At an entry: the decoded call, or `None` when it is filtered out or waits for
    /// its return.
    fn entry(&self, index: usize, vcpu: VcpuId, regs: &Registers) -> Option<SyscallEvent> {
        let root = regs.translation_root();
        let task = self.os.current_task_from_registers(self.core, regs);
        if let Some(want) = self.options.pid
            && task.as_ref().map_or(true, |t| t.tgid != want)
        {
            return None;
        }
        let name = self.names.get(index)?.clone();
        let mut problems = Vec::new();
        let (pid, tid, comm) = match &task {
            Ok(t) => (t.tgid, t.pid, t.comm.clone()),
            Err(e) => {
                problems.push(format!("current task: {e}"));
                (0, 0, String::new())
            }
        };
        let args = self.decode_args(&name, Va(regs.rdi), root, &mut problems);
        let event = SyscallEvent {
            time_ns: now_ns(),
            vcpu,
            pid,
            tid,
            comm,
            syscall: name,
            args,
            ret: None,
            problems,
        };
        if !self.options.returns {
            return Some(event);
        }
        let space = AddressSpace::Kernel(self.os.kernel().kernel_root);
        match self
            .waiting
            .park(&self.bpm, space, regs, |sp| Tag::Return { tid, sp }, event)
        {
            Ok(()) => None,
            Err((mut event, e)) => {
                // Report the call without its return rather than lose it.
                event.problems.push(format!("return address: {e}"));
                Some(event)
            }
        }
    }

    /// At a return breakpoint: the call it ends, if this thread is the one that waits.
    fn ret(&self, id: BreakpointId, tid: u32, sp: u64, regs: &Registers) -> Option<SyscallEvent> {
        if regs.rsp != sp {
            return None;
        }
        let task = self.os.current_task_from_registers(self.core, regs).ok()?;
        if task.pid != tid {
            return None;
        }
        let mut event = self.waiting.take(&self.bpm, id)?;
        event.ret = Some(regs.rax as i64);
        Some(event)
    }

    fn read_string(&self, va: u64, root: Pa) -> Result<String, VmiError> {
        self.core
            .read_string(AccessContext::paging(Va(va), root), MAX_STRING)
    }

    fn read_argv(&self, va: u64, root: Pa) -> Result<Vec<String>, VmiError> {
        let mut out = Vec::new();
        for i in 0..MAX_ARGV as u64 {
            let at = va.checked_add(i * 8).ok_or_else(|| {
                VmiError::InvalidArgument(format!("argv at {va:#x} wraps around"))
            })?;
            let p = self.core.read_u64(AccessContext::paging(Va(at), root))?;
            if p == 0 {
                return Ok(out);
            }
            out.push(self.read_string(p, root)?);
        }
        Err(VmiError::InvalidArgument(format!(
            "argv at {va:#x} has more than {MAX_ARGV} entries"
        )))
    }

    fn decode_args(
        &self,
        name: &str,
        regs_va: Va,
        root: Pa,
        problems: &mut Vec<String>,
    ) -> Vec<(String, ArgValue)> {
        let k = |off: u64| {
            self.core
                .read_u64(AccessContext::paging(regs_va + off, root))
        };
        let raw = [
            k(self.pt.di),
            k(self.pt.si),
            k(self.pt.dx),
            k(self.pt.r10),
            k(self.pt.r8),
            k(self.pt.r9),
        ];
        let spec: Vec<(String, Kind)> = match TABLE.iter().find(|(n, _)| *n == name) {
            Some((_, args)) => args.iter().map(|(n, k)| (n.to_string(), *k)).collect(),
            None => (0..6).map(|i| (format!("arg{i}"), Kind::Hex)).collect(),
        };
        let mut out = Vec::new();
        for ((arg, kind), value) in spec.into_iter().zip(raw) {
            let v = match value {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{arg}: pt_regs at {regs_va}: {e}"));
                    continue;
                }
            };
            let decoded = match kind {
                Kind::Int => ArgValue::Int(v as i32 as i64),
                Kind::Uint => ArgValue::Uint(v),
                Kind::Ptr | Kind::Hex => ArgValue::Text(format!("{v:#x}")),
                Kind::Mode => ArgValue::Text(format!("{v:#o}")),
                Kind::OpenFlags => ArgValue::Text(open_flags(v)),
                Kind::Str => ArgValue::Str(match self.read_string(v, root) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(format!("{arg} at {v:#x}: {e}"));
                        None
                    }
                }),
                Kind::StrArray => ArgValue::StrArray(match self.read_argv(v, root) {
                    Ok(a) => Some(a),
                    Err(e) => {
                        problems.push(format!("{arg} at {v:#x}: {e}"));
                        None
                    }
                }),
            };
            out.push((arg, decoded));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::open_flags;

    #[test]
    fn open_flags_by_name() {
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(open_flags(0o1101), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(open_flags(0o2200000), "O_RDONLY|O_DIRECTORY|O_CLOEXEC");
        assert_eq!(open_flags(0o4010002), "O_RDWR|O_SYNC");
        assert_eq!(open_flags(0o20200000), "O_RDONLY|O_TMPFILE");
        assert_eq!(open_flags(0o40000000000), "O_RDONLY|0o40000000000");
    }
}
