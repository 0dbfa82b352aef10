//! The translation cache: a software TLB shared by every thread of one core.
//!
//! One entry per *region* (the span one last-level page table maps: 2 MiB on AMD64) of
//! an address space, holding what the walk found at the last level:
//!
//! - a **large leaf** covering the region (a 2 MiB or 1 GiB page): a hit is the
//!   translation, no page-table read;
//! - else the **last-level table** of the region: a hit costs one entry read instead of
//!   a whole walk, and one entry serves the 512 pages of the region, so the random reads
//!   of a scan over scattered small pages hit as often as those over large pages.
//!
//! Like a hardware paging-structure cache, it is only an accelerator: invalidation is the
//! core's job (after the guest ran, after writes).
//!
//! - **No locks, no read-modify-write on a hit.** A hit is a handful of plain loads: each
//!   slot is a sequence lock made of atomics; a reader loads the sequence, the fields,
//!   then the sequence again, and trusts the fields only when both sequences are equal
//!   and even. Writers claim a slot with one compare-and-swap (a slot another thread is
//!   filling is simply not cached this time). No `unsafe`: every field is an `AtomicU64`.
//!   (On x86 an atomic read-modify-write is a full barrier: on the hit path it would keep
//!   a read from overlapping the cache misses of the reads before it.)
//! - **Invalidation is one increment.** Each slot records the epoch it was filled in;
//!   [`Tlb::clear`] bumps the epoch, so every older slot stops matching. A walk takes the
//!   epoch *before* it reads the page tables and files its result under that epoch, so a
//!   walk that raced with an invalidation cannot leave a stale entry behind.
//! - **Counters only when asked** (`VmiCoreConfig::statistics`).

use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::cache::CacheStats;

/// What the cache knows about the region of an address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Cached {
    /// A large leaf covers the region: the physical address itself.
    Leaf(u64),
    /// The physical address of the region's last-level page table.
    Table(u64),
}

/// One cached region: under the sequence `seq`, in the address space `root`, the region
/// `tag` (its first virtual address with bit 0 set, so that 0 means empty) holds `value`
/// (a physical base, bit 0 set for a leaf), filled in epoch `epoch`.
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    root: AtomicU64,
    tag: AtomicU64,
    value: AtomicU64,
    epoch: AtomicU64,
}

/// The translation cache of a core (see the module docs).
pub(crate) struct Tlb {
    /// log2 of the bytes of a region.
    shift: u32,
    /// `slots.len() - 1` (a power of two minus one); unused when `slots` is empty.
    mask: u64,
    slots: Box<[Slot]>,
    epoch: AtomicU64,
    statistics: bool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Tlb {
    /// A cache of `entries` regions of `1 << shift` bytes, rounded up to a power of two
    /// (0 disables it).
    pub(crate) fn new(shift: u32, entries: usize, statistics: bool) -> Self {
        // A region of at least two bytes and less than the address space.
        let shift = shift.clamp(1, 63);
        let entries = if entries == 0 {
            0
        } else {
            entries.next_power_of_two()
        };
        Self {
            shift,
            mask: (entries as u64).saturating_sub(1),
            slots: (0..entries).map(|_| Slot::default()).collect(),
            epoch: AtomicU64::new(0),
            statistics,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The current epoch: take it before a walk, file the walk's result under it.
    #[inline(always)]
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The slot for `va` in `root`, and the tag that would match it.
    #[inline(always)]
    fn slot(&self, root: u64, va: u64) -> Option<(&Slot, u64)> {
        self.slot_at(self.shift, root, va)
    }

    /// [`Self::slot`] with the shift given.
    #[inline(always)]
    fn slot_at(&self, shift: u32, root: u64, va: u64) -> Option<(&Slot, u64)> {
        // `shift` < 64 (`new`): the shifts cannot wrap.
        let region = va.wrapping_shr(shift);
        // Neighbouring regions land in neighbouring slots; the root spreads address spaces.
        let index = (region ^ (root >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15)) & self.mask;
        let tag = region.wrapping_shl(shift) | 1;
        Some((self.slots.get(index as usize)?, tag))
    }

    /// What is cached for the region of `va` in `root`. `shift` is the one the cache was
    /// made with (a constant in the caller: shifts by an immediate, no load).
    #[inline(always)]
    pub(crate) fn get(&self, shift: u32, root: u64, va: u64) -> Option<Cached> {
        let shift = shift.clamp(1, 63);
        debug_assert_eq!(shift, self.shift);
        let (slot, tag) = self.slot_at(shift, root, va)?;
        let epoch = self.epoch();
        let seq = slot.seq.load(Ordering::Acquire);
        let (r, t, value, e) = (
            slot.root.load(Ordering::Relaxed),
            slot.tag.load(Ordering::Relaxed),
            slot.value.load(Ordering::Relaxed),
            slot.epoch.load(Ordering::Relaxed),
        );
        // Orders the field loads before the second sequence load (seqlock read side).
        fence(Ordering::Acquire);
        let stable = seq & 1 == 0 && slot.seq.load(Ordering::Relaxed) == seq;
        if !(stable && r == root && t == tag && e == epoch) {
            return None;
        }
        if self.statistics {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        Some(if value & 1 != 0 {
            Cached::Leaf((value & !1) | (va & !u64::MAX.wrapping_shl(shift)))
        } else {
            Cached::Table(value)
        })
    }

    /// Files what a walk of `va` in `root`, begun in `epoch`, found at the last level.
    /// A leaf smaller than a region is not filed (its table is).
    pub(crate) fn insert(&self, root: u64, va: u64, found: Cached, page_size: u64, epoch: u64) {
        if self.statistics {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        let region = 1u64 << self.shift;
        let value = match found {
            Cached::Leaf(pa) if page_size >= region => (pa & !(region - 1)) | 1,
            Cached::Leaf(_) => return,
            // A table base is page-aligned: bit 0 is free.
            Cached::Table(pa) => pa & !1,
        };
        let Some((slot, tag)) = self.slot(root, va) else {
            return;
        };
        let seq = slot.seq.load(Ordering::Relaxed);
        if seq & 1 != 0
            || slot
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return; // another thread is filling this slot: skip caching this once
        }
        // Keeps the field stores after the odd sequence (seqlock write side).
        fence(Ordering::Release);
        slot.root.store(root, Ordering::Relaxed);
        slot.tag.store(tag, Ordering::Relaxed);
        slot.value.store(value, Ordering::Relaxed);
        slot.epoch.store(epoch, Ordering::Relaxed);
        slot.seq.store(seq + 2, Ordering::Release);
    }

    /// Counts a walk whose result was not filed (it failed).
    pub(crate) fn miss(&self) {
        if self.statistics {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets whatever is cached for the region of `va` in `root`.
    pub(crate) fn remove(&self, root: u64, va: u64) {
        let Some((slot, _)) = self.slot(root, va) else {
            return;
        };
        loop {
            let seq = slot.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                && slot
                    .seq
                    .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                slot.tag.store(0, Ordering::Relaxed);
                slot.seq.store(seq + 2, Ordering::Release);
                return;
            }
            std::hint::spin_loop();
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn stats(&self) -> CacheStats {
        let epoch = self.epoch();
        let entries = self
            .slots
            .iter()
            .filter(|s| {
                s.tag.load(Ordering::Relaxed) != 0 && s.epoch.load(Ordering::Relaxed) == epoch
            })
            .count();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries as u64,
            capacity: self.slots.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB2: u64 = 1 << 21;

    fn tlb() -> Tlb {
        Tlb::new(21, 16, true)
    }

    #[test]
    fn large_leaves_hit_anywhere_in_their_region() {
        let t = tlb();
        let e = t.epoch();
        let va = 0xffff_8880_0020_1234;
        t.insert(0x1000, va, Cached::Leaf(0x40_1234), MIB2, e);
        assert_eq!(
            t.get(21, 0x1000, 0xffff_8880_0020_0000),
            Some(Cached::Leaf(0x40_0000))
        );
        assert_eq!(
            t.get(21, 0x1000, 0xffff_8880_003f_fff8),
            Some(Cached::Leaf(0x5f_fff8))
        );
        // Not the next region, not another address space.
        assert_eq!(t.get(21, 0x1000, 0xffff_8880_0040_0000), None);
        assert_eq!(t.get(21, 0x2000, 0xffff_8880_0020_0000), None);
        // A 1 GiB leaf is filed as the 2 MiB part of it that holds the address.
        t.insert(0x1000, 0x4060_0010, Cached::Leaf(0x8060_0010), 1 << 30, e);
        assert_eq!(
            t.get(21, 0x1000, 0x4070_0000),
            Some(Cached::Leaf(0x8070_0000))
        );
        let s = t.stats();
        assert_eq!((s.hits, s.misses, s.entries), (3, 2, 2));
    }

    #[test]
    fn small_pages_file_their_table_not_their_leaf() {
        let t = tlb();
        let e = t.epoch();
        t.insert(0, 0x7000_1008, Cached::Leaf(0x9008), 4096, e);
        assert_eq!(t.get(21, 0, 0x7000_1008), None);
        t.insert(0, 0x7000_1008, Cached::Table(0x33_000), 4096, e);
        assert_eq!(t.get(21, 0, 0x7010_0000), Some(Cached::Table(0x33_000)));
    }

    #[test]
    fn clear_and_remove_forget() {
        let t = tlb();
        t.insert(0x1000, 0x5000, Cached::Table(0x9000), 4096, t.epoch());
        t.remove(0x1000, 0x1f_f008);
        assert_eq!(t.get(21, 0x1000, 0x5000), None);
        let stale = t.epoch();
        t.insert(0x1000, 0x5000, Cached::Table(0x9000), 4096, stale);
        t.clear();
        assert_eq!(t.get(21, 0x1000, 0x5000), None);
        // A walk that began before the clear files under the old epoch: never visible.
        t.insert(0x1000, 0x6000, Cached::Table(0xa000), 4096, stale);
        assert_eq!(t.get(21, 0x1000, 0x6000), None);
        assert_eq!(t.stats().entries, 0);
    }

    #[test]
    fn disabled_caches_nothing() {
        let t = Tlb::new(21, 0, true);
        t.insert(0, 0x1000, Cached::Table(0x2000), 4096, t.epoch());
        assert_eq!(t.get(21, 0, 0x1000), None);
        t.remove(0, 0x1000);
        assert_eq!(t.stats().capacity, 0);
    }

    /// Threads filling and reading colliding slots never see a torn entry: every hit
    /// returns the value that belongs to its region.
    #[test]
    fn concurrent_fills_never_tear() {
        let t = Tlb::new(21, 4, false);
        std::thread::scope(|s| {
            for n in 0..4u64 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        let va = ((i * 7 + n) % 64) << 21;
                        let table = (va >> 9) ^ 0xabc_d000;
                        t.insert(0, va, Cached::Table(table), 4096, t.epoch());
                        if let Some(found) = t.get(21, 0, va | 8) {
                            assert_eq!(found, Cached::Table(table));
                        }
                    }
                });
            }
        });
    }
}
