//! [`ProcessTracker`]: process and thread lifecycle of a live Linux guest — fork/clone,
//! exec, exit — from breakpoints on three kernel functions found through the profile.
//!
//! | event | kernel function (entry) | what is read there |
//! |---|---|---|
//! | fork/clone | `wake_up_new_task(struct task_struct *p)` | the new task `p`: pid, tid, ppid, comm |
//! | exec | `finalize_exec(struct linux_binprm *bprm)` | the current task (new comm), `bprm->filename`, argv from the new `mm->arg_start..arg_end` |
//! | exit | `do_exit(long code)` | the current task, `code` as a wait status (exit code or signal) |
//!
//! Why these: each is a real (exported or `__noreturn`, never inlined) function on every
//! kernel from 4.18 to 6.12, called once per event, after the state we read is complete:
//! `wake_up_new_task` sees the child fully built, `finalize_exec` runs after
//! `load_elf_binary` has laid out the new stack and set `arg_start`/`arg_end`, `do_exit`
//! before the task releases anything. The task is read from the per-CPU current-task
//! pointer through the event's GS base ([`LinuxOs::current_task_from_registers`]).
//!
//! Guest data is hostile: a task or string that cannot be read does not drop the event,
//! it is reported with what is missing in [`ProcessEvent::problems`].

use std::sync::atomic::AtomicBool;
use std::time::{SystemTime, UNIX_EPOCH};

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{AccessContext, Va, VcpuId, VmiCore, VmiError, VmiEventControl, VmiRead};
use vmi_os_linux::{LinuxOs, LinuxTask};

use crate::bpm::{AddressSpace, BreakpointManager};

/// Most bytes of a file name read at exec (`PATH_MAX`).
pub const MAX_FILENAME: usize = 4096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessEventKind {
    /// A task was created (a process by fork, or a thread by clone: see
    /// [`ProcessEvent::thread`]).
    Fork,
    /// A task executed a new program.
    Exec,
    /// A task exited.
    Exit,
}

impl ProcessEventKind {
    /// `fork`, `exec` or `exit`.
    pub fn name(self) -> &'static str {
        match self {
            ProcessEventKind::Fork => "fork",
            ProcessEventKind::Exec => "exec",
            ProcessEventKind::Exit => "exit",
        }
    }
}

/// One lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    /// What happened.
    pub kind: ProcessEventKind,
    /// Host time of the event, nanoseconds since the Unix epoch.
    pub time_ns: u128,
    /// The vCPU that ran into it.
    pub vcpu: VcpuId,
    /// Process id (`tgid`): of the new task for a fork.
    pub pid: u32,
    /// Thread id (`pid` in kernel terms).
    pub tid: u32,
    /// Parent's process id.
    pub ppid: u32,
    /// `comm`: after an exec, the new program's name.
    pub comm: String,
    /// Whether the task is not its thread group's leader (a thread created by clone, or
    /// a thread that exits).
    pub thread: bool,
    /// Exec: the file name given to `execve` (`bprm->filename`).
    pub filename: Option<String>,
    /// Exec: the new program's arguments.
    pub argv: Option<Vec<String>>,
    /// Exit: the exit code (`exit(2)` argument) when the task exited normally.
    pub exit_code: Option<i32>,
    /// Exit: the signal that killed the task.
    pub signal: Option<i32>,
    /// The `task_struct`.
    pub task: Va,
    /// What could not be read (the event is real; these answers are missing).
    pub problems: Vec<String>,
}

/// Which kernel function a breakpoint sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Hook {
    Fork,
    Exec,
    Exit,
}

/// Watches process lifecycle with three kernel breakpoints. See the [module docs](self).
pub struct ProcessTracker<'a, D: VmiRead + VmiEventControl> {
    core: &'a VmiCore<D>,
    os: &'a LinuxOs,
    bpm: BreakpointManager<'a, D, Hook>,
    filename_offset: u64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl<'a, D> ProcessTracker<'a, D>
where
    D: VmiRead<Architecture = Amd64> + VmiEventControl,
{
    /// Sets the three breakpoints. Fails, setting none, when a function or
    /// `linux_binprm.filename` is not in the profile.
    pub fn new(core: &'a VmiCore<D>, os: &'a LinuxOs) -> Result<Self, VmiError> {
        let symbol = |name: &str| {
            os.symbol_address(name).ok_or_else(|| VmiError::NotFound {
                kind: "kernel function",
                name: name.into(),
            })
        };
        let hooks = [
            (symbol("wake_up_new_task")?, Hook::Fork),
            (symbol("finalize_exec")?, Hook::Exec),
            (symbol("do_exit")?, Hook::Exit),
        ];
        let filename_offset = os
            .profile()
            .offset_of("linux_binprm", "filename")
            .map_err(|_| VmiError::NotFound {
                kind: "field",
                name: "linux_binprm.filename".into(),
            })?;
        let bpm = BreakpointManager::new(core);
        let kernel = AddressSpace::Kernel(os.kernel().kernel_root);
        for (va, hook) in hooks {
            bpm.add(kernel, va, hook)?;
        }
        Ok(Self {
            core,
            os,
            bpm,
            filename_offset,
        })
    }

    /// The breakpoint manager's counters.
    pub fn stats(&self) -> crate::bpm::ManagerStats {
        self.bpm.stats()
    }

    /// Runs until `stop` is set, handing each event to `sink`.
    pub fn run_until(
        &self,
        stop: &AtomicBool,
        mut sink: impl FnMut(ProcessEvent),
    ) -> Result<(), VmiError> {
        self.bpm.run_until(stop, |event, hits| {
            for h in hits {
                sink(self.decode(h.tag, event.vcpu, &event.registers));
            }
            vmi_core::VmiEventResponse::default()
        })
    }

    fn decode(&self, hook: Hook, vcpu: VcpuId, regs: &Registers) -> ProcessEvent {
        let mut problems = Vec::new();
        let current = self.os.current_task_from_registers(self.core, regs);
        let task: Option<LinuxTask> = match hook {
            // The new task is the argument; the current one is its creator.
            Hook::Fork => match self.os.task(self.core, Va(regs.rdi)) {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("new task at {:#x}: {e}", regs.rdi));
                    None
                }
            },
            Hook::Exec | Hook::Exit => match current {
                Ok(t) => Some(t),
                Err(e) => {
                    problems.push(format!("current task: {e}"));
                    None
                }
            },
        };
        let mut ev = ProcessEvent {
            kind: match hook {
                Hook::Fork => ProcessEventKind::Fork,
                Hook::Exec => ProcessEventKind::Exec,
                Hook::Exit => ProcessEventKind::Exit,
            },
            time_ns: now_ns(),
            vcpu,
            pid: task.as_ref().map_or(0, |t| t.tgid),
            tid: task.as_ref().map_or(0, |t| t.pid),
            ppid: task.as_ref().map_or(0, |t| t.ppid),
            comm: task.as_ref().map_or_else(String::new, |t| t.comm.clone()),
            thread: task.as_ref().is_some_and(|t| !t.is_group_leader()),
            filename: None,
            argv: None,
            exit_code: None,
            signal: None,
            task: task.as_ref().map_or(Va(0), |t| t.task),
            problems: Vec::new(),
        };
        match hook {
            Hook::Fork => {}
            Hook::Exec => {
                let k = AccessContext::paging(
                    Va(regs.rdi.wrapping_add(self.filename_offset)),
                    self.os.kernel().kernel_root,
                );
                match self.core.read_va(k).and_then(|p| {
                    self.core.read_string(
                        AccessContext::paging(p, self.os.kernel().kernel_root),
                        MAX_FILENAME,
                    )
                }) {
                    Ok(f) => ev.filename = Some(f),
                    Err(e) => problems.push(format!("bprm->filename: {e}")),
                }
                if let Some(t) = &task {
                    match self.os.cmdline(self.core, t) {
                        Ok(a) => ev.argv = Some(a),
                        Err(e) => problems.push(format!("argv: {e}")),
                    }
                }
            }
            Hook::Exit => {
                // `do_exit(code)`: a wait status, as `exit_group` and signals build it.
                let code = regs.rdi as u32;
                let sig = (code & 0x7f) as i32;
                if sig == 0 {
                    ev.exit_code = Some(((code >> 8) & 0xff) as i32);
                } else {
                    ev.signal = Some(sig);
                }
            }
        }
        ev.problems = problems;
        ev
    }
}
