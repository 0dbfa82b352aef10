//! Windows symbol-server client: finds the PDB of a PE image by name, GUID and age in local
//! caches and downloads it from symbol servers, with `_NT_SYMBOL_PATH` syntax.
//!
//! A symbol store keeps `<pdb name>/<GUID><age>/<pdb name>` (the GUID as 32 upper-case hex
//! digits without dashes, the age in upper-case hex; see [`PdbId`]'s `Display`). A symbol
//! path is a `;`-separated list of entries:
//!
//! | entry | meaning |
//! |---|---|
//! | `srv*CACHE*URL` (also `SRV*c:\cache*https://...`, `srv*C1*C2*URL`) | look in each cache, then ask the server; a download is stored in the first cache |
//! | `srv*URL` / `srv**URL` | the server with the default cache ([`SymbolServer::with_default_cache`]) |
//! | `srv*CACHE*DIR` | a local (or mounted) store instead of a URL |
//! | `cache*DIR` (`cache*` alone: the default cache) | files found by later entries are copied here |
//! | `DIR` | a plain directory: `DIR/<name>` (checked against the wanted GUID and age) or a store layout |
//!
//! Offline use: when a cache holds the file, no request is made; [`SymbolServer::offline`]
//! forbids requests altogether. Every file found or downloaded is checked to be a PDB with
//! the wanted GUID and age before it is used or stored. When nothing is found, the error
//! lists every place tried and why. Compressed `.pd_` (CAB) files and `file.ptr` redirects
//! are not supported: only the plain PDB is requested.
//!
//! Downloads (HTTP and HTTPS, through `ureq` and `rustls`) need the crate feature `symsrv`;
//! without it, caches and directories work as usual and each server URL is reported as
//! "not requested (built without the symsrv feature)", so users who never download symbols
//! build no TLS stack.

use std::path::{Path, PathBuf};

use crate::cache::{CacheKey, ProfileCache};
use crate::error::{ProfileError, Result};
use crate::pdb::{MAX_PDB, load_pdb, pdb_id};
use crate::pe::{CodeView, ImageLayout, codeview_from_file, codeview_from_image};
use crate::profile::{PdbId, Profile};

/// Microsoft's public symbol server.
pub const MICROSOFT_SYMBOL_SERVER: &str = "https://msdl.microsoft.com/download/symbols";

/// Where a server entry gets its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Store {
    /// An HTTP(S) symbol server, by base URL (no trailing `/`).
    Http(String),
    /// A store directory (local or mounted share).
    Dir(PathBuf),
}

/// One entry of a symbol path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymbolPathEntry {
    /// `srv*[cache*...]store`: caches checked in order, then the store.
    Server {
        /// Downstream caches; `None` stands for the default cache (`srv**URL`, `srv*URL`).
        caches: Vec<Option<PathBuf>>,
        /// Where files come from.
        store: Store,
    },
    /// `cache*DIR`: files found by later entries are copied here (`None`: default cache).
    Cache(Option<PathBuf>),
    /// A plain directory.
    Dir(PathBuf),
}

/// A parsed symbol path (`_NT_SYMBOL_PATH` syntax).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolPath {
    /// Entries in search order.
    pub entries: Vec<SymbolPathEntry>,
}

impl SymbolPath {
    /// Parses `;`-separated entries; empty entries are ignored.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |what: String| ProfileError::SymbolPath {
            path: text.to_owned(),
            what,
        };
        let mut entries = Vec::new();
        for raw in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let lower = raw.to_ascii_lowercase();
            let parts: Vec<&str> = raw.split('*').map(str::trim).collect();
            if lower.starts_with("srv*") || lower.starts_with("symsrv*") {
                // `symsrv*symsrv.dll*...` names the DLL first.
                let rest = if lower.starts_with("symsrv*") {
                    parts.get(2..).unwrap_or(&[])
                } else {
                    &parts[1..]
                };
                let (store, caches) = rest
                    .split_last()
                    .filter(|(s, _)| !s.is_empty())
                    .ok_or_else(|| bad(format!("entry {raw:?} names no store")))?;
                let caches = caches
                    .iter()
                    .map(|c| (!c.is_empty()).then(|| PathBuf::from(c)))
                    .collect::<Vec<_>>();
                // `srv*URL` uses the default cache.
                let caches = if caches.is_empty() {
                    vec![None]
                } else {
                    caches
                };
                entries.push(SymbolPathEntry::Server {
                    caches,
                    store: parse_store(store),
                });
            } else if lower.starts_with("cache*") {
                if parts.len() > 2 {
                    return Err(bad(format!("entry {raw:?}: cache takes one directory")));
                }
                let dir = parts.get(1).filter(|d| !d.is_empty()).map(PathBuf::from);
                entries.push(SymbolPathEntry::Cache(dir));
            } else if raw.contains('*') {
                return Err(bad(format!(
                    "entry {raw:?} is neither srv*..., cache*... nor a directory"
                )));
            } else {
                entries.push(SymbolPathEntry::Dir(PathBuf::from(raw)));
            }
        }
        if entries.is_empty() {
            return Err(bad("no entry".into()));
        }
        Ok(Self { entries })
    }

    /// `_NT_SYMBOL_PATH` from the environment, if set and not empty.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var("_NT_SYMBOL_PATH") {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

fn parse_store(s: &str) -> Store {
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Store::Http(s.trim_end_matches('/').to_owned())
    } else {
        Store::Dir(PathBuf::from(s))
    }
}

/// The store-relative path of a PDB: `<name>/<GUID><age>/<name>`.
pub fn store_path(name: &str, id: &PdbId) -> String {
    format!("{name}/{id}/{name}")
}

/// A PDB name is used as a path component: no separators, no `..`, no NUL.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0', ':']);
    if ok {
        Ok(())
    } else {
        Err(ProfileError::Pe {
            source_name: "codeview record".to_owned(),
            what: format!("pdb name {name:?} is not a plain file name"),
        })
    }
}

/// Finds and downloads PDBs along a [`SymbolPath`].
#[derive(Clone, Debug)]
pub struct SymbolServer {
    path: SymbolPath,
    default_cache: Option<PathBuf>,
    offline: bool,
    #[cfg(feature = "symsrv")]
    agent: ureq::Agent,
    profiles: Option<ProfileCache>,
}

impl SymbolServer {
    /// A client for `path`; the default cache is `$VMI_SYMBOL_CACHE`, else
    /// `$XDG_CACHE_HOME/vmi/symbols`, else `$HOME/.cache/vmi/symbols`.
    pub fn new(path: SymbolPath) -> Self {
        Self {
            path,
            default_cache: default_symbol_cache(),
            offline: false,
            #[cfg(feature = "symsrv")]
            agent: ureq::Agent::config_builder()
                .timeout_connect(Some(std::time::Duration::from_secs(15)))
                .timeout_recv_response(Some(std::time::Duration::from_secs(60)))
                .user_agent("vmi-profile symbol client")
                .build()
                .new_agent(),
            profiles: None,
        }
    }

    /// Whether this build can download (the crate feature `symsrv`).
    pub const fn can_download() -> bool {
        cfg!(feature = "symsrv")
    }

    /// `srv*<cache>*https://msdl.microsoft.com/download/symbols`.
    pub fn microsoft(cache: impl Into<PathBuf>) -> Self {
        Self::new(SymbolPath {
            entries: vec![SymbolPathEntry::Server {
                caches: vec![Some(cache.into())],
                store: Store::Http(MICROSOFT_SYMBOL_SERVER.to_owned()),
            }],
        })
    }

    /// A client for `_NT_SYMBOL_PATH`, if set.
    pub fn from_env() -> Result<Option<Self>> {
        Ok(SymbolPath::from_env()?.map(Self::new))
    }

    /// The cache used by `srv*URL`, `srv**URL` and `cache*`, and for downloads when the
    /// path names no cache.
    pub fn with_default_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.default_cache = Some(dir.into());
        self
    }

    /// Never make a network request (caches and directories only).
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Also keep the built profiles in a [`ProfileCache`] (keyed by GUID and age), so a
    /// second [`profile_for`](Self::profile_for) skips PDB parsing.
    pub fn with_profile_cache(mut self, cache: ProfileCache) -> Self {
        self.profiles = Some(cache);
        self
    }

    /// The symbol path.
    pub fn path(&self) -> &SymbolPath {
        &self.path
    }

    fn resolve_cache(&self, c: &Option<PathBuf>) -> Option<PathBuf> {
        c.clone().or_else(|| self.default_cache.clone())
    }

    /// Finds the PDB `name` with identity `id`: caches and directories first, then servers
    /// in path order. Returns the local path of the verified file.
    pub fn find_pdb(&self, name: &str, id: &PdbId) -> Result<PathBuf> {
        check_name(name)?;
        let rel = store_path(name, id);
        let mut tried = Vec::new();
        let mut copy_to: Vec<PathBuf> = Vec::new();
        for entry in &self.path.entries {
            match entry {
                SymbolPathEntry::Cache(dir) => {
                    if let Some(d) = self.resolve_cache(dir) {
                        if let Some(p) = check_local(&d.join(&rel), id, &mut tried) {
                            return Ok(p);
                        }
                        copy_to.push(d);
                    } else {
                        tried.push("cache*: no default cache directory".to_owned());
                    }
                }
                SymbolPathEntry::Dir(d) => {
                    for candidate in [d.join(name), d.join(&rel)] {
                        if let Some(p) = check_local(&candidate, id, &mut tried) {
                            return self.copy_into(&p, &copy_to, &rel);
                        }
                    }
                }
                SymbolPathEntry::Server { caches, store } => {
                    let caches: Vec<PathBuf> = caches
                        .iter()
                        .filter_map(|c| self.resolve_cache(c))
                        .collect();
                    for (i, c) in caches.iter().enumerate() {
                        if let Some(p) = check_local(&c.join(&rel), id, &mut tried) {
                            let mut targets = copy_to.clone();
                            targets.extend(caches[..i].iter().cloned());
                            return self.copy_into(&p, &targets, &rel);
                        }
                    }
                    let mut targets = copy_to.clone();
                    targets.extend(caches.iter().cloned());
                    match store {
                        Store::Dir(d) => {
                            if let Some(p) = check_local(&d.join(&rel), id, &mut tried) {
                                return self.copy_into(&p, &targets, &rel);
                            }
                        }
                        Store::Http(base) => {
                            let url = format!("{base}/{rel}");
                            if self.offline {
                                tried.push(format!("{url}: not requested (offline)"));
                                continue;
                            }
                            if !Self::can_download() {
                                tried.push(format!(
                                    "{url}: not requested (built without the symsrv feature)"
                                ));
                                continue;
                            }
                            match self.download(&url, id) {
                                Ok(bytes) => {
                                    let target = targets
                                        .first()
                                        .cloned()
                                        .or_else(|| self.default_cache.clone())
                                        .ok_or_else(|| ProfileError::SymbolPath {
                                            path: format!("{:?}", self.path.entries),
                                            what: "no cache directory to store a download in"
                                                .into(),
                                        })?;
                                    let stored = write_atomic(&target.join(&rel), &bytes)?;
                                    return self.copy_into(&stored, &targets[1..], &rel);
                                }
                                Err(e) => tried.push(format!("{url}: {e}")),
                            }
                        }
                    }
                }
            }
        }
        Err(ProfileError::PdbNotFound {
            name: name.to_owned(),
            id: *id,
            tried,
        })
    }

    /// Copies a found file into further caches (best effort: a read-only cache is skipped)
    /// and returns the path of the file.
    fn copy_into(&self, found: &Path, targets: &[PathBuf], rel: &str) -> Result<PathBuf> {
        for t in targets {
            let dest = t.join(rel);
            if dest != found
                && !dest.exists()
                && let Ok(bytes) = std::fs::read(found)
            {
                let _ = write_atomic(&dest, &bytes);
            }
        }
        Ok(found.to_owned())
    }

    #[cfg(not(feature = "symsrv"))]
    fn download(&self, url: &str, _id: &PdbId) -> std::result::Result<Vec<u8>, String> {
        Err(format!("{url}: built without the symsrv feature"))
    }

    #[cfg(feature = "symsrv")]
    fn download(&self, url: &str, id: &PdbId) -> std::result::Result<Vec<u8>, String> {
        use std::io::Read;
        let resp = self.agent.get(url).call().map_err(|e| match e {
            ureq::Error::StatusCode(code) => format!("http status {code}"),
            other => other.to_string(),
        })?;
        let mut body = Vec::new();
        resp.into_body()
            .into_reader()
            .take(MAX_PDB + 1)
            .read_to_end(&mut body)
            .map_err(|e| format!("reading the body: {e}"))?;
        if body.len() as u64 > MAX_PDB {
            return Err(format!("body above the {MAX_PDB}-byte limit"));
        }
        match pdb_id(&body, url) {
            Ok(got) if got.guid == id.guid && got.age == id.age => Ok(body),
            Ok(got) => Err(format!("served a pdb for {got}, not {id}")),
            Err(e) => Err(format!("served something that is not a pdb: {e}")),
        }
    }

    /// The profile for a CodeView record: from the profile cache if enabled, else from the
    /// PDB found by [`find_pdb`](Self::find_pdb).
    pub fn profile_for(&self, cv: &CodeView) -> Result<Profile> {
        let load = || {
            let path = self.find_pdb(cv.pdb_name(), &cv.id)?;
            load_pdb(&path)
        };
        match &self.profiles {
            Some(cache) => cache.get_or_build(&CacheKey::Pdb(cv.id), load),
            None => load(),
        }
    }

    /// The profile for a PE file (its CodeView record resolved along the symbol path).
    pub fn profile_for_file(&self, pe: &Path) -> Result<Profile> {
        self.profile_for(&codeview_from_file(pe)?)
    }

    /// The profile for a PE image mapped in memory (e.g. read from a guest at a module's
    /// base).
    pub fn profile_for_image(&self, image: &[u8], source: &str) -> Result<Profile> {
        self.profile_for(&codeview_from_image(image, ImageLayout::Memory, source)?)
    }
}

/// The default download cache: `$VMI_SYMBOL_CACHE`, else `$XDG_CACHE_HOME/vmi/symbols`,
/// else `$HOME/.cache/vmi/symbols`.
pub fn default_symbol_cache() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("VMI_SYMBOL_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("vmi").join("symbols")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("vmi").join("symbols")))
}

/// A local candidate: `Some(path)` when it exists and is the wanted PDB; otherwise notes why
/// in `tried`.
fn check_local(path: &Path, id: &PdbId, tried: &mut Vec<String>) -> Option<PathBuf> {
    let meta = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            tried.push(format!("{}: not a file", path.display()));
            return None;
        }
        Err(e) => {
            tried.push(format!("{}: {}", path.display(), io_reason(&e)));
            return None;
        }
    };
    if meta.len() > MAX_PDB {
        tried.push(format!("{}: above the size limit", path.display()));
        return None;
    }
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            tried.push(format!("{}: {}", path.display(), io_reason(&e)));
            return None;
        }
    };
    match pdb_id(&bytes, &path.display().to_string()) {
        Ok(got) if got.guid == id.guid && got.age == id.age => Some(path.to_owned()),
        Ok(got) => {
            tried.push(format!("{}: is {got}", path.display()));
            None
        }
        Err(e) => {
            tried.push(e.to_string());
            None
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "not found".to_owned()
    } else {
        e.to_string()
    }
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| ProfileError::io(dir, e))?;
    let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| ProfileError::io(&tmp, e))?;
    std::fs::rename(&tmp, dest).map_err(|e| ProfileError::io(dest, e))?;
    Ok(dest.to_owned())
}
