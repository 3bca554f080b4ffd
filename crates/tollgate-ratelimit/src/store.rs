//! Where rate-limit state lives: the key, the [`RateLimitStore`] trait and its
//! bounded in-process implementation.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tollgate_core::clock::Timestamp;
use tollgate_core::pseudonym::KeyedDigest;
use tollgate_core::sharded::{EarliestDeadline, Entry as MapEntry, ShardedMap};
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

    /// How many keys the store holds now, and its capacity, when it can tell at once
    /// (the in-process store); `None`, the default, for a remote store.
    fn size(&self) -> Option<(usize, usize)> {
        None
    }
}

/// The store a layer holds: one store can serve several layers and replicas.
pub type SharedRateLimitStore = Arc<dyn RateLimitStore>;

/// TATs per limit, in limit order.
type Tats = [u64; MAX_LIMITS];

/// The default store: in-process, bounded by entry count, each entry expiring when
/// its budget would be full again.
///
/// A [`ShardedMap`] of TATs (short per-shard mutexes, never held across an `await`;
/// an uncontended decision takes a few tens of nanoseconds), each entry's deadline the
/// time its budget is full again. Bounded: at most `max_entries` keys. When a shard is
/// full, a new key replaces the sampled entry closest to its deadline, that is closest
/// to a full budget ([`EarliestDeadline`]): an expired entry (which loses nothing), or
/// else the entry with the least spent. A flood of distinct one-request keys therefore
/// replaces its own entries, not those of keys that have spent much of their quota,
/// and an attacker who wants to push out a key's state must spend more on each flood
/// key than that key has spent. An expired entry counts as absent at once; it is
/// removed by the sweep that examines a few keys on every insertion of a new key, by
/// eviction, or by [`MemoryRateLimitStore::purge_expired`].
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
    map: Arc<ShardedMap<RateLimitKey, Tats, EarliestDeadline>>,
}

impl fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("max_entries", &self.map.capacity())
            .field("shards", &self.map.shard_count())
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
    /// A store holding at most `max_entries` keys (at least one).
    pub fn new(max_entries: u64) -> Self {
        let max_entries = usize::try_from(max_entries).unwrap_or(usize::MAX);
        MemoryRateLimitStore {
            map: Arc::new(ShardedMap::new(max_entries)),
        }
    }

    /// The decision for `key`, computed and applied under the key's shard lock.
    pub fn decide(&self, key: &RateLimitKey, limits: &[Limit], cost: u64, now: Timestamp) -> Decision {
        let at = now.as_nanos();
        self.map.entry(key, now, |entry| match entry {
            // A live entry: its budget is not full yet.
            MapEntry::Occupied(mut stored) => {
                let tats = stored.get_mut();
                let d = gcra::decide_all(&tats[..limits.len().min(MAX_LIMITS)], at, limits, cost);
                if d.allowed() {
                    for (s, t) in tats.iter_mut().zip(d.tats()) {
                        *s = t;
                    }
                    stored.set_deadline(now.saturating_add(d.ttl()));
                }
                d
            }
            // No state, or expired state: a full budget. A refusal stores nothing.
            MapEntry::Vacant(vacant) => {
                let d = gcra::decide_all(&[], at, limits, cost);
                if d.allowed() && !d.ttl().is_zero() {
                    let mut tats = [0; MAX_LIMITS];
                    for (s, t) in tats.iter_mut().zip(d.tats()) {
                        *s = t;
                    }
                    vacant.insert(tats, now.saturating_add(d.ttl()));
                }
                d
            }
        })
    }

    /// The TATs stored for `key`, if present and not expired at `now`.
    pub fn tats(&self, key: &RateLimitKey, now: Timestamp) -> Option<[u64; MAX_LIMITS]> {
        self.map.get(key, now)
    }

    /// The number of keys held (expired ones not yet swept included).
    pub fn entry_count(&self) -> u64 {
        self.map.len() as u64
    }

    /// The most keys this store holds.
    pub fn max_entries(&self) -> u64 {
        self.map.capacity() as u64
    }

    /// Removes every entry expired at `now` (the request path sweeps incrementally;
    /// call this from a timer to bound retention when traffic stops).
    pub fn purge_expired(&self, now: Timestamp) {
        self.map.purge_expired(now);
    }

    /// Every key with live state at `now` (for admin listings and tests; not for the
    /// request path).
    pub fn keys(&self, now: Timestamp) -> Vec<RateLimitKey> {
        let mut out = Vec::new();
        self.map.for_each(now, |key, _, _| out.push(*key));
        out
    }
}

impl RateLimitStore for MemoryRateLimitStore {
    fn size(&self) -> Option<(usize, usize)> {
        Some((self.map.len(), self.map.capacity()))
    }

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
    use std::collections::HashMap;
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
        assert!(
            store
                .decide(&RateLimitKey::new(digest(2)), &limits, 3, now)
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
            // A store holds at least one key.
            assert!(
                store.entry_count() <= cap.max(1),
                "cap {cap}: {}",
                store.entry_count()
            );
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
