//! Per-route policy: whether a route needs credentials, and which scopes.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_core::{ConfigError, RouteMap};

use crate::dpop::DpopMode;
use crate::scope::{RequiredScopes, is_scope_token};

/// How a route treats credentials.
///
/// In configuration: `"required"`, `"optional"` or `"skip"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthRequirement {
    /// Credentials are required: a request without them gets 401 (the default).
    #[default]
    Required,
    /// Credentials are checked if sent (invalid ones are refused as on a required
    /// route); a request without them passes on without a
    /// [`Principal`](tollgate_core::Principal).
    Optional,
    /// Credentials are not read at all: every request passes on without a
    /// `Principal`, even one carrying garbage credentials.
    Skip,
}

/// The authentication policy of one route: the value of a
/// [`RouteMap<AuthRoute>`](tollgate_core::RouteMap) given to
/// [`AuthBuilder::routes`](crate::AuthBuilder::routes).
///
/// `scopes` must all be held by the principal, else the answer is 403
/// `insufficient_scope` with `WWW-Authenticate: Bearer error="insufficient_scope",
/// scope="..."` (RFC 6750 §3.1). A route with scopes needs credentials even when
/// its requirement is `Optional` (an anonymous request gets 401); `Skip` with scopes
/// is refused when the layer is built.
///
/// The default is [`AuthRequirement::Required`] with no scopes.
///
/// It deserializes from a requirement alone or from a table:
///
/// ```
/// use tollgate_auth::{AuthRequirement, AuthRoute};
///
/// let skip: AuthRoute = serde_json::from_str(r#""skip""#).unwrap();
/// assert_eq!(skip, AuthRoute::skip());
///
/// let admin: AuthRoute = toml::from_str(r#"scopes = ["tollgate:admin"]"#).unwrap();
/// assert_eq!(admin.requirement, AuthRequirement::Required);
/// assert_eq!(admin, AuthRoute::required().with_scopes(["tollgate:admin"]));
///
/// assert!(toml::from_str::<AuthRoute>(r#"require = "optional""#).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthRoute {
    /// Whether the route needs credentials.
    pub requirement: AuthRequirement,
    /// Scopes the principal must all hold (OAuth2 scope tokens: no spaces or quotes).
    pub scopes: Vec<String>,
    /// Whether the route requires DPoP-bound tokens (default: optional).
    pub dpop: DpopMode,
}

impl AuthRoute {
    /// Credentials required, no scopes.
    pub fn required() -> Self {
        AuthRequirement::Required.into()
    }

    /// Credentials checked if sent.
    pub fn optional() -> Self {
        AuthRequirement::Optional.into()
    }

    /// Credentials not read.
    pub fn skip() -> Self {
        AuthRequirement::Skip.into()
    }

    /// The same route, requiring these scopes as well.
    pub fn with_scopes<I, S>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// The same route, with this DPoP mode.
    pub fn with_dpop(mut self, dpop: DpopMode) -> Self {
        self.dpop = dpop;
        self
    }
}

impl From<AuthRequirement> for AuthRoute {
    fn from(requirement: AuthRequirement) -> Self {
        AuthRoute {
            requirement,
            scopes: Vec::new(),
            dpop: DpopMode::default(),
        }
    }
}

/// The table form of [`AuthRoute`].
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct AuthRouteTable {
    requirement: AuthRequirement,
    scopes: Vec<String>,
    dpop: DpopMode,
}

impl<'de> Deserialize<'de> for AuthRoute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RouteVisitor;

        impl<'de> Visitor<'de> for RouteVisitor {
            type Value = AuthRoute;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""required", "optional", "skip" or a table { requirement, scopes, dpop }"#)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<AuthRoute, E> {
                AuthRequirement::deserialize(v.into_deserializer()).map(AuthRoute::from)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<AuthRoute, A::Error> {
                let t = AuthRouteTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AuthRoute {
                    requirement: t.requirement,
                    scopes: t.scopes,
                    dpop: t.dpop,
                })
            }
        }

        deserializer.deserialize_any(RouteVisitor)
    }
}

/// An [`AuthRoute`] ready for the request path: the scope check made once.
#[derive(Debug)]
pub(crate) struct RoutePolicy {
    pub(crate) requirement: AuthRequirement,
    /// Shared so the slow path can carry it into its future.
    pub(crate) scopes: Option<Arc<RequiredScopes>>,
    /// The DPoP mode, `Off` wherever DPoP is not configured.
    pub(crate) dpop: DpopMode,
}

impl RoutePolicy {
    /// True if a request without credentials passes on.
    pub(crate) fn admits_anonymous(&self) -> bool {
        self.requirement == AuthRequirement::Optional && self.scopes.is_none()
    }
}

/// The policies of `routes` over the same route table (so a [`Route`] resolved by
/// an outer layer is reused), with challenges naming `realm`.
///
/// [`Route`]: tollgate_core::Route
pub(crate) fn compile(
    routes: &RouteMap<AuthRoute>,
    realm: Option<&str>,
    dpop_configured: bool,
) -> Result<RouteMap<RoutePolicy>, ConfigError> {
    for (pattern, route) in routes.iter() {
        if route.dpop == DpopMode::Required {
            let setting = format!("routes.\"{pattern}\".dpop");
            if !dpop_configured {
                return Err(ConfigError::new(
                    setting,
                    "requiring DPoP needs an [auth.dpop] section",
                ));
            }
            if route.requirement == AuthRequirement::Skip {
                return Err(ConfigError::new(
                    setting,
                    "a route that skips authentication cannot require DPoP",
                ));
            }
        }
        let setting = || format!("routes.\"{pattern}\".scopes");
        if let Some(bad) = route.scopes.iter().find(|s| !is_scope_token(s)) {
            return Err(ConfigError::new(
                setting(),
                format!("{bad:?} is not a scope token (no spaces, quotes or backslashes)"),
            ));
        }
        if route.requirement == AuthRequirement::Skip && !route.scopes.is_empty() {
            return Err(ConfigError::new(
                setting(),
                "a route that skips authentication cannot require scopes",
            ));
        }
    }
    Ok(routes.map(|route| RoutePolicy {
        requirement: route.requirement,
        scopes: RequiredScopes::new(&route.scopes, realm).map(Arc::new),
        dpop: if dpop_configured {
            route.dpop
        } else {
            DpopMode::Off
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_and_errors() {
        let r: AuthRoute = toml::from_str("requirement = \"optional\"").unwrap();
        assert_eq!(r, AuthRoute::optional());
        let r: AuthRoute = serde_json::from_str(r#""required""#).unwrap();
        assert_eq!(r, AuthRoute::default());
        let err = serde_json::from_str::<AuthRoute>(r#""maybe""#).unwrap_err();
        assert!(err.to_string().contains("maybe"), "{err}");

        let bad = RouteMap::new(
            [("/h", AuthRoute::skip().with_scopes(["x"]))],
            AuthRoute::default(),
        )
        .unwrap();
        let err = compile(&bad, None, false).unwrap_err();
        assert_eq!(err.setting, "routes.\"/h\".scopes");
        let bad = RouteMap::new(
            [("/h", AuthRoute::required().with_scopes(["a b"]))],
            AuthRoute::default(),
        )
        .unwrap();
        assert!(compile(&bad, None, false).is_err());

        let ok = RouteMap::new(
            [
                ("/o", AuthRoute::optional()),
                ("/s", AuthRoute::optional().with_scopes(["x"])),
            ],
            AuthRoute::default(),
        )
        .unwrap();
        let compiled = compile(&ok, None, false).unwrap();
        assert!(compiled.get_for_path(Some("/o"), "/o").admits_anonymous());
        assert!(!compiled.get_for_path(Some("/s"), "/s").admits_anonymous());
        assert!(!compiled.default_value().admits_anonymous());
    }
}
