//! Guest RAM: layout discovery through QMP and the three access paths.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::error::QemuError;
use crate::monitor::Monitor;
use crate::mtree::{FlatRange, parse_flat_view};
use crate::shadow::Shadow;
use crate::sys::SharedMap;

/// How the driver reaches guest RAM, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AccessPath {
    /// `mmap` of a shared file backend (`memory-backend-file,share=on`, or memfd when
    /// its path is visible): memory speed; read-only unless the attach is writable.
    Mmap,
    /// The QEMU process's memory (`gpa2hva` + `/proc/<pid>/mem`): a system call per
    /// access; read-only unless the attach is writable; needs ptrace rights on QEMU
    /// (same user and a permissive `ptrace_scope`, or root).
    ProcessMemory,
    /// HMP `xp` over QMP: slow (a monitor command per read), read-only.
    MonitorXp,
}

/// A memory backend (`query-memdev`).
#[derive(Clone, Debug)]
pub(crate) struct Backend {
    pub id: String,
    pub size: u64,
    pub mem_path: Option<PathBuf>,
    pub share: bool,
}

/// A guest-physical range backed by a memory backend.
#[derive(Clone, Debug)]
pub(crate) struct RamRange {
    pub gpa: u64,
    pub len: u64,
    pub backend: usize,
    pub offset: u64,
}

/// The RAM layout: backends and the guest-physical ranges into them, sorted by `gpa`.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub backends: Vec<Backend>,
    pub ranges: Vec<RamRange>,
}

impl Layout {
    /// Asks QEMU: `query-memdev`, `qom-get` of `mem-path`, `info mtree -f`.
    pub(crate) fn discover(qmp: &mut Monitor) -> Result<Layout, QemuError> {
        let memdevs = qmp.execute("query-memdev", None)?;
        let mut backends = Vec::new();
        for m in memdevs.as_array().into_iter().flatten() {
            let Some(id) = m.get("id").and_then(Value::as_str) else {
                continue;
            };
            let size = m.get("size").and_then(Value::as_u64).unwrap_or(0);
            let share = m.get("share").and_then(Value::as_bool).unwrap_or(false);
            let path = format!("/objects/{id}");
            let mem_path = qmp
                .execute(
                    "qom-get",
                    Some(json!({ "path": path, "property": "mem-path" })),
                )
                .ok()
                .and_then(|v| v.as_str().map(PathBuf::from))
                .filter(|p| !p.as_os_str().is_empty());
            backends.push(Backend {
                id: id.to_string(),
                size,
                mem_path,
                share,
            });
        }
        let mtree = qmp.hmp("info mtree -f", None)?;
        let flat = parse_flat_view(&mtree, "memory");
        let ranges = ram_ranges(&flat, &backends);
        if ranges.is_empty() {
            return Err(QemuError::NoRam(format!(
                "no range of the \"memory\" flat view maps a memory backend ({} backends: {})",
                backends.len(),
                backends
                    .iter()
                    .map(|b| b.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Layout { backends, ranges })
    }

    /// The range holding `gpa`.
    pub(crate) fn find(&self, gpa: u64) -> Option<(usize, &RamRange)> {
        let i = self
            .ranges
            .partition_point(|r| r.gpa <= gpa)
            .checked_sub(1)?;
        let r = self.ranges.get(i)?;
        (gpa - r.gpa < r.len).then_some((i, r))
    }

    /// End of the highest range.
    pub(crate) fn end(&self) -> u64 {
        self.ranges
            .last()
            .map(|r| r.gpa.saturating_add(r.len))
            .unwrap_or(0)
    }

    /// Ranges merged where contiguous.
    pub(crate) fn merged(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for r in &self.ranges {
            let end = r.gpa.saturating_add(r.len);
            match out.last_mut() {
                Some(last) if last.1 == r.gpa => last.1 = end,
                _ => out.push((r.gpa, end)),
            }
        }
        out
    }
}

/// The RAM-backed ranges of a flat view that map one of `backends`, within their size.
pub(crate) fn ram_ranges(flat: &[FlatRange], backends: &[Backend]) -> Vec<RamRange> {
    let mut out: Vec<RamRange> = flat
        .iter()
        .filter(|f| f.is_ram_backed())
        .filter_map(|f| {
            let backend = backends.iter().position(|b| b.id == f.region)?;
            let end = f.offset.checked_add(f.len)?;
            (end <= backends[backend].size).then_some(RamRange {
                gpa: f.start,
                len: f.len,
                backend,
                offset: f.offset,
            })
        })
        .collect();
    out.sort_by_key(|r| r.gpa);
    out.dedup_by(|b, a| b.gpa < a.gpa.saturating_add(a.len));
    out
}

/// One way of reaching guest RAM.
#[derive(Debug)]
pub(crate) enum Access {
    /// One mapping per backend (index as in `Layout::backends`).
    Mmap(Vec<Option<SharedMap>>),
    /// `/proc/<pid>/mem` and the host-virtual address of each range.
    Process {
        mem: File,
        writable: bool,
        hva: Vec<u64>,
        pid: u32,
    },
    /// `xp` through the monitor.
    Xp,
}

impl Access {
    pub(crate) fn path(&self) -> AccessPath {
        match self {
            Access::Mmap(_) => AccessPath::Mmap,
            Access::Process { .. } => AccessPath::ProcessMemory,
            Access::Xp => AccessPath::MonitorXp,
        }
    }

    /// Maps every backend that the guest RAM ranges use (read-write only when
    /// `writable`); fails unless all are mappable.
    pub(crate) fn open_mmap(layout: &Layout, writable: bool) -> Result<Access, String> {
        let mut maps: Vec<Option<SharedMap>> = Vec::new();
        for (i, b) in layout.backends.iter().enumerate() {
            if !layout.ranges.iter().any(|r| r.backend == i) {
                maps.push(None);
                continue;
            }
            let Some(path) = &b.mem_path else {
                return Err(format!("backend {} has no mem-path (anonymous RAM)", b.id));
            };
            if !b.share {
                return Err(format!(
                    "backend {} is share=off: QEMU's copy-on-write pages are invisible in {}",
                    b.id,
                    path.display()
                ));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let meta = file
                .metadata()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if !meta.is_file() {
                return Err(format!(
                    "{} is not a regular file (a directory: QEMU made an unlinked file in it)",
                    path.display()
                ));
            }
            if meta.len() < b.size {
                return Err(format!(
                    "{} is {} bytes, smaller than backend {} ({} bytes)",
                    path.display(),
                    meta.len(),
                    b.id,
                    b.size
                ));
            }
            let len = usize::try_from(b.size).map_err(|_| "backend too large".to_string())?;
            let map = SharedMap::new(&file, len, writable)
                .map_err(|e| format!("mmap {}: {e}", path.display()))?;
            maps.push(Some(map));
        }
        Ok(Access::Mmap(maps))
    }

    /// Opens `/proc/<pid>/mem` (read-write only when `writable`) and asks `gpa2hva`
    /// for each range.
    pub(crate) fn open_process(
        layout: &Layout,
        qmp: &mut Monitor,
        pid: u32,
        writable: bool,
    ) -> Result<Access, String> {
        let path = format!("/proc/{pid}/mem");
        let mem = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        let mut hva = Vec::with_capacity(layout.ranges.len());
        for r in &layout.ranges {
            let out = qmp
                .hmp(&format!("gpa2hva {:#x}", r.gpa), None)
                .map_err(|e| e.to_string())?;
            hva.push(parse_gpa2hva(&out).ok_or_else(|| format!("gpa2hva: {out:?}"))?);
        }
        // Probe: one byte must be readable, else ptrace rights are missing.
        let mut probe = [0u8; 1];
        if let Some(first) = hva.first() {
            mem.read_exact_at(&mut probe, *first)
                .map_err(|e| format!("reading {path}: {e} (ptrace rights on QEMU needed)"))?;
        }
        Ok(Access::Process {
            mem,
            writable,
            hva,
            pid,
        })
    }

    /// Whether writes work on this path.
    pub(crate) fn writable(&self) -> bool {
        match self {
            Access::Mmap(maps) => maps.iter().flatten().all(SharedMap::writable),
            Access::Process { writable, .. } => *writable,
            Access::Xp => false,
        }
    }
}

/// `Host virtual address for 0x100000000 (ram0) is 0x7f8be3fff000`
pub(crate) fn parse_gpa2hva(out: &str) -> Option<u64> {
    let w = out.split_whitespace().last()?;
    u64::from_str_radix(w.strip_prefix("0x")?, 16).ok()
}

/// Parses `xp /Ngx` output into exactly `n` little-endian quadwords.
pub(crate) fn parse_xp(out: &str, n: usize) -> Option<Vec<u64>> {
    let mut v = Vec::with_capacity(n.min(4096));
    for line in out.lines() {
        let Some((_, vals)) = line.split_once(": ") else {
            continue;
        };
        for w in vals.split_whitespace() {
            if v.len() == n {
                return None;
            }
            v.push(u64::from_str_radix(w.strip_prefix("0x")?, 16).ok()?);
        }
    }
    (v.len() == n).then_some(v)
}

/// Memory state shared by the driver: layout, path, and the once-only warning.
#[derive(Debug)]
pub(crate) struct Memory {
    pub layout: Layout,
    pub access: Access,
    pub warned_xp: AtomicBool,
    /// Breakpoint bytes QEMU planted in guest RAM (KVM), hidden from reads.
    pub shadow: Shadow,
}

impl Memory {
    /// Reads `buf.len()` bytes at `gpa` (within one range), as the guest sees them: a
    /// breakpoint's `int3` planted by QEMU reads as the byte it replaced. `qmp` is
    /// needed for `xp`.
    pub(crate) fn read(
        &self,
        gpa: u64,
        buf: &mut [u8],
        qmp: &Mutex<Monitor>,
    ) -> Result<bool, QemuError> {
        let read = self.read_ram(gpa, buf, qmp)?;
        if read {
            self.shadow.patch(gpa, buf);
        }
        Ok(read)
    }

    /// Reads `buf.len()` bytes of guest RAM at `gpa`, breakpoint bytes included.
    pub(crate) fn read_ram(
        &self,
        gpa: u64,
        buf: &mut [u8],
        qmp: &Mutex<Monitor>,
    ) -> Result<bool, QemuError> {
        let Some((i, r)) = self.layout.find(gpa) else {
            return Ok(false);
        };
        let off_in_range = gpa - r.gpa;
        if off_in_range.saturating_add(buf.len() as u64) > r.len {
            return Ok(false);
        }
        match &self.access {
            Access::Mmap(maps) => {
                let Some(Some(map)) = maps.get(r.backend) else {
                    return Ok(false);
                };
                let Ok(off) = usize::try_from(r.offset + off_in_range) else {
                    return Ok(false);
                };
                Ok(map.read(off, buf))
            }
            Access::Process { mem, hva, pid, .. } => {
                let Some(addr) = hva.get(i).map(|h| h + off_in_range) else {
                    return Ok(false);
                };
                mem.read_exact_at(buf, addr).map_err(|e| {
                    QemuError::io(format!("reading /proc/{pid}/mem at {addr:#x}"), e)
                })?;
                Ok(true)
            }
            Access::Xp => {
                if !self.warned_xp.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "vmi-driver-qemu: reading guest memory through HMP `xp` (slow): \
                         use a memory-backend-file with share=on, or grant ptrace rights on QEMU"
                    );
                }
                let start = gpa & !7;
                let end = (gpa + buf.len() as u64 + 7) & !7;
                let n = ((end - start) / 8) as usize;
                let out = qmp
                    .lock()
                    .map_err(|_| QemuError::protocol("QMP", "lock poisoned"))?
                    .hmp(&format!("xp /{n}gx {start:#x}"), None)?;
                let q = parse_xp(&out, n)
                    .ok_or_else(|| QemuError::protocol("xp output", out.clone()))?;
                let bytes: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
                let skip = (gpa - start) as usize;
                buf.copy_from_slice(&bytes[skip..skip + buf.len()]);
                Ok(true)
            }
        }
    }

    /// With the process-memory access path: QEMU's pid and the address in QEMU of
    /// `len` bytes at `gpa` (within one range); `None` otherwise or when not RAM.
    pub(crate) fn process_address(&self, gpa: u64, len: usize) -> Option<(u32, u64)> {
        let Access::Process { hva, pid, .. } = &self.access else {
            return None;
        };
        let (i, r) = self.layout.find(gpa)?;
        let off_in_range = gpa - r.gpa;
        if off_in_range.saturating_add(len as u64) > r.len {
            return None;
        }
        Some((*pid, hva.get(i)?.checked_add(off_in_range)?))
    }

    /// Writes `data` at `gpa` (within one range). `Ok(false)` when not RAM.
    /// Writes `data` at `gpa` (within one range). A planted breakpoint byte keeps its
    /// `int3`; what was written for it reaches RAM when the breakpoint goes.
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> Result<bool, QemuError> {
        match self.shadow.guard_write(gpa, data) {
            Some(kept) => self.write_ram(gpa, &kept),
            None => self.write_ram(gpa, data),
        }
    }

    /// Writes `data` into guest RAM at `gpa`, over breakpoint bytes too.
    pub(crate) fn write_ram(&self, gpa: u64, data: &[u8]) -> Result<bool, QemuError> {
        let Some((i, r)) = self.layout.find(gpa) else {
            return Ok(false);
        };
        let off_in_range = gpa - r.gpa;
        if off_in_range.saturating_add(data.len() as u64) > r.len {
            return Ok(false);
        }
        match &self.access {
            Access::Mmap(maps) => {
                let Some(Some(map)) = maps.get(r.backend) else {
                    return Ok(false);
                };
                let Ok(off) = usize::try_from(r.offset + off_in_range) else {
                    return Ok(false);
                };
                Ok(map.write(off, data))
            }
            Access::Process { mem, hva, pid, .. } => {
                let Some(addr) = hva.get(i).map(|h| h + off_in_range) else {
                    return Ok(false);
                };
                mem.write_all_at(data, addr).map_err(|e| {
                    QemuError::io(format!("writing /proc/{pid}/mem at {addr:#x}"), e)
                })?;
                Ok(true)
            }
            Access::Xp => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_q35_3g() {
        let flat = parse_flat_view(crate::mtree::tests::Q35_3G, "memory");
        let backends = vec![Backend {
            id: "ram0".into(),
            size: 3 << 30,
            mem_path: None,
            share: true,
        }];
        let l = Layout {
            ranges: ram_ranges(&flat, &backends),
            backends,
        };
        let (_, hi) = l.find(0x1_0000_1234).unwrap();
        assert_eq!(hi.offset + (0x1_0000_1234 - hi.gpa), 0x8000_1234);
        assert!(l.find(0xb000_0000).is_none());
        assert!(l.find(0x1_4000_0000).is_none());
        assert_eq!(
            l.merged(),
            vec![(0, 0x8000_0000), (0x1_0000_0000, 0x1_4000_0000)]
        );
        assert_eq!(l.end(), 0x1_4000_0000);
    }

    #[test]
    fn xp_and_gpa2hva() {
        let out = "0000000000001000: 0x0000000000000001 0x00000000000000ff\r\n\
                   0000000000001010: 0x1122334455667788\r\n";
        assert_eq!(parse_xp(out, 3), Some(vec![1, 0xff, 0x1122334455667788]));
        assert_eq!(parse_xp(out, 2), None);
        assert_eq!(parse_xp(out, 4), None);
        assert_eq!(
            parse_gpa2hva("Host virtual address for 0x1000 (ram0) is 0x7f8be3fff000\r\n"),
            Some(0x7f8be3fff000)
        );
        assert_eq!(parse_gpa2hva("gpa2hva: error"), None);
    }
}
