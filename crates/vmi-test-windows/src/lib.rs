//! Deterministic synthetic Windows x64 memory images for tests.
//!
//! From a real `ntkrnlmp.pdb` ISF (Volatility 3 format; the 12 builds from Windows 7 SP1
//! to Windows 11 21H2 are in `fixtures/isf/`) and a declarative [`GuestSpec`], [`build`]
//! lays out a guest exactly as the ISF says: 4-level page tables with the PML4
//! self-reference, a kernel PE with the ISF's RSDS record and exports,
//! `KUSER_SHARED_DATA`, processes (PEB, loader lists, process parameters, environment),
//! threads and TEBs, VAD trees, handle tables (with the Windows 10 type-index cookie),
//! tokens and SIDs, kernel modules, KPCR/IDT/GDT of CPU 0, and the vCPU 0 registers a
//! hypervisor would report. The result is a raw image ([`GuestImage::raw`]), a full crash
//! dump ([`GuestImage::crash_dump`]) and a [`Manifest`] with the ground truth.
//!
//! **Key decision:** the ISF resolver ([`isf::Isf`]) is this crate's own small code, not
//! `vmi-profile`'s, so a resolver bug cannot be written and read back identically; the
//! Volatility 3 cross-check in `vmi-os-windows` is the third, independent reader.
//!
//! The output is a pure function of (ISF, spec): same inputs, byte-identical image.
//!
//! ```
//! use vmi_test_windows::{GuestSpec, build, isf_path, load_isf};
//! let isf = load_isf("9C00B19DBDE003DBFE4AB4216993C843-1").unwrap();
//! let image = build(&isf, &GuestSpec::default_scenario()).unwrap();
//! assert_eq!(image.manifest.processes.len(), 4);
//! assert_eq!(image.raw().len(), 64 << 20);
//! # let _ = isf_path("x");
//! ```

#![forbid(unsafe_code)]

mod driver;
mod guest;
pub mod isf;
mod mem;
pub mod pe;
mod spec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

pub use driver::ImageDriver;
pub use guest::{BOOT_FILETIME, KNOWN_BUILDS, KUSER_KVA, KUSER_UVA, filetime};
pub use mem::canon;
pub use spec::*;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The ISF is malformed or lacks something needed.
    #[error("isf: {0}")]
    Isf(String),
    /// The ISF's GUID-age is not in [`KNOWN_BUILDS`].
    #[error("unknown build {0}")]
    UnknownBuild(String),
    /// The image is too small.
    #[error("image too small")]
    OutOfMemory,
    /// A layout rule was broken.
    #[error("layout: {0}")]
    Layout(String),
    /// File I/O.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
}

/// SplitMix64: small, deterministic on every platform and version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x005E_ED0F_5EED)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

/// The directory holding `ntkrnlmp.pdb/<GUID>-<age>.json.xz` (a Volatility-style symbol
/// directory without the leading `windows/`).
pub fn isf_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/isf")
}

/// Path of the committed ISF `<GUID>-<age>.json.xz`.
pub fn isf_path(key: &str) -> PathBuf {
    isf_dir()
        .join("ntkrnlmp.pdb")
        .join(format!("{key}.json.xz"))
}

/// Loads a committed ISF by key, once per process (later calls share it).
pub fn load_isf(key: &str) -> Result<Arc<isf::Isf>, BuildError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<isf::Isf>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(i) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        return Ok(Arc::clone(i));
    }
    let i = Arc::new(isf::Isf::load(&isf_path(key))?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.to_owned(), Arc::clone(&i));
    Ok(i)
}

/// Every committed build key (`<GUID>-<age>`), oldest Windows first.
pub fn all_builds() -> impl Iterator<Item = &'static str> {
    KNOWN_BUILDS.iter().map(|b| b.0)
}

/// A built guest.
#[derive(Clone, Debug)]
pub struct GuestImage {
    phys: Vec<u8>,
    used: Vec<bool>,
    runs: Vec<(u64, u64)>,
    /// Ground truth.
    pub manifest: Manifest,
}

/// Builds the guest `spec` describes from `isf`.
pub fn build(isf: &isf::Isf, spec: &GuestSpec) -> Result<GuestImage, BuildError> {
    let mut g = guest::Guest::new(isf, spec.options.clone())?;
    g.build(spec)?;
    Ok(GuestImage {
        phys: g.mem.phys.buf,
        used: g.mem.phys.used,
        runs: g.runs,
        manifest: g.manifest,
    })
}

impl GuestImage {
    /// The raw physical image (file offset = physical address).
    pub fn raw(&self) -> &[u8] {
        &self.phys
    }

    /// The raw image, mutable (for hostile-image tests).
    pub fn raw_mut(&mut self) -> &mut [u8] {
        &mut self.phys
    }

    /// Whether the frame holding `pa` was used by the builder.
    pub fn frame_used(&self, pa: u64) -> bool {
        self.used
            .get((pa / mem::PAGE) as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Translates `va` through the page tables at `root`, as stored in the image.
    pub fn translate(&self, root: u64, va: u64) -> Option<u64> {
        walk(&self.phys, root, va)
    }

    /// Physical address of a kernel VA (System address space).
    pub fn kernel_pa(&self, va: u64) -> Option<u64> {
        self.translate(self.manifest.kernel.dtb, va)
    }

    /// Writes `data` at kernel VA `va` (for hostile-image tests).
    pub fn patch_kernel(&mut self, va: u64, data: &[u8]) -> bool {
        let mut done = 0usize;
        while done < data.len() {
            let cur = va.wrapping_add(done as u64);
            let Some(pa) = self.kernel_pa(cur) else {
                return false;
            };
            let n = (data.len() - done).min((mem::PAGE - (cur & 0xFFF)) as usize);
            let Some(dst) = self.phys.get_mut(pa as usize..pa as usize + n) else {
                return false;
            };
            dst.copy_from_slice(&data[done..done + n]);
            done += n;
        }
        true
    }

    /// The full-memory crash dump (`DUMP_HEADER64`, DumpType 1) of the same guest.
    pub fn crash_dump(&self) -> Vec<u8> {
        let m = &self.manifest;
        let page = mem::PAGE as usize;
        let mut h = b"PAGE".repeat(0x2000 / 4);
        let mut put = |at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
        put(0, b"PAGEDU64");
        put(8, &0xFu32.to_le_bytes());
        let build: u32 = m
            .nt_version
            .rsplit('.')
            .next()
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        put(0xC, &build.to_le_bytes());
        let sym = |n: &str| m.symbols.get(n).copied().unwrap_or(0);
        put(0x10, &m.kernel.dtb.to_le_bytes());
        put(0x18, &0u64.to_le_bytes());
        put(0x20, &sym("PsLoadedModuleList").to_le_bytes());
        put(0x28, &sym("PsActiveProcessHead").to_le_bytes());
        put(0x30, &0x8664u32.to_le_bytes());
        put(0x34, &1u32.to_le_bytes());
        put(0x38, &0xE2u32.to_le_bytes());
        put(0x40, &[0; 32]);
        put(0x80, &m.kernel.kdbg.unwrap_or(0).to_le_bytes());
        let pages: u64 = self.runs.iter().map(|r| r.1).sum();
        put(0x88, &(self.runs.len() as u32).to_le_bytes());
        put(0x8C, &0u32.to_le_bytes());
        put(0x90, &pages.to_le_bytes());
        for (i, (b, c)) in self.runs.iter().enumerate() {
            put(0x98 + 16 * i, &b.to_le_bytes());
            put(0xA0 + 16 * i, &c.to_le_bytes());
        }
        put(0x348, &[0; 0x4D0]);
        put(0x348 + 0x30, &0x10_001Fu32.to_le_bytes());
        put(0xF00, &[0; 0x98]);
        let total = 0x2000 + pages * mem::PAGE;
        put(0xF98, &1u32.to_le_bytes());
        put(0xF9C, &0u32.to_le_bytes());
        put(0xFA0, &total.to_le_bytes());
        put(0xFA8, &filetime(3600).to_le_bytes());
        put(0xFB0, &[0; 0x80]);
        put(0x1030, &(3600u64 * 10_000_000).to_le_bytes());
        put(0x1038, &[0, 0, 0, 0, 0, 0, 0, 0]);
        put(0x1040, &1u32.to_le_bytes());
        put(0x1044, &0x110u32.to_le_bytes());
        let mut out = h;
        out.reserve(pages as usize * page);
        for (b, c) in &self.runs {
            out.extend_from_slice(&self.phys[*b as usize * page..(*b + *c) as usize * page]);
        }
        out
    }

    /// Writes `<path>` (raw), `<path>.json` (manifest) and, if asked, a crash dump.
    pub fn write_files(&self, raw: &Path, dump: Option<&Path>) -> Result<(), BuildError> {
        fn io(p: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
            move |e| BuildError::Io(p.display().to_string(), e)
        }
        std::fs::write(raw, &self.phys).map_err(io(raw))?;
        let mpath = PathBuf::from(format!("{}.json", raw.display()));
        let json = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| BuildError::Layout(e.to_string()))?;
        std::fs::write(&mpath, json).map_err(io(&mpath))?;
        if let Some(d) = dump {
            std::fs::write(d, self.crash_dump()).map_err(io(d))?;
        }
        Ok(())
    }

    /// vCPU 0 registers as a hypervisor would report them.
    pub fn vcpu0(&self) -> vmi_arch_amd64::Registers {
        let v = &self.manifest.vcpu0;
        let mut r = vmi_arch_amd64::Registers {
            cr0: v.cr0,
            cr3: vmi_arch_amd64::Cr3(v.cr3),
            cr4: v.cr4,
            efer: v.efer,
            lstar: v.lstar,
            gs_base: v.gs_base,
            kernel_gs_base: v.kernel_gs_base,
            ..Default::default()
        };
        r.gs.base = v.gs_base;
        r.idtr = vmi_arch_amd64::DescriptorTable {
            base: v.idtr_base,
            limit: v.idtr_limit,
        };
        r.gdtr = vmi_arch_amd64::DescriptorTable {
            base: v.gdtr_base,
            limit: v.gdtr_limit,
        };
        r.cs.selector = 0x10;
        r.rip = v.lstar;
        r
    }

    /// A driver over the raw image, with vCPU 0's registers.
    pub fn driver(&self) -> ImageDriver {
        ImageDriver::new(self.phys.clone(), Some(self.vcpu0()))
    }

    /// A driver over the raw image without registers (a plain memory dump).
    pub fn driver_without_registers(&self) -> ImageDriver {
        ImageDriver::new(self.phys.clone(), None)
    }
}

fn walk(buf: &[u8], root: u64, va: u64) -> Option<u64> {
    let q = |pa: u64| -> Option<u64> {
        let i = usize::try_from(pa).ok()?;
        Some(u64::from_le_bytes(buf.get(i..i + 8)?.try_into().ok()?))
    };
    let mut e = (root & mem::ADDR) | mem::P;
    for shift in [39u32, 30, 21, 12] {
        if e & mem::P == 0 {
            return None;
        }
        e = q((e & mem::ADDR) + ((va >> shift) & 511) * 8)?;
        if (shift == 30 || shift == 21) && e & mem::P != 0 && e & mem::PS != 0 {
            let size = 1u64 << shift;
            return Some((e & mem::ADDR & !(size - 1)) | (va & (size - 1)));
        }
    }
    (e & mem::P != 0).then_some((e & mem::ADDR) | (va & 0xFFF))
}
