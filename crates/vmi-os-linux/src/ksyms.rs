//! Kernel symbols from guest memory: kallsyms decoded through the table addresses
//! VMCOREINFO lists (Linux 6.0+), or, on older kernels, found by their structure inside the
//! read-only part of the kernel image.
//!
//! # Where the search looks, and why there only
//!
//! The kallsyms tables are in `.rodata`. The search walks the kernel's own page tables over
//! the kernel-image window (`_stext` up to `MODULES_VADDR`, i.e. `__START_KERNEL_map` +
//! 1 GiB) and keeps the pages that are mapped read-only and not user-accessible: read-only
//! data first (no-execute), then read-only text if there is no such page (CPUs without NX).
//! Every byte the decoder reads comes from those pages ([`Confined`]). Nothing a guest user
//! writes lands there: user memory is reached through the direct map or user mappings, and
//! the kernel's writable data (`.data`, `.bss`) is writable. A table planted anywhere else
//! is never looked at.
//!
//! A candidate must then decode completely (token table and index, markers that match
//! every 256th name, names that end at the markers, addresses sorted), put `_stext`/`_text`
//! inside the image window and every VMCOREINFO symbol of the image at VMCOREINFO's
//! address, hold at least [`MIN_SYMBOLS`] symbols, and its `linux_banner` must read
//! `Linux version <OSRELEASE> `.

use std::ops::Range;
use std::time::Instant;

use vmi_arch_amd64::Amd64;
use vmi_core::{Va, VmiError, VmiRead};
use vmi_profile::kallsyms::{self, Kallsyms};
use vmi_profile::{KernelMemory, MemoryError, ProfileError, VmcoreInfo};

use crate::builder::os_error;
use crate::discovery::START_KERNEL_MAP;
use crate::kmem::{CoreMemory, Kmem};

/// End of the window the kernel image is mapped in: `MODULES_VADDR`
/// (`__START_KERNEL_map` + `KERNEL_IMAGE_SIZE`, 1 GiB with KASLR).
pub(crate) const KERNEL_IMAGE_END: u64 = START_KERNEL_MAP + (1 << 30);
/// `_text` without KASLR: `__START_KERNEL_map` + `CONFIG_PHYSICAL_START` (16 MiB).
const DEFAULT_TEXT: u64 = START_KERNEL_MAP + (16 << 20);
/// Fewest symbols a kernel found by structure must have (real x86-64 kernels: ~90,000 and
/// up; a tiny table is a decoy or not kallsyms at all).
pub(crate) const MIN_SYMBOLS: usize = 10_000;
/// Most page-table probes spent mapping the image window (1 GiB in 4 KiB pages).
const MAX_PROBES: usize = 1 << 18;

/// Symbols decoded from memory, and how they were found (for `metadata.sources`).
pub(crate) struct MemorySymbols {
    pub(crate) kallsyms: Kallsyms,
    pub(crate) how: String,
}

/// kallsyms from guest memory: through VMCOREINFO's table addresses when it lists them,
/// else by searching the kernel image.
pub(crate) fn memory_symbols<D: VmiRead<Architecture = Amd64>>(
    k: Kmem<'_, D>,
    info: &VmcoreInfo,
) -> Result<MemorySymbols, VmiError> {
    let mem = CoreMemory(k);
    if info.symbol("kallsyms_names").is_some() {
        let kallsyms = kallsyms::from_vmcoreinfo(&mem, info)
            .map_err(|e| os_error("decoding kallsyms at the addresses VMCOREINFO lists", e))?;
        return Ok(MemorySymbols {
            how: format!(
                "kallsyms: guest memory, tables listed by VMCOREINFO ({} symbols)",
                kallsyms.symbols.len()
            ),
            kallsyms,
        });
    }
    let started = Instant::now();
    let kallsyms = search_image(k, info)?;
    Ok(MemorySymbols {
        how: format!(
            "kallsyms: guest memory, tables found by structure at {:#x} ({} symbols, {:?}, {:?})",
            kallsyms.tables.token_table,
            kallsyms.symbols.len(),
            kallsyms.encoding,
            started.elapsed()
        ),
        kallsyms,
    })
}

/// Where the kernel image starts: VMCOREINFO's `_stext`, else `_text` moved by the slide.
fn image_start(info: &VmcoreInfo) -> u64 {
    info.symbol("_stext")
        .filter(|a| (START_KERNEL_MAP..KERNEL_IMAGE_END).contains(a))
        .unwrap_or_else(|| DEFAULT_TEXT.wrapping_add(info.kernel_offset.unwrap_or(0)))
}

/// Searches the read-only pages of the kernel image for the kallsyms tables.
fn search_image<D: VmiRead<Architecture = Amd64>>(
    k: Kmem<'_, D>,
    info: &VmcoreInfo,
) -> Result<Kallsyms, VmiError> {
    let start = image_start(info);
    if !(START_KERNEL_MAP..KERNEL_IMAGE_END).contains(&start) {
        return Err(not_found(format!(
            "the kernel image start {start:#x} is outside {START_KERNEL_MAP:#x}..{KERNEL_IMAGE_END:#x}"
        )));
    }
    let window = start..KERNEL_IMAGE_END;
    let pages = read_only_extents(k, window.clone());
    // Read-only data first; read-only text only where the CPU has no NX bit to tell them apart.
    let extents = if pages.rodata.is_empty() {
        pages.readonly
    } else {
        pages.rodata
    };
    if extents.is_empty() {
        return Err(not_found(format!(
            "no read-only page in the kernel image window {:#x}..{:#x} (a dump taken before \
             the kernel made its data read-only?)",
            window.start, window.end
        )));
    }
    // Every VMCOREINFO symbol inside the image must be where VMCOREINFO says.
    let expect: Vec<(&str, u64)> = info
        .symbols
        .iter()
        .filter(|(_, a)| window.contains(a))
        .map(|(n, &a)| (n.as_str(), a))
        .collect();
    let confined = Confined {
        mem: CoreMemory(k),
        ranges: &extents,
    };
    let mut problems = Vec::new();
    for extent in &extents {
        let found = kallsyms::search(&confined, extent.clone(), window.clone(), &expect)
            .and_then(|ks| check(&confined, ks, info));
        match found {
            Ok(ks) => return Ok(ks),
            Err(e) => problems.push(format!("{:#x}..{:#x}: {e}", extent.start, extent.end)),
        }
    }
    let shown = problems.len().min(4);
    Err(not_found(format!(
        "no kallsyms tables in the {} read-only extent(s) of the kernel image ({}{})",
        extents.len(),
        problems[..shown].join("; "),
        if problems.len() > shown { "; ..." } else { "" }
    )))
}

/// The checks beyond decoding: enough symbols, and `linux_banner` is the banner of the
/// release VMCOREINFO names.
fn check(
    mem: &dyn KernelMemory,
    ks: Kallsyms,
    info: &VmcoreInfo,
) -> Result<Kallsyms, ProfileError> {
    let bad = |what: String| ProfileError::Kallsyms { what };
    if ks.symbols.len() < MIN_SYMBOLS {
        return Err(bad(format!(
            "tables at {:#x} decode to {} symbols, fewer than a kernel has ({MIN_SYMBOLS})",
            ks.tables.token_table,
            ks.symbols.len()
        )));
    }
    if let Some(at) = ks.address("linux_banner") {
        let want = match &info.osrelease {
            Some(r) => format!("Linux version {r} "),
            None => "Linux version ".to_owned(),
        };
        let mut got = vec![0u8; want.len()];
        mem.read(at, &mut got)
            .map_err(|e| bad(format!("linux_banner at {at:#x} cannot be read: {e}")))?;
        if got != want.as_bytes() {
            return Err(bad(format!(
                "linux_banner at {at:#x} reads {:?}, not {want:?}",
                String::from_utf8_lossy(&got)
            )));
        }
    }
    Ok(ks)
}

fn not_found(detail: String) -> VmiError {
    VmiError::NotFound {
        kind: "kallsyms tables",
        name: detail,
    }
}

/// The kernel-image pages the search may read.
#[derive(Debug, Default)]
struct Extents {
    /// Read-only, no-execute, supervisor pages (`.rodata` and friends).
    rodata: Vec<Range<u64>>,
    /// Read-only supervisor pages, executable or not.
    readonly: Vec<Range<u64>>,
}

fn push(v: &mut Vec<Range<u64>>, r: Range<u64>) {
    match v.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => v.push(r),
    }
}

/// Maps `window` through the kernel page tables, one probe per mapping (4 KiB, 2 MiB or
/// 1 GiB) or per absent entry (skipping what that entry covers).
fn read_only_extents<D: VmiRead<Architecture = Amd64>>(
    k: Kmem<'_, D>,
    window: Range<u64>,
) -> Extents {
    let mut out = Extents::default();
    let mut va = window.start & !0xfff;
    let mut probes = 0usize;
    while va < window.end && probes < MAX_PROBES {
        probes += 1;
        let step = match k.core.translate((Va(va), k.root).into()) {
            Ok(t) => {
                let size = t.page_size.max(4096);
                let end = (va & !(size - 1)).saturating_add(size).min(window.end);
                if !t.flags.writable && !t.flags.user {
                    push(&mut out.readonly, va..end);
                    if t.flags.no_execute {
                        push(&mut out.rodata, va..end);
                    }
                }
                end - va
            }
            Err(VmiError::PageFault(f)) => {
                // An absent entry at level L covers 4 KiB << 9 (L - 1).
                let shift = 12 + 9 * u32::from(f.level.clamp(1, 4) - 1);
                let size = 1u64 << shift;
                (va & !(size - 1)).saturating_add(size) - va
            }
            Err(_) => 4096,
        };
        va = match va.checked_add(step) {
            Some(v) => v,
            None => break,
        };
    }
    out
}

/// Kernel memory restricted to `ranges`: a read that leaves them fails.
struct Confined<'a, D: VmiRead<Architecture = Amd64>> {
    mem: CoreMemory<'a, D>,
    ranges: &'a [Range<u64>],
}

impl<D: VmiRead<Architecture = Amd64>> KernelMemory for Confined<'_, D> {
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let end = va
            .checked_add(buf.len() as u64)
            .ok_or("the read wraps around the address space")?;
        if !self.ranges.iter().any(|r| r.start <= va && end <= r.end) {
            return Err(
                format!("{va:#x}..{end:#x} is outside the kernel image's read-only pages").into(),
            );
        }
        self.mem.read(va, buf)
    }
}
