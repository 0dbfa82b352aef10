//! Hostile images: corrupted lists, pointers, headers and truncated memory give errors,
//! never a panic or a hang.

mod common;

use common::{core_of, image, open};
use vmi_core::{Va, VmiCore, VmiError};
use vmi_os_windows::{LdrList, WindowsOs, find_kernel, find_kernel_from_registers, windows_error};
use vmi_test_windows::{GuestImage, ImageDriver, Options};

const KEY: &str = "9C00B19DBDE003DBFE4AB4216993C843-1";

fn off(os: &WindowsOs, t: &str, f: &str) -> u64 {
    os.profile().offset_of(t, f).unwrap()
}

/// Runs every operation; returns how many failed. Must not panic.
fn exercise(core: &VmiCore<ImageDriver>, os: &WindowsOs) -> usize {
    let mut errors = 0;
    let mut note = |r: Result<(), VmiError>| errors += usize::from(r.is_err());
    note(os.kernel_modules(core).map(drop));
    let procs = match os.win_processes(core) {
        Ok(p) => p,
        Err(_) => return errors + 1,
    };
    for p in &procs {
        note(os.win_threads(core, p).map(drop));
        note(os.image_path(core, p).map(drop));
        note(os.command_line(core, p).map(drop));
        note(os.environment(core, p).map(drop));
        for l in [LdrList::Load, LdrList::Memory, LdrList::Init] {
            note(os.user_modules(core, p, l).map(drop));
        }
        note(os.vads(core, p).map(drop));
        note(os.handles(core, p).map(drop));
        note(os.token(core, p).map(drop));
    }
    errors
}

fn opened(img: &GuestImage) -> (VmiCore<ImageDriver>, WindowsOs) {
    let core = core_of(img, true);
    let os = open(KEY, &core, true);
    (core, os)
}

#[test]
fn process_list_cycle_is_reported() {
    let mut img = image(KEY, Options::default());
    let (_, os) = opened(&img);
    let links = off(&os, "_EPROCESS", "ActiveProcessLinks");
    let m = img.manifest.clone();
    // The last process's Flink points back to the second one: a cycle without the head.
    let (second, last) = (
        m.processes[1].eprocess + links,
        m.processes[3].eprocess + links,
    );
    assert!(img.patch_kernel(last, &second.to_le_bytes()));
    let (core, os) = opened(&img);
    match os.win_processes(&core) {
        Err(VmiError::WalkLimit {
            reason: "cycle", ..
        }) => {}
        other => panic!("expected a cycle, got {other:?}"),
    }
}

#[test]
fn module_list_cycle_and_null_flink() {
    let mut img = image(KEY, Options::default());
    let first = img.manifest.kernel_modules[0].entry;
    // InLoadOrderLinks is at offset 0 of the loader entry: the entry points to itself.
    assert!(img.patch_kernel(first, &first.to_le_bytes()));
    let (core, os) = opened(&img);
    assert!(matches!(
        os.kernel_modules(&core),
        Err(VmiError::WalkLimit {
            reason: "cycle",
            ..
        })
    ));
    assert!(img.patch_kernel(first, &0u64.to_le_bytes()));
    let (core, os) = opened(&img);
    assert!(matches!(
        os.kernel_modules(&core),
        Err(VmiError::Malformed { .. })
    ));
}

#[test]
fn garbage_pointers_are_errors() {
    let mut img = image(KEY, Options::default());
    let (_, os) = opened(&img);
    let m = img.manifest.clone();
    let t = &m.processes[3];
    let thread_head = t.eprocess + off(&os, "_EPROCESS", "ThreadListHead");
    assert!(img.patch_kernel(thread_head, &0xFFFF_8000_DEAD_B000u64.to_le_bytes()));
    let vad_root = off(&os, "_EPROCESS", "VadRoot");
    assert!(img.patch_kernel(
        t.eprocess + vad_root,
        &0x4141_4141_4141_4141u64.to_le_bytes()
    ));
    let ot = off(&os, "_EPROCESS", "ObjectTable");
    assert!(img.patch_kernel(
        m.processes[2].eprocess + ot,
        &0xFFFF_F6FB_7DBE_D000u64.to_le_bytes()
    ));
    let (core, os) = opened(&img);
    let p = os.win_process(&core, t.pid).unwrap();
    assert!(os.win_threads(&core, &p).is_err());
    assert!(os.vads(&core, &p).is_err());
    let csrss = os.win_process(&core, m.processes[2].pid).unwrap();
    assert!(os.handles(&core, &csrss).is_err());
    assert!(exercise(&core, &os) >= 3);
}

#[test]
fn peb_on_an_unmapped_page() {
    let mut img = image(KEY, Options::default());
    let (_, os) = opened(&img);
    let t = img.manifest.processes[3].clone();
    assert!(img.patch_kernel(
        t.eprocess + off(&os, "_EPROCESS", "Peb"),
        &0x0000_0012_3400_0000u64.to_le_bytes()
    ));
    let (core, os) = opened(&img);
    let p = os.win_process(&core, t.pid).unwrap();
    let e = os.image_path(&core, &p).unwrap_err();
    assert!(
        e.is_memory_unavailable() || windows_error(&e).is_some(),
        "{e}"
    );
    assert!(os.user_modules(&core, &p, LdrList::Load).is_err());
    // Everything else still works.
    assert_eq!(os.win_processes(&core).unwrap().len(), 4);
    assert_eq!(os.win_threads(&core, &p).unwrap().len(), 2);
}

#[test]
fn zero_type_index_and_wrong_cookie_keep_the_handles() {
    let mut img = image(KEY, Options::default());
    let (core, os) = opened(&img);
    let target = img.manifest.processes[3].clone();
    let p = os.win_process(&core, target.pid).unwrap();
    let before = os.handles(&core, &p).unwrap();
    // A stored TypeIndex of 0 (Volatility would skip the handle; we must not).
    let body_off = off(&os, "_OBJECT_HEADER", "Body");
    let ti = off(&os, "_OBJECT_HEADER", "TypeIndex");
    let event = target.handles[0].object;
    assert!(img.patch_kernel(event - body_off + ti, &[0]));
    let (core, os) = opened(&img);
    let after = os.handles(&core, &p).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after[0].object, before[0].object);
    assert_eq!(after[1..], before[1..]);
    // A wrong cookie: every type is decoded wrong, but nothing is lost or panics.
    let cookie = img.manifest.kernel.cookie.unwrap();
    let at = os.kernel().base.0 + os.profile().symbol_address("ObHeaderCookie").unwrap();
    assert!(img.patch_kernel(at, &[cookie ^ 0x5A]));
    let (core, os) = opened(&img);
    let wrong = os.handles(&core, &p).unwrap();
    assert_eq!(wrong.len(), before.len());
    assert!(
        wrong
            .iter()
            .zip(&before)
            .any(|(a, b)| a.type_name != b.type_name)
    );
}

#[test]
fn truncated_images() {
    let img = image(KEY, Options::default());
    for size in [
        0usize, 0x1000, 0x20_0000, 0x200_0000, 0x280_0000, 0x300_0000,
    ] {
        let bytes = img.raw()[..size].to_vec();
        let core = VmiCore::new(ImageDriver::new(bytes.clone(), Some(img.vcpu0()))).unwrap();
        let regs = img.vcpu0();
        if let Ok(k) = find_kernel_from_registers(&core, &regs) {
            let p = common::profile(KEY, &k.codeview);
            if let Ok(os) = WindowsOs::from_kernel(&core, p, k) {
                exercise(&core, &os);
            }
        }
        let core = VmiCore::new(ImageDriver::new(bytes, None)).unwrap();
        assert!(
            find_kernel(&core).is_err() || size > 0x200_0000,
            "size {size:#x}"
        );
    }
}

#[test]
fn seeded_random_corruption_never_panics() {
    let base = image(KEY, Options::default());
    let (_, os0) = opened(&base);
    let profile = std::sync::Arc::new(os0.profile().clone());
    let kernel = os0.kernel().clone();
    // Corrupt the pages that hold the guest's objects (used frames above the page tables).
    let used: Vec<u64> = (0x1A_B000..base.raw().len() as u64)
        .step_by(0x1000)
        .filter(|&pa| base.frame_used(pa) && !(0x200_0000..0x300_0000).contains(&pa))
        .collect();
    let mut rng = vmi_test_windows::Rng::new(42);
    for _ in 0..60 {
        let mut img = base.clone();
        for _ in 0..400 {
            let pa = used[rng.range(0, used.len() as u64) as usize] + rng.range(0, 0x1000);
            img.raw_mut()[pa as usize] = rng.next() as u8;
        }
        let core = core_of(&img, true);
        if let Ok(os) =
            WindowsOs::from_kernel(&core, std::sync::Arc::clone(&profile), kernel.clone())
        {
            exercise(&core, &os);
        }
        let _ = Va(0);
    }
}

/// Issue 14: one bad `EPROCESS` link made `ps` an error. The listings now keep every object
/// they can reach (the walk resumes backwards from the head) and report what they skipped,
/// as the Linux layer does; the `win_*` methods stay all-or-nothing.
#[test]
fn hostile_one_bad_link_costs_only_what_it_hides() {
    let mut img = image(KEY, Options::default());
    let (_, os) = opened(&img);
    let m = img.manifest.clone();
    let links = off(&os, "_EPROCESS", "ActiveProcessLinks");
    let all: Vec<u64> = m.processes.iter().map(|p| p.pid).collect();
    // A garbage Flink in the second process, a session pointer into nowhere in the third.
    assert!(img.patch_kernel(
        m.processes[1].eprocess + links,
        &0x4141_4141_4141_4140u64.to_le_bytes()
    ));
    assert!(img.patch_kernel(
        m.processes[2].eprocess + off(&os, "_EPROCESS", "Session"),
        &0xFFFF_8000_DEAD_0000u64.to_le_bytes()
    ));
    // A thread list whose first Flink is broken.
    let t = &m.processes[3];
    let thread_links = off(&os, "_ETHREAD", "ThreadListEntry");
    assert!(t.threads.len() >= 2);
    assert!(img.patch_kernel(
        t.threads[0].ethread + thread_links,
        &0xFFFF_8000_DEAD_1000u64.to_le_bytes()
    ));
    let (core, os) = opened(&img);
    let list = os.process_list(&core).unwrap();
    let got: Vec<u64> = list.items.iter().map(|p| p.pid).collect();
    let want: Vec<u64> = all
        .iter()
        .copied()
        .filter(|&pid| pid != m.processes[2].pid)
        .collect();
    assert_eq!(got, want, "{:?}", list.skipped);
    assert_eq!(list.skipped.len(), 2, "{:?}", list.skipped);
    assert_eq!(list.skipped[0].0, Va(m.processes[1].eprocess + links));
    assert_eq!(list.skipped[1].0, Va(m.processes[2].eprocess));
    assert!(
        os.win_processes(&core).is_err(),
        "all-or-nothing stays strict"
    );
    // The VmiOs view and the lookup by pid use what could be read.
    let p3 = os.win_process(&core, t.pid).unwrap();
    let threads = os.thread_list(&core, &p3).unwrap();
    let tids: Vec<u64> = threads.items.iter().map(|t| t.tid).collect();
    let want: Vec<u64> = t.threads.iter().map(|t| t.tid).collect();
    assert_eq!(tids, want, "the tail is recovered backwards");
    assert_eq!(threads.skipped.len(), 1, "{:?}", threads.skipped);
    assert!(os.win_threads(&core, &p3).is_err());

    // A VAD whose left child is garbage: that subtree is lost and reported, the rest kept.
    let mut img = image(KEY, Options::default());
    let vad_root = os.profile().offset_of("_EPROCESS", "VadRoot").unwrap();
    let (core0, _) = opened(&img);
    let root = core0
        .read_u64(vmi_core::AccessContext::paging(
            Va(t.eprocess + vad_root),
            os.kernel_root(),
        ))
        .unwrap();
    let left = ["VadNode.Left", "LeftChild"]
        .iter()
        .find_map(|f| os.profile().offset_of("_MMVAD_SHORT", f).ok())
        .unwrap();
    assert!(img.patch_kernel(root + left, &0xFFFF_8000_DEAD_2000u64.to_le_bytes()));
    let (core, os) = opened(&img);
    let p3 = os.win_process(&core, t.pid).unwrap();
    let vads = os.vad_list(&core, &p3).unwrap();
    assert!(!vads.items.is_empty());
    assert!(
        vads.items.len() < t.vads.len(),
        "{} of {}",
        vads.items.len(),
        t.vads.len()
    );
    assert_eq!(vads.skipped.len(), 1, "{:?}", vads.skipped);
    assert_eq!(vads.skipped[0].0, Va(0xFFFF_8000_DEAD_2000));
    assert!(os.vads(&core, &p3).is_err());
    // Every VAD listed is one of the process's.
    let starts: std::collections::BTreeSet<u64> = t.vads.iter().map(|v| v.start).collect();
    assert!(vads.items.iter().all(|v| starts.contains(&v.start.0)));
}

/// Issue 14: guest values in address arithmetic. A `TableCode` near the top of the address
/// space overflowed `TableCode + i * 8`; a Windows 7 `EndingVpn` of 2^64-1 overflowed
/// `EndingVpn + 1` (panics in debug and test builds, wrapped in release).
#[test]
fn hostile_table_code_and_ending_vpn_do_not_overflow() {
    const KEYS: [&str; 10] = [
        "0CE4A95C0CD782A7596B034D8648E585-1",
        "22597D0B40394E23936F6A24C6C52D5B-1",
        "32C1A669D5FFEFD41091F636CFDB6E99-1",
        "339E74133576439CBCDF7E0229DA3773-1",
        "35A038B1F6E2E8CAF642111E6EC66F57-1",
        "517E128F7B7C4EA79491DE6B9B9CE190-1",
        "5F0CF5D532F385333A9B4ABA25CA6596-1",
        "8B11040A5928757B11390AC78F6B6925-1",
        "9C00B19DBDE003DBFE4AB4216993C843-1",
        "C2EADB24A615E9472CE47C8ADD31F130-1",
    ];
    let mut win7 = 0;
    for key in KEYS {
        let mut img = image(key, Options::default());
        let core = core_of(&img, true);
        let os = open(key, &core, true);
        let m = img.manifest.clone();
        let t = m
            .processes
            .iter()
            .rev()
            .find(|p| !p.handles.is_empty())
            .unwrap();
        // A level-1 TableCode whose base is the last 8 bytes of the address space.
        let table = core
            .read_u64(vmi_core::AccessContext::paging(
                Va(t.eprocess + off(&os, "_EPROCESS", "ObjectTable")),
                os.kernel_root(),
            ))
            .unwrap();
        let code_at = table + off(&os, "_HANDLE_TABLE", "TableCode");
        assert!(img.patch_kernel(code_at, &0xFFFF_FFFF_FFFF_FFF9u64.to_le_bytes()));
        // Windows 7 keeps StartingVpn/EndingVpn as full 64-bit values.
        let vad = t.vads.first().map(|v| v.va);
        let full_vpn = os
            .profile()
            .offset_of("_MMVAD_SHORT", "EndingVpnHigh")
            .is_err();
        if let (true, Some(vad)) = (full_vpn, vad) {
            win7 += 1;
            let end = off(&os, "_MMVAD_SHORT", "EndingVpn");
            assert!(img.patch_kernel(vad + end, &u64::MAX.to_le_bytes()));
        }
        let core = core_of(&img, true);
        let os = open(key, &core, true);
        let p = os.win_process(&core, t.pid).unwrap();
        // Reading the table at 2^64-8 fails: nothing is readable, so an error.
        assert!(os.handle_list(&core, &p).is_err(), "{key}");
        if full_vpn {
            let vads = os.vad_list(&core, &p).unwrap();
            assert!(
                vads.items.iter().any(|v| v.end == Va(u64::MAX)),
                "{key}: the last page of the address space"
            );
        }
    }
    assert!(win7 > 0, "no Windows 7 profile among the fixtures");
}
