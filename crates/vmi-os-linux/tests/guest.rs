//! The OS layer against the live test guest, one boot per configuration, every check
//! over each way of reaching the guest: its RAM file (raw, no registers), its ELF dump
//! (VMCOREINFO note + registers), its kdump dump, and the live guest through QEMU.
//!
//! The busybox userland, for the configurations of paging, CPUs, memory and KASLR; the
//! kernel flavours (bookworm generic and RT, trixie's default) run on the realistic
//! userland in `realistic.rs`, with every process compared.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{RamFile, check_all};
use vmi_arch_amd64::Amd64;
use vmi_core::{Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_driver_dump::DumpDriver;
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::{LinuxOs, ProfileOrigin, VmcoreinfoOrigin};
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Truth};

/// Checks that need registers: the register cross-checks and the current task of each
/// vCPU (from GS base and from `__per_cpu_offset`, which must agree).
fn check_registers<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
    live: bool,
) {
    let k = os.kernel();
    assert_eq!(
        k.register_checks.len(),
        truth.ncpus as usize,
        "[{label}] vcpus"
    );
    for c in &k.register_checks {
        assert!(c.paging_mode_agrees, "[{label}] LA57 vs memory: {c:?}");
        assert_eq!(c.idt_agrees, Some(true), "[{label}] IDT gate 0: {c:?}");
        assert_ne!(c.lstar_agrees, Some(false), "[{label}] LSTAR: {c:?}");
    }
    for cpu in 0..truth.ncpus {
        let from_regs = os.current_task(core, cpu).expect("current task");
        let from_table = os
            .per_cpu_base(core, cpu)
            .and_then(|b| {
                os.current_task_from_registers(
                    core,
                    &vmi_arch_amd64::Registers {
                        gs_base: b.0,
                        ..Default::default()
                    },
                )
            })
            .expect("current task from __per_cpu_offset");
        eprintln!(
            "[{label}] cpu{cpu}: current {} {} (per-cpu table: {} {})",
            from_regs.pid, from_regs.comm, from_table.pid, from_table.comm
        );
        if !live {
            assert_eq!(
                from_regs.task, from_table.task,
                "[{label}] current task of cpu{cpu}"
            );
        }
        if from_regs.pid == 0 {
            assert_eq!(
                from_regs.comm,
                format!("swapper/{cpu}"),
                "[{label}] idle task"
            );
        }
    }
}

fn dump_checks(label: &str, guest: &TestGuest, format: DumpFormat, file: &Path, cache: &Path) {
    let truth = guest.truth();
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
    let t = Instant::now();
    let mut b = LinuxOs::builder()
        .cache_dir(cache)
        .registers_from(&core)
        .expect("registers");
    if let Some(n) = &note {
        b = b.vmcoreinfo(n.as_bytes());
    }
    let os = b.build(&core).expect("LinuxOs from dump");
    eprintln!("[{label}] {format:?} dump: {:?}", t.elapsed());
    if note.is_some() {
        assert_eq!(os.kernel().vmcoreinfo_origin, VmcoreinfoOrigin::Given);
    }
    check_all(&format!("{label}/{format:?}"), &core, &os, truth);
    check_registers(&format!("{label}/{format:?}"), &core, &os, truth, false);
    let _ = std::fs::remove_file(file);
}

/// The guest-physical address of kernel virtual address `va`.
fn kernel_pa<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>, os: &LinuxOs, va: u64) -> Pa {
    // A fresh core walks 4 levels until told otherwise (LinuxOs tells its own core).
    core.set_paging_mode(os.kernel().paging_mode);
    core.translate((Va(va), os.kernel().kernel_root).into())
        .unwrap_or_else(|e| panic!("translating {va:#x}: {e}"))
        .pa
}

/// A kernel without usable BTF (its magic corrupted in a patched view of the RAM file)
/// cannot be read from memory alone: the error says so and names the files that replace it.
fn kernel_without_btf_names_the_files_to_give(label: &str, guest: &TestGuest, os: &LinuxOs) {
    let env = guest.env();
    let core = VmiCore::new(RamFile::open(guest.mem_file(), env.mem_size).unwrap()).unwrap();
    let start = os.symbol_address("__start_BTF").expect("__start_BTF").0;
    let magic = kernel_pa(&core, os, start);
    let core = VmiCore::new(
        RamFile::open(guest.mem_file(), env.mem_size)
            .unwrap()
            .patched(magic, &[0, 0]),
    )
    .unwrap();
    let Err(err) = LinuxOs::builder().no_cache().build(&core) else {
        panic!("[{label}] a kernel whose BTF is unreadable was accepted");
    };
    let text = err.to_string();
    eprintln!("[{label}] without BTF: {text}");
    for flag in ["--kernel", "--system-map", "--profile", "BTF"] {
        assert!(text.contains(flag), "[{label}] {flag} not in: {text}");
    }
}

/// kallsyms tables planted where the search must not look (the kernel's writable `.bss`,
/// and physical memory outside the image) are never taken: with the real tables intact the
/// real ones are found; with the real token index wiped, discovery fails instead of taking
/// a planted copy. Only for kernels whose VMCOREINFO does not list the tables (< 6.0).
fn kallsyms_planted_outside_rodata_are_not_taken(label: &str, guest: &TestGuest, os: &LinuxOs) {
    if os.vmcoreinfo().symbol("kallsyms_names").is_some() {
        return;
    }
    let env = guest.env();
    let plain = || RamFile::open(guest.mem_file(), env.mem_size).unwrap();
    let core = VmiCore::new(plain()).unwrap();
    // The tables' link-time addresses from the vmlinux, moved by the slide.
    let data = std::fs::read(guest.vmlinux()).expect("vmlinux");
    let elf = vmi_profile::image::Vmlinux::parse(&data, "vmlinux").expect("vmlinux ELF");
    let t = vmi_profile::linux::kallsyms_from_vmlinux(&elf)
        .expect("kallsyms of the vmlinux")
        .tables;
    let slide = os.kernel().kaslr_offset;
    let lo = [t.offsets, t.addresses, Some(t.num_syms)]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
    let hi = t.token_index + 512;
    let (lo, hi) = (lo.wrapping_add(slide), hi.wrapping_add(slide));
    let len = (hi - lo) as usize;
    let mut block = vec![0u8; len];
    core.read(
        vmi_core::AccessContext::paging(Va(lo), os.kernel().kernel_root),
        &mut block,
    )
    .expect("reading the real tables");
    // Same alignment within a page, so that every alignment check of the search passes.
    let bss = os.symbol_address("__bss_start").expect("__bss_start").0 + (lo & 0xfff);
    let planted_bss = kernel_pa(&core, os, bss);
    // And in physical memory outside the image.
    let image = kernel_pa(&core, os, os.kernel().text.expect("_text").0).0
        ..kernel_pa(&core, os, os.symbol_address("_end").expect("_end").0 - 1).0;
    let planted_phys = [env.mem_size / 2, env.mem_size / 4]
        .into_iter()
        .map(|p| Pa((p & !0xfff) + (lo & 0xfff)))
        .find(|p| !image.contains(&p.0) && !image.contains(&(p.0 + len as u64)))
        .expect("room for a planted copy outside the image");
    let planted = |r: RamFile| r.patched(planted_bss, &block).patched(planted_phys, &block);

    let core = VmiCore::new(planted(plain())).unwrap();
    let with_decoys = LinuxOs::builder()
        .no_cache()
        .build(&core)
        .expect("the real tables with decoys planted");
    let at = format!(
        "found by structure at {:#x}",
        t.token_table.wrapping_add(slide)
    );
    assert!(
        with_decoys
            .profile()
            .metadata
            .sources
            .iter()
            .any(|s| s.contains(&at)),
        "[{label}] {:?} (want {at})",
        with_decoys.profile().metadata.sources
    );

    let wiped = kernel_pa(&core, os, t.token_index.wrapping_add(slide));
    let core = VmiCore::new(planted(plain()).patched(wiped, &[0xff; 512])).unwrap();
    let Err(err) = LinuxOs::builder().no_cache().build(&core) else {
        panic!("[{label}] planted kallsyms tables were taken");
    };
    let text = err.to_string();
    eprintln!("[{label}] real tables wiped, decoys planted: {text}");
    assert!(text.contains("--system-map"), "[{label}] {text}");
}

/// On kernels whose VMCOREINFO lists the kallsyms tables (6.0+), the search by structure
/// that older kernels need finds the same tables and the same symbols when those lines are
/// taken out of VMCOREINFO (an independent check of the search on 6.1's and 6.12's layouts).
fn kallsyms_search_agrees_with_vmcoreinfo(label: &str, guest: &TestGuest, os: &LinuxOs) {
    let (Some(token_table), VmcoreinfoOrigin::Scanned(at)) = (
        os.vmcoreinfo().symbol("kallsyms_token_table"),
        os.kernel().vmcoreinfo_origin,
    ) else {
        return;
    };
    let env = guest.env();
    let core = VmiCore::new(RamFile::open(guest.mem_file(), env.mem_size).unwrap()).unwrap();
    let mut text = vec![0u8; 4096];
    core.read(vmi_core::AccessContext::direct(at), &mut text)
        .expect("reading VMCOREINFO");
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let stripped: String = String::from_utf8_lossy(&text[..end])
        .lines()
        .filter(|l| !l.contains("kallsyms"))
        .map(|l| format!("{l}\n"))
        .collect();
    let searched = LinuxOs::builder()
        .no_cache()
        .vmcoreinfo(stripped)
        .build(&core)
        .unwrap_or_else(|e| panic!("[{label}] kallsyms by structure: {e}"));
    eprintln!(
        "[{label}] kallsyms without VMCOREINFO's tables: {:?}",
        searched.profile().metadata.sources
    );
    let want = format!("found by structure at {token_table:#x}");
    assert!(
        searched
            .profile()
            .metadata
            .sources
            .iter()
            .any(|s| s.contains(&want)),
        "[{label}] {:?} (want {want})",
        searched.profile().metadata.sources
    );
    let kallsyms = |os: &LinuxOs| -> Vec<(String, u64)> {
        os.profile()
            .symbols
            .iter()
            .filter(|s| s.kind.is_some())
            .map(|s| (s.name.clone(), s.address))
            .collect()
    };
    assert_eq!(kallsyms(&searched), kallsyms(os), "[{label}] symbols");
}

/// Boots `cfg` and runs every check over every access path.
/// A parallel scan of every process's regions (issue 17) finds `vmi_sleeper`'s
/// environment marker where the guest's `/proc` says its environment is: at
/// `mm->env_start`, after the variables before it.
fn process_scan_finds_the_environment_marker<D: VmiRead<Architecture = Amd64>>(
    label: &str,
    core: &VmiCore<D>,
    os: &LinuxOs,
    truth: &Truth,
) {
    use std::sync::Mutex;
    let (_, value) = vmi_test_guest::ENV_MARKER.split_once('=').unwrap();
    let (pid, at) = truth.env_marker_address().expect("vmi_sleeper in truth");
    let want = (u64::from(pid), at);
    let value = value.as_bytes();
    let found = Mutex::new(Vec::new());
    let t = Instant::now();
    let options = vmi_core::ScanOptions {
        chunk_size: 256 << 10,
        overlap: value.len() - 1,
        threads: 2,
    };
    let scan = core
        .scan_processes(os, None, options, |region, chunk| {
            for (i, w) in chunk.bytes.windows(value.len()).enumerate() {
                if i < chunk.owned && w == value {
                    let at = chunk.ctx.address + i as u64;
                    found.lock().unwrap().push((
                        region.pid,
                        at,
                        region.region.start,
                        region.region.end,
                    ));
                }
            }
        })
        .expect("process scan");
    let found = found.into_inner().unwrap();
    eprintln!(
        "[{label}] process scan: {} regions, {:?}, {} skipped, {:?}",
        scan.regions.len(),
        scan.summary,
        scan.skipped.len(),
        t.elapsed()
    );
    let hit = found
        .iter()
        .find(|&&(pid, at, _, _)| (pid, at) == want)
        .unwrap_or_else(|| panic!("[{label}] marker at {want:x?} not among {found:x?}"));
    assert!(
        hit.2.0 <= want.1 && want.1 < hit.3.0,
        "[{label}] in its region {hit:x?}"
    );
    assert!(scan.summary.bytes_scanned > 0);
}

fn run(label: &str, cfg: GuestConfig) {
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    guest.pause().expect("pause");
    let truth = guest.truth();
    let env = guest.env();
    let cache = guest.dir().join("profile-cache");

    // Raw RAM file, no registers: the VMCOREINFO scan; profile from memory, then cache.
    let core = VmiCore::new(RamFile::open(guest.mem_file(), env.mem_size).unwrap()).unwrap();
    let t = Instant::now();
    let os = LinuxOs::builder()
        .cache_dir(&cache)
        .build(&core)
        .expect("LinuxOs from RAM");
    eprintln!("[{label}] raw, profile from memory: {:?}", t.elapsed());
    assert_eq!(os.kernel().profile_origin, ProfileOrigin::Memory);
    assert!(matches!(
        os.kernel().vmcoreinfo_origin,
        VmcoreinfoOrigin::Scanned(_)
    ));
    check_all(&format!("{label}/raw"), &core, &os, truth);
    process_scan_finds_the_environment_marker(label, &core, &os, truth);
    kernel_without_btf_names_the_files_to_give(label, &guest, &os);
    kallsyms_planted_outside_rodata_are_not_taken(label, &guest, &os);
    kallsyms_search_agrees_with_vmcoreinfo(label, &guest, &os);
    // Without registers, the current task comes from __per_cpu_offset.
    for cpu in 0..truth.ncpus {
        os.current_task(&core, cpu)
            .expect("current task without registers");
    }
    let core = VmiCore::new(RamFile::open(guest.mem_file(), env.mem_size).unwrap()).unwrap();
    let t = Instant::now();
    let os = LinuxOs::builder()
        .cache_dir(&cache)
        .build(&core)
        .expect("LinuxOs from cache");
    eprintln!("[{label}] raw, profile from cache: {:?}", t.elapsed());
    assert!(matches!(
        os.kernel().profile_origin,
        ProfileOrigin::Cache(_)
    ));
    check_all(&format!("{label}/raw-cached"), &core, &os, truth);

    // Dumps.
    dump_checks(
        label,
        &guest,
        DumpFormat::Elf,
        &guest.dir().join("dump.elf"),
        &cache,
    );
    dump_checks(
        label,
        &guest,
        DumpFormat::KdumpZlib,
        &guest.dir().join("dump.kdump"),
        &cache,
    );

    // Live, through QEMU (paused by the harness for a consistent view).
    match QemuDriver::attach(guest.qmp_socket()) {
        Ok(driver) => {
            let core = VmiCore::new(driver).unwrap();
            let os = LinuxOs::builder()
                .cache_dir(&cache)
                .registers_from(&core)
                .expect("live registers")
                .build(&core)
                .expect("LinuxOs live");
            check_all(&format!("{label}/live"), &core, &os, truth);
            check_registers(&format!("{label}/live"), &core, &os, truth, true);
        }
        Err(e) => panic!("[{label}] attaching to QEMU: {e}"),
    }
    guest.resume().expect("resume");
}

#[test]
fn bookworm_default() {
    run("default", GuestConfig::default());
}

#[test]
fn bookworm_five_level() {
    run("cpu-max", GuestConfig::default().cpu("max"));
}

#[test]
fn bookworm_kpti() {
    run(
        "kpti",
        GuestConfig::default().cpu("qemu64,vendor=GenuineIntel"),
    );
}

#[test]
fn bookworm_nokaslr() {
    run("nokaslr", GuestConfig::default().kaslr(false));
}

#[test]
fn bookworm_smp2() {
    run("smp2", GuestConfig::default().smp(2));
}

#[test]
fn bookworm_3g() {
    run("3g", GuestConfig::default().mem_mb(3072));
}

#[test]
fn trixie_five_level_smp2() {
    run(
        "trixie-max-smp2",
        GuestConfig::default()
            .cpu("max")
            .smp(2)
            .kernel("trixie:linux-image-cloud-amd64".parse().unwrap()),
    );
}

#[test]
fn bullseye_default() {
    run(
        "bullseye",
        GuestConfig::default().kernel("bullseye:linux-image-cloud-amd64".parse().unwrap()),
    );
}

/// 5.10 with page-table isolation (an Intel CPU model without the Meltdown fix). Debian
/// 11's kernels are built without `CONFIG_X86_5LEVEL`, so 5.10 has no 5-level variant.
#[test]
fn bullseye_kpti() {
    run(
        "bullseye-kpti",
        GuestConfig::default()
            .cpu("qemu64,vendor=GenuineIntel")
            .kernel("bullseye:linux-image-cloud-amd64".parse().unwrap()),
    );
}

/// Debian 11's generic 5.10 kernel (XZ-compressed bzImage), two vCPUs.
#[test]
fn bullseye_generic_smp2() {
    run(
        "bullseye-generic-smp2",
        GuestConfig::default()
            .smp(2)
            .kernel("bullseye:linux-image-amd64".parse().unwrap()),
    );
}
