//! Whole-process figures on the realistic guest's 256 MiB ELF dump, side by side with drgn
//! (0.3.0 with the kernel's DWARF `vmlinux` from Debian's `-dbg` package) in the same run:
//!
//! * `ps`: every process with its parent, name and command line — `vmi --json ps` with the
//!   profile from the on-disk cache and built from guest memory (`--no-cache`), against a
//!   drgn script doing the same (`for_each_task`, `cmdline`);
//! * `maps`: every VMA of `vmi_manyvma` (> 1,250 VMAs, a maple tree of three levels) —
//!   `vmi --json maps PID` against drgn's `for_each_vma` with the file path of each.
//!
//! Also, in-process: `LinuxOs::vmas` of that process on the opened dump (no process start,
//! no discovery), the cost of the maple-tree walk and naming alone.
//!
//! Needs QEMU (boots the realistic guest) and downloads the kernel's `-dbg` package once
//! (~280 MB) for drgn; drgn is skipped with a message when it cannot be had.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::run;
use criterion::{Criterion, criterion_group, criterion_main};
use vmi_core::VmiCore;
use vmi_driver_dump::DumpDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Userland};

const DRGN_PS: &str = r#"
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.mm import cmdline
n = 0
for t in for_each_task(prog):
    if t.pid != t.tgid:
        continue
    args = b" ".join(cmdline(t) or []).decode("utf-8", "replace") if t.mm else ""
    print(t.tgid.value_(), t.real_parent.tgid.value_(), t.comm.string_().decode(), args)
    n += 1
assert n > 50, n
"#;

const DRGN_MAPS: &str = r#"
import sys
from drgn.helpers.linux.pid import find_task
from drgn.helpers.linux.mm import for_each_vma
from drgn.helpers.linux.fs import d_path
t = find_task(prog, int(sys.argv[1]))
n = 0
for v in for_each_vma(t.mm):
    path = d_path(v.vm_file.f_path).decode() if v.vm_file else ""
    print(hex(v.vm_start), hex(v.vm_end), hex(v.vm_flags), v.vm_pgoff.value_(), path)
    n += 1
assert n > 1000, n
"#;

fn vmi(dump: &Path, cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmi"));
    c.env("VMI_PROFILE_CACHE", cache)
        .arg("--target")
        .arg(dump)
        .arg("--json")
        .args(args);
    c
}

fn bench(c: &mut Criterion) {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().userland(Userland::Realistic))
    else {
        return;
    };
    guest.pause().expect("pause");
    let truth = guest.truth().clone();
    let dump = guest.dir().join("bench.elf");
    guest.dump(DumpFormat::Elf, &dump).expect("dump");
    let cache = guest.dir().join("profile-cache");
    let many = truth
        .processes
        .iter()
        .find(|p| p.comm == "vmi_manyvma")
        .expect("vmi_manyvma in the truth")
        .pid;
    let many_s = many.to_string();
    // Warm the profile cache once.
    run(&mut vmi(&dump, &cache, &["ps"]));

    let drgn = vmi_test_guest::oracle::drgn().and_then(|d| {
        vmi_test_guest::oracle::debug_vmlinux("bookworm", &truth.release).map(|v| (d, v))
    });
    let scripts = guest.dir();
    std::fs::write(scripts.join("ps.py"), DRGN_PS).unwrap();
    std::fs::write(scripts.join("maps.py"), DRGN_MAPS).unwrap();
    let drgn_cmd = |script: &str, args: &[&str]| -> Option<Command> {
        let (d, vmlinux) = drgn.as_ref().ok()?;
        let mut c = Command::new(d);
        c.arg("-q")
            .arg("-c")
            .arg(&dump)
            .arg("-s")
            .arg(vmlinux)
            .arg(scripts.join(script))
            .args(args);
        Some(c)
    };
    if let Err(e) = &drgn {
        eprintln!("SKIPPED: drgn: {e}");
    }

    let mut g = c.benchmark_group("ps_whole_process");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("vmi_cached_profile", |b| {
        b.iter(|| run(&mut vmi(&dump, &cache, &["ps"])))
    });
    g.bench_function("vmi_profile_from_memory", |b| {
        b.iter(|| run(&mut vmi(&dump, &cache, &["--no-cache", "ps"])))
    });
    if drgn_cmd("ps.py", &[]).is_some() {
        g.bench_function("drgn_dwarf", |b| {
            b.iter(|| run(&mut drgn_cmd("ps.py", &[]).unwrap()))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("maps_1250_vmas_whole_process");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("vmi_cached_profile", |b| {
        b.iter(|| run(&mut vmi(&dump, &cache, &["maps", &many_s])))
    });
    if drgn_cmd("maps.py", &[&many_s]).is_some() {
        g.bench_function("drgn_dwarf", |b| {
            b.iter(|| run(&mut drgn_cmd("maps.py", &[&many_s]).unwrap()))
        });
    }
    g.finish();

    // In process: the walk alone.
    let driver = DumpDriver::open(&dump).expect("dump");
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver).unwrap();
    let mut b = LinuxOs::builder().cache_dir(&cache);
    if let Some(n) = note {
        b = b.vmcoreinfo(n);
    }
    let os = b.build(&core).expect("kernel");
    let task = os.find_process(&core, many).expect("vmi_manyvma");
    let n = os.vmas(&core, &task).expect("vmas").vmas.len();
    assert!(n > 1000, "{n} VMAs");
    let mut g = c.benchmark_group("maps_1250_vmas_in_process");
    g.bench_function("LinuxOs::vmas", |b| {
        b.iter(|| os.vmas(&core, &task).expect("vmas"))
    });
    g.finish();
    drop(guest);
}

criterion_group!(benches, bench);
criterion_main!(benches);
