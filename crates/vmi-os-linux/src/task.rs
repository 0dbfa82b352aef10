//! Tasks: processes (thread-group leaders on the `tasks` list), their threads, the
//! current task of each vCPU, and what a process carries in user memory (command line,
//! environment).

use std::collections::HashSet;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{Pa, Va, VmiCore, VmiError, VmiRead};

use crate::kmem::{Kmem, fixed_cstr, is_kernel_address, is_user_address, malformed};
use crate::walk::walk_list;
use crate::{LinuxOs, Skipped};

/// The scheduler state of a task (`__state`/`state` and `exit_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskState {
    /// `task_struct.__state` (`state` before 5.14).
    pub state: u32,
    /// `task_struct.exit_state`.
    pub exit_state: u32,
}

impl TaskState {
    /// The letter `/proc/<pid>/status` shows (`R S D T t X Z P I`).
    ///
    /// Bit values are the kernel's `TASK_*` constants (`include/linux/sched.h`), stable
    /// since 4.14: `TASK_REPORT` is 0x7f and `TASK_IDLE` is `TASK_UNINTERRUPTIBLE |
    /// TASK_NOLOAD` (0x402).
    pub fn letter(self) -> char {
        const TASK_REPORT: u32 = 0x7f;
        const TASK_IDLE: u32 = 0x402;
        if self.state & TASK_IDLE == TASK_IDLE && self.state & 0x1 == 0 {
            return 'I';
        }
        let report = (self.state | self.exit_state) & TASK_REPORT;
        let index = 32 - report.leading_zeros();
        b"RSDTtXZPI"
            .get(index as usize)
            .map_or('?', |&b| char::from(b))
    }
}

/// One task (a thread; a process is its thread-group leader).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxTask {
    /// Address of the `task_struct`.
    pub task: Va,
    /// Thread id (`pid`).
    pub pid: u32,
    /// Process id (`tgid`).
    pub tgid: u32,
    /// Parent's process id (`real_parent->tgid`).
    pub ppid: u32,
    /// `comm` (at most 15 bytes).
    pub comm: String,
    /// The name `/proc/PID/status` shows (`Name:`): `comm` for user tasks; for a kernel
    /// thread its untruncated name (6.0+), and for a workqueue worker its id followed by
    /// `+desc` while it runs a work item of `desc`, `-desc` after (at most 63 bytes).
    pub name: String,
    /// Scheduler state.
    pub state: TaskState,
    /// `flags` (`PF_*`).
    pub flags: u32,
    /// Real user and group ids, effective user and group ids (`real_cred`).
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Effective user id.
    pub euid: u32,
    /// Effective group id.
    pub egid: u32,
    /// `start_time`: monotonic nanoseconds since boot at creation.
    pub start_time_ns: u64,
    /// `start_boottime` (`real_start_time` before 5.5): boot-time nanoseconds at creation,
    /// counting suspend.
    pub start_boottime_ns: Option<u64>,
    /// The `mm_struct` (`None` for kernel threads).
    pub mm: Option<Va>,
    /// Physical root of the user address space: `mm->pgd` minus the direct-map base.
    /// Under KPTI this is the kernel half of the PGD pair, which maps user space too.
    pub user_root: Option<Pa>,
    /// The thread id in every PID namespace the task is in, outermost first (as
    /// `NSpid:` in `/proc/PID/status`); empty when the kernel gives none (a reaped task,
    /// a profile without `struct pid`).
    pub ns_pids: Vec<u32>,
    /// What could not be read of this task (its `mm`, page-table root or namespaced ids):
    /// the task is real but those answers are missing, not empty.
    pub problems: Vec<String>,
}

/// `PF_KTHREAD` (`include/linux/sched.h`, stable since 2.6.27).
const PF_KTHREAD: u32 = 0x0020_0000;
/// `PF_WQ_WORKER`: a workqueue worker (stable since 2.6.36).
const PF_WQ_WORKER: u32 = 0x0000_0020;

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl LinuxTask {
    /// Whether it is a kernel thread (`PF_KTHREAD`; a zombie has no `mm` either but is
    /// not one).
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Whether it leads its thread group (is a process).
    pub fn is_group_leader(&self) -> bool {
        self.pid == self.tgid
    }

    /// The thread id in the task's own (innermost) PID namespace: differs from
    /// [`pid`](Self::pid) inside a container.
    pub fn ns_pid(&self) -> u32 {
        self.ns_pids.last().copied().unwrap_or(self.pid)
    }
}

/// Tasks found by a walk, and the objects that could not be read.
#[derive(Debug, Default)]
pub struct TaskList {
    /// The tasks read, in list order.
    pub tasks: Vec<LinuxTask>,
    /// What was skipped: the address of the object (a `task_struct` or the list node
    /// whose link broke) and why.
    pub skipped: Skipped,
}

impl LinuxOs {
    /// Kernel memory of `core` through the kernel page tables.
    pub(crate) fn kmem<'a, D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &'a VmiCore<D>,
    ) -> Kmem<'a, D> {
        Kmem::new(core, self.kernel.kernel_root, self.kernel.paging_mode)
    }

    pub(crate) fn symbol(&self, name: &'static str) -> Result<Va, VmiError> {
        self.profile
            .symbol_address(name)
            .map(Va)
            .map_err(|_| VmiError::NotFound {
                kind: "symbol",
                name: name.into(),
            })
    }

    /// Reads one `task_struct`.
    pub fn task<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: Va,
    ) -> Result<LinuxTask, VmiError> {
        let k = self.kmem(core);
        let o = &self.offsets.task;
        if !is_kernel_address(task.0, k.mode) {
            return Err(malformed("task_struct", task.0, "not a kernel address"));
        }
        let state_off = o.state_new.or(o.state_old).unwrap_or(0);
        let comm_len = o.comm.size.unwrap_or(16).min(64) as usize;
        let fields = [
            o.pid,
            o.tgid,
            o.real_parent,
            o.mm,
            o.real_cred,
            o.flags,
            state_off,
            o.exit_state,
            o.start_time,
            o.comm.offset,
        ];
        let lo = fields.iter().copied().min().unwrap_or(0);
        let hi = fields
            .iter()
            .map(|f| f + 8)
            .max()
            .unwrap_or(8)
            .max(o.comm.offset + comm_len as u64);
        let w = k.window(task, lo, hi)?;
        let pid = w.u32(o.pid)?;
        let tgid = w.u32(o.tgid)?;
        // `PID_MAX_LIMIT` is 4 Mi on 64-bit kernels: anything above is not a pid.
        const PID_MAX_LIMIT: u32 = 1 << 22;
        if pid > PID_MAX_LIMIT || tgid > PID_MAX_LIMIT {
            return Err(malformed(
                "task_struct.pid",
                w.at(o.pid).0,
                format!("pid {pid} / tgid {tgid} above PID_MAX_LIMIT"),
            ));
        }
        let comm = fixed_cstr(w.bytes(o.comm.offset, comm_len)?);
        let parent = k.check_ptr(
            w.u64(o.real_parent)?,
            "task_struct.real_parent",
            w.at(o.real_parent),
        )?;
        let ppid = k.u32(parent + o.tgid)?;
        let cred = k.check_ptr(
            w.u64(o.real_cred)?,
            "task_struct.real_cred",
            w.at(o.real_cred),
        )?;
        let cw = k.window(
            cred,
            o.cred_uid.min(o.cred_gid).min(o.cred_euid).min(o.cred_egid),
            o.cred_uid.max(o.cred_gid).max(o.cred_euid).max(o.cred_egid) + 4,
        )?;
        let start_boottime_ns = match o.start_boottime.or(o.real_start_time) {
            Some(off) => Some(k.u64(task + off)?),
            None => None,
        };
        // A damaged `mm` keeps the task (it exists): its user memory is then an error.
        let mut problems = Vec::new();
        let mm = match w.u64(o.mm)? {
            0 => None,
            v => {
                if let Err(e) = k.check_ptr(v, "task_struct.mm", w.at(o.mm)) {
                    problems.push(e.to_string());
                }
                Some(Va(v))
            }
        };
        let user_root = match (mm, &self.offsets.mm) {
            (Some(mm), Ok(mo)) if problems.is_empty() => self
                .user_root_of(&k, mm + mo.pgd)
                .map_err(|e| problems.push(e.to_string()))
                .ok(),
            _ => None,
        };
        let ns_pids = self
            .ns_pids(&k, task)
            .map_err(|e| problems.push(e.to_string()))
            .unwrap_or_default();
        let flags = w.u32(o.flags)?;
        let name = if flags & PF_KTHREAD != 0 {
            self.kthread_name(&k, task, flags, &comm)
                .map_err(|e| problems.push(format!("kernel thread name: {e}")))
                .unwrap_or_else(|()| comm.clone())
        } else {
            comm.clone()
        };
        Ok(LinuxTask {
            task,
            pid,
            tgid,
            ppid,
            comm,
            name,
            state: TaskState {
                state: w.u32(state_off)?,
                exit_state: w.u32(o.exit_state)?,
            },
            flags,
            uid: cw.u32(o.cred_uid)?,
            gid: cw.u32(o.cred_gid)?,
            euid: cw.u32(o.cred_euid)?,
            egid: cw.u32(o.cred_egid)?,
            start_time_ns: w.u64(o.start_time)?,
            start_boottime_ns,
            mm,
            user_root,
            ns_pids,
            problems,
        })
    }

    /// What `/proc` names a kernel thread (`proc_task_name`): a workqueue worker as
    /// `wq_worker_comm` does, another kernel thread by `kthread->full_name` when set.
    fn kthread_name<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        task: Va,
        flags: u32,
        comm: &str,
    ) -> Result<String, VmiError> {
        /// `/proc`'s name buffer is 64 bytes.
        const MAX_NAME: usize = 63;
        let o = &self.offsets.task;
        let Some(link) = o.worker_private.or(o.set_child_tid) else {
            return Ok(comm.to_owned());
        };
        let kthread = match k.u64(task + link)? {
            // A kernel thread not started by kthread() (the idle tasks, kthreadd).
            0 => return Ok(comm.to_owned()),
            p => k.check_ptr(p, "task_struct.worker_private", task + link)?,
        };
        let full_name = match o.kthread_full_name {
            Some(off) => match k.u64(kthread + off)? {
                0 => comm.to_owned(),
                p => k.cstring(
                    k.check_ptr(p, "kthread.full_name", kthread + off)?,
                    MAX_NAME,
                )?,
            },
            None => comm.to_owned(),
        };
        let worker_offsets = (
            o.kthread_data,
            o.worker_desc,
            o.worker_current_work,
            o.worker_pool,
        );
        let (true, Some(data), Some(desc), Some(current_work), Some(pool)) = (
            flags & PF_WQ_WORKER != 0,
            worker_offsets.0,
            worker_offsets.1,
            worker_offsets.2,
            worker_offsets.3,
        ) else {
            return Ok(truncate(full_name, MAX_NAME));
        };
        let worker = k.check_ptr(k.u64(kthread + data)?, "kthread.data", kthread + data)?;
        let in_pool = k.u64(worker + pool)? != 0;
        // Since 6.10 the id is formatted afresh (untruncated; a worker leaving its pool
        // is "kworker/dying"), before it was `comm`.
        let mut name = if self.kernel_version() >= Some((6, 10)) {
            let rescuer = match o.worker_rescue_wq {
                Some(off) => k.u64(worker + off)? != 0,
                None => false,
            };
            if in_pool || rescuer {
                full_name
            } else {
                "kworker/dying".to_owned()
            }
        } else {
            comm.to_owned()
        };
        if in_pool {
            let len = desc.size.unwrap_or(24).min(64) as usize;
            let text = k.cstring(worker + desc.offset, len)?;
            if !text.is_empty() {
                let busy = k.u64(worker + current_work)? != 0;
                name.push(if busy { '+' } else { '-' });
                name.push_str(&text);
            }
        }
        Ok(truncate(name, MAX_NAME))
    }

    /// `task->thread_pid->numbers[0..=level].nr`.
    fn ns_pids<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        task: Va,
    ) -> Result<Vec<u32>, VmiError> {
        /// `MAX_PID_NS_LEVEL`.
        const MAX_LEVEL: u32 = 32;
        let o = &self.offsets.task;
        let (Some(tp), Some(level), Some(numbers), Some(nr), Some(size)) = (
            o.thread_pid,
            o.pid_level,
            o.pid_numbers,
            o.upid_nr,
            o.upid_size,
        ) else {
            return Ok(Vec::new());
        };
        let Some(pid) = k.opt_ptr(task + tp, "task_struct.thread_pid")? else {
            return Ok(Vec::new());
        };
        let lvl = k.u32(pid + level)?;
        if lvl > MAX_LEVEL {
            return Err(malformed("pid.level", (pid + level).0, format!("{lvl}")));
        }
        let len = usize::try_from(u64::from(lvl + 1) * size)
            .map_err(|_| malformed("upid", pid.0, "size"))?;
        let raw = k.vec(pid + numbers, len)?;
        (0..=u64::from(lvl))
            .map(|i| {
                let at = usize::try_from(i * size + nr).unwrap_or(usize::MAX);
                raw.get(at..at.saturating_add(4))
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| malformed("upid.nr", pid.0, "outside struct pid"))
            })
            .collect()
    }

    /// `mm->pgd` (read at `pgd_at`) as a physical page-table root.
    fn user_root_of<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        pgd_at: Va,
    ) -> Result<Pa, VmiError> {
        let pgd = k.ptr(pgd_at, "mm_struct.pgd")?;
        let off = pgd
            .checked_offset_from(self.kernel.page_offset_base)
            .filter(|_| pgd.is_aligned(4096))
            .ok_or_else(|| {
                malformed(
                    "mm_struct.pgd",
                    pgd_at.0,
                    format!("{pgd} is not a page in the direct map"),
                )
            })?;
        Ok(Pa(off))
    }

    /// `init_task` (pid 0, the boot CPU's idle task): the head of the task list.
    pub fn init_task(&self) -> Result<Va, VmiError> {
        self.symbol("init_task")
    }

    /// Every process (thread-group leader) on the `tasks` list, `init_task` (pid 0)
    /// excluded. Tasks that cannot be read, and broken list links, are in `skipped`.
    pub fn process_list<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<TaskList, VmiError> {
        let k = self.kmem(core);
        let head = self.init_task()? + self.offsets.task.tasks;
        let walk = walk_list(&k, head, "task_struct.tasks", self.limits.max_list);
        if walk.nodes.is_empty() && walk.errors.is_empty() {
            // A running kernel always has init and kthreadd on the list: an empty list is
            // a damaged head (e.g. `init_task.tasks.next` pointing at itself), not an empty
            // system.
            return Err(malformed(
                "init_task.tasks",
                head.0,
                "the task list is empty (the head points at itself): not even init is on it",
            ));
        }
        let mut out = TaskList {
            tasks: Vec::with_capacity(walk.nodes.len()),
            skipped: walk.errors,
        };
        for node in walk.nodes {
            let task = node - self.offsets.task.tasks;
            match self.task(core, task) {
                Ok(t) => out.tasks.push(t),
                Err(e) => out.skipped.push((task, e)),
            }
        }
        if !out.tasks.iter().any(|t| t.pid == 1) {
            out.skipped.push((
                head,
                malformed(
                    "task_struct.tasks",
                    head.0,
                    "pid 1 (init) is not on the task list: the list is damaged or incomplete",
                ),
            ));
        }
        Ok(out)
    }

    /// The `task_struct`s of the threads of the process led by `leader`, leader first.
    pub fn thread_tasks<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        leader: Va,
    ) -> Result<(Vec<Va>, Skipped), VmiError> {
        let k = self.kmem(core);
        let o = &self.offsets.task;
        if let (Some(node), Some(head)) = (o.thread_node, o.thread_head) {
            // 6.7+: signal->thread_head lists every thread through task->thread_node.
            let signal = k.ptr(leader + o.signal, "task_struct.signal")?;
            let walk = walk_list(
                &k,
                signal + head,
                "signal_struct.thread_head",
                self.limits.max_list,
            );
            let tasks = walk.nodes.into_iter().map(|n| n - node).collect();
            Ok((tasks, walk.errors))
        } else if let Some(group) = o.thread_group {
            // Before 6.7: a ring through task->thread_group that includes the leader.
            let walk = walk_list(
                &k,
                leader + group,
                "task_struct.thread_group",
                self.limits.max_list,
            );
            let mut tasks = vec![leader];
            tasks.extend(walk.nodes.into_iter().map(|n| n - group));
            Ok((tasks, walk.errors))
        } else {
            Err(VmiError::not_supported(
                "listing threads (no task_struct.thread_node or thread_group in the profile)",
                "linux",
            ))
        }
    }

    /// The threads of the process led by the task at `leader`.
    pub fn threads_of<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        leader: Va,
    ) -> Result<TaskList, VmiError> {
        let (tasks, skipped) = self.thread_tasks(core, leader)?;
        let mut out = TaskList {
            tasks: Vec::with_capacity(tasks.len()),
            skipped,
        };
        let mut seen = HashSet::new();
        for t in tasks {
            if !seen.insert(t) {
                continue;
            }
            match self.task(core, t) {
                Ok(task) => out.tasks.push(task),
                Err(e) => out.skipped.push((t, e)),
            }
        }
        Ok(out)
    }

    /// Every thread of every process.
    pub fn all_threads<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<TaskList, VmiError> {
        let procs = self.process_list(core)?;
        let mut out = TaskList {
            tasks: Vec::new(),
            skipped: procs.skipped,
        };
        for p in procs.tasks {
            match self.threads_of(core, p.task) {
                Ok(mut t) => {
                    out.tasks.append(&mut t.tasks);
                    out.skipped.append(&mut t.skipped);
                }
                Err(e) => {
                    out.skipped.push((p.task, e));
                    out.tasks.push(p);
                }
            }
        }
        Ok(out)
    }

    /// The process with this pid (tgid).
    pub fn find_process<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        pid: u32,
    ) -> Result<LinuxTask, VmiError> {
        self.process_list(core)?
            .tasks
            .into_iter()
            .find(|t| t.tgid == pid)
            .ok_or_else(|| VmiError::NotFound {
                kind: "process",
                name: pid.to_string(),
            })
    }

    /// Reads `[start, end)` of a process's user memory, split at NULs: the argument or
    /// environment strings. Bounded by [`Limits::max_args`](crate::Limits::max_args).
    fn user_strings<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
        start_off: u64,
        end_off: u64,
        what: &'static str,
    ) -> Result<Vec<String>, VmiError> {
        let (Some(mm), Some(root)) = (task.mm, task.user_root) else {
            if let Some(p) = task.problems.first() {
                return Err(malformed(
                    "task_struct.mm",
                    task.task.0,
                    format!(
                        "the address space of {} ({}) is unreadable: {p}",
                        task.pid, task.comm
                    ),
                ));
            }
            if task.mm.is_none() {
                // A kernel thread or a zombie: no address space, so nothing, as
                // /proc/PID/cmdline and environ show.
                return Ok(Vec::new());
            }
            return Err(VmiError::NotFound {
                kind: "user address space",
                name: format!("{} ({})", task.pid, task.comm),
            });
        };
        let k = self.kmem(core);
        let start = k.u64(mm + start_off)?;
        let end = k.u64(mm + end_off)?;
        if end < start || !is_user_address(end, k.mode) {
            return Err(malformed(what, mm.0, format!("range {start:#x}..{end:#x}")));
        }
        let len = usize::try_from(end - start)
            .unwrap_or(usize::MAX)
            .min(self.limits.max_args);
        let mut buf = vec![0u8; len];
        let n = core.read_available(k.with_root(root).ctx(Va(start)), &mut buf);
        if n == 0 && len > 0 {
            // Report why the first page is unreadable.
            core.read(k.with_root(root).ctx(Va(start)), &mut buf[..1])?;
        }
        buf.truncate(n);
        if buf.last() == Some(&0) {
            buf.pop();
        }
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        Ok(buf
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect())
    }

    /// The command line (`mm->arg_start..arg_end`), one string per argument; empty for a
    /// kernel thread or a zombie (no address space), as `/proc/PID/cmdline` is.
    pub fn cmdline<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<Vec<String>, VmiError> {
        let mo = self.mm_offsets()?;
        self.user_strings(core, task, mo.arg_start, mo.arg_end, "mm_struct.arg_start")
    }

    /// The environment (`mm->env_start..env_end`), one `KEY=VALUE` string per variable;
    /// empty without an address space.
    pub fn environment<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<Vec<String>, VmiError> {
        let mo = self.mm_offsets()?;
        self.user_strings(core, task, mo.env_start, mo.env_end, "mm_struct.env_start")
    }

    pub(crate) fn mm_offsets(&self) -> Result<&crate::offsets::MmOffsets, VmiError> {
        self.offsets
            .mm
            .as_ref()
            .map_err(|e| crate::builder::os_error("memory maps", e.clone()))
    }

    /// Offset of a per-CPU variable from the per-CPU base: the symbol itself with absolute
    /// per-CPU symbols (x86-64 before 6.15), else its distance from `__per_cpu_start`.
    fn percpu_offset(&self, name: &'static str) -> Result<u64, VmiError> {
        let sym = self.profile.symbol(name).ok_or(VmiError::NotFound {
            kind: "symbol",
            name: name.into(),
        })?;
        if sym.kind == Some('A') || sym.address < 1 << 32 {
            return Ok(sym.address);
        }
        let start = self.symbol("__per_cpu_start")?;
        sym.address
            .checked_sub(start.0)
            .ok_or_else(|| malformed("per-cpu symbol", sym.address, "below __per_cpu_start"))
    }

    /// Offset of `current_task` from a per-CPU base (`pcpu_hot.current_task` on 6.2+).
    fn current_task_offset(&self) -> Result<u64, VmiError> {
        match self.percpu_offset("current_task") {
            Ok(o) => Ok(o),
            Err(_) => {
                let hot = self.percpu_offset("pcpu_hot")?;
                let field = self
                    .offsets
                    .misc
                    .pcpu_hot_current
                    .ok_or(VmiError::NotFound {
                        kind: "field",
                        name: "pcpu_hot.current_task".into(),
                    })?;
                Ok(hot + field)
            }
        }
    }

    /// The per-CPU base of `cpu` from `__per_cpu_offset[cpu]` (no registers needed).
    pub fn per_cpu_base<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        cpu: u32,
    ) -> Result<Va, VmiError> {
        let k = self.kmem(core);
        if let Ok(n) = self.symbol("nr_cpu_ids").and_then(|a| k.u32(a))
            && cpu >= n
        {
            return Err(VmiError::NotFound {
                kind: "cpu",
                name: format!("{cpu} (nr_cpu_ids is {n})"),
            });
        }
        let table = self.symbol("__per_cpu_offset")?;
        let off = k.u64(table + u64::from(cpu) * 8)?;
        Ok(Va(off))
    }

    /// The task running on `cpu`: from that vCPU's registers (GS base) when they were
    /// given to the builder, else from `__per_cpu_offset[cpu]`.
    pub fn current_task<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        cpu: u32,
    ) -> Result<LinuxTask, VmiError> {
        if let Some(regs) = self.registers.get(cpu as usize)
            && let Ok(t) = self.current_task_from_registers(core, regs)
        {
            return Ok(t);
        }
        let base = self.per_cpu_base(core, cpu)?;
        self.current_task_at(core, base)
    }

    fn current_task_at<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        base: Va,
    ) -> Result<LinuxTask, VmiError> {
        let k = self.kmem(core);
        let at = base + self.current_task_offset()?;
        let task = k.ptr(at, "current_task")?;
        self.task(core, task)
    }

    /// The task running on a vCPU, from its registers: the kernel's GS base (the active
    /// one in kernel mode, `KERNEL_GS_BASE` in user mode) plus `current_task`'s offset.
    pub fn current_task_from_registers<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        regs: &Registers,
    ) -> Result<LinuxTask, VmiError> {
        let mode = self.kernel.paging_mode;
        let mut last = VmiError::NoRegisters("finding the current task (no kernel GS base)");
        // At the very first instructions of a syscall the CPL is 0 but GS is still the
        // user's: try the other base too.
        for base in [regs.kernel_gs(), regs.gs_base, regs.kernel_gs_base] {
            if !is_kernel_address(base, mode) {
                continue;
            }
            match self.current_task_at(core, Va(base)) {
                Ok(t) => return Ok(t),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
