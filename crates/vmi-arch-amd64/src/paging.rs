//! AMD64 paging, described as data and walked by one generic loop.
//!
//! The table [`LEVELS`] says, for each level, which address bits index it and whether
//! its entries may map a large page (the PS bit). PS is legal only in PDPT entries
//! (1 GiB) and PD entries (2 MiB); in a PML5 or PML4 entry it is a reserved bit and the
//! walk faults with [`FaultKind::ReservedBit`], as the CPU does.

use vmi_core::{
    AddressContext, FaultKind, Pa, PageFault, PageFlags, PageTableReader, Translation, VmiError,
    WalkStep,
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

    fn levels(self) -> &'static [Level] {
        match self {
            Self::Level4 => &LEVELS[1..],
            Self::Level5 => &LEVELS[..],
        }
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

/// Walks the page tables for `ctx` in `mode`.
pub fn translate<R: PageTableReader + ?Sized>(
    reader: &R,
    ctx: AddressContext,
    mode: PagingMode,
) -> Result<Translation, VmiError> {
    let va = ctx.va.0;
    if !mode.is_canonical(va) {
        return Err(PageFault {
            ctx,
            level: 0,
            entry: 0,
            kind: FaultKind::NonCanonical,
        }
        .into());
    }
    let mut table = Pa(ctx.root.0 & pte::ADDRESS_MASK);
    let mut flags = PageFlags {
        writable: true,
        user: true,
        no_execute: false,
        global: false,
    };
    let mut steps = [WalkStep::default(); 5];
    for (n, level) in mode.levels().iter().enumerate() {
        let index = (va >> level.shift) & 0x1ff;
        let entry_pa = table + index * 8;
        let entry = reader.read_entry(entry_pa)?;
        steps[n] = WalkStep {
            level: level.number,
            name: level.name,
            index: index as u16,
            entry_pa,
            entry,
        };
        let fault = |kind| {
            VmiError::from(PageFault {
                ctx,
                level: level.number,
                entry,
                kind,
            })
        };
        if entry & pte::PRESENT == 0 {
            return Err(fault(FaultKind::NotPresent));
        }
        flags.writable &= entry & pte::WRITABLE != 0;
        flags.user &= entry & pte::USER != 0;
        flags.no_execute |= entry & pte::NO_EXECUTE != 0;

        let is_leaf = level.number == 1 || entry & pte::PAGE_SIZE != 0;
        if entry & pte::PAGE_SIZE != 0 && level.number != 1 && !level.large_page {
            return Err(fault(FaultKind::ReservedBit));
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
                return Err(fault(FaultKind::ReservedBit));
            }
            flags.global = entry & pte::GLOBAL != 0;
            let base = entry & pte::ADDRESS_MASK & !(page_size - 1);
            let mut t = Translation::new(ctx, Pa(base | (va & (page_size - 1))), page_size, flags);
            for step in &steps[..=n] {
                t.push_step(*step);
            }
            return Ok(t);
        }
        table = Pa(entry & pte::ADDRESS_MASK);
    }
    // Unreachable in practice: the PT level is always a leaf.
    Err(VmiError::InvalidArgument(
        "page walk ended without a leaf".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical() {
        assert!(PagingMode::Level4.is_canonical(0x0000_7fff_ffff_ffff));
        assert!(PagingMode::Level4.is_canonical(0xffff_8000_0000_0000));
        assert!(!PagingMode::Level4.is_canonical(0x0000_8000_0000_0000));
        assert!(PagingMode::Level5.is_canonical(0x00ff_ffff_ffff_ffff >> 1));
        assert!(!PagingMode::Level5.is_canonical(0x0100_0000_0000_0000));
        assert!(PagingMode::Level5.is_canonical(0xff00_0000_0000_0000));
    }
}
