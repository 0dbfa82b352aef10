//! Virtual machine introspection: look into running VMs and memory dumps from the
//! outside, safely and fast.
//!
//! This facade re-exports the layers of the framework behind opt-in features, so a user
//! depends on one crate and picks what they need:
//!
//! | feature        | brings                                                        |
//! |----------------|---------------------------------------------------------------|
//! | (always)       | [`core`]: addresses, driver traits, `VmiCore`, sessions, events |
//! | `arch-amd64`   | [`arch::amd64`]: AMD64 registers and 4/5-level paging          |
//! | `driver-mock`  | [`driver::mock`]: the in-memory test driver                    |
//! | `driver-dump`  | [`driver::dump`]: raw, ELF, kdump, LiME, Windows crash dumps   |
//! | `driver-qemu`  | [`driver::qemu`]: a running QEMU/KVM by its QMP socket         |
//! | `driver-xen`   | [`driver::xen`]: a Xen domain from dom0 (in-memory fake included) |
//! | `driver-xen-sys` | `driver-xen` with the real libxen (needs libclang, libxen-dev) |
//! | `profile`      | [`profile`]: BTF, kallsyms, System.map, ISF, PDB, DWARF, symbol paths |
//! | `symsrv`       | `profile` plus symbol-server downloads (HTTP/HTTPS: ureq, rustls) |
//! | `os-linux`     | [`os::linux`]: the Linux OS layer                              |
//! | `os-windows`   | [`os::windows`]: the Windows x64 OS layer                      |
//! | `utils`        | [`utils`]: breakpoint manager, process tracker, syscall tracing |
//!
//! Only `symsrv` brings a TLS stack: `profile` and the OS layers read symbol caches and
//! directories without it.
//!
//! See `DESIGN.md` for the layering.
//!
//! # Quick start
//!
//! The same program reads every target: only the line that opens it changes. Here a
//! Windows image (built from a real kernel's symbol tables for this test); for a Linux
//! dump, `DumpDriver::open("guest.elf")?` and `LinuxOs::new(&core)?`; for a running QEMU,
//! `QemuDriver::attach("qmp.sock")?`; for a Xen domain, `XenDriver::new(LibXen::open()?, domid)?`.
//!
//! ```
//! # #[cfg(all(feature = "os-windows", feature = "arch-amd64"))] {
//! use vmi::core::{VmiCore, VmiOs, VmiRead, VmiSession};
//! use vmi::arch::amd64::Amd64;
//! use vmi::os::windows::WindowsOs;
//!
//! /// Processes and the number of their memory regions, on any OS and driver.
//! fn summary<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>, os: &dyn VmiOs<D>) -> Vec<String> {
//!     let mut lines = Vec::new();
//!     for p in os.process_list(core).unwrap().items {
//!         let regions = os.memory_region_list(core, &p).map(|l| l.items.len()).unwrap_or(0);
//!         let cmdline = os.process_cmdline(core, &p).map(|c| c.to_string()).unwrap_or_default();
//!         lines.push(format!("{:>6} {:<16} {regions:>4} {cmdline}", p.pid, p.name));
//!     }
//!     lines
//! }
//!
//! # let isf = vmi_test_windows::load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
//! # let image = vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
//! # let symbols = vmi_test_windows::isf_dir().display().to_string();
//! let core = VmiCore::new(image.driver())?;
//! let os = WindowsOs::builder().symbol_path(symbols).no_cache().build(&core)?;
//! let session = VmiSession::new(&core, &os);
//! assert_eq!(session.os().processes()?.len(), 4);
//! let lines = summary(&core, &os);
//! assert!(lines.iter().any(|l| l.contains("vmi_target.exe")));
//! # }
//! # Ok::<(), vmi::core::VmiError>(())
//! ```
//!
//! The same function on a Linux ELF dump (`no_run` here because it needs a dump;
//! `tests/one_program.rs` runs it on the real Linux test guest, live and dumped):
//!
//! ```no_run
//! # #[cfg(all(feature = "os-linux", feature = "driver-dump"))] {
//! # use vmi::core::{VmiOs, VmiRead};
//! # use vmi::arch::amd64::Amd64;
//! # fn summary<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>, os: &dyn VmiOs<D>) -> Vec<String> { Vec::new() }
//! use vmi::core::{VmiCore, VmiSession};
//! use vmi::driver::dump::DumpDriver;
//! use vmi::os::linux::LinuxOs;
//!
//! let core = VmiCore::new(DumpDriver::open("guest.elf")?)?;
//! let os = LinuxOs::new(&core)?; // kernel, KASLR and symbols found in the dump itself
//! let session = VmiSession::new(&core, &os);
//! for process in session.os().processes()? {
//!     println!("{} {}", process.pid, process.name);
//! }
//! for line in summary(&core, &os) {
//!     println!("{line}");
//! }
//! # }
//! # Ok::<(), vmi::core::VmiError>(())
//! ```
//!
//! ```
//! # #[cfg(feature = "driver-mock")] {
//! use vmi::core::{Pa, VmiCore};
//! use vmi::driver::mock::MockDriver;
//!
//! let driver = MockDriver::new(1 << 20);
//! driver.write_physical(Pa(0x1000), b"Linux version 6.1\0");
//! let core = VmiCore::new(driver).unwrap();
//! assert_eq!(core.read_string(Pa(0x1000), 64).unwrap(), "Linux version 6.1");
//! # }
//! ```

#![forbid(unsafe_code)]

pub use vmi_core as core;

/// CPU architectures.
pub mod arch {
    /// AMD64 (x86-64).
    #[cfg(feature = "arch-amd64")]
    pub use vmi_arch_amd64 as amd64;
}

/// Drivers: where memory, registers and events come from.
pub mod driver {
    /// The in-memory test driver.
    #[cfg(feature = "driver-mock")]
    pub use vmi_driver_mock as mock;

    /// Memory dumps.
    #[cfg(feature = "driver-dump")]
    pub use vmi_driver_dump as dump;

    /// A running QEMU/KVM.
    #[cfg(feature = "driver-qemu")]
    pub use vmi_driver_qemu as qemu;

    /// A Xen domain, from dom0.
    #[cfg(feature = "driver-xen")]
    pub use vmi_driver_xen as xen;
}

/// Symbol profiles.
#[cfg(feature = "profile")]
pub use vmi_profile as profile;

/// OS layers: processes, threads, modules, memory regions.
pub mod os {
    /// Linux.
    #[cfg(feature = "os-linux")]
    pub use vmi_os_linux as linux;

    /// Windows x64.
    #[cfg(feature = "os-windows")]
    pub use vmi_os_windows as windows;
}

/// Active introspection: breakpoint manager, process tracker, system-call tracing.
#[cfg(feature = "utils")]
pub use vmi_utils as utils;
