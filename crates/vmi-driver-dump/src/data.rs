//! The bytes of a dump: a read-only private mapping of the file, or a buffer.
//!
//! This module holds the crate's only `unsafe` code: the `mmap` call.

use std::fs::File;
use std::path::Path;

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
