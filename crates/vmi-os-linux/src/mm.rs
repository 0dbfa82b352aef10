//! Memory regions (VMAs) of a process: the maple tree `mm->mm_mt` (6.1+) or the
//! `mm->mmap` list (before 6.1).

use std::collections::HashSet;

use vmi_arch_amd64::Amd64;
use vmi_core::{RegionProtection, Va, VmiCore, VmiError, VmiRead};

use crate::kmem::{Kmem, is_user_address, malformed};
use crate::offsets::{MapleOffsets, MmOffsets};
use crate::{LinuxOs, LinuxTask};

/// `vm_flags` bits (`include/linux/mm.h`; unchanged since 2.6).
pub mod vm_flags {
    /// Readable.
    pub const VM_READ: u64 = 0x1;
    /// Writable.
    pub const VM_WRITE: u64 = 0x2;
    /// Executable.
    pub const VM_EXEC: u64 = 0x4;
    /// Shared (not copy-on-write).
    pub const VM_SHARED: u64 = 0x8;
}

/// One VMA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxVma {
    /// Address of the `vm_area_struct`.
    pub vma: Va,
    /// First address.
    pub start: Va,
    /// One past the last address.
    pub end: Va,
    /// `vm_flags`.
    pub flags: u64,
    /// `vm_pgoff`: offset into the file in pages.
    pub pgoff: u64,
    /// The `struct file` mapped, if file-backed.
    pub file: Option<Va>,
    /// The mapped file's path.
    pub path: Option<String>,
}

impl LinuxVma {
    /// Access rights.
    pub fn protection(&self) -> RegionProtection {
        RegionProtection {
            read: self.flags & vm_flags::VM_READ != 0,
            write: self.flags & vm_flags::VM_WRITE != 0,
            execute: self.flags & vm_flags::VM_EXEC != 0,
        }
    }

    /// `/proc/<pid>/maps` permissions (`r-xp`).
    pub fn perms(&self) -> String {
        let p = self.protection();
        format!(
            "{p}{}",
            if self.flags & vm_flags::VM_SHARED != 0 {
                's'
            } else {
                'p'
            }
        )
    }

    /// Offset into the file in bytes (`vm_pgoff << 12`), as `/proc/<pid>/maps` shows it.
    pub fn offset(&self) -> u64 {
        self.pgoff.wrapping_shl(12)
    }
}

/// The VMAs of a process, sorted by address, and what could not be read.
#[derive(Debug, Default)]
pub struct VmaList {
    /// VMAs.
    pub vmas: Vec<LinuxVma>,
    /// Skipped objects (tree nodes, VMAs) and why.
    pub skipped: crate::Skipped,
}

/// The root of a maple tree is a node when it is an internal entry (`xa_is_node`: bits
/// 0-1 = 2, above 4096); a plain pointer is a single entry at index 0 (`lib/maple_tree.c`).
fn is_maple_root_node(entry: u64) -> bool {
    entry & 3 == 2 && entry > 4096
}

/// A child slot of an internal maple node is an encoded node (`mt_mk_node`): the 256-byte
/// aligned node address, the node type in bits 3-6 and `MAPLE_ENODE_NULL` in bit 2; bits
/// 0-1 are clear (only the root carries `MAPLE_ROOT_NODE`). Returns the node and its type.
fn decode_maple_enode(entry: u64) -> Option<(Va, i64)> {
    let node = entry & !0xff;
    if node < 4096 || entry & 3 == 1 || entry & 3 == 3 {
        return None;
    }
    Some((Va(node), ((entry >> 3) & 0xf) as i64))
}

impl LinuxOs {
    /// The VMAs of a process.
    pub fn vmas<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
        task: &LinuxTask,
    ) -> Result<VmaList, VmiError> {
        let mo = self.mm_offsets()?;
        let Some(mm) = task.mm else {
            return Ok(VmaList::default());
        };
        let k = self.kmem(core);
        let mut out = VmaList::default();
        let candidates = if let Some(mt) = mo.mm_mt {
            let maple = self
                .offsets
                .maple
                .as_ref()
                .map_err(|e| crate::builder::os_error("the maple tree", e.clone()))?;
            self.maple_entries(&k, maple, mm + mt, &mut out.skipped)?
        } else if let (Some(mmap), Some(next)) = (mo.mmap, mo.vm_next) {
            self.vma_list(&k, mm + mmap, next, &mut out.skipped)?
        } else {
            return Err(VmiError::not_supported(
                "listing VMAs (no mm_struct.mm_mt or mm_struct.mmap in the profile)",
                "linux",
            ));
        };
        let mut seen = HashSet::new();
        for vma in candidates {
            if !seen.insert(vma) {
                continue;
            }
            match self.read_vma(&k, mo, mm, vma) {
                Ok(v) => out.vmas.push(v),
                Err(e) => out.skipped.push((vma, e)),
            }
        }
        out.vmas.sort_by_key(|v| v.start);
        Ok(out)
    }

    fn read_vma<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        mo: &MmOffsets,
        mm: Va,
        vma: Va,
    ) -> Result<LinuxVma, VmiError> {
        let fields = [
            mo.vm_start,
            mo.vm_end,
            mo.vm_flags,
            mo.vm_pgoff,
            mo.vm_file,
            mo.vm_mm,
        ];
        let lo = fields.iter().copied().min().unwrap_or(0);
        let hi = fields.iter().copied().max().unwrap_or(0) + 8;
        let w = k.window(vma, lo, hi)?;
        let start = w.u64(mo.vm_start)?;
        let end = w.u64(mo.vm_end)?;
        if w.u64(mo.vm_mm)? != mm.0 {
            return Err(malformed(
                "vm_area_struct.vm_mm",
                vma.0,
                "belongs to another mm",
            ));
        }
        if start >= end || !is_user_address(end.wrapping_sub(1), k.mode) {
            return Err(malformed(
                "vm_area_struct",
                vma.0,
                format!("bad range {start:#x}..{end:#x}"),
            ));
        }
        let file = match w.u64(mo.vm_file)? {
            0 => None,
            f => Some(k.check_ptr(f, "vm_area_struct.vm_file", w.at(mo.vm_file))?),
        };
        let path = match file {
            Some(f) => self.file_path_kmem(k, f).ok(),
            None => None,
        };
        Ok(LinuxVma {
            vma,
            start: Va(start),
            end: Va(end),
            flags: w.u64(mo.vm_flags)?,
            pgoff: w.u64(mo.vm_pgoff)?,
            file,
            path,
        })
    }

    /// VMA pointers in the maple tree at `tree` (in index order), walked as the kernel's
    /// `mas_*` functions do: internal nodes (`maple_range_64`, `maple_arange_64`) at
    /// every level hold child nodes, `maple_leaf_64` nodes hold the entries; each node's
    /// data ends where its metadata (`meta.end`) or its pivots say.
    fn maple_entries<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        o: &MapleOffsets,
        tree: Va,
        skipped: &mut Vec<(Va, VmiError)>,
    ) -> Result<Vec<Va>, VmiError> {
        /// `MAPLE_HEIGHT_MAX`.
        const MAX_HEIGHT: usize = 31;
        let root = k.u64(tree + o.ma_root)?;
        let mut out = Vec::new();
        if root == 0 {
            return Ok(out);
        }
        if !is_maple_root_node(root) {
            // A single entry at index 0.
            out.push(k.check_ptr(root, "maple_tree.ma_root", tree + o.ma_root)?);
            return Ok(out);
        }
        let node_size = usize::try_from(o.node_size).unwrap_or(256).clamp(64, 1024);
        let mut seen = HashSet::new();
        let root_ty = ((root >> 3) & 0xf) as i64;
        // Depth-first, children pushed in reverse so entries come out in index order.
        let mut stack = vec![(Va(root & !0xff), root_ty, 0u64, u64::MAX, 0usize)];
        while let Some((node, ty, min, max, depth)) = stack.pop() {
            if depth > MAX_HEIGHT || !seen.insert(node) || seen.len() > self.limits.max_list {
                skipped.push((
                    node,
                    VmiError::WalkLimit {
                        what: "maple tree",
                        count: seen.len(),
                        reason: if depth > MAX_HEIGHT { "limit" } else { "cycle" },
                    },
                ));
                continue;
            }
            if let Err(e) = k.check_ptr(node.0, "maple node", tree) {
                skipped.push((node, e));
                continue;
            }
            let data = match k.vec(node, node_size) {
                Ok(d) => d,
                Err(e) => {
                    skipped.push((node, e));
                    continue;
                }
            };
            let (pivot, slot, meta_end, leaf) = if ty == o.t_leaf64 {
                (o.r64_pivot, o.r64_slot, o.r64_meta_end, true)
            } else if ty == o.t_range64 {
                (o.r64_pivot, o.r64_slot, o.r64_meta_end, false)
            } else if ty == o.t_arange64 {
                (o.a64_pivot, o.a64_slot, o.a64_meta_end, false)
            } else if ty == o.t_dense {
                // Dense nodes hold entries for consecutive indexes; the mm tree has none.
                let Some(slots) = o.dense_slot else {
                    skipped.push((node, malformed("maple node", node.0, "dense node")));
                    continue;
                };
                for v in words(&data, slots.offset, slots.size.unwrap_or(0) / 8) {
                    if v != 0 && v & 3 == 0 {
                        out.push(Va(v));
                    }
                }
                continue;
            } else {
                skipped.push((node, malformed("maple node", node.0, format!("type {ty}"))));
                continue;
            };
            let pivots: Vec<u64> =
                words(&data, pivot.offset, pivot.size.unwrap_or(0) / 8).collect();
            let slots: Vec<u64> = words(&data, slot.offset, slot.size.unwrap_or(0) / 8).collect();
            if slots.is_empty() || pivots.len() >= slots.len() + 1 {
                skipped.push((node, malformed("maple node", node.0, "no slots")));
                continue;
            }
            let meta = meta_end
                .and_then(|off| data.get(usize::try_from(off).ok()?).copied())
                .map(usize::from);
            let end = maple_data_end(ty == o.t_arange64, &pivots, slots.len(), max, meta);
            let mut children = Vec::new();
            let mut lo = min;
            for (i, &s) in slots.iter().enumerate().take(end + 1) {
                let hi = if i < end {
                    pivots.get(i).copied().unwrap_or(max)
                } else {
                    // The last slot in use spans up to the node's maximum.
                    pivots.get(i).copied().filter(|&p| p != 0).unwrap_or(max)
                };
                if hi < lo || hi > max {
                    skipped.push((
                        node,
                        malformed(
                            "maple node pivot",
                            hi,
                            format!("outside {lo:#x}..={max:#x}"),
                        ),
                    ));
                    break;
                }
                if s != 0 {
                    if leaf {
                        // Internal values (XA_ZERO_ENTRY during fork) are not VMAs.
                        if s & 3 == 0 {
                            out.push(Va(s));
                        }
                    } else {
                        match decode_maple_enode(s) {
                            Some((child, cty)) => children.push((child, cty, lo, hi, depth + 1)),
                            None => {
                                skipped.push((node, malformed("maple node slot", s, "not a node")))
                            }
                        }
                    }
                }
                if hi >= max {
                    break;
                }
                lo = hi + 1;
            }
            stack.extend(children.into_iter().rev());
        }
        Ok(out)
    }

    /// VMA pointers on the `mm->mmap` list (before 6.1).
    fn vma_list<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        head: Va,
        next_off: u64,
        skipped: &mut Vec<(Va, VmiError)>,
    ) -> Result<Vec<Va>, VmiError> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut cur = k.opt_ptr(head, "mm_struct.mmap")?;
        while let Some(vma) = cur {
            if !seen.insert(vma) || out.len() >= self.limits.max_list {
                skipped.push((
                    vma,
                    VmiError::WalkLimit {
                        what: "vm_area_struct.vm_next",
                        count: out.len(),
                        reason: "cycle",
                    },
                ));
                break;
            }
            out.push(vma);
            cur = match k.opt_ptr(vma + next_off, "vm_area_struct.vm_next") {
                Ok(n) => n,
                Err(e) => {
                    skipped.push((vma, e));
                    None
                }
            };
        }
        Ok(out)
    }
}

/// The index of the last slot in use of a maple node (`ma_data_end`): an allocation-range
/// node stores it in its metadata; a range or leaf node whose last pivot is zero stores it
/// in its metadata too (in the last slot's place), else the last pivot equal to the node's
/// maximum ends the data one slot early. Without metadata offsets in the profile, the first
/// zero pivot after slot 0 ends the data.
fn maple_data_end(
    arange: bool,
    pivots: &[u64],
    nslots: usize,
    max: u64,
    meta_end: Option<usize>,
) -> usize {
    let last = nslots - 1;
    let by_pivots = || {
        pivots
            .iter()
            .enumerate()
            .skip(1)
            .find(|&(_, &p)| p == 0)
            .map(|(i, _)| i - 1)
            .or_else(|| pivots.iter().position(|&p| p >= max))
            .unwrap_or(last)
    };
    if arange {
        return meta_end.map_or_else(by_pivots, |e| e.min(last));
    }
    match pivots.last() {
        Some(0) | None => meta_end.map_or_else(by_pivots, |e| e.min(last)),
        Some(&p) if p == max => pivots.len() - 1,
        Some(_) => last,
    }
}

/// `count` little-endian u64 words at `off` in `data` (as many as fit).
fn words(data: &[u8], off: u64, count: u64) -> impl Iterator<Item = u64> + '_ {
    let start = usize::try_from(off).unwrap_or(usize::MAX);
    let count = usize::try_from(count).unwrap_or(0);
    data.get(start..)
        .unwrap_or(&[])
        .chunks_exact(8)
        .take(count)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
}
