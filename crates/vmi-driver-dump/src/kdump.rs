//! kdump-compressed dumps as makedumpfile and QEMU write them.
//!
//! Layout (all little-endian, in blocks of `block_size` = the page size):
//! block 0 the `disk_dump_header` (`"KDUMP   "`, utsname, `max_mapnr`, ...); block 1 the
//! `kdump_sub_header` (`phys_base`, `dump_level`, offsets of the VMCOREINFO text and of
//! the CPU notes, 64-bit `max_mapnr`); then `bitmap_blocks` blocks holding two bitmaps of
//! equal size (1st: pages that exist, 2nd: pages dumped); then one 24-byte page
//! descriptor `{offset, size, flags, page_flags}` per bit set in the 2nd bitmap, in
//! page order; then page data, compressed with zlib, LZO, snappy or zstd (per page, as
//! `flags` says) or stored as is.
//!
//! The *flattened* layout (what `makedumpfile -F` and QEMU's `kdump-*` formats write, so
//! the output can go to a pipe) wraps the same logical file in records: a 4 KiB header
//! starting `"makedumpfile"`, then `{offset: be64, size: be64}` record headers each
//! followed by `size` bytes that belong at `offset` of the logical file, ended by an
//! offset of -1. At open we walk the record headers once (not the data) and keep a sorted
//! index of logical ranges → file ranges; reads go through it, nothing is copied.
//!
//! A page whose bit is clear in the 2nd bitmap but set in the 1st was filtered out by
//! makedumpfile: [`PageAbsence::Excluded`]. A page clear in both is a hole in the
//! machine's memory map: [`PageAbsence::NotInDump`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use quick_cache::sync::Cache;
use vmi_core::{Gfn, Pa, PageAbsence, VmiError};

use crate::PAGE_SIZE;
use crate::data::{le_u32, le_u64, malformed, slice_at};
use crate::lzo;
use crate::notes::{self, NoteInfo};

/// Signature of the standard layout.
pub(crate) const KDUMP_SIGNATURE: &[u8] = b"KDUMP   ";
/// Signature of the flattened layout.
pub(crate) const FLAT_SIGNATURE: &[u8] = b"makedumpfile\0";
/// Size of the flattened layout's file header.
pub(crate) const FLAT_HEADER_SIZE: u64 = 4096;
/// Size of `disk_dump_header` up to `nr_cpus` (inclusive).
const HEADER_SIZE: u64 = 464;
/// Size of `kdump_sub_header` (version 6).
const SUB_HEADER_SIZE: u64 = 104;
/// Size of a page descriptor.
const PD_SIZE: u64 = 24;
/// Largest compressed page we accept (makedumpfile stores a page uncompressed when
/// compression does not make it smaller).
const MAX_COMPRESSED: u64 = 2 * PAGE_SIZE;
/// Largest note area / VMCOREINFO text we read.
const MAX_NOTE_BYTES: u64 = 16 << 20;

const DUMP_DH_COMPRESSED_ZLIB: u32 = 0x1;
const DUMP_DH_COMPRESSED_LZO: u32 = 0x2;
const DUMP_DH_COMPRESSED_SNAPPY: u32 = 0x4;
const DUMP_DH_COMPRESSED_ZSTD: u32 = 0x20;

/// How one kdump page is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KdumpCompression {
    /// Stored as is.
    None,
    /// zlib (`makedumpfile -c`, QEMU `kdump-zlib`).
    Zlib,
    /// LZO1X (`makedumpfile -l`, QEMU `kdump-lzo`).
    Lzo,
    /// snappy (`makedumpfile -p`, QEMU `kdump-snappy`).
    Snappy,
    /// zstd (`makedumpfile -z`).
    Zstd,
}

/// The headers of a kdump-compressed dump.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KdumpHeader {
    /// Whether the file uses the flattened layout.
    pub flattened: bool,
    /// `header_version` (QEMU and current makedumpfile write 6).
    pub header_version: i32,
    /// `utsname.sysname`.
    pub sysname: String,
    /// `utsname.nodename`.
    pub nodename: String,
    /// `utsname.release` (`uname -r`).
    pub release: String,
    /// `utsname.version`.
    pub version: String,
    /// `utsname.machine`.
    pub machine: String,
    /// Seconds of the dump's timestamp.
    pub timestamp: i64,
    /// `status` flags (compression kinds used, incomplete dump...).
    pub status: u32,
    /// Block (page) size.
    pub block_size: u32,
    /// Number of page frames the bitmaps describe (64-bit value when present).
    pub max_mapnr: u64,
    /// CPUs of the dumped machine.
    pub nr_cpus: u32,
    /// The CPU that crashed or was dumping.
    pub current_cpu: u32,
    /// `phys_base` of the kernel (sub-header).
    pub phys_base: u64,
    /// makedumpfile's dump level (`-d`), the page classes it excluded.
    pub dump_level: i32,
    /// For a split dump (`--split`), the frames this file holds.
    pub split: Option<Range<u64>>,
}

/// One flattened-layout record after overlap resolution: logical bytes at `logical`
/// stored at `file`.
#[derive(Clone, Copy, Debug)]
struct FlatRecord {
    logical: u64,
    len: u64,
    file: u64,
}

/// How logical offsets of the kdump file map to offsets of the file on disk.
enum View {
    /// Standard layout: logical = file.
    Plain,
    /// Flattened layout: sorted, disjoint records.
    Flat(Vec<FlatRecord>),
}

impl View {
    /// Builds the record index of a flattened file: one pass over the record headers.
    /// Records written later win where they overlap earlier ones (that is what writing
    /// them in order to a seekable file would do).
    fn flattened(data: &[u8]) -> Result<Self, VmiError> {
        let h = slice_at(data, 0, 32)
            .ok_or_else(|| malformed("flattened kdump header", 0, "file shorter than 32 bytes"))?;
        let be = |at: usize| u64::from_be_bytes(h[at..at + 8].try_into().unwrap_or([0; 8]));
        let (kind, version) = (be(16), be(24));
        if kind != 1 {
            return Err(malformed(
                "flattened kdump header",
                16,
                format!("type {kind} (expected 1)"),
            ));
        }
        if version != 1 {
            return Err(VmiError::not_supported(
                "flattened kdump versions other than 1",
                "the dump driver",
            ));
        }
        let len = data.len() as u64;
        let mut pos = FLAT_HEADER_SIZE;
        let mut raw = Vec::new();
        // Without an end marker (the writer was interrupted) we keep what is there.
        while let Some(rh) = slice_at(data, pos, 16) {
            let offset = u64::from_be_bytes(rh[0..8].try_into().unwrap_or([0; 8]));
            let size = u64::from_be_bytes(rh[8..16].try_into().unwrap_or([0; 8]));
            if offset == u64::MAX {
                break;
            }
            let data_at = pos + 16;
            let next = data_at
                .checked_add(size)
                .filter(|&n| n <= len)
                .ok_or_else(|| {
                    malformed(
                        "flattened kdump record",
                        pos,
                        format!("{size:#x} bytes run past the end of the file"),
                    )
                })?;
            if offset.checked_add(size).is_none() || offset > i64::MAX as u64 {
                return Err(malformed(
                    "flattened kdump record",
                    pos,
                    format!("logical offset {offset:#x} is invalid"),
                ));
            }
            if size > 0 {
                raw.push(FlatRecord {
                    logical: offset,
                    len: size,
                    file: data_at,
                });
            }
            pos = next; // advances by at least 16 bytes: bounded by the file size
        }
        // Resolve overlaps, later records first: each piece of a record that is not yet
        // covered is inserted. Pieces are at most twice the records.
        let mut covered: BTreeMap<u64, (u64, u64)> = BTreeMap::new(); // start -> (end, file)
        for r in raw.iter().rev() {
            let end = r.logical + r.len;
            let mut cur = r.logical;
            while cur < end {
                if let Some((_, &(e, _))) = covered.range(..=cur).next_back()
                    && e > cur
                {
                    cur = e;
                    continue;
                }
                let stop = covered
                    .range(cur..)
                    .next()
                    .map_or(end, |(&s, _)| s.min(end));
                covered.insert(cur, (stop, r.file + (cur - r.logical)));
                cur = stop;
            }
        }
        Ok(Self::Flat(
            covered
                .into_iter()
                .map(|(logical, (end, file))| FlatRecord {
                    logical,
                    len: end - logical,
                    file,
                })
                .collect(),
        ))
    }

    /// The logical bytes `[offset, offset + len)`: borrowed when contiguous in the file,
    /// assembled otherwise (only after checking that every byte is present, so the
    /// allocation is bounded by the file).
    fn read<'d>(
        &self,
        data: &'d [u8],
        offset: u64,
        len: u64,
        what: &'static str,
    ) -> Result<Cow<'d, [u8]>, VmiError> {
        let missing = || {
            malformed(
                what,
                offset,
                format!("{len:#x} bytes are not all in the file"),
            )
        };
        match self {
            Self::Plain => slice_at(data, offset, len)
                .map(Cow::Borrowed)
                .ok_or_else(missing),
            Self::Flat(records) => {
                let end = offset.checked_add(len).ok_or_else(missing)?;
                let i = records.partition_point(|r| r.logical <= offset);
                let first = i.checked_sub(1).ok_or_else(missing)?;
                let r = &records[first];
                if offset >= r.logical + r.len {
                    return Err(missing());
                }
                if end <= r.logical + r.len {
                    return slice_at(data, r.file + (offset - r.logical), len)
                        .map(Cow::Borrowed)
                        .ok_or_else(missing);
                }
                // Spans records: check they are contiguous before allocating.
                let mut at = r.logical + r.len;
                let mut j = first + 1;
                while at < end {
                    match records.get(j) {
                        Some(n) if n.logical == at => at = n.logical + n.len,
                        _ => return Err(missing()),
                    }
                    j += 1;
                }
                let mut out = Vec::with_capacity(len as usize);
                let mut at = offset;
                for r in &records[first..j] {
                    let from = at - r.logical;
                    let n = (r.len - from).min(end - at);
                    out.extend_from_slice(slice_at(data, r.file + from, n).ok_or_else(missing)?);
                    at += n;
                }
                Ok(Cow::Owned(out))
            }
        }
    }
}

/// A bitmap with a rank index: set bits before any position in O(1).
struct RankedBitmap {
    words: Vec<u64>,
    /// Set bits before each group of 8 words.
    ranks: Vec<u64>,
    /// All set bits.
    total: u64,
}

impl RankedBitmap {
    fn new(bytes: &[u8]) -> Self {
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|c| {
                let mut w = [0u8; 8];
                w[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(w)
            })
            .collect();
        let mut ranks = Vec::with_capacity(words.len() / 8 + 1);
        let mut total = 0u64;
        for group in words.chunks(8) {
            ranks.push(total);
            total += group.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        }
        Self {
            words,
            ranks,
            total,
        }
    }

    #[inline]
    fn get(&self, bit: u64) -> bool {
        usize::try_from(bit / 64)
            .ok()
            .and_then(|i| self.words.get(i))
            .is_some_and(|w| w >> (bit % 64) & 1 == 1)
    }

    /// Set bits in `[0, bit)`.
    #[inline]
    fn rank(&self, bit: u64) -> u64 {
        if bit >= self.bits() {
            return self.total;
        }
        let word = (bit / 64) as usize;
        let group = word / 8;
        let mut r = self.ranks.get(group).copied().unwrap_or(0);
        for w in &self.words[group * 8..word.min(self.words.len())] {
            r += u64::from(w.count_ones());
        }
        if let Some(w) = self.words.get(word) {
            let mask = (1u64 << (bit % 64)) - 1;
            r += u64::from((w & mask).count_ones());
        }
        r
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// Runs of set bits within `[lo, hi)`.
    fn runs(&self, lo: u64, hi: u64) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        let hi = hi.min(self.bits());
        let mut bit = lo;
        while bit < hi {
            let w = self.words[(bit / 64) as usize] >> (bit % 64);
            if w == 0 {
                bit = (bit / 64 + 1) * 64;
                continue;
            }
            let skip = u64::from(w.trailing_zeros());
            let start = bit + skip;
            if start >= hi {
                break;
            }
            let ones = u64::from((w >> skip).trailing_ones());
            let end = (start + ones).min(hi);
            match out.last_mut() {
                Some(last) if last.end == start => last.end = end,
                _ => out.push(start..end),
            }
            bit = end;
        }
        out
    }
}

/// A parsed kdump-compressed dump.
pub(crate) struct Kdump {
    pub(crate) header: KdumpHeader,
    pub(crate) notes: NoteInfo,
    view: View,
    bitmap1: RankedBitmap,
    bitmap2: RankedBitmap,
    /// Logical offset of the first page descriptor.
    pd_base: u64,
    /// `rank(split.start)`: descriptors of a split file start there.
    pd_rank_base: u64,
    /// Frames this file can hold (split range, or everything).
    frames: Range<u64>,
    cache: Option<Cache<u64, Arc<[u8]>>>,
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Kdump {
    /// Parses the headers, the bitmaps and the notes. `cache_pages` bounds the cache of
    /// decompressed pages.
    pub(crate) fn parse(data: &[u8], cache_pages: usize) -> Result<Self, VmiError> {
        let flattened = data.starts_with(FLAT_SIGNATURE);
        let view = if flattened {
            View::flattened(data)?
        } else {
            View::Plain
        };
        let h = view.read(data, 0, HEADER_SIZE, "kdump header")?;
        if !h.starts_with(KDUMP_SIGNATURE) {
            return Err(malformed("kdump header", 0, "no \"KDUMP   \" signature"));
        }
        let header_version = le_u32(&h, 8) as i32;
        let uts = |i: usize| c_string(&h[12 + 65 * i..12 + 65 * (i + 1)]);
        let block_size = le_u32(&h, 428);
        if u64::from(block_size) != PAGE_SIZE {
            return Err(VmiError::not_supported(
                "kdump block sizes other than 4096",
                "the dump driver (x86-64)",
            ));
        }
        let bs = u64::from(block_size);
        let sub_hdr_blocks = u64::from(le_u32(&h, 432));
        let bitmap_blocks = u64::from(le_u32(&h, 436));
        let mut max_mapnr = u64::from(le_u32(&h, 440));
        let s = view.read(
            data,
            bs,
            if header_version >= 6 {
                SUB_HEADER_SIZE
            } else {
                32
            },
            "kdump sub-header",
        )?;
        let phys_base = le_u64(&s, 0);
        let dump_level = le_u32(&s, 8) as i32;
        let split_flag = le_u32(&s, 12);
        let (mut start_pfn, mut end_pfn) = (le_u64(&s, 16), le_u64(&s, 24));
        if header_version >= 6 {
            let m = le_u64(&s, 96);
            if m != 0 {
                max_mapnr = m;
            }
            start_pfn = le_u64(&s, 80);
            end_pfn = le_u64(&s, 88);
        }
        let bitmap_off = sub_hdr_blocks
            .checked_add(1)
            .and_then(|b| b.checked_mul(bs))
            .ok_or_else(|| malformed("kdump header", 432, "sub-header size overflows"))?;
        let bitmap_len = bitmap_blocks
            .checked_mul(bs)
            .ok_or_else(|| malformed("kdump header", 436, "bitmap size overflows"))?;
        let half = bitmap_len / 2;
        // Both bitmaps must be in the file before we allocate for them.
        let b1 = view.read(data, bitmap_off, half, "kdump 1st bitmap")?;
        let b2 = view.read(data, bitmap_off + half, half, "kdump 2nd bitmap")?;
        let bitmap1 = RankedBitmap::new(&b1);
        let bitmap2 = RankedBitmap::new(&b2);
        let pd_base = bitmap_off + bitmap_len;
        let frames = if split_flag != 0 {
            start_pfn..end_pfn.min(max_mapnr)
        } else {
            0..max_mapnr
        };
        let pd_rank_base = bitmap2.rank(frames.start);
        // Every dumped frame has a page descriptor in the file: a 2nd bitmap that claims
        // more frames than the file can describe is not this dump's (and its runs, up to
        // one per two bits, would cost ~64x the file in `ranges`).
        let described = bitmap2.rank(frames.end).saturating_sub(pd_rank_base);
        if described
            .checked_mul(PD_SIZE)
            .is_none_or(|b| b > data.len() as u64)
        {
            return Err(malformed(
                "kdump 2nd bitmap",
                bitmap_off + half,
                format!(
                    "{described} dumped frames need more page descriptors than the {}-byte file holds",
                    data.len()
                ),
            ));
        }

        let mut notes = NoteInfo::default();
        if header_version >= 4 {
            let (off, size) = (le_u64(&s, 48), le_u64(&s, 56));
            if off != 0 && size != 0 {
                if size > MAX_NOTE_BYTES {
                    return Err(malformed(
                        "kdump sub-header",
                        bs + 56,
                        format!("note area of {size:#x} bytes"),
                    ));
                }
                let area = view.read(data, off, size, "kdump notes")?;
                let mut list = Vec::new();
                notes::parse_notes(&area, off, &mut list)?;
                notes = notes::collect(&list);
            }
        }
        if header_version >= 3 {
            let (off, size) = (le_u64(&s, 32), le_u64(&s, 40));
            if off != 0 && size != 0 {
                if size > MAX_NOTE_BYTES {
                    return Err(malformed(
                        "kdump sub-header",
                        bs + 40,
                        format!("VMCOREINFO of {size:#x} bytes"),
                    ));
                }
                let text = view.read(data, off, size, "kdump VMCOREINFO")?;
                notes.vmcoreinfo = Some(c_string(&text));
            }
        }

        let header = KdumpHeader {
            flattened,
            header_version,
            sysname: uts(0),
            nodename: uts(1),
            release: uts(2),
            version: uts(3),
            machine: uts(4),
            timestamp: le_u64(&h, 408) as i64,
            status: le_u32(&h, 424),
            block_size,
            max_mapnr,
            nr_cpus: le_u32(&h, 460),
            current_cpu: le_u32(&h, 456),
            phys_base,
            dump_level,
            split: (split_flag != 0).then_some(frames.clone()),
        };
        Ok(Self {
            header,
            notes,
            view,
            bitmap1,
            bitmap2,
            pd_base,
            pd_rank_base,
            frames,
            cache: (cache_pages > 0).then(|| Cache::new(cache_pages)),
        })
    }

    /// Where frame `pfn` is described, or why it is not in the dump.
    fn descriptor(&self, data: &[u8], pfn: u64) -> Result<(u64, u32, u32), PageAbsence> {
        if pfn >= self.header.max_mapnr {
            return Err(PageAbsence::BeyondMemory);
        }
        if !self.bitmap2.get(pfn) {
            return Err(if self.bitmap1.get(pfn) {
                PageAbsence::Excluded
            } else {
                PageAbsence::NotInDump
            });
        }
        if !self.frames.contains(&pfn) {
            return Err(PageAbsence::NotInDump);
        }
        let index = self.bitmap2.rank(pfn) - self.pd_rank_base;
        let at = index
            .checked_mul(PD_SIZE)
            .and_then(|o| o.checked_add(self.pd_base))
            .ok_or(PageAbsence::NotInDump)?;
        // A descriptor missing from the file: an incomplete dump (makedumpfile ran out
        // of space); the page is not in the dump.
        let pd = self
            .view
            .read(data, at, PD_SIZE, "kdump page descriptor")
            .map_err(|_| PageAbsence::NotInDump)?;
        let offset = le_u64(&pd, 0);
        let size = le_u32(&pd, 8);
        let flags = le_u32(&pd, 12);
        if offset == 0 || size == 0 {
            return Err(PageAbsence::NotInDump);
        }
        Ok((offset, size, flags))
    }

    /// How frame `gfn` is stored.
    pub(crate) fn compression(&self, data: &[u8], gfn: Gfn) -> Result<KdumpCompression, VmiError> {
        let (_, _, flags) = self
            .descriptor(data, gfn.0)
            .map_err(|reason| VmiError::PageUnavailable { gfn, reason })?;
        compression_of(flags, gfn)
    }

    /// Reads part of frame `gfn` (the caller checked `offset + buf.len() <= 4096`).
    pub(crate) fn read_page(
        &self,
        data: &[u8],
        gfn: Gfn,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let pfn = gfn.0;
        if let Some(page) = self.cache.as_ref().and_then(|c| c.get(&pfn)) {
            buf.copy_from_slice(&page[offset..offset + buf.len()]);
            return Ok(());
        }
        let (file_offset, size, flags) = self
            .descriptor(data, pfn)
            .map_err(|reason| VmiError::PageUnavailable { gfn, reason })?;
        let kind = compression_of(flags, gfn)?;
        if kind == KdumpCompression::None {
            if u64::from(size) != PAGE_SIZE {
                return Err(malformed(
                    "kdump page descriptor",
                    file_offset,
                    format!("uncompressed page {gfn} of {size} bytes"),
                ));
            }
            let page = self.view.read(data, file_offset, PAGE_SIZE, "kdump page")?;
            buf.copy_from_slice(&page[offset..offset + buf.len()]);
            return Ok(());
        }
        if u64::from(size) > MAX_COMPRESSED {
            return Err(malformed(
                "kdump page descriptor",
                file_offset,
                format!("compressed page {gfn} of {size} bytes"),
            ));
        }
        let input = self
            .view
            .read(data, file_offset, u64::from(size), "kdump page")?;
        let mut page = vec![0u8; PAGE_SIZE as usize];
        decompress(kind, &input, &mut page).map_err(|detail| {
            malformed(
                "kdump page",
                file_offset,
                format!("{kind:?} data of page {gfn}: {detail}"),
            )
        })?;
        buf.copy_from_slice(&page[offset..offset + buf.len()]);
        if let Some(c) = &self.cache {
            c.insert(pfn, Arc::from(page));
        }
        Ok(())
    }

    /// Physical ranges the dump holds (runs of the 2nd bitmap within this file's frames).
    pub(crate) fn ranges(&self) -> Vec<Range<Pa>> {
        self.bitmap2
            .runs(self.frames.start, self.frames.end)
            .into_iter()
            .map(|r| Pa(r.start * PAGE_SIZE)..Pa(r.end * PAGE_SIZE))
            .collect()
    }
}

fn compression_of(flags: u32, gfn: Gfn) -> Result<KdumpCompression, VmiError> {
    let bits = flags
        & (DUMP_DH_COMPRESSED_ZLIB
            | DUMP_DH_COMPRESSED_LZO
            | DUMP_DH_COMPRESSED_SNAPPY
            | DUMP_DH_COMPRESSED_ZSTD);
    Ok(match bits {
        0 => KdumpCompression::None,
        DUMP_DH_COMPRESSED_ZLIB => KdumpCompression::Zlib,
        DUMP_DH_COMPRESSED_LZO => KdumpCompression::Lzo,
        DUMP_DH_COMPRESSED_SNAPPY => KdumpCompression::Snappy,
        DUMP_DH_COMPRESSED_ZSTD => KdumpCompression::Zstd,
        _ => {
            return Err(malformed(
                "kdump page descriptor",
                gfn.0,
                format!("page {gfn} has several compression flags ({flags:#x})"),
            ));
        }
    })
}

/// Decompresses one page into `out` (exactly one page must come out).
fn decompress(kind: KdumpCompression, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let produced = match kind {
        KdumpCompression::None => {
            return Err("not compressed".into());
        }
        KdumpCompression::Zlib => {
            let mut z = flate2::Decompress::new(true);
            let status = z
                .decompress(input, out, flate2::FlushDecompress::Finish)
                .map_err(|e| e.to_string())?;
            if status != flate2::Status::StreamEnd {
                return Err("zlib stream does not end within one page".into());
            }
            z.total_out() as usize
        }
        KdumpCompression::Lzo => lzo::decompress(input, out).map_err(|e| e.to_string())?,
        KdumpCompression::Snappy => {
            let n = snap::raw::decompress_len(input).map_err(|e| e.to_string())?;
            if n != out.len() {
                return Err(format!("snappy data claims {n} bytes"));
            }
            snap::raw::Decoder::new()
                .decompress(input, out)
                .map_err(|e| e.to_string())?
        }
        KdumpCompression::Zstd => {
            let mut d = ruzstd::decoding::FrameDecoder::new();
            d.decode_all(input, out).map_err(|e| e.to_string())?
        }
    };
    if produced != out.len() {
        return Err(format!("{produced} bytes instead of {}", out.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_and_runs() {
        let mut bytes = vec![0u8; 200];
        for bit in [0u64, 1, 2, 63, 64, 65, 511, 512, 700, 1599] {
            bytes[(bit / 8) as usize] |= 1 << (bit % 8);
        }
        let b = RankedBitmap::new(&bytes);
        let naive = |bit: u64| (0..bit).filter(|&i| b.get(i)).count() as u64;
        for bit in 0..1600 {
            assert_eq!(b.rank(bit), naive(bit), "bit {bit}");
        }
        assert_eq!(
            b.runs(0, 1600),
            vec![0..3, 63..66, 511..513, 700..701, 1599..1600]
        );
        assert_eq!(b.runs(1, 64), vec![1..3, 63..64]);
        assert!(!b.get(1_000_000));
    }
}
