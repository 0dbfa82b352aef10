//! Windows x64 OS layer.
//!
//! [`WindowsOs`] turns the memory of a Windows x64 guest (Windows 7 SP1 to Windows 11)
//! into processes, threads, modules, VADs, handles and tokens, implementing the core's
//! [`VmiOs`] plus Windows-specific operations.
//!
//! The flow: find the kernel ([`find_kernel_from_registers`] from `LSTAR`/IDT, or
//! [`find_kernel`] from memory alone: self-reference DTB scan, low stub, KDBG, `RSDS`
//! scan), take its CodeView GUID and age, load the matching profile through `vmi-profile`
//! ([`profile_from_isf_dir`]), then build the layer ([`WindowsOs::new`]).
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
//! use vmi_core::{VcpuId, VmiCore, VmiSession};
//! use vmi_os_windows::{WindowsOs, find_kernel_from_registers, profile_from_isf_dir};
//! # let isf = vmi_test_windows::load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
//! # let image = vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
//! # let driver = image.driver();
//! # let isf_dir = vmi_test_windows::isf_dir();
//! // A core over any driver with registers (a live VM, a dump; here a synthetic image).
//! let core = VmiCore::new(driver)?;
//! let registers = core.registers(VcpuId(0))?;
//! // Find the kernel from the vCPU, load the profile its CodeView names, list processes.
//! let kernel = find_kernel_from_registers(&core, &registers)?;
//! let profile = profile_from_isf_dir(&isf_dir, &kernel.codeview)?;
//! let os = WindowsOs::new(&core, profile, kernel)?;
//! let session = VmiSession::new(&core, &os);
//! for process in session.os().processes()? {
//!     println!("{} {}", process.pid, process.name);
//! }
//! # assert_eq!(session.os().processes()?.len(), 4);
//! # Ok::<(), vmi_core::VmiError>(())
//! ```

#![forbid(unsafe_code)]

mod error;
mod kernel;
mod offsets;
pub mod pe;
mod walk;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    AccessContext, FaultKind, OsModule, OsProcess, OsRegion, OsThread, Pa, RegionProtection, Va,
    VmiCore, VmiError, VmiOs, VmiRead,
};
use vmi_profile::Profile;

pub use error::{NotPresent, WindowsError, windows_error};
pub use kernel::{
    DiscoveryMethod, KernelInfo, dtb_candidates, find_kernel, find_kernel_from_registers, kernel_at,
};
use offsets::Offsets;
use pe::{CodeView, PeImage};

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

/// Loads the profile of the kernel described by `codeview` from a directory of
/// Volatility ISF files: `<dir>/<pdb>/<GUID>-<age>.json[.xz]`,
/// `<dir>/windows/<pdb>/...` or `<dir>/<GUID>-<age>.json[.xz]`. The profile's PDB
/// identity must match.
pub fn profile_from_isf_dir(dir: &Path, codeview: &CodeView) -> Result<Profile, VmiError> {
    let key = codeview.isf_key();
    let mut tried = vec![];
    for sub in [
        PathBuf::from(&codeview.pdb_name),
        Path::new("windows").join(&codeview.pdb_name),
        PathBuf::new(),
    ] {
        for ext in ["json.xz", "json"] {
            let p = dir.join(&sub).join(format!("{key}.{ext}"));
            if p.is_file() {
                return profile_from_isf_file(&p, codeview);
            }
            tried.push(p.display().to_string());
        }
    }
    Err(WindowsError::NoProfile {
        pdb: codeview.pdb_name.clone(),
        id: key,
        searched: dir.display().to_string(),
    }
    .into())
}

/// [`profile_from_isf_dir`] through the on-disk profile cache of `vmi-profile`: the first
/// call imports the ISF and stores the profile under the kernel's PDB identity, later calls
/// (other processes included) decode the cached profile, which is much faster than
/// decompressing and parsing the ISF again.
pub fn profile_from_isf_dir_cached(
    dir: &Path,
    codeview: &CodeView,
    cache: &vmi_profile::cache::ProfileCache,
) -> Result<Profile, VmiError> {
    let id = vmi_profile::PdbId {
        guid: codeview.guid,
        age: codeview.age,
    };
    let key = vmi_profile::cache::CacheKey::Pdb(id);
    if let Ok(Some(p)) = cache.load(&key)
        && p.metadata.pdb == Some(id)
    {
        return Ok(p);
    }
    let p = profile_from_isf_dir(dir, codeview)?;
    // A cache that cannot be written only costs speed.
    let _ = cache.store(&key, &p);
    Ok(p)
}

/// Loads one ISF file and checks that its PDB identity matches `codeview`.
pub fn profile_from_isf_file(path: &Path, codeview: &CodeView) -> Result<Profile, VmiError> {
    let p = vmi_profile::isf::load_isf(path).map_err(|e| VmiError::Os {
        os: "windows",
        message: format!("loading {}", path.display()),
        source: Some(Box::new(e)),
    })?;
    match p.metadata.pdb {
        Some(id) if id.guid == codeview.guid && id.age == codeview.age => Ok(p),
        other => Err(WindowsError::Profile(format!(
            "{} describes {:?}, not the kernel's {}",
            path.display(),
            other.map(|i| i.to_string()),
            codeview.isf_key()
        ))
        .into()),
    }
}

/// A process with everything Windows keeps about it that this layer reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinProcess {
    /// Process id.
    pub pid: u64,
    /// Parent process id.
    pub ppid: u64,
    /// `ImageFileName` (at most 15 bytes).
    pub name: String,
    /// EPROCESS address.
    pub eprocess: Va,
    /// Page-table root (PCID and flag bits removed).
    pub dtb: Pa,
    /// `DirectoryTableBase` as stored.
    pub directory_table_base: u64,
    /// PEB (0 for the System process).
    pub peb: Va,
    /// Session id (`None` without a session).
    pub session: Option<u32>,
    /// CreateTime (FILETIME).
    pub create_time: u64,
    /// ExitTime (FILETIME, 0 while running).
    pub exit_time: u64,
    /// A WoW64 (32-bit) process.
    pub wow64: bool,
    /// `ActiveThreads`.
    pub active_threads: u32,
}

/// A thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinThread {
    /// Thread id.
    pub tid: u64,
    /// Owning process id.
    pub pid: u64,
    /// ETHREAD address.
    pub ethread: Va,
    /// TEB (0 for system threads).
    pub teb: Va,
    /// StartAddress.
    pub start_address: Va,
    /// Win32StartAddress.
    pub win32_start_address: Va,
    /// CreateTime.
    pub create_time: u64,
}

/// A loaded module (kernel driver or user DLL/EXE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinModule {
    /// Base name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// Base.
    pub base: Va,
    /// SizeOfImage.
    pub size: u64,
    /// Loader entry address.
    pub entry: Va,
}

/// Which of the three loader lists to walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LdrList {
    /// InLoadOrderModuleList.
    Load,
    /// InMemoryOrderModuleList.
    Memory,
    /// InInitializationOrderModuleList.
    Init,
}

/// A VAD (virtual address descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinVad {
    /// Node address.
    pub node: Va,
    /// First byte.
    pub start: Va,
    /// Last byte (inclusive).
    pub end: Va,
    /// MM protection index (0..31).
    pub protection: u8,
    /// Private memory (not a mapped section).
    pub private: bool,
    /// Pool tag before the node, when readable (`VadS`, `Vad `...).
    pub tag: Option<String>,
    /// Backing file name (as the FILE_OBJECT stores it, without the device).
    pub file: Option<String>,
}

impl WinVad {
    /// Access rights of the MM protection index.
    pub fn rights(&self) -> RegionProtection {
        let (read, write, execute) = match self.protection & 7 {
            0 => (false, false, false),
            1 => (true, false, false),
            2 => (false, false, true),
            3 => (true, false, true),
            4 | 5 => (true, true, false),
            _ => (true, true, true),
        };
        RegionProtection {
            read,
            write,
            execute,
        }
    }

    /// The `PAGE_*` name Volatility prints.
    pub fn protection_name(&self) -> &'static str {
        [
            "PAGE_NOACCESS",
            "PAGE_READONLY",
            "PAGE_EXECUTE",
            "PAGE_EXECUTE_READ",
            "PAGE_READWRITE",
            "PAGE_WRITECOPY",
            "PAGE_EXECUTE_READWRITE",
            "PAGE_EXECUTE_WRITECOPY",
        ][usize::from(self.protection & 7)]
    }
}

/// A handle table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinHandle {
    /// Handle value.
    pub handle: u64,
    /// Object body address.
    pub object: Va,
    /// Decoded type index.
    pub type_index: u8,
    /// Type name (`Process`, `File`...), `None` when the index is out of the type table.
    pub type_name: Option<String>,
    /// Granted access.
    pub access: u32,
    /// Display name (process name + pid, thread/process ids, file path, object name).
    pub name: Option<String>,
}

/// A SID with its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinSid {
    /// `S-1-...` form.
    pub sid: String,
    /// SID_AND_ATTRIBUTES.Attributes.
    pub attributes: u32,
}

/// A process token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinToken {
    /// `_TOKEN` address.
    pub address: Va,
    /// User first, then groups.
    pub sids: Vec<WinSid>,
    /// Privileges present (bit = LUID low part), when the build has the bitmap.
    pub privileges_present: Option<u64>,
    /// Privileges enabled.
    pub privileges_enabled: Option<u64>,
    /// Privileges enabled by default.
    pub privileges_default: Option<u64>,
}

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

fn canon(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va & 0xFFFF_FFFF_FFFF
    }
}

impl WindowsOs {
    /// The layer for the kernel `kernel` described by `profile`. The System process's
    /// DTB becomes the kernel address space when it maps the kernel.
    pub fn new<D: VmiRead>(
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

    // ---- processes ----------------------------------------------------------------

    /// Reads the process whose EPROCESS is at `ep`.
    pub fn process_at<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        ep: Va,
    ) -> Result<WinProcess, VmiError> {
        let o = &self.off;
        let mut name = [0u8; 15];
        core.read(self.k(ep + o.ep_name), &mut name)?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let session_ptr = self.kq(core, ep + o.ep_session)?;
        let session = if session_ptr == 0 {
            None
        } else {
            Some(core.read_u32(self.k(Va(session_ptr) + o.session_id))?)
        };
        let dtb_raw = self.kq(core, ep + o.ep_dtb)?;
        let wow64 = match o.ep_wow64 {
            Some(w) => self.kq(core, ep + w)? != 0,
            None => false,
        };
        Ok(WinProcess {
            pid: self.kq(core, ep + o.ep_pid)?,
            ppid: self.kq(core, ep + o.ep_ppid)?,
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            eprocess: ep,
            dtb: Pa(dtb_raw & ADDR),
            directory_table_base: dtb_raw,
            peb: Va(self.kq(core, ep + o.ep_peb)?),
            session,
            create_time: self.kq(core, ep + o.ep_create_time)?,
            exit_time: self.kq(core, ep + o.ep_exit_time)?,
            wow64,
            active_threads: core.read_u32(self.k(ep + o.ep_active_threads))?,
        })
    }

    /// Every process on `PsActiveProcessHead`; an error if any link or process could not
    /// be read (see [`process_list`](Self::process_list) for what can be read).
    pub fn win_processes<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Vec<WinProcess>, VmiError> {
        self.process_list(core)?.complete()
    }

    /// The processes on `PsActiveProcessHead` that can be read, and what was skipped: a
    /// broken link costs only the processes between it and the next break (the walk
    /// resumes backwards from the head), an unreadable `EPROCESS` only itself.
    pub fn process_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Listing<WinProcess>, VmiError> {
        let head = self.sym(self.off.ps_active_process_head);
        let walk = walk::walk_list(core, self.root, head, "PsActiveProcessHead list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let ep = Va(l.0.wrapping_sub(self.off.ep_links));
            match self.process_at(core, ep) {
                Ok(p) => items.push(p),
                Err(e) => skipped.push((ep, e)),
            }
        }
        Listing::new(items, skipped)
    }

    /// The process with `pid`, among those that can be read.
    pub fn win_process<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        pid: u64,
    ) -> Result<WinProcess, VmiError> {
        let list = self.process_list(core)?;
        let skipped = list.skipped.len();
        list.items
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| VmiError::NotFound {
                kind: "process",
                name: if skipped == 0 {
                    pid.to_string()
                } else {
                    format!("{pid} (the process list skipped {skipped} unreadable objects)")
                },
            })
    }

    fn params<D: VmiRead>(&self, core: &VmiCore<D>, p: &WinProcess) -> Result<Va, VmiError> {
        if p.peb.0 == 0 {
            return Err(VmiError::NotFound {
                kind: "PEB of process",
                name: p.pid.to_string(),
            });
        }
        Ok(Va(self.read_process_u64(
            core,
            p,
            p.peb + self.off.peb_params,
        )?))
    }

    /// Full image path (`ProcessParameters.ImagePathName`).
    pub fn image_path<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let pp = self.params(core, p)?;
        self.read_unicode_string(core, p.dtb, pp + self.off.pp_image)
    }

    /// NT image path from `SeAuditProcessCreationInfo` (works for every process).
    pub fn nt_image_path<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let at = self.off.ep_audit_name.ok_or(VmiError::NotSupported {
            operation: "SeAuditProcessCreationInfo",
            by: "this Windows build",
        })?;
        let oni = self.kq(core, p.eprocess + at)?;
        if oni == 0 {
            return Err(VmiError::NotFound {
                kind: "audit image name of process",
                name: p.pid.to_string(),
            });
        }
        self.read_unicode_string(core, self.root, Va(oni))
    }

    /// Command line (`ProcessParameters.CommandLine`).
    pub fn command_line<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let pp = self.params(core, p)?;
        self.read_unicode_string(core, p.dtb, pp + self.off.pp_cmdline)
    }

    /// Environment variables, in block order (bounded to 1 MiB).
    pub fn environment<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<(String, String)>, VmiError> {
        let pp = self.params(core, p)?;
        let env = Va(self.read_process_u64(core, p, pp + self.off.pp_env)?);
        let size = match self.off.pp_env_size {
            Some(s) => self.read_process_u64(core, p, pp + s)? as usize,
            None => 0x1_0000,
        }
        .min(1 << 20);
        let mut buf = vec![0u8; size & !1];
        let n = core.read_available(AccessContext::paging(env, p.dtb), &mut buf);
        let units: Vec<u16> = buf[..n & !1]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let mut out = vec![];
        for s in units.split(|&u| u == 0) {
            if s.is_empty() {
                break;
            }
            let text = String::from_utf16_lossy(s);
            // Variables like "=C:" start with '=': split after the first character.
            let split = text
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '=')
                .map(|(i, _)| i);
            match split {
                Some(i) => out.push((text[..i].to_owned(), text[i + 1..].to_owned())),
                None => out.push((text, String::new())),
            }
        }
        Ok(out)
    }

    // ---- page states --------------------------------------------------------------

    /// Reads `buf.len()` bytes of a process's memory, reading transition pages from their
    /// frame and reporting page-file, demand-zero and prototype pages as
    /// [`WindowsError::NotPresent`].
    pub fn read_process_memory<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        va: Va,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = va + done as u64;
            let n = (buf.len() - done).min((0x1000 - (at.0 & 0xFFF)) as usize);
            let chunk = &mut buf[done..done + n];
            match core.read(AccessContext::paging(at, root), chunk) {
                Ok(()) => {}
                Err(e) => {
                    let pf = e.page_fault().copied();
                    match pf {
                        Some(pf) if pf.kind == FaultKind::NotPresent => {
                            let state = self.pte_state(pf.level, pf.entry);
                            match state {
                                Ok(frame) => {
                                    core.read_physical(Pa(frame | (at.0 & 0xFFF)), chunk)?
                                }
                                Err(state) => {
                                    return Err(WindowsError::NotPresent { va: at, state }.into());
                                }
                            }
                        }
                        _ => return Err(e),
                    }
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Decodes a non-present entry: `Ok(frame)` for a transition page, else its state.
    fn pte_state(&self, level: u8, e: u64) -> Result<u64, NotPresent> {
        if level != 1 || e == 0 {
            return Err(NotPresent::Unmapped);
        }
        if e & (1 << 10) != 0 {
            return Err(NotPresent::Prototype);
        }
        if e & (1 << 11) != 0 {
            return Ok(e & 0x0000_FFFF_FFFF_F000);
        }
        let high = e >> 32;
        if high != 0 {
            return Err(NotPresent::PageFile {
                file: ((e >> 1) & 0xF) as u8,
                offset: high * 0x1000,
            });
        }
        Err(NotPresent::DemandZero)
    }

    /// The state of the page holding `va`: `Ok(pa)` when readable (present or
    /// transition), else why not.
    pub fn page_state<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        va: Va,
    ) -> Result<Pa, NotPresent> {
        match core.translate(AddressOf::ctx(va, root)) {
            Ok(t) => Ok(t.pa),
            Err(e) => match e.page_fault() {
                Some(pf) if pf.kind == FaultKind::NotPresent => self
                    .pte_state(pf.level, pf.entry)
                    .map(|f| Pa(f | (va.0 & 0xFFF))),
                _ => Err(NotPresent::Unmapped),
            },
        }
    }

    fn read_process_u64<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        va: Va,
    ) -> Result<u64, VmiError> {
        let mut b = [0u8; 8];
        self.read_process_memory(core, p.dtb, va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    // ---- threads --------------------------------------------------------------------

    /// Reads the thread at `et`.
    pub fn thread_at<D: VmiRead>(&self, core: &VmiCore<D>, et: Va) -> Result<WinThread, VmiError> {
        let o = &self.off;
        Ok(WinThread {
            tid: self.kq(core, et + o.th_tid)?,
            pid: self.kq(core, et + o.th_pid)?,
            ethread: et,
            teb: Va(self.kq(core, et + o.th_teb)?),
            start_address: Va(self.kq(core, et + o.th_start)?),
            win32_start_address: Va(self.kq(core, et + o.th_win32_start)?),
            create_time: self.kq(core, et + o.th_create_time)?,
        })
    }

    /// The threads of a process (`EPROCESS.ThreadListHead`); an error if any could not be
    /// read (see [`thread_list`](Self::thread_list)).
    pub fn win_threads<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinThread>, VmiError> {
        self.thread_list(core, p)?.complete()
    }

    /// The threads of a process that can be read, and what was skipped.
    pub fn thread_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinThread>, VmiError> {
        let walk = walk::walk_list(
            core,
            self.root,
            p.eprocess + self.off.ep_thread_head,
            "EPROCESS.ThreadListHead list",
            MAX_LIST,
        );
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let et = Va(l.0.wrapping_sub(self.off.th_list_entry));
            match self.thread_at(core, et) {
                Ok(t) => items.push(t),
                Err(e) => skipped.push((et, e)),
            }
        }
        Listing::new(items, skipped)
    }

    /// The thread running on the vCPU with `regs`: KPCR (GS base in kernel mode, kernel
    /// GS base in user mode) → `Prcb.CurrentThread`.
    pub fn current_win_thread<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        regs: &Registers,
    ) -> Result<WinThread, VmiError> {
        let order = if regs.cs.selector & 3 == 0 {
            [regs.gs_base, regs.kernel_gs_base]
        } else {
            [regs.kernel_gs_base, regs.gs_base]
        };
        for kpcr in order {
            if kpcr < 0xFFFF_8000_0000_0000 {
                continue;
            }
            if let Some(s) = self.off.kpcr_self
                && self.kq(core, Va(kpcr) + s).ok() != Some(kpcr)
            {
                continue;
            }
            let th = self.kq(core, Va(kpcr) + self.off.kpcr_prcb + self.off.prcb_current)?;
            if th != 0 {
                return self.thread_at(core, Va(th));
            }
        }
        Err(VmiError::NotFound {
            kind: "KPCR in GS base or kernel GS base",
            name: format!("{:#x}/{:#x}", regs.gs_base, regs.kernel_gs_base),
        })
    }

    // ---- modules --------------------------------------------------------------------

    /// Kernel modules (`PsLoadedModuleList`); an error if any could not be read (see
    /// [`kernel_module_list`](Self::kernel_module_list)).
    pub fn kernel_modules<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Vec<WinModule>, VmiError> {
        self.kernel_module_list(core)?.complete()
    }

    /// The kernel modules that can be read, and what was skipped.
    pub fn kernel_module_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Listing<WinModule>, VmiError> {
        let o = &self.off;
        let head = self.sym(o.ps_loaded_module_list);
        let walk = walk::walk_list(core, self.root, head, "PsLoadedModuleList list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let e = Va(l.0.wrapping_sub(o.kldr_type_links));
            let module = (|| {
                Ok::<_, VmiError>(WinModule {
                    name: self.read_unicode_string(core, self.root, e + o.kldr_basename)?,
                    path: self.read_unicode_string(core, self.root, e + o.kldr_full)?,
                    base: Va(self.kq(core, e + o.kldr_base)?),
                    size: u64::from(core.read_u32(self.k(e + o.kldr_size))?),
                    entry: e,
                })
            })();
            match module {
                Ok(m) => items.push(m),
                Err(err) => skipped.push((e, err)),
            }
        }
        Listing::new(items, skipped)
    }

    /// User modules of a process from one loader list of its PEB; an error if any could
    /// not be read (see [`user_module_list`](Self::user_module_list)).
    pub fn user_modules<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        list: LdrList,
    ) -> Result<Vec<WinModule>, VmiError> {
        self.user_module_list(core, p, list)?.complete()
    }

    /// The user modules of one loader list that can be read, and what was skipped.
    pub fn user_module_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        list: LdrList,
    ) -> Result<Listing<WinModule>, VmiError> {
        let o = &self.off;
        if p.peb.0 == 0 {
            return Ok(Listing {
                items: vec![],
                skipped: vec![],
            });
        }
        let ldr = Va(self.read_process_u64(core, p, p.peb + o.peb_ldr)?);
        let (head_off, link_off) = match list {
            LdrList::Load => (o.pld_load, o.ldr_load_links),
            LdrList::Memory => (o.pld_mem, o.ldr_mem_links),
            LdrList::Init => (o.pld_init, o.ldr_init_links),
        };
        let walk = walk::walk_list(core, p.dtb, ldr + head_off, "PEB loader list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let e = Va(l.0.wrapping_sub(link_off));
            let module = (|| {
                Ok::<_, VmiError>(WinModule {
                    name: self.read_unicode_string(core, p.dtb, e + o.ldr_basename)?,
                    path: self.read_unicode_string(core, p.dtb, e + o.ldr_full)?,
                    base: Va(self.read_process_u64(core, p, e + o.ldr_base)?),
                    size: u64::from(core.read_u32(AccessContext::paging(e + o.ldr_size, p.dtb))?),
                    entry: e,
                })
            })();
            match module {
                Ok(m) => items.push(m),
                Err(err) => skipped.push((e, err)),
            }
        }
        Listing::new(items, skipped)
    }

    /// Parses the PE headers of the image at `base` in `root`.
    pub fn pe_image<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<PeImage, VmiError> {
        let mut page = vec![0u8; 0x1000];
        core.read(AccessContext::paging(base, root), &mut page)?;
        PeImage::parse(&page)
    }

    /// The CodeView record of the image at `base` in `root`.
    pub fn codeview<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<CodeView, VmiError> {
        self.pe_image(core, root, base)?
            .codeview(kernel::image_reader(core, root, base))
            .ok_or_else(|| VmiError::NotFound {
                kind: "CodeView record of image",
                name: base.to_string(),
            })
    }

    /// Named exports of the image at `base` in `root`.
    pub fn exports<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<Vec<pe::PeExport>, VmiError> {
        self.pe_image(core, root, base)?
            .exports(kernel::image_reader(core, root, base))
    }

    // ---- VADs -----------------------------------------------------------------------

    /// The VAD tree of a process, in address order; an error if any node could not be
    /// read (see [`vad_list`](Self::vad_list)).
    pub fn vads<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinVad>, VmiError> {
        self.vad_list(core, p)?.complete()
    }

    /// The VADs that can be read, in address order, and what was skipped: an unreadable
    /// node costs its subtree, a node reached twice (a cycle) is skipped there.
    pub fn vad_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinVad>, VmiError> {
        let o = &self.off;
        let root_at = p.eprocess + o.ep_vad_root;
        let root = self.kq(core, root_at)?;
        let mut out = vec![];
        let mut skipped: Skipped = vec![];
        let mut seen = HashSet::new();
        // (node, the field that pointed to it)
        let mut stack = vec![(root, root_at)];
        while let Some((node, from)) = stack.pop() {
            if node == 0 {
                continue;
            }
            if !seen.insert(node) {
                skipped.push((
                    from,
                    VmiError::WalkLimit {
                        what: "VAD tree",
                        count: out.len(),
                        reason: "cycle",
                    },
                ));
                continue;
            }
            if seen.len() > MAX_VADS {
                skipped.push((
                    from,
                    VmiError::WalkLimit {
                        what: "VAD tree",
                        count: out.len(),
                        reason: "limit",
                    },
                ));
                break;
            }
            let n = Va(node);
            let children = self
                .kq(core, n + o.vad_right)
                .and_then(|r| Ok((r, self.kq(core, n + o.vad_left)?)));
            match children {
                Ok((right, left)) => {
                    stack.push((right, n + o.vad_right));
                    stack.push((left, n + o.vad_left));
                }
                Err(e) => {
                    skipped.push((n, e));
                    continue;
                }
            }
            match self.vad_at(core, n) {
                Ok(v) => out.push(v),
                Err(e) => skipped.push((n, e)),
            }
        }
        out.sort_by_key(|v| v.start);
        Listing::new(out, skipped)
    }

    fn vad_at<D: VmiRead>(&self, core: &VmiCore<D>, n: Va) -> Result<WinVad, VmiError> {
        let o = &self.off;
        let vpn = |lo: u64, hi: Option<u64>| -> Result<u64, VmiError> {
            let l = u64::from(core.read_u32(self.k(n + lo))?);
            let h = match hi {
                Some(h) => u64::from(core.read_u8(self.k(n + h))?),
                None => 0,
            };
            Ok(l | (h << 32))
        };
        let (sv, ev) = if o.vad_start_high.is_none() {
            // Windows 7: StartingVpn/EndingVpn are full 64-bit values.
            (
                self.kq(core, n + o.vad_start)?,
                self.kq(core, n + o.vad_end)?,
            )
        } else {
            (
                vpn(o.vad_start, o.vad_start_high)?,
                vpn(o.vad_end, o.vad_end_high)?,
            )
        };
        let flags = |b: offsets::Bits| -> Result<u64, VmiError> {
            Ok(b.get(core.read_u64(self.k(n + b.offset))?))
        };
        let protection = flags(o.vad_protection)? as u8;
        let private = flags(o.vad_private)? != 0;
        let tag = {
            let mut t = [0u8; 4];
            core.read(self.k(Va(n.0.wrapping_sub(12))), &mut t)
                .ok()
                .filter(|_| t.iter().all(|c| c.is_ascii_graphic() || *c == b' '))
                .map(|_| String::from_utf8_lossy(&t).into_owned())
        };
        let file = if private {
            None
        } else {
            self.vad_file(core, n).ok().flatten()
        };
        Ok(WinVad {
            node: n,
            start: Va(sv << 12),
            // The last byte of page `ev`: `((ev + 1) << 12) - 1` without the overflow a
            // guest's EndingVpn of 2^64-1 would cause.
            end: Va((ev << 12) | 0xFFF),
            protection,
            private,
            tag,
            file,
        })
    }

    fn vad_file<D: VmiRead>(&self, core: &VmiCore<D>, n: Va) -> Result<Option<String>, VmiError> {
        let o = &self.off;
        let ss = self.kq(core, n + o.vad_subsection)?;
        if ss == 0 {
            return Ok(None);
        }
        let ca = self.kq(core, Va(ss) + o.subsection_ca)?;
        if ca == 0 {
            return Ok(None);
        }
        let fo = self.kq(core, Va(ca) + o.ca_file)? & !0xF;
        if fo == 0 {
            return Ok(None);
        }
        Ok(Some(self.read_unicode_string(
            core,
            self.root,
            Va(fo) + o.fo_name,
        )?))
    }

    // ---- handles --------------------------------------------------------------------

    fn type_name<D: VmiRead>(&self, core: &VmiCore<D>, index: u8) -> Option<String> {
        let t = self
            .kq(
                core,
                self.sym(self.off.ob_type_index_table) + u64::from(index) * 8,
            )
            .ok()?;
        if t < 0xFFFF_8000_0000_0000 {
            return None;
        }
        self.read_unicode_string(core, self.root, Va(t) + self.off.ot_name)
            .ok()
    }

    /// The decoded type index of the object whose header is at `header`.
    pub fn object_type_index<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
    ) -> Result<u8, VmiError> {
        let stored = core.read_u8(self.k(header + self.off.oh_type_index))?;
        Ok(match self.cookie {
            Some(c) => stored ^ c ^ ((header.0 >> 8) & 0xFF) as u8,
            None => stored,
        })
    }

    /// The name from an object's `OBJECT_HEADER_NAME_INFO`, if it has one.
    pub fn object_name<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
    ) -> Result<Option<String>, VmiError> {
        let mask = core.read_u8(self.k(header + self.off.oh_info_mask))?;
        if mask & 2 == 0 {
            return Ok(None);
        }
        let off = match self.info_mask_table {
            Some(t) => u64::from(t[usize::from(mask & 3)]),
            None => self.off.ohni_size + if mask & 1 != 0 { self.off.ohci_size } else { 0 },
        };
        let ni = Va(header.0.wrapping_sub(off));
        Ok(Some(self.read_unicode_string(
            core,
            self.root,
            ni + self.off.ohni_name,
        )?))
    }

    /// The handles of a process: level 0, 1 and 2 tables, each entry's object type
    /// (cookie-decoded on Windows 10+) and display name.
    ///
    /// Table pages that cannot be read (handle tables live in paged pool) and objects
    /// whose header cannot be read are left out; [`handle_list`](Self::handle_list)
    /// reports them.
    pub fn handles<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinHandle>, VmiError> {
        Ok(self.handle_list(core, p)?.items)
    }

    /// The handles that can be read, and what was skipped (unreadable table pages and
    /// object headers).
    pub fn handle_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinHandle>, VmiError> {
        let o = &self.off;
        let table = self.kq(core, p.eprocess + o.ep_object_table)?;
        if table == 0 {
            return Ok(Listing {
                items: vec![],
                skipped: vec![],
            });
        }
        let mut skipped: Skipped = vec![];
        let code = self.kq(core, Va(table) + o.ht_code)?;
        let level = code & 3;
        let base = code & !7;
        let esz = o.hte_size.max(8);
        let per = 0x1000 / esz;
        // One page of 512 table pointers at `at`; a table that would end past the top of
        // the address space is malformed, an unreadable one is reported and skipped.
        let pointers = |at: u64| -> Result<Vec<u64>, VmiError> {
            if at.checked_add(0x1000).is_none() {
                return Err(error::malformed(
                    "HANDLE_TABLE.TableCode",
                    table,
                    format!("table page at {at:#x} wraps the address space"),
                ));
            }
            let mut page = vec![0u8; 0x1000];
            core.read(self.k(Va(at)), &mut page)?;
            Ok(page
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect())
        };
        let mut leaves: Vec<(u64, u64)> = vec![];
        match level {
            0 => leaves.push((base, 0)),
            1 | 2 => {
                let mut mids = vec![(base, 0u64)];
                if level == 2 {
                    mids = match pointers(base) {
                        Ok(top) => (0u64..)
                            .zip(top)
                            .filter(|&(_, v)| v != 0)
                            .map(|(i, v)| (v, i * 512))
                            .collect(),
                        Err(e) => {
                            skipped.push((Va(base), e));
                            vec![]
                        }
                    };
                }
                for (m, first) in mids {
                    match pointers(m) {
                        Ok(mid) => leaves.extend(
                            (0u64..)
                                .zip(mid)
                                .filter(|&(_, leaf)| leaf != 0)
                                .map(|(i, leaf)| (leaf, first + i)),
                        ),
                        Err(e) => skipped.push((Va(m), e)),
                    }
                }
            }
            _ => {
                return Err(error::malformed(
                    "HANDLE_TABLE.TableCode",
                    table,
                    format!("level {level}"),
                ));
            }
        }
        let mut out = vec![];
        let mut types = std::collections::HashMap::new();
        for (leaf, leaf_index) in leaves {
            let mut page = vec![0u8; 0x1000];
            if let Err(e) = core.read(self.k(Va(leaf & !0xFFF)), &mut page) {
                skipped.push((Va(leaf), e));
                continue;
            }
            for i in 0..per {
                let at = (i * esz) as usize;
                let field = |b: offsets::Bits| {
                    let i = at + b.offset as usize;
                    // The last entry's access field may end the page: read what is there.
                    let mut q = [0u8; 8];
                    let avail = page.len().saturating_sub(i).min(8);
                    q[..avail].copy_from_slice(&page[i..i + avail]);
                    b.get(u64::from_le_bytes(q))
                };
                let q0 = field(o.hte_object);
                let qa = field(o.hte_access);
                let header = if o.hte_ptr_bits {
                    let bits = q0;
                    if bits == 0 {
                        continue;
                    }
                    canon((bits << 4) | 0xFFFF_0000_0000_0000)
                } else {
                    let v = q0 & !7;
                    if v == 0 {
                        continue;
                    }
                    v
                };
                if out.len() >= MAX_HANDLES {
                    return Err(VmiError::WalkLimit {
                        what: "handle table",
                        count: out.len(),
                        reason: "limit",
                    });
                }
                let header = Va(header);
                let ti = match self.object_type_index(core, header) {
                    Ok(ti) => ti,
                    Err(e) => {
                        skipped.push((header, e));
                        continue;
                    }
                };
                let type_name = types
                    .entry(ti)
                    .or_insert_with(|| self.type_name(core, ti))
                    .clone();
                let object = header + o.oh_body;
                let name = self
                    .handle_name(core, header, object, type_name.as_deref())
                    .ok()
                    .flatten();
                out.push(WinHandle {
                    handle: (leaf_index * per + i) * 4,
                    object,
                    type_index: ti,
                    type_name,
                    access: qa as u32,
                    name,
                });
            }
        }
        Listing::new(out, skipped)
    }

    fn handle_name<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
        object: Va,
        ty: Option<&str>,
    ) -> Result<Option<String>, VmiError> {
        Ok(match ty {
            Some("Process") => {
                let p = self.process_at(core, object)?;
                Some(format!("{} Pid {}", p.name, p.pid))
            }
            Some("Thread") => {
                let t = self.thread_at(core, object)?;
                Some(format!("Tid {} Pid {}", t.tid, t.pid))
            }
            Some("File") => {
                let name = self.read_unicode_string(core, self.root, object + self.off.fo_name)?;
                let dev = self.kq(core, object + self.off.fo_device)?;
                let dev_name = if dev == 0 {
                    None
                } else {
                    self.object_name(core, Va(dev).checked_sub(self.off.oh_body).unwrap_or(Va(0)))?
                };
                Some(match dev_name {
                    Some(d) => format!("\\Device\\{d}{name}"),
                    None => name,
                })
            }
            _ => self.object_name(core, header)?,
        })
    }

    // ---- tokens -------------------------------------------------------------------

    /// The token of a process: SIDs (user first) and privilege bitmaps.
    pub fn token<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<WinToken, VmiError> {
        let o = &self.off;
        let t = Va(self.kq(core, p.eprocess + o.ep_token)? & !0xF);
        let count = core.read_u32(self.k(t + o.tok_count))?;
        if count > 1024 {
            return Err(error::malformed(
                "TOKEN.UserAndGroupCount",
                t.0,
                format!("{count} groups"),
            ));
        }
        let arr = Va(self.kq(core, t + o.tok_groups)?);
        let mut sids = vec![];
        for i in 0..u64::from(count) {
            let e = arr + i * o.sa_size;
            let sid = Va(self.kq(core, e + o.sa_sid)?);
            let attributes = core.read_u32(self.k(e + o.sa_attrs))?;
            sids.push(WinSid {
                sid: self.read_sid(core, sid)?,
                attributes,
            });
        }
        let opt = |f: Option<u64>| -> Result<Option<u64>, VmiError> {
            f.map(|f| self.kq(core, t + f)).transpose()
        };
        Ok(WinToken {
            address: t,
            sids,
            privileges_present: opt(o.tok_present)?,
            privileges_enabled: opt(o.tok_enabled)?,
            privileges_default: opt(o.tok_default)?,
        })
    }

    fn read_sid<D: VmiRead>(&self, core: &VmiCore<D>, at: Va) -> Result<String, VmiError> {
        let mut h = [0u8; 8];
        core.read(self.k(at), &mut h)?;
        let n = usize::from(h[1]);
        if h[0] != 1 || n > 15 {
            return Err(error::malformed(
                "SID",
                at.0,
                format!("revision {} with {n} sub-authorities", h[0]),
            ));
        }
        let auth = h[2..8].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        let mut s = format!("S-1-{auth}");
        let mut subs = vec![0u8; n * 4];
        core.read(self.k(at + 8), &mut subs)?;
        for c in subs.chunks_exact(4) {
            s.push_str(&format!(
                "-{}",
                u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            ));
        }
        Ok(s)
    }

    fn os_process(p: &WinProcess) -> OsProcess {
        OsProcess {
            pid: p.pid,
            ppid: p.ppid,
            name: p.name.clone(),
            object: p.eprocess,
            translation_root: Some(p.dtb),
            is_kernel: p.peb.0 == 0,
        }
    }
}

/// Builds an address context (a small helper to keep call sites short).
struct AddressOf;
impl AddressOf {
    fn ctx(va: Va, root: Pa) -> vmi_core::AddressContext {
        vmi_core::AddressContext { va, root }
    }
}

impl<D: VmiRead<Architecture = Amd64>> VmiOs<D> for WindowsOs {
    fn name(&self) -> &'static str {
        "windows"
    }

    fn kernel_image_base(&self, _core: &VmiCore<D>) -> Result<Va, VmiError> {
        Ok(self.kernel.base)
    }

    fn kernel_information_string(&self, core: &VmiCore<D>) -> Result<String, VmiError> {
        let ku = Va(0xFFFF_F780_0000_0000);
        let major = core.read_u32(self.k(ku + self.off.ku_major))?;
        let minor = core.read_u32(self.k(ku + self.off.ku_minor))?;
        let build = match self.off.nt_build_number {
            Some(b) => core.read_u32(self.k(self.sym(b)))? & 0xFFFF,
            None => 0,
        };
        Ok(format!(
            "Windows NT {major}.{minor}.{build} ({} {})",
            self.kernel.codeview.pdb_name,
            self.kernel.codeview.isf_key()
        ))
    }

    fn processes(&self, core: &VmiCore<D>) -> Result<Vec<OsProcess>, VmiError> {
        Ok(self
            .process_list(core)?
            .items
            .iter()
            .map(Self::os_process)
            .collect())
    }

    fn threads(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsThread>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .win_threads(core, &p)?
            .into_iter()
            .map(|t| OsThread {
                tid: t.tid,
                pid: t.pid,
                object: t.ethread,
                name: None,
            })
            .collect())
    }

    fn modules(&self, core: &VmiCore<D>) -> Result<Vec<OsModule>, VmiError> {
        Ok(self
            .kernel_modules(core)?
            .into_iter()
            .map(|m| OsModule {
                name: m.name,
                base: m.base,
                size: m.size,
                path: Some(m.path),
            })
            .collect())
    }

    fn memory_regions(&self, core: &VmiCore<D>, pid: u64) -> Result<Vec<OsRegion>, VmiError> {
        let p = self.win_process(core, pid)?;
        Ok(self
            .vads(core, &p)?
            .into_iter()
            .map(|v| OsRegion {
                start: v.start,
                end: v.end + 1,
                protection: v.rights(),
                path: v.file.clone(),
            })
            .collect())
    }

    fn current_process(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsProcess, VmiError> {
        let t = self.current_win_thread(core, registers)?;
        let ep = self.kq(core, t.ethread + self.off.th_process)?;
        Ok(Self::os_process(&self.process_at(core, Va(ep))?))
    }

    fn current_thread(
        &self,
        core: &VmiCore<D>,
        registers: &Registers,
    ) -> Result<OsThread, VmiError> {
        let t = self.current_win_thread(core, registers)?;
        Ok(OsThread {
            tid: t.tid,
            pid: t.pid,
            object: t.ethread,
            name: None,
        })
    }
}
