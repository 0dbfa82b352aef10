//! kallsyms decoded from guest memory (or from a kernel image read like memory).
//!
//! Table facts (kernel `scripts/kallsyms.c`, `kernel/kallsyms.c`):
//!
//! * `kallsyms_num_syms`: symbol count (`.long`; a `.quad` on old 64-bit kernels — the low
//!   32 bits are read either way).
//! * `kallsyms_names`: per symbol a length byte (since 6.1: if bit 7 is set, a second byte
//!   gives `len = (b0 & 0x7f) | b1 << 7`), then `len` token indices. Expanding the tokens
//!   through `kallsyms_token_index` (256 × u16 offsets) into `kallsyms_token_table`
//!   (NUL-terminated strings) gives the type letter followed by the name.
//! * `kallsyms_markers`: offset into `kallsyms_names` of every 256th symbol.
//! * Addresses, four encodings over time:
//!   * [`AddressEncoding::Absolute`]: `kallsyms_addresses`, one `unsigned long` per symbol
//!     (before 4.6, or without `KALLSYMS_BASE_RELATIVE`).
//!   * [`AddressEncoding::AbsolutePercpu`]: `kallsyms_offsets` (s32) + `kallsyms_relative_base`;
//!     `off >= 0` is an absolute (per-cpu) address, else `relative_base - 1 - off`
//!     (x86-64 SMP from 4.6 until `KALLSYMS_ABSOLUTE_PERCPU` was removed in 6.15: covers
//!     6.1 and 6.12).
//!   * [`AddressEncoding::BaseRelative`]: `relative_base + (u32)off` (6.15+, and other arches).
//!   * [`AddressEncoding::PlaceRelative`]: `&kallsyms_offsets[i] + (s32)off`, no
//!     `kallsyms_relative_base` any more (7.0+).
//! * Order of the tables in `.rodata`: before 6.4 `addresses|offsets, relative_base,
//!   num_syms, names, markers, token_table, token_index`; since 6.4 `num_syms, names, markers,
//!   token_table, token_index, offsets, relative_base, seqs_of_names` (6.2 added
//!   `kallsyms_seqs_of_names`, a name-sorted index this decoder does not need).
//!
//! VMCOREINFO lists `kallsyms_names`, `_num_syms`, `_token_table`, `_token_index`, `_offsets`
//! and `_relative_base` since 6.0: [`from_vmcoreinfo`]. Older kernels: [`search`] finds the
//! tables by their structure and validates them by decoding.
//!
//! The encoding is chosen by checking known addresses (`_stext` from VMCOREINFO) when
//! given, otherwise by the sign pattern of the offsets; the result must be sorted by address
//! like the kernel's table.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{MemoryError, ProfileError, Result};
use crate::symbols::{Symbol, SymbolTable};
use crate::vmcoreinfo::VmcoreInfo;

/// Most symbols accepted (real x86-64 kernels: ~90k–250k).
pub const MAX_SYMS: u32 = 2_000_000;
/// Largest `kallsyms_names` area accepted.
pub const MAX_NAMES_BYTES: u64 = 64 << 20;
/// Longest expanded symbol name accepted (the kernel's KSYM_NAME_LEN is 512).
pub const MAX_NAME_LEN: usize = 1024;
/// Largest range [`search`] scans.
pub const MAX_SEARCH_RANGE: u64 = 1 << 30;

const CHUNK: usize = 64 << 10;

/// Reads kernel virtual memory. The one method a memory backend implements to let this crate
/// decode kallsyms or read BTF out of a guest.
pub trait KernelMemory {
    /// Fills `buf` from virtual address `va`; a partial read is an error.
    fn read(&self, va: u64, buf: &mut [u8]) -> std::result::Result<(), MemoryError>;
}

impl<T: KernelMemory + ?Sized> KernelMemory for &T {
    fn read(&self, va: u64, buf: &mut [u8]) -> std::result::Result<(), MemoryError> {
        (**self).read(va, buf)
    }
}

/// Kernel memory made of byte slices at virtual addresses (a vmlinux's sections, a test
/// image). Reads may span adjacent segments.
#[derive(Clone, Debug, Default)]
pub struct ImageMemory<'a> {
    segments: Vec<(u64, &'a [u8])>,
}

impl<'a> ImageMemory<'a> {
    /// Memory from (virtual address, bytes) segments.
    pub fn new(mut segments: Vec<(u64, &'a [u8])>) -> Self {
        segments.sort_by_key(|s| s.0);
        Self { segments }
    }

    /// The lowest and one-past-highest mapped addresses.
    pub fn extent(&self) -> Option<Range<u64>> {
        let start = self.segments.first()?.0;
        let end = self
            .segments
            .iter()
            .map(|(a, d)| a.saturating_add(d.len() as u64))
            .max()?;
        Some(start..end)
    }
}

impl KernelMemory for ImageMemory<'_> {
    fn read(&self, va: u64, buf: &mut [u8]) -> std::result::Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = va.checked_add(done as u64).ok_or("address overflows")?;
            let seg = self
                .segments
                .iter()
                .find(|(base, data)| at >= *base && at - *base < data.len() as u64)
                .ok_or_else(|| format!("{at:#x} is not mapped"))?;
            let off = (at - seg.0) as usize;
            let n = (seg.1.len() - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&seg.1[off..off + n]);
            done += n;
        }
        Ok(())
    }
}

fn read_mem(mem: &dyn KernelMemory, va: u64, buf: &mut [u8]) -> Result<()> {
    mem.read(va, buf)
        .map_err(|source| ProfileError::MemoryRead {
            va,
            len: buf.len(),
            source,
        })
}

fn read_u64(mem: &dyn KernelMemory, va: u64) -> Result<u64> {
    let mut b = [0u8; 8];
    read_mem(mem, va, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(mem: &dyn KernelMemory, va: u64) -> Result<u32> {
    let mut b = [0u8; 4];
    read_mem(mem, va, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Sequential reader over guest memory in bounded chunks.
struct Chunked<'m> {
    mem: &'m dyn KernelMemory,
    base: u64,
    limit: u64,
    buf: Vec<u8>,
    buf_off: u64,
}

impl<'m> Chunked<'m> {
    fn new(mem: &'m dyn KernelMemory, base: u64, limit: u64) -> Self {
        Self {
            mem,
            base,
            limit,
            buf: Vec::new(),
            buf_off: 0,
        }
    }

    /// Bytes `off..off+len` relative to the base.
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8]> {
        let end = off
            .checked_add(len as u64)
            .filter(|&e| e <= self.limit)
            .ok_or_else(|| {
                ProfileError::kallsyms(format!(
                    "table at {:#x} runs past its {:#x}-byte bound",
                    self.base, self.limit
                ))
            })?;
        let have = self.buf_off..self.buf_off + self.buf.len() as u64;
        if off < have.start || end > have.end {
            let want = (len.max(CHUNK) as u64).min(self.limit - off) as usize;
            let va = self.base.wrapping_add(off);
            let mut buf = vec![0u8; want];
            if self.mem.read(va, &mut buf).is_err() {
                // The chunk may run into unmapped memory; the exact request must not.
                buf.truncate(len);
                read_mem(self.mem, va, &mut buf)?;
            }
            self.buf = buf;
            self.buf_off = off;
        }
        let s = (off - self.buf_off) as usize;
        Ok(&self.buf[s..s + len])
    }
}

/// How `kallsyms_offsets`/`kallsyms_addresses` encode addresses, see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddressEncoding {
    /// `kallsyms_addresses`: absolute 64-bit addresses.
    Absolute,
    /// s32 offsets; non-negative are absolute, negative are `relative_base - 1 - off`.
    AbsolutePercpu,
    /// `relative_base + (u32)off`.
    BaseRelative,
    /// `&kallsyms_offsets[i] + (s32)off`.
    PlaceRelative,
}

/// Addresses of the kallsyms tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KallsymsTables {
    /// `kallsyms_num_syms`.
    pub num_syms: u64,
    /// `kallsyms_names`.
    pub names: u64,
    /// `kallsyms_token_table`.
    pub token_table: u64,
    /// `kallsyms_token_index`.
    pub token_index: u64,
    /// `kallsyms_markers`, if known (only used for validation).
    pub markers: Option<u64>,
    /// `kallsyms_offsets`.
    pub offsets: Option<u64>,
    /// `kallsyms_relative_base`.
    pub relative_base: Option<u64>,
    /// `kallsyms_addresses`.
    pub addresses: Option<u64>,
}

impl KallsymsTables {
    /// The table addresses VMCOREINFO lists on 6.0+ kernels.
    pub fn from_vmcoreinfo(info: &VmcoreInfo) -> Result<Self> {
        let need = |n: &str| {
            info.symbol(n).ok_or_else(|| {
                ProfileError::kallsyms(format!(
                    "vmcoreinfo has no SYMBOL({n}) (kernel older than 6.0? use kallsyms::search)"
                ))
            })
        };
        let t = Self {
            num_syms: need("kallsyms_num_syms")?,
            names: need("kallsyms_names")?,
            token_table: need("kallsyms_token_table")?,
            token_index: need("kallsyms_token_index")?,
            markers: info.symbol("kallsyms_markers"),
            offsets: info.symbol("kallsyms_offsets"),
            relative_base: info.symbol("kallsyms_relative_base"),
            addresses: info.symbol("kallsyms_addresses"),
        };
        if t.offsets.is_none() && t.addresses.is_none() {
            return Err(ProfileError::kallsyms(
                "vmcoreinfo lists neither kallsyms_offsets nor kallsyms_addresses",
            ));
        }
        Ok(t)
    }
}

/// Decoded kallsyms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kallsyms {
    /// Symbols in table order (sorted by address), with their type letters.
    pub symbols: Vec<Symbol>,
    /// The address encoding found.
    pub encoding: AddressEncoding,
    /// Where the tables are.
    pub tables: KallsymsTables,
}

impl Kallsyms {
    /// The address of the first symbol named `name`.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.symbols
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.address)
    }

    /// Into a profile symbol table.
    pub fn into_table(self) -> SymbolTable {
        SymbolTable::new(self.symbols)
    }
}

/// Token strings from the token table/index.
fn decode_tokens(mem: &dyn KernelMemory, table: u64, index: u64) -> Result<Vec<Vec<u8>>> {
    let mut raw = [0u8; 512];
    read_mem(mem, index, &mut raw)?;
    let idx: Vec<usize> = raw
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    if idx[0] != 0 || idx.windows(2).any(|w| w[1] <= w[0]) {
        return Err(ProfileError::kallsyms(format!(
            "token index at {index:#x} is not strictly increasing from 0"
        )));
    }
    let last = idx[255];
    // The last token is short; try generous lengths first, then tighter ones near a mapping end.
    let mut bytes = Vec::new();
    for extra in [256usize, 64, 16] {
        let mut b = vec![0u8; last + extra];
        if mem.read(table, &mut b).is_ok() {
            bytes = b;
            break;
        }
    }
    if bytes.is_empty() {
        bytes = vec![0u8; last + 2];
        read_mem(mem, table, &mut bytes)?;
    }
    let mut tokens = Vec::with_capacity(256);
    for (i, &start) in idx.iter().enumerate() {
        let bound = idx.get(i + 1).copied().unwrap_or(bytes.len());
        let t = &bytes[start..bound];
        let len = t.iter().position(|&b| b == 0).ok_or_else(|| {
            ProfileError::kallsyms(format!("token {i} at {table:#x}+{start} is not terminated"))
        })?;
        tokens.push(t[..len].to_vec());
    }
    Ok(tokens)
}

struct Names {
    /// (type letter, name) per symbol.
    entries: Vec<(char, String)>,
    /// Offsets of every 256th entry (what `kallsyms_markers` holds).
    markers: Vec<u64>,
    /// Bytes consumed.
    len: u64,
}

fn decode_names(
    mem: &dyn KernelMemory,
    names: u64,
    num: u32,
    tokens: &[Vec<u8>],
    limit: u64,
) -> Result<Names> {
    let mut rd = Chunked::new(mem, names, limit.min(MAX_NAMES_BYTES));
    let mut off = 0u64;
    let mut entries = Vec::with_capacity(num as usize);
    let mut markers = Vec::with_capacity(num as usize / 256 + 1);
    let mut buf = Vec::with_capacity(64);
    for i in 0..num {
        if i % 256 == 0 {
            markers.push(off);
        }
        let b0 = rd.get(off, 1)?[0];
        off += 1;
        let mut len = usize::from(b0);
        if b0 & 0x80 != 0 {
            let b1 = rd.get(off, 1)?[0];
            off += 1;
            len = usize::from(b0 & 0x7f) | (usize::from(b1) << 7);
        }
        if len == 0 {
            return Err(ProfileError::kallsyms(format!(
                "symbol {i} at names+{off:#x} has length 0"
            )));
        }
        buf.clear();
        for &t in rd.get(off, len)? {
            buf.extend_from_slice(&tokens[usize::from(t)]);
            if buf.len() > MAX_NAME_LEN {
                return Err(ProfileError::kallsyms(format!(
                    "symbol {i} expands past {MAX_NAME_LEN} bytes"
                )));
            }
        }
        off += len as u64;
        let (&kind, name) = buf
            .split_first()
            .ok_or_else(|| ProfileError::kallsyms(format!("symbol {i} expands to nothing")))?;
        if !kind.is_ascii_alphabetic()
            || name.is_empty()
            || !name.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(ProfileError::kallsyms(format!(
                "symbol {i} at names+{off:#x} does not decode to a type letter and a name"
            )));
        }
        // All bytes are ASCII graphic, so this is valid UTF-8.
        entries.push((kind as char, String::from_utf8_lossy(name).into_owned()));
    }
    Ok(Names {
        entries,
        markers,
        len: off,
    })
}

fn read_array(mem: &dyn KernelMemory, va: u64, count: u32, width: usize) -> Result<Vec<u8>> {
    let total = (count as usize)
        .checked_mul(width)
        .ok_or_else(|| ProfileError::kallsyms("address table size overflows"))?;
    let mut out = vec![0u8; total];
    for (i, chunk) in out.chunks_mut(CHUNK).enumerate() {
        read_mem(mem, va.wrapping_add((i * CHUNK) as u64), chunk)?;
    }
    Ok(out)
}

fn addresses(
    mem: &dyn KernelMemory,
    tables: &KallsymsTables,
    num: u32,
    enc: AddressEncoding,
) -> Result<Vec<u64>> {
    let missing = |what: &str| ProfileError::kallsyms(format!("{enc:?} needs {what}"));
    Ok(match enc {
        AddressEncoding::Absolute => {
            let va = tables
                .addresses
                .ok_or_else(|| missing("kallsyms_addresses"))?;
            read_array(mem, va, num, 8)?
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect()
        }
        _ => {
            let va = tables.offsets.ok_or_else(|| missing("kallsyms_offsets"))?;
            let offs = read_array(mem, va, num, 4)?;
            let offs = offs
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()));
            match enc {
                AddressEncoding::PlaceRelative => offs
                    .enumerate()
                    .map(|(i, o)| {
                        va.wrapping_add(4 * i as u64)
                            .wrapping_add(i64::from(o) as u64)
                    })
                    .collect(),
                _ => {
                    let base_va = tables
                        .relative_base
                        .ok_or_else(|| missing("kallsyms_relative_base"))?;
                    let base = read_u64(mem, base_va)?;
                    offs.map(|o| match enc {
                        AddressEncoding::AbsolutePercpu if o >= 0 => o as u64,
                        AddressEncoding::AbsolutePercpu => {
                            base.wrapping_sub(1).wrapping_sub(i64::from(o) as u64)
                        }
                        _ => base.wrapping_add(u64::from(o as u32)),
                    })
                    .collect()
                }
            }
        }
    })
}

/// Candidate encodings for the tables present, most likely first.
fn candidates(mem: &dyn KernelMemory, tables: &KallsymsTables, num: u32) -> Vec<AddressEncoding> {
    let mut c = Vec::new();
    if tables.offsets.is_some() {
        if tables.relative_base.is_some() {
            // In the absolute-percpu encoding ordinary symbols are negative; base-relative
            // offsets of a kernel image (< 2 GiB) are all non-negative.
            let negative = tables
                .offsets
                .and_then(|va| read_array(mem, va, num.min(4096), 4).ok())
                .map(|b| {
                    b.chunks_exact(4)
                        .filter(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) < 0)
                        .count()
                })
                .unwrap_or(0);
            if negative * 2 > num.min(4096) as usize {
                c.extend([
                    AddressEncoding::AbsolutePercpu,
                    AddressEncoding::BaseRelative,
                ]);
            } else {
                c.extend([
                    AddressEncoding::BaseRelative,
                    AddressEncoding::AbsolutePercpu,
                ]);
            }
        }
        c.push(AddressEncoding::PlaceRelative);
    }
    if tables.addresses.is_some() {
        c.push(AddressEncoding::Absolute);
    }
    c
}

/// Share of adjacent pairs out of address order the decoder tolerates (none in real tables).
fn sorted_enough(addrs: &[u64]) -> bool {
    addrs.windows(2).all(|w| w[0] <= w[1])
}

fn num_syms(mem: &dyn KernelMemory, va: u64) -> Result<u32> {
    let num = read_u32(mem, va)?;
    if num == 0 || num > MAX_SYMS {
        return Err(ProfileError::kallsyms(format!(
            "kallsyms_num_syms at {va:#x} is {num}, outside 1..={MAX_SYMS}"
        )));
    }
    Ok(num)
}

/// Decodes kallsyms from known table addresses.
///
/// `expect` lists known (name, address) pairs: the first candidate encoding that gives all
/// of them (those present in the table; for a name present more than once, one of its
/// entries) wins. With no expectation, the sign pattern of the
/// offsets decides. Either way the addresses must come out sorted, like the kernel's table.
pub fn decode(
    mem: &dyn KernelMemory,
    tables: &KallsymsTables,
    encoding: Option<AddressEncoding>,
    expect: &[(&str, u64)],
) -> Result<Kallsyms> {
    let num = num_syms(mem, tables.num_syms)?;
    let tokens = decode_tokens(mem, tables.token_table, tables.token_index)?;
    let names = decode_names(mem, tables.names, num, &tokens, MAX_NAMES_BYTES)?;
    if let Some(m) = tables.markers {
        check_markers(mem, m, &names.markers)?;
    }
    finish(mem, tables, num, names, encoding, expect)
}

fn check_markers(mem: &dyn KernelMemory, va: u64, expected: &[u64]) -> Result<()> {
    for width in [4usize, 8] {
        let Ok(raw) = read_array(mem, va, expected.len() as u32, width) else {
            continue;
        };
        let ok = raw.chunks_exact(width).zip(expected).all(|(c, &e)| {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(c);
            u64::from_le_bytes(b) == e
        });
        if ok {
            return Ok(());
        }
    }
    Err(ProfileError::kallsyms(format!(
        "kallsyms_markers at {va:#x} disagree with the decoded names"
    )))
}

fn finish(
    mem: &dyn KernelMemory,
    tables: &KallsymsTables,
    num: u32,
    names: Names,
    encoding: Option<AddressEncoding>,
    expect: &[(&str, u64)],
) -> Result<Kallsyms> {
    let order = match encoding {
        Some(e) => vec![e],
        None => candidates(mem, tables, num),
    };
    let mut last_problem = String::from("no address table");
    for enc in order {
        let addrs = match addresses(mem, tables, num, enc) {
            Ok(a) => a,
            Err(e) => {
                last_problem = e.to_string();
                continue;
            }
        };
        // A name may appear more than once (static symbols of different files): one of
        // them must be at the expected address.
        let mismatch = expect.iter().find_map(|&(name, want)| {
            let mut found = names
                .entries
                .iter()
                .zip(&addrs)
                .filter(|((_, n), _)| n == name)
                .map(|(_, &a)| a)
                .peekable();
            let first = *found.peek()?;
            (!found.any(|a| a == want))
                .then(|| format!("{enc:?} puts {name} at {first:#x}, expected {want:#x}"))
        });
        if let Some(m) = mismatch {
            last_problem = m;
            continue;
        }
        if !sorted_enough(&addrs) {
            last_problem = format!("{enc:?} gives addresses out of order");
            continue;
        }
        let symbols = names
            .entries
            .into_iter()
            .zip(addrs)
            .map(|((kind, name), address)| Symbol {
                name,
                address,
                kind: Some(kind),
            })
            .collect();
        return Ok(Kallsyms {
            symbols,
            encoding: enc,
            tables: *tables,
        });
    }
    Err(ProfileError::kallsyms(format!(
        "no address encoding fits: {last_problem}"
    )))
}

/// Decodes kallsyms through the table addresses in VMCOREINFO (Linux 6.0+), checking the
/// result against `SYMBOL(_stext)`.
pub fn from_vmcoreinfo(mem: &dyn KernelMemory, info: &VmcoreInfo) -> Result<Kallsyms> {
    let tables = KallsymsTables::from_vmcoreinfo(info)?;
    let expect: Vec<(&str, u64)> = info
        .symbol("_stext")
        .map(|a| ("_stext", a))
        .into_iter()
        .collect();
    decode(mem, &tables, None, &expect)
}

/// Finds the kallsyms tables by their structure in `range` (the kernel image, or just its
/// `.rodata`, which holds them) and decodes them, for kernels whose VMCOREINFO does not list
/// them.
///
/// Candidates are validated by decoding: the token index must be strictly increasing, the
/// token table must hold exactly 256 printable strings ending at the index, the markers
/// must match every 256th name, the names must end at the markers, the addresses must be
/// sorted, `_stext`/`_text` must fall inside `text` (the kernel image's extent), and every
/// `expect` pair must match.
pub fn search(
    mem: &dyn KernelMemory,
    range: Range<u64>,
    text: Range<u64>,
    expect: &[(&str, u64)],
) -> Result<Kallsyms> {
    let len = range.end.saturating_sub(range.start);
    if len == 0 || len > MAX_SEARCH_RANGE {
        return Err(ProfileError::kallsyms(format!(
            "search range {:#x}..{:#x} is empty or above {MAX_SEARCH_RANGE:#x} bytes",
            range.start, range.end
        )));
    }
    let mut problems = Vec::new();
    let step = 1u64 << 20;
    let mut chunk_start = range.start;
    let mut buf = Vec::new();
    while chunk_start < range.end {
        let chunk_len = (range.end - chunk_start).min(step + 512);
        buf.resize(chunk_len as usize, 0);
        if mem.read(chunk_start, &mut buf).is_err() {
            // Unmapped holes are normal in a scanned range.
            chunk_start += step;
            continue;
        }
        let mut i = 0usize;
        while i + 512 <= buf.len() && (i as u64) < step {
            if token_index_at(&buf[i..i + 512]) {
                let ti = chunk_start + i as u64;
                match try_tables_at(mem, &range, &text, ti, expect) {
                    Ok(k) => return Ok(k),
                    Err(e) => {
                        if problems.len() < 4 {
                            problems.push(format!("{ti:#x}: {e}"));
                        }
                    }
                }
            }
            i += 4;
        }
        chunk_start += step;
    }
    Err(ProfileError::kallsyms(if problems.is_empty() {
        format!(
            "no token index found in {:#x}..{:#x}",
            range.start, range.end
        )
    } else {
        format!("no candidate validated ({})", problems.join("; "))
    }))
}

/// Cheap structural test for a `kallsyms_token_index`.
fn token_index_at(b: &[u8]) -> bool {
    let at = |i: usize| u16::from_le_bytes([b[2 * i], b[2 * i + 1]]);
    if at(0) != 0 {
        return false;
    }
    let mut prev = 0u16;
    for i in 1..256 {
        let v = at(i);
        // Each token is 1..=63 characters plus its NUL.
        if v < prev + 2 || v > prev + 64 {
            return false;
        }
        prev = v;
    }
    true
}

fn try_tables_at(
    mem: &dyn KernelMemory,
    range: &Range<u64>,
    text: &Range<u64>,
    ti: u64,
    expect: &[(&str, u64)],
) -> Result<Kallsyms> {
    let mut raw = [0u8; 512];
    read_mem(mem, ti, &mut raw)?;
    let last = u64::from(u16::from_le_bytes([raw[510], raw[511]]));
    // The token table ends (NUL of the last token, then alignment padding) right before the
    // index: try each start that leaves room for a 1..=63-byte last token plus up to 7
    // padding bytes.
    let tt = (2..=72u64)
        .filter_map(|gap| ti.checked_sub(last + gap))
        .filter(|s| s % 4 == 0 && *s >= range.start)
        .find_map(|s| {
            let tokens = decode_tokens(mem, s, ti).ok()?;
            let end = s + last + tokens[255].len() as u64 + 1;
            let printable = tokens
                .iter()
                .all(|t| !t.is_empty() && t.iter().all(|b| b.is_ascii_graphic()));
            (printable && end <= ti && ti - end < 8).then_some((s, tokens))
        });
    let (tt, tokens) =
        tt.ok_or_else(|| ProfileError::kallsyms("no token table ends at this index"))?;

    // Markers end right before the token table (maybe after 4 bytes of padding), as u32 or
    // (old kernels) unsigned long, strictly increasing from 0.
    for width in [4u64, 8] {
        for pad in [0u64, 4] {
            let Some(end) = tt.checked_sub(pad) else {
                continue;
            };
            let Some(markers) = markers_before(mem, end, width) else {
                continue;
            };
            if let Ok(k) = names_and_addresses(mem, range, text, ti, tt, &tokens, &markers, expect)
            {
                return Ok(k);
            }
        }
    }
    // 6.2 and 6.3 (and stable kernels with the backport, such as Debian's 6.1) put
    // `kallsyms_seqs_of_names` (3 bytes per symbol) between the markers and the token table:
    // look for a u32 markers array whose count fits the gap.
    let max_gap = 3 * u64::from(MAX_SYMS) + 16;
    let lo = tt
        .saturating_sub(max_gap + 4 * u64::from(MAX_SYMS / 256 + 1))
        .max(range.start)
        & !3;
    let mut buf = vec![0u8; (tt - lo) as usize];
    read_mem(mem, lo, &mut buf)?;
    let word = |va: u64| -> Option<u64> {
        let i = usize::try_from(va.checked_sub(lo)?).ok()?;
        Some(u64::from(u32::from_le_bytes(
            buf.get(i..i + 4)?.try_into().ok()?,
        )))
    };
    let mut e = tt.saturating_sub(8) & !3;
    while e >= lo + 12 {
        let gap = tt - e;
        e -= 4;
        // Quick filter: the last three markers increase by at most 256 maximal names.
        let (Some(a), Some(b), Some(c)) = (word(e), word(e - 4), word(e - 8)) else {
            continue;
        };
        if !(c < b && b < a && a - b <= 256 * 0x4001 && a <= MAX_NAMES_BYTES) {
            continue;
        }
        let Some(markers) = markers_before_buf(&word, e + 4) else {
            continue;
        };
        let m = markers.1.len() as u64;
        let seqs_min = 3 * (256 * (m - 1) + 1);
        if gap < seqs_min || gap > 3 * 256 * m + 16 {
            continue;
        }
        if let Ok(k) = names_and_addresses(mem, range, text, ti, tt, &tokens, &markers, expect) {
            return Ok(k);
        }
    }
    Err(ProfileError::kallsyms(format!(
        "token table at {tt:#x} but no markers/names validate before it"
    )))
}

/// [`markers_before`] over a pre-read buffer of u32 words.
fn markers_before_buf(word: &dyn Fn(u64) -> Option<u64>, end: u64) -> Option<(u64, Vec<u64>)> {
    let mut values = Vec::new();
    let mut prev = u64::MAX;
    for k in 1..=u64::from(MAX_SYMS / 256 + 1) {
        let va = end.checked_sub(4 * k)?;
        let v = word(va)?;
        if v >= prev {
            return None;
        }
        values.push(v);
        prev = v;
        if v == 0 {
            values.reverse();
            return Some((va, values));
        }
    }
    None
}

/// Reads a markers array that ends at `end`: walks back while values strictly decrease,
/// until a 0 (the first marker).
fn markers_before(mem: &dyn KernelMemory, end: u64, width: u64) -> Option<(u64, Vec<u64>)> {
    let max = u64::from(MAX_SYMS / 256 + 1);
    let mut values = Vec::new();
    let mut prev = u64::MAX;
    for k in 1..=max {
        let va = end.checked_sub(k * width)?;
        let v = if width == 4 {
            u64::from(read_u32(mem, va).ok()?)
        } else {
            read_u64(mem, va).ok()?
        };
        if v >= prev || v > MAX_NAMES_BYTES {
            return None;
        }
        values.push(v);
        prev = v;
        if v == 0 {
            values.reverse();
            return Some((va, values));
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn names_and_addresses(
    mem: &dyn KernelMemory,
    range: &Range<u64>,
    text: &Range<u64>,
    ti: u64,
    tt: u64,
    tokens: &[Vec<u8>],
    markers: &(u64, Vec<u64>),
    expect: &[(&str, u64)],
) -> Result<Kallsyms> {
    let (m0, marks) = markers;
    let m = marks.len() as u64;
    let last_mark = *marks.last().unwrap_or(&0);
    let no = || ProfileError::kallsyms("no kallsyms_num_syms before the names");
    // kallsyms_num_syms sits right before the names; the last group of up to 256 names
    // follows the last marker. Scan back a bounded window for a count that fits the markers.
    let window_end = m0.checked_sub(last_mark).ok_or_else(no)? & !3;
    let window = (256 * 256u64).min(window_end.saturating_sub(range.start));
    let mut raw = vec![0u8; window as usize];
    read_mem(mem, window_end - window, &mut raw)?;
    let lo = 256 * (m - 1);
    let hi = 256 * m;
    for back in (4..=window).step_by(4) {
        let p = window_end - back;
        let at = (window - back) as usize;
        let v = u64::from(u32::from_le_bytes(
            raw[at..at + 4].try_into().unwrap_or_default(),
        ));
        if v <= lo || v > hi {
            continue;
        }
        for names_off in [4u64, 8] {
            let names = p + names_off;
            if names > window_end {
                continue;
            }
            let Ok(decoded) = decode_names(mem, names, v as u32, tokens, m0 - names) else {
                continue;
            };
            if decoded.markers != *marks
                || names + decoded.len > *m0
                || m0 - (names + decoded.len) >= 8
            {
                continue;
            }
            let num = v as u32;
            let after_index = (ti + 512).next_multiple_of(8);
            let offsets_new = after_index;
            let base_new = (offsets_new + 4 * u64::from(num)).next_multiple_of(8);
            let base_old = p.wrapping_sub(8);
            let offsets_old = base_old.wrapping_sub((4 * u64::from(num)).next_multiple_of(8));
            let layouts = [
                // 6.4+: offsets and relative_base after the token index.
                KallsymsTables {
                    offsets: Some(offsets_new),
                    relative_base: Some(base_new),
                    ..Default::default()
                },
                // 7.0+: place-relative offsets after the token index.
                KallsymsTables {
                    offsets: Some(offsets_new),
                    ..Default::default()
                },
                // Before 6.4: offsets and relative_base before num_syms.
                KallsymsTables {
                    offsets: Some(offsets_old),
                    relative_base: Some(base_old),
                    ..Default::default()
                },
                // Absolute addresses before num_syms.
                KallsymsTables {
                    addresses: Some(p.wrapping_sub(8 * u64::from(num))),
                    ..Default::default()
                },
            ];
            let mut fail = String::new();
            for layout in layouts {
                let tables = KallsymsTables {
                    num_syms: p,
                    names,
                    token_table: tt,
                    token_index: ti,
                    markers: Some(*m0),
                    ..layout
                };
                let named = Names {
                    entries: decoded.entries.clone(),
                    markers: decoded.markers.clone(),
                    len: decoded.len,
                };
                match finish(mem, &tables, num, named, None, expect) {
                    Ok(k) if text_in_range(&k, text) => return Ok(k),
                    Ok(_) => fail = "_stext/_text outside the searched range".into(),
                    Err(e) => fail = e.to_string(),
                }
            }
            return Err(ProfileError::kallsyms(format!(
                "names at {names:#x} decode but no address table fits: {fail}"
            )));
        }
    }
    Err(no())
}

fn text_in_range(k: &Kallsyms, range: &Range<u64>) -> bool {
    ["_stext", "_text"]
        .iter()
        .find_map(|n| k.address(n))
        .is_some_and(|a| range.contains(&a))
}
