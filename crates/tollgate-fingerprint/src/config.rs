//! The layer's configuration, as mounted under `[fingerprint]` in a TOML file.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::{FailurePolicy, SessionHealth};

/// What the layer does with a session whose verdict reaches
/// [`FingerprintConfig::act_on`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionPolicy {
    /// Record the verdict (span fields, [`SessionInfo`](tollgate_core::SessionInfo)) and let
    /// the request through.
    #[default]
    Tag,
    /// Answer 401 `invalid_token` (`urn:tollgate:problem:session-changed`): the client
    /// must authenticate again, which gives it a new credential and a new session.
    Reauthenticate,
    /// Put the credential on the freeze list shared with the authentication layer,
    /// and answer 401 (`urn:tollgate:problem:credential-frozen`).
    Freeze,
}

impl SessionPolicy {
    /// `tag`, `reauthenticate` or `freeze`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionPolicy::Tag => "tag",
            SessionPolicy::Reauthenticate => "reauthenticate",
            SessionPolicy::Freeze => "freeze",
        }
    }
}

/// Which request traits make up the fingerprint. Each is coarsened first and only
/// its keyed hash is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dimensions {
    /// The client's network prefix (IPv4 /24, IPv6 /48 by default). Default `true`.
    pub network: bool,
    /// The user agent's family and major version (`Firefox 133`). Default `true`.
    pub user_agent: bool,
    /// The primary subtag of the first `Accept-Language` range (`en`, `de`). Default `false`.
    pub accept_language: bool,
    /// The low-entropy client hints `Sec-CH-UA-Mobile` and `Sec-CH-UA-Platform`. Default `false`.
    pub client_hints: bool,
}

impl Default for Dimensions {
    fn default() -> Self {
        Dimensions {
            network: true,
            user_agent: true,
            accept_language: false,
            client_hints: false,
        }
    }
}

/// The session health level at which the policy acts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActOn {
    /// Any signal.
    Suspicious,
    /// Alternation, or several signals at once (default).
    #[default]
    Unhealthy,
}

impl ActOn {
    /// The lowest health that triggers the policy.
    pub const fn health(self) -> SessionHealth {
        match self {
            ActOn::Suspicious => SessionHealth::Suspicious,
            ActOn::Unhealthy => SessionHealth::Unhealthy,
        }
    }
}

/// Configuration of [`FingerprintLayer`](crate::FingerprintLayer).
///
/// ```
/// use tollgate_fingerprint::{FingerprintConfig, SessionPolicy};
///
/// let config: FingerprintConfig = toml::from_str(r#"
///     policy = "reauthenticate"
///     concurrency_window_secs = 120
///     [dimensions]
///     accept_language = true
/// "#).unwrap();
/// assert_eq!(config.policy, SessionPolicy::Reauthenticate);
/// assert!(config.dimensions.network && config.dimensions.accept_language);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Which traits make up the fingerprint.
    pub dimensions: Dimensions,
    /// How long a session record lives after its last request, in seconds. Default 86 400.
    pub session_ttl_secs: u64,
    /// The most session records kept in process; older ones are evicted. Default 100 000.
    pub max_sessions: u64,
    /// Requests after which a session is established, so that a fingerprint it has
    /// not shown before is a signal. Default 3.
    pub established_after: u64,
    /// Two network prefixes used by one credential within this many seconds are
    /// concurrent use. Default 60.
    pub concurrency_window_secs: u64,
    /// The window in which fingerprint switches are counted, in seconds. Default 300.
    pub alternation_window_secs: u64,
    /// Switches between fingerprints within the window that make the session
    /// unhealthy. Default 3 (A, B, A, B).
    pub alternation_switches: u16,
    /// A token first seen this many seconds after it was issued (`iat`) is stale, and
    /// stays `stale_token` for its session's life; 0 turns the signal off. Only tokens
    /// issued after the layer started are judged (before that nobody was watching);
    /// with the in-process store, each replica and each restart watches afresh.
    /// Default 3 600.
    pub stale_after_secs: u64,
    /// This many signals at once make a session unhealthy (alternation alone does).
    /// Default 3.
    pub unhealthy_reasons: u32,
    /// What to do with sessions at or above `act_on`. Default `tag`.
    pub policy: SessionPolicy,
    /// The health at which the policy acts. Default `unhealthy`.
    pub act_on: ActOn,
    /// Record what the policy would do (`session.action = would_…`) without doing it.
    /// Default `false`.
    pub report_only: bool,
    /// How long a freeze made by the `freeze` policy holds, in seconds. Default 86 400.
    pub freeze_for_secs: u64,
    /// What happens when the session store cannot answer: `open` lets the request
    /// through without a verdict, `closed` answers 503. Default `open`.
    pub store_failure: FailurePolicy,
    /// Parsed user-agent families kept in process, keyed by a per-process keyed hash
    /// of the header. Default 10 000; 0 parses every request.
    pub user_agent_cache: u64,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        FingerprintConfig {
            dimensions: Dimensions::default(),
            session_ttl_secs: 86_400,
            max_sessions: 100_000,
            established_after: 3,
            concurrency_window_secs: 60,
            alternation_window_secs: 300,
            alternation_switches: 3,
            stale_after_secs: 3_600,
            unhealthy_reasons: 3,
            policy: SessionPolicy::Tag,
            act_on: ActOn::Unhealthy,
            report_only: false,
            freeze_for_secs: 86_400,
            store_failure: FailurePolicy::Open,
            user_agent_cache: 10_000,
        }
    }
}

/// A configuration the layer refuses, naming the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fingerprint.{setting}: {problem}")]
pub struct ConfigError {
    /// The setting at fault, as named in the `[fingerprint]` section.
    pub setting: &'static str,
    /// What is wrong with it.
    pub problem: &'static str,
}

fn refuse(setting: &'static str, problem: &'static str) -> Result<(), ConfigError> {
    Err(ConfigError { setting, problem })
}

impl FingerprintConfig {
    /// Checks the settings, naming the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = self.dimensions;
        if !(d.network || d.user_agent || d.accept_language || d.client_hints) {
            return refuse("dimensions", "at least one dimension must be enabled");
        }
        if self.session_ttl_secs == 0 {
            return refuse("session_ttl_secs", "must be at least 1");
        }
        if self.max_sessions == 0 {
            return refuse("max_sessions", "must be at least 1");
        }
        if self.concurrency_window_secs > self.session_ttl_secs {
            return refuse(
                "concurrency_window_secs",
                "must not exceed session_ttl_secs: the record would be gone before the window ends",
            );
        }
        if self.alternation_window_secs == 0 || self.alternation_window_secs > self.session_ttl_secs {
            return refuse(
                "alternation_window_secs",
                "must be between 1 and session_ttl_secs",
            );
        }
        if self.alternation_switches < 2 {
            return refuse(
                "alternation_switches",
                "must be at least 2: a single switch is a move, not an alternation",
            );
        }
        if !(1..=4).contains(&self.unhealthy_reasons) {
            return refuse("unhealthy_reasons", "must be between 1 and 4");
        }
        if self.freeze_for_secs == 0 {
            return refuse("freeze_for_secs", "must be at least 1: every freeze has an end");
        }
        Ok(())
    }

    pub(crate) fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.session_ttl_secs)
    }

    pub(crate) fn freeze_for(&self) -> Duration {
        Duration::from_secs(self.freeze_for_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        FingerprintConfig::default().validate().unwrap();
        let parsed: FingerprintConfig = toml::from_str("").unwrap();
        assert_eq!(parsed, FingerprintConfig::default());
        assert!(toml::from_str::<FingerprintConfig>("polcy = \"tag\"").is_err());
        assert!(toml::from_str::<FingerprintConfig>("[dimensions]\nuser_agnet = true").is_err());
        assert!(toml::from_str::<FingerprintConfig>("policy = \"block\"").is_err());
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: [(&str, &str); 6] = [
            (
                "[dimensions]\nnetwork = false\nuser_agent = false",
                "fingerprint.dimensions",
            ),
            ("session_ttl_secs = 0", "fingerprint.session_ttl_secs"),
            ("alternation_switches = 1", "fingerprint.alternation_switches"),
            ("unhealthy_reasons = 5", "fingerprint.unhealthy_reasons"),
            ("freeze_for_secs = 0", "fingerprint.freeze_for_secs"),
            ("session_ttl_secs = 30", "fingerprint.concurrency_window_secs"),
        ];
        for (toml_text, setting) in cases {
            let config: FingerprintConfig = toml::from_str(toml_text).unwrap();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.starts_with(setting), "{toml_text}: {err}");
        }
    }
}
