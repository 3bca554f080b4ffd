//! The anomaly layer's configuration, as read from TOML (`[anomaly]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_core::config::duration;
use tollgate_core::{ConfigError, SessionHealth};

use crate::tags::{AnomalyKind, KIND_COUNT};

/// What to do when a detector fires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Tag the request and go on (the default).
    #[default]
    Record,
    /// Put the caller on the stricter throttle tier for a while.
    Throttle,
    /// Answer 403 `request-blocked` now and for a while.
    Block,
    /// Freeze the credential on the freeze list (the auth layer then refuses it).
    Freeze,
}

impl Action {
    /// `record`, `throttle`, `block` or `freeze`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Record => "record",
            Action::Throttle => "throttle",
            Action::Block => "block",
            Action::Freeze => "freeze",
        }
    }

    /// The name recorded in report-only mode: `would_throttle`, `would_block`, `would_freeze`.
    pub const fn would(self) -> &'static str {
        match self {
            Action::Record => "record",
            Action::Throttle => "would_throttle",
            Action::Block => "would_block",
            Action::Freeze => "would_freeze",
        }
    }
}

/// An action per anomaly kind; a missing entry means `record` globally and "as
/// configured globally" in an [`crate::AnomalyRoute`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionMap {
    /// For [`AnomalyKind::Volume`].
    pub volume: Option<Action>,
    /// For [`AnomalyKind::CredentialStuffing`].
    pub credential_stuffing: Option<Action>,
    /// For [`AnomalyKind::Enumeration`].
    pub enumeration: Option<Action>,
    /// For [`AnomalyKind::TokenSharing`].
    pub token_sharing: Option<Action>,
    /// For [`AnomalyKind::UnusualSequence`].
    pub unusual_sequence: Option<Action>,
}

impl ActionMap {
    /// Sets the action for `kind`.
    pub fn set(mut self, kind: AnomalyKind, action: Action) -> Self {
        *self.slot(kind) = Some(action);
        self
    }

    /// The action configured for `kind`, if any.
    pub fn get(&self, kind: AnomalyKind) -> Option<Action> {
        match kind {
            AnomalyKind::Volume => self.volume,
            AnomalyKind::CredentialStuffing => self.credential_stuffing,
            AnomalyKind::Enumeration => self.enumeration,
            AnomalyKind::TokenSharing => self.token_sharing,
            AnomalyKind::UnusualSequence => self.unusual_sequence,
        }
    }

    fn slot(&mut self, kind: AnomalyKind) -> &mut Option<Action> {
        match kind {
            AnomalyKind::Volume => &mut self.volume,
            AnomalyKind::CredentialStuffing => &mut self.credential_stuffing,
            AnomalyKind::Enumeration => &mut self.enumeration,
            AnomalyKind::TokenSharing => &mut self.token_sharing,
            AnomalyKind::UnusualSequence => &mut self.unusual_sequence,
        }
    }

    pub(crate) fn to_array(self) -> [Option<Action>; KIND_COUNT] {
        AnomalyKind::ALL.map(|k| self.get(k))
    }
}

/// Volume: a principal's rate far above its own baseline and above its tier's norm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeConfig {
    /// Run this detector.
    pub enabled: bool,
    /// The rate window (rates are requests per window).
    #[serde(with = "duration")]
    pub window: Duration,
    /// How many times its own baseline a principal's rate must reach.
    pub baseline_factor: f64,
    /// The weight of each new active, untagged window in the baseline (EWMA), in (0, 1].
    pub baseline_alpha: f64,
    /// The normal requests per window of each tier; a rate must also exceed it.
    pub tier_norms: BTreeMap<String, u32>,
    /// The norm for tiers not listed, and for unauthenticated callers (per network).
    pub default_norm: u32,
    /// The most principals and networks tracked.
    pub max_entries: usize,
    /// How long after its last request a principal's baseline is forgotten.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            enabled: true,
            window: Duration::from_secs(60),
            baseline_factor: 4.0,
            baseline_alpha: 0.2,
            tier_norms: BTreeMap::new(),
            default_norm: 120,
            max_entries: 100_000,
            ttl: Duration::from_secs(6 * 3600),
        }
    }
}

/// Credential stuffing and password spraying: failed logins (401s, and the
/// [`tollgate_core::LoginAttempt`]s a login handler reports) per network prefix,
/// per attempted account and API-wide.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StuffingConfig {
    /// Run this detector.
    pub enabled: bool,
    /// The counting window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// 401 answers per window from one network prefix above which it is tagged
    /// (default 10), when failures are also more than `max_failure_share` of what
    /// the prefix does.
    pub max_failures: u32,
    /// Distinct subjects authenticated per window from one prefix above which it is
    /// tagged (default 30), under the same condition.
    pub max_subjects: u32,
    /// The share of a prefix's requests that must be failures for it to be tagged,
    /// in (0, 1] (default 0.5): thousands of honest users behind one carrier-grade
    /// NAT fail a login now and then among far more requests that work.
    pub max_failure_share: f64,
    /// Failed logins per window against one attempted account, from any network,
    /// above which its attempts are tagged (default 10), when failures are also
    /// more than `max_failure_share` of the account's logins (one name many people
    /// use, mistyping now and then, is not under attack).
    pub max_account_failures: u32,
    /// The most attempted accounts tracked (keyed hashes).
    pub max_accounts: usize,
    /// Distinct accounts failing API-wide per window below which no campaign is
    /// called from them (default 20).
    pub min_failed_accounts: u32,
    /// Distinct accounts failing API-wide per login that works, per window, above
    /// which a campaign is called (default 1): honest users who mistype retry and
    /// get in, a list of stolen credentials mostly does not.
    pub failed_accounts_per_login: f64,
    /// How long a tagged prefix stays tagged after the last trigger.
    #[serde(with = "duration")]
    pub hold: Duration,
    /// The most network prefixes tracked.
    pub max_entries: usize,
    /// API-wide failed logins per second, over `global_window`, below which no
    /// campaign is called whatever the baseline (default 0.5): a campaign spread
    /// thinly over many networks shows only in the sum.
    pub global_min_rate: f64,
    /// How many times its own baseline (an average of the API's failed-login rate
    /// over about the past hour, not updated during a campaign) the API-wide rate
    /// must be for a campaign (default 3).
    pub global_factor: f64,
    /// The window of the API-wide rate (default `"30s"`).
    #[serde(with = "duration")]
    pub global_window: Duration,
}

impl Default for StuffingConfig {
    fn default() -> Self {
        StuffingConfig {
            enabled: true,
            window: Duration::from_secs(600),
            max_failures: 10,
            max_subjects: 30,
            max_failure_share: 0.5,
            max_account_failures: 10,
            max_accounts: 100_000,
            min_failed_accounts: 20,
            failed_accounts_per_login: 1.0,
            hold: Duration::from_secs(900),
            max_entries: 50_000,
            global_min_rate: 0.5,
            global_factor: 3.0,
            global_window: Duration::from_secs(30),
        }
    }
}

/// Enumeration: distinct object ids, or a high 403/404 ratio, per session and route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnumerationConfig {
    /// Run this detector.
    pub enabled: bool,
    /// The counting window (ids are counted over one to two windows).
    #[serde(with = "duration")]
    pub window: Duration,
    /// Distinct object ids on one route template above which a session is tagged.
    pub max_distinct_ids: u32,
    /// New distinct ids in a minute on one route template above which a session is
    /// tagged, unless the session's own pace or the route's usual pace is higher
    /// (then `new_ids_factor` times that). Default 20.
    pub max_new_ids_per_minute: u32,
    /// How many times its own usual pace of new ids, and the route's, a session's
    /// pace must reach (default 2.5).
    pub new_ids_factor: f64,
    /// Requests on one route before the error ratio is judged (default 10).
    pub ratio_min_requests: u32,
    /// The share of 403/404 answers above which a session is tagged, in (0, 1].
    pub max_error_ratio: f64,
    /// The most session-and-route pairs tracked.
    pub max_entries: usize,
}

impl Default for EnumerationConfig {
    fn default() -> Self {
        EnumerationConfig {
            enabled: true,
            window: Duration::from_secs(4 * 3600),
            max_distinct_ids: 100,
            max_new_ids_per_minute: 20,
            new_ids_factor: 2.5,
            ratio_min_requests: 10,
            max_error_ratio: 0.5,
            max_entries: 200_000,
        }
    }
}

/// Token sharing: the fingerprinting layer's session verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSharingConfig {
    /// Run this detector.
    pub enabled: bool,
    /// The least healthy verdict that is tagged: `suspicious` or `unhealthy`.
    pub min_health: HealthLevel,
}

impl Default for TokenSharingConfig {
    fn default() -> Self {
        TokenSharingConfig {
            enabled: true,
            min_health: HealthLevel::Unhealthy,
        }
    }
}

/// A session verdict threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthLevel {
    /// Tag suspicious and unhealthy sessions.
    Suspicious,
    /// Tag unhealthy sessions only.
    Unhealthy,
}

impl HealthLevel {
    pub(crate) fn as_health(self) -> SessionHealth {
        match self {
            HealthLevel::Suspicious => SessionHealth::Suspicious,
            HealthLevel::Unhealthy => SessionHealth::Unhealthy,
        }
    }
}

/// Unusual sequence: a small learned per-route transition model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SequenceConfig {
    /// Run this detector.
    pub enabled: bool,
    /// Observations of a route before its predecessors are judged.
    pub min_observations: u32,
    /// A transition seen less often than this share of a route's arrivals is tagged.
    pub rare_transition: f64,
    /// Observations in total before route rarity is judged.
    pub min_total_observations: u64,
    /// A route with less than this share of all requests is tagged ("a route sessions never call").
    pub rare_route: f64,
    /// The most distinct route templates modelled; later ones share one bucket.
    pub max_routes: usize,
    /// Inactivity after which a session starts over.
    #[serde(with = "duration")]
    pub session_gap: Duration,
    /// The model keeps two generations of counts, each this long.
    #[serde(with = "duration")]
    pub model_window: Duration,
    /// The most sessions tracked.
    pub max_entries: usize,
}

impl Default for SequenceConfig {
    fn default() -> Self {
        SequenceConfig {
            enabled: true,
            min_observations: 200,
            rare_transition: 0.002,
            min_total_observations: 20_000,
            rare_route: 0.0002,
            max_routes: 64,
            session_gap: Duration::from_secs(900),
            model_window: Duration::from_secs(86_400),
            max_entries: 100_000,
        }
    }
}

/// How long penalties last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PenaltyConfig {
    /// How long a `block` lasts.
    #[serde(with = "duration")]
    pub block: Duration,
    /// How long a `throttle` lasts.
    #[serde(with = "duration")]
    pub throttle: Duration,
    /// How long a `freeze` lasts (an operator can lift it sooner, or freeze for good by hand).
    #[serde(with = "duration")]
    pub freeze: Duration,
    /// The most callers under a penalty at once.
    pub max_entries: usize,
}

impl Default for PenaltyConfig {
    fn default() -> Self {
        PenaltyConfig {
            block: Duration::from_secs(600),
            throttle: Duration::from_secs(600),
            freeze: Duration::from_secs(86_400),
            max_entries: 100_000,
        }
    }
}

/// The stricter tier a throttled caller is held to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// The tier's name in `RateLimit-Policy` headers and spans.
    pub tier: String,
    /// Requests allowed per period.
    pub requests: u32,
    /// The period.
    #[serde(with = "duration")]
    pub period: Duration,
    /// Extra requests allowed in a burst.
    pub burst: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            tier: "anomaly-throttle".into(),
            requests: 10,
            period: Duration::from_secs(60),
            burst: 0,
        }
    }
}

/// The anomaly layer's configuration (TOML section `[anomaly]`). Durations are
/// strings such as `"90s"`, `"15m"` or `"1d"`. Per-route policies are not part of
/// it: they are an [`crate::AnomalyRoute`] per route, given to
/// [`crate::AnomalyBuilder::routes`].
///
/// ```
/// use std::time::Duration;
///
/// let config: tollgate_anomaly::AnomalyConfig = toml::from_str(r#"
///     report_only = true
///     [actions]
///     enumeration = "block"
///     [volume]
///     window = "1m"
///     [volume.tier_norms]
///     free = 120
///     pro = 1200
///     [penalties]
///     block = "10m"
/// "#).unwrap();
/// assert!(config.report_only);
/// assert_eq!(config.penalties.block, Duration::from_secs(600));
/// config.validate().unwrap();
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Decide actions but do not enforce them: record `would_block` and so on.
    pub report_only: bool,
    /// Send the tags in an `x-tollgate-anomaly` response header (for debugging; off by default).
    pub debug_header: bool,
    /// The action per anomaly kind (default: `record` for all).
    pub actions: ActionMap,
    /// The volume detector.
    pub volume: VolumeConfig,
    /// The credential-stuffing detector.
    pub stuffing: StuffingConfig,
    /// The enumeration detector.
    pub enumeration: EnumerationConfig,
    /// The token-sharing detector.
    pub token_sharing: TokenSharingConfig,
    /// The unusual-sequence detector.
    pub sequence: SequenceConfig,
    /// Penalty durations.
    pub penalties: PenaltyConfig,
    /// The throttle tier.
    pub throttle: ThrottleConfig,
}

/// The TOML section of this configuration: the prefix of every setting an error names.
pub(crate) const SECTION: &str = "anomaly";

fn positive(setting: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::new(setting, "must be greater than 0"));
    }
    Ok(())
}

/// The longest duration any setting takes.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

fn at_most_max(setting: &str, v: Duration) -> Result<(), ConfigError> {
    if v > MAX_DURATION {
        return Err(ConfigError::new(setting, "must be at most 366d"));
    }
    Ok(())
}

fn nonzero(setting: &str, v: Duration) -> Result<(), ConfigError> {
    if v.is_zero() {
        return Err(ConfigError::new(setting, "must be greater than 0"));
    }
    at_most_max(setting, v)
}

fn fraction(setting: &str, v: f64) -> Result<(), ConfigError> {
    if !(v > 0.0 && v <= 1.0) {
        return Err(ConfigError::new(setting, format!("must be in (0, 1], got {v}")));
    }
    Ok(())
}

impl AnomalyConfig {
    /// Checks every setting; the error names the first one at fault by its path in
    /// the configuration file (`anomaly.volume.baseline_factor`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|e| e.in_section(SECTION))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let v = &self.volume;
        nonzero("volume.window", v.window)?;
        positive("volume.default_norm", u64::from(v.default_norm))?;
        positive("volume.max_entries", v.max_entries as u64)?;
        nonzero("volume.ttl", v.ttl)?;
        if !(v.baseline_factor > 1.0 && v.baseline_factor.is_finite()) {
            return Err(ConfigError::new(
                "volume.baseline_factor",
                format!("must be a finite number above 1, got {}", v.baseline_factor),
            ));
        }
        fraction("volume.baseline_alpha", v.baseline_alpha)?;
        for (tier, norm) in &v.tier_norms {
            if *norm == 0 {
                return Err(ConfigError::new(
                    format!("volume.tier_norms.{tier}"),
                    "must be greater than 0",
                ));
            }
        }
        let s = &self.stuffing;
        at_most_max("stuffing.hold", s.hold)?;
        nonzero("stuffing.window", s.window)?;
        positive("stuffing.max_failures", u64::from(s.max_failures))?;
        positive("stuffing.max_subjects", u64::from(s.max_subjects))?;
        positive("stuffing.max_entries", s.max_entries as u64)?;
        fraction("stuffing.max_failure_share", s.max_failure_share)?;
        positive("stuffing.max_account_failures", u64::from(s.max_account_failures))?;
        positive("stuffing.max_accounts", s.max_accounts as u64)?;
        positive("stuffing.min_failed_accounts", u64::from(s.min_failed_accounts))?;
        nonzero("stuffing.global_window", s.global_window)?;
        for (name, v, lo) in [
            ("stuffing.global_min_rate", s.global_min_rate, 0.0),
            ("stuffing.global_factor", s.global_factor, 1.0),
            (
                "stuffing.failed_accounts_per_login",
                s.failed_accounts_per_login,
                0.0,
            ),
        ] {
            if !(v.is_finite() && v > lo) {
                return Err(ConfigError::new(
                    name,
                    format!("must be a finite number above {lo}"),
                ));
            }
        }
        let e = &self.enumeration;
        nonzero("enumeration.window", e.window)?;
        positive("enumeration.max_distinct_ids", u64::from(e.max_distinct_ids))?;
        if e.max_distinct_ids > 1_000 {
            return Err(ConfigError::new(
                "enumeration.max_distinct_ids",
                "must be at most 1000 (the sketch saturates near 1400)",
            ));
        }
        positive(
            "enumeration.max_new_ids_per_minute",
            u64::from(e.max_new_ids_per_minute),
        )?;
        if !(e.new_ids_factor > 1.0 && e.new_ids_factor.is_finite()) {
            return Err(ConfigError::new(
                "enumeration.new_ids_factor",
                format!("must be a finite number above 1, got {}", e.new_ids_factor),
            ));
        }
        positive("enumeration.ratio_min_requests", u64::from(e.ratio_min_requests))?;
        fraction("enumeration.max_error_ratio", e.max_error_ratio)?;
        positive("enumeration.max_entries", e.max_entries as u64)?;
        let q = &self.sequence;
        fraction("sequence.rare_transition", q.rare_transition)?;
        fraction("sequence.rare_route", q.rare_route)?;
        positive("sequence.min_observations", u64::from(q.min_observations))?;
        nonzero("sequence.session_gap", q.session_gap)?;
        nonzero("sequence.model_window", q.model_window)?;
        positive("sequence.max_entries", q.max_entries as u64)?;
        if q.max_routes == 0 || q.max_routes > 250 {
            return Err(ConfigError::new(
                "sequence.max_routes",
                "must be between 1 and 250",
            ));
        }
        let p = &self.penalties;
        nonzero("penalties.block", p.block)?;
        nonzero("penalties.throttle", p.throttle)?;
        nonzero("penalties.freeze", p.freeze)?;
        positive("penalties.max_entries", p.max_entries as u64)?;
        let t = &self.throttle;
        positive("throttle.requests", u64::from(t.requests))?;
        nonzero("throttle.period", t.period)?;
        if t.tier.is_empty() {
            return Err(ConfigError::new("throttle.tier", "must not be empty"));
        }
        Ok(())
    }

    /// The global action for `kind`.
    pub fn action(&self, kind: AnomalyKind) -> Action {
        self.actions.get(kind).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_record_only() {
        let c = AnomalyConfig::default();
        c.validate().unwrap();
        assert!(AnomalyKind::ALL.iter().all(|k| c.action(*k) == Action::Record));
    }

    #[test]
    fn errors_name_the_setting() {
        let mut c = AnomalyConfig::default();
        c.volume.baseline_factor = 0.5;
        let e = c.validate().unwrap_err();
        assert_eq!(e.setting, "anomaly.volume.baseline_factor");
        assert!(
            e.to_string()
                .starts_with("anomaly.volume.baseline_factor: must be"),
            "{e}"
        );
        c.volume.baseline_factor = 4.0;
        c.enumeration.window = Duration::from_secs(400 * 86_400);
        assert_eq!(c.validate().unwrap_err().setting, "anomaly.enumeration.window");
        c.enumeration.window = Duration::ZERO;
        assert_eq!(c.validate().unwrap_err().setting, "anomaly.enumeration.window");
        // Keys with a unit suffix are refused, and durations are strings.
        let bad: Result<AnomalyConfig, _> = toml::from_str("[volume]\nwindow_secs = 60");
        assert!(bad.unwrap_err().to_string().contains("unknown field"));
        let bad: Result<AnomalyConfig, _> = toml::from_str("[volume]\nwindow = 60");
        assert!(bad.is_err());
        let bad: Result<AnomalyConfig, _> = toml::from_str("[actions]\nvolume = \"explode\"");
        assert!(bad.is_err());
        // Per-route policies belong to `[routes]`, not to this section.
        let bad: Result<AnomalyConfig, _> = toml::from_str("[routes.\"/health\"]\nskip = true");
        assert!(bad.unwrap_err().to_string().contains("unknown field"));
    }

    /// A full `[anomaly]` section, as mounted in a stack's file.
    #[test]
    fn full_section_parses_and_validates() {
        let outer: toml::Table = toml::from_str(
            r#"
            [anomaly]
            report_only = false
            debug_header = false
            [anomaly.actions]
            volume = "throttle"
            credential_stuffing = "block"
            enumeration = "block"
            token_sharing = "freeze"
            unusual_sequence = "record"
            [anomaly.volume.tier_norms]
            free = 120
            pro = 1200
            [anomaly.throttle]
            requests = 10
            period = "60s"
            [anomaly.penalties]
            block = "10m"
            throttle = "10m"
            freeze = "1d"
            "#,
        )
        .unwrap();
        let c: AnomalyConfig = outer["anomaly"].clone().try_into().unwrap();
        c.validate().unwrap();
        assert_eq!(c.action(AnomalyKind::TokenSharing), Action::Freeze);
        assert_eq!(c.throttle.period, Duration::from_secs(60));
        assert_eq!(c.penalties.freeze, Duration::from_secs(86_400));
        // Written back, durations stay strings.
        let again: AnomalyConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }
}
