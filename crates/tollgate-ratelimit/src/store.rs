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
//!    budget would be full again, when the state equals no state. A store may keep
//!    entries longer (never shorter), or evict them early under memory pressure (an
//!    evicted key simply starts again with a full budget),
//! 5. return the [`Decision`].
//!
//! `now` is the layer's clock. A shared store (Redis) may substitute its own time so
//! that replicas with skewed clocks agree; [`Decision::now`] then reports the time it
//! used. The caller picks keys so that one key always comes with the same list of
//! limits (the layer scopes keys by route when a route has its own limits).
//!
//! Any store must return, for the same stored TATs, `now`, limits and cost, exactly
//! the decision [`gcra::decide_all`] returns: that function is the specification.

use std::fmt;
use std::future::Future;

use tollgate_core::clock::Timestamp;
use tollgate_core::store::{MemoryCache, StoreError, StoreKey};

use crate::gcra::{self, Decision, Limit, MAX_LIMITS};

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

    /// The same decision without a future, for stores that can answer at once (the
    /// in-process store). `None`, the default, means "call
    /// [`RateLimitStore::check_and_spend`]". The layer tries this first so that an
    /// in-process decision needs no boxed future.
    fn check_and_spend_now(
        &self,
        key: &StoreKey,
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

/// The default store: in-process, bounded by entry count, each entry expiring when
/// its budget would be full again.
///
/// Built on [`MemoryCache`] (moka): updates of one key are atomic, and a flood of
/// distinct keys is held under `max_entries` (moka's TinyLFU admission keeps
/// frequently used keys over one-off ones).
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::{Pseudonymizer, PseudonymSecret, Timestamp, Domain, StoreKey};
/// use tollgate_ratelimit::{Limit, MemoryRateLimitStore, RateLimitStore};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let key = StoreKey::new("rl", &p.digest(Domain::SUBJECT, b"alice"));
/// let store = MemoryRateLimitStore::new(100_000);
/// let limits = [Limit::new(2, Duration::from_secs(1), 2).unwrap()];
/// let now = Timestamp::from_secs(1_000);
/// let spend = || store.check_and_spend_now(&key, &limits, 1, now).unwrap().unwrap();
/// assert!(spend().allowed());
/// assert!(spend().allowed());
/// assert!(!spend().allowed());
/// ```
#[derive(Clone)]
pub struct MemoryRateLimitStore {
    cache: MemoryCache<StoreKey, Tats>,
}

impl fmt::Debug for MemoryRateLimitStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRateLimitStore")
            .field("entries", &self.cache.entry_count())
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
        MemoryRateLimitStore {
            cache: MemoryCache::new(max_entries),
        }
    }

    /// The decision, computed and applied under moka's per-key lock.
    pub fn decide(&self, key: &StoreKey, limits: &[Limit], cost: u64, now: Timestamp) -> Decision {
        let now = now.as_nanos();
        self.cache.update(key.clone(), |current| {
            let tats = current.copied().unwrap_or([0; MAX_LIMITS]);
            let decision = gcra::decide_all(&tats[..limits.len().min(MAX_LIMITS)], now, limits, cost);
            let ttl = decision.ttl();
            let next = if decision.allowed() {
                let mut new = [0; MAX_LIMITS];
                for (slot, tat) in new.iter_mut().zip(decision.tats()) {
                    *slot = tat;
                }
                Some(new)
            } else {
                current.copied()
            };
            (next.filter(|_| !ttl.is_zero()).map(|v| (v, ttl)), decision)
        })
    }

    /// The TATs stored for `key`, if any (for tests and admin views).
    pub fn tats(&self, key: &StoreKey) -> Option<[u64; MAX_LIMITS]> {
        self.cache.get(key)
    }

    /// The number of keys held, after running pending evictions.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// Every key held (for admin listings and tests; not for the request path).
    pub fn keys(&self) -> Vec<StoreKey> {
        self.cache
            .entries()
            .into_iter()
            .map(|(k, _)| (*k).clone())
            .collect()
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
        Ok(self.decide(key, limits, cost, now))
    }

    fn check_and_spend_now(
        &self,
        key: &StoreKey,
        limits: &[Limit],
        cost: u64,
        now: Timestamp,
    ) -> Option<Result<Decision, StoreError>> {
        Some(Ok(self.decide(key, limits, cost, now)))
    }
}
