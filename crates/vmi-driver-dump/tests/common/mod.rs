//! Builders of small dumps from the documented layouts, shared by the synthetic tests,
//! the fuzz tests and the benches.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::Write;

use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_arch_amd64::Registers;

/// Page size.
pub const PAGE: usize = 4096;

/// A page of recognisable, compressible content for frame `pfn`.
pub fn page_for(pfn: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    let mut rng = SmallRng::seed_from_u64(pfn);
    let text = format!("frame {pfn:#x} Linux version 6.1.0 ");
    for (i, b) in p.iter_mut().enumerate() {
        *b = match (i / 512) % 4 {
            0 => text.as_bytes()[i % text.len()],
            1 => 0,
            2 => rng.r#gen(),
            _ => (i as u8).wrapping_mul(pfn as u8 | 1),
        };
    }
    p
}

/// Page compression of a synthetic kdump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comp {
    None,
    Zlib,
    Lzo,
    Snappy,
    Zstd,
}

impl Comp {
    pub const ALL: [Comp; 5] = [Comp::None, Comp::Zlib, Comp::Lzo, Comp::Snappy, Comp::Zstd];

    fn flag(self) -> u32 {
        match self {
            Comp::None => 0,
            Comp::Zlib => 1,
            Comp::Lzo => 2,
            Comp::Snappy => 4,
            Comp::Zstd => 0x20,
        }
    }

    fn compress(self, page: &[u8]) -> Vec<u8> {
        match self {
            Comp::None => page.to_vec(),
            Comp::Zlib => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(page).unwrap();
                e.finish().unwrap()
            }
            Comp::Lzo => lzokay_native::compress(page).unwrap(),
            Comp::Snappy => snap::raw::Encoder::new().compress_vec(page).unwrap(),
            Comp::Zstd => {
                ruzstd::encoding::compress_to_vec(page, ruzstd::encoding::CompressionLevel::Fastest)
            }
        }
    }
}

/// What a frame of a synthetic kdump is.
#[derive(Clone, Debug)]
pub enum Frame {
    /// Dumped with this content.
    Dumped(Vec<u8>),
    /// RAM, filtered out (1st bitmap set, 2nd clear).
    Excluded,
    /// Not RAM (both bitmaps clear).
    Hole,
}

/// Builds a standard-layout kdump file (header version 6) of `frames` (frame i = pfn i).
pub fn build_kdump(frames: &[Frame], comp: Comp, notes: &[u8], vmcoreinfo: &str) -> Vec<u8> {
    let max_mapnr = frames.len() as u64;
    let bitmap_half_blocks = (max_mapnr.div_ceil(8) as usize).div_ceil(PAGE).max(1);
    let extra = notes.len() + vmcoreinfo.len();
    let sub_hdr_blocks = 1 + extra.div_ceil(PAGE);
    let mut out = vec![0u8; PAGE * (1 + sub_hdr_blocks + 2 * bitmap_half_blocks)];
    // disk_dump_header
    out[0..8].copy_from_slice(b"KDUMP   ");
    out[8..12].copy_from_slice(&6i32.to_le_bytes());
    for (i, s) in [
        "Linux",
        "vmiguest",
        "6.1.0-test",
        "#1 SMP",
        "x86_64",
        "(none)",
    ]
    .iter()
    .enumerate()
    {
        out[12 + 65 * i..12 + 65 * i + s.len()].copy_from_slice(s.as_bytes());
    }
    out[428..432].copy_from_slice(&(PAGE as i32).to_le_bytes());
    out[432..436].copy_from_slice(&(sub_hdr_blocks as i32).to_le_bytes());
    out[436..440].copy_from_slice(&((2 * bitmap_half_blocks) as u32).to_le_bytes());
    out[440..444].copy_from_slice(&(max_mapnr as u32).to_le_bytes());
    out[460..464].copy_from_slice(&1i32.to_le_bytes());
    // kdump_sub_header
    let s = PAGE;
    out[s + 8..s + 12].copy_from_slice(&31i32.to_le_bytes());
    let notes_at = (2 * PAGE) as u64;
    let vmci_at = notes_at + notes.len() as u64;
    out[s + 32..s + 40].copy_from_slice(&vmci_at.to_le_bytes());
    out[s + 40..s + 48].copy_from_slice(&(vmcoreinfo.len() as u64).to_le_bytes());
    out[s + 48..s + 56].copy_from_slice(&notes_at.to_le_bytes());
    out[s + 56..s + 64].copy_from_slice(&(notes.len() as u64).to_le_bytes());
    out[s + 80..s + 88].copy_from_slice(&0u64.to_le_bytes());
    out[s + 88..s + 96].copy_from_slice(&max_mapnr.to_le_bytes());
    out[s + 96..s + 104].copy_from_slice(&max_mapnr.to_le_bytes());
    out[2 * PAGE..2 * PAGE + notes.len()].copy_from_slice(notes);
    out[vmci_at as usize..vmci_at as usize + vmcoreinfo.len()]
        .copy_from_slice(vmcoreinfo.as_bytes());
    // bitmaps
    let b1 = PAGE * (1 + sub_hdr_blocks);
    let b2 = b1 + PAGE * bitmap_half_blocks;
    let mut dumped = Vec::new();
    for (pfn, f) in frames.iter().enumerate() {
        let (byte, bit) = (pfn / 8, pfn % 8);
        match f {
            Frame::Dumped(p) => {
                out[b1 + byte] |= 1 << bit;
                out[b2 + byte] |= 1 << bit;
                dumped.push(p);
            }
            Frame::Excluded => out[b1 + byte] |= 1 << bit,
            Frame::Hole => {}
        }
    }
    // page descriptors, then data
    let pd_at = out.len();
    let mut data_at = (pd_at + 24 * dumped.len()) as u64;
    let mut pds = Vec::new();
    let mut data = Vec::new();
    for p in dumped {
        let c = comp.compress(p);
        let (bytes, flags) = if c.len() < PAGE {
            (c, comp.flag())
        } else {
            (p.clone(), 0)
        };
        pds.extend_from_slice(&data_at.to_le_bytes());
        pds.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        pds.extend_from_slice(&flags.to_le_bytes());
        pds.extend_from_slice(&0u64.to_le_bytes());
        data_at += bytes.len() as u64;
        data.extend_from_slice(&bytes);
    }
    out.extend_from_slice(&pds);
    out.extend_from_slice(&data);
    out
}

/// Wraps a logical kdump file in the flattened layout: records of random sizes in
/// random order, with an early record of garbage that a later record overwrites.
pub fn flatten(logical: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = vec![0u8; 4096];
    out[..13].copy_from_slice(b"makedumpfile\0");
    out[16..24].copy_from_slice(&1u64.to_be_bytes());
    out[24..32].copy_from_slice(&1u64.to_be_bytes());
    let record = |out: &mut Vec<u8>, offset: u64, bytes: &[u8]| {
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    // Garbage over the page descriptors' start, overwritten below.
    record(&mut out, 300, &vec![0xee; 5000]);
    let mut pieces = Vec::new();
    let mut at = 0usize;
    while at < logical.len() {
        let n = rng.gen_range(1..20_000).min(logical.len() - at);
        pieces.push((at, n));
        at += n;
    }
    // Shuffle a little: swap neighbours.
    for i in (1..pieces.len()).step_by(3) {
        pieces.swap(i - 1, i);
    }
    for (at, n) in pieces {
        record(&mut out, at as u64, &logical[at..at + n]);
    }
    out.extend_from_slice(&u64::MAX.to_be_bytes());
    out.extend_from_slice(&u64::MAX.to_be_bytes());
    out
}

/// Windows dump variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WinKind {
    /// DumpType 1, runs in the header.
    Full,
    /// DumpType 5, SDMP bitmap.
    KernelBitmap,
    /// DumpType 6, FDMP bitmap.
    FullBitmap,
    /// DumpType 8, RDMP ranges.
    KernelRdmp,
}

/// Header values of a synthetic Windows dump.
pub struct WinFields {
    pub dtb: u64,
    pub ps_active_process_head: u64,
    pub ps_loaded_module_list: u64,
    pub kd_debugger_data_block: u64,
    pub bug_check: u32,
    pub params: [u64; 4],
    pub processors: u32,
    pub rip: u64,
    pub rsp: u64,
    pub rax: u64,
    pub r15: u64,
    pub cs: u16,
    pub ss: u16,
    pub eflags: u32,
}

impl Default for WinFields {
    fn default() -> Self {
        Self {
            dtb: 0x1000,
            ps_active_process_head: 0xfffff800_12345670,
            ps_loaded_module_list: 0xfffff800_12340000,
            kd_debugger_data_block: 0xfffff800_1200a000,
            bug_check: 0xe2,
            params: [1, 2, 3, 4],
            processors: 2,
            rip: 0xfffff800_11111111,
            rsp: 0xfffff800_22222222,
            rax: 0x3333,
            r15: 0x4444,
            cs: 0x10,
            ss: 0x18,
            eflags: 0x246,
        }
    }
}

/// Builds a Windows crash dump holding the frames in `pfns` (sorted, distinct) with
/// `page_for(pfn)` content.
pub fn build_windows(kind: WinKind, pfns: &[u64], f: &WinFields) -> Vec<u8> {
    let mut h = vec![0u8; 0x2000];
    h[0..8].copy_from_slice(b"PAGEDU64");
    h[8..12].copy_from_slice(&0xfu32.to_le_bytes());
    h[12..16].copy_from_slice(&19041u32.to_le_bytes());
    h[0x10..0x18].copy_from_slice(&f.dtb.to_le_bytes());
    h[0x18..0x20].copy_from_slice(&0xfffffa80_00000000u64.to_le_bytes());
    h[0x20..0x28].copy_from_slice(&f.ps_loaded_module_list.to_le_bytes());
    h[0x28..0x30].copy_from_slice(&f.ps_active_process_head.to_le_bytes());
    h[0x30..0x34].copy_from_slice(&0x8664u32.to_le_bytes());
    h[0x34..0x38].copy_from_slice(&f.processors.to_le_bytes());
    h[0x38..0x3c].copy_from_slice(&f.bug_check.to_le_bytes());
    for (i, p) in f.params.iter().enumerate() {
        h[0x40 + 8 * i..0x48 + 8 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[0x80..0x88].copy_from_slice(&f.kd_debugger_data_block.to_le_bytes());
    // CONTEXT
    let c = 0x348;
    h[c + 0x30..c + 0x34].copy_from_slice(&0x10001fu32.to_le_bytes());
    h[c + 0x38..c + 0x3a].copy_from_slice(&f.cs.to_le_bytes());
    h[c + 0x42..c + 0x44].copy_from_slice(&f.ss.to_le_bytes());
    h[c + 0x44..c + 0x48].copy_from_slice(&f.eflags.to_le_bytes());
    h[c + 0x78..c + 0x80].copy_from_slice(&f.rax.to_le_bytes());
    h[c + 0x98..c + 0xa0].copy_from_slice(&f.rsp.to_le_bytes());
    h[c + 0xf0..c + 0xf8].copy_from_slice(&f.r15.to_le_bytes());
    h[c + 0xf8..c + 0x100].copy_from_slice(&f.rip.to_le_bytes());
    let dump_type: u32 = match kind {
        WinKind::Full => 1,
        WinKind::KernelBitmap => 5,
        WinKind::FullBitmap => 6,
        WinKind::KernelRdmp => 8,
    };
    h[0xf98..0xf9c].copy_from_slice(&dump_type.to_le_bytes());
    h[0xfa0..0xfa8].copy_from_slice(&(0x2000 + pfns.len() as u64 * 4096).to_le_bytes());
    h[0xfa8..0xfb0].copy_from_slice(&0x01d9_0000_0000_0000u64.to_le_bytes());
    // Runs of consecutive frames.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &p in pfns {
        match runs.last_mut() {
            Some((b, n)) if *b + *n == p => *n += 1,
            _ => runs.push((p, 1)),
        }
    }
    let mut out = h;
    match kind {
        WinKind::Full => {
            out[0x88..0x8c].copy_from_slice(&(runs.len() as u32).to_le_bytes());
            out[0x90..0x98].copy_from_slice(&(pfns.len() as u64).to_le_bytes());
            for (i, (b, n)) in runs.iter().enumerate() {
                let at = 0x98 + 16 * i;
                out[at..at + 8].copy_from_slice(&b.to_le_bytes());
                out[at + 8..at + 16].copy_from_slice(&n.to_le_bytes());
            }
        }
        WinKind::KernelBitmap | WinKind::FullBitmap => {
            let pages = pfns.last().map_or(0, |p| p + 1) + 5; // a few clear bits at the end
            let bitmap_len = pages.div_ceil(8) as usize;
            let first_page = (0x2000 + 0x38 + bitmap_len).next_multiple_of(4096) as u64;
            let mut b = vec![0u8; 0x38];
            b[0..4].copy_from_slice(if kind == WinKind::KernelBitmap {
                b"SDMP"
            } else {
                b"FDMP"
            });
            b[4..8].copy_from_slice(b"DUMP");
            b[0x20..0x28].copy_from_slice(&first_page.to_le_bytes());
            b[0x28..0x30].copy_from_slice(&(pfns.len() as u64).to_le_bytes());
            b[0x30..0x38].copy_from_slice(&pages.to_le_bytes());
            let mut bitmap = vec![0u8; bitmap_len];
            for &p in pfns {
                bitmap[(p / 8) as usize] |= 1 << (p % 8);
            }
            out.extend_from_slice(&b);
            out.extend_from_slice(&bitmap);
            out.resize(first_page as usize, 0);
        }
        WinKind::KernelRdmp => {
            // Ranges at 0x2030, ended by a zero entry; the pages start at a page boundary
            // and `metadata_size - 0x20 == first_page_offset - 0x2040` (kdmp-parser's check).
            let first_page = (0x2030 + 16 * (runs.len() as u64 + 1)).next_multiple_of(4096);
            let metadata_size = first_page - 0x2020;
            let mut r = vec![0u8; 0x30];
            r[0..4].copy_from_slice(&0x40u32.to_le_bytes());
            r[4..8].copy_from_slice(b"RDMP");
            r[8..12].copy_from_slice(b"DUMP");
            r[0x10..0x18].copy_from_slice(&metadata_size.to_le_bytes());
            r[0x18..0x20].copy_from_slice(&first_page.to_le_bytes());
            out.extend_from_slice(&r);
            for (b, n) in &runs {
                out.extend_from_slice(&b.to_le_bytes());
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.resize(first_page as usize, 0);
        }
    }
    for &p in pfns {
        out.extend_from_slice(&page_for(p));
    }
    out
}

/// Registers with every field distinct, for round trips.
pub fn sample_registers(seed: u64) -> Registers {
    use vmi_arch_amd64::{Cr3, DescriptorTable, Segment};
    let s = seed << 32;
    Registers {
        rax: s | 1,
        rbx: s | 2,
        rcx: s | 3,
        rdx: s | 4,
        rsi: s | 5,
        rdi: s | 6,
        rbp: s | 7,
        rsp: s | 8,
        r8: s | 9,
        r9: s | 10,
        r10: s | 11,
        r11: s | 12,
        r12: s | 13,
        r13: s | 14,
        r14: s | 15,
        r15: s | 16,
        rip: 0xffff_ffff_8100_0000 | seed,
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
            base: 0xffff_8880_0f80_0000 + seed,
            limit: 0,
            access: 0,
        },
        tr: Segment {
            selector: 0x40,
            base: 0xffff_fe00_0000_3000,
            limit: 0x4087,
            access: 0x89,
        },
        gdtr: DescriptorTable {
            base: 0xffff_fe00_0000_1000,
            limit: 0x7f,
        },
        idtr: DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0xfff,
        },
        cr0: 0x8005_0033,
        cr2: 0x1234 + seed,
        cr3: Cr3(0x29c_4000 + (seed << 12)),
        cr4: 0x6b0,
        gs_base: 0xffff_8880_0f80_0000 + seed,
        kernel_gs_base: 0x7777 + seed,
        ..Registers::default()
    }
}
