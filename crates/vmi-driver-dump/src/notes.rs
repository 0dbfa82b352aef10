//! ELF notes as Linux, kexec and QEMU write them: `CORE`/`NT_PRSTATUS` (one per CPU),
//! QEMU's `QEMU` CPU-state note (one per CPU), and `VMCOREINFO`. ELF cores and kdump files
//! (whose sub-header points at a copy of the same notes) share this parser.

use vmi_arch_amd64::{Cr3, DescriptorTable, Registers, Segment};

use crate::data::{le_u32, le_u64, malformed};
use vmi_core::VmiError;

/// `n_type` of a `CORE` note with a `struct elf_prstatus`.
pub(crate) const NT_PRSTATUS: u32 = 1;
/// `n_type` QEMU gives its CPU-state note.
pub(crate) const NT_QEMU: u32 = 0;
/// Offset of `pr_reg` in x86-64 `struct elf_prstatus`.
pub(crate) const PRSTATUS_REG_OFFSET: usize = 112;
/// Size of x86-64 `struct elf_prstatus`.
pub(crate) const PRSTATUS_SIZE: usize = 336;
/// Size of QEMU's `QEMUCPUState` without `kernel_gs_base` (the version-1 layout).
pub(crate) const QEMU_CPU_STATE_V1_SIZE: usize = 432;
/// Size of QEMU's `QEMUCPUState` with `kernel_gs_base`.
pub(crate) const QEMU_CPU_STATE_SIZE: usize = 440;
/// Most notes we accept in one dump, over all its note areas (a note is at least 12
/// bytes; this bounds the work on hostile input far below the file size, even when many
/// `PT_NOTE` headers point at the same area).
pub(crate) const MAX_NOTES: usize = 1 << 16;

/// One ELF note.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Note<'a> {
    /// Name without trailing NULs.
    pub(crate) name: &'a [u8],
    /// Type.
    pub(crate) n_type: u32,
    /// Descriptor bytes.
    pub(crate) desc: &'a [u8],
}

/// Parses a little-endian note area (4-byte aligned fields) and appends its notes to
/// `notes`. `base` is the area's file offset, for error messages. More than [`MAX_NOTES`]
/// in `notes` altogether is an error: the cap holds for the whole dump.
pub(crate) fn parse_notes<'a>(
    area: &'a [u8],
    base: u64,
    notes: &mut Vec<Note<'a>>,
) -> Result<(), VmiError> {
    let mut pos = 0usize;
    while pos + 12 <= area.len() {
        if notes.len() >= MAX_NOTES {
            return Err(malformed(
                "ELF notes",
                base,
                format!("more than {MAX_NOTES} notes"),
            ));
        }
        let namesz = le_u32(area, pos) as usize;
        let descsz = le_u32(area, pos + 4) as usize;
        let n_type = le_u32(area, pos + 8);
        let name_at = pos + 12;
        let desc_at = name_at
            .checked_add(namesz.next_multiple_of(4))
            .filter(|&a| a <= area.len());
        let Some(desc_at) = desc_at else {
            return Err(malformed(
                "ELF note",
                base + pos as u64,
                format!("name of {namesz} bytes runs past the note area"),
            ));
        };
        let next = desc_at
            .checked_add(descsz.next_multiple_of(4))
            .filter(|&e| e <= area.len().next_multiple_of(4));
        let Some(next) = next else {
            return Err(malformed(
                "ELF note",
                base + pos as u64,
                format!("descriptor of {descsz} bytes runs past the note area"),
            ));
        };
        let mut name = &area[name_at..name_at + namesz];
        while let [rest @ .., 0] = name {
            name = rest;
        }
        let desc_end = (desc_at + descsz).min(area.len());
        notes.push(Note {
            name,
            n_type,
            desc: &area[desc_at..desc_end],
        });
        if namesz == 0 && descsz == 0 && n_type == 0 {
            // Zero padding after the last note (kdump note areas are padded).
            notes.pop();
            break;
        }
        pos = next;
    }
    Ok(())
}

/// What the notes of a dump say.
#[derive(Clone, Debug, Default)]
pub(crate) struct NoteInfo {
    /// Registers per vCPU, in note order.
    pub(crate) vcpus: Vec<Registers>,
    /// Whether control registers (CR0/CR3/CR4, descriptor tables) came from QEMU notes;
    /// with only `NT_PRSTATUS` they are zero.
    pub(crate) has_control_registers: bool,
    /// The VMCOREINFO text.
    pub(crate) vmcoreinfo: Option<String>,
}

/// Collects registers and VMCOREINFO from notes. `NT_PRSTATUS` notes and `QEMU` notes are
/// paired by their order (QEMU writes all `NT_PRSTATUS` first, then all `QEMU` notes, in
/// CPU order).
pub(crate) fn collect(notes: &[Note<'_>]) -> NoteInfo {
    let mut prstatus = Vec::new();
    let mut qemu = Vec::new();
    let mut vmcoreinfo = None;
    for n in notes {
        match (n.name, n.n_type) {
            (b"CORE", NT_PRSTATUS) if n.desc.len() >= PRSTATUS_SIZE => prstatus.push(n.desc),
            (b"QEMU", NT_QEMU) if n.desc.len() >= QEMU_CPU_STATE_V1_SIZE => qemu.push(n.desc),
            (b"VMCOREINFO", _) if vmcoreinfo.is_none() => {
                let text = n.desc.split(|&b| b == 0).next().unwrap_or_default();
                vmcoreinfo = Some(String::from_utf8_lossy(text).into_owned());
            }
            _ => {}
        }
    }
    let count = prstatus.len().max(qemu.len());
    let vcpus = (0..count)
        .map(|i| {
            let mut regs = Registers::default();
            if let Some(p) = prstatus.get(i) {
                apply_prstatus(&mut regs, p);
            }
            if let Some(q) = qemu.get(i) {
                apply_qemu_cpu_state(&mut regs, q);
            }
            regs
        })
        .collect();
    NoteInfo {
        vcpus,
        has_control_registers: !qemu.is_empty(),
        vmcoreinfo,
    }
}

/// Fills GPRs, RIP, RFLAGS, selectors and FS/GS bases from an x86-64 `elf_prstatus`
/// (`pr_reg` is `struct user_regs_struct`).
pub(crate) fn apply_prstatus(r: &mut Registers, desc: &[u8]) {
    let g = |i: usize| le_u64(desc, PRSTATUS_REG_OFFSET + 8 * i);
    r.r15 = g(0);
    r.r14 = g(1);
    r.r13 = g(2);
    r.r12 = g(3);
    r.rbp = g(4);
    r.rbx = g(5);
    r.r11 = g(6);
    r.r10 = g(7);
    r.r9 = g(8);
    r.r8 = g(9);
    r.rax = g(10);
    r.rcx = g(11);
    r.rdx = g(12);
    r.rsi = g(13);
    r.rdi = g(14);
    // g(15) is orig_rax.
    r.rip = g(16);
    r.cs.selector = g(17) as u16;
    r.rflags = g(18);
    r.rsp = g(19);
    r.ss.selector = g(20) as u16;
    r.fs_base = g(21);
    r.gs_base = g(22);
    r.fs.base = r.fs_base;
    r.gs.base = r.gs_base;
    r.ds.selector = g(23) as u16;
    r.es.selector = g(24) as u16;
    r.fs.selector = g(25) as u16;
    r.gs.selector = g(26) as u16;
}

/// Converts QEMU's segment flags (the descriptor's high dword: type in bits 8–11, S 12,
/// DPL 13–14, P 15, AVL 20, L 21, D/B 22, G 23) to VMX access rights.
pub(crate) fn qemu_flags_to_access(flags: u32) -> u32 {
    (flags >> 8) & 0xf0ff
}

/// The inverse of [`qemu_flags_to_access`].
pub(crate) fn access_to_qemu_flags(access: u32) -> u32 {
    (access & 0xf0ff) << 8
}

/// Offsets in `QEMUCPUState`.
pub(crate) mod qemu {
    /// `version`, `size`, then 18 u64: rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8–r15,
    /// rip, rflags.
    pub(crate) const GPRS: usize = 8;
    /// Ten `QEMUCPUSegment`s of 24 bytes: cs, ds, es, fs, gs, ss, ldt, tr, gdt, idt.
    pub(crate) const SEGMENTS: usize = 152;
    /// Size of one `QEMUCPUSegment` {selector u32, limit u32, flags u32, pad u32, base u64}.
    pub(crate) const SEGMENT_SIZE: usize = 24;
    /// `cr[5]`.
    pub(crate) const CR: usize = 392;
    /// `kernel_gs_base` (present when `size` >= 440).
    pub(crate) const KERNEL_GS_BASE: usize = 432;
}

/// Fills registers from QEMU's `QEMUCPUState`. EFER is not in it (any version), so it stays
/// as it was (0 unless another source set it).
pub(crate) fn apply_qemu_cpu_state(r: &mut Registers, desc: &[u8]) {
    let size = (le_u32(desc, 4) as usize).min(desc.len());
    let g = |i: usize| le_u64(desc, qemu::GPRS + 8 * i);
    r.rax = g(0);
    r.rbx = g(1);
    r.rcx = g(2);
    r.rdx = g(3);
    r.rsi = g(4);
    r.rdi = g(5);
    r.rsp = g(6);
    r.rbp = g(7);
    r.r8 = g(8);
    r.r9 = g(9);
    r.r10 = g(10);
    r.r11 = g(11);
    r.r12 = g(12);
    r.r13 = g(13);
    r.r14 = g(14);
    r.r15 = g(15);
    r.rip = g(16);
    r.rflags = g(17);
    let seg = |i: usize| {
        let at = qemu::SEGMENTS + qemu::SEGMENT_SIZE * i;
        Segment {
            selector: le_u32(desc, at) as u16,
            limit: le_u32(desc, at + 4),
            access: qemu_flags_to_access(le_u32(desc, at + 8)),
            base: le_u64(desc, at + 16),
        }
    };
    r.cs = seg(0);
    r.ds = seg(1);
    r.es = seg(2);
    r.fs = seg(3);
    r.gs = seg(4);
    r.ss = seg(5);
    r.ldtr = seg(6);
    r.tr = seg(7);
    let gdt = seg(8);
    let idt = seg(9);
    r.gdtr = DescriptorTable {
        base: gdt.base,
        limit: gdt.limit as u16,
    };
    r.idtr = DescriptorTable {
        base: idt.base,
        limit: idt.limit as u16,
    };
    r.fs_base = r.fs.base;
    r.gs_base = r.gs.base;
    let cr = |i: usize| le_u64(desc, qemu::CR + 8 * i);
    r.cr0 = cr(0);
    r.cr2 = cr(2);
    r.cr3 = Cr3(cr(3));
    r.cr4 = cr(4);
    if size >= QEMU_CPU_STATE_SIZE {
        r.kernel_gs_base = le_u64(desc, qemu::KERNEL_GS_BASE);
    }
}

/// Serialises an x86-64 `elf_prstatus` for `r` (the writer's `NT_PRSTATUS`).
pub(crate) fn prstatus_bytes(r: &Registers, pid: u32) -> Vec<u8> {
    let mut d = vec![0u8; PRSTATUS_SIZE];
    d[32..36].copy_from_slice(&pid.to_le_bytes());
    let regs = [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        r.rax, // orig_rax: unknown; the kernel's crash notes hold -1 or rax
        r.rip,
        u64::from(r.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(r.ss.selector),
        r.fs_base,
        r.gs_base,
        u64::from(r.ds.selector),
        u64::from(r.es.selector),
        u64::from(r.fs.selector),
        u64::from(r.gs.selector),
    ];
    for (i, v) in regs.iter().enumerate() {
        let at = PRSTATUS_REG_OFFSET + 8 * i;
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    d
}

/// Serialises QEMU's `QEMUCPUState` (version 1, with `kernel_gs_base`) for `r`.
pub(crate) fn qemu_cpu_state_bytes(r: &Registers) -> Vec<u8> {
    let mut d = vec![0u8; QEMU_CPU_STATE_SIZE];
    d[0..4].copy_from_slice(&1u32.to_le_bytes());
    d[4..8].copy_from_slice(&(QEMU_CPU_STATE_SIZE as u32).to_le_bytes());
    let gprs = [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ];
    for (i, v) in gprs.iter().enumerate() {
        let at = qemu::GPRS + 8 * i;
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    let mut fs = r.fs;
    let mut gs = r.gs;
    if fs.base == 0 {
        fs.base = r.fs_base;
    }
    if gs.base == 0 {
        gs.base = r.gs_base;
    }
    let gdt = Segment {
        base: r.gdtr.base,
        limit: u32::from(r.gdtr.limit),
        ..Segment::default()
    };
    let idt = Segment {
        base: r.idtr.base,
        limit: u32::from(r.idtr.limit),
        ..Segment::default()
    };
    for (i, s) in [r.cs, r.ds, r.es, fs, gs, r.ss, r.ldtr, r.tr, gdt, idt]
        .iter()
        .enumerate()
    {
        let at = qemu::SEGMENTS + qemu::SEGMENT_SIZE * i;
        d[at..at + 4].copy_from_slice(&u32::from(s.selector).to_le_bytes());
        d[at + 4..at + 8].copy_from_slice(&s.limit.to_le_bytes());
        d[at + 8..at + 12].copy_from_slice(&access_to_qemu_flags(s.access).to_le_bytes());
        d[at + 16..at + 24].copy_from_slice(&s.base.to_le_bytes());
    }
    for (i, v) in [r.cr0, 0, r.cr2, r.cr3.0, r.cr4].iter().enumerate() {
        let at = qemu::CR + 8 * i;
        d[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
    d[qemu::KERNEL_GS_BASE..qemu::KERNEL_GS_BASE + 8]
        .copy_from_slice(&r.kernel_gs_base.to_le_bytes());
    d
}

/// Appends one note (name NUL-terminated, fields 4-byte aligned) to `out`.
pub(crate) fn push_note(out: &mut Vec<u8>, name: &str, n_type: u32, desc: &[u8]) {
    let namesz = name.len() + 1;
    out.extend_from_slice(&(namesz as u32).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&n_type.to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registers {
        Registers {
            rax: 1,
            rbx: 2,
            rcx: 3,
            rdx: 4,
            rsi: 5,
            rdi: 6,
            rbp: 7,
            rsp: 8,
            r8: 9,
            r9: 10,
            r10: 11,
            r11: 12,
            r12: 13,
            r13: 14,
            r14: 15,
            r15: 16,
            rip: 0xffff_ffff_8100_0000,
            rflags: 0x246,
            cs: Segment {
                selector: 0x10,
                base: 0,
                limit: 0xffff_ffff,
                access: 0xa09b,
            },
            ss: Segment {
                selector: 0x18,
                base: 0,
                limit: 0xffff_ffff,
                access: 0xc093,
            },
            gs: Segment {
                selector: 0,
                base: 0xffff_8880_0f80_0000,
                limit: 0,
                access: 0,
            },
            gs_base: 0xffff_8880_0f80_0000,
            gdtr: DescriptorTable {
                base: 0xfffffe0000001000,
                limit: 0x7f,
            },
            idtr: DescriptorTable {
                base: 0xfffffe0000000000,
                limit: 0xfff,
            },
            cr0: 0x8005_0033,
            cr2: 0x1234,
            cr3: Cr3(0x29c4000),
            cr4: 0x6b0,
            kernel_gs_base: 0x7777,
            ..Registers::default()
        }
    }

    #[test]
    fn notes_round_trip_registers() {
        let r = sample();
        let mut area = Vec::new();
        push_note(&mut area, "CORE", NT_PRSTATUS, &prstatus_bytes(&r, 1));
        push_note(&mut area, "QEMU", NT_QEMU, &qemu_cpu_state_bytes(&r));
        push_note(
            &mut area,
            "VMCOREINFO",
            0,
            b"OSRELEASE=6.1.0\nPAGESIZE=4096\n",
        );
        area.extend_from_slice(&[0u8; 24]); // padding as kdump writes it
        let mut notes = Vec::new();
        parse_notes(&area, 0, &mut notes).unwrap();
        assert_eq!(notes.len(), 3);
        let info = collect(&notes);
        assert_eq!(info.vcpus.len(), 1);
        assert!(info.has_control_registers);
        let mut expect = r.clone();
        expect.fs_base = 0;
        expect.gs.base = r.gs_base;
        assert_eq!(info.vcpus[0], expect);
        assert_eq!(
            info.vmcoreinfo.as_deref(),
            Some("OSRELEASE=6.1.0\nPAGESIZE=4096\n")
        );
    }

    #[test]
    fn truncated_notes_are_errors() {
        let mut area = Vec::new();
        push_note(&mut area, "CORE", NT_PRSTATUS, &[0u8; 336]);
        assert!(parse_notes(&area[..100], 0, &mut Vec::new()).is_err());
        assert!(parse_notes(&area[..14], 0, &mut Vec::new()).is_err());
    }
}
