//! Process memory: reads through the process's page tables, with the software states of
//! pages that are not present (transition, page file, demand zero, prototype).

use vmi_core::{AccessContext, FaultKind, Pa, Va, VmiCore, VmiError, VmiRead};

use crate::{NotPresent, WinProcess, WindowsError, WindowsOs};

impl WindowsOs {
    /// Reads `buf.len()` bytes of a process's memory, reading transition pages from their
    /// frame and reporting page-file, demand-zero and prototype pages as
    /// [`WindowsError::NotPresent`].
    pub fn read_process_memory<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        va: Va,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = va + done as u64;
            let n = (buf.len() - done).min((0x1000 - (at.0 & 0xFFF)) as usize);
            let chunk = &mut buf[done..done + n];
            match core.read(AccessContext::paging(at, root), chunk) {
                Ok(()) => {}
                Err(e) => {
                    let pf = e.page_fault().copied();
                    match pf {
                        Some(pf) if pf.kind == FaultKind::NotPresent => {
                            let state = self.pte_state(pf.level, pf.entry);
                            match state {
                                Ok(frame) => {
                                    core.read_physical(Pa(frame | (at.0 & 0xFFF)), chunk)?
                                }
                                Err(state) => {
                                    return Err(WindowsError::NotPresent { va: at, state }.into());
                                }
                            }
                        }
                        _ => return Err(e),
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Decodes a non-present entry: `Ok(frame)` for a transition page, else its state.
    fn pte_state(&self, level: u8, e: u64) -> Result<u64, NotPresent> {
        if level != 1 || e == 0 {
            return Err(NotPresent::Unmapped);
        }
        if e & (1 << 10) != 0 {
            return Err(NotPresent::Prototype);
        }
        if e & (1 << 11) != 0 {
            return Ok(e & 0x0000_FFFF_FFFF_F000);
        }
        let high = e >> 32;
        if high != 0 {
            return Err(NotPresent::PageFile {
                file: ((e >> 1) & 0xF) as u8,
                offset: high * 0x1000,
            });
        }
        Err(NotPresent::DemandZero)
    }

    /// The state of the page holding `va`: `Ok(pa)` when readable (present or
    /// transition), else why not.
    pub fn page_state<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        va: Va,
    ) -> Result<Pa, NotPresent> {
        match core.translate(AddressOf::ctx(va, root)) {
            Ok(t) => Ok(t.pa),
            Err(e) => match e.page_fault() {
                Some(pf) if pf.kind == FaultKind::NotPresent => self
                    .pte_state(pf.level, pf.entry)
                    .map(|f| Pa(f | (va.0 & 0xFFF))),
                _ => Err(NotPresent::Unmapped),
            },
        }
    }

    pub(crate) fn read_process_u64<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        va: Va,
    ) -> Result<u64, VmiError> {
        let mut b = [0u8; 8];
        self.read_process_memory(core, p.dtb, va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

/// Builds an address context (a small helper to keep call sites short).
struct AddressOf;
impl AddressOf {
    fn ctx(va: Va, root: Pa) -> vmi_core::AddressContext {
        vmi_core::AddressContext { va, root }
    }
}
