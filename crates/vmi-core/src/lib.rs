//! The core of the `vmi` framework.
//!
//! Data flows up from a **driver** (a live hypervisor or a memory dump) through the
//! **core** ([`VmiCore`]: typed reads, address translation, caches, registers, VM
//! control, events) to an **OS layer** ([`VmiOs`]) that turns memory into processes,
//! threads and modules. A [`VmiSession`] pairs a core with an OS layer; a [`VmiContext`]
//! adds the registers of one event, so code in an event handler needs no CR3.
//!
//! Key decisions:
//! - **Capability traits.** A driver implements only what it can ([`VmiRead`],
//!   [`VmiWrite`], [`VmiQueryRegisters`], [`VmiSetRegisters`], [`VmiVmControl`],
//!   [`VmiEventControl`]); the core's methods are gated by them at compile time.
//! - **Typed addresses.** [`Va`], [`Pa`] and [`Gfn`] cannot be mixed up.
//! - **Thread-safe caches, lock-free reads.** The translation cache is a software TLB
//!   of sequence-locked atomics (a hit is plain loads), the page cache a bounded
//!   concurrent map, so one core is read from many threads: [`VmiCore::scan`] runs
//!   parallel scans over it, and [`VmiCore::read_batch`] hands a driver many reads at
//!   once.
//! - **One error type** ([`VmiError`]) whose translation failures keep the address,
//!   the page-table root, the level and the entry.
//! - **Guest data is hostile.** Nothing here panics on what the guest contains.
//!
//! The architecture (page walks, registers) lives in its own crate, for AMD64
//! `vmi-arch-amd64`.

#![forbid(unsafe_code)]

mod addr;
mod arch;
mod batch;
mod cache;
mod context;
mod core;
mod driver;
mod error;
mod event;
mod os;
mod scan;
mod session;
mod tlb;

pub use crate::addr::{Gfn, Pa, Pointer, Va, VcpuId};
pub use crate::arch::{
    Architecture, LastLevel, LeafMapping, MAX_WALK_LEVELS, PageFlags, PageTableReader, Registers,
    Translation, WalkStep,
};
pub use crate::cache::CacheStats;
pub use crate::context::{AccessContext, AddressContext, TranslationMechanism};
pub use crate::core::{
    DEFAULT_PAGE_CACHE, DEFAULT_TRANSLATION_CACHE, PauseGuard, VmiCore, VmiCoreConfig, copy_small,
};
pub use crate::driver::{
    BorrowedThread, BreakpointAddress, BreakpointAddressing, BreakpointKind, EventCallback,
    EventMonitor, MemoryAccess, PageRead, RegistersOf, VmState, VmiDriver, VmiEventControl,
    VmiInfo, VmiQueryRegisters, VmiRead, VmiSetRegisters, VmiVmControl, VmiWrite,
};
pub use crate::error::{FaultKind, PageAbsence, PageFault, VmiError};
pub use crate::event::{EventAction, MonitorChange, VmiEvent, VmiEventResponse};
pub use crate::os::{
    CommandLine, OsAttribute, OsHandle, OsListing, OsLogRecord, OsModule, OsNamespaces,
    OsObjectKind, OsProcess, OsRegion, OsThread, OsValue, RegionProtection, VmiOs, log_lines,
};
pub use crate::scan::{ProcessRegion, ProcessScan, ScanChunk, ScanOptions, ScanSummary};
pub use crate::session::{
    ArchitectureOf, VmiContext, VmiHandler, VmiOsState, VmiSession, VmiState,
};
