//! Breakpoint bytes hidden from our reads.
//!
//! Under KVM, QEMU's gdbstub plants a software breakpoint by writing `0xCC` into guest
//! RAM (through the page tables of one vCPU) and puts the saved byte back when the
//! breakpoint goes. Our reads come straight from that RAM, so without care every read
//! of a hooked function would show the `int3`: a scanner would match it, a disassembler
//! would decode it, a checksum of kernel text would change. The driver records, for
//! each such breakpoint, the guest-physical address QEMU wrote and the byte that was
//! there; [`Shadow::patch`] puts that byte back into every read that covers it.
//!
//! Only a byte that still holds `0xCC` is replaced: if the guest has rewritten it
//! (kernel text patching), the breakpoint is gone and its new byte is the truth.
//!
//! Writes through the driver ([`Shadow::guard_write`]) keep the `int3` in RAM (QEMU
//! checks for it when removing the breakpoint) and take the written byte as the new
//! original, which the driver writes into RAM after QEMU has removed the breakpoint
//! ([`Shadow::remove`] hands it back marked `dirty`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The `int3` opcode.
pub(crate) const INT3: u8 = 0xCC;

/// One planted breakpoint byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ShadowByte {
    /// The breakpoint's virtual address (the gdbstub's key).
    pub va: u64,
    /// Where QEMU wrote its `int3`.
    pub pa: u64,
    /// What the guest sees there.
    pub original: u8,
    /// `original` was written through the driver while the breakpoint was in place.
    pub dirty: bool,
}

/// The planted breakpoint bytes of a driver (empty unless software breakpoints live
/// in guest memory, i.e. under KVM).
#[derive(Debug, Default)]
pub(crate) struct Shadow {
    /// Whether `bytes` holds anything: the one load a read pays when it is empty.
    any: AtomicBool,
    bytes: Mutex<Vec<ShadowByte>>,
}

impl Shadow {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ShadowByte>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a breakpoint byte before QEMU plants it.
    pub(crate) fn add(&self, va: u64, pa: u64, original: u8) {
        let mut b = self.lock();
        b.retain(|s| s.va != va);
        b.push(ShadowByte {
            va,
            pa,
            original,
            dirty: false,
        });
        self.any.store(true, Ordering::Release);
    }

    /// Forgets the breakpoint at `va` (after QEMU removed it), returning its record.
    pub(crate) fn remove(&self, va: u64) -> Option<ShadowByte> {
        let mut b = self.lock();
        let i = b.iter().position(|s| s.va == va)?;
        let s = b.swap_remove(i);
        self.any.store(!b.is_empty(), Ordering::Release);
        Some(s)
    }

    /// Forgets every record, returning them.
    pub(crate) fn take_all(&self) -> Vec<ShadowByte> {
        let mut b = self.lock();
        self.any.store(false, Ordering::Release);
        std::mem::take(&mut *b)
    }

    /// Puts the original bytes back into `buf`, read from guest-physical `gpa`.
    pub(crate) fn patch(&self, gpa: u64, buf: &mut [u8]) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        for s in self.lock().iter() {
            if let Some(i) = index_in(gpa, buf.len(), s.pa)
                && buf[i] == INT3
            {
                buf[i] = s.original;
            }
        }
    }

    /// `data` as it may be written at `gpa`: a planted byte keeps its `int3`, and the
    /// byte meant for it becomes its original. `None` when no planted byte is covered.
    pub(crate) fn guard_write(&self, gpa: u64, data: &[u8]) -> Option<Vec<u8>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut b = self.lock();
        let mut out: Option<Vec<u8>> = None;
        for s in b.iter_mut() {
            if let Some(i) = index_in(gpa, data.len(), s.pa) {
                s.original = data[i];
                s.dirty = true;
                out.get_or_insert_with(|| data.to_vec())[i] = INT3;
            }
        }
        out
    }
}

/// The index of `pa` in `len` bytes at `gpa`, if they cover it.
fn index_in(gpa: u64, len: usize, pa: u64) -> Option<usize> {
    let i = usize::try_from(pa.checked_sub(gpa)?).ok()?;
    (i < len).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_see_the_original_byte_only_where_the_int3_is() {
        let s = Shadow::default();
        let mut buf = [0x90, INT3, INT3, 0x90];
        s.patch(0x1000, &mut buf);
        assert_eq!(buf, [0x90, INT3, INT3, 0x90], "nothing recorded: untouched");
        s.add(0xffff_ffff_8100_0001, 0x1001, 0x55);
        s.add(0xffff_ffff_8100_0003, 0x1003, 0x48);
        s.patch(0x1000, &mut buf);
        // 0x1001 held the int3: patched; 0x1003 was rewritten by the guest: kept.
        assert_eq!(buf, [0x90, 0x55, INT3, 0x90]);
        // Reads that start inside, end before, or lie elsewhere.
        let mut one = [INT3];
        s.patch(0x1001, &mut one);
        assert_eq!(one, [0x55]);
        let mut before = [INT3];
        s.patch(0x1000, &mut before);
        assert_eq!(before, [INT3]);
        let mut far = [INT3; 2];
        s.patch(u64::MAX - 1, &mut far);
        assert_eq!(far, [INT3; 2]);
        assert_eq!(s.remove(0xffff_ffff_8100_0001).map(|b| b.pa), Some(0x1001));
        assert_eq!(s.remove(0xffff_ffff_8100_0001), None);
        assert_eq!(s.take_all().len(), 1);
        let mut after = [INT3];
        s.patch(0x1001, &mut after);
        assert_eq!(after, [INT3]);
    }

    #[test]
    fn writes_keep_the_int3_and_become_the_original() {
        let s = Shadow::default();
        assert_eq!(s.guard_write(0x2000, &[1, 2, 3]), None);
        s.add(0xffff_ffff_8100_2001, 0x2001, 0x55);
        assert_eq!(s.guard_write(0x3000, &[1, 2, 3]), None);
        assert_eq!(s.guard_write(0x2000, &[1, 2, 3]), Some(vec![1, INT3, 3]));
        let mut buf = [1, INT3, 3];
        s.patch(0x2000, &mut buf);
        assert_eq!(
            buf,
            [1, 2, 3],
            "a read after the write sees what was written"
        );
        let b = s.remove(0xffff_ffff_8100_2001).unwrap();
        assert!(b.dirty);
        assert_eq!(b.original, 2);
    }
}
