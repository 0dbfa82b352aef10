//! [`VmiOs`] for [`WindowsOs`]: the OS-agnostic view of the Windows-specific operations.

use std::path::Path;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    CommandLine, OsAttribute, OsHandle, OsListing, OsModule, OsObjectKind, OsProcess, OsRegion,
    OsThread, OsValue, Pa, Va, VmiCore, VmiError, VmiOs, VmiRead,
};

use crate::{Listing, WinHandle, WinModule, WinProcess, WinThread, WinVad, WindowsOs};

impl From<&WinProcess> for OsProcess {
    fn from(p: &WinProcess) -> Self {
        OsProcess {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name.clone(),
            object: p.eprocess,
            translation_root: Some(p.dtb),
            is_kernel: p.peb.0 == 0,
            uid: None,
            gid: None,
            state: Some(if p.exit_time != 0 { 'X' } else { 'R' }),
            // FILETIME (100 ns since 1601) in nanoseconds.
            start_time_ns: Some(p.create_time.saturating_mul(100)),
            namespace_pid: None,
            problems: Vec::new(),
            attributes: Vec::new(),
        }
    }
}

impl From<&WinThread> for OsThread {
    fn from(t: &WinThread) -> Self {
        OsThread {
            tid: t.tid,
            pid: t.pid,
            object: t.ethread,
            name: None,
            state: None,
            attributes: vec![
                OsAttribute::column("teb", "TEB", OsValue::Hex(t.teb.0)),
                OsAttribute::new("start_address", OsValue::Hex(t.start_address.0)),
                OsAttribute::column(
                    "win32_start_address",
                    "START",
                    OsValue::Hex(t.win32_start_address.0),
                ),
            ],
        }
    }
}

impl From<WinModule> for OsModule {
    fn from(m: WinModule) -> Self {
        OsModule {
            name: m.name,
            base: m.base,
            size: m.size,
            path: Some(m.path),
            state: Some("Live"),
            attributes: Vec::new(),
        }
    }
}

impl From<WinVad> for OsRegion {
    fn from(v: WinVad) -> Self {
        OsRegion {
            start: v.start,
            end: v.end + 1,
            protection: v.rights(),
            shared: !v.private,
            offset: 0,
            flags: u64::from(v.protection),
            object: v.node,
            attributes: vec![
                OsAttribute::column(
                    "protection",
                    "PROTECTION",
                    OsValue::Text(v.protection_name().into()),
                ),
                OsAttribute::new("tag", v.tag.clone().into()),
            ],
            name: v.file.clone(),
            path: v.file,
        }
    }
}

impl From<WinHandle> for OsHandle {
    fn from(h: WinHandle) -> Self {
        OsHandle {
            id: h.handle,
            object: h.object,
            path: h.name,
            error: None,
            attributes: vec![
                OsAttribute::column("type", "TYPE", h.type_name.into()),
                OsAttribute::column("access", "ACCESS", OsValue::Hex(u64::from(h.access))),
            ],
        }
    }
}

fn listing<T, U: From<T>>(l: Listing<T>) -> OsListing<U> {
    OsListing {
        items: l.items.into_iter().map(U::from).collect(),
        skipped: l.skipped,
    }
}

impl WindowsOs {
    fn os_process(p: &WinProcess) -> OsProcess {
        OsProcess::from(p)
    }

    /// The process of a [`VmiOs`] listing (read again from its `EPROCESS`).
    fn win_process_of<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<WinProcess, VmiError> {
        self.process_at(core, process.object)
    }
}

impl<D: VmiRead<Architecture = Amd64>> VmiOs<D> for WindowsOs {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn kernel_image_base(&self, _core: &VmiCore<D>) -> Result<Va, VmiError> {
        Ok(self.kernel.base)
    }

    fn kernel_information_string(&self, core: &VmiCore<D>) -> Result<String, VmiError> {
        let ku = Va(0xFFFF_F780_0000_0000);
        let major = core.read_u32(self.k(ku + self.off.ku_major))?;
        let minor = core.read_u32(self.k(ku + self.off.ku_minor))?;
        let build = match self.off.nt_build_number {
            Some(b) => core.read_u32(self.k(self.sym(b)))? & 0xFFFF,
            None => 0,
        };
        Ok(format!(
            "Windows NT {major}.{minor}.{build} ({} {})",
            self.kernel.codeview.pdb_name,
            self.kernel.codeview.isf_key()
        ))
    }

    fn processes(&self, core: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Ok(self
            .process_list(core)?
            .items
            .iter()
            .map(Self::os_process)
            .collect())
    }

    fn process(&self, core: &VmiCore<D>, pid: u64) -> Result<OsProcess, VmiError> {
        self.win_process(core, pid).map(|p| Self::os_process(&p))
    }

    fn threads(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsThread>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .win_threads(core, &p)?
            .iter()
            .map(OsThread::from)
            .collect())
    }

    fn modules(&self, core: &VmiCore<D>) -> Result<Vec<OsModule>, VmiError> {
        Ok(self
            .kernel_modules(core)?
            .into_iter()
            .map(OsModule::from)
            .collect())
    }

    fn memory_regions(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .vads(core, &p)?
            .into_iter()
            .map(OsRegion::from)
            .collect())
    }

    fn process_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsProcess>, VmiError> {
        let l = WindowsOs::process_list(self, core)?;
        Ok(OsListing {
            items: l.items.iter().map(OsProcess::from).collect(),
            skipped: l.skipped,
        })
    }

    /// `ProcessParameters.CommandLine`; empty for processes without a PEB (System).
    fn process_cmdline(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<CommandLine, VmiError> {
        let p = self.win_process_of(core, process)?;
        if p.peb.is_null() {
            return Ok(CommandLine::Text(String::new()));
        }
        self.command_line(core, &p).map(CommandLine::Text)
    }

    fn process_image_path(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<Option<String>, VmiError> {
        let p = self.win_process_of(core, process)?;
        if p.peb.is_null() {
            return Ok(None);
        }
        self.image_path(core, &p).map(Some)
    }

    fn process_environment(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<Vec<(String, Option<String>)>, VmiError> {
        let p = self.win_process_of(core, process)?;
        Ok(self
            .environment(core, &p)?
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .collect())
    }

    fn thread_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsThread>, VmiError> {
        let p = self.win_process_of(core, process)?;
        let l = WindowsOs::thread_list(self, core, &p)?;
        Ok(OsListing {
            items: l.items.iter().map(OsThread::from).collect(),
            skipped: l.skipped,
        })
    }

    /// Kernel drivers (`PsLoadedModuleList`).
    fn module_list(&self, core: &VmiCore<D>) -> Result<OsListing<OsModule>, VmiError> {
        self.kernel_module_list(core).map(listing)
    }

    /// The VADs.
    fn memory_region_list(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsRegion>, VmiError> {
        let p = self.win_process_of(core, process)?;
        self.vad_list(core, &p).map(listing)
    }

    /// The handle table, with object types and names.
    fn handles(
        &self,
        core: &VmiCore<D>,
        process: &OsProcess,
    ) -> Result<OsListing<OsHandle>, VmiError> {
        let p = self.win_process_of(core, process)?;
        self.handle_list(core, &p).map(listing)
    }

    fn attribute_columns(&self, kind: OsObjectKind) -> Vec<&'static str> {
        match kind {
            OsObjectKind::Thread => vec!["TEB", "START"],
            OsObjectKind::Region => vec!["PROTECTION"],
            OsObjectKind::Handle => vec!["TYPE", "ACCESS"],
            _ => Vec::new(),
        }
    }

    fn kernel_symbol(&self, _core: &VmiCore<D>, name: &str) -> Result<Va, VmiError> {
        self.profile()
            .symbol(name)
            .map(|s| self.kernel.base + s.address)
            .ok_or_else(|| VmiError::NotFound {
                kind: "kernel symbol",
                name: name.to_owned(),
            })
    }

    fn kernel_translation_root(&self, _core: &VmiCore<D>) -> Result<Pa, VmiError> {
        Ok(self.kernel_root())
    }

    /// The kernel's base, its address space and the PDB that describes it.
    fn kernel_facts(&self, _core: &VmiCore<D>) -> Vec<OsAttribute> {
        let k = &self.kernel;
        vec![
            OsAttribute::new("kernel_release", OsValue::Null),
            OsAttribute::new("paging", OsValue::Text("Level4".into())),
            OsAttribute::new("kernel_root", OsValue::Hex(self.kernel_root().0)),
            OsAttribute::new("kernel_base", OsValue::Hex(k.base.0)),
            OsAttribute::new(
                "pdb",
                OsValue::Text(format!("{} {}", k.codeview.pdb_name, k.codeview.isf_key())),
            ),
        ]
    }

    fn export_profile(&self, path: &Path) -> Result<(), VmiError> {
        let options = vmi_profile::isf::ExportOptions {
            producer: "vmi".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
        };
        vmi_profile::isf::write_isf(self.profile(), &options, path).map_err(|e| VmiError::Os {
            os: "windows",
            message: format!("writing the ISF {}", path.display()),
            source: Some(Box::new(e)),
        })
    }

    fn current_process(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsProcess, VmiError> {
        let t = self.current_win_thread(core, registers)?;
        let ep = self.kq(core, t.ethread + self.off.th_process)?;
        Ok(Self::os_process(&self.process_at(core, Va(ep))?))
    }

    fn current_thread(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsThread, VmiError> {
        let t = self.current_win_thread(core, registers)?;
        Ok(OsThread::from(&t))
    }
}
