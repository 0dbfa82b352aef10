//! Finding the kernel: VMCOREINFO (given by the driver, or scanned for in physical
//! memory), the KASLR slide, `phys_base`, the kernel page-table root and the paging mode;
//! cross-checks against vCPU registers where they exist.

use std::collections::HashSet;
use std::ops::Range;

use memchr::memmem;
use vmi_arch_amd64::{Amd64, PagingMode, Registers, cr4};
use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_profile::VmcoreInfo;

/// `__START_KERNEL_map`: where the kernel image is mapped before the KASLR slide.
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// How much physical memory is read per step of the VMCOREINFO scan (a whole number of
/// pages, so that chunks start on page boundaries).
const SCAN_CHUNK: usize = 8 << 20;
/// Page size of the scan: a VMCOREINFO block never crosses the end of its page.
const PAGE: u64 = 4096;
/// Most distinct (swapper_pg_dir, phys_base, paging mode) claims remembered, so that a
/// repeated claim is not validated again (beyond this every claim is validated: slower,
/// never wrong).
const MAX_REMEMBERED: usize = 1 << 20;
/// Most rejection reasons kept word for word (the rest are counted).
const MAX_REASONS: usize = 8;

/// Where the VMCOREINFO text came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VmcoreinfoOrigin {
    /// Given by the caller (e.g. a dump's `VMCOREINFO` note).
    Given,
    /// Found by scanning guest-physical memory, at this address.
    Scanned(Pa),
}

/// The VMCOREINFO block the discovery settled on, and what it implies.
#[derive(Clone, Debug)]
pub(crate) struct Found {
    pub(crate) info: VmcoreInfo,
    pub(crate) origin: VmcoreinfoOrigin,
    pub(crate) root: Pa,
    pub(crate) mode: PagingMode,
    pub(crate) phys_base: u64,
    /// Candidates rejected on the way, with the reason.
    pub(crate) rejected: Vec<String>,
}

/// Checks a VMCOREINFO block: computes the kernel root from `swapper_pg_dir` and
/// `phys_base` and verifies that the page tables there map `swapper_pg_dir` onto itself.
/// Sets the core's paging mode on success.
fn validate<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    info: &VmcoreInfo,
) -> Result<(Pa, PagingMode, u64), String> {
    let swapper = info
        .symbol("swapper_pg_dir")
        .or_else(|| info.symbol("init_top_pgt"))
        .ok_or("no SYMBOL(swapper_pg_dir)")?;
    let phys_base = info.phys_base().ok_or("no NUMBER(phys_base)")?;
    if swapper < START_KERNEL_MAP {
        return Err(format!(
            "swapper_pg_dir {swapper:#x} is below __START_KERNEL_map"
        ));
    }
    let root = Pa((swapper - START_KERNEL_MAP).wrapping_add(phys_base));
    if !root.is_aligned(4096) {
        return Err(format!("kernel root {root} is not page aligned"));
    }
    let mode = if info.pgtable_l5_enabled().unwrap_or(false) {
        PagingMode::Level5
    } else {
        PagingMode::Level4
    };
    let before = core.paging_mode();
    core.set_paging_mode(mode);
    match core.translate((Va(swapper), root).into()) {
        Ok(t) if t.pa == root => Ok((root, mode, phys_base)),
        Ok(t) => {
            core.set_paging_mode(before);
            Err(format!(
                "the tables at {root} map swapper_pg_dir to {}, not to themselves",
                t.pa
            ))
        }
        Err(e) => {
            core.set_paging_mode(before);
            Err(format!(
                "swapper_pg_dir does not translate through {root}: {e}"
            ))
        }
    }
}

/// What a VMCOREINFO scan looked at, for the notes and the error.
#[derive(Debug, Default)]
struct ScanStats {
    /// `OSRELEASE=` found at the start of a block.
    hits: u64,
    /// Hits whose block does not parse, or has no `KERNELOFFSET`.
    unparsable: u64,
    /// Blocks whose claim (`swapper_pg_dir`, `phys_base`, paging mode) was already rejected.
    repeated: u64,
    /// Claims validated and rejected.
    rejected: u64,
    /// The first rejection reasons.
    reasons: Vec<String>,
}

impl ScanStats {
    fn reject(&mut self, why: String) {
        self.rejected += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(why);
        }
    }

    fn summary(&self) -> String {
        format!(
            "vmcoreinfo scan: {} blocks, {} not parsable, {} repeated claims, {} rejected",
            self.hits, self.unparsable, self.repeated, self.rejected
        )
    }
}

/// The block starting at `hit` in `data` (read from `base`): up to the first NUL or the end
/// of the page it starts in, whichever comes first. The kernel's `vmcoreinfo_data` is one
/// page of its own, text from its first byte.
fn block_at(data: &[u8], base: Pa, hit: usize) -> &[u8] {
    let at = base.0 + hit as u64;
    let page_end = (at | (PAGE - 1)) + 1;
    let end = usize::try_from(page_end - base.0)
        .unwrap_or(usize::MAX)
        .min(data.len());
    let block = &data[hit..end];
    let nul = memchr::memchr(0, block).unwrap_or(block.len());
    &block[..nul]
}

/// Scans guest-physical memory for VMCOREINFO blocks and returns the first that
/// validates.
///
/// Bounded work whatever the guest writes: each byte of memory is read once and parsed at
/// most once (a block ends at a NUL or at its page's end, and hits inside a block already
/// parsed are part of it); a block that parses costs one page-table walk of at most five
/// reads, and a claim seen before costs nothing. No count of decoys makes the scan give up
/// before it reaches the real block.
fn scan<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    stats: &mut ScanStats,
) -> Result<Option<Found>, VmiError> {
    const KEY: &[u8] = b"OSRELEASE=";
    let finder = memmem::Finder::new(KEY);
    let ranges: Vec<Range<Pa>> = core.driver().physical_ranges()?;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut remembered: HashSet<(u64, u64, bool)> = HashSet::new();
    for range in ranges {
        let mut pa = range.start;
        while pa < range.end {
            // Up to the chunk size, and up to a page boundary (so the next chunk starts on one).
            let to_boundary = SCAN_CHUNK as u64 - (pa.0 % PAGE);
            let len = usize::try_from((range.end - pa).min(to_boundary)).unwrap_or(SCAN_CHUNK);
            let n = core.read_available(AccessContext::direct(pa), &mut buf[..len]);
            let data = &buf[..n];
            let mut parsed_to = 0usize;
            for hit in finder.find_iter(data) {
                if hit < parsed_to {
                    continue;
                }
                let block = block_at(data, pa, hit);
                parsed_to = hit + block.len();
                stats.hits += 1;
                let info = match VmcoreInfo::parse(block) {
                    Ok(info) if info.kernel_offset.is_some() => info,
                    _ => {
                        stats.unparsable += 1;
                        continue;
                    }
                };
                let claim = (
                    info.symbol("swapper_pg_dir")
                        .or_else(|| info.symbol("init_top_pgt"))
                        .unwrap_or(0),
                    info.phys_base().unwrap_or(0),
                    info.pgtable_l5_enabled().unwrap_or(false),
                );
                if remembered.contains(&claim) {
                    stats.repeated += 1;
                    continue;
                }
                let at = pa + hit as u64;
                match validate(core, &info) {
                    Ok((root, mode, phys_base)) => {
                        return Ok(Some(Found {
                            info,
                            origin: VmcoreinfoOrigin::Scanned(at),
                            root,
                            mode,
                            phys_base,
                            rejected: Vec::new(),
                        }));
                    }
                    Err(why) => stats.reject(format!("vmcoreinfo at {at}: {why}")),
                }
                if remembered.len() < MAX_REMEMBERED {
                    remembered.insert(claim);
                }
            }
            let advance = if n == len {
                len as u64
            } else {
                // Skip the unreadable page.
                (n as u64 - n as u64 % PAGE) + PAGE
            };
            pa = pa.checked_add(advance).unwrap_or(range.end);
        }
    }
    Ok(None)
}

/// Finds VMCOREINFO (the given text first, then a scan of physical memory) and the
/// kernel page-table root it implies.
pub(crate) fn find_kernel<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    given: Option<&[u8]>,
    registers: &[Registers],
) -> Result<Found, VmiError> {
    let mut rejected = Vec::new();
    if let Some(text) = given {
        match VmcoreInfo::parse(text) {
            Ok(info) if info.kernel_offset.is_some() || info.symbol("swapper_pg_dir").is_some() => {
                match validate(core, &info) {
                    Ok((root, mode, phys_base)) => {
                        return Ok(Found {
                            info,
                            origin: VmcoreinfoOrigin::Given,
                            root,
                            mode,
                            phys_base,
                            rejected,
                        });
                    }
                    Err(why) => rejected.push(format!("given vmcoreinfo: {why}")),
                }
            }
            Ok(_) => rejected.push("given vmcoreinfo has no KERNELOFFSET".into()),
            Err(e) => rejected.push(format!("given vmcoreinfo: {e}")),
        }
    }
    let mut stats = ScanStats::default();
    if let Some(mut found) = scan(core, &mut stats)? {
        if stats.rejected > 0 || stats.unparsable > 0 {
            rejected.push(stats.summary());
            rejected.append(&mut stats.reasons);
        }
        found.rejected = rejected;
        return Ok(found);
    }
    if stats.hits > 0 {
        rejected.push(stats.summary());
        rejected.append(&mut stats.reasons);
    }
    let mut detail = String::from(
        "no valid VMCOREINFO block (OSRELEASE=... with KERNELOFFSET=) in guest memory",
    );
    if !registers.is_empty() {
        detail.push_str(
            "; registers alone are not enough without VMCOREINFO (give a vmlinux/System.map \
             and a profile, or a dump with a VMCOREINFO note)",
        );
    }
    for r in rejected.iter().take(4) {
        detail.push_str("; ");
        detail.push_str(r);
    }
    Err(VmiError::NotFound {
        kind: "linux kernel",
        name: detail,
    })
}

/// What the registers of each vCPU say, compared with what memory says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterCheck {
    /// The vCPU index in the order the registers were given.
    pub vcpu: usize,
    /// CR3 (page-table root, PCID bits masked).
    pub cr3_root: Pa,
    /// Whether CR4.LA57 agrees with the paging mode found in memory.
    pub paging_mode_agrees: bool,
    /// IDT gate 0 handler, if the IDT could be read.
    pub idt_divide_error: Option<Va>,
    /// Whether it equals the symbol `asm_exc_divide_error` (`None`: not checkable).
    pub idt_agrees: Option<bool>,
    /// LSTAR (0 when the driver does not expose it).
    pub lstar: Va,
    /// Whether LSTAR is `entry_SYSCALL_64` (`None`: LSTAR unknown or no symbol).
    pub lstar_agrees: Option<bool>,
}

/// Reads the handler of IDT gate `vector` through the kernel page tables.
pub(crate) fn idt_handler<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    root: Pa,
    regs: &Registers,
    vector: u64,
) -> Result<Va, VmiError> {
    let gate = core.read_vec(
        AccessContext::paging(Va(regs.idtr.base) + vector * 16, root),
        16,
    )?;
    let lo = u64::from(u16::from_le_bytes([gate[0], gate[1]]));
    let mid = u64::from(u16::from_le_bytes([gate[6], gate[7]]));
    let hi = u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]]));
    Ok(Va(lo | mid << 16 | hi << 32))
}

/// Compares each vCPU's registers with the kernel found in memory.
pub(crate) fn check_registers<D: VmiRead<Architecture = Amd64>>(
    core: &VmiCore<D>,
    root: Pa,
    mode: PagingMode,
    registers: &[Registers],
    divide_error: Option<u64>,
    entry_syscall: Option<u64>,
) -> Vec<RegisterCheck> {
    registers
        .iter()
        .enumerate()
        .map(|(vcpu, r)| {
            let la57 = r.cr4 & cr4::LA57 != 0;
            let idt = (r.idtr.base != 0)
                .then(|| idt_handler(core, root, r, 0).ok())
                .flatten();
            RegisterCheck {
                vcpu,
                cr3_root: r.cr3.root(),
                paging_mode_agrees: la57 == (mode == PagingMode::Level5),
                idt_divide_error: idt,
                idt_agrees: idt.zip(divide_error).map(|(h, s)| h.0 == s),
                lstar: Va(r.lstar),
                lstar_agrees: (r.lstar != 0)
                    .then_some(())
                    .and(entry_syscall)
                    .map(|s| s == r.lstar),
            }
        })
        .collect()
}
