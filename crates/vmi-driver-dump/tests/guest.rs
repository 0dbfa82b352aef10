//! Real dumps of the real test guest, checked against its RAM file (copied while the guest
//! was paused), its registers (`info registers` before the dump) and its own account of
//! itself (the truth block: `uname -r`, the kernel banner).
//!
//! ELF and kdump-zlib (flattened) come from QMP `dump-guest-memory`; raw is the RAM file;
//! LiME is built here from it; makedumpfile turns our ELF writer's output into zlib, LZO,
//! snappy and zstd dumps (as far as the installed build supports them), a filtered dump
//! (`-d 31`) and a flattened one (`-F`, and back with `-R`).
//!
//! Without QEMU the test prints `SKIPPED` (fails with `VMI_REQUIRE_GUEST=1`).

use std::path::Path;
use std::process::Command;

use vmi_core::{
    Gfn, PageAbsence, VcpuId, VmiCore, VmiDriver, VmiError, VmiQueryRegisters, VmiRead,
};
use vmi_driver_dump::{DumpDriver, DumpFormat, ElfCoreOptions, build_lime, write_elf_core};
use vmi_test_guest::{DumpFormat as QmpDump, GuestConfig, TestGuest};

/// A hex register value from HMP `info registers` (`RIP=ffff...`).
fn hmp_register(text: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    let at = text
        .find(&key)
        .unwrap_or_else(|| panic!("{name} not in info registers:\n{text}"));
    let hex: String = text[at + key.len()..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect();
    u64::from_str_radix(&hex, 16).expect("hex register")
}

/// Every page of `ram` (the RAM file, GPA = offset) through `d`: equal where `d` has it.
/// Returns (pages equal, pages excluded, pages not in dump).
fn compare_with_ram(d: &DumpDriver, ram: &[u8], name: &str) -> (u64, u64, u64) {
    let mut buf = vec![0u8; 4096];
    let (mut same, mut excluded, mut absent) = (0, 0, 0);
    for (pfn, want) in ram.chunks_exact(4096).enumerate() {
        match d.read_page(Gfn(pfn as u64), 0, &mut buf) {
            Ok(()) => {
                assert!(
                    buf == want,
                    "{name}: frame {pfn:#x} differs from the RAM file"
                );
                same += 1;
            }
            Err(VmiError::PageUnavailable {
                reason: PageAbsence::Excluded,
                ..
            }) => excluded += 1,
            Err(VmiError::PageUnavailable {
                reason: PageAbsence::NotInDump,
                ..
            }) => absent += 1,
            Err(e) => panic!("{name}: frame {pfn:#x}: {e}"),
        }
    }
    (same, excluded, absent)
}

fn makedumpfile_features() -> Option<String> {
    let out = Command::new("makedumpfile").arg("-v").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn makedumpfile(args: &[&str], dir: &Path) {
    let out = Command::new("makedumpfile")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run makedumpfile");
    assert!(
        out.status.success(),
        "makedumpfile {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn real_guest_dumps_in_every_format() {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    let dir = guest.dir().join("dumps");
    std::fs::create_dir_all(&dir).unwrap();
    let truth = guest.truth().clone();

    // A consistent state: pause, note the registers, dump, copy the RAM file.
    guest.pause().unwrap();
    let regs_text = guest.hmp("info registers").unwrap();
    let (rip, cr3) = (
        hmp_register(&regs_text, "RIP"),
        hmp_register(&regs_text, "CR3"),
    );
    let (elf_path, kdump_path, raw_path) = (
        dir.join("guest.elf"),
        dir.join("guest.kdump"),
        dir.join("guest.raw"),
    );
    guest.dump(QmpDump::Elf, &elf_path).unwrap();
    guest.dump(QmpDump::KdumpZlib, &kdump_path).unwrap();
    std::fs::copy(guest.mem_file(), &raw_path).unwrap();
    guest.resume().unwrap();
    let ram = std::fs::read(&raw_path).unwrap();

    // The kernel banner in RAM: its address is known from the RAM file, its text from the
    // guest's /proc/version.
    let banner = truth.version.as_bytes();
    let banner_pa = ram
        .windows(banner.len())
        .position(|w| w == banner)
        .expect("the guest's banner in its RAM") as u64;

    let raw = DumpDriver::open(&raw_path).unwrap();
    let elf = DumpDriver::open(&elf_path).unwrap();
    let kdump = DumpDriver::open(&kdump_path).unwrap();
    assert_eq!(raw.format(), DumpFormat::Raw);
    assert_eq!(elf.format(), DumpFormat::Elf);
    assert_eq!(kdump.format(), DumpFormat::Kdump);
    assert!(
        kdump.kdump_header().unwrap().flattened,
        "QEMU writes flattened kdump"
    );

    for path in [&raw_path, &elf_path, &kdump_path] {
        let d = DumpDriver::open(path).unwrap();
        let name = d.format().name();
        let info = d.info().unwrap();
        assert_eq!(info.kind, name);
        assert!(!info.live && !info.cache_pages);
        let (same, excluded, absent) = compare_with_ram(&d, &ram, name);
        assert_eq!(
            (same, excluded, absent),
            (ram.len() as u64 / 4096, 0, 0),
            "{name}: every RAM page"
        );
        // Bytes at a known address, through the core.
        let core = VmiCore::new(d).unwrap();
        let mut text = vec![0u8; banner.len()];
        core.read_physical(vmi_core::Pa(banner_pa), &mut text)
            .unwrap();
        assert_eq!(text, banner, "{name}: banner");
    }
    // Registers and VMCOREINFO from QEMU's notes (ELF and kdump).
    for d in [&elf, &kdump] {
        let name = d.format().name();
        assert_eq!(d.info().unwrap().vcpus, 1, "{name}");
        let r = d.registers(VcpuId(0)).unwrap();
        assert_eq!(
            (r.rip, r.cr3.0),
            (rip, cr3),
            "{name}: RIP and CR3 of vCPU 0"
        );
        assert!(d.has_control_registers());
        assert_eq!(
            r.efer, 0,
            "{name}: QEMU's notes have no EFER; we do not invent it"
        );
        let vmci = d.vmcoreinfo().expect("VMCOREINFO");
        assert!(
            vmci.contains(&format!("OSRELEASE={}\n", truth.release)),
            "{name}: {vmci:.80}"
        );
    }
    assert!(matches!(
        raw.registers(VcpuId(0)),
        Err(VmiError::NotSupported { .. })
    ));
    assert_eq!(kdump.kdump_header().unwrap().machine, "x86_64");
    // QEMU's ELF also holds the BIOS ROM; both QEMU dumps agree on it.
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    elf.read_page(Gfn(0xffff0), 0, &mut a).unwrap();
    kdump.read_page(Gfn(0xffff0), 0, &mut b).unwrap();
    assert_eq!(a, b, "BIOS ROM page");

    // LiME built from the raw file.
    let lime = DumpDriver::from_bytes(build_lime(&[(0, &ram)]), Default::default()).unwrap();
    assert_eq!(lime.format(), DumpFormat::Lime);
    assert_eq!(
        compare_with_ram(&lime, &ram, "lime").0,
        ram.len() as u64 / 4096
    );

    // Our ELF writer: RAM + QEMU's registers + VMCOREINFO; reopened page by page.
    let regs = vec![elf.registers(VcpuId(0)).unwrap()];
    let ours_path = dir.join("ours.elf");
    let file = std::fs::File::create(&ours_path).unwrap();
    write_elf_core(
        &raw,
        &ElfCoreOptions {
            registers: Some(&regs),
            vmcoreinfo: elf.vmcoreinfo(),
        },
        file,
        |_| {},
    )
    .unwrap();
    let ours = DumpDriver::open(&ours_path).unwrap();
    assert_eq!(ours.registers(VcpuId(0)).unwrap(), regs[0]);
    assert_eq!(ours.vmcoreinfo(), elf.vmcoreinfo());
    assert_eq!(
        compare_with_ram(&ours, &ram, "ours").0,
        ram.len() as u64 / 4096
    );
    // Volatility 3 (the project's venv, when setup installed it) opens our ELF core and
    // finds the guest's banners at physical addresses where the RAM file has them too.
    let vol = vmi_test_guest::cache::workspace_root().join("target/venv/bin/vol");
    if vol.exists() {
        let out = Command::new(&vol)
            .args(["-q", "-f"])
            .arg(&ours_path)
            .arg("banners.Banners")
            .output()
            .expect("run vol");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut found = 0;
        for line in text.lines().filter(|l| l.starts_with("0x")) {
            let (offset, banner) = line.split_once('\t').unwrap_or((line, ""));
            let pa = u64::from_str_radix(offset.trim_start_matches("0x"), 16).unwrap() as usize;
            let prefix = format!("Linux version {}", truth.release);
            assert!(banner.starts_with(&prefix), "{line}");
            assert_eq!(&ram[pa..pa + prefix.len()], prefix.as_bytes(), "{line}");
            found += 1;
        }
        assert!(
            found > 0,
            "Volatility 3 found no banner in our ELF core:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!(
            "SKIPPED: Volatility 3 check of the ELF writer: {} not found (scripts/setup.sh installs it)",
            vol.display()
        );
    }
    drop((raw, lime, kdump));
    let _ = std::fs::remove_file(&kdump_path);
    let _ = std::fs::remove_file(&elf_path);

    // makedumpfile's variants of our ELF.
    let Some(features) = makedumpfile_features() else {
        assert!(
            !vmi_test_guest::guest::guest_required(),
            "VMI_REQUIRE_GUEST=1 but makedumpfile is not installed"
        );
        eprintln!(
            "SKIPPED: makedumpfile variants: makedumpfile not installed (apt-get install makedumpfile)"
        );
        return;
    };
    let enabled = |what: &str| features.contains(&format!("{what}\tenabled"));
    let mut variants: Vec<(&str, Vec<&str>)> = vec![("zlib", vec!["-c", "-d", "0"])];
    for (name, flag, what) in [
        ("lzo", "-l", "lzo"),
        ("snappy", "-p", "snappy"),
        ("zstd", "-z", "zstd"),
    ] {
        if enabled(what) {
            variants.push((name, vec![flag, "-d", "0"]));
        } else {
            eprintln!("SKIPPED: makedumpfile {flag}: this makedumpfile build has {what} disabled");
        }
    }
    for (name, flags) in &variants {
        let out = format!("md-{name}.kdump");
        let mut args = flags.clone();
        args.extend(["ours.elf", &out]);
        makedumpfile(&args, &dir);
        let d = DumpDriver::open(dir.join(&out)).unwrap();
        assert_eq!(d.kdump_header().unwrap().release, truth.release, "{name}");
        assert_eq!(d.vmcoreinfo(), ours.vmcoreinfo(), "{name}");
        assert_eq!(d.registers(VcpuId(0)).unwrap().rip, rip, "{name}");
        let (same, _, _) = compare_with_ram(&d, &ram, name);
        assert_eq!(same, ram.len() as u64 / 4096, "{name}: every page");
        let _ = std::fs::remove_file(dir.join(&out));
    }
    // Filtered: excluded pages are errors, the rest equal the RAM file.
    makedumpfile(&["-c", "-d", "31", "ours.elf", "md-d31.kdump"], &dir);
    let d = DumpDriver::open(dir.join("md-d31.kdump")).unwrap();
    let (same, excluded, _) = compare_with_ram(&d, &ram, "d31");
    assert!(
        same > 1000 && excluded > 1000,
        "d31: {same} kept, {excluded} excluded"
    );
    assert_eq!(d.kdump_header().unwrap().dump_level, 31);
    drop(d);
    // Flattened (-F) and reassembled (-R).
    let flat = std::fs::File::create(dir.join("md-flat.kdump")).unwrap();
    let status = Command::new("makedumpfile")
        .args(["-F", "-c", "-d", "0", "ours.elf"])
        .current_dir(&dir)
        .stdout(flat)
        .stderr(std::process::Stdio::null()) // progress bars
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("makedumpfile")
        .args(["-R", "md-R.kdump"])
        .current_dir(&dir)
        .stdin(std::fs::File::open(dir.join("md-flat.kdump")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    for (name, flattened) in [("md-flat.kdump", true), ("md-R.kdump", false)] {
        let d = DumpDriver::open(dir.join(name)).unwrap();
        assert_eq!(d.kdump_header().unwrap().flattened, flattened);
        assert_eq!(compare_with_ram(&d, &ram, name).0, ram.len() as u64 / 4096);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
