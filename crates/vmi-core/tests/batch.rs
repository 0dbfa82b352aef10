//! `VmiCore::read_batch` against the mock driver: each request gets what `read` gives it,
//! and the driver sees one batch, sorted by frame.

use vmi_core::{AccessContext, Gfn, Pa, Va, VmiCore, VmiError};
use vmi_driver_mock::{MockCall, MockDriver, MockOp, PageSize, PageTableBuilder};

const ROOT: Pa = Pa(0x10_0000);

/// Virtual pages 0x7000_0000.. map to physical 0x9000, 0x5000, (hole), 0x6000.
fn target(driver: MockDriver) -> (VmiCore<MockDriver>, Pa) {
    let mut b = PageTableBuilder::new(&driver, ROOT, Pa(0x20_0000));
    b.map(Va(0x7000_0000), Pa(0x9000), PageSize::Size4K);
    b.map(Va(0x7000_1000), Pa(0x5000), PageSize::Size4K);
    b.map(Va(0x7000_3000), Pa(0x6000), PageSize::Size4K);
    for pa in [0x5000u64, 0x6000, 0x9000] {
        let bytes: Vec<u8> = (0..4096u64).map(|i| (pa / 0x1000 + i) as u8).collect();
        driver.write_physical(Pa(pa), &bytes);
    }
    let root = b.root();
    (VmiCore::new(driver).unwrap(), root)
}

fn requests(root: Pa) -> Vec<(AccessContext, usize)> {
    vec![
        (AccessContext::paging(Va(0x7000_0ff0), root), 0x20), // 0x9ff0.. then 0x5000..
        (AccessContext::direct(Pa(0x6010)), 8),
        (AccessContext::paging(Va(0x7000_1ff8), root), 0x10), // into the hole: partial
        (AccessContext::paging(Va(0x7000_2000), root), 4),    // the hole: fault
        (AccessContext::paging(Va(0x7000_3000), root), 0),    // empty
        (AccessContext::paging(Va(0x7000_3ffc), root), 4),
        (AccessContext::direct(Pa(0x5000)), 0x1000),
    ]
}

/// Compares a batch with one `read` per request: same bytes, same outcome.
fn check_against_single_reads(core: &VmiCore<MockDriver>, root: Pa) {
    let reqs = requests(root);
    let mut bufs: Vec<Vec<u8>> = reqs.iter().map(|&(_, n)| vec![0xee; n]).collect();
    let mut batch: Vec<(AccessContext, &mut [u8])> = reqs
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(ctx, _), b)| (ctx, &mut b[..]))
        .collect();
    let results = core.read_batch(&mut batch);
    assert_eq!(results.len(), reqs.len());
    for (i, (&(ctx, n), result)) in reqs.iter().zip(&results).enumerate() {
        let mut want = vec![0xee; n];
        let single = core.read(ctx, &mut want);
        match (single, result) {
            (Ok(()), Ok(())) => assert_eq!(bufs[i], want, "request {i}"),
            (
                Err(VmiError::PartialAccess { completed: a, .. }),
                Err(VmiError::PartialAccess { completed: b, .. }),
            ) => {
                assert_eq!(a, *b, "request {i}");
                assert_eq!(bufs[i][..a], want[..a], "request {i}");
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.page_fault(), b.page_fault(), "request {i}: {a} / {b}");
                assert_eq!(a.to_string(), b.to_string(), "request {i}");
            }
            (a, b) => panic!("request {i}: read {a:?}, batch {b:?}"),
        }
    }
    assert!(results[0].is_ok() && results[1].is_ok() && results[6].is_ok());
    assert!(matches!(
        results[2],
        Err(VmiError::PartialAccess { completed: 8, .. })
    ));
    assert!(results[3].as_ref().unwrap_err().page_fault().is_some());
}

#[test]
fn a_batch_reads_what_single_reads_read() {
    let (core, root) = target(MockDriver::new(1 << 24));
    check_against_single_reads(&core, root);
}

#[test]
fn the_driver_sees_one_batch_sorted_by_frame() {
    let (core, root) = target(MockDriver::new(1 << 24));
    core.driver().clear_calls();
    let mut bufs: Vec<Vec<u8>> = requests(root).iter().map(|&(_, n)| vec![0; n]).collect();
    let mut batch: Vec<(AccessContext, &mut [u8])> = requests(root)
        .into_iter()
        .zip(bufs.iter_mut())
        .map(|((ctx, _), b)| (ctx, &mut b[..]))
        .collect();
    core.read_batch(&mut batch);
    // Translation reads page-table entries (one per page: the region's table is
    // cached); then comes the batch, one piece after another, sorted.
    let calls = core.driver().calls();
    let at = calls
        .iter()
        .position(|c| *c == MockCall::ReadPages { pieces: 6 })
        .unwrap_or_else(|| panic!("no batch of 6 in {calls:?}"));
    let pieces: Vec<(Gfn, usize)> = calls[at + 1..]
        .iter()
        .map(|c| match c {
            MockCall::ReadPage { gfn, offset, .. } => (*gfn, *offset),
            other => panic!("{other:?} after the batch"),
        })
        .collect();
    let mut sorted = pieces.clone();
    sorted.sort();
    assert_eq!(pieces, sorted);
    assert_eq!(pieces.len(), 6);
    assert!(
        calls[..at].iter().all(|c| matches!(
            c,
            MockCall::ReadPage {
                gfn: Gfn(0x100..),
                len: 8,
                ..
            }
        )),
        "before the batch only page-table reads: {calls:?}"
    );
}

#[test]
fn a_failed_piece_fails_only_its_request() {
    let (core, _) = target(MockDriver::new(1 << 24));
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    // Physical 0x5000 sorts before 0x6000: the injected failure hits request 1 only.
    core.driver().fail_next(
        MockOp::ReadPage,
        VmiError::driver("mock", "injected read failure"),
    );
    let results = core.read_batch(&mut [
        (AccessContext::direct(Pa(0x6000)), &mut a[..]),
        (AccessContext::direct(Pa(0x5000)), &mut b[..]),
    ]);
    assert!(results[0].is_ok());
    assert!(
        matches!(&results[1], Err(VmiError::Driver { message, .. }) if message.contains("injected"))
    );
    assert_eq!(a[0], 6);
}

#[test]
fn through_the_page_cache_of_a_slow_target() {
    let (core, root) = target(MockDriver::new(1 << 24).live());
    assert!(core.page_cache_stats().capacity > 0);
    core.driver().clear_calls();
    let mut a = [0u8; 16];
    let mut b = [0u8; 8];
    let results = core.read_batch(&mut [
        (AccessContext::direct(Pa(0x9ff8)), &mut a[..]), // frames 9 and 10
        (AccessContext::direct(Pa(0x6010)), &mut b[..]),
    ]);
    assert!(results.iter().all(Result::is_ok));
    // Frame 9 holds (9 + offset) as u8; frame 10 was never written (the mock's zeros).
    assert_eq!(a, [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(b, [0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d]);
    // The cache lacked frames 6, 9 and 10: one driver call for those whole pages.
    let calls = core.driver().calls();
    assert_eq!(calls[0], MockCall::ReadPages { pieces: 3 }, "{calls:?}");
    assert!(calls[1..].iter().all(|c| matches!(
        c,
        MockCall::ReadPage {
            offset: 0,
            len: 4096,
            ..
        }
    )));
    // Now every page is cached: a batch reaches the driver not at all.
    core.driver().clear_calls();
    check_against_single_reads(&core, root);
    check_against_single_reads(&core, root);
    core.driver().clear_calls();
    check_against_single_reads(&core, root);
    assert_eq!(core.driver().calls(), vec![]);
}
