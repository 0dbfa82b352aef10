//! [`VmiOs`] for [`LinuxOs`]: the OS-agnostic view of the Linux-specific operations.

use std::path::Path;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    CommandLine, OsAttribute, OsHandle, OsListing, OsLogRecord, OsModule, OsNamespaces,
    OsObjectKind, OsProcess, OsRegion, OsThread, OsValue, Pa, Va, VmiCore, VmiError, VmiOs,
    VmiRead,
};

use crate::{LinuxModule, LinuxOs, LinuxTask, LinuxVma, vm_flags};

impl From<&LinuxTask> for OsProcess {
    fn from(t: &LinuxTask) -> Self {
        OsProcess {
            pid: u64::from(t.tgid),
            ppid: u64::from(t.ppid),
            name: t.name.clone(),
            object: t.task,
            translation_root: t.user_root,
            is_kernel: t.is_kernel_thread(),
            uid: Some(t.uid),
            gid: Some(t.gid),
            state: Some(t.state.letter()),
            start_time_ns: Some(t.start_time_ns),
            namespace_pid: (!t.ns_pids.is_empty()).then(|| u64::from(t.ns_pid())),
            problems: t.problems.clone(),
            attributes: Vec::new(),
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
            state: Some(t.state.letter()),
            attributes: vec![
                OsAttribute::new("ns_tid", OsValue::Number(u64::from(t.ns_pid()))),
                OsAttribute::new(
                    "ns_pids",
                    OsValue::List(
                        t.ns_pids
                            .iter()
                            .map(|&n| OsValue::Number(u64::from(n)))
                            .collect(),
                    ),
                ),
            ],
        }
    }
}

impl From<LinuxModule> for OsModule {
    fn from(m: LinuxModule) -> Self {
        OsModule {
            name: m.name,
            base: m.base,
            size: m.size,
            path: None,
            state: Some(m.state.proc_name()),
            attributes: vec![OsAttribute::new("module", OsValue::Hex(m.module.0))],
        }
    }
}

impl From<LinuxVma> for OsRegion {
    fn from(v: LinuxVma) -> Self {
        OsRegion {
            start: v.start,
            end: v.end,
            protection: v.protection(),
            shared: v.flags & vm_flags::VM_MAYSHARE != 0,
            offset: v.offset(),
            flags: v.flags,
            object: v.vma,
            attributes: vec![
                OsAttribute::column("dev", "DEV", OsValue::Text(v.dev_string())),
                OsAttribute::column("inode", "INODE", OsValue::Number(v.inode)),
                OsAttribute::new("vma", OsValue::Hex(v.vma.0)),
            ],
            path: v.path,
            name: v.name,
        }
    }
}

impl LinuxOs {
    /// The task of a process listed by [`VmiOs`] (read again from its `task_struct`).
    fn task_of<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<LinuxTask, VmiError> {
        self.task(core, process.object)
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
            .map(OsModule::from)
            .collect())
    }

    fn memory_regions(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        let task = self.find_process(core, pid32(pid)?)?;
        Ok(self
            .vmas(core, &task)?
            .vmas
            .into_iter()
            .map(OsRegion::from)
            .collect())
    }

    fn process_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsProcess>, VmiError> {
        let list = LinuxOs::process_list(self, core)?;
        Ok(OsListing {
            items: list.tasks.iter().map(OsProcess::from).collect(),
            skipped: list.skipped,
        })
    }

    /// The arguments; empty for kernel threads and zombies (no address space), as `/proc`
    /// shows them.
    fn process_cmdline(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<CommandLine, VmiError> {
        let task = self.task_of(core, process)?;
        if task.mm.is_none() {
            return Ok(CommandLine::Argv(Vec::new()));
        }
        self.cmdline(core, &task).map(CommandLine::Argv)
    }

    fn process_image_path(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<Option<String>, VmiError> {
        let task = self.task_of(core, process)?;
        self.exe_path(core, &task)
    }

    fn process_environment(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<Vec<(String, Option<String>)>, VmiError> {
        let task = self.task_of(core, process)?;
        Ok(self
            .environment(core, &task)?
            .into_iter()
            .map(|v| match v.split_once('=') {
                Some((k, val)) => (k.to_owned(), Some(val.to_owned())),
                None => (v, None),
            })
            .collect())
    }

    fn process_namespaces(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsNamespaces, VmiError> {
        let task = self.task_of(core, process)?;
        let ns = self.task_namespaces(core, &task)?;
        Ok(OsNamespaces {
            pid_namespace: ns.pid_ns.map(u64::from),
            hostname: ns.hostname,
        })
    }

    fn thread_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsThread>, VmiError> {
        let list = self.threads_of(core, process.object)?;
        Ok(OsListing {
            items: list.tasks.iter().map(OsThread::from).collect(),
            skipped: list.skipped,
        })
    }

    fn module_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsModule>, VmiError> {
        let list = LinuxOs::module_list(self, core)?;
        Ok(OsListing {
            items: list.modules.into_iter().map(OsModule::from).collect(),
            skipped: list.skipped,
        })
    }

    fn memory_region_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsRegion>, VmiError> {
        let task = self.task_of(core, process)?;
        let list = self.vmas(core, &task)?;
        Ok(OsListing {
            items: list.vmas.into_iter().map(OsRegion::from).collect(),
            skipped: list.skipped,
        })
    }

    /// The open files, by descriptor; a path that cannot be read is the file's `error`.
    fn handles(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsHandle>, VmiError> {
        let task = self.task_of(core, process)?;
        let files = self.open_files(core, &task)?;
        Ok(OsListing::complete(
            files
                .into_iter()
                .map(|f| {
                    let (path, error) = match f.path {
                        Ok(p) => (Some(p), None),
                        Err(e) => (None, Some(e)),
                    };
                    OsHandle {
                        id: u64::from(f.fd),
                        object: f.file,
                        path,
                        error,
                        attributes: Vec::new(),
                    }
                })
                .collect(),
        ))
    }

    fn attribute_columns(&self, kind: OsObjectKind) -> Vec<&'static str> {
        match kind {
            OsObjectKind::Region => vec!["DEV", ">INODE"],
            _ => Vec::new(),
        }
    }

    fn kernel_log(&self, core: &VmiCore<D>) -> Result<Vec<OsLogRecord>, VmiError> {
        Ok(self
            .dmesg(core)?
            .into_iter()
            .map(|r| OsLogRecord {
                seq: r.seq,
                ts_nsec: r.ts_nsec,
                text: r.text,
            })
            .collect())
    }

    fn kernel_symbol(&self, _core: &VmiCore<D>, name: &str) -> Result<Va, VmiError> {
        self.symbol_address(name).ok_or_else(|| VmiError::NotFound {
            kind: "kernel symbol",
            name: name.to_owned(),
        })
    }

    fn kernel_translation_root(&self, _core: &VmiCore<D>) -> Result<Pa, VmiError> {
        Ok(self.kernel.kernel_root)
    }

    /// Release, banner, paging, KASLR slide, `phys_base`, direct-map base, kernel root,
    /// KPTI and where the profile came from.
    fn kernel_facts(&self, _core: &VmiCore<D>) -> Vec<OsAttribute> {
        let k = &self.kernel;
        vec![
            OsAttribute::new("kernel_release", k.release.clone().into()),
            OsAttribute::new(
                "banner",
                k.banner.as_deref().map(|b| b.trim_end().to_owned()).into(),
            ),
            OsAttribute::new("paging", OsValue::Text(format!("{:?}", k.paging_mode))),
            OsAttribute::new("kaslr_slide", OsValue::Hex(k.kaslr_offset)),
            OsAttribute::new("phys_base", OsValue::Hex(k.phys_base)),
            OsAttribute::new("page_offset_base", OsValue::Hex(k.page_offset_base.0)),
            OsAttribute::new("kernel_root", OsValue::Hex(k.kernel_root.0)),
            OsAttribute::new("kpti", k.kpti.map_or(OsValue::Null, OsValue::Bool)),
            OsAttribute::new("profile", OsValue::Text(format!("{:?}", k.profile_origin))),
        ]
    }

    /// VMCOREINFO as the kernel writes it (`KEY=VALUE` lines).
    fn crash_dump_note(&self) -> Option<String> {
        Some(crate::misc::vmcoreinfo_text(&self.vmcoreinfo))
    }

    /// Link-time symbol addresses and the running kernel's banner: what Volatility 3
    /// expects (it finds the KASLR shift itself).
    fn export_profile(&self, path: &Path) -> Result<(), VmiError> {
        self.write_isf(path)
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
