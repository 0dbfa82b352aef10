//! The builder's own checks: every build lays out, the output is deterministic.

use vmi_test_windows::{GuestSpec, all_builds, build, load_isf};

#[test]
fn every_build_lays_out() {
    for key in all_builds() {
        let t = std::time::Instant::now();
        let isf = load_isf(key).unwrap();
        let t1 = t.elapsed();
        let img =
            build(&isf, &GuestSpec::default_scenario()).unwrap_or_else(|e| panic!("{key}: {e}"));
        eprintln!("{key}: isf {:?} build {:?}", t1, t.elapsed() - t1);
        assert_eq!(img.manifest.processes.len(), 4);
        let k = &img.manifest.kernel;
        assert_eq!(img.kernel_pa(k.base), Some(k.pa));
        assert_eq!(&img.raw()[k.pa as usize..k.pa as usize + 2], b"MZ");
    }
}

#[test]
fn same_inputs_same_bytes_other_seed_other_layout() {
    use sha2::{Digest, Sha256};
    let isf = load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
    let spec = |seed| {
        GuestSpec::with_options(vmi_test_windows::Options {
            seed,
            ..Default::default()
        })
    };
    let a = build(&isf, &spec(7)).unwrap();
    let b = build(&isf, &spec(7)).unwrap();
    let c = build(&isf, &spec(8)).unwrap();
    let h = |x: &[u8]| Sha256::digest(x).to_vec();
    assert_eq!(h(a.raw()), h(b.raw()));
    assert_eq!(a.manifest, b.manifest);
    assert_ne!(a.manifest.kernel.base, c.manifest.kernel.base);
    assert_ne!(h(a.raw()), h(c.raw()));
}

#[test]
fn crash_dump_holds_the_runs() {
    let isf = load_isf("339E74133576439CBCDF7E0229DA3773-1").unwrap();
    let img = build(&isf, &GuestSpec::default_scenario()).unwrap();
    let d = img.crash_dump();
    assert_eq!(&d[..8], b"PAGEDU64");
    let pages: u64 = img.manifest.physical_runs.iter().map(|r| r.1).sum::<u64>() / 0x1000;
    assert_eq!(d.len() as u64, 0x2000 + pages * 0x1000);
    // First run starts at frame 1: dump offset 0x2000 holds physical 0x1000.
    assert_eq!(&d[0x2000..0x3000], &img.raw()[0x1000..0x2000]);
}
