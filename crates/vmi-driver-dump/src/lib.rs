//! Memory-dump drivers for the `vmi` framework: one driver, [`DumpDriver`], opens every
//! common dump format, detects it by content, maps it without copying and reports
//! honestly what it holds.
//!
//! | format | detected by | memory | registers ([`VmiQueryRegisters`]) | VMCOREINFO |
//! |---|---|---|---|---|
//! | raw RAM image (`"raw"`) | anything else, or [`DumpFormat::Raw`] | identity map | none: typed error | no |
//! | ELF64 core (`"elf"`), QEMU `dump-guest-memory` and kdump `/proc/vmcore` | `\x7fELF` | `PT_LOAD` by `p_paddr`; `p_filesz < p_memsz` tail is a hole | `NT_PRSTATUS` + `QEMU` notes per vCPU | `VMCOREINFO` note |
//! | kdump-compressed (`"kdump"`), makedumpfile and QEMU `kdump-*` | `KDUMP   `, or `makedumpfile` (flattened) | bitmaps + page descriptors; zlib, LZO, snappy, zstd, raw pages, decompressed lazily into a bounded cache | `NT_PRSTATUS` (+ `QEMU`) notes of the sub-header | sub-header copy |
//! | LiME (`"lime"`) | `EMiL` magic | one range per header | none: typed error | no |
//! | Windows crash dump (`"windows-crashdump"`) | `PAGEDU64` | full (physical runs), bitmap (`SDMP`/`FDMP`), kernel/complete (`RDMP` ranges) | vCPU 0 from the context record, CR3 from `DirectoryTableBase` | no |
//!
//! Key decisions:
//! - **Holes are errors, never zeros.** A page the dump does not hold is
//!   [`VmiError::PageUnavailable`] with [`PageAbsence::NotInDump`] (a hole),
//!   [`PageAbsence::Excluded`] (makedumpfile filtered it out) or
//!   [`PageAbsence::BeyondMemory`].
//! - **Registers come only from the file.** Raw and LiME dumps have no CPU state and say
//!   so with [`VmiError::NotSupported`]. QEMU's CPU-state note has no EFER, so `efer` is
//!   0 in registers from ELF and kdump files (callers decide the paging mode from CR0/CR4
//!   or from what the OS layer finds; we do not guess LMA). With only `NT_PRSTATUS`
//!   (kdump `/proc/vmcore`), control registers are 0: see
//!   [`DumpDriver::has_control_registers`].
//! - **Open is O(1) in the dump size** for raw, ELF and LiME (headers only; the file is
//!   mapped); kdump builds only its bitmap rank index (bounded by the bitmap's size in
//!   the file) and, for the flattened layout, an index of record headers (one pass over
//!   the headers, not the data); Windows bitmap dumps turn their bitmap into ranges.
//! - **Shared pieces in one place:** the read-only mapping (`data`), the physical-range
//!   map (binary search, `ranges`) and the decompressed-page cache (`quick_cache`).
//! - **Hostile files.** Every header field is checked against the file size before use;
//!   counts derived from header fields are bounded by the bytes that back them before
//!   anything is allocated; nothing panics on file contents (fuzzed in the tests).
//!
//! Performance (`benches/read.rs`, 256 MiB guest, random physical reads; a 2-core machine
//! shared with parallel builds, so expect ±30 %): 4 KiB reads from raw, ELF and LiME run at
//! the speed of a plain mmap copy (memory-bound). Random 8-byte reads cost 15–17 ns against
//! 12–13 ns for a bare load from a plain mapping of the raw file (and 17–18 ns from a plain
//! mapping of the ELF file, whose pages QEMU places 0x1170 bytes in; what differs between
//! files is the page cache: a file held in 2 MiB folios gets PMD-mapped and its random
//! reads lose most TLB misses, as our generated LiME image does); with hot addresses
//! the driver costs 2.4 ns per read against 1.1 ns, and `VmiCore::read_physical` /
//! `read_u64` add nothing measurable. What made it so: no `VmiError` is built on the success
//! path (an eager `ok_or` cost a `drop_in_place` call per read), `read_page` and the core's
//! single-page path are inlined so a fixed-size copy is one load, and the range lookup
//! tries the largest segment, then a per-slot guess, before its binary search, with
//! arithmetic that cannot overflow written so (no overflow checks). Measured with many
//! reads in flight (`benches/readpath.rs`, issue 17), what limits random reads is how
//! many cache misses the CPU overlaps, which falls with every load and instruction a read
//! costs: so the largest segment is also lent as `VmiRead::direct_memory` (a window on the
//! file checked once at open, two loads per use), which `VmiCore` copies from without a
//! driver call; 8-byte random reads then run at 0.6–1.0× a bare load from a mapping, and
//! virtual ones at 0.8–1.2× a naive walk that reads every level. memflow's mapped-file connector takes
//! 2.4–3.4 µs and 300–870 ns. QEMU's zlib kdump costs 6–12 µs per uncached page
//! (decompression).
//!
//! The mapping is read-only and private; we never write through it. Like every mmap-based
//! reader, a dump must not be modified or truncated while it is open: a truncated file
//! makes the process die of `SIGBUS` when the lost pages are touched. Use
//! [`DumpDriver::from_bytes`] for files whose owner you do not trust.
//!
//! ```
//! use vmi_core::{Gfn, Pa, VmiCore, VmiRead, VmiQueryRegisters, VcpuId, VmiError, PageAbsence};
//! use vmi_driver_dump::{DumpDriver, DumpFormat, DumpOptions};
//!
//! // A LiME image with 2 pages at 0x1000 and a hole after them.
//! let page = [0xabu8; 8192];
//! let image = vmi_driver_dump::build_lime(&[(0x1000, &page)]);
//! let dump = DumpDriver::from_bytes(image, DumpOptions::default())?;
//! assert_eq!(dump.format(), DumpFormat::Lime);
//! let mut buf = [0u8; 4];
//! dump.read_page(Gfn(1), 0, &mut buf)?;
//! assert_eq!(buf, [0xab; 4]);
//! assert!(matches!(
//!     dump.read_page(Gfn(0), 0, &mut buf),
//!     Err(VmiError::PageUnavailable { reason: PageAbsence::NotInDump, .. })
//! ));
//! assert!(matches!(dump.registers(VcpuId(0)), Err(VmiError::NotSupported { .. })));
//!
//! let core = VmiCore::new(dump)?;
//! let mut word = [0u8; 8];
//! core.read_physical(Pa(0x1ffc), &mut word)?; // crosses into the second page
//! assert_eq!(word, [0xab; 8]);
//! # Ok::<(), VmiError>(())
//! ```

#![deny(unsafe_code)] // `data.rs` (the mmap call, the dump's window) is the one argued exception

mod data;
mod elf;
mod kdump;
mod lime;
mod lzo;
mod notes;
mod ranges;
mod windows;
mod writer;

use std::ops::Range;
use std::path::Path;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    Gfn, Pa, PageAbsence, VcpuId, VmiDriver, VmiError, VmiInfo, VmiQueryRegisters, VmiRead,
};

use crate::data::{DumpBytes, DumpData};
use crate::notes::NoteInfo;
use crate::ranges::{RangeMap, Segment};

pub use crate::kdump::{KdumpCompression, KdumpHeader};
pub use crate::lime::build_lime;
pub use crate::windows::{WindowsDumpKind, WindowsHeader};
pub use crate::writer::{ElfCoreOptions, ElfCoreSummary, WriteProgress, write_elf_core};

/// Page size of every format this crate reads (x86-64).
pub const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u32 = 12;

/// Default number of decompressed kdump pages kept in the cache (8 MiB).
pub const DEFAULT_PAGE_CACHE: usize = 2048;

/// A dump format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DumpFormat {
    /// A raw image of guest RAM: file offset = guest-physical address.
    Raw,
    /// An ELF64 core (QEMU `dump-guest-memory`, kdump `/proc/vmcore`).
    Elf,
    /// A makedumpfile/kdump-compressed file, standard or flattened layout.
    Kdump,
    /// A LiME image.
    Lime,
    /// A 64-bit Windows crash dump (`PAGEDU64`).
    WindowsCrashDump,
}

impl DumpFormat {
    /// The short name used as [`VmiInfo::kind`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Elf => "elf",
            Self::Kdump => "kdump",
            Self::Lime => "lime",
            Self::WindowsCrashDump => "windows-crashdump",
        }
    }

    /// Detects the format from the first bytes of a file. Anything without a known magic
    /// is [`DumpFormat::Raw`].
    pub fn detect(head: &[u8]) -> DumpFormat {
        if head.starts_with(b"\x7fELF") {
            Self::Elf
        } else if head.starts_with(kdump::KDUMP_SIGNATURE)
            || head.starts_with(kdump::FLAT_SIGNATURE)
        {
            Self::Kdump
        } else if head.starts_with(&lime::LIME_MAGIC.to_le_bytes()) {
            Self::Lime
        } else if head.starts_with(windows::SIGNATURE64) {
            Self::WindowsCrashDump
        } else {
            Self::Raw
        }
    }
}

/// How to open a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DumpOptions {
    /// Force a format instead of detecting it (use [`DumpFormat::Raw`] to read a file
    /// that happens to start with a magic as a raw image).
    pub format: Option<DumpFormat>,
    /// Decompressed pages kept by the kdump page cache (0 disables it).
    pub page_cache: usize,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self {
            format: None,
            page_cache: DEFAULT_PAGE_CACHE,
        }
    }
}

enum Body {
    /// Pages stored uncompressed: raw, ELF, LiME, Windows.
    Mapped(RangeMap),
    /// kdump-compressed.
    Kdump(Box<kdump::Kdump>),
}

/// A memory dump opened read-only: [`VmiRead`] for its pages and, where the format has
/// CPU state, [`VmiQueryRegisters`].
pub struct DumpDriver {
    data: DumpBytes,
    format: DumpFormat,
    body: Body,
    notes: NoteInfo,
    vcpus: u16,
    windows: Option<WindowsHeader>,
    /// The physical address of the first byte of the data's window (the largest stored
    /// segment, empty for kdump): the bytes [`VmiRead::direct_memory`] lends.
    direct_base: u64,
}

impl std::fmt::Debug for DumpDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpDriver")
            .field("format", &self.format)
            .field("bytes", &self.data.bytes().len())
            .field("vcpus", &self.vcpus)
            .finish_non_exhaustive()
    }
}

impl DumpDriver {
    /// Opens `path`, detecting its format by content.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VmiError> {
        Self::open_with(path, DumpOptions::default())
    }

    /// Opens `path` with options (forced format, cache size).
    pub fn open_with(path: impl AsRef<Path>, options: DumpOptions) -> Result<Self, VmiError> {
        Self::new(DumpData::map(path.as_ref())?, options)
    }

    /// Reads a dump held in memory (tests, fuzzing, untrusted files copied first).
    pub fn from_bytes(bytes: Vec<u8>, options: DumpOptions) -> Result<Self, VmiError> {
        Self::new(DumpData::Owned(bytes), options)
    }

    fn new(data: DumpData, options: DumpOptions) -> Result<Self, VmiError> {
        let bytes = data.bytes();
        let format = options
            .format
            .unwrap_or_else(|| DumpFormat::detect(bytes.get(..64).unwrap_or(bytes)));
        let len = bytes.len() as u64;
        let mut notes = NoteInfo::default();
        let mut windows = None;
        let body = match format {
            DumpFormat::Raw => Body::Mapped(RangeMap::new(
                vec![Segment {
                    start: 0,
                    len,
                    file_offset: 0,
                }],
                len,
            )?),
            DumpFormat::Elf => {
                let core = elf::parse(bytes)?;
                notes = core.notes;
                Body::Mapped(core.ranges)
            }
            DumpFormat::Lime => Body::Mapped(lime::parse(bytes)?),
            DumpFormat::Kdump => {
                let k = kdump::Kdump::parse(bytes, options.page_cache)?;
                notes = k.notes.clone();
                Body::Kdump(Box::new(k))
            }
            DumpFormat::WindowsCrashDump => {
                let w = windows::parse(bytes)?;
                notes.vcpus = vec![w.registers.clone()];
                notes.has_control_registers = false;
                let ranges = w.ranges;
                windows = Some(w.header);
                Body::Mapped(ranges)
            }
        };
        let vcpus = match &windows {
            Some(h) => u16::try_from(h.number_processors).unwrap_or(u16::MAX),
            None => u16::try_from(notes.vcpus.len()).unwrap_or(u16::MAX),
        };
        let (direct_base, direct_bytes) = match &body {
            Body::Mapped(ranges) => ranges.primary_file_range(data.bytes()),
            Body::Kdump(_) => (0, 0..0),
        };
        let mut data = DumpBytes::new(data);
        data.set_window(direct_bytes);
        Ok(Self {
            data,
            format,
            body,
            notes,
            vcpus,
            windows,
            direct_base,
        })
    }

    /// The detected (or forced) format.
    pub fn format(&self) -> DumpFormat {
        self.format
    }

    /// The VMCOREINFO text (ELF note or kdump sub-header), when the dump has one.
    pub fn vmcoreinfo(&self) -> Option<&str> {
        self.notes.vmcoreinfo.as_deref()
    }

    /// The Windows crash-dump header, for Windows dumps.
    pub fn windows_header(&self) -> Option<&WindowsHeader> {
        self.windows.as_ref()
    }

    /// The kdump headers, for kdump-compressed dumps.
    pub fn kdump_header(&self) -> Option<&KdumpHeader> {
        match &self.body {
            Body::Kdump(k) => Some(&k.header),
            Body::Mapped(_) => None,
        }
    }

    /// How frame `gfn` is stored in a kdump-compressed dump (`None` for other formats).
    pub fn kdump_page_compression(&self, gfn: Gfn) -> Option<Result<KdumpCompression, VmiError>> {
        match &self.body {
            Body::Kdump(k) => Some(k.compression(self.data.bytes(), gfn)),
            Body::Mapped(_) => None,
        }
    }

    /// Whether the registers include control registers (CR0/CR3/CR4, GDTR/IDTR, segment
    /// bases and limits). True for QEMU's CPU-state notes; false when the dump has only
    /// `NT_PRSTATUS` (general-purpose registers), for Windows dumps (only CR3, from the
    /// header) and for formats without registers.
    pub fn has_control_registers(&self) -> bool {
        self.notes.has_control_registers
    }

    /// Number of register sets the file holds (one per vCPU for ELF and kdump, one for
    /// Windows dumps, none for raw and LiME).
    pub fn register_sets(&self) -> usize {
        self.notes.vcpus.len()
    }

    /// Size of the dump file in bytes.
    pub fn file_size(&self) -> u64 {
        self.data.bytes().len() as u64
    }

    /// The physical address of `offset` in page `gfn`, when the read of `len` bytes stays
    /// inside the page and the address exists; `None` sends the caller to [`Self::bad_args`].
    /// Kept free of error values: building (and dropping) a `VmiError` on the success path,
    /// as an eager `ok_or(..)` did, cost an out-of-line `drop_in_place` call per read.
    #[inline(always)]
    fn page_address(gfn: Gfn, offset: usize, len: usize) -> Option<u64> {
        // Compares that cannot overflow, so no overflow checks: `offset <= PAGE_SIZE`
        // before `PAGE_SIZE - offset`, and a frame number below 2^52 shifts without loss.
        let page = PAGE_SIZE as usize;
        if offset > page || len > page - offset || gfn.0 >> (64 - PAGE_SHIFT) != 0 {
            return None;
        }
        Some((gfn.0 << PAGE_SHIFT) | offset as u64)
    }

    /// The error for arguments [`Self::page_address`] rejected.
    #[cold]
    #[inline(never)]
    fn bad_args(gfn: Gfn, offset: usize, len: usize) -> VmiError {
        if offset
            .checked_add(len)
            .is_none_or(|end| end as u64 > PAGE_SIZE)
        {
            VmiError::InvalidArgument(format!(
                "read of {len} bytes at offset {offset} crosses the end of page {gfn}"
            ))
        } else {
            VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::BeyondMemory,
            }
        }
    }

    /// The error for a page the range map does not hold.
    #[cold]
    #[inline(never)]
    fn unavailable(gfn: Gfn, reason: PageAbsence) -> VmiError {
        VmiError::PageUnavailable { gfn, reason }
    }
}

impl VmiDriver for DumpDriver {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        let max_gfn = match &self.body {
            Body::Mapped(r) => Gfn(r.end().saturating_sub(1) >> PAGE_SHIFT),
            Body::Kdump(k) => Gfn(k.header.max_mapnr.saturating_sub(1)),
        };
        Ok(VmiInfo {
            page_size: PAGE_SIZE,
            max_gfn,
            vcpus: self.vcpus,
            live: false,
            cache_pages: false,
            kind: self.format.name(),
        })
    }
}

impl VmiRead for DumpDriver {
    // Always inlined (small: errors and kdump are out-of-line calls), so that a read of a
    // fixed-size buffer compiles to checks, a range lookup and one load.
    #[inline(always)]
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        // The hot path of every small read: no error value is built unless one is returned,
        // so it inlines into callers and a fixed-size read becomes a load and a store.
        let Some(pa) = Self::page_address(gfn, offset, buf.len()) else {
            return Err(Self::bad_args(gfn, offset, buf.len()));
        };
        match &self.body {
            Body::Mapped(ranges) => match ranges.read(self.data.bytes(), pa, buf) {
                Ok(()) => Ok(()),
                Err(reason) => Err(Self::unavailable(gfn, reason)),
            },
            Body::Kdump(k) => k.read_page(self.data.bytes(), gfn, offset, buf),
        }
    }

    /// The largest stored segment (for raw, ELF and LiME dumps of a small guest, all of
    /// RAM); the mapping never changes while the driver lives.
    // Always inlined: `VmiCore` asks for it on every read.
    #[inline(always)]
    fn direct_memory(&self) -> Option<(Pa, &[u8])> {
        Some((Pa(self.direct_base), self.data.window()))
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        match &self.body {
            Body::Mapped(r) => Ok(r.ranges()),
            Body::Kdump(k) => Ok(k.ranges()),
        }
    }
}

impl VmiQueryRegisters for DumpDriver {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        match self.format {
            DumpFormat::Raw => Err(VmiError::not_supported(
                "registers",
                "raw dumps (the format has no CPU state)",
            )),
            DumpFormat::Lime => Err(VmiError::not_supported(
                "registers",
                "LiME dumps (the format has no CPU state)",
            )),
            _ => self
                .notes
                .vcpus
                .get(usize::from(vcpu.0))
                .cloned()
                .ok_or_else(|| VmiError::NotFound {
                    kind: "CPU state in the dump",
                    name: format!(
                        "{vcpu} (the {} dump holds {} register set(s))",
                        self.format.name(),
                        self.notes.vcpus.len()
                    ),
                }),
        }
    }
}
