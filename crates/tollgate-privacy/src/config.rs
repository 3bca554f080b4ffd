//! What the privacy trace layer logs, per route.

use std::collections::BTreeMap;

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
/// A logged header never carries its text, which a client can fill with anything (an
/// address, an email): each of its comma-separated elements (parameters after `;`
/// dropped, case ignored) is logged if it is in the header's vocabulary and as `other`
/// if not. The vocabulary is the one in `header_values`, else the built-in one of
/// `accept`, `content-type` and `accept-encoding` ([`BUILT_IN_VOCABULARIES`]); any
/// other header needs one.
///
/// ```
/// use tollgate_privacy::PrivacyConfig;
///
/// let config: PrivacyConfig = toml::from_str(r#"
/// log_headers = ["accept", "x-client-kind"]
/// [header_values]
/// x-client-kind = ["ios", "android", "web"]
/// "#).unwrap();
/// assert_eq!(config.log_headers, ["accept", "x-client-kind"]);
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// Request headers logged (as their vocabulary allows). Headers that carry
    /// identifiers (see [`FORBIDDEN_HEADERS`]) are refused.
    pub log_headers: Vec<String>,
    /// The values each logged header may show, replacing its built-in vocabulary.
    pub header_values: BTreeMap<String, Vec<String>>,
}

/// The vocabularies of headers commonly worth logging, used unless
/// [`PrivacyConfig::header_values`] gives one.
pub const BUILT_IN_VOCABULARIES: &[(&str, &[&str])] = &[
    ("accept", MEDIA_TYPES),
    ("content-type", MEDIA_TYPES),
    (
        "accept-encoding",
        &["gzip", "deflate", "br", "zstd", "identity", "*"],
    ),
];

const MEDIA_TYPES: &[&str] = &[
    "*/*",
    "application/*",
    "text/*",
    "application/json",
    "application/problem+json",
    "application/xml",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    "application/cbor",
    "application/x-protobuf",
    "multipart/form-data",
    "text/html",
    "text/plain",
    "text/csv",
    "text/event-stream",
];

/// Most elements of one header written to a line.
const MAX_LOGGED_ELEMENTS: usize = 8;

/// One logged header and the values it may show (lowercase).
#[derive(Clone, Debug)]
pub(crate) struct LoggedHeader {
    pub(crate) name: HeaderName,
    vocabulary: Box<[Box<str>]>,
}

impl LoggedHeader {
    /// Appends `,`-separated elements of `value` to `out`: each one in the
    /// vocabulary as itself, every other one as `other`.
    pub(crate) fn write_elements(&self, value: &[u8], out: &mut String) {
        let text = std::str::from_utf8(value).unwrap_or("");
        let mut written = 0;
        for element in text.split(',') {
            if written == MAX_LOGGED_ELEMENTS {
                break;
            }
            let element = element.split(';').next().unwrap_or("").trim();
            if element.is_empty() {
                continue;
            }
            let known = self.vocabulary.iter().find(|v| v.eq_ignore_ascii_case(element));
            if written > 0 {
                out.push(',');
            }
            out.push_str(known.map_or("other", |v| v));
            written += 1;
        }
        if written == 0 {
            out.push_str("other");
        }
    }
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

/// Checks one allowlisted header name and finds its vocabulary.
pub(crate) fn logged_header(name: &str, config: &PrivacyConfig) -> Result<LoggedHeader, ConfigError> {
    const SETTING: &str = "privacy.log_headers";
    let header = HeaderName::try_from(name)
        .map_err(|_| ConfigError::new(SETTING, format!("`{name}` is not a valid header name")))?;
    if FORBIDDEN_HEADERS.contains(&header.as_str()) {
        return Err(ConfigError::new(
            SETTING,
            format!("`{header}` carries identifiers or credentials and cannot be logged"),
        ));
    }
    let configured = config
        .header_values
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(header.as_str()))
        .map(|(_, values)| {
            values
                .iter()
                .map(|v| v.trim().to_ascii_lowercase().into())
                .collect()
        });
    let built_in = || {
        BUILT_IN_VOCABULARIES
            .iter()
            .find(|(n, _)| *n == header.as_str())
            .map(|(_, values)| values.iter().map(|v| (*v).into()).collect())
    };
    let vocabulary: Box<[Box<str>]> = configured.or_else(built_in).ok_or_else(|| {
        ConfigError::new(
            "privacy.header_values",
            format!("`{header}` has no built-in vocabulary: list the values it may show"),
        )
    })?;
    if let Some(bad) = vocabulary
        .iter()
        .find(|v| v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() && b != b',' && b != b';'))
    {
        return Err(ConfigError::new(
            "privacy.header_values",
            format!("`{bad}` is not a header element (printable ASCII without `,` or `;`)"),
        ));
    }
    Ok(LoggedHeader {
        name: header,
        vocabulary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept() -> LoggedHeader {
        logged_header("accept", &PrivacyConfig::default()).unwrap()
    }

    #[test]
    fn only_vocabulary_elements_are_written() {
        let cases: [(&[u8], &str); 6] = [
            (b"application/json", "application/json"),
            (
                b"Text/HTML, application/xhtml+xml;q=0.9, */*;q=0.8",
                "text/html,other,*/*",
            ),
            (b"canary.user@example.org", "other"),
            (b"text/html; q=203.0.113.77", "text/html"),
            (b"", "other"),
            (b"\xff\xfe", "other"),
        ];
        for (value, logged) in cases {
            let mut out = String::new();
            accept().write_elements(value, &mut out);
            assert_eq!(out, logged, "{:?}", String::from_utf8_lossy(value));
        }
        let mut out = String::new();
        accept().write_elements("a,".repeat(100).as_bytes(), &mut out);
        assert_eq!(out.split(',').count(), MAX_LOGGED_ELEMENTS);
    }

    #[test]
    fn a_header_without_vocabulary_is_refused_and_a_configured_one_replaces_the_built_in() {
        let config = PrivacyConfig::default();
        assert!(logged_header("x-client-kind", &config).is_err());
        let config: PrivacyConfig = toml::from_str(
            r#"
log_headers = ["x-client-kind", "accept"]
[header_values]
X-Client-Kind = ["iOS", "web"]
accept = ["application/json"]
"#,
        )
        .unwrap();
        let mut out = String::new();
        logged_header("x-client-kind", &config)
            .unwrap()
            .write_elements(b"ios, web, watch", &mut out);
        assert_eq!(out, "ios,web,other");
        out.clear();
        logged_header("accept", &config)
            .unwrap()
            .write_elements(b"text/html, application/json", &mut out);
        assert_eq!(out, "other,application/json");
        let bad: PrivacyConfig = toml::from_str("[header_values]\naccept = [\"a,b\"]").unwrap();
        assert!(logged_header("accept", &bad).is_err());
    }
}
