//! The narrow interface between the driver logic and Xen's libraries.
//!
//! Everything the driver needs from libxenctrl, libxenforeignmemory and libxenevtchn is
//! one method here, taking and returning plain Rust values and the raw structs of
//! [`crate::abi`]. The production implementation is [`crate::ffi::LibXen`] (feature
//! `xen-sys`); the tests use [`crate::fake::FakeXen`].

use std::time::Duration;

use crate::abi::XenMemAccess;
use crate::ring::RingMemory;

/// A Xen domain id.
pub type DomId = u32;

/// A failed library call: which one and its `errno`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {}", std::io::Error::from_raw_os_error(*.errno))]
pub struct XenCallError {
    /// The C function.
    pub call: &'static str,
    /// Its `errno` (positive).
    pub errno: i32,
}

impl XenCallError {
    /// A failure of `call` with `errno`.
    pub fn new(call: &'static str, errno: i32) -> Self {
        Self { call, errno }
    }
}

/// `EINVAL`.
pub const EINVAL: i32 = 22;
/// `ENOSYS`.
pub const ENOSYS: i32 = 38;
/// `EOPNOTSUPP`.
pub const EOPNOTSUPP: i32 = 95;
/// `ESRCH`: no such domain.
pub const ESRCH: i32 = 3;
/// `EPERM`.
pub const EPERM: i32 = 1;
/// `EEXIST`: Xen's answer to a monitor switched to the state it already has.
pub const EEXIST: i32 = 17;

/// Result of a library call.
pub type XenResult<T> = Result<T, XenCallError>;

/// What `xc_domain_getinfolist` says about one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain id.
    pub domid: DomId,
    /// `XEN_DOMINF_*` flags.
    pub flags: u32,
    /// Pages the domain holds.
    pub tot_pages: u64,
    /// Pages it may hold.
    pub max_pages: u64,
    /// Highest vCPU id in use (`None`: no vCPUs).
    pub max_vcpu_id: Option<u32>,
    /// vCPUs online.
    pub nr_online_vcpus: u32,
}

/// A monitor switch of `xc_monitor_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MonitorOp {
    /// `xc_monitor_write_ctrlreg` (index `VM_EVENT_X86_CR*`), synchronous, on change only.
    WriteCtrlreg(u32),
    /// `xc_monitor_mov_to_msr`, on change only.
    MovToMsr(u32),
    /// `xc_monitor_software_breakpoint`.
    SoftwareBreakpoint,
    /// `xc_monitor_singlestep`.
    Singlestep,
    /// `xc_monitor_cpuid`.
    Cpuid,
    /// `xc_monitor_debug_exceptions`, synchronous.
    DebugExceptions,
    /// `xc_monitor_guest_request`, synchronous, kernel mode only.
    GuestRequest,
}

/// Everything the driver needs from Xen. Implementations must be usable from several
/// threads (the driver serialises ring access itself).
pub trait XenInterface: Send + Sync {
    /// `xc_domain_getinfolist` from domain 0 on (at most `max` entries).
    fn list_domains(&self, max: u32) -> XenResult<Vec<DomainInfo>>;
    /// The info of one domain (`ESRCH` if it does not exist).
    fn domain_info(&self, domid: DomId) -> XenResult<DomainInfo>;
    /// `xc_domain_maximum_gpfn`.
    fn maximum_gpfn(&self, domid: DomId) -> XenResult<u64>;
    /// `xc_domain_pause`.
    fn pause(&self, domid: DomId) -> XenResult<()>;
    /// `xc_domain_unpause`.
    fn unpause(&self, domid: DomId) -> XenResult<()>;

    /// Copies bytes from frame `frame` (a GFN for HVM/PVH, an MFN for PV) through a
    /// foreign mapping.
    fn read_frame(&self, domid: DomId, frame: u64, offset: usize, buf: &mut [u8]) -> XenResult<()>;
    /// Copies whole frames `frames[i]` into `buf[i * 4096..]` through one batched
    /// foreign mapping; `ok[i]` says whether frame `i` could be mapped (the others' bytes
    /// are left as they were). `buf` holds `frames.len()` pages and `ok` as many flags.
    /// The default maps one frame at a time with [`read_frame`](Self::read_frame).
    fn read_frames(
        &self,
        domid: DomId,
        frames: &[u64],
        buf: &mut [u8],
        ok: &mut [bool],
    ) -> XenResult<()> {
        for ((f, page), ok) in frames
            .iter()
            .zip(buf.chunks_exact_mut(crate::abi::XEN_PAGE_SIZE))
            .zip(ok.iter_mut())
        {
            *ok = self.read_frame(domid, *f, 0, page).is_ok();
        }
        Ok(())
    }
    /// Copies bytes into frame `frame` through a writable foreign mapping.
    fn write_frame(&self, domid: DomId, frame: u64, offset: usize, data: &[u8]) -> XenResult<()>;

    /// `xc_vcpu_getcontext` of a PV vCPU: the raw `vcpu_guest_context_x86_64_t`.
    fn pv_get_context(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>>;
    /// `xc_vcpu_setcontext` of a PV vCPU.
    fn pv_set_context(&self, domid: DomId, vcpu: u32, ctx: &[u8]) -> XenResult<()>;
    /// `xc_domain_hvm_getcontext_partial(HVM_SAVE_CODE(CPU), vcpu)`: the raw `hvm_hw_cpu`.
    fn hvm_get_cpu(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>>;
    /// `xc_domain_hvm_getcontext`: the whole save blob (descriptors and records).
    fn hvm_get_context(&self, domid: DomId) -> XenResult<Vec<u8>>;
    /// `xc_domain_hvm_setcontext` with a whole save blob.
    fn hvm_set_context(&self, domid: DomId, blob: &[u8]) -> XenResult<()>;

    /// `xc_monitor_enable`: maps the ring page; returns it and the ring's event channel
    /// port in the remote domain (Xen).
    fn monitor_enable(&self, domid: DomId) -> XenResult<(Box<dyn RingMemory>, u32)>;
    /// `xc_monitor_disable`.
    fn monitor_disable(&self, domid: DomId) -> XenResult<()>;
    /// Switches one monitor on or off.
    fn monitor_control(&self, domid: DomId, op: MonitorOp, enable: bool) -> XenResult<()>;
    /// Hands an `int3` back to the guest: injects the `#BP` software exception (vector 3,
    /// instruction length 1) into vCPU `vcpu` of an HVM/PVH domain (`xc_hvm_inject_trap`),
    /// for a breakpoint event the monitor did not cause (the guest's own `int3`).
    fn inject_breakpoint(&self, domid: DomId, vcpu: u32) -> XenResult<()>;

    /// `xenevtchn_bind_interdomain`: returns the local port.
    fn evtchn_bind(&self, domid: DomId, remote_port: u32) -> XenResult<u32>;
    /// `xenevtchn_unbind`.
    fn evtchn_unbind(&self, local_port: u32) -> XenResult<()>;
    /// `xenevtchn_notify`.
    fn evtchn_notify(&self, local_port: u32) -> XenResult<()>;
    /// Waits up to `timeout` for a pending port (`poll` on the evtchn fd, then
    /// `xenevtchn_pending` and `xenevtchn_unmask`); `None` on timeout.
    fn evtchn_wait(&self, timeout: Duration) -> XenResult<Option<u32>>;

    /// `xc_set_mem_access` (view 0) or `xc_altp2m_set_mem_access` (other views) for
    /// `nr` frames from `first_gfn`.
    fn set_mem_access(
        &self,
        domid: DomId,
        view: u16,
        access: XenMemAccess,
        first_gfn: u64,
        nr: u32,
    ) -> XenResult<()>;
    /// `xc_altp2m_set_domain_state`.
    fn altp2m_set_domain_state(&self, domid: DomId, enabled: bool) -> XenResult<()>;
    /// `xc_altp2m_create_view`: returns the view id.
    fn altp2m_create_view(&self, domid: DomId, default_access: XenMemAccess) -> XenResult<u16>;
    /// `xc_altp2m_destroy_view`.
    fn altp2m_destroy_view(&self, domid: DomId, view: u16) -> XenResult<()>;
    /// `xc_altp2m_switch_to_view` (all vCPUs).
    fn altp2m_switch_to_view(&self, domid: DomId, view: u16) -> XenResult<()>;
}
