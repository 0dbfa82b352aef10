//! Extract the `vmlinux` ELF (with its `.BTF` section) from an x86 bzImage (`vmlinuz`).
//!
//! Layout (Linux x86 boot protocol ≥ 2.08): the real-mode setup is `setup_sects + 1`
//! sectors of 512 bytes (`setup_sects` at 0x1f1, 0 meaning 4); the protected-mode part
//! follows. Its header fields `payload_offset` (0x248) and `payload_length` (0x24c) locate
//! the compressed kernel relative to the start of the protected-mode part. Every kernel
//! compressor except gzip appends the uncompressed size as a little-endian `u32`.
//!
//! This is the harness's own small extractor; it is bounded (output ≤ [`MAX_VMLINUX`]).

use std::io::Read;

use crate::error::{Error, Result};

/// Largest accepted decompressed kernel (the 6.x cloud kernels are ~60 MiB).
pub const MAX_VMLINUX: usize = 512 << 20;

/// The compression of a bzImage payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip (`1f 8b`).
    Gzip,
    /// XZ (`fd 37 7a 58 5a 00`), usually with the x86 BCJ filter.
    Xz,
    /// LZ4 legacy frame (`02 21 4c 18`).
    Lz4Legacy,
    /// Zstandard (`28 b5 2f fd`).
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4Legacy => "lz4-legacy",
            Compression::Zstd => "zstd",
        })
    }
}

const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Locate the compressed payload inside a bzImage and name its compression.
pub fn payload(vmlinuz: &[u8]) -> Result<(Compression, &[u8])> {
    if vmlinuz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(Error::Vmlinuz(
            "no `HdrS` boot-protocol signature at 0x202".into(),
        ));
    }
    let setup_sects = match vmlinuz.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(Error::Vmlinuz("truncated before setup_sects".into())),
    };
    let pm = (setup_sects + 1) * 512;
    let off = u32_at(vmlinuz, 0x248).ok_or_else(|| Error::Vmlinuz("truncated header".into()))?;
    let len = u32_at(vmlinuz, 0x24c).ok_or_else(|| Error::Vmlinuz("truncated header".into()))?;
    let start = pm
        .checked_add(off as usize)
        .ok_or_else(|| Error::Vmlinuz("payload_offset overflows".into()))?;
    let end = start
        .checked_add(len as usize)
        .ok_or_else(|| Error::Vmlinuz("payload_length overflows".into()))?;
    let p = vmlinuz.get(start..end).ok_or_else(|| {
        Error::Vmlinuz(format!(
            "payload {start:#x}..{end:#x} outside the file ({:#x} bytes)",
            vmlinuz.len()
        ))
    })?;
    let kind = if p.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if p.starts_with(b"\xfd7zXZ\x00") {
        Compression::Xz
    } else if p.starts_with(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Compression::Lz4Legacy
    } else if p.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        return Err(Error::Vmlinuz(format!(
            "unsupported payload compression (magic {:02x?})",
            &p[..p.len().min(6)]
        )));
    };
    Ok((kind, p))
}

/// Decompress a legacy-frame LZ4 stream (as made by `lz4 -l`): the magic, then blocks of
/// `[u32 LE compressed size][data]`, each inflating to at most 8 MiB. A repeated magic
/// starts a new frame; a trailing partial header ends the stream.
///
/// The framing is done here around `lz4_flex::block` (lz4_flex's frame decoder also knows
/// the legacy magic, but needs its `frame` feature and an extra hash dependency; the
/// kernel's size trailer is stripped by the caller either way).
pub fn lz4_legacy_decompress(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    if u32_at(input, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(Error::Vmlinuz("lz4: missing legacy frame magic".into()));
    }
    let mut pos = 4usize;
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while let Some(size) = u32_at(input, pos) {
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let size = size as usize;
        let Some(data) = pos.checked_add(size).and_then(|end| input.get(pos..end)) else {
            return Err(Error::Vmlinuz(format!(
                "lz4: block of {size} bytes at {:#x} runs past the end",
                pos - 4
            )));
        };
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| Error::Vmlinuz(format!("lz4: block at {:#x}: {e}", pos - 4)))?;
        if out.len() + n > limit {
            return Err(Error::Vmlinuz(format!("lz4: output exceeds {limit} bytes")));
        }
        out.extend_from_slice(&block[..n]);
        pos += size;
    }
    Ok(out)
}

fn read_bounded(mut r: impl Read, limit: usize, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Vmlinuz(format!("{what}: {e}")))?;
    if out.len() > limit {
        return Err(Error::Vmlinuz(format!(
            "{what}: output exceeds {limit} bytes"
        )));
    }
    Ok(out)
}

/// Decompress an XZ stream (any filter chain lzma-rust2 supports, e.g. x86 BCJ + LZMA2).
pub fn xz_decompress(input: &[u8], limit: usize) -> Result<Vec<u8>> {
    read_bounded(lzma_rust2::XzReader::new(input, true), limit, "xz")
}

/// Decompress a bzImage payload into the `vmlinux` ELF image (the relocation table that
/// follows the ELF inside the payload is kept; ELF readers ignore it).
pub fn decompress_payload(kind: Compression, p: &[u8]) -> Result<Vec<u8>> {
    // All but gzip end with the appended uncompressed size.
    let body = match kind {
        Compression::Gzip => p,
        _ => &p[..p.len().saturating_sub(4)],
    };
    let out = match kind {
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(body), MAX_VMLINUX, "gzip")?,
        Compression::Xz => xz_decompress(body, MAX_VMLINUX)?,
        Compression::Lz4Legacy => lz4_legacy_decompress(body, MAX_VMLINUX)?,
        Compression::Zstd => {
            let dec = ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| Error::Vmlinuz(format!("zstd: {e}")))?;
            read_bounded(dec, MAX_VMLINUX, "zstd")?
        }
    };
    if !out.starts_with(b"\x7fELF") {
        return Err(Error::Vmlinuz(format!(
            "decompressed {kind} payload is not an ELF file"
        )));
    }
    let trailer = u32_at(p, p.len().saturating_sub(4));
    if let Some(size) = trailer.filter(|&s| kind != Compression::Gzip && s as usize != out.len()) {
        return Err(Error::Vmlinuz(format!(
            "{kind}: decompressed {} bytes, trailer says {size}",
            out.len()
        )));
    }
    Ok(out)
}

/// Extract `vmlinux` from a bzImage.
pub fn vmlinux_from_vmlinuz(vmlinuz: &[u8]) -> Result<(Compression, Vec<u8>)> {
    let (kind, p) = payload(vmlinuz)?;
    Ok((kind, decompress_payload(kind, p)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lz4_legacy_roundtrip_with_size_trailer() {
        let data: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let block = lz4_flex::block::compress(&data);
        let mut framed = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        framed.extend_from_slice(&(block.len() as u32).to_le_bytes());
        framed.extend_from_slice(&block);
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        // Unstripped, the size trailer reads as a block with no data behind it.
        let err = lz4_legacy_decompress(&framed, 1 << 30).unwrap_err();
        assert!(err.to_string().contains("runs past the end"), "{err}");
        let out = lz4_legacy_decompress(&framed[..framed.len() - 4], 1 << 30).unwrap();
        assert_eq!(out, data);
        assert!(lz4_legacy_decompress(&framed[..framed.len() - 4], 10).is_err());
    }

    /// A synthetic bzImage: 1 setup sector + boot sector, LZ4-legacy payload of a fake ELF.
    fn synthetic_bzimage() -> (Vec<u8>, Vec<u8>) {
        let elf: Vec<u8> = b"\x7fELF"
            .iter()
            .copied()
            .chain((0..5000u32).map(|i| (i % 13) as u8))
            .collect();
        let block = lz4_flex::block::compress(&elf);
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        payload.extend_from_slice(&(block.len() as u32).to_le_bytes());
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut img = vec![0u8; 1024 + 0x40];
        img[0x1f1] = 1; // setup_sects: protected-mode part at (1 + 1) * 512
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x248..0x24c].copy_from_slice(&0x40u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&payload);
        (img, elf)
    }

    #[test]
    fn synthetic_bzimage_roundtrip() {
        let (img, elf) = synthetic_bzimage();
        let (kind, out) = vmlinux_from_vmlinuz(&img).unwrap();
        assert_eq!(kind, Compression::Lz4Legacy);
        assert_eq!(out, elf);
    }

    /// Seeded, bounded fuzz: mutated headers and payloads never panic.
    #[test]
    fn fuzz_vmlinuz_extraction() {
        use rand::{Rng, SeedableRng};
        let (img, _) = synthetic_bzimage();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0xb2_1a6e);
        for _ in 0..3000 {
            let mut m = img.clone();
            for _ in 0..rng.gen_range(1..6) {
                // bias mutations towards the header fields and the payload
                let i = match rng.gen_range(0..3) {
                    0 => rng.gen_range(0x1f0..0x250),
                    _ => rng.gen_range(1024..m.len()),
                };
                m[i] = rng.r#gen();
            }
            if rng.gen_bool(0.2) {
                let n = rng.gen_range(0..m.len());
                m.truncate(n);
            }
            let _ = vmlinux_from_vmlinuz(&m);
        }
    }

    #[test]
    fn rejects_non_bzimage() {
        assert!(payload(&[0u8; 4096]).is_err());
        assert!(payload(&[]).is_err());
    }
}
