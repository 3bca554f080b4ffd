//! The layer's configuration: tiers of stacked limits, route overrides and modes,
//! as mounted under `[ratelimit]` in a TOML file.
//!
//! ```
//! use tollgate_ratelimit::RateLimitConfig;
//!
//! let config: RateLimitConfig = toml::from_str(r#"
//!     default_tier = "free"
//!     anonymous_tier = "anonymous"
//!
//!     [tiers.free]
//!     limits = [
//!         { name = "burst", quota = 10, window = "1s", burst = 20 },
//!         { name = "daily", quota = 10000, window = "1d" },
//!     ]
//!     [tiers.pro]
//!     limits = [{ name = "burst", quota = 100, window = "1s" }]
//!     [tiers.anonymous]
//!     limits = [{ name = "burst", quota = 2, window = "1s", burst = 5 }]
//!     mode = "report_only"
//!
//!     [routes."/login"]
//!     limits = [{ name = "login", quota = 5, window = "1m" }]
//!     [routes."/health"]
//!     exempt = true
//! "#).unwrap();
//! assert_eq!(config.tiers["free"].limits.len(), 2);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tollgate_core::store::FailurePolicy;

use crate::gcra::{Limit, LimitError, MAX_LIMITS};
use crate::store::DEFAULT_MAX_ENTRIES;

/// Enforce limits, or only report what would happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Answer 429 when a limit is reached.
    #[default]
    Enforce,
    /// Decide, spend, record (`ratelimit.outcome = would_deny`) and send headers, but
    /// let every request through: try a tier before enforcing it (Envoy's shadow mode).
    ReportOnly,
}

/// The layer's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `enforce` (default) or `report_only`, for every tier and route that does not
    /// set its own.
    pub mode: Mode,
    /// Send `RateLimit-Policy` and `RateLimit` headers (default `true`). `Retry-After`
    /// on a 429 is always sent.
    pub headers: bool,
    /// The tier of principals whose tier names no configured tier (default `default`).
    pub default_tier: String,
    /// The tier of anonymous requests, limited per client network (default `anonymous`).
    pub anonymous_tier: String,
    /// The most keys the in-process store holds (default 100,000).
    pub max_entries: u64,
    /// What to do when the store fails (default `open`: let the request through).
    pub on_store_failure: FailurePolicy,
    /// Named plans, each with one to four stacked limits.
    pub tiers: BTreeMap<String, TierConfig>,
    /// Overrides by route template (as axum's `MatchedPath` spells it, e.g. `/items/{id}`).
    pub routes: BTreeMap<String, RouteConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let tier = |quota, burst| TierConfig {
            limits: vec![LimitConfig {
                name: "burst".into(),
                quota,
                window: Window(Duration::from_secs(1)),
                burst: Some(burst),
            }],
            mode: None,
        };
        RateLimitConfig {
            mode: Mode::Enforce,
            headers: true,
            default_tier: "default".into(),
            anonymous_tier: "anonymous".into(),
            max_entries: DEFAULT_MAX_ENTRIES,
            on_store_failure: FailurePolicy::Open,
            tiers: BTreeMap::from([
                ("default".to_string(), tier(10, 20)),
                ("anonymous".to_string(), tier(5, 10)),
            ]),
            routes: BTreeMap::new(),
        }
    }
}

impl RateLimitConfig {
    /// Adds or replaces a tier.
    pub fn tier(mut self, name: impl Into<String>, limits: impl IntoIterator<Item = LimitConfig>) -> Self {
        self.tiers.insert(
            name.into(),
            TierConfig {
                limits: limits.into_iter().collect(),
                mode: None,
            },
        );
        self
    }

    /// Adds or replaces a route override.
    pub fn route(mut self, template: impl Into<String>, route: RouteConfig) -> Self {
        self.routes.insert(template.into(), route);
        self
    }

    /// Sets the mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Sets the default tier.
    pub fn default_tier(mut self, name: impl Into<String>) -> Self {
        self.default_tier = name.into();
        self
    }

    /// Sets the anonymous tier.
    pub fn anonymous_tier(mut self, name: impl Into<String>) -> Self {
        self.anonymous_tier = name.into();
        self
    }
}

/// One tier.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// One to four limits, all checked before any is spent.
    pub limits: Vec<LimitConfig>,
    /// This tier's mode; the layer's when absent.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// One limit: `quota` requests per `window`, bursts of up to `burst`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The policy name in headers and spans: 1 to 32 of `a-z 0-9 - _ .`.
    pub name: String,
    /// Requests per window.
    pub quota: u64,
    /// The window: `"500ms"`, `"1s"`, `"1m"`, `"1h"`, `"1d"`, or whole seconds.
    pub window: Window,
    /// The most requests admitted at once from a full budget (default: `quota`).
    #[serde(default)]
    pub burst: Option<u64>,
}

impl LimitConfig {
    /// `quota` per `window`, burst equal to the quota.
    pub fn new(name: impl Into<String>, quota: u64, window: Duration) -> Self {
        LimitConfig {
            name: name.into(),
            quota,
            window: Window(window),
            burst: None,
        }
    }

    /// Sets the burst.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }
}

/// A per-route override.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// No rate limit on this route.
    pub exempt: bool,
    /// The route's own limits, counted per caller under a key of their own (the tier's
    /// limits then do not apply on this route). Empty: the caller's tier applies.
    pub limits: Vec<LimitConfig>,
    /// The store scope of the route's own key (`rl:{scope}`); derived from the template
    /// when absent.
    pub scope: Option<String>,
    /// Units each request costs (default 1).
    pub cost: Option<u64>,
    /// This route's mode; the tier's when absent.
    pub mode: Option<Mode>,
}

impl RouteConfig {
    /// An exempt route.
    pub fn exempt() -> Self {
        RouteConfig {
            exempt: true,
            ..Default::default()
        }
    }

    /// A route with its own limits.
    pub fn limits(limits: impl IntoIterator<Item = LimitConfig>) -> Self {
        RouteConfig {
            limits: limits.into_iter().collect(),
            ..Default::default()
        }
    }
}

/// A window length, written `"500ms"`, `"1s"`, `"10m"`, `"1h"`, `"1d"` or as whole seconds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Window(pub Duration);

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Window {
    /// Parses `"500ms"`, `"1s"`, `"10m"`, `"1h"`, `"1d"`.
    pub fn parse(text: &str) -> Option<Window> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = text.split_at(split);
        let n: u64 = n.parse().ok()?;
        let nanos_per = match unit.trim() {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return None,
        };
        n.checked_mul(nanos_per)
            .map(|ns| Window(Duration::from_nanos(ns)))
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Window(Duration::from_secs(s))),
            Raw::Text(t) => Window::parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "window {t:?}: expected a number and a unit (ms, s, m, h, d), e.g. \"1s\" or \"1d\""
                ))
            }),
        }
    }
}

/// A configuration the layer refuses; the message names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A tier or route has an invalid limit.
    #[error("ratelimit.{at}: {source}")]
    Limit {
        /// Where: `tiers.free.limits[0]`.
        at: String,
        /// Why.
        source: LimitError,
    },
    /// Any other invalid setting.
    #[error("ratelimit.{at}: {message}")]
    Invalid {
        /// Where: `default_tier`, `tiers.free`, `routes."/login".scope`.
        at: String,
        /// Why.
        message: String,
    },
}

pub(crate) fn invalid(at: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        at: at.into(),
        message: message.into(),
    }
}

pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Checks and converts a list of limits.
pub(crate) fn build_limits(at: &str, limits: &[LimitConfig]) -> Result<Vec<Limit>, ConfigError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(invalid(
            format!("{at}.limits"),
            format!("needs 1 to {MAX_LIMITS} limits, got {}", limits.len()),
        ));
    }
    let mut out = Vec::with_capacity(limits.len());
    for (i, l) in limits.iter().enumerate() {
        let here = format!("{at}.limits[{i}]");
        if !valid_name(&l.name, 32) {
            return Err(invalid(
                format!("{here}.name"),
                format!("{:?} must be 1 to 32 of a-z 0-9 - _ .", l.name),
            ));
        }
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(invalid(
                format!("{here}.name"),
                format!("{:?} is used twice", l.name),
            ));
        }
        let limit = Limit::new(l.quota, l.window.0, l.burst.unwrap_or(l.quota))
            .map_err(|source| ConfigError::Limit { at: here, source })?;
        out.push(limit);
    }
    Ok(out)
}

/// A store scope derived from a route template: `/v1/items/{id}` gives `v1-items-id`.
pub(crate) fn scope_from_template(template: &str) -> String {
    let mut out = String::new();
    for c in template.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(64);
    if out.is_empty() { "root".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(Window::parse("500ms"), Some(Window(Duration::from_millis(500))));
        assert_eq!(Window::parse("1d"), Some(Window(Duration::from_secs(86_400))));
        assert_eq!(Window::parse("10 m"), Some(Window(Duration::from_secs(600))));
        assert_eq!(Window::parse("1w"), None);
        assert_eq!(Window::parse("s"), None);
        assert_eq!(Window::parse("99999999999999999999d"), None);
        let w: LimitConfig = toml::from_str("name = \"a\"\nquota = 1\nwindow = 30").unwrap();
        assert_eq!(w.window, Window(Duration::from_secs(30)));
        let bad: Result<LimitConfig, _> = toml::from_str("name = \"a\"\nquota = 1\nwindow = \"1 fortnight\"");
        assert!(bad.unwrap_err().to_string().contains("1 fortnight"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad: Result<RateLimitConfig, _> = toml::from_str("mdoe = \"enforce\"");
        assert!(bad.unwrap_err().to_string().contains("mdoe"));
    }

    #[test]
    fn limits_are_checked() {
        let e = build_limits("tiers.free", &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ratelimit.tiers.free.limits: needs 1 to 4 limits, got 0"
        );
        let e = build_limits("tiers.free", &[LimitConfig::new("a", 0, Duration::from_secs(1))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ratelimit.tiers.free.limits[0]: quota must be at least 1"
        );
        let e = build_limits(
            "tiers.free",
            &[LimitConfig::new("A b", 1, Duration::from_secs(1))],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("ratelimit.tiers.free.limits[0].name"));
        let twice = [
            LimitConfig::new("a", 1, Duration::from_secs(1)),
            LimitConfig::new("a", 1, Duration::from_secs(2)),
        ];
        assert!(
            build_limits("t", &twice)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
    }

    #[test]
    fn scopes_from_templates() {
        assert_eq!(scope_from_template("/login"), "login");
        assert_eq!(scope_from_template("/v1/items/{id}"), "v1-items-id");
        assert_eq!(scope_from_template("/"), "root");
    }
}
