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

/// The entry at `at` of the RAM file.
fn ram_u64(ram: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(ram.get(at..at + 8)?.try_into().ok()?))
}

/// The truth for a virtual address: a 4-level walk over the RAM file, written here.
fn ram_translate(ram: &[u8], cr3: u64, va: u64) -> Option<u64> {
    const MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & MASK;
    for shift in [39u32, 30, 21, 12] {
        let entry = ram_u64(ram, table + ((va >> shift) & 0x1ff) * 8)?;
        if entry & 1 == 0 {
            return None;
        }
        if shift == 12 || (shift != 39 && entry & 0x80 != 0) {
            let size = 1u64 << shift;
            return Some((entry & MASK & !(size - 1)) | (va & (size - 1)));
        }
        table = entry & MASK;
    }
    None
}

/// Virtual addresses of present leaves under `cr3` (a sample, in RAM).
fn ram_leaves(ram: &[u8], cr3: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut stack = vec![(cr3 & 0x000f_ffff_ffff_f000, 39u32, 0u64)];
    while let Some((table, shift, base)) = stack.pop() {
        for i in 0..512u64 {
            let Some(entry) = ram_u64(ram, table + i * 8) else {
                break;
            };
            if entry & 1 == 0 {
                continue;
            }
            let va = base | (i << shift);
            if shift == 12 || (shift != 39 && entry & 0x80 != 0) {
                out.push(((va << 16) as i64 >> 16) as u64);
            } else if out.len() < 1 << 16 {
                stack.push((entry & 0x000f_ffff_ffff_f000, shift - 9, va));
            }
        }
    }
    out
}

/// `VmiCore::read_batch` over a real dump: seeded random physical ranges (some across
/// pages, some beyond RAM) and virtual ones through vCPU 0's CR3 (mapped and not),
/// against the RAM file and a walk of its page tables written in this test.
fn check_batch(core: &VmiCore<DumpDriver>, ram: &[u8], cr3: u64, name: &str) {
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    use vmi_core::{AccessContext, Pa};
    let mut rng = SmallRng::seed_from_u64(17);
    let leaves = ram_leaves(ram, cr3);
    assert!(leaves.len() > 100, "{name}: page tables under CR3");
    let mut requests: Vec<(AccessContext, usize)> = Vec::new();
    for _ in 0..2000 {
        let len = [8usize, 64, 4096, 9000][rng.gen_range(0..4)];
        requests.push(match rng.gen_range(0..10) {
            0..=4 => (
                AccessContext::direct(Pa(rng.gen_range(0..ram.len() as u64 - 9000))),
                len,
            ),
            5 => (AccessContext::direct(Pa(ram.len() as u64 - 16)), 32), // runs off the end
            _ => {
                let va = leaves[rng.gen_range(0..leaves.len())] + rng.gen_range(0..4096);
                let va = if rng.gen_range(0..8) == 0 {
                    va ^ (1 << 40)
                } else {
                    va
                };
                (AccessContext::paging(vmi_core::Va(va), Pa(cr3)), len)
            }
        });
    }
    let mut bufs: Vec<Vec<u8>> = requests.iter().map(|&(_, n)| vec![0; n]).collect();
    let mut batch: Vec<(AccessContext, &mut [u8])> = requests
        .iter()
        .zip(bufs.iter_mut())
        .map(|(&(ctx, _), b)| (ctx, &mut b[..]))
        .collect();
    let results = core.read_batch(&mut batch);
    let (mut ok, mut failed) = (0, 0);
    for (i, (&(ctx, len), result)) in requests.iter().zip(&results).enumerate() {
        // The truth, byte by byte: how far the request is readable, and what it holds.
        let translated = |k: usize| -> Option<u64> {
            let at = ctx.address.wrapping_add(k as u64);
            match ctx.mechanism {
                vmi_core::TranslationMechanism::Direct => Some(at),
                vmi_core::TranslationMechanism::Paging { root } => ram_translate(ram, root.0, at),
            }
        };
        let byte_pa = |k: usize| translated(k).filter(|&pa| pa < ram.len() as u64);
        // A virtual range that reaches memory the RAM file does not have (the ELF and
        // kdump files also hold the BIOS ROM) has no truth here: skipped.
        if matches!(ctx.mechanism, vmi_core::TranslationMechanism::Paging { .. })
            && (0..len).any(|k| translated(k).is_some_and(|pa| pa >= ram.len() as u64))
        {
            continue;
        }
        let readable = (0..len).take_while(|&k| byte_pa(k).is_some()).count();
        let want: Vec<u8> = (0..readable)
            .map(|k| ram[byte_pa(k).unwrap() as usize])
            .collect();
        match result {
            Ok(()) => {
                assert_eq!(
                    readable, len,
                    "{name}: request {i} {ctx} read past the truth"
                );
                assert!(bufs[i] == want, "{name}: request {i} {ctx} bytes");
                ok += 1;
            }
            Err(VmiError::PartialAccess { completed, .. }) => {
                assert_eq!(*completed, readable, "{name}: request {i} {ctx}");
                assert!(
                    bufs[i][..readable] == want[..],
                    "{name}: request {i} prefix"
                );
                failed += 1;
            }
            Err(e) => {
                assert_eq!(readable, 0, "{name}: request {i} {ctx}: {e}");
                assert!(e.is_memory_unavailable(), "{name}: request {i}: {e}");
                failed += 1;
            }
        }
    }
    assert!(
        ok > 1000 && failed > 100,
        "{name}: {ok} read, {failed} failed"
    );
}

/// A parallel scan of the whole dump (3 threads sharing one core; for kdump, one page
/// cache of decompressed pages) finds the kernel banner exactly where the RAM file has it.
fn check_parallel_scan(core: &VmiCore<DumpDriver>, ram: &[u8], banner: &[u8], name: &str) {
    use std::sync::Mutex;
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<VmiCore<DumpDriver>>();
    let truth: Vec<u64> = ram
        .windows(banner.len())
        .enumerate()
        .filter(|(_, w)| *w == banner)
        .map(|(i, _)| i as u64)
        .collect();
    let found = Mutex::new(Vec::new());
    let options = vmi_core::ScanOptions {
        chunk_size: 1 << 20,
        overlap: banner.len() - 1,
        threads: 3,
    };
    let summary = core
        .scan_physical(options, |chunk| {
            let mut at = 0;
            while let Some(i) = chunk.bytes[at..].iter().position(|&b| b == banner[0]) {
                let i = at + i;
                if i >= chunk.owned {
                    break;
                }
                if chunk.bytes[i..].starts_with(banner) {
                    found.lock().unwrap().push(chunk.ctx.address + i as u64);
                }
                at = i + 1;
            }
        })
        .unwrap();
    let mut found = found.into_inner().unwrap();
    found.sort_unstable();
    assert!(!truth.is_empty());
    assert_eq!(found, truth, "{name}: banners");
    assert!(
        summary.bytes_scanned >= ram.len() as u64,
        "{name}: {summary:?}"
    );
    assert_eq!(summary.pages_unreadable, 0, "{name}");
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
        check_batch(&core, &ram, cr3, name);
        if name != "elf" {
            check_parallel_scan(&core, &ram, banner, name);
        }
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
        let out = vmi_test_guest::volatility_command(&vol, &ours_path.with_extension("vol-cache"))
            .arg("-f")
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
