//! AMD64 paging, described as data and walked by one generic loop.
//!
//! The table [`LEVELS`] says, for each level, which address bits index it and whether
//! its entries may map a large page (the PS bit). PS is legal only in PDPT entries
//! (1 GiB) and PD entries (2 MiB); in a PML5 or PML4 entry it is a reserved bit and the
//! walk faults with [`FaultKind::ReservedBit`], as the CPU does.

use vmi_core::{
    AddressContext, FaultKind, LastLevel, LeafMapping, Pa, PageFault, PageFlags, PageTableReader,
    Translation, VmiError, WalkStep,
};

/// 4- or 5-level paging (CR4.LA57).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// 48-bit virtual addresses, PML4 root.
    #[default]
    Level4,
    /// 57-bit virtual addresses, PML5 root.
    Level5,
}

impl PagingMode {
    /// Number of virtual-address bits.
    pub fn address_bits(self) -> u32 {
        match self {
            Self::Level4 => 48,
            Self::Level5 => 57,
        }
    }

    /// Whether `va` is canonical: bits above the top one equal to it.
    pub fn is_canonical(self, va: u64) -> bool {
        let bits = self.address_bits();
        let sign_extended = ((va << (64 - bits)) as i64 >> (64 - bits)) as u64;
        sign_extended == va
    }
}

/// One level of the page-table hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    /// Level number (5 = PML5 ... 1 = PT).
    pub number: u8,
    /// Short name.
    pub name: &'static str,
    /// Lowest virtual-address bit of this level's 9-bit index.
    pub shift: u32,
    /// Whether PS may be set here (a large-page leaf of `1 << shift` bytes).
    pub large_page: bool,
}

/// AMD64 paging levels, top down.
pub const LEVELS: [Level; 5] = [
    Level {
        number: 5,
        name: "PML5",
        shift: 48,
        large_page: false,
    },
    Level {
        number: 4,
        name: "PML4",
        shift: 39,
        large_page: false,
    },
    Level {
        number: 3,
        name: "PDPT",
        shift: 30,
        large_page: true,
    },
    Level {
        number: 2,
        name: "PD",
        shift: 21,
        large_page: true,
    },
    Level {
        number: 1,
        name: "PT",
        shift: 12,
        large_page: false,
    },
];

/// Page-table entry bits.
pub mod pte {
    /// Present.
    pub const PRESENT: u64 = 1;
    /// Writable.
    pub const WRITABLE: u64 = 1 << 1;
    /// User-accessible.
    pub const USER: u64 = 1 << 2;
    /// Accessed.
    pub const ACCESSED: u64 = 1 << 5;
    /// Dirty.
    pub const DIRTY: u64 = 1 << 6;
    /// Page size (a large-page leaf in PDPT/PD entries).
    pub const PAGE_SIZE: u64 = 1 << 7;
    /// Global.
    pub const GLOBAL: u64 = 1 << 8;
    /// Execute-disable.
    pub const NO_EXECUTE: u64 = 1 << 63;
    /// Physical-address bits of an entry (12–51).
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// The levels above the last (PT) one, for 4- and 5-level paging, and the last one, as
/// arrays so that a walk over them unrolls.
const UPPER4: [Level; 3] = [LEVELS[1], LEVELS[2], LEVELS[3]];
const UPPER5: [Level; 4] = [LEVELS[0], LEVELS[1], LEVELS[2], LEVELS[3]];
const LAST: [Level; 1] = [LEVELS[4]];

/// What a successful walk found: the physical address, the leaf's size and the rights
/// accumulated over the levels walked.
#[derive(Clone, Copy)]
struct Walked {
    pa: Pa,
    page_size: u64,
    flags: PageFlags,
}

/// Where a walk over some levels stopped.
enum Stop {
    /// At a leaf.
    Leaf(Walked),
    /// After the last level given, at the table the next level would read (and the
    /// rights so far).
    Table(Pa, PageFlags),
}

/// The error for a walk stopped at `level` by `entry`. Out of line: a walk builds no error
/// value unless it returns one.
#[cold]
#[inline(never)]
fn fault(ctx: AddressContext, level: u8, entry: u64, kind: FaultKind) -> VmiError {
    PageFault {
        ctx,
        level,
        entry,
        kind,
    }
    .into()
}

/// The rights a walk starts with.
const ALL_RIGHTS: PageFlags = PageFlags {
    writable: true,
    user: true,
    no_execute: false,
    global: false,
};

/// The one walk, over `levels` from the table at `table`: [`translate`] records each step
/// through `record`, the read path's walks pass a no-op, and once inlined the bookkeeping
/// they do not need is gone. `first_step` numbers the steps.
#[inline(always)]
fn walk<R: PageTableReader + ?Sized, const N: usize>(
    reader: &R,
    ctx: AddressContext,
    mut table: Pa,
    levels: &[Level; N],
    mut flags: PageFlags,
    mut record: impl FnMut(WalkStep),
) -> Result<Stop, VmiError> {
    let va = ctx.va.0;
    for level in levels {
        let index = (va >> level.shift) & 0x1ff;
        let entry_pa = table + index * 8;
        let entry = reader.read_entry(entry_pa)?;
        record(WalkStep {
            level: level.number,
            name: level.name,
            index: index as u16,
            entry_pa,
            entry,
        });
        if entry & pte::PRESENT == 0 {
            return Err(fault(ctx, level.number, entry, FaultKind::NotPresent));
        }
        flags.writable &= entry & pte::WRITABLE != 0;
        flags.user &= entry & pte::USER != 0;
        flags.no_execute |= entry & pte::NO_EXECUTE != 0;

        let is_leaf = level.number == 1 || entry & pte::PAGE_SIZE != 0;
        if entry & pte::PAGE_SIZE != 0 && level.number != 1 && !level.large_page {
            return Err(fault(ctx, level.number, entry, FaultKind::ReservedBit));
        }
        if is_leaf {
            let page_size = 1u64 << level.shift;
            // In a large-page entry bit 12 is PAT; bits 13..shift must be zero.
            let reserved = if level.number == 1 {
                0
            } else {
                (page_size - 1) & !0x1fff
            };
            if entry & reserved != 0 {
                return Err(fault(ctx, level.number, entry, FaultKind::ReservedBit));
            }
            flags.global = entry & pte::GLOBAL != 0;
            let base = entry & pte::ADDRESS_MASK & !(page_size - 1);
            return Ok(Stop::Leaf(Walked {
                pa: Pa(base | (va & (page_size - 1))),
                page_size,
                flags,
            }));
        }
        table = Pa(entry & pte::ADDRESS_MASK);
    }
    Ok(Stop::Table(table, flags))
}

/// The walk over the levels above the last one, after the canonical-address check.
#[inline(always)]
fn walk_upper<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    mode: PagingMode,
    record: impl FnMut(WalkStep),
) -> Result<Stop, VmiError> {
    if !mode.is_canonical(ctx.va.0) {
        return Err(fault(ctx, 0, 0, FaultKind::NonCanonical));
    }
    let root = Pa(ctx.root.0 & pte::ADDRESS_MASK);
    match mode {
        PagingMode::Level4 => walk(reader, ctx, root, &UPPER4, ALL_RIGHTS, record),
        PagingMode::Level5 => walk(reader, ctx, root, &UPPER5, ALL_RIGHTS, record),
    }
}

/// The last level of a walk, from the table the upper levels gave.
#[inline(always)]
fn walk_last<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    table: Pa,
    flags: PageFlags,
    record: impl FnMut(WalkStep),
) -> Result<Walked, VmiError> {
    match walk(reader, ctx, table, &LAST, flags, record)? {
        Stop::Leaf(w) => Ok(w),
        // Unreachable: the PT level is always a leaf.
        Stop::Table(..) => Err(VmiError::InvalidArgument(
            "page walk ended without a leaf".into(),
        )),
    }
}

/// Walks the page tables for `ctx` in `mode` and records every entry read.
pub fn translate<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    mode: PagingMode,
) -> Result<Translation, VmiError> {
    let mut steps = [WalkStep::default(); 5];
    let mut n = 0;
    let mut record = |step| {
        if let Some(slot) = steps.get_mut(n) {
            *slot = step;
            n += 1;
        }
    };
    let w = match walk_upper(reader, ctx, mode, &mut record)? {
        Stop::Leaf(w) => w,
        Stop::Table(table, flags) => walk_last(reader, ctx, table, flags, &mut record)?,
    };
    let mut t = Translation::new(ctx, w.pa, w.page_size, w.flags);
    for step in &steps[..n] {
        t.push_step(*step);
    }
    Ok(t)
}

/// Walks the levels above the last one (the read path's walk, recording nothing): the
/// leaf when it is a large page, else the last-level table.
#[inline(always)]
pub fn translate_to_last_table<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    mode: PagingMode,
) -> Result<LastLevel, VmiError> {
    Ok(match walk_upper(reader, ctx, mode, |_| {})? {
        Stop::Leaf(w) => LastLevel::Leaf(LeafMapping {
            pa: w.pa,
            page_size: w.page_size,
        }),
        Stop::Table(table, _) => LastLevel::Table(table),
    })
}

/// The first address above a faulting one that could translate (see
/// `Architecture::untranslatable_until`): the end of the span the faulting entry maps
/// (4 KiB at the PT, 2 MiB at the PD, ... 256 TiB at the PML5), or of the non-canonical
/// hole. `None` when that end is past 2^64.
pub fn untranslatable_until(fault: &PageFault, mode: PagingMode) -> Option<u64> {
    let va = fault.ctx.va.0;
    match fault.kind {
        FaultKind::NonCanonical => {
            // The hole lies between the lower half (top bit clear) and the upper half.
            let upper_half = u64::MAX << (mode.address_bits() - 1);
            (va < upper_half).then_some(upper_half)
        }
        FaultKind::NotPresent | FaultKind::ReservedBit => {
            let shift = LEVELS
                .iter()
                .find(|l| l.number == fault.level)
                .map_or(12, |l| l.shift);
            (va | ((1u64 << shift) - 1)).checked_add(1)
        }
        // A kind this walk does not know: one page.
        _ => (va | 0xfff).checked_add(1),
    }
}

/// Reads the entry of `ctx.va` in the last-level (PT) table at `table`.
#[inline(always)]
pub fn translate_in_last_table<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    table: Pa,
) -> Result<LeafMapping, VmiError> {
    // A table is page-aligned (its base comes from an entry's address bits): saying so
    // lets the compiler see that the entry cannot cross a page, and drop that check.
    let table = Pa(table.0 & pte::ADDRESS_MASK);
    let w = walk_last(reader, ctx, table, ALL_RIGHTS, |_| {})?;
    Ok(LeafMapping {
        pa: w.pa,
        page_size: w.page_size,
    })
}

#[cold]
#[inline(never)]
fn unknown_mode(levels: u8) -> VmiError {
    VmiError::InvalidArgument(format!("{levels}-level paging on AMD64"))
}

impl From<PagingMode> for u8 {
    #[inline]
    fn from(mode: PagingMode) -> u8 {
        match mode {
            PagingMode::Level4 => 4,
            PagingMode::Level5 => 5,
        }
    }
}

impl TryFrom<u8> for PagingMode {
    type Error = VmiError;

    #[inline]
    fn try_from(levels: u8) -> Result<Self, VmiError> {
        match levels {
            4 => Ok(Self::Level4),
            5 => Ok(Self::Level5),
            _ => Err(unknown_mode(levels)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untranslatable_spans_end_where_the_faulting_entry_ends() {
        let at = |va: u64, level: u8, kind: FaultKind| PageFault {
            ctx: AddressContext::new(va, 0x1000),
            level,
            entry: 0,
            kind,
        };
        let np = FaultKind::NotPresent;
        let l4 = PagingMode::Level4;
        assert_eq!(untranslatable_until(&at(0x1234, 1, np), l4), Some(0x2000));
        assert_eq!(
            untranslatable_until(&at(0x1234, 2, np), l4),
            Some(0x20_0000)
        );
        assert_eq!(untranslatable_until(&at(0x1234, 3, np), l4), Some(1 << 30));
        assert_eq!(untranslatable_until(&at(0x1234, 4, np), l4), Some(1 << 39));
        let rb = FaultKind::ReservedBit;
        assert_eq!(
            untranslatable_until(&at(0x1234, 5, rb), PagingMode::Level5),
            Some(1 << 48)
        );
        // The last entry of the address space: nothing translates after it.
        assert_eq!(untranslatable_until(&at(u64::MAX - 5, 4, np), l4), None);
        // The non-canonical hole ends where the upper half begins.
        let nc = FaultKind::NonCanonical;
        assert_eq!(
            untranslatable_until(&at(0x0000_8000_0000_0000, 0, nc), l4),
            Some(0xffff_8000_0000_0000)
        );
        assert_eq!(
            untranslatable_until(&at(0x0100_0000_0000_0000, 0, nc), PagingMode::Level5),
            Some(0xff00_0000_0000_0000)
        );
    }

    #[test]
    fn canonical() {
        assert!(PagingMode::Level4.is_canonical(0x0000_7fff_ffff_ffff));
        assert!(PagingMode::Level4.is_canonical(0xffff_8000_0000_0000));
        assert!(!PagingMode::Level4.is_canonical(0x0000_8000_0000_0000));
        assert!(PagingMode::Level5.is_canonical(0x00ff_ffff_ffff_ffff >> 1));
        assert!(!PagingMode::Level5.is_canonical(0x0100_0000_0000_0000));
        assert!(PagingMode::Level5.is_canonical(0xff00_0000_0000_0000));
    }

    #[test]
    fn paging_mode_round_trips_through_its_level_count() {
        for mode in [PagingMode::Level4, PagingMode::Level5] {
            assert_eq!(PagingMode::try_from(u8::from(mode)).unwrap(), mode);
        }
        assert!(PagingMode::try_from(3).is_err());
    }
}
