//! The cache's payload encoding: little-endian fixed-size records in flat arrays, each
//! array preceded by its count, so decoding is a bounds check per array and a tight loop per
//! record (no per-field varints, no per-type allocation besides symbol names).
//!
//! Every count is checked against the bytes left before anything is allocated.

/// Reads the payload; every read is bounds-checked and names what it was reading.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "{what}: {n} bytes wanted at {}, {} left",
                    self.pos,
                    self.buf.len().saturating_sub(self.pos)
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count followed by `count` records of `size` bytes: the records' bytes.
    pub(crate) fn array(&mut self, size: usize, what: &str) -> Result<(usize, &'a [u8]), String> {
        let count = self.u32(what)? as usize;
        let len = count
            .checked_mul(size)
            .ok_or_else(|| format!("{what}: count {count} overflows"))?;
        Ok((count, self.bytes(len, what)?))
    }
}

/// Little-endian `u32` at `at` of a record (callers pass records of the right size).
pub(crate) fn u32_at(rec: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&rec[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Little-endian `u64` at `at` of a record.
pub(crate) fn u64_at(rec: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&rec[at..at + 8]);
    u64::from_le_bytes(b)
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes a length-prefixed byte string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}
