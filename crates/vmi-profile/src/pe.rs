//! PE CodeView records: the PDB name, GUID and age a PE image was linked with, which is
//! what a symbol server is asked for.
//!
//! Works on files as stored on disk ([`ImageLayout::File`], sections at their
//! `PointerToRawData`) and on images as the loader mapped them, such as bytes read out of
//! guest memory at a module's base ([`ImageLayout::Memory`], sections at their RVA).

use std::path::Path;

use object::LittleEndian as LE;
use object::pe;
use object::read::pe::ImageNtHeaders;

use crate::error::{ProfileError, Result};
use crate::image::read_file;
use crate::profile::PdbId;

/// Largest PDB path accepted in a CodeView record.
const MAX_PDB_PATH: usize = 4096;
/// Most debug directory entries looked at.
const MAX_DEBUG_ENTRIES: usize = 64;

/// How the bytes of a PE image are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    /// As a file on disk.
    File,
    /// As mapped by the loader (offset = RVA), e.g. read from guest memory.
    Memory,
}

/// A PE's CodeView (`RSDS`) record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeView {
    /// The PDB path recorded by the linker (often absolute, with backslashes).
    pub path: String,
    /// GUID and age.
    pub id: PdbId,
}

impl CodeView {
    /// The PDB's file name: the last component of [`path`](Self::path), either separator.
    pub fn pdb_name(&self) -> &str {
        self.path
            .rsplit(['\\', '/'])
            .next()
            .unwrap_or(self.path.as_str())
    }
}

/// GUID bytes as stored in a file (`Data1`..`Data3` little-endian) to the textual order of
/// [`PdbId::guid`].
pub fn guid_from_le(raw: [u8; 16]) -> [u8; 16] {
    let mut g = raw;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    g
}

/// Reads the CodeView record of a PE file.
pub fn codeview_from_file(path: &Path) -> Result<CodeView> {
    let bytes = read_file(path)?;
    codeview_from_image(&bytes, ImageLayout::File, &path.display().to_string())
}

/// Reads the CodeView record of PE bytes in the given layout; `source` names the input in
/// errors.
pub fn codeview_from_image(data: &[u8], layout: ImageLayout, source: &str) -> Result<CodeView> {
    let bad = |what: String| ProfileError::Pe {
        source_name: source.to_owned(),
        what,
    };
    let kind = object::FileKind::parse(data).map_err(|e| bad(format!("not a pe image: {e}")))?;
    let debug = match kind {
        object::FileKind::Pe32 => debug_directory::<pe::ImageNtHeaders32>(data),
        object::FileKind::Pe64 => debug_directory::<pe::ImageNtHeaders64>(data),
        other => return Err(bad(format!("not a pe image but {other:?}"))),
    }
    .map_err(|e| bad(e.to_owned()))?;
    let (dir_rva, dir_size, sections) = debug;
    let dir_off = match layout {
        ImageLayout::Memory => Some(u64::from(dir_rva)),
        ImageLayout::File => rva_to_offset(&sections, dir_rva),
    }
    .ok_or_else(|| bad(format!("debug directory rva {dir_rva:#x} is in no section")))?;
    let entry_size = std::mem::size_of::<pe::ImageDebugDirectory>();
    let count = (dir_size as usize / entry_size).min(MAX_DEBUG_ENTRIES);
    let mut found_other = Vec::new();
    for i in 0..count {
        let off = dir_off
            .checked_add((i * entry_size) as u64)
            .ok_or_else(|| bad("debug directory offset overflows".into()))?;
        let bytes = slice(data, off, entry_size as u64)
            .ok_or_else(|| bad(format!("debug directory entry {i} is outside the image")))?;
        let (entry, _) = object::pod::from_bytes::<pe::ImageDebugDirectory>(bytes)
            .map_err(|()| bad(format!("debug directory entry {i} is truncated")))?;
        let typ = entry.typ.get(LE);
        if typ != pe::IMAGE_DEBUG_TYPE_CODEVIEW {
            found_other.push(typ);
            continue;
        }
        let size = u64::from(entry.size_of_data.get(LE));
        let at = match layout {
            ImageLayout::File => u64::from(entry.pointer_to_raw_data.get(LE)),
            ImageLayout::Memory => u64::from(entry.address_of_raw_data.get(LE)),
        };
        let rec = slice(data, at, size).ok_or_else(|| {
            bad(format!(
                "codeview record at {at:#x}+{size:#x} is outside the image"
            ))
        })?;
        return parse_rsds(rec).map_err(|what| bad(format!("codeview record at {at:#x}: {what}")));
    }
    Err(bad(format!(
        "no codeview entry among {count} debug directory entries (types {found_other:?})"
    )))
}

/// Parses an `RSDS` CodeView record (signature, GUID, age, NUL-terminated PDB path).
pub fn parse_rsds(rec: &[u8]) -> std::result::Result<CodeView, String> {
    if rec.len() < 24 {
        return Err(format!(
            "{} bytes is too short for an RSDS record",
            rec.len()
        ));
    }
    if &rec[..4] != b"RSDS" {
        return Err(format!(
            "signature {:02x?} is not RSDS (NB10 and older are not supported)",
            &rec[..4]
        ));
    }
    let mut raw = [0u8; 16];
    raw.copy_from_slice(&rec[4..20]);
    let age = u32::from_le_bytes([rec[20], rec[21], rec[22], rec[23]]);
    let tail = &rec[24..];
    let end = tail
        .iter()
        .take(MAX_PDB_PATH)
        .position(|&b| b == 0)
        .ok_or("pdb path is not NUL-terminated within the record")?;
    let path = String::from_utf8_lossy(&tail[..end]).into_owned();
    if path.is_empty() {
        return Err("empty pdb path".into());
    }
    Ok(CodeView {
        path,
        id: PdbId {
            guid: guid_from_le(raw),
            age,
        },
    })
}

type Sections = Vec<(u32, u32, u32, u32)>;

/// Debug directory RVA and size, and (rva, virtual size, raw offset, raw size) per section.
fn debug_directory<H: ImageNtHeaders>(
    data: &[u8],
) -> std::result::Result<(u32, u32, Sections), &'static str> {
    let dos = pe::ImageDosHeader::parse(data).map_err(|_| "bad dos header")?;
    let mut offset = dos.nt_headers_offset().into();
    let (nt, dirs) = H::parse(data, &mut offset).map_err(|_| "bad nt headers")?;
    let sections = nt
        .sections(data, offset)
        .map_err(|_| "bad section table")?
        .iter()
        .map(|s| {
            (
                s.virtual_address.get(LE),
                s.virtual_size.get(LE),
                s.pointer_to_raw_data.get(LE),
                s.size_of_raw_data.get(LE),
            )
        })
        .collect();
    let dir = dirs
        .get(pe::IMAGE_DIRECTORY_ENTRY_DEBUG)
        .filter(|d| d.size.get(LE) != 0)
        .ok_or("no debug directory")?;
    Ok((dir.virtual_address.get(LE), dir.size.get(LE), sections))
}

fn rva_to_offset(sections: &Sections, rva: u32) -> Option<u64> {
    sections.iter().find_map(|&(va, vsize, raw, rsize)| {
        let delta = rva.checked_sub(va)?;
        (delta < vsize.max(rsize)).then(|| u64::from(raw) + u64::from(delta))
    })
}

fn slice(data: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(off).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}
