//! Parsing HMP `info mtree -f`: the flattened memory map of the `memory` address space,
//! which tells where each guest-physical range lands in which memory region and at which
//! offset inside it (`@offset`).

/// One range of a flat view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlatRange {
    /// First guest-physical address.
    pub start: u64,
    /// Length in bytes (≥ 1).
    pub len: u64,
    /// Region type as QEMU prints it (`ram`, `rom`, `i/o`, `romd`...).
    pub kind: String,
    /// Name of the memory region (for a memory backend: its id).
    pub region: String,
    /// Offset of `start` inside the region.
    pub offset: u64,
}

impl FlatRange {
    /// Whether the range is backed by host memory (RAM or ROM of a RAM block).
    pub fn is_ram_backed(&self) -> bool {
        let k = self.kind.trim_start_matches("nv-");
        k == "ram" || k == "rom" || k == "ramd" || k == "romd"
    }
}

/// Most lines we look at (bounded work on hostile or huge output).
const MAX_LINES: usize = 1 << 20;

/// The ranges of the flat view that serves the address space `as_name` (`"memory"`).
/// Returns an empty list when no such view exists.
pub fn parse_flat_view(text: &str, as_name: &str) -> Vec<FlatRange> {
    let want = format!("AS \"{as_name}\"");
    let mut out = Vec::new();
    let mut in_view = false;
    let mut header = true;
    for line in text.lines().take(MAX_LINES) {
        let t = line.trim();
        if t.starts_with("FlatView #") {
            if in_view && !out.is_empty() {
                break;
            }
            in_view = false;
            header = true;
            continue;
        }
        if header && t.starts_with("AS \"") {
            if t.starts_with(&want) && t[want.len()..].starts_with(',') {
                in_view = true;
            }
            continue;
        }
        if t.starts_with("Root memory region") {
            header = false;
            continue;
        }
        if in_view && let Some(r) = parse_range_line(t) {
            out.push(r);
        }
    }
    out
}

/// `0000000000100000-000000007fffffff (prio 0, ram): ram0 @0000000000100000`
fn parse_range_line(t: &str) -> Option<FlatRange> {
    let (range, rest) = t.split_once(' ')?;
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    let len = end.checked_sub(start)?.checked_add(1)?;
    let rest = rest.trim_start().strip_prefix("(prio ")?;
    let (_prio, rest) = rest.split_once(", ")?;
    let (kind, rest) = rest.split_once("): ")?;
    let mut words = rest.split_whitespace();
    let region = words.next()?.to_string();
    let mut offset = 0;
    for w in words {
        if let Some(h) = w.strip_prefix('@') {
            offset = u64::from_str_radix(h, 16).ok()?;
        }
    }
    Some(FlatRange {
        start,
        len,
        kind: kind.to_string(),
        region,
        offset,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Real output of QEMU 7.2 for a q35 guest with 3 GiB in `memory-backend-file` `ram0`
    /// (the I/O view shortened).
    pub(crate) const Q35_3G: &str = "FlatView #0
 AS \"I/O\", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000cfc-0000000000000cff (prio 0, i/o): pci-conf-data

FlatView #1
 AS \"cpu-smm-0\", root: memory
 Root memory region: memory
  0000000000000000-00000000000c2fff (prio 0, ram): ram0
  0000000100000000-000000013fffffff (prio 0, ram): ram0 @0000000080000000

FlatView #2
 AS \"mch\", root: bus master container
 Root memory region: (none)
  No rendered FlatView

FlatView #3
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 AS \"cpu-memory-1\", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): ram0
  00000000000c3000-00000000000e7fff (prio 0, rom): ram0 @00000000000c3000
  00000000000e8000-00000000000effff (prio 0, ram): ram0 @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): ram0 @00000000000f0000
  0000000000100000-000000007fffffff (prio 0, ram): ram0 @0000000000100000
  00000000b0000000-00000000bfffffff (prio 0, i/o): pcie-mmcfg-mmio
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000013fffffff (prio 0, ram): ram0 @0000000080000000
";

    #[test]
    fn q35_split_above_4g() {
        let v = parse_flat_view(Q35_3G, "memory");
        assert_eq!(v.len(), 9);
        let high = v.last().unwrap();
        assert_eq!(high.start, 1 << 32);
        assert_eq!(high.len, 1 << 30);
        assert_eq!(high.offset, 0x8000_0000);
        assert_eq!(high.region, "ram0");
        assert!(high.is_ram_backed());
        assert_eq!(v[0].offset, 0);
        assert!(!v[5].is_ram_backed());
        assert_eq!(v[7].region, "pc.bios");
    }

    #[test]
    fn missing_view_is_empty() {
        assert!(parse_flat_view(Q35_3G, "nothing").is_empty());
        assert!(parse_flat_view("", "memory").is_empty());
    }

    /// Seeded, bounded fuzz: mutations of real output never panic.
    #[test]
    fn fuzz_mutations_do_not_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6d74_7265);
        let base = Q35_3G.as_bytes();
        for _ in 0..3000 {
            let mut b = base.to_vec();
            for _ in 0..rng.gen_range(1..16) {
                let i = rng.gen_range(0..b.len());
                match rng.gen_range(0..4) {
                    0 => b[i] = rng.r#gen(),
                    1 => b[i] = b"0123456789abcdef-@ (),:\n"[rng.gen_range(0..24)],
                    2 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b'f'),
                }
            }
            let s = String::from_utf8_lossy(&b);
            for r in parse_flat_view(&s, "memory") {
                assert!(r.len >= 1);
            }
        }
    }
}
