//! Physical memory with a frame allocator, and x64 4-level address spaces built in it.

use std::collections::HashMap;

use crate::BuildError;

/// Page size.
pub const PAGE: u64 = 0x1000;
/// PTE bits.
pub const P: u64 = 1;
/// Writable.
pub const RW: u64 = 2;
/// User.
pub const US: u64 = 4;
/// Accessed.
pub const ACC: u64 = 0x20;
/// Dirty.
pub const DIRTY: u64 = 0x40;
/// Large page.
pub const PS: u64 = 0x80;
/// No-execute.
pub const NX: u64 = 1 << 63;
/// PFN bits of an entry.
pub const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Sign-extends a 48-bit virtual address.
pub fn canon(va: u64) -> u64 {
    let va = va & 0xFFFF_FFFF_FFFF;
    if va & (1 << 47) != 0 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va
    }
}

/// Guest-physical memory: bytes plus a used-frame map and a bump cursor.
#[derive(Clone, Debug)]
pub struct Phys {
    /// The bytes (the raw image).
    pub buf: Vec<u8>,
    /// One flag per frame: allocated or reserved.
    pub used: Vec<bool>,
    /// Next frame the allocator tries.
    pub cursor: u64,
}

impl Phys {
    /// `size` bytes of zeroed RAM.
    pub fn new(size: u64) -> Self {
        Self {
            buf: vec![0; size as usize],
            used: vec![false; (size / PAGE) as usize],
            cursor: 0,
        }
    }

    /// Marks frames as taken.
    pub fn reserve(&mut self, pa: u64, len: u64) -> Result<(), BuildError> {
        for pfn in pa / PAGE..(pa + len).div_ceil(PAGE) {
            let slot = self
                .used
                .get_mut(pfn as usize)
                .ok_or(BuildError::OutOfMemory)?;
            if *slot {
                return Err(BuildError::Layout(format!("frame {pfn:#x} reserved twice")));
            }
            *slot = true;
        }
        Ok(())
    }

    /// `n` contiguous zeroed frames.
    pub fn alloc(&mut self, n: u64) -> Result<u64, BuildError> {
        let mut pfn = self.cursor / PAGE;
        loop {
            if pfn + n > self.used.len() as u64 {
                return Err(BuildError::OutOfMemory);
            }
            if let Some(k) = (0..n).find(|&i| self.used[(pfn + i) as usize]) {
                pfn += k + 1;
                continue;
            }
            break;
        }
        for i in 0..n {
            self.used[(pfn + i) as usize] = true;
        }
        self.cursor = (pfn + n) * PAGE;
        Ok(pfn * PAGE)
    }

    /// Writes bytes.
    pub fn write(&mut self, pa: u64, data: &[u8]) -> Result<(), BuildError> {
        let end = pa as usize + data.len();
        self.buf
            .get_mut(pa as usize..end)
            .ok_or(BuildError::OutOfMemory)?
            .copy_from_slice(data);
        Ok(())
    }

    /// Reads a u64.
    pub fn q(&self, pa: u64) -> u64 {
        let i = pa as usize;
        self.buf
            .get(i..i + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }

    /// Writes a u64.
    pub fn setq(&mut self, pa: u64, v: u64) -> Result<(), BuildError> {
        self.write(pa, &v.to_le_bytes())
    }
}

/// One address space (one PML4) with a mirror of its leaf mappings.
#[derive(Clone, Debug)]
pub struct Space {
    /// Physical address of the PML4.
    pub pml4: u64,
    /// Page VA → page PA, for every present leaf this builder wrote.
    pub pages: HashMap<u64, u64>,
}

/// Physical memory and every address space in it.
#[derive(Clone, Debug)]
pub struct Mem {
    /// The RAM.
    pub phys: Phys,
    /// Address spaces; index 0 is the kernel's (System).
    pub spaces: Vec<Space>,
}

/// Index into [`Mem::spaces`].
pub type SpaceId = usize;

impl Mem {
    /// A new space with a fresh PML4 (or the given one).
    pub fn new_space(&mut self, pml4: Option<u64>) -> Result<SpaceId, BuildError> {
        let pml4 = match pml4 {
            Some(p) => p,
            None => self.phys.alloc(1)?,
        };
        self.spaces.push(Space {
            pml4,
            pages: HashMap::new(),
        });
        Ok(self.spaces.len() - 1)
    }

    fn table(&mut self, table: u64, index: u64, user: bool) -> Result<u64, BuildError> {
        let at = table + index * 8;
        let e = self.phys.q(at);
        if e & P != 0 {
            if e & PS != 0 {
                return Err(BuildError::Layout(format!(
                    "large page at table {table:#x}"
                )));
            }
            if user && e & US == 0 {
                self.phys.setq(at, e | US)?;
            }
            return Ok(e & ADDR);
        }
        let new = self.phys.alloc(1)?;
        self.phys
            .setq(at, new | P | RW | ACC | if user { US } else { 0 })?;
        Ok(new)
    }

    /// Writes a raw leaf PTE (may be a software, non-present PTE).
    pub fn set_pte(
        &mut self,
        sp: SpaceId,
        va: u64,
        pte: u64,
        user: bool,
    ) -> Result<(), BuildError> {
        let va = canon(va) & !(PAGE - 1);
        let idx = |s: u32| (va >> s) & 511;
        let t3 = self.table(self.spaces[sp].pml4, idx(39), user)?;
        let t2 = self.table(t3, idx(30), user)?;
        let t1 = self.table(t2, idx(21), user)?;
        self.phys.setq(t1 + idx(12) * 8, pte)?;
        if pte & P != 0 {
            self.spaces[sp].pages.insert(va, pte & ADDR);
        } else {
            self.spaces[sp].pages.remove(&va);
        }
        Ok(())
    }

    /// Maps one 4 KiB page.
    pub fn map(
        &mut self,
        sp: SpaceId,
        va: u64,
        pa: u64,
        user: bool,
        writable: bool,
        nx: bool,
    ) -> Result<(), BuildError> {
        let pte = pa
            | P
            | ACC
            | DIRTY
            | if writable { RW } else { 0 }
            | if user { US } else { 0 }
            | if nx { NX } else { 0 };
        self.set_pte(sp, va, pte, user)
    }

    /// Maps a 2 MiB kernel page.
    pub fn map_large(&mut self, sp: SpaceId, va: u64, pa: u64) -> Result<(), BuildError> {
        let va = canon(va);
        let t3 = self.table(self.spaces[sp].pml4, (va >> 39) & 511, false)?;
        let t2 = self.table(t3, (va >> 30) & 511, false)?;
        self.phys
            .setq(t2 + ((va >> 21) & 511) * 8, pa | P | RW | ACC | DIRTY | PS)?;
        for off in (0..0x20_0000).step_by(PAGE as usize) {
            self.spaces[sp].pages.insert(va + off, pa + off);
        }
        Ok(())
    }

    /// Maps fresh frames over `[va, va + size)` where nothing is mapped yet.
    pub fn map_new(
        &mut self,
        sp: SpaceId,
        va: u64,
        size: u64,
        user: bool,
        nx: bool,
    ) -> Result<(), BuildError> {
        let start = canon(va) & !(PAGE - 1);
        let end = canon(va) + size.max(1);
        let mut p = start;
        while p < end {
            if !self.spaces[sp].pages.contains_key(&p) {
                let pa = self.phys.alloc(1)?;
                self.map(sp, p, pa, user, true, nx)?;
            }
            p += PAGE;
        }
        Ok(())
    }

    /// Walks the real page tables.
    pub fn walk(&self, root: u64, va: u64) -> Option<u64> {
        let va = canon(va);
        let mut e = root | P;
        for shift in [39u32, 30, 21, 12] {
            if e & P == 0 {
                return None;
            }
            e = self.phys.q((e & ADDR) + ((va >> shift) & 511) * 8);
            if (shift == 30 || shift == 21) && e & P != 0 && e & PS != 0 {
                let size = 1u64 << shift;
                return Some((e & ADDR & !(size - 1)) | (va & (size - 1)));
            }
        }
        (e & P != 0).then_some((e & ADDR) | (va & (PAGE - 1)))
    }

    /// Physical address of a mapped `va` in `sp`.
    pub fn pa(&self, sp: SpaceId, va: u64) -> Result<u64, BuildError> {
        let va = canon(va);
        self.spaces[sp]
            .pages
            .get(&(va & !(PAGE - 1)))
            .map(|p| p | (va & (PAGE - 1)))
            .ok_or_else(|| BuildError::Layout(format!("{va:#x} not mapped in space {sp}")))
    }

    /// Writes through the mappings of `sp`.
    pub fn write(&mut self, sp: SpaceId, va: u64, data: &[u8]) -> Result<(), BuildError> {
        let va = canon(va);
        let mut pos = 0usize;
        while pos < data.len() {
            let cur = va + pos as u64;
            let n = (data.len() - pos).min((PAGE - (cur & (PAGE - 1))) as usize);
            let pa = self.pa(sp, cur)?;
            self.phys.write(pa, &data[pos..pos + n])?;
            pos += n;
        }
        Ok(())
    }

    /// Reads through the mappings of `sp`.
    pub fn read(&self, sp: SpaceId, va: u64, len: usize) -> Result<Vec<u8>, BuildError> {
        let va = canon(va);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let cur = va + out.len() as u64;
            let n = (len - out.len()).min((PAGE - (cur & (PAGE - 1))) as usize);
            let pa = self.pa(sp, cur)? as usize;
            out.extend_from_slice(&self.phys.buf[pa..pa + n]);
        }
        Ok(out)
    }
}
