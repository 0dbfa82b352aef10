//! Reading kernel memory with checks: typed reads through the kernel's page tables,
//! validated guest pointers, windows over structures, and the `KernelMemory` adapter the
//! profile crate decodes kallsyms and BTF through.

use vmi_arch_amd64::{Amd64, PagingMode};
use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};
use vmi_profile::{KernelMemory, MemoryError};

/// Whether `va` is a canonical kernel-half address in `mode`.
pub(crate) fn is_kernel_address(va: u64, mode: PagingMode) -> bool {
    va >> 63 == 1 && mode.is_canonical(va)
}

/// Whether `va` is a canonical user-half address in `mode` (null included).
pub(crate) fn is_user_address(va: u64, mode: PagingMode) -> bool {
    va >> 63 == 0 && mode.is_canonical(va)
}

/// An error for a guest value that fails a check.
pub(crate) fn malformed(what: &'static str, address: u64, detail: impl Into<String>) -> VmiError {
    VmiError::Malformed {
        what,
        address,
        detail: detail.into(),
    }
}

/// Kernel memory of one core: reads through a page-table root, pointer checks.
pub(crate) struct Kmem<'a, D: VmiRead<Architecture = Amd64>> {
    pub(crate) core: &'a VmiCore<D>,
    pub(crate) root: Pa,
    pub(crate) mode: PagingMode,
}

impl<D: VmiRead<Architecture = Amd64>> Clone for Kmem<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: VmiRead<Architecture = Amd64>> Copy for Kmem<'_, D> {}

impl<'a, D: VmiRead<Architecture = Amd64>> Kmem<'a, D> {
    pub(crate) fn new(core: &'a VmiCore<D>, root: Pa, mode: PagingMode) -> Self {
        Self { core, root, mode }
    }

    /// The same memory through another root (a process's page tables).
    pub(crate) fn with_root(self, root: Pa) -> Self {
        Self { root, ..self }
    }

    pub(crate) fn ctx(&self, va: Va) -> AccessContext {
        AccessContext::paging(va, self.root)
    }

    pub(crate) fn read(&self, va: Va, buf: &mut [u8]) -> Result<(), VmiError> {
        self.core.read(self.ctx(va), buf)
    }

    pub(crate) fn u32(&self, va: Va) -> Result<u32, VmiError> {
        self.core.read_u32(self.ctx(va))
    }

    pub(crate) fn u64(&self, va: Va) -> Result<u64, VmiError> {
        self.core.read_u64(self.ctx(va))
    }

    pub(crate) fn vec(&self, va: Va, len: usize) -> Result<Vec<u8>, VmiError> {
        self.core.read_vec(self.ctx(va), len)
    }

    /// Checks that `value` (read at `at`, naming `what`) is a non-null, 8-byte aligned
    /// canonical kernel address.
    pub(crate) fn check_ptr(&self, value: u64, what: &'static str, at: Va) -> Result<Va, VmiError> {
        let va = self.check_kernel_value(value, what, at)?;
        if value & 7 != 0 {
            return Err(malformed(what, at.0, format!("{value:#x} is misaligned")));
        }
        Ok(va)
    }

    /// `value`, read at `at`, as a non-null kernel address (any alignment).
    fn check_kernel_value(&self, value: u64, what: &'static str, at: Va) -> Result<Va, VmiError> {
        if value == 0 {
            return Err(malformed(what, at.0, "null pointer"));
        }
        if !is_kernel_address(value, self.mode) {
            return Err(malformed(
                what,
                at.0,
                format!("{value:#x} is not a kernel address"),
            ));
        }
        Ok(Va(value))
    }

    /// Reads a pointer to kernel bytes (a string: no alignment) at `at`, non-null.
    pub(crate) fn bytes_ptr(&self, at: Va, what: &'static str) -> Result<Va, VmiError> {
        self.check_kernel_value(self.u64(at)?, what, at)
    }

    /// Reads a kernel pointer at `at` that must be valid and non-null.
    pub(crate) fn ptr(&self, at: Va, what: &'static str) -> Result<Va, VmiError> {
        let v = self.u64(at)?;
        self.check_ptr(v, what, at)
    }

    /// Reads a kernel pointer at `at` that may be null.
    pub(crate) fn opt_ptr(&self, at: Va, what: &'static str) -> Result<Option<Va>, VmiError> {
        match self.u64(at)? {
            0 => Ok(None),
            v => self.check_ptr(v, what, at).map(Some),
        }
    }

    /// Reads a NUL-terminated string of at most `max` bytes (lossy UTF-8).
    pub(crate) fn cstring(&self, va: Va, max: usize) -> Result<String, VmiError> {
        self.core.read_string(self.ctx(va), max)
    }

    /// Reads `[lo, hi)` of the structure at `base` in one access.
    pub(crate) fn window(&self, base: Va, lo: u64, hi: u64) -> Result<Window, VmiError> {
        let len = hi.saturating_sub(lo);
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_WINDOW)
            .ok_or_else(|| VmiError::InvalidArgument(format!("window of {len} bytes")))?;
        let data = self.vec(base + lo, len)?;
        Ok(Window { base, lo, data })
    }
}

/// Largest structure window read at once.
const MAX_WINDOW: usize = 64 << 10;

/// Bytes of a structure read at once, addressed by field offset.
pub(crate) struct Window {
    base: Va,
    lo: u64,
    data: Vec<u8>,
}

impl Window {
    fn slice(&self, off: u64, len: usize) -> Result<&[u8], VmiError> {
        off.checked_sub(self.lo)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| self.data.get(s..s.checked_add(len)?))
            .ok_or_else(|| {
                VmiError::InvalidArgument(format!(
                    "field at {off:#x}+{len} outside the window read at {}",
                    self.base
                ))
            })
    }

    pub(crate) fn u32(&self, off: u64) -> Result<u32, VmiError> {
        let s = self.slice(off, 4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    pub(crate) fn u64(&self, off: u64) -> Result<u64, VmiError> {
        let s = self.slice(off, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(s);
        Ok(u64::from_le_bytes(b))
    }

    pub(crate) fn bytes(&self, off: u64, len: usize) -> Result<&[u8], VmiError> {
        self.slice(off, len)
    }

    /// The address of the field at `off`.
    pub(crate) fn at(&self, off: u64) -> Va {
        self.base + off
    }
}

/// A C string from a fixed-size buffer: up to the first NUL, lossy UTF-8.
pub(crate) fn fixed_cstr(bytes: &[u8]) -> String {
    let end = memchr::memchr(0, bytes).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// [`KernelMemory`] over a core and the kernel's page tables, for kallsyms and BTF.
pub(crate) struct CoreMemory<'a, D: VmiRead<Architecture = Amd64>>(pub(crate) Kmem<'a, D>);

impl<D: VmiRead<Architecture = Amd64>> KernelMemory for CoreMemory<'_, D> {
    fn read(&self, va: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0
            .read(Va(va), buf)
            .map_err(|e| Box::new(e) as MemoryError)
    }
}
