//! [`VmiOs`] for [`LinuxOs`]: the OS-agnostic view of the Linux-specific operations.

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{OsModule, OsProcess, OsRegion, OsThread, Va, VmiCore, VmiError, VmiOs, VmiRead};

use crate::{LinuxOs, LinuxTask};

impl From<&LinuxTask> for OsProcess {
    fn from(t: &LinuxTask) -> Self {
        OsProcess {
            pid: u64::from(t.tgid),
            ppid: u64::from(t.ppid),
            name: t.comm.clone(),
            object: t.task,
            translation_root: t.user_root,
            is_kernel: t.is_kernel_thread(),
        }
    }
}

impl From<&LinuxTask> for OsThread {
    fn from(t: &LinuxTask) -> Self {
        OsThread {
            tid: u64::from(t.pid),
            pid: u64::from(t.tgid),
            object: t.task,
            name: Some(t.comm.clone()),
        }
    }
}

fn pid32(pid: u64) -> Result<u32, VmiError> {
    u32::try_from(pid).map_err(|_| VmiError::InvalidArgument(format!("pid {pid}")))
}

impl<D: VmiRead<Architecture = Amd64>> VmiOs<D> for LinuxOs {
    fn name(&self) -> &'static str {
        "linux"
    }

    fn kernel_image_base(&self, _core: &VmiCore<D>) -> Result<Va, VmiError> {
        self.kernel.text.ok_or(VmiError::NotFound {
            kind: "symbol",
            name: "_text".into(),
        })
    }

    fn kernel_information_string(&self, _core: &VmiCore<D>) -> Result<String, VmiError> {
        self.kernel
            .banner
            .clone()
            .map(|b| b.trim_end().to_owned())
            .ok_or(VmiError::NotFound {
                kind: "symbol",
                name: "linux_banner".into(),
            })
    }

    /// Processes whose task could be read; use [`LinuxOs::process_list`] to see what
    /// was skipped.
    fn processes(&self, core: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Ok(self
            .process_list(core)?
            .tasks
            .iter()
            .map(OsProcess::from)
            .collect())
    }

    fn process(&self, core: &VmiCore<D>, pid: u64) -> Result<OsProcess, VmiError> {
        self.find_process(core, pid32(pid)?)
            .map(|t| OsProcess::from(&t))
    }

    fn threads(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsThread>, VmiError> {
        let leader = self.find_process(core, pid32(pid)?)?;
        Ok(self
            .threads_of(core, leader.task)?
            .tasks
            .iter()
            .map(OsThread::from)
            .collect())
    }

    fn modules(&self, core: &VmiCore<D>) -> Result<Vec<OsModule>, VmiError> {
        Ok(self
            .module_list(core)?
            .modules
            .into_iter()
            .map(|m| OsModule {
                name: m.name,
                base: m.base,
                size: m.size,
                path: None,
            })
            .collect())
    }

    fn memory_regions(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        let task = self.find_process(core, pid32(pid)?)?;
        Ok(self
            .vmas(core, &task)?
            .vmas
            .into_iter()
            .map(|v| OsRegion {
                start: v.start,
                end: v.end,
                protection: v.protection(),
                path: v.path,
            })
            .collect())
    }

    fn current_process(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsProcess, VmiError> {
        let t = self.current_task_from_registers(core, registers)?;
        if t.is_group_leader() {
            return Ok(OsProcess::from(&t));
        }
        let leader = self.kmem(core).ptr(
            t.task + self.offsets.task.group_leader,
            "task_struct.group_leader",
        )?;
        self.task(core, leader).map(|l| OsProcess::from(&l))
    }

    fn current_thread(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsThread, VmiError> {
        self.current_task_from_registers(core, registers)
            .map(|t| OsThread::from(&t))
    }

    /// The arguments in registers at a system-call entry (`entry_SYSCALL_64` or a
    /// breakpoint on it); in a `__x64_sys_*` function use [`LinuxOs::syscall_frame`].
    fn syscall_arguments(
        &self,
        _core: &VmiCore<D>,
        registers: &Registers,
        count: usize,
    ) -> Result<Vec<u64>, VmiError> {
        crate::misc::syscall_args(registers, count)
    }
}
