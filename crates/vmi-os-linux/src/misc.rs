//! Hostname, uptime and system-call arguments.

use std::time::Duration;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{Va, VmiCore, VmiError, VmiRead};
use vmi_profile::Type;

use crate::kmem::{fixed_cstr, malformed};
use crate::{LinuxOs, LinuxTask};

/// System-call number and arguments saved in a task's `pt_regs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallFrame {
    /// `orig_ax`: the system-call number (-1 when not in a system call).
    pub nr: u64,
    /// `di, si, dx, r10, r8, r9`.
    pub args: [u64; 6],
    /// User instruction pointer.
    pub ip: u64,
    /// User stack pointer.
    pub sp: u64,
    /// User code segment (0x33 for 64-bit user code).
    pub cs: u64,
}

/// The x86-64 Linux system-call arguments in registers: `rdi, rsi, rdx, r10, r8, r9`.
pub(crate) fn syscall_args(regs: &Registers, count: usize) -> Result<Vec<u64>, VmiError> {
    let all = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    all.get(..count).map(<[u64]>::to_vec).ok_or_else(|| {
        VmiError::InvalidArgument(format!("{count} system-call arguments (x86-64 has 6)"))
    })
}

/// The namespaces a task is in, as far as `ps` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNamespaces {
    /// Inode number of the task's PID namespace (`/proc/PID/ns/pid` is `pid:[INUM]`).
    pub pid_ns: Option<u32>,
    /// The host name of the task's UTS namespace (a container's own host name).
    pub hostname: Option<String>,
}

impl LinuxOs {
    /// The PID and UTS namespaces of `task` (`thread_pid->numbers[level].ns`,
    /// `nsproxy->uts_ns`); `None` where the task has none any more (a zombie has no
    /// `nsproxy`) or the profile lacks the fields.
    pub fn task_namespaces<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &crate::LinuxTask,
    ) -> Result<TaskNamespaces, VmiError> {
        let k = self.kmem(core);
        let o = &self.offsets.task;
        let m = &self.offsets.misc;
        let pid_ns = match (
            o.thread_pid,
            o.pid_level,
            o.pid_numbers,
            o.upid_ns,
            o.upid_size,
            o.pid_ns_inum,
        ) {
            (Some(tp), Some(level), Some(numbers), Some(ns), Some(size), Some(inum)) => {
                match k.opt_ptr(task.task + tp, "task_struct.thread_pid")? {
                    Some(pid) => {
                        let lvl = u64::from(k.u32(pid + level)?.min(32));
                        let ns = k.ptr(pid + numbers + lvl * size + ns, "upid.ns")?;
                        Some(k.u32(ns + inum)?)
                    }
                    None => None,
                }
            }
            _ => None,
        };
        let hostname = match (o.nsproxy, o.nsproxy_uts, m.uts_name, m.nodename) {
            (Some(np), Some(uts), Some(name), Some(node)) => {
                match k.opt_ptr(task.task + np, "task_struct.nsproxy")? {
                    Some(nsproxy) => {
                        let ns = k.ptr(nsproxy + uts, "nsproxy.uts_ns")?;
                        let len = node.size.unwrap_or(65).min(256) as usize;
                        Some(fixed_cstr(&k.vec(ns + name + node.offset, len)?))
                    }
                    None => None,
                }
            }
            _ => None,
        };
        Ok(TaskNamespaces { pid_ns, hostname })
    }

    /// The host name (`init_uts_ns.name.nodename`).
    pub fn hostname<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<String, VmiError> {
        let m = &self.offsets.misc;
        let (Some(ns), Some(name), Some(node)) = (m.init_uts_ns, m.uts_name, m.nodename) else {
            return Err(VmiError::NotFound {
                kind: "profile entries",
                name: "init_uts_ns, uts_namespace.name, new_utsname.nodename".into(),
            });
        };
        let len = node.size.unwrap_or(65).min(256) as usize;
        let bytes = self.kmem(core).vec(Va(ns) + name + node.offset, len)?;
        Ok(fixed_cstr(&bytes))
    }

    /// Time since boot, counting suspend (what `/proc/uptime` shows), from the
    /// timekeeper (`tk_core.timekeeper`: `tkr_mono.base + offs_boot`), as of its last
    /// update (one tick).
    pub fn uptime<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Duration, VmiError> {
        let m = &self.offsets.misc;
        let missing = || VmiError::NotFound {
            kind: "profile entries",
            name: "tk_core, timekeeper.tkr_mono.base, timekeeper.offs_boot".into(),
        };
        let (Some(base), Some(boot)) = (m.tkr_mono_base, m.offs_boot) else {
            return Err(missing());
        };
        let tk_core = self.symbol("tk_core")?;
        let tk = tk_core + self.timekeeper_in_tk_core().ok_or_else(missing)?;
        let k = self.kmem(core);
        let mono = k.u64(tk + base)? as i64;
        let offs = k.u64(tk + boot)? as i64;
        let ns = mono.checked_add(offs).filter(|&n| n >= 0).ok_or_else(|| {
            malformed(
                "timekeeper",
                tk.0,
                format!("monotonic {mono} + boot offset {offs}"),
            )
        })?;
        Ok(Duration::from_nanos(ns as u64))
    }

    /// Offset of the `timekeeper` member in `tk_core`'s anonymous struct type
    /// (`{ seqcount_raw_spinlock_t seq; struct timekeeper timekeeper; }`), from BTF.
    fn timekeeper_in_tk_core(&self) -> Option<u64> {
        let types = &self.profile.types;
        types.iter().find_map(|(_, t)| {
            let Type::Struct(c) = t else { return None };
            if !c.name.is_anon() {
                return None;
            }
            let members = types.members(c);
            if !members.iter().any(|m| types.str(m.name) == "seq") {
                return None;
            }
            let tk = members.iter().find(|m| types.str(m.name) == "timekeeper")?;
            let ty = types.resolve(tk.ty)?;
            (types.name_of(ty) == Some("timekeeper")).then_some(tk.bit_offset / 8)
        })
    }

    /// The user registers saved at the top of a task's kernel stack (`task_pt_regs`):
    /// the system-call number and arguments of a task blocked in a system call.
    ///
    /// The stack is `THREAD_SIZE` = 16 KiB on x86-64 (32 KiB with KASAN, detected by the
    /// `kasan_init` symbol); `pt_regs` sits at its top.
    pub fn syscall_frame<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<SyscallFrame, VmiError> {
        let m = &self.offsets.misc;
        let (Some(size), Some(di), Some(si), Some(dx), Some(r10), Some(r8), Some(r9)) = (
            m.pt_regs_size,
            m.pt_di,
            m.pt_si,
            m.pt_dx,
            m.pt_r10,
            m.pt_r8,
            m.pt_r9,
        ) else {
            return Err(VmiError::NotFound {
                kind: "type",
                name: "pt_regs".into(),
            });
        };
        let thread_size: u64 = if self.profile.symbol("kasan_init").is_some() {
            32 << 10
        } else {
            16 << 10
        };
        let k = self.kmem(core);
        let stack = k.ptr(task.task + self.offsets.task.stack, "task_struct.stack")?;
        let regs = stack + thread_size - size;
        let w = k.window(regs, 0, size)?;
        let opt = |o: Option<u64>| o.map_or(Ok(0), |o| w.u64(o));
        Ok(SyscallFrame {
            nr: opt(m.pt_orig_ax)?,
            args: [
                w.u64(di)?,
                w.u64(si)?,
                w.u64(dx)?,
                w.u64(r10)?,
                w.u64(r8)?,
                w.u64(r9)?,
            ],
            ip: opt(m.pt_ip)?,
            sp: opt(m.pt_sp)?,
            cs: opt(m.pt_cs)?,
        })
    }
}

/// VMCOREINFO as the kernel writes it (`KEY=VALUE` lines), for a dump's note.
pub(crate) fn vmcoreinfo_text(v: &vmi_profile::VmcoreInfo) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    if let Some(r) = &v.osrelease {
        let _ = writeln!(s, "OSRELEASE={r}");
    }
    if let Some(id) = &v.build_id {
        let hexid: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(s, "BUILD-ID={hexid}");
    }
    if let Some(p) = v.page_size {
        let _ = writeln!(s, "PAGESIZE={p}");
    }
    for (k, a) in &v.symbols {
        let _ = writeln!(s, "SYMBOL({k})={a:x}");
    }
    for (k, n) in &v.sizes {
        let _ = writeln!(s, "SIZE({k})={n}");
    }
    for (k, n) in &v.offsets {
        let _ = writeln!(s, "OFFSET({k})={n}");
    }
    for (k, n) in &v.lengths {
        let _ = writeln!(s, "LENGTH({k})={n}");
    }
    for (k, n) in &v.numbers {
        let _ = writeln!(s, "NUMBER({k})={n}");
    }
    for (k, val) in &v.other {
        let _ = writeln!(s, "{k}={val}");
    }
    if let Some(o) = v.kernel_offset {
        let _ = writeln!(s, "KERNELOFFSET={o:x}");
    }
    s
}
