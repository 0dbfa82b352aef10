//! [`LinuxOsBuilder`]: kernel discovery plus the profile, from guest memory by default,
//! from files or a cache when given.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use vmi_arch_amd64::{Amd64, PagingMode, Registers};
use vmi_core::{Pa, Va, VcpuId, VmiCore, VmiError, VmiQueryRegisters, VmiRead};
use vmi_profile::cache::{CacheKey, ProfileCache};
use vmi_profile::{Metadata, OsKind, Profile, Symbol, SymbolTable, VmcoreInfo};

use crate::discovery::{self, START_KERNEL_MAP};
use crate::kmem::{CoreMemory, Kmem};
use crate::ksyms;
use crate::offsets::Offsets;
use crate::{KernelInfo, Limits, LinuxOs, ProfileOrigin};

/// Direct-map base without `CONFIG_RANDOMIZE_MEMORY` (4-level paging).
const DIRECT_MAP_L4: u64 = 0xffff_8880_0000_0000;
/// Direct-map base without `CONFIG_RANDOMIZE_MEMORY` (5-level paging).
const DIRECT_MAP_L5: u64 = 0xff11_0000_0000_0000;

/// Longest banner read.
const MAX_BANNER: usize = 1024;

/// Which profile cache to use.
#[derive(Clone, Debug, Default)]
enum CacheChoice {
    /// [`ProfileCache::open_default`].
    #[default]
    Default,
    /// A given directory.
    Dir(PathBuf),
    /// No cache.
    Off,
}

/// Builds a [`LinuxOs`]: finds the kernel and assembles its profile.
///
/// With nothing set, everything comes from guest memory (VMCOREINFO, kallsyms, BTF) and the
/// profile is cached on disk (see [`cache_dir`](Self::cache_dir)). Files and a ready
/// profile are optional inputs.
#[derive(Clone, Debug, Default)]
pub struct LinuxOsBuilder {
    vmcoreinfo: Option<Vec<u8>>,
    registers: Vec<Registers>,
    vmlinux: Option<PathBuf>,
    system_map: Option<PathBuf>,
    isf: Option<PathBuf>,
    profile: Option<Profile>,
    cache: CacheChoice,
    limits: Limits,
}

/// An OS-layer error with a profile error as its source.
pub(crate) fn os_error(
    message: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> VmiError {
    VmiError::Os {
        os: "linux",
        message: message.into(),
        source: Some(Box::new(source)),
    }
}

impl LinuxOsBuilder {
    /// The VMCOREINFO text, e.g. from a dump's `VMCOREINFO` note: skips the memory scan.
    pub fn vmcoreinfo(mut self, text: impl Into<Vec<u8>>) -> Self {
        self.vmcoreinfo = Some(text.into());
        self
    }

    /// Registers of the vCPUs (index = CPU number), for cross-checks, KPTI and the
    /// current task of each vCPU.
    pub fn registers(mut self, registers: Vec<Registers>) -> Self {
        self.registers = registers;
        self
    }

    /// A `vmlinux` ELF or `vmlinuz` bzImage to take BTF types (and symbols if memory has
    /// none) from.
    pub fn vmlinux(mut self, path: impl Into<PathBuf>) -> Self {
        self.vmlinux = Some(path.into());
        self
    }

    /// A System.map (link-time addresses; relocated by the KASLR slide).
    pub fn system_map(mut self, path: impl Into<PathBuf>) -> Self {
        self.system_map = Some(path.into());
        self
    }

    /// A Volatility 3 ISF (`.json` or `.json.xz`).
    pub fn isf(mut self, path: impl Into<PathBuf>) -> Self {
        self.isf = Some(path.into());
        self
    }

    /// A ready profile. Its symbols may be link-time or run-time addresses: they are
    /// relocated so that `_stext` matches the running kernel.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.profile = Some(profile);
        self
    }

    /// Caches profiles in `dir` instead of the default directory.
    pub fn cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = CacheChoice::Dir(dir.into());
        self
    }

    /// Neither reads nor writes the profile cache.
    pub fn no_cache(mut self) -> Self {
        self.cache = CacheChoice::Off;
        self
    }

    /// Bounds for walks and reads.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Reads the registers of every vCPU from the driver (see [`registers`](Self::registers)).
    pub fn registers_from<D>(self, core: &VmiCore<D>) -> Result<Self, VmiError>
    where
        D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
    {
        let n = core.info().vcpus;
        let regs = (0..n)
            .map(|i| core.registers(VcpuId(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.registers(regs))
    }

    fn cache(&self) -> Option<ProfileCache> {
        match &self.cache {
            CacheChoice::Default => ProfileCache::open_default(),
            CacheChoice::Dir(d) => Some(ProfileCache::new(d)),
            CacheChoice::Off => None,
        }
    }

    /// Finds the kernel in `core` and builds the OS layer. Sets the core's paging mode.
    pub fn build<D: VmiRead<Architecture = Amd64>>(
        self,
        core: &VmiCore<D>,
    ) -> Result<LinuxOs, VmiError> {
        let started = Instant::now();
        let found = discovery::find_kernel(core, self.vmcoreinfo.as_deref(), &self.registers)?;
        let info = &found.info;
        let slide = info.kernel_offset.unwrap_or(0);
        let k = Kmem::new(core, found.root, found.mode);
        let mut notes = found.rejected.clone();

        let (profile, origin) = self.assemble_profile(core, k, info, slide, &mut notes)?;
        let profile = Arc::new(profile);

        let sym = |n: &str| profile.symbol_address(n).ok();
        let page_offset_base = match sym("page_offset_base") {
            Some(a) => Va(k.u64(Va(a))?),
            None => {
                notes.push("no page_offset_base symbol: direct map at its fixed base".into());
                Va(match found.mode {
                    PagingMode::Level4 => DIRECT_MAP_L4,
                    PagingMode::Level5 => DIRECT_MAP_L5,
                })
            }
        };
        if !crate::kmem::is_kernel_address(page_offset_base.0, found.mode) {
            return Err(crate::kmem::malformed(
                "page_offset_base",
                page_offset_base.0,
                "not a kernel address",
            ));
        }
        let banner = sym("linux_banner")
            .map(|a| k.cstring(Va(a), MAX_BANNER))
            .transpose()?;
        let offsets = Offsets::load(&profile)
            .map_err(|e| os_error("the profile lacks what the task walker needs", e))?;
        let text = sym("_text").or_else(|| sym("_stext")).map(Va);

        let register_checks = discovery::check_registers(
            core,
            found.root,
            found.mode,
            &self.registers,
            sym("asm_exc_divide_error"),
            sym("entry_SYSCALL_64"),
        );
        let kernel = KernelInfo {
            release: info.osrelease.clone(),
            banner,
            kaslr_offset: slide,
            phys_base: found.phys_base,
            kernel_root: found.root,
            paging_mode: found.mode,
            page_offset_base,
            text,
            kpti: None,
            build_id: info.build_id.clone(),
            vmcoreinfo_origin: found.origin,
            profile_origin: origin,
            register_checks,
            notes,
            discovery_time: started.elapsed(),
        };
        let mut os = LinuxOs {
            kernel,
            profile,
            offsets,
            limits: self.limits,
            registers: self.registers,
            vmcoreinfo: found.info,
        };
        os.kernel.kpti = os.detect_kpti(core);
        Ok(os)
    }

    /// The profile: given, from the cache, or built from memory and files.
    fn assemble_profile<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        k: Kmem<'_, D>,
        info: &VmcoreInfo,
        slide: u64,
        notes: &mut Vec<String>,
    ) -> Result<(Profile, ProfileOrigin), VmiError> {
        let _ = core;
        let mem = CoreMemory(k);
        // A ready profile or ISF.
        let given = match (&self.profile, &self.isf) {
            (Some(p), _) => Some((p.clone(), ProfileOrigin::Given)),
            (None, Some(path)) => Some((
                vmi_profile::isf::load_isf(path)
                    .map_err(|e| os_error(format!("loading the ISF {}", path.display()), e))?,
                ProfileOrigin::Files(vec![path.clone()]),
            )),
            _ => None,
        };
        if let Some((mut p, origin)) = given {
            if p.symbols.is_empty() {
                p.symbols = ksyms::memory_symbols(k, info)
                    .map_err(|e| {
                        os_error(
                            "the given profile has no symbols and kallsyms cannot be read                              (give a System.map: --system-map)",
                            e,
                        )
                    })?
                    .kallsyms
                    .into_table();
            } else {
                relocate_to_runtime(&mut p, info, slide);
            }
            add_vmcoreinfo_symbols(&mut p.symbols, info);
            return Ok((p, origin));
        }

        // Built from memory (and files).
        let mut cached = None;
        let mut sources = Vec::new();
        let mut files = Vec::new();
        let file_profile = match &self.vmlinux {
            Some(path) => {
                files.push(path.clone());
                Some(
                    vmi_profile::linux::profile_from_kernel_image(path)
                        .map_err(|e| os_error(format!("reading {}", path.display()), e))?,
                )
            }
            None => None,
        };
        let mut symbols = match ksyms::memory_symbols(k, info) {
            Ok(s) => {
                sources.push(s.how);
                s.kallsyms.into_table()
            }
            Err(e) => {
                notes.push(format!("kallsyms from memory: {e}"));
                SymbolTable::default()
            }
        };
        if let Some(fp) = &file_profile
            && symbols.is_empty()
            && !fp.symbols.is_empty()
        {
            symbols = fp.symbols.relocated(slide);
            sources.push("kallsyms: vmlinux (relocated by KERNELOFFSET)".into());
        }
        if let Some(path) = &self.system_map {
            files.push(path.clone());
            let map = vmi_profile::sysmap::load_system_map(path)
                .map_err(|e| os_error(format!("reading {}", path.display()), e))?;
            let reloc = map.symbols.relocated(slide);
            if symbols.is_empty() {
                symbols = reloc;
            } else {
                merge_new(&mut symbols, &reloc);
            }
            sources.push(format!("System.map: {}", path.display()));
        }
        let kernel_symbols = !symbols.is_empty();
        add_vmcoreinfo_symbols(&mut symbols, info);
        let types = match file_profile {
            Some(fp) => {
                sources.extend(
                    fp.metadata
                        .sources
                        .iter()
                        .filter(|s| s.starts_with("btf"))
                        .cloned(),
                );
                fp.types
            }
            None => {
                if !kernel_symbols {
                    return Err(no_profile(
                        "no kernel symbols: kallsyms could not be found in guest memory",
                        notes,
                    ));
                }
                let start = symbols.address("__start_BTF");
                let stop = symbols.address("__stop_BTF");
                let (Some(start), Some(stop)) = (start, stop) else {
                    return Err(no_profile(
                        "no kernel types: the kernel has no __start_BTF/__stop_BTF symbols \
                         (built without CONFIG_DEBUG_INFO_BTF)",
                        notes,
                    ));
                };
                sources.push(format!("btf: guest memory {start:#x}..{stop:#x}"));
                match btf_types_cached(&mem, start, stop, self.cache(), notes) {
                    Ok((t, entry)) => {
                        cached = entry;
                        t
                    }
                    Err(e) => {
                        notes.push(format!("btf from memory: {e}"));
                        return Err(no_profile(
                            &format!(
                                "no kernel types: the BTF at {start:#x}..{stop:#x} in guest \
                                 memory cannot be read or parsed"
                            ),
                            notes,
                        ));
                    }
                }
            }
        };
        let banner = symbols
            .address("linux_banner")
            .and_then(|a| k.cstring(Va(a), MAX_BANNER).ok());
        let profile = Profile::new(
            Metadata {
                os: OsKind::Linux,
                kernel_release: info.osrelease.clone(),
                banner,
                build_id: info.build_id.clone(),
                pdb: None,
                sources,
            },
            symbols,
            types,
        );
        let origin = if let Some(path) = cached {
            ProfileOrigin::Cache(path)
        } else if files.is_empty() {
            ProfileOrigin::Memory
        } else {
            ProfileOrigin::Files(files)
        };
        Ok((profile, origin))
    }
}

/// The error for a kernel whose profile cannot be built from memory alone: says what is
/// missing, what to give instead (the CLI's `--kernel`, `--system-map`, `--profile`; the
/// builder's [`LinuxOsBuilder::vmlinux`], [`system_map`](LinuxOsBuilder::system_map),
/// [`isf`](LinuxOsBuilder::isf)), and why memory was not enough.
fn no_profile(what: &str, notes: &[String]) -> VmiError {
    let mut message = format!(
        "{what}; give the kernel's types and symbols from files: --kernel <vmlinux or vmlinuz \
         with BTF> for types (and symbols), --system-map <System.map> for symbols, or \
         --profile <Volatility 3 ISF> for both"
    );
    for n in notes
        .iter()
        .filter(|n| n.starts_with("kallsyms") || n.starts_with("btf"))
    {
        message.push_str("; ");
        message.push_str(n);
    }
    VmiError::Os {
        os: "linux",
        message,
        source: None,
    }
}

/// Adds VMCOREINFO's symbols (e.g. `swapper_pg_dir`, the kallsyms tables, which
/// `/proc/kallsyms` lacks) where the table has no symbol of that name.
fn add_vmcoreinfo_symbols(symbols: &mut SymbolTable, info: &VmcoreInfo) {
    let extra: SymbolTable = info
        .symbols
        .iter()
        .filter(|(name, _)| symbols.get(name).is_none())
        .map(|(name, &address)| Symbol {
            name: name.clone(),
            address,
            kind: None,
        })
        .collect();
    merge_new(symbols, &extra);
}

/// Adds the symbols of `other` whose names `symbols` lacks (filtered here, so that a
/// name is never present twice whatever `SymbolTable::merge` does with duplicates).
fn merge_new(symbols: &mut SymbolTable, other: &SymbolTable) {
    let extra: SymbolTable = other
        .iter()
        .filter(|s| symbols.get(&s.name).is_none())
        .cloned()
        .collect();
    if !extra.is_empty() {
        symbols.merge(&extra);
    }
}

/// Moves a profile's symbols to run-time addresses: by the difference of `_stext` (or
/// another symbol VMCOREINFO knows) between the running kernel and the profile, or by the
/// KASLR slide when no symbol can be compared (link-time addresses assumed).
fn relocate_to_runtime(p: &mut Profile, info: &VmcoreInfo, slide: u64) {
    let delta = ["_stext", "init_top_pgt", "swapper_pg_dir", "init_uts_ns"]
        .iter()
        .find_map(|n| Some(info.symbol(n)?.wrapping_sub(p.symbols.address(n)?)))
        .unwrap_or(slide);
    if delta != 0 {
        p.symbols = p.symbols.relocated(delta);
    }
}

/// The kernel's types from its BTF in guest memory, through the profile cache when there is
/// one. The cache is keyed by the SHA-256 of the BTF bytes just read, never by what the
/// guest claims to be (build id, banner): an entry is used only for the very bytes it was
/// parsed from, so a hostile guest cannot plant types that another guest loads. Returns the
/// cache entry's path when the types came from it.
fn btf_types_cached(
    mem: &dyn vmi_profile::kallsyms::KernelMemory,
    start: u64,
    stop: u64,
    cache: Option<ProfileCache>,
    notes: &mut Vec<String>,
) -> Result<(vmi_profile::Types, Option<PathBuf>), vmi_profile::ProfileError> {
    let bytes = vmi_profile::linux::btf_bytes_from_memory(mem, start, stop)?;
    let key = CacheKey::for_btf(&bytes);
    if let Some(cache) = &cache {
        match cache.load(&key) {
            Ok(Some(p)) => return Ok((p.types, Some(cache.path_for(&key)))),
            Ok(None) => {}
            Err(e) => notes.push(format!("profile cache: {e}")),
        }
    }
    let source = format!("guest memory {start:#x}..{stop:#x}");
    let types = vmi_profile::btf::parse_btf(&bytes, &source)?;
    if let Some(cache) = &cache {
        let entry = Profile::new(
            Metadata {
                os: OsKind::Linux,
                sources: vec![format!("btf: {source}")],
                ..Metadata::default()
            },
            SymbolTable::default(),
            types,
        );
        if let Err(e) = cache.store(&key, &entry) {
            notes.push(format!("profile cache: {e}"));
        }
        return Ok((entry.types, None));
    }
    Ok((types, None))
}

/// `__pa_symbol(va)`: physical address of a kernel-image symbol.
pub fn pa_symbol(va: Va, phys_base: u64) -> Pa {
    Pa(va.0.wrapping_sub(START_KERNEL_MAP).wrapping_add(phys_base))
}
