//! The layer's configuration, as mounted under `[fingerprint]` in a TOML file.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::{ConfigError, FailurePolicy, SessionHealth};

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

/// Configuration of [`FingerprintLayer`](crate::FingerprintLayer), as mounted under
/// `[fingerprint]`. Durations are written as strings (`"60s"`, `"5m"`, `"24h"`).
/// Whether a route is fingerprinted at all is per route (`fingerprint = false` in
/// its `[routes."<template>"]` table, or [`FingerprintBuilder::routes`](crate::FingerprintBuilder::routes)).
///
/// ```
/// use std::time::Duration;
/// use tollgate_fingerprint::{FingerprintConfig, SessionPolicy};
///
/// let config: FingerprintConfig = toml::from_str(r#"
///     policy = "reauthenticate"
///     concurrency_window = "2m"
///     [dimensions]
///     accept_language = true
/// "#).unwrap();
/// assert_eq!(config.policy, SessionPolicy::Reauthenticate);
/// assert_eq!(config.concurrency_window, Duration::from_secs(120));
/// assert!(config.dimensions.network && config.dimensions.accept_language);
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FingerprintConfig {
    /// Which traits make up the fingerprint.
    pub dimensions: Dimensions,
    /// How long a session record lives after its last request. Default `"24h"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub session_ttl: Duration,
    /// The most session records kept by the in-process store; the sessions idle the
    /// longest are evicted. Default 100 000.
    pub max_sessions: u64,
    /// Requests after which a session is established, so that a fingerprint it has
    /// not shown before is a signal. Default 3.
    pub established_after: u64,
    /// Two network prefixes used by one credential within this window are
    /// concurrent use. Default `"60s"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub concurrency_window: Duration,
    /// A switch away from a fingerprint or network the session took up with a
    /// single request less than this long ago is interleaving (two clients taking
    /// turns); a longer stay before the switch, in time or in requests, is a move
    /// (a phone leaving Wi-Fi for cellular, or flapping at the edge of its Wi-Fi; a
    /// traveller) and does not count toward alternation. Default `"10s"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub interleave_window: Duration,
    /// The window in which fingerprint switches are counted. Default `"5m"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub alternation_window: Duration,
    /// Switches between fingerprints within the window that make the session
    /// unhealthy. Default 3 (A, B, A, B).
    pub alternation_switches: u16,
    /// A token first seen this long after it was issued (`iat`) is stale, and stays
    /// `stale_token` for its session's life; `"0s"` turns the signal off. Only tokens
    /// issued after the layer started are judged (before that nobody was watching);
    /// with the in-process store, each replica and each restart watches afresh.
    /// Default `"1h"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub stale_after: Duration,
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
    /// How long a freeze made by the `freeze` policy holds. Default `"24h"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub freeze_for: Duration,
    /// What happens when the session store cannot answer: `open` lets the request
    /// through without a verdict, `closed` answers 503. Default `open`.
    pub on_store_failure: FailurePolicy,
    /// Parsed user-agent families kept in process, keyed by a per-process keyed hash
    /// of the header. Default 10 000; 0 parses every request.
    pub user_agent_cache: u64,
}

impl Default for FingerprintConfig {
    fn default() -> Self {
        FingerprintConfig {
            dimensions: Dimensions::default(),
            session_ttl: Duration::from_secs(86_400),
            max_sessions: 100_000,
            established_after: 3,
            concurrency_window: Duration::from_secs(60),
            interleave_window: Duration::from_secs(10),
            alternation_window: Duration::from_secs(300),
            alternation_switches: 3,
            stale_after: Duration::from_secs(3_600),
            unhealthy_reasons: 3,
            policy: SessionPolicy::Tag,
            act_on: ActOn::Unhealthy,
            report_only: false,
            freeze_for: Duration::from_secs(86_400),
            on_store_failure: FailurePolicy::Open,
            user_agent_cache: 10_000,
        }
    }
}

/// An error about `setting`, named by its path from the `[fingerprint]` section.
fn refuse(setting: &str, message: &str) -> Result<(), ConfigError> {
    Err(ConfigError::new(format!("fingerprint.{setting}"), message))
}

impl FingerprintConfig {
    /// Checks the settings, naming the first one at fault by its path in the TOML
    /// file (`fingerprint.session_ttl`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = self.dimensions;
        if !(d.network || d.user_agent || d.accept_language || d.client_hints) {
            return refuse("dimensions", "at least one dimension must be enabled");
        }
        if self.session_ttl < Duration::from_secs(1) {
            return refuse("session_ttl", "must be at least 1s");
        }
        if self.max_sessions == 0 {
            return refuse("max_sessions", "must be at least 1");
        }
        if self.concurrency_window > self.session_ttl {
            return refuse(
                "concurrency_window",
                "must not exceed session_ttl: the record would be gone before the window ends",
            );
        }
        if self.alternation_window.is_zero() || self.alternation_window > self.session_ttl {
            return refuse(
                "alternation_window",
                "must be more than 0s and at most session_ttl",
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
        if self.freeze_for.is_zero() {
            return refuse("freeze_for", "must be more than 0s: every freeze has an end");
        }
        Ok(())
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
        // Durations are strings with units: suffixed keys and bare numbers are refused.
        assert!(toml::from_str::<FingerprintConfig>("session_ttl_secs = 60").is_err());
        assert!(toml::from_str::<FingerprintConfig>("session_ttl = 60").is_err());
    }

    #[test]
    fn durations_read_as_humantime_and_round_trip() {
        let config: FingerprintConfig = toml::from_str(
            r#"
            session_ttl = "12h"
            concurrency_window = "90s"
            alternation_window = "10m"
            stale_after = "0s"
            freeze_for = "1d"
            "#,
        )
        .unwrap();
        assert_eq!(config.session_ttl, Duration::from_secs(12 * 3_600));
        assert_eq!(config.concurrency_window, Duration::from_secs(90));
        assert_eq!(config.alternation_window, Duration::from_secs(600));
        assert!(config.stale_after.is_zero());
        assert_eq!(config.freeze_for, Duration::from_secs(86_400));
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<FingerprintConfig>(&text).unwrap(), config);
    }

    #[test]
    fn errors_name_the_setting_once() {
        let cases: [(&str, &str); 6] = [
            (
                "[dimensions]\nnetwork = false\nuser_agent = false",
                "fingerprint.dimensions",
            ),
            ("session_ttl = \"0s\"", "fingerprint.session_ttl"),
            ("alternation_switches = 1", "fingerprint.alternation_switches"),
            ("unhealthy_reasons = 5", "fingerprint.unhealthy_reasons"),
            ("freeze_for = \"0s\"", "fingerprint.freeze_for"),
            ("session_ttl = \"30s\"", "fingerprint.concurrency_window"),
        ];
        for (toml_text, setting) in cases {
            let config: FingerprintConfig = toml::from_str(toml_text).unwrap();
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, setting, "{toml_text}");
            assert!(err.to_string().starts_with(&format!("{setting}: ")), "{err}");
            assert_eq!(err.to_string().matches("fingerprint").count(), 1, "{err}");
        }
    }
}
