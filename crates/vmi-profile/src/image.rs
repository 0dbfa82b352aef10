//! Kernel images: the x86 bzImage boot header, payload decompression, and the vmlinux ELF.
//!
//! bzImage facts (Documentation/arch/x86/boot.rst): `setup_sects` at 0x1f1 (0 means 4), the
//! `HdrS` signature at 0x202, the protected-mode kernel at `(setup_sects + 1) * 512`,
//! `payload_offset`/`payload_length` at 0x248/0x24c relative to that start, and the kernel
//! version string pointer at 0x20e (relative to 0x200). The payload's last 4 bytes are the
//! little-endian size of the decompressed `vmlinux.bin` (stripped ELF plus relocations).

use std::io::{Read, Write};

use object::{Object, ObjectSection};

use crate::error::{ProfileError, Result};

/// Largest decompressed kernel accepted.
pub const MAX_DECOMPRESSED: u64 = 512 << 20;

/// The compression of a bzImage payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip.
    Gzip,
    /// LZ4 legacy frame.
    Lz4Legacy,
    /// XZ.
    Xz,
    /// LZMA (alone).
    Lzma,
    /// Zstandard.
    Zstd,
    /// bzip2.
    Bzip2,
    /// LZO (recognised, not supported).
    Lzo,
}

impl Compression {
    /// Detects the format from the first bytes of a payload.
    pub fn detect(data: &[u8]) -> Option<Self> {
        Some(match data {
            [0x1f, 0x8b, ..] => Self::Gzip,
            [0x02, 0x21, 0x4c, 0x18, ..] => Self::Lz4Legacy,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Self::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Self::Zstd,
            [b'B', b'Z', b'h', ..] => Self::Bzip2,
            [0x89, b'L', b'Z', b'O', ..] => Self::Lzo,
            [0x5d, 0, 0, ..] => Self::Lzma,
            _ => return None,
        })
    }

    /// Lower-case name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Lz4Legacy => "lz4",
            Self::Xz => "xz",
            Self::Lzma => "lzma",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Lzo => "lzo",
        }
    }
}

/// A `Write` sink that refuses to grow past a limit.
struct Limited {
    buf: Vec<u8>,
    limit: u64,
}

impl Write for Limited {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() as u64 + data.len() as u64 > self.limit {
            return Err(std::io::Error::other("output exceeds the size limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

/// The pieces of a bzImage.
#[derive(Clone, Copy, Debug)]
pub struct BzImage<'a> {
    /// The compressed payload (with its trailing 4-byte size).
    pub payload: &'a [u8],
    /// The kernel version string from the setup header, if present.
    pub version: Option<&'a str>,
}

/// True if the bytes carry the `HdrS` boot-protocol signature.
pub fn is_bzimage(data: &[u8]) -> bool {
    data.get(0x202..0x206) == Some(b"HdrS")
}

/// Locates the payload of a bzImage via its boot header.
pub fn parse_bzimage<'a>(data: &'a [u8], source: &str) -> Result<BzImage<'a>> {
    let bad = |what: String| ProfileError::KernelImage {
        source_name: source.to_owned(),
        what,
    };
    if !is_bzimage(data) {
        return Err(bad("no HdrS signature at 0x202".into()));
    }
    let setup_sects = match data.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(bad("truncated setup header".into())),
    };
    let pm_start = (setup_sects + 1) * 512;
    let payload_offset = u32_at(data, 0x248).ok_or_else(|| bad("truncated header".into()))?;
    let payload_length = u32_at(data, 0x24c).ok_or_else(|| bad("truncated header".into()))?;
    let start = pm_start
        .checked_add(payload_offset as usize)
        .ok_or_else(|| bad("payload offset overflows".into()))?;
    let payload = start
        .checked_add(payload_length as usize)
        .and_then(|end| data.get(start..end))
        .ok_or_else(|| {
            bad(format!(
                "payload {start:#x}+{payload_length:#x} beyond the {:#x}-byte file",
                data.len()
            ))
        })?;
    if payload.len() < 8 {
        return Err(bad(format!("payload of {} bytes", payload.len())));
    }
    let version = u16::from_le_bytes([data[0x20e], data[0x20f]]);
    let version = (version != 0)
        .then(|| {
            let off = 0x200 + usize::from(version);
            let s = data.get(off..off + 256.min(data.len().saturating_sub(off)))?;
            let end = s.iter().position(|&b| b == 0)?;
            std::str::from_utf8(&s[..end]).ok()
        })
        .flatten();
    Ok(BzImage { payload, version })
}

/// Decompresses a bzImage payload (the trailing 4-byte size included), bounded by
/// [`MAX_DECOMPRESSED`].
pub fn decompress_payload(payload: &[u8], source: &str) -> Result<Vec<u8>> {
    let format = Compression::detect(payload).ok_or_else(|| ProfileError::KernelImage {
        source_name: source.to_owned(),
        what: format!(
            "unknown compression (first bytes {:02x?})",
            &payload[..payload.len().min(6)]
        ),
    })?;
    let fail = |what: String| ProfileError::Decompress {
        source_name: source.to_owned(),
        format: format.name(),
        what,
    };
    let declared = payload
        .len()
        .checked_sub(4)
        .and_then(|n| u32_at(payload, n))
        .ok_or_else(|| fail("payload shorter than its size trailer".into()))?;
    if u64::from(declared) > MAX_DECOMPRESSED {
        return Err(ProfileError::TooLarge {
            source_name: source.to_owned(),
            what: "declared decompressed size",
            size: u64::from(declared),
            limit: MAX_DECOMPRESSED,
        });
    }
    let stream = &payload[..payload.len() - 4];
    let mut out = Limited {
        buf: Vec::with_capacity(declared as usize),
        limit: MAX_DECOMPRESSED,
    };
    let io = |e: std::io::Error| fail(e.to_string());
    match format {
        Compression::Gzip => {
            std::io::copy(&mut flate2::read::GzDecoder::new(stream), &mut out).map_err(io)?;
        }
        Compression::Bzip2 => {
            std::io::copy(&mut bzip2::read::BzDecoder::new(stream), &mut out).map_err(io)?;
        }
        Compression::Xz => {
            // lzma-rust2 runs the whole filter chain: Debian's generic kernels put the x86
            // BCJ filter before LZMA2 (lzma-rs knows no filter: "unknown filter id 4").
            std::io::copy(&mut lzma_rust2::XzReader::new(stream, true), &mut out).map_err(io)?;
        }
        Compression::Lzma => {
            lzma_rs::lzma_decompress(&mut std::io::BufReader::new(stream), &mut out)
                .map_err(|e| fail(e.to_string()))?;
        }
        Compression::Zstd => {
            let mut dec =
                ruzstd::decoding::StreamingDecoder::new(stream).map_err(|e| fail(e.to_string()))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = dec.read(&mut buf).map_err(io)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(io)?;
            }
        }
        Compression::Lz4Legacy => lz4_legacy(stream, &mut out).map_err(fail)?,
        Compression::Lzo => return Err(fail("lzo is not supported".into())),
    }
    if out.buf.len() as u64 != u64::from(declared) {
        return Err(fail(format!(
            "decompressed to {} bytes, the image declares {declared}",
            out.buf.len()
        )));
    }
    Ok(out.buf)
}

/// LZ4 legacy frame: magic, then blocks of (u32 LE compressed size, LZ4 block) each
/// decompressing to at most 8 MiB; a repeated magic starts a new frame.
fn lz4_legacy(stream: &[u8], out: &mut Limited) -> std::result::Result<(), String> {
    const MAGIC: u32 = 0x184C_2102;
    const BLOCK: usize = 8 << 20;
    let mut pos = 4usize;
    let mut block = vec![0u8; BLOCK];
    while pos < stream.len() {
        let size = u32_at(stream, pos).ok_or_else(|| format!("truncated block size at {pos}"))?;
        pos += 4;
        if size == MAGIC {
            continue;
        }
        let src = pos
            .checked_add(size as usize)
            .and_then(|end| stream.get(pos..end))
            .ok_or_else(|| format!("block of {size} bytes at {pos} runs past the payload"))?;
        let n = lz4_flex::block::decompress_into(src, &mut block)
            .map_err(|e| format!("block at {pos}: {e}"))?;
        out.write_all(&block[..n]).map_err(|e| e.to_string())?;
        pos += size as usize;
    }
    Ok(())
}

/// Returns the ELF image inside `data`: `data` itself if it is an ELF file, or the
/// decompressed payload of a bzImage.
pub fn vmlinux_from_image<'a>(data: &'a [u8], source: &str) -> Result<std::borrow::Cow<'a, [u8]>> {
    if data.starts_with(b"\x7fELF") {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    let bz = parse_bzimage(data, source)?;
    let elf = decompress_payload(bz.payload, source)?;
    if !elf.starts_with(b"\x7fELF") {
        return Err(ProfileError::KernelImage {
            source_name: source.to_owned(),
            what: "decompressed payload is not an ELF file".into(),
        });
    }
    Ok(std::borrow::Cow::Owned(elf))
}

/// A parsed vmlinux ELF.
pub struct Vmlinux<'a> {
    file: object::File<'a>,
    data: &'a [u8],
    source: String,
}

impl<'a> Vmlinux<'a> {
    /// Parses an ELF file. Trailing data (the relocation table after a decompressed
    /// `vmlinux.bin`) is ignored by the ELF reader.
    pub fn parse(data: &'a [u8], source: &str) -> Result<Self> {
        let file = object::File::parse(data).map_err(|e| ProfileError::Elf {
            source_name: source.to_owned(),
            what: format!("not a usable ELF file: {e}"),
        })?;
        Ok(Self {
            file,
            data,
            source: source.to_owned(),
        })
    }

    /// Contents of a section.
    pub fn section(&self, name: &str) -> Option<&'a [u8]> {
        self.file.section_by_name(name)?.data().ok()
    }

    /// Virtual address range of a section.
    pub fn section_range(&self, name: &str) -> Option<std::ops::Range<u64>> {
        let s = self.file.section_by_name(name)?;
        (s.address() != 0).then(|| s.address()..s.address().saturating_add(s.size()))
    }

    /// The `.BTF` section.
    pub fn btf(&self) -> Result<&'a [u8]> {
        self.section(".BTF").ok_or_else(|| ProfileError::Elf {
            source_name: self.source.clone(),
            what: "no .BTF section (kernel built without CONFIG_DEBUG_INFO_BTF?)".into(),
        })
    }

    /// The GNU build id from `.notes`/`.note.gnu.build-id`.
    pub fn build_id(&self) -> Option<Vec<u8>> {
        self.file.build_id().ok().flatten().map(<[u8]>::to_vec)
    }

    /// The `linux_banner` string: the first `Linux version ...` text that is a printed
    /// banner (has `#` for the build number and ends in a newline).
    pub fn banner(&self) -> Option<String> {
        let data = self.section(".rodata").unwrap_or(self.data);
        find_banner(data)
    }

    /// Allocated sections as (virtual address, bytes), for reading the image like memory.
    pub fn loaded_sections(&self) -> Vec<(u64, &'a [u8])> {
        self.file
            .sections()
            .filter(|s| s.address() != 0 && s.kind() != object::SectionKind::UninitializedData)
            .filter_map(|s| Some((s.address(), s.data().ok()?)))
            .filter(|(_, d)| !d.is_empty())
            .collect()
    }
}

/// Finds the printed Linux banner (`Linux version <release> ... #<build> ...\n`) in bytes.
/// Images also hold a copy without the build number (`# SMP`); the numbered one wins.
pub fn find_banner(data: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"Linux version ";
    let mut fallback = None;
    let mut from = 0;
    while let Some(rel) = data
        .get(from..)
        .unwrap_or_default()
        .windows(PREFIX.len())
        .position(|w| w == PREFIX)
    {
        let start = from + rel;
        let rest = &data[start..data.len().min(start + 1024)];
        if let Some(end) = rest.iter().position(|&b| b == 0) {
            let s = &rest[..end];
            if s.ends_with(b"\n")
                && !s.contains(&b'%')
                && let Ok(text) = std::str::from_utf8(s)
            {
                let numbered = s.windows(2).any(|w| w[0] == b'#' && w[1].is_ascii_digit());
                if numbered {
                    return Some(text.to_owned());
                }
                if s.contains(&b'#') && fallback.is_none() {
                    fallback = Some(text.to_owned());
                }
            }
        }
        from = start + PREFIX.len();
    }
    fallback
}

/// The release (`uname -r`) from a banner: the word after `Linux version `.
pub fn release_from_banner(banner: &str) -> Option<&str> {
    banner
        .strip_prefix("Linux version ")?
        .split_whitespace()
        .next()
}

/// Reads a file whole, with the path in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ProfileError::io(path, e))
}
