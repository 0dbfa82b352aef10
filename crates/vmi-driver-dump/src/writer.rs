//! Saving any readable target as an ELF core that drgn, crash and Volatility 3 open, laid
//! out as QEMU's `dump-guest-memory` (paging=false) lays it out:
//! one `PT_NOTE` with, per vCPU, a `CORE`/`NT_PRSTATUS` note and then a `QEMU` CPU-state
//! note (version 1, with `kernel_gs_base`), plus `VMCOREINFO` when known; one `PT_LOAD`
//! per run of readable physical memory with `p_paddr` = guest-physical address and
//! `p_vaddr` = `p_paddr` (what QEMU writes for paging=false, and what drgn expects of a
//! QEMU core).
//!
//! Pages the source cannot read (holes, excluded pages) are not filled with anything: the
//! run is split around them, so a reader of the output sees the same holes.
//!
//! The program headers sit right after the ELF header, as in `/proc/vmcore` (makedumpfile
//! reads them from there whatever `e_phoff` says), so the writer makes two passes over
//! the source: one to find the readable runs, one to copy them; the output is written
//! sequentially (any `Write`, a pipe too). More than 65534 runs use `PN_XNUM`.

use std::io::{BufWriter, Write};

use vmi_arch_amd64::Registers;
use vmi_core::{Gfn, VmiError, VmiRead};

use crate::notes;

/// What to put into the core besides memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct ElfCoreOptions<'a> {
    /// Registers of each vCPU, in vCPU order (`NT_PRSTATUS` + `QEMU` notes); `None`
    /// writes no CPU notes.
    pub registers: Option<&'a [Registers]>,
    /// The VMCOREINFO text, written as a `VMCOREINFO` note.
    pub vmcoreinfo: Option<&'a str>,
}

/// Progress of [`write_elf_core`], reported after each MiB of memory and at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteProgress {
    /// Bytes of physical memory visited so far (written or skipped).
    pub done: u64,
    /// Bytes of physical memory the source reports in its ranges.
    pub total: u64,
}

/// What [`write_elf_core`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElfCoreSummary {
    /// `PT_LOAD` segments.
    pub segments: usize,
    /// Bytes of memory written.
    pub bytes_written: u64,
    /// Bytes of memory skipped because the source could not read them.
    pub bytes_skipped: u64,
    /// Total size of the file.
    pub file_size: u64,
}

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;
const PN_XNUM: u64 = 0xffff;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

fn io(e: std::io::Error) -> VmiError {
    VmiError::io("cannot write the ELF core", e)
}

/// Writes the memory of `source` (and the given CPU state and VMCOREINFO) to `out` as an
/// ELF64 x86-64 core. `progress` is called as memory is copied.
///
/// Pass a [`vmi_core::VmiCore`]'s driver (`core.driver()`) or any [`VmiRead`].
pub fn write_elf_core<D, W>(
    source: &D,
    options: &ElfCoreOptions<'_>,
    out: W,
    mut progress: impl FnMut(WriteProgress),
) -> Result<ElfCoreSummary, VmiError>
where
    D: VmiRead + ?Sized,
    W: Write,
{
    let info = source.info()?;
    let page = info.page_size;
    if page == 0 || !page.is_power_of_two() || page > 1 << 21 {
        return Err(VmiError::InvalidArgument(format!(
            "source page size {page} is not supported"
        )));
    }
    let ranges = source.physical_ranges()?;
    let total: u64 = ranges
        .iter()
        .map(|r| r.end.0.saturating_sub(r.start.0))
        .sum();

    // Notes: all NT_PRSTATUS first, then all QEMU notes (QEMU's order), then VMCOREINFO.
    let mut note_area = Vec::new();
    if let Some(regs) = options.registers {
        for (i, r) in regs.iter().enumerate() {
            let pid = u32::try_from(i + 1).unwrap_or(u32::MAX);
            notes::push_note(
                &mut note_area,
                "CORE",
                notes::NT_PRSTATUS,
                &notes::prstatus_bytes(r, pid),
            );
        }
        for r in regs {
            notes::push_note(
                &mut note_area,
                "QEMU",
                notes::NT_QEMU,
                &notes::qemu_cpu_state_bytes(r),
            );
        }
    }
    if let Some(text) = options.vmcoreinfo {
        notes::push_note(&mut note_area, "VMCOREINFO", 0, text.as_bytes());
    }

    // Pass 1: which bytes can be read. The program headers go right after the ELF
    // header (makedumpfile reads them from there whatever e_phoff says), so their number
    // must be known before the data is written.
    let mut buf = vec![0u8; page as usize];
    let mut runs: Vec<(u64, u64)> = Vec::new(); // (paddr, len)
    let mut summary = ElfCoreSummary::default();
    for r in &ranges {
        let mut at = r.start.0;
        while at < r.end.0 {
            let page_start = at & !(page - 1);
            let chunk_end = (page_start + page).min(r.end.0);
            let n = (chunk_end - at) as usize;
            match source.read_page(
                Gfn(page_start / page),
                (at - page_start) as usize,
                &mut buf[..n],
            ) {
                Ok(()) => match runs.last_mut() {
                    Some((p, l)) if *p + *l == at => *l += n as u64,
                    _ => runs.push((at, n as u64)),
                },
                Err(e) if e.is_memory_unavailable() => summary.bytes_skipped += n as u64,
                Err(e) => return Err(e),
            }
            at = chunk_end;
        }
    }

    let phnum = runs.len() as u64 + 1;
    let phoff = EHDR_SIZE;
    let mut pos = phoff + phnum * PHDR_SIZE;
    // PN_XNUM: the real count goes into section header 0's sh_info.
    let shoff = (phnum >= PN_XNUM).then(|| {
        let at = pos;
        pos += SHDR_SIZE;
        at
    });
    let note_offset = pos;
    pos += note_area.len() as u64;
    let data_start = pos.next_multiple_of(page);

    let mut ehdr = Vec::with_capacity(EHDR_SIZE as usize);
    ehdr.extend_from_slice(b"\x7fELF");
    ehdr.extend_from_slice(&[2, 1, 1, 0]); // ELFCLASS64, little-endian, EV_CURRENT, SysV
    ehdr.extend_from_slice(&[0u8; 8]);
    ehdr.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    ehdr.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    ehdr.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    ehdr.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    ehdr.extend_from_slice(&phoff.to_le_bytes());
    ehdr.extend_from_slice(&shoff.unwrap_or(0).to_le_bytes());
    ehdr.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    ehdr.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
    ehdr.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
    ehdr.extend_from_slice(&(phnum.min(PN_XNUM) as u16).to_le_bytes());
    ehdr.extend_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
    ehdr.extend_from_slice(&u16::from(shoff.is_some()).to_le_bytes()); // e_shnum
    ehdr.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx

    let mut head = ehdr;
    push_phdr(
        &mut head,
        PT_NOTE,
        0,
        note_offset,
        0,
        note_area.len() as u64,
        0,
    );
    let mut offset = data_start;
    for &(paddr, len) in &runs {
        push_phdr(&mut head, PT_LOAD, 7, offset, paddr, len, 0);
        offset += len;
    }
    if shoff.is_some() {
        let mut sh = [0u8; SHDR_SIZE as usize];
        sh[44..48].copy_from_slice(&u32::try_from(phnum).unwrap_or(u32::MAX).to_le_bytes());
        head.extend_from_slice(&sh);
    }
    head.extend_from_slice(&note_area);
    head.resize(data_start as usize, 0);

    // Pass 2: the data, run by run.
    let mut w = BufWriter::with_capacity(1 << 20, out);
    w.write_all(&head).map_err(io)?;
    let mut done = 0u64;
    let mut last_report = 0u64;
    for &(paddr, len) in &runs {
        let end = paddr + len;
        let mut at = paddr;
        while at < end {
            let page_start = at & !(page - 1);
            let chunk_end = (page_start + page).min(end);
            let n = (chunk_end - at) as usize;
            source
                .read_page(
                    Gfn(page_start / page),
                    (at - page_start) as usize,
                    &mut buf[..n],
                )
                .map_err(|e| {
                    VmiError::driver(
                        "ELF core writer",
                        format!("the source changed while it was written: {e}"),
                    )
                })?;
            w.write_all(&buf[..n]).map_err(io)?;
            summary.bytes_written += n as u64;
            at = chunk_end;
            done += n as u64;
            if done - last_report >= 1 << 20 {
                last_report = done;
                progress(WriteProgress { done, total });
            }
        }
    }
    w.flush().map_err(io)?;
    progress(WriteProgress { done: total, total });
    let end = offset;
    let loads = runs;

    summary.segments = loads.len();
    summary.file_size = end;
    Ok(summary)
}

fn push_phdr(
    out: &mut Vec<u8>,
    p_type: u32,
    flags: u32,
    offset: u64,
    paddr: u64,
    size: u64,
    align: u64,
) {
    out.extend_from_slice(&p_type.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&paddr.to_le_bytes()); // p_vaddr = p_paddr, as QEMU writes
    out.extend_from_slice(&paddr.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes()); // p_filesz
    out.extend_from_slice(&size.to_le_bytes()); // p_memsz
    out.extend_from_slice(&align.to_le_bytes());
}
