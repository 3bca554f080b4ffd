//! Bounded per-key state with an idle TTL: the storage under every detector.
//!
//! Core's [`ShardedMap`] with the [`SecondChance`] (CLOCK) rule: a new key in a full
//! shard evicts an expired entry or one not touched again since it was made or last
//! passed, so a flood of one-off keys evicts itself before the keys that come back.
//! The entry count never exceeds the configured cap, whatever the number of distinct
//! keys, and one lookup costs a short uncontended lock and a hash probe. Each update
//! moves the entry's deadline to `now + ttl`; a write to a shard sweeps it whole once
//! per sweep interval.
//!
//! Keys are 64-bit keyed hashes (see [`crate::hash`]), never raw identifiers.

use std::time::Duration;

use tollgate_core::clock::{Timestamp, duration_nanos};
use tollgate_core::sharded::{SecondChance, ShardedMap};

/// A bounded map from 64-bit keys to `V`, with an idle TTL per entry.
pub(crate) struct BoundedMap<V> {
    map: ShardedMap<u64, V, SecondChance>,
    ttl: u64,
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
    pub(crate) fn new(max_entries: usize, ttl: Duration) -> Self {
        let ttl = duration_nanos(ttl).max(1);
        // Expired entries are unreadable at once and dropped within an eighth of the TTL
        // (at the next write to their shard after that).
        let sweep_every = (ttl / 8).max(1_000_000_000).min(ttl);
        BoundedMap {
            map: ShardedMap::builder(max_entries)
                .evict(SecondChance)
                .sweep_interval(Duration::from_nanos(sweep_every))
                .build(),
            ttl,
        }
    }

    /// The most entries the map holds.
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// The idle time after which an entry is gone.
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl)
    }

    /// The longest an expired entry can stay in memory before a sweep drops it,
    /// counted from its last update (TTL plus the sweep interval).
    pub(crate) fn retention(&self) -> Duration {
        self.ttl() + self.map.sweep_interval().unwrap_or_default()
    }

    /// The number of entries held (expired ones included until swept).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the map holds nothing (one atomic read).
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Runs `f` on the entry at `key`, creating it with `init` if it is missing or
    /// expired, and refreshes its TTL.
    pub(crate) fn update<R>(
        &self,
        key: u64,
        now: u64,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let deadline = Timestamp::from_nanos(now.saturating_add(self.ttl));
        self.map
            .update(&key, Timestamp::from_nanos(now), deadline, init, f)
    }

    /// Reads the entry at `key`, if present and not expired, without refreshing it.
    pub(crate) fn get<R>(&self, key: u64, now: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        if self.is_empty() {
            return None;
        }
        self.map.get_with(&key, Timestamp::from_nanos(now), f)
    }

    /// Drops every expired entry now (the request path does this a shard at a time).
    pub(crate) fn purge_expired(&self, now: u64) {
        self.map.purge_expired(Timestamp::from_nanos(now));
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
}
