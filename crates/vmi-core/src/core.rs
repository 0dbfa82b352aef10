//! [`VmiCore`]: memory, translation and registers over a driver, with caches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use zerocopy::{FromBytes, IntoBytes};

use crate::cache::{CacheStats, CountingCache};
use crate::tlb::{Cached, Tlb};
use crate::{
    AccessContext, AddressContext, Architecture, EventMonitor, Gfn, LastLevel, Pa, PageTableReader,
    RegistersOf, Translation, TranslationMechanism, Va, VcpuId, VmState, VmiDriver, VmiError,
    VmiEventControl, VmiInfo, VmiQueryRegisters, VmiRead, VmiSetRegisters, VmiVmControl, VmiWrite,
};

/// Sizes of the core's caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmiCoreConfig {
    /// Entries of the translation cache, rounded up to a power of two (0 disables it).
    /// An entry covers the region one last-level page table maps (2 MiB on AMD64): it
    /// holds the region's large leaf, or its table, so that a read costs at most one
    /// page-table entry read.
    pub translation_cache: usize,
    /// Whole pages kept by the page cache (0 disables it). `None` follows the driver's
    /// advice ([`VmiInfo::cache_pages`]): on for slow targets with
    /// [`DEFAULT_PAGE_CACHE`] pages, off for mmap-backed ones.
    pub page_cache: Option<usize>,
    /// Count cache hits and misses ([`VmiCore::translation_cache_stats`],
    /// [`VmiCore::page_cache_stats`]). Off by default: the counters are atomics shared by
    /// every thread, and on x86 an atomic increment is a full barrier that keeps a read
    /// from overlapping the cache misses of the reads before it.
    pub statistics: bool,
}

/// Default number of translation-cache entries (on AMD64 each covers 2 MiB of an
/// address space: 8192 of them cover 16 GiB).
pub const DEFAULT_TRANSLATION_CACHE: usize = 8192;
/// Default number of cached pages when the driver asks for caching (8 MiB of 4 KiB pages).
pub const DEFAULT_PAGE_CACHE: usize = 2048;

impl Default for VmiCoreConfig {
    fn default() -> Self {
        Self {
            translation_cache: DEFAULT_TRANSLATION_CACHE,
            page_cache: None,
            statistics: false,
        }
    }
}

type ArchOf<D> = <D as VmiDriver>::Architecture;
type PagingModeOf<D> = <ArchOf<D> as Architecture>::PagingMode;

/// The core of an introspection session: a driver plus translation and page caches.
///
/// `VmiCore<D>` is `Send + Sync` whenever the driver is, so a dump can be scanned from
/// several threads at once: the translation cache is a lock-free software TLB (a
/// sequence lock per entry, see `tlb.rs`), the page cache a sharded concurrent map, and
/// the paging mode an atomic.
///
/// ```
/// use vmi_core::{AccessContext, Pa, Va, VmiCore};
/// use vmi_driver_mock::{MockDriver, PageSize, PageTableBuilder};
///
/// let driver = MockDriver::new(16 * 1024 * 1024);
/// let mut tables = PageTableBuilder::new(&driver, Pa(0x10_0000), Pa(0x20_0000));
/// tables.map(Va(0xffff_8000_0000_0000), Pa(0x5000), PageSize::Size4K);
/// driver.write_physical(Pa(0x5008), &0x1122_3344_5566_7788u64.to_le_bytes());
/// let root = tables.root();
///
/// let core = VmiCore::new(driver)?;
/// let ctx = AccessContext::paging(Va(0xffff_8000_0000_0008), root);
/// assert_eq!(core.read_u64(ctx)?, 0x1122_3344_5566_7788);
/// assert_eq!(core.translate_address((Va(0xffff_8000_0000_0008), root).into())?, Pa(0x5008));
/// # Ok::<(), vmi_core::VmiError>(())
/// ```
pub struct VmiCore<D: VmiDriver> {
    driver: D,
    info: VmiInfo,
    /// The paging mode, as its `u8` form.
    paging_mode: AtomicU8,
    translations: Tlb,
    pages: CountingCache<Gfn, Arc<[u8]>>,
}

impl<D: VmiDriver> VmiCore<D> {
    /// A core over `driver` with default cache sizes.
    pub fn new(driver: D) -> Result<Self, VmiError> {
        Self::with_config(driver, VmiCoreConfig::default())
    }

    /// A core over `driver` with the given cache sizes.
    pub fn with_config(driver: D, config: VmiCoreConfig) -> Result<Self, VmiError> {
        let info = driver.info()?;
        if info.page_size != ArchOf::<D>::PAGE_SIZE {
            return Err(VmiError::driver(
                info.kind,
                format!(
                    "page size {} does not match the architecture's {}",
                    info.page_size,
                    ArchOf::<D>::PAGE_SIZE
                ),
            ));
        }
        let page_cache = config.page_cache.unwrap_or(if info.cache_pages {
            DEFAULT_PAGE_CACHE
        } else {
            0
        });
        Ok(Self {
            driver,
            info,
            paging_mode: AtomicU8::new(PagingModeOf::<D>::default().into()),
            translations: Tlb::new(
                ArchOf::<D>::LAST_TABLE_SHIFT,
                config.translation_cache,
                config.statistics,
            ),
            pages: CountingCache::new(page_cache, config.statistics),
        })
    }

    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Basic information the driver gave when the core was made.
    pub fn info(&self) -> &VmiInfo {
        &self.info
    }

    /// The paging mode used for translations.
    #[inline(always)]
    pub fn paging_mode(&self) -> PagingModeOf<D> {
        // Only `set_paging_mode` stores, and only values made from a `PagingMode`.
        PagingModeOf::<D>::try_from(self.paging_mode.load(Ordering::Acquire)).unwrap_or_default()
    }

    /// Sets the paging mode (from registers, or from what an OS layer found) and drops
    /// cached translations made under the old one.
    pub fn set_paging_mode(&self, mode: PagingModeOf<D>) {
        // A walk takes the cache's epoch before it reads the mode: a walk that saw the old
        // mode files its result under an epoch this clear retires.
        if self.paging_mode.swap(mode.into(), Ordering::AcqRel) != mode.into() {
            self.translations.clear();
        }
    }

    /// Translation-cache statistics (hits and misses are counted only with
    /// [`VmiCoreConfig::statistics`]; a miss is a page-table walk).
    pub fn translation_cache_stats(&self) -> CacheStats {
        self.translations.stats()
    }

    /// Page-cache statistics (hits and misses are counted only with
    /// [`VmiCoreConfig::statistics`]).
    pub fn page_cache_stats(&self) -> CacheStats {
        self.pages.stats()
    }

    /// Forgets every cached translation.
    pub fn invalidate_translations(&self) {
        self.translations.clear();
    }

    /// Forgets the cached translation of the page (of any size) holding `ctx`.
    pub fn invalidate_translation(&self, ctx: AddressContext) {
        self.translations.remove(ctx.root.0, ctx.va.0);
    }

    /// Whether reads go through the page cache.
    pub(crate) fn page_cache_enabled(&self) -> bool {
        self.pages.enabled()
    }

    /// The cached copy of frame `gfn`.
    pub(crate) fn cached_page(&self, gfn: Gfn) -> Option<Arc<[u8]>> {
        self.pages.get(&gfn)
    }

    /// Keeps a copy of frame `gfn`.
    pub(crate) fn cache_page(&self, gfn: Gfn, page: Arc<[u8]>) {
        self.pages.insert(gfn, page);
    }

    /// Forgets every cached page.
    pub fn invalidate_pages(&self) {
        self.pages.clear();
    }

    /// Forgets one cached page.
    pub fn invalidate_page(&self, gfn: Gfn) {
        self.pages.remove(&gfn);
    }

    /// Forgets everything cached (call after the guest ran).
    pub fn invalidate_caches(&self) {
        self.invalidate_translations();
        self.invalidate_pages();
    }
}

// Every core is `Send + Sync`, whatever its driver (drivers are, by `VmiDriver`'s bounds):
// this fails to compile the day a field breaks it.
const _: () = {
    fn assert_send_sync<T: Send + Sync>() {}
    #[allow(dead_code)]
    fn every_core_is_send_and_sync<D: VmiDriver>() {
        assert_send_sync::<VmiCore<D>>();
    }
};

/// Memory a driver lends as plain bytes ([`VmiRead::direct_memory`]): taken once per
/// read and handed down, so that the walk's entry reads and the data read share it.
type Direct<'a> = Option<(Pa, &'a [u8])>;

/// Reads page-table entries through the core (its direct memory, else its page cache).
struct CoreReader<'a, D: VmiDriver> {
    core: &'a VmiCore<D>,
    direct: Direct<'a>,
}

impl<'a, D: VmiRead> CoreReader<'a, D> {
    #[inline(always)]
    fn new(core: &'a VmiCore<D>) -> Self {
        Self {
            core,
            direct: core.driver.direct_memory(),
        }
    }
}

impl<D: VmiRead> PageTableReader for CoreReader<'_, D> {
    /// One page chunk, not [`VmiCore::read`]: a read that translates walks, and a walk
    /// that called back into `read` would make the read path recursive, which the
    /// compiler cannot inline. An entry never crosses a page when the walk aligns it;
    /// one that does is read in two pieces.
    #[inline(always)]
    fn read_entry(&self, pa: Pa) -> Result<u64, VmiError> {
        let mut buf = [0u8; 8];
        if ArchOf::<D>::page_offset(pa.0) <= ArchOf::<D>::PAGE_SIZE - 8 {
            if let Some(entry) = direct_array(self.direct, pa) {
                return Ok(u64::from_le_bytes(entry));
            }
            self.core.read_chunk_in(self.direct, pa, &mut buf)?;
        } else {
            self.core
                .read_chunks(pa.0, TranslationMechanism::Direct, &mut buf)?;
        }
        Ok(u64::from_le_bytes(buf))
    }
}

/// The `N` bytes at `pa` in `direct`, when it holds them all: returned by value, so that
/// a fixed-size read from a dump stays in registers (a buffer that a slow path may be
/// handed lives in memory: a store and a load more per read).
#[inline(always)]
fn direct_array<const N: usize>(direct: Direct<'_>, pa: Pa) -> Option<[u8; N]> {
    let (base, memory) = direct?;
    let at = usize::try_from(pa.0.wrapping_sub(base.0)).ok()?;
    // A wrapped end (`at > end`) makes `get` fail: no overflow check needed.
    memory.get(at..at.wrapping_add(N))?.try_into().ok()
}

/// `dst.copy_from_slice(src)` (equal lengths), with the sizes of integer reads as
/// constant-size copies (a `memcpy` call of a run-time length costs more than the read).
/// For drivers' read paths too.
#[inline(always)]
pub fn copy_small(dst: &mut [u8], src: &[u8]) {
    match dst.len() {
        8 => dst[..8].copy_from_slice(&src[..8]),
        4 => dst[..4].copy_from_slice(&src[..4]),
        2 => dst[..2].copy_from_slice(&src[..2]),
        1 => dst[..1].copy_from_slice(&src[..1]),
        _ => dst.copy_from_slice(src),
    }
}

/// Splits `[address, address + len)` into chunks that do not cross a page boundary:
/// yields (address of the chunk, offset into the buffer, chunk length).
pub(crate) fn page_chunks(
    address: u64,
    len: usize,
    page_size: u64,
) -> impl Iterator<Item = (u64, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let at = address.wrapping_add(done as u64);
        let room = page_size - (at & (page_size - 1));
        let n = (len - done).min(usize::try_from(room).unwrap_or(usize::MAX));
        let item = (at, done, n);
        done += n;
        Some(item)
    })
}

impl<D: VmiRead> VmiCore<D> {
    // Always inlined: small (the page-cache path is a call), and it carries a fixed-size
    // read's constant length into the driver.
    //
    // Memory the driver lends as plain bytes ([`VmiRead::direct_memory`], a dump's RAM)
    // is copied from directly: no frame arithmetic, no page-cache check, no driver call.
    // A chunk outside it (or a driver without it: the check folds away) takes the
    // driver's path, which gives the same bytes or the page's own error.
    #[inline(always)]
    pub(crate) fn read_page_chunk(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.read_chunk_in(self.driver.direct_memory(), pa, buf)
    }

    /// [`Self::read_page_chunk`] with the driver's direct memory already taken.
    #[inline(always)]
    fn read_chunk_in(&self, direct: Direct<'_>, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        if let Some((base, memory)) = direct {
            // A wrapped end (`at > end`) makes `get` fail: no overflow check needed.
            if let Ok(at) = usize::try_from(pa.0.wrapping_sub(base.0))
                && let Some(src) = memory.get(at..at.wrapping_add(buf.len()))
            {
                copy_small(buf, src);
                return Ok(());
            }
        }
        let gfn = ArchOf::<D>::gfn_from_pa(pa);
        let offset = ArchOf::<D>::page_offset(pa.0) as usize;
        if !self.pages.enabled() {
            return self.driver.read_page(gfn, offset, buf);
        }
        self.read_cached_chunk(pa, gfn, offset, buf)
    }

    /// [`Self::read_page_chunk`] through the page cache (kept out of the uncached path).
    #[inline(never)]
    fn read_cached_chunk(
        &self,
        pa: Pa,
        gfn: Gfn,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let page = match self.pages.get(&gfn) {
            Some(page) => page,
            None => {
                let mut whole = vec![0u8; ArchOf::<D>::PAGE_SIZE as usize];
                self.driver.read_page(gfn, 0, &mut whole)?;
                let page: Arc<[u8]> = whole.into();
                self.pages.insert(gfn, Arc::clone(&page));
                page
            }
        };
        let src = page.get(offset..offset + buf.len()).ok_or_else(|| {
            VmiError::InvalidArgument(format!(
                "read of {} bytes at {pa} crosses a page",
                buf.len()
            ))
        })?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Reads guest-physical memory (any length, across pages).
    #[inline]
    pub fn read_physical(&self, pa: Pa, buf: &mut [u8]) -> Result<(), VmiError> {
        self.read(AccessContext::direct(pa), buf)
    }

    /// Walks the page tables for `ctx` (not cached) and returns every step.
    pub fn translate(&self, ctx: AddressContext) -> Result<Translation, VmiError> {
        ArchOf::<D>::translate(&CoreReader::new(self), ctx, self.paging_mode())
    }

    /// Translates a virtual address to a physical one, through the translation cache.
    #[inline(always)]
    pub fn translate_address(&self, ctx: AddressContext) -> Result<Pa, VmiError> {
        self.translate_with(&CoreReader::new(self), ctx)
    }

    /// [`Self::translate_address`] with the reader of the read that translates.
    #[inline(always)]
    fn translate_with(
        &self,
        reader: &CoreReader<'_, D>,
        ctx: AddressContext,
    ) -> Result<Pa, VmiError> {
        let shift = ArchOf::<D>::LAST_TABLE_SHIFT;
        match self.translations.get(shift, ctx.root.0, ctx.va.0) {
            Some(Cached::Leaf(pa)) => Ok(Pa(pa)),
            Some(Cached::Table(table)) => {
                ArchOf::<D>::translate_in_last_table(reader, ctx, Pa(table)).map(|leaf| leaf.pa)
            }
            None => self.translate_uncached(reader, ctx),
        }
    }

    /// [`Self::translate_address`] when the cache knows nothing of the region of `ctx`:
    /// a walk without its steps, and what it found at the last level filed in the cache.
    #[inline]
    fn translate_uncached(
        &self,
        reader: &CoreReader<'_, D>,
        ctx: AddressContext,
    ) -> Result<Pa, VmiError> {
        let epoch = self.translations.epoch();
        match ArchOf::<D>::translate_to_last_table(reader, ctx, self.paging_mode()) {
            Ok(LastLevel::Leaf(leaf)) => {
                let found = Cached::Leaf(leaf.pa.0);
                (self.translations).insert(ctx.root.0, ctx.va.0, found, leaf.page_size, epoch);
                Ok(leaf.pa)
            }
            Ok(LastLevel::Table(table)) => {
                let found = Cached::Table(table.0);
                let size = ArchOf::<D>::PAGE_SIZE;
                (self.translations).insert(ctx.root.0, ctx.va.0, found, size, epoch);
                ArchOf::<D>::translate_in_last_table(reader, ctx, table).map(|leaf| leaf.pa)
            }
            Err(e) => {
                self.translations.miss();
                Err(e)
            }
        }
    }

    #[inline(always)]
    pub(crate) fn resolve(&self, at: u64, mechanism: TranslationMechanism) -> Result<Pa, VmiError> {
        self.resolve_with(&CoreReader::new(self), at, mechanism)
    }

    #[inline(always)]
    fn resolve_with(
        &self,
        reader: &CoreReader<'_, D>,
        at: u64,
        mechanism: TranslationMechanism,
    ) -> Result<Pa, VmiError> {
        match mechanism {
            TranslationMechanism::Direct => Ok(Pa(at)),
            TranslationMechanism::Paging { root } => {
                self.translate_with(reader, AddressContext { va: Va(at), root })
            }
        }
    }

    /// Reads `buf.len()` bytes at `ctx`, across page boundaries.
    ///
    /// A failure on the first page returns that page's error; a failure later returns
    /// [`VmiError::PartialAccess`] with the number of bytes read.
    // Always inlined: the general case is one call, and the caller's constant length
    // reaches the driver (LLVM otherwise kept it out of line behind `read_physical`).
    #[inline(always)]
    pub fn read(&self, ctx: impl Into<AccessContext>, buf: &mut [u8]) -> Result<(), VmiError> {
        let ctx = ctx.into();
        // Fast path: a non-empty access inside one page (every integer or pointer read that
        // does not straddle a page) is exactly the first and only chunk of the general loop,
        // whose error is returned as it is. Without the chunk iterator it inlines, and a
        // fixed-size read keeps its constant length down to the driver.
        // The driver's direct memory is taken once, for the walk and the data alike.
        let room = ArchOf::<D>::PAGE_SIZE - ArchOf::<D>::page_offset(ctx.address);
        if !buf.is_empty() && buf.len() as u64 <= room {
            let reader = CoreReader::new(self);
            let pa = self.resolve_with(&reader, ctx.address, ctx.mechanism)?;
            return self.read_chunk_in(reader.direct, pa, buf);
        }
        self.read_chunks(ctx.address, ctx.mechanism, buf)
    }

    /// The general case of [`Self::read`]: page by page, with partial-access errors.
    /// (The context comes as its parts, which travel in registers: a context argument
    /// made every inlined `read` store it to the stack, for this rarely taken call.)
    #[inline(never)]
    fn read_chunks(
        &self,
        address: u64,
        mechanism: TranslationMechanism,
        buf: &mut [u8],
    ) -> Result<(), VmiError> {
        let ctx = AccessContext { address, mechanism };
        let len = buf.len();
        for (at, start, n) in page_chunks(ctx.address, len, ArchOf::<D>::PAGE_SIZE) {
            let result = self
                .resolve(at, ctx.mechanism)
                .and_then(|pa| self.read_page_chunk(pa, &mut buf[start..start + n]));
            if let Err(e) = result {
                return Err(if start == 0 {
                    e
                } else {
                    VmiError::PartialAccess {
                        ctx,
                        expected: len,
                        completed: start,
                        source: Box::new(e),
                    }
                });
            }
        }
        Ok(())
    }

    /// [`Self::read`] of a fixed-size value, returned by value (see [`direct_array`]).
    #[inline(always)]
    fn read_array<const N: usize>(&self, ctx: AccessContext) -> Result<[u8; N], VmiError> {
        let room = ArchOf::<D>::PAGE_SIZE - ArchOf::<D>::page_offset(ctx.address);
        let mut bytes = [0u8; N];
        if N != 0 && N as u64 <= room {
            let reader = CoreReader::new(self);
            let pa = self.resolve_with(&reader, ctx.address, ctx.mechanism)?;
            if let Some(bytes) = direct_array(reader.direct, pa) {
                return Ok(bytes);
            }
            self.read_chunk_in(reader.direct, pa, &mut bytes)?;
        } else {
            self.read_chunks(ctx.address, ctx.mechanism, &mut bytes)?;
        }
        Ok(bytes)
    }

    /// Reads as much of `buf` as is readable from the start; returns the number of bytes
    /// read (stops at the first unreadable page).
    pub fn read_available(&self, ctx: impl Into<AccessContext>, buf: &mut [u8]) -> usize {
        let ctx = ctx.into();
        for (at, start, n) in page_chunks(ctx.address, buf.len(), ArchOf::<D>::PAGE_SIZE) {
            let ok = self
                .resolve(at, ctx.mechanism)
                .and_then(|pa| self.read_page_chunk(pa, &mut buf[start..start + n]))
                .is_ok();
            if !ok {
                return start;
            }
        }
        buf.len()
    }

    /// Reads `len` bytes into a new vector. `len` is the caller's bound.
    pub fn read_vec(&self, ctx: impl Into<AccessContext>, len: usize) -> Result<Vec<u8>, VmiError> {
        let mut buf = vec![0u8; len];
        self.read(ctx, &mut buf)?;
        Ok(buf)
    }

    /// Reads one byte.
    #[inline]
    pub fn read_u8(&self, ctx: impl Into<AccessContext>) -> Result<u8, VmiError> {
        Ok(self.read_array::<1>(ctx.into())?[0])
    }

    /// Reads a little-endian `u16`.
    #[inline]
    pub fn read_u16(&self, ctx: impl Into<AccessContext>) -> Result<u16, VmiError> {
        self.read_array(ctx.into()).map(u16::from_le_bytes)
    }

    /// Reads a little-endian `u32`.
    #[inline]
    pub fn read_u32(&self, ctx: impl Into<AccessContext>) -> Result<u32, VmiError> {
        self.read_array(ctx.into()).map(u32::from_le_bytes)
    }

    /// Reads a little-endian `u64`.
    #[inline]
    pub fn read_u64(&self, ctx: impl Into<AccessContext>) -> Result<u64, VmiError> {
        self.read_array(ctx.into()).map(u64::from_le_bytes)
    }

    /// Reads an integer of `width` bytes (1, 2, 4 or 8).
    pub fn read_address_width(
        &self,
        ctx: impl Into<AccessContext>,
        width: usize,
    ) -> Result<u64, VmiError> {
        match width {
            1 => self.read_u8(ctx).map(u64::from),
            2 => self.read_u16(ctx).map(u64::from),
            4 => self.read_u32(ctx).map(u64::from),
            8 => self.read_u64(ctx),
            _ => Err(VmiError::InvalidArgument(format!("address width {width}"))),
        }
    }

    /// Reads a pointer of the architecture's width.
    pub fn read_address(&self, ctx: impl Into<AccessContext>) -> Result<u64, VmiError> {
        self.read_address_width(ctx, ArchOf::<D>::ADDRESS_WIDTH)
    }

    /// Reads a pointer of the architecture's width as a [`Va`].
    pub fn read_va(&self, ctx: impl Into<AccessContext>) -> Result<Va, VmiError> {
        self.read_address(ctx).map(Va)
    }

    /// Reads a plain-data structure (any `zerocopy` type: every bit pattern valid).
    pub fn read_struct<T: FromBytes + IntoBytes>(
        &self,
        ctx: impl Into<AccessContext>,
    ) -> Result<T, VmiError> {
        let mut value = T::new_zeroed();
        self.read(ctx, value.as_mut_bytes())?;
        Ok(value)
    }

    /// Reads bytes up to a NUL or `max_len` bytes, page by page, so that a string ending
    /// before an unmapped page reads fine. The NUL is not included.
    pub fn read_bytes_until_nul(
        &self,
        ctx: impl Into<AccessContext>,
        max_len: usize,
    ) -> Result<Vec<u8>, VmiError> {
        let ctx = ctx.into();
        let mut out = Vec::new();
        let mut page = vec![0u8; ArchOf::<D>::PAGE_SIZE as usize];
        for (at, start, n) in page_chunks(ctx.address, max_len, ArchOf::<D>::PAGE_SIZE) {
            let result = self
                .resolve(at, ctx.mechanism)
                .and_then(|pa| self.read_page_chunk(pa, &mut page[..n]));
            if let Err(e) = result {
                return Err(if start == 0 {
                    e
                } else {
                    VmiError::PartialAccess {
                        ctx,
                        expected: max_len,
                        completed: start,
                        source: Box::new(e),
                    }
                });
            }
            if let Some(end) = page[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&page[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&page[..n]);
        }
        Ok(out)
    }

    /// Reads a NUL-terminated UTF-8 string of at most `max_len` bytes. Invalid UTF-8 is
    /// replaced by U+FFFD (guest strings are untrusted).
    pub fn read_string(
        &self,
        ctx: impl Into<AccessContext>,
        max_len: usize,
    ) -> Result<String, VmiError> {
        let bytes = self.read_bytes_until_nul(ctx, max_len)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads exactly `len_bytes` bytes of UTF-16LE text (such as a Windows
    /// `UNICODE_STRING` buffer), bounded by `max_len_bytes`. Unpaired surrogates are
    /// replaced by U+FFFD.
    pub fn read_string_utf16(
        &self,
        ctx: impl Into<AccessContext>,
        len_bytes: usize,
        max_len_bytes: usize,
    ) -> Result<String, VmiError> {
        let len = len_bytes.min(max_len_bytes) & !1;
        let bytes = self.read_vec(ctx, len)?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        Ok(String::from_utf16_lossy(&units))
    }
}

impl<D: VmiWrite> VmiCore<D> {
    /// Writes `data` at `ctx`, across page boundaries.
    pub fn write(&self, ctx: impl Into<AccessContext>, data: &[u8]) -> Result<(), VmiError> {
        let ctx = ctx.into();
        for (at, start, n) in page_chunks(ctx.address, data.len(), ArchOf::<D>::PAGE_SIZE) {
            let result = self.resolve(at, ctx.mechanism).and_then(|pa| {
                let gfn = ArchOf::<D>::gfn_from_pa(pa);
                let offset = ArchOf::<D>::page_offset(pa.0) as usize;
                self.pages.remove(&gfn);
                self.driver.write_page(gfn, offset, &data[start..start + n])
            });
            if let Err(e) = result {
                return Err(if start == 0 {
                    e
                } else {
                    VmiError::PartialAccess {
                        ctx,
                        expected: data.len(),
                        completed: start,
                        source: Box::new(e),
                    }
                });
            }
        }
        // Page tables may have changed.
        self.translations.clear();
        Ok(())
    }

    /// Writes one byte.
    pub fn write_u8(&self, ctx: impl Into<AccessContext>, value: u8) -> Result<(), VmiError> {
        self.write(ctx, &[value])
    }

    /// Writes a little-endian `u16`.
    pub fn write_u16(&self, ctx: impl Into<AccessContext>, value: u16) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u32`.
    pub fn write_u32(&self, ctx: impl Into<AccessContext>, value: u32) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }

    /// Writes a little-endian `u64`.
    pub fn write_u64(&self, ctx: impl Into<AccessContext>, value: u64) -> Result<(), VmiError> {
        self.write(ctx, &value.to_le_bytes())
    }
}

impl<D: VmiQueryRegisters> VmiCore<D> {
    /// The registers of `vcpu`.
    pub fn registers(&self, vcpu: VcpuId) -> Result<RegistersOf<D>, VmiError> {
        self.driver.registers(vcpu)
    }

    /// Sets the paging mode from `vcpu`'s registers.
    pub fn detect_paging_mode(&self, vcpu: VcpuId) -> Result<PagingModeOf<D>, VmiError> {
        let regs = self.registers(vcpu)?;
        let mode = ArchOf::<D>::paging_mode(&regs);
        self.set_paging_mode(mode);
        Ok(mode)
    }
}

impl<D: VmiSetRegisters> VmiCore<D> {
    /// Sets the registers of `vcpu`.
    pub fn set_registers(&self, vcpu: VcpuId, registers: &RegistersOf<D>) -> Result<(), VmiError> {
        self.driver.set_registers(vcpu, registers)
    }
}

impl<D: VmiVmControl> VmiCore<D> {
    /// Pauses the VM.
    pub fn pause(&self) -> Result<(), VmiError> {
        self.driver.pause()
    }

    /// Resumes the VM and forgets cached memory (the guest will change it).
    pub fn resume(&self) -> Result<(), VmiError> {
        self.invalidate_caches();
        self.driver.resume()
    }

    /// The VM's run state.
    pub fn vm_state(&self) -> Result<VmState, VmiError> {
        self.driver.state()
    }

    /// Pauses the VM until the guard is dropped. If the VM was already paused, the guard
    /// leaves it paused: the guest is left as it was found.
    pub fn pause_guard(&self) -> Result<PauseGuard<'_, D>, VmiError> {
        let was_running = self.driver.state()? == VmState::Running;
        if was_running {
            self.driver.pause()?;
            self.invalidate_caches();
        }
        Ok(PauseGuard {
            core: self,
            resume: was_running,
        })
    }
}

impl<D: VmiEventControl> VmiCore<D> {
    /// Starts reporting what `monitor` describes.
    pub fn monitor_enable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.driver.monitor_enable(monitor)
    }

    /// Stops reporting it.
    pub fn monitor_disable(&self, monitor: EventMonitor) -> Result<(), VmiError> {
        self.driver.monitor_disable(monitor)
    }
}

/// Keeps the VM paused; resumes it on drop if it was running when the guard was made.
#[must_use = "the VM resumes when the guard is dropped"]
pub struct PauseGuard<'a, D: VmiVmControl> {
    core: &'a VmiCore<D>,
    resume: bool,
}

impl<D: VmiVmControl> PauseGuard<'_, D> {
    /// Whether dropping the guard resumes the VM.
    pub fn will_resume(&self) -> bool {
        self.resume
    }
}

impl<D: VmiVmControl> Drop for PauseGuard<'_, D> {
    fn drop(&mut self) {
        if self.resume {
            // Nothing sensible can be done with an error in drop; the driver reports it
            // on the next call.
            let _ = self.core.resume();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::page_chunks;

    #[test]
    fn chunks_split_at_page_boundaries() {
        let v: Vec<_> = page_chunks(0xff8, 0x10, 0x1000).collect();
        assert_eq!(v, vec![(0xff8, 0, 8), (0x1000, 8, 8)]);
        let v: Vec<_> = page_chunks(u64::MAX - 3, 8, 0x1000).collect();
        assert_eq!(v, vec![(u64::MAX - 3, 0, 4), (0, 4, 4)]);
        assert_eq!(page_chunks(0, 0, 0x1000).count(), 0);
    }
}
