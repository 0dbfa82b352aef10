//! A real, live Linux guest for VMI tests: a stock Debian kernel (downloaded, unpacked,
//! never installed) plus a busybox-static initramfs, booted under QEMU with its RAM in a
//! shared file, two QMP sockets, a gdbstub and `-device vmcoreinfo`.
//!
//! The guest's `/init` starts recognisable processes (`vmi_sleeper` with a known
//! environment marker, `vmi_mapper` with file mappings and open files, `vmi_parent` with two
//! `vmi_child`ren, `vmi_loop`) and prints a ground-truth block on the serial console, which
//! the harness parses into [`Truth`] (also `truth.json`). Tests compare what the library
//! under test finds against the truth of *the same boot*: KASLR moves everything each boot.
//!
//! ```no_run
//! use vmi_test_guest::{GuestConfig, TestGuest};
//! # fn main() -> Result<(), vmi_test_guest::Error> {
//! let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().cpu("max")) else {
//!     return Ok(()); // QEMU missing: skipped, with a visible message
//! };
//! let sleeper = guest.truth().process("vmi_sleeper").expect("started by /init");
//! assert!(sleeper.environ.iter().any(|e| e == vmi_test_guest::ENV_MARKER));
//! let _ram = guest.mem_file(); // mmap it: guest physical address == file offset (< 2 GiB)
//! # Ok(()) }
//! ```
//! (`no_run`: booting takes seconds and needs QEMU; the crate's integration tests run it.)
//!
//! Design decisions:
//! * **One code path for tests and the CLI**: `cargo xtask guest up` boots a [`TestGuest`]
//!   and [`TestGuest::detach`]es it; `guest down` uses [`GuestEnv::stop`].
//! * **Cleanup is the default**: dropping a [`TestGuest`] quits QEMU and deletes the RAM
//!   file, also while a panic unwinds; guests of test processes killed outright are reaped
//!   by the next [`TestGuest::boot`] ([`reap_orphans`]).
//! * **Shared cache, file-locked**: `.deb`s, extracted kernels and initramfs images live
//!   in [`cache::cache_dir`], guarded by per-package file locks so parallel test binaries
//!   build each kernel once.
//! * **Other Debian suites through a private apt configuration** ([`apt`]), never touching
//!   the host's apt state.
//! * **Two userlands**: busybox only (the default, fastest) or [`Userland::Realistic`]
//!   ([`userland`]): Debian's glibc programs, Python, a daemon, processes shaped like
//!   production ones (threads, sockets, 1,000+ VMAs, memfd and deleted files, a chroot'ed
//!   container in its own namespaces, a zombie, an orphan, fileless execution) and the
//!   truth of **every** process; `VMI_GUEST_USERLAND=realistic` makes it the default.

pub mod apt;
pub mod bounded;
pub mod cache;
pub mod cpio;
pub mod ctl;
mod error;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod libvirt;
pub mod oracle;
pub mod qmp;
pub mod truth;
pub mod userland;
pub mod vmlinuz;
pub mod watchdog;

pub use apt::{DEFAULT_KERNEL, KernelSpec};
pub use ctl::CtlOutput;
pub use error::{Error, Result};
pub use guest::{
    Accel, DEFAULT_BOOT_TIMEOUT, DumpFormat, GuestConfig, GuestEnv, TestGuest, gpa_to_file_offset,
    guest_required, qemu_available_or_skip, reap_orphans, stop_dir,
};
pub use libvirt::{LibvirtConfig, LibvirtGuest};
pub use oracle::{volatility, volatility_command};
pub use truth::{
    ENV_MARKER, Fd, IomemRange, MapEntry, Module, Process, Task, Thread, Truth, VmcoreinfoNote,
};
pub use userland::Userland;
