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

fn parse_dec(v: &str) -> Option<i64> {
    if let Some(h) = v.strip_prefix("0x") {
        return u64::from_str_radix(h, 16).ok().map(|x| x as i64);
    }
    v.parse::<i64>()
        .ok()
        .or_else(|| v.parse::<u64>().ok().map(|x| x as i64))
}

fn parse_hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v.strip_prefix("0x").unwrap_or(v), 16).ok()
}

fn paren<'a>(key: &'a str, tag: &str) -> Option<&'a str> {
    key.strip_prefix(tag)?.strip_prefix('(')?.strip_suffix(')')
}

impl VmcoreInfo {
    /// Parses VMCOREINFO text. Parsing stops at the first NUL (the buffer's padding); a line
    /// without `=` or with a malformed number is an error naming the line.
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
        let text = std::str::from_utf8(&text[..end]).map_err(|e| ProfileError::Vmcoreinfo {
            line: text[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1,
            what: "not UTF-8".into(),
        })?;
        let mut info = VmcoreInfo::default();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                continue;
            }
            let bad = |what: String| ProfileError::Vmcoreinfo {
                line: line_no,
                what,
            };
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("no '=' in {line:?}")))?;
            let num = |v: &str| parse_dec(v).ok_or_else(|| bad(format!("bad number {v:?}")));
            let unum = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| bad(format!("bad unsigned number {v:?}")))
            };
            let hex = |v: &str| parse_hex(v).ok_or_else(|| bad(format!("bad hex value {v:?}")));
            if let Some(name) = paren(key, "SYMBOL") {
                info.symbols.insert(name.to_owned(), hex(value)?);
            } else if let Some(name) = paren(key, "NUMBER") {
                info.numbers.insert(name.to_owned(), num(value)?);
            } else if let Some(name) = paren(key, "OFFSET") {
                info.offsets.insert(name.to_owned(), unum(value)?);
            } else if let Some(name) = paren(key, "SIZE") {
                info.sizes.insert(name.to_owned(), unum(value)?);
            } else if let Some(name) = paren(key, "LENGTH") {
                info.lengths.insert(name.to_owned(), unum(value)?);
            } else {
                match key {
                    "OSRELEASE" => info.osrelease = Some(value.to_owned()),
                    "PAGESIZE" => info.page_size = Some(unum(value)?),
                    "KERNELOFFSET" => info.kernel_offset = Some(hex(value)?),
                    "CRASHTIME" => info.crash_time = Some(unum(value)?),
                    "BUILD-ID" => {
                        if value.len() % 2 != 0 || value.len() > 128 {
                            return Err(bad(format!("bad build id {value:?}")));
                        }
                        let bytes = (0..value.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&value[i..i + 2], 16))
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(|_| bad(format!("bad build id {value:?}")))?;
                        info.build_id = Some(bytes);
                    }
                    _ => {
                        info.other.insert(key.to_owned(), value.to_owned());
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
