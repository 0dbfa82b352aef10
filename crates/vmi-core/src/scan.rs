//! Parallel scans over one shared core: the bytes of many ranges (physical memory, or the
//! regions of processes), cut into chunks that worker threads read and hand to a visitor.
//!
//! [`VmiCore`] is `Send + Sync` (the translation cache is lock-free, the page cache a
//! concurrent map), so the workers share one core: no copy of the target per thread.
//! Threads are `std::thread::scope` workers that take chunks from a shared counter, so a
//! slow chunk (a decompressing dump, a fault-heavy region) does not hold up the others;
//! no thread-pool dependency.
//!
//! A chunk is read page by page; pages that cannot be read (holes, unmapped or paged-out
//! virtual pages) split it into runs of readable bytes, and are counted, never passed
//! as zeros. Each chunk carries `overlap` bytes of the next one, so a pattern that
//! straddles two chunks is seen whole; [`ScanChunk::owned`] says where the chunk's own
//! bytes end, so that a visitor reports each match once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    AccessContext, Architecture, TranslationMechanism, VmiCore, VmiDriver, VmiError, VmiRead,
};

/// How to cut and share a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanOptions {
    /// Bytes per chunk (rounded up to whole pages; at least one page).
    pub chunk_size: usize,
    /// Bytes of the next chunk appended to each (for patterns across chunk edges).
    pub overlap: usize,
    /// Worker threads (0: the machine's available parallelism).
    pub threads: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            overlap: 0,
            threads: 0,
        }
    }
}

/// A run of readable bytes handed to a scan's visitor.
#[derive(Debug)]
pub struct ScanChunk<'a> {
    /// Which of the scanned ranges it belongs to.
    pub range: usize,
    /// Where the bytes start.
    pub ctx: AccessContext,
    /// The bytes.
    pub bytes: &'a [u8],
    /// How many of `bytes` belong to this chunk; the rest is the overlap with the next
    /// one, where a match that starts belongs to the next chunk.
    pub owned: usize,
}

/// What a scan covered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanSummary {
    /// Bytes handed to the visitor (overlaps not counted).
    pub bytes_scanned: u64,
    /// Pages that could not be read and were skipped.
    pub pages_unreadable: u64,
}

/// One chunk of work: range `range`, bytes `[start, start + len)` of it.
struct Work {
    range: usize,
    start: u64,
    len: u64,
}

type ArchOf<D> = <D as VmiDriver>::Architecture;

impl<D: VmiRead> VmiCore<D> {
    /// Scans the physical memory the driver holds ([`VmiRead::physical_ranges`]) in
    /// parallel. See [`Self::scan`].
    pub fn scan_physical<F>(&self, options: ScanOptions, visit: F) -> Result<ScanSummary, VmiError>
    where
        F: Fn(&ScanChunk<'_>) + Sync,
    {
        let ranges: Vec<(AccessContext, u64)> = self
            .driver()
            .physical_ranges()?
            .into_iter()
            .map(|r| {
                (
                    AccessContext::direct(r.start),
                    r.end.0.saturating_sub(r.start.0),
                )
            })
            .collect();
        self.scan(&ranges, options, visit)
    }

    /// Scans `ranges` (a start and a length in bytes each) with `options.threads`
    /// workers sharing this core, calling `visit` for every run of readable bytes, from
    /// any worker, in no particular order. Unreadable pages are skipped and counted.
    ///
    /// ```
    /// use std::sync::Mutex;
    /// use vmi_core::{Pa, ScanOptions, VmiCore};
    /// use vmi_driver_mock::MockDriver;
    ///
    /// let driver = MockDriver::new(8 << 20);
    /// driver.write_physical(Pa(0x1ff_ffe), b"needle"); // across a chunk edge
    /// let core = VmiCore::new(driver)?;
    /// let found = Mutex::new(Vec::new());
    /// let options = ScanOptions { chunk_size: 1 << 20, overlap: 5, threads: 4 };
    /// core.scan_physical(options, |chunk| {
    ///     for (i, w) in chunk.bytes.windows(6).enumerate() {
    ///         if w == b"needle" && i < chunk.owned {
    ///             found.lock().unwrap().push(chunk.ctx.address + i as u64);
    ///         }
    ///     }
    /// })?;
    /// assert_eq!(found.into_inner().unwrap(), vec![0x1ff_ffe]);
    /// # Ok::<(), vmi_core::VmiError>(())
    /// ```
    pub fn scan<F>(
        &self,
        ranges: &[(AccessContext, u64)],
        options: ScanOptions,
        visit: F,
    ) -> Result<ScanSummary, VmiError>
    where
        F: Fn(&ScanChunk<'_>) + Sync,
    {
        let page = ArchOf::<D>::PAGE_SIZE;
        let chunk = (options.chunk_size as u64).max(page).div_ceil(page) * page;
        // Chunks are numbered across the ranges and made when a worker takes one: the
        // work list costs one entry per range, however long the ranges are (a region's
        // length can come from the guest).
        let mut first_chunk = Vec::with_capacity(ranges.len() + 1);
        let mut chunks = 0u64;
        for &(_, len) in ranges {
            first_chunk.push(chunks);
            chunks = chunks.saturating_add(len.div_ceil(chunk));
        }
        first_chunk.push(chunks);
        let work = |i: u64| -> Option<Work> {
            if i >= chunks {
                return None;
            }
            // The last range whose first chunk is at or before `i` (ranges without
            // chunks share their first chunk number with the next range).
            let range = first_chunk.partition_point(|&c| c <= i).checked_sub(1)?;
            let start = (i - first_chunk[range]).checked_mul(chunk)?;
            let len = ranges.get(range)?.1;
            Some(Work {
                range,
                start,
                len: chunk.min(len.checked_sub(start)?),
            })
        };
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
        .min(usize::try_from(chunks).unwrap_or(usize::MAX))
        .max(1);
        let next = AtomicU64::new(0);
        let scanned = AtomicU64::new(0);
        let unreadable = AtomicU64::new(0);
        let failure: Mutex<Option<VmiError>> = Mutex::new(None);
        let direct = self.driver().direct_memory();
        let worker = || {
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(w) = work(i) else {
                    return;
                };
                let (ctx, len) = ranges[w.range];
                // The chunk and its overlap, clipped to the range.
                let overlap = (options.overlap as u64).min(len - w.start - w.len);
                let total = usize::try_from(w.len + overlap).unwrap_or(usize::MAX);
                // Physical memory the driver lends as plain bytes (a dump's RAM) is
                // scanned where it lies: no copy, no read per page.
                if let (TranslationMechanism::Direct, Some(bytes)) = (
                    ctx.mechanism,
                    lent(direct, ctx.address.wrapping_add(w.start), total),
                ) {
                    visit(&ScanChunk {
                        range: w.range,
                        ctx: ctx.offset(w.start),
                        bytes,
                        owned: usize::try_from(w.len).unwrap_or(usize::MAX),
                    });
                    scanned.fetch_add(w.len, Ordering::Relaxed);
                    continue;
                }
                buf.resize(total, 0);
                match self.scan_chunk(ctx.offset(w.start), &mut buf, w.len, |at, bytes, owned| {
                    visit(&ScanChunk {
                        range: w.range,
                        ctx: ctx.offset(w.start + at),
                        bytes,
                        owned,
                    })
                }) {
                    Ok(done) => {
                        scanned.fetch_add(done.visited, Ordering::Relaxed);
                        unreadable.fetch_add(done.unreadable, Ordering::Relaxed);
                        // The chunks of this range that lie wholly in the untranslatable
                        // span found are skipped by every worker at once: moving the
                        // shared counter past them costs nothing however long the span.
                        if let Some(until) = done.untranslatable_until {
                            let f = first_chunk[w.range];
                            let covered = until.saturating_sub(ctx.address);
                            let end = if covered >= len {
                                first_chunk[w.range + 1]
                            } else {
                                f.saturating_add(covered / chunk)
                            };
                            let prev = next.fetch_max(end, Ordering::Relaxed);
                            if prev < end {
                                let from = (prev - f).saturating_mul(chunk);
                                let to = (end - f).saturating_mul(chunk).min(len);
                                let pages = to.saturating_sub(from).div_ceil(page);
                                unreadable.fetch_add(pages, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => {
                        failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        next.store(chunks, Ordering::Relaxed);
                        return;
                    }
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(worker);
            }
            worker();
        });
        if let Some(e) = failure.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(ScanSummary {
            bytes_scanned: scanned.into_inner(),
            pages_unreadable: unreadable.into_inner(),
        })
    }

    /// Reads `buf` at `ctx` page by page and calls `visit(offset, bytes, owned)` for each
    /// run of readable bytes, where `owned` is how many of them lie below `own` (the
    /// chunk's own length). Pages in a span that a page-table entry (or the non-canonical
    /// hole) leaves unmapped are counted without a walk each. Errors other than "memory
    /// unavailable" stop the scan.
    fn scan_chunk(
        &self,
        ctx: AccessContext,
        buf: &mut [u8],
        own: u64,
        mut visit: impl FnMut(u64, &[u8], usize),
    ) -> Result<ChunkDone, VmiError> {
        let page = ArchOf::<D>::PAGE_SIZE;
        let pieces: Vec<(u64, usize, usize)> =
            crate::core::page_chunks(ctx.address, buf.len(), page).collect();
        let mut readable = Vec::with_capacity(pieces.len());
        // Addresses below this one are known not to translate (a fault's span).
        let mut skip_below: Option<u64> = None;
        // Past the end of the address space: nothing more translates.
        let mut skip_all = false;
        for &(at, start, n) in &pieces {
            if skip_all || skip_below.is_some_and(|until| at < until) {
                readable.push(false);
                continue;
            }
            let result = self
                .resolve(at, ctx.mechanism)
                .and_then(|pa| self.read_page_chunk(pa, &mut buf[start..start + n]));
            match result {
                Ok(()) => readable.push(true),
                Err(e) if e.is_memory_unavailable() => {
                    if let Some(fault) = e.page_fault() {
                        match ArchOf::<D>::untranslatable_until(fault, self.paging_mode()) {
                            Some(until) => skip_below = Some(until),
                            None => skip_all = true,
                        }
                    }
                    readable.push(false)
                }
                Err(e) => return Err(e),
            }
        }
        let (mut visited, mut bad) = (0u64, 0u64);
        let mut run: Option<usize> = None;
        let own = usize::try_from(own).unwrap_or(usize::MAX);
        let mut flush = |from: usize, to: usize, visited: &mut u64| {
            let owned = own.saturating_sub(from).min(to - from);
            if owned > 0 {
                visit(from as u64, &buf[from..to], owned);
                *visited += owned as u64;
            }
        };
        for (&(_, start, _), &ok) in pieces.iter().zip(&readable) {
            match (ok, run) {
                (true, None) => run = Some(start),
                (false, Some(from)) => {
                    flush(from, start, &mut visited);
                    run = None;
                }
                _ => {}
            }
            if !ok && start < own {
                bad += 1;
            }
        }
        if let Some(from) = run {
            flush(from, buf.len(), &mut visited);
        }
        let chunk_end = ctx.address.saturating_add(own as u64);
        let untranslatable_until = if skip_all {
            Some(u64::MAX)
        } else {
            skip_below.filter(|&until| until > chunk_end)
        };
        Ok(ChunkDone {
            visited,
            unreadable: bad,
            untranslatable_until,
        })
    }
}

/// What [`VmiCore::scan_chunk`] did.
/// The `len` bytes at physical `address` when `direct` (a driver's
/// [`VmiRead::direct_memory`]) holds all of them.
fn lent(direct: Option<(crate::Pa, &[u8])>, address: u64, len: usize) -> Option<&[u8]> {
    let (base, memory) = direct?;
    let at = usize::try_from(address.checked_sub(base.0)?).ok()?;
    memory.get(at..at.checked_add(len)?)
}

struct ChunkDone {
    /// Owned bytes visited.
    visited: u64,
    /// Owned pages that could not be read.
    unreadable: u64,
    /// When the chunk ended in a span that does not translate and goes on past the
    /// chunk: the end of that span (the following chunks below it need no reading).
    untranslatable_until: Option<u64>,
}

/// A process memory region handed to the visitor of [`VmiCore::scan_processes`].
#[derive(Debug)]
pub struct ProcessRegion {
    /// The process.
    pub pid: u64,
    /// Its page-table root.
    pub root: crate::Pa,
    /// The region.
    pub region: crate::OsRegion,
}

/// What [`VmiCore::scan_processes`] covered.
#[derive(Debug, Default)]
pub struct ProcessScan {
    /// Every region scanned (the visitor's [`ScanChunk::range`] indexes it).
    pub regions: Vec<ProcessRegion>,
    /// Bytes and unreadable pages.
    pub summary: ScanSummary,
    /// Processes whose regions could not be listed, with why (their memory was not
    /// scanned; never silently).
    pub skipped: Vec<(u64, VmiError)>,
}

impl<D: VmiRead> VmiCore<D> {
    /// Scans the memory regions (VMAs, VADs) of processes in parallel: those in `pids`,
    /// or every process with an address space of its own. `visit` gets each run of
    /// readable bytes with the region it belongs to; the regions are listed first
    /// (one OS walk per process), then scanned as in [`Self::scan`].
    pub fn scan_processes<F>(
        &self,
        os: &dyn crate::VmiOs<D>,
        pids: Option<&[u64]>,
        options: ScanOptions,
        visit: F,
    ) -> Result<ProcessScan, VmiError>
    where
        F: Fn(&ProcessRegion, &ScanChunk<'_>) + Sync,
    {
        let processes = os.processes(self)?;
        let mut out = ProcessScan::default();
        for p in processes {
            if pids.is_some_and(|pids| !pids.contains(&p.pid)) || (pids.is_none() && p.is_kernel) {
                continue;
            }
            let Some(root) = p.translation_root else {
                if pids.is_some() {
                    out.skipped.push((
                        p.pid,
                        VmiError::NotFound {
                            kind: "address space",
                            name: format!("process {}", p.pid),
                        },
                    ));
                }
                continue;
            };
            match os.memory_regions(self, p.pid) {
                Ok(regions) => {
                    out.regions
                        .extend(regions.into_iter().map(|region| ProcessRegion {
                            pid: p.pid,
                            root,
                            region,
                        }))
                }
                Err(e) => out.skipped.push((p.pid, e)),
            }
        }
        let ranges: Vec<(AccessContext, u64)> = out
            .regions
            .iter()
            .map(|r| {
                let len = r.region.end.0.saturating_sub(r.region.start.0);
                (AccessContext::paging(r.region.start, r.root), len)
            })
            .collect();
        let regions = &out.regions;
        out.summary = self.scan(&ranges, options, |chunk| {
            if let Some(region) = regions.get(chunk.range) {
                visit(region, chunk);
            }
        })?;
        Ok(out)
    }
}
