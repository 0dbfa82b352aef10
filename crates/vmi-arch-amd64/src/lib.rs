//! AMD64 (x86-64) for the `vmi` framework.
//!
//! - [`Registers`]: general-purpose, control, debug, segment and descriptor-table
//!   registers and the syscall/GS-base MSRs; [`Cr3`] masks PCID bits for translation.
//! - [`paging`]: 4- and 5-level paging as a table of levels walked by one loop, with
//!   2 MiB and 1 GiB pages, the canonical-address check and reserved-bit faults; each
//!   translation carries the leaf's size and its U/S, R/W and NX rights.
//! - [`Amd64`]: the [`vmi_core::Architecture`] implementation tying them together.

#![forbid(unsafe_code)]

pub mod instruction;
pub mod paging;
mod registers;

pub use paging::PagingMode;
pub use registers::{Cr3, DescriptorTable, Registers, Segment, cr0, cr4, efer};

use vmi_core::{
    AddressContext, BreakpointKind, LastLevel, LeafMapping, MemoryAccess, Pa, PageFault,
    PageTableReader, Translation, Va, VmiError,
};

/// Why an AMD64 vCPU stopped and reported an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventReason {
    /// Execution reached a breakpoint.
    Breakpoint {
        /// Where (guest-virtual).
        va: Va,
        /// Where (guest-physical), when the driver knows.
        pa: Option<Pa>,
        /// Software or hardware.
        kind: BreakpointKind,
    },
    /// One instruction was executed after a single-step request.
    SingleStep,
    /// A watched memory location or page was accessed.
    MemoryAccess {
        /// Guest-virtual address, when known.
        va: Option<Va>,
        /// Guest-physical address, when known.
        pa: Option<Pa>,
        /// The kind of access.
        access: MemoryAccess,
    },
    /// A control register was written.
    ControlRegister {
        /// Which (0, 3, 4).
        index: u8,
        /// Old value.
        old: u64,
        /// New value.
        new: u64,
    },
    /// A model-specific register was written.
    Msr {
        /// MSR index.
        index: u32,
        /// New value.
        value: u64,
    },
    /// CPUID was executed.
    Cpuid {
        /// Leaf (EAX).
        leaf: u32,
        /// Sub-leaf (ECX).
        subleaf: u32,
    },
    /// A debug exception the monitor did not set up.
    DebugException {
        /// DR6 at the exception.
        dr6: u64,
    },
    /// The guest asked for the monitor's attention.
    GuestRequest,
    /// The VM stopped for a reason the driver reports as text (e.g. a gdbstub signal).
    Other(String),
}

/// The AMD64 architecture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Amd64;

impl vmi_core::Architecture for Amd64 {
    const NAME: &'static str = "amd64";
    const PAGE_SIZE: u64 = 4096;
    const PAGE_SHIFT: u32 = 12;
    const ADDRESS_WIDTH: usize = 8;
    /// A page table (PT) maps 2 MiB.
    const LAST_TABLE_SHIFT: u32 = 21;

    type Registers = Registers;
    type EventReason = EventReason;
    type PagingMode = PagingMode;

    fn paging_mode(registers: &Registers) -> PagingMode {
        if registers.cr4 & cr4::LA57 != 0 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        }
    }

    fn translate<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        mode: PagingMode,
    ) -> Result<Translation, VmiError> {
        paging::translate(reader, ctx, mode)
    }

    #[inline(always)]
    fn translate_to_last_table<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        mode: PagingMode,
    ) -> Result<LastLevel, VmiError> {
        paging::translate_to_last_table(reader, ctx, mode)
    }

    #[inline(always)]
    fn translate_in_last_table<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        table: Pa,
    ) -> Result<LeafMapping, VmiError> {
        paging::translate_in_last_table(reader, ctx, table)
    }

    fn untranslatable_until(fault: &PageFault, mode: PagingMode) -> Option<u64> {
        paging::untranslatable_until(fault, mode)
    }
}
