//! The reader against the builder's ground truth: every build, raw images, several seeds
//! and variants.

mod common;

use common::{check, core_of, image, open};
use vmi_core::{Va, VmiSession};
use vmi_os_windows::DiscoveryMethod;
use vmi_test_windows::{Discovery, Options, all_builds};

#[test]
fn every_build_from_registers() {
    for key in all_builds() {
        let img = image(key, Options::default());
        let core = core_of(&img, true);
        let os = open(key, &core, true);
        assert_eq!(os.kernel().method, DiscoveryMethod::Lstar, "{key}");
        check(&img.manifest, &core, &os);
        // Current thread/process via KPCR.
        let session = VmiSession::new(&core, &os);
        let regs = img.vcpu0();
        let t = os.current_win_thread(&core, &regs).unwrap();
        assert_eq!(
            t.ethread,
            Va(img.manifest.vcpu0.current_thread),
            "{key}: current thread"
        );
        let target = img.manifest.processes.last().unwrap();
        let p = vmi_core::VmiOs::current_process(&os, &core, &regs).unwrap();
        assert_eq!(p.pid, target.pid, "{key}: current process");
        assert!(
            session
                .os()
                .kernel_information_string()
                .unwrap()
                .starts_with("Windows NT")
        );
    }
}

#[test]
fn every_build_without_registers() {
    for key in all_builds() {
        let img = image(key, Options::default());
        let core = core_of(&img, false);
        let os = open(key, &core, false);
        let want = if img.manifest.nt_version.starts_with("6.1") {
            DiscoveryMethod::RsdsScan
        } else {
            DiscoveryMethod::LowStub
        };
        assert_eq!(os.kernel().method, want, "{key}");
        check(&img.manifest, &core, &os);
    }
}

#[test]
fn variants() {
    let cases: Vec<(&str, Options)> = vec![
        (
            "9C00B19DBDE003DBFE4AB4216993C843-1",
            Options {
                seed: 2,
                large_pages: true,
                ..Default::default()
            },
        ),
        (
            "0CE4A95C0CD782A7596B034D8648E585-1",
            Options {
                seed: 3,
                pcid: 2,
                noise: Some(9),
                ..Default::default()
            },
        ),
        (
            "22597D0B40394E23936F6A24C6C52D5B-1",
            Options {
                seed: 4,
                extra_handles: 300,
                ..Default::default()
            },
        ),
        (
            "8B11040A5928757B11390AC78F6B6925-1",
            Options {
                seed: 5,
                extra_handles: 600,
                noise: Some(1),
                ..Default::default()
            },
        ),
        (
            "339E74133576439CBCDF7E0229DA3773-1",
            Options {
                seed: 6,
                extra_handles: 260,
                ..Default::default()
            },
        ),
    ];
    for (key, o) in cases {
        let img = image(key, o.clone());
        if o.extra_handles > 254 {
            assert_eq!(
                img.manifest.processes.last().unwrap().handle_table_levels,
                1
            );
        }
        for regs in [true, false] {
            let core = core_of(&img, regs);
            let os = open(key, &core, regs);
            check(&img.manifest, &core, &os);
        }
    }
}

#[test]
fn discovery_without_low_stub() {
    // KDBG (crash-dump style), then nothing but the RSDS record.
    for (key, o, want) in [
        (
            "C2EADB24A615E9472CE47C8ADD31F130-1",
            Options {
                seed: 7,
                discovery: Discovery::Scan,
                kdbg: true,
                ..Default::default()
            },
            DiscoveryMethod::Kdbg,
        ),
        (
            "517E128F7B7C4EA79491DE6B9B9CE190-1",
            Options {
                seed: 8,
                discovery: Discovery::Scan,
                ..Default::default()
            },
            DiscoveryMethod::RsdsScan,
        ),
        (
            "35A038B1F6E2E8CAF642111E6EC66F57-1",
            Options {
                seed: 9,
                discovery: Discovery::Fixed,
                ..Default::default()
            },
            DiscoveryMethod::RsdsScan,
        ),
    ] {
        let img = image(key, o);
        let core = core_of(&img, false);
        let os = open(key, &core, false);
        assert_eq!(os.kernel().method, want, "{key}");
        check(&img.manifest, &core, &os);
    }
}

#[test]
fn every_build_as_crash_dump() {
    use vmi_driver_dump::{DumpDriver, DumpFormat, DumpOptions};
    for key in all_builds() {
        let img = image(
            key,
            Options {
                kdbg: true,
                ..Default::default()
            },
        );
        let driver = DumpDriver::from_bytes(img.crash_dump(), DumpOptions::default()).unwrap();
        assert_eq!(driver.format(), DumpFormat::WindowsCrashDump);
        let core = vmi_core::VmiCore::new(driver).unwrap();
        let kernel = vmi_os_windows::find_kernel(&core).unwrap_or_else(|e| panic!("{key}: {e}"));
        let profile = common::profile(key, &kernel.codeview);
        let os = vmi_os_windows::WindowsOs::from_kernel(&core, profile, kernel).unwrap();
        check(&img.manifest, &core, &os);
    }
}

#[test]
fn kva_shadow_user_cr3() {
    for key in [
        "5F0CF5D532F385333A9B4ABA25CA6596-1",
        "32C1A669D5FFEFD41091F636CFDB6E99-1",
    ] {
        let img = image(
            key,
            Options {
                seed: 11,
                kva_shadow: true,
                pcid: 1,
                ..Default::default()
            },
        );
        let v = &img.manifest.vcpu0;
        assert_ne!(v.cr3 & !0xFFF, v.kernel_cr3 & !0xFFF);
        // The user CR3 does not map the kernel image header.
        assert_eq!(
            img.translate(v.cr3 & !0xFFF, img.manifest.kernel.base),
            None
        );
        assert!(img.translate(v.cr3 & !0xFFF, v.lstar).is_some());
        let core = core_of(&img, true);
        let os = open(key, &core, true);
        assert_eq!(os.kernel().method, DiscoveryMethod::Lstar, "{key}");
        check(&img.manifest, &core, &os);
        let regs = img.vcpu0();
        let t = os.current_win_thread(&core, &regs).unwrap();
        assert_eq!(t.ethread, Va(v.current_thread), "{key}");
    }
}

/// Issue 18: `WindowsOs::builder()` discovers like `LinuxOs::builder()`. On a crash dump
/// (a saved context without LSTAR or IDTR) the registers give no kernel and memory is
/// scanned instead; the profile comes from a symbol path naming a directory of ISFs (then
/// from the profile cache alone), or an ISF file; without any source the error names the
/// kernel found.
#[test]
fn builder_finds_kernel_and_profile() {
    use vmi_driver_dump::{DumpDriver, DumpOptions};
    use vmi_os_windows::WindowsOs;
    let key = "9C00B19DBDE003DBFE4AB4216993C843-1";
    let img = image(
        key,
        Options {
            kdbg: true,
            ..Default::default()
        },
    );
    let driver = DumpDriver::from_bytes(img.crash_dump(), DumpOptions::default()).unwrap();
    let core = vmi_core::VmiCore::new(driver).unwrap();
    let cache = std::env::temp_dir().join(format!("vmi-os-windows-builder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let isf_dir = vmi_test_windows::isf_dir();
    let os = WindowsOs::builder()
        .registers_from(&core)
        .unwrap()
        .symbol_path(isf_dir.display().to_string())
        .cache_dir(&cache)
        .build(&core)
        .unwrap();
    assert_eq!(os.kernel().base.0, img.manifest.kernel.base);
    check(&img.manifest, &core, &os);

    // The profile is now in the cache: found with no source configured at all.
    let cached = WindowsOs::builder()
        .symbol_path("")
        .cache_dir(&cache)
        .build(&core)
        .unwrap();
    assert_eq!(cached.profile().metadata.pdb, os.profile().metadata.pdb);

    // An ISF file, and a raw image without registers.
    let file = vmi_test_windows::isf_path(key);
    let raw = vmi_core::VmiCore::new(img.driver_without_registers()).unwrap();
    let os = WindowsOs::builder()
        .isf(&file)
        .no_cache()
        .build(&raw)
        .unwrap();
    check(&img.manifest, &raw, &os);

    // No source, no cache: the error says the kernel was found and what is missing.
    let empty = cache.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = WindowsOs::builder()
        .symbol_path(empty.display().to_string())
        .no_cache()
        .build(&core)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("found the Windows kernel ntkrnlmp.pdb {key}, but")),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}
