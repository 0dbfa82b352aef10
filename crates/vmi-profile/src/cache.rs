//! On-disk profile cache: a compact binary encoding behind a versioned, checksummed header,
//! keyed by build id, banner or PDB identity.
//!
//! File layout (little-endian): `b"VMIPROF\0"`, format version `u32`, key length `u32`,
//! payload length `u64`, CRC-32 of key and payload `u32`, the key text, the payload.
//!
//! Payload (version 3): the metadata (postcard, length-prefixed), the symbols and the types
//! as flat arrays of fixed-size little-endian records (see `compact.rs`), each followed by
//! its name indexes (sorted hash arrays). Version 1 used postcard for everything; decoding a
//! 6.1 kernel's profile (87k symbols, 95k types) took 45-80 ms, mostly varint decoding of
//! every field and rebuilding the name indexes (hashing every name). Records decode in a
//! tight loop and the indexes load as they were stored.
//! A file that fails any check is rejected with [`ProfileError::Cache`]; decoding never
//! panics and never allocates more than the file's size.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{ProfileError, Result};
use crate::profile::{PdbId, Profile};

/// File magic.
pub const MAGIC: [u8; 8] = *b"VMIPROF\0";
/// Format version; bump on any change of the encoded types.
pub const VERSION: u32 = 3;
/// Largest cache file accepted.
pub const MAX_CACHE_FILE: u64 = 1 << 30;

const HEADER: usize = 8 + 4 + 4 + 8 + 4;

/// What identifies a kernel build.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// GNU build id.
    BuildId(Vec<u8>),
    /// The full `linux_banner`.
    Banner(String),
    /// PDB GUID and age.
    Pdb(PdbId),
}

impl CacheKey {
    /// The best key a profile's metadata offers: build id, then PDB, then banner.
    pub fn for_profile(p: &Profile) -> Option<CacheKey> {
        let m = &p.metadata;
        if let Some(b) = &m.build_id {
            return Some(CacheKey::BuildId(b.clone()));
        }
        if let Some(pdb) = m.pdb {
            return Some(CacheKey::Pdb(pdb));
        }
        m.banner.clone().map(CacheKey::Banner)
    }

    /// The key's canonical text (stored in the file and checked on load).
    pub fn text(&self) -> String {
        match self {
            CacheKey::BuildId(b) => {
                let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
                format!("build-id:{hex}")
            }
            CacheKey::Banner(s) => format!("banner:{s}"),
            CacheKey::Pdb(p) => format!("pdb:{p}"),
        }
    }

    /// File name: SHA-256 of the key text (hex, 32 digits) plus `.vmiprof`.
    pub fn file_name(&self) -> String {
        let digest = Sha256::digest(self.text().as_bytes());
        let hex: String = digest[..16].iter().map(|x| format!("{x:02x}")).collect();
        format!("{hex}.vmiprof")
    }
}

/// Encodes a profile with its key.
pub fn encode(profile: &Profile, key: &CacheKey) -> Vec<u8> {
    let key = key.text();
    let payload = encode_payload(profile);
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.as_bytes());
    crc.update(&payload);
    let mut out = Vec::with_capacity(HEADER + key.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a cache file's bytes; `key` must match the stored key. `path` is for messages.
pub fn decode(bytes: &[u8], key: &CacheKey, path: &Path) -> Result<Profile> {
    let bad = |what: String| ProfileError::Cache {
        path: path.to_owned(),
        what,
    };
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    if bytes[..8] != MAGIC {
        return Err(bad("bad magic".into()));
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    let version = u32_at(8);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, this build reads {VERSION}"
        )));
    }
    let key_len = u32_at(12) as u64;
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let payload_len = u64::from_le_bytes(len8);
    let crc = u32_at(24);
    let total = (HEADER as u64)
        .checked_add(key_len)
        .and_then(|n| n.checked_add(payload_len))
        .filter(|&n| n == bytes.len() as u64)
        .ok_or_else(|| {
            bad(format!(
                "lengths (key {key_len}, payload {payload_len}) do not match the {}-byte file",
                bytes.len()
            ))
        })?;
    let key_end = HEADER + key_len as usize;
    let stored_key = &bytes[HEADER..key_end];
    let payload = &bytes[key_end..total as usize];
    let mut h = crc32fast::Hasher::new();
    h.update(stored_key);
    h.update(payload);
    if h.finalize() != crc {
        return Err(bad("checksum mismatch".into()));
    }
    if stored_key != key.text().as_bytes() {
        return Err(bad("entry is for another key".into()));
    }
    decode_payload(payload).map_err(|e| bad(format!("cannot decode: {e}")))
}

fn encode_payload(profile: &Profile) -> Vec<u8> {
    let mut out = Vec::new();
    // Serializing plain data to a Vec cannot fail.
    let meta = postcard::to_stdvec(&profile.metadata).unwrap_or_default();
    crate::compact::put_bytes(&mut out, &meta);
    profile.symbols.write_compact(&mut out);
    profile.types.write_compact(&mut out);
    out
}

fn decode_payload(payload: &[u8]) -> std::result::Result<Profile, String> {
    let mut r = crate::compact::Reader::new(payload);
    let (_, meta) = r.array(1, "metadata")?;
    let metadata = postcard::from_bytes(meta).map_err(|e| format!("metadata: {e}"))?;
    let symbols = crate::symbols::SymbolTable::read_compact(&mut r)?;
    let types = crate::types::Types::read_compact(&mut r)?;
    if !r.is_empty() {
        return Err("trailing bytes after the types".into());
    }
    Ok(Profile::new(metadata, symbols, types))
}

/// A cache directory.
#[derive(Clone, Debug)]
pub struct ProfileCache {
    dir: PathBuf,
}

impl ProfileCache {
    /// A cache in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$VMI_PROFILE_CACHE`, else `$XDG_CACHE_HOME/vmi/profiles`, else
    /// `$HOME/.cache/vmi/profiles`.
    pub fn default_dir() -> Option<PathBuf> {
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        env("VMI_PROFILE_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("vmi").join("profiles")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("vmi").join("profiles")))
    }

    /// The cache at [`default_dir`](Self::default_dir).
    pub fn open_default() -> Option<Self> {
        Self::default_dir().map(Self::new)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry for `key` lives.
    pub fn path_for(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// Loads the entry for `key`: `Ok(None)` if there is none, an error if it is corrupt.
    pub fn load(&self, key: &CacheKey) -> Result<Option<Profile>> {
        let path = self.path_for(key);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ProfileError::io(path, e)),
        };
        if meta.len() > MAX_CACHE_FILE {
            return Err(ProfileError::Cache {
                path,
                what: format!(
                    "{} bytes is above the {MAX_CACHE_FILE}-byte limit",
                    meta.len()
                ),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| ProfileError::io(&path, e))?;
        decode(&bytes, key, &path).map(Some)
    }

    /// Stores a profile under `key` (written to a temporary file, then renamed).
    pub fn store(&self, key: &CacheKey, profile: &Profile) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| ProfileError::io(&self.dir, e))?;
        let path = self.path_for(key);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, encode(profile, key)).map_err(|e| ProfileError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ProfileError::io(&path, e))?;
        Ok(path)
    }

    /// Loads the entry for `key`, or builds it with `make`, stores and returns it.
    pub fn get_or_build(
        &self,
        key: &CacheKey,
        make: impl FnOnce() -> Result<Profile>,
    ) -> Result<Profile> {
        if let Some(p) = self.load(key)? {
            return Ok(p);
        }
        let p = make()?;
        self.store(key, &p)?;
        Ok(p)
    }
}
