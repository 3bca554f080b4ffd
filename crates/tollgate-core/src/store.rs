//! State stores: small async traits, with a bounded in-process default.
//!
//! Keys are [`StoreKey`]s, which can only be built from a [`KeyedDigest`], so no raw
//! identifier can become a store key. Every entry has a TTL.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, system_clock};
use crate::pseudonym::KeyedDigest;
use crate::sharded::{Entry, ShardedMap};

/// A store key: `tollgate:{namespace}:{digest}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey(Arc<str>);

impl StoreKey {
    /// The key of `digest` in `namespace` (a short static name such as `freeze`).
    pub fn new(namespace: &'static str, digest: &KeyedDigest) -> Self {
        StoreKey(format!("tollgate:{namespace}:{}", digest.to_hex().as_str()).into())
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.0)
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a store could not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The store is unreachable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store did not answer within its timeout.
    #[error("store timed out after {0:?}")]
    Timeout(Duration),
    /// The store answered with data that does not decode.
    #[error("store returned undecodable data: {0}")]
    Corrupt(String),
}

/// What a use of a store does when the store cannot answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Let the request through as if the store had no objection.
    Open,
    /// Refuse the request.
    Closed,
}

/// The future a store method returns: boxed, so stores can be trait objects and
/// layers need not be generic over them. In-process stores add synchronous fast
/// paths (`FreezeList::check_immediate`) so the hot path allocates no future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A keyed store of values with a TTL per entry.
pub trait StateStore<V>: Send + Sync + 'static {
    /// The value at `key`, if present and not expired.
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<V>, StoreError>>;

    /// Stores `value` at `key` for `ttl`.
    fn insert<'a>(
        &'a self,
        key: &'a StoreKey,
        value: V,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes the value at `key`.
    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>>;

    /// A read-modify-write of the value at `key`: `f` gets the current value (`None`
    /// if absent or expired) and returns the next, which is stored for `ttl` and
    /// returned.
    ///
    /// A store shared by several processes makes this atomic (no update lost
    /// between replicas), running `f` again when another write came first, so `f`
    /// must only compute its result. The default, a `get` then an `insert`, suits a
    /// store of one process. `Err` means the current value could not be read; a
    /// value computed but not stored is logged and returned.
    fn update<'a>(
        &'a self,
        key: &'a StoreKey,
        ttl: Duration,
        f: &'a mut (dyn FnMut(Option<&V>) -> V + Send),
    ) -> BoxFuture<'a, Result<V, StoreError>>
    where
        V: Clone + Send + 'a,
    {
        Box::pin(async move {
            let prev = self.get(key).await?;
            let next = f(prev.as_ref());
            if let Err(error) = self.insert(key, next.clone(), ttl).await {
                tracing::warn!(target: "tollgate::store", %error, "could not save a value");
            }
            Ok(next)
        })
    }
}

/// A bounded in-process cache with a TTL per entry, on the layer's clock: a
/// [`ShardedMap`] under a fixed entry cap, so a flood of distinct keys evicts the
/// entries closest to expiry instead of growing memory.
///
/// Clones share the same entries.
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::store::MemoryCache;
///
/// let cache: MemoryCache<u64, &str> = MemoryCache::new(10_000);
/// cache.insert(1, "one", Duration::from_secs(60));
/// assert_eq!(cache.get(&1), Some("one"));
/// ```
pub struct MemoryCache<K, V> {
    map: Arc<ShardedMap<K, V>>,
    clock: SharedClock,
}

impl<K, V> Clone for MemoryCache<K, V> {
    fn clone(&self) -> Self {
        MemoryCache {
            map: self.map.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<K, V> fmt::Debug for MemoryCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("entries", &self.map.len())
            .field("max_entries", &self.map.capacity())
            .finish()
    }
}

impl<K, V> MemoryCache<K, V>
where
    K: Hash + Eq + Clone,
{
    /// A cache holding at most `max_entries` entries (at least 1), on the system clock.
    pub fn new(max_entries: u64) -> Self {
        Self::with_clock(max_entries, system_clock())
    }

    /// A cache holding at most `max_entries` entries (at least 1), whose TTLs run on `clock`.
    pub fn with_clock(max_entries: u64, clock: SharedClock) -> Self {
        MemoryCache {
            map: Arc::new(ShardedMap::new(
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            )),
            clock,
        }
    }

    /// The value at `key`, if present and not expired.
    pub fn get(&self, key: &K) -> Option<V>
    where
        V: Clone,
    {
        self.map.get(key, self.clock.now())
    }

    /// Stores `value` at `key` for `ttl` (a zero `ttl` removes the key).
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        let now = self.clock.now();
        self.map.insert(key, value, now.saturating_add(ttl), now);
    }

    /// Removes the value at `key`.
    pub fn remove(&self, key: &K) {
        self.map.remove(key, self.clock.now());
    }

    /// Atomically replaces the value at `key` with `f(current)`: `Some((value, ttl))`
    /// stores (a zero `ttl` removes), `None` removes. Returns what `f` returned.
    /// Concurrent updates of one key run one after another; `f` runs under a lock, so
    /// keep it short.
    pub fn update<R>(&self, key: K, f: impl FnOnce(Option<&V>) -> (Option<(V, Duration)>, R)) -> R {
        let now = self.clock.now();
        self.map.entry(&key, now, |entry| match entry {
            Entry::Occupied(mut current) => {
                let (next, r) = f(Some(current.get()));
                match next {
                    Some((value, ttl)) if !ttl.is_zero() => {
                        *current.get_mut() = value;
                        current.set_deadline(now.saturating_add(ttl));
                    }
                    _ => current.remove(),
                }
                r
            }
            Entry::Vacant(vacant) => {
                let (next, r) = f(None);
                if let Some((value, ttl)) = next
                    && !ttl.is_zero()
                {
                    vacant.insert(value, now.saturating_add(ttl));
                }
                r
            }
        })
    }

    /// The number of entries, expired ones not yet swept included.
    pub fn entry_count(&self) -> u64 {
        self.map.len() as u64
    }

    /// Removes expired entries now (the cache otherwise sweeps a few on each new key);
    /// tests use it to read an exact entry count.
    pub fn purge_expired(&self) {
        self.map.purge_expired(self.clock.now());
    }

    /// All live entries (for admin listings; not for the request path).
    pub fn entries(&self) -> Vec<(K, V)>
    where
        V: Clone,
    {
        let mut out = Vec::new();
        self.map
            .for_each(self.clock.now(), |k, v, _| out.push((k.clone(), v.clone())));
        out
    }
}

/// The in-process [`StateStore`]: a [`MemoryCache`] keyed by [`StoreKey`].
pub type MemoryStore<V> = MemoryCache<StoreKey, V>;

impl<V: Clone + Send + Sync + 'static> StateStore<V> for MemoryCache<StoreKey, V> {
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<V>, StoreError>> {
        Box::pin(std::future::ready(Ok(MemoryCache::get(self, key))))
    }

    fn insert<'a>(
        &'a self,
        key: &'a StoreKey,
        value: V,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        MemoryCache::insert(self, key.clone(), value, ttl);
        Box::pin(std::future::ready(Ok(())))
    }

    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>> {
        MemoryCache::remove(self, key);
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{FakeClock, Timestamp};
    use crate::pseudonym::{Domain, PseudonymSecret, Pseudonymizer};

    fn key(i: u64) -> StoreKey {
        let p = Pseudonymizer::new(
            PseudonymSecret::from_bytes(&[3; 32]).unwrap(),
            Duration::from_secs(60),
        );
        StoreKey::new("test", &p.digest(Domain::SUBJECT, &i.to_be_bytes()))
    }

    #[test]
    fn key_shape() {
        let k = key(1);
        assert!(k.as_str().starts_with("tollgate:test:"));
        assert_eq!(k.as_str().len(), "tollgate:test:".len() + 32);
    }

    #[tokio::test]
    async fn entries_expire() {
        let store: MemoryStore<u32> = MemoryCache::new(100);
        StateStore::insert(&store, &key(1), 7, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(StateStore::get(&store, &key(1)).await.unwrap(), Some(7));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(StateStore::get(&store, &key(1)).await.unwrap(), None);
    }

    #[test]
    fn entries_expire_on_the_injected_clock() {
        let clock = FakeClock::new(Timestamp::from_secs(1_000));
        let cache: MemoryStore<u32> = MemoryCache::with_clock(100, Arc::new(clock.clone()));
        cache.insert(key(1), 7, Duration::from_secs(10));
        cache.insert(key(2), 8, Duration::from_secs(20));
        cache.insert(key(3), 9, Duration::ZERO);
        assert_eq!(cache.get(&key(3)), None, "a zero TTL stores nothing");
        clock.advance(Duration::from_secs(10));
        assert_eq!(cache.get(&key(1)), None);
        assert_eq!(cache.entries(), vec![(key(2), 8)]);
        assert_eq!(cache.entry_count(), 2);
        cache.purge_expired();
        assert_eq!(cache.entry_count(), 1);
        cache.remove(&key(2));
        assert_eq!(cache.entry_count(), 0);
    }

    #[test]
    fn bounded_under_a_flood() {
        let cache: MemoryCache<u64, u64> = MemoryCache::new(1_000);
        for i in 0..50_000 {
            cache.insert(i, i, Duration::from_secs(600));
            assert!(cache.entry_count() <= 1_000, "{}", cache.entry_count());
        }
        assert_eq!(cache.get(&49_999), Some(49_999));
    }

    #[tokio::test]
    async fn usable_as_a_trait_object() {
        let store: Arc<dyn StateStore<u32>> = Arc::new(MemoryStore::<u32>::new(10));
        store.insert(&key(1), 1, Duration::from_secs(60)).await.unwrap();
        assert_eq!(store.get(&key(1)).await.unwrap(), Some(1));
        store.remove(&key(1)).await.unwrap();
        assert_eq!(store.get(&key(1)).await.unwrap(), None);
    }

    #[test]
    fn update_is_atomic_per_key() {
        let cache: MemoryCache<u64, u64> = MemoryCache::new(100);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        cache.update(1, |v| {
                            (Some((v.copied().unwrap_or(0) + 1, Duration::from_secs(60))), ())
                        });
                    }
                });
            }
        });
        assert_eq!(cache.get(&1), Some(4_000));
        let removed = cache.update(1, |v| (None, v.copied()));
        assert_eq!(removed, Some(4_000));
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.update(1, |v| (Some((5, Duration::ZERO)), v.copied())), None);
        assert_eq!(cache.entry_count(), 0, "a zero TTL stores nothing");
    }
}
