//! The driver on a libvirt domain whose RAM libvirt backs with a shared file
//! (`<memoryBacking><source type='file'/><access mode='shared'/>`): the mapped fast path
//! is found through libvirt's monitor, reads equal those of the process-memory path,
//! pause and resume go through libvirt (its own state follows), and the time of a 4 KiB
//! read on each path is printed (`--nocapture`).

use std::time::Instant;

use vmi_core::{Gfn, VmState, VmiRead, VmiVmControl};
use vmi_driver_qemu::{AccessPath, AttachOptions, QemuDriver};
use vmi_test_guest::{LibvirtConfig, LibvirtGuest};

/// Mean time of a random 4 KiB guest-physical read, in microseconds.
fn read_4k_micros(d: &QemuDriver, pages: u64) -> f64 {
    let mut buf = vec![0u8; 4096];
    let n = 2000u64;
    let t0 = Instant::now();
    for i in 0..n {
        // A fixed pseudo-random walk over RAM above 1 MiB.
        let gfn = 0x100 + (i.wrapping_mul(2_654_435_761) % (pages - 0x200));
        d.read_page(Gfn(gfn), 0, &mut buf).unwrap();
    }
    t0.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[test]
fn shared_file_memory_is_mapped_and_pause_goes_through_libvirt() {
    let Some(guest) = LibvirtGuest::boot_or_skip(LibvirtConfig {
        shared_file_memory: true,
    }) else {
        return;
    };
    let mapped = QemuDriver::attach_libvirt(None, guest.name(), AttachOptions::default())
        .expect("attach through libvirt");
    assert_eq!(mapped.access_path(), AccessPath::Mmap);
    let process = QemuDriver::attach_libvirt(
        Some("qemu:///system"),
        guest.name(),
        AttachOptions::default().access_path(AccessPath::ProcessMemory),
    )
    .expect("attach through libvirt, process memory");
    assert_eq!(process.access_path(), AccessPath::ProcessMemory);

    // The kernel image's first pages (guest-physical, below the 2 GiB RAM): the same
    // bytes through both paths, and not all zero.
    let phys = mapped
        .physical_ranges()
        .unwrap()
        .iter()
        .map(|r| r.end.0)
        .max()
        .unwrap();
    let pages = phys / 4096;
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    let mut nonzero = false;
    // The kernel is loaded at 16 MiB + the physical KASLR offset: compare a stretch of
    // RAM that holds it whatever the offset (read-only text and rodata do not change).
    for gfn in (0x1000..0x1000 + 256).step_by(16) {
        mapped.read_page(Gfn(gfn), 0, &mut a).unwrap();
        process.read_page(Gfn(gfn), 0, &mut b).unwrap();
        nonzero |= a.iter().any(|&x| x != 0);
        if a != b {
            // A page the guest wrote between the two reads: read both again.
            mapped.read_page(Gfn(gfn), 0, &mut a).unwrap();
            process.read_page(Gfn(gfn), 0, &mut b).unwrap();
            assert_eq!(
                a, b,
                "gfn {gfn:#x} differs between the mapped and process paths"
            );
        }
    }
    assert!(nonzero, "RAM at 16 MiB reads as zeros");

    // The first pass maps the pages into our address space (a fault each), the second
    // reads mapped pages.
    let mmap_first = read_4k_micros(&mapped, pages);
    let mmap_us = read_4k_micros(&mapped, pages);
    let _ = read_4k_micros(&process, pages);
    let process_us = read_4k_micros(&process, pages);
    eprintln!(
        "libvirt 4 KiB read: mapped file {mmap_us:.2} us ({mmap_first:.2} us at first touch), \
         QEMU process memory {process_us:.2} us"
    );
    drop(process);

    // Pause and resume through libvirt: its own state follows.
    mapped.pause().unwrap();
    assert_eq!(mapped.state().unwrap(), VmState::Paused);
    assert!(
        guest.state().unwrap().starts_with("paused"),
        "libvirt's state after pause"
    );
    mapped.resume().unwrap();
    assert_eq!(mapped.state().unwrap(), VmState::Running);
    assert_eq!(
        guest.state().unwrap(),
        "running",
        "libvirt's state after resume"
    );

    // A domain paused with libvirt is found paused and left paused.
    drop(mapped);
    assert_eq!(
        guest.state().unwrap(),
        "running",
        "libvirt's state after detach"
    );
    guest.virsh(&["suspend", guest.name()]).unwrap();
    let again = QemuDriver::attach_libvirt(None, guest.name(), AttachOptions::default()).unwrap();
    assert_eq!(again.state().unwrap(), VmState::Paused);
    drop(again);
    assert!(guest.state().unwrap().starts_with("paused"));
    guest.virsh(&["resume", guest.name()]).unwrap();
    assert_eq!(guest.state().unwrap(), "running");
}
