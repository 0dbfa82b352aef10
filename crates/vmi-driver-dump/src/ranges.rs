//! The physical-range map shared by every format that stores pages uncompressed: sorted,
//! disjoint ranges of guest-physical addresses, each backed by a run of file bytes.
//! A lookup is one binary search, O(log n) in the number of ranges.

use std::ops::Range;

use vmi_core::{Pa, PageAbsence, VmiError};

use crate::data::malformed;

/// A run of guest-physical memory stored contiguously in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    /// First guest-physical address.
    pub(crate) start: u64,
    /// Length in bytes (> 0).
    pub(crate) len: u64,
    /// File offset of the byte at `start`.
    pub(crate) file_offset: u64,
}

impl Segment {
    #[inline]
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Sorted, disjoint physical segments.
#[derive(Clone, Debug, Default)]
pub(crate) struct RangeMap {
    segments: Vec<Segment>,
    /// A guess per `1 << shift` bytes of physical address space (below [`Self::end`]): the
    /// segment holding the slot's first byte, else the first one starting inside the slot,
    /// else an empty segment. A lookup that the guess holds costs one load and one
    /// compare instead of a binary search's chain of dependent loads and compares.
    guesses: Vec<Segment>,
    /// log2 of the bytes per guess.
    shift: u32,
    /// The largest segment (empty when there is none), tried before the guesses: in raw,
    /// ELF and LiME dumps of a small guest it holds almost every read, and checking it
    /// needs no table lookup. (Fewer instructions per read is what lets the CPU keep
    /// more of a scan's cache misses in flight.)
    primary: Segment,
}

/// At most this many guesses (24 bytes each), so the table stays within the L1/L2 cache.
const MAX_GUESSES: u64 = 512;
/// At least 2 MiB per guess.
const MIN_GUESS_SHIFT: u32 = 21;

impl RangeMap {
    /// Builds the map. Every segment must lie inside a file of `file_len` bytes and must
    /// not wrap the physical address space. Where segments overlap, the one listed first
    /// wins (kdump-style ELF cores list the kernel text twice: once by its direct-map
    /// address and once in the RAM range; both hold the same bytes).
    pub(crate) fn new(mut segments: Vec<Segment>, file_len: u64) -> Result<Self, VmiError> {
        for s in &segments {
            let file_end = s.file_offset.checked_add(s.len);
            if file_end.is_none_or(|e| e > file_len) {
                return Err(malformed(
                    "dump segment",
                    s.file_offset,
                    format!(
                        "{:#x} bytes for physical {:#x} run past the end of the file ({file_len:#x} bytes)",
                        s.len, s.start
                    ),
                ));
            }
            if s.start.checked_add(s.len).is_none() {
                return Err(malformed(
                    "dump segment",
                    s.file_offset,
                    format!("physical range {:#x}+{:#x} wraps", s.start, s.len),
                ));
            }
        }
        segments.retain(|s| s.len > 0);
        // Stable sort keeps the listed order among equal starts: "first listed wins".
        let order: Vec<usize> = {
            let mut idx: Vec<usize> = (0..segments.len()).collect();
            idx.sort_by_key(|&i| (segments[i].start, i));
            idx
        };
        let mut out: Vec<Segment> = Vec::with_capacity(segments.len());
        // Overlaps: resolve by priority (listed order), trimming later-listed segments.
        // Sorting by start and trimming against the previous output is exact when the
        // earlier-listed segment also starts earlier; otherwise the later one is trimmed
        // where it overlaps the already-placed bytes, which is what "first wins" means for
        // identical content and is always memory-safe.
        for i in order {
            let mut s = segments[i];
            if let Some(last) = out.last() {
                let last_end = last.end();
                if s.start < last_end {
                    let cut = last_end - s.start;
                    if cut >= s.len {
                        continue;
                    }
                    s.start += cut;
                    s.file_offset += cut;
                    s.len -= cut;
                }
            }
            out.push(s);
        }
        let primary = out
            .iter()
            .copied()
            .max_by_key(|s| s.len)
            .unwrap_or_default();
        let mut map = Self {
            segments: out,
            guesses: Vec::new(),
            shift: MIN_GUESS_SHIFT,
            primary,
        };
        map.build_guesses();
        Ok(map)
    }

    /// Fills [`Self::guesses`]: at most [`MAX_GUESSES`] binary searches.
    fn build_guesses(&mut self) {
        let Some(last) = self.end().checked_sub(1) else {
            return;
        };
        while (last >> self.shift) >= MAX_GUESSES {
            self.shift += 1;
        }
        let none = Segment {
            start: 0,
            len: 0,
            file_offset: 0,
        };
        self.guesses = (0..=(last >> self.shift))
            .map(|slot| {
                let slot_start = slot << self.shift;
                let slot_end = slot_start.saturating_add((1u64 << self.shift) - 1);
                let i = self.segments.partition_point(|s| s.start <= slot_start);
                match (
                    i.checked_sub(1).map(|j| self.segments[j]),
                    self.segments.get(i),
                ) {
                    (Some(s), _) if slot_start < s.end() => s,
                    (_, Some(s)) if s.start <= slot_end => *s,
                    _ => none,
                }
            })
            .collect();
    }

    /// The segment holding `pa`: the slot's guess when it holds `pa`, else a binary search.
    #[inline(always)]
    pub(crate) fn find(&self, pa: u64) -> Option<&Segment> {
        if let Some(s) = self.guess(pa)
            // `start <= pa < start + len` in one compare (`new` rejected wrapping segments).
            && pa.wrapping_sub(s.start) < s.len
        {
            return Some(s);
        }
        self.search(pa)
    }

    /// The guess for the slot of `pa` (which may not hold it).
    #[inline(always)]
    fn guess(&self, pa: u64) -> Option<&Segment> {
        // `shift` < 64 (`build_guesses` stops at 63 at the latest): the shift cannot wrap.
        usize::try_from(pa.wrapping_shr(self.shift))
            .ok()
            .and_then(|slot| self.guesses.get(slot))
    }

    /// [`Self::find`] by binary search.
    #[inline(never)]
    fn search(&self, pa: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.start <= pa);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (pa < s.end()).then_some(s)
    }

    /// One past the highest physical address held (0 when empty).
    pub(crate) fn end(&self) -> u64 {
        self.segments.last().map_or(0, Segment::end)
    }

    /// Number of segments.
    #[allow(dead_code)] // used by tests and debug output
    pub(crate) fn len(&self) -> usize {
        self.segments.len()
    }

    /// Why `pa` is not readable: beyond the last range, or in a hole.
    pub(crate) fn absence(&self, pa: u64) -> PageAbsence {
        if pa >= self.end() {
            PageAbsence::BeyondMemory
        } else {
            PageAbsence::NotInDump
        }
    }

    /// Copies `buf.len()` bytes of physical memory at `pa` out of `data`. The bytes may
    /// span adjacent segments; any missing byte makes the read fail with the reason.
    ///
    /// Always inlined: it is the whole per-read cost of raw, ELF, LiME and Windows dumps,
    /// and inlined into a caller with a fixed-size buffer the copy becomes one load.
    #[inline(always)]
    pub(crate) fn read(&self, data: &[u8], pa: u64, buf: &mut [u8]) -> Result<(), PageAbsence> {
        // Fast path: the slot's guess holds everything (the common case by far). Written
        // so that no step can overflow, hence without overflow checks: `within < len`
        // before `len - within`, and `file_offset + len <= data.len()` (`RangeMap::new`).
        if Self::read_in(&self.primary, data, pa, buf) {
            return Ok(());
        }
        if let Some(s) = self.guess(pa)
            && Self::read_in(s, data, pa, buf)
        {
            return Ok(());
        }
        self.read_slow(data, pa, buf)
    }

    /// Copies `buf.len()` bytes at `pa` when segment `s` holds them all.
    #[inline(always)]
    fn read_in(s: &Segment, data: &[u8], pa: u64, buf: &mut [u8]) -> bool {
        let within = pa.wrapping_sub(s.start);
        if within < s.len && buf.len() as u64 <= s.len.wrapping_sub(within) {
            let at = s.file_offset.wrapping_add(within) as usize;
            if let Some(src) = data.get(at..at.wrapping_add(buf.len())) {
                vmi_core::copy_small(buf, src);
                return true;
            }
        }
        false
    }

    #[cold]
    #[inline(never)]
    fn read_slow(&self, data: &[u8], pa: u64, buf: &mut [u8]) -> Result<(), PageAbsence> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = pa + done as u64;
            let s = self.find(at).ok_or_else(|| self.absence(at))?;
            let within = at - s.start;
            let n = ((s.len - within) as usize).min(buf.len() - done);
            let off = (s.file_offset + within) as usize;
            buf[done..done + n].copy_from_slice(&data[off..off + n]);
            done += n;
        }
        Ok(())
    }

    /// The largest segment's physical start and where its bytes lie in `data` (an empty
    /// range when they do not fit, which `new` rules out).
    pub(crate) fn primary_file_range(&self, data: &[u8]) -> (u64, Range<usize>) {
        let s = &self.primary;
        let range = usize::try_from(s.file_offset)
            .ok()
            .zip(usize::try_from(s.len).ok())
            .and_then(|(start, len)| Some(start..start.checked_add(len)?))
            .filter(|r| r.end <= data.len());
        match range {
            Some(r) => (s.start, r),
            None => (0, 0..0),
        }
    }

    /// The physical ranges held, adjacent segments merged.
    pub(crate) fn ranges(&self) -> Vec<Range<Pa>> {
        let mut out: Vec<Range<Pa>> = Vec::new();
        for s in &self.segments {
            match out.last_mut() {
                Some(last) if last.end.0 == s.start => last.end = Pa(s.end()),
                _ => out.push(Pa(s.start)..Pa(s.end())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(start: u64, len: u64, file_offset: u64) -> Segment {
        Segment {
            start,
            len,
            file_offset,
        }
    }

    #[test]
    fn lookup_holes_and_overlaps() {
        let data: Vec<u8> = (0..=255u8).cycle().take(0x4000).collect();
        let map = RangeMap::new(
            vec![
                seg(0x10000, 0x1000, 0x1000),
                seg(0x0, 0x1000, 0x0),
                seg(0x10800, 0x1000, 0x2000), // overlaps the first: trimmed
            ],
            data.len() as u64,
        )
        .unwrap();
        assert_eq!(map.len(), 3);
        let mut b = [0u8; 4];
        map.read(&data, 0x10, &mut b).unwrap();
        assert_eq!(b, [0x10, 0x11, 0x12, 0x13]);
        assert_eq!(map.read(&data, 0x1000, &mut b), Err(PageAbsence::NotInDump));
        assert_eq!(
            map.read(&data, 0x20000, &mut b),
            Err(PageAbsence::BeyondMemory)
        );
        // Spanning the seam between the first segment and the trimmed one.
        let mut b = [0u8; 2];
        map.read(&data, 0x10fff, &mut b).unwrap();
        assert_eq!(b[0], data[0x1fff]);
        assert_eq!(b[1], data[0x2000 + 0x800]);
        assert_eq!(
            map.ranges(),
            vec![Pa(0)..Pa(0x1000), Pa(0x10000)..Pa(0x11800)]
        );
    }

    /// The per-slot guesses never change an answer: `find` agrees with the binary search
    /// at every segment edge and at random addresses, for seeded random layouts (dense,
    /// sparse, far above 4 GiB, more segments than slots).
    #[test]
    fn guesses_agree_with_binary_search() {
        use rand::{Rng, SeedableRng, rngs::SmallRng};
        let mut rng = SmallRng::seed_from_u64(7);
        for round in 0..200 {
            let count = rng.gen_range(0..if round % 4 == 0 { 3000 } else { 12 });
            let step_max: u64 = [1 << 12, 1 << 22, 1 << 33][round % 3];
            let mut at = rng.gen_range(0..step_max);
            let mut segments = Vec::new();
            for _ in 0..count {
                let len = rng.gen_range(1..step_max);
                segments.push(seg(at, len, 0));
                at += len + rng.gen_range(0..step_max);
            }
            let file_len = segments.iter().map(|s| s.len).max().unwrap_or(0);
            let map = RangeMap::new(segments.clone(), file_len).unwrap();
            assert!(map.guesses.len() as u64 <= MAX_GUESSES);
            let mut probes: Vec<u64> = (0..500).map(|_| rng.gen_range(0..=at)).collect();
            for s in &segments {
                probes.extend([s.start.wrapping_sub(1), s.start, s.end() - 1, s.end()]);
            }
            for pa in probes {
                assert_eq!(map.find(pa), map.search(pa), "round {round} pa {pa:#x}");
            }
        }
    }

    #[test]
    fn rejects_segments_past_the_file() {
        assert!(RangeMap::new(vec![seg(0, 0x2000, 0)], 0x1000).is_err());
        assert!(RangeMap::new(vec![seg(u64::MAX, 2, 0)], 0x1000).is_err());
        assert!(RangeMap::new(vec![seg(0, 1, u64::MAX)], 0x1000).is_err());
    }
}
