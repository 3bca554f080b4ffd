//! The shared Redis connection: timeouts, a circuit breaker, and the counters.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::PubSub;
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tollgate_core::{ConfigError, FailurePolicy, StoreError, StoreKey};

use crate::config::{StoreBackend, StoreConfig};
use crate::connection::{Connection, Target};

/// The counters of one [`RedisBackend`] and the stores built on it.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) calls: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) short_circuited: AtomicU64,
    pub(crate) outages: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    pub(crate) fail_open: AtomicU64,
    pub(crate) fail_closed: AtomicU64,
    pub(crate) fallback_local: AtomicU64,
    pub(crate) freeze_syncs: AtomicU64,
    pub(crate) freeze_sync_losses: AtomicU64,
    pub(crate) freeze_events: AtomicU64,
    pub(crate) freeze_read_through: AtomicU64,
    pub(crate) freeze_unreplicated: AtomicU64,
    pub(crate) penalty_syncs: AtomicU64,
    pub(crate) penalty_sync_losses: AtomicU64,
    pub(crate) penalty_events: AtomicU64,
}

/// A snapshot of a backend's counters (see [`RedisBackend::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// True while the backend considers Redis reachable.
    pub up: bool,
    /// Calls sent to Redis.
    pub calls: u64,
    /// Calls that failed (including timeouts).
    pub errors: u64,
    /// Calls that timed out.
    pub timeouts: u64,
    /// Calls not sent because Redis was down and no probe was due.
    pub short_circuited: u64,
    /// Switches from up to down.
    pub outages: u64,
    /// Switches from down to up.
    pub recoveries: u64,
    /// Uses that failed open (allowed, or answered from a local copy).
    pub fail_open: u64,
    /// Uses that failed closed (refused, or returned an error).
    pub fail_closed: u64,
    /// Rate-limit decisions made by the local fallback limiter.
    pub fallback_local: u64,
    /// Times a freeze list became current (subscribed and loaded).
    pub freeze_syncs: u64,
    /// Times a freeze list lost its subscription.
    pub freeze_sync_losses: u64,
    /// Freeze events received over pub/sub.
    pub freeze_events: u64,
    /// Freeze checks answered by reading Redis because the local copy was not current.
    pub freeze_read_through: u64,
    /// Freezes that fewer replicas than `[store.freeze] wait_replicas` confirmed in time.
    pub freeze_unreplicated: u64,
    /// Times a penalty board became current (subscribed and loaded).
    pub penalty_syncs: u64,
    /// Times a penalty board lost its subscription.
    pub penalty_sync_losses: u64,
    /// Penalty events received over pub/sub.
    pub penalty_events: u64,
}

/// Redis Cluster's hash slots.
const SLOTS: u16 = 16_384;

/// Breakers of a cluster backend: each covers 256 consecutive slots. A shard serves
/// contiguous slot ranges, so a failed shard opens about a third of them in a
/// 3-shard cluster, and keys on the other shards keep being decided in Redis.
const SLOT_GROUPS: usize = 64;

/// Redis Cluster's hash slot of a key: CRC16 (XMODEM) of the key, or of its hash tag
/// (the text between the first `{` and the next `}`, if not empty), modulo 16384.
fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        rest.iter()
            .position(|&b| b == b'}')
            .filter(|&close| close > 0)
            .map(|close| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

/// A circuit breaker: closed (`up`) or open until `next_probe` (nanoseconds since
/// the backend's `base`).
struct Breaker {
    up: AtomicBool,
    next_probe: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            up: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
        }
    }
}

struct Inner {
    target: Target,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry_interval: u64,
    base: Instant,
    /// One breaker on a single server; on a cluster one per slot group, so a failed
    /// shard trips only the groups it serves.
    breakers: Box<[Breaker]>,
    /// How many breakers are open: the backend is up while none is.
    down: AtomicUsize,
    counters: Counters,
    config: StoreConfig,
}

/// One Redis connection shared by every Redis store of a process.
///
/// On a single server (`backend = "redis"`), `redis`'s `ConnectionManager`: one
/// multiplexed connection (concurrent calls are pipelined on it) that reconnects by
/// itself. On a Redis Cluster (`backend = "redis-cluster"`), `redis`'s async
/// `ClusterConnection`: one multiplexed connection per node, each command routed to
/// the primary of its key's slot, the slot map refreshed after a failover. Every store
/// command touches one key, so each decision stays one atomic call on one shard.
/// Around it:
///
/// - every call is bounded by `timeout`;
/// - a circuit breaker: after a failure the backend is *down*; while down, one call
///   per `retry_interval` is let through to probe Redis and every other call fails
///   at once (no waiting on a dead server), each store applying its failure policy.
///   On a cluster the breaker is per slot group (1/64 of the slots), so only the keys
///   of a failed shard follow the policies while the other shards keep deciding;
/// - every switch between up (every breaker closed) and down is logged once (`warn`
///   when going down, `info` when back) and counted in [`RedisBackend::stats`].
///
/// Cheap to clone (one `Arc`). Building it does no I/O and needs no runtime; the
/// first call connects, and the connection's tasks then live on that call's Tokio
/// runtime: use one backend from one runtime.
///
/// ```
/// use tollgate_redis::{RedisBackend, StoreConfig};
///
/// let backend = RedisBackend::new(&StoreConfig::redis("redis://127.0.0.1:6379")).unwrap();
/// assert!(backend.stats().up);
/// ```
#[derive(Clone)]
pub struct RedisBackend(Arc<Inner>);

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisBackend")
            .field("prefix", &self.0.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend from the `[store]` section: a Redis Cluster when `backend =
    /// "redis-cluster"`, else one server (`url`). Fails on a bad setting, naming it.
    pub fn new(config: &StoreConfig) -> Result<Self, ConfigError> {
        let mut config = config.clone();
        if config.backend != StoreBackend::RedisCluster {
            config.backend = StoreBackend::Redis;
        }
        config.validate()?;
        let breaker_count = if config.backend == StoreBackend::RedisCluster {
            SLOT_GROUPS
        } else {
            1
        };
        let target = match config.backend {
            StoreBackend::RedisCluster => {
                Target::cluster(&config.resolved_urls()?, config.connect_timeout, config.timeout)
                    .map_err(|_| ConfigError::new("store.urls", "not a list of valid Redis URLs"))?
            }
            _ => Target::single(&config.resolved_url()?)
                .map_err(|_| ConfigError::new("store.url", "not a valid Redis URL"))?,
        };
        let prefix = match &config.namespace {
            Some(ns) => format!("tollgate:{ns}:"),
            None => "tollgate:".to_string(),
        };
        Ok(RedisBackend(Arc::new(Inner {
            target,
            prefix,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            retry_interval: u64::try_from(config.retry_interval.as_nanos()).unwrap_or(u64::MAX),
            base: Instant::now(),
            breakers: (0..breaker_count).map(|_| Breaker::default()).collect(),
            down: AtomicUsize::new(0),
            counters: Counters::default(),
            config,
        })))
    }

    /// The configuration this backend was built from.
    pub fn config(&self) -> &StoreConfig {
        &self.0.config
    }

    /// The prefix of every key this backend writes: `tollgate:` or `tollgate:{namespace}:`.
    pub fn key_prefix(&self) -> &str {
        &self.0.prefix
    }

    /// The Redis key of a [`StoreKey`]: the key itself, with the namespace (if any)
    /// inserted after `tollgate:`.
    pub fn key(&self, key: &StoreKey) -> String {
        self.key_of(key.as_str())
    }

    /// The Redis key of a key text `tollgate:…`, with the namespace inserted.
    pub fn key_of(&self, key: &str) -> String {
        let rest = key.strip_prefix("tollgate:").unwrap_or(key);
        let mut out = String::with_capacity(self.0.prefix.len() + rest.len());
        out.push_str(&self.0.prefix);
        out.push_str(rest);
        out
    }

    /// The Redis key of a fixed name (`freeze`), under the prefix.
    pub(crate) fn named_key(&self, name: &str) -> String {
        format!("{}{name}", self.0.prefix)
    }

    /// True while Redis is considered reachable (on a cluster: every shard).
    pub fn is_up(&self) -> bool {
        self.0.down.load(Ordering::Acquire) == 0
    }

    /// The counters.
    pub fn stats(&self) -> RedisStats {
        let c = &self.0.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            up: self.is_up(),
            calls: l(&c.calls),
            errors: l(&c.errors),
            timeouts: l(&c.timeouts),
            short_circuited: l(&c.short_circuited),
            outages: l(&c.outages),
            recoveries: l(&c.recoveries),
            fail_open: l(&c.fail_open),
            fail_closed: l(&c.fail_closed),
            fallback_local: l(&c.fallback_local),
            freeze_syncs: l(&c.freeze_syncs),
            freeze_sync_losses: l(&c.freeze_sync_losses),
            freeze_events: l(&c.freeze_events),
            freeze_read_through: l(&c.freeze_read_through),
            freeze_unreplicated: l(&c.freeze_unreplicated),
            penalty_syncs: l(&c.penalty_syncs),
            penalty_sync_losses: l(&c.penalty_sync_losses),
            penalty_events: l(&c.penalty_events),
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.0.counters
    }

    /// True on a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.0.target.is_cluster()
    }

    /// A pub/sub connection (on a cluster, to the `attempt`-th seed node).
    pub(crate) async fn pubsub(&self, attempt: usize) -> RedisResult<PubSub> {
        self.0.target.pubsub(attempt).await
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.0.connect_timeout
    }

    /// Sends `PING`, waiting up to the connect timeout (for readiness checks at start;
    /// the breaker is bypassed but updated).
    pub async fn ping(&self) -> Result<(), StoreError> {
        // On a cluster PING goes to every node, so its answer speaks for every breaker.
        self.finish(self.0.connect_timeout, 0..self.0.breakers.len(), async move {
            let mut conn = self.connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    async fn connection(&self) -> RedisResult<Connection> {
        self.0
            .target
            .connection(self.0.connect_timeout, self.0.timeout)
            .await
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The breaker of `key`'s part of the key space: the only one on a single server;
    /// on a cluster, the slot group of the key's hash slot.
    fn breaker_of(&self, key: &str) -> usize {
        if self.0.breakers.len() == 1 {
            0
        } else {
            usize::from(hash_slot(key.as_bytes())) * self.0.breakers.len() / usize::from(SLOTS)
        }
    }

    /// Whether a call may go to Redis now: always while its breaker is closed; while
    /// open, one probe per retry interval.
    fn admit(&self, breaker: usize) -> bool {
        let b = &self.0.breakers[breaker];
        if b.up.load(Ordering::Acquire) {
            return true;
        }
        let now = self.elapsed();
        let next = b.next_probe.load(Ordering::Acquire);
        now >= next
            && b.next_probe
                .compare_exchange(
                    next,
                    now.saturating_add(self.0.retry_interval),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn mark_down(&self, breakers: Range<usize>, cause: &str) {
        let next = self.elapsed().saturating_add(self.0.retry_interval);
        for b in &self.0.breakers[breakers] {
            b.next_probe.store(next, Ordering::Release);
            if b.up.swap(false, Ordering::AcqRel) && self.0.down.fetch_add(1, Ordering::AcqRel) == 0 {
                self.0.counters.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = "redis",
                    state = "down",
                    cause,
                    retry_interval_ms = self.0.config.retry_interval.as_millis() as u64,
                    "redis unreachable: stores follow their failure policies until it answers again"
                );
            }
        }
    }

    fn mark_up(&self, breakers: Range<usize>) {
        for b in &self.0.breakers[breakers] {
            if !b.up.load(Ordering::Acquire)
                && !b.up.swap(true, Ordering::AcqRel)
                && self.0.down.fetch_sub(1, Ordering::AcqRel) == 1
            {
                self.0.counters.recoveries.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    store = "redis",
                    state = "up",
                    "redis answers again: shared state resumes"
                );
            }
        }
    }

    /// Runs one Redis call on `key` under the timeout and `key`'s breaker.
    pub(crate) async fn run<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let breaker = self.breaker_of(key);
        if !self.admit(breaker) {
            self.0.counters.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        self.finish(self.0.timeout, breaker..breaker + 1, async move {
            op(self.connection().await?).await
        })
        .await
    }

    /// Runs one Redis call on `key` under the timeout, without asking the breaker (for
    /// the freeze list's loads right after its subscription connected).
    pub(crate) async fn run_now<T, F, Fut>(&self, key: &str, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let breaker = self.breaker_of(key);
        self.finish(self.0.timeout, breaker..breaker + 1, async move {
            op(self.connection().await?).await
        })
        .await
    }

    /// Awaits `fut` under `timeout`, counting it and updating `breakers` by its outcome.
    async fn finish<T>(
        &self,
        timeout: Duration,
        breakers: Range<usize>,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.0.counters.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                self.mark_up(breakers);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.0.counters.errors.fetch_add(1, Ordering::Relaxed);
                if is_outage(&e) {
                    self.mark_down(breakers, e.category());
                    if e.is_timeout() {
                        self.0.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(StoreError::Timeout(timeout));
                    }
                    Err(StoreError::Unavailable(describe(&e)))
                } else {
                    // Redis answered: it is up, the call itself was wrong.
                    self.mark_up(breakers);
                    Err(StoreError::Corrupt(describe(&e)))
                }
            }
            Err(_) => {
                self.0.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.0.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                self.mark_down(breakers, "timeout");
                Err(StoreError::Timeout(timeout))
            }
        }
    }

    /// Counts one use that followed its failure policy, logging the first of a run.
    pub(crate) fn record_policy(&self, engaged: &AtomicBool, what: &'static str, policy: FailurePolicy) {
        let counter = match policy {
            FailurePolicy::Open => &self.0.counters.fail_open,
            FailurePolicy::Closed => &self.0.counters.fail_closed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if !engaged.load(Ordering::Relaxed) && !engaged.swap(true, Ordering::AcqRel) {
            let policy = match policy {
                FailurePolicy::Open => "open",
                FailurePolicy::Closed => "closed",
            };
            tracing::warn!(
                store = "redis",
                r#use = what,
                policy,
                "redis unavailable: failing {policy}"
            );
        }
    }

    /// Ends a run of policy uses (after a successful call), logging the switch once.
    pub(crate) fn record_recovered(&self, engaged: &AtomicBool, what: &'static str) {
        if engaged.load(Ordering::Relaxed) && engaged.swap(false, Ordering::AcqRel) {
            tracing::info!(store = "redis", r#use = what, "back on redis");
        }
    }
}

/// True for errors that mean Redis cannot serve calls now.
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
            ) | ErrorKind::AuthenticationFailed
        )
}

/// An error text without keys, values or the URL.
fn describe(e: &RedisError) -> String {
    match e.code() {
        Some(code) => format!("redis {}: {code}", e.category()),
        None => format!("redis {}", e.category()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` and the CRC16/XMODEM check value.
        assert_eq!(hash_slot(b"123456789"), 0x31c3);
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"{foo}.bar"), 12182);
        assert_eq!(hash_slot(b"user:{foo}"), 12182);
        // An empty tag does not count: the whole key is hashed.
        assert_ne!(hash_slot(b"{}foo"), hash_slot(b"foo"));
        assert_ne!(hash_slot(b"foo{}{bar}"), hash_slot(b"bar"));
        // Only the first tag counts.
        assert_eq!(hash_slot(b"foo{bar}{zap}"), hash_slot(b"bar"));
    }

    #[test]
    fn one_breaker_per_slot_group_on_a_cluster() {
        let single = RedisBackend::new(&StoreConfig::redis("redis://127.0.0.1:6379")).unwrap();
        assert_eq!(single.breaker_of("tollgate:rl:00"), 0);
        let cluster = RedisBackend::new(&StoreConfig::redis_cluster(["redis://127.0.0.1:7000"])).unwrap();
        let groups: std::collections::HashSet<usize> = (0..1000)
            .map(|i| cluster.breaker_of(&format!("tollgate:rl:{i:032x}")))
            .collect();
        assert!(groups.iter().all(|&g| g < SLOT_GROUPS));
        assert!(groups.len() > SLOT_GROUPS / 2, "keys spread over the groups");
        assert_eq!(cluster.breaker_of("{foo}"), 12182 * SLOT_GROUPS / 16384);
    }
}
