//! `System.map` (and `/proc/kallsyms`) text: `<hex address> <type letter> <name>[\t[module]]`.

use std::path::Path;

use crate::error::{ProfileError, Result};
use crate::image::read_file;
use crate::symbols::{Symbol, SymbolTable};

/// Longest line accepted; longer lines count as malformed.
pub const MAX_LINE: usize = 4096;

/// A parsed System.map.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemMap {
    /// The symbols.
    pub symbols: SymbolTable,
    /// Lines that were not `address type name` and were skipped.
    pub bad_lines: usize,
    /// Lines naming a module (`[mod]`), skipped: they are not kernel image symbols.
    pub module_lines: usize,
}

/// Parses System.map text. Malformed lines are counted, not fatal; text without any symbol
/// is an error naming `source`.
pub fn parse_system_map(text: &[u8], source: &str) -> Result<SystemMap> {
    let mut symbols = Vec::new();
    let mut bad_lines = 0usize;
    let mut module_lines = 0usize;
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            bad_lines += 1;
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            bad_lines += 1;
            continue;
        };
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            bad_lines += 1;
            continue;
        };
        let module = parts.next();
        if parts.next().is_some() {
            bad_lines += 1;
            continue;
        }
        let mut kind_chars = kind.chars();
        let (Some(k), None) = (kind_chars.next(), kind_chars.next()) else {
            bad_lines += 1;
            continue;
        };
        let Ok(address) = u64::from_str_radix(addr, 16) else {
            bad_lines += 1;
            continue;
        };
        if addr.len() > 16 || !k.is_ascii_alphabetic() && k != '?' {
            bad_lines += 1;
            continue;
        }
        if module.is_some() {
            module_lines += 1;
            continue;
        }
        symbols.push(Symbol {
            name: name.to_owned(),
            address,
            kind: Some(k),
        });
    }
    if symbols.is_empty() {
        return Err(ProfileError::SystemMap {
            source_name: source.to_owned(),
            bad_lines,
        });
    }
    Ok(SystemMap {
        symbols: SymbolTable::new(symbols),
        bad_lines,
        module_lines,
    })
}

/// Reads and parses a System.map file.
pub fn load_system_map(path: &Path) -> Result<SystemMap> {
    parse_system_map(&read_file(path)?, &path.display().to_string())
}

/// Writes symbols in System.map format.
pub fn write_system_map(symbols: &SymbolTable) -> String {
    let mut out = String::with_capacity(symbols.len() * 40);
    for s in symbols.iter() {
        out.push_str(&format!(
            "{:016x} {} {}\n",
            s.address,
            s.kind.unwrap_or('?'),
            s.name
        ));
    }
    out
}
