//! [`VmiOs`] for [`WindowsOs`]: the OS-agnostic view of the Windows-specific operations.

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{OsModule, OsProcess, OsRegion, OsThread, Va, VmiCore, VmiError, VmiOs, VmiRead};

use crate::{WinProcess, WindowsOs};

impl WindowsOs {
    fn os_process(p: &WinProcess) -> OsProcess {
        OsProcess {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name.clone(),
            object: p.eprocess,
            translation_root: Some(p.dtb),
            is_kernel: p.peb.0 == 0,
        }
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

    fn threads(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsThread>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .win_threads(core, &p)?
            .into_iter()
            .map(|t| OsThread {
                tid: t.tid,
                pid: t.pid,
                object: t.ethread,
                name: None,
            })
            .collect())
    }

    fn modules(&self, core: &VmiCore<D>) -> Result<Vec<OsModule>, VmiError> {
        Ok(self
            .kernel_modules(core)?
            .into_iter()
            .map(|m| OsModule {
                name: m.name,
                base: m.base,
                size: m.size,
                path: Some(m.path),
            })
            .collect())
    }

    fn memory_regions(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .vads(core, &p)?
            .into_iter()
            .map(|v| OsRegion {
                start: v.start,
                end: v.end + 1,
                protection: v.rights(),
                path: v.file.clone(),
            })
            .collect())
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
        Ok(OsThread {
            tid: t.tid,
            pid: t.pid,
            object: t.ethread,
            name: None,
        })
    }
}
