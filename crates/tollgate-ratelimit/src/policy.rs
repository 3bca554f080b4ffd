//! The configuration compiled for the request path: each tier's and route's stack of
//! limits with its header text and key made once, and each route's rule.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use tollgate_core::{ConfigError, KeyedDigest, RouteMap};

use crate::config::{LimitConfig, Mode, RateLimitConfig, RateLimitRoute, build_limits, valid_name};
use crate::gcra::Limit;
use crate::store::RateLimitKey;

/// One named limit of a policy, with its header and span text made once.
pub(crate) struct NamedLimit {
    pub(crate) name: Box<str>,
    /// `{tier}/{name}`: the value of `ratelimit.policy`.
    pub(crate) span_name: Box<str>,
    pub(crate) limit: Limit,
}

/// A tier's or route's stack of limits, resolved when the layer is built.
pub(crate) struct Policy {
    /// The tier name, or `route:{scope}` for a route's own limits.
    pub(crate) tier: Box<str>,
    pub(crate) limits: Vec<Limit>,
    pub(crate) named: Vec<NamedLimit>,
    /// `"burst";q=20;w=2, "daily";q=10000;w=86400`.
    pub(crate) policy_header: HeaderValue,
    /// The key's scope, with a placeholder digest.
    pub(crate) key: RateLimitKey,
    pub(crate) mode: Mode,
    /// Whether responses carry `RateLimit-Policy` and `RateLimit`.
    pub(crate) headers: bool,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("tier", &self.tier)
            .field("policy", &self.policy_header)
            .field("mode", &self.mode)
            .finish()
    }
}

impl Policy {
    /// `at` is the setting holding `limits`, for errors.
    fn new(
        tier: &str,
        scope: Option<&str>,
        limits: &[LimitConfig],
        mode: Mode,
        headers: bool,
        at: &str,
    ) -> Result<Policy, ConfigError> {
        let built = build_limits(at, limits)?;
        let named: Vec<NamedLimit> = limits
            .iter()
            .zip(&built)
            .map(|(c, l)| NamedLimit {
                name: c.name.as_str().into(),
                span_name: format!("{tier}/{}", c.name).into(),
                limit: *l,
            })
            .collect();
        // draft-ietf-httpapi-ratelimit-headers-11 §3: a List of Strings with the quota
        // `q` (requests; `qu` left at its default) per window `w` in whole seconds.
        let header = named
            .iter()
            .map(|n| {
                format!(
                    "\"{}\";q={};w={}",
                    n.name,
                    n.limit.burst(),
                    n.limit.capacity_secs()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let placeholder = KeyedDigest::from_hex("00000000000000000000000000000000").expect("valid hex");
        let key = match scope {
            None => RateLimitKey::new(placeholder),
            Some(s) => RateLimitKey::scoped(s, placeholder).map_err(|e| ConfigError::new(at, e))?,
        };
        Ok(Policy {
            tier: tier.into(),
            limits: built,
            named,
            policy_header: HeaderValue::from_str(&header).expect("names are token characters"),
            key,
            mode,
            headers,
        })
    }
}

/// What a route does, resolved from its [`RateLimitRoute`].
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) exempt: bool,
    /// The route's own limits or another tier's; `None`: the caller's tier.
    pub(crate) policy: Option<Arc<Policy>>,
    pub(crate) cost: u64,
    /// Overrides the policy's mode.
    pub(crate) mode: Option<Mode>,
}

/// The configured tiers.
pub(crate) struct Tiers {
    /// By name, sorted: a binary search over a few names beats hashing the name.
    pub(crate) by_name: Box<[(Box<str>, Arc<Policy>)]>,
    pub(crate) default: Arc<Policy>,
    pub(crate) anonymous: Arc<Policy>,
}

impl Tiers {
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<Policy>> {
        let i = self.by_name.binary_search_by(|(k, _)| (**k).cmp(name)).ok()?;
        Some(&self.by_name[i].1)
    }

    /// Every policy the layer may apply, tiers first.
    pub(crate) fn policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.by_name.iter().map(|(_, p)| p)
    }
}

/// Compiles `[ratelimit.tiers]`.
pub(crate) fn tiers(config: &RateLimitConfig) -> Result<Tiers, ConfigError> {
    let mut by_name = Vec::with_capacity(config.tiers.len());
    for (name, tier) in &config.tiers {
        let at = format!("ratelimit.tiers.{name}");
        if !valid_name(name, 32) {
            return Err(ConfigError::new(at, "a tier name is 1 to 32 of a-z 0-9 - _ ."));
        }
        let mode = tier.mode.unwrap_or(config.mode);
        let policy = Policy::new(name, None, &tier.limits, mode, config.headers, &at)?;
        by_name.push((Box::<str>::from(name.as_str()), Arc::new(policy)));
    }
    // The map iterates in order, so the list is sorted.
    let by_name: Box<[_]> = by_name.into();
    let find = |name: &str, setting: &str| {
        let i = by_name.binary_search_by(|(k, _)| (**k).cmp(name));
        i.map(|i| by_name[i].1.clone())
            .map_err(|_| ConfigError::new(setting, format_args!("{name:?} names no tier in ratelimit.tiers")))
    };
    let default = find(&config.default_tier, "ratelimit.default_tier")?;
    let anonymous = find(&config.anonymous_tier, "ratelimit.anonymous_tier")?;
    Ok(Tiers {
        by_name,
        default,
        anonymous,
    })
}

/// The setting of a route's rate-limit table, as a facade configuration spells it.
fn route_setting(pattern: &str) -> String {
    if pattern == tollgate_core::route::DEFAULT_ROUTE {
        "routes.default.ratelimit".into()
    } else {
        format!("routes.\"{pattern}\".ratelimit")
    }
}

/// Compiles every route's [`RateLimitRoute`] into a [`Rule`], over the same table.
pub(crate) fn routes(
    config: &RateLimitConfig,
    tiers: &Tiers,
    routes: &RouteMap<RateLimitRoute>,
) -> Result<RouteMap<Arc<Rule>>, ConfigError> {
    let scopes = route_scopes(
        routes
            .iter()
            .filter(|(_, r)| !r.limits.is_empty())
            .map(|(p, _)| p),
    )?;
    let mut by_tier: HashMap<&str, Arc<Policy>> = HashMap::new();
    let mut rules = Vec::new();
    for (pattern, route) in routes.iter() {
        let at = route_setting(pattern);
        if route.exempt
            && (!route.limits.is_empty() || route.tier.is_some() || route.cost != 1 || route.mode.is_some())
        {
            return Err(ConfigError::new(
                at,
                "an exempt route takes no limits, tier, cost or mode",
            ));
        }
        if !route.limits.is_empty() && route.tier.is_some() {
            return Err(ConfigError::new(
                at,
                "`limits` and `tier` exclude each other: a route has limits of its own or uses a tier's",
            ));
        }
        if route.cost == 0 {
            return Err(ConfigError::new(format!("{at}.cost"), "cost must be at least 1"));
        }
        let policy = if !route.limits.is_empty() {
            let scope = &scopes[pattern];
            let mode = route.mode.unwrap_or(config.mode);
            let tier = format!("route:{scope}");
            Some(Arc::new(Policy::new(
                &tier,
                Some(scope),
                &route.limits,
                mode,
                config.headers,
                &at,
            )?))
        } else if let Some(name) = &route.tier {
            let Some(tier) = tiers.get(name) else {
                return Err(ConfigError::new(
                    format!("{at}.tier"),
                    format_args!("{name:?} names no tier in ratelimit.tiers"),
                ));
            };
            let policy = match by_tier.get(name.as_str()) {
                Some(p) => p.clone(),
                None => {
                    // The tier's limits under a key of their own: its stored TATs
                    // mean nothing for the caller's own tier, whose limits differ.
                    let limits = &config.tiers[name].limits;
                    let scope = format!("tier.{name}");
                    let p = Arc::new(Policy::new(
                        name,
                        Some(&scope),
                        limits,
                        tier.mode,
                        config.headers,
                        &at,
                    )?);
                    by_tier.insert(name, p.clone());
                    p
                }
            };
            Some(policy)
        } else {
            None
        };
        if !route.exempt {
            let applies: Vec<&Arc<Policy>> = match &policy {
                Some(p) => vec![p],
                // In configuration order, so the error names the same tier every time.
                None => tiers.policies().collect(),
            };
            for p in applies {
                if let Some(l) = p.named.iter().find(|l| l.limit.burst() < route.cost) {
                    return Err(ConfigError::new(
                        format!("{at}.cost"),
                        format_args!(
                            "cost {} exceeds the burst {} of {}, so no request could pass",
                            route.cost,
                            l.limit.burst(),
                            l.span_name
                        ),
                    ));
                }
            }
        }
        rules.push(Arc::new(Rule {
            exempt: route.exempt,
            policy,
            cost: route.cost,
            mode: route.mode,
        }));
    }
    Ok(RouteMap::from_table(routes.table(), |id, _| {
        rules[id.index()].clone()
    }))
}

/// The store scope of each route with limits of its own, derived from its pattern:
/// `/login` gives `login`. A pattern whose readable form is too long or shared with
/// another (`/a/b` and `/a-b`) gets a hash of the pattern appended, so every route
/// keeps its own budget and its scope does not depend on the order of the table.
fn route_scopes<'a>(
    patterns: impl Iterator<Item = &'a str>,
) -> Result<HashMap<&'a str, String>, ConfigError> {
    const READABLE: usize = 30;
    let slugs: Vec<(&str, String)> = patterns.map(|p| (p, slug(p))).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (_, s) in &slugs {
        *seen.entry(s.as_str()).or_default() += 1;
    }
    let mut out = HashMap::new();
    let mut taken: HashMap<String, &str> = HashMap::new();
    for (pattern, s) in &slugs {
        let scope = if s.len() <= READABLE && seen[s.as_str()] == 1 {
            s.clone()
        } else {
            let hash = crate::store::fnv_hash(pattern.as_bytes()) as u32;
            format!("{}-{hash:08x}", s[..s.len().min(READABLE)].trim_end_matches('-'))
        };
        if let Some(other) = taken.insert(scope.clone(), pattern) {
            return Err(ConfigError::new(
                route_setting(pattern),
                format_args!(
                    "its rate-limit scope {scope:?} is also that of route {other:?}; rename one route"
                ),
            ));
        }
        out.insert(*pattern, scope);
    }
    Ok(out)
}

/// `/v1/items/{id}` gives `v1-items-id`: lowercase letters and digits, runs of
/// anything else as one `-`.
fn slug(pattern: &str) -> String {
    let mut out = String::new();
    for c in pattern.chars() {
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
    if out.is_empty() { "root".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_from_patterns() {
        assert_eq!(slug("/login"), "login");
        assert_eq!(slug("/v1/items/{id}"), "v1-items-id");
        assert_eq!(slug("/admin/*"), "admin");
        assert_eq!(slug("/"), "root");
        assert_eq!(slug("default"), "default");
    }

    #[test]
    fn scopes_are_readable_and_distinct() {
        let long = "/v1/organizations/{org}/projects/{project}/items";
        let scopes = route_scopes(["/login", "/a/b", "/a-b", long].into_iter()).unwrap();
        assert_eq!(scopes["/login"], "login");
        assert!(scopes["/a/b"].starts_with("a-b-"), "{}", scopes["/a/b"]);
        assert!(scopes["/a-b"].starts_with("a-b-"));
        assert_ne!(scopes["/a/b"], scopes["/a-b"]);
        assert!(scopes[long].len() <= 39, "{}", scopes[long]);
        for scope in scopes.values() {
            assert!(RateLimitKey::scoped(scope, KeyedDigest::from_hex(&"0".repeat(32)).unwrap()).is_ok());
        }
        // A scope does not depend on the order of the table.
        let again = route_scopes([long, "/a-b", "/a/b", "/login"].into_iter()).unwrap();
        assert_eq!(scopes, again);
    }
}
