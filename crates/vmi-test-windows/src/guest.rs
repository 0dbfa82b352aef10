//! Lays out the guest: kernel image and globals, object types, processes, threads, VADs,
//! handles, tokens, kernel modules, CPU 0, discovery aids.

use std::collections::{BTreeMap, HashMap};

use crate::isf::{Isf, Kind};
use crate::mem::{ACC, DIRTY, Mem, NX, P, PAGE, Phys, RW, SpaceId, canon};
use crate::pe::{self, PeSpec, SCN_DATA, SCN_DISC, SCN_RDATA, SCN_TEXT};
use crate::spec::*;
use crate::{BuildError, Rng};

/// Kernel VA of KUSER_SHARED_DATA.
pub const KUSER_KVA: u64 = 0xFFFF_F780_0000_0000;
/// User VA of KUSER_SHARED_DATA.
pub const KUSER_UVA: u64 = 0x7FFE_0000;
/// FILETIME of 2024-05-01 08:00:00 UTC.
pub const BOOT_FILETIME: u64 = (1_714_550_400 + 11_644_473_600) * 10_000_000;

/// FILETIME `s` seconds after boot.
pub fn filetime(s: u64) -> u64 {
    BOOT_FILETIME + s * 10_000_000
}

/// GUID-age → (major, minor, build, label), from the JPCERT table.
pub const KNOWN_BUILDS: &[(&str, u32, u32, u32, &str)] = &[
    (
        "339E74133576439CBCDF7E0229DA3773-1",
        6,
        1,
        7601,
        "Win7 SP1 6.1.7601.24540",
    ),
    (
        "22597D0B40394E23936F6A24C6C52D5B-1",
        6,
        3,
        9600,
        "Win8.1 6.3.9600.19913",
    ),
    (
        "517E128F7B7C4EA79491DE6B9B9CE190-1",
        10,
        0,
        14393,
        "Server 2016 10.0.14393.4583",
    ),
    (
        "8B11040A5928757B11390AC78F6B6925-1",
        10,
        0,
        17763,
        "Win10 1809 10.0.17763.379",
    ),
    (
        "35A038B1F6E2E8CAF642111E6EC66F57-1",
        10,
        0,
        18362,
        "Win10 1903 10.0.18362.30",
    ),
    (
        "BBED7C2955FBE4522AAA23F4B8677AD9-1",
        10,
        0,
        19041,
        "Win10 2004 10.0.19041.329",
    ),
    (
        "1C9875F76C8F0FBF3EB9A9D7C1C27406-1",
        10,
        0,
        19041,
        "Win10 10.0.19041.450",
    ),
    (
        "9C00B19DBDE003DBFE4AB4216993C843-1",
        10,
        0,
        19041,
        "Win10 10.0.19041.1526",
    ),
    (
        "5F0CF5D532F385333A9B4ABA25CA6596-1",
        10,
        0,
        19041,
        "Win10 10.0.19041.2604",
    ),
    (
        "C2EADB24A615E9472CE47C8ADD31F130-1",
        10,
        0,
        20348,
        "Server 2022 10.0.20348.288",
    ),
    (
        "32C1A669D5FFEFD41091F636CFDB6E99-1",
        10,
        0,
        22000,
        "Win11 21H2 10.0.22000.318",
    ),
    (
        "0CE4A95C0CD782A7596B034D8648E585-1",
        10,
        0,
        22000,
        "Win11 21H2 10.0.22000.2538",
    ),
];

const KS: SpaceId = 0;

/// A VAD to plant: start, end (inclusive), tag, protection, private, file, commit.
type Region = (u64, u64, &'static str, u32, bool, Option<String>, u64);

#[derive(Clone, Copy)]
struct Heap {
    sp: SpaceId,
    cur: u64,
    user: bool,
    pool_type: Option<u64>,
    prev_blocks: u64,
}

fn utf16z(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(u16::to_le_bytes).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

fn basename(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

/// Builder state.
pub(crate) struct Guest<'i> {
    isf: &'i Isf,
    opt: Options,
    rng: Rng,
    pub(crate) mem: Mem,
    pub(crate) manifest: Manifest,
    major: u32,
    minor: u32,
    build: u32,
    selfref: u64,
    dtb: u64,
    kphys: u64,
    kbase: u64,
    drv_base: u64,
    size_of_image: u64,
    npool: Heap,
    ppool: Heap,
    cookie: Option<u8>,
    type_index: HashMap<&'static str, u64>,
    type_objs: HashMap<&'static str, u64>,
    sessions: HashMap<u32, u64>,
    kuser_pa: u64,
    file_device: u64,
    pub(crate) runs: Vec<(u64, u64)>,
    spaces: Vec<SpaceId>,
    heaps: Vec<Option<Heap>>,
    heap_bases: Vec<u64>,
    teb_next: Vec<u64>,
    stack_next: Vec<u64>,
}

const TYPE_NAMES: &[&str] = &[
    "Type",
    "Directory",
    "SymbolicLink",
    "Token",
    "Job",
    "Process",
    "Thread",
    "Partition",
    "UserApcReserve",
    "IoCompletionReserve",
    "ActivityReference",
    "PsSiloContextPaged",
    "PsSiloContextNonPaged",
    "DebugObject",
    "Event",
    "Mutant",
    "Callback",
    "Semaphore",
    "Timer",
    "IRTimer",
    "Profile",
    "KeyedEvent",
    "WindowStation",
    "Desktop",
    "Composition",
    "RawInputManager",
    "CoreMessaging",
    "TpWorkerFactory",
    "Adapter",
    "Controller",
    "Device",
    "Driver",
    "IoCompletion",
    "WaitCompletionPacket",
    "File",
    "TmTm",
    "TmTx",
    "TmRm",
    "TmEn",
    "Section",
    "Session",
    "Key",
    "RegistryTransaction",
    "ALPC Port",
    "EnergyTracker",
    "PowerRequest",
    "WmiGuid",
    "EtwRegistration",
    "EtwSessionDemuxEntry",
    "EtwConsumer",
    "CoverageSampler",
    "DmaAdapter",
    "PcwObject",
    "FilterConnectionPort",
    "FilterCommunicationPort",
    "NdisCmState",
    "DxgkSharedResource",
    "DxgkSharedSyncObject",
    "DxgkSharedSwapChainObject",
    "VRegConfigurationContext",
];

impl<'i> Guest<'i> {
    pub(crate) fn new(isf: &'i Isf, opt: Options) -> Result<Self, BuildError> {
        let key = isf.key();
        let &(_, major, minor, build, label) = KNOWN_BUILDS
            .iter()
            .find(|b| b.0 == key)
            .ok_or_else(|| BuildError::UnknownBuild(key.clone()))?;
        let mut rng = Rng::new(opt.seed);
        let win7 = (major, minor) < (6, 2);
        let discovery = match opt.discovery {
            Discovery::Auto if win7 => Discovery::Fixed,
            Discovery::Auto => Discovery::LowStub,
            d => d,
        };
        let selfref = opt.selfref.unwrap_or(if major < 10 || build < 14393 {
            0x1ED
        } else {
            rng.range(0x100, 0x1EF)
        });
        let dtb = opt.dtb.unwrap_or(if win7 { 0x187000 } else { 0x1AA000 });
        let kphys = 0x200_0000;
        let (mut kbase, npool_base, ppool_base, mut drv_base);
        if win7 {
            kbase = 0xFFFF_F800_0000_0000 + kphys;
            npool_base = 0xFFFF_FA80_00A0_0000;
            ppool_base = 0xFFFF_F8A0_0010_0000;
            drv_base = 0xFFFF_F880_00C0_0000;
        } else if opt.seed == 1 {
            kbase = 0xFFFF_F803_6A20_0000;
            npool_base = 0xFFFF_C58F_2A40_0000;
            ppool_base = 0xFFFF_D20C_8B80_0000;
            drv_base = kbase + 0x420_0000;
        } else {
            kbase = 0xFFFF_F800_0000_0000 | (rng.range(0x100, 0x7F00) << 21);
            let mut pick = || loop {
                let i = rng.range(0x100, 0x1E0);
                if i != selfref {
                    break i;
                }
            };
            let i1 = pick();
            let mut i2 = pick();
            while i2 == i1 {
                i2 = pick();
            }
            npool_base = canon((i1 << 39) | (rng.range(0x100, 0x7F00) << 24));
            ppool_base = canon((i2 << 39) | (rng.range(0x100, 0x7F00) << 24));
            drv_base = kbase + 0x420_0000;
        }
        if discovery == Discovery::Fixed {
            kbase = 0xFFFF_F800_0000_0000 + kphys;
            if !win7 {
                drv_base = kbase + 0x420_0000;
            }
        }
        let opt = Options { discovery, ..opt };
        let mem = Mem {
            phys: Phys::new(opt.size),
            spaces: Vec::new(),
        };
        let heap = |cur, pool_type| Heap {
            sp: KS,
            cur,
            user: false,
            pool_type: Some(pool_type),
            prev_blocks: 0,
        };
        Ok(Self {
            isf,
            rng,
            mem,
            manifest: Manifest {
                isf: key,
                pdb_name: isf.pdb_name.clone(),
                nt_version: format!("{major}.{minor}.{build}"),
                label: label.to_owned(),
                options: Some(opt.clone()),
                ..Manifest::default()
            },
            opt,
            major,
            minor,
            build,
            selfref,
            dtb,
            kphys,
            kbase,
            drv_base,
            size_of_image: 0,
            npool: heap(npool_base, 2),
            ppool: heap(ppool_base, 3),
            cookie: None,
            type_index: HashMap::new(),
            type_objs: HashMap::new(),
            sessions: HashMap::new(),
            kuser_pa: 0,
            file_device: 0,
            runs: Vec::new(),
            spaces: Vec::new(),
            heaps: Vec::new(),
            heap_bases: Vec::new(),
            teb_next: Vec::new(),
            stack_next: Vec::new(),
        })
    }

    // ---- typed writes ---------------------------------------------------------------

    fn set(
        &mut self,
        sp: SpaceId,
        va: u64,
        t: &str,
        path: &str,
        value: u64,
    ) -> Result<(), BuildError> {
        let (off, kind) = self.isf.resolve(t, path)?;
        let at = canon(va.wrapping_add(off));
        match kind {
            Kind::Scalar(size) => {
                let b = value.to_le_bytes();
                self.mem.write(sp, at, &b[..size.min(8) as usize])
            }
            Kind::Bits {
                size,
                position,
                length,
            } => {
                let n = size.min(8) as usize;
                let old = self.mem.read(sp, at, n)?;
                let mut buf = [0u8; 8];
                buf[..n].copy_from_slice(&old);
                let old = u64::from_le_bytes(buf);
                let mask = if length >= 64 {
                    u64::MAX
                } else {
                    (1u64 << length) - 1
                };
                if value & !mask != 0 {
                    return Err(BuildError::Layout(format!(
                        "{t}.{path}: {value:#x} does not fit {length} bits"
                    )));
                }
                let new = (old & !(mask << position)) | (value << position);
                self.mem.write(sp, at, &new.to_le_bytes()[..n])
            }
            Kind::Blob(size) => Err(BuildError::Layout(format!(
                "{t}.{path}: cannot store an integer into {size} bytes"
            ))),
        }
    }

    fn set_bytes(
        &mut self,
        sp: SpaceId,
        va: u64,
        t: &str,
        path: &str,
        data: &[u8],
    ) -> Result<(), BuildError> {
        let (off, kind) = self.isf.resolve(t, path)?;
        let size = match kind {
            Kind::Blob(s) | Kind::Scalar(s) => s,
            Kind::Bits { .. } => 0,
        };
        if data.len() as u64 > size {
            return Err(BuildError::Layout(format!(
                "{t}.{path}: {} bytes > {size}",
                data.len()
            )));
        }
        let mut buf = data.to_vec();
        buf.resize(size as usize, 0);
        self.mem.write(sp, canon(va + off), &buf)
    }

    fn set_opt(
        &mut self,
        sp: SpaceId,
        va: u64,
        t: &str,
        path: &str,
        value: u64,
    ) -> Result<bool, BuildError> {
        if self.isf.has(t, path) {
            self.set(sp, va, t, path, value)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn set_first(
        &mut self,
        sp: SpaceId,
        va: u64,
        t: &str,
        paths: &[&str],
        value: u64,
    ) -> Result<(), BuildError> {
        let p = self
            .isf
            .first(t, paths)
            .ok_or_else(|| BuildError::Isf(format!("{t}: none of {paths:?}")))?;
        self.set(sp, va, t, p, value)
    }

    fn addr(&self, va: u64, t: &str, path: &str) -> Result<u64, BuildError> {
        Ok(canon(va + self.isf.off(t, path)?))
    }

    fn ustr(
        &mut self,
        sp: SpaceId,
        va: u64,
        t: &str,
        path: &str,
        text: &str,
        buf: u64,
    ) -> Result<(), BuildError> {
        let data = utf16z(text);
        self.mem.write(sp, buf, &data)?;
        let len = (data.len() - 2) as u64;
        self.set(sp, va, t, &format!("{path}.Length"), len)?;
        self.set(sp, va, t, &format!("{path}.MaximumLength"), len + 2)?;
        self.set(sp, va, t, &format!("{path}.Buffer"), buf)
    }

    fn list_init(&mut self, sp: SpaceId, head: u64) -> Result<(), BuildError> {
        let mut b = head.to_le_bytes().to_vec();
        b.extend_from_slice(&head.to_le_bytes());
        self.mem.write(sp, head, &b)
    }

    fn list_append(&mut self, sp: SpaceId, head: u64, entry: u64) -> Result<(), BuildError> {
        let blink =
            u64::from_le_bytes(self.mem.read(sp, head + 8, 8)?.try_into().unwrap_or([0; 8]));
        let mut b = head.to_le_bytes().to_vec();
        b.extend_from_slice(&blink.to_le_bytes());
        self.mem.write(sp, entry, &b)?;
        self.mem.write(sp, blink, &entry.to_le_bytes())?;
        self.mem.write(sp, head + 8, &entry.to_le_bytes())
    }

    fn sym(&self, name: &str) -> Result<u64, BuildError> {
        Ok(canon(self.kbase + self.isf.rva(name)?))
    }

    /// Writes a kernel global, never past the next ISF symbol.
    fn put(&mut self, name: &str, data: &[u8]) -> Result<(), BuildError> {
        let gap = self.isf.gap(name)?;
        if data.len() as u64 > gap {
            return Err(BuildError::Layout(format!(
                "{name}: {} bytes but only {gap} before the next symbol",
                data.len()
            )));
        }
        let va = self.sym(name)?;
        self.mem.write(KS, va, data)
    }

    fn put_opt(&mut self, name: &str, data: &[u8]) -> Result<(), BuildError> {
        if self.isf.has_sym(name) {
            self.put(name, data)?;
        }
        Ok(())
    }

    // ---- allocators -----------------------------------------------------------------

    fn halloc(&mut self, h: &mut Heap, size: u64, align: u64) -> Result<u64, BuildError> {
        h.cur = h.cur.div_ceil(align) * align;
        let va = h.cur;
        h.cur += size.max(1);
        self.mem.map_new(h.sp, va, size.max(1), h.user, true)?;
        Ok(va)
    }

    fn halloc_pages(&mut self, h: &mut Heap, n: u64) -> Result<u64, BuildError> {
        h.cur = h.cur.div_ceil(PAGE) * PAGE;
        self.halloc(h, n * PAGE, PAGE)
    }

    fn wstr(&mut self, h: &mut Heap, text: &str) -> Result<u64, BuildError> {
        let data = utf16z(text);
        let va = self.halloc(h, data.len() as u64, 16)?;
        self.mem.write(h.sp, va, &data)?;
        Ok(va)
    }

    fn kstr(&mut self, text: &str) -> Result<u64, BuildError> {
        let mut h = self.ppool;
        let r = self.wstr(&mut h, text);
        self.ppool = h;
        r
    }

    fn pool_next_body(&self, h: &Heap, size: u64) -> Result<u64, BuildError> {
        let hsz = self.isf.sizeof("_POOL_HEADER")?;
        let total = (hsz + size + 15) & !15;
        let mut cur = (h.cur + 15) & !15;
        if (cur & 0xFFF) + total > PAGE {
            cur = cur.div_ceil(PAGE) * PAGE;
        }
        Ok(cur + hsz)
    }

    fn pool_alloc_in(&mut self, h: &mut Heap, size: u64, tag: &[u8; 4]) -> Result<u64, BuildError> {
        let hsz = self.isf.sizeof("_POOL_HEADER")?;
        let total = (hsz + size + 15) & !15;
        if total > PAGE - 16 {
            return self.halloc_pages(h, size.div_ceil(PAGE));
        }
        h.cur = (h.cur + 15) & !15;
        if (h.cur & 0xFFF) + total > PAGE {
            h.cur = h.cur.div_ceil(PAGE) * PAGE;
        }
        if h.cur & 0xFFF == 0 {
            h.prev_blocks = 0;
        }
        let va = self.halloc(h, total, 16)?;
        self.set(KS, va, "_POOL_HEADER", "BlockSize", total / 16)?;
        self.set(KS, va, "_POOL_HEADER", "PreviousSize", h.prev_blocks)?;
        self.set(KS, va, "_POOL_HEADER", "PoolType", h.pool_type.unwrap_or(2))?;
        self.set(
            KS,
            va,
            "_POOL_HEADER",
            "PoolTag",
            u64::from(u32::from_le_bytes(*tag)),
        )?;
        h.prev_blocks = total / 16;
        Ok(va + hsz)
    }

    fn npool_alloc(&mut self, size: u64, tag: &[u8; 4]) -> Result<u64, BuildError> {
        let mut h = self.npool;
        let r = self.pool_alloc_in(&mut h, size, tag);
        self.npool = h;
        r
    }

    fn ppool_alloc(&mut self, size: u64, tag: &[u8; 4]) -> Result<u64, BuildError> {
        let mut h = self.ppool;
        let r = self.pool_alloc_in(&mut h, size, tag);
        self.ppool = h;
        r
    }

    fn npool_pages(&mut self, n: u64) -> Result<u64, BuildError> {
        let mut h = self.npool;
        let r = self.halloc_pages(&mut h, n);
        self.npool = h;
        r
    }

    fn ppool_pages(&mut self, n: u64) -> Result<u64, BuildError> {
        let mut h = self.ppool;
        let r = self.halloc_pages(&mut h, n);
        self.ppool = h;
        r
    }

    /// `POOL_HEADER | [NAME_INFO] | OBJECT_HEADER | body`; returns the body VA.
    fn new_object(
        &mut self,
        type_name: &'static str,
        body_type: &str,
        tag: &[u8; 4],
        name: Option<&str>,
        paged: bool,
    ) -> Result<u64, BuildError> {
        let isf = self.isf;
        let body_off = isf.off("_OBJECT_HEADER", "Body")?;
        let bsize = isf.sizeof(body_type)?;
        let name_sz = if name.is_some() {
            isf.sizeof("_OBJECT_HEADER_NAME_INFO")?
        } else {
            0
        };
        let idx = self.type_index.get(type_name).copied().unwrap_or(2);
        let mut h = if paged { self.ppool } else { self.npool };
        if let Some(c) = self.cookie {
            // Avoid header addresses whose stored TypeIndex would be 0 (real Windows can
            // have them; Volatility skips them, which would make the cross-check flaky).
            for _ in 0..32 {
                let hdr = self.pool_next_body(&h, name_sz + body_off + bsize)? + name_sz;
                if idx ^ u64::from(c) ^ ((hdr >> 8) & 0xFF) != 0 {
                    break;
                }
                h.cur += 0x10;
            }
        }
        let start = self.pool_alloc_in(&mut h, name_sz + body_off + bsize, tag)?;
        if paged {
            self.ppool = h;
        } else {
            self.npool = h;
        }
        let hdr = start + name_sz;
        let body = hdr + body_off;
        self.set(KS, hdr, "_OBJECT_HEADER", "PointerCount", 3)?;
        self.set(KS, hdr, "_OBJECT_HEADER", "HandleCount", 1)?;
        if isf.has("_OBJECT_HEADER", "TypeIndex") {
            let enc = match self.cookie {
                Some(c) => idx ^ u64::from(c) ^ ((hdr >> 8) & 0xFF),
                None => idx,
            };
            self.set(KS, hdr, "_OBJECT_HEADER", "TypeIndex", enc)?;
        }
        let mut mask = 0;
        if let Some(n) = name {
            mask |= 2;
            let buf = self.kstr(n)?;
            self.ustr(KS, start, "_OBJECT_HEADER_NAME_INFO", "Name", n, buf)?;
        }
        self.set_opt(KS, hdr, "_OBJECT_HEADER", "InfoMask", mask)?;
        Ok(body)
    }

    // ---- build ----------------------------------------------------------------------

    pub(crate) fn build(&mut self, spec: &GuestSpec) -> Result<(), BuildError> {
        self.mem.phys.reserve(0, PAGE)?;
        if self.opt.discovery == Discovery::LowStub {
            self.mem.phys.reserve(0x1000, PAGE)?;
        }
        self.mem.phys.reserve(self.dtb, PAGE)?;
        let ks = self.mem.new_space(Some(self.dtb))?;
        debug_assert_eq!(ks, KS);
        self.mem.phys.setq(
            self.dtb + self.selfref * 8,
            self.dtb | P | RW | ACC | DIRTY | NX,
        )?;
        let mut soi = (self.isf.max_rva() + 0x2000 + 0xFFFF) & !0xFFFF;
        if self.opt.large_pages {
            soi = (soi + 0x1F_FFFF) & !0x1F_FFFF;
        }
        self.size_of_image = soi;
        self.mem.phys.reserve(self.kphys, soi)?;
        self.mem.phys.cursor = self.dtb + PAGE;
        self.kernel_image()?;
        self.kuser()?;
        self.object_types()?;
        self.kernel_globals()?;
        for sid in [0u32, 1] {
            let n = self.isf.sizeof("_MM_SESSION_SPACE")?.div_ceil(PAGE);
            let va = self.npool_pages(n)?;
            self.set(KS, va, "_MM_SESSION_SPACE", "SessionId", u64::from(sid))?;
            self.set_opt(KS, va, "_MM_SESSION_SPACE", "ReferenceCount", 1)?;
            self.sessions.insert(sid, va);
        }
        self.file_device = self.new_object(
            "Device",
            "_DEVICE_OBJECT",
            b"Devi",
            Some("HarddiskVolume3"),
            false,
        )?;
        self.set(KS, self.file_device, "_DEVICE_OBJECT", "Type", 3)?;
        let dsz = self.isf.sizeof("_DEVICE_OBJECT")?;
        self.set(KS, self.file_device, "_DEVICE_OBJECT", "Size", dsz)?;
        for p in &spec.processes {
            self.new_process(p)?;
        }
        let system = self
            .manifest
            .processes
            .first()
            .map(|p| p.eprocess)
            .unwrap_or(0);
        self.put("PsInitialSystemProcess", &system.to_le_bytes())?;
        for (i, p) in spec.processes.iter().enumerate() {
            let mut items = Vec::new();
            for h in &p.handles {
                items.push(self.handle_object(h)?);
            }
            if i + 1 == spec.processes.len() {
                for k in 0..self.opt.extra_handles {
                    let n = format!("VmiEvent{k:04}");
                    let o = self.new_object("Event", "_KEVENT", b"Even", Some(&n), false)?;
                    self.set(KS, o, "_KEVENT", "Header.Type", 0)?;
                    items.push((o, "Event", 0x1F_0003, n));
                }
            }
            self.add_handles(i, items)?;
        }
        self.kernel_modules(spec)?;
        self.cpu()?;
        if self.opt.kdbg {
            self.kdbg()?;
        }
        self.finalize_spaces()?;
        if self.opt.discovery == Discovery::LowStub {
            self.low_stub()?;
        }
        self.self_check()?;
        if self.opt.kva_shadow {
            self.kva_shadow()?;
        }
        for p in &mut self.manifest.processes {
            p.eprocess_pa = self.mem.pa(KS, p.eprocess)?;
        }
        if let Some(seed) = self.opt.noise {
            let mut r = Rng::new(seed);
            for (pfn, used) in self.mem.phys.used.iter().enumerate() {
                if !used {
                    let page =
                        &mut self.mem.phys.buf[pfn * PAGE as usize..(pfn + 1) * PAGE as usize];
                    for c in page.chunks_exact_mut(8) {
                        c.copy_from_slice(&r.next().to_le_bytes());
                    }
                }
            }
        }
        Ok(())
    }

    fn kernel_image(&mut self) -> Result<(), BuildError> {
        let isf = self.isf;
        let soi = self.size_of_image;
        if self.opt.large_pages {
            for off in (0..soi).step_by(0x20_0000) {
                self.mem.map_large(KS, self.kbase + off, self.kphys + off)?;
            }
        } else {
            for off in (0..soi).step_by(PAGE as usize) {
                self.mem
                    .map(KS, self.kbase + off, self.kphys + off, false, true, false)?;
            }
        }
        let text_end: u32 = if soi > 0x40_0000 {
            0x20_0000
        } else {
            0x10_0000
        };
        let rdata_end = text_end + 0x10_0000;
        let soi32 = soi as u32;
        let sections: [pe::Section; 5] = [
            (".text", 0x1000, text_end - 0x1000, SCN_TEXT),
            (".rdata", text_end, rdata_end - text_end, SCN_RDATA),
            (".data", rdata_end, soi32 - 0x20000 - rdata_end, SCN_DATA),
            ("INIT", soi32 - 0x20000, 0x10000, SCN_DISC),
            (".reloc", soi32 - 0x10000, 0x10000, SCN_DISC | 0x0200_0000),
        ];
        let debug_rva = text_end + 0x2340;
        let entry = if isf.has_sym("KiSystemStartup") {
            isf.rva("KiSystemStartup")? as u32
        } else {
            0x1000
        };
        let names = [
            "PsInitialSystemProcess",
            "PsLoadedModuleList",
            "KeNumberProcessors",
            "MmSystemRangeStart",
            "MmHighestUserAddress",
            "MmUserProbeAddress",
            "NtBuildNumber",
            "PsProcessType",
            "PsThreadType",
            "IoFileObjectType",
            "ExEventObjectType",
            "KdDebuggerEnabled",
            "KeServiceDescriptorTable",
            "PsGetProcessId",
            "PsGetProcessImageFileName",
            "PsGetProcessPeb",
            "PsLookupProcessByProcessId",
            "IoGetCurrentProcess",
            "RtlGetVersion",
            "KeBugCheckEx",
            "DbgPrint",
            "ExAllocatePoolWithTag",
        ];
        let exports: Vec<(String, u32)> = names
            .iter()
            .filter(|n| isf.has_sym(n))
            .map(|n| Ok(((*n).to_owned(), isf.rva(n)? as u32)))
            .collect::<Result<_, BuildError>>()?;
        let exp_rva = debug_rva + 0x200;
        let exp = pe::build_exports("ntoskrnl.exe", exp_rva, &exports);
        let (hdr, dbg) = pe::build_pe(&PeSpec {
            image_base: self.kbase,
            size_of_image: soi32,
            sections: &sections,
            pdb_name: &isf.pdb_name,
            guid: &isf.guid,
            age: isf.age,
            debug_rva,
            dll: false,
            subsystem: 1,
            entry_rva: entry,
            os_version: (self.major as u16, self.minor as u16),
            export_dir: Some((exp_rva, exp.len() as u32)),
        });
        self.mem.write(KS, self.kbase, &hdr)?;
        self.mem
            .write(KS, self.kbase + u64::from(debug_rva), &dbg)?;
        self.mem.write(KS, self.kbase + u64::from(exp_rva), &exp)?;
        self.manifest.kernel = KernelTruth {
            base: self.kbase,
            size: soi,
            pa: self.kphys,
            dtb: self.dtb,
            selfref_index: self.selfref,
            pte_base: canon(self.selfref << 39),
            discovery: self.opt.discovery,
            guid: isf.guid.clone(),
            age: isf.age,
            debug_rva: u64::from(debug_rva),
            exports: exports
                .iter()
                .map(|(n, r)| (n.clone(), canon(self.kbase + u64::from(*r))))
                .collect(),
            kdbg: None,
            low_stub_target: None,
            cookie: None,
        };
        Ok(())
    }

    fn kuser(&mut self) -> Result<(), BuildError> {
        self.kuser_pa = self.mem.phys.alloc(1)?;
        self.mem
            .map(KS, KUSER_KVA, self.kuser_pa, false, false, true)?;
        let t = "_KUSER_SHARED_DATA";
        let k = KUSER_KVA;
        self.set_opt(KS, k, t, "TickCountMultiplier", 0x0FA0_0000)?;
        for (f, v) in [
            ("SystemTime", filetime(3600)),
            ("InterruptTime", 3600 * 10_000_000),
        ] {
            self.set(KS, k, t, &format!("{f}.LowPart"), v & 0xFFFF_FFFF)?;
            self.set(KS, k, t, &format!("{f}.High1Time"), v >> 32)?;
            self.set(KS, k, t, &format!("{f}.High2Time"), v >> 32)?;
        }
        self.set_opt(KS, k, t, "ImageNumberLow", 0x8664)?;
        self.set_opt(KS, k, t, "ImageNumberHigh", 0x8664)?;
        let root: Vec<u8> = "C:\\Windows"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        self.set_bytes(KS, k, t, "NtSystemRoot", &root)?;
        self.set(KS, k, t, "NtProductType", 1)?;
        self.set(KS, k, t, "ProductTypeIsValid", 1)?;
        self.set(KS, k, t, "NtMajorVersion", u64::from(self.major))?;
        self.set(KS, k, t, "NtMinorVersion", u64::from(self.minor))?;
        self.set_opt(KS, k, t, "NtBuildNumber", u64::from(self.build))?;
        self.set_opt(KS, k, t, "NumberOfPhysicalPages", self.opt.size / PAGE)?;
        self.set_opt(KS, k, t, "ActiveProcessorCount", 1)?;
        self.set_opt(KS, k, t, "ActiveGroupCount", 1)?;
        self.manifest.kuser_pa = self.kuser_pa;
        Ok(())
    }

    fn object_types(&mut self) -> Result<(), BuildError> {
        let isf = self.isf;
        if isf.has_sym("ObHeaderCookie") {
            let c = self.rng.range(1, 256) as u8;
            self.cookie = Some(c);
            self.put("ObHeaderCookie", &[c])?;
            self.manifest.kernel.cookie = Some(c);
        }
        let order = [
            "CREATOR_INFO",
            "NAME_INFO",
            "HANDLE_INFO",
            "QUOTA_INFO",
            "PROCESS_INFO",
            "AUDIT_INFO",
            "EXTENDED_INFO",
            "HANDLE_REVOCATION_INFO",
            "PADDING_INFO",
        ];
        let sizes: Vec<u64> = order
            .iter()
            .map(|h| format!("_OBJECT_HEADER_{h}"))
            .filter(|t| isf.has_type(t))
            .map(|t| isf.sizeof(&t))
            .collect::<Result<_, _>>()?;
        let table: Vec<u8> = (0..1u32 << sizes.len())
            .map(|m| {
                (sizes
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| m & (1 << i) != 0)
                    .map(|(_, s)| s)
                    .sum::<u64>()
                    & 0xFF) as u8
            })
            .collect();
        self.put("ObpInfoMaskToOffset", &table)?;
        for (i, n) in TYPE_NAMES.iter().enumerate() {
            self.type_index.insert(n, i as u64 + 2);
        }
        let mut slots: Vec<u64> = vec![0, 0xBAD0_B0B0];
        for n in TYPE_NAMES {
            let body = self.new_object("Type", "_OBJECT_TYPE", b"ObjT", None, false)?;
            let buf = self.kstr(n)?;
            self.ustr(KS, body, "_OBJECT_TYPE", "Name", n, buf)?;
            self.set(KS, body, "_OBJECT_TYPE", "Index", self.type_index[n])?;
            let tl = self.addr(body, "_OBJECT_TYPE", "TypeList")?;
            self.set_opt(KS, body, "_OBJECT_TYPE", "TypeList.Flink", tl)?;
            self.set_opt(KS, body, "_OBJECT_TYPE", "TypeList.Blink", tl)?;
            let mut key = [b' '; 4];
            for (d, s) in key.iter_mut().zip(n.bytes()) {
                *d = s;
            }
            self.set_opt(
                KS,
                body,
                "_OBJECT_TYPE",
                "Key",
                u64::from(u32::from_le_bytes(key)),
            )?;
            slots.push(body);
            self.type_objs.insert(n, body);
        }
        slots.push(0);
        let bytes: Vec<u8> = slots.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put("ObTypeIndexTable", &bytes)?;
        for (s, n) in [
            ("PsProcessType", "Process"),
            ("PsThreadType", "Thread"),
            ("IoFileObjectType", "File"),
            ("ExEventObjectType", "Event"),
            ("ExMutantObjectType", "Mutant"),
            ("IoDeviceObjectType", "Device"),
            ("IoDriverObjectType", "Driver"),
        ] {
            let v = self.type_objs[n];
            self.put_opt(s, &v.to_le_bytes())?;
        }
        Ok(())
    }

    fn kernel_globals(&mut self) -> Result<(), BuildError> {
        let isf = self.isf;
        for s in [
            "PsActiveProcessHead",
            "PsLoadedModuleList",
            "HandleTableListHead",
        ] {
            if isf.has_sym(s) {
                let h = self.sym(s)?;
                self.list_init(KS, h)?;
            }
        }
        self.put_opt(
            "NtBuildNumber",
            &(0xF000_0000u32 | self.build).to_le_bytes(),
        )?;
        self.put_opt("KeNumberProcessors", &1u32.to_le_bytes())?;
        self.put_opt(
            "MmSystemRangeStart",
            &0xFFFF_8000_0000_0000u64.to_le_bytes(),
        )?;
        self.put_opt("MmHighestUserAddress", &0x7FFF_FFFE_FFFFu64.to_le_bytes())?;
        self.put_opt("MmUserProbeAddress", &0x7FFF_FFFF_0000u64.to_le_bytes())?;
        self.put_opt("MmPteBase", &canon(self.selfref << 39).to_le_bytes())?;
        if isf.has_sym("NtBuildLab") {
            let lab = format!("{}.1.amd64fre.vmi_synth.240501-0800\0", self.build);
            self.put("NtBuildLab", lab.as_bytes())?;
        }
        let base = [0x01u32, 0x02, 0x10, 0x20, 0x04, 0x08, 0x40, 0x80];
        let extra = [0u32, 0x200, 0x100, 0x400];
        let vals: Vec<u8> = (0..32)
            .flat_map(|i| (base[i & 7] | extra[i >> 3]).to_le_bytes())
            .collect();
        self.put("MmProtectToValue", &vals)?;
        if isf.has_sym("KdVersionBlock") && isf.has_type("_DBGKD_GET_VERSION64") {
            let v = self.sym("KdVersionBlock")?;
            let t = "_DBGKD_GET_VERSION64";
            for (f, x) in [
                ("MajorVersion", 0xF),
                ("MinorVersion", u64::from(self.build)),
                ("ProtocolVersion", 6),
                ("KdSecondaryVersion", 2),
                ("Flags", 0x47),
                ("MachineType", 0x8664),
                ("MaxPacketType", 0x0C),
                ("MaxStateChange", 3),
                ("MaxManipulate", 0x33),
                ("KernBase", self.kbase),
            ] {
                self.set(KS, v, t, f, x)?;
            }
            let l = self.sym("PsLoadedModuleList")?;
            self.set(KS, v, t, "PsLoadedModuleList", l)?;
        }
        let last = self.opt.size / PAGE;
        self.runs = vec![(1, 0x9F - 1), (0x100, last - 0x100)];
        if isf.has_sym("MmPhysicalMemoryBlock") && isf.has_type("_PHYSICAL_MEMORY_DESCRIPTOR") {
            let run_sz = isf.sizeof("_PHYSICAL_MEMORY_RUN")?;
            let t = "_PHYSICAL_MEMORY_DESCRIPTOR";
            let size = isf.off(t, "Run")? + run_sz * self.runs.len() as u64;
            let pmd = self.npool_alloc(size, b"MmPh")?;
            self.set(KS, pmd, t, "NumberOfRuns", self.runs.len() as u64)?;
            self.set(
                KS,
                pmd,
                t,
                "NumberOfPages",
                self.runs.iter().map(|r| r.1).sum(),
            )?;
            for (i, (b, c)) in self.runs.clone().into_iter().enumerate() {
                self.set(KS, pmd, t, &format!("Run[{i}].BasePage"), b)?;
                self.set(KS, pmd, t, &format!("Run[{i}].PageCount"), c)?;
            }
            self.put("MmPhysicalMemoryBlock", &pmd.to_le_bytes())?;
        }
        self.manifest.physical_runs = self
            .runs
            .iter()
            .map(|(b, c)| (b * PAGE, c * PAGE))
            .collect();
        for s in [
            "PsActiveProcessHead",
            "PsLoadedModuleList",
            "PsInitialSystemProcess",
            "ObTypeIndexTable",
            "MmProtectToValue",
            "KiProcessorBlock",
        ] {
            if isf.has_sym(s) {
                let v = self.sym(s)?;
                self.manifest.symbols.insert(s.to_owned(), v);
            }
        }
        Ok(())
    }

    fn file_object(&mut self, path: &str) -> Result<u64, BuildError> {
        let fo = self.new_object("File", "_FILE_OBJECT", b"File", None, false)?;
        let t = "_FILE_OBJECT";
        self.set(KS, fo, t, "Type", 5)?;
        let sz = self.isf.sizeof(t)?;
        self.set(KS, fo, t, "Size", sz)?;
        self.set(KS, fo, t, "DeviceObject", self.file_device)?;
        let buf = self.kstr(path)?;
        self.ustr(KS, fo, t, "FileName", path, buf)?;
        self.set_opt(KS, fo, t, "ReadAccess", 1)?;
        self.set_opt(KS, fo, t, "SharedRead", 1)?;
        Ok(fo)
    }

    fn handle_object(
        &mut self,
        h: &HandleSpec,
    ) -> Result<(u64, &'static str, u32, String), BuildError> {
        let find = |m: &Manifest, pid: u64| {
            m.process(pid)
                .cloned()
                .ok_or_else(|| BuildError::Layout(format!("handle to unknown pid {pid}")))
        };
        Ok(match h {
            HandleSpec::Event(n) => {
                let o = self.new_object("Event", "_KEVENT", b"Even", Some(n), false)?;
                self.set(KS, o, "_KEVENT", "Header.Type", 0)?;
                (o, "Event", 0x1F_0003, n.clone())
            }
            HandleSpec::Mutant(n) => {
                let o = self.new_object("Mutant", "_KMUTANT", b"Muta", Some(n), false)?;
                self.set(KS, o, "_KMUTANT", "Header.Type", 2)?;
                (o, "Mutant", 0x1F_0001, n.clone())
            }
            HandleSpec::File(p) => {
                let o = self.file_object(p)?;
                (
                    o,
                    "File",
                    0x12_019F,
                    format!("\\Device\\HarddiskVolume3{p}"),
                )
            }
            HandleSpec::Process(pid) => {
                let p = find(&self.manifest, *pid)?;
                (
                    p.eprocess,
                    "Process",
                    0x1F_FFFF,
                    format!("{} Pid {}", p.name, p.pid),
                )
            }
            HandleSpec::Thread(pid, i) => {
                let p = find(&self.manifest, *pid)?;
                let t = p
                    .threads
                    .get(*i)
                    .ok_or_else(|| BuildError::Layout(format!("no thread {i} in {pid}")))?;
                (
                    t.ethread,
                    "Thread",
                    0x1F_FFFF,
                    format!("Tid {} Pid {}", t.tid, p.pid),
                )
            }
        })
    }

    fn new_process(&mut self, spec: &ProcessSpec) -> Result<(), BuildError> {
        let isf = self.isf;
        let user = spec.image.is_some();
        let sp = if user { self.mem.new_space(None)? } else { KS };
        let pml4 = self.mem.spaces[sp].pml4;
        let dtb_raw = pml4 | if user { self.opt.pcid } else { 0 };
        let ep = self.new_object("Process", "_EPROCESS", b"Proc", None, false)?;
        let t = "_EPROCESS";
        self.set(KS, ep, t, "Pcb.Header.Type", 3)?;
        self.set_opt(
            KS,
            ep,
            t,
            "Pcb.Header.Size",
            (isf.sizeof("_KPROCESS")? / 4) & 0xFF,
        )?;
        self.set(KS, ep, t, "Pcb.DirectoryTableBase", dtb_raw)?;
        self.set_opt(KS, ep, t, "Pcb.BasePriority", 8)?;
        let a = self.addr(ep, t, "Pcb.ThreadListHead")?;
        self.list_init(KS, a)?;
        let a = self.addr(ep, t, "ThreadListHead")?;
        self.list_init(KS, a)?;
        self.set(KS, ep, t, "UniqueProcessId", spec.pid)?;
        self.set(KS, ep, t, "InheritedFromUniqueProcessId", spec.ppid)?;
        let name: Vec<u8> = spec.name.bytes().take(14).collect();
        self.set_bytes(KS, ep, t, "ImageFileName", &name)?;
        let create = filetime(spec.create_s);
        self.set(KS, ep, t, "CreateTime.QuadPart", create)?;
        self.set_opt(KS, ep, t, "ExitStatus", 0x103)?;
        if let Some(s) = spec.session {
            let sva = *self
                .sessions
                .get(&s)
                .ok_or_else(|| BuildError::Layout(format!("no session {s}")))?;
            self.set(KS, ep, t, "Session", sva)?;
        }
        let head = self.sym("PsActiveProcessHead")?;
        let links = self.addr(ep, t, "ActiveProcessLinks")?;
        self.list_append(KS, head, links)?;
        let sids: Vec<String> = if spec.session.unwrap_or(0) == 0 {
            vec!["S-1-5-18".into(), "S-1-5-32-544".into(), "S-1-1-0".into()]
        } else {
            vec![
                "S-1-5-21-1111111111-2222222222-3333333333-1001".into(),
                "S-1-1-0".into(),
                "S-1-5-32-545".into(),
                "S-1-5-11".into(),
            ]
        };
        let privs: u64 = if spec.session == Some(1) {
            0x080_0000
        } else {
            0x1F_FFFF_FFF0
        };
        let token = self.token(&sids, privs)?;
        self.set(KS, ep, t, "Token.Value", token | 7)?;
        let mut truth = ProcessTruth {
            name: String::from_utf8_lossy(&name).into_owned(),
            pid: spec.pid,
            ppid: spec.ppid,
            eprocess: ep,
            eprocess_pa: 0,
            dtb: pml4,
            directory_table_base: dtb_raw,
            session: spec.session,
            create_time: create,
            user,
            token,
            sids,
            privileges_present: if isf.has("_TOKEN", "Privileges.Present") {
                privs
            } else {
                0
            },
            privileges_enabled: if isf.has("_TOKEN", "Privileges.Present") {
                privs & 0x80_0000
            } else {
                0
            },
            image_path: spec.image.clone(),
            nt_image_path: None,
            cmdline: None,
            env: vec![],
            peb: 0,
            threads: vec![],
            modules: vec![],
            vads: vec![],
            handles: vec![],
            handle_table_levels: 0,
            special_pages: vec![],
        };
        if let Some(image) = &spec.image {
            let nt = format!("\\Device\\HarddiskVolume3{}", image.get(2..).unwrap_or(""));
            let oni = self.ppool_alloc(isf.sizeof("_OBJECT_NAME_INFORMATION")?, b"SeOn")?;
            let buf = self.kstr(&nt)?;
            self.ustr(KS, oni, "_OBJECT_NAME_INFORMATION", "Name", &nt, buf)?;
            self.set_opt(KS, ep, t, "SeAuditProcessCreationInfo.ImageFileName", oni)?;
            truth.nt_image_path = Some(nt);
        }
        let idx = self.manifest.processes.len();
        self.spaces.push(sp);
        self.heaps.push(None);
        self.heap_bases.push(0);
        self.teb_next.push(0);
        self.stack_next.push(0);
        if user {
            self.user_space(idx, &mut truth, spec)?;
        }
        for i in 0..spec.threads {
            self.thread(idx, &mut truth, i)?;
        }
        self.set(KS, ep, t, "ActiveThreads", truth.threads.len() as u64)?;
        if user {
            self.vads(idx, &mut truth)?;
        }
        self.manifest.processes.push(truth);
        Ok(())
    }

    fn token(&mut self, sids: &[String], privileges: u64) -> Result<u64, BuildError> {
        let isf = self.isf;
        let tk = self.new_object("Token", "_TOKEN", b"Toke", None, true)?;
        let t = "_TOKEN";
        let sa_sz = isf.sizeof("_SID_AND_ATTRIBUTES")?;
        let arr = self.ppool_alloc(sids.len() as u64 * sa_sz, b"TokS")?;
        for (i, sid) in sids.iter().enumerate() {
            let parts: Vec<u64> = sid
                .split('-')
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let (rev, auth, subs) = (parts[0], parts[1], &parts[2..]);
            let mut blob = vec![rev as u8, subs.len() as u8];
            blob.extend_from_slice(&auth.to_be_bytes()[2..]);
            for s in subs {
                blob.extend_from_slice(&(*s as u32).to_le_bytes());
            }
            let sva = self.ppool_alloc(blob.len() as u64, b"TokS")?;
            self.mem.write(KS, sva, &blob)?;
            let e = arr + i as u64 * sa_sz;
            self.set(KS, e, "_SID_AND_ATTRIBUTES", "Sid", sva)?;
            self.set(
                KS,
                e,
                "_SID_AND_ATTRIBUTES",
                "Attributes",
                if i == 0 { 0 } else { 7 },
            )?;
        }
        self.set(KS, tk, t, "UserAndGroups", arr)?;
        self.set(KS, tk, t, "UserAndGroupCount", sids.len() as u64)?;
        if isf.has(t, "Privileges.Present") {
            self.set(KS, tk, t, "Privileges.Present", privileges)?;
            self.set(KS, tk, t, "Privileges.Enabled", privileges & 0x80_0000)?;
            self.set(
                KS,
                tk,
                t,
                "Privileges.EnabledByDefault",
                privileges & 0x80_0000,
            )?;
        }
        if isf.has(t, "TokenSource.SourceName") {
            self.set_bytes(KS, tk, t, "TokenSource.SourceName", b"User32  ")?;
        }
        Ok(tk)
    }

    fn user_space(
        &mut self,
        idx: usize,
        proc_: &mut ProcessTruth,
        spec: &ProcessSpec,
    ) -> Result<(), BuildError> {
        let isf = self.isf;
        let sp = self.spaces[idx];
        let ep = proc_.eprocess;
        self.mem
            .map(sp, KUSER_UVA, self.kuser_pa, true, false, true)?;
        let peb_va = (0xA0_0000_0000 + self.rng.range(0x100, 0xFFF) * 0x100_0000) & !(PAGE - 1);
        let heap_base = 0x200_0000_0000 + self.rng.range(0x10, 0xFF) * 0x1000_0000;
        proc_.peb = peb_va;
        self.heap_bases[idx] = heap_base;
        let mut uheap = Heap {
            sp,
            cur: heap_base,
            user: true,
            pool_type: None,
            prev_blocks: 0,
        };
        self.halloc(&mut uheap, 0x40, 16)?;
        self.mem.map_new(sp, peb_va, PAGE * 4, true, true)?;
        self.teb_next[idx] = peb_va + PAGE;
        self.stack_next[idx] = peb_va - 0x1000_0000;
        let image = spec.image.clone().unwrap_or_default();
        let exe_base = 0x7FF6_0000_0000 + self.rng.range(0x100, 0xFFF) * 0x10000;
        let mut mods: Vec<(String, String, u64, u64, bool)> = vec![(
            basename(&image).to_owned(),
            image.clone(),
            exe_base,
            0x25000,
            false,
        )];
        let mut dll_base = 0x7FFD_0000_0000 + self.rng.range(0x100, 0x7FF) * 0x10_0000;
        for (bn, full) in &spec.dlls {
            let size = if bn.eq_ignore_ascii_case("ntdll.dll") {
                0x1F_0000
            } else {
                0xC_0000
            };
            mods.push((bn.clone(), full.clone(), dll_base, size, true));
            dll_base -= 0x40_0000;
        }
        for (bn, full, base, size, dll) in &mods {
            let stem = bn
                .rsplit_once('.')
                .map_or(bn.as_str(), |x| x.0)
                .to_lowercase();
            let pdb = format!("{stem}.pdb");
            let guid = pe::fake_guid(&pdb);
            let s32 = *size as u32;
            let secs: [pe::Section; 3] = [
                (".text", 0x1000, s32 / 2 - 0x1000, SCN_TEXT),
                (".rdata", s32 / 2, s32 / 4, SCN_RDATA),
                (".data", s32 / 2 + s32 / 4, s32 / 4, SCN_DATA),
            ];
            let dbg_rva = s32 / 2 + 0x100;
            let (hdr, dbg) = pe::build_pe(&PeSpec {
                image_base: *base,
                size_of_image: s32,
                sections: &secs,
                pdb_name: &pdb,
                guid: &guid,
                age: 1,
                debug_rva: dbg_rva,
                dll: *dll,
                subsystem: 3,
                entry_rva: 0x1010,
                os_version: (self.major as u16, self.minor as u16),
                export_dir: None,
            });
            self.mem.map_new(sp, *base, PAGE, true, true)?;
            self.mem.write(sp, *base, &hdr)?;
            self.mem
                .map_new(sp, base + u64::from(dbg_rva), PAGE, true, true)?;
            self.mem.write(sp, base + u64::from(dbg_rva), &dbg)?;
            proc_.modules.push(UserModuleTruth {
                name: bn.clone(),
                path: full.clone(),
                base: *base,
                size: *size,
                pdb,
                guid,
                age: 1,
                ldr_entry: 0,
                in_init: false,
                load_time: 0,
            });
        }
        let ntdll = proc_
            .modules
            .iter()
            .find(|m| m.name.eq_ignore_ascii_case("ntdll.dll"))
            .cloned()
            .ok_or_else(|| BuildError::Layout("a user process needs ntdll.dll".into()))?;
        let ldr = ntdll.base + ntdll.size / 2 + ntdll.size / 4 + 0x3C0;
        self.mem.map_new(sp, ldr, PAGE, true, true)?;
        let lt = "_PEB_LDR_DATA";
        self.set(sp, ldr, lt, "Length", isf.sizeof(lt)?)?;
        self.set(sp, ldr, lt, "Initialized", 1)?;
        for l in [
            "InLoadOrderModuleList",
            "InMemoryOrderModuleList",
            "InInitializationOrderModuleList",
        ] {
            let a = self.addr(ldr, lt, l)?;
            self.list_init(sp, a)?;
        }
        let et = "_LDR_DATA_TABLE_ENTRY";
        for i in 0..proc_.modules.len() {
            let m = proc_.modules[i].clone();
            let le = self.halloc(&mut uheap, isf.sizeof(et)?, 16)?;
            for (list, link) in [
                ("InLoadOrderModuleList", "InLoadOrderLinks"),
                ("InMemoryOrderModuleList", "InMemoryOrderLinks"),
            ] {
                let h = self.addr(ldr, lt, list)?;
                let e = self.addr(le, et, link)?;
                self.list_append(sp, h, e)?;
            }
            let init = self.addr(le, et, "InInitializationOrderLinks")?;
            if i > 0 {
                let h = self.addr(ldr, lt, "InInitializationOrderModuleList")?;
                self.list_append(sp, h, init)?;
            } else {
                self.list_init(sp, init)?;
            }
            self.set(sp, le, et, "DllBase", m.base)?;
            self.set(sp, le, et, "EntryPoint", m.base + 0x1010)?;
            self.set(sp, le, et, "SizeOfImage", m.size)?;
            let b = self.wstr(&mut uheap, &m.path)?;
            self.ustr(sp, le, et, "FullDllName", &m.path, b)?;
            let b = self.wstr(&mut uheap, &m.name)?;
            self.ustr(sp, le, et, "BaseDllName", &m.name, b)?;
            self.set_first(sp, le, et, &["ObsoleteLoadCount", "LoadCount"], 0xFFFF)?;
            self.set_opt(sp, le, et, "TimeDateStamp", u64::from(pe::TIMESTAMP))?;
            let lt_ = proc_.create_time + i as u64 * 10_000;
            self.set_opt(sp, le, et, "LoadTime.QuadPart", lt_)?;
            self.set_opt(
                sp,
                le,
                et,
                "Flags",
                if i > 0 { 0x000C_C2CC } else { 0x0008_A2CC },
            )?;
            self.set_opt(sp, le, et, "ReferenceCount", 1)?;
            if isf.has(et, "HashLinks") {
                let a = self.addr(le, et, "HashLinks")?;
                self.list_init(sp, a)?;
            }
            let mm = &mut proc_.modules[i];
            mm.ldr_entry = le;
            mm.in_init = i > 0;
            mm.load_time = lt_;
        }
        let pt = "_RTL_USER_PROCESS_PARAMETERS";
        let pp = self.halloc(&mut uheap, isf.sizeof(pt)?, 16)?;
        self.set(sp, pp, pt, "MaximumLength", isf.sizeof(pt)?)?;
        self.set(sp, pp, pt, "Length", isf.sizeof(pt)?)?;
        self.set(sp, pp, pt, "Flags", 1)?;
        for (f, text) in [
            ("ImagePathName", image.as_str()),
            ("CommandLine", spec.cmdline.as_str()),
            ("CurrentDirectory.DosPath", "C:\\Windows\\system32\\"),
            ("WindowTitle", image.as_str()),
        ] {
            let b = self.wstr(&mut uheap, text)?;
            self.ustr(sp, pp, pt, f, text, b)?;
        }
        let mut env: Vec<(String, String)> = vec![
            ("SystemRoot".into(), "C:\\Windows".into()),
            ("ComSpec".into(), "C:\\Windows\\system32\\cmd.exe".into()),
        ];
        env.extend(spec.env.iter().cloned());
        let mut block = Vec::new();
        for (k, v) in &env {
            block.extend(utf16z(&format!("{k}={v}")));
        }
        block.extend_from_slice(&[0, 0]);
        let env_va = self.halloc(&mut uheap, block.len() as u64, 16)?;
        self.mem.write(sp, env_va, &block)?;
        self.set(sp, pp, pt, "Environment", env_va)?;
        self.set_opt(sp, pp, pt, "EnvironmentSize", block.len() as u64)?;
        let pb = "_PEB";
        for (f, v) in [
            ("ImageBaseAddress", exe_base),
            ("Ldr", ldr),
            ("ProcessParameters", pp),
            ("ProcessHeap", heap_base),
            ("NumberOfProcessors", 1),
            ("OSMajorVersion", u64::from(self.major)),
            ("OSMinorVersion", u64::from(self.minor)),
            ("OSBuildNumber", u64::from(self.build)),
            ("OSPlatformId", 2),
            ("ImageSubsystem", 3),
            ("ImageSubsystemMajorVersion", 6),
        ] {
            self.set(sp, peb_va, pb, f, v)?;
        }
        self.set_opt(
            sp,
            peb_va,
            pb,
            "SessionId",
            u64::from(spec.session.unwrap_or(0)),
        )?;
        self.set(KS, ep, "_EPROCESS", "Peb", peb_va)?;
        self.set_opt(KS, ep, "_EPROCESS", "SectionBaseAddress", exe_base)?;
        proc_.cmdline = Some(spec.cmdline.clone());
        proc_.env = env;
        self.heaps[idx] = Some(uheap);
        self.special_pages(idx, proc_, heap_base + 0x8_0000)
    }

    fn special_pages(
        &mut self,
        idx: usize,
        proc_: &mut ProcessTruth,
        va: u64,
    ) -> Result<(), BuildError> {
        let sp = self.spaces[idx];
        let prot = 4 << 5;
        let pid = proc_.pid;
        let pa = self.mem.phys.alloc(1)?;
        self.mem.map(sp, va, pa, true, true, true)?;
        let m = format!("VMI_PRESENT_MARKER_{pid}");
        self.mem.write(sp, va, m.as_bytes())?;
        let page = |state: &str, va, pa, marker, off| SpecialPage {
            va,
            state: state.to_owned(),
            pa,
            marker,
            pagefile_offset: off,
        };
        proc_
            .special_pages
            .push(page("present", va, Some(pa), Some(m), None));
        let pa = self.mem.phys.alloc(1)?;
        let m = format!("VMI_TRANSITION_MARKER_{pid}");
        self.mem.phys.write(pa, m.as_bytes())?;
        self.mem
            .set_pte(sp, va + PAGE, pa | (1 << 11) | prot | NX, true)?;
        proc_
            .special_pages
            .push(page("transition", va + PAGE, Some(pa), Some(m), None));
        self.mem
            .set_pte(sp, va + 2 * PAGE, (0x1234 << 32) | prot, true)?;
        proc_.special_pages.push(page(
            "pagefile",
            va + 2 * PAGE,
            None,
            None,
            Some(0x1234 * PAGE),
        ));
        self.mem.set_pte(sp, va + 3 * PAGE, prot, true)?;
        proc_
            .special_pages
            .push(page("demand_zero", va + 3 * PAGE, None, None, None));
        Ok(())
    }

    fn thread(&mut self, idx: usize, proc_: &mut ProcessTruth, i: usize) -> Result<(), BuildError> {
        let pid = proc_.pid;
        let tid = if pid != 4 {
            pid + 4 * (i as u64 + 1)
        } else {
            8 + 4 * i as u64
        };
        let et = self.new_object("Thread", "_ETHREAD", b"Thre", None, false)?;
        let t = "_ETHREAD";
        self.set(KS, et, t, "Tcb.Header.Type", 6)?;
        self.set(KS, et, t, "Tcb.Process", proc_.eprocess)?;
        self.set_opt(KS, et, t, "Tcb.State", 5)?;
        self.set_opt(KS, et, t, "Tcb.WaitReason", 6)?;
        let kstack = canon(0xFFFF_E380_0000_0000 + pid * 0x10_0000 + i as u64 * 0x8000);
        self.set_opt(KS, et, t, "Tcb.InitialStack", kstack + 0x6000)?;
        self.set_opt(KS, et, t, "Tcb.StackBase", kstack + 0x6000)?;
        self.set_opt(KS, et, t, "Tcb.StackLimit", kstack)?;
        self.set_opt(KS, et, t, "Tcb.KernelStack", kstack + 0x5800)?;
        self.set(KS, et, t, "Cid.UniqueProcess", pid)?;
        self.set(KS, et, t, "Cid.UniqueThread", tid)?;
        let ct = proc_.create_time + i as u64 * 1000;
        self.set(KS, et, t, "CreateTime.QuadPart", ct)?;
        let (start, w32, teb, stack);
        if proc_.user {
            let sp = self.spaces[idx];
            let ntdll = proc_
                .modules
                .iter()
                .find(|m| m.name.eq_ignore_ascii_case("ntdll.dll"))
                .map_or(0, |m| m.base);
            let exe = proc_.modules.first().map_or(0, |m| m.base);
            start = ntdll + 0x2CE30;
            w32 = exe + 0x1010 + i as u64 * 0x40;
            teb = self.teb_next[idx];
            self.teb_next[idx] += PAGE;
            self.mem.map_new(sp, teb, PAGE, true, true)?;
            let top = self.stack_next[idx];
            self.stack_next[idx] -= 0x10_0000;
            self.mem.map_new(sp, top - 0x2000, 0x2000, true, true)?;
            let tt = "_TEB";
            for (f, v) in [
                ("NtTib.Self", teb),
                ("NtTib.StackBase", top),
                ("NtTib.StackLimit", top - 0x2000),
                ("ClientId.UniqueProcess", pid),
                ("ClientId.UniqueThread", tid),
                ("ProcessEnvironmentBlock", proc_.peb),
            ] {
                self.set(sp, teb, tt, f, v)?;
            }
            self.set(KS, et, t, "Tcb.Teb", teb)?;
            stack = (top - 0x10_0000, top);
        } else {
            start = self.kbase + 0x1000 + 0x40 * i as u64;
            w32 = start;
            teb = 0;
            stack = (0, 0);
        }
        self.set(KS, et, t, "StartAddress", start)?;
        self.set(KS, et, t, "Win32StartAddress", w32)?;
        let h = self.addr(proc_.eprocess, "_EPROCESS", "ThreadListHead")?;
        let e = self.addr(et, t, "ThreadListEntry")?;
        self.list_append(KS, h, e)?;
        let h = self.addr(proc_.eprocess, "_EPROCESS", "Pcb.ThreadListHead")?;
        let e = self.addr(et, t, "Tcb.ThreadListEntry")?;
        self.list_append(KS, h, e)?;
        proc_.threads.push(ThreadTruth {
            tid,
            ethread: et,
            teb,
            stack,
            start,
            win32start: w32,
            create_time: ct,
        });
        Ok(())
    }

    fn vads(&mut self, idx: usize, proc_: &mut ProcessTruth) -> Result<(), BuildError> {
        let isf = self.isf;
        let mut regions: Vec<Region> = Vec::new();
        for m in &proc_.modules {
            regions.push((
                m.base,
                m.base + m.size - 1,
                "Vad ",
                7,
                false,
                Some(m.path.clone()),
                2,
            ));
        }
        regions.push((
            proc_.peb,
            proc_.peb + 4 * PAGE - 1,
            "VadS",
            4,
            true,
            None,
            4,
        ));
        let hb = self.heap_bases[idx];
        regions.push((hb, hb + 0x10_0000 - 1, "VadS", 4, true, None, 16));
        for th in &proc_.threads {
            regions.push((th.stack.0, th.stack.1 - 1, "VadS", 4, true, None, 2));
        }
        regions.push((KUSER_UVA, KUSER_UVA + PAGE - 1, "VadS", 1, true, None, 1));
        regions.sort();
        let vt = "_MMVAD_SHORT";
        let mut nodes = Vec::new();
        for (s, e, tag, prot, private, path, commit) in regions {
            let tname = if path.is_some() { "_MMVAD" } else { vt };
            let mut tagb = [0u8; 4];
            tagb.copy_from_slice(tag.as_bytes());
            let va = self.npool_alloc(isf.sizeof(tname)?, &tagb)?;
            let (vs, ve) = (s >> 12, e >> 12);
            if isf.has(vt, "StartingVpnHigh") {
                self.set(KS, va, vt, "StartingVpn", vs & 0xFFFF_FFFF)?;
                self.set(KS, va, vt, "StartingVpnHigh", vs >> 32)?;
                self.set(KS, va, vt, "EndingVpn", ve & 0xFFFF_FFFF)?;
                self.set(KS, va, vt, "EndingVpnHigh", ve >> 32)?;
            } else {
                self.set(KS, va, vt, "StartingVpn", vs)?;
                self.set(KS, va, vt, "EndingVpn", ve)?;
            }
            self.set(KS, va, vt, "u.VadFlags.Protection", u64::from(prot))?;
            self.set(KS, va, vt, "u.VadFlags.PrivateMemory", u64::from(private))?;
            self.set(
                KS,
                va,
                vt,
                "u.VadFlags.VadType",
                if path.is_some() { 2 } else { 0 },
            )?;
            self.set_first(
                KS,
                va,
                vt,
                &["u1.VadFlags1.CommitCharge", "u.VadFlags.CommitCharge"],
                commit,
            )?;
            self.set_opt(KS, va, vt, "u1.VadFlags1.MemCommit", u64::from(private))?;
            self.set_opt(KS, va, vt, "ReferenceCount", 1)?;
            if let Some(p) = &path {
                let fo = self.file_object(p.get(2..).unwrap_or(""))?;
                let ca = self.npool_alloc(isf.sizeof("_CONTROL_AREA")?, b"MmCa")?;
                let ct = "_CONTROL_AREA";
                self.set(KS, ca, ct, "FilePointer.Value", fo | 1)?;
                for f in [
                    "NumberOfMappedViews",
                    "NumberOfUserReferences",
                    "NumberOfSectionReferences",
                    "u.Flags.Image",
                    "u.Flags.File",
                ] {
                    self.set_opt(KS, ca, ct, f, 1)?;
                }
                let ss = self.npool_alloc(isf.sizeof("_SUBSECTION")?, b"MmSt")?;
                self.set(KS, ss, "_SUBSECTION", "ControlArea", ca)?;
                self.set(KS, va, "_MMVAD", "Subsection", ss)?;
                self.set_opt(KS, va, "_MMVAD", "VadsProcess", proc_.eprocess | 1)?;
            }
            nodes.push(VadTruth {
                start: s,
                end: e,
                tag: tag.to_owned(),
                protection: prot,
                private,
                file: path,
                commit,
                va,
                parent: 0,
            });
        }
        let n = nodes.len();
        let root = self.vad_tree(&mut nodes, 0, n, 0)?;
        let ep = proc_.eprocess;
        let t = "_EPROCESS";
        if isf.has(t, "VadRoot.Root") {
            self.set(KS, ep, t, "VadRoot.Root", root)?;
            self.set_opt(KS, ep, t, "VadCount", n as u64)?;
        } else if isf.has(t, "VadRoot.BalancedRoot") {
            let br = self.addr(ep, t, "VadRoot.BalancedRoot")?;
            self.set(KS, ep, t, "VadRoot.BalancedRoot.RightChild", root)?;
            self.set(KS, ep, t, "VadRoot.BalancedRoot.u1.Parent", br)?;
            self.set_opt(KS, ep, t, "VadRoot.NumberGenericTableElements", n as u64)?;
            self.set_opt(
                KS,
                ep,
                t,
                "VadRoot.DepthOfTree",
                u64::from(usize::BITS - n.leading_zeros()).max(1),
            )?;
            self.set(KS, root, vt, "u1.Parent", br)?;
        } else {
            self.set(KS, ep, t, "VadRoot", root)?;
        }
        proc_.vads = nodes;
        Ok(())
    }

    fn vad_tree(
        &mut self,
        nodes: &mut [VadTruth],
        lo: usize,
        hi: usize,
        parent: u64,
    ) -> Result<u64, BuildError> {
        if lo >= hi {
            return Ok(0);
        }
        let mid = (lo + hi) / 2;
        let va = nodes[mid].va;
        let left = self.vad_tree(nodes, lo, mid, va)?;
        let right = self.vad_tree(nodes, mid + 1, hi, va)?;
        let vt = "_MMVAD_SHORT";
        if self.isf.has(vt, "VadNode.Left") {
            self.set(KS, va, vt, "VadNode.Left", left)?;
            self.set(KS, va, vt, "VadNode.Right", right)?;
            self.set(KS, va, vt, "VadNode.ParentValue", parent)?;
        } else {
            self.set(KS, va, vt, "LeftChild", left)?;
            self.set(KS, va, vt, "RightChild", right)?;
            self.set(KS, va, vt, "u1.Parent", parent)?;
        }
        nodes[mid].parent = parent;
        Ok(va)
    }

    fn add_handles(
        &mut self,
        idx: usize,
        items: Vec<(u64, &'static str, u32, String)>,
    ) -> Result<(), BuildError> {
        let isf = self.isf;
        let ht = self.ppool_alloc(isf.sizeof("_HANDLE_TABLE")?, b"Obtb")?;
        let t = "_HANDLE_TABLE";
        let esz = isf.sizeof("_HANDLE_TABLE_ENTRY")?;
        let per = PAGE / esz;
        let leaves_n = ((items.len() as u64).div_ceil(per - 1)).max(1);
        let mut leaves = Vec::new();
        for _ in 0..leaves_n {
            leaves.push(self.ppool_pages(1)?);
        }
        let levels = if leaves_n == 1 {
            self.set(KS, ht, t, "TableCode", leaves[0])?;
            0
        } else {
            let top = self.ppool_pages(1)?;
            let b: Vec<u8> = leaves.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.mem.write(KS, top, &b)?;
            self.set(KS, ht, t, "TableCode", top | 1)?;
            1
        };
        let (ep, pid) = (
            self.manifest.processes[idx].eprocess,
            self.manifest.processes[idx].pid,
        );
        self.set_opt(KS, ht, t, "QuotaProcess", ep)?;
        self.set_opt(KS, ht, t, "UniqueProcessId", pid)?;
        self.set_opt(KS, ht, t, "HandleCount", items.len() as u64)?;
        self.set_opt(KS, ht, t, "NextHandleNeedingPool", leaves_n * per * 4)?;
        if isf.has_sym("HandleTableListHead") && isf.has(t, "HandleTableList") {
            let h = self.sym("HandleTableListHead")?;
            let e = self.addr(ht, t, "HandleTableList")?;
            self.list_append(KS, h, e)?;
        }
        let body_off = isf.off("_OBJECT_HEADER", "Body")?;
        let et = "_HANDLE_TABLE_ENTRY";
        let mut out = Vec::new();
        for (k, (body, tname, access, label)) in items.into_iter().enumerate() {
            let (leaf, i) = ((k as u64) / (per - 1), (k as u64) % (per - 1) + 1);
            let hdr = body - body_off;
            let ent = leaves[leaf as usize] + i * esz;
            if isf.has(et, "ObjectPointerBits") {
                self.set(
                    KS,
                    ent,
                    et,
                    "ObjectPointerBits",
                    (hdr >> 4) & ((1 << 44) - 1),
                )?;
                self.set(KS, ent, et, "Unlocked", 1)?;
                self.set_opt(KS, ent, et, "RefCnt", 0x7FFF)?;
                self.set(KS, ent, et, "GrantedAccessBits", u64::from(access))?;
            } else {
                self.set(KS, ent, et, "Object", hdr | 1)?;
                self.set(KS, ent, et, "GrantedAccess", u64::from(access))?;
            }
            out.push(HandleTruth {
                handle: (leaf * per + i) * 4,
                type_name: tname.to_owned(),
                object: body,
                access,
                name: label,
            });
        }
        self.set(KS, ep, "_EPROCESS", "ObjectTable", ht)?;
        let p = &mut self.manifest.processes[idx];
        p.handles = out;
        p.handle_table_levels = levels;
        Ok(())
    }

    fn kernel_modules(&mut self, spec: &GuestSpec) -> Result<(), BuildError> {
        let isf = self.isf;
        let tname = if isf.has_type("_KLDR_DATA_TABLE_ENTRY") {
            "_KLDR_DATA_TABLE_ENTRY"
        } else {
            "_LDR_DATA_TABLE_ENTRY"
        };
        let mut mods: Vec<(String, String, u64, u64, Option<String>)> = vec![(
            "ntoskrnl.exe".into(),
            "\\SystemRoot\\system32\\ntoskrnl.exe".into(),
            self.kbase,
            self.size_of_image,
            None,
        )];
        let mut base = self.drv_base;
        for (bn, full, size) in &spec.kernel_modules {
            let stem = bn.rsplit_once('.').map_or(bn.as_str(), |x| x.0);
            mods.push((
                bn.clone(),
                full.clone(),
                base,
                *size,
                Some(format!("{stem}.pdb")),
            ));
            base += (size + 0xF_FFFF) & !0xF_FFFF;
        }
        let head = self.sym("PsLoadedModuleList")?;
        for (bn, full, b, size, pdb) in mods {
            let mut guid = None;
            if let Some(pdb) = &pdb {
                let g = pe::fake_guid(pdb);
                let s32 = size as u32;
                let secs: [pe::Section; 3] = [
                    (".text", 0x1000, s32 / 2, SCN_TEXT),
                    (".data", 0x1000 + s32 / 2, s32 / 4, SCN_DATA),
                    ("INIT", s32 - 0x1000, 0x1000, SCN_DISC),
                ];
                let dbg_rva = 0x1000 + s32 / 2 + 0x80;
                let (hdr, dbg) = pe::build_pe(&PeSpec {
                    image_base: b,
                    size_of_image: s32,
                    sections: &secs,
                    pdb_name: pdb,
                    guid: &g,
                    age: 1,
                    debug_rva: dbg_rva,
                    dll: true,
                    subsystem: 1,
                    entry_rva: 0x1010,
                    os_version: (self.major as u16, self.minor as u16),
                    export_dir: None,
                });
                self.mem.map_new(KS, b, PAGE, false, false)?;
                self.mem.write(KS, b, &hdr)?;
                self.mem
                    .map_new(KS, b + u64::from(dbg_rva), PAGE, false, true)?;
                self.mem.write(KS, b + u64::from(dbg_rva), &dbg)?;
                guid = Some(g);
            }
            let va = self.npool_alloc(isf.sizeof(tname)?, b"MmLd")?;
            let l = self.addr(va, tname, "InLoadOrderLinks")?;
            self.list_append(KS, head, l)?;
            self.set(KS, va, tname, "DllBase", b)?;
            self.set(KS, va, tname, "EntryPoint", b + 0x1010)?;
            self.set(KS, va, tname, "SizeOfImage", size)?;
            let s = self.kstr(&full)?;
            self.ustr(KS, va, tname, "FullDllName", &full, s)?;
            let s = self.kstr(&bn)?;
            self.ustr(KS, va, tname, "BaseDllName", &bn, s)?;
            self.set_opt(KS, va, tname, "Flags", 0x4910_4000)?;
            self.set_first(KS, va, tname, &["LoadCount", "ObsoleteLoadCount"], 1)?;
            self.set_opt(KS, va, tname, "TimeDateStamp", u64::from(pe::TIMESTAMP))?;
            self.manifest.kernel_modules.push(ModuleTruth {
                name: bn,
                path: full,
                base: b,
                size,
                entry: va,
                pdb,
                guid,
            });
        }
        Ok(())
    }

    fn cpu(&mut self) -> Result<(), BuildError> {
        let isf = self.isf;
        let kt = "_KPCR";
        let kpcr = self.npool_pages(isf.sizeof(kt)?.div_ceil(PAGE))?;
        let idt = self.npool_pages(1)?;
        let gdt = self.npool_pages(1)?;
        let target = self
            .manifest
            .processes
            .last()
            .cloned()
            .ok_or_else(|| BuildError::Layout("no processes".into()))?;
        let cur = target.threads.first().map_or(0, |t| t.ethread);
        let idle = self.manifest.processes[0]
            .threads
            .first()
            .map_or(0, |t| t.ethread);
        let prcb = self.addr(kpcr, kt, "Prcb")?;
        self.set_opt(KS, kpcr, kt, "Self", kpcr)?;
        self.set_opt(KS, kpcr, kt, "CurrentPrcb", prcb)?;
        self.set_opt(KS, kpcr, kt, "IdtBase", idt)?;
        self.set_opt(KS, kpcr, kt, "GdtBase", gdt)?;
        self.set_opt(KS, kpcr, kt, "MajorVersion", 1)?;
        self.set_opt(KS, kpcr, kt, "MinorVersion", 1)?;
        let kvb = if isf.has_sym("KdVersionBlock") {
            self.sym("KdVersionBlock")?
        } else {
            0
        };
        self.set_opt(KS, kpcr, kt, "KdVersionBlock", kvb)?;
        self.set(KS, kpcr, kt, "Prcb.CurrentThread", cur)?;
        self.set(KS, kpcr, kt, "Prcb.IdleThread", idle)?;
        self.set_opt(KS, kpcr, kt, "Prcb.Number", 0)?;
        self.set_opt(KS, kpcr, kt, "Prcb.KernelDirectoryTableBase", self.dtb)?;
        self.set_opt(
            KS,
            kpcr,
            kt,
            "Prcb.ProcessorState.SpecialRegisters.Cr3",
            target.directory_table_base,
        )?;
        self.set_opt(
            KS,
            kpcr,
            kt,
            "Prcb.ProcessorState.SpecialRegisters.Cr0",
            0x8005_0033,
        )?;
        self.set_opt(
            KS,
            kpcr,
            kt,
            "Prcb.ProcessorState.SpecialRegisters.Cr4",
            0x0035_0EF8,
        )?;
        self.put("KiProcessorBlock", &prcb.to_le_bytes())?;
        let vec: &[(u8, &str)] = &[
            (0, "KiDivideErrorFault"),
            (1, "KiDebugTrapOrFault"),
            (2, "KiNmiInterrupt"),
            (3, "KiBreakpointTrap"),
            (4, "KiOverflowTrap"),
            (5, "KiBoundFault"),
            (6, "KiInvalidOpcodeFault"),
            (7, "KiNpxNotAvailableFault"),
            (8, "KiDoubleFaultAbort"),
            (9, "KiNpxSegmentOverrunAbort"),
            (10, "KiInvalidTssFault"),
            (11, "KiSegmentNotPresentFault"),
            (12, "KiStackFault"),
            (13, "KiGeneralProtectionFault"),
            (14, "KiPageFault"),
            (16, "KiFloatingErrorFault"),
            (17, "KiAlignmentFault"),
            (18, "KiMcheckAbort"),
            (19, "KiXmmException"),
            (0x1F, "KiApcInterrupt"),
            (0x2C, "KiRaiseAssertion"),
            (0x2D, "KiDebugServiceTrap"),
            (0x2F, "KiDpcInterrupt"),
            (0xE1, "KiIpiInterrupt"),
        ];
        let fallback = self.kbase + 0x1000;
        let mut gates = Vec::with_capacity(4096);
        let mut known = BTreeMap::new();
        for v in 0..=255u8 {
            let sym = vec
                .iter()
                .find(|x| x.0 == v)
                .map(|x| x.1)
                .filter(|s| isf.has_sym(s));
            let tgt = match sym {
                Some(s) => {
                    let a = self.sym(s)?;
                    known.insert(v, a);
                    a
                }
                None => fallback,
            };
            let ist: u16 = match v {
                2 => 3,
                8 => 1,
                18 => 2,
                _ => 0,
            };
            let dpl: u16 = if matches!(v, 3 | 4 | 0x2C | 0x2D) {
                3
            } else {
                0
            };
            let attr = ist | ((0x8E | (dpl << 5)) << 8);
            gates.extend_from_slice(&(tgt as u16).to_le_bytes());
            gates.extend_from_slice(&0x10u16.to_le_bytes());
            gates.extend_from_slice(&attr.to_le_bytes());
            gates.extend_from_slice(&((tgt >> 16) as u16).to_le_bytes());
            gates.extend_from_slice(&((tgt >> 32) as u32).to_le_bytes());
            gates.extend_from_slice(&0u32.to_le_bytes());
        }
        self.mem.write(KS, idt, &gates)?;
        let gd: [u64; 8] = [
            0,
            0,
            0x0020_9B00_0000_0000,
            0x0040_9300_0000_0000,
            0x00CF_FB00_0000_FFFF,
            0x00CF_F300_0000_FFFF,
            0x0020_FB00_0000_0000,
            0,
        ];
        let gb: Vec<u8> = gd.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.mem.write(KS, gdt, &gb)?;
        let lstar = if isf.has_sym("KiSystemCall64") {
            self.sym("KiSystemCall64")?
        } else {
            0
        };
        self.manifest.vcpu0 = VcpuTruth {
            cr3: target.directory_table_base,
            kernel_cr3: target.directory_table_base,
            cr0: 0x8005_0033,
            cr4: 0x0035_0EF8 | if self.opt.pcid != 0 { 1 << 17 } else { 0 },
            efer: 0xD01,
            lstar,
            gs_base: kpcr,
            kernel_gs_base: target.threads.first().map_or(0, |t| t.teb),
            idtr_base: idt,
            idtr_limit: 0xFFF,
            gdtr_base: gdt,
            gdtr_limit: 0x3F,
            kpcr,
            kprcb: prcb,
            current_thread: cur,
            idt_known_vectors: known,
        };
        Ok(())
    }

    fn kdbg(&mut self) -> Result<(), BuildError> {
        let va = self.sym("KdDebuggerDataBlock")?;
        let n = 0x368usize.min(self.isf.gap("KdDebuggerDataBlock")? as usize);
        let mut blk = vec![0u8; n];
        let mut put = |at: usize, v: &[u8]| {
            if let Some(d) = blk.get_mut(at..at + v.len()) {
                d.copy_from_slice(v);
            }
        };
        put(0, &va.to_le_bytes());
        put(8, &va.to_le_bytes());
        put(0x10, &0x4742_444Bu32.to_le_bytes());
        put(0x14, &(n as u32).to_le_bytes());
        put(0x18, &self.kbase.to_le_bytes());
        put(0x48, &self.sym("PsLoadedModuleList")?.to_le_bytes());
        put(0x50, &self.sym("PsActiveProcessHead")?.to_le_bytes());
        for (at, s) in [
            (0x58, "PspCidTable"),
            (0xC0, "MmPfnDatabase"),
            (0x208, "NtBuildLab"),
            (0x268, "CmNtCSDVersion"),
        ] {
            if self.isf.has_sym(s) {
                put(at, &self.sym(s)?.to_le_bytes());
            }
        }
        self.put("KdDebuggerDataBlock", &blk)?;
        self.manifest.kernel.kdbg = Some(va);
        Ok(())
    }

    fn finalize_spaces(&mut self) -> Result<(), BuildError> {
        let kq: Vec<u64> = (0..512)
            .map(|i| self.mem.phys.q(self.dtb + i * 8))
            .collect();
        for &sp in &self.spaces {
            if sp == KS {
                continue;
            }
            let pml4 = self.mem.spaces[sp].pml4;
            for i in 256..512u64 {
                if i == self.selfref {
                    self.mem
                        .phys
                        .setq(pml4 + i * 8, pml4 | P | RW | ACC | DIRTY | NX)?;
                } else if kq[i as usize] & P != 0 {
                    self.mem.phys.setq(pml4 + i * 8, kq[i as usize])?;
                }
            }
        }
        Ok(())
    }

    /// A user PML4 for the current process: its user half, plus the kernel pages the CPU
    /// needs on entry (system-call entry page, IDT, KPCR), like Windows' KVA shadow.
    fn kva_shadow(&mut self) -> Result<(), BuildError> {
        let idx = self.spaces.len() - 1;
        let proc_pml4 = self.mem.spaces[self.spaces[idx]].pml4;
        let shadow = self.mem.new_space(None)?;
        let v = self.manifest.vcpu0.clone();
        for va in [v.lstar, v.idtr_base, v.kpcr] {
            let va = va & !(PAGE - 1);
            let pa = self.mem.pa(KS, va)?;
            self.mem.map(shadow, va, pa, false, false, false)?;
        }
        let spml4 = self.mem.spaces[shadow].pml4;
        for i in 0..256u64 {
            let e = self.mem.phys.q(proc_pml4 + i * 8);
            self.mem.phys.setq(spml4 + i * 8, e)?;
        }
        self.manifest.vcpu0.cr3 = spml4 | self.opt.pcid;
        Ok(())
    }

    fn low_stub(&mut self) -> Result<(), BuildError> {
        let mut blk = vec![0u8; PAGE as usize];
        blk[0..8].copy_from_slice(&[0xE9, 0x4D, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00]);
        let entry = self.kbase
            + if self.isf.has_sym("KiSystemStartup") {
                self.isf.rva("KiSystemStartup")?
            } else {
                0x1000
            };
        blk[0x70..0x78].copy_from_slice(&(entry & !3).to_le_bytes());
        blk[0xA0..0xA8].copy_from_slice(&self.dtb.to_le_bytes());
        self.mem.phys.write(0x1000, &blk)?;
        self.manifest.kernel.low_stub_target = Some(entry);
        Ok(())
    }

    fn self_check(&self) -> Result<(), BuildError> {
        for &sp in std::iter::once(&KS).chain(self.spaces.iter()) {
            let s = &self.mem.spaces[sp];
            for (&va, &pa) in &s.pages {
                if self.mem.walk(s.pml4, va) != Some(pa) {
                    return Err(BuildError::Layout(format!(
                        "self-check: {va:#x} does not map to {pa:#x}"
                    )));
                }
            }
            if self.mem.walk(s.pml4, self.kbase) != Some(self.kphys)
                || self.mem.walk(s.pml4, KUSER_KVA) != Some(self.kuser_pa)
            {
                return Err(BuildError::Layout(
                    "self-check: kernel half not shared".into(),
                ));
            }
        }
        Ok(())
    }
}
