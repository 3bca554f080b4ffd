//! The stack's configuration, as one TOML document.

use std::time::Duration;

use serde::Deserialize;
use tollgate_core::pseudonym::DEFAULT_EPOCH;

/// How pseudonyms are keyed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudonymConfig {
    /// The secret as hex (64+ digits). The `TOLLGATE_PSEUDONYM_SECRET` environment
    /// variable overrides it. Without either, a random secret is made at start and
    /// pseudonyms do not link across restarts or replicas; with a shared (Redis)
    /// store, the stack refuses to start without one.
    pub secret: Option<String>,
    /// Seconds per key epoch: a pseudonym links events only within its epoch.
    pub epoch_s: u64,
}

impl Default for PseudonymConfig {
    fn default() -> Self {
        PseudonymConfig {
            secret: None,
            epoch_s: DEFAULT_EPOCH.as_secs(),
        }
    }
}

impl PseudonymConfig {
    /// The epoch length.
    pub fn epoch(&self) -> Duration {
        Duration::from_secs(self.epoch_s)
    }
}

/// The whole stack's configuration. A layer runs when its section is present;
/// the privacy trace layer always runs.
///
/// ```
/// let config: tollgate::TollgateConfig = toml::from_str(r#"
///     [pseudonym]
///     epoch_s = 3600
///
///     [privacy.routes]
///     "/health" = "minimal"
///
///     [ratelimit]
///     anonymous_tier = "free"
///     [ratelimit.tiers.free]
///     limits = [{ name = "burst", quota = 10, window = "1s" }]
/// "#).unwrap();
/// assert_eq!(config.pseudonym.epoch_s, 3600);
/// assert!(config.auth.is_none());
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TollgateConfig {
    /// How pseudonyms are keyed.
    pub pseudonym: PseudonymConfig,
    /// The privacy trace layer: trusted proxies, coarsening, per-route log profiles.
    pub privacy: tollgate_privacy::PrivacyConfig,
    /// The authentication layer (`[auth]`, `[auth.jwt]`, `[[auth.api_keys]]`, `[auth.introspection]`).
    pub auth: Option<tollgate_auth::AuthConfig>,
    /// The session fingerprinting layer.
    pub fingerprint: Option<tollgate_fingerprint::FingerprintConfig>,
    /// The rate-limiting layer: tiers, route overrides, mode.
    pub ratelimit: Option<tollgate_ratelimit::RateLimitConfig>,
    /// The anomaly layer: detectors and actions.
    pub anomaly: Option<tollgate_anomaly::AnomalyConfig>,
    /// Where shared state lives: `backend = "memory"` (default) or `"redis"`.
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
        Self::from_toml(&text).map_err(|e| match e {
            crate::BuildError::Parse { cause, .. } => crate::BuildError::Parse {
                path: path.display().to_string(),
                cause,
            },
            other => other,
        })
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, crate::BuildError> {
        toml::from_str(text).map_err(|e| crate::BuildError::Parse {
            path: "<config>".into(),
            cause: e.to_string(),
        })
    }
}
