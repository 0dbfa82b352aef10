//! ELF64 cores: QEMU `dump-guest-memory` output and kexec/kdump `/proc/vmcore` copies.
//!
//! `PT_LOAD` segments are placed by `p_paddr` (QEMU writes the guest-physical address
//! there; kdump writes it too, next to the direct-map `p_vaddr`). Where `p_filesz <
//! p_memsz` the tail is not in the file: it is a hole, not zeros. `PT_NOTE` segments give
//! registers and VMCOREINFO (see [`crate::notes`]).

use object::elf;
use object::read::elf::{FileHeader, ProgramHeader};

use vmi_core::VmiError;

use crate::data::{malformed, slice_at};
use crate::notes::{self, NoteInfo};
use crate::ranges::{RangeMap, Segment};

/// Most program headers we accept (ELF allows 2^32 via `PN_XNUM`; each costs a range).
const MAX_PHDRS: usize = 1 << 20;

/// What an ELF core holds.
pub(crate) struct ElfCore {
    pub(crate) ranges: RangeMap,
    pub(crate) notes: NoteInfo,
}

/// Parses an ELF64 little-endian x86-64 core.
pub(crate) fn parse(data: &[u8]) -> Result<ElfCore, VmiError> {
    if data.get(4) == Some(&elf::ELFCLASS32) {
        return Err(VmiError::not_supported(
            "32-bit ELF cores",
            "the dump driver (x86-64 only)",
        ));
    }
    let header = elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| malformed("ELF header", 0, e.to_string()))?;
    let endian = header
        .endian()
        .map_err(|e| malformed("ELF header", 0, e.to_string()))?;
    if header.is_big_endian() {
        return Err(VmiError::not_supported(
            "big-endian ELF cores",
            "the dump driver (x86-64 only)",
        ));
    }
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(malformed(
            "ELF header",
            0x12,
            format!("machine {machine} is not x86-64 (62)"),
        ));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| malformed("ELF program headers", header.e_phoff(endian), e.to_string()))?;
    if phdrs.len() > MAX_PHDRS {
        return Err(malformed(
            "ELF program headers",
            header.e_phoff(endian),
            format!("{} program headers (limit {MAX_PHDRS})", phdrs.len()),
        ));
    }
    let mut segments = Vec::new();
    let mut note_list = Vec::new();
    // Each note area is parsed once, however many headers point at it.
    let mut note_areas = std::collections::HashSet::new();
    for ph in phdrs {
        let offset = ph.p_offset(endian);
        let filesz = ph.p_filesz(endian);
        match ph.p_type(endian) {
            elf::PT_LOAD => {
                // The file holds p_filesz bytes; the rest of a larger p_memsz is a hole.
                segments.push(Segment {
                    start: ph.p_paddr(endian),
                    len: filesz,
                    file_offset: offset,
                });
            }
            elf::PT_NOTE => {
                let area = slice_at(data, offset, filesz).ok_or_else(|| {
                    malformed(
                        "ELF PT_NOTE",
                        offset,
                        format!("{filesz:#x} bytes run past the end of the file"),
                    )
                })?;
                if note_areas.insert((offset, filesz)) {
                    notes::parse_notes(area, offset, &mut note_list)?;
                }
            }
            _ => {}
        }
    }
    let ranges = RangeMap::new(segments, data.len() as u64)?;
    Ok(ElfCore {
        ranges,
        notes: notes::collect(&note_list),
    })
}
