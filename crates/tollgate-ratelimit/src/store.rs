//! Where rate-limit state lives: the key, the [`RateLimitStore`] trait and its
//! bounded in-process implementation.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

use tollgate_core::clock::Timestamp;
use tollgate_core::pseudonym::KeyedDigest;
use tollgate_core::store::{BoxFuture, StoreError};

use crate::gcra::{self, Decision, Limit, MAX_LIMITS};

/// The store namespace of rate-limit keys: `tollgate:rl:…`.
const NAMESPACE: &str = "rl";

/// The longest scope name: with its length and hash, a key fills one 64-byte line.
const MAX_SCOPE: usize = 39;

/// A rate-limit key: a [`KeyedDigest`] (of a subject, a network, or a custom key),
/// either tier-wide or in a scope of its own (a route's own limits, a tier used on a
/// route, another component's budget such as the anomaly layer's throttle).
///
/// `Copy`, allocation-free and compared field by field: the in-process store uses it
/// as it is; a shared store spells it [`RateLimitKey::store_key`].
#[derive(Clone, Copy)]
pub struct RateLimitKey {
    digest: KeyedDigest,
    /// FNV-1a of the scope, so hashing a key does not walk the scope name.
    scope_hash: u64,
    scope_len: u8,
    scope: [u8; MAX_SCOPE],
}

impl PartialEq for RateLimitKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest && self.scope() == other.scope()
    }
}

impl Eq for RateLimitKey {}

impl Hash for RateLimitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
        state.write_u64(self.scope_hash);
    }
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope() {
            None => write!(f, "RateLimitKey({})", self.digest.to_hex().as_str()),
            Some(scope) => write!(f, "RateLimitKey({scope}:{})", self.digest.to_hex().as_str()),
        }
    }
}

/// Why a scope name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a rate-limit scope is 1 to 39 characters of a-z, 0-9, '-', '_', '.': got {0:?}")]
pub struct ScopeError(pub String);

impl RateLimitKey {
    /// The tier-wide key of `digest`.
    pub fn new(digest: KeyedDigest) -> Self {
        RateLimitKey {
            digest,
            scope_hash: 0,
            scope_len: 0,
            scope: [0; MAX_SCOPE],
        }
    }

    /// The key of `digest` in `scope` (a name such as `login`): a budget apart from
    /// the tier-wide one. Build a scope's key once and reuse it with
    /// [`RateLimitKey::with_digest`].
    pub fn scoped(scope: &str, digest: KeyedDigest) -> Result<Self, ScopeError> {
        let valid = (1..=MAX_SCOPE).contains(&scope.len())
            && scope
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid {
            return Err(ScopeError(scope.to_string()));
        }
        let mut bytes = [0; MAX_SCOPE];
        bytes[..scope.len()].copy_from_slice(scope.as_bytes());
        Ok(RateLimitKey {
            digest,
            scope_hash: fnv_hash(scope.as_bytes()),
            scope_len: scope.len() as u8,
            scope: bytes,
        })
    }

    /// The same scope with another digest.
    pub fn with_digest(self, digest: KeyedDigest) -> Self {
        RateLimitKey { digest, ..self }
    }

    /// The digest.
    pub fn digest(&self) -> KeyedDigest {
        self.digest
    }

    /// The scope, `None` for a tier-wide key.
    pub fn scope(&self) -> Option<&str> {
        let bytes = &self.scope[..usize::from(self.scope_len)];
        // Only `scoped` writes the bytes, from a checked ASCII name.
        (!bytes.is_empty()).then(|| std::str::from_utf8(bytes).expect("scopes are ASCII"))
    }

    /// The key as a shared store spells it: `tollgate:rl:{digest hex}`, or
    /// `tollgate:rl:{scope}:{digest hex}` for a scoped key. Stable across versions,
    /// so replicas of different versions share budgets.
    pub fn store_key(&self) -> String {
        let hex = self.digest.to_hex();
        match self.scope() {
            None => format!("tollgate:{NAMESPACE}:{}", hex.as_str()),
            Some(scope) => format!("tollgate:{NAMESPACE}:{scope}:{}", hex.as_str()),
        }
    }
}

/// FNV-1a: a stable hash of short configured names.
pub(crate) fn fnv_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Where rate-limit state lives. Layers hold it as a [`SharedRateLimitStore`]; the
/// in-process [`MemoryRateLimitStore`] is the default, a Redis store shares budgets
/// across replicas.
///
/// # The contract
///
/// A store keeps, for each [`RateLimitKey`], one theoretical arrival time (TAT,
/// integer nanoseconds since the Unix epoch) per limit, in the order the limits are
/// given (see [`crate::gcra`] for what a TAT means). Two keys are the same state
/// exactly when their scope and digest are equal. A key the store has never seen, or
/// whose state expired, has TAT `0` for every limit: a full budget.
///
/// [`RateLimitStore::check_and_spend`] must, **atomically per key** (no other
/// decision on the same key may interleave, on this replica or any other sharing the
/// state):
/// 1. read the key's TATs (missing entries are `0`);
/// 2. check **every** limit before spending in any:
///    [`gcra::decide_all`]`(tats, now, limits, cost)` admits the request only if
///    every limit admits it;
/// 3. if admitted, store the advanced TATs ([`Decision::tats`]); if denied, change
///    nothing (a request refused by a daily limit costs nothing per second);
/// 4. let the key expire after [`Decision::ttl`]: the time until every limit's budget
///    would be full again, when the state equals no state. A store may evict
///    entries early under memory pressure (an evicted key starts again with a full
///    budget); it must not let them outlive that TTL by more than its housekeeping
///    delay;
/// 5. return the [`Decision`]: for the same stored TATs, time, limits and cost,
///    exactly the one [`gcra::decide_all`] returns. That function is the
///    specification.
///
/// **Time.** `now` is the layer's clock ([`SharedClock`](tollgate_core::SharedClock),
/// a fake one in tests). A shared store may decide at its own time instead, so that
/// replicas with skewed clocks agree; it then decides the whole request at that one
/// time and [`Decision::now`] reports it. Never mix the two in one decision.
///
/// **Inputs.** `limits` holds one to [`MAX_LIMITS`] limits, and the layer always
/// gives one key the same list (a route with its own limits, or another tier, gets a
/// scope of its own). `cost` 0 reports the state without spending; a cost above a
/// limit's burst is never admitted.
///
/// **Failures.** An error makes the layer apply its `on_store_failure` policy; a
/// store with a fallback of its own (the Redis store's `local`) may answer a
/// [`Decision`] instead.
///
/// **The fast path.** [`RateLimitStore::check_and_spend_now`] gives the same
/// decision on the same state without a future, for stores that can answer at once;
/// it must not wait on I/O (a short lock is fine). The layer asks it first and calls
/// `check_and_spend` only when it answers `None`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_core::{Domain, Pseudonymizer, PseudonymSecret, Timestamp};
/// use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey, SharedRateLimitStore};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let store: SharedRateLimitStore = Arc::new(MemoryRateLimitStore::new(1_000));
/// let key = RateLimitKey::scoped("login", p.digest(Domain::SUBJECT, b"alice")).unwrap();
/// let limits = [Limit::new(1, Duration::from_secs(60), 1).unwrap()];
/// let now = Timestamp::from_secs(1_000);
/// assert!(store.check_and_spend(&key, &limits, 1, now).await.unwrap().allowed());
/// assert!(!store.check_and_spend_now(&key, &limits, 1, now).unwrap().unwrap().allowed());
/// # });
/// ```
pub trait RateLimitStore: Send + Sync + 'static {
    /// Checks every limit of `key` at `now` and spends `cost` units in all of them
    /// only if all of them allow it, atomically per key (see the contract above).
    fn check_and_spend<'a>(
        &'a self,
        key: &'a RateLimitKey,
        limits: &'a [Limit],
        cost: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>>;

    /// The same decision without a future, when the store can give it at once (the
    /// in-process store); `None`, the default, means "await
    /// [`RateLimitStore::check_and_spend`]". Must not wait on I/O.
    fn check_and_spend_now(
        &self,
        key: &RateLimitKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        let _ = (key, limits, cost, now);
        None
    }
}

/// The store a layer holds: one store can serve several layers and replicas.
pub type SharedRateLimitStore = Arc<dyn RateLimitStore>;

/// TATs per limit, in limit order.
type Tats = [u64; MAX_LIMITS];

/// A folded-multiply hasher: the keys are keyed HMAC outputs the caller cannot choose,
/// so a fast non-cryptographic mix is enough and HashDoS is not a concern.
#[derive(Default, Clone, Copy)]
struct MixHasher(u64);

const MIX: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Folded multiply: high and low halves of the 128-bit product, so every input
        // bit reaches both the shard bits (high) and the table bits (low).
        let full = u128::from(self.0 ^ n) * u128::from(MIX);
        self.0 = (full as u64) ^ ((full >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Mix = BuildHasherDefault<MixHasher>;

struct Entry {
    tats: Tats,
    /// When the state equals no state again (ns since the epoch).
    expires: u64,
    /// Where the key sits in `Shard::keys`.
    pos: u32,
}

struct Shard {
    /// The state, inline in the table: a decision on a known key touches one bucket.
    map: HashMap<RateLimitKey, Entry, Mix>,
    /// Every key with a copy of its expiry, for sampling on eviction and for the sweep
    /// without a table lookup per examined key.
    keys: Vec<(RateLimitKey, u64)>,
    cap: usize,
    rng: u64,
    sweep: usize,
}

/// How many keys an insertion into a full shard samples to choose a victim.
const EVICTION_SAMPLES: usize = 8;
/// How many keys each insertion of a new key examines for expiry.
const SWEEP_PER_INSERT: usize = 4;

impl Shard {
    fn next_rand(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn decide(&mut self, key: &RateLimitKey, limits: &[Limit], cost: u64, now: u64) -> Decision {
        let n = limits.len().min(MAX_LIMITS);
        if let Some(entry) = self.map.get_mut(key) {
            let tats = if entry.expires <= now {
                [0; MAX_LIMITS]
            } else {
                entry.tats
            };
            let d = gcra::decide_all(&tats[..n], now, limits, cost);
            if d.allowed() {
                for (s, t) in entry.tats.iter_mut().zip(d.tats()) {
                    *s = t;
                }
                entry.expires = now.saturating_add(d.ttl().as_nanos() as u64);
                self.keys[entry.pos as usize].1 = entry.expires;
            }
            return d;
        }
        let d = gcra::decide_all(&[], now, limits, cost);
        let ttl = d.ttl().as_nanos() as u64;
        if d.allowed() && ttl > 0 {
            let mut tats = [0; MAX_LIMITS];
            for (s, t) in tats.iter_mut().zip(d.tats()) {
                *s = t;
            }
            self.sweep(now);
            self.insert(*key, tats, now.saturating_add(ttl), now);
        }
        d
    }

    fn expires_at(&self, pos: usize) -> u64 {
        self.keys[pos].1
    }

    fn insert(&mut self, key: RateLimitKey, tats: Tats, expires: u64, now: u64) {
        if self.keys.len() < self.cap {
            let pos = self.keys.len() as u32;
            self.keys.push((key, expires));
            self.map.insert(key, Entry { tats, expires, pos });
            return;
        }
        if self.cap == 0 {
            return;
        }
        // Full: replace the sampled entry closest to a full budget (an expired one
        // loses nothing; a barely used one loses least).
        let len = self.keys.len() as u64;
        let mut victim = (self.next_rand() % len) as usize;
        let mut victim_expires = self.expires_at(victim);
        for _ in 1..EVICTION_SAMPLES {
            if victim_expires <= now {
                break;
            }
            let j = (self.next_rand() % len) as usize;
            let e = self.expires_at(j);
            if e < victim_expires {
                victim = j;
                victim_expires = e;
            }
        }
        self.map.remove(&self.keys[victim].0);
        self.keys[victim] = (key, expires);
        self.map.insert(
            key,
            Entry {
                tats,
                expires,
                pos: victim as u32,
            },
        );
    }

    /// Removes expired entries among the next few keys, so state does not outlive its
    /// TTL by more than the time the sweep takes to come round.
    fn sweep(&mut self, now: u64) {
        for _ in 0..SWEEP_PER_INSERT {
            if self.keys.is_empty() {
                return;
            }
            if self.sweep >= self.keys.len() {
                self.sweep = 0;
            }
            let i = self.sweep;
            if self.expires_at(i) <= now {
                self.remove_at(i);
            } else {
                self.sweep += 1;
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let (gone, _) = self.keys.swap_remove(i);
        self.map.remove(&gone);
        if let Some((moved, _)) = self.keys.get(i)
            && let Some(e) = self.map.get_mut(moved)
        {
            e.pos = i as u32;
        }
    }

    fn purge(&mut self, now: u64) {
        let mut i = 0;
        while i < self.keys.len() {
            if self.expires_at(i) <= now {
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
    }
}

/// The default store: in-process, bounded by entry count, each entry expiring when
/// its budget would be full again.
///
/// A sharded hash map under short mutexes (no lock is held across an `await`; an
/// uncontended decision takes a few tens of nanoseconds). Bounded: at most
/// `max_entries` keys. When a shard is full, a new key replaces the sampled entry
/// closest to a full budget: an expired entry (which loses nothing), or else the
/// entry with the least spent. A flood of distinct one-request keys therefore
/// replaces its own entries, not those of keys that have spent much of their quota,
/// and an attacker who wants to push out a key's state must spend more on each
/// flood key than that key has spent. An expired entry counts as absent at once; it
/// is removed by the sweep that examines a few keys on every insertion of a new key,
/// by eviction, or by [`MemoryRateLimitStore::purge_expired`].
///
/// Clones share the same state.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::{Pseudonymizer, PseudonymSecret, Timestamp, Domain};
/// use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitKey};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let key = RateLimitKey::new(p.digest(Domain::SUBJECT, b"alice"));
/// let store = MemoryRateLimitStore::new(100_000);
/// let limits = [Limit::new(2, Duration::from_secs(1), 2).unwrap()];
/// let now = Timestamp::from_secs(1_000);
/// assert!(store.decide(&key, &limits, 1, now).allowed());
/// assert!(store.decide(&key, &limits, 1, now).allowed());
/// assert!(!store.decide(&key, &limits, 1, now).allowed());
/// ```
#[derive(Clone)]
pub struct MemoryRateLimitStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Padded]>,
    mask: u64,
    max_entries: u64,
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

impl fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("max_entries", &self.inner.max_entries)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// The default entry cap of the in-process store.
pub(crate) const DEFAULT_MAX_ENTRIES: u64 = 100_000;

impl Default for MemoryRateLimitStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl MemoryRateLimitStore {
    /// A store holding at most `max_entries` keys.
    pub fn new(max_entries: u64) -> Self {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        // Enough shards that threads rarely meet, few enough that each holds many keys.
        let wanted = (threads * 16).next_power_of_two().min(1024) as u64;
        let count = wanted.min(max_entries.max(1)).next_power_of_two();
        let count = if count > max_entries.max(1) {
            count / 2
        } else {
            count
        }
        .max(1);
        let cap = (max_entries / count) as usize;
        let shards = (0..count)
            .map(|i| {
                Padded(Mutex::new(Shard {
                    map: HashMap::default(),
                    keys: Vec::new(),
                    cap,
                    rng: 0x9e37_79b9_7f4a_7c15 ^ (i + 1).wrapping_mul(MIX),
                    sweep: 0,
                }))
            })
            .collect();
        MemoryRateLimitStore {
            inner: Arc::new(Inner {
                shards,
                mask: count - 1,
                max_entries,
            }),
        }
    }

    fn shard(&self, key: &RateLimitKey) -> MutexGuard<'_, Shard> {
        let h = Mix::default().hash_one(key);
        let shard = &self.inner.shards[((h >> 40) & self.inner.mask) as usize];
        // A panic inside `decide` cannot leave a slot half-written in a way that
        // matters (the worst is one stale TAT), so a poisoned lock is still used.
        shard.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decision for `key`, computed and applied under the key's shard lock.
    pub fn decide(&self, key: &RateLimitKey, limits: &[Limit], cost: u64, now: Timestamp) -> Decision {
        self.shard(key).decide(key, limits, cost, now.as_nanos())
    }

    /// The TATs stored for `key`, if present and not expired at `now`.
    pub fn tats(&self, key: &RateLimitKey, now: Timestamp) -> Option<[u64; MAX_LIMITS]> {
        let shard = self.shard(key);
        let entry = shard.map.get(key)?;
        (entry.expires > now.as_nanos()).then_some(entry.tats)
    }

    /// The number of keys held (expired ones not yet swept included).
    pub fn entry_count(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).keys.len() as u64)
            .sum()
    }

    /// The most keys this store holds.
    pub fn max_entries(&self) -> u64 {
        self.inner.max_entries
    }

    /// Removes every entry expired at `now` (the request path sweeps incrementally;
    /// call this from a timer to bound retention when traffic stops).
    pub fn purge_expired(&self, now: Timestamp) {
        for s in self.inner.shards.iter() {
            s.0.lock()
                .unwrap_or_else(|e| e.into_inner())
                .purge(now.as_nanos());
        }
    }

    /// Every key held (for admin listings and tests; not for the request path).
    pub fn keys(&self) -> Vec<RateLimitKey> {
        let mut out = Vec::new();
        for s in self.inner.shards.iter() {
            let shard = s.0.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.keys.iter().map(|(k, _)| *k));
        }
        out
    }
}

impl RateLimitStore for MemoryRateLimitStore {
    fn check_and_spend<'a>(
        &'a self,
        key: &'a RateLimitKey,
        limits: &'a [Limit],
        cost: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(std::future::ready(Ok(self.decide(key, limits, cost, now))))
    }

    fn check_and_spend_now(
        &self,
        key: &RateLimitKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.decide(key, limits, cost, now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;
    use std::time::Duration;
    use tollgate_core::{Domain, PseudonymSecret, Pseudonymizer};

    fn digest(i: u64) -> KeyedDigest {
        static P: OnceLock<Pseudonymizer> = OnceLock::new();
        P.get_or_init(|| {
            Pseudonymizer::new(
                PseudonymSecret::from_bytes(&[5; 32]).unwrap(),
                Duration::from_secs(86_400),
            )
        })
        .digest(Domain::SUBJECT, &i.to_be_bytes())
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn keys_and_their_store_spelling() {
        assert_eq!(std::mem::size_of::<RateLimitKey>(), 64);
        let k = RateLimitKey::new(digest(1));
        assert_eq!(k.scope(), None);
        assert_eq!(
            k.store_key(),
            format!("tollgate:rl:{}", digest(1).to_hex().as_str())
        );
        let s = RateLimitKey::scoped("login", digest(1)).unwrap();
        assert_ne!(s, k);
        assert_eq!(s.scope(), Some("login"));
        assert_eq!(s.digest(), k.digest());
        assert_eq!(
            s.store_key(),
            format!("tollgate:rl:login:{}", digest(1).to_hex().as_str())
        );
        assert_eq!(s.with_digest(digest(2)).scope(), Some("login"));
        assert_ne!(s, RateLimitKey::scoped("logon", digest(1)).unwrap());
        assert_eq!(s, RateLimitKey::scoped("login", digest(1)).unwrap());
        for bad in ["Bad Scope", "", "a:b", &"x".repeat(40)] {
            assert!(RateLimitKey::scoped(bad, digest(1)).is_err(), "{bad:?}");
        }
        assert!(RateLimitKey::scoped(&"x".repeat(39), digest(1)).is_ok());
    }

    #[tokio::test]
    async fn async_and_sync_paths_share_state() {
        let store = MemoryRateLimitStore::new(1000);
        let limits = [Limit::new(3, Duration::from_secs(1), 3).unwrap()];
        let k = RateLimitKey::scoped("x", digest(2)).unwrap();
        let now = Timestamp::from_secs(50);
        assert!(store.decide(&k, &limits, 2, now).allowed());
        let shared: SharedRateLimitStore = Arc::new(store.clone());
        let d = shared.check_and_spend(&k, &limits, 1, now).await.unwrap();
        assert!(d.allowed());
        assert_eq!(d.cells()[0].remaining, 0);
        assert!(
            !shared
                .check_and_spend_now(&k, &limits, 1, now)
                .unwrap()
                .unwrap()
                .allowed()
        );
        // The tier-wide key of the same digest is another budget.
        assert!(store.decide(&RateLimitKey::new(digest(2)), &limits, 3, now).allowed());
    }

    #[test]
    fn state_expires_when_full_again() {
        let store = MemoryRateLimitStore::new(1000);
        let limits = [Limit::new(1, Duration::from_secs(10), 1).unwrap()];
        let k = RateLimitKey::new(digest(3));
        let t0 = 1_000 * SEC;
        assert!(store.decide(&k, &limits, 1, Timestamp::from_nanos(t0)).allowed());
        assert!(store.tats(&k, Timestamp::from_nanos(t0 + 10 * SEC - 1)).is_some());
        assert!(store.tats(&k, Timestamp::from_nanos(t0 + 10 * SEC)).is_none());
        assert_eq!(store.entry_count(), 1);
        store.purge_expired(Timestamp::from_nanos(t0 + 10 * SEC));
        assert_eq!(store.entry_count(), 0);
        // A denied request of a fresh key stores nothing.
        assert!(!store.decide(&k, &limits, 2, Timestamp::from_nanos(t0)).allowed());
        assert_eq!(store.entry_count(), 0);
    }

    #[test]
    fn tiny_caps_hold() {
        for cap in [0u64, 1, 3, 17, 100] {
            let store = MemoryRateLimitStore::new(cap);
            let limits = [Limit::new(1, Duration::from_secs(60), 1).unwrap()];
            for i in 0..1_000 {
                store.decide(
                    &RateLimitKey::new(digest(i)),
                    &limits,
                    1,
                    Timestamp::from_secs(10),
                );
            }
            assert!(store.entry_count() <= cap, "cap {cap}: {}", store.entry_count());
        }
    }

    proptest::proptest! {
        /// Without eviction, the store decides exactly as `gcra::decide_all` on a model
        /// that keeps every key's TATs forever (expiry only drops state equal to none).
        #[test]
        fn store_matches_the_model(
            ops in proptest::collection::vec((0u64..6, 0u64..400_000_000, 0u64..4, proptest::bool::ANY), 1..300),
        ) {
            let store = MemoryRateLimitStore::new(10_000);
            let limits = [
                Limit::new(5, Duration::from_secs(1), 3).unwrap(),
                Limit::new(20, Duration::from_secs(60), 20).unwrap(),
            ];
            let mut model: HashMap<u64, [u64; 2]> = HashMap::new();
            let mut now = 1_700_000_000 * SEC;
            for (k, dt, cost, scoped) in ops {
                now += dt;
                let id = k * 2 + u64::from(scoped);
                let key = if scoped {
                    RateLimitKey::scoped("p", digest(k)).unwrap()
                } else {
                    RateLimitKey::new(digest(k))
                };
                let tats = model.entry(id).or_default();
                let expected = gcra::decide_all(&tats[..], now, &limits, cost);
                let got = store.decide(&key, &limits, cost, Timestamp::from_nanos(now));
                proptest::prop_assert_eq!(got.allowed(), expected.allowed());
                for (a, b) in got.cells().iter().zip(expected.cells()) {
                    proptest::prop_assert_eq!(a.remaining, b.remaining);
                    proptest::prop_assert_eq!(a.retry_after, b.retry_after);
                    proptest::prop_assert_eq!(a.reset, b.reset);
                }
                if expected.allowed() {
                    tats.copy_from_slice(&[expected.cells()[0].tat, expected.cells()[1].tat]);
                }
            }
        }
    }

    #[test]
    fn concurrent_spends_on_one_key_never_exceed_quota() {
        let store = MemoryRateLimitStore::new(1000);
        let limits = [Limit::new(500, Duration::from_secs(3600), 500).unwrap()];
        let k = RateLimitKey::new(digest(4));
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        if store.decide(&k, &limits, 1, Timestamp::from_secs(7)).allowed() {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 500);
    }
}
