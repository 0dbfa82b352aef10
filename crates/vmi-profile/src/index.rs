//! A name index that allocates nothing per name: a vector of (64-bit name hash, value)
//! sorted by hash. A lookup binary-searches the hash and compares the actual names of the
//! entries with that hash, so collisions only cost a comparison. Flat and position-free,
//! it is stored in the cache as is and loaded without re-hashing any name.

use crate::compact::{Reader, put_u32, put_u64, u32_at, u64_at};

/// FNV-1a, 64-bit.
pub(crate) fn hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Name → value (an index or id); one entry per distinct name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct NameIndex {
    entries: Vec<(u64, u32)>,
}

impl NameIndex {
    /// Indexes `items` (name, value). When a name repeats, the first value is kept unless
    /// `replace(new, kept)` says the later one is better.
    pub(crate) fn build<'a>(
        items: impl Iterator<Item = (&'a str, u32)>,
        name_of: impl Fn(u32) -> Option<&'a str>,
        replace: impl Fn(u32, u32) -> bool,
    ) -> Self {
        let mut all: Vec<(u64, u32)> = items.map(|(n, v)| (hash(n), v)).collect();
        // Stable: equal hashes stay in insertion order.
        all.sort_by_key(|e| e.0);
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(all.len());
        let mut group = 0;
        for (h, v) in all {
            if entries.last().is_none_or(|l| l.0 != h) {
                group = entries.len();
                entries.push((h, v));
                continue;
            }
            let name = name_of(v);
            match entries[group..].iter_mut().find(|e| name_of(e.1) == name) {
                Some(kept) => {
                    if replace(v, kept.1) {
                        kept.1 = v;
                    }
                }
                None => entries.push((h, v)),
            }
        }
        Self { entries }
    }

    /// The value stored for `name`.
    pub(crate) fn get<'a>(
        &self,
        name: &str,
        name_of: impl Fn(u32) -> Option<&'a str>,
    ) -> Option<u32> {
        let h = hash(name);
        let start = self.entries.partition_point(|e| e.0 < h);
        self.entries[start..]
            .iter()
            .take_while(|e| e.0 == h)
            .find(|e| name_of(e.1) == Some(name))
            .map(|e| e.1)
    }

    /// Cache encoding: count, then (hash `u64`, value `u32`) records.
    pub(crate) fn write_compact(&self, out: &mut Vec<u8>) {
        put_u32(out, self.entries.len() as u32);
        for &(h, v) in &self.entries {
            put_u64(out, h);
            put_u32(out, v);
        }
    }

    /// Decodes an index whose values must be below `limit`, sorted by hash.
    pub(crate) fn read_compact(
        r: &mut Reader<'_>,
        limit: usize,
        what: &str,
    ) -> Result<Self, String> {
        let (_, recs) = r.array(12, what)?;
        let entries: Vec<(u64, u32)> = recs
            .chunks_exact(12)
            .map(|e| (u64_at(e, 0), u32_at(e, 8)))
            .collect();
        if entries.iter().any(|e| e.1 as usize >= limit) {
            return Err(format!("{what}: value out of range"));
        }
        if !entries.is_sorted_by_key(|e| e.0) {
            return Err(format!("{what}: not sorted"));
        }
        Ok(Self { entries })
    }
}
