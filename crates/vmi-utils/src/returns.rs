//! Return breakpoints shared by the tracers: one per call waiting for its return, at the
//! return address read from the top of the stack at the function's entry.

use std::collections::BTreeMap;
use std::sync::Mutex;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{AccessContext, Registers as _, VmiError, VmiEventControl, VmiRead};

use crate::bpm::{AddressSpace, BreakpointId, BreakpointManager};

/// Most calls waiting for their return at once, per tracer: the oldest is given up first
/// (a call that never returns, like `exit`, would otherwise keep its breakpoint).
pub const MAX_PENDING_RETURNS: usize = 4096;

/// Calls waiting for their return, by return breakpoint, in arrival order.
pub(crate) struct Waiting<E>(Mutex<BTreeMap<BreakpointId, E>>);

impl<E> Waiting<E> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(BTreeMap::new()))
    }

    /// At a function's entry (`regs`): sets a breakpoint on its return address in
    /// `space`, tagged by `tag(stack pointer after the return)`, and parks `event` until
    /// it fires. On failure `event` comes back with the error.
    pub(crate) fn park<D, T>(
        &self,
        bpm: &BreakpointManager<'_, D, T>,
        space: AddressSpace,
        regs: &Registers,
        tag: impl FnOnce(u64) -> T,
        event: E,
    ) -> Result<(), (E, VmiError)>
    where
        D: VmiRead<Architecture = Amd64> + VmiEventControl,
        T: Clone,
    {
        let sp = regs.rsp;
        let at = bpm
            .core()
            .read_va(AccessContext::paging(
                vmi_core::Va(sp),
                regs.translation_root(),
            ))
            .and_then(|ret| bpm.add(space, ret, tag(sp.wrapping_add(8))));
        match at {
            Ok(id) => {
                let mut waiting = self.0.lock().unwrap_or_else(|p| p.into_inner());
                waiting.insert(id, event);
                if waiting.len() > MAX_PENDING_RETURNS
                    && let Some((old, _)) = waiting.pop_first()
                {
                    // Within a handler: the driver breakpoint goes with this event's answer.
                    let _ = bpm.remove(old);
                }
                Ok(())
            }
            Err(e) => Err((event, e)),
        }
    }

    /// The call whose return breakpoint `id` fired (the caller checked thread and stack
    /// pointer); the breakpoint is removed.
    pub(crate) fn take<D, T>(
        &self,
        bpm: &BreakpointManager<'_, D, T>,
        id: BreakpointId,
    ) -> Option<E>
    where
        D: VmiRead<Architecture = Amd64> + VmiEventControl,
        T: Clone,
    {
        let _ = bpm.remove(id);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }
}
