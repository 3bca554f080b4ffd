//! The `[store]` configuration section.

use std::time::Duration;

use serde::Deserialize;
use tollgate_core::{ConfigError, FailurePolicy};

/// The environment variable read when `[store] url` is not set.
pub const URL_ENV: &str = "REDIS_URL";

/// The environment variable read when `[store] urls` is not set (`redis-cluster`):
/// seed node URLs separated by commas.
pub const CLUSTER_URLS_ENV: &str = "REDIS_CLUSTER_URLS";

/// Which store backs the stack's shared state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    /// In-process stores (one budget and one freeze list per process).
    #[default]
    Memory,
    /// Redis: every replica shares one budget, one freeze list and the session records.
    Redis,
    /// Redis Cluster (`"redis-cluster"`): as `redis`, with keys spread over the
    /// cluster's shards and its replicas taking over when a primary fails.
    #[serde(rename = "redis-cluster", alias = "redis_cluster")]
    RedisCluster,
}

impl StoreBackend {
    /// True for the backends that keep state in Redis (`redis`, `redis-cluster`).
    pub fn is_redis(self) -> bool {
        matches!(self, StoreBackend::Redis | StoreBackend::RedisCluster)
    }
}

/// What the rate limiter does for a decision Redis cannot make.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitFallback {
    /// Allow the request (the default: an outage of Redis is not an outage of the API).
    #[default]
    Open,
    /// Refuse the request as if its budget were spent.
    Closed,
    /// Decide with an in-process limiter of the same tiers (each replica then keeps
    /// its own budget until Redis returns).
    Local,
}

/// Whose clock a decision is made at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitClock {
    /// Redis `TIME`, read inside the script (the default): replicas with skewed clocks
    /// still agree, and [`Decision::now`](tollgate_ratelimit::Decision::now) reports the time used.
    #[default]
    Redis,
    /// The `now` given by the caller (the layer's clock): for tests on a fake clock.
    Caller,
}

impl RateLimitClock {
    /// The rate-limit script's mode argument.
    pub(crate) fn mode(self) -> &'static str {
        match self {
            RateLimitClock::Redis => "r",
            RateLimitClock::Caller => "c",
        }
    }
}

/// The freeze list's settings (`[store.freeze]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FreezeConfig {
    /// What `check` does for a credential it cannot check (Redis unreachable and the
    /// local copy not known to be current): `closed` (default) returns an error, which
    /// the authentication layer answers with 503; `open` answers from the last copy
    /// received.
    pub on_failure: FailurePolicy,
    /// The most freezes kept; a freeze beyond that is refused with an error.
    pub max_entries: usize,
    /// How often the subscription connection is pinged (default `"1s"`); a ping
    /// unanswered within `connect_timeout` drops the local copy's "current" status.
    #[serde(with = "tollgate_core::config::duration")]
    pub heartbeat: Duration,
    /// How often the local copy is reloaded in full as a safety net (default `"60s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub resync_interval: Duration,
    /// How many Redis replicas `freeze` waits for (`WAIT`, bounded by `timeout`), so
    /// that a failover cannot lose a freeze; fewer in time is logged and counted.
    /// Unset: 1 on `redis-cluster`, 0 (the primary alone) on `redis`. Set 0 for a
    /// cluster without replicas.
    pub wait_replicas: Option<u32>,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        FreezeConfig {
            on_failure: FailurePolicy::Closed,
            max_entries: 10_000,
            heartbeat: Duration::from_secs(1),
            resync_interval: Duration::from_secs(60),
            wait_replicas: None,
        }
    }
}

/// The rate-limit store's settings (`[store.rate_limit]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitStoreConfig {
    /// What a decision does when Redis cannot make it: `open` (default), `closed`, or
    /// `local` (an in-process limiter of the same tiers).
    pub on_failure: RateLimitFallback,
    /// Whose clock decisions are made at: `redis` (default: Redis `TIME`, so replicas
    /// with skewed clocks agree) or `caller` (the layer's clock).
    pub clock: RateLimitClock,
    /// The most keys the `local` fallback limiter holds.
    pub local_max_entries: u64,
}

impl Default for RateLimitStoreConfig {
    fn default() -> Self {
        RateLimitStoreConfig {
            on_failure: RateLimitFallback::Open,
            clock: RateLimitClock::Redis,
            local_max_entries: 100_000,
        }
    }
}

/// The session store's settings (`[store.sessions]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionStoreConfig {
    /// What the session store does when Redis cannot answer: `closed` (default) hands
    /// the error to the fingerprinting layer, which applies its own policy; `open`
    /// answers reads as misses and drops writes.
    pub on_failure: FailurePolicy,
}

impl Default for SessionStoreConfig {
    fn default() -> Self {
        SessionStoreConfig {
            on_failure: FailurePolicy::Closed,
        }
    }
}

/// The `[store]` section of a tollgate configuration.
///
/// ```
/// use tollgate_redis::{StoreBackend, StoreConfig};
///
/// let config: StoreConfig = toml::from_str(r#"
///     backend = "redis"
///     url = "redis://127.0.0.1:6379"
///     timeout = "50ms"
///
///     [freeze]
///     on_failure = "closed"
/// "#).unwrap();
/// assert_eq!(config.backend, StoreBackend::Redis);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (default), `redis` or `redis-cluster`.
    pub backend: StoreBackend,
    /// The Redis URL (`redis://[:password@]host:port[/db]`, backend `redis`); when
    /// unset, `REDIS_URL` is read.
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster (backend `redis-cluster`; any reachable one
    /// suffices, the client learns the rest); when unset, `REDIS_CLUSTER_URLS`
    /// (comma-separated) is read.
    pub urls: Vec<String>,
    /// A name inserted into every key (`tollgate:{namespace}:…`) so several deployments
    /// can share one Redis: 1 to 32 characters of `[A-Za-z0-9_-]`.
    pub namespace: Option<String>,
    /// How long one Redis call may take before it counts as failed (default `"100ms"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub timeout: Duration,
    /// How long connecting may take (default `"1s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub connect_timeout: Duration,
    /// While Redis is down, how often one call is let through to probe it (default
    /// `"1s"`); every other call follows its failure policy at once.
    #[serde(with = "tollgate_core::config::duration")]
    pub retry_interval: Duration,
    /// The freeze list.
    pub freeze: FreezeConfig,
    /// Rate limits.
    pub rate_limit: RateLimitStoreConfig,
    /// Session records.
    pub sessions: SessionStoreConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Memory,
            url: None,
            urls: Vec::new(),
            namespace: None,
            timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_millis(500),
            freeze: FreezeConfig::default(),
            rate_limit: RateLimitStoreConfig::default(),
            sessions: SessionStoreConfig::default(),
        }
    }
}

impl StoreConfig {
    /// A Redis configuration for `url` with every other setting at its default.
    pub fn redis(url: impl Into<String>) -> Self {
        StoreConfig {
            backend: StoreBackend::Redis,
            url: Some(url.into()),
            ..StoreConfig::default()
        }
    }

    /// A Redis Cluster configuration for the seed nodes `urls`, every other setting
    /// at its default.
    ///
    /// ```
    /// use tollgate_redis::{StoreBackend, StoreConfig};
    ///
    /// let config = StoreConfig::redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
    /// assert_eq!(config.backend, StoreBackend::RedisCluster);
    /// config.validate().unwrap();
    /// ```
    pub fn redis_cluster<I, S>(urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StoreConfig {
            backend: StoreBackend::RedisCluster,
            urls: urls.into_iter().map(Into::into).collect(),
            ..StoreConfig::default()
        }
    }

    /// Sets the key namespace.
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The URL to connect to: `url`, else `REDIS_URL`.
    pub fn resolved_url(&self) -> Result<String, ConfigError> {
        match &self.url {
            Some(url) => Ok(url.clone()),
            None => std::env::var(URL_ENV).map_err(|_| {
                ConfigError::new("store.url", format!("not set, and {URL_ENV} is not set either"))
            }),
        }
    }

    /// The seed nodes of a cluster: `urls`, else `REDIS_CLUSTER_URLS`.
    pub fn resolved_urls(&self) -> Result<Vec<String>, ConfigError> {
        if !self.urls.is_empty() {
            return Ok(self.urls.clone());
        }
        let from_env: Vec<String> = std::env::var(CLUSTER_URLS_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(String::from)
            .collect();
        if from_env.is_empty() {
            return Err(ConfigError::new(
                "store.urls",
                format!("not set, and {CLUSTER_URLS_ENV} is not set either"),
            ));
        }
        Ok(from_env)
    }

    /// How many replicas `freeze` waits for (`[store.freeze] wait_replicas`, else the backend's default).
    pub fn freeze_wait_replicas(&self) -> u32 {
        self.freeze
            .wait_replicas
            .unwrap_or(u32::from(self.backend == StoreBackend::RedisCluster))
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // A URL may hold a password: never echo it.
        match self.backend {
            StoreBackend::Memory => {}
            StoreBackend::Redis => {
                let url = self.resolved_url()?;
                redis::Client::open(url.as_str()).map_err(|_| {
                    ConfigError::new(
                        "store.url",
                        "not a valid Redis URL (redis://[:password@]host:port[/db])",
                    )
                })?;
            }
            StoreBackend::RedisCluster => {
                for url in self.resolved_urls()? {
                    let info =
                        redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|_| {
                            ConfigError::new(
                                "store.urls",
                                "not a list of valid Redis URLs (redis://host:port)",
                            )
                        })?;
                    if info.redis_settings().db() != 0 {
                        return Err(ConfigError::new(
                            "store.urls",
                            "a Redis Cluster has only database 0: drop the /db part",
                        ));
                    }
                }
            }
        }
        if let Some(ns) = &self.namespace {
            let ok = !ns.is_empty()
                && ns.len() <= 32
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(ConfigError::new(
                    "store.namespace",
                    "must be 1 to 32 characters of A-Z, a-z, 0-9, '_' or '-'",
                ));
            }
        }
        let within = |setting: &str, v: Duration, lo: Duration, hi: Duration| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError::new(
                    setting,
                    format!("must be between {lo:?} and {hi:?}"),
                ))
            }
        };
        let ms = Duration::from_millis;
        within("store.timeout", self.timeout, ms(1), ms(60_000))?;
        within("store.connect_timeout", self.connect_timeout, ms(1), ms(60_000))?;
        within("store.retry_interval", self.retry_interval, ms(10), ms(600_000))?;
        within(
            "store.freeze.heartbeat",
            self.freeze.heartbeat,
            ms(10),
            ms(600_000),
        )?;
        within(
            "store.freeze.resync_interval",
            self.freeze.resync_interval,
            ms(100),
            ms(86_400_000),
        )?;
        if self.rate_limit.local_max_entries == 0 {
            return Err(ConfigError::new(
                "store.rate_limit.local_max_entries",
                "must be at least 1",
            ));
        }
        if self.freeze.max_entries == 0 {
            return Err(ConfigError::new("store.freeze.max_entries", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let c: StoreConfig = toml::from_str("").unwrap();
        assert_eq!(c, StoreConfig::default());
        assert_eq!(c.freeze.on_failure, FailurePolicy::Closed);
        assert_eq!(c.rate_limit.on_failure, RateLimitFallback::Open);
        assert!(toml::from_str::<StoreConfig>("urll = 'x'").is_err());
        assert!(toml::from_str::<StoreConfig>("[freeze]\nmax = 1").is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        let bad_url = StoreConfig::redis("http://:secret@example");
        let err = bad_url.validate().unwrap_err();
        assert_eq!(err.setting, "store.url");
        assert!(!err.to_string().contains("secret"));

        let bad_ns = StoreConfig::redis("redis://127.0.0.1:6379").with_namespace("a:b");
        assert_eq!(bad_ns.validate().unwrap_err().setting, "store.namespace");

        let zero = StoreConfig {
            timeout: Duration::ZERO,
            ..StoreConfig::redis("redis://127.0.0.1:6379")
        };
        assert_eq!(zero.validate().unwrap_err().setting, "store.timeout");
        StoreConfig::redis("redis://127.0.0.1:6379")
            .with_namespace("prod-eu_1")
            .validate()
            .unwrap();

        let db = StoreConfig::redis_cluster(["redis://127.0.0.1:7000/2"]);
        assert_eq!(db.validate().unwrap_err().setting, "store.urls");
        let junk = StoreConfig::redis_cluster(["http://:secret@example"]);
        let err = junk.validate().unwrap_err();
        assert_eq!(err.setting, "store.urls");
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn cluster_section() {
        let c: StoreConfig = toml::from_str(
            r#"
            backend = "redis-cluster"
            urls = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
            "#,
        )
        .unwrap();
        assert_eq!(c.backend, StoreBackend::RedisCluster);
        assert!(c.backend.is_redis());
        assert_eq!(c.urls.len(), 2);
        assert_eq!(c.freeze_wait_replicas(), 1);
        assert_eq!(StoreConfig::redis("redis://x").freeze_wait_replicas(), 0);
        c.validate().unwrap();
    }
}
