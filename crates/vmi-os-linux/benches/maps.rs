//! `maps` of the realistic guest's 1,000-VMA process (`vmi_manyvma`, a maple tree of three
//! levels on 6.1) on its 256 MiB ELF dump: the whole job (open the dump, find the kernel
//! with the cached profile, find the process, list and name every VMA, print the lines)
//! and the VMA walk alone on an opened dump. The listing is checked against the guest's
//! `/proc/PID/maps` before timing.
//!
//! Needs QEMU (boots the realistic test guest, ~15 s under TCG).

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vmi_core::VmiCore;
use vmi_driver_dump::DumpDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Userland};

fn open(dump: &Path, cache: &Path) -> (VmiCore<DumpDriver>, LinuxOs) {
    let driver = DumpDriver::open(dump).expect("dump");
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver).expect("core");
    let mut b = LinuxOs::builder().cache_dir(cache);
    if let Some(n) = note {
        b = b.vmcoreinfo(n);
    }
    let os = b.build(&core).expect("kernel");
    (core, os)
}

/// The whole job: the printed `/proc/PID/maps` lines.
fn maps(dump: &Path, cache: &Path, pid: u32) -> Vec<String> {
    let (core, os) = open(dump, cache);
    let task = os.find_process(&core, pid).expect("process");
    let vmas = os.vmas(&core, &task).expect("vmas");
    vmas.vmas.iter().map(|v| v.maps_line()).collect()
}

fn bench(c: &mut Criterion) {
    let cfg = GuestConfig::default().userland(Userland::Realistic);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    guest.pause().expect("pause");
    let dump = guest.dir().join("bench.elf");
    guest.dump(DumpFormat::Elf, &dump).expect("dump");
    let cache = guest.dir().join("bench-cache");
    let truth = guest.truth();
    let many = truth.process("vmi_manyvma").expect("vmi_manyvma");
    let lines = maps(&dump, &cache, many.pid);
    assert_eq!(lines.len(), many.maps.len(), "VMA count against /proc");
    eprintln!(
        "vmi_manyvma: {} VMAs on {} ({})",
        lines.len(),
        truth.release,
        dump.display()
    );

    let mut g = c.benchmark_group("maps-1000-vmas-256MiB-elf");
    g.sample_size(20).measurement_time(Duration::from_secs(15));
    g.bench_function("vmi maps: whole job, cached profile", |b| {
        b.iter(|| maps(&dump, &cache, many.pid))
    });
    let (core, os) = open(&dump, &cache);
    let task = os.find_process(&core, many.pid).expect("process");
    g.bench_function("vmas(): walk and name every VMA", |b| {
        b.iter(|| os.vmas(&core, &task).expect("vmas").vmas.len())
    });
    g.finish();
    drop(guest);
}

criterion_group!(benches, bench);
criterion_main!(benches);
