//! [`RoutePolicy`]: what every layer does on one route, in one place.

use serde::Deserialize;
use tollgate_anomaly::AnomalyRoute;
use tollgate_auth::{AuthRequirement, AuthRoute, DpopMode};
use tollgate_core::{ConfigError, RouteMap, RouteTable};
use tollgate_privacy::LogProfile;
use tollgate_ratelimit::RateLimitRoute;

/// The policy of one route, for every layer: a `[routes."<template>"]` table in the
/// configuration file, or built in code and given to
/// [`TollgateBuilder::route`](crate::TollgateBuilder::route).
///
/// A key left out takes its value from `[routes.default]`, and, when that leaves it
/// out too, from the layer's own default (authentication `required`, fingerprinting
/// on, the caller's tier limits, every detector, `full` logs). The most specific
/// pattern matching a request's route template wins: the template itself, then the
/// longest wildcard prefix (`"/admin/*"`), then `default`.
///
/// ```toml
/// [routes.default]
/// auth = "optional"
///
/// [routes."/health"]
/// auth = "skip"
/// fingerprint = false
/// log = "minimal"
/// ratelimit = { exempt = true }
/// anomaly = { skip = true }
///
/// [routes."/v1/me"]
/// auth = "required"
///
/// [routes."/login"]
/// ratelimit = { limits = [{ name = "login", quota = 5, window = "1m" }] }
///
/// [routes."/admin/*"]
/// auth = "required"
/// scopes = ["tollgate:admin"]
/// ```
///
/// ```
/// use tollgate::RoutePolicy;
/// use tollgate::auth::AuthRequirement;
/// use tollgate::privacy::LogProfile;
///
/// let health = RoutePolicy::new()
///     .auth(AuthRequirement::Skip)
///     .fingerprint(false)
///     .exempt_from_limits()
///     .log(LogProfile::Minimal);
/// let admin = RoutePolicy::new().auth(AuthRequirement::Required).scopes(["tollgate:admin"]);
/// assert_eq!(admin.scopes.as_deref(), Some(&["tollgate:admin".to_string()][..]));
/// # let _ = health;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutePolicy {
    /// `required`, `optional` (anonymous callers pass; invalid credentials are still
    /// refused) or `skip` (credentials are not read).
    pub auth: Option<AuthRequirement>,
    /// Scopes the caller must hold, all of them (403 otherwise).
    pub scopes: Option<Vec<String>>,
    /// DPoP (RFC 9449): `required` (only DPoP-bound tokens with a proof), `optional`
    /// (the default) or `off`. `required` needs `[auth.dpop]`.
    pub dpop: Option<DpopMode>,
    /// Session fingerprinting on this route.
    pub fingerprint: Option<bool>,
    /// Rate limiting: `exempt`, own `limits`, a `tier` override, `cost`, `mode`.
    pub ratelimit: Option<RateLimitRoute>,
    /// Anomaly tagging: `skip`, `disabled` kinds, `actions` per kind.
    pub anomaly: Option<AnomalyRoute>,
    /// `full`, `minimal` (method, route, status, latency, trace id) or `off`.
    pub log: Option<LogProfile>,
}

impl RoutePolicy {
    /// A policy that sets nothing (everything from `default`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the authentication requirement.
    pub fn auth(mut self, requirement: AuthRequirement) -> Self {
        self.auth = Some(requirement);
        self
    }

    /// Requires every one of these scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = Some(scopes.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the DPoP mode.
    pub fn dpop(mut self, mode: DpopMode) -> Self {
        self.dpop = Some(mode);
        self
    }

    /// Turns session fingerprinting on or off.
    pub fn fingerprint(mut self, on: bool) -> Self {
        self.fingerprint = Some(on);
        self
    }

    /// Sets the rate-limiting rule.
    pub fn ratelimit(mut self, rule: RateLimitRoute) -> Self {
        self.ratelimit = Some(rule);
        self
    }

    /// No rate limit on this route.
    pub fn exempt_from_limits(self) -> Self {
        self.ratelimit(RateLimitRoute {
            exempt: true,
            ..RateLimitRoute::default()
        })
    }

    /// Sets the anomaly policy.
    pub fn anomaly(mut self, policy: AnomalyRoute) -> Self {
        self.anomaly = Some(policy);
        self
    }

    /// Sets the log profile.
    pub fn log(mut self, profile: LogProfile) -> Self {
        self.log = Some(profile);
        self
    }

    /// This policy with the keys it leaves out taken from `base`.
    fn over(&self, base: &RoutePolicy) -> RoutePolicy {
        RoutePolicy {
            auth: self.auth.or(base.auth),
            scopes: self.scopes.clone().or_else(|| base.scopes.clone()),
            dpop: self.dpop.or(base.dpop),
            fingerprint: self.fingerprint.or(base.fingerprint),
            ratelimit: self.ratelimit.clone().or_else(|| base.ratelimit.clone()),
            anomaly: self.anomaly.clone().or_else(|| base.anomaly.clone()),
            log: self.log.or(base.log),
        }
    }
}

/// Which layers a stack runs, to refuse a route key no layer would enforce.
pub(crate) struct Present {
    pub(crate) auth: bool,
    pub(crate) fingerprint: bool,
    pub(crate) ratelimit: bool,
    pub(crate) anomaly: bool,
}

/// The stack's route policies over one table, each merged over `default`.
pub(crate) fn resolve<'a>(
    routes: impl IntoIterator<Item = (&'a str, &'a RoutePolicy)>,
    present: &Present,
) -> Result<RouteMap<RoutePolicy>, ConfigError> {
    let routes: Vec<(&str, &RoutePolicy)> = routes.into_iter().collect();
    for (pattern, policy) in &routes {
        check(pattern, policy, present)?;
    }
    let table = RouteTable::new(routes.iter().map(|(p, _)| *p))?;
    let default = routes
        .iter()
        .find(|(p, _)| *p == tollgate_core::route::DEFAULT_ROUTE)
        .map(|(_, policy)| (*policy).clone())
        .unwrap_or_default();
    Ok(RouteMap::from_table(&table, |_, pattern| {
        routes
            .iter()
            .find(|(p, _)| *p == pattern)
            .map_or_else(|| default.clone(), |(_, policy)| policy.over(&default))
    }))
}

/// Refuses keys that no configured layer would enforce, and contradictions.
fn check(pattern: &str, policy: &RoutePolicy, present: &Present) -> Result<(), ConfigError> {
    let missing = |key: &str, section: &str| {
        ConfigError::new(
            format!("routes.\"{pattern}\".{key}"),
            format!("no [{section}] section is configured, so nothing would enforce it"),
        )
    };
    if (policy.auth.is_some() || policy.scopes.is_some() || policy.dpop.is_some()) && !present.auth {
        let key = if policy.auth.is_some() {
            "auth"
        } else if policy.scopes.is_some() {
            "scopes"
        } else {
            "dpop"
        };
        return Err(missing(key, "auth"));
    }
    if policy.auth == Some(AuthRequirement::Skip) && policy.scopes.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ConfigError::new(
            format!("routes.\"{pattern}\".scopes"),
            "a route that skips authentication cannot require scopes",
        ));
    }
    if policy.fingerprint.is_some() && !present.fingerprint {
        return Err(missing("fingerprint", "fingerprint"));
    }
    if policy.ratelimit.is_some() && !present.ratelimit {
        return Err(missing("ratelimit", "ratelimit"));
    }
    if policy.anomaly.is_some() && !present.anomaly {
        return Err(missing("anomaly", "anomaly"));
    }
    Ok(())
}

/// The auth layer's view of a route policy.
pub(crate) fn auth_route(policy: &RoutePolicy) -> AuthRoute {
    AuthRoute {
        requirement: policy.auth.unwrap_or(AuthRequirement::Required),
        scopes: policy.scopes.clone().unwrap_or_default(),
        dpop: policy.dpop.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Present = Present {
        auth: true,
        fingerprint: true,
        ratelimit: true,
        anomaly: true,
    };

    #[test]
    fn keys_fall_back_to_default() {
        let default = RoutePolicy::new()
            .auth(AuthRequirement::Optional)
            .log(LogProfile::Minimal);
        let me = RoutePolicy::new().auth(AuthRequirement::Required);
        let map = resolve([("default", &default), ("/v1/me", &me)], &ALL).unwrap();
        let at = |t: &str| map.get_for_path(Some(t), t).clone();
        assert_eq!(at("/v1/me").auth, Some(AuthRequirement::Required));
        assert_eq!(at("/v1/me").log, Some(LogProfile::Minimal));
        assert_eq!(at("/other").auth, Some(AuthRequirement::Optional));
    }

    #[test]
    fn keys_without_their_layer_are_refused() {
        let policy = RoutePolicy::new().scopes(["admin"]);
        let none = Present { auth: false, ..ALL };
        let err = resolve([("/admin/*", &policy)], &none).unwrap_err();
        assert_eq!(err.setting, "routes.\"/admin/*\".scopes");
        let skip_with_scopes = RoutePolicy::new().auth(AuthRequirement::Skip).scopes(["a"]);
        assert!(resolve([("/x", &skip_with_scopes)], &ALL).is_err());
    }

    #[test]
    fn dpop_maps_into_the_auth_route() {
        let policy: RoutePolicy = toml::from_str("dpop = \"required\"").unwrap();
        assert_eq!(policy.dpop, Some(DpopMode::Required));
        assert_eq!(auth_route(&policy).dpop, DpopMode::Required);
        assert_eq!(auth_route(&RoutePolicy::new()).dpop, DpopMode::Optional);
        let off = RoutePolicy::new().dpop(DpopMode::Off);
        assert_eq!(off.over(&policy).dpop, Some(DpopMode::Off));
        assert_eq!(RoutePolicy::new().over(&policy).dpop, Some(DpopMode::Required));
        let none = Present { auth: false, ..ALL };
        assert_eq!(
            check("/x", &policy, &none).unwrap_err().setting,
            "routes.\"/x\".dpop"
        );
    }
}
