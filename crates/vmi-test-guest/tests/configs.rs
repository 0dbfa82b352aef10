//! Boots every guest configuration the OS-level tests need and checks that its truth
//! parses and is sane. Skips (visibly) without QEMU unless `VMI_REQUIRE_GUEST=1`.

use std::path::Path;

use serde_json::json;
use vmi_test_guest::{DumpFormat, ENV_MARKER, GuestConfig, TestGuest, Truth, Userland};

const FOUR_G: u64 = 1 << 32;

/// Checks every configuration must pass.
fn sanity(g: &TestGuest) {
    let t = g.truth();
    let env = g.env();
    eprintln!(
        "booted {} ({}, cpu {}, smp {}, {} MiB) in {:.1} s",
        t.release,
        env.accel,
        env.cpu,
        env.smp,
        env.mem_size >> 20,
        env.boot_seconds
    );
    assert_eq!(t.release, env.kernel_release);
    assert!(
        t.version
            .starts_with(&format!("Linux version {}", t.release)),
        "{}",
        t.version
    );
    assert_eq!(t.hostname, "vmiguest");
    assert_eq!(t.cmdline, env.cmdline);
    assert!(t.uptime_seconds > 0.0);
    assert_eq!(t.ncpus, env.smp);
    assert!(
        t.unknown_lines.is_empty(),
        "unknown truth lines: {:?}",
        t.unknown_lines
    );

    // tasks: init, kernel threads, and the marked processes with the right tree
    let init = t.tasks.iter().find(|x| x.pid == 1).expect("pid 1");
    assert_eq!((init.ppid, init.tgid, init.uid), (0, 1, 0));
    assert!(t.task("kthreadd").is_some_and(|k| k.pid == 2));
    assert!(t.tasks.len() > 20, "only {} tasks", t.tasks.len());
    for x in &t.tasks {
        assert!(!x.comm.is_empty() && !x.state.is_empty(), "{x:?}");
    }
    let sleeper = t.process("vmi_sleeper").expect("vmi_sleeper");
    assert!(sleeper.environ.iter().any(|e| e == ENV_MARKER));
    assert_eq!(sleeper.argv, ["sleep", "100000"]);
    assert!(sleeper.arg_start < sleeper.arg_end && sleeper.arg_end <= sleeper.env_start);
    assert!(sleeper.env_start < sleeper.env_end);
    // argv strings are NUL-terminated in memory: the length matches exactly
    let argv_len: usize = sleeper.argv.iter().map(|a| a.len() + 1).sum();
    assert_eq!(sleeper.arg_end - sleeper.arg_start, argv_len as u64);
    let mapper = t.process("vmi_mapper").expect("vmi_mapper");
    assert!(
        mapper
            .maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/bin/vmi_mapper") && m.perms.contains('x'))
    );
    assert!(
        mapper
            .maps
            .iter()
            .any(|m| m.path.as_deref() == Some("[stack]"))
    );
    assert!(
        mapper
            .fds
            .iter()
            .any(|f| f.fd == 3 && f.target == "/etc/vmi-fd-target")
    );
    let parent = t.task("vmi_parent").expect("vmi_parent");
    let kids: Vec<_> = t
        .children_of(parent.pid)
        .into_iter()
        .filter(|c| c.comm == "vmi_child")
        .collect();
    assert_eq!(kids.len(), 2, "children of vmi_parent: {kids:?}");
    assert!(t.task("vmi_loop").is_some());
    let user = t.task("vmi_user").expect("vmi_user");
    assert_eq!(user.uid, 1000);
    assert_eq!(
        t.process("vmi_user").map(|p| p.argv.clone()),
        Some(vec!["sleep".into(), "100004".into()])
    );

    // modules, symbols, memory map
    assert!(
        t.modules
            .iter()
            .any(|m| m.name == "qemu_fw_cfg" && m.state == "Live" && m.address >> 48 == 0xffff)
    );
    for s in [
        "_text",
        "_stext",
        "init_task",
        "linux_banner",
        "init_top_pgt",
        "page_offset_base",
    ] {
        let a = t.ksym(s).unwrap_or_else(|| panic!("ksym {s}"));
        assert!(a >= 0xffff_ffff_8000_0000, "{s} {a:#x}");
    }
    assert_eq!(
        t.ksym("_text").unwrap_or(1) % (2 << 20),
        0,
        "_text 2 MiB aligned"
    );
    let ram_bytes: u64 = t.system_ram().iter().map(|(a, b)| b - a + 1).sum();
    assert!(
        ram_bytes > env.mem_size / 2 && ram_bytes <= env.mem_size,
        "{ram_bytes:#x}"
    );
    assert!(
        t.iomem
            .iter()
            .any(|r| r.name == "Kernel code" && r.depth == 1)
    );

    // VMCOREINFO read back from the RAM file at the note the guest reported
    let vi = t.vmcoreinfo.as_deref().expect("vmcoreinfo text");
    assert_eq!(
        t.vmcoreinfo_value("OSRELEASE"),
        Some(t.release.as_str()),
        "{vi}"
    );
    let stext = t
        .vmcoreinfo_value("SYMBOL(_stext)")
        .expect("SYMBOL(_stext)");
    assert_eq!(u64::from_str_radix(stext, 16).ok(), t.ksym("_stext"));
    assert!(!t.dmesg_tail.is_empty());

    // host access paths
    let mem = std::fs::metadata(g.mem_file()).expect("RAM file");
    assert_eq!(mem.len(), env.mem_size);
    assert!(g.vmlinux().is_file() && g.vmlinuz().is_file());
    assert!(std::fs::read(g.vmlinux()).unwrap().starts_with(b"\x7fELF"));
    let st = g
        .qmp(json!({"execute": "query-status"}))
        .expect("query-status");
    assert_eq!(st["status"], "running");
    let from_json: Truth =
        serde_json::from_slice(&std::fs::read(&env.truth_json).expect("truth.json"))
            .expect("truth.json parses");
    assert_eq!(&from_json, t);
}

/// The extracted vmlinux names a `.BTF` section (types for the OS layer).
fn assert_vmlinux_has_btf(g: &TestGuest) {
    let elf = std::fs::read(g.vmlinux()).expect("vmlinux");
    assert!(
        elf.windows(6).any(|w| w == b"\0.BTF\0"),
        "no .BTF section name in vmlinux"
    );
}

fn boot(cfg: GuestConfig) -> Option<TestGuest> {
    TestGuest::boot_or_skip(cfg)
}

#[test]
fn default_config_is_4_level_with_kaslr() {
    let Some(g) = boot(GuestConfig::default()) else {
        return;
    };
    sanity(&g);
    assert_vmlinux_has_btf(&g);
    let t = g.truth();
    assert!(!t.nokaslr());
    assert!(!t.five_level_paging());
    assert!(!t.kpti());
    assert!(t.vmcoreinfo_value("KERNELOFFSET").is_some());
    // The banner is in guest RAM (the kernel image is identity-mapped into the file).
    let ram = std::fs::read(g.mem_file()).expect("read RAM");
    let banner = t.version.as_bytes();
    assert!(
        ram.windows(banner.len()).any(|w| w == banner),
        "linux_banner not in RAM"
    );
    drop(ram);
    // pause/resume, HMP, and a dump
    g.pause().expect("stop");
    assert_eq!(
        g.qmp(json!({"execute": "query-status"})).unwrap()["status"],
        "paused"
    );
    let regs = g.hmp("info registers").expect("info registers");
    assert!(regs.contains("CR3="), "{regs}");
    g.resume().expect("cont");
    let out = g.dir().join("dump.elf");
    g.dump(DumpFormat::Elf, &out).expect("dump");
    let head = std::fs::read(&out)
        .map(|b| b[..4].to_vec())
        .unwrap_or_default();
    assert_eq!(head, b"\x7fELF");
    std::fs::remove_file(&out).ok();
}

#[test]
fn cpu_max_uses_5_level_paging() {
    let Some(g) = boot(GuestConfig::default().cpu("max")) else {
        return;
    };
    sanity(&g);
    let t = g.truth();
    assert!(t.cpu_flags.iter().any(|f| f == "la57"), "{:?}", t.cpu_flags);
    assert_eq!(t.vmcoreinfo_value("NUMBER(pgtable_l5_enabled)"), Some("1"));
    assert!(t.five_level_paging());
}

#[test]
fn intel_vendor_enables_kpti() {
    let Some(g) = boot(GuestConfig::default().cpu("qemu64,vendor=GenuineIntel")) else {
        return;
    };
    sanity(&g);
    let t = g.truth();
    assert!(
        t.kpti(),
        "meltdown: {:?}; boot: {:?}",
        t.cpu_vulnerabilities.get("meltdown"),
        t.boot_messages
    );
    assert!(!t.five_level_paging());
}

#[test]
fn nokaslr_loads_at_link_address_and_dumps_kallsyms() {
    let Some(g) = boot(GuestConfig::default().kaslr(false).kallsyms(true)) else {
        return;
    };
    sanity(&g);
    let t = g.truth();
    assert!(t.nokaslr());
    assert_eq!(t.ksym("_text"), Some(0xffff_ffff_8100_0000));
    assert_eq!(t.ksym("page_offset_base").map(|_| ()), Some(()));
    let path = t.kallsyms_path.as_deref().expect("kallsyms file");
    let text = std::fs::read_to_string(path).expect("kallsyms.txt");
    assert!(
        text.lines().count() > 50_000,
        "{} lines",
        text.lines().count()
    );
    let init_task = format!("{:016x} D init_task", t.ksym("init_task").unwrap_or(0));
    assert!(text.lines().any(|l| l == init_task), "{init_task}");
}

#[test]
fn smp2_and_cleanup_after_panic() {
    let Some(g) = boot(GuestConfig::default().smp(2)) else {
        return;
    };
    let env = g.env().clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        sanity(&g);
        assert_eq!(g.truth().ncpus, 2);
        panic!("deliberate panic: the guest must still be stopped");
    }));
    let msg = r.expect_err("the closure panics");
    assert_eq!(
        msg.downcast_ref::<&str>().copied(),
        Some("deliberate panic: the guest must still be stopped"),
        "sanity checks failed instead"
    );
    assert!(
        !env.qemu_running(),
        "QEMU {} still running after panic",
        env.qemu_pid
    );
    assert!(
        !env.mem_file.exists(),
        "{} left behind",
        env.mem_file.display()
    );
    // Drop keeps a panicking guest's directory for inspection; this panic was deliberate.
    std::fs::remove_dir_all(&env.dir).ok();
}

#[test]
fn mem_3072_splits_ram_around_the_pci_hole() {
    let Some(g) = boot(GuestConfig::default().mem_mb(3072)) else {
        return;
    };
    sanity(&g);
    let t = g.truth();
    let ram = t.system_ram();
    assert!(ram.iter().any(|&(a, _)| a >= FOUR_G), "{ram:x?}");
    assert!(
        ram.iter().all(|&(a, b)| b < 0x8000_0000 || a >= FOUR_G),
        "{ram:x?}"
    );
    // the file offset of the first byte above 4 GiB is 2 GiB
    assert_eq!(
        vmi_test_guest::gpa_to_file_offset(g.env().mem_size, FOUR_G),
        Some(0x8000_0000)
    );
}

#[test]
fn trixie_6_12_cloud_kernel_boots() {
    let spec = "trixie:linux-image-cloud-amd64".parse().expect("spec");
    let Some(g) = boot(GuestConfig::default().kernel(spec)) else {
        return;
    };
    sanity(&g);
    assert!(
        g.truth().release.starts_with("6.12."),
        "{}",
        g.truth().release
    );
    assert!(Path::new(&g.env().vmlinux).is_file());
}

/// What the realistic userland adds: every process detailed, and each production-shaped
/// process as designed.
fn realistic_sanity(g: &TestGuest) {
    let t = g.truth();
    assert_eq!(g.env().userland, Userland::Realistic);
    assert_eq!(t.userland.as_deref(), Some("realistic"));
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    eprintln!(
        "realistic truth: {} tasks, {} processes, {} maps lines; printer: {:?}",
        t.tasks.len(),
        t.processes.len(),
        t.processes.iter().map(|p| p.maps.len()).sum::<usize>(),
        t.printed
    );
    let printer = t.printer_pid.expect("printer pid");
    assert!(!t.blocked_by_design(printer));
    for task in &t.tasks {
        assert!(task.gid.is_some() && !task.ns_pid.is_empty(), "{task:?}");
        assert!(!task.threads.is_empty(), "{task:?}");
        assert!(t.process_by_pid(task.pid).is_some(), "no details: {task:?}");
        if t.blocked_by_design(task.pid) {
            for th in &task.threads {
                assert!(th.state == "S" || th.state == "Z", "{task:?}");
            }
        }
    }
    let by_comm = |c: &str| t.task(c).unwrap_or_else(|| panic!("{c} missing"));
    let details = |c: &str| t.process(c).unwrap_or_else(|| panic!("{c} missing"));
    for c in [
        "vmi_sleeper",
        "vmi_server",
        "vmi_manyvma",
        "vmi_files",
        "vmi_zombie",
        "vmi_ctr_app",
        "vmi_cat",
        "dropbear",
    ] {
        assert!(t.blocked_by_design(by_comm(c).pid), "{c} not blocked");
    }
    assert!(!t.blocked_by_design(by_comm("vmi_loop").pid));

    let server = by_comm("vmi_server");
    let names: Vec<&str> = server.threads.iter().map(|x| x.comm.as_str()).collect();
    assert!(server.threads.len() >= 10, "{names:?}");
    assert!(names.contains(&"worker-7") && names.contains(&"unix-accept"));
    let sockets = details("vmi_server")
        .fds
        .iter()
        .filter(|f| f.target.starts_with("socket:["))
        .count();
    assert!(sockets >= 4, "{sockets} sockets");
    let py = details("vmi_server");
    assert!(
        py.maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/usr/bin/python3.11"))
    );
    assert!(
        py.maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/lib/x86_64-linux-gnu/libc.so.6"))
    );

    let many = details("vmi_manyvma");
    assert!(many.maps.len() > 1000, "{} VMAs", many.maps.len());

    let files = details("vmi_files");
    let fd = |target: &str| files.fds.iter().any(|f| f.target.starts_with(target));
    for want in [
        "/memfd:vmi-memfd (deleted)",
        "/tmp/vmi-deleted-open.dat (deleted)",
        "/tmp/vmi-deleted-mapped.dat (deleted)",
        "/tmp/vmi-shared.dat",
        "pipe:[",
        "socket:[",
        "anon_inode:[eventfd]",
        "anon_inode:[eventpoll]",
        "anon_inode:[timerfd]",
        "anon_inode:inotify",
    ] {
        assert!(fd(want), "vmi_files has no fd {want}: {:?}", files.fds);
    }
    let map = |path: &str| files.maps.iter().find(|m| m.path.as_deref() == Some(path));
    for want in [
        "/memfd:vmi-memfd (deleted)",
        "/tmp/vmi-deleted-mapped.dat (deleted)",
        "/dev/zero (deleted)",
        "[heap]",
        "[stack]",
        "[vdso]",
    ] {
        assert!(map(want).is_some(), "vmi_files maps no {want}");
    }
    assert_eq!(
        map("/tmp/vmi-shared.dat").map(|m| m.perms.as_str()),
        Some("rw-s")
    );
    let config = std::fs::read_to_string(&g.env().kernel_config).unwrap_or_default();
    let named = config.lines().any(|l| l == "CONFIG_ANON_VMA_NAME=y");
    for n in ["[anon:vmi-anon-a]", "[anon:vmi-anon-b]"] {
        assert_eq!(
            map(n).is_some(),
            named,
            "{n} (CONFIG_ANON_VMA_NAME={named})"
        );
    }

    let zparent = by_comm("vmi_zparent");
    let zombie = by_comm("vmi_zombie");
    assert_eq!((zombie.state.as_str(), zombie.ppid), ("Z", zparent.pid));
    assert!(details("vmi_zombie").maps.is_empty());
    assert_eq!(by_comm("vmi_orphan").ppid, 1);

    let ctr_init = by_comm("vmi_ctr_init");
    let app = by_comm("vmi_ctr_app");
    assert_eq!(ctr_init.ns_pid, [ctr_init.pid, 1]);
    assert_eq!(app.ns_pid.len(), 2);
    assert_ne!(app.ns_pid[1], app.pid);
    assert_eq!(app.ppid, ctr_init.pid);
    assert_eq!(t.hostname_of(app.pid), Some("vmictr"));
    assert_eq!(t.hostname_of(1), Some("vmiguest"));
    assert_ne!(
        app.namespaces.get("mnt"),
        by_comm("init").namespaces.get("mnt")
    );
    // chroot'ed into /srv: its files as it sees them
    let app_details = details("vmi_ctr_app");
    assert_eq!(app_details.root.as_deref(), Some("/srv"));
    assert!(app_details.fds.iter().any(|f| f.target == "/data/ctr-data"));
    assert!(
        app_details
            .maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/usr/bin/python3.11"))
    );

    let fileless = t
        .processes
        .iter()
        .find(|p| p.exe.as_deref() == Some("/memfd:vmi-fileless (deleted)"))
        .expect("the fileless process");
    assert!(t.blocked_by_design(fileless.pid));
    assert!(
        fileless.maps.iter().any(
            |m| m.perms == "r-xp" && m.path.as_deref() == Some("/memfd:vmi-fileless (deleted)")
        )
    );
    assert_eq!(
        details("vmi_delexe").exe.as_deref(),
        Some("/tmp/vmi_delexe (deleted)")
    );
    assert!(t.blocked_by_design(by_comm("vmi_delexe").pid));

    let bash = by_comm("vmi_userbash");
    assert_eq!((bash.uid, bash.gid), (1000, Some(1000)));
    assert_eq!(by_comm("vmi_cat").ppid, bash.pid);
    assert!(
        details("vmi_userbash")
            .maps
            .iter()
            .any(|m| m.path.as_deref() == Some("/bin/bash"))
    );
    assert!(
        details("dropbear")
            .fds
            .iter()
            .any(|f| f.target.starts_with("socket:["))
    );
    assert!(
        g.env().boot_seconds < 60.0,
        "realistic boot took {:.1} s",
        g.env().boot_seconds
    );
}

#[test]
fn realistic_userland_on_bookworm() {
    let Some(g) = boot(GuestConfig::default().userland(Userland::Realistic)) else {
        return;
    };
    sanity(&g);
    realistic_sanity(&g);
}

#[test]
fn realistic_userland_on_trixie() {
    let spec = "trixie:linux-image-cloud-amd64".parse().expect("spec");
    let Some(g) = boot(
        GuestConfig::default()
            .kernel(spec)
            .userland(Userland::Realistic),
    ) else {
        return;
    };
    sanity(&g);
    realistic_sanity(&g);
}

#[test]
fn qemu_failure_is_reported_and_cleaned_up() {
    if !vmi_test_guest::qemu_available_or_skip() {
        return;
    }
    let dir =
        vmi_test_guest::cache::guests_base_dir().join(format!("bad-cpu-{}", std::process::id()));
    let err = TestGuest::boot(GuestConfig::default().cpu("no-such-cpu").dir(&dir))
        .expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("qemu exited during boot") && msg.contains("no-such-cpu"),
        "{msg}"
    );
    let env = vmi_test_guest::GuestEnv::load(&dir).expect("guest.env of the failed boot is kept");
    assert!(!env.qemu_running());
    assert!(
        !env.mem_file.exists(),
        "{} left behind",
        env.mem_file.display()
    );
    std::fs::remove_dir_all(&dir).ok();
}
