//! In-memory PE32+ parsing: headers, sections, exports, CodeView.
//!
//! The input is guest memory, so every offset and count is checked and bounded; a bad
//! field is a [`VmiError::Malformed`] naming it, never a panic.

use vmi_core::VmiError;

use crate::error::malformed;

/// Limits on what a header may claim.
const MAX_SECTIONS: usize = 96;
const MAX_EXPORTS: u32 = 0x1_0000;
const MAX_NAME: usize = 256;

/// A section header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeSection {
    /// Name (up to 8 bytes).
    pub name: String,
    /// RVA.
    pub rva: u32,
    /// Virtual size.
    pub size: u32,
    /// Characteristics.
    pub characteristics: u32,
    /// PointerToRawData (file layout).
    pub raw_offset: u32,
    /// SizeOfRawData (file layout).
    pub raw_size: u32,
}

/// A named export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeExport {
    /// Name.
    pub name: String,
    /// RVA of the function or variable.
    pub rva: u32,
}

/// The CodeView (RSDS) record: which PDB matches this image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeView {
    /// GUID in textual byte order (as printed and as symbol servers spell it).
    pub guid: [u8; 16],
    /// Age.
    pub age: u32,
    /// PDB file name.
    pub pdb_name: String,
}

impl CodeView {
    /// `<GUID>-<age>` as Volatility names ISF files.
    pub fn isf_key(&self) -> String {
        let g: String = self.guid.iter().map(|b| format!("{b:02X}")).collect();
        format!("{g}-{}", self.age)
    }

    /// Parses `RSDS` + GUID + age + NUL-terminated name.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.get(..4)? != b"RSDS" {
            return None;
        }
        let raw = b.get(4..20)?;
        let mut guid = [0u8; 16];
        guid[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
        guid[4..6].copy_from_slice(&[raw[5], raw[4]]);
        guid[6..8].copy_from_slice(&[raw[7], raw[6]]);
        guid[8..].copy_from_slice(&raw[8..16]);
        let age = u32::from_le_bytes(b.get(20..24)?.try_into().ok()?);
        let rest = b.get(24..)?;
        let end = rest.iter().take(MAX_NAME).position(|&c| c == 0)?;
        let pdb_name = std::str::from_utf8(&rest[..end]).ok()?.to_owned();
        Some(Self {
            guid,
            age,
            pdb_name,
        })
    }
}

/// What the headers of an in-memory image say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeImage {
    /// COFF machine.
    pub machine: u16,
    /// TimeDateStamp.
    pub timestamp: u32,
    /// ImageBase from the optional header.
    pub image_base: u64,
    /// SizeOfImage.
    pub size_of_image: u32,
    /// AddressOfEntryPoint.
    pub entry_point: u32,
    /// Major/minor OS version.
    pub os_version: (u16, u16),
    /// Subsystem.
    pub subsystem: u16,
    /// Sections.
    pub sections: Vec<PeSection>,
    /// Data directories (RVA, size); 16 at most.
    pub directories: Vec<(u32, u32)>,
}

fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, VmiError> {
    b.get(at..at + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .ok_or_else(|| malformed(what, at as u64, "truncated"))
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, VmiError> {
    b.get(at..at + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .ok_or_else(|| malformed(what, at as u64, "truncated"))
}

fn u64_at(b: &[u8], at: usize, what: &'static str) -> Result<u64, VmiError> {
    b.get(at..at + 8)
        .map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])))
        .ok_or_else(|| malformed(what, at as u64, "truncated"))
}

impl PeImage {
    /// Parses the headers (the first page of the image is enough for real images).
    pub fn parse(h: &[u8]) -> Result<Self, VmiError> {
        if h.get(..2) != Some(b"MZ") {
            return Err(malformed("PE DOS header", 0, "no MZ"));
        }
        let nt = u32_at(h, 0x3C, "PE e_lfanew")? as usize;
        if nt > 0x1000 || h.get(nt..nt + 4) != Some(b"PE\0\0") {
            return Err(malformed("PE NT headers", nt as u64, "no PE signature"));
        }
        let coff = nt + 4;
        let machine = u16_at(h, coff, "PE Machine")?;
        let nsec = u16_at(h, coff + 2, "PE NumberOfSections")? as usize;
        let timestamp = u32_at(h, coff + 4, "PE TimeDateStamp")?;
        let opt_size = u16_at(h, coff + 16, "PE SizeOfOptionalHeader")? as usize;
        let opt = coff + 20;
        let magic = u16_at(h, opt, "PE optional header magic")?;
        if magic != 0x20B {
            return Err(malformed(
                "PE optional header",
                opt as u64,
                format!("magic {magic:#x} is not PE32+"),
            ));
        }
        if nsec > MAX_SECTIONS {
            return Err(malformed(
                "PE NumberOfSections",
                coff as u64 + 2,
                format!("{nsec} sections"),
            ));
        }
        let ndirs = (u32_at(h, opt + 108, "PE NumberOfRvaAndSizes")? as usize).min(16);
        let mut directories = Vec::with_capacity(ndirs);
        for i in 0..ndirs {
            let at = opt + 112 + 8 * i;
            if at + 8 > opt + opt_size {
                break;
            }
            directories.push((
                u32_at(h, at, "PE data directory")?,
                u32_at(h, at + 4, "PE data directory")?,
            ));
        }
        let mut sections = Vec::with_capacity(nsec);
        let st = opt + opt_size;
        for i in 0..nsec {
            let s = st + 40 * i;
            let name = h
                .get(s..s + 8)
                .ok_or_else(|| malformed("PE section header", s as u64, "truncated"))?;
            let end = name.iter().position(|&c| c == 0).unwrap_or(8);
            sections.push(PeSection {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                size: u32_at(h, s + 8, "PE section VirtualSize")?,
                rva: u32_at(h, s + 12, "PE section VirtualAddress")?,
                characteristics: u32_at(h, s + 36, "PE section Characteristics")?,
                raw_size: u32_at(h, s + 16, "PE section SizeOfRawData")?,
                raw_offset: u32_at(h, s + 20, "PE section PointerToRawData")?,
            });
        }
        Ok(Self {
            machine,
            timestamp,
            image_base: u64_at(h, opt + 24, "PE ImageBase")?,
            size_of_image: u32_at(h, opt + 56, "PE SizeOfImage")?,
            entry_point: u32_at(h, opt + 16, "PE AddressOfEntryPoint")?,
            os_version: (
                u16_at(h, opt + 40, "PE OS version")?,
                u16_at(h, opt + 42, "PE OS version")?,
            ),
            subsystem: u16_at(h, opt + 68, "PE Subsystem")?,
            sections,
            directories,
        })
    }

    /// The file offset of `rva` in a file-layout image (through the section table).
    pub fn file_offset(&self, rva: u32) -> Option<u32> {
        self.sections.iter().find_map(|s| {
            let d = rva.checked_sub(s.rva)?;
            (d < s.raw_size.max(s.size))
                .then(|| s.raw_offset.checked_add(d))
                .flatten()
        })
    }

    /// The debug directory's CodeView record, read through `read(rva, len)`.
    pub fn codeview(
        &self,
        mut read: impl FnMut(u32, usize) -> Option<Vec<u8>>,
    ) -> Option<CodeView> {
        let &(rva, size) = self.directories.get(6)?;
        let n = (size / 28).min(32);
        for i in 0..n {
            let d = read(rva.checked_add(i * 28)?, 28)?;
            let ty = u32::from_le_bytes(d.get(12..16)?.try_into().ok()?);
            let len = u32::from_le_bytes(d.get(16..20)?.try_into().ok()?) as usize;
            let at = u32::from_le_bytes(d.get(20..24)?.try_into().ok()?);
            if ty == 2
                && (24..=24 + MAX_NAME).contains(&len)
                && let Some(cv) = read(at, len).and_then(|b| CodeView::parse(&b))
            {
                return Some(cv);
            }
        }
        None
    }

    /// Named exports, read through `read(rva, len)`; bounded by 65,536 names.
    pub fn exports(
        &self,
        mut read: impl FnMut(u32, usize) -> Option<Vec<u8>>,
    ) -> Result<Vec<PeExport>, VmiError> {
        let Some(&(rva, _)) = self.directories.first() else {
            return Ok(vec![]);
        };
        if rva == 0 {
            return Ok(vec![]);
        }
        let d = read(rva, 40)
            .ok_or_else(|| malformed("PE export directory", u64::from(rva), "unreadable"))?;
        let nfuncs = u32_at(&d, 20, "PE export NumberOfFunctions")?;
        let nnames = u32_at(&d, 24, "PE export NumberOfNames")?;
        if nfuncs > MAX_EXPORTS || nnames > MAX_EXPORTS {
            return Err(malformed(
                "PE export directory",
                u64::from(rva),
                format!("{nfuncs} functions, {nnames} names"),
            ));
        }
        let funcs = u32_at(&d, 28, "PE export AddressOfFunctions")?;
        let names = u32_at(&d, 32, "PE export AddressOfNames")?;
        let ords = u32_at(&d, 36, "PE export AddressOfNameOrdinals")?;
        let unreadable = |what| malformed(what, u64::from(rva), "unreadable");
        let ftab = read(funcs, nfuncs as usize * 4)
            .ok_or_else(|| unreadable("PE export address table"))?;
        let ntab =
            read(names, nnames as usize * 4).ok_or_else(|| unreadable("PE export name table"))?;
        let otab =
            read(ords, nnames as usize * 2).ok_or_else(|| unreadable("PE export ordinal table"))?;
        let mut out = Vec::with_capacity(nnames as usize);
        for i in 0..nnames as usize {
            let name_rva = u32_at(&ntab, 4 * i, "PE export name")?;
            let ord = u16_at(&otab, 2 * i, "PE export ordinal")? as usize;
            let Ok(f) = u32_at(&ftab, 4 * ord, "PE export function") else {
                continue;
            };
            let Some(raw) = read(name_rva, MAX_NAME) else {
                continue;
            };
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            out.push(PeExport {
                name: String::from_utf8_lossy(&raw[..end]).into_owned(),
                rva: f,
            });
        }
        Ok(out)
    }
}
