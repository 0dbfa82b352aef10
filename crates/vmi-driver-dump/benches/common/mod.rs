//! The dumps the benches read: `$VMI_DUMP_BENCH_DIR` (`guest.raw`, `guest.elf`,
//! `guest.kdump`, as `make-test-guest.sh dump` and a copy of the RAM file make them) or a
//! test guest booted here. A missing `guest.raw` is derived from `guest.elf` (physical
//! address = file offset, holes as zeros) and `guest.lime` from `guest.raw`.

// Each bench uses part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vmi_core::{Gfn, VmiRead};
use vmi_driver_dump::{DumpDriver, build_lime};

/// A directory of dumps of one guest, and the guest when it was booted for the bench.
pub struct Dumps {
    /// Where `guest.raw`, `guest.elf`... are.
    pub dir: PathBuf,
    _guest: Option<vmi_test_guest::TestGuest>,
}

/// The dumps, or `None` (the bench prints why) without QEMU and `$VMI_DUMP_BENCH_DIR`.
pub fn dumps() -> Option<Dumps> {
    if let Some(dir) = std::env::var_os("VMI_DUMP_BENCH_DIR") {
        let dir = PathBuf::from(dir);
        make_raw(&dir);
        make_lime(&dir);
        return Some(Dumps { dir, _guest: None });
    }
    let guest = vmi_test_guest::TestGuest::boot_or_skip(vmi_test_guest::GuestConfig::default())?;
    let dir = guest.dir().join("bench-dumps");
    std::fs::create_dir_all(&dir).ok()?;
    guest.pause().ok()?;
    guest
        .dump(vmi_test_guest::DumpFormat::Elf, &dir.join("guest.elf"))
        .ok()?;
    guest
        .dump(
            vmi_test_guest::DumpFormat::KdumpZlib,
            &dir.join("guest.kdump"),
        )
        .ok()?;
    std::fs::copy(guest.mem_file(), dir.join("guest.raw")).ok()?;
    make_lime(&dir);
    Some(Dumps {
        dir,
        _guest: Some(guest),
    })
}

/// `guest.raw` from `guest.elf` when only the ELF core is there: the RAM that starts at
/// physical 0 (QEMU's ELF cores add the BIOS ROM just below 4 GiB, which a RAM file
/// does not have).
fn make_raw(dir: &Path) {
    let raw = dir.join("guest.raw");
    if raw.exists() {
        return;
    }
    let Ok(elf) = DumpDriver::open(dir.join("guest.elf")) else {
        return;
    };
    let Ok(ranges) = elf.physical_ranges() else {
        return;
    };
    let Some(ram) = ranges.first().filter(|r| r.start.0 == 0) else {
        return;
    };
    let mut image = vec![0u8; usize::try_from(ram.end.0).expect("dump fits in memory")];
    for (gfn, page) in image.chunks_exact_mut(4096).enumerate() {
        let _ = elf.read_page(Gfn(gfn as u64), 0, page);
    }
    let _ = std::fs::write(&raw, image);
}

/// `guest.lime` (one range) from `guest.raw`.
fn make_lime(dir: &Path) {
    let lime = dir.join("guest.lime");
    if !lime.exists()
        && let Ok(raw) = std::fs::read(dir.join("guest.raw"))
    {
        let _ = std::fs::write(&lime, build_lime(&[(0, &raw)]));
    }
}
