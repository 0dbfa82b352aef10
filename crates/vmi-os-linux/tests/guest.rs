//! The OS layer against the live test guest, per configuration: its RAM file (raw,
//! no registers), and its ELF and kdump dumps.

mod common;

use std::time::Instant;

use common::{RamFile, check_all};
use vmi_core::VmiCore;
use vmi_os_linux::{LinuxOs, ProfileOrigin};
use vmi_test_guest::{GuestConfig, TestGuest};

/// Boots `cfg`, pauses it and runs every check over the RAM file, first building the
/// profile from memory, then from the cache.
fn run(label: &str, cfg: GuestConfig) {
    let Some(guest) = TestGuest::boot_or_skip(cfg) else {
        return;
    };
    guest.pause().expect("pause");
    let truth = guest.truth();
    let env = guest.env();
    let cache = guest.dir().join("profile-cache");
    let core = VmiCore::new(RamFile::open(guest.mem_file(), env.mem_size).unwrap()).unwrap();
    let t = Instant::now();
    let os = LinuxOs::builder()
        .cache_dir(&cache)
        .build(&core)
        .expect("LinuxOs from RAM");
    eprintln!("[{label}] raw, profile from memory: {:?}", t.elapsed());
    assert_eq!(os.kernel().profile_origin, ProfileOrigin::Memory);
    check_all(&format!("{label}/raw"), &core, &os, truth);

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
    guest.resume().expect("resume");
}

#[test]
fn default_config() {
    run("default", GuestConfig::default());
}
