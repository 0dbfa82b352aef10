//! LZO1X decompression into a fixed buffer, written for hostile input.
//!
//! Why not a crate: `lzo1x`, `minilzo-rs` and `rust-lzo` are GPL-licensed (this workspace
//! is MIT/Apache-2.0); `lzokay-native` is MIT but indexes its output with unchecked
//! back-reference distances (a panic on malformed input) and allocates lengths read from
//! the stream. The format is small, so this module implements the decoder with every
//! length and distance checked against the input and the output buffer: no panic, no
//! allocation, work bounded by `input.len() + out.len()`.
//!
//! Stream format (LZO1X-1, what makedumpfile writes with `lzo1x_1_compress`): a sequence
//! of instructions whose first byte selects literal runs or back-references ("M1"–"M4")
//! with lengths extended by runs of zero bytes; a 2-byte match opcode `0x11 0 0` ends it.

/// Why a stream could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LzoError {
    /// The input ended inside an instruction.
    InputOverrun,
    /// The output would exceed the buffer.
    OutputOverrun,
    /// A back-reference points before the start of the output.
    LookBehind,
    /// Bytes follow the end-of-stream marker.
    TrailingInput,
}

impl std::fmt::Display for LzoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::InputOverrun => "LZO input ended inside an instruction",
            Self::OutputOverrun => "LZO output larger than the page",
            Self::LookBehind => "LZO back-reference before the start of the output",
            Self::TrailingInput => "LZO bytes after the end-of-stream marker",
        })
    }
}

struct Decoder<'a, 'b> {
    input: &'a [u8],
    ip: usize,
    out: &'b mut [u8],
    op: usize,
}

impl Decoder<'_, '_> {
    #[inline]
    fn byte(&mut self) -> Result<u8, LzoError> {
        let b = *self.input.get(self.ip).ok_or(LzoError::InputOverrun)?;
        self.ip += 1;
        Ok(b)
    }

    #[inline]
    fn le16(&mut self) -> Result<usize, LzoError> {
        let lo = self.byte()?;
        let hi = self.byte()?;
        Ok(usize::from(u16::from_le_bytes([lo, hi])))
    }

    /// A length extension: each zero byte adds 255, the first non-zero byte ends it.
    fn extended_length(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut len = base;
        loop {
            let b = self.byte()?;
            if b != 0 {
                return len
                    .checked_add(usize::from(b))
                    .ok_or(LzoError::OutputOverrun);
            }
            len = len.checked_add(255).ok_or(LzoError::OutputOverrun)?;
            // The loop consumes input on every turn, so it ends with the input.
        }
    }

    fn literals(&mut self, n: usize) -> Result<(), LzoError> {
        let src = self
            .input
            .get(self.ip..self.ip.checked_add(n).ok_or(LzoError::InputOverrun)?)
            .ok_or(LzoError::InputOverrun)?;
        let dst = self
            .out
            .get_mut(self.op..self.op.checked_add(n).ok_or(LzoError::OutputOverrun)?)
            .ok_or(LzoError::OutputOverrun)?;
        dst.copy_from_slice(src);
        self.ip += n;
        self.op += n;
        Ok(())
    }

    fn back_reference(&mut self, distance: usize, len: usize) -> Result<(), LzoError> {
        if distance == 0 || distance > self.op {
            return Err(LzoError::LookBehind);
        }
        let end = self.op.checked_add(len).ok_or(LzoError::OutputOverrun)?;
        if end > self.out.len() {
            return Err(LzoError::OutputOverrun);
        }
        // Byte by byte: source and destination may overlap (run-length style copies).
        for i in self.op..end {
            self.out[i] = self.out[i - distance];
        }
        self.op = end;
        Ok(())
    }
}

/// Decodes `input` into `out`; returns the number of bytes written.
pub(crate) fn decompress(input: &[u8], out: &mut [u8]) -> Result<usize, LzoError> {
    let mut d = Decoder {
        input,
        ip: 0,
        out,
        op: 0,
    };
    // `state`: literals copied by the previous instruction (0–3), or 4 after a long
    // literal run. It selects the meaning of opcodes 0–15.
    let mut state: usize = 0;
    if let Some(&first) = input.first()
        && first > 17
    {
        d.ip = 1;
        let n = usize::from(first - 17);
        d.literals(n)?;
        state = if n < 4 { n } else { 4 };
    }
    loop {
        let t = usize::from(d.byte()?);
        let (distance, len, next_state);
        if t < 16 {
            if state == 0 {
                // Literal run of 4 or more bytes.
                let n = if t == 0 { d.extended_length(15)? } else { t };
                d.literals(n + 3)?;
                state = 4;
                continue;
            }
            let h = usize::from(d.byte()?);
            if state == 4 {
                // 3-byte match, 2049..3072 bytes back.
                distance = (t >> 2) + (h << 2) + 2049;
                len = 3;
            } else {
                // 2-byte match within 1 KiB.
                distance = (t >> 2) + (h << 2) + 1;
                len = 2;
            }
            next_state = t & 3;
        } else if t < 32 {
            // M4: 16 KiB..48 KiB back, or the end-of-stream marker.
            let l = if t & 7 == 0 {
                d.extended_length(7)?
            } else {
                t & 7
            };
            let v = d.le16()?;
            let far = (t & 8) << 11;
            if far == 0 && v >> 2 == 0 {
                // End of stream.
                if d.ip != input.len() {
                    return Err(LzoError::TrailingInput);
                }
                return Ok(d.op);
            }
            distance = 16384 + far + (v >> 2);
            len = l + 2;
            next_state = v & 3;
        } else if t < 64 {
            // M3: up to 16 KiB back.
            let l = if t & 31 == 0 {
                d.extended_length(31)?
            } else {
                t & 31
            };
            let v = d.le16()?;
            distance = (v >> 2) + 1;
            len = l + 2;
            next_state = v & 3;
        } else {
            // M2: 3–8 bytes within 2 KiB.
            let h = usize::from(d.byte()?);
            distance = ((t >> 2) & 7) + (h << 3) + 1;
            len = (t >> 5) + 1;
            next_state = t & 3;
        }
        d.back_reference(distance, len)?;
        d.literals(next_state)?;
        state = next_state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    fn page(seed: u64) -> Vec<u8> {
        let mut rng = SmallRng::seed_from_u64(seed);
        // Compressible but not trivial: runs, text and noise.
        let mut p = Vec::with_capacity(4096);
        while p.len() < 4096 {
            let kind = rng.gen_range(0..4);
            let n = rng.gen_range(1..300);
            match kind {
                0 => p.extend(std::iter::repeat_n(0u8, n)),
                1 => p.extend(b"Linux version 6.1.0 ".iter().cycle().take(n)),
                2 => p.extend((0..n).map(|_| rng.r#gen::<u8>())),
                _ => {
                    let back = p.len().min(rng.gen_range(1..3000));
                    let start = p.len() - back;
                    for i in 0..n.min(back) {
                        p.push(p[start + i]);
                    }
                }
            }
        }
        p.truncate(4096);
        p
    }

    #[test]
    fn decodes_what_an_independent_compressor_wrote() {
        for seed in 0..200 {
            let p = page(seed);
            let c = lzokay_native::compress(&p).expect("compress");
            let mut out = [0u8; 4096];
            let n = decompress(&c, &mut out).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            assert_eq!(n, 4096);
            assert_eq!(&out[..], &p[..], "seed {seed}");
        }
    }

    #[test]
    fn hostile_streams_fail_cleanly() {
        let mut rng = SmallRng::seed_from_u64(7);
        let base = lzokay_native::compress(&page(1)).unwrap();
        let mut out = [0u8; 4096];
        for _ in 0..20_000 {
            let mut c = base.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..c.len());
                c[i] = rng.r#gen();
            }
            if rng.gen_bool(0.2) {
                c.truncate(rng.gen_range(0..c.len()));
            }
            let _ = decompress(&c, &mut out);
        }
        assert_eq!(decompress(&[], &mut out), Err(LzoError::InputOverrun));
        // One literal, then a back-reference 41 bytes back.
        assert_eq!(
            decompress(&[0x12, b'a', 0x40, 0x05], &mut out),
            Err(LzoError::LookBehind)
        );
    }
}
