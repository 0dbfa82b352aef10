//! Live VMI of a **Xen** domain from dom0: guest memory through foreign mappings,
//! vCPU registers (PV and HVM/PVH), pause/resume, and events through the vm_event
//! monitor ring (control-register and MSR writes, CPUID, guest requests, debug
//! exceptions, software breakpoints, single-step, memory access), plus altp2m views.
//!
//! ```
//! use vmi_core::{VmiCore, VcpuId, Registers as _};
//! use vmi_driver_xen::{XenDriver, fake::FakeXen, abi::HvmHwCpu};
//! # fn main() -> Result<(), vmi_core::VmiError> {
//! let xen = FakeXen::new(); // with the `xen-sys` feature: vmi_driver_xen::ffi::LibXen::open()?
//! let dom = xen.add_hvm_domain(1024);
//! xen.set_hvm_cpu(dom, 0, HvmHwCpu { rip: 0xffff_ffff_8100_0000, ..HvmHwCpu::default() });
//! let core = VmiCore::new(XenDriver::new(xen, dom)?)?;
//! let _paused = core.pause_guard()?;
//! assert_eq!(core.registers(VcpuId(0))?.instruction_pointer().0, 0xffff_ffff_8100_0000);
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! The driver logic ([`XenDriver`]) runs over a narrow trait, [`XenInterface`]: one
//! method per libxenctrl / libxenforeignmemory / libxenevtchn call it needs, taking and
//! returning plain values and the raw structs of [`abi`]. Two implementations:
//!
//! | feature | implementation | needs |
//! |---|---|---|
//! | (default) | [`fake::FakeXen`], in memory: byte-exact ring page, real struct layouts, fault injection | nothing |
//! | `xen-sys` | `ffi::LibXen`: bindgen bindings generated at build time from `libxen-dev` headers (`XEN_HEADERS_DIR`, default `/usr/include`), linked against libxenctrl, libxenforeignmemory, libxenevtchn (`XEN_LIB_DIR`, `XEN_STATIC=1` for the `.a` files) | libclang, libxen-dev 4.17 or 4.20 |
//!
//! The vm_event ring is handled in Rust ([`ring`]): 8 slots of 400 bytes after a
//! 64-byte header, computed from the page and entry sizes, never from `size_of` of the C
//! shared-ring struct (whose size differs between the 4.17 and 4.20 headers). Every
//! request is copied out, its version checked (v7), unknown reasons and foreign vCPU ids
//! are answered without reaching the handler, and every response echoes the request's
//! `VCPU_PAUSED` flag so no vCPU stays paused. See [`EventStats`].
//!
//! What the hypervisor refuses is a typed [`vmi_core::VmiError::NotSupported`]
//! ("… is not supported by this hypervisor"): on AMD (and under QEMU TCG) Xen answers
//! `xc_set_mem_access` with `EINVAL`, altp2m and single-step with `EOPNOTSUPP`.
//!
//! # Leaving the guest as found
//!
//! On drop (also while a panic unwinds, or after an error) and in [`XenDriver::close`]:
//! pending ring requests are answered, monitors disabled, planted `int3` bytes restored,
//! page permissions reset, altp2m views destroyed and altp2m switched off, the ring
//! disabled and unmapped, the event channel unbound, and the domain unpaused as many
//! times as this driver paused it.
//!
//! # What is tested where
//!
//! | what | fake (unit tests) | header/link gate (`scripts/xen-build-gate.sh`) | nested Xen (`cargo xtask xen smoke`) |
//! |---|---|---|---|
//! | bindings and linking, Xen 4.17 and 4.20 | | yes | yes |
//! | domain list/info, pause/resume | yes | | yes (PV and PVH) |
//! | registers: PV `vcpu_guest_context`, HVM `hvm_hw_cpu` | read + write | | read |
//! | memory read/write, PV machine frames, PVH guest frames | yes | | yes (kernel banner, bytes at RIP, write + restore) |
//! | ring: layout, wrap-around, version, unknown reasons, vCPU-paused echo | yes | | yes (CR3 writes, PVH) |
//! | batched foreign mapping ([`XenDriver::read_frames`]) | yes | | yes (PVH) |
//! | the Linux OS layer through this driver, zero files (VMCOREINFO scan, kallsyms and BTF from memory, process list) | | | yes (PVH): every long-lived pid and comm the guest prints from its own `/proc` |
//! | CR0/CR4, MSR, CPUID, guest-request, debug-exception events | yes | | no |
//! | mem_access, altp2m, single-step, int3 events | yes | | **no**: Xen implements them on Intel VT-x only (mem_access, altp2m, single-step), and QEMU TCG's SVM never delivers a guest `int3` to Xen's #BP intercept; the smoke test only checks that they are *refused* cleanly |
//!
//! Nested-Xen figures (reads/s, events/s, the process-list time) are from QEMU TCG on a
//! shared 2-core machine and only meaningful relative to each other; the README has them.
//! Mapping one frame per read costs about a millisecond there, so a whole-RAM scan goes
//! through [`XenDriver::read_frames`] (one mapping for up to
//! [`MAX_BATCH_FRAMES`](XenDriver::MAX_BATCH_FRAMES) frames).

pub mod abi;
mod driver;
pub mod fake;
#[cfg(feature = "xen-sys")]
pub mod ffi;
mod interface;
pub mod ring;

pub use driver::{
    EventStats, GuestKind, ViewId, XenDriver, event_reason, find_hvm_cpu_record, list_domains,
    plain_response, registers_from_event, registers_from_hvm, registers_from_pv,
    registers_into_hvm, registers_into_pv,
};
pub use interface::{
    DomId, DomainInfo, EINVAL, ENOSYS, EOPNOTSUPP, EPERM, ESRCH, MonitorOp, XenCallError,
    XenInterface, XenResult,
};
