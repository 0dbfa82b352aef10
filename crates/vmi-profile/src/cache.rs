//! On-disk profile cache: a compact binary encoding behind a versioned, checksummed header,
//! keyed by the content a profile was built from, or by a PDB identity.
//!
//! **Trust.** An entry outlives the session that wrote it, so its key must never be a claim
//! of the guest it was built from: a hostile guest would plant forged offsets under a build
//! id or banner that every clean guest of that kernel later loads. Profiles parsed from
//! guest memory are keyed by [`CacheKey::BtfSha256`], the SHA-256 of the exact bytes the
//! parser read: a later guest finds the entry only if its own bytes hash the same, in which
//! case parsing them would give the same types. Build ids and banners remain as keys only
//! for profiles made from the analyst's own files (a PDB or an ISF chosen by the guest's
//! claim is still the analyst's content).
//!
//! **Files.** The directory is created `0700` and must be a directory owned by the user,
//! not a symlink. An entry is written to a temporary file with an unpredictable name,
//! opened with `O_CREAT | O_EXCL` (never through a symlink), `fsync`ed and renamed over the
//! entry; entries are opened with `O_NOFOLLOW`.
//!
//! File layout (little-endian): `b"VMIPROF\0"`, format version `u32`, key length `u32`,
//! payload length `u64`, CRC-32 of key and payload `u32`, the key text, the payload.
//!
//! Payload (version 5; 3 had the same layout but build-id and banner keys for profiles
//! from guest memory, so its entries are not trusted, and 4 was a short-lived parallel
//! layout): the metadata (postcard, length-prefixed), the symbols and the types as flat
//! arrays of fixed-size little-endian records (see `compact.rs`), each followed by
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
pub const VERSION: u32 = 5;
/// Largest cache file accepted.
pub const MAX_CACHE_FILE: u64 = 1 << 30;

const HEADER: usize = 8 + 4 + 4 + 8 + 4;

/// What identifies the content of a cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// GNU build id. A guest's claim: only for profiles made from the analyst's files.
    BuildId(Vec<u8>),
    /// The full `linux_banner`. A guest's claim: only for profiles made from the analyst's
    /// files.
    Banner(String),
    /// PDB GUID and age (the profile comes from the analyst's PDB or ISF).
    Pdb(PdbId),
    /// SHA-256 of the BTF bytes the profile's types were parsed from: the key for
    /// anything parsed from guest memory (see [`CacheKey::for_btf`]).
    BtfSha256([u8; 32]),
}

impl CacheKey {
    /// The key of types parsed from these BTF bytes.
    pub fn for_btf(bytes: &[u8]) -> CacheKey {
        CacheKey::BtfSha256(Sha256::digest(bytes).into())
    }

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
            CacheKey::BtfSha256(d) => {
                let hex: String = d.iter().map(|x| format!("{x:02x}")).collect();
                format!("btf-sha256:{hex}")
            }
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

    /// Loads the entry for `key`: `Ok(None)` if there is none, an error if it is corrupt,
    /// a symlink, or larger than [`MAX_CACHE_FILE`].
    pub fn load(&self, key: &CacheKey) -> Result<Option<Profile>> {
        let path = self.path_for(key);
        let file = match open_nofollow(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ProfileError::io(path, e)),
        };
        let meta = file.metadata().map_err(|e| ProfileError::io(&path, e))?;
        if !meta.is_file() {
            return Err(ProfileError::Cache {
                path,
                what: "not a regular file".into(),
            });
        }
        if meta.len() > MAX_CACHE_FILE {
            return Err(ProfileError::Cache {
                path,
                what: format!(
                    "{} bytes is above the {MAX_CACHE_FILE}-byte limit",
                    meta.len()
                ),
            });
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(&file, MAX_CACHE_FILE + 1),
            &mut bytes,
        )
        .map_err(|e| ProfileError::io(&path, e))?;
        decode(&bytes, key, &path).map(Some)
    }

    /// Stores a profile under `key`: written to a new temporary file with an unpredictable
    /// name in the (private) cache directory, synced, then renamed over the entry.
    pub fn store(&self, key: &CacheKey, profile: &Profile) -> Result<PathBuf> {
        use std::io::Write as _;
        self.private_dir()?;
        let path = self.path_for(key);
        let bytes = encode(profile, key);
        let mut attempts = 0;
        let (tmp, mut file) = loop {
            let tmp = self.dir.join(format!(
                ".{}.{}.tmp",
                key.file_name(),
                unpredictable_suffix()
            ));
            match create_new_private(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(ProfileError::io(tmp, e)),
            }
        };
        let written = file
            .write_all(&bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(ProfileError::io(&path, e));
        }
        // The rename is durable once the directory is synced; failing that only costs a
        // rebuild after a crash.
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(path)
    }

    /// Creates the cache directory `0700` if needed and checks that it is a directory
    /// (not a symlink) owned by this user, tightening its mode to `0700`.
    fn private_dir(&self) -> Result<()> {
        let bad = |what: String| ProfileError::Cache {
            path: self.dir.clone(),
            what,
        };
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&self.dir)
            .map_err(|e| ProfileError::io(&self.dir, e))?;
        let meta =
            std::fs::symlink_metadata(&self.dir).map_err(|e| ProfileError::io(&self.dir, e))?;
        if !meta.is_dir() {
            return Err(bad(
                "the cache directory is a symlink or not a directory".into()
            ));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
            let me = effective_uid();
            if meta.uid() != me {
                return Err(bad(format!(
                    "the cache directory is owned by uid {}, not by this user ({me})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| ProfileError::io(&self.dir, e))?;
            }
        }
        Ok(())
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

/// A hard-to-guess file-name suffix: 128 bits from the standard library's randomly keyed
/// hasher (seeded from the OS's random source), the time and a counter.
fn unpredictable_suffix() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut words = [0u64; 2];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u128(nanos);
        h.write_u32(std::process::id());
        h.write_usize(i);
        *w = h.finish();
    }
    format!("{:016x}{:016x}", words[0], words[1])
}

/// Creates `path` for writing, failing if anything (a file or a symlink) is there, mode
/// `0600`.
fn create_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// Opens `path` for reading without following a symlink in its last component.
fn open_nofollow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// The effective uid: the owner of `/proc/self` (`geteuid` would need `unsafe`, which
/// this crate forbids); `u32::MAX` (owns nothing) without `/proc`.
#[cfg(unix)]
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}
