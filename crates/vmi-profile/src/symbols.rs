//! The symbol half of a profile: names to addresses, and addresses back to the nearest symbol.

use serde::{Deserialize, Serialize};

use std::sync::OnceLock;

use crate::index::NameIndex;

/// One symbol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// Symbol name.
    pub name: String,
    /// Address: a virtual address for Linux (link-time or already relocated, see
    /// [`Metadata::sources`](crate::Metadata::sources)), an RVA for Windows.
    pub address: u64,
    /// `nm`-style type letter (`T`, `D`, `b`, ...) where the source has one.
    pub kind: Option<char>,
}

/// Symbols sorted by address, with a name index.
///
/// When a name occurs more than once (static functions in different files), [`get`]
/// returns the one with the lowest address; [`all_named`] returns every one.
///
/// [`get`]: SymbolTable::get
/// [`all_named`]: SymbolTable::all_named
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SymbolTable {
    sorted: Vec<Symbol>,
    /// Built on the first name lookup, so a cache load does not pay for it.
    #[serde(skip)]
    by_name: OnceLock<NameIndex>,
}

impl PartialEq for SymbolTable {
    fn eq(&self, other: &Self) -> bool {
        self.sorted == other.sorted
    }
}

impl FromIterator<Symbol> for SymbolTable {
    fn from_iter<I: IntoIterator<Item = Symbol>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

impl SymbolTable {
    /// Builds a table (sorts by address, stable for equal addresses).
    pub fn new(mut symbols: Vec<Symbol>) -> Self {
        symbols.sort_by_key(|s| s.address);
        Self::from_sorted(symbols)
    }

    /// A table from symbols already sorted by address (the cache decoder).
    pub(crate) fn from_sorted(sorted: Vec<Symbol>) -> Self {
        Self {
            sorted,
            by_name: OnceLock::new(),
        }
    }

    fn index(&self) -> &NameIndex {
        self.by_name.get_or_init(|| {
            let sorted = &self.sorted;
            let name_of = |v: u32| sorted.get(v as usize).map(|s| s.name.as_str());
            // Lowest address first: the earlier entry is kept.
            NameIndex::build(
                sorted
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.name.as_str(), i as u32)),
                name_of,
                |_, _| false,
            )
        })
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// True when there is no symbol.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    /// The symbol named `name` (lowest address if repeated).
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        let i = self.index().get(name, |v| {
            self.sorted.get(v as usize).map(|s| s.name.as_str())
        })?;
        self.sorted.get(i as usize)
    }

    /// The address of `name`.
    pub fn address(&self, name: &str) -> Option<u64> {
        self.get(name).map(|s| s.address)
    }

    /// Every symbol named `name`.
    pub fn all_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Symbol> + 'a {
        self.sorted.iter().filter(move |s| s.name == name)
    }

    /// The symbol at or below `address` closest to it, and the distance.
    pub fn nearest(&self, address: u64) -> Option<(&Symbol, u64)> {
        let idx = self.sorted.partition_point(|s| s.address <= address);
        let s = self.sorted.get(idx.checked_sub(1)?)?;
        Some((s, address - s.address))
    }

    /// Symbols sorted by address.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Symbol> {
        self.sorted.iter()
    }

    /// A copy with every address moved by `delta` (wrapping, as KASLR slides are applied
    /// modulo 2^64). Absolute symbols (`A`/`a`) stay where they are.
    pub fn relocated(&self, delta: u64) -> SymbolTable {
        SymbolTable::new(
            self.sorted
                .iter()
                .map(|s| Symbol {
                    address: if matches!(s.kind, Some('A' | 'a')) {
                        s.address
                    } else {
                        s.address.wrapping_add(delta)
                    },
                    ..s.clone()
                })
                .collect(),
        )
    }

    /// Adds symbols from `other` whose names are not present yet.
    pub fn merge(&mut self, other: &SymbolTable) {
        // Look names up before taking the vector: the index refers into it.
        let new: Vec<Symbol> = other
            .sorted
            .iter()
            .filter(|s| self.get(&s.name).is_none())
            .cloned()
            .collect();
        let mut all = std::mem::take(&mut self.sorted);
        all.extend(new);
        *self = SymbolTable::new(all);
    }
}

/// Compact cache encoding: count, then per symbol (address `u64`, kind `u32` with
/// `u32::MAX` for none, name length `u32`), then all names as one UTF-8 blob.
mod codec {
    use super::*;
    use crate::compact::{Reader, put_bytes, put_u32, put_u64, u32_at, u64_at};

    const NO_KIND: u32 = u32::MAX;

    impl SymbolTable {
        pub(crate) fn write_compact(&self, out: &mut Vec<u8>) {
            put_u32(out, self.sorted.len() as u32);
            let mut names = String::new();
            for s in &self.sorted {
                put_u64(out, s.address);
                put_u32(out, s.kind.map_or(NO_KIND, u32::from));
                put_u32(out, s.name.len() as u32);
                names.push_str(&s.name);
            }
            put_bytes(out, names.as_bytes());
            self.index().write_compact(out);
        }

        pub(crate) fn read_compact(r: &mut Reader<'_>) -> Result<SymbolTable, String> {
            let (count, recs) = r.array(16, "symbols")?;
            let (_, names) = r.array(1, "symbol names")?;
            let names = std::str::from_utf8(names).map_err(|e| format!("symbol names: {e}"))?;
            let mut sorted = Vec::with_capacity(count);
            let mut pos = 0usize;
            for (i, rec) in recs.chunks_exact(16).enumerate() {
                let len = u32_at(rec, 12) as usize;
                let name = pos
                    .checked_add(len)
                    .and_then(|end| names.get(pos..end))
                    .ok_or_else(|| format!("symbol {i}: name out of range"))?;
                pos += len;
                let kind = match u32_at(rec, 8) {
                    NO_KIND => None,
                    k => Some(
                        char::from_u32(k).ok_or_else(|| format!("symbol {i}: bad kind {k:#x}"))?,
                    ),
                };
                sorted.push(Symbol {
                    name: name.to_owned(),
                    address: u64_at(rec, 0),
                    kind,
                });
            }
            if !sorted.is_sorted_by_key(|s| s.address) {
                return Err("symbols are not sorted by address".into());
            }
            let index = NameIndex::read_compact(r, sorted.len(), "symbol index")?;
            Ok(SymbolTable {
                sorted,
                by_name: OnceLock::from(index),
            })
        }
    }
}
