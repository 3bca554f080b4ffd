//! The stack's configuration, as one TOML document.

use std::time::Duration;

use serde::Deserialize;
use tollgate_core::pseudonym::{DEFAULT_EPOCH, SECRET_ENV};

/// How pseudonyms are keyed.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PseudonymConfig {
    /// The secret as hex (64+ digits). Prefer the `TOLLGATE_PSEUDONYM_SECRET`
    /// environment variable, which overrides this; without either, a random secret
    /// is made at start and pseudonyms do not link across restarts or replicas.
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

    /// The environment variable that holds the secret.
    pub const ENV: &'static str = SECRET_ENV;
}

/// The whole stack's configuration. Every section is optional.
///
/// ```
/// let config: tollgate::TollgateConfig = toml::from_str(r#"
///     [pseudonym]
///     epoch_s = 3600
///
///     [privacy.routes]
///     "/health" = "minimal"
/// "#).unwrap();
/// assert_eq!(config.pseudonym.epoch_s, 3600);
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TollgateConfig {
    /// How pseudonyms are keyed.
    pub pseudonym: PseudonymConfig,
    /// The privacy trace layer: trusted proxies, coarsening, per-route log profiles.
    #[cfg(feature = "privacy")]
    pub privacy: tollgate_privacy::PrivacyConfig,
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
}
