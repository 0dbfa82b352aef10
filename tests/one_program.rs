//! Issue 18, "done when": the same program, changing only the line that opens the target,
//! lists processes and their memory regions on a Linux dump, a live QEMU guest, a Windows
//! image and (on the fake) a Xen domain, through `vmi::` alone.

use vmi::arch::amd64::Amd64;
use vmi::core::{Gfn, OsAttribute, OsObjectKind, VmiCore, VmiOs, VmiRead};
use vmi::os::windows::WindowsOs;

/// One line per process: pid, name, command line, and the number of its memory regions
/// (`None` when they cannot be listed, e.g. a kernel thread's).
type Summary = Vec<(u64, String, String, Option<usize>)>;

/// The program: generic over the driver, the OS chosen at run time.
fn summary<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>, os: &dyn VmiOs<D>) -> Summary {
    let list = os.process_list(core).expect("process list");
    assert!(list.skipped.is_empty(), "{:?}", list.skipped);
    list.items
        .iter()
        .map(|p| {
            let cmdline = os
                .process_cmdline(core, p)
                .map(|c| c.to_string())
                .unwrap_or_default();
            let regions = os.memory_region_list(core, p).ok();
            // The table columns an OS declares are the ones its objects carry.
            for r in regions.iter().flat_map(|l| &l.items) {
                assert_columns(os, OsObjectKind::Region, &r.attributes);
            }
            for t in os.thread_list(core, p).iter().flat_map(|l| &l.items) {
                assert_columns(os, OsObjectKind::Thread, &t.attributes);
            }
            for h in os.handles(core, p).iter().flat_map(|l| &l.items) {
                assert_columns(os, OsObjectKind::Handle, &h.attributes);
            }
            (
                p.pid,
                p.name.clone(),
                cmdline,
                regions.map(|l| l.items.len()),
            )
        })
        .collect()
}

fn assert_columns<D: VmiRead>(os: &dyn VmiOs<D>, kind: OsObjectKind, attributes: &[OsAttribute]) {
    let declared: Vec<&str> = os
        .attribute_columns(kind)
        .into_iter()
        .map(|c| c.trim_start_matches('>'))
        .collect();
    let carried: Vec<&str> = attributes.iter().filter_map(|a| a.column).collect();
    assert_eq!(carried, declared, "{} {kind:?}", os.name());
}

#[test]
fn windows_image_and_the_same_memory_in_a_fake_xen_domain() {
    use vmi::driver::xen::{XenDriver, fake::FakeXen};
    let key = "9C00B19DBDE003DBFE4AB4216993C843-1";
    let isf = vmi_test_windows::load_isf(key).unwrap();
    let image =
        vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
    let symbols = vmi_test_windows::isf_dir().display().to_string();

    // A synthetic image.
    let core = VmiCore::new(image.driver()).unwrap();
    let os = WindowsOs::builder()
        .symbol_path(symbols.clone())
        .no_cache()
        .build(&core)
        .unwrap();
    let from_image = summary(&core, &os);

    // Its memory in a Xen domain of the in-memory fake.
    let xen = FakeXen::new();
    let frames = core.info().max_gfn.0 + 1;
    let dom = xen.add_hvm_domain(frames);
    let mut page = vec![0u8; 4096];
    for gfn in 0..frames {
        if core.driver().read_page(Gfn(gfn), 0, &mut page).is_ok() && page.iter().any(|&b| b != 0) {
            xen.write_memory(dom, gfn * 4096, &page);
        }
    }
    let core = VmiCore::new(XenDriver::new(xen, dom).unwrap()).unwrap();
    let os = WindowsOs::builder()
        .symbol_path(symbols)
        .no_cache()
        .build(&core)
        .unwrap();
    let from_xen = summary(&core, &os);

    assert_eq!(from_image, from_xen);
    let m = &image.manifest;
    assert_eq!(from_image.len(), m.processes.len());
    for p in &m.processes {
        let (_, name, cmdline, regions) = from_image
            .iter()
            .find(|e| e.0 == p.pid)
            .unwrap_or_else(|| panic!("pid {} listed", p.pid));
        assert_eq!(name, &p.name);
        assert_eq!(cmdline, p.cmdline.as_deref().unwrap_or(""));
        assert_eq!(*regions, Some(p.vads.len()), "regions of {}", p.name);
    }
}

#[test]
fn linux_live_guest_and_its_dump() {
    use vmi::driver::dump::DumpDriver;
    use vmi::driver::qemu::QemuDriver;
    use vmi::os::linux::LinuxOs;
    use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Userland};

    let cfg = GuestConfig::default().userland(Userland::Busybox);
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    let truth = guest.truth().clone();

    // A live QEMU guest (paused while we look).
    let core = VmiCore::new(QemuDriver::attach(guest.qmp_socket()).unwrap()).unwrap();
    let live = {
        let _paused = core.pause_guard().unwrap();
        let os = LinuxOs::new(&core).unwrap();
        summary(&core, &os)
    };

    // A dump of it.
    let elf = guest.dir().join("one-program.elf");
    guest.dump(DumpFormat::Elf, &elf).unwrap();
    let core = VmiCore::new(DumpDriver::open(&elf).unwrap()).unwrap();
    let os = LinuxOs::new(&core).unwrap();
    let dump = summary(&core, &os);

    for name in ["vmi_sleeper", "vmi_mapper"] {
        let p = truth.process(name).expect("in the truth");
        for (target, s) in [("live", &live), ("dump", &dump)] {
            let (_, comm, cmdline, regions) = s
                .iter()
                .find(|e| e.0 == u64::from(p.pid))
                .unwrap_or_else(|| panic!("{target}: {name} listed"));
            assert_eq!(comm, name, "{target}");
            assert_eq!(cmdline, &p.argv.join(" "), "{target}: {name}");
            assert_eq!(*regions, Some(p.maps.len()), "{target}: regions of {name}");
        }
    }
    std::fs::remove_file(&elf).ok();
}
