//! What the privacy trace layer logs, per route.

use http::HeaderName;
use serde::{Deserialize, Serialize};
use tollgate_core::ConfigError;

/// How much a route's request span and log line carry: the privacy layer's per-route
/// setting (`log = "minimal"` in a `[routes."<template>"]` table).
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
/// Per-route profiles and client resolution are not here: they are shared by the
/// whole stack and given to the builder ([`crate::PrivacyTraceBuilder::routes`],
/// [`crate::PrivacyTraceBuilder::client`]).
///
/// ```
/// use tollgate_privacy::PrivacyConfig;
///
/// let config: PrivacyConfig = toml::from_str(r#"log_headers = ["accept"]"#).unwrap();
/// assert_eq!(config.log_headers, ["accept"]);
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Request headers whose values may be logged. Headers that carry identifiers
    /// (see [`FORBIDDEN_HEADERS`]) are refused.
    pub log_headers: Vec<String>,
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

/// Checks one allowlisted header name.
pub(crate) fn allowed_header(name: &str) -> Result<HeaderName, ConfigError> {
    const SETTING: &str = "privacy.log_headers";
    let header = HeaderName::try_from(name)
        .map_err(|_| ConfigError::new(SETTING, format!("`{name}` is not a valid header name")))?;
    if FORBIDDEN_HEADERS.contains(&header.as_str()) {
        return Err(ConfigError::new(
            SETTING,
            format!("`{header}` carries identifiers or credentials and cannot be logged"),
        ));
    }
    Ok(header)
}
