//! Bounded, thread-safe caches with statistics.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};

use quick_cache::sync::Cache;

/// Hit/miss counters of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to go to the target.
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
    /// Maximum number of entries.
    pub capacity: u64,
}

impl CacheStats {
    /// Hits divided by lookups (0 when there were none).
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// A bounded concurrent cache (`quick_cache`, CLOCK-Pro eviction) that counts hits and
/// misses when asked to. Capacity 0 disables it.
pub(crate) struct CountingCache<K, V> {
    inner: Option<Cache<K, V>>,
    capacity: u64,
    statistics: bool,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<K: Eq + Hash + Clone, V: Clone> CountingCache<K, V> {
    pub(crate) fn new(capacity: usize, statistics: bool) -> Self {
        Self {
            inner: (capacity > 0).then(|| Cache::new(capacity)),
            capacity: capacity as u64,
            statistics,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    pub(crate) fn get(&self, key: &K) -> Option<V> {
        let cache = self.inner.as_ref()?;
        let found = cache.get(key);
        if !self.statistics {
            return found;
        }
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        if let Some(cache) = &self.inner {
            cache.insert(key, value);
        }
    }

    pub(crate) fn remove(&self, key: &K) {
        if let Some(cache) = &self.inner {
            cache.remove(key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.inner {
            cache.clear();
        }
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.inner.as_ref().map_or(0, |c| c.len() as u64),
            capacity: self.capacity,
        }
    }
}
