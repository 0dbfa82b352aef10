//! Seeded, bounded fuzzing of every parser on stable: mutations of valid dumps of each
//! format (headers get most of the mutations, with "interesting" values written into
//! size and offset fields). Each case opens the dump and uses every entry point. The
//! properties: no panic, no hang (the whole run is bounded), and no allocation
//! proportional to a size field the file claims — checked with a counting allocator: the
//! largest single allocation while handling a case stays within a small multiple of the
//! input's own size.

#![allow(unsafe_code)] // the counting global allocator below; nothing else

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Cursor;

use common::*;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use vmi_core::{Gfn, VcpuId, VmiDriver, VmiQueryRegisters, VmiRead};
use vmi_driver_dump::{
    DumpDriver, DumpFormat, DumpOptions, ElfCoreOptions, build_lime, write_elf_core,
};
use vmi_test_guest::bounded::{CASE_LIMIT, within};

thread_local! {
    /// Largest single allocation made by this thread since the last reset.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest allocation per thread.
struct Counting;

// SAFETY: every method forwards to `System` with the caller's own arguments, so each of
// `GlobalAlloc`'s contracts (layout validity, pointer provenance, size and alignment on
// dealloc/realloc) is the caller's contract with `System`, unchanged. The bookkeeping only
// touches a const-initialised thread-local `Cell<usize>` (no allocation, no reentrancy);
// `try_with` makes it a no-op while thread-locals are being destroyed.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; see the impl's comment.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; see the impl's comment.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; see the impl's comment.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged; see the impl's comment.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| {
        if size > l.get() {
            l.set(size);
        }
    });
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Opens a mutated dump and uses everything; returns the largest allocation made.
fn exercise(bytes: Vec<u8>, rng: &mut SmallRng) -> usize {
    let input = bytes.len();
    LARGEST.with(|l| l.set(0));
    if let Ok(d) = DumpDriver::from_bytes(bytes, DumpOptions::default()) {
        let _ = d.vmcoreinfo();
        let _ = d.kdump_header();
        let _ = d.windows_header();
        let info = d.info();
        for v in 0..3 {
            let _ = d.registers(VcpuId(v));
        }
        let ranges = d.physical_ranges().unwrap_or_default();
        let mut buf = vec![0u8; 4096];
        let mut gfns: Vec<u64> = (0..80).collect();
        gfns.extend(ranges.iter().take(16).map(|r| r.start.0 / 4096));
        if let Ok(i) = info {
            gfns.push(i.max_gfn.0);
            gfns.push(i.max_gfn.0.wrapping_add(1));
        }
        gfns.extend((0..8).map(|_| rng.r#gen::<u64>() >> rng.gen_range(0..64)));
        for g in gfns {
            let _ = d.read_page(Gfn(g), 0, &mut buf);
            let _ = d.read_page(Gfn(g), 4090, &mut buf[..6]);
            let _ = d.kdump_page_compression(Gfn(g));
        }
    }
    let largest = LARGEST.with(Cell::get);
    assert!(
        largest <= 2 * input + (256 << 10),
        "an allocation of {largest} bytes for a {input}-byte input"
    );
    largest
}

/// Values that break naive size arithmetic.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xfff,
    0x1000,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

fn mutate(base: &[u8], header_len: usize, rng: &mut SmallRng) -> Vec<u8> {
    let mut b = base.to_vec();
    for _ in 0..rng.gen_range(1..6) {
        let hot = header_len.min(b.len()).max(1);
        match rng.gen_range(0..5) {
            0 | 1 => {
                let at = rng.gen_range(0..hot) & !7;
                let v = INTERESTING[rng.gen_range(0..INTERESTING.len())];
                let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
                for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(x) = b.get_mut(at + i) {
                        *x = *byte;
                    }
                }
            }
            2 => {
                let at = rng.gen_range(0..hot);
                b[at] = rng.r#gen();
            }
            3 => {
                let at = rng.gen_range(0..b.len());
                b[at] ^= 1 << rng.gen_range(0..8);
            }
            _ => {
                if rng.gen_bool(0.3) {
                    let keep = rng.gen_range(0..b.len());
                    b.truncate(keep);
                }
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

fn run(name: &str, base: Vec<u8>, header_len: usize, cases: usize, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let expected = DumpDriver::from_bytes(base.clone(), DumpOptions::default())
        .unwrap_or_else(|e| panic!("{name}: the unmutated input must open: {e}"))
        .format();
    let mut opened = 0;
    for case in 0..cases {
        let m = mutate(&base, header_len, &mut rng);
        if DumpFormat::detect(&m) == expected {
            opened += 1;
        }
        let input = m.clone();
        let result = std::panic::catch_unwind(move || {
            within(&format!("{name} case {case}"), CASE_LIMIT, move || {
                let mut r = SmallRng::seed_from_u64(case as u64);
                exercise(input, &mut r)
            })
        });
        if let Err(p) = result {
            let path = std::env::temp_dir().join(format!("vmi-dump-fuzz-{name}-{seed}-{case}.bin"));
            let _ = std::fs::write(&path, &m);
            std::panic::resume_unwind(Box::new(format!(
                "{name} case {case} (input saved to {}): {:?}",
                path.display(),
                p.downcast_ref::<String>()
            )));
        }
    }
    assert!(
        opened > cases / 4,
        "{name}: mutations kept the format too rarely"
    );
}

fn small_frames() -> Vec<Frame> {
    (0..40u64)
        .map(|pfn| match pfn % 5 {
            2 => Frame::Excluded,
            4 if pfn > 20 => Frame::Hole,
            _ => Frame::Dumped(page_for(pfn)),
        })
        .collect()
}

fn cpu_core(regs: &[vmi_arch_amd64::Registers]) -> Vec<u8> {
    let src = DumpDriver::from_bytes(
        build_lime(&[(0, &page_for(0)), (0x3000, &page_for(3))]),
        DumpOptions::default(),
    )
    .unwrap();
    let mut out = Cursor::new(Vec::new());
    write_elf_core(
        &src,
        &ElfCoreOptions {
            registers: Some(regs),
            vmcoreinfo: Some("OSRELEASE=6.1\n"),
        },
        &mut out,
        |_| {},
    )
    .unwrap();
    out.into_inner()
}

#[test]
fn fuzz_elf() {
    let regs = [sample_registers(1), sample_registers(2)];
    let core = cpu_core(&regs);
    let header = 0x1000.min(core.len());
    run("elf", core, header, 3000, 1);
}

#[test]
fn fuzz_kdump_every_compression_and_layout() {
    let notes = {
        let core = cpu_core(&[sample_registers(1)]);
        let off = u64::from_le_bytes(core[72..80].try_into().unwrap()) as usize;
        let size = u64::from_le_bytes(core[96..104].try_into().unwrap()) as usize;
        core[off..off + size].to_vec()
    };
    for (i, comp) in Comp::ALL.into_iter().enumerate() {
        let logical = build_kdump(&small_frames(), comp, &notes, "OSRELEASE=6.1\n");
        // Headers, sub-header, bitmaps and descriptors are the first 4 pages + pds.
        run("kdump", logical.clone(), 5 * 4096, 500, 10 + i as u64);
        run(
            "kdump-flat",
            flatten(&logical, i as u64),
            4096 + 64,
            300,
            20 + i as u64,
        );
    }
}

#[test]
fn fuzz_lime() {
    let a: Vec<u8> = (0..3).flat_map(page_for).collect();
    let b = page_for(9);
    let lime = build_lime(&[(0x1000, &a), (0x9000, &b), (0x20000, &b)]);
    run("lime", lime, 4 * 32 + 4 * 4096, 2000, 3);
}

#[test]
fn fuzz_windows_every_kind() {
    let pfns: Vec<u64> = (1..6).chain(9..12).chain([40, 63]).collect();
    for (i, kind) in [
        WinKind::Full,
        WinKind::KernelBitmap,
        WinKind::FullBitmap,
        WinKind::KernelRdmp,
    ]
    .into_iter()
    .enumerate()
    {
        let dump = build_windows(kind, &pfns, &WinFields::default());
        // The header (runs, context, DumpType) and the bitmap/RDMP header.
        run("windows", dump, 0x2100, 800, 30 + i as u64);
    }
}

#[test]
fn fuzz_random_bytes_with_each_magic() {
    let mut rng = SmallRng::seed_from_u64(99);
    for magic in [
        &b"\x7fELF\x02\x01\x01"[..],
        b"KDUMP   ",
        b"makedumpfile\0",
        &0x4C69_4D45u32.to_le_bytes()[..],
        b"PAGEDU64",
    ] {
        for _ in 0..300 {
            let len = rng.gen_range(0..20_000);
            let mut b: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            let n = magic.len().min(b.len());
            b[..n].copy_from_slice(&magic[..n]);
            exercise(b, &mut rng);
        }
    }
}

/// Opens a hostile dump on its own thread, within the per-case time limit, with the
/// allocation bound of [`exercise`].
fn exercise_bounded(name: &str, bytes: Vec<u8>) -> usize {
    within(name, CASE_LIMIT, move || {
        let mut rng = SmallRng::seed_from_u64(0);
        exercise(bytes, &mut rng)
    })
}

/// An ELF64 x86-64 core with `phdrs` program headers: `PT_NOTE` headers for `note_area`
/// (placed after the headers), header `k` covering the area from note `shift(k)` on.
fn elf_with_note_headers(phdrs: u16, note_area: &[u8], shift: impl Fn(usize) -> usize) -> Vec<u8> {
    let area_at = 64 + 56 * usize::from(phdrs);
    let mut out = vec![0u8; area_at];
    out[0..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
    out[16..18].copy_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&phdrs.to_le_bytes());
    for k in 0..usize::from(phdrs) {
        let ph = 64 + 56 * k;
        let skip = (12 * shift(k)).min(note_area.len());
        out[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        out[ph + 8..ph + 16].copy_from_slice(&((area_at + skip) as u64).to_le_bytes());
        out[ph + 32..ph + 40].copy_from_slice(&((note_area.len() - skip) as u64).to_le_bytes());
    }
    out.extend_from_slice(note_area);
    out
}

/// Issue 14: the note cap (2^16) was per `PT_NOTE`, and up to 2^20 program headers may
/// point at the same note area: 65,534 headers over one area of 60,000 notes made ~4·10^9
/// notes. Now each area is parsed once and the cap holds for the whole dump.
#[test]
fn hostile_elf_note_headers_sharing_one_area_are_bounded() {
    // 60,000 empty notes (12 bytes each, n_type 1).
    let area: Vec<u8> = (0..60_000)
        .flat_map(|_| [0u32, 0, 1].into_iter().flat_map(u32::to_le_bytes))
        .collect();
    // Every header names the same area: parsed once.
    let same = elf_with_note_headers(0xfffe, &area, |_| 0);
    exercise_bounded("65534 PT_NOTE over one area", same);
    // Every header names a different suffix of it: the global cap ends the parse.
    let shifted = elf_with_note_headers(0xfffe, &area, |k| k % 1000);
    let input = shifted.clone();
    exercise_bounded("65534 PT_NOTE over shifted areas", input);
    let Err(e) = DumpDriver::from_bytes(shifted, DumpOptions::default()) else {
        panic!("too many notes")
    };
    assert!(e.to_string().contains("notes"), "{e}");
}

/// Issue 14: a bitmap dump built one segment per set bit before checking the pages against
/// the file: 4 MiB of alternating bits (16 M frames, 24 bytes of segment each, ~96x the
/// file). Now each page is checked before it costs anything.
#[test]
fn hostile_windows_bitmap_of_alternating_bits_is_checked_first() {
    let mut dump = build_windows(WinKind::KernelBitmap, &[1, 2], &WinFields::default());
    dump.truncate(0x2000);
    let bitmap_len = 4usize << 20;
    let first_page = (0x2038 + bitmap_len as u64).next_multiple_of(4096);
    let mut b = vec![0u8; 0x38];
    b[0..4].copy_from_slice(b"SDMP");
    b[4..8].copy_from_slice(b"DUMP");
    b[0x20..0x28].copy_from_slice(&first_page.to_le_bytes());
    b[0x30..0x38].copy_from_slice(&(8 * bitmap_len as u64).to_le_bytes());
    dump.extend_from_slice(&b);
    dump.resize(0x2038 + bitmap_len, 0x55);
    // Pages for the first 16 set bits only.
    dump.resize(first_page as usize + 16 * 4096, 0xaa);
    let input = dump.clone();
    exercise_bounded("alternating bitmap", input);
    let Err(e) = DumpDriver::from_bytes(dump, DumpOptions::default()) else {
        panic!("pages missing")
    };
    assert!(e.to_string().contains("past the end of the file"), "{e}");
}

/// Issue 14: kdump's `physical_ranges` made a range per run of the 2nd bitmap: 4 MiB of
/// alternating bits gave 16 M ranges (~64x the file). Every dumped frame needs a 24-byte
/// page descriptor in the file, so such a bitmap is refused when the dump is opened.
#[test]
fn hostile_kdump_alternating_bitmap_is_bounded_by_the_descriptors() {
    const PAGE: usize = 4096;
    let half = 4usize << 20;
    let frames = (8 * half) as u64;
    let mut out = vec![0u8; 2 * PAGE];
    out[0..8].copy_from_slice(b"KDUMP   ");
    out[8..12].copy_from_slice(&6i32.to_le_bytes());
    out[428..432].copy_from_slice(&(PAGE as u32).to_le_bytes());
    out[432..436].copy_from_slice(&1u32.to_le_bytes());
    out[436..440].copy_from_slice(&((2 * half / PAGE) as u32).to_le_bytes());
    out[440..444].copy_from_slice(&(frames as u32).to_le_bytes());
    out[460..464].copy_from_slice(&1u32.to_le_bytes());
    out[PAGE + 88..PAGE + 96].copy_from_slice(&frames.to_le_bytes());
    out[PAGE + 96..PAGE + 104].copy_from_slice(&frames.to_le_bytes());
    out.resize(2 * PAGE + 2 * half, 0x55);
    let input = out.clone();
    exercise_bounded("alternating kdump bitmap", input);
    let Err(e) = DumpDriver::from_bytes(out, DumpOptions::default()) else {
        panic!("no descriptors")
    };
    assert!(e.to_string().contains("page descriptors"), "{e}");
}

#[test]
fn the_counting_allocator_sees_large_allocations() {
    LARGEST.with(|l| l.set(0));
    let v = std::hint::black_box(vec![1u8; 3 << 20]);
    assert!(LARGEST.with(Cell::get) >= 3 << 20);
    drop(v);
}
