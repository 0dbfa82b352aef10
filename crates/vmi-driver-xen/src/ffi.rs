//! [`LibXen`]: [`XenInterface`] over libxenctrl, libxenforeignmemory and libxenevtchn
//! (feature `xen-sys`), through bindings bindgen generates at build time from the
//! installed or unpacked `libxen-dev` headers.
//!
//! The raw structs of [`crate::abi`] are checked against the generated ones at compile
//! time (sizes and the offsets the driver relies on), so headers with another layout
//! fail the build.

#![allow(unsafe_code)] // the only module that calls C; every block is argued

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::abi::{self, XEN_PAGE_SIZE, XenMemAccess};
use crate::interface::{
    DomId, DomainInfo, EINVAL, MonitorOp, XenCallError, XenInterface, XenResult,
};
use crate::ring::RingMemory;

/// The generated bindings.
#[allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]
pub mod sys {
    include!(concat!(env!("OUT_DIR"), "/xen_bindings.rs"));
}

// Our hand-written layouts are the headers' layouts.
const _: () = {
    assert!(size_of::<sys::vm_event_st>() == size_of::<abi::VmEvent>());
    assert!(offset_of!(sys::vm_event_st, u) == offset_of!(abi::VmEvent, u));
    assert!(offset_of!(sys::vm_event_st, data) == offset_of!(abi::VmEvent, regs));
    assert!(size_of::<sys::vm_event_regs_x86>() == size_of::<abi::VmEventRegsX86>());
    assert!(
        offset_of!(sys::vm_event_regs_x86, shadow_gs) == offset_of!(abi::VmEventRegsX86, shadow_gs)
    );
    assert!(
        offset_of!(sys::vm_event_regs_x86, cs_base) == offset_of!(abi::VmEventRegsX86, cs_base)
    );
    assert!(sys::VM_EVENT_INTERFACE_VERSION == abi::VM_EVENT_INTERFACE_VERSION);
    assert!(size_of::<sys::hvm_hw_cpu>() == size_of::<abi::HvmHwCpu>());
    assert!(offset_of!(sys::hvm_hw_cpu, rip) == offset_of!(abi::HvmHwCpu, rip));
    assert!(offset_of!(sys::hvm_hw_cpu, cs_sel) == offset_of!(abi::HvmHwCpu, sel));
    assert!(offset_of!(sys::hvm_hw_cpu, cs_limit) == offset_of!(abi::HvmHwCpu, limit));
    assert!(offset_of!(sys::hvm_hw_cpu, cs_base) == offset_of!(abi::HvmHwCpu, base));
    assert!(offset_of!(sys::hvm_hw_cpu, cs_arbytes) == offset_of!(abi::HvmHwCpu, arbytes));
    assert!(offset_of!(sys::hvm_hw_cpu, msr_efer) == offset_of!(abi::HvmHwCpu, msr_efer));
    assert!(size_of::<sys::hvm_save_descriptor>() == size_of::<abi::HvmSaveDescriptor>());
    assert!(size_of::<sys::vcpu_guest_context_x86_64_t>() == size_of::<abi::PvContext>());
    assert!(
        offset_of!(sys::vcpu_guest_context_x86_64_t, user_regs)
            == offset_of!(abi::PvContext, user_regs)
    );
    assert!(
        offset_of!(sys::vcpu_guest_context_x86_64_t, ctrlreg)
            == offset_of!(abi::PvContext, ctrlreg)
    );
    assert!(
        offset_of!(sys::vcpu_guest_context_x86_64_t, gs_base_user)
            == offset_of!(abi::PvContext, gs_base_user)
    );
    assert!(size_of::<sys::vcpu_guest_context_any_t>() >= size_of::<abi::PvContext>());
};

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(EINVAL)
}

fn check(call: &'static str, rc: i32) -> XenResult<()> {
    if rc < 0 {
        Err(XenCallError::new(call, errno()))
    } else {
        Ok(())
    }
}

struct Handles {
    xc: *mut sys::xc_interface,
    fmem: *mut sys::xenforeignmemory_handle,
    evtchn: *mut sys::xenevtchn_handle,
}

// SAFETY: the handles are opaque library objects owned by this struct and used only
// while holding the `Mutex` in `LibXen`, so no two threads call into a handle at once;
// libxenctrl, libxenforeignmemory and libxenevtchn do not tie handles to the opening
// thread.
unsafe impl Send for Handles {}

/// The Xen control libraries, opened once per process.
pub struct LibXen {
    h: Mutex<Handles>,
    evtchn_fd: i32,
}

impl std::fmt::Debug for LibXen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibXen").finish_non_exhaustive()
    }
}

impl LibXen {
    /// Opens libxenctrl, libxenforeignmemory and libxenevtchn. Outside a Xen dom0 (no
    /// `/dev/xen/privcmd`) this fails cleanly with the library's errno.
    pub fn open() -> XenResult<Self> {
        // SAFETY: NULL loggers select the libraries' default stderr loggers; flags 0.
        let xc = unsafe { sys::xc_interface_open(std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        if xc.is_null() {
            return Err(XenCallError::new("xc_interface_open", errno()));
        }
        // SAFETY: as above.
        let fmem = unsafe { sys::xenforeignmemory_open(std::ptr::null_mut(), 0) };
        if fmem.is_null() {
            let e = errno();
            // SAFETY: `xc` came from xc_interface_open and is closed once.
            unsafe { sys::xc_interface_close(xc) };
            return Err(XenCallError::new("xenforeignmemory_open", e));
        }
        // SAFETY: as above.
        let evtchn = unsafe { sys::xenevtchn_open(std::ptr::null_mut(), 0) };
        if evtchn.is_null() {
            let e = errno();
            // SAFETY: both handles are valid and closed once here.
            unsafe {
                sys::xenforeignmemory_close(fmem);
                sys::xc_interface_close(xc);
            }
            return Err(XenCallError::new("xenevtchn_open", e));
        }
        // SAFETY: `evtchn` is a valid handle.
        let evtchn_fd = unsafe { sys::xenevtchn_fd(evtchn) };
        Ok(Self {
            h: Mutex::new(Handles { xc, fmem, evtchn }),
            evtchn_fd,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Handles> {
        self.h.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn map(
        &self,
        domid: DomId,
        frame: u64,
        prot: i32,
    ) -> XenResult<(NonNull<u8>, MutexGuard<'_, Handles>)> {
        let h = self.lock();
        let pfn: sys::xen_pfn_t = frame;
        let mut err: i32 = 0;
        // SAFETY: `h.fmem` is valid; one frame number in, one error slot out, both live
        // for the call.
        let p = unsafe { sys::xenforeignmemory_map(h.fmem, domid, prot, 1, &pfn, &mut err) };
        let Some(p) = NonNull::new(p.cast::<u8>()) else {
            return Err(XenCallError::new("xenforeignmemory_map", errno()));
        };
        if err != 0 {
            // SAFETY: `p` is the one-page mapping just made, unmapped once.
            unsafe { sys::xenforeignmemory_unmap(h.fmem, p.as_ptr().cast(), 1) };
            return Err(XenCallError::new("xenforeignmemory_map", err.abs()));
        }
        Ok((p, h))
    }
}

impl Drop for LibXen {
    fn drop(&mut self) {
        let h = self.lock();
        // SAFETY: the handles were opened in `open` and are closed exactly once here.
        unsafe {
            sys::xenevtchn_close(h.evtchn);
            sys::xenforeignmemory_close(h.fmem);
            sys::xc_interface_close(h.xc);
        }
    }
}

/// The monitor ring page as mapped by `xc_monitor_enable`; unmapped on drop.
struct MappedRing(NonNull<u8>);

// SAFETY: the mapping is process-wide memory, not tied to a thread; the ring code
// accesses it through atomics and byte copies only.
unsafe impl Send for MappedRing {}

impl MappedRing {
    fn in_page(offset: usize, len: usize) -> bool {
        offset.checked_add(len).is_some_and(|e| e <= XEN_PAGE_SIZE)
    }
}

impl RingMemory for MappedRing {
    fn load_u32(&self, offset: usize) -> u32 {
        if !Self::in_page(offset, 4) || !offset.is_multiple_of(4) {
            return 0;
        }
        // SAFETY: the page is mapped for the life of `self`, `offset` is in it and
        // 4-byte aligned (the page is page-aligned); the hypervisor writes these indices
        // concurrently, hence an atomic access.
        let a = unsafe { AtomicU32::from_ptr(self.0.as_ptr().add(offset).cast::<u32>()) };
        a.load(Ordering::Acquire)
    }

    fn store_u32(&self, offset: usize, value: u32) {
        if !Self::in_page(offset, 4) || !offset.is_multiple_of(4) {
            return;
        }
        // SAFETY: as in `load_u32`.
        let a = unsafe { AtomicU32::from_ptr(self.0.as_ptr().add(offset).cast::<u32>()) };
        a.store(value, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    fn read(&self, offset: usize, buf: &mut [u8]) {
        if !Self::in_page(offset, buf.len()) {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: source range is inside the mapped page; `buf` is a distinct Rust
        // buffer of the same length. Bytes are copied, never referenced.
        unsafe {
            std::ptr::copy_nonoverlapping(self.0.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        };
    }

    fn write(&self, offset: usize, data: &[u8]) {
        if !Self::in_page(offset, data.len()) {
            return;
        }
        // SAFETY: destination range is inside the mapped, writable page; `data` is a
        // distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.0.as_ptr().add(offset), data.len())
        };
        fence(Ordering::Release);
    }
}

impl Drop for MappedRing {
    fn drop(&mut self) {
        // SAFETY: the page was mapped by xc_monitor_enable (an mmap of one page) and is
        // unmapped once, after the driver disabled monitoring.
        unsafe { libc::munmap(self.0.as_ptr().cast(), XEN_PAGE_SIZE) };
    }
}

fn info_from(i: &sys::xc_domaininfo_t) -> DomainInfo {
    DomainInfo {
        domid: u32::from(i.domain),
        flags: i.flags,
        tot_pages: i.tot_pages,
        max_pages: i.max_pages,
        max_vcpu_id: (i.max_vcpu_id != u32::MAX).then_some(i.max_vcpu_id),
        nr_online_vcpus: i.nr_online_vcpus,
    }
}

impl XenInterface for LibXen {
    fn list_domains(&self, max: u32) -> XenResult<Vec<DomainInfo>> {
        let h = self.lock();
        let mut v = vec![sys::xc_domaininfo_t::default(); max as usize];
        // SAFETY: `v` has room for `max` entries.
        let n = unsafe { sys::xc_domain_getinfolist(h.xc, 0, max, v.as_mut_ptr()) };
        check("xc_domain_getinfolist", n)?;
        Ok(v.iter().take(n as usize).map(info_from).collect())
    }

    fn domain_info(&self, domid: DomId) -> XenResult<DomainInfo> {
        let h = self.lock();
        let mut i = sys::xc_domaininfo_t::default();
        #[cfg(xen_getinfo_single)]
        {
            // SAFETY: `i` is a valid out-parameter.
            let rc = unsafe { sys::xc_domain_getinfo_single(h.xc, domid, &mut i) };
            check("xc_domain_getinfo_single", rc)?;
        }
        #[cfg(not(xen_getinfo_single))]
        {
            // SAFETY: room for one entry.
            let n = unsafe { sys::xc_domain_getinfolist(h.xc, domid, 1, &mut i) };
            check("xc_domain_getinfolist", n)?;
            if n != 1 || u32::from(i.domain) != domid {
                return Err(XenCallError::new(
                    "xc_domain_getinfolist",
                    crate::interface::ESRCH,
                ));
            }
        }
        Ok(info_from(&i))
    }

    fn maximum_gpfn(&self, domid: DomId) -> XenResult<u64> {
        let h = self.lock();
        let mut g: sys::xen_pfn_t = 0;
        // SAFETY: valid out-parameter.
        check("xc_domain_maximum_gpfn", unsafe {
            sys::xc_domain_maximum_gpfn(h.xc, domid, &mut g)
        })?;
        Ok(g)
    }

    fn pause(&self, domid: DomId) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_domain_pause", unsafe {
            sys::xc_domain_pause(h.xc, domid)
        })
    }

    fn unpause(&self, domid: DomId) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_domain_unpause", unsafe {
            sys::xc_domain_unpause(h.xc, domid)
        })
    }

    fn read_frame(&self, domid: DomId, frame: u64, offset: usize, buf: &mut [u8]) -> XenResult<()> {
        if !MappedRing::in_page(offset, buf.len()) {
            return Err(XenCallError::new("xenforeignmemory_map", EINVAL));
        }
        let (p, h) = self.map(domid, frame, libc::PROT_READ)?;
        // SAFETY: `p` maps one readable page; the range is inside it (checked above);
        // then the mapping is released once.
        unsafe {
            std::ptr::copy_nonoverlapping(p.as_ptr().add(offset), buf.as_mut_ptr(), buf.len());
            sys::xenforeignmemory_unmap(h.fmem, p.as_ptr().cast(), 1);
        }
        Ok(())
    }

    fn read_frames(
        &self,
        domid: DomId,
        frames: &[u64],
        buf: &mut [u8],
        ok: &mut [bool],
    ) -> XenResult<()> {
        let n = frames.len();
        if n == 0 {
            return Ok(());
        }
        if buf.len() != n.saturating_mul(XEN_PAGE_SIZE) || ok.len() != n {
            return Err(XenCallError::new("xenforeignmemory_map", EINVAL));
        }
        let pfns: Vec<sys::xen_pfn_t> = frames.to_vec();
        let mut errs = vec![0i32; n];
        let h = self.lock();
        // SAFETY: `h.fmem` is valid; `pfns` and `errs` both hold `n` elements and live
        // for the call.
        let p = unsafe {
            sys::xenforeignmemory_map(
                h.fmem,
                domid,
                libc::PROT_READ,
                n,
                pfns.as_ptr(),
                errs.as_mut_ptr(),
            )
        };
        let Some(p) = NonNull::new(p.cast::<u8>()) else {
            return Err(XenCallError::new("xenforeignmemory_map", errno()));
        };
        for (i, (page, ok)) in buf
            .chunks_exact_mut(XEN_PAGE_SIZE)
            .zip(ok.iter_mut())
            .enumerate()
        {
            *ok = errs[i] == 0;
            if *ok {
                // SAFETY: `p` maps `n` readable pages; page `i < n` was mapped
                // (its error slot is 0), and `page` is 4096 bytes of our buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p.as_ptr().add(i * XEN_PAGE_SIZE),
                        page.as_mut_ptr(),
                        XEN_PAGE_SIZE,
                    );
                }
            }
        }
        // SAFETY: `p` is the `n`-page mapping made above, unmapped once.
        unsafe { sys::xenforeignmemory_unmap(h.fmem, p.as_ptr().cast(), n) };
        Ok(())
    }

    fn write_frame(&self, domid: DomId, frame: u64, offset: usize, data: &[u8]) -> XenResult<()> {
        if !MappedRing::in_page(offset, data.len()) {
            return Err(XenCallError::new("xenforeignmemory_map", EINVAL));
        }
        let (p, h) = self.map(domid, frame, libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: `p` maps one writable page; the range is inside it; unmapped once.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr().add(offset), data.len());
            sys::xenforeignmemory_unmap(h.fmem, p.as_ptr().cast(), 1);
        }
        Ok(())
    }

    fn pv_get_context(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>> {
        let h = self.lock();
        let mut ctx = sys::vcpu_guest_context_any_t::default();
        // SAFETY: `ctx` is a valid out-parameter of the union type the call expects.
        check("xc_vcpu_getcontext", unsafe {
            sys::xc_vcpu_getcontext(h.xc, domid, vcpu, &mut ctx)
        })?;
        let n = size_of::<abi::PvContext>();
        // SAFETY: the union is at least `n` bytes (asserted at compile time) and plain
        // data; we copy its first `n` bytes (the x86_64 member).
        let bytes =
            unsafe { std::slice::from_raw_parts((&raw const ctx).cast::<u8>(), n) }.to_vec();
        Ok(bytes)
    }

    fn pv_set_context(&self, domid: DomId, vcpu: u32, bytes: &[u8]) -> XenResult<()> {
        let n = size_of::<abi::PvContext>();
        if bytes.len() != n {
            return Err(XenCallError::new("xc_vcpu_setcontext", EINVAL));
        }
        let mut ctx = sys::vcpu_guest_context_any_t::default();
        // SAFETY: the union has room for `n` bytes (compile-time assertion) and every bit
        // pattern is valid for its plain-data members.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&raw mut ctx).cast::<u8>(), n) };
        let h = self.lock();
        // SAFETY: valid handle and context.
        check("xc_vcpu_setcontext", unsafe {
            sys::xc_vcpu_setcontext(h.xc, domid, vcpu, &mut ctx)
        })
    }

    fn hvm_get_cpu(&self, domid: DomId, vcpu: u32) -> XenResult<Vec<u8>> {
        let instance = u16::try_from(vcpu)
            .map_err(|_| XenCallError::new("xc_domain_hvm_getcontext_partial", EINVAL))?;
        let mut buf = vec![0u8; size_of::<abi::HvmHwCpu>()];
        let h = self.lock();
        // SAFETY: `buf` has exactly the record's size, which is passed along.
        check("xc_domain_hvm_getcontext_partial", unsafe {
            sys::xc_domain_hvm_getcontext_partial(
                h.xc,
                domid,
                abi::HVM_SAVE_CODE_CPU,
                instance,
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len() as u32,
            )
        })?;
        Ok(buf)
    }

    fn hvm_get_context(&self, domid: DomId) -> XenResult<Vec<u8>> {
        let h = self.lock();
        // SAFETY: a NULL buffer asks for the size only.
        let size = unsafe { sys::xc_domain_hvm_getcontext(h.xc, domid, std::ptr::null_mut(), 0) };
        check("xc_domain_hvm_getcontext", size)?;
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` has the size Xen asked for.
        let n = unsafe {
            sys::xc_domain_hvm_getcontext(h.xc, domid, buf.as_mut_ptr(), buf.len() as u32)
        };
        check("xc_domain_hvm_getcontext", n)?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn hvm_set_context(&self, domid: DomId, blob: &[u8]) -> XenResult<()> {
        let mut buf = blob.to_vec();
        let len = u32::try_from(buf.len())
            .map_err(|_| XenCallError::new("xc_domain_hvm_setcontext", EINVAL))?;
        let h = self.lock();
        // SAFETY: `buf` is a private copy of `len` bytes (the C API takes a mutable
        // pointer but does not keep it).
        check("xc_domain_hvm_setcontext", unsafe {
            sys::xc_domain_hvm_setcontext(h.xc, domid, buf.as_mut_ptr(), len)
        })
    }

    fn monitor_enable(&self, domid: DomId) -> XenResult<(Box<dyn RingMemory>, u32)> {
        let h = self.lock();
        let mut port: u32 = 0;
        // SAFETY: valid handle and out-parameter; the result is a one-page mapping
        // owned from here on by `MappedRing`.
        let p = unsafe { sys::xc_monitor_enable(h.xc, domid, &mut port) };
        let Some(p) = NonNull::new(p.cast::<u8>()) else {
            return Err(XenCallError::new("xc_monitor_enable", errno()));
        };
        Ok((Box::new(MappedRing(p)), port))
    }

    fn monitor_disable(&self, domid: DomId) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_monitor_disable", unsafe {
            sys::xc_monitor_disable(h.xc, domid)
        })
    }

    fn monitor_control(&self, domid: DomId, op: MonitorOp, enable: bool) -> XenResult<()> {
        let h = self.lock();
        let xc = h.xc;
        let call = match op {
            MonitorOp::WriteCtrlreg(_) => "xc_monitor_write_ctrlreg",
            MonitorOp::MovToMsr(_) => "xc_monitor_mov_to_msr",
            MonitorOp::SoftwareBreakpoint => "xc_monitor_software_breakpoint",
            MonitorOp::Singlestep => "xc_monitor_singlestep",
            MonitorOp::Cpuid => "xc_monitor_cpuid",
            MonitorOp::DebugExceptions => "xc_monitor_debug_exceptions",
            MonitorOp::GuestRequest => "xc_monitor_guest_request",
        };
        // SAFETY: every arm passes the valid handle and plain values.
        let rc = unsafe {
            match op {
                MonitorOp::WriteCtrlreg(idx) => {
                    sys::xc_monitor_write_ctrlreg(xc, domid, idx as u16, enable, true, 0, true)
                }
                MonitorOp::MovToMsr(msr) => {
                    sys::xc_monitor_mov_to_msr(xc, domid, msr, enable, true)
                }
                MonitorOp::SoftwareBreakpoint => {
                    sys::xc_monitor_software_breakpoint(xc, domid, enable)
                }
                MonitorOp::Singlestep => sys::xc_monitor_singlestep(xc, domid, enable),
                MonitorOp::Cpuid => sys::xc_monitor_cpuid(xc, domid, enable),
                MonitorOp::DebugExceptions => {
                    sys::xc_monitor_debug_exceptions(xc, domid, enable, true)
                }
                MonitorOp::GuestRequest => {
                    sys::xc_monitor_guest_request(xc, domid, enable, true, false)
                }
            }
        };
        check(call, rc)
    }

    fn inject_breakpoint(&self, domid: DomId, vcpu: u32) -> XenResult<()> {
        /// `X86_EVENTTYPE_SW_EXCEPTION`: an exception raised by an instruction (`int3`).
        const SW_EXCEPTION: u8 = 6;
        /// `#BP`.
        const BREAKPOINT: u8 = 3;
        let vcpu =
            i32::try_from(vcpu).map_err(|_| XenCallError::new("xc_hvm_inject_trap", EINVAL))?;
        let h = self.lock();
        // SAFETY: valid handle and plain values; no error code (`~0`), one instruction
        // byte, no CR2.
        let rc = unsafe {
            sys::xc_hvm_inject_trap(h.xc, domid, vcpu, BREAKPOINT, SW_EXCEPTION, !0, 1, 0)
        };
        check("xc_hvm_inject_trap", rc)
    }

    fn evtchn_bind(&self, domid: DomId, remote_port: u32) -> XenResult<u32> {
        let h = self.lock();
        // SAFETY: valid handle.
        let p = unsafe { sys::xenevtchn_bind_interdomain(h.evtchn, domid, remote_port) };
        check("xenevtchn_bind_interdomain", p)?;
        Ok(p as u32)
    }

    fn evtchn_unbind(&self, local_port: u32) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xenevtchn_unbind", unsafe {
            sys::xenevtchn_unbind(h.evtchn, local_port)
        })
    }

    fn evtchn_notify(&self, local_port: u32) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xenevtchn_notify", unsafe {
            sys::xenevtchn_notify(h.evtchn, local_port)
        })
    }

    fn evtchn_wait(&self, timeout: Duration) -> XenResult<Option<u32>> {
        let mut pfd = libc::pollfd {
            fd: self.evtchn_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd; the fd stays open while `self` lives. Polling does
        // not touch the handle, so it runs without the lock.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            let e = errno();
            if e == libc::EINTR {
                return Ok(None);
            }
            return Err(XenCallError::new("poll", e));
        }
        if rc == 0 {
            return Ok(None);
        }
        let h = self.lock();
        // SAFETY: valid handle.
        let port = unsafe { sys::xenevtchn_pending(h.evtchn) };
        check("xenevtchn_pending", port)?;
        // SAFETY: valid handle; the port was just reported pending.
        check("xenevtchn_unmask", unsafe {
            sys::xenevtchn_unmask(h.evtchn, port as u32)
        })?;
        Ok(Some(port as u32))
    }

    fn set_mem_access(
        &self,
        domid: DomId,
        view: u16,
        access: XenMemAccess,
        first_gfn: u64,
        nr: u32,
    ) -> XenResult<()> {
        let h = self.lock();
        let a = access as sys::xenmem_access_t;
        if view == 0 {
            // SAFETY: valid handle, plain values.
            return check("xc_set_mem_access", unsafe {
                sys::xc_set_mem_access(h.xc, domid, a, first_gfn, nr)
            });
        }
        for g in first_gfn..first_gfn.saturating_add(u64::from(nr)) {
            // SAFETY: valid handle, plain values.
            check("xc_altp2m_set_mem_access", unsafe {
                sys::xc_altp2m_set_mem_access(h.xc, domid, view, g, a)
            })?;
        }
        Ok(())
    }

    fn altp2m_set_domain_state(&self, domid: DomId, enabled: bool) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_altp2m_set_domain_state", unsafe {
            sys::xc_altp2m_set_domain_state(h.xc, domid, enabled)
        })
    }

    fn altp2m_create_view(&self, domid: DomId, default_access: XenMemAccess) -> XenResult<u16> {
        let h = self.lock();
        let mut v: u16 = 0;
        // SAFETY: valid handle and out-parameter.
        check("xc_altp2m_create_view", unsafe {
            sys::xc_altp2m_create_view(h.xc, domid, default_access as sys::xenmem_access_t, &mut v)
        })?;
        Ok(v)
    }

    fn altp2m_destroy_view(&self, domid: DomId, view: u16) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_altp2m_destroy_view", unsafe {
            sys::xc_altp2m_destroy_view(h.xc, domid, view)
        })
    }

    fn altp2m_switch_to_view(&self, domid: DomId, view: u16) -> XenResult<()> {
        let h = self.lock();
        // SAFETY: valid handle.
        check("xc_altp2m_switch_to_view", unsafe {
            sys::xc_altp2m_switch_to_view(h.xc, domid, view)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off a Xen dom0 the libraries refuse to open: a clean error, no panic.
    #[test]
    fn open_outside_dom0_is_a_clean_error() {
        if std::path::Path::new("/proc/xen/capabilities").exists() {
            eprintln!("SKIPPED: running inside a Xen domain");
            return;
        }
        let e = LibXen::open().expect_err("no privcmd here");
        assert_eq!(e.call, "xc_interface_open");
    }
}
