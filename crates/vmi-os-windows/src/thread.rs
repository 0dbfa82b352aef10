//! Threads: a process's `ETHREAD` list and the thread running on a vCPU.

use vmi_arch_amd64::Registers;
use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::walk;
use crate::{Listing, MAX_LIST, WinProcess, WindowsOs};

/// A thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinThread {
    /// Thread id.
    pub tid: u64,
    /// Owning process id.
    pub pid: u64,
    /// ETHREAD address.
    pub ethread: Va,
    /// TEB (0 for system threads).
    pub teb: Va,
    /// StartAddress.
    pub start_address: Va,
    /// Win32StartAddress.
    pub win32_start_address: Va,
    /// CreateTime.
    pub create_time: u64,
}

impl WindowsOs {
    /// Reads the thread at `et`.
    pub fn thread_at<D: VmiRead>(&self, core: &VmiCore<D>, et: Va) -> Result<WinThread, VmiError> {
        let o = &self.off;
        Ok(WinThread {
            tid: self.kq(core, et + o.th_tid)?,
            pid: self.kq(core, et + o.th_pid)?,
            ethread: et,
            teb: Va(self.kq(core, et + o.th_teb)?),
            start_address: Va(self.kq(core, et + o.th_start)?),
            win32_start_address: Va(self.kq(core, et + o.th_win32_start)?),
            create_time: self.kq(core, et + o.th_create_time)?,
        })
    }

    /// The threads of a process (`EPROCESS.ThreadListHead`); an error if any could not be
    /// read (see [`thread_list`](Self::thread_list)).
    pub fn win_threads<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinThread>, VmiError> {
        self.thread_list(core, p)?.complete()
    }

    /// The threads of a process that can be read, and what was skipped.
    pub fn thread_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinThread>, VmiError> {
        let walk = walk::walk_list(
            core,
            self.root,
            p.eprocess + self.off.ep_thread_head,
            "EPROCESS.ThreadListHead list",
            MAX_LIST,
        );
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let et = Va(l.0.wrapping_sub(self.off.th_list_entry));
            match self.thread_at(core, et) {
                Ok(t) => items.push(t),
                Err(e) => skipped.push((et, e)),
            }
        }
        Listing::new(items, skipped)
    }

    /// The thread running on the vCPU with `regs`: KPCR (GS base in kernel mode, kernel
    /// GS base in user mode) → `Prcb.CurrentThread`.
    pub fn current_win_thread<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        regs: &Registers,
    ) -> Result<WinThread, VmiError> {
        let order = if regs.cs.selector & 3 == 0 {
            [regs.gs_base, regs.kernel_gs_base]
        } else {
            [regs.kernel_gs_base, regs.gs_base]
        };
        for kpcr in order {
            if kpcr < 0xFFFF_8000_0000_0000 {
                continue;
            }
            if let Some(s) = self.off.kpcr_self
                && self.kq(core, Va(kpcr) + s).ok() != Some(kpcr)
            {
                continue;
            }
            let th = self.kq(core, Va(kpcr) + self.off.kpcr_prcb + self.off.prcb_current)?;
            if th != 0 {
                return self.thread_at(core, Va(th));
            }
        }
        Err(VmiError::NotFound {
            kind: "KPCR in GS base or kernel GS base",
            name: format!("{:#x}/{:#x}", regs.gs_base, regs.kernel_gs_base),
        })
    }
}
