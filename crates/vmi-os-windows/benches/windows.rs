//! Listing processes with their modules on a 64 MiB synthetic Windows 10 image, and the
//! same listing by Volatility 3 (`windows.pslist` + `windows.dlllist`) on the same image in
//! the same run, when `vol` is available (`VMI_VOL`, or `target/venv/bin/vol`).
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use vmi_core::{VcpuId, VmiCore};
use vmi_os_windows::{
    LdrList, WindowsOs, find_kernel_from_registers, profile_from_isf_dir,
    profile_from_isf_dir_cached,
};
use vmi_profile::cache::ProfileCache;
use vmi_test_windows::{GuestSpec, ImageDriver, build, isf_dir, load_isf};

const KEY: &str = "9C00B19DBDE003DBFE4AB4216993C843-1";

fn setup() -> (
    vmi_test_windows::GuestImage,
    VmiCore<ImageDriver>,
    WindowsOs,
) {
    let isf = load_isf(KEY).expect("ISF");
    let img = build(&isf, &GuestSpec::default_scenario()).expect("image");
    let core = VmiCore::new(img.driver()).expect("core");
    let regs = core.registers(VcpuId(0)).expect("registers");
    let kernel = find_kernel_from_registers(&core, &regs).expect("kernel");
    let profile = profile_from_isf_dir(&isf_dir(), &kernel.codeview).expect("profile");
    let os = WindowsOs::from_kernel(&core, profile, kernel).expect("os");
    (img, core, os)
}

fn list(core: &VmiCore<ImageDriver>, os: &WindowsOs) -> usize {
    let mut n = 0;
    for p in os.win_processes(core).expect("processes") {
        n += 1 + os
            .user_modules(core, &p, LdrList::Load)
            .map(|m| m.len())
            .unwrap_or(0);
    }
    n
}

fn vol_path() -> Option<PathBuf> {
    let p = std::env::var_os("VMI_VOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/vol")
        });
    p.is_file().then_some(p)
}

fn bench(c: &mut Criterion) {
    let (img, core, os) = setup();
    assert_eq!(list(&core, &os), 4 + 2 + 3 + 4);
    c.bench_function("windows: processes + modules (64 MiB image)", |b| {
        b.iter(|| list(&core, &os))
    });
    // The whole job from a fresh core: kernel discovery, profile load, listing.
    let drv = img.driver();
    let cache_dir =
        std::env::temp_dir().join(format!("vmi-win-bench-cache-{}", std::process::id()));
    let cache = ProfileCache::new(&cache_dir);
    // From nothing but the image: kernel discovery from registers, profile, listing.
    let from_scratch = |cached: bool| {
        let core = VmiCore::new(drv.clone()).expect("core");
        let regs = core.registers(VcpuId(0)).expect("registers");
        let kernel = find_kernel_from_registers(&core, &regs).expect("kernel");
        let profile = if cached {
            profile_from_isf_dir_cached(&isf_dir(), &kernel.codeview, &cache).expect("profile")
        } else {
            profile_from_isf_dir(&isf_dir(), &kernel.codeview).expect("profile")
        };
        let os = WindowsOs::from_kernel(&core, profile, kernel).expect("os");
        list(&core, &os)
    };
    c.bench_function("windows: open (find kernel, import ISF) + list", |b| {
        b.iter(|| from_scratch(false))
    });
    c.bench_function("windows: open (find kernel, cached profile) + list", |b| {
        b.iter(|| from_scratch(true))
    });
    let Some(vol) = vol_path() else {
        eprintln!("SKIPPED Volatility comparison: no vol (set VMI_VOL or run scripts/setup.sh)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("vmi-win-bench-{}", std::process::id()));
    let sym = dir.join("symbols/windows/ntkrnlmp.pdb");
    std::fs::create_dir_all(&sym).expect("temp dir");
    std::fs::create_dir_all(dir.join("cache")).expect("temp dir");
    std::fs::copy(
        vmi_test_windows::isf_path(KEY),
        sym.join(format!("{KEY}.json.xz")),
    )
    .expect("copy ISF");
    let raw = dir.join("image.raw");
    std::fs::write(&raw, img.raw()).expect("write image");
    let run = |plugin: &str| {
        let t = Instant::now();
        let out = Command::new(&vol)
            .args(["-q", "--offline", "-r", "json", "--cache-path"])
            .arg(dir.join("cache"))
            .arg("-s")
            .arg(dir.join("symbols"))
            .arg("-f")
            .arg(&raw)
            .arg(plugin)
            .output()
            .expect("run vol");
        assert!(out.status.success(), "vol {plugin} failed");
        t.elapsed()
    };
    run("windows.pslist"); // warm Volatility's identifier cache, as a repeated user would have it
    let vol_time = run("windows.pslist") + run("windows.dlllist");
    let time = |f: &dyn Fn()| {
        let reps = 10u32;
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed() / reps
    };
    let cold = time(&|| {
        from_scratch(false);
    });
    let cached = time(&|| {
        from_scratch(true);
    });
    let warm = time(&|| {
        list(&core, &os);
    });
    let x = |d: Duration| vol_time.as_secs_f64() / d.as_secs_f64();
    eprintln!(
        "Volatility 3 windows.pslist + windows.dlllist: {vol_time:.2?}\n\
         ours, open + list, ISF imported: {cold:.2?} ({:.0}x)\n\
         ours, open + list, cached profile: {cached:.2?} ({:.0}x)\n\
         ours, list only: {warm:.2?} ({:.0}x)",
        x(cold),
        x(cached),
        x(warm)
    );
    let _ = std::fs::remove_dir_all(&cache_dir);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
