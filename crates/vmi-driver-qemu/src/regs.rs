//! Registers: from the gdbstub's `g` packet (through the target description) and from
//! HMP `info registers`.

use vmi_arch_amd64::{DescriptorTable, Registers, Segment};

use crate::gdb::RegMap;

/// gdb register name → accessor, for the registers the gdbstub exposes.
type Field = fn(&mut Registers) -> &mut u64;

/// The 64-bit registers QEMU's x86-64 target description exposes (besides segments).
pub(crate) const GDB_FIELDS: &[(&str, Field)] = &[
    ("rax", |r| &mut r.rax),
    ("rbx", |r| &mut r.rbx),
    ("rcx", |r| &mut r.rcx),
    ("rdx", |r| &mut r.rdx),
    ("rsi", |r| &mut r.rsi),
    ("rdi", |r| &mut r.rdi),
    ("rbp", |r| &mut r.rbp),
    ("rsp", |r| &mut r.rsp),
    ("r8", |r| &mut r.r8),
    ("r9", |r| &mut r.r9),
    ("r10", |r| &mut r.r10),
    ("r11", |r| &mut r.r11),
    ("r12", |r| &mut r.r12),
    ("r13", |r| &mut r.r13),
    ("r14", |r| &mut r.r14),
    ("r15", |r| &mut r.r15),
    ("rip", |r| &mut r.rip),
    ("eflags", |r| &mut r.rflags),
    ("fs_base", |r| &mut r.fs_base),
    ("gs_base", |r| &mut r.gs_base),
    ("k_gs_base", |r| &mut r.kernel_gs_base),
    ("cr0", |r| &mut r.cr0),
    ("cr2", |r| &mut r.cr2),
    ("cr3", |r| &mut r.cr3.0),
    ("cr4", |r| &mut r.cr4),
    ("cr8", |r| &mut r.cr8),
    ("efer", |r| &mut r.efer),
];

/// Accessor of a segment register.
type SegmentField = fn(&mut Registers) -> &mut Segment;

/// Segment selector registers of the target description.
pub(crate) const GDB_SEGMENTS: &[(&str, SegmentField)] = &[
    ("cs", |r| &mut r.cs),
    ("ss", |r| &mut r.ss),
    ("ds", |r| &mut r.ds),
    ("es", |r| &mut r.es),
    ("fs", |r| &mut r.fs),
    ("gs", |r| &mut r.gs),
];

/// Fills `regs` from decoded `g` bytes; returns the names that were missing.
pub(crate) fn from_gdb(map: &RegMap, g: &[u8], regs: &mut Registers) -> Vec<&'static str> {
    let mut missing = Vec::new();
    for (name, f) in GDB_FIELDS {
        match map.value(g, name) {
            Some(v) => *f(regs) = v,
            None => missing.push(*name),
        }
    }
    for (name, f) in GDB_SEGMENTS {
        match map.value(g, name) {
            Some(v) => f(regs).selector = v as u16,
            None => missing.push(*name),
        }
    }
    regs.fs.base = regs.fs_base;
    regs.gs.base = regs.gs_base;
    missing
}

/// `(gdb name, new value)` for each gdb-visible register that differs between `old` and
/// `new`.
pub(crate) fn gdb_diff(old: &Registers, new: &Registers) -> Vec<(&'static str, u64)> {
    let (mut a, mut b) = (old.clone(), new.clone());
    let mut out = Vec::new();
    for (name, f) in GDB_FIELDS {
        let (x, y) = (*f(&mut a), *f(&mut b));
        if x != y {
            out.push((*name, y));
        }
    }
    for (name, f) in GDB_SEGMENTS {
        let (x, y) = (f(&mut a).selector, f(&mut b).selector);
        if x != y {
            out.push((*name, u64::from(y)));
        }
    }
    out
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

/// Parses the output of HMP `info registers` (one x86-64 CPU). Returns `None` unless at
/// least RIP, CR3 and RSP were found.
pub(crate) fn parse_info_registers(text: &str) -> Option<Registers> {
    let mut r = Registers::default();
    let (mut rip, mut cr3, mut rsp) = (false, false, false);
    for line in text.lines().take(200) {
        let line = line.trim_end();
        // Segment and descriptor-table lines: `CS =0010 base limit flags ...`, `GDT=  base limit`.
        if let Some((name, rest)) = line.split_once('=') {
            let name = name.trim();
            let seg: Option<SegmentField> = match name {
                "ES" => Some(|r| &mut r.es),
                "CS" => Some(|r| &mut r.cs),
                "SS" => Some(|r| &mut r.ss),
                "DS" => Some(|r| &mut r.ds),
                "FS" => Some(|r| &mut r.fs),
                "GS" => Some(|r| &mut r.gs),
                "LDT" => Some(|r| &mut r.ldtr),
                "TR" => Some(|r| &mut r.tr),
                _ => None,
            };
            if let Some(f) = seg {
                let w: Vec<&str> = rest.split_whitespace().collect();
                if w.len() >= 4 {
                    let s = f(&mut r);
                    s.selector = hex(w[0]).unwrap_or(0) as u16;
                    s.base = hex(w[1]).unwrap_or(0);
                    s.limit = hex(w[2]).unwrap_or(0) as u32;
                    s.access = hex(w[3]).unwrap_or(0) as u32;
                }
                continue;
            }
            if name == "GDT" || name == "IDT" {
                let w: Vec<&str> = rest.split_whitespace().collect();
                if w.len() >= 2 {
                    let t = DescriptorTable {
                        base: hex(w[0]).unwrap_or(0),
                        limit: hex(w[1]).unwrap_or(0) as u16,
                    };
                    if name == "GDT" {
                        r.gdtr = t;
                    } else {
                        r.idtr = t;
                    }
                }
                continue;
            }
        }
        // `KEY=value` pairs; `R8 =...` has a space before '='.
        let joined = line.replace(" =", "=");
        for tok in joined.split_whitespace() {
            let Some((k, v)) = tok.split_once('=') else {
                continue;
            };
            let Some(v) = hex(v) else { continue };
            let slot: Option<&mut u64> = match k {
                "RAX" => Some(&mut r.rax),
                "RBX" => Some(&mut r.rbx),
                "RCX" => Some(&mut r.rcx),
                "RDX" => Some(&mut r.rdx),
                "RSI" => Some(&mut r.rsi),
                "RDI" => Some(&mut r.rdi),
                "RBP" => Some(&mut r.rbp),
                "RSP" => {
                    rsp = true;
                    Some(&mut r.rsp)
                }
                "R8" => Some(&mut r.r8),
                "R9" => Some(&mut r.r9),
                "R10" => Some(&mut r.r10),
                "R11" => Some(&mut r.r11),
                "R12" => Some(&mut r.r12),
                "R13" => Some(&mut r.r13),
                "R14" => Some(&mut r.r14),
                "R15" => Some(&mut r.r15),
                "RIP" => {
                    rip = true;
                    Some(&mut r.rip)
                }
                "RFL" => Some(&mut r.rflags),
                "CR0" => Some(&mut r.cr0),
                "CR2" => Some(&mut r.cr2),
                "CR3" => {
                    cr3 = true;
                    Some(&mut r.cr3.0)
                }
                "CR4" => Some(&mut r.cr4),
                "DR0" => Some(&mut r.dr0),
                "DR1" => Some(&mut r.dr1),
                "DR2" => Some(&mut r.dr2),
                "DR3" => Some(&mut r.dr3),
                "DR6" => Some(&mut r.dr6),
                "DR7" => Some(&mut r.dr7),
                "EFER" => Some(&mut r.efer),
                _ => None,
            };
            if let Some(s) = slot {
                *s = v;
            }
        }
    }
    r.fs_base = r.fs.base;
    r.gs_base = r.gs.base;
    (rip && cr3 && rsp).then_some(r)
}

/// Takes what only `info registers` knows (segment descriptors, GDTR/IDTR, debug
/// registers) from `monitor` into `regs` (read through the gdbstub).
pub(crate) fn merge_monitor(regs: &mut Registers, monitor: &Registers) {
    for (seg, m) in [
        (&mut regs.cs, &monitor.cs),
        (&mut regs.ss, &monitor.ss),
        (&mut regs.ds, &monitor.ds),
        (&mut regs.es, &monitor.es),
        (&mut regs.fs, &monitor.fs),
        (&mut regs.gs, &monitor.gs),
    ] {
        let base = seg.base;
        *seg = *m;
        // FS/GS bases come from the gdbstub (fs_base/gs_base), the rest from the monitor.
        if base != 0 {
            seg.base = base;
        }
    }
    regs.tr = monitor.tr;
    regs.ldtr = monitor.ldtr;
    regs.gdtr = monitor.gdtr;
    regs.idtr = monitor.idtr;
    regs.dr0 = monitor.dr0;
    regs.dr1 = monitor.dr1;
    regs.dr2 = monitor.dr2;
    regs.dr3 = monitor.dr3;
    regs.dr6 = monitor.dr6;
    regs.dr7 = monitor.dr7;
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const INFO_REGISTERS: &str =
        "RAX=0000000000000000 RBX=ffffffff82a1aa40 RCX=0000000000000001 RDX=0000000000000002\r
RSI=0000000000000003 RDI=0000000000000004 RBP=ffffffff82a03e28 RSP=ffffffff82a03e08\r
R8 =0000000000000008 R9 =0000000000000009 R10=000000000000000a R11=000000000000000b\r
R12=000000000000000c R13=000000000000000d R14=000000000000000e R15=000000000000000f\r
RIP=ffffffff81e5e0ff RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r
ES =0000 0000000000000000 ffffffff 00c00000\r
CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]\r
SS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]\r
DS =0000 0000000000000000 ffffffff 00c00000\r
FS =0000 0000000000000000 ffffffff 00c00000\r
GS =0000 ffff88807dc00000 ffffffff 00c00000\r
LDT=0000 0000000000000000 0000ffff 00008200 DPL=0 LDT\r
TR =0040 fffffe0000003000 00004087 00008900 DPL=0 TSS64-avl\r
GDT=     fffffe0000001000 0000007f\r
IDT=     fffffe0000000000 00000fff\r
CR0=80050033 CR2=00007f0000001000 CR3=000000000480a000 CR4=000006f0\r
DR0=0000000000000000 DR1=0000000000000000 DR2=0000000000000000 DR3=0000000000000000 \r
DR6=00000000ffff0ff0 DR7=0000000000000400\r
CCS=0000000000000000 CCD=0000000000000000 CCO=EFLAGS\r
EFER=0000000000000d01\r
FCW=037f FSW=0000 [ST=0] FTW=00 MXCSR=00001f80\r
";

    #[test]
    fn info_registers() {
        let r = parse_info_registers(INFO_REGISTERS).unwrap();
        assert_eq!(r.rbx, 0xffffffff82a1aa40);
        assert_eq!(r.r8, 8);
        assert_eq!(r.r15, 15);
        assert_eq!(r.rip, 0xffffffff81e5e0ff);
        assert_eq!(r.rflags, 0x246);
        assert_eq!(r.cs.selector, 0x10);
        assert_eq!(r.cs.access, 0xa09b00);
        assert_eq!(r.gs.base, 0xffff88807dc00000);
        assert_eq!(r.gs_base, 0xffff88807dc00000);
        assert_eq!(r.tr.base, 0xfffffe0000003000);
        assert_eq!(r.gdtr.limit, 0x7f);
        assert_eq!(r.idtr.base, 0xfffffe0000000000);
        assert_eq!(r.cr3.0, 0x480a000);
        assert_eq!(r.cr2, 0x7f0000001000);
        assert_eq!(r.dr6, 0xffff0ff0);
        assert_eq!(r.efer, 0xd01);
        assert!(parse_info_registers("garbage").is_none());
    }

    /// Seeded, bounded fuzz: mutations never panic.
    #[test]
    fn fuzz_mutations_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x7265_6773);
        for _ in 0..3000 {
            let mut b = INFO_REGISTERS.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..12) {
                let i = rng.gen_range(0..b.len());
                b[i] = b"= 0123456789abcdefRSXG\n"[rng.gen_range(0..23)];
            }
            let _ = parse_info_registers(&String::from_utf8_lossy(&b));
        }
    }
}
