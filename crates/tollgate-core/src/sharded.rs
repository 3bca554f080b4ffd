//! A bounded map split in shards: the table under every in-process store.
//!
//! [`ShardedMap`] keeps at most a fixed number of entries, whatever the number of
//! distinct keys it is shown, so a flood of one-off keys cannot grow memory. Each
//! entry carries a deadline on the caller's clock: every operation takes the current
//! time as a [`Timestamp`] (read from the layer's injected [`SharedClock`], never from
//! `Instant::now()`), an entry whose deadline has come counts as absent at once, and
//! expired entries are removed by a small sweep on each new key, by eviction, by an
//! optional periodic sweep of a shard, or by [`ShardedMap::purge_expired`].
//!
//! The map is a few `HashMap`s, each under its own short `Mutex` and on cache lines of
//! its own, the shard picked by the key's hash. A hit takes one uncontended lock, one
//! hash and one probe; no lock is ever held across an `await`. When a shard is full, a
//! new key replaces the entry an [`Evict`] rule picks: [`EarliestDeadline`] (sampled:
//! the entry closest to its deadline, which is "closest to a full budget" for rate
//! limits and "idle the longest" for idle expiry) or [`SecondChance`] (CLOCK: entries
//! not used again since they were made go first), or a rule of your own.
//!
//! [`ShardedMap::entry`] runs a read-modify-write under the shard's lock, so concurrent
//! updates of one key run one after another and none is lost.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_core::clock::{Clock, FakeClock, Timestamp};
//! use tollgate_core::sharded::{Entry, ShardedMap};
//!
//! let clock = FakeClock::new(Timestamp::from_secs(1_000));
//! // At most 10,000 keys; when full, the sampled entry closest to its deadline goes.
//! let budgets: ShardedMap<u64, u32> = ShardedMap::new(10_000);
//!
//! // Spend one unit of a budget of 2 per minute, atomically per key.
//! let spend = |key: u64| {
//!     let now = clock.now();
//!     budgets.entry(&key, now, |entry| match entry {
//!         Entry::Occupied(mut spent) if *spent.get() < 2 => {
//!             *spent.get_mut() += 1;
//!             true
//!         }
//!         Entry::Occupied(_) => false,
//!         Entry::Vacant(v) => {
//!             v.insert(1, now.saturating_add(Duration::from_secs(60)));
//!             true
//!         }
//!     })
//! };
//! assert!(spend(7) && spend(7));
//! assert!(!spend(7));
//! clock.advance(Duration::from_secs(60));
//! assert!(spend(7), "the entry expired at its deadline");
//! assert_eq!(budgets.get(&7, clock.now()), Some(1));
//! ```
//!
//! [`SharedClock`]: crate::clock::SharedClock

use std::collections::HashMap;
use std::collections::hash_map::{self, RandomState};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::clock::{Timestamp, duration_nanos};

/// A deadline that never comes: an entry inserted with it lives until removed or evicted.
pub const NEVER: Timestamp = Timestamp::from_nanos(u64::MAX);

/// How many keys each insertion of a new key examines for expiry.
const SWEEP_PER_INSERT: usize = 4;
/// At most this many shards.
const MAX_SHARDS: usize = 1024;
/// By default, shards hold at least this many entries, so that sampling finds a good victim.
const MIN_PER_SHARD: usize = 16;

/// Builds the keys' hasher: a folded multiply under a per-map seed.
///
/// Not a defence against chosen keys (HashDoS): the keys tollgate stores are keyed
/// digests or keyed hashes that nobody outside the process can compute, hence
/// uniformly spread already, so a cheap mix is enough. Callers that store keys an
/// outsider picks must key them first (see [`crate::pseudonym::KeyedDigest`]).
/// Measured: a hit on a `u128` key takes 19 ns.
#[derive(Clone, Copy)]
struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = Fold;

    #[inline]
    fn build_hasher(&self) -> Fold {
        Fold(self.0)
    }
}

struct Fold(u64);

const MIX: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for Fold {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            // The length in the top bits: "ab" and "ab\0" differ.
            self.write_u64(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 60));
        }
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        // Folded multiply: the high and low halves of the 128-bit product, so every
        // input bit reaches both the shard bits (middle) and the table's bits (low, top).
        let full = u128::from(self.0 ^ n) * u128::from(MIX);
        self.0 = (full as u64) ^ ((full >> 64) as u64);
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A rule choosing which entry a full shard drops to make room for a new key.
///
/// The map calls [`Evict::victim`] only when a shard is full and the key is new, under
/// the shard's lock, with a view of the shard's entries ([`Candidates`]). A rule may
/// keep a small [`Evict::Mark`] per entry (a reference bit, a use count), updated by
/// [`Evict::hit`] each time the entry is used.
///
/// A rule that drops the entry with the fewest uses, counted in the mark:
///
/// ```
/// use std::hash::Hash;
/// use tollgate_core::Timestamp;
/// use tollgate_core::sharded::{Candidates, Evict, ShardedMap};
///
/// struct FewestUses;
///
/// impl<V> Evict<V> for FewestUses {
///     type Mark = u32;
///
///     fn hit(&self, uses: &mut u32, _now: Timestamp) {
///         *uses = uses.saturating_add(1);
///     }
///
///     fn victim<K: Hash + Eq>(&self, c: &mut Candidates<'_, K, V, u32>) -> usize {
///         (0..c.len()).min_by_key(|&i| *c.mark(i)).unwrap_or(0)
///     }
/// }
///
/// let now = Timestamp::from_secs(1);
/// let map: ShardedMap<u64, (), FewestUses> = ShardedMap::builder(2).evict(FewestUses).build();
/// map.insert(1, (), tollgate_core::sharded::NEVER, now);
/// map.insert(2, (), tollgate_core::sharded::NEVER, now);
/// map.get(&1, now);
/// map.insert(3, (), tollgate_core::sharded::NEVER, now);
/// assert!(map.get(&1, now).is_some() && map.get(&2, now).is_none());
/// ```
pub trait Evict<V> {
    /// What the rule keeps per entry (`()` for nothing). A new entry starts at `Default`.
    type Mark: Default;

    /// Records a use of a live entry (a read, an update or an overwrite). The map calls
    /// it only for rules whose `Mark` is not zero-sized, so a rule that keeps nothing
    /// costs nothing on a hit.
    #[inline]
    fn hit(&self, mark: &mut Self::Mark, now: Timestamp) {
        let _ = (mark, now);
    }

    /// The index (below [`Candidates::len`]) of the entry to drop.
    fn victim<K: Hash + Eq>(&self, candidates: &mut Candidates<'_, K, V, Self::Mark>) -> usize;
}

/// Evicts the sampled entry closest to its deadline (an expired one if the sample
/// holds one): the default rule.
///
/// Sampling a few entries (8 by default) at random keeps the cost of an eviction fixed
/// and needs no order kept on the hit path. Whatever the deadline means, the entry
/// that loses least goes: for a rate limit whose deadline is when the budget is full
/// again, the entry closest to a full budget (so a flood of one-request keys replaces
/// its own entries, not those of keys that spent much); for idle expiry (the deadline
/// moved to `now + idle` on each use), the entry idle the longest (sampled LRU); for a
/// cache, the entry about to expire anyway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EarliestDeadline {
    samples: usize,
}

impl EarliestDeadline {
    /// Samples `samples` entries (at least 1) per eviction.
    pub const fn new(samples: usize) -> Self {
        EarliestDeadline {
            samples: if samples == 0 { 1 } else { samples },
        }
    }
}

impl Default for EarliestDeadline {
    fn default() -> Self {
        EarliestDeadline::new(8)
    }
}

impl<V> Evict<V> for EarliestDeadline {
    type Mark = ();

    fn victim<K: Hash + Eq>(&self, c: &mut Candidates<'_, K, V, ()>) -> usize {
        let now = c.now();
        let mut victim = c.random();
        let mut deadline = c.deadline(victim);
        for _ in 1..self.samples {
            if deadline <= now {
                break;
            }
            let j = c.random();
            let d = c.deadline(j);
            if d < deadline {
                victim = j;
                deadline = d;
            }
        }
        victim
    }
}

/// Evicts by CLOCK (second chance): a hand goes round the shard's entries; an expired
/// entry, or one not used since it was made or since the hand last passed it, goes; a
/// used one loses its mark and is passed.
///
/// New entries start unmarked, so a flood of one-off keys evicts its own entries
/// before it evicts the keys that come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondChance;

impl<V> Evict<V> for SecondChance {
    type Mark = bool;

    #[inline]
    fn hit(&self, used: &mut bool, _now: Timestamp) {
        *used = true;
    }

    fn victim<K: Hash + Eq>(&self, c: &mut Candidates<'_, K, V, bool>) -> usize {
        // Two rounds at most: the first clears every mark it passes.
        loop {
            let i = c.next_in_turn();
            if c.is_expired(i) || !*c.mark(i) {
                return i;
            }
            *c.mark_mut(i) = false;
        }
    }
}

/// Where an entry's value sits, in the table.
struct Slot<V> {
    value: V,
    /// When the entry stops counting (ns on the caller's clock).
    deadline: u64,
    /// Where the key sits in `Shard::keys`.
    pos: u32,
}

/// A key with a copy of its deadline and the rule's mark, for sampling, the hand and
/// the sweep without a table probe per examined entry.
struct Key<K, M> {
    key: K,
    deadline: u64,
    mark: M,
}

struct Shard<K, V, M> {
    map: HashMap<K, Slot<V>, Seeded>,
    keys: Vec<Key<K, M>>,
    cap: usize,
    rng: u64,
    hand: usize,
    sweep: usize,
    last_sweep: u64,
}

/// A view of a full shard's entries, for an [`Evict`] rule to choose a victim.
///
/// Entries are numbered `0..len()`, in no particular order. Reading an entry's key,
/// deadline or mark is an array access; reading its value probes the table.
pub struct Candidates<'a, K, V, M> {
    keys: &'a mut [Key<K, M>],
    map: &'a HashMap<K, Slot<V>, Seeded>,
    rng: &'a mut u64,
    hand: &'a mut usize,
    now: Timestamp,
}

impl<K: Hash + Eq, V, M> Candidates<'_, K, V, M> {
    /// How many entries the shard holds (one or more).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a rule is asked only about a full shard.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The time of the operation that needs room.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// A pseudo-random entry index (xorshift, seeded per shard).
    #[inline]
    pub fn random(&mut self) -> usize {
        let mut x = *self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *self.rng = x;
        // Multiply-shift instead of `%`: no division, and uniform enough for sampling.
        ((u128::from(x) * self.keys.len() as u128) >> 64) as usize
    }

    /// The entry under the shard's rotating hand, moving the hand on (for CLOCK-like rules).
    pub fn next_in_turn(&mut self) -> usize {
        let i = if *self.hand < self.keys.len() {
            *self.hand
        } else {
            0
        };
        *self.hand = i + 1;
        i
    }

    /// The key of entry `i`.
    pub fn key(&self, i: usize) -> &K {
        &self.keys[i].key
    }

    /// The deadline of entry `i`.
    pub fn deadline(&self, i: usize) -> Timestamp {
        Timestamp::from_nanos(self.keys[i].deadline)
    }

    /// Whether entry `i` has expired (its deadline is not after [`Candidates::now`]).
    pub fn is_expired(&self, i: usize) -> bool {
        self.keys[i].deadline <= self.now.as_nanos()
    }

    /// The rule's mark of entry `i`.
    pub fn mark(&self, i: usize) -> &M {
        &self.keys[i].mark
    }

    /// The rule's mark of entry `i`, to change.
    pub fn mark_mut(&mut self, i: usize) -> &mut M {
        &mut self.keys[i].mark
    }

    /// The value of entry `i` (one table probe).
    pub fn value(&self, i: usize) -> &V {
        &self.map[&self.keys[i].key].value
    }
}

impl<K: Hash + Eq + Clone, V, M: Default> Shard<K, V, M> {
    /// Removes the entry at `keys[i]`; returns its value.
    fn remove_at(&mut self, i: usize, len: &AtomicUsize) -> Option<V> {
        let gone = self.keys.swap_remove(i);
        let slot = self.map.remove(&gone.key);
        if let Some(moved) = self.keys.get(i)
            && let Some(s) = self.map.get_mut(&moved.key)
        {
            s.pos = i as u32;
        }
        len.fetch_sub(1, Ordering::Relaxed);
        slot.map(|s| s.value)
    }

    /// Removes expired entries among the next few keys, so that state does not outlive
    /// its deadline by more than the time the sweep takes to come round.
    fn sweep_some(&mut self, now: u64, len: &AtomicUsize) {
        for _ in 0..SWEEP_PER_INSERT {
            if self.keys.is_empty() {
                return;
            }
            if self.sweep >= self.keys.len() {
                self.sweep = 0;
            }
            let i = self.sweep;
            if self.keys[i].deadline <= now {
                self.remove_at(i, len);
            } else {
                self.sweep += 1;
            }
        }
    }

    /// Removes every expired entry; returns how many.
    fn purge(&mut self, now: u64, len: &AtomicUsize) -> usize {
        self.last_sweep = now;
        let mut removed = 0;
        let mut i = 0;
        while i < self.keys.len() {
            if self.keys[i].deadline <= now {
                self.remove_at(i, len);
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Adds `key`, absent from the table, making room if the shard is full.
    fn insert_new<E: Evict<V, Mark = M>>(
        &mut self,
        key: K,
        value: V,
        deadline: u64,
        now: u64,
        evict: &E,
        len: &AtomicUsize,
    ) -> (&mut Slot<V>, &mut Key<K, M>) {
        self.sweep_some(now, len);
        let entry = Key {
            key: key.clone(),
            deadline,
            mark: M::default(),
        };
        let mut evicted = None;
        let pos = if self.keys.len() < self.cap {
            self.keys.push(entry);
            len.fetch_add(1, Ordering::Relaxed);
            self.keys.len() - 1
        } else {
            let victim = evict.victim(&mut Candidates {
                keys: &mut self.keys,
                map: &self.map,
                rng: &mut self.rng,
                hand: &mut self.hand,
                now: Timestamp::from_nanos(now),
            });
            let victim = victim.min(self.keys.len() - 1);
            let old = std::mem::replace(&mut self.keys[victim], entry);
            evicted = self.map.remove(&old.key);
            victim
        };
        let slot = Slot {
            value,
            deadline,
            pos: pos as u32,
        };
        let slot = match self.map.entry(key) {
            hash_map::Entry::Vacant(v) => v.insert(slot),
            hash_map::Entry::Occupied(o) => {
                // Not reached: the caller found no entry for `key`.
                let s = o.into_mut();
                *s = slot;
                s
            }
        };
        // The evicted value is dropped here, once the shard is consistent again.
        drop(evicted);
        (slot, &mut self.keys[pos])
    }
}

/// A shard on cache lines of its own, so that threads on different shards do not
/// contend for one line.
#[repr(align(128))]
struct Padded<T>(T);

type Locked<K, V, M> = Padded<Mutex<Shard<K, V, M>>>;

/// A bounded map split in shards, with a deadline per entry and a pluggable eviction
/// rule. See the [module docs](self).
///
/// Every operation takes `now`, the caller's current time; an entry is live while
/// `now` is before its deadline. Closures passed to the map run under a shard's lock:
/// keep them short (no keyed hash, no I/O) and do not use the map from inside them
/// (that would wait for the lock it holds).
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::Timestamp;
/// use tollgate_core::sharded::{SecondChance, ShardedMap};
///
/// // Per-key counters that live for 10 s after their last update; CLOCK eviction.
/// let counters: ShardedMap<u64, u32, SecondChance> = ShardedMap::builder(1_000)
///     .evict(SecondChance)
///     .build();
/// let idle = Duration::from_secs(10);
/// let t = Timestamp::from_secs(100);
/// for _ in 0..3 {
///     counters.update(&42, t, t.saturating_add(idle), || 0, |n| *n += 1);
/// }
/// assert_eq!(counters.get(&42, t), Some(3));
/// assert_eq!(counters.get(&42, t.saturating_add(idle)), None);
/// assert!(counters.len() <= counters.capacity());
/// ```
pub struct ShardedMap<K, V, E: Evict<V> = EarliestDeadline> {
    shards: Box<[Locked<K, V, E::Mark>]>,
    hasher: Seeded,
    /// Shard count minus one (a power of two minus one).
    mask: usize,
    evict: E,
    max_entries: usize,
    /// How often a write sweeps its whole shard (ns); 0: only the incremental sweep.
    sweep_every: u64,
    /// Entries held (expired ones included until swept), on a line of its own: the
    /// header above is read on every operation, this is written on new keys only.
    len: Padded<AtomicUsize>,
}

/// Builds a [`ShardedMap`]: `ShardedMap::builder(max_entries)`.
#[must_use]
pub struct Builder<K, V, E = EarliestDeadline> {
    max_entries: usize,
    shards: Option<usize>,
    seed: Option<u64>,
    sweep_every: Option<Duration>,
    evict: E,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V, E: fmt::Debug> fmt::Debug for Builder<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("max_entries", &self.max_entries)
            .field("shards", &self.shards)
            .field("sweep_interval", &self.sweep_every)
            .field("evict", &self.evict)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> Builder<K, V, E> {
    /// At most `shards` shards (rounded down to a power of two, at most 1024 and at
    /// most `max_entries`). The default is eight per available core, fewer when a
    /// shard would hold less than 16 entries.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Seeds the key hasher and the eviction sampling, for reproducible tests. The
    /// default seed is random per map.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Also removes a shard's expired entries on the first write to it after
    /// `interval` since its last sweep, so that expired state leaves memory within
    /// `interval` of its deadline while the shard is in use. Without it, expired
    /// entries go when a sweep of a few entries per new key or an eviction meets them,
    /// or on [`ShardedMap::purge_expired`].
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_every = Some(interval);
        self
    }

    /// The eviction rule (default: [`EarliestDeadline`]).
    pub fn evict<E2: Evict<V>>(self, rule: E2) -> Builder<K, V, E2> {
        Builder {
            max_entries: self.max_entries,
            shards: self.shards,
            seed: self.seed,
            sweep_every: self.sweep_every,
            evict: rule,
            _types: PhantomData,
        }
    }

    /// The map.
    pub fn build(self) -> ShardedMap<K, V, E>
    where
        E: Evict<V>,
    {
        let max_entries = self.max_entries.max(1);
        let wanted = self.shards.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
            cores.saturating_mul(8).min((max_entries / MIN_PER_SHARD).max(1))
        });
        let n = wanted.clamp(1, MAX_SHARDS.min(max_entries));
        let n = 1usize << n.ilog2();
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().hash_one(0x7011_9a7e_u64));
        let shards = (0..n)
            .map(|i| {
                // Caps add up to `max_entries` exactly; positions are `u32`.
                let cap = (max_entries / n + usize::from(i < max_entries % n)).min(u32::MAX as usize);
                let rng = (seed ^ 0x2545_f491_4f6c_dd1d)
                    .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                Padded(Mutex::new(Shard {
                    map: HashMap::with_hasher(Seeded(seed)),
                    keys: Vec::new(),
                    cap,
                    // A zero xorshift state stays zero.
                    rng: rng | 1,
                    hand: 0,
                    sweep: 0,
                    last_sweep: 0,
                }))
            })
            .collect();
        ShardedMap {
            shards,
            hasher: Seeded(seed),
            mask: n - 1,
            evict: self.evict,
            max_entries,
            sweep_every: self.sweep_every.map_or(0, |d| duration_nanos(d).max(1)),
            len: Padded(AtomicUsize::new(0)),
        }
    }
}

impl<K, V> ShardedMap<K, V, EarliestDeadline> {
    /// A builder of a map of at most `max_entries` entries (at least 1).
    pub fn builder(max_entries: usize) -> Builder<K, V> {
        Builder {
            max_entries,
            shards: None,
            seed: None,
            sweep_every: None,
            evict: EarliestDeadline::default(),
            _types: PhantomData,
        }
    }
}

impl<K, V, E: Evict<V>> fmt::Debug for ShardedMap<K, V, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedMap")
            .field("len", &self.len())
            .field("capacity", &self.max_entries)
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// A key's place in the map, handed to the closure of [`ShardedMap::entry`].
pub enum Entry<'a, K, V, E: Evict<V> = EarliestDeadline> {
    /// The key holds a live entry.
    Occupied(Occupied<'a, K, V, E>),
    /// The key holds nothing, or an expired entry (which counts as nothing).
    Vacant(Vacant<'a, K, V, E>),
}

/// A live entry, under its shard's lock.
pub struct Occupied<'a, K, V, E: Evict<V> = EarliestDeadline> {
    slot: &'a mut Slot<V>,
    key: &'a mut Key<K, E::Mark>,
    removed: &'a mut Option<usize>,
}

/// A key without a live entry, under its shard's lock.
pub struct Vacant<'a, K, V, E: Evict<V> = EarliestDeadline> {
    shard: &'a mut Shard<K, V, E::Mark>,
    key: &'a K,
    /// Where the key's expired entry sits in `keys`, if it has one.
    expired: Option<usize>,
    evict: &'a E,
    len: &'a AtomicUsize,
    now: u64,
    removed: &'a mut Option<usize>,
}

impl<'a, K: Hash + Eq + Clone, V, E: Evict<V>> Entry<'a, K, V, E> {
    /// The key.
    pub fn key(&self) -> &K {
        match self {
            Entry::Occupied(o) => o.key(),
            Entry::Vacant(v) => v.key(),
        }
    }

    /// The live entry, made with `init()` and `deadline` if there is none. A live
    /// entry keeps its deadline (set it with [`Occupied::set_deadline`]).
    pub fn or_insert_with(self, deadline: Timestamp, init: impl FnOnce() -> V) -> Occupied<'a, K, V, E> {
        match self {
            Entry::Occupied(o) => o,
            Entry::Vacant(v) => v.insert(init(), deadline),
        }
    }
}

impl<'a, K, V, E: Evict<V>> Occupied<'a, K, V, E> {
    /// The key.
    pub fn key(&self) -> &K {
        &self.key.key
    }

    /// The value.
    pub fn get(&self) -> &V {
        &self.slot.value
    }

    /// The value, to change in place.
    pub fn get_mut(&mut self) -> &mut V {
        &mut self.slot.value
    }

    /// The value, for the rest of the closure.
    pub fn into_mut(self) -> &'a mut V {
        &mut self.slot.value
    }

    /// When the entry stops counting.
    pub fn deadline(&self) -> Timestamp {
        Timestamp::from_nanos(self.slot.deadline)
    }

    /// Moves the entry's deadline (a deadline not after `now` makes it count as absent
    /// from now on).
    #[inline]
    pub fn set_deadline(&mut self, deadline: Timestamp) {
        self.slot.deadline = deadline.as_nanos();
        self.key.deadline = deadline.as_nanos();
    }

    /// Removes the entry when the closure returns (its value is dropped then).
    pub fn remove(self) {
        *self.removed = Some(self.slot.pos as usize);
    }
}

impl<'a, K: Hash + Eq + Clone, V, E: Evict<V>> Vacant<'a, K, V, E> {
    /// The key.
    pub fn key(&self) -> &K {
        self.key
    }

    /// Stores `value` until `deadline`, making room if the shard is full (the
    /// [`Evict`] rule picks the entry that goes), and returns the new entry.
    pub fn insert(self, value: V, deadline: Timestamp) -> Occupied<'a, K, V, E> {
        let deadline = deadline.as_nanos();
        let shard = self.shard;
        let (slot, key) = match self.expired {
            // The key's expired entry makes room for its new one.
            Some(pos) => {
                let Shard { map, keys, .. } = shard;
                let slot = map.get_mut(self.key).expect("an expired entry is in the table");
                let old = std::mem::replace(&mut slot.value, value);
                slot.deadline = deadline;
                let key = &mut keys[pos];
                key.deadline = deadline;
                key.mark = E::Mark::default();
                drop(old);
                (slot, key)
            }
            None => shard.insert_new(self.key.clone(), value, deadline, self.now, self.evict, self.len),
        };
        Occupied {
            slot,
            key,
            removed: self.removed,
        }
    }
}

impl<K: Hash + Eq + Clone, V, E: Evict<V>> ShardedMap<K, V, E> {
    /// A map of at most `max_entries` entries (at least 1), with the default rule of `E`
    /// and the default settings (see [`ShardedMap::builder`] for others).
    pub fn new(max_entries: usize) -> Self
    where
        E: Default,
    {
        ShardedMap::builder(max_entries).evict(E::default()).build()
    }

    #[inline]
    fn lock(&self, key: &K) -> MutexGuard<'_, Shard<K, V, E::Mark>> {
        // The middle bits pick the shard: the table uses the low bits for buckets and
        // the top seven for its tags.
        let i = (self.hasher.hash_one(key) >> 32) as usize & self.mask;
        // A panic in a caller's closure leaves the shard consistent (every change to
        // its structure completes before a closure runs), so a poisoned lock is used.
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[inline]
    fn maybe_sweep(&self, shard: &mut Shard<K, V, E::Mark>, now: u64) {
        if self.sweep_every != 0 && now.saturating_sub(shard.last_sweep) >= self.sweep_every {
            shard.purge(now, &self.len.0);
        }
    }

    #[inline]
    fn hit(&self, mark: &mut E::Mark, now: Timestamp) {
        if size_of::<E::Mark>() != 0 {
            self.evict.hit(mark, now);
        }
    }

    /// A clone of the live value at `key`.
    #[inline]
    pub fn get(&self, key: &K, now: Timestamp) -> Option<V>
    where
        V: Clone,
    {
        self.get_with(key, now, V::clone)
    }

    /// `f` of the live value at `key`, without moving its deadline.
    #[inline]
    pub fn get_with<R>(&self, key: &K, now: Timestamp, f: impl FnOnce(&V) -> R) -> Option<R> {
        let mut shard = self.lock(key);
        let Shard { map, keys, .. } = &mut *shard;
        let slot = map.get(key)?;
        if slot.deadline <= now.as_nanos() {
            return None;
        }
        if size_of::<E::Mark>() != 0 {
            self.hit(&mut keys[slot.pos as usize].mark, now);
        }
        Some(f(&slot.value))
    }

    /// Stores `value` at `key` until `deadline`; returns the live value it replaces.
    ///
    /// When the shard is full and the key is new, the [`Evict`] rule picks the entry
    /// that makes room: the new entry is always stored. A `deadline` not after `now`
    /// stores nothing and removes the key.
    pub fn insert(&self, key: K, value: V, deadline: Timestamp, now: Timestamp) -> Option<V> {
        let n = now.as_nanos();
        let d = deadline.as_nanos();
        let mut guard = self.lock(&key);
        let shard = &mut *guard;
        self.maybe_sweep(shard, n);
        if d <= n {
            let pos = shard.map.get(&key)?.pos as usize;
            let live = shard.keys[pos].deadline > n;
            return shard.remove_at(pos, &self.len.0).filter(|_| live);
        }
        if let Some(slot) = shard.map.get_mut(&key) {
            let live = slot.deadline > n;
            let old = std::mem::replace(&mut slot.value, value);
            slot.deadline = d;
            let k = &mut shard.keys[slot.pos as usize];
            k.deadline = d;
            if live {
                self.hit(&mut k.mark, now);
            } else {
                k.mark = E::Mark::default();
            }
            drop(guard);
            return live.then_some(old);
        }
        shard.insert_new(key, value, d, n, &self.evict, &self.len.0);
        None
    }

    /// Runs `f` on the key's [`Entry`] under its shard's lock and returns what `f`
    /// returns: a read-modify-write that concurrent calls for the same key run one
    /// after another (a check-and-spend, a session update).
    ///
    /// ```
    /// use tollgate_core::Timestamp;
    /// use tollgate_core::sharded::{Entry, ShardedMap};
    ///
    /// let map: ShardedMap<u64, u64> = ShardedMap::new(100);
    /// let now = Timestamp::from_secs(1);
    /// let until = Timestamp::from_secs(60);
    /// // Adds 5, or removes the entry once it would pass 8; returns the new total.
    /// let add = |n: u64| map.entry(&1, now, |e| match e {
    ///     Entry::Occupied(o) if *o.get() + n > 8 => { o.remove(); 0 }
    ///     Entry::Occupied(mut o) => { *o.get_mut() += n; *o.get() }
    ///     Entry::Vacant(v) => *v.insert(n, until).get(),
    /// });
    /// assert_eq!(add(5), 5);
    /// assert_eq!(add(5), 0);
    /// assert_eq!(map.get(&1, now), None);
    /// ```
    #[inline]
    pub fn entry<R>(&self, key: &K, now: Timestamp, f: impl FnOnce(Entry<'_, K, V, E>) -> R) -> R {
        let n = now.as_nanos();
        let mut guard = self.lock(key);
        let shard = &mut *guard;
        self.maybe_sweep(shard, n);
        let mut removed = None;
        let entry = match shard.map.get_mut(key) {
            Some(slot) if slot.deadline > n => {
                let k = &mut shard.keys[slot.pos as usize];
                self.hit(&mut k.mark, now);
                Entry::Occupied(Occupied {
                    slot,
                    key: k,
                    removed: &mut removed,
                })
            }
            found => {
                let expired = found.map(|s| s.pos as usize);
                Entry::Vacant(Vacant {
                    shard: &mut *shard,
                    key,
                    expired,
                    evict: &self.evict,
                    len: &self.len.0,
                    now: n,
                    removed: &mut removed,
                })
            }
        };
        let r = f(entry);
        if let Some(pos) = removed {
            let gone = shard.remove_at(pos, &self.len.0);
            drop(guard);
            drop(gone);
        }
        r
    }

    /// Runs `f` on the live value at `key`, made with `init()` if there is none, and
    /// moves its deadline to `deadline`: the update of state with an idle expiry
    /// (`deadline` = `now` + the idle time).
    #[inline]
    pub fn update<R>(
        &self,
        key: &K,
        now: Timestamp,
        deadline: Timestamp,
        init: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let n = now.as_nanos();
        let mut guard = self.lock(key);
        let shard = &mut *guard;
        self.maybe_sweep(shard, n);
        let Shard { map, keys, .. } = &mut *shard;
        if let Some(slot) = map.get_mut(key) {
            let k = &mut keys[slot.pos as usize];
            if slot.deadline > n {
                self.hit(&mut k.mark, now);
            } else {
                // Expired: starts again from `init`, as a new entry.
                slot.value = init();
                k.mark = E::Mark::default();
            }
            slot.deadline = deadline.as_nanos();
            k.deadline = deadline.as_nanos();
            return f(&mut slot.value);
        }
        let (slot, _) = shard.insert_new(
            key.clone(),
            init(),
            deadline.as_nanos(),
            n,
            &self.evict,
            &self.len.0,
        );
        f(&mut slot.value)
    }

    /// Removes the entry at `key`, live or expired; returns its value if it was live.
    pub fn remove(&self, key: &K, now: Timestamp) -> Option<V> {
        let mut guard = self.lock(key);
        let pos = guard.map.get(key)?.pos as usize;
        let live = guard.keys[pos].deadline > now.as_nanos();
        let gone = guard.remove_at(pos, &self.len.0);
        drop(guard);
        gone.filter(|_| live)
    }

    /// Removes every entry.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut shard = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            let old = std::mem::replace(&mut shard.map, HashMap::with_hasher(self.hasher));
            let n = shard.keys.len();
            shard.keys.clear();
            shard.hand = 0;
            shard.sweep = 0;
            self.len.0.fetch_sub(n, Ordering::Relaxed);
            // The values are dropped once the shard is consistent and unlocked.
            drop(shard);
            drop(old);
        }
    }

    /// Removes every entry expired at `now`; returns how many. The request path sweeps
    /// a little at a time: call this from a timer to bound retention when traffic stops.
    pub fn purge_expired(&self, now: Timestamp) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .purge(now.as_nanos(), &self.len.0)
            })
            .sum()
    }

    /// Calls `f` with each live entry's key, value and deadline, a shard at a time
    /// under its lock (for admin listings; not for the request path).
    pub fn for_each(&self, now: Timestamp, mut f: impl FnMut(&K, &V, Timestamp)) {
        for s in self.shards.iter() {
            let shard = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, slot) in &shard.map {
                if slot.deadline > now.as_nanos() {
                    f(key, &slot.value, Timestamp::from_nanos(slot.deadline));
                }
            }
        }
    }
}

impl<K, V, E: Evict<V>> ShardedMap<K, V, E> {
    /// The number of entries held, expired ones not yet swept included (one atomic read).
    pub fn len(&self) -> usize {
        self.len.0.load(Ordering::Relaxed)
    }

    /// True if the map holds nothing (one atomic read: a cheap check before a lookup).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.max_entries
    }

    /// The number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The interval of the periodic sweep, if set ([`Builder::sweep_interval`]).
    pub fn sweep_interval(&self) -> Option<Duration> {
        (self.sweep_every != 0).then(|| Duration::from_nanos(self.sweep_every))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use std::collections::HashMap as StdMap;

    const SEC: u64 = 1_000_000_000;

    fn t(nanos: u64) -> Timestamp {
        Timestamp::from_nanos(nanos)
    }

    /// Every shard's table and key list agree, and `len` counts them.
    fn consistent<K: Hash + Eq + Clone + fmt::Debug, V, E: Evict<V>>(m: &ShardedMap<K, V, E>) {
        let mut total = 0;
        for s in m.shards.iter() {
            let s = s.0.lock().unwrap();
            assert_eq!(s.map.len(), s.keys.len());
            assert!(s.keys.len() <= s.cap);
            for (i, k) in s.keys.iter().enumerate() {
                let slot = &s.map[&k.key];
                assert_eq!(slot.pos as usize, i, "{:?}", k.key);
                assert_eq!(slot.deadline, k.deadline);
            }
            total += s.keys.len();
        }
        assert_eq!(total, m.len());
    }

    #[test]
    fn caps_add_up_and_shards_are_powers_of_two() {
        for max in [0, 1, 2, 3, 15, 16, 17, 100, 1_000, 100_000] {
            let m: ShardedMap<u64, ()> = ShardedMap::new(max);
            let caps: usize = m.shards.iter().map(|s| s.0.lock().unwrap().cap).sum();
            assert_eq!(caps, max.max(1));
            assert_eq!(m.capacity(), max.max(1));
            assert!(m.shard_count().is_power_of_two());
            assert!(m.shard_count() <= MAX_SHARDS);
        }
        let m: ShardedMap<u64, ()> = ShardedMap::builder(100).shards(100).build();
        assert_eq!(m.shard_count(), 64);
        let m: ShardedMap<u64, ()> = ShardedMap::builder(3).shards(8).build();
        assert_eq!(m.shard_count(), 2);
    }

    #[test]
    fn cap_holds_under_a_million_distinct_keys() {
        let m: ShardedMap<u128, u64> = ShardedMap::new(1_000);
        let now = t(SEC);
        for i in 0..1_000_000u64 {
            let k = u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            m.insert(k, i, NEVER, now);
            if i % 4096 == 0 {
                assert!(m.len() <= 1_000);
                assert_eq!(m.get(&k, now), Some(i), "the newest entry is kept");
            }
        }
        assert_eq!(m.len(), 1_000, "every shard filled up");
        consistent(&m);
        // Memory is bounded too. The table settles at up to four times its entries:
        // the tombstones of removed keys make it grow once before it rehashes in place.
        for s in m.shards.iter() {
            let s = s.0.lock().unwrap();
            assert!(
                s.keys.capacity() <= 2 * s.cap.max(4),
                "{} for {}",
                s.keys.capacity(),
                s.cap
            );
            assert!(
                s.map.capacity() <= 4 * s.cap.max(4),
                "{} for {}",
                s.map.capacity(),
                s.cap
            );
        }
    }

    #[test]
    fn entries_expire_on_the_given_clock() {
        let clock = FakeClock::new(Timestamp::from_secs(1_000));
        let m: ShardedMap<u64, &str> = ShardedMap::new(100);
        let deadline = clock.now().saturating_add(Duration::from_secs(10));
        assert_eq!(m.insert(1, "a", deadline, clock.now()), None);
        clock.advance(Duration::from_nanos(10 * SEC - 1));
        assert_eq!(m.get(&1, clock.now()), Some("a"));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(m.get(&1, clock.now()), None, "gone at its deadline");
        assert_eq!(m.len(), 1, "held until swept");
        // Expired counts as absent everywhere.
        assert_eq!(m.remove(&1, clock.now()), None);
        assert_eq!(m.len(), 0);
        m.insert(1, "a", deadline, Timestamp::from_secs(1_000));
        assert_eq!(
            m.insert(1, "b", NEVER, clock.now()),
            None,
            "replaced an expired entry"
        );
        assert_eq!(m.insert(1, "c", NEVER, clock.now()), Some("b"));
        // A past deadline stores nothing and removes the key.
        assert_eq!(m.insert(1, "d", clock.now(), clock.now()), Some("c"));
        assert_eq!(m.get(&1, clock.now()), None);
        assert!(m.is_empty());
        // purge_expired drops exactly the expired ones.
        for i in 0..10u64 {
            let d = clock.now().saturating_add(Duration::from_secs(i + 1));
            m.insert(i, "x", d, clock.now());
        }
        clock.advance(Duration::from_secs(5));
        assert_eq!(m.purge_expired(clock.now()), 5);
        assert_eq!(m.len(), 5);
        let mut live = Vec::new();
        m.for_each(clock.now(), |k, _, d| {
            assert!(d > clock.now());
            live.push(*k);
        });
        live.sort_unstable();
        assert_eq!(live, vec![5, 6, 7, 8, 9]);
        consistent(&m);
        m.clear();
        assert!(m.is_empty());
        consistent(&m);
    }

    #[test]
    fn the_incremental_and_periodic_sweeps_free_expired_entries() {
        // Incremental: each new key examines a few others.
        let m: ShardedMap<u64, ()> = ShardedMap::builder(64).shards(1).build();
        for i in 0..32 {
            m.insert(i, (), t(10), t(1));
        }
        for i in 100..132 {
            m.insert(i, (), NEVER, t(20));
        }
        assert_eq!(m.len(), 32, "the expired ones made room");
        consistent(&m);
        // Periodic: the first write after the interval sweeps the whole shard.
        let m: ShardedMap<u64, ()> = ShardedMap::builder(64)
            .shards(1)
            .sweep_interval(Duration::from_nanos(100))
            .build();
        assert_eq!(m.sweep_interval(), Some(Duration::from_nanos(100)));
        // The first write sweeps (the shard was never swept), then not for 100 ns.
        for i in 0..32 {
            m.insert(i, (), t(1_080), t(1_000));
        }
        m.update(&999, t(1_060), NEVER, || (), |_| ());
        assert_eq!(m.len(), 33, "not yet");
        m.update(&999, t(1_100), NEVER, || (), |_| ());
        assert_eq!(m.len(), 1, "one sweep of the shard");
        consistent(&m);
    }

    #[test]
    fn earliest_deadline_evicts_expired_then_closest_to_its_deadline() {
        // One shard of 4, and enough samples that the sample holds every entry.
        let m: ShardedMap<u64, u64> = ShardedMap::builder(4)
            .shards(1)
            .seed(7)
            .evict(EarliestDeadline::new(64))
            .build();
        for (k, d) in [(1, 500), (2, 300), (3, 900), (4, 700)] {
            m.insert(k, k, t(d), t(0));
        }
        m.insert(5, 5, t(1_000), t(100));
        assert_eq!(m.get(&2, t(100)), None, "the earliest deadline went");
        m.insert(6, 6, t(1_000), t(100));
        assert_eq!(m.get(&1, t(100)), None);
        for k in [3, 4, 5, 6] {
            assert_eq!(m.get(&k, t(100)), Some(k));
        }
        // An expired entry goes before any live one, whatever the deadlines.
        let m: ShardedMap<u64, u64> = ShardedMap::builder(64)
            .shards(1)
            .seed(9)
            .evict(EarliestDeadline::new(8))
            .build();
        for k in 0..64 {
            let d = if k == 0 { 50 } else { 1_000 + k };
            m.insert(k, k, t(d), t(0));
        }
        for k in 100..110 {
            // The sweep (four keys per insertion) finds key 0 within 16 insertions at
            // most, eviction as soon as it samples it; either way it goes first.
            m.insert(k, k, t(5_000), t(60));
        }
        assert!((1..64).filter(|k| m.get(k, t(60)).is_some()).count() >= 64 - 10);
        assert!(m.len() <= 64);
        consistent(&m);
    }

    #[test]
    fn a_flood_of_one_off_keys_replaces_itself_before_spent_budgets() {
        // Rate-limit shape: the deadline is when the budget is full again. Keys that
        // spent much have far deadlines; flood keys spent one unit.
        let m: ShardedMap<u64, u32> = ShardedMap::builder(1_000).seed(3).build();
        let now = t(SEC);
        for k in 0..100u64 {
            m.insert(k, 50, t(SEC + 3_600 * SEC), now);
        }
        for k in 1_000..200_000u64 {
            m.insert(k, 1, t(2 * SEC), now);
        }
        let kept = (0..100u64).filter(|k| m.get(k, now).is_some()).count();
        assert!(kept >= 95, "only {kept} of 100 spent budgets kept");
        assert!(m.len() <= 1_000);
    }

    #[test]
    fn second_chance_keeps_the_keys_that_come_back() {
        let m: ShardedMap<u64, u64, SecondChance> =
            ShardedMap::builder(64).seed(1).evict(SecondChance).build();
        let hot = 0xdead_beef_0000_0001u64;
        let mut x = 1u64;
        for i in 0..10_000u64 {
            m.update(&hot, t(i), NEVER, || 0, |v| *v += 1);
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            m.update(&x, t(i), NEVER, || 0, |_| ());
            assert!(m.len() <= 64);
        }
        assert_eq!(m.get(&hot, t(10_000)), Some(10_000));
        consistent(&m);
    }

    /// Drops the entry with the smallest value: a rule that reads values.
    struct SmallestValue;

    impl Evict<u64> for SmallestValue {
        type Mark = ();

        fn victim<K: Hash + Eq>(&self, c: &mut Candidates<'_, K, u64, ()>) -> usize {
            (0..c.len()).min_by_key(|&i| *c.value(i)).unwrap_or(0)
        }
    }

    #[test]
    fn a_custom_rule_is_honoured() {
        let m: ShardedMap<u64, u64, SmallestValue> =
            ShardedMap::builder(8).shards(1).evict(SmallestValue).build();
        let now = t(1);
        for k in 0..8u64 {
            m.insert(k, 100 - k, NEVER, now);
        }
        for k in 8..12u64 {
            m.insert(k, 1_000, NEVER, now);
        }
        // 7, 6, 5, 4 had the smallest values.
        for k in 0..12u64 {
            assert_eq!(m.get(&k, now).is_some(), !(4..8).contains(&k), "{k}");
        }
        consistent(&m);
    }

    #[test]
    fn entry_reads_modifies_and_removes() {
        let m: ShardedMap<u64, u64> = ShardedMap::new(100);
        let now = t(10);
        // Vacant: nothing stored unless inserted.
        assert!(m.entry(&1, now, |e| matches!(e, Entry::Vacant(_))));
        assert!(m.is_empty());
        let v = m.entry(&1, now, |e| *e.or_insert_with(t(100), || 7).get());
        assert_eq!(v, 7);
        // or_insert_with keeps a live entry's value and deadline.
        m.entry(&1, now, |e| {
            let o = e.or_insert_with(t(200), || 9);
            assert_eq!((*o.get(), o.deadline()), (7, t(100)));
            assert_eq!(*o.key(), 1);
        });
        m.entry(&1, now, |e| {
            let Entry::Occupied(mut o) = e else { panic!("live") };
            *o.get_mut() += 1;
            o.set_deadline(t(300));
        });
        assert_eq!(m.get(&1, t(299)), Some(8));
        // Removal from an entry just inserted, and from a live one.
        m.entry(&2, now, |e| {
            let Entry::Vacant(v) = e else { panic!("new") };
            v.insert(1, t(100)).remove();
        });
        assert_eq!(m.get(&2, now), None);
        m.entry(&1, now, |e| {
            let Entry::Occupied(o) = e else { panic!("live") };
            o.remove();
        });
        assert!(m.is_empty());
        // An expired entry is vacant, and a new value takes its place.
        m.insert(3, 1, t(20), now);
        m.entry(&3, t(20), |e| {
            let Entry::Vacant(v) = e else { panic!("expired") };
            assert_eq!(*v.key(), 3);
            v.insert(2, t(40));
        });
        assert_eq!(m.get(&3, t(30)), Some(2));
        assert_eq!(m.len(), 1);
        consistent(&m);
    }

    #[test]
    fn concurrent_updates_are_exact() {
        let m: ShardedMap<u64, u64> = ShardedMap::new(1_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..10_000u64 {
                        m.update(&(i % 8), t(1), NEVER, || 0, |v| *v += 1);
                    }
                });
            }
        });
        for k in 0..8 {
            assert_eq!(m.get(&k, t(1)), Some(5_000));
        }
        // A check-and-spend never spends past the budget.
        let spent = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        let ok = m.entry(&99, t(1), |e| {
                            let mut o = e.or_insert_with(NEVER, || 0);
                            let ok = *o.get() < 500;
                            if ok {
                                *o.get_mut() += 1;
                            }
                            ok
                        });
                        if ok {
                            spent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(spent.into_inner(), 500);
        consistent(&m);
    }

    #[test]
    fn string_keys_hash_apart() {
        let m: ShardedMap<String, usize> = ShardedMap::new(1_000);
        let keys = ["", "a", "a\0", "ab", "abcdefgh", "abcdefgh\0", "abcdefghi"];
        for (i, k) in keys.iter().enumerate() {
            m.insert((*k).to_owned(), i, NEVER, t(1));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(m.get(&(*k).to_owned(), t(1)), Some(i));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32, u16),
        Get(u8),
        Remove(u8),
        Update(u8, u16),
        Advance(u16),
        Purge,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..16, any::<u32>(), 0u16..200).prop_map(|(k, v, d)| Op::Insert(k, v, d)),
            (0u8..16).prop_map(Op::Get),
            (0u8..16).prop_map(Op::Remove),
            (0u8..16, 1u16..200).prop_map(|(k, d)| Op::Update(k, d)),
            (0u16..100).prop_map(Op::Advance),
            Just(Op::Purge),
        ]
    }

    proptest::proptest! {
        /// Without eviction, the map answers as a plain map of (value, deadline).
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..400)) {
            let m: ShardedMap<u8, u32> = ShardedMap::builder(1_000).shards(4).build();
            let mut model: StdMap<u8, (u32, u64)> = StdMap::new();
            let mut now = 1_000u64;
            for op in ops {
                let live = |model: &StdMap<u8, (u32, u64)>, k: u8, now: u64| {
                    model.get(&k).filter(|(_, d)| *d > now).map(|(v, _)| *v)
                };
                match op {
                    Op::Insert(k, v, d) => {
                        let d = now + u64::from(d);
                        let expected = live(&model, k, now);
                        if d > now { model.insert(k, (v, d)); } else { model.remove(&k); }
                        proptest::prop_assert_eq!(m.insert(k, v, t(d), t(now)), expected);
                    }
                    Op::Get(k) => {
                        proptest::prop_assert_eq!(m.get(&k, t(now)), live(&model, k, now));
                    }
                    Op::Remove(k) => {
                        let expected = live(&model, k, now);
                        model.remove(&k);
                        proptest::prop_assert_eq!(m.remove(&k, t(now)), expected);
                    }
                    Op::Update(k, d) => {
                        let d = now + u64::from(d);
                        let v = live(&model, k, now).unwrap_or(0).wrapping_add(1);
                        model.insert(k, (v, d));
                        let got = m.update(&k, t(now), t(d), || 0, |x| { *x = x.wrapping_add(1); *x });
                        proptest::prop_assert_eq!(got, v);
                    }
                    Op::Advance(dt) => now += u64::from(dt),
                    Op::Purge => {
                        m.purge_expired(t(now));
                        model.retain(|_, (_, d)| *d > now);
                        proptest::prop_assert_eq!(m.len(), model.len());
                    }
                }
                proptest::prop_assert!(m.len() >= model.values().filter(|(_, d)| *d > now).count());
            }
            consistent(&m);
        }

        /// Whatever the keys and the cap, the map never holds more than its cap and
        /// always keeps the entry just stored.
        #[test]
        fn never_above_the_cap(cap in 1usize..80, keys in proptest::collection::vec(0u64..500, 1..600), clock in proptest::bool::ANY) {
            let m: ShardedMap<u64, u64> = ShardedMap::new(cap);
            let c: ShardedMap<u64, u64, SecondChance> = ShardedMap::builder(cap).evict(SecondChance).build();
            for (i, k) in keys.into_iter().enumerate() {
                let now = t(i as u64);
                let d = t(i as u64 + if clock { 50 } else { 10_000 });
                m.insert(k, i as u64, d, now);
                c.update(&k, now, d, || 0, |v| *v = i as u64);
                proptest::prop_assert_eq!(m.get(&k, now), Some(i as u64));
                proptest::prop_assert_eq!(c.get(&k, now), Some(i as u64));
                proptest::prop_assert!(m.len() <= cap && c.len() <= cap);
            }
            consistent(&m);
            consistent(&c);
        }
    }
}
