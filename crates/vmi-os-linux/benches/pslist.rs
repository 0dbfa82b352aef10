//! Whole-process task listing on the test guest's 256 MiB ELF dump: open the dump, find
//! the kernel, load the profile, list every process with its name and command line, and
//! print the list (into a buffer). Three variants of ours — profile from the cache, built
//! from guest memory (kallsyms + BTF), and VMCOREINFO found by a scan instead of the dump
//! note — against Volatility 3 `linux.pslist` (a process per run, ISF exported by us) on
//! the same dump in the same run.
//!
//! Needs QEMU (boots the test guest); Volatility is looked for at `target/venv/bin/vol`
//! (or `$VMI_VOL`) and skipped with a message when absent.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vmi_core::VmiCore;
use vmi_driver_dump::DumpDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest};

/// The whole job: returns the printed list.
fn list(dump: &Path, cache: Option<&Path>, use_note: bool) -> String {
    let driver = DumpDriver::open(dump).expect("dump");
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver).expect("core");
    let mut b = LinuxOs::builder();
    b = match cache {
        Some(c) => b.cache_dir(c),
        None => b.no_cache(),
    };
    if use_note && let Some(n) = note {
        b = b.vmcoreinfo(n);
    }
    let os = b.build(&core).expect("kernel");
    let tasks = os.process_list(&core).expect("tasks");
    let mut out = String::new();
    for t in &tasks.tasks {
        let cmd = os
            .cmdline(&core, t)
            .map(|a| a.join(" "))
            .unwrap_or_default();
        let _ = writeln!(out, "{} {} {} {cmd}", t.tgid, t.ppid, t.comm);
    }
    out
}

fn vol_path() -> Option<PathBuf> {
    if let Some(v) = std::env::var_os("VMI_VOL") {
        return Some(v.into());
    }
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok()?;
    let vol = root.parent()?.parent()?.join("target/venv/bin/vol");
    vol.exists().then_some(vol)
}

fn bench(c: &mut Criterion) {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    guest.pause().expect("pause");
    let dump = guest.dir().join("bench.elf");
    guest.dump(DumpFormat::Elf, &dump).expect("dump");
    let cache = guest.dir().join("bench-cache");
    let printed = list(&dump, Some(&cache), true);
    eprintln!("{} processes listed", printed.lines().count());

    let mut g = c.benchmark_group("pslist-256MiB-elf");
    g.sample_size(20).measurement_time(Duration::from_secs(20));
    g.bench_function("vmi: cached profile", |b| {
        b.iter(|| list(&dump, Some(&cache), true))
    });
    g.bench_function("vmi: profile from guest memory", |b| {
        b.iter(|| list(&dump, None, true))
    });
    g.bench_function("vmi: vmcoreinfo scan, cached profile", |b| {
        b.iter(|| list(&dump, Some(&cache), false))
    });
    match vol_path() {
        Some(vol) => {
            let isf_dir = guest.dir().join("isf");
            std::fs::create_dir_all(&isf_dir).unwrap();
            let driver = DumpDriver::open(&dump).unwrap();
            let note = driver.vmcoreinfo().unwrap().to_owned();
            let core = VmiCore::new(driver).unwrap();
            let os = LinuxOs::builder()
                .cache_dir(&cache)
                .vmcoreinfo(note)
                .build(&core)
                .unwrap();
            os.write_isf(&isf_dir.join("linux.json")).unwrap();
            let run = || {
                let out = Command::new(&vol)
                    .args(["-q", "-r", "csv", "-s"])
                    .arg(&isf_dir)
                    .arg("-f")
                    .arg(&dump)
                    .arg("linux.pslist.PsList")
                    .output()
                    .expect("vol");
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            };
            eprintln!(
                "volatility listed {} lines",
                String::from_utf8_lossy(&run()).lines().count()
            );
            g.sample_size(10).measurement_time(Duration::from_secs(60));
            g.bench_function("volatility3 linux.pslist", |b| b.iter(run));
        }
        None => eprintln!("SKIPPED: volatility3 not found (target/venv/bin/vol or $VMI_VOL)"),
    }
    g.finish();
    drop(guest);
}

criterion_group!(benches, bench);
criterion_main!(benches);
