//! Batched reads: many `(AccessContext, &mut [u8])` at once, each with its own result.
//!
//! A batch is translated first (every page chunk of every request, through the
//! translation cache), then its pieces are sorted by frame and offset and handed to the
//! driver in one [`VmiRead::read_pages`] call: a driver that can read many pieces at
//! once (one system call, one mapping) does so, and the pieces of one page arrive
//! together. With a page cache (slow targets), the driver gets one call with the whole
//! pages the cache lacks. Each request then gets what [`VmiCore::read`] would have returned: its first
//! failure (in address order) as it is when nothing before it was read, else
//! [`VmiError::PartialAccess`] with the bytes before it.

use std::sync::Arc;

use crate::core::page_chunks;
use crate::{
    AccessContext, Architecture, Gfn, PageRead, TranslationMechanism, VmiCore, VmiDriver, VmiError,
    VmiRead,
};

/// A piece of a request, before the buffers are cut.
struct Piece {
    gfn: Gfn,
    offset: usize,
    /// Which request.
    request: usize,
    /// Offset of the piece in the request's buffer, and its length.
    start: usize,
    len: usize,
}

type ArchOf<D> = <D as VmiDriver>::Architecture;

impl<D: VmiRead> VmiCore<D> {
    /// Reads every request of `requests`, each into its buffer, and returns one result
    /// per request (in order), as [`Self::read`] would have returned it.
    ///
    /// The bytes of a request after its first failure are unspecified. Memory is
    /// bounded by the requests: one entry per page chunk.
    ///
    /// ```
    /// use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError};
    /// use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
    ///
    /// let driver = MockDriver::new(16 * 1024 * 1024);
    /// let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
    /// tables.map(Va(0x7000_0000), Pa(0x5000), PageSize::Size4K);
    /// driver.write_physical(Pa(0x5010), b"batched");
    /// let root = tables.root();
    /// let core = VmiCore::new(driver)?;
    ///
    /// let (mut a, mut b) = ([0u8; 7], [0u8; 4]);
    /// let results = core.read_batch(&mut [
    ///     (AccessContext::paging(Va(0x7000_0010), root), &mut a[..]),
    ///     (AccessContext::paging(Va(0x9000_0000), root), &mut b[..]), // not mapped
    /// ]);
    /// assert!(results[0].is_ok());
    /// assert_eq!(&a, b"batched");
    /// assert!(results[1].as_ref().unwrap_err().page_fault().is_some());
    /// # Ok::<(), VmiError>(())
    /// ```
    pub fn read_batch(
        &self,
        requests: &mut [(AccessContext, &mut [u8])],
    ) -> Vec<Result<(), VmiError>> {
        // A driver whose memory is one plain slice (a dump): physical requests inside it
        // are copied in one tight loop, with the slice in registers; the rest take the
        // general path.
        if let Some((base, memory)) = self.driver().direct_memory() {
            let mut pending: Vec<usize> = Vec::new();
            for (i, (ctx, buf)) in requests.iter_mut().enumerate() {
                let src = match ctx.mechanism {
                    TranslationMechanism::Direct => {
                        usize::try_from(ctx.address.wrapping_sub(base.0))
                            .ok()
                            .and_then(|at| memory.get(at..at.checked_add(buf.len())?))
                    }
                    TranslationMechanism::Paging { .. } => None,
                };
                match src {
                    Some(src) => crate::core::copy_small(buf, src),
                    None => pending.push(i),
                }
            }
            let mut results: Vec<Result<(), VmiError>> =
                (0..requests.len()).map(|_| Ok(())).collect();
            if pending.is_empty() {
                return results;
            }
            let mut rest: Vec<(AccessContext, &mut [u8])> = Vec::with_capacity(pending.len());
            let mut pending_iter = pending.iter().peekable();
            for (i, (ctx, buf)) in requests.iter_mut().enumerate() {
                if pending_iter.next_if(|&&p| p == i).is_some() {
                    rest.push((*ctx, &mut **buf));
                }
            }
            for (&i, result) in pending.iter().zip(self.read_batch_pieces(&mut rest)) {
                results[i] = result;
            }
            return results;
        }
        self.read_batch_pieces(requests)
    }

    /// [`Self::read_batch`] in pieces: translated, sorted by frame, one driver call.
    fn read_batch_pieces(
        &self,
        requests: &mut [(AccessContext, &mut [u8])],
    ) -> Vec<Result<(), VmiError>> {
        let page_size = ArchOf::<D>::PAGE_SIZE;
        // Failures only, as (request, offset in its buffer, error): a batch that reads
        // fine carries no error-sized entry per piece.
        let mut failed: Vec<(usize, usize, VmiError)> = Vec::new();

        // 1. Translate every chunk; a request stops at its first untranslatable chunk.
        let mut pieces: Vec<Piece> = Vec::new();
        for (request, (ctx, buf)) in requests.iter().enumerate() {
            for (at, start, len) in page_chunks(ctx.address, buf.len(), page_size) {
                match self.resolve(at, ctx.mechanism) {
                    Ok(pa) => pieces.push(Piece {
                        gfn: ArchOf::<D>::gfn_from_pa(pa),
                        offset: ArchOf::<D>::page_offset(pa.0) as usize,
                        request,
                        start,
                        len,
                    }),
                    Err(e) => {
                        failed.push((request, start, e));
                        break;
                    }
                }
            }
        }

        // 2. Cut the buffers into the pieces (in request order, so each cut is the next
        // slice of its buffer), then order them by frame and offset.
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(pieces.len());
        let mut next = pieces.iter().peekable();
        for (request, (_, buf)) in requests.iter_mut().enumerate() {
            let mut rest: &mut [u8] = buf;
            while let Some(piece) = next.next_if(|p| p.request == request) {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut(piece.len);
                slices.push(head);
                rest = tail;
            }
        }
        // Sorted as (frame, offset, piece) triples: no indirection in the comparisons.
        let mut keyed: Vec<(Gfn, usize, usize)> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.gfn, p.offset, i))
            .collect();
        if !keyed.is_sorted() {
            keyed.sort_unstable();
        }
        let order: Vec<usize> = keyed.into_iter().map(|(_, _, i)| i).collect();

        // 3. Read: the driver gets one call with every piece, or, when the core keeps a
        // page cache, with every whole page the cache lacks.
        if self.page_cache_enabled() {
            let pages = self.fill_page_cache(&pieces, &order);
            for &i in &order {
                let p = &pieces[i];
                let buf = std::mem::take(&mut slices[i]);
                let src = pages
                    .binary_search_by_key(&p.gfn, |(gfn, _)| *gfn)
                    .ok()
                    .and_then(|at| pages[at].1.get(p.offset..p.offset + buf.len()));
                let result = match src {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    // Not read (a failed page): one read of the piece gives its error.
                    None => {
                        let pa = ArchOf::<D>::pa_from_gfn(p.gfn) + p.offset as u64;
                        self.read_page_chunk(pa, buf)
                    }
                };
                if let Err(e) = result {
                    failed.push((p.request, p.start, e));
                }
            }
        } else {
            let mut reads: Vec<PageRead<'_>> = order
                .iter()
                .map(|&i| PageRead {
                    gfn: pieces[i].gfn,
                    offset: pieces[i].offset,
                    buf: std::mem::take(&mut slices[i]),
                })
                .collect();
            let results = self.driver().read_pages(&mut reads);
            drop(reads);
            let answered = results.len();
            for (&i, result) in order.iter().zip(results) {
                if let Err(e) = result {
                    failed.push((pieces[i].request, pieces[i].start, e));
                }
            }
            // A driver that returned too few results fails the rest, loudly.
            for &i in order.iter().skip(answered) {
                let e = VmiError::driver(
                    self.info().kind,
                    "read_pages returned fewer results than pieces",
                );
                failed.push((pieces[i].request, pieces[i].start, e));
            }
        }

        // 4. Each request's first failure (lowest offset in its buffer).
        let mut results: Vec<Result<(), VmiError>> = (0..requests.len()).map(|_| Ok(())).collect();
        failed.sort_unstable_by_key(|&(request, start, _)| (request, start));
        for (request, start, e) in failed {
            let (Some(result), Some((ctx, buf))) =
                (results.get_mut(request), requests.get(request))
            else {
                continue;
            };
            if result.is_err() {
                continue; // a later failure of a request that already failed
            }
            *result = Err(if start == 0 {
                e
            } else {
                VmiError::PartialAccess {
                    ctx: *ctx,
                    expected: buf.len(),
                    completed: start,
                    source: Box::new(e),
                }
            });
        }
        results
    }

    /// The pages the pieces touch, sorted by frame: from the page cache, and those it
    /// lacks read whole in one driver call and cached. A page that could not be read is
    /// left out.
    fn fill_page_cache(&self, pieces: &[Piece], order: &[usize]) -> Vec<(Gfn, Arc<[u8]>)> {
        let mut gfns: Vec<Gfn> = order.iter().map(|&i| pieces[i].gfn).collect();
        gfns.dedup();
        let mut pages = Vec::with_capacity(gfns.len());
        let mut missing = Vec::new();
        for gfn in gfns {
            match self.cached_page(gfn) {
                Some(page) => pages.push((gfn, page)),
                None => missing.push(gfn),
            }
        }
        if missing.is_empty() {
            return pages;
        }
        let size = ArchOf::<D>::PAGE_SIZE as usize;
        let mut fresh: Vec<Vec<u8>> = missing.iter().map(|_| vec![0u8; size]).collect();
        let mut reads: Vec<PageRead<'_>> = missing
            .iter()
            .zip(fresh.iter_mut())
            .map(|(&gfn, buf)| PageRead {
                gfn,
                offset: 0,
                buf,
            })
            .collect();
        let results = self.driver().read_pages(&mut reads);
        drop(reads);
        for ((gfn, page), result) in missing.into_iter().zip(fresh).zip(results) {
            if result.is_ok() {
                let page: Arc<[u8]> = page.into();
                self.cache_page(gfn, Arc::clone(&page));
                pages.push((gfn, page));
            }
        }
        pages.sort_unstable_by_key(|(gfn, _)| *gfn);
        pages
    }
}
