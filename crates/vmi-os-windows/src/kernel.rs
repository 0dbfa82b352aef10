//! Finding the kernel: from vCPU registers, or from memory alone.

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};

use crate::WindowsError;
use crate::pe::{CodeView, PeImage};

const PAGE: u64 = 0x1000;
/// How far below a code address the image start may lie.
const SCAN_BACK: u64 = 32 << 20;
/// Bytes of physical memory scanned at most without registers.
const MAX_PHYS_SCAN: u64 = 64 << 30;
const KUSER: u64 = 0xFFFF_F780_0000_0000;
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// How the kernel was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscoveryMethod {
    /// Scanning back from `IA32_LSTAR` (the system-call entry).
    Lstar,
    /// Scanning back from an IDT handler.
    Idt,
    /// The x64 low stub (`PROCESSOR_START_BLOCK`) in the first megabyte.
    LowStub,
    /// A plain `KDDEBUGGER_DATA64` (crash dumps).
    Kdbg,
    /// An `RSDS` record naming an `nt*.pdb`, found in physical memory.
    RsdsScan,
}

/// Where the kernel is and which PDB describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelInfo {
    /// Image base.
    pub base: Va,
    /// A page-table root that maps the kernel (refined to the System DTB by
    /// [`WindowsOs::from_kernel`](crate::WindowsOs::from_kernel)).
    pub root: Pa,
    /// The kernel's CodeView record (GUID, age, PDB name).
    pub codeview: CodeView,
    /// Its PE headers.
    pub pe: PeImage,
    /// How it was found.
    pub method: DiscoveryMethod,
}

fn is_kernel_pdb(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "ntkrnlmp.pdb",
        "ntoskrnl.pdb",
        "ntkrnlpa.pdb",
        "ntkrpamp.pdb",
    ]
    .contains(&n.as_str())
}

/// Reads `len` bytes at `rva` of an image at `base`, as much as is readable.
pub(crate) fn image_reader<D: VmiRead>(
    core: &VmiCore<D>,
    root: Pa,
    base: Va,
) -> impl FnMut(u32, usize) -> Option<Vec<u8>> + '_ {
    move |rva, len| {
        let mut buf = vec![0u8; len.min(1 << 20)];
        let va = base.checked_add(u64::from(rva))?;
        let n = core.read_available(AccessContext::paging(va, root), &mut buf);
        (n > 0).then(|| {
            buf.truncate(n);
            buf
        })
    }
}

/// Parses the image at `base` and returns it when its CodeView names the kernel.
pub fn kernel_at<D: VmiRead>(core: &VmiCore<D>, root: Pa, base: Va) -> Option<(PeImage, CodeView)> {
    let mut page = vec![0u8; PAGE as usize];
    if core.read_available(AccessContext::paging(base, root), &mut page) < 0x200 {
        return None;
    }
    let pe = PeImage::parse(&page).ok()?;
    let cv = pe.codeview(image_reader(core, root, base))?;
    is_kernel_pdb(&cv.pdb_name).then_some((pe, cv))
}

/// Scans back from `code` page by page (unmapped pages are skipped, as under KVA shadow)
/// for the kernel's `MZ`.
fn scan_back<D: VmiRead>(
    core: &VmiCore<D>,
    root: Pa,
    code: u64,
) -> Option<(Va, PeImage, CodeView)> {
    if code < 0xFFFF_8000_0000_0000 {
        return None;
    }
    let top = code & !(PAGE - 1);
    let mut mz = [0u8; 2];
    for i in 0..SCAN_BACK / PAGE {
        let va = Va(top.checked_sub(i * PAGE)?);
        if core.read(AccessContext::paging(va, root), &mut mz).is_err() || &mz != b"MZ" {
            continue;
        }
        if let Some((pe, cv)) = kernel_at(core, root, va)
            && va
                .0
                .checked_add(u64::from(pe.size_of_image))
                .is_some_and(|end| end > code)
        {
            return Some((va, pe, cv));
        }
    }
    None
}

fn read_u64_phys<D: VmiRead>(core: &VmiCore<D>, pa: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    core.read_physical(Pa(pa), &mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Finds the kernel from a vCPU's registers: `LSTAR` and IDT handlers, scanning back for
/// the `MZ` whose CodeView names an `nt*.pdb`. When the current CR3 does not map the
/// kernel image (KVA shadow user CR3), it retries in the address spaces found by the
/// self-reference scan.
///
/// Needs live registers: a Windows crash dump's saved context has no `LSTAR` or IDTR, so
/// this fails there; [`find_kernel`] (memory alone) works on every target, and
/// [`WindowsOsBuilder::find_kernel`](crate::WindowsOsBuilder::find_kernel) tries this first
/// and falls back to it.
pub fn find_kernel_from_registers<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    regs: &Registers,
) -> Result<KernelInfo, VmiError> {
    let root = regs.cr3.root();
    let mut candidates: Vec<(u64, DiscoveryMethod)> = vec![(regs.lstar, DiscoveryMethod::Lstar)];
    let gates = |root: Pa| {
        let mut out = vec![];
        for v in [0u64, 1, 2, 3, 6, 13, 14] {
            let mut g = [0u8; 16];
            if regs.idtr.limit as u64 >= v * 16 + 15
                && core
                    .read(
                        AccessContext::paging(Va(regs.idtr.base.wrapping_add(v * 16)), root),
                        &mut g,
                    )
                    .is_ok()
            {
                let lo = u64::from(u16::from_le_bytes([g[0], g[1]]));
                let mid = u64::from(u16::from_le_bytes([g[6], g[7]]));
                let hi = u64::from(u32::from_le_bytes([g[8], g[9], g[10], g[11]]));
                out.push((lo | (mid << 16) | (hi << 32), DiscoveryMethod::Idt));
            }
        }
        out
    };
    candidates.extend(gates(root));
    for (code, method) in &candidates {
        if let Some((base, pe, codeview)) = scan_back(core, root, *code) {
            return Ok(KernelInfo {
                base,
                root,
                codeview,
                pe,
                method: *method,
            });
        }
    }
    // KVA shadow: the user CR3 maps only the entry trampolines. Try the kernel spaces.
    for dtb in dtb_candidates(core)?.into_iter().take(4) {
        let mut c = candidates.clone();
        c.extend(gates(dtb));
        for (code, method) in c {
            if let Some((base, pe, codeview)) = scan_back(core, dtb, code) {
                return Ok(KernelInfo {
                    base,
                    root: dtb,
                    codeview,
                    pe,
                    method,
                });
            }
        }
    }
    Err(WindowsError::KernelNotFound(format!(
        "no nt*.pdb image within {} MiB below LSTAR {:#x} or the IDT handlers",
        SCAN_BACK >> 20,
        regs.lstar
    ))
    .into())
}

/// Physical pages that look like a Windows x64 PML4: exactly one kernel-half entry
/// pointing to the page itself, no large-page bit in a present entry, every pointer
/// inside memory, and `KUSER_SHARED_DATA` mapped. Sorted by address (System's first).
pub fn dtb_candidates<D: VmiRead>(core: &VmiCore<D>) -> Result<Vec<Pa>, VmiError> {
    let ranges = core.driver().physical_ranges()?;
    let end = ranges.iter().map(|r| r.end.0).max().unwrap_or(0);
    let mut out = vec![];
    let mut scanned = 0u64;
    let mut buf = vec![0u8; PAGE as usize];
    for r in &ranges {
        let mut pa = r.start.0.div_ceil(PAGE) * PAGE;
        while pa + PAGE <= r.end.0 && scanned < MAX_PHYS_SCAN {
            scanned += PAGE;
            if core.read_physical(Pa(pa), &mut buf).is_ok() && looks_like_pml4(&buf, pa, end) {
                let ctx = AccessContext::paging(Va(KUSER), Pa(pa));
                if core.read_u8(ctx).is_ok() {
                    out.push(Pa(pa));
                }
            }
            pa += PAGE;
        }
    }
    Ok(out)
}

fn looks_like_pml4(page: &[u8], pa: u64, mem_end: u64) -> bool {
    let mut selfrefs = 0;
    let mut present = 0;
    for (i, c) in page.chunks_exact(8).enumerate() {
        let e = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        if e & 1 == 0 {
            continue;
        }
        if e & 0x80 != 0 || (e & ADDR) >= mem_end {
            return false;
        }
        present += 1;
        if e & ADDR == pa {
            if i < 256 {
                return false;
            }
            selfrefs += 1;
        }
    }
    selfrefs == 1 && present >= 2
}

/// Finds the kernel without registers: self-reference DTB scan, then the low stub, a
/// plain KDBG, and finally an `RSDS` scan of physical memory.
pub fn find_kernel<D: VmiRead>(core: &VmiCore<D>) -> Result<KernelInfo, VmiError> {
    let dtbs = dtb_candidates(core)?;
    let Some(&root) = dtbs.first() else {
        return Err(WindowsError::KernelNotFound(
            "no page looks like a Windows x64 PML4 (self-reference scan)".into(),
        )
        .into());
    };
    // Low stub.
    let mut pa = 0x1000;
    while pa < 0x10_0000 {
        if let Some(q) = read_u64_phys(core, pa)
            && q & 0xFFFF_FFFF_FFFF_00FF == 0x0000_0001_0006_00E9
        {
            let cr3 = read_u64_phys(core, pa + 0xA0).unwrap_or(0) & ADDR;
            let lm = read_u64_phys(core, pa + 0x70).unwrap_or(0);
            if let Some((base, pe, codeview)) = scan_back(core, Pa(cr3), lm) {
                return Ok(KernelInfo {
                    base,
                    root: Pa(cr3),
                    codeview,
                    pe,
                    method: DiscoveryMethod::LowStub,
                });
            }
        }
        pa += PAGE;
    }
    // KDBG, then RSDS, in one pass over physical memory.
    let mut rsds_hits = vec![];
    let ranges = core.driver().physical_ranges()?;
    let chunk = 1usize << 20;
    let mut buf = vec![0u8; chunk + 64];
    for r in &ranges {
        let mut at = r.start.0;
        while at < r.end.0.min(MAX_PHYS_SCAN) {
            let n = ((r.end.0 - at) as usize).min(chunk + 64);
            let got = core.read_available(AccessContext::direct(Pa(at)), &mut buf[..n]);
            let b = &buf[..got];
            let mut i = 0;
            while i + 32 <= b.len().min(chunk + 32) {
                if &b[i..i + 4] == b"KDBG" && i >= 0x10 {
                    let kb = u64::from_le_bytes(b[i + 8..i + 16].try_into().unwrap_or([0; 8]));
                    if let Some((pe, codeview)) = kernel_at(core, root, Va(kb)) {
                        return Ok(KernelInfo {
                            base: Va(kb),
                            root,
                            codeview,
                            pe,
                            method: DiscoveryMethod::Kdbg,
                        });
                    }
                }
                if &b[i..i + 4] == b"RSDS"
                    && rsds_hits.len() < 64
                    && let Some(cv) = CodeView::parse(&b[i..])
                    && is_kernel_pdb(&cv.pdb_name)
                {
                    rsds_hits.push(at + i as u64);
                }
                i += 1;
            }
            at += chunk as u64;
        }
    }
    for hit in rsds_hits {
        if let Some(k) = kernel_from_rsds(core, root, hit) {
            return Ok(k);
        }
    }
    Err(WindowsError::KernelNotFound("tried the low stub, KDBG and an RSDS scan".into()).into())
}

/// From a physical `RSDS`: the physical `MZ` below it, then its virtual address (the
/// header's ImageBase, the fixed mapping of Windows 7, or a bounded reverse walk).
fn kernel_from_rsds<D: VmiRead>(core: &VmiCore<D>, root: Pa, rsds: u64) -> Option<KernelInfo> {
    let mut page = vec![0u8; PAGE as usize];
    let top = rsds & !(PAGE - 1);
    for i in 0..(16 << 20) / PAGE {
        let pa = top.checked_sub(i * PAGE)?;
        if core.read_physical(Pa(pa), &mut page).is_err() || &page[..2] != b"MZ" {
            continue;
        }
        let pe = PeImage::parse(&page).ok()?;
        for va in [pe.image_base, pa.wrapping_add(0xFFFF_F800_0000_0000)] {
            if core.translate_address((Va(va), root).into()).ok() == Some(Pa(pa))
                && let Some((pe, codeview)) = kernel_at(core, root, Va(va))
            {
                return Some(KernelInfo {
                    base: Va(va),
                    root,
                    codeview,
                    pe,
                    method: DiscoveryMethod::RsdsScan,
                });
            }
        }
        let va = reverse_map(core, root, pa)?;
        let (pe, codeview) = kernel_at(core, root, va)?;
        return Some(KernelInfo {
            base: va,
            root,
            codeview,
            pe,
            method: DiscoveryMethod::RsdsScan,
        });
    }
    None
}

/// The kernel-half VA that maps physical `target` (bounded walk of the page tables).
fn reverse_map<D: VmiRead>(core: &VmiCore<D>, root: Pa, target: u64) -> Option<Va> {
    let table = |pa: u64| -> Option<Vec<u64>> {
        let mut b = vec![0u8; PAGE as usize];
        core.read_physical(Pa(pa & ADDR), &mut b).ok()?;
        Some(
            b.chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
        )
    };
    let canon = |va: u64| {
        if va & (1 << 47) != 0 {
            va | 0xFFFF_0000_0000_0000
        } else {
            va
        }
    };
    let mut budget = 4096usize;
    let pml4 = table(root.0)?;
    for (i4, &e4) in pml4.iter().enumerate().skip(256) {
        if e4 & 1 == 0 || e4 & ADDR == root.0 {
            continue;
        }
        let pdpt = table(e4)?;
        for (i3, &e3) in pdpt.iter().enumerate() {
            if e3 & 1 == 0 || e3 & 0x80 != 0 {
                continue;
            }
            let pd = table(e3)?;
            for (i2, &e2) in pd.iter().enumerate() {
                if e2 & 1 == 0 {
                    continue;
                }
                let va = ((i4 as u64) << 39) | ((i3 as u64) << 30) | ((i2 as u64) << 21);
                if e2 & 0x80 != 0 {
                    let base = e2 & ADDR & !0x1F_FFFF;
                    if (base..base + 0x20_0000).contains(&target) {
                        return Some(Va(canon(va + (target - base))));
                    }
                    continue;
                }
                budget = budget.checked_sub(1)?;
                let pt = table(e2)?;
                if let Some(i1) = pt.iter().position(|&e| e & 1 != 0 && e & ADDR == target) {
                    return Some(Va(canon(va | ((i1 as u64) << 12))));
                }
            }
        }
    }
    None
}
