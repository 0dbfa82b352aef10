//! A name index that allocates nothing per name: 64-bit hashes of the names map to entry
//! chains, and each lookup compares the actual names. Rebuilt after every cache load, so it
//! must be cheap; collisions only lengthen a chain.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Passes a pre-computed 64-bit hash through.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a, 64-bit.
pub(crate) fn hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const END: u32 = u32::MAX;

/// Name → value (an index or id), first insertion per name kept unless replaced.
#[derive(Clone, Debug, Default)]
pub(crate) struct NameIndex {
    heads: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    /// (value, next entry with the same hash).
    entries: Vec<(u32, u32)>,
}

impl NameIndex {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            heads: HashMap::with_capacity_and_hasher(n, Default::default()),
            entries: Vec::with_capacity(n),
        }
    }

    /// The entry slot holding `name`, found by comparing names through `name_of`.
    fn slot<'a>(
        &self,
        h: u64,
        name: &str,
        name_of: impl Fn(u32) -> Option<&'a str>,
    ) -> Option<usize> {
        let mut i = *self.heads.get(&h)?;
        let mut steps = 0usize;
        while i != END && steps <= self.entries.len() {
            let (value, next) = *self.entries.get(i as usize)?;
            if name_of(value) == Some(name) {
                return Some(i as usize);
            }
            i = next;
            steps += 1;
        }
        None
    }

    /// The value stored for `name`.
    pub(crate) fn get<'a>(
        &self,
        name: &str,
        name_of: impl Fn(u32) -> Option<&'a str>,
    ) -> Option<u32> {
        let s = self.slot(hash(name), name, name_of)?;
        Some(self.entries[s].0)
    }

    /// Inserts `value` under `name` unless present; when present, `replace(old)` decides
    /// whether the new value takes the slot.
    pub(crate) fn insert<'a>(
        &mut self,
        name: &str,
        value: u32,
        name_of: impl Fn(u32) -> Option<&'a str>,
        replace: impl FnOnce(u32) -> bool,
    ) {
        let h = hash(name);
        if let Some(s) = self.slot(h, name, name_of) {
            if replace(self.entries[s].0) {
                self.entries[s].0 = value;
            }
            return;
        }
        let next = self.heads.get(&h).copied().unwrap_or(END);
        let i = self.entries.len() as u32;
        self.entries.push((value, next));
        self.heads.insert(h, i);
    }
}
