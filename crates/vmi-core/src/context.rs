//! Where an access goes: a virtual address in an address space, or a physical address.

use std::fmt;

use crate::{Pa, Va};

/// A guest-virtual address together with the root of the page tables that map it
/// (on AMD64: the physical address in CR3, without the PCID bits).
///
/// ```
/// use vmi_core::{AddressContext, Pa, Va};
/// let ctx: AddressContext = (Va(0xffff_8880_0000_1000), Pa(0x1aa000)).into();
/// assert_eq!(ctx.root, Pa(0x1aa000));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AddressContext {
    /// The virtual address.
    pub va: Va,
    /// Physical address of the top-level page table.
    pub root: Pa,
}

impl AddressContext {
    /// A virtual address in the address space rooted at `root`.
    pub fn new(va: impl Into<Va>, root: impl Into<Pa>) -> Self {
        Self {
            va: va.into(),
            root: root.into(),
        }
    }
}

impl<V: Into<Va>, R: Into<Pa>> From<(V, R)> for AddressContext {
    fn from((va, root): (V, R)) -> Self {
        Self::new(va, root)
    }
}

impl fmt::Display for AddressContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (root {})", self.va, self.root)
    }
}

/// How an [`AccessContext`]'s address is turned into a physical one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TranslationMechanism {
    /// The address is guest-physical.
    Direct,
    /// The address is guest-virtual, translated through the page tables at `root`.
    Paging {
        /// Physical address of the top-level page table.
        root: Pa,
    },
}

/// A memory access: an address and how to reach it.
///
/// ```
/// use vmi_core::{AccessContext, Pa, Va};
/// let phys = AccessContext::direct(Pa(0x1000));
/// let virt = AccessContext::paging(Va(0xffff_ffff_8100_0000), Pa(0x1aa000));
/// assert_ne!(phys, virt);
/// // A physical address converts directly:
/// assert_eq!(AccessContext::from(Pa(0x1000)), phys);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AccessContext {
    /// The address (physical or virtual, as `mechanism` says).
    pub address: u64,
    /// How to translate it.
    pub mechanism: TranslationMechanism,
}

impl AccessContext {
    /// An access to guest-physical memory.
    pub fn direct(pa: impl Into<Pa>) -> Self {
        Self {
            address: pa.into().0,
            mechanism: TranslationMechanism::Direct,
        }
    }

    /// An access to guest-virtual memory through the page tables at `root`.
    pub fn paging(va: impl Into<Va>, root: impl Into<Pa>) -> Self {
        Self {
            address: va.into().0,
            mechanism: TranslationMechanism::Paging { root: root.into() },
        }
    }

    /// The same access, `offset` bytes further (wrapping, like the CPU).
    pub fn offset(self, offset: u64) -> Self {
        Self {
            address: self.address.wrapping_add(offset),
            ..self
        }
    }
}

impl From<Pa> for AccessContext {
    fn from(pa: Pa) -> Self {
        Self::direct(pa)
    }
}

impl From<AddressContext> for AccessContext {
    fn from(ctx: AddressContext) -> Self {
        Self::paging(ctx.va, ctx.root)
    }
}

impl<V: Into<Va>, R: Into<Pa>> From<(V, R)> for AccessContext {
    fn from(pair: (V, R)) -> Self {
        AddressContext::from(pair).into()
    }
}

impl fmt::Display for AccessContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mechanism {
            TranslationMechanism::Direct => write!(f, "physical {:#x}", self.address),
            TranslationMechanism::Paging { root } => {
                write!(f, "virtual {:#x} (root {})", self.address, root)
            }
        }
    }
}
