//! Windows x64 OS layer.
//!
//! [`WindowsOs`] turns the memory of a Windows x64 guest (Windows 7 SP1 to Windows 11)
//! into processes, threads, modules, VADs, handles and tokens, implementing the core's
//! [`VmiOs`](vmi_core::VmiOs) plus Windows-specific operations.
//!
//! [`WindowsOs::new`] needs nothing but guest memory and a place where profiles are: it
//! finds the kernel ([`find_kernel`]: self-reference DTB scan, low stub, KDBG, `RSDS` scan;
//! with vCPU registers given to the [`WindowsOsBuilder`], [`find_kernel_from_registers`]
//! from `LSTAR` and the IDT first — a crash dump's saved context has neither, so memory is
//! then scanned), takes its CodeView PDB name, GUID and age, and loads the matching profile
//! along `_NT_SYMBOL_PATH` (a directory of Volatility ISFs, or `srv*CACHE*URL` entries) or
//! from the profile and symbol caches. [`WindowsOs::builder`] takes explicit choices
//! (registers, the kernel, an ISF, a PDB, a symbol path, the cache), as
//! `LinuxOs::builder` does for Linux.
//!
//! Key decisions:
//! - **No hard-coded offsets.** Every offset comes from the profile; version differences
//!   are field alternatives resolved once (`VadNode.Left` or `LeftChild`, ...).
//! - **Guest data is hostile.** Every list walk is bounded and detects cycles; strings and
//!   counts are capped; errors name the address.
//! - **Page states are typed.** Transition pages are read; page-file, demand-zero and
//!   prototype pages are a [`WindowsError::NotPresent`] that says which
//!   ([`WindowsOs::read_process_memory`]).
//!
//! ```
//! use vmi_core::{VmiCore, VmiSession};
//! use vmi_os_windows::WindowsOs;
//! # let isf = vmi_test_windows::load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
//! # let image = vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
//! # let driver = image.driver();
//! # let isf_dir = vmi_test_windows::isf_dir();
//! // A core over any driver (a live VM, a dump; here a synthetic image).
//! let core = VmiCore::new(driver)?;
//! // The kernel from vCPU registers (else from memory), its profile from a directory of
//! // ISFs (`WindowsOs::new(&core)` looks along `_NT_SYMBOL_PATH` and in the caches).
//! let os = WindowsOs::builder()
//!     .registers_from(&core)?
//!     .symbol_path(isf_dir.display().to_string())
//!     .no_cache()
//!     .build(&core)?;
//! let session = VmiSession::new(&core, &os);
//! for process in session.os().processes()? {
//!     println!("{} {}", process.pid, process.name);
//! }
//! # assert_eq!(session.os().processes()?.len(), 4);
//! # Ok::<(), vmi_core::VmiError>(())
//! ```

#![forbid(unsafe_code)]

mod builder;
mod error;
mod handles;
mod kernel;
mod memory;
mod modules;
mod offsets;
mod os;
pub mod pe;
mod process;
mod profile;
mod thread;
mod token;
mod vad;
mod walk;

use std::collections::HashSet;
use std::sync::Arc;

use vmi_arch_amd64::Amd64;
use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_profile::Profile;

pub use builder::WindowsOsBuilder;
pub use error::{NotPresent, WindowsError, windows_error};
pub use handles::WinHandle;
pub use kernel::{
    DiscoveryMethod, KernelInfo, dtb_candidates, find_kernel, find_kernel_from_registers, kernel_at,
};
pub use modules::{LdrList, WinModule};
use offsets::Offsets;
pub use process::WinProcess;
pub use profile::{profile_from_isf_dir, profile_from_isf_dir_cached, profile_from_isf_file};
pub use thread::WinThread;
pub use token::{WinSid, WinToken};
pub use vad::WinVad;

/// Objects a walk could not read: the address of the object, or of the list entry whose
/// link broke, and why.
pub type Skipped = Vec<(Va, VmiError)>;

/// What a walk of guest lists or trees found: every object it could read, and every one it
/// had to skip (a broken link, an unreadable object, a cycle, the limit). A walk that
/// read nothing and skipped something is an error instead, never an empty listing.
#[derive(Debug)]
pub struct Listing<T> {
    /// The objects read, in walk order.
    pub items: Vec<T>,
    /// What was skipped, and why.
    pub skipped: Skipped,
}

impl<T> Listing<T> {
    fn new(items: Vec<T>, mut skipped: Skipped) -> Result<Self, VmiError> {
        if items.is_empty() && !skipped.is_empty() {
            return Err(skipped.swap_remove(0).1);
        }
        Ok(Self { items, skipped })
    }

    /// The objects when nothing was skipped, else the first skip's error (the
    /// all-or-nothing answer of the `win_*` methods).
    pub fn complete(mut self) -> Result<Vec<T>, VmiError> {
        if self.skipped.is_empty() {
            Ok(self.items)
        } else {
            Err(self.skipped.swap_remove(0).1)
        }
    }
}

/// Longest list this layer walks (processes, threads, modules).
pub const MAX_LIST: usize = 65_536;
/// Most VAD nodes visited per process.
pub const MAX_VADS: usize = 262_144;
/// Most handles reported per process.
pub const MAX_HANDLES: usize = 1 << 20;
/// Longest UNICODE_STRING read (bytes).
const MAX_USTR: usize = 0x1_0000;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// The Windows OS layer.
#[derive(Debug)]
pub struct WindowsOs {
    profile: Arc<Profile>,
    off: Offsets,
    kernel: KernelInfo,
    root: Pa,
    cookie: Option<u8>,
    info_mask_table: Option<[u8; 4]>,
}

impl WindowsOs {
    /// A builder for explicit choices (registers, kernel, profile files, symbol path,
    /// cache).
    pub fn builder() -> WindowsOsBuilder {
        WindowsOsBuilder::default()
    }

    /// Finds the kernel in `core` from memory alone and its profile along
    /// `_NT_SYMBOL_PATH` or in the caches (see [`WindowsOsBuilder`]).
    pub fn new<D: VmiRead<Architecture = Amd64>>(core: &VmiCore<D>) -> Result<Self, VmiError> {
        Self::builder().build(core)
    }

    /// The layer for the kernel `kernel` described by `profile`. The System process's
    /// DTB becomes the kernel address space when it maps the kernel.
    pub fn from_kernel<D: VmiRead>(
        core: &VmiCore<D>,
        profile: impl Into<Arc<Profile>>,
        kernel: KernelInfo,
    ) -> Result<Self, VmiError> {
        let profile = profile.into();
        let off = Offsets::resolve(&profile)?;
        let mut os = Self {
            profile,
            off,
            root: kernel.root,
            kernel,
            cookie: None,
            info_mask_table: None,
        };
        let k0 = AccessContext::paging(os.kernel.base + os.off.ps_initial_system_process, os.root);
        if let Ok(system) = core.read_u64(k0)
            && let Ok(dtb) =
                core.read_u64(AccessContext::paging(Va(system) + os.off.ep_dtb, os.root))
        {
            let r = Pa(dtb & ADDR);
            if core.translate_address((os.kernel.base, r).into()).is_ok() {
                os.root = r;
            }
        }
        let k = |rva: u64| AccessContext::paging(os.kernel.base + rva, os.root);
        if let Some(c) = os.off.ob_header_cookie {
            os.cookie = Some(core.read_u8(k(c))?);
        }
        if let Some(t) = os.off.ob_info_mask_to_offset {
            let mut b = [0u8; 4];
            core.read(k(t), &mut b)?;
            os.info_mask_table = Some(b);
        }
        Ok(os)
    }

    /// The kernel this layer reads.
    pub fn kernel(&self) -> &KernelInfo {
        &self.kernel
    }

    /// The profile.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The kernel address space (System's DTB).
    pub fn kernel_root(&self) -> Pa {
        self.root
    }

    /// `ObHeaderCookie`, on Windows 10 and later.
    pub fn header_cookie(&self) -> Option<u8> {
        self.cookie
    }

    fn k(&self, va: Va) -> AccessContext {
        AccessContext::paging(va, self.root)
    }

    fn sym(&self, rva: u64) -> Va {
        self.kernel.base + rva
    }

    fn kq<D: VmiRead>(&self, core: &VmiCore<D>, va: Va) -> Result<u64, VmiError> {
        core.read_u64(self.k(va))
    }

    /// Reads a `_UNICODE_STRING` at `va` in `root`.
    pub fn read_unicode_string<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        va: Va,
    ) -> Result<String, VmiError> {
        let len = core.read_u16(AccessContext::paging(va + self.off.us_length, root))?;
        let buf = core.read_u64(AccessContext::paging(va + self.off.us_buffer, root))?;
        if len == 0 {
            return Ok(String::new());
        }
        core.read_string_utf16(
            AccessContext::paging(Va(buf), root),
            usize::from(len),
            MAX_USTR,
        )
    }

    /// Walks a `LIST_ENTRY` list from `head`, returning the entries (not the head),
    /// bounded by [`MAX_LIST`] and stopping with [`VmiError::WalkLimit`] on a cycle.
    pub fn walk_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        head: Va,
        what: &'static str,
    ) -> Result<Vec<Va>, VmiError> {
        let mut out = vec![];
        let mut seen = HashSet::new();
        let mut cur = Va(core.read_u64(AccessContext::paging(head, root))?);
        while cur != head {
            if cur.0 == 0 {
                return Err(VmiError::Malformed {
                    what,
                    address: head.0,
                    detail: "NULL Flink in the list".into(),
                });
            }
            if !seen.insert(cur) {
                return Err(VmiError::WalkLimit {
                    what,
                    count: out.len(),
                    reason: "cycle",
                });
            }
            if out.len() >= MAX_LIST {
                return Err(VmiError::WalkLimit {
                    what,
                    count: out.len(),
                    reason: "limit",
                });
            }
            out.push(cur);
            cur = Va(core.read_u64(AccessContext::paging(cur, root))?);
        }
        Ok(out)
    }
}
