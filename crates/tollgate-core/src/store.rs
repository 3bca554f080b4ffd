//! State stores: small async traits, with a bounded in-process default.
//!
//! Keys are [`StoreKey`]s, which can only be built from a [`KeyedDigest`], so no raw
//! identifier can become a store key. Every entry has a TTL.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::Op;
use serde::{Deserialize, Serialize};

use crate::pseudonym::KeyedDigest;

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
    fn insert<'a>(&'a self, key: &'a StoreKey, value: V, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Removes the value at `key`.
    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>>;
}

#[derive(Clone)]
struct Timed<V> {
    value: V,
    ttl: Duration,
}

struct PerEntryTtl;

impl<K, V> Expiry<K, Timed<V>> for PerEntryTtl {
    fn expire_after_create(&self, _: &K, v: &Timed<V>, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }

    fn expire_after_update(&self, _: &K, v: &Timed<V>, _: Instant, _: Option<Duration>) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// A bounded in-process cache with a TTL per entry: moka under a fixed entry cap,
/// so a flood of distinct keys evicts old entries instead of growing memory.
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
    cache: moka::sync::Cache<K, Timed<V>>,
}

impl<K, V> Clone for MemoryCache<K, V> {
    fn clone(&self) -> Self {
        MemoryCache {
            cache: self.cache.clone(),
        }
    }
}

impl<K, V> fmt::Debug for MemoryCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl<K, V> MemoryCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache holding at most `max_entries` entries.
    pub fn new(max_entries: u64) -> Self {
        MemoryCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// The value at `key`, if present and not expired.
    pub fn get(&self, key: &K) -> Option<V> {
        self.cache.get(key).map(|t| t.value)
    }

    /// Stores `value` at `key` for `ttl`.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        self.cache.insert(key, Timed { value, ttl });
    }

    /// Removes the value at `key`.
    pub fn remove(&self, key: &K) {
        self.cache.invalidate(key);
    }

    /// Atomically replaces the value at `key` with `f(current)`: `Some((value, ttl))`
    /// stores, `None` removes. Returns what `f` returned. Concurrent updates of one
    /// key run one after another.
    pub fn update<R>(&self, key: K, f: impl FnOnce(Option<&V>) -> (Option<(V, Duration)>, R)) -> R {
        let mut result = None;
        self.cache.entry(key).and_compute_with(|current| {
            let (next, r) = f(current.as_ref().map(|e| &e.value().value));
            result = Some(r);
            match next {
                Some((value, ttl)) => Op::Put(Timed { value, ttl }),
                None => Op::Remove,
            }
        });
        result.expect("compute closure runs exactly once")
    }

    /// The number of entries (approximate until [`MemoryCache::run_pending_tasks`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs moka's pending maintenance (evictions, expiry) now; tests use it to read
    /// an exact entry count.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// All live entries (for admin listings; not for the request path).
    pub fn entries(&self) -> Vec<(Arc<K>, V)> {
        self.cache.iter().map(|(k, t)| (k, t.value)).collect()
    }
}

/// The in-process [`StateStore`]: a [`MemoryCache`] keyed by [`StoreKey`].
pub type MemoryStore<V> = MemoryCache<StoreKey, V>;

impl<V: Clone + Send + Sync + 'static> StateStore<V> for MemoryCache<StoreKey, V> {
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<V>, StoreError>> {
        Box::pin(std::future::ready(Ok(MemoryCache::get(self, key))))
    }

    fn insert<'a>(&'a self, key: &'a StoreKey, value: V, ttl: Duration) -> BoxFuture<'a, Result<(), StoreError>> {
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
    fn bounded_under_a_flood() {
        let cache: MemoryCache<u64, u64> = MemoryCache::new(1_000);
        for i in 0..50_000 {
            cache.insert(i, i, Duration::from_secs(600));
        }
        cache.run_pending_tasks();
        assert!(cache.entry_count() <= 1_000, "{}", cache.entry_count());
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
    }
}
