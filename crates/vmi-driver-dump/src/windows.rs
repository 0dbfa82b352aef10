//! 64-bit Windows crash dumps (`DUMP_HEADER64`, signature `PAGEDU64`).
//!
//! The 8 KiB header holds the kernel's DirectoryTableBase, PsActiveProcessHead,
//! PsLoadedModuleList, KdDebuggerDataBlock, the bug check, the x64 `CONTEXT` of the
//! processor that wrote the dump (at 0x348) and `DumpType` (at 0xf98). Pages follow:
//! - `DumpType` 1 (full): the physical memory runs of `PhysicalMemoryBlock` (at 0x88:
//!   `NumberOfRuns`, `NumberOfPages`, then `{BasePage, PageCount}` runs), stored one after
//!   the other from 0x2000;
//! - 5 and 6 (bitmap: kernel and automatic dumps, "SDMP", and full bitmap dumps, "FDMP"):
//!   a header at 0x2000 (`FirstPage` at +0x20, `Pages` at +0x30, bitmap at +0x38), one bit
//!   per frame, the set frames stored in order from `FirstPage`;
//! - 8, 9 and 10 (`.dump /k`, `/ka`, `/f`): an "RDMP" header at 0x2000 with a table of
//!   `{first PFN, page count}` ranges at 0x2030 and the pages from `FirstPageOffset`.

use vmi_arch_amd64::{Cr3, Registers};
use vmi_core::VmiError;

use crate::PAGE_SIZE;
use crate::data::{le_u16, le_u32, le_u64, malformed, slice_at};
use crate::ranges::{RangeMap, Segment};

/// `PAGEDU64`.
pub(crate) const SIGNATURE64: &[u8] = b"PAGEDU64";
/// Size of `DUMP_HEADER64`.
const HEADER_SIZE: u64 = 0x2000;
/// Offset of the x64 `CONTEXT` record.
const CONTEXT_OFFSET: usize = 0x348;
/// Size of the x64 `CONTEXT` (through `Rip`; the FPU area follows).
const CONTEXT_GPR_END: usize = 0x100;
/// Offset and size of `PhysicalMemoryBlock`.
const PMB_OFFSET: usize = 0x88;
const PMB_SIZE: usize = 700;
/// Most runs `PhysicalMemoryBlock` can hold.
const MAX_RUNS: u32 = ((PMB_SIZE - 16) / 16) as u32;

/// How a Windows dump stores its pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WindowsDumpKind {
    /// `DumpType` 1: physical memory runs from the header.
    Full,
    /// `DumpType` 5 or 6 with an "SDMP" bitmap (kernel or automatic dump).
    KernelBitmap,
    /// `DumpType` 5 or 6 with an "FDMP" bitmap (complete memory).
    FullBitmap,
    /// `DumpType` 8 (`.dump /k`): "RDMP" ranges.
    KernelMemory,
    /// `DumpType` 9 (`.dump /ka`): "RDMP" ranges.
    KernelAndUserMemory,
    /// `DumpType` 10 (`.dump /f`): "RDMP" ranges.
    CompleteMemory,
}

/// The fields of `DUMP_HEADER64` that introspection needs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WindowsHeader {
    /// `MajorVersion` (0xf for free builds).
    pub major_version: u32,
    /// `MinorVersion` (the build number).
    pub minor_version: u32,
    /// `DirectoryTableBase`: the kernel's CR3.
    pub directory_table_base: u64,
    /// `PfnDataBase`.
    pub pfn_database: u64,
    /// `PsLoadedModuleList`.
    pub ps_loaded_module_list: u64,
    /// `PsActiveProcessHead`.
    pub ps_active_process_head: u64,
    /// `MachineImageType` (0x8664 for x64).
    pub machine_image_type: u32,
    /// `NumberProcessors`.
    pub number_processors: u32,
    /// `BugCheckCode`.
    pub bug_check_code: u32,
    /// `BugCheckParameter1..4`.
    pub bug_check_parameters: [u64; 4],
    /// `KdDebuggerDataBlock` (may be encoded on recent Windows).
    pub kd_debugger_data_block: u64,
    /// `DumpType`.
    pub dump_type: u32,
    /// How pages are stored.
    pub kind: WindowsDumpKind,
    /// `SystemTime` (FILETIME).
    pub system_time: u64,
    /// `SystemUpTime`.
    pub system_up_time: u64,
    /// `RequiredDumpSpace`.
    pub required_dump_space: u64,
}

/// A parsed Windows dump.
pub(crate) struct WindowsDump {
    pub(crate) header: WindowsHeader,
    pub(crate) ranges: RangeMap,
    pub(crate) registers: Registers,
}

/// Parses `DUMP_HEADER64` and builds the physical-range map.
pub(crate) fn parse(data: &[u8]) -> Result<WindowsDump, VmiError> {
    let h = slice_at(data, 0, HEADER_SIZE).ok_or_else(|| {
        malformed(
            "Windows dump header",
            0,
            format!("file shorter than the {HEADER_SIZE:#x}-byte header"),
        )
    })?;
    if !h.starts_with(SIGNATURE64) {
        return Err(malformed("Windows dump header", 0, "no PAGEDU64 signature"));
    }
    let dump_type = le_u32(h, 0xf98);
    let len = data.len() as u64;
    let (kind, segments) = match dump_type {
        1 => (WindowsDumpKind::Full, full_runs(h)?),
        5 | 6 => bitmap_runs(data)?,
        8..=10 => (
            match dump_type {
                8 => WindowsDumpKind::KernelMemory,
                9 => WindowsDumpKind::KernelAndUserMemory,
                _ => WindowsDumpKind::CompleteMemory,
            },
            rdmp_runs(data, dump_type == 10)?,
        ),
        other => {
            return Err(malformed(
                "Windows dump header",
                0xf98,
                format!(
                    "DumpType {other} is not a full, bitmap or RDMP dump (minidumps and summary dumps are not supported)"
                ),
            ));
        }
    };
    let ranges = RangeMap::new(segments, len)?;
    let header = WindowsHeader {
        major_version: le_u32(h, 0x8),
        minor_version: le_u32(h, 0xc),
        directory_table_base: le_u64(h, 0x10),
        pfn_database: le_u64(h, 0x18),
        ps_loaded_module_list: le_u64(h, 0x20),
        ps_active_process_head: le_u64(h, 0x28),
        machine_image_type: le_u32(h, 0x30),
        number_processors: le_u32(h, 0x34),
        bug_check_code: le_u32(h, 0x38),
        bug_check_parameters: [
            le_u64(h, 0x40),
            le_u64(h, 0x48),
            le_u64(h, 0x50),
            le_u64(h, 0x58),
        ],
        kd_debugger_data_block: le_u64(h, 0x80),
        dump_type,
        kind,
        system_time: le_u64(h, 0xfa8),
        system_up_time: le_u64(h, 0x1030),
        required_dump_space: le_u64(h, 0xfa0),
    };
    let registers = context_registers(
        &h[CONTEXT_OFFSET..CONTEXT_OFFSET + CONTEXT_GPR_END],
        &header,
    );
    Ok(WindowsDump {
        header,
        ranges,
        registers,
    })
}

/// Registers from the x64 `CONTEXT` record; CR3 from `DirectoryTableBase`. Everything
/// else the record does not hold (CR0, CR4, EFER, segment bases, descriptor tables) is 0.
fn context_registers(c: &[u8], h: &WindowsHeader) -> Registers {
    let q = |at: usize| le_u64(c, at);
    let mut r = Registers {
        rax: q(0x78),
        rcx: q(0x80),
        rdx: q(0x88),
        rbx: q(0x90),
        rsp: q(0x98),
        rbp: q(0xa0),
        rsi: q(0xa8),
        rdi: q(0xb0),
        r8: q(0xb8),
        r9: q(0xc0),
        r10: q(0xc8),
        r11: q(0xd0),
        r12: q(0xd8),
        r13: q(0xe0),
        r14: q(0xe8),
        r15: q(0xf0),
        rip: q(0xf8),
        rflags: u64::from(le_u32(c, 0x44)),
        dr0: q(0x48),
        dr1: q(0x50),
        dr2: q(0x58),
        dr3: q(0x60),
        dr6: q(0x68),
        dr7: q(0x70),
        cr3: Cr3(h.directory_table_base),
        ..Registers::default()
    };
    r.cs.selector = le_u16(c, 0x38);
    r.ds.selector = le_u16(c, 0x3a);
    r.es.selector = le_u16(c, 0x3c);
    r.fs.selector = le_u16(c, 0x3e);
    r.gs.selector = le_u16(c, 0x40);
    r.ss.selector = le_u16(c, 0x42);
    r
}

/// Physical memory runs of a full dump, stored consecutively from 0x2000.
fn full_runs(h: &[u8]) -> Result<Vec<Segment>, VmiError> {
    let runs = le_u32(h, PMB_OFFSET);
    if runs > MAX_RUNS {
        return Err(malformed(
            "Windows PhysicalMemoryBlock",
            PMB_OFFSET as u64,
            format!("{runs} runs (the header holds at most {MAX_RUNS})"),
        ));
    }
    let mut file = HEADER_SIZE;
    let mut out = Vec::with_capacity(runs as usize);
    for i in 0..runs as usize {
        let at = PMB_OFFSET + 16 + 16 * i;
        let base = le_u64(h, at);
        let count = le_u64(h, at + 8);
        let bad = || {
            malformed(
                "Windows PhysicalMemoryBlock run",
                at as u64,
                format!("run of {count:#x} pages at frame {base:#x} overflows"),
            )
        };
        let start = base.checked_mul(PAGE_SIZE).ok_or_else(bad)?;
        let bytes = count.checked_mul(PAGE_SIZE).ok_or_else(bad)?;
        out.push(Segment {
            start,
            len: bytes,
            file_offset: file,
        });
        // RangeMap::new checks each run against the file size.
        file = file.checked_add(bytes).ok_or_else(bad)?;
    }
    Ok(out)
}

/// Bitmap dumps: one bit per frame, set frames stored in order from `FirstPage`.
fn bitmap_runs(data: &[u8]) -> Result<(WindowsDumpKind, Vec<Segment>), VmiError> {
    let b = slice_at(data, HEADER_SIZE, 0x38)
        .ok_or_else(|| malformed("Windows bitmap header", HEADER_SIZE, "truncated header"))?;
    let kind = match &b[0..4] {
        b"SDMP" => WindowsDumpKind::KernelBitmap,
        b"FDMP" => WindowsDumpKind::FullBitmap,
        other => {
            return Err(malformed(
                "Windows bitmap header",
                HEADER_SIZE,
                format!("signature {other:?} is neither SDMP nor FDMP"),
            ));
        }
    };
    if &b[4..8] != b"DUMP" {
        return Err(malformed(
            "Windows bitmap header",
            HEADER_SIZE + 4,
            "ValidDump is not DUMP",
        ));
    }
    let first_page = le_u64(b, 0x20);
    let pages = le_u64(b, 0x30);
    let bitmap_len = pages.div_ceil(8);
    // The bitmap must be in the file before we look at it (bounds the work below).
    let bitmap = slice_at(data, HEADER_SIZE + 0x38, bitmap_len).ok_or_else(|| {
        malformed(
            "Windows bitmap",
            HEADER_SIZE + 0x38,
            format!("{pages:#x} bits run past the end of the file"),
        )
    })?;
    let mut out: Vec<Segment> = Vec::new();
    let mut file = first_page;
    for (i, &byte) in bitmap.iter().enumerate() {
        if byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            let pfn = i as u64 * 8 + bit;
            if pfn >= pages || byte >> bit & 1 == 0 {
                continue;
            }
            // The page must be in the file before it costs a segment: a hostile bitmap
            // of alternating bits would otherwise build 24 bytes per bit (~96x the file).
            let file_end = file
                .checked_add(PAGE_SIZE)
                .filter(|&e| e <= data.len() as u64);
            let Some(file_end) = file_end else {
                return Err(malformed(
                    "Windows bitmap",
                    HEADER_SIZE + 0x38 + i as u64,
                    format!(
                        "page of frame {pfn:#x} at file offset {file:#x} is past the end of the file ({:#x} bytes)",
                        data.len()
                    ),
                ));
            };
            let start = pfn * PAGE_SIZE;
            match out.last_mut() {
                Some(last)
                    if last.start + last.len == start && last.file_offset + last.len == file =>
                {
                    last.len += PAGE_SIZE;
                }
                _ => out.push(Segment {
                    start,
                    len: PAGE_SIZE,
                    file_offset: file,
                }),
            }
            file = file_end;
        }
    }
    Ok((kind, out))
}

/// "RDMP" dumps (`DumpType` 8, 9, 10): a table of `{first PFN, count}` ranges.
fn rdmp_runs(data: &[u8], complete: bool) -> Result<Vec<Segment>, VmiError> {
    let r = slice_at(data, HEADER_SIZE, 0x30)
        .ok_or_else(|| malformed("Windows RDMP header", HEADER_SIZE, "truncated header"))?;
    if &r[4..8] != b"RDMP" || &r[8..12] != b"DUMP" {
        return Err(malformed(
            "Windows RDMP header",
            HEADER_SIZE,
            "signature is not RDMP/DUMP",
        ));
    }
    let metadata_size = le_u64(r, 0x10);
    let first_page = le_u64(r, 0x18);
    let total_pages = le_u64(r, 0x28);
    if first_page == 0 || metadata_size == 0 || !metadata_size.is_multiple_of(16) {
        return Err(malformed(
            "Windows RDMP header",
            HEADER_SIZE + 0x10,
            format!("metadata size {metadata_size:#x}, first page {first_page:#x}"),
        ));
    }
    // The table ends with a zero entry, and never reaches into the pages.
    let table_len = metadata_size.min(first_page.saturating_sub(HEADER_SIZE + 0x30));
    let table = slice_at(data, HEADER_SIZE + 0x30, table_len).ok_or_else(|| {
        malformed(
            "Windows RDMP ranges",
            HEADER_SIZE + 0x30,
            format!("{metadata_size:#x} bytes run past the end of the file"),
        )
    })?;
    let mut out = Vec::new();
    let mut file = first_page;
    let mut seen = 0u64;
    for entry in table.chunks_exact(16) {
        if complete && seen >= total_pages {
            break;
        }
        let pfn = le_u64(entry, 0);
        let count = le_u64(entry, 8);
        if pfn == 0 {
            break;
        }
        let bad = || {
            malformed(
                "Windows RDMP range",
                HEADER_SIZE + 0x30,
                format!("{count:#x} pages at frame {pfn:#x} overflow"),
            )
        };
        let bytes = count.checked_mul(PAGE_SIZE).ok_or_else(bad)?;
        out.push(Segment {
            start: pfn.checked_mul(PAGE_SIZE).ok_or_else(bad)?,
            len: bytes,
            file_offset: file,
        });
        file = file.checked_add(bytes).ok_or_else(bad)?;
        seen = seen.checked_add(count).ok_or_else(bad)?;
    }
    Ok(out)
}
