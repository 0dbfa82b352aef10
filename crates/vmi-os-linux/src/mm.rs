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
    /// May be shared: what `/proc/PID/maps` prints as `s` (a read-only shared file
    /// mapping has it without `VM_SHARED`).
    pub const VM_MAYSHARE: u64 = 0x80;
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
    /// The mapped file's path, as `d_path` prints it (`/memfd:NAME (deleted)`,
    /// `PATH (deleted)` for an unlinked file).
    pub path: Option<String>,
    /// The name `/proc/PID/maps` prints: the file's path, or `[heap]`, `[stack]`,
    /// `[vdso]`, `[vvar]`, `[vsyscall]`, `[anon:NAME]`, `[anon_shmem:NAME]`; `None` for
    /// an unnamed anonymous mapping.
    pub name: Option<String>,
    /// Device of the mapped file (kernel `dev_t`: major in bits 20-31), 0 when anonymous.
    pub dev: u32,
    /// Inode number of the mapped file, 0 when anonymous.
    pub inode: u64,
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

    /// `/proc/<pid>/maps` permissions (`r-xp`; `s` for `VM_MAYSHARE`).
    pub fn perms(&self) -> String {
        let p = self.protection();
        format!(
            "{p}{}",
            if self.flags & vm_flags::VM_MAYSHARE != 0 {
                's'
            } else {
                'p'
            }
        )
    }

    /// Offset into the file in bytes (`vm_pgoff << 12`), as `/proc/<pid>/maps` shows it:
    /// 0 for an anonymous mapping.
    pub fn offset(&self) -> u64 {
        if self.file.is_some() {
            self.pgoff.wrapping_shl(12)
        } else {
            0
        }
    }

    /// The `maps` device column (`fd:01`): major and minor of the kernel `dev_t`.
    pub fn dev_string(&self) -> String {
        format!("{:02x}:{:02x}", self.dev >> 20, self.dev & 0xf_ffff)
    }

    /// The line `/proc/PID/maps` prints for this VMA (without the newline).
    pub fn maps_line(&self) -> String {
        let head = format!(
            "{:08x}-{:08x} {} {:08x} {} {}",
            self.start.0,
            self.end.0,
            self.perms(),
            self.offset(),
            self.dev_string(),
            self.inode
        );
        match &self.name {
            // The kernel pads the name to column 73 (`seq_pad`).
            Some(n) => format!("{head:<72} {n}"),
            None => head,
        }
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

/// Longest `prctl(PR_SET_VMA_ANON_NAME)` name (`ANON_VMA_NAME_MAX_LEN`, NUL included).
const ANON_NAME_MAX: usize = 80;

/// Per-process inputs of VMA naming.
struct NamingContext {
    start_brk: Option<u64>,
    brk: Option<u64>,
    start_stack: Option<u64>,
    special_ops: Vec<Va>,
    root: Option<(Va, Va)>,
    /// 6.5+ `vma_is_initial_heap` compares strictly; before, `show_map_vma` did not.
    strict_heap: bool,
}

impl NamingContext {
    fn is_heap(&self, start: u64, end: u64) -> bool {
        let (Some(start_brk), Some(brk)) = (self.start_brk, self.brk) else {
            return false;
        };
        if self.strict_heap {
            start < brk && end > start_brk
        } else {
            start <= brk && end >= start_brk
        }
    }
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
            // Kernel threads and exited processes have no address space: `/proc/PID/maps`
            // is empty for them too.
            return Ok(VmaList::default());
        };
        if let Some(p) = task.problems.first() {
            return Err(malformed(
                "task_struct.mm",
                task.task.0,
                format!(
                    "the address space of {} ({}) is unreadable: {p}",
                    task.pid, task.comm
                ),
            ));
        }
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
        let ctx = self.naming_context(&k, mo, mm, task.task)?;
        let mut seen = HashSet::new();
        for vma in candidates {
            if !seen.insert(vma) {
                continue;
            }
            match self.read_vma(&k, mo, mm, vma, &ctx, &mut out.skipped) {
                Ok(v) => out.vmas.push(v),
                Err(e) => out.skipped.push((vma, e)),
            }
        }
        out.vmas.sort_by_key(|v| v.start);
        if let Some(gate) = self.gate_vma(&k, mo, mm)? {
            out.vmas.push(gate);
        }
        Ok(out)
    }

    /// What naming the VMAs of `mm` needs, read once per process.
    fn naming_context<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        mo: &MmOffsets,
        mm: Va,
        task: Va,
    ) -> Result<NamingContext, VmiError> {
        let field = |off: Option<u64>, what: &'static str| -> Result<Option<u64>, VmiError> {
            match off {
                Some(o) => k
                    .u64(mm + o)
                    .map(Some)
                    .map_err(|e| malformed(what, (mm + o).0, format!("unreadable: {e}"))),
                None => Ok(None),
            }
        };
        let special_ops = ["special_mapping_vmops", "legacy_special_mapping_vmops"]
            .iter()
            .filter_map(|n| self.symbol_address(n))
            .collect();
        Ok(NamingContext {
            start_brk: field(mo.start_brk, "mm_struct.start_brk")?,
            brk: field(mo.brk, "mm_struct.brk")?,
            start_stack: field(mo.start_stack, "mm_struct.start_stack")?,
            special_ops,
            root: self.task_root(k, task).unwrap_or(None),
            strict_heap: self.kernel_version() >= Some((6, 5)),
        })
    }

    /// The kernel's `(major, minor)` version from its release string.
    pub(crate) fn kernel_version(&self) -> Option<(u32, u32)> {
        let r = self.kernel.release.as_deref()?;
        let mut it = r.split(|c: char| !c.is_ascii_digit());
        let major = it.next()?.parse().ok()?;
        let minor = it.next()?.parse().ok()?;
        Some((major, minor))
    }

    /// The `[vsyscall]` page `/proc/PID/maps` lists after the VMAs (`get_gate_vma`): the
    /// static `gate_vma`, unless `vsyscall=none` or the mm has no vsyscall page.
    fn gate_vma<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        mo: &MmOffsets,
        mm: Va,
    ) -> Result<Option<LinuxVma>, VmiError> {
        /// `enum { EMULATE, XONLY, NONE } vsyscall_mode` (5.2+).
        const VSYSCALL_NONE: u32 = 2;
        /// `MM_CONTEXT_HAS_VSYSCALL`.
        const HAS_VSYSCALL: u64 = 2;
        let (Some(gate), Some(mode)) = (
            self.symbol_address("gate_vma"),
            self.symbol_address("vsyscall_mode"),
        ) else {
            return Ok(None);
        };
        if k.u32(mode)? == VSYSCALL_NONE {
            return Ok(None);
        }
        if let Some(flags) = mo.context_flags
            && k.u64(mm + flags)? & HAS_VSYSCALL == 0
        {
            return Ok(None);
        }
        Ok(Some(LinuxVma {
            vma: gate,
            start: Va(k.u64(gate + mo.vm_start)?),
            end: Va(k.u64(gate + mo.vm_end)?),
            flags: k.u64(gate + mo.vm_flags)?,
            pgoff: 0,
            file: None,
            path: None,
            name: Some("[vsyscall]".into()),
            dev: 0,
            inode: 0,
        }))
    }

    fn read_vma<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        mo: &MmOffsets,
        mm: Va,
        vma: Va,
        ctx: &NamingContext,
        problems: &mut crate::Skipped,
    ) -> Result<LinuxVma, VmiError> {
        let fields = [
            Some(mo.vm_start),
            Some(mo.vm_end),
            Some(mo.vm_flags),
            Some(mo.vm_pgoff),
            Some(mo.vm_file),
            Some(mo.vm_mm),
            mo.vm_ops,
            mo.vm_private_data,
            mo.anon_name,
        ];
        let lo = fields.iter().flatten().copied().min().unwrap_or(0);
        let hi = fields.iter().flatten().copied().max().unwrap_or(0) + 8;
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
        let (path, dev, inode) = match file {
            // A file whose path or inode cannot be read keeps its VMA; the failure is
            // reported with the VMA's address.
            Some(f) => {
                let path = self
                    .file_path_from(k, f, ctx.root)
                    .map_err(|e| problems.push((vma, e)))
                    .ok();
                let (dev, ino) = self
                    .file_dev_ino(k, f)
                    .map_err(|e| problems.push((vma, e)))
                    .unwrap_or((0, 0));
                (path, dev, ino)
            }
            None => (None, 0, 0),
        };
        // `anon_name` is valid for file mappings only where it has left the `shared` union.
        let anon_name = match mo.anon_name {
            Some(off) if file.is_none() || mo.vma_shared != Some(off) => match w.u64(off)? {
                0 => None,
                p => {
                    let p = k.check_ptr(p, "vm_area_struct.anon_name", w.at(off))?;
                    let name_off = mo.anon_vma_name_name.ok_or_else(|| {
                        VmiError::not_supported(
                            "VMA names (no anon_vma_name.name in the profile)",
                            "linux",
                        )
                    })?;
                    Some(k.cstring(p + name_off, ANON_NAME_MAX)?)
                }
            },
            _ => None,
        };
        let name = if file.is_some() {
            match anon_name {
                Some(n) => Some(format!("[anon_shmem:{n}]")),
                None => path.clone(),
            }
        } else if let Some(n) = self.special_name(k, mo, &w, ctx)? {
            Some(n)
        } else if ctx.is_heap(start, end) {
            Some("[heap]".into())
        } else if ctx.start_stack.is_some_and(|s| start <= s && end >= s) {
            Some("[stack]".into())
        } else {
            anon_name.map(|n| format!("[anon:{n}]"))
        };
        Ok(LinuxVma {
            vma,
            start: Va(start),
            end: Va(end),
            flags: w.u64(mo.vm_flags)?,
            pgoff: w.u64(mo.vm_pgoff)?,
            file,
            path,
            name,
            dev,
            inode,
        })
    }

    /// The name of a special mapping (`[vdso]`, `[vvar]`, `[uprobes]`): its `vm_ops` is
    /// `special_mapping_vmops` and `vm_private_data` a `struct vm_special_mapping`.
    fn special_name<D: VmiRead<Architecture = Amd64>>(
        &self,
        k: &Kmem<'_, D>,
        mo: &MmOffsets,
        w: &crate::kmem::Window,
        ctx: &NamingContext,
    ) -> Result<Option<String>, VmiError> {
        let (Some(ops), Some(private), Some(name)) =
            (mo.vm_ops, mo.vm_private_data, mo.special_mapping_name)
        else {
            return Ok(None);
        };
        let ops = w.u64(ops)?;
        if ops == 0 || !ctx.special_ops.contains(&Va(ops)) {
            return Ok(None);
        }
        let sm = k.check_ptr(
            w.u64(private)?,
            "vm_area_struct.vm_private_data",
            w.at(private),
        )?;
        let text = k.bytes_ptr(sm + name, "vm_special_mapping.name")?;
        Ok(Some(k.cstring(text, 64)?))
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
            if slots.is_empty() || pivots.len() >= slots.len() {
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
