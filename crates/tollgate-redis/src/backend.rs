//! The shared Redis connection: timeouts, a circuit breaker, and the counters.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind};
use tollgate_core::{FailurePolicy, StoreError, StoreKey};

use tollgate_core::ConfigError;

use crate::config::StoreConfig;

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
}

struct Inner {
    client: redis::Client,
    manager: OnceLock<ConnectionManager>,
    manager_lock: std::sync::Mutex<()>,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    retry_interval: u64,
    base: Instant,
    up: AtomicBool,
    next_probe: AtomicU64,
    counters: Counters,
    config: StoreConfig,
}

/// One Redis connection shared by every Redis store of a process.
///
/// Built on `redis`'s [`ConnectionManager`]: one multiplexed connection (concurrent
/// calls are pipelined on it) that reconnects by itself. Around it:
///
/// - every call is bounded by `timeout`;
/// - a circuit breaker: after a failure the backend is *down*; while down, one call
///   per `retry_interval` is let through to probe Redis and every other call fails
///   at once (no waiting on a dead server), each store applying its failure policy;
/// - every switch between up and down is logged once (`warn` when going down,
///   `info` when back) and counted in [`RedisBackend::stats`].
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
            .field("up", &self.0.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend from the `[store]` section (its `backend` setting is not read).
    /// Fails on a bad setting, naming it.
    pub fn new(config: &StoreConfig) -> Result<Self, ConfigError> {
        let mut config = config.clone();
        config.backend = crate::StoreBackend::Redis;
        config.validate()?;
        let url = config.resolved_url()?;
        let client = redis::Client::open(url.as_str())
            .map_err(|_| ConfigError::new("store.url", "not a valid Redis URL"))?;
        let prefix = match &config.namespace {
            Some(ns) => format!("tollgate:{ns}:"),
            None => "tollgate:".to_string(),
        };
        Ok(RedisBackend(Arc::new(Inner {
            client,
            manager: OnceLock::new(),
            manager_lock: std::sync::Mutex::new(()),
            prefix,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            retry_interval: u64::try_from(config.retry_interval.as_nanos()).unwrap_or(u64::MAX),
            base: Instant::now(),
            up: AtomicBool::new(true),
            next_probe: AtomicU64::new(0),
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

    /// True while Redis is considered reachable.
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Acquire)
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
        }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.0.counters
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.0.client
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.0.connect_timeout
    }

    /// Sends `PING`, waiting up to the connect timeout (for readiness checks at start;
    /// the breaker is bypassed but updated).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.manager()?;
        self.finish(self.0.connect_timeout, async move {
            let mut conn = conn;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .map(|_| ())
    }

    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(m) = self.0.manager.get() {
            return Ok(m.clone());
        }
        let _guard = self.0.manager_lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = self.0.manager.get() {
            return Ok(m.clone());
        }
        // One attempt per reconnection: the breaker paces the retries.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(self.0.connect_timeout))
            .set_response_timeout(Some(self.0.timeout));
        let manager = ConnectionManager::new_lazy_with_config(self.0.client.clone(), config)
            .map_err(|e| StoreError::Unavailable(describe(&e)))?;
        let _ = self.0.manager.set(manager);
        Ok(self.0.manager.get().expect("just set").clone())
    }

    fn elapsed(&self) -> u64 {
        u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether a call may go to Redis now: always while up; while down, one probe per
    /// retry interval.
    fn admit(&self) -> bool {
        if self.0.up.load(Ordering::Acquire) {
            return true;
        }
        let now = self.elapsed();
        let next = self.0.next_probe.load(Ordering::Acquire);
        now >= next
            && self
                .0
                .next_probe
                .compare_exchange(
                    next,
                    now.saturating_add(self.0.retry_interval),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    fn mark_down(&self, cause: &str) {
        let now = self.elapsed();
        self.0
            .next_probe
            .store(now.saturating_add(self.0.retry_interval), Ordering::Release);
        if self.0.up.swap(false, Ordering::AcqRel) {
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

    fn mark_up(&self) {
        if !self.0.up.load(Ordering::Acquire) && !self.0.up.swap(true, Ordering::AcqRel) {
            self.0.counters.recoveries.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                store = "redis",
                state = "up",
                "redis answers again: shared state resumes"
            );
        }
    }

    /// Runs one Redis call under the timeout and the breaker.
    pub(crate) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.admit() {
            self.0.counters.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable("redis is down".into()));
        }
        let conn = self.manager()?;
        self.finish(self.0.timeout, op(conn)).await
    }

    /// Runs one Redis call under the timeout, without asking the breaker (for the
    /// freeze list's loads right after its subscription connected).
    pub(crate) async fn run_now<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let conn = self.manager()?;
        self.finish(self.0.timeout, op(conn)).await
    }

    async fn finish<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.0.counters.calls.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.0.counters.errors.fetch_add(1, Ordering::Relaxed);
                if is_outage(&e) {
                    self.mark_down(e.category());
                    if e.is_timeout() {
                        self.0.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Err(StoreError::Timeout(timeout));
                    }
                    Err(StoreError::Unavailable(describe(&e)))
                } else {
                    // Redis answered: it is up, the call itself was wrong.
                    self.mark_up();
                    Err(StoreError::Corrupt(describe(&e)))
                }
            }
            Err(_) => {
                self.0.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.0.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                self.mark_down("timeout");
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
