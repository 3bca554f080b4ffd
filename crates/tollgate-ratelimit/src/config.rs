//! The `[ratelimit]` configuration section and the per-route settings.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tollgate_core::ConfigError;
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

/// The `[ratelimit]` section: tiers of stacked limits and how the layer behaves.
///
/// Per-route behaviour (exempt routes, a route's own limits, another tier, a cost)
/// is not part of this section: it is a [`RateLimitRoute`] per route, given to the
/// builder as a [`RouteMap`](tollgate_core::RouteMap) (in a facade configuration, the
/// `ratelimit` key of each `[routes."<template>"]` table).
///
/// ```
/// use tollgate_ratelimit::RateLimitConfig;
///
/// let config: RateLimitConfig = toml::from_str(r#"
///     default_tier = "free"
///     anonymous_tier = "anonymous"
///
///     [tiers.free]
///     limits = [
///         { name = "burst", quota = 10, window = "1s", burst = 20 },
///         { name = "daily", quota = 10000, window = "1d" },
///     ]
///     [tiers.pro]
///     limits = [{ name = "burst", quota = 100, window = "1s" }]
///     [tiers.anonymous]
///     limits = [{ name = "burst", quota = 2, window = "1s", burst = 5 }]
///     mode = "report_only"
/// "#).unwrap();
/// assert_eq!(config.tiers["free"].limits.len(), 2);
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
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
    /// The most keys the in-process store holds (default 100,000). Unused when the
    /// builder is given another store.
    pub max_entries: u64,
    /// What to do when the store fails (default `open`: let the request through).
    pub on_store_failure: FailurePolicy,
    /// Named plans, each with one to four stacked limits.
    pub tiers: BTreeMap<String, TierConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let tier = |quota, burst| TierConfig {
            limits: vec![LimitConfig::new("burst", quota, Duration::from_secs(1)).burst(burst)],
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

    /// Switches the `RateLimit-Policy` and `RateLimit` headers on or off.
    pub fn headers(mut self, on: bool) -> Self {
        self.headers = on;
        self
    }

    /// Sets what to do when the store fails.
    pub fn on_store_failure(mut self, policy: FailurePolicy) -> Self {
        self.on_store_failure = policy;
        self
    }

    /// Sets the entry cap of the in-process store.
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }
}

/// One tier.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// One to four limits, all checked before any is spent.
    pub limits: Vec<LimitConfig>,
    /// This tier's mode; the layer's when absent.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// One limit: `quota` requests per `window`, bursts of up to `burst`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// The policy name in headers and spans: 1 to 32 of `a-z 0-9 - _ .`.
    pub name: String,
    /// Requests per window.
    pub quota: u64,
    /// The window, written as every duration in the configuration is: `"500ms"`,
    /// `"1s"`, `"1m"`, `"1h"`, `"1d"`.
    #[serde(with = "tollgate_core::config::duration")]
    pub window: Duration,
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
            window,
            burst: None,
        }
    }

    /// Sets the burst.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }
}

/// The rate-limit settings of one route (one entry of a
/// [`RouteMap`](tollgate_core::RouteMap), in a facade configuration the `ratelimit`
/// key of a `[routes."<template>"]` table). Every key is optional; the default is
/// the caller's tier at a cost of 1.
///
/// ```toml
/// [routes."/health"]
/// ratelimit = { exempt = true }
///
/// [routes."/login"]
/// ratelimit = { limits = [{ name = "login", quota = 5, window = "1m" }] }
///
/// [routes."/v1/search"]
/// ratelimit = { tier = "search", cost = 2 }
/// ```
///
/// - `limits`: the route's own one to four limits, counted per caller under a key of
///   the route's own; the caller's tier does not apply on this route.
/// - `tier`: use this configured tier's limits on this route instead of the
///   caller's, counted under a key of that tier's own (every route naming the tier
///   shares that budget, apart from the caller's tier-wide one).
/// - `exempt`: no rate limit at all (no headers, nothing stored).
/// - `cost`: units each request spends (default 1); at most every applicable burst.
/// - `mode`: `enforce` or `report_only` on this route; the tier's when absent.
///
/// `limits` and `tier` exclude each other; an exempt route takes none of the others.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitRoute {
    /// The route's own limits (empty: the caller's tier, or `tier`, applies).
    pub limits: Vec<LimitConfig>,
    /// The tier whose limits apply on this route instead of the caller's.
    pub tier: Option<String>,
    /// No rate limit on this route.
    pub exempt: bool,
    /// Units each request costs (default 1).
    pub cost: u64,
    /// This route's mode; the tier's when absent.
    pub mode: Option<Mode>,
}

impl Default for RateLimitRoute {
    fn default() -> Self {
        RateLimitRoute {
            limits: Vec::new(),
            tier: None,
            exempt: false,
            cost: 1,
            mode: None,
        }
    }
}

impl RateLimitRoute {
    /// A route without rate limit.
    pub fn exempt() -> Self {
        RateLimitRoute {
            exempt: true,
            ..Default::default()
        }
    }

    /// A route with its own limits.
    pub fn limits(limits: impl IntoIterator<Item = LimitConfig>) -> Self {
        RateLimitRoute {
            limits: limits.into_iter().collect(),
            ..Default::default()
        }
    }

    /// A route on another tier's limits.
    pub fn tier(name: impl Into<String>) -> Self {
        RateLimitRoute {
            tier: Some(name.into()),
            ..Default::default()
        }
    }

    /// The same route at this cost per request.
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = cost;
        self
    }

    /// The same route in this mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// `name` is 1 to `max` of `a-z 0-9 - _ .`: a String and token character set in
/// header fields, safe in store keys and spans.
pub(crate) fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// Checks and converts a list of limits; `at` is the setting holding the list
/// (`ratelimit.tiers.free`), errors name the field within it.
pub(crate) fn build_limits(at: &str, limits: &[LimitConfig]) -> Result<Vec<Limit>, ConfigError> {
    if limits.is_empty() || limits.len() > MAX_LIMITS {
        return Err(ConfigError::new(
            format!("{at}.limits"),
            format_args!("needs 1 to {MAX_LIMITS} limits, got {}", limits.len()),
        ));
    }
    let mut out = Vec::with_capacity(limits.len());
    for (i, l) in limits.iter().enumerate() {
        let here = format!("{at}.limits[{i}]");
        if !valid_name(&l.name, 32) {
            return Err(ConfigError::new(
                format!("{here}.name"),
                format_args!("{:?} must be 1 to 32 of a-z 0-9 - _ .", l.name),
            ));
        }
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(ConfigError::new(
                format!("{here}.name"),
                format_args!("{:?} is used twice", l.name),
            ));
        }
        let limit = Limit::new(l.quota, l.window, l.burst.unwrap_or(l.quota)).map_err(|e| {
            let field = match e {
                LimitError::ZeroQuota => "quota",
                LimitError::ZeroBurst => "burst",
                LimitError::TooFast | LimitError::TooLarge => "window",
            };
            ConfigError::new(format!("{here}.{field}"), e)
        })?;
        out.push(limit);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_durations() {
        let w =
            |text: &str| toml::from_str::<LimitConfig>(&format!("name = \"a\"\nquota = 1\nwindow = {text}"));
        assert_eq!(w("\"500ms\"").unwrap().window, Duration::from_millis(500));
        assert_eq!(w("\"1s\"").unwrap().window, Duration::from_secs(1));
        assert_eq!(w("\"1m\"").unwrap().window, Duration::from_secs(60));
        assert_eq!(w("\"1h\"").unwrap().window, Duration::from_secs(3600));
        assert_eq!(w("\"1d\"").unwrap().window, Duration::from_secs(86_400));
        assert_eq!(w("\"1h 30m\"").unwrap().window, Duration::from_secs(5400));
        assert!(w("\"1 fortnight\"").is_err());
        // One way to write durations: a string with a unit.
        assert!(w("30").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let bad: Result<RateLimitConfig, _> = toml::from_str("mdoe = \"enforce\"");
        assert!(bad.unwrap_err().to_string().contains("mdoe"));
        let bad: Result<RateLimitRoute, _> = toml::from_str("exmept = true");
        assert!(bad.unwrap_err().to_string().contains("exmept"));
    }

    #[test]
    fn route_defaults_and_keys() {
        let route: RateLimitRoute = toml::from_str("").unwrap();
        assert_eq!(route, RateLimitRoute::default());
        assert_eq!(route.cost, 1);
        let route: RateLimitRoute = toml::from_str(
            "limits = [{ name = \"login\", quota = 5, window = \"1m\" }]\ncost = 2\nmode = \"report_only\"",
        )
        .unwrap();
        assert_eq!(
            route,
            RateLimitRoute::limits([LimitConfig::new("login", 5, Duration::from_secs(60))])
                .cost(2)
                .mode(Mode::ReportOnly)
        );
        let route: RateLimitRoute = toml::from_str("tier = \"pro\"\nexempt = false").unwrap();
        assert_eq!(route, RateLimitRoute::tier("pro"));
    }

    #[test]
    fn limits_are_checked() {
        let err = |limits: &[LimitConfig]| {
            build_limits("ratelimit.tiers.free", limits)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&[]),
            "ratelimit.tiers.free.limits: needs 1 to 4 limits, got 0"
        );
        assert_eq!(
            err(&[LimitConfig::new("a", 0, Duration::from_secs(1))]),
            "ratelimit.tiers.free.limits[0].quota: quota must be at least 1"
        );
        assert_eq!(
            err(&[LimitConfig::new("a", 1, Duration::from_secs(1)).burst(0)]),
            "ratelimit.tiers.free.limits[0].burst: burst must be at least 1"
        );
        assert!(
            err(&[LimitConfig::new("a", 10, Duration::from_nanos(5))])
                .starts_with("ratelimit.tiers.free.limits[0].window: ")
        );
        assert!(
            err(&[LimitConfig::new("A b", 1, Duration::from_secs(1))])
                .starts_with("ratelimit.tiers.free.limits[0].name: ")
        );
        let twice = [
            LimitConfig::new("a", 1, Duration::from_secs(1)),
            LimitConfig::new("a", 1, Duration::from_secs(2)),
        ];
        assert!(err(&twice).contains("used twice"));
    }
}
