//! The Linux OS layer of the `vmi` framework: [`LinuxOs`] implements
//! [`vmi_core::VmiOs`] for any driver that reads AMD64 guest memory — a live QEMU guest,
//! a raw RAM image, an ELF core, a kdump or LiME dump — and adds Linux-specific
//! operations.
//!
//! # Zero files by default
//!
//! [`LinuxOs::new`] needs nothing but guest memory:
//!
//! 1. **Kernel discovery.** The VMCOREINFO text (given by a dump driver from its note,
//!    else found by scanning physical memory with `memchr`) gives the KASLR slide
//!    (`KERNELOFFSET`), `phys_base`, `swapper_pg_dir` and 4- vs 5-level paging. The kernel
//!    page-table root is `__pa_symbol(swapper_pg_dir)`, verified by translating
//!    `swapper_pg_dir` through itself. Registers, where the driver has them, are
//!    cross-checked (CR4.LA57, IDT gate 0 = `asm_exc_divide_error`, LSTAR).
//! 2. **Profile.** kallsyms decoded from guest memory (VMCOREINFO lists the tables since
//!    6.0; on older kernels they are found by their structure in the read-only pages of the
//!    kernel image, see `ksyms.rs`) and BTF read between `__start_BTF` and `__stop_BTF` make a
//!    [`vmi_profile::Profile`]. The parsed types are cached on disk under the SHA-256 of
//!    the BTF bytes read, never under what the guest claims to be (build id, banner): a
//!    hostile guest cannot plant types another guest loads. kallsyms are read each time.
//!    Files are optional ([`LinuxOsBuilder::vmlinux`], [`system_map`](LinuxOsBuilder::system_map),
//!    [`isf`](LinuxOsBuilder::isf), [`profile`](LinuxOsBuilder::profile)).
//! 3. **Offsets** all come from the profile (`profile_struct!`), none is hard-coded;
//!    fields that moved between kernel versions are picked at run time (`__state`/`state`,
//!    maple tree/VMA list, `mem[]`/`core_layout`, `thread_node`/`thread_group`,
//!    `pcpu_hot`/`current_task`).
//!
//! # Hostile guests
//!
//! Every list walk is bounded ([`Limits`]) and detects cycles; every pointer is checked
//! (canonical, kernel half, aligned, `prev` pointing back); a broken link makes the walk
//! continue backwards from the head; an object that cannot be read is reported in
//! `skipped` with its address and error, and the walk goes on ([`TaskList`],
//! [`VmaList`]).
//!
//! # Example (on the mock driver)
//!
//! ```
//! # use vmi_core::{VmiCore, Va};
//! # use vmi_driver_mock::MockDriver;
//! let core = VmiCore::new(MockDriver::new(1 << 20))?;
//! // Nothing in this memory looks like a Linux kernel: a typed error, no panic.
//! let err = vmi_os_linux::LinuxOs::builder().no_cache().build(&core).unwrap_err();
//! assert!(err.to_string().contains("VMCOREINFO"));
//! # Ok::<(), vmi_core::VmiError>(())
//! ```
//!
//! | feature | 5.10 | 6.1 | 6.12 | source |
//! |---|---|---|---|---|
//! | kallsyms | found by structure | VMCOREINFO | VMCOREINFO | kernel `.rodata` |
//! | processes, threads | `thread_group` | `thread_group` | `signal->thread_head` | `tasks` list |
//! | VMAs | `mmap`/`vm_next` list | maple tree | maple tree | `mm->mmap` / `mm->mm_mt` |
//! | modules | `core_layout` | `core_layout` | `mem[MOD_TEXT]` | `modules` list |
//! | current task | `current_task` | `current_task` | `pcpu_hot.current_task` | GS base or `__per_cpu_offset` |
//! | dmesg | printk ring buffer | printk ring buffer | printk ring buffer | `prb` (5.10+) |
//!
//! A kernel without BTF (`CONFIG_DEBUG_INFO_BTF` unset) cannot be read from memory alone:
//! [`LinuxOsBuilder::build`] then fails with an error that says what is missing and names
//! the files that replace it (`--kernel` vmlinux/vmlinuz with BTF, `--system-map`,
//! `--profile` ISF in the CLI; [`LinuxOsBuilder::vmlinux`], `system_map`, `isf` here).

//!
//! # Measured
//!
//! `benches/pslist.rs`, whole job per iteration (open the 256 MiB ELF dump of the test
//! guest, find the kernel, load the profile, list 54 processes with command lines, print),
//! 2-core machine: profile built from guest memory 37 ms, from the cache 67 ms, with a
//! VMCOREINFO scan instead of the dump's note 78 ms; Volatility 3 (2.28.2) `linux.pslist` with
//! our ISF on the same dump 9.2 s.

#![forbid(unsafe_code)]

mod builder;
mod discovery;
mod dmesg;
mod files;
mod kmem;
mod ksyms;
mod misc;
mod mm;
mod modules;
mod offsets;
mod os;
mod task;
mod walk;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vmi_arch_amd64::{Amd64, PagingMode, Registers};
use vmi_core::{Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_profile::{Profile, VmcoreInfo};

pub use builder::{LinuxOsBuilder, pa_symbol};
pub use discovery::{RegisterCheck, START_KERNEL_MAP, VmcoreinfoOrigin};
pub use dmesg::DmesgRecord;
pub use files::OpenFile;
pub use misc::{SyscallFrame, TaskNamespaces};
pub use mm::{LinuxVma, VmaList, vm_flags};
pub use modules::{LinuxModule, ModuleList, ModuleState};
pub use task::{LinuxTask, TaskList, TaskState};

/// Objects a walk could not read: the address of each (a kernel object, or the list node
/// whose link broke) and why.
pub type Skipped = Vec<(Va, VmiError)>;

/// Bounds on what guest data can make the layer do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most entries of any list or tree walk.
    pub max_list: usize,
    /// Most bytes of a command line or environment.
    pub max_args: usize,
    /// Most path components of a file path.
    pub max_path_depth: usize,
    /// Most file descriptors examined per process.
    pub max_fds: usize,
    /// Most bytes of the printk text ring read.
    pub max_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_list: 1 << 20,
            max_args: 256 << 10,
            max_path_depth: 256,
            max_fds: 1 << 16,
            max_log_bytes: 32 << 20,
        }
    }
}

/// Where the profile came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProfileOrigin {
    /// kallsyms and BTF read from guest memory.
    Memory,
    /// kallsyms from guest memory, types from the on-disk cache entry of the very BTF bytes
    /// read from guest memory (this file).
    Cache(PathBuf),
    /// Given by the caller.
    Given,
    /// Built with these files (and guest memory).
    Files(Vec<PathBuf>),
}

/// What kernel discovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// `uname -r` (VMCOREINFO `OSRELEASE`).
    pub release: Option<String>,
    /// `linux_banner` (the `/proc/version` text plus a newline).
    pub banner: Option<String>,
    /// KASLR slide of the kernel image (`KERNELOFFSET`).
    pub kaslr_offset: u64,
    /// `phys_base`: physical minus link-time offset of the image (may wrap: negative).
    pub phys_base: u64,
    /// Kernel page-table root, `__pa_symbol(swapper_pg_dir)`.
    pub kernel_root: Pa,
    /// 4- or 5-level paging.
    pub paging_mode: PagingMode,
    /// Base of the direct map of physical memory (`page_offset_base`).
    pub page_offset_base: Va,
    /// `_text`, the start of the kernel image.
    pub text: Option<Va>,
    /// Whether page-table isolation (KPTI) is on (`None`: could not tell).
    pub kpti: Option<bool>,
    /// The kernel's GNU build id (VMCOREINFO `BUILD-ID`).
    pub build_id: Option<Vec<u8>>,
    /// Where VMCOREINFO came from.
    pub vmcoreinfo_origin: VmcoreinfoOrigin,
    /// Where the profile came from.
    pub profile_origin: ProfileOrigin,
    /// Register cross-checks, one per vCPU given.
    pub register_checks: Vec<RegisterCheck>,
    /// Remarks: rejected candidates, fallbacks taken.
    pub notes: Vec<String>,
    /// Time spent finding the kernel and loading the profile.
    pub discovery_time: Duration,
}

/// The Linux OS layer. Build it with [`LinuxOs::new`] or [`LinuxOs::builder`].
#[derive(Clone, Debug)]
pub struct LinuxOs {
    kernel: KernelInfo,
    profile: Arc<Profile>,
    offsets: offsets::Offsets,
    limits: Limits,
    registers: Vec<Registers>,
    vmcoreinfo: VmcoreInfo,
}

impl LinuxOs {
    /// A builder for the optional inputs (files, VMCOREINFO text, registers, cache).
    pub fn builder() -> LinuxOsBuilder {
        LinuxOsBuilder::default()
    }

    /// Finds the kernel in `core` from memory alone, with the default profile cache.
    pub fn new<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>) -> Result<Self, VmiError> {
        Self::builder().build(core)
    }

    /// What discovery found.
    pub fn kernel(&self) -> &KernelInfo {
        &self.kernel
    }

    /// The profile in use (run-time symbol addresses).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The VMCOREINFO in use.
    pub fn vmcoreinfo(&self) -> &VmcoreInfo {
        &self.vmcoreinfo
    }

    /// The bounds in use.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The profile with link-time symbol addresses (the KASLR slide taken out), as
    /// other tools and the cache expect it.
    pub fn link_time_profile(&self) -> Profile {
        let mut p = (*self.profile).clone();
        p.symbols = p.symbols.relocated(self.kernel.kaslr_offset.wrapping_neg());
        p
    }

    /// Writes the profile as a Volatility 3 ISF (link-time addresses, the running
    /// kernel's banner), for `vol -s DIR`.
    pub fn write_isf(&self, path: &std::path::Path) -> Result<(), VmiError> {
        let mut p = self.link_time_profile();
        if p.metadata.banner.is_none() {
            p.metadata.banner = self.kernel.banner.clone();
        }
        vmi_profile::isf::write_isf(&p, &vmi_profile::isf::ExportOptions::default(), path)
            .map_err(|e| builder::os_error(format!("writing the ISF {}", path.display()), e))
    }

    /// Address of a kernel symbol (run time).
    pub fn symbol_address(&self, name: &str) -> Option<Va> {
        self.profile.symbols.address(name).map(Va)
    }

    /// KPTI: the boot CPU's `X86_FEATURE_PTI` capability bit
    /// (`boot_cpu_data.x86_capability`, word 7 bit 11 — the bit number is fixed by
    /// `arch/x86/include/asm/cpufeatures.h` since 4.15).
    fn detect_kpti<D: VmiRead<Architecture = Amd64>>(&self, core: &VmiCore<D>) -> Option<bool> {
        const X86_FEATURE_PTI: u64 = 7 * 32 + 11;
        let caps = self.offsets.misc.x86_capability?;
        let base = self.symbol_address("boot_cpu_data")?;
        let word = self
            .kmem(core)
            .u32(base + caps + (X86_FEATURE_PTI / 32) * 4)
            .ok()?;
        Some(word & (1 << (X86_FEATURE_PTI % 32)) != 0)
    }
}
