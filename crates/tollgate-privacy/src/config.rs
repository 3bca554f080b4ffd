//! What the privacy trace layer logs, per route.

use std::collections::HashMap;

use http::HeaderName;
use serde::{Deserialize, Serialize};
use tollgate_core::ClientConfig;

/// How much a route's request span and log line carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogProfile {
    /// Every field of [`tollgate_core::fields::ALL`], as the layers fill them.
    #[default]
    Full,
    /// Only method, route, status, latency and trace id: nothing about the caller.
    /// For routes such as `/health` that need no more.
    Minimal,
    /// No span and no log line.
    Off,
}

/// The privacy trace layer's configuration, as read from a config file.
///
/// ```
/// use tollgate_privacy::{LogProfile, PrivacyConfig};
///
/// let config: PrivacyConfig = toml::from_str(r#"
///     log_headers = ["accept"]
///     [routes]
///     "/health" = "minimal"
///     [client]
///     trusted_proxies = ["10.0.0.0/8"]
/// "#).unwrap();
/// assert_eq!(config.routes["/health"], LogProfile::Minimal);
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// How the client's network is found (trusted proxies) and coarsened.
    pub client: ClientConfig,
    /// Request headers whose values may be logged. Headers that carry identifiers
    /// (see [`FORBIDDEN_HEADERS`]) are refused.
    pub log_headers: Vec<String>,
    /// The profile of routes not listed in `routes`.
    pub default_profile: LogProfile,
    /// Per-route profiles, keyed by route template (`/v1/items/{id}`).
    pub routes: HashMap<String, LogProfile>,
}

/// Headers that carry identifiers or credentials and can never be logged.
pub const FORBIDDEN_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "user-agent",
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-api-key",
    "x-auth-token",
    "from",
    "referer",
];

/// A configuration the privacy trace layer refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivacyConfigError {
    /// `log_headers` names a header that carries identifiers.
    #[error("privacy.log_headers: `{0}` carries identifiers or credentials and cannot be logged")]
    ForbiddenHeader(String),
    /// `log_headers` names something that is not a header name.
    #[error("privacy.log_headers: `{0}` is not a valid header name")]
    InvalidHeader(String),
}

/// Checks one allowlisted header name.
pub(crate) fn allowed_header(name: &str) -> Result<HeaderName, PrivacyConfigError> {
    let header =
        HeaderName::try_from(name).map_err(|_| PrivacyConfigError::InvalidHeader(name.to_string()))?;
    if FORBIDDEN_HEADERS.contains(&header.as_str()) {
        return Err(PrivacyConfigError::ForbiddenHeader(header.as_str().to_string()));
    }
    Ok(header)
}
