//! What every layer's configuration shares: one error shape and one way to write
//! durations.

use std::fmt;

/// A configuration that cannot work, naming the setting at fault by its path in the
/// TOML file (`auth.jwt.issuer`, `routes."/login".ratelimit.limits[0].quota`).
///
/// ```
/// use tollgate_core::ConfigError;
///
/// let err = ConfigError::new("ratelimit.tiers.free", "needs at least one limit");
/// assert_eq!(err.to_string(), "ratelimit.tiers.free: needs at least one limit");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting at fault.
    pub setting: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error about `setting`.
    pub fn new(setting: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.to_string(),
        }
    }

    /// The same error with `section.` put in front of its setting, for a section
    /// mounted in a larger file (`jwt.issuer` in `[auth]` becomes `auth.jwt.issuer`).
    pub fn in_section(mut self, section: &str) -> Self {
        self.setting = format!("{section}.{}", self.setting);
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Durations in configuration files, written the one way every section uses:
/// a string of numbers and units such as `"1s"`, `"250ms"`, `"15m"`, `"24h"`,
/// `"1d"` or `"1h 30m"` (humantime's format). Use it as
/// `#[serde(with = "tollgate_core::config::duration")]`.
///
/// ```
/// use std::time::Duration;
/// use serde::Deserialize;
///
/// #[derive(Deserialize)]
/// struct Section {
///     #[serde(with = "tollgate_core::config::duration")]
///     ttl: Duration,
/// }
/// let s: Section = toml::from_str(r#"ttl = "1h 30m""#).unwrap();
/// assert_eq!(s.ttl, Duration::from_secs(5400));
/// assert!(toml::from_str::<Section>("ttl = 90").is_err());
/// ```
pub mod duration {
    pub use humantime_serde::{deserialize, serialize};

    /// The same for `Option<Duration>`: `#[serde(default, with = "tollgate_core::config::duration::option")]`.
    pub mod option {
        pub use humantime_serde::option::{deserialize, serialize};
    }
}
