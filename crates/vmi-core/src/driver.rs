//! Driver capability traits.
//!
//! A driver is split by capability, not one god trait: [`VmiDriver`] carries the
//! architecture and basic information, and each capability is its own trait. A memory
//! dump implements [`VmiRead`] (and [`VmiQueryRegisters`] when the format stores CPU
//! state); a live hypervisor adds writes, register writes, VM control and events. The
//! core's methods are gated by the capability they need, so asking a dump to pause does
//! not compile:
//!
//! ```compile_fail
//! # use vmi_core::*;
//! fn pause_a_dump<D: VmiRead>(core: &VmiCore<D>) {
//!     let _guard = core.pause_guard(); // no VmiVmControl: does not compile
//! }
//! ```

use std::ops::Range;
use std::time::Duration;

use crate::{Architecture, Gfn, Pa, VcpuId, VmiError, VmiEvent, VmiEventResponse};

/// Basic facts about a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiInfo {
    /// Size of a guest page in bytes.
    pub page_size: u64,
    /// The highest guest frame number that may hold memory.
    pub max_gfn: Gfn,
    /// Number of vCPUs (0 when the target has no CPU state, like a raw dump).
    pub vcpus: u16,
    /// Whether guest memory can change while we look (a running VM).
    pub live: bool,
    /// Whether reads are slow enough that the core should cache whole pages
    /// (hypervisor mappings, monitor commands); `false` for mmap-backed targets.
    pub cache_pages: bool,
    /// A short name of the target kind (`"raw"`, `"elf"`, `"qemu"`...).
    pub kind: &'static str,
}

/// Base trait of every driver: the architecture and basic information.
pub trait VmiDriver: Send + Sync {
    /// The guest's CPU architecture.
    type Architecture: Architecture;

    /// Basic information about the target.
    fn info(&self) -> Result<VmiInfo, VmiError>;
}

/// Registers type of a driver's architecture.
pub type RegistersOf<D> = <<D as VmiDriver>::Architecture as Architecture>::Registers;

/// One piece of a batched read ([`VmiRead::read_pages`]): `buf.len()` bytes of frame
/// `gfn`, starting `offset` bytes into it (within the page).
#[derive(Debug)]
pub struct PageRead<'a> {
    /// The frame.
    pub gfn: Gfn,
    /// Offset of the first byte in the frame.
    pub offset: usize,
    /// Where the bytes go.
    pub buf: &'a mut [u8],
}

/// Reading guest-physical memory.
pub trait VmiRead: VmiDriver {
    /// Copies `buf.len()` bytes of frame `gfn`, starting `offset` bytes into it.
    ///
    /// Callers keep `offset + buf.len()` within the page; implementations check it and
    /// return [`VmiError::InvalidArgument`] otherwise. A page that the target does not
    /// have is [`VmiError::PageUnavailable`], never zeros.
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError>;

    /// Guest-physical memory this driver holds as plain, unchanging bytes in this
    /// process: `(base, bytes)` where `bytes[i]` is the byte at physical `base + i` (the
    /// mapping of a raw image, the RAM segment of an ELF core). [`crate::VmiCore::read_batch`]
    /// copies physical requests inside it in one loop, without a `read_page` call each.
    /// `None` by default.
    ///
    /// Only for memory that does not change while the driver lives (a dump): a live
    /// guest's memory must not be lent out as `&[u8]`.
    fn direct_memory(&self) -> Option<(Pa, &[u8])> {
        None
    }

    /// Reads many pieces at once, each with its own result (in the order of `reads`).
    /// [`crate::VmiCore::read_batch`] hands them sorted by frame and offset.
    ///
    /// The default reads them one by one with [`Self::read_page`], which is what a
    /// memory-mapped target wants (a copy each). Drivers with a cheaper way to read many
    /// pieces (one system call for all of them, one mapping per batch) override it; they
    /// must give each piece the result `read_page` would have given it.
    fn read_pages(&self, reads: &mut [PageRead<'_>]) -> Vec<Result<(), VmiError>> {
        reads
            .iter_mut()
            .map(|r| self.read_page(r.gfn, r.offset, r.buf))
            .collect()
    }

    /// The ranges of guest-physical memory the target holds, sorted and disjoint.
    /// Scanners use them to skip holes.
    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError>;
}

/// Writing guest-physical memory.
pub trait VmiWrite: VmiRead {
    /// Writes `data` into frame `gfn` at `offset` (within the page).
    fn write_page(&self, gfn: Gfn, offset: usize, data: &[u8]) -> Result<(), VmiError>;
}

/// Reading vCPU registers.
pub trait VmiQueryRegisters: VmiDriver {
    /// The registers of `vcpu`.
    fn registers(&self, vcpu: VcpuId) -> Result<RegistersOf<Self>, VmiError>;
}

/// Writing vCPU registers.
pub trait VmiSetRegisters: VmiQueryRegisters {
    /// Sets the registers of `vcpu`.
    fn set_registers(&self, vcpu: VcpuId, registers: &RegistersOf<Self>) -> Result<(), VmiError>;
}

/// Run state of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmState {
    /// Executing guest code.
    Running,
    /// Paused (by us or by someone else).
    Paused,
    /// Stopped in a debugger or by an event.
    Debug,
    /// Stopped for another reason (internal error, shutdown...), with the hypervisor's word.
    Other(&'static str),
}

/// Pausing and resuming the whole VM.
pub trait VmiVmControl: VmiDriver {
    /// Pauses every vCPU.
    fn pause(&self) -> Result<(), VmiError>;
    /// Resumes every vCPU.
    fn resume(&self) -> Result<(), VmiError>;
    /// The current run state.
    fn state(&self) -> Result<VmState, VmiError>;
}

/// Where a breakpoint sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointAddress {
    /// A guest-virtual address (in whatever address space the vCPU runs).
    Virtual(crate::Va),
    /// A guest-physical address.
    Physical(Pa),
}

/// Which addresses a driver's breakpoints take ([`VmiEventControl::breakpoint_addressing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointAddressing {
    /// Guest-virtual addresses, in whatever address space the vCPU runs (QEMU's gdbstub).
    Virtual,
    /// Guest-physical addresses (an `int3` written into the frame, as on Xen): the caller
    /// translates, and a breakpoint fires in every address space that maps the frame.
    Physical,
}

/// How a breakpoint is implemented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakpointKind {
    /// Software (the hypervisor or driver patches or emulates an `int3`).
    Software,
    /// Hardware (debug registers).
    Hardware,
}

/// Which accesses a watchpoint or memory-access monitor reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemoryAccess {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Reads and writes.
    ReadWrite,
    /// Instruction fetches.
    Execute,
}

/// Something a driver can report as events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EventMonitor {
    /// Stop when execution reaches an address.
    Breakpoint {
        /// Where.
        address: BreakpointAddress,
        /// How.
        kind: BreakpointKind,
    },
    /// Stop when memory is accessed.
    Watchpoint {
        /// Where.
        address: BreakpointAddress,
        /// How many bytes (1, 2, 4 or 8 for hardware watchpoints).
        len: u64,
        /// Which accesses.
        access: MemoryAccess,
    },
    /// Report accesses to a whole guest frame (second-level paging permissions).
    PageAccess {
        /// The frame.
        gfn: Gfn,
        /// Which accesses.
        access: MemoryAccess,
    },
    /// Report writes to a control register (index 0, 3, 4...).
    ControlRegisterWrite(u8),
    /// Report writes to a model-specific register.
    MsrWrite(u32),
    /// Report CPUID instructions.
    Cpuid,
    /// Report guest requests (hypercalls made for the monitor).
    GuestRequest,
}

/// Receiving events.
pub trait VmiEventControl: VmiDriver {
    /// Starts reporting what `monitor` describes.
    fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError>;

    /// Stops reporting it.
    fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError>;

    /// Which addresses [`EventMonitor::Breakpoint`] takes here: virtual by default.
    fn breakpoint_addressing(&self) -> BreakpointAddressing {
        BreakpointAddressing::Virtual
    }

    /// Waits up to `timeout` for events and hands each to `handler`, then applies the
    /// response and lets the vCPU go on. Returns how many events were handled (0 on
    /// timeout). The VM runs while waiting.
    fn wait_for_events(
        &self,
        timeout: Duration,
        handler: &mut EventCallback<'_, Self::Architecture>,
    ) -> Result<usize, VmiError>;

    /// Tells the driver's crash guard about a thread borrowed from the guest (an
    /// injection), so that the thread is given back if this process dies before it gives
    /// it back itself ([`release_borrowed_thread`](Self::release_borrowed_thread)). One
    /// thread at a time: a second call replaces the first.
    ///
    /// Call it before changing anything of the thread. Drivers without a guard that
    /// outlives the process say [`VmiError::NotSupported`] (the default).
    fn guard_borrowed_thread(
        &self,
        thread: &BorrowedThread<'_, RegistersOf<Self>>,
    ) -> Result<(), VmiError> {
        let _ = thread;
        Err(VmiError::not_supported(
            "giving a borrowed thread back after a crash",
            "this driver",
        ))
    }

    /// The borrowed thread is given back: the guard forgets it. Not released when the
    /// driver is dropped, it is left to the guard (a thread stuck in a system call is
    /// given back once it returns).
    fn release_borrowed_thread(&self) {}
}

/// A thread borrowed from the guest, as a crash guard needs it to give it back
/// ([`VmiEventControl::guard_borrowed_thread`]).
///
/// The guard waits (up to [`wait`](Self::wait)) for the thread to stop at
/// [`stop_ip`](Self::stop_ip) with [`stop_sp`](Self::stop_sp) in the address space of
/// [`root`](Self::root) (where each borrowed step returns), or finds it still at the
/// instruction and stack pointer of [`saved`](Self::saved) (not yet borrowed). It then
/// writes back the registers a thread owns in user mode (general-purpose, instruction
/// pointer, flags, segment selectors, FS/GS bases: control registers and MSRs are the
/// vCPU's) and the bytes [`original`](Self::original) at [`memory`](Self::memory).
#[derive(Clone, Copy, Debug)]
pub struct BorrowedThread<'a, R> {
    /// The page-table root of the thread's process.
    pub root: Pa,
    /// Root bits that differ between the vCPU's view and [`root`](Self::root) and are
    /// to be ignored (besides the low 12: PCID), e.g. KPTI's user-table bit.
    pub root_ignore: u64,
    /// Where the thread stops after each borrowed step.
    pub stop_ip: crate::Va,
    /// Its stack pointer there.
    pub stop_sp: u64,
    /// The thread's registers as found.
    pub saved: &'a R,
    /// Where [`original`](Self::original) goes back.
    pub memory: crate::Va,
    /// The bytes the borrowing overwrites, as found.
    pub original: &'a [u8],
    /// An instruction that enters the kernel (`syscall`): a new process forked by a step
    /// (same stack pointer, another address space) is sent there to exit with status 127.
    pub syscall_ip: crate::Va,
    /// The exit system call's number for that.
    pub exit_nr: u64,
    /// How long the guard waits for the thread to stop there.
    pub wait: Duration,
}

/// The callback a driver calls for each event in [`VmiEventControl::wait_for_events`].
pub type EventCallback<'a, A> = dyn FnMut(&VmiEvent<A>) -> VmiEventResponse<A> + 'a;
