//! What the core needs to know about a CPU architecture.
//!
//! An [`Architecture`] gives the page geometry, the register set, the event reasons and
//! the page-table walk. The walk reads page-table entries through [`PageTableReader`], so
//! it runs the same over a driver, the core's page cache, or a test's in-memory tables.

use std::fmt::Debug;

use crate::{AddressContext, Gfn, Pa, PageFault, Va, VmiError};

/// Reads guest-physical memory for a page-table walk.
pub trait PageTableReader {
    /// Reads the 8-byte little-endian entry at `pa`.
    fn read_entry(&self, pa: Pa) -> Result<u64, VmiError>;
}

/// Access rights of a mapped page, accumulated over every level of the walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct PageFlags {
    /// Writable at every level.
    pub writable: bool,
    /// User-accessible at every level.
    pub user: bool,
    /// Execute-disable at some level.
    pub no_execute: bool,
    /// Global page (leaf entry).
    pub global: bool,
}

/// One step of a page-table walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct WalkStep {
    /// The level (architecture-defined numbering; on AMD64 5 = PML5 ... 1 = PT).
    pub level: u8,
    /// The level's short name (`"PML4"`, `"PDPT"`...).
    pub name: &'static str,
    /// Index into the table.
    pub index: u16,
    /// Physical address of the entry.
    pub entry_pa: Pa,
    /// The entry.
    pub entry: u64,
}

/// Maximum number of levels a walk can have.
pub const MAX_WALK_LEVELS: usize = 5;

/// The result of a successful page-table walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Translation {
    /// The translated virtual address and root.
    pub ctx: AddressContext,
    /// The physical address.
    pub pa: Pa,
    /// Size of the mapping page (4 KiB, 2 MiB, 1 GiB on AMD64).
    pub page_size: u64,
    /// Accumulated access rights.
    pub flags: PageFlags,
    steps: [WalkStep; MAX_WALK_LEVELS],
    len: u8,
}

impl Translation {
    /// A translation with no steps recorded yet.
    pub fn new(ctx: AddressContext, pa: Pa, page_size: u64, flags: PageFlags) -> Self {
        Self {
            ctx,
            pa,
            page_size,
            flags,
            steps: [WalkStep::default(); MAX_WALK_LEVELS],
            len: 0,
        }
    }

    /// Records one walk step (ignored beyond [`MAX_WALK_LEVELS`]).
    pub fn push_step(&mut self, step: WalkStep) {
        if let Some(slot) = self.steps.get_mut(usize::from(self.len)) {
            *slot = step;
            self.len += 1;
        }
    }

    /// The entries read, from the top level down to the leaf.
    pub fn steps(&self) -> &[WalkStep] {
        &self.steps[..usize::from(self.len)]
    }

    /// Physical address of the start of the mapping page.
    pub fn page_pa(&self) -> Pa {
        self.pa.align_down(self.page_size)
    }
}

/// The leaf a virtual address translates through: what a read needs from a walk.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct LeafMapping {
    /// The physical address.
    pub pa: Pa,
    /// Size of the leaf page (4 KiB, 2 MiB, 1 GiB on AMD64).
    pub page_size: u64,
}

/// Where a walk over the levels above the last one ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum LastLevel {
    /// At a large leaf (on AMD64 a 2 MiB or 1 GiB page).
    Leaf(LeafMapping),
    /// At the last-level table that holds the entry of the address.
    Table(Pa),
}

/// The registers of one vCPU, as much as the core needs to know about them.
pub trait Registers: Clone + Debug + Send + Sync + 'static {
    /// The instruction pointer.
    fn instruction_pointer(&self) -> Va;
    /// Sets the instruction pointer.
    fn set_instruction_pointer(&mut self, va: Va);
    /// The stack pointer.
    fn stack_pointer(&self) -> Va;
    /// Root of the page tables currently in use (on AMD64, CR3 without PCID bits).
    fn translation_root(&self) -> Pa;
    /// `va` in the current address space of this vCPU.
    fn address_context(&self, va: Va) -> AddressContext {
        AddressContext {
            va,
            root: self.translation_root(),
        }
    }
}

/// A CPU architecture.
pub trait Architecture: Sized + Send + Sync + 'static {
    /// Short name (`"amd64"`).
    const NAME: &'static str;
    /// Size of the smallest page.
    const PAGE_SIZE: u64;
    /// log2 of [`Self::PAGE_SIZE`].
    const PAGE_SHIFT: u32;
    /// Width of a pointer in bytes.
    const ADDRESS_WIDTH: usize;
    /// log2 of the bytes one last-level page table maps (2 MiB on AMD64). The core's
    /// translation cache keeps one entry per such region: its large leaf or its table.
    const LAST_TABLE_SHIFT: u32;

    /// The register set of one vCPU.
    type Registers: Registers;
    /// Why an event was delivered.
    type EventReason: Clone + Debug + Send + Sync + 'static;
    /// Paging mode (e.g. 4- or 5-level on AMD64). The default is what the architecture
    /// starts with; OS layers and drivers set the real one. It converts to and from one
    /// byte so that the core keeps it in an atomic: reading it costs a walk no lock.
    type PagingMode: Copy
        + Debug
        + Default
        + PartialEq
        + Send
        + Sync
        + 'static
        + Into<u8>
        + TryFrom<u8>;

    /// The paging mode the registers select.
    fn paging_mode(registers: &Self::Registers) -> Self::PagingMode;

    /// Walks the page tables.
    fn translate<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        mode: Self::PagingMode,
    ) -> Result<Translation, VmiError>;

    /// Walks the levels above the last one (the read path, recording nothing): the leaf
    /// when it is a large page, else the last-level table that maps the address.
    fn translate_to_last_table<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        mode: Self::PagingMode,
    ) -> Result<LastLevel, VmiError>;

    /// Reads the entry of `ctx.va` in the last-level table at `table` (from
    /// [`Self::translate_to_last_table`] for an address of the same region) and returns
    /// the leaf. Faults are reported as [`Self::translate`] reports them at that level.
    fn translate_in_last_table<R: PageTableReader + ?Sized>(
        reader: &R,
        ctx: AddressContext,
        table: Pa,
    ) -> Result<LeafMapping, VmiError>;

    /// After a walk failed with `fault`, the first address above the faulting one that
    /// could translate (`None`: none below 2^64): every address in between faults the
    /// same way, because one entry, or the non-canonical hole, covers them all. Walkers
    /// of long ranges (scans) skip there instead of walking each page: an unprivileged
    /// guest user can reserve terabytes of address space with one `mmap`. The default
    /// knows no level sizes and skips one page.
    fn untranslatable_until(fault: &PageFault, mode: Self::PagingMode) -> Option<u64> {
        let _ = mode;
        (fault.ctx.va.0 | (Self::PAGE_SIZE - 1)).checked_add(1)
    }

    /// The frame that holds `pa`.
    fn gfn_from_pa(pa: Pa) -> Gfn {
        Gfn(pa.0 >> Self::PAGE_SHIFT)
    }

    /// The first address of a frame.
    fn pa_from_gfn(gfn: Gfn) -> Pa {
        Pa(gfn.0 << Self::PAGE_SHIFT)
    }

    /// Offset of an address within its page.
    fn page_offset(address: u64) -> u64 {
        address & (Self::PAGE_SIZE - 1)
    }
}
