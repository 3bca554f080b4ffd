//! The stack's configuration, as one TOML document.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tollgate_core::ClientConfig;
use tollgate_core::pseudonym::DEFAULT_EPOCH;

use crate::route::RoutePolicy;

/// How pseudonyms are keyed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudonymConfig {
    /// The secret as hex (64+ digits). The `TOLLGATE_PSEUDONYM_SECRET` environment
    /// variable overrides it. Without either, a random secret is made at start and
    /// pseudonyms do not link across restarts or replicas; with a shared (Redis)
    /// store, the stack refuses to start without one.
    pub secret: Option<String>,
    /// How long one key epoch lasts (default `"24h"`): a pseudonym links events only
    /// within its epoch.
    #[serde(with = "tollgate_core::config::duration")]
    pub epoch: Duration,
}

impl Default for PseudonymConfig {
    fn default() -> Self {
        PseudonymConfig {
            secret: None,
            epoch: DEFAULT_EPOCH,
        }
    }
}

/// The whole stack's configuration. A layer runs when its section is present;
/// the privacy trace layer always runs.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let config = tollgate::TollgateConfig::from_toml(r#"
///     [pseudonym]
///     secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
///     epoch = "1h"
///
///     [ratelimit]
///     default_tier = "free"
///     anonymous_tier = "free"
///     [ratelimit.tiers.free]
///     limits = [{ name = "burst", quota = 10, window = "1s" }]
///
///     [routes."/health"]
///     log = "minimal"
///     ratelimit = { exempt = true }
/// "#).unwrap();
/// assert_eq!(config.pseudonym.epoch, std::time::Duration::from_secs(3600));
/// assert!(config.auth.is_none());
///
/// let stack = tollgate::Tollgate::from_config(&config).await.unwrap();
/// let health = stack.routes().get_for_path(Some("/health"), "/health");
/// assert_eq!(health.log, Some(tollgate::privacy::LogProfile::Minimal));
/// # });
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TollgateConfig {
    /// How pseudonyms are keyed.
    pub pseudonym: PseudonymConfig,
    /// How every layer finds the client: trusted proxies, the forwarding header,
    /// coarsening.
    pub client: ClientConfig,
    /// Per-route policy, keyed by axum route template (`"/v1/items/{id}"`), a
    /// wildcard prefix (`"/admin/*"`) or `default`. See [`RoutePolicy`].
    pub routes: BTreeMap<String, RoutePolicy>,
    /// The privacy trace layer: the header allowlist.
    pub privacy: tollgate_privacy::PrivacyConfig,
    /// The authentication layer (`[auth]`, `[auth.jwt]`, `[[auth.api_keys]]`, `[auth.introspection]`).
    pub auth: Option<tollgate_auth::AuthConfig>,
    /// The session fingerprinting layer.
    pub fingerprint: Option<tollgate_fingerprint::FingerprintConfig>,
    /// The rate-limiting layer: tiers and mode.
    pub ratelimit: Option<tollgate_ratelimit::RateLimitConfig>,
    /// The anomaly layer: detectors and actions.
    pub anomaly: Option<tollgate_anomaly::AnomalyConfig>,
    /// Where shared state lives: `backend = "memory"` (default), `"redis"` or `"redis-cluster"`.
    #[cfg(feature = "redis")]
    pub store: tollgate_redis::StoreConfig,
}

impl TollgateConfig {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, crate::BuildError> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::BuildError::Read {
            path: path.display().to_string(),
            cause: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| crate::BuildError::Parse {
            path: path.display().to_string(),
            cause: e.to_string(),
        })
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, crate::BuildError> {
        toml::from_str(text).map_err(|e| crate::BuildError::Parse {
            path: "<config>".into(),
            cause: e.to_string(),
        })
    }

    /// The configuration in an already parsed TOML table, for a file that also holds
    /// an application's own sections (remove them first).
    pub fn from_table(table: toml::Table) -> Result<Self, crate::BuildError> {
        toml::Value::Table(table)
            .try_into()
            .map_err(|e| crate::BuildError::Parse {
                path: "<config>".into(),
                cause: e.to_string(),
            })
    }
}
