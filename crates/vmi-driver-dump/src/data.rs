//! The bytes of a dump: a read-only private mapping of the file, or a buffer.
//!
//! This module holds the crate's only `unsafe` code: the `mmap` call, and the window of
//! [`DumpBytes`] (a sub-slice kept as a pointer and a length).

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::ptr::NonNull;

use vmi_core::VmiError;

/// The whole dump as one byte slice.
pub(crate) enum DumpData {
    /// A read-only, private (copy-on-write, never written) mapping of the file.
    Mapped(memmap2::Mmap),
    /// Bytes held in memory (tests, fuzzing, dumps built on the fly).
    Owned(Vec<u8>),
}

impl DumpData {
    /// Maps `path` read-only.
    pub(crate) fn map(path: &Path) -> Result<Self, VmiError> {
        let file = File::open(path)
            .map_err(|e| VmiError::io(format!("cannot open dump {}", path.display()), e))?;
        let len = file
            .metadata()
            .map_err(|e| VmiError::io(format!("cannot stat dump {}", path.display()), e))?
            .len();
        if len == 0 {
            // mmap of zero bytes fails with EINVAL; an empty dump holds nothing anyway.
            return Ok(Self::Owned(Vec::new()));
        }
        #[allow(unsafe_code)] // the one mmap call of the crate, argued below
        // SAFETY: `MmapOptions::map_copy_read_only` is unsafe because the mapped bytes can
        // change (or vanish) underneath safe `&[u8]` references if the *file* is modified
        // while mapped. Each precondition:
        // - we never write through the mapping: the file is opened read-only (`File::open`),
        //   the mapping is `PROT_READ` and `MAP_PRIVATE` (copy-on-write, so even a write by
        //   us could not reach the file), and this crate only ever hands out `&[u8]`;
        // - another process writing the file concurrently would make our view change under
        //   us; a dump is a finished, immutable artifact, and we document that callers must
        //   not modify a dump while it is open (the same contract every mmap-based dump
        //   reader has);
        // - truncation is the hazard we cannot exclude from here: if another process
        //   truncates the file while it is mapped, touching the lost pages raises SIGBUS
        //   and the process dies (no memory unsafety is observable, but it is a crash).
        //   The crate-level docs state this; a caller that cannot trust the file's owner
        //   should copy the dump first or use [`DumpDriver::from_bytes`].
        // - the length is taken from the open file; memmap2 maps exactly that many bytes
        //   and keeps the mapping alive as long as the `Mmap` (owned by `self`) lives, so
        //   no slice outlives it.
        let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }
            .map_err(|e| VmiError::io(format!("cannot map dump {}", path.display()), e))?;
        Ok(Self::Mapped(map))
    }

    /// All bytes of the dump.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// The bytes of a dump, and a window on them lent without a bounds check on each use.
///
/// The window is the run of the file [`VmiRead::direct_memory`](vmi_core::VmiRead)
/// lends on every read (the largest stored segment). Held as a pointer and a length, it
/// costs two loads per read instead of the four loads and two compares of slicing the
/// file again each time: what limits random reads is how many cache misses the CPU keeps
/// in flight, and every load and instruction per read takes room from them.
pub(crate) struct DumpBytes {
    data: DumpData,
    /// Start of the window: inside `data`'s bytes, or dangling when `window_len` is 0.
    window_ptr: NonNull<u8>,
    window_len: usize,
}

// SAFETY: `DumpBytes` is `DumpData` (`Send + Sync`) plus a pointer into its bytes that
// is only ever read through shared `&[u8]` borrows of `self`: the same access a
// `&[u8]` borrow of `data` gives, which is `Send + Sync`. Nothing writes the bytes.
#[allow(unsafe_code)]
unsafe impl Send for DumpBytes {}
// SAFETY: see `Send` above: shared reads of immutable bytes only.
#[allow(unsafe_code)]
unsafe impl Sync for DumpBytes {}

impl DumpBytes {
    /// The bytes, with an empty window.
    pub(crate) fn new(data: DumpData) -> Self {
        Self {
            data,
            window_ptr: NonNull::dangling(),
            window_len: 0,
        }
    }

    /// All bytes of the dump.
    #[inline(always)]
    pub(crate) fn bytes(&self) -> &[u8] {
        self.data.bytes()
    }

    /// Sets the window to `range` of the bytes; a range that is not all there makes it
    /// empty.
    pub(crate) fn set_window(&mut self, range: Range<usize>) {
        let (ptr, len) = match self.data.bytes().get(range) {
            Some(window) => (NonNull::from(window).cast::<u8>(), window.len()),
            None => (NonNull::dangling(), 0),
        };
        self.window_ptr = ptr;
        self.window_len = len;
    }

    /// The window's bytes.
    #[inline(always)]
    pub(crate) fn window(&self) -> &[u8] {
        #[allow(unsafe_code)]
        // SAFETY: `from_raw_parts` needs `window_len` initialised bytes at `window_ptr`,
        // valid and unmodified for the returned lifetime. `set_window` took them from a
        // checked sub-slice of `self.data`'s bytes (or a dangling pointer with length 0,
        // which is valid for an empty slice). Those bytes stay where they are as long as
        // `self.data` lives: moving a `DumpData` moves neither the mapping (`Mmap` holds
        // the address of a mapping it never remaps) nor a `Vec`'s heap buffer, and
        // `data` is never mutated, dropped or replaced while `self` lives (the field is
        // private, and only `set_window` changes the window). The borrow of `self` ties
        // the slice's lifetime to `data`. The bytes are never written (`DumpData::map`
        // argues the mapping), so the shared slice aliases nothing mutable.
        unsafe {
            std::slice::from_raw_parts(self.window_ptr.as_ptr(), self.window_len)
        }
    }
}

/// Bytes `[offset, offset + len)` of `data`, or `None` when they are not all there.
#[inline]
pub(crate) fn slice_at(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(len).ok()?;
    data.get(start..start.checked_add(len)?)
}

/// Little-endian integers at fixed offsets of a header (the caller checked the length).
pub(crate) fn le_u16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

/// See [`le_u16`].
pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// See [`le_u16`].
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A "malformed dump" error at a file offset.
pub(crate) fn malformed(what: &'static str, offset: u64, detail: impl Into<String>) -> VmiError {
    VmiError::Malformed {
        what,
        address: offset,
        detail: detail.into(),
    }
}
