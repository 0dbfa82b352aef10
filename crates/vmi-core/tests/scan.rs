//! Parallel scans over one shared core (mock driver): every planted needle found once,
//! at its address, whatever the chunking and the number of threads; holes and unmapped
//! pages skipped and counted, never scanned as zeros.

use std::collections::BTreeSet;
use std::sync::Mutex;

use vmi_core::{AccessContext, Gfn, Pa, ScanChunk, ScanOptions, Va, VmiCore};
use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};

const NEEDLE: &[u8] = b"n33dle-in-the-haystack";
const SIZE: u64 = 4 << 20;

/// Needles found in a chunk, by address (a match is the chunk's if it starts in its own bytes).
fn needles(found: &Mutex<BTreeSet<u64>>) -> impl Fn(&ScanChunk<'_>) + Sync + '_ {
    move |chunk| {
        for (i, w) in chunk.bytes.windows(NEEDLE.len()).enumerate() {
            if w == NEEDLE && i < chunk.owned {
                let new = found.lock().unwrap().insert(chunk.ctx.address + i as u64);
                assert!(
                    new,
                    "needle at {:#x} reported twice",
                    chunk.ctx.address + i as u64
                );
            }
        }
    }
}

#[test]
fn physical_scan_finds_every_needle_once() {
    let driver = MockDriver::new(SIZE);
    let mut truth = BTreeSet::new();
    // Across page edges, across 64 KiB chunk edges, at the start and the end.
    for at in [
        0u64,
        0xff0,
        0x8ff8,
        0x1_0000 - 3,
        0x12_3456,
        0x2f_fff0,
        SIZE - 22,
    ] {
        driver.write_physical(Pa(at), NEEDLE);
        truth.insert(at);
    }
    // A needle in a hole is not there to be found; a hole is counted.
    driver.write_physical(Pa(0x20_0100), NEEDLE);
    driver.make_hole(Gfn(0x200));
    driver.make_hole(Gfn(0x201));
    let core = VmiCore::new(driver).unwrap();
    for threads in [1, 2, 4] {
        for chunk_size in [4096, 0x1_0000, 1 << 20] {
            let found = Mutex::new(BTreeSet::new());
            let options = ScanOptions {
                chunk_size,
                overlap: NEEDLE.len() - 1,
                threads,
            };
            let summary = core.scan_physical(options, needles(&found)).unwrap();
            assert_eq!(
                found.into_inner().unwrap(),
                truth,
                "{threads} threads, {chunk_size}"
            );
            assert_eq!(summary.pages_unreadable, 2);
            assert_eq!(summary.bytes_scanned, SIZE - 2 * 4096);
        }
    }
}

#[test]
fn virtual_scan_skips_unmapped_pages() {
    let driver = MockDriver::new(SIZE);
    let root = Pa(0x10_0000);
    let mut b = PageTableBuilder::new(&driver, root, Pa(0x20_0000));
    let base = Va(0x7f00_0000_0000);
    // Pages 0, 1, 3 mapped (2 is not), then a 2 MiB page at +2 MiB.
    for (page, pa) in [(0u64, 0x5000u64), (1, 0x9000), (3, 0x6000)] {
        b.map(base + page * 4096, Pa(pa), PageSize::Size4K);
    }
    b.map(
        base + (2 << 20),
        Pa(0x40_0000 - (2 << 20)),
        PageSize::Size2M,
    );
    // Across virtual pages 0 and 1 (physical 0x5000 and 0x9000).
    driver.write_physical(Pa(0x5ff8), &NEEDLE[..8]);
    driver.write_physical(Pa(0x9000), &NEEDLE[8..]);
    driver.write_physical(Pa(0x6010), NEEDLE);
    driver.write_physical(Pa(0x40_0000 - (2 << 20) + 0x1_2345), NEEDLE);
    let core = VmiCore::new(driver).unwrap();
    let found = Mutex::new(BTreeSet::new());
    let summary = core
        .scan(
            &[(AccessContext::paging(base, root), 4 << 20)],
            ScanOptions {
                chunk_size: 8192,
                overlap: NEEDLE.len() - 1,
                threads: 3,
            },
            needles(&found),
        )
        .unwrap();
    assert_eq!(
        found.into_inner().unwrap(),
        BTreeSet::from([
            base.0 + 0xff8,
            base.0 + 0x3010,
            base.0 + (2 << 20) + 0x1_2345
        ])
    );
    // 512 pages of the first 2 MiB, of which 3 mapped; the 2 MiB page whole.
    assert_eq!(summary.pages_unreadable, 512 - 3);
    assert_eq!(summary.bytes_scanned, (3 + 512) * 4096);
}

#[test]
fn the_core_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VmiCore<MockDriver>>();
}

/// An unprivileged guest user can reserve terabytes of address space with one `mmap`
/// (and a hostile dump can claim a region of any length): the scan skips what one
/// page-table entry, or the non-canonical hole, leaves unmapped instead of walking each
/// page of it (64 TiB is 2^34 pages: page by page, this test would run for hours).
#[test]
fn virtual_scan_skips_terabytes_of_unmapped_space() {
    let driver = MockDriver::new(SIZE);
    let root = Pa(0x10_0000);
    let mut b = PageTableBuilder::new(&driver, root, Pa(0x20_0000));
    let base = Va(0x0000_1000_0000_0000);
    let huge = 64u64 << 40;
    let inside = base + (40u64 << 40) + 0x12_3000;
    let last = base + (huge - 4096);
    b.map(inside, Pa(0x5000), PageSize::Size4K);
    b.map(last, Pa(0x6000), PageSize::Size4K);
    // A range across the non-canonical hole, with the first upper-half page mapped.
    let low = Va(0x0000_7fff_ffff_0000);
    let upper = Va(0xffff_8000_0000_0000);
    let across = 0xffff_8000_0001_0000 - low.0;
    b.map(upper, Pa(0x7000), PageSize::Size4K);
    for pa in [0x5010, 0x6ff0 - NEEDLE.len() as u64, 0x7100] {
        driver.write_physical(Pa(pa), NEEDLE);
    }
    let core = VmiCore::new(driver).unwrap();
    for threads in [1, 2, 4] {
        for chunk_size in [0x1_0000, 1 << 20] {
            let found = Mutex::new(BTreeSet::new());
            let summary = core
                .scan(
                    &[
                        (AccessContext::paging(base, root), huge),
                        (AccessContext::paging(low, root), across),
                    ],
                    ScanOptions {
                        chunk_size,
                        overlap: NEEDLE.len() - 1,
                        threads,
                    },
                    needles(&found),
                )
                .unwrap();
            assert_eq!(
                found.into_inner().unwrap(),
                BTreeSet::from([
                    inside.0 + 0x10,
                    last.0 + 0xff0 - NEEDLE.len() as u64,
                    upper.0 + 0x100
                ]),
                "{threads} threads, {chunk_size}"
            );
            // Every page is accounted for: three read, the rest unreadable.
            assert_eq!(summary.bytes_scanned, 3 * 4096);
            assert_eq!(
                summary.pages_unreadable,
                (huge + across) / 4096 - 3,
                "{threads} threads, {chunk_size}"
            );
        }
    }
}
