//! Profiles for a kernel: Volatility ISF files and directories (optionally through the
//! on-disk profile cache).

use std::path::{Path, PathBuf};

use vmi_core::VmiError;
use vmi_profile::Profile;

use crate::WindowsError;
use crate::pe::CodeView;

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
