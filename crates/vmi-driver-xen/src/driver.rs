//! [`XenDriver`]: the core's capability traits over any [`XenInterface`].

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::Range;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use vmi_arch_amd64::instruction::{MAX_NOP_LENGTH, nop_length};
use vmi_arch_amd64::{Amd64, Cr3, DescriptorTable, EventReason, Registers, Segment, efer};
use vmi_core::{
    BreakpointAddress, BreakpointAddressing, BreakpointKind, EventAction, EventCallback,
    EventMonitor, Gfn, MemoryAccess, MonitorChange, Pa, Va, VcpuId, VmState, VmiDriver, VmiError,
    VmiEvent, VmiEventControl, VmiEventResponse, VmiInfo, VmiQueryRegisters, VmiRead,
    VmiSetRegisters, VmiVmControl, VmiWrite,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::abi::{
    self, HvmHwCpu, HvmSaveDescriptor, PvContext, VM_EVENT_INTERFACE_VERSION, VmEvent,
    VmEventRegsX86, XEN_PAGE_SIZE, XenMemAccess, dominf, flags, reason, seg,
};
use crate::interface::{
    DomId, DomainInfo, EINVAL, ENOSYS, EOPNOTSUPP, ESRCH, MonitorOp, XenCallError, XenInterface,
};
use crate::ring::BackRing;

const DRIVER: &str = "xen";
const BY_HYPERVISOR: &str = "this hypervisor";
const BY_DRIVER: &str = "the Xen driver";
/// At most this many ring batches per [`VmiEventControl::wait_for_events`] call, so a
/// flood of events cannot keep one call busy forever.
const MAX_BATCHES_PER_WAIT: usize = 16;
/// Upper bound on the size of an HVM context blob we accept (Xen's are a few KiB per vCPU).
const MAX_HVM_CONTEXT: usize = 16 << 20;
/// The `int3` instruction.
const INT3: u8 = 0xcc;

/// What kind of guest a domain is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestKind {
    /// Paravirtualised: its page tables hold machine frames (MFNs), which is what
    /// this driver's frame numbers are for such a guest.
    Pv,
    /// HVM or PVH (auto-translated): frame numbers are guest frames (GFNs).
    Hvm {
        /// Hardware-assisted paging (NPT/EPT).
        hap: bool,
    },
}

/// Counters of the event loop, for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events handed to a handler.
    pub handled: u64,
    /// Requests with a reason this driver does not know (answered, not handed on).
    pub unknown_reason: u64,
    /// Requests with another vm_event interface version (answered, not parsed further).
    pub bad_version: u64,
    /// Requests naming a vCPU the domain does not have (answered, not handed on).
    pub bad_vcpu: u64,
    /// Responses written.
    pub responses: u64,
    /// `int3`s that were not ours (the guest's own), handed back to the guest as `#BP`.
    pub reinjected: u64,
    /// Hits of our `int3`s continued by moving `rip` past the no-op it replaced.
    pub stepped_over_nops: u64,
    /// Hits of our `int3`s continued by single-stepping the original instruction.
    pub single_stepped: u64,
}

/// An altp2m view id (0 is the host p2m).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewId(pub u16);

struct RingState {
    ring: BackRing,
    local_port: u32,
}

#[derive(Default)]
struct State {
    pauses: u32,
    monitors: HashSet<MonitorOp>,
    /// Frames whose access we changed, per view.
    mem_access: BTreeSet<(u16, u64)>,
    altp2m: bool,
    views: BTreeSet<u16>,
    /// vCPUs we asked Xen to single-step.
    stepping: BTreeSet<u32>,
    /// vCPUs single-stepping over the instruction under one of our `int3`s (its
    /// physical address): the `int3` goes back after the step.
    stepping_over: BTreeMap<u32, u64>,
    stats: EventStats,
}

/// A live Xen domain, driven through `X`.
///
/// Frame numbers ([`Gfn`]) are guest frames for HVM/PVH guests and **machine** frames
/// for PV guests, whose page tables hold MFNs: a page walk from a PV vCPU's CR3 then
/// reads the right frames with no translation step.
///
/// Dropping the driver (also during a panic, or after an error) leaves the guest as it
/// was found; [`XenDriver::close`] does the same and reports the first failure.
pub struct XenDriver<X: XenInterface> {
    xen: X,
    domid: DomId,
    kind: GuestKind,
    vcpus: u16,
    max_gfn: u64,
    state: Mutex<State>,
    /// Our planted `int3`s by physical address. Reads hold it shared from the foreign
    /// read to the patch-up, so they never see an `int3` of ours.
    breakpoints: RwLock<BTreeMap<u64, Planted>>,
    ring: Mutex<Option<RingState>>,
    closed: bool,
}

/// An `int3` of ours.
#[derive(Clone, Copy, Debug)]
struct Planted {
    /// The byte it replaced: what reads of the page return.
    original: u8,
    /// Whether the original byte is back for a moment (a vCPU single-steps over it).
    lifted: bool,
}

impl<X: XenInterface> std::fmt::Debug for XenDriver<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XenDriver")
            .field("domid", &self.domid)
            .field("kind", &self.kind)
            .field("vcpus", &self.vcpus)
            .field("max_gfn", &self.max_gfn)
            .finish_non_exhaustive()
    }
}

/// Turns a library failure into the core's error: refusals of the hypervisor
/// (`EOPNOTSUPP`, `ENOSYS`, and `EINVAL` where `einval_is_refusal`) become
/// [`VmiError::NotSupported`].
fn map_err(operation: &'static str, einval_is_refusal: bool, e: XenCallError) -> VmiError {
    match e.errno {
        EOPNOTSUPP | ENOSYS => VmiError::not_supported(operation, BY_HYPERVISOR),
        EINVAL if einval_is_refusal => VmiError::not_supported(operation, BY_HYPERVISOR),
        ESRCH => VmiError::NotFound {
            kind: "Xen domain",
            name: format!("({} failed with ESRCH)", e.call),
        },
        _ => VmiError::Driver {
            driver: DRIVER,
            message: operation.to_owned(),
            source: Some(Box::new(e)),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A handler that panicked must not make cleanup impossible: take the data anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_lock<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// The physical address of byte `offset` of frame `gfn` (`None` past the address space:
/// no breakpoint of ours can be there).
fn frame_address(gfn: Gfn, offset: usize) -> Option<u64> {
    gfn.0
        .checked_mul(XEN_PAGE_SIZE as u64)?
        .checked_add(offset as u64)
}

/// Lists the domains Xen knows (up to 1024).
pub fn list_domains<X: XenInterface>(xen: &X) -> Result<Vec<DomainInfo>, VmiError> {
    xen.list_domains(1024)
        .map_err(|e| map_err("listing domains", false, e))
}

impl<X: XenInterface> XenDriver<X> {
    /// Attaches to domain `domid`.
    pub fn new(xen: X, domid: DomId) -> Result<Self, VmiError> {
        let info = xen
            .domain_info(domid)
            .map_err(|e| map_err("reading domain info", false, e))?;
        if info.domid != domid {
            return Err(VmiError::NotFound {
                kind: "Xen domain",
                name: domid.to_string(),
            });
        }
        if info.flags & dominf::DYING != 0 {
            return Err(VmiError::driver(DRIVER, format!("domain {domid} is dying")));
        }
        let kind = if info.flags & dominf::HVM_GUEST != 0 {
            GuestKind::Hvm {
                hap: info.flags & dominf::HAP != 0,
            }
        } else {
            GuestKind::Pv
        };
        let vcpus = match info.max_vcpu_id {
            Some(id) => u16::try_from(u64::from(id) + 1).map_err(|_| VmiError::Malformed {
                what: "Xen domain info",
                address: 0,
                detail: format!("max_vcpu_id {id} out of range"),
            })?,
            None => 0,
        };
        let max_gfn = xen
            .maximum_gpfn(domid)
            .map_err(|e| map_err("reading the maximum GFN", false, e))?;
        Ok(Self {
            xen,
            domid,
            kind,
            vcpus,
            max_gfn,
            state: Mutex::new(State::default()),
            breakpoints: RwLock::new(BTreeMap::new()),
            ring: Mutex::new(None),
            closed: false,
        })
    }

    /// The domain id.
    pub fn domid(&self) -> DomId {
        self.domid
    }

    /// PV or HVM/PVH.
    pub fn guest_kind(&self) -> GuestKind {
        self.kind
    }

    /// The interface the driver runs on.
    pub fn interface(&self) -> &X {
        &self.xen
    }

    /// Fresh domain information.
    pub fn domain_info(&self) -> Result<DomainInfo, VmiError> {
        self.xen
            .domain_info(self.domid)
            .map_err(|e| map_err("reading domain info", false, e))
    }

    /// The event loop's counters.
    pub fn event_stats(&self) -> EventStats {
        lock(&self.state).stats
    }

    fn check_vcpu(&self, vcpu: VcpuId) -> Result<u32, VmiError> {
        if vcpu.0 >= self.vcpus {
            return Err(VmiError::NotFound {
                kind: "vCPU",
                name: format!("{} (domain {} has {})", vcpu.0, self.domid, self.vcpus),
            });
        }
        Ok(u32::from(vcpu.0))
    }

    fn check_page_range(offset: usize, len: usize) -> Result<(), VmiError> {
        match offset.checked_add(len) {
            Some(end) if end <= XEN_PAGE_SIZE => Ok(()),
            _ => Err(VmiError::InvalidArgument(format!(
                "{len} bytes at offset {offset} cross the page end"
            ))),
        }
    }

    fn check_frame(&self, gfn: Gfn) -> Result<(), VmiError> {
        if matches!(self.kind, GuestKind::Hvm { .. }) && gfn.0 > self.max_gfn {
            return Err(VmiError::PageUnavailable {
                gfn,
                reason: vmi_core::PageAbsence::BeyondMemory,
            });
        }
        Ok(())
    }

    fn frame_err(gfn: Gfn, e: XenCallError) -> VmiError {
        match e.errno {
            crate::interface::EPERM | ESRCH => map_err("mapping a guest frame", false, e),
            _ => VmiError::PageUnavailable {
                gfn,
                reason: vmi_core::PageAbsence::NotRam,
            },
        }
    }

    /// Most frames [`read_frames`](Self::read_frames) maps in one call.
    pub const MAX_BATCH_FRAMES: usize = 1024;

    /// Reads `buf.len() / 4096` whole consecutive frames from `first` with one batched
    /// foreign mapping (much cheaper per page than [`VmiRead::read_page`] when the
    /// mapping hypercalls dominate). Returns, per frame, whether it could be read;
    /// unreadable frames' bytes are zeroed. `buf` must be a whole number of pages, at
    /// most [`MAX_BATCH_FRAMES`](Self::MAX_BATCH_FRAMES). For a PV guest the frames are
    /// machine frames, as for [`VmiRead::read_page`].
    pub fn read_frames(&self, first: Gfn, buf: &mut [u8]) -> Result<Vec<bool>, VmiError> {
        if !buf.len().is_multiple_of(XEN_PAGE_SIZE)
            || buf.len() / XEN_PAGE_SIZE > Self::MAX_BATCH_FRAMES
        {
            return Err(VmiError::InvalidArgument(format!(
                "a batch read takes whole pages, at most {}: {} bytes",
                Self::MAX_BATCH_FRAMES,
                buf.len()
            )));
        }
        let n = buf.len() / XEN_PAGE_SIZE;
        buf.fill(0);
        let limit = match self.kind {
            GuestKind::Hvm { .. } => self.max_gfn,
            GuestKind::Pv => u64::MAX,
        };
        let frames: Vec<u64> = (0..n as u64)
            .map_while(|i| first.0.checked_add(i).filter(|f| *f <= limit))
            .collect();
        let mut ok = vec![false; n];
        let k = frames.len();
        let bps = read_lock(&self.breakpoints);
        self.xen
            .read_frames(
                self.domid,
                &frames,
                &mut buf[..k * XEN_PAGE_SIZE],
                &mut ok[..k],
            )
            .map_err(|e| Self::frame_err(first, e))?;
        if !bps.is_empty() {
            for ((frame, page), _) in frames
                .iter()
                .zip(buf.chunks_exact_mut(XEN_PAGE_SIZE))
                .zip(&ok)
                .filter(|(_, ok)| **ok)
            {
                if let Some(start) = frame_address(Gfn(*frame), 0) {
                    Self::hide_breakpoints(&bps, start, page);
                }
            }
        }
        Ok(ok)
    }

    // ---- monitor ring ------------------------------------------------------------

    fn ensure_ring(&self) -> Result<(), VmiError> {
        let mut ring = lock(&self.ring);
        if ring.is_some() {
            return Ok(());
        }
        let (mem, remote) = self
            .xen
            .monitor_enable(self.domid)
            .map_err(|e| map_err("vm_event monitoring", false, e))?;
        let back = BackRing::init(mem);
        let local_port = match self.xen.evtchn_bind(self.domid, remote) {
            Ok(p) => p,
            Err(e) => {
                let _ = self.xen.monitor_disable(self.domid);
                return Err(map_err("binding the monitor event channel", false, e));
            }
        };
        *ring = Some(RingState {
            ring: back,
            local_port,
        });
        Ok(())
    }

    /// Switches one of Xen's monitors on or off (driver-specific: also single-step and
    /// debug-exception monitors, which [`EventMonitor`] does not name).
    pub fn monitor(&self, op: MonitorOp, enable: bool) -> Result<(), VmiError> {
        let what = match op {
            MonitorOp::WriteCtrlreg(_) => "control-register write events",
            MonitorOp::MovToMsr(_) => "MSR write events",
            MonitorOp::SoftwareBreakpoint => "software-breakpoint events",
            MonitorOp::Singlestep => "single-step events",
            MonitorOp::Cpuid => "CPUID events",
            MonitorOp::DebugExceptions => "debug-exception events",
            MonitorOp::GuestRequest => "guest-request events",
        };
        // Xen answers EEXIST to a monitor switched to the state it has: ask only for a
        // change (each planted int3 needs the software-breakpoint monitor on).
        if lock(&self.state).monitors.contains(&op) == enable {
            return Ok(());
        }
        if enable {
            self.ensure_ring()?;
        }
        self.xen
            .monitor_control(self.domid, op, enable)
            .map_err(|e| map_err(what, false, e))?;
        let mut st = lock(&self.state);
        if enable {
            st.monitors.insert(op);
        } else {
            st.monitors.remove(&op);
        }
        Ok(())
    }

    /// Sets the second-level access rights of `gfn` in view `view` (0: the host p2m).
    /// `xc_set_mem_access` needs Intel VT-x with EPT: elsewhere this is
    /// [`VmiError::NotSupported`].
    pub fn set_mem_access(
        &self,
        view: ViewId,
        gfn: Gfn,
        access: XenMemAccess,
    ) -> Result<(), VmiError> {
        self.check_frame(gfn)?;
        self.xen
            .set_mem_access(self.domid, view.0, access, gfn.0, 1)
            .map_err(|e| map_err("memory-access permissions", true, e))?;
        let mut st = lock(&self.state);
        if access == XenMemAccess::RWX || access == XenMemAccess::Default {
            st.mem_access.remove(&(view.0, gfn.0));
        } else {
            st.mem_access.insert((view.0, gfn.0));
        }
        Ok(())
    }

    /// Turns altp2m on for the domain (needs Intel VT-x).
    pub fn altp2m_enable(&self) -> Result<(), VmiError> {
        self.xen
            .altp2m_set_domain_state(self.domid, true)
            .map_err(|e| map_err("altp2m", true, e))?;
        lock(&self.state).altp2m = true;
        Ok(())
    }

    /// Creates an altp2m view whose frames default to `default_access`.
    pub fn altp2m_create_view(&self, default_access: XenMemAccess) -> Result<ViewId, VmiError> {
        if !lock(&self.state).altp2m {
            self.altp2m_enable()?;
        }
        let v = self
            .xen
            .altp2m_create_view(self.domid, default_access)
            .map_err(|e| map_err("altp2m views", true, e))?;
        lock(&self.state).views.insert(v);
        Ok(ViewId(v))
    }

    /// Switches every vCPU to `view`.
    pub fn altp2m_switch_to_view(&self, view: ViewId) -> Result<(), VmiError> {
        self.xen
            .altp2m_switch_to_view(self.domid, view.0)
            .map_err(|e| map_err("altp2m view switching", true, e))
    }

    /// Destroys a view this driver created (switching to view 0 first).
    pub fn altp2m_destroy_view(&self, view: ViewId) -> Result<(), VmiError> {
        if view.0 == 0 || !lock(&self.state).views.contains(&view.0) {
            return Err(VmiError::InvalidArgument(format!(
                "altp2m view {} was not created by this driver",
                view.0
            )));
        }
        self.altp2m_switch_to_view(ViewId(0))?;
        self.xen
            .altp2m_destroy_view(self.domid, view.0)
            .map_err(|e| map_err("altp2m views", true, e))?;
        let mut st = lock(&self.state);
        st.views.remove(&view.0);
        st.mem_access.retain(|(v, _)| *v != view.0);
        Ok(())
    }

    fn plant_breakpoint(&self, pa: Pa) -> Result<(), VmiError> {
        if read_lock(&self.breakpoints).contains_key(&pa.0) {
            return Ok(());
        }
        self.monitor(MonitorOp::SoftwareBreakpoint, true)?;
        let gfn = Gfn(pa.0 >> 12);
        self.check_frame(gfn)?;
        let off = (pa.0 & 0xfff) as usize;
        let mut bps = write_lock(&self.breakpoints);
        if bps.contains_key(&pa.0) {
            return Ok(());
        }
        let mut orig = [0u8];
        self.raw_read(gfn, off, &mut orig)?;
        self.raw_write(gfn, off, &[INT3])?;
        bps.insert(
            pa.0,
            Planted {
                original: orig[0],
                lifted: false,
            },
        );
        Ok(())
    }

    fn remove_breakpoint(&self, pa: u64) -> Result<(), VmiError> {
        let mut bps = write_lock(&self.breakpoints);
        if let Some(b) = bps.remove(&pa) {
            self.restore(pa, b)?;
        }
        Ok(())
    }

    /// Puts the original byte back where our `int3` still is. A frame that no longer
    /// holds it was written since (lifted for a step, or reused after the page it held
    /// moved): it is left alone.
    fn restore(&self, pa: u64, b: Planted) -> Result<(), VmiError> {
        let (gfn, off) = (Gfn(pa >> 12), (pa & 0xfff) as usize);
        let mut now = [0u8];
        self.raw_read(gfn, off, &mut now)?;
        if now[0] == INT3 {
            self.raw_write(gfn, off, &[b.original])?;
        }
        Ok(())
    }

    /// The foreign read, without hiding our `int3`s.
    fn raw_read(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        self.xen
            .read_frame(self.domid, gfn.0, offset, buf)
            .map_err(|e| Self::frame_err(gfn, e))
    }

    /// The foreign write, without keeping our `int3`s.
    fn raw_write(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), VmiError> {
        self.xen
            .write_frame(self.domid, gfn.0, offset, data)
            .map_err(|e| Self::frame_err(gfn, e))
    }

    /// Puts the original bytes of our `int3`s in `buf`, read from `start`.
    fn hide_breakpoints(bps: &BTreeMap<u64, Planted>, start: u64, buf: &mut [u8]) {
        let Some(end) = start.checked_add(buf.len() as u64) else {
            return;
        };
        for (pa, b) in bps.range(start..end) {
            // In range by construction: pa - start < buf.len().
            buf[(pa - start) as usize] = b.original;
        }
    }

    /// How many physical `int3`s this driver has planted.
    pub fn planted_breakpoints(&self) -> usize {
        read_lock(&self.breakpoints).len()
    }

    /// Leaves the guest as found and reports the first failure: answers pending
    /// requests, disables every monitor, restores breakpoints and page permissions,
    /// destroys altp2m views, unmaps the ring and unpauses as often as we paused.
    pub fn close(mut self) -> Result<(), VmiError> {
        self.closed = true;
        self.teardown()
    }

    fn teardown(&self) -> Result<(), VmiError> {
        let mut first: Option<VmiError> = None;
        let mut note = |r: Result<(), VmiError>| {
            if let Err(e) = r
                && first.is_none()
            {
                first = Some(e);
            }
        };
        // 1. Stop new events and restore what we changed in the guest.
        let bps = std::mem::take(&mut *write_lock(&self.breakpoints));
        let (monitors, mem, views, altp2m) = {
            let mut st = lock(&self.state);
            st.stepping_over.clear();
            (
                std::mem::take(&mut st.monitors),
                std::mem::take(&mut st.mem_access),
                std::mem::take(&mut st.views),
                std::mem::replace(&mut st.altp2m, false),
            )
        };
        for op in monitors {
            note(
                self.xen
                    .monitor_control(self.domid, op, false)
                    .map_err(|e| map_err("disabling a monitor", false, e)),
            );
        }
        for (pa, b) in bps {
            note(self.restore(pa, b));
        }
        for (view, gfn) in mem
            .into_iter()
            .filter(|(v, _)| *v == 0 || !views.contains(v))
        {
            note(
                self.xen
                    .set_mem_access(self.domid, view, XenMemAccess::RWX, gfn, 1)
                    .map_err(|e| map_err("resetting memory access", true, e)),
            );
        }
        if altp2m || !views.is_empty() {
            note(
                self.xen
                    .altp2m_switch_to_view(self.domid, 0)
                    .map_err(|e| map_err("altp2m view switching", true, e)),
            );
            for v in views {
                note(
                    self.xen
                        .altp2m_destroy_view(self.domid, v)
                        .map_err(|e| map_err("altp2m views", true, e)),
                );
            }
            note(
                self.xen
                    .altp2m_set_domain_state(self.domid, false)
                    .map_err(|e| map_err("altp2m", true, e)),
            );
        }
        // 2. Answer what is still on the ring so no vCPU stays paused, then tear it down.
        if let Some(mut rs) = lock(&self.ring).take() {
            let mut answered = 0;
            while let Some(req) = rs.ring.take_request() {
                let rsp = plain_response(&req.event);
                if rs.ring.put_response(&rsp).is_ok() {
                    answered += 1;
                }
            }
            if answered > 0 {
                rs.ring.push_responses();
                note(
                    self.xen
                        .evtchn_notify(rs.local_port)
                        .map_err(|e| map_err("notifying the monitor ring", false, e)),
                );
            }
            note(
                self.xen
                    .monitor_disable(self.domid)
                    .map_err(|e| map_err("disabling vm_event monitoring", false, e)),
            );
            note(
                self.xen
                    .evtchn_unbind(rs.local_port)
                    .map_err(|e| map_err("unbinding the monitor event channel", false, e)),
            );
            // dropping `rs` unmaps the ring page
        }
        // 3. Undo our pauses.
        let pauses = std::mem::take(&mut lock(&self.state).pauses);
        for _ in 0..pauses {
            note(
                self.xen
                    .unpause(self.domid)
                    .map_err(|e| map_err("unpausing the domain", false, e)),
            );
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ---- registers ------------------------------------------------------------

    fn hvm_cpu(&self, vcpu: u32) -> Result<HvmHwCpu, VmiError> {
        let bytes = self
            .xen
            .hvm_get_cpu(self.domid, vcpu)
            .map_err(|e| map_err("reading HVM vCPU context", false, e))?;
        HvmHwCpu::read_from_prefix(&bytes)
            .map(|(c, _)| c)
            .map_err(|_| VmiError::Malformed {
                what: "hvm_hw_cpu record",
                address: 0,
                detail: format!("{} bytes, expected {}", bytes.len(), size_of::<HvmHwCpu>()),
            })
    }

    fn pv_context(&self, vcpu: u32) -> Result<PvContext, VmiError> {
        let bytes = self
            .xen
            .pv_get_context(self.domid, vcpu)
            .map_err(|e| map_err("reading PV vCPU context", false, e))?;
        PvContext::read_from_prefix(&bytes)
            .map(|(c, _)| c)
            .map_err(|_| VmiError::Malformed {
                what: "vcpu_guest_context",
                address: 0,
                detail: format!("{} bytes, expected {}", bytes.len(), size_of::<PvContext>()),
            })
    }
}

impl<X: XenInterface> Drop for XenDriver<X> {
    fn drop(&mut self) {
        if !self.closed
            && let Err(e) = self.teardown()
        {
            eprintln!("[vmi-driver-xen] cleanup of domain {}: {e}", self.domid);
        }
    }
}

/// Finds the CPU record of `vcpu` in an HVM save blob: the byte range of its
/// `hvm_hw_cpu`. Bounded by the blob; malformed blobs are errors.
pub fn find_hvm_cpu_record(blob: &[u8], vcpu: u32) -> Result<Range<usize>, VmiError> {
    let mut off = 0usize;
    let desc_len = size_of::<HvmSaveDescriptor>();
    let malformed = |off: usize, detail: String| VmiError::Malformed {
        what: "HVM context blob",
        address: off as u64,
        detail,
    };
    while off < blob.len() {
        let (d, _) = HvmSaveDescriptor::read_from_prefix(&blob[off..])
            .map_err(|_| malformed(off, "truncated descriptor".into()))?;
        let start = off + desc_len;
        let end = start
            .checked_add(d.length as usize)
            .filter(|e| *e <= blob.len())
            .ok_or_else(|| malformed(off, format!("record length {} past the end", d.length)))?;
        if d.typecode == abi::HVM_SAVE_CODE_CPU && u32::from(d.instance) == vcpu {
            if (d.length as usize) < size_of::<HvmHwCpu>() {
                return Err(malformed(off, format!("CPU record of {} bytes", d.length)));
            }
            return Ok(start..start + size_of::<HvmHwCpu>());
        }
        if d.typecode == abi::HVM_SAVE_CODE_END {
            break;
        }
        off = end;
    }
    Err(VmiError::NotFound {
        kind: "HVM CPU record",
        name: format!("vCPU {vcpu}"),
    })
}

fn segment(c: &HvmHwCpu, i: usize) -> Segment {
    Segment {
        selector: c.sel[i] as u16,
        base: c.base[i],
        limit: c.limit[i],
        access: c.arbytes[i],
    }
}

/// `hvm_hw_cpu` to registers.
pub fn registers_from_hvm(c: &HvmHwCpu) -> Registers {
    Registers {
        rax: c.rax,
        rbx: c.rbx,
        rcx: c.rcx,
        rdx: c.rdx,
        rsi: c.rsi,
        rdi: c.rdi,
        rbp: c.rbp,
        rsp: c.rsp,
        r8: c.r8,
        r9: c.r9,
        r10: c.r10,
        r11: c.r11,
        r12: c.r12,
        r13: c.r13,
        r14: c.r14,
        r15: c.r15,
        rip: c.rip,
        rflags: c.rflags,
        cs: segment(c, seg::CS),
        ds: segment(c, seg::DS),
        es: segment(c, seg::ES),
        fs: segment(c, seg::FS),
        gs: segment(c, seg::GS),
        ss: segment(c, seg::SS),
        tr: segment(c, seg::TR),
        ldtr: segment(c, seg::LDTR),
        gdtr: DescriptorTable {
            base: c.base[seg::GDTR],
            limit: c.limit[seg::GDTR] as u16,
        },
        idtr: DescriptorTable {
            base: c.base[seg::IDTR],
            limit: c.limit[seg::IDTR] as u16,
        },
        cr0: c.cr0,
        cr2: c.cr2,
        cr3: Cr3(c.cr3),
        cr4: c.cr4,
        cr8: 0,
        dr0: c.dr0,
        dr1: c.dr1,
        dr2: c.dr2,
        dr3: c.dr3,
        dr6: c.dr6,
        dr7: c.dr7,
        efer: c.msr_efer,
        fs_base: c.base[seg::FS],
        gs_base: c.base[seg::GS],
        kernel_gs_base: c.shadow_gs,
        sysenter_cs: c.sysenter_cs,
        sysenter_esp: c.sysenter_esp,
        sysenter_eip: c.sysenter_eip,
        star: c.msr_star,
        lstar: c.msr_lstar,
        cstar: c.msr_cstar,
        sfmask: c.msr_syscall_mask,
    }
}

/// Writes registers into an `hvm_hw_cpu`, keeping what [`Registers`] does not hold
/// (FPU state, TSC, pending event).
pub fn registers_into_hvm(r: &Registers, c: &mut HvmHwCpu) {
    c.rax = r.rax;
    c.rbx = r.rbx;
    c.rcx = r.rcx;
    c.rdx = r.rdx;
    c.rsi = r.rsi;
    c.rdi = r.rdi;
    c.rbp = r.rbp;
    c.rsp = r.rsp;
    c.r8 = r.r8;
    c.r9 = r.r9;
    c.r10 = r.r10;
    c.r11 = r.r11;
    c.r12 = r.r12;
    c.r13 = r.r13;
    c.r14 = r.r14;
    c.r15 = r.r15;
    c.rip = r.rip;
    c.rflags = r.rflags;
    for (i, s) in [
        (seg::CS, r.cs),
        (seg::DS, r.ds),
        (seg::ES, r.es),
        (seg::FS, r.fs),
        (seg::GS, r.gs),
        (seg::SS, r.ss),
        (seg::TR, r.tr),
        (seg::LDTR, r.ldtr),
    ] {
        c.sel[i] = u32::from(s.selector);
        c.base[i] = s.base;
        c.limit[i] = s.limit;
        c.arbytes[i] = s.access;
    }
    c.base[seg::FS] = r.fs_base;
    c.base[seg::GS] = r.gs_base;
    c.base[seg::GDTR] = r.gdtr.base;
    c.limit[seg::GDTR] = u32::from(r.gdtr.limit);
    c.base[seg::IDTR] = r.idtr.base;
    c.limit[seg::IDTR] = u32::from(r.idtr.limit);
    c.cr0 = r.cr0;
    c.cr2 = r.cr2;
    c.cr3 = r.cr3.0;
    c.cr4 = r.cr4;
    c.dr0 = r.dr0;
    c.dr1 = r.dr1;
    c.dr2 = r.dr2;
    c.dr3 = r.dr3;
    c.dr6 = r.dr6;
    c.dr7 = r.dr7;
    c.msr_efer = r.efer;
    c.shadow_gs = r.kernel_gs_base;
    c.sysenter_cs = r.sysenter_cs;
    c.sysenter_esp = r.sysenter_esp;
    c.sysenter_eip = r.sysenter_eip;
    c.msr_star = r.star;
    c.msr_lstar = r.lstar;
    c.msr_cstar = r.cstar;
    c.msr_syscall_mask = r.sfmask;
}

fn pv_seg(word: u64) -> Segment {
    Segment {
        selector: word as u16,
        ..Segment::default()
    }
}

/// A 64-bit PV vCPU's context to registers. CR3 is decoded from Xen's encoding to the
/// machine address of the root table; GS base is the kernel's (`gs_base_kernel`) and
/// the one `swapgs` would load is the user's. EFER is LME|LMA: a 64-bit PV guest always
/// runs in long mode and has no EFER of its own in this context.
pub fn registers_from_pv(c: &PvContext) -> Registers {
    let u = &c.user_regs;
    Registers {
        rax: u.rax,
        rbx: u.rbx,
        rcx: u.rcx,
        rdx: u.rdx,
        rsi: u.rsi,
        rdi: u.rdi,
        rbp: u.rbp,
        rsp: u.rsp,
        r8: u.r8,
        r9: u.r9,
        r10: u.r10,
        r11: u.r11,
        r12: u.r12,
        r13: u.r13,
        r14: u.r14,
        r15: u.r15,
        rip: u.rip,
        rflags: u.rflags,
        cs: pv_seg(u.cs),
        ds: pv_seg(u.ds),
        es: pv_seg(u.es),
        fs: Segment {
            base: c.fs_base,
            ..pv_seg(u.fs)
        },
        gs: Segment {
            base: c.gs_base_kernel,
            ..pv_seg(u.gs)
        },
        ss: pv_seg(u.ss),
        cr0: c.ctrlreg[0],
        cr2: c.ctrlreg[2],
        cr3: Cr3(abi::xen_cr3_to_pfn(c.ctrlreg[3]) << 12),
        cr4: c.ctrlreg[4],
        dr0: c.debugreg[0],
        dr1: c.debugreg[1],
        dr2: c.debugreg[2],
        dr3: c.debugreg[3],
        dr6: c.debugreg[6],
        dr7: c.debugreg[7],
        efer: efer::LME | efer::LMA,
        fs_base: c.fs_base,
        gs_base: c.gs_base_kernel,
        kernel_gs_base: c.gs_base_user,
        ..Registers::default()
    }
}

/// Writes the registers a PV vCPU lets a tool set (general-purpose, RIP, RFLAGS,
/// debug registers, FS/GS bases) into its context.
pub fn registers_into_pv(r: &Registers, c: &mut PvContext) {
    let u = &mut c.user_regs;
    u.rax = r.rax;
    u.rbx = r.rbx;
    u.rcx = r.rcx;
    u.rdx = r.rdx;
    u.rsi = r.rsi;
    u.rdi = r.rdi;
    u.rbp = r.rbp;
    u.rsp = r.rsp;
    u.r8 = r.r8;
    u.r9 = r.r9;
    u.r10 = r.r10;
    u.r11 = r.r11;
    u.r12 = r.r12;
    u.r13 = r.r13;
    u.r14 = r.r14;
    u.r15 = r.r15;
    u.rip = r.rip;
    u.rflags = r.rflags;
    c.debugreg[0] = r.dr0;
    c.debugreg[1] = r.dr1;
    c.debugreg[2] = r.dr2;
    c.debugreg[3] = r.dr3;
    c.debugreg[6] = r.dr6;
    c.debugreg[7] = r.dr7;
    c.fs_base = r.fs_base;
    c.gs_base_kernel = r.gs_base;
    c.gs_base_user = r.kernel_gs_base;
}

/// The registers of a vm_event request.
pub fn registers_from_event(x: &VmEventRegsX86) -> Registers {
    let s = |sel: u16, base: u64, r: abi::SelectorReg| Segment {
        selector: sel,
        base,
        limit: r.limit(),
        access: r.ar(),
    };
    Registers {
        rax: x.rax,
        rbx: x.rbx,
        rcx: x.rcx,
        rdx: x.rdx,
        rsi: x.rsi,
        rdi: x.rdi,
        rbp: x.rbp,
        rsp: x.rsp,
        r8: x.r8,
        r9: x.r9,
        r10: x.r10,
        r11: x.r11,
        r12: x.r12,
        r13: x.r13,
        r14: x.r14,
        r15: x.r15,
        rip: x.rip,
        rflags: x.rflags,
        cs: s(x.cs_sel, u64::from(x.cs_base), x.cs),
        ss: s(x.ss_sel, u64::from(x.ss_base), x.ss),
        ds: s(x.ds_sel, u64::from(x.ds_base), x.ds),
        es: s(x.es_sel, u64::from(x.es_base), x.es),
        fs: s(x.fs_sel, x.fs_base, x.fs),
        gs: s(x.gs_sel, x.gs_base, x.gs),
        gdtr: DescriptorTable {
            base: x.gdtr_base,
            limit: x.gdtr_limit,
        },
        cr0: x.cr0,
        cr2: x.cr2,
        cr3: Cr3(x.cr3),
        cr4: x.cr4,
        dr6: x.dr6,
        dr7: x.dr7,
        efer: x.msr_efer,
        fs_base: x.fs_base,
        gs_base: x.gs_base,
        kernel_gs_base: x.shadow_gs,
        sysenter_cs: x.sysenter_cs,
        sysenter_esp: x.sysenter_esp,
        sysenter_eip: x.sysenter_eip,
        star: x.msr_star,
        lstar: x.msr_lstar,
        ..Registers::default()
    }
}

/// The registers Xen sets from a response with `VM_EVENT_FLAG_SET_REGISTERS`
/// (general-purpose, RFLAGS, RIP), over the request's own.
fn registers_into_event(r: &Registers, x: &mut VmEventRegsX86) {
    x.rax = r.rax;
    x.rbx = r.rbx;
    x.rcx = r.rcx;
    x.rdx = r.rdx;
    x.rsi = r.rsi;
    x.rdi = r.rdi;
    x.rbp = r.rbp;
    x.rsp = r.rsp;
    x.r8 = r.r8;
    x.r9 = r.r9;
    x.r10 = r.r10;
    x.r11 = r.r11;
    x.r12 = r.r12;
    x.r13 = r.r13;
    x.r14 = r.r14;
    x.r15 = r.r15;
    x.rflags = r.rflags;
    x.rip = r.rip;
}

/// A response that only lets the vCPU go on: our version, the request's vCPU, reason
/// and view, and its paused flag echoed.
pub fn plain_response(req: &VmEvent) -> VmEvent {
    let mut rsp = VmEvent::new_zeroed();
    rsp.version = VM_EVENT_INTERFACE_VERSION;
    rsp.vcpu_id = req.vcpu_id;
    rsp.reason = req.reason;
    rsp.altp2m_idx = req.altp2m_idx;
    rsp.flags = req.flags & flags::VCPU_PAUSED;
    rsp
}

fn access_from_flags(f: u32) -> MemoryAccess {
    use abi::mem_access::{R, W, X};
    if f & X != 0 {
        MemoryAccess::Execute
    } else if f & R != 0 && f & W != 0 {
        MemoryAccess::ReadWrite
    } else if f & W != 0 {
        MemoryAccess::Write
    } else {
        MemoryAccess::Read
    }
}

/// The reason of a v7 request, or `None` for reasons this driver does not handle.
pub fn event_reason(req: &VmEvent) -> Option<EventReason> {
    Some(match req.reason {
        reason::WRITE_CTRLREG => {
            let (idx, new, old) = req.write_ctrlreg();
            let index = match idx {
                abi::ctrlreg::CR0 => 0,
                abi::ctrlreg::CR3 => 3,
                abi::ctrlreg::CR4 => 4,
                _ => return None,
            };
            EventReason::ControlRegister { index, old, new }
        }
        reason::MOV_TO_MSR => {
            let (msr, new, _old) = req.mov_to_msr();
            EventReason::Msr {
                index: u32::try_from(msr).ok()?,
                value: new,
            }
        }
        reason::SOFTWARE_BREAKPOINT => {
            let (gfn, ..) = req.debug();
            let pa = gfn
                .checked_mul(XEN_PAGE_SIZE as u64)
                .map(|p| Pa(p | (req.regs.rip & 0xfff)));
            EventReason::Breakpoint {
                va: Va(req.regs.rip),
                pa,
                kind: BreakpointKind::Software,
            }
        }
        reason::SINGLESTEP => EventReason::SingleStep,
        reason::MEM_ACCESS => {
            let (gfn, offset, gla, f) = req.mem_access();
            EventReason::MemoryAccess {
                va: (f & abi::mem_access::GLA_VALID != 0).then_some(Va(gla)),
                pa: gfn
                    .checked_mul(XEN_PAGE_SIZE as u64)
                    .and_then(|p| p.checked_add(offset & 0xfff))
                    .map(Pa),
                access: access_from_flags(f),
            }
        }
        reason::GUEST_REQUEST => EventReason::GuestRequest,
        reason::DEBUG_EXCEPTION => {
            let (_, pending_dbg, ..) = req.debug();
            EventReason::DebugException { dr6: pending_dbg }
        }
        reason::CPUID => {
            let (_, leaf, subleaf) = req.cpuid();
            EventReason::Cpuid { leaf, subleaf }
        }
        _ => return None,
    })
}

/// A follow-up the driver performs for a response before the vCPU goes on.
enum FollowUp {
    /// A monitor the handler started or stopped.
    Change(MonitorChange),
    RemoveBreakpoint(u64),
    ResetAccess(u64),
    Disable(MonitorOp),
    /// Hand the guest's own `int3` back to it on this vCPU.
    Reinject(u32),
}

/// What a vCPU stopped at one of our `int3`s needs before it goes on, decided once the
/// follow-ups ran (the handler may have removed the breakpoint).
#[derive(Clone, Copy)]
struct StepOver {
    /// Index of the response in the batch.
    index: usize,
    pa: u64,
}

impl<X: XenInterface> XenDriver<X> {
    /// Builds the response to one request, calling the handler for known events.
    fn respond(
        &self,
        req: &VmEvent,
        handler: &mut EventCallback<'_, Amd64>,
        follow: &mut Vec<FollowUp>,
        handled: &mut usize,
    ) -> (VmEvent, Option<u64>) {
        let mut rsp = plain_response(req);
        {
            let mut st = lock(&self.state);
            if req.version != VM_EVENT_INTERFACE_VERSION {
                st.stats.bad_version += 1;
                return (rsp, None);
            }
        }
        let vcpu = match u16::try_from(req.vcpu_id) {
            Ok(v) if v < self.vcpus => VcpuId(v),
            _ => {
                lock(&self.state).stats.bad_vcpu += 1;
                return (rsp, None);
            }
        };
        let Some(reason) = event_reason(req) else {
            lock(&self.state).stats.unknown_reason += 1;
            return (rsp, None);
        };
        // Our int3s: hits of the guest's own go back to it; a vCPU that stepped over
        // the instruction under one of ours gets the int3 back.
        let mut ours = None;
        match &reason {
            EventReason::Breakpoint { pa: Some(pa), .. } => {
                if read_lock(&self.breakpoints).contains_key(&pa.0) {
                    ours = Some(pa.0);
                } else {
                    let mut byte = [0u8];
                    let gfn = Gfn(pa.0 >> 12);
                    let off = (pa.0 & 0xfff) as usize;
                    // An int3 still there is the guest's; none means ours was removed
                    // after the vCPU hit it, and it runs the original instruction.
                    if self.raw_read(gfn, off, &mut byte).is_ok() && byte[0] == INT3 {
                        follow.push(FollowUp::Reinject(req.vcpu_id));
                        lock(&self.state).stats.reinjected += 1;
                    }
                    return (rsp, None);
                }
            }
            EventReason::SingleStep => {
                let over = lock(&self.state).stepping_over.remove(&req.vcpu_id);
                if let Some(pa) = over {
                    self.replant(pa);
                    if !lock(&self.state).stepping.contains(&req.vcpu_id) {
                        // Our step, not the handler's: no event.
                        return (rsp, None);
                    }
                }
            }
            _ => {}
        }
        lock(&self.state).stats.handled += 1;
        let event = VmiEvent {
            vcpu,
            reason: reason.clone(),
            registers: registers_from_event(&req.regs),
        };
        let answer: VmiEventResponse<Amd64> = handler(&event);
        *handled += 1;
        {
            let mut st = lock(&self.state);
            if answer.action == EventAction::SingleStep {
                st.stepping.insert(req.vcpu_id);
            } else {
                st.stepping.remove(&req.vcpu_id);
            }
        }
        if let Some(regs) = &answer.set_registers {
            rsp.regs = req.regs;
            registers_into_event(regs, &mut rsp.regs);
            rsp.flags |= flags::SET_REGISTERS;
        }
        follow.extend(answer.monitors.iter().copied().map(FollowUp::Change));
        match reason {
            EventReason::MemoryAccess { pa, .. } => {
                if answer.remove_monitor {
                    if let Some(pa) = pa {
                        follow.push(FollowUp::ResetAccess(pa.0 >> 12));
                    }
                } else {
                    // let the faulting access happen without lifting the restriction
                    rsp.flags |= flags::EMULATE;
                }
            }
            EventReason::Breakpoint { pa: Some(pa), .. } if answer.remove_monitor => {
                follow.push(FollowUp::RemoveBreakpoint(pa.0));
            }
            EventReason::ControlRegister { index, .. } if answer.remove_monitor => {
                let cr = match index {
                    0 => abi::ctrlreg::CR0,
                    3 => abi::ctrlreg::CR3,
                    _ => abi::ctrlreg::CR4,
                };
                follow.push(FollowUp::Disable(MonitorOp::WriteCtrlreg(cr)));
            }
            EventReason::Msr { index, .. } if answer.remove_monitor => {
                follow.push(FollowUp::Disable(MonitorOp::MovToMsr(index)));
            }
            EventReason::Cpuid { .. } if answer.remove_monitor => {
                follow.push(FollowUp::Disable(MonitorOp::Cpuid));
            }
            EventReason::GuestRequest if answer.remove_monitor => {
                follow.push(FollowUp::Disable(MonitorOp::GuestRequest));
            }
            EventReason::DebugException { .. } if answer.remove_monitor => {
                follow.push(FollowUp::Disable(MonitorOp::DebugExceptions));
            }
            _ => {}
        }
        // A vCPU at our int3 that goes on at the same instruction must get past it.
        let moved = rsp.flags & flags::SET_REGISTERS != 0 && rsp.regs.rip != req.regs.rip;
        let step = ours.filter(|_| !answer.remove_monitor && !moved);
        (rsp, step)
    }

    /// Puts the `int3` back after a single-step over the instruction it replaced.
    fn replant(&self, pa: u64) {
        let mut bps = write_lock(&self.breakpoints);
        if let Some(b) = bps.get_mut(&pa).filter(|b| b.lifted) {
            // A failure leaves the original byte: the breakpoint is lost, the guest is
            // intact; the next plant of this address starts afresh.
            if self
                .raw_write(Gfn(pa >> 12), (pa & 0xfff) as usize, &[INT3])
                .is_ok()
            {
                b.lifted = false;
            } else {
                bps.remove(&pa);
            }
        }
    }

    /// Lets a vCPU stopped at our `int3` at `pa` go on through the instruction the int3
    /// replaced: `rip` moves past a no-op; anything else is single-stepped with the
    /// original byte back for that step (other vCPUs can pass it unseen meanwhile).
    /// Where the hypervisor cannot single-step, the breakpoint is removed and the error
    /// says so; the vCPU then runs the original instruction.
    fn step_over(&self, req: &VmEvent, rsp: &mut VmEvent, pa: u64) -> Result<(), VmiError> {
        if !read_lock(&self.breakpoints).contains_key(&pa) {
            return Ok(()); // removed meanwhile: the original instruction runs
        }
        let gfn = Gfn(pa >> 12);
        let off = (pa & 0xfff) as usize;
        let mut code = [0u8; MAX_NOP_LENGTH];
        let len = MAX_NOP_LENGTH.min(XEN_PAGE_SIZE - off);
        self.read_page(gfn, off, &mut code[..len])?;
        if let Some(n) = nop_length(&code[..len]) {
            if rsp.flags & flags::SET_REGISTERS == 0 {
                rsp.regs = req.regs;
                rsp.flags |= flags::SET_REGISTERS;
            }
            rsp.regs.rip = rsp.regs.rip.wrapping_add(n as u64);
            lock(&self.state).stats.stepped_over_nops += 1;
            return Ok(());
        }
        if let Err(e) = self.monitor(MonitorOp::Singlestep, true) {
            self.remove_breakpoint(pa)?;
            return Err(VmiError::driver(
                DRIVER,
                format!(
                    "breakpoint at physical {pa:#x} removed: continuing past the instruction it replaced ({:02x?}, not a no-op) needs single-step, and {e}",
                    &code[..len]
                ),
            ));
        }
        {
            let mut bps = write_lock(&self.breakpoints);
            let Some(b) = bps.get_mut(&pa) else {
                return Ok(());
            };
            self.raw_write(gfn, off, &[b.original])?;
            b.lifted = true;
        }
        let mut st = lock(&self.state);
        st.stepping_over.insert(req.vcpu_id, pa);
        st.stats.single_stepped += 1;
        Ok(())
    }
}

impl<X: XenInterface> VmiDriver for XenDriver<X> {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: XEN_PAGE_SIZE as u64,
            max_gfn: Gfn(self.max_gfn),
            vcpus: self.vcpus,
            live: true,
            cache_pages: true,
            kind: match self.kind {
                GuestKind::Pv => "xen-pv",
                GuestKind::Hvm { .. } => "xen-hvm",
            },
        })
    }
}

impl<X: XenInterface> VmiRead for XenDriver<X> {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        Self::check_page_range(offset, buf.len())?;
        self.check_frame(gfn)?;
        // Held from the read to the patch-up: no int3 of ours is planted or removed
        // in between.
        let bps = read_lock(&self.breakpoints);
        self.raw_read(gfn, offset, buf)?;
        if !bps.is_empty()
            && let Some(start) = frame_address(gfn, offset)
        {
            Self::hide_breakpoints(&bps, start, buf);
        }
        Ok(())
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        match self.kind {
            GuestKind::Hvm { .. } => {
                let end = (self.max_gfn.saturating_add(1)).saturating_mul(XEN_PAGE_SIZE as u64);
                Ok(vec![Pa(0)..Pa(end)])
            }
            GuestKind::Pv => Err(VmiError::not_supported(
                "physical ranges of a PV guest (its frames are machine frames)",
                BY_DRIVER,
            )),
        }
    }
}

impl<X: XenInterface> VmiWrite for XenDriver<X> {
    fn write_page(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), VmiError> {
        Self::check_page_range(offset, data.len())?;
        self.check_frame(gfn)?;
        let mut bps = write_lock(&self.breakpoints);
        let Some(start) = frame_address(gfn, offset) else {
            return self.raw_write(gfn, offset, data);
        };
        // Within the frame (check_page_range), so no overflow.
        let end = start + data.len() as u64;
        if bps.range(start..end).next().is_none() {
            return self.raw_write(gfn, offset, data);
        }
        // A write over our int3: it becomes the byte the int3 stands for (what reads
        // return and what goes back at removal); the int3 stays.
        let mut bytes = data.to_vec();
        for (pa, b) in bps.range_mut(start..end) {
            let i = (pa - start) as usize;
            b.original = bytes[i];
            if !b.lifted {
                bytes[i] = INT3;
            }
        }
        self.raw_write(gfn, offset, &bytes)
    }
}

impl<X: XenInterface> VmiQueryRegisters for XenDriver<X> {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        let v = self.check_vcpu(vcpu)?;
        match self.kind {
            GuestKind::Hvm { .. } => Ok(registers_from_hvm(&self.hvm_cpu(v)?)),
            GuestKind::Pv => Ok(registers_from_pv(&self.pv_context(v)?)),
        }
    }
}

impl<X: XenInterface> VmiSetRegisters for XenDriver<X> {
    fn set_registers(&self, vcpu: VcpuId, registers: &Registers) -> Result<(), VmiError> {
        let v = self.check_vcpu(vcpu)?;
        match self.kind {
            GuestKind::Hvm { .. } => {
                let mut blob = self
                    .xen
                    .hvm_get_context(self.domid)
                    .map_err(|e| map_err("reading HVM context", false, e))?;
                if blob.len() > MAX_HVM_CONTEXT {
                    return Err(VmiError::Malformed {
                        what: "HVM context blob",
                        address: 0,
                        detail: format!("{} bytes", blob.len()),
                    });
                }
                let range = find_hvm_cpu_record(&blob, v)?;
                let rec = &mut blob[range];
                let mut cpu = HvmHwCpu::read_from_bytes(rec).map_err(|_| VmiError::Malformed {
                    what: "hvm_hw_cpu record",
                    address: 0,
                    detail: "wrong size".into(),
                })?;
                registers_into_hvm(registers, &mut cpu);
                rec.copy_from_slice(cpu.as_bytes());
                self.xen
                    .hvm_set_context(self.domid, &blob)
                    .map_err(|e| map_err("writing HVM context", false, e))
            }
            GuestKind::Pv => {
                let mut ctx = self.pv_context(v)?;
                registers_into_pv(registers, &mut ctx);
                self.xen
                    .pv_set_context(self.domid, v, ctx.as_bytes())
                    .map_err(|e| map_err("writing PV vCPU context", false, e))
            }
        }
    }
}

impl<X: XenInterface> VmiVmControl for XenDriver<X> {
    fn pause(&self) -> Result<(), VmiError> {
        self.xen
            .pause(self.domid)
            .map_err(|e| map_err("pausing the domain", false, e))?;
        lock(&self.state).pauses += 1;
        Ok(())
    }

    fn resume(&self) -> Result<(), VmiError> {
        let mut st = lock(&self.state);
        if st.pauses == 0 {
            return Err(VmiError::InvalidArgument(
                "resume without a pause of this driver (Xen counts pauses)".into(),
            ));
        }
        self.xen
            .unpause(self.domid)
            .map_err(|e| map_err("unpausing the domain", false, e))?;
        st.pauses -= 1;
        Ok(())
    }

    fn state(&self) -> Result<VmState, VmiError> {
        let info = self.domain_info()?;
        Ok(if info.flags & dominf::PAUSED != 0 {
            VmState::Paused
        } else if info.flags & dominf::SHUTDOWN != 0 {
            VmState::Other("shut down")
        } else if info.flags & dominf::DYING != 0 {
            VmState::Other("dying")
        } else {
            VmState::Running
        })
    }
}

impl<X: XenInterface> VmiEventControl for XenDriver<X> {
    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        match monitor {
            EventMonitor::ControlRegisterWrite(i) => {
                self.monitor(MonitorOp::WriteCtrlreg(cr_index(i)?), true)
            }
            EventMonitor::MsrWrite(msr) => self.monitor(MonitorOp::MovToMsr(msr), true),
            EventMonitor::Cpuid => self.monitor(MonitorOp::Cpuid, true),
            EventMonitor::GuestRequest => self.monitor(MonitorOp::GuestRequest, true),
            EventMonitor::Breakpoint {
                address: BreakpointAddress::Physical(pa),
                kind: BreakpointKind::Software,
            } => self.plant_breakpoint(pa),
            EventMonitor::Breakpoint { .. } => Err(VmiError::not_supported(
                "breakpoints other than software ones at physical addresses",
                BY_DRIVER,
            )),
            EventMonitor::PageAccess { gfn, access } => {
                self.ensure_ring()?;
                let allowed = match access {
                    MemoryAccess::Read => XenMemAccess::WX,
                    MemoryAccess::Write => XenMemAccess::RX,
                    MemoryAccess::ReadWrite => XenMemAccess::X,
                    MemoryAccess::Execute => XenMemAccess::RW,
                };
                self.set_mem_access(ViewId(0), gfn, allowed)
            }
            EventMonitor::Watchpoint { .. } => Err(VmiError::not_supported(
                "watchpoints (use page-access monitors)",
                BY_DRIVER,
            )),
            _ => Err(VmiError::not_supported("this kind of monitor", BY_DRIVER)),
        }
    }

    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        match monitor {
            EventMonitor::ControlRegisterWrite(i) => {
                self.monitor(MonitorOp::WriteCtrlreg(cr_index(i)?), false)
            }
            EventMonitor::MsrWrite(msr) => self.monitor(MonitorOp::MovToMsr(msr), false),
            EventMonitor::Cpuid => self.monitor(MonitorOp::Cpuid, false),
            EventMonitor::GuestRequest => self.monitor(MonitorOp::GuestRequest, false),
            EventMonitor::Breakpoint {
                address: BreakpointAddress::Physical(pa),
                kind: BreakpointKind::Software,
            } => self.remove_breakpoint(pa.0),
            EventMonitor::PageAccess { gfn, .. } => {
                self.set_mem_access(ViewId(0), gfn, XenMemAccess::RWX)
            }
            _ => Err(VmiError::not_supported("this kind of monitor", BY_DRIVER)),
        }
    }

    /// Physical: an `int3` lives in a frame, whichever address space maps it.
    fn breakpoint_addressing(&self) -> BreakpointAddressing {
        BreakpointAddressing::Physical
    }

    fn wait_for_events(
        &self,
        timeout: Duration,
        handler: &mut EventCallback<'_, Amd64>,
    ) -> Result<usize, VmiError> {
        let port = match lock(&self.ring).as_ref() {
            Some(rs) => rs.local_port,
            None => {
                return Err(VmiError::InvalidArgument(
                    "no monitor is enabled: nothing to wait for".into(),
                ));
            }
        };
        let queued = lock(&self.ring)
            .as_ref()
            .is_some_and(|rs| rs.ring.unconsumed_requests() > 0);
        if !queued {
            let got = self
                .xen
                .evtchn_wait(timeout)
                .map_err(|e| map_err("waiting on the monitor event channel", false, e))?;
            if got.is_none() {
                return Ok(0);
            }
        }
        let mut handled = 0usize;
        for _ in 0..MAX_BATCHES_PER_WAIT {
            let batch: Vec<VmEvent> = {
                let mut guard = lock(&self.ring);
                let Some(rs) = guard.as_mut() else { break };
                let mut v = Vec::new();
                while let Some(r) = rs.ring.take_request() {
                    v.push(r.event);
                }
                v
            };
            if batch.is_empty() {
                break;
            }
            let mut follow = Vec::new();
            // Whether Xen single-steps each vCPU now (for the handler or for us).
            let stepping_before: Vec<bool> = {
                let st = lock(&self.state);
                batch
                    .iter()
                    .map(|r| {
                        st.stepping.contains(&r.vcpu_id)
                            || st.stepping_over.contains_key(&r.vcpu_id)
                    })
                    .collect()
            };
            let mut steps = Vec::new();
            let mut responses: Vec<VmEvent> = Vec::with_capacity(batch.len());
            for (index, req) in batch.iter().enumerate() {
                let (rsp, step) = self.respond(req, handler, &mut follow, &mut handled);
                if let Some(pa) = step {
                    steps.push(StepOver { index, pa });
                }
                responses.push(rsp);
            }
            let mut first_err = None;
            for f in follow {
                let r = match f {
                    FollowUp::Change(MonitorChange::Enable(m)) => self.monitor_enable(m),
                    FollowUp::Change(MonitorChange::Disable(m)) => self.monitor_disable(m),
                    FollowUp::RemoveBreakpoint(pa) => self.remove_breakpoint(pa),
                    FollowUp::ResetAccess(gfn) => {
                        self.set_mem_access(ViewId(0), Gfn(gfn), XenMemAccess::RWX)
                    }
                    FollowUp::Disable(op) => self.monitor(op, false),
                    FollowUp::Reinject(vcpu) => self
                        .xen
                        .inject_breakpoint(self.domid, vcpu)
                        .map_err(|e| map_err("handing an int3 back to the guest", true, e)),
                };
                if let Err(e) = r {
                    first_err.get_or_insert(e);
                }
            }
            for s in steps {
                let (req, rsp) = (&batch[s.index], &mut responses[s.index]);
                if let Err(e) = self.step_over(req, rsp, s.pa) {
                    first_err.get_or_insert(e);
                }
            }
            {
                let st = lock(&self.state);
                for ((req, rsp), before) in batch.iter().zip(&mut responses).zip(stepping_before) {
                    let after = st.stepping.contains(&req.vcpu_id)
                        || st.stepping_over.contains_key(&req.vcpu_id);
                    if before != after {
                        rsp.flags |= flags::TOGGLE_SINGLESTEP;
                    }
                }
            }
            {
                let mut guard = lock(&self.ring);
                if let Some(rs) = guard.as_mut() {
                    for rsp in &responses {
                        rs.ring
                            .put_response(rsp)
                            .map_err(|e| VmiError::driver(DRIVER, format!("vm_event ring: {e}")))?;
                    }
                    rs.ring.push_responses();
                }
            }
            lock(&self.state).stats.responses += responses.len() as u64;
            self.xen
                .evtchn_notify(port)
                .map_err(|e| map_err("notifying the monitor ring", false, e))?;
            if let Some(e) = first_err {
                return Err(e);
            }
            let more = lock(&self.ring)
                .as_mut()
                .is_some_and(|rs| rs.ring.final_check_for_requests());
            if !more {
                break;
            }
        }
        Ok(handled)
    }
}

fn cr_index(i: u8) -> Result<u32, VmiError> {
    match i {
        0 => Ok(abi::ctrlreg::CR0),
        3 => Ok(abi::ctrlreg::CR3),
        4 => Ok(abi::ctrlreg::CR4),
        _ => Err(VmiError::not_supported(
            "control-register events other than CR0, CR3 and CR4",
            BY_DRIVER,
        )),
    }
}
