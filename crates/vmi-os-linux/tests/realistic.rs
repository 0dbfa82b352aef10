//! The OS layer against the realistic guest (Debian userland, production-shaped
//! processes, the truth of every process): for **every** process but the truth printer,
//! its ids, credentials, threads, namespaced pids, host name, command line, environment,
//! VMAs and open files must equal what `/proc` printed, over the guest's RAM file, its ELF
//! and kdump dumps and the live guest. The classic checks (`common::check_all`) run too.

mod common;

use std::path::Path;
use std::time::Instant;

use common::procs::compare_every_process;
use common::{RamFile, check_all};
use vmi_arch_amd64::Amd64;
use vmi_core::{VmiCore, VmiError, VmiRead};
use vmi_driver_dump::DumpDriver;
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Truth, Userland};

fn checks<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) {
    let t = Instant::now();
    let report = compare_every_process(core, os, truth);
    eprintln!("[{label}] every process compared in {:?}", t.elapsed());
    // The classic checks after the full comparison, whose report says more.
    let classic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check_all(label, core, os, truth);
    }));
    report.assert_clean(label);
    if let Err(e) = classic {
        std::panic::resume_unwind(e);
    }
}

/// The comparison is not vacuous: a truth with six planted differences (a VMA name, an
/// open file, a thread name, a namespaced pid, a start time, an environment variable)
/// gives exactly those six mismatches.
fn comparison_can_fail<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) {
    let mut t = truth.clone();
    let pid = |c: &str| t.task(c).unwrap_or_else(|| panic!("{c}")).pid;
    let (files, server, app) = (pid("vmi_files"), pid("vmi_server"), pid("vmi_ctr_app"));
    let p = t.processes.iter_mut().find(|p| p.pid == files).unwrap();
    let m = p.maps.iter_mut().find(|m| m.path.is_some()).unwrap();
    m.path = Some("/planted".into());
    p.fds[0].target = "/planted".into();
    p.environ.push("PLANTED=1".into());
    let s = t.tasks.iter_mut().find(|x| x.pid == server).unwrap();
    s.threads.last_mut().unwrap().comm = "planted".into();
    let a = t.tasks.iter_mut().find(|x| x.pid == app).unwrap();
    *a.ns_pid.last_mut().unwrap() += 1000;
    a.start_ticks = a.start_ticks.map(|x| x + 1);
    let report = compare_every_process(core, os, &t);
    let mut kinds: Vec<&str> = report
        .mismatches
        .iter()
        .filter(|m| !m.contains("layer only:") && !m.contains("/proc only:"))
        .map(|m| m.split(": ").nth(1).unwrap_or(""))
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        ["NSpid", "environ", "fds", "maps", "start time", "thread"],
        "[{label}] planted differences: {:?}",
        report.mismatches
    );
}

fn dump(label: &str, guest: &TestGuest, format: DumpFormat, file: &Path, cache: &Path) {
    guest.dump(format, file).expect("dump");
    let driver = match DumpDriver::open(file) {
        Ok(d) => d,
        Err(e @ VmiError::NotSupported { .. }) => {
            common::skip(&format!("[{label}] {format:?} dump: {e}"));
            return;
        }
        Err(e) => panic!("[{label}] opening the {format:?} dump: {e}"),
    };
    let note = driver.vmcoreinfo().map(str::to_owned);
    let core = VmiCore::new(driver).unwrap();
    let mut b = LinuxOs::builder()
        .cache_dir(cache)
        .registers_from(&core)
        .expect("registers");
    if let Some(n) = &note {
        b = b.vmcoreinfo(n.as_bytes());
    }
    let os = b.build(&core).expect("LinuxOs from dump");
    checks(&format!("{label}/{format:?}"), &core, &os, guest.truth());
    let _ = std::fs::remove_file(file);
}

/// The adversary reserved 64 TiB (and 16 PiB more under 5-level paging) of PROT_NONE
/// address space: a scan of its regions reads its real pages (the decoy arena among
/// them) and accounts for every reserved page without walking each one (2^34 walks and
/// more: hours; a hung CI run once met such a region, a stack VMA caught mid-exec).
fn scan_of_reserved_terabytes<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) {
    let adversary = truth.task("vmi_adversary").expect("vmi_adversary").pid;
    let maps = &truth
        .processes
        .iter()
        .find(|p| p.pid == adversary)
        .expect("adversary's maps")
        .maps;
    let reserved: u64 = maps
        .iter()
        .filter(|m| m.perms.starts_with("---") && m.end - m.start >= 1 << 40)
        .map(|m| m.end - m.start)
        .sum();
    assert!(reserved >= 64 << 40, "[{label}] reservations {maps:x?}");
    let t = Instant::now();
    let options = vmi_core::ScanOptions {
        chunk_size: 1 << 20,
        overlap: 0,
        threads: 2,
    };
    let scan = core
        .scan_processes(os, Some(&[u64::from(adversary)]), options, |_, _| {})
        .expect("scan of the adversary");
    eprintln!(
        "[{label}] scan of the adversary: {} regions, {} TiB reserved, {:?} in {:?}",
        scan.regions.len(),
        reserved >> 40,
        scan.summary,
        t.elapsed()
    );
    assert!(scan.skipped.is_empty(), "[{label}] {:?}", scan.skipped);
    // The 8 MiB arena, at least, is read.
    assert!(
        scan.summary.bytes_scanned >= 8 << 20,
        "[{label}] {:?}",
        scan.summary
    );
    assert!(
        scan.summary.pages_unreadable >= reserved / 4096,
        "[{label}] {:?}",
        scan.summary
    );
}

/// Boot the realistic userland with `cfg` and compare over every access path.
fn run(label: &str, cfg: GuestConfig) {
    let t0 = Instant::now();
    let Some(guest) = TestGuest::boot_or_skip(cfg.userland(Userland::Realistic)) else {
        return;
    };
    eprintln!(
        "[{label}] {} booted in {:.1} s; truth printer: {:?}",
        guest.truth().release,
        guest.env().boot_seconds,
        guest.truth().printed
    );
    assert!(
        guest.truth().warnings.is_empty(),
        "{:?}",
        guest.truth().warnings
    );
    guest.pause().expect("pause");
    let truth = guest.truth();
    let cache = guest.dir().join("profile-cache");

    let core =
        VmiCore::new(RamFile::open(guest.mem_file(), guest.env().mem_size).unwrap()).unwrap();
    let os = LinuxOs::builder()
        .cache_dir(&cache)
        .build(&core)
        .expect("LinuxOs from RAM");
    checks(&format!("{label}/raw"), &core, &os, truth);
    comparison_can_fail(label, &core, &os, truth);
    scan_of_reserved_terabytes(label, &core, &os, truth);
    drop((os, core));

    dump(
        label,
        &guest,
        DumpFormat::Elf,
        &guest.dir().join("dump.elf"),
        &cache,
    );
    dump(
        label,
        &guest,
        DumpFormat::KdumpZlib,
        &guest.dir().join("dump.kdump"),
        &cache,
    );

    let driver = QemuDriver::attach(guest.qmp_socket()).expect("attaching to QEMU");
    let core = VmiCore::new(driver).unwrap();
    let os = LinuxOs::builder()
        .cache_dir(&cache)
        .registers_from(&core)
        .expect("live registers")
        .build(&core)
        .expect("LinuxOs live");
    checks(&format!("{label}/live"), &core, &os, truth);
    guest.resume().expect("resume");
    eprintln!("[{label}] done in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn realistic_bookworm() {
    run("realistic-bookworm", GuestConfig::default());
}

#[test]
fn realistic_bullseye() {
    run(
        "realistic-bullseye",
        GuestConfig::default().kernel("bullseye:linux-image-cloud-amd64".parse().unwrap()),
    );
}

#[test]
fn realistic_trixie() {
    run(
        "realistic-trixie",
        GuestConfig::default().kernel("trixie:linux-image-cloud-amd64".parse().unwrap()),
    );
}

#[test]
fn realistic_bookworm_generic_five_level() {
    run(
        "realistic-generic-la57",
        GuestConfig::default()
            .cpu("max")
            .kernel("bookworm:linux-image-amd64".parse().unwrap()),
    );
}

#[test]
fn realistic_bookworm_rt_kpti() {
    run(
        "realistic-rt-kpti",
        GuestConfig::default()
            .cpu("qemu64,vendor=GenuineIntel")
            .kernel("bookworm:linux-image-rt-amd64".parse().unwrap()),
    );
}
