//! Where rate-limit state lives: the [`RateLimitStore`] trait and its bounded
//! in-process implementation.
//!
//! # The contract
//!
//! A store keeps, for each [`StoreKey`], one theoretical arrival time (TAT, integer
//! nanoseconds since the Unix epoch) per limit, in the order the limits are given
//! (see [`crate::gcra`] for what a TAT means). A key the store has never seen, or
//! whose state expired, has TAT `0` for every limit: a full budget.
//!
//! [`RateLimitStore::check_and_spend`] must, **atomically per key**:
//! 1. read the key's TATs (missing entries are `0`),
//! 2. compute [`gcra::decide_all`]`(tats, now, limits, cost)`: the request is admitted
//!    only if every limit admits it,
//! 3. if admitted, store the advanced TATs ([`Decision::tats`]); if denied, change
//!    nothing,
//! 4. set the key's time to live to [`Decision::ttl`]: the time until every limit's
//!    budget would be full again, when the state equals no state. A store may evict
//!    entries early under memory pressure (an evicted key starts again with a full
//!    budget); it must not let them outlive that TTL by more than its housekeeping
//!    delay,
//! 5. return the [`Decision`].
//!
//! `now` is the layer's clock. A shared store (Redis) may substitute its own time so
//! that replicas with skewed clocks agree; [`Decision::now`] then reports the time it
//! used. The caller picks keys so that one key always comes with the same list of
//! limits (the layer scopes keys by route when a route has its own limits: see
//! [`RateLimitKey`]).
//!
//! Any store must return, for the same stored TATs, `now`, limits and cost, exactly
//! the decision [`gcra::decide_all`] returns: that function is the specification.

use std::collections::HashMap;
use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, OnceLock};

use tollgate_core::clock::Timestamp;
use tollgate_core::pseudonym::KeyedDigest;
use tollgate_core::store::{StoreError, StoreKey};

use crate::gcra::{self, Decision, Limit, MAX_LIMITS};

/// The store namespace of tier-wide rate-limit keys: `tollgate:rl:{digest}`.
pub const NAMESPACE: &str = "rl";

/// A rate-limit key: a [`KeyedDigest`] (of a subject, a network, or a custom key) in a
/// namespace: `rl` for a tier's limits, `rl:{scope}` for a route's own limits.
///
/// `Copy` and allocation-free; [`RateLimitKey::store_key`] gives the [`StoreKey`] a
/// shared store uses (`tollgate:rl:{hex}` or `tollgate:rl:{scope}:{hex}`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RateLimitKey {
    digest: KeyedDigest,
    namespace: &'static str,
    ns_hash: u64,
}

impl fmt::Debug for RateLimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RateLimitKey({}:{})",
            self.namespace,
            self.digest.to_hex().as_str()
        )
    }
}

impl Hash for RateLimitKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
        state.write_u64(self.ns_hash);
    }
}

/// Why a scope name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a rate-limit scope is 1 to 64 characters of a-z, 0-9, '-', '_', '.': got {0:?}")]
pub struct ScopeError(pub String);

impl RateLimitKey {
    /// The tier-wide key of `digest`.
    pub fn new(digest: KeyedDigest) -> Self {
        RateLimitKey {
            digest,
            namespace: NAMESPACE,
            ns_hash: fnv(NAMESPACE),
        }
    }

    /// The key of `digest` in a route scope (a policy name such as `login`).
    ///
    /// Build scoped keys' prototypes once (at layer build time) and reuse them with
    /// [`RateLimitKey::with_digest`]: the scope name is interned for the life of the
    /// process.
    pub fn scoped(scope: &str, digest: KeyedDigest) -> Result<Self, ScopeError> {
        let valid = (1..=64).contains(&scope.len())
            && scope
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid {
            return Err(ScopeError(scope.to_string()));
        }
        let namespace = intern(&format!("{NAMESPACE}:{scope}"));
        Ok(RateLimitKey {
            digest,
            namespace,
            ns_hash: fnv(namespace),
        })
    }

    /// The same namespace with another digest.
    pub fn with_digest(self, digest: KeyedDigest) -> Self {
        RateLimitKey { digest, ..self }
    }

    /// The digest.
    pub fn digest(&self) -> KeyedDigest {
        self.digest
    }

    /// The namespace: `rl` or `rl:{scope}`.
    pub fn namespace(&self) -> &'static str {
        self.namespace
    }

    /// The key as a shared store spells it.
    pub fn store_key(&self) -> StoreKey {
        StoreKey::new(self.namespace, &self.digest)
    }

    /// Reads a key back from its store form (`tollgate:{namespace}:{hex}`).
    pub fn from_store_key(key: &StoreKey) -> Option<Self> {
        let rest = key.as_str().strip_prefix("tollgate:")?;
        let (namespace, hex) = rest.rsplit_once(':')?;
        let digest = KeyedDigest::from_hex(hex)?;
        let ns_hash = fnv(namespace);
        let namespace = if namespace == NAMESPACE {
            NAMESPACE
        } else {
            intern(namespace)
        };
        Some(RateLimitKey {
            digest,
            namespace,
            ns_hash,
        })
    }
}

fn intern(s: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(name) = names.get(s) {
        return name;
    }
    // Bounded by the number of distinct scope names configured in this process.
    let name: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(name);
    name
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A rate-limit state store. See the [module docs](self) for the exact semantics.
///
/// Methods return `Send` futures so the layer can be generic over the store.
pub trait RateLimitStore: Clone + Send + Sync + 'static {
    /// Checks every limit of `key` at `now` and spends `cost` units in all of them only
    /// if all of them allow it, atomically per key.
    ///
    /// `limits` holds at most [`MAX_LIMITS`] limits; `cost` 0 reports without spending.
    fn check_and_spend(
        &self,
        key: &StoreKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// The same decision without a future and without building a [`StoreKey`], for
    /// stores that can answer at once (the in-process store). `None`, the default,
    /// means "call [`RateLimitStore::check_and_spend`] with [`RateLimitKey::store_key`]".
    /// The layer tries this first so that an in-process decision allocates nothing.
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
pub struct MemoryRateLimitStore {
    inner: std::sync::Arc<Inner>,
}

struct Inner {
    shards: Box<[Padded]>,
    mask: u64,
    max_entries: u64,
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

impl Clone for MemoryRateLimitStore {
    fn clone(&self) -> Self {
        MemoryRateLimitStore {
            inner: self.inner.clone(),
        }
    }
}

impl fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("max_entries", &self.inner.max_entries)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// The default entry cap of the in-process store.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

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
            inner: std::sync::Arc::new(Inner {
                shards,
                mask: count - 1,
                max_entries,
            }),
        }
    }

    fn shard(&self, key: &RateLimitKey) -> std::sync::MutexGuard<'_, Shard> {
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
    async fn check_and_spend(
        &self,
        key: &StoreKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        let key = RateLimitKey::from_store_key(key)
            .ok_or_else(|| StoreError::Corrupt("not a rate-limit store key".into()))?;
        Ok(self.decide(&key, limits, cost, now))
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
    fn store_key_round_trip() {
        let k = RateLimitKey::new(digest(1));
        assert_eq!(
            k.store_key().as_str(),
            format!("tollgate:rl:{}", digest(1).to_hex().as_str())
        );
        assert_eq!(RateLimitKey::from_store_key(&k.store_key()), Some(k));
        let s = RateLimitKey::scoped("login", digest(1)).unwrap();
        assert_ne!(s, k);
        assert!(s.store_key().as_str().starts_with("tollgate:rl:login:"));
        assert_eq!(RateLimitKey::from_store_key(&s.store_key()), Some(s));
        assert!(RateLimitKey::scoped("Bad Scope", digest(1)).is_err());
        assert!(RateLimitKey::scoped("", digest(1)).is_err());
    }

    #[tokio::test]
    async fn async_and_sync_paths_share_state() {
        let store = MemoryRateLimitStore::new(1000);
        let limits = [Limit::new(3, Duration::from_secs(1), 3).unwrap()];
        let k = RateLimitKey::scoped("x", digest(2)).unwrap();
        let now = Timestamp::from_secs(50);
        assert!(store.decide(&k, &limits, 2, now).allowed());
        let d = store
            .check_and_spend(&k.store_key(), &limits, 1, now)
            .await
            .unwrap();
        assert!(d.allowed());
        assert_eq!(d.cells()[0].remaining, 0);
        assert!(
            !store
                .check_and_spend_now(&k, &limits, 1, now)
                .unwrap()
                .unwrap()
                .allowed()
        );
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
