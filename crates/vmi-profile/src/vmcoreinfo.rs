//! VMCOREINFO: the `KEY=VALUE` text the kernel keeps for crash tools (`vmcoreinfo_data`,
//! one page, also in the `VMCOREINFO` ELF note of dumps).
//!
//! Value formats (kernel `vmcore_info.h` macros): `SYMBOL(name)=<hex>`, `OFFSET(s.f)=<dec>`,
//! `SIZE(s)=<dec>`, `LENGTH(x)=<dec>`, `NUMBER(x)=<dec, may be negative>` (a few arches
//! print `0x` hex), `KERNELOFFSET=<hex>`, `PAGESIZE=<dec>`, `OSRELEASE=`, `BUILD-ID=<hex>`,
//! `CRASHTIME=<dec>`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ProfileError, Result};

/// Longest VMCOREINFO text accepted (the kernel's buffer is one page).
pub const MAX_VMCOREINFO: usize = 64 << 10;

/// Parsed VMCOREINFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmcoreInfo {
    /// `OSRELEASE`: the kernel release.
    pub osrelease: Option<String>,
    /// `BUILD-ID`: the kernel's GNU build id.
    pub build_id: Option<Vec<u8>>,
    /// `PAGESIZE`.
    pub page_size: Option<u64>,
    /// `KERNELOFFSET`: the KASLR slide of the kernel's virtual addresses.
    pub kernel_offset: Option<u64>,
    /// `CRASHTIME` (only in notes written at crash time).
    pub crash_time: Option<u64>,
    /// `SYMBOL(name)`: run-time (already slid) addresses.
    pub symbols: BTreeMap<String, u64>,
    /// `NUMBER(name)`.
    pub numbers: BTreeMap<String, i64>,
    /// `OFFSET(struct.field)`, keyed `struct.field`.
    pub offsets: BTreeMap<String, u64>,
    /// `SIZE(type)`.
    pub sizes: BTreeMap<String, u64>,
    /// `LENGTH(name)`.
    pub lengths: BTreeMap<String, u64>,
    /// Any other `KEY=VALUE` line, verbatim.
    pub other: BTreeMap<String, String>,
}

/// Longest `BUILD-ID` accepted, in bytes (GNU build ids are 20 bytes of SHA-1).
const MAX_BUILD_ID: usize = 64;

/// Strict hex digits to a number: ASCII `0-9a-fA-F` only (no sign, no spaces, no `_`), at
/// most 16 digits.
fn hex_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 16 {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        Some((acc << 4) | u64::from((b as char).to_digit(16)?))
    })
}

/// Strict decimal digits: ASCII `0-9` only, no sign, no overflow.
fn dec_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

/// `NUMBER(x)` values: decimal, possibly negative, or `0x` hex (printed by a few arches);
/// values above `i64::MAX` are kept as their two's-complement bits (the kernel prints some
/// addresses through `%ld`/`%lu`).
fn parse_dec(v: &[u8]) -> Option<i64> {
    if let Some(h) = v.strip_prefix(b"0x") {
        return hex_digits(h).map(|x| x as i64);
    }
    if let Some(d) = v.strip_prefix(b"-") {
        let m = dec_digits(d)?;
        return 0i64.checked_sub_unsigned(m);
    }
    dec_digits(v).map(|x| x as i64)
}

fn parse_hex(v: &[u8]) -> Option<u64> {
    hex_digits(v.strip_prefix(b"0x").unwrap_or(v))
}

/// Strict hex decoding of a build id: an even number of ASCII hex digits, at most
/// [`MAX_BUILD_ID`] bytes.
fn parse_build_id(v: &[u8]) -> Option<Vec<u8>> {
    if v.is_empty() || !v.len().is_multiple_of(2) || v.len() / 2 > MAX_BUILD_ID {
        return None;
    }
    v.chunks_exact(2)
        .map(|p| hex_digits(p).map(|x| x as u8))
        .collect()
}

fn paren<'a>(key: &'a [u8], tag: &[u8]) -> Option<&'a [u8]> {
    key.strip_prefix(tag)?
        .strip_prefix(b"(")?
        .strip_suffix(b")")
}

/// A guest-supplied byte string for an error message: lossy and bounded.
fn shown(v: &[u8]) -> String {
    let s = String::from_utf8_lossy(&v[..v.len().min(80)]);
    if v.len() > 80 {
        format!("{s:?}…")
    } else {
        format!("{s:?}")
    }
}

/// A key or value that is kept as text: UTF-8 or an error.
fn utf8<'a>(v: &'a [u8], what: &str) -> std::result::Result<&'a str, String> {
    std::str::from_utf8(v).map_err(|_| format!("{what} is not UTF-8: {}", shown(v)))
}

impl VmcoreInfo {
    /// Parses VMCOREINFO text. Parsing stops at the first NUL (the buffer's padding); a line
    /// without `=`, with a malformed number or with non-UTF-8 text is an error naming the
    /// line. The parser works on bytes: guest text is never sliced at a char boundary it
    /// did not check, and numbers and build ids accept ASCII digits only.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        if end > MAX_VMCOREINFO {
            return Err(ProfileError::TooLarge {
                source_name: "vmcoreinfo".into(),
                what: "vmcoreinfo text",
                size: end as u64,
                limit: MAX_VMCOREINFO as u64,
            });
        }
        let mut info = VmcoreInfo::default();
        for (i, line) in text[..end].split(|&b| b == b'\n').enumerate() {
            let line_no = i + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                continue;
            }
            let bad = |what: String| ProfileError::Vmcoreinfo {
                line: line_no,
                what,
            };
            let eq = line
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(|| bad(format!("no '=' in {}", shown(line))))?;
            let (key, value) = (&line[..eq], &line[eq + 1..]);
            let num =
                |v: &[u8]| parse_dec(v).ok_or_else(|| bad(format!("bad number {}", shown(v))));
            let unum = |v: &[u8]| {
                dec_digits(v).ok_or_else(|| bad(format!("bad unsigned number {}", shown(v))))
            };
            let hex =
                |v: &[u8]| parse_hex(v).ok_or_else(|| bad(format!("bad hex value {}", shown(v))));
            let name = |k: &[u8]| utf8(k, "key").map(str::to_owned).map_err(bad);
            if let Some(k) = paren(key, b"SYMBOL") {
                info.symbols.insert(name(k)?, hex(value)?);
            } else if let Some(k) = paren(key, b"NUMBER") {
                info.numbers.insert(name(k)?, num(value)?);
            } else if let Some(k) = paren(key, b"OFFSET") {
                info.offsets.insert(name(k)?, unum(value)?);
            } else if let Some(k) = paren(key, b"SIZE") {
                info.sizes.insert(name(k)?, unum(value)?);
            } else if let Some(k) = paren(key, b"LENGTH") {
                info.lengths.insert(name(k)?, unum(value)?);
            } else {
                match key {
                    b"OSRELEASE" => {
                        info.osrelease = Some(utf8(value, "OSRELEASE").map_err(bad)?.to_owned())
                    }
                    b"PAGESIZE" => info.page_size = Some(unum(value)?),
                    b"KERNELOFFSET" => info.kernel_offset = Some(hex(value)?),
                    b"CRASHTIME" => info.crash_time = Some(unum(value)?),
                    b"BUILD-ID" => {
                        info.build_id = Some(
                            parse_build_id(value)
                                .ok_or_else(|| bad(format!("bad build id {}", shown(value))))?,
                        );
                    }
                    _ => {
                        let k = name(key)?;
                        let v = utf8(value, "value").map_err(bad)?.to_owned();
                        info.other.insert(k, v);
                    }
                }
            }
        }
        Ok(info)
    }

    /// Finds VMCOREINFO text in raw memory (a RAM file, a dump segment): the first block that
    /// starts with `OSRELEASE=` and contains `KERNELOFFSET=`. Returns its offset and parse.
    pub fn find(haystack: &[u8]) -> Option<(usize, VmcoreInfo)> {
        const KEY: &[u8] = b"OSRELEASE=";
        let mut from = 0;
        while let Some(rel) = haystack
            .get(from..)?
            .windows(KEY.len())
            .position(|w| w == KEY)
        {
            let start = from + rel;
            let block = &haystack[start..haystack.len().min(start + 4096)];
            let end = block.iter().position(|&b| b == 0).unwrap_or(block.len());
            let block = &block[..end];
            if block.windows(13).any(|w| w == b"KERNELOFFSET=")
                && let Ok(info) = VmcoreInfo::parse(block)
            {
                return Some((start, info));
            }
            from = start + KEY.len();
        }
        None
    }

    /// `SYMBOL(name)`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.get(name).copied()
    }

    /// `NUMBER(name)`.
    pub fn number(&self, name: &str) -> Option<i64> {
        self.numbers.get(name).copied()
    }

    /// `OFFSET(struct.field)`.
    pub fn offset(&self, structure: &str, field: &str) -> Option<u64> {
        self.offsets.get(&format!("{structure}.{field}")).copied()
    }

    /// `SIZE(name)`.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.sizes.get(name).copied()
    }

    /// `NUMBER(phys_base)` as an address (it may be printed negative).
    pub fn phys_base(&self) -> Option<u64> {
        self.number("phys_base").map(|v| v as u64)
    }

    /// `NUMBER(pgtable_l5_enabled)`.
    pub fn pgtable_l5_enabled(&self) -> Option<bool> {
        self.number("pgtable_l5_enabled").map(|v| v != 0)
    }
}
