//! Building a [`WindowsOs`]: find the kernel, then the profile its CodeView record names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{VcpuId, VmiCore, VmiError, VmiQueryRegisters, VmiRead};
use vmi_profile::cache::{CacheKey, ProfileCache};
use vmi_profile::symsrv::{SymbolPath, SymbolPathEntry, SymbolServer};
use vmi_profile::{PdbId, Profile};

use crate::pe::CodeView;
use crate::{
    KernelInfo, WindowsError, WindowsOs, find_kernel, find_kernel_from_registers,
    profile_from_isf_dir, profile_from_isf_dir_cached, profile_from_isf_file,
};

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

/// Builds a [`WindowsOs`]: finds the kernel and loads its profile.
///
/// With nothing set ([`WindowsOs::new`]), the kernel is found in memory alone (see
/// [`find_kernel`]) and the profile is looked for, by the kernel's PDB name, GUID and age,
/// along `_NT_SYMBOL_PATH` when it is set, then in the profile cache and the default symbol
/// cache (no network request unless the symbol path names a server and `vmi-profile` was
/// built with its `symsrv` feature). Each input can be given explicitly instead.
#[derive(Clone, Debug, Default)]
pub struct WindowsOsBuilder {
    registers: Vec<Registers>,
    kernel: Option<KernelInfo>,
    profile: Option<Arc<Profile>>,
    isf: Option<PathBuf>,
    pdb: Option<PathBuf>,
    symbol_path: Option<String>,
    cache: CacheChoice,
}

/// A profile failure for the kernel `cv`.
fn no_profile(
    cv: &CodeView,
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> VmiError {
    VmiError::Os {
        os: "windows",
        message: format!(
            "found the Windows kernel {} {}, but {what}",
            cv.pdb_name,
            cv.isf_key()
        ),
        source,
    }
}

fn profile_error(context: String, e: vmi_profile::ProfileError) -> VmiError {
    VmiError::Os {
        os: "windows",
        message: context,
        source: Some(Box::new(e)),
    }
}

impl WindowsOsBuilder {
    /// Registers of the vCPUs: the kernel is looked for from the first one's `LSTAR` and
    /// IDT before memory is scanned (a crash dump's context has neither: then memory).
    pub fn registers(mut self, registers: Vec<Registers>) -> Self {
        self.registers = registers;
        self
    }

    /// Reads the registers of every vCPU from the driver (see [`registers`](Self::registers)).
    pub fn registers_from<D>(self, core: &VmiCore<D>) -> Result<Self, VmiError>
    where
        D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
    {
        let regs = (0..core.info().vcpus)
            .map(|i| core.registers(VcpuId(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.registers(regs))
    }

    /// The kernel, found by the caller ([`find_kernel`], [`find_kernel_from_registers`]).
    pub fn kernel(mut self, kernel: KernelInfo) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// A ready profile; its PDB identity is not checked.
    pub fn profile(mut self, profile: impl Into<Arc<Profile>>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// A Volatility 3 ISF file (`.json`, `.json.xz`) or a directory of them (see
    /// [`profile_from_isf_dir`]); its PDB identity must be the kernel's.
    pub fn isf(mut self, path: impl Into<PathBuf>) -> Self {
        self.isf = Some(path.into());
        self
    }

    /// The kernel's PDB file; its GUID and age must be the kernel's.
    pub fn pdb(mut self, path: impl Into<PathBuf>) -> Self {
        self.pdb = Some(path.into());
        self
    }

    /// A symbol path in `_NT_SYMBOL_PATH` syntax (`srv*CACHE*URL;DIR`, see
    /// [`vmi_profile::symsrv`]), or a directory of ISF files. Default: `_NT_SYMBOL_PATH`.
    pub fn symbol_path(mut self, path: impl Into<String>) -> Self {
        self.symbol_path = Some(path.into());
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

    fn cache(&self) -> Option<ProfileCache> {
        match &self.cache {
            CacheChoice::Default => ProfileCache::open_default(),
            CacheChoice::Dir(d) => Some(ProfileCache::new(d)),
            CacheChoice::Off => None,
        }
    }

    /// Whether a profile source is configured: given, a file, or a symbol path (set here
    /// or in `_NT_SYMBOL_PATH`). Without one, only the caches are looked in.
    pub fn has_profile_source(&self) -> bool {
        self.profile.is_some()
            || self.isf.is_some()
            || self.pdb.is_some()
            || self.configured_symbol_path().is_some()
    }

    fn configured_symbol_path(&self) -> Option<String> {
        self.symbol_path
            .clone()
            .or_else(|| std::env::var("_NT_SYMBOL_PATH").ok())
            .filter(|s| !s.trim().is_empty())
    }

    /// The kernel: given, else from the first vCPU's registers, else from memory alone.
    pub fn find_kernel<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<KernelInfo, VmiError> {
        if let Some(k) = &self.kernel {
            return Ok(k.clone());
        }
        if let Some(k) = self
            .registers
            .first()
            .and_then(|r| find_kernel_from_registers(core, r).ok())
        {
            return Ok(k);
        }
        find_kernel(core)
    }

    /// The profile of the kernel whose CodeView record is `cv`: given, else the ISF or PDB
    /// file, else along the symbol path, else from the caches.
    pub fn load_profile(&self, cv: &CodeView) -> Result<Arc<Profile>, VmiError> {
        if let Some(p) = &self.profile {
            return Ok(p.clone());
        }
        let id = PdbId {
            guid: cv.guid,
            age: cv.age,
        };
        if let Some(path) = &self.isf {
            let p = if path.is_dir() {
                self.isf_dir(path, cv)
            } else {
                profile_from_isf_file(path, cv)
            };
            return p.map(Arc::new).map_err(|e| {
                no_profile(
                    cv,
                    format!("its profile cannot be loaded from {}", path.display()),
                    Some(Box::new(e)),
                )
            });
        }
        if let Some(path) = &self.pdb {
            let p = vmi_profile::pdb::load_pdb(path)
                .map_err(|e| profile_error(format!("loading {}", path.display()), e))
                .and_then(|p| {
                    if p.metadata.pdb == Some(id) {
                        Ok(p)
                    } else {
                        Err(WindowsError::Profile(format!(
                            "{} is not the PDB of this kernel ({id})",
                            path.display()
                        ))
                        .into())
                    }
                });
            return p.map(Arc::new).map_err(|e| {
                no_profile(
                    cv,
                    format!("its profile cannot be loaded from {}", path.display()),
                    Some(Box::new(e)),
                )
            });
        }
        if let Some(sp) = self.configured_symbol_path() {
            return self.along(&sp, cv).map(Arc::new);
        }
        // Nothing configured: the caches only, no request.
        if let Some(cache) = self.cache()
            && let Ok(Some(p)) = cache.load(&CacheKey::Pdb(id))
            && p.metadata.pdb == Some(id)
        {
            return Ok(Arc::new(p));
        }
        if let Some(dir) = vmi_profile::symsrv::default_symbol_cache() {
            let server = SymbolServer::new(SymbolPath {
                entries: vec![SymbolPathEntry::Dir(dir)],
            })
            .offline(true);
            if let Ok(p) = server.profile_for(&pdb_record(cv)) {
                return Ok(Arc::new(p));
            }
        }
        Err(no_profile(
            cv,
            "no profile: none is cached and no ISF, PDB or symbol path is given".into(),
            None,
        ))
    }

    fn isf_dir(&self, dir: &Path, cv: &CodeView) -> Result<Profile, VmiError> {
        match self.cache() {
            Some(cache) => profile_from_isf_dir_cached(dir, cv, &cache),
            None => profile_from_isf_dir(dir, cv),
        }
    }

    /// Along a symbol path: a directory of ISFs, or `_NT_SYMBOL_PATH` entries.
    fn along(&self, sp: &str, cv: &CodeView) -> Result<Profile, VmiError> {
        if !sp.contains('*') && Path::new(sp).is_dir() {
            return self
                .isf_dir(Path::new(sp), cv)
                .map_err(|e| no_profile(cv, format!("no ISF for it in {sp}"), Some(Box::new(e))));
        }
        let path = SymbolPath::parse(sp)
            .map_err(|e| profile_error(format!("bad symbol path {sp:?}"), e))?;
        let mut server = SymbolServer::new(path);
        if let Some(cache) = self.cache() {
            server = server.with_profile_cache(cache);
        }
        server
            .profile_for(&pdb_record(cv))
            .map_err(|e| no_profile(cv, format!("no PDB for it along {sp}"), Some(Box::new(e))))
    }

    /// Finds the kernel and its profile, and builds the OS layer.
    pub fn build<D: VmiRead<Architecture = Amd64>>(
        self,
        core: &VmiCore<D>,
    ) -> Result<WindowsOs, VmiError> {
        let kernel = self.find_kernel(core)?;
        let profile = self.load_profile(&kernel.codeview)?;
        let cv = kernel.codeview.clone();
        WindowsOs::from_kernel(core, profile, kernel).map_err(|e| {
            no_profile(
                &cv,
                "the profile given does not fit the kernel".into(),
                Some(Box::new(e)),
            )
        })
    }
}

/// The `vmi-profile` form of a CodeView record.
fn pdb_record(cv: &CodeView) -> vmi_profile::pe::CodeView {
    vmi_profile::pe::CodeView {
        path: cv.pdb_name.clone(),
        id: PdbId {
            guid: cv.guid,
            age: cv.age,
        },
    }
}
