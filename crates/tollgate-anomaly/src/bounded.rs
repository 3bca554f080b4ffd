//! Bounded per-key state with an idle TTL: the storage under every detector.
//!
//! A fixed number of shards, each a `Mutex` around a hash index and a slot vector
//! of fixed capacity. A new key in a full shard evicts by CLOCK (second chance):
//! expired entries and entries not touched again since they were made or last
//! passed go first. So the entry count never exceeds
//! the configured cap, whatever the number of distinct keys, and one lookup costs a
//! short uncontended lock and a hash probe.
//!
//! Keys are 64-bit keyed hashes (see [`crate::hash`]), never raw identifiers.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tollgate_core::clock::duration_nanos;

/// Keys are already uniform keyed hashes: the index uses them as they are.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Index = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;

/// A shard on cache lines of its own, so that threads working on different shards
/// do not contend for one line.
#[repr(align(128))]
struct Padded<T>(T);

struct Slot<V> {
    key: u64,
    touched: u64,
    referenced: bool,
    value: V,
}

struct Shard<V> {
    index: Index,
    slots: Vec<Slot<V>>,
    hand: usize,
    last_sweep: u64,
}

/// A bounded map from 64-bit keys to `V`, with an idle TTL per entry.
pub struct BoundedMap<V> {
    shards: Box<[Padded<Mutex<Shard<V>>>]>,
    shard_bits: u32,
    shard_cap: usize,
    ttl: u64,
    sweep_every: u64,
    len: AtomicUsize,
}

impl<V> std::fmt::Debug for BoundedMap<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("ttl", &Duration::from_nanos(self.ttl))
            .finish()
    }
}

impl<V> BoundedMap<V> {
    /// A map of at most `max_entries` entries (at least 1), each dropped `ttl` after
    /// its last update.
    pub fn new(max_entries: usize, ttl: Duration) -> Self {
        let max_entries = max_entries.max(1);
        // Up to 64 shards, each of at least 16 entries.
        let mut shard_bits = 0u32;
        while shard_bits < 6 && (max_entries >> (shard_bits + 1)) >= 16 {
            shard_bits += 1;
        }
        let n = 1usize << shard_bits;
        let shard_cap = max_entries / n;
        let ttl = duration_nanos(ttl).max(1);
        let shards = (0..n)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    index: Index::default(),
                    slots: Vec::new(),
                    hand: 0,
                    last_sweep: 0,
                }))
            })
            .collect();
        BoundedMap {
            shards,
            shard_bits,
            shard_cap,
            ttl,
            // Expired entries are unreadable at once and dropped within an eighth of the TTL
            // (at the next access to their shard after that).
            sweep_every: (ttl / 8).max(1_000_000_000).min(ttl),
            len: AtomicUsize::new(0),
        }
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.shard_cap << self.shard_bits
    }

    /// The idle time after which an entry is gone.
    pub fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl)
    }

    /// The longest an expired entry can stay in memory before a sweep drops it,
    /// counted from its last update (TTL plus the sweep interval).
    pub fn retention(&self) -> Duration {
        Duration::from_nanos(self.ttl.saturating_add(self.sweep_every))
    }

    /// The number of entries held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True if the map holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        let i = if self.shard_bits == 0 {
            0
        } else {
            // The index's buckets use the low bits and its tags the top seven: take the
            // shard from the middle.
            ((key >> 32) as usize) & ((1 << self.shard_bits) - 1)
        };
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expired(&self, touched: u64, now: u64) -> bool {
        now.saturating_sub(touched) >= self.ttl
    }

    /// Runs `f` on the entry at `key`, creating it with `init` if it is missing or
    /// expired, and refreshes its TTL.
    pub fn update<R>(&self, key: u64, now: u64, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        let mut shard = self.shard(key);
        self.maybe_sweep(&mut shard, now);
        let shard = &mut *shard;
        if let Some(&i) = shard.index.get(&key) {
            let slot = &mut shard.slots[i as usize];
            if self.expired(slot.touched, now) {
                slot.value = init();
            }
            slot.touched = now;
            slot.referenced = true;
            return f(&mut slot.value);
        }
        // New entries start unreferenced: a flood of one-off keys evicts itself
        // before it evicts the keys that come back.
        let slot = Slot {
            key,
            touched: now,
            referenced: false,
            value: init(),
        };
        let i = if shard.slots.len() < self.shard_cap {
            shard.slots.push(slot);
            self.len.fetch_add(1, Ordering::Relaxed);
            shard.slots.len() - 1
        } else {
            let victim = self.clock_victim(shard, now);
            let old = std::mem::replace(&mut shard.slots[victim], slot);
            shard.index.remove(&old.key);
            victim
        };
        shard.index.insert(key, i as u32);
        f(&mut shard.slots[i].value)
    }

    /// Reads the entry at `key`, if present and not expired, without refreshing it.
    pub fn get<R>(&self, key: u64, now: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        if self.is_empty() {
            return None;
        }
        let shard = self.shard(key);
        let &i = shard.index.get(&key)?;
        let slot = &shard.slots[i as usize];
        (!self.expired(slot.touched, now)).then(|| f(&slot.value))
    }

    /// Removes the entry at `key`; returns whether there was one.
    pub fn remove(&self, key: u64) -> bool {
        let mut shard = self.shard(key);
        let Some(i) = shard.index.remove(&key) else {
            return false;
        };
        self.remove_slot(&mut shard, i as usize);
        true
    }

    /// Drops every expired entry now (the request path does this a shard at a time).
    pub fn purge_expired(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            self.sweep(&mut shard, now);
        }
    }

    fn clock_victim(&self, shard: &mut Shard<V>, now: u64) -> usize {
        let len = shard.slots.len();
        // Two passes at most: the first clears every reference bit it passes.
        loop {
            let h = shard.hand % len;
            shard.hand = (h + 1) % len;
            let slot = &mut shard.slots[h];
            if !slot.referenced || self.expired(slot.touched, now) {
                return h;
            }
            slot.referenced = false;
        }
    }

    fn remove_slot(&self, shard: &mut Shard<V>, i: usize) {
        shard.slots.swap_remove(i);
        if let Some(moved) = shard.slots.get(i) {
            shard.index.insert(moved.key, i as u32);
        }
        if shard.hand >= shard.slots.len() {
            shard.hand = 0;
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
    }

    fn maybe_sweep(&self, shard: &mut Shard<V>, now: u64) {
        if now.saturating_sub(shard.last_sweep) >= self.sweep_every {
            self.sweep(shard, now);
        }
    }

    fn sweep(&self, shard: &mut Shard<V>, now: u64) {
        shard.last_sweep = now;
        let mut i = 0;
        while i < shard.slots.len() {
            if self.expired(shard.slots[i].touched, now) {
                let key = shard.slots[i].key;
                shard.index.remove(&key);
                self.remove_slot(shard, i);
            } else {
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn counts_and_expires() {
        let m: BoundedMap<u32> = BoundedMap::new(100, Duration::from_secs(10));
        for _ in 0..3 {
            m.update(7, SEC, || 0, |v| *v += 1);
        }
        assert_eq!(m.get(7, SEC, |v| *v), Some(3));
        assert_eq!(m.get(7, 11 * SEC, |v| *v), None);
        // An expired entry starts again from `init`.
        m.update(7, 12 * SEC, || 0, |v| *v += 1);
        assert_eq!(m.get(7, 12 * SEC, |v| *v), Some(1));
        // Sweeping drops expired entries from memory.
        m.update(8, 12 * SEC, || 0, |_| ());
        assert_eq!(m.len(), 2);
        m.purge_expired(30 * SEC);
        assert_eq!(m.len(), 0);
        assert!(!m.remove(7));
    }

    #[test]
    fn never_exceeds_capacity() {
        let m: BoundedMap<u64> = BoundedMap::new(1_000, Duration::from_secs(3600));
        assert!(m.capacity() <= 1_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..100_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            m.update(x, i, || i, |_| ());
            assert!(m.len() <= m.capacity());
        }
        assert_eq!(m.len(), m.capacity());
    }

    #[test]
    fn hot_keys_survive_a_flood() {
        let m: BoundedMap<u64> = BoundedMap::new(64, Duration::from_secs(3600));
        let hot = 0xdead_beef_0000_0001u64;
        let mut x = 1u64;
        for i in 0..10_000u64 {
            m.update(hot, i, || 0, |v| *v += 1);
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            m.update(x, i, || 0, |_| ());
        }
        assert_eq!(m.get(hot, 10_000, |v| *v), Some(10_000));
    }

    #[test]
    fn remove_keeps_index_consistent() {
        let m: BoundedMap<u64> = BoundedMap::new(16, Duration::from_secs(60));
        for k in 0..10u64 {
            m.update(k, 0, || k, |_| ());
        }
        assert!(m.remove(3));
        for k in 0..10u64 {
            assert_eq!(m.get(k, 0, |v| *v), (k != 3).then_some(k));
        }
        assert_eq!(m.len(), 9);
    }
}
