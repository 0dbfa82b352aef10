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
