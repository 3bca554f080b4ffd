//! What the fingerprinting layer concludes about a session, for the layers after it.

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::carry::CarryExt;
use crate::problem::Problem;
use crate::pseudonym::Pseudonym;

/// A session's health verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionHealth {
    /// Nothing unusual.
    Healthy,
    /// One signal: worth a tag, not an action.
    Suspicious,
    /// Strong or repeated signals: the session is likely shared or stolen.
    Unhealthy,
}

impl SessionHealth {
    /// `healthy`, `suspicious` or `unhealthy`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionHealth::Healthy => "healthy",
            SessionHealth::Suspicious => "suspicious",
            SessionHealth::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for SessionHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reason behind a session verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SessionReason {
    /// An established session showed a fingerprint it had not shown before.
    NewFingerprint = 1 << 0,
    /// The credential was used from two network prefixes within the concurrency window.
    ConcurrentNetworks = 1 << 1,
    /// The session switched back and forth between fingerprints.
    FingerprintAlternation = 1 << 2,
    /// The token was first seen long after it was issued.
    StaleToken = 1 << 3,
}

impl SessionReason {
    /// Every reason, in a fixed order.
    pub const ALL: [SessionReason; 4] = [
        SessionReason::NewFingerprint,
        SessionReason::ConcurrentNetworks,
        SessionReason::FingerprintAlternation,
        SessionReason::StaleToken,
    ];

    /// The reason's name in spans.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionReason::NewFingerprint => "new_fingerprint",
            SessionReason::ConcurrentNetworks => "concurrent_networks",
            SessionReason::FingerprintAlternation => "fingerprint_alternation",
            SessionReason::StaleToken => "stale_token",
        }
    }
}

/// A set of [`SessionReason`]s, stored as bits (no allocation). Serializes as its bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub struct SessionReasons(u8);

/// The bits of every known reason.
const KNOWN_REASONS: u8 = 0b1111;

/// Every subset of the four reasons, comma-separated in [`SessionReason::ALL`] order,
/// indexed by its bits: span fields get a `&'static str` without formatting.
const REASON_NAMES: [&str; 16] = [
    "",
    "new_fingerprint",
    "concurrent_networks",
    "new_fingerprint,concurrent_networks",
    "fingerprint_alternation",
    "new_fingerprint,fingerprint_alternation",
    "concurrent_networks,fingerprint_alternation",
    "new_fingerprint,concurrent_networks,fingerprint_alternation",
    "stale_token",
    "new_fingerprint,stale_token",
    "concurrent_networks,stale_token",
    "new_fingerprint,concurrent_networks,stale_token",
    "fingerprint_alternation,stale_token",
    "new_fingerprint,fingerprint_alternation,stale_token",
    "concurrent_networks,fingerprint_alternation,stale_token",
    "new_fingerprint,concurrent_networks,fingerprint_alternation,stale_token",
];

impl From<u8> for SessionReasons {
    /// Unknown bits are dropped.
    fn from(bits: u8) -> Self {
        SessionReasons(bits & KNOWN_REASONS)
    }
}

impl From<SessionReasons> for u8 {
    fn from(r: SessionReasons) -> u8 {
        r.0
    }
}

impl SessionReasons {
    /// The set's bits (see [`SessionReason`]'s discriminants).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The number of reasons in the set.
    pub const fn len(self) -> u32 {
        self.0.count_ones()
    }

    /// Every reason in `other` added to this set.
    pub const fn union(self, other: SessionReasons) -> SessionReasons {
        SessionReasons(self.0 | other.0)
    }

    /// Comma-separated reason names, as [`Display`](fmt::Display) writes them, without allocating.
    pub const fn as_str(self) -> &'static str {
        REASON_NAMES[(self.0 & KNOWN_REASONS) as usize]
    }

    /// Adds a reason.
    pub fn insert(&mut self, reason: SessionReason) {
        self.0 |= reason as u8;
    }

    /// True if `reason` is in the set.
    pub fn contains(self, reason: SessionReason) -> bool {
        self.0 & reason as u8 != 0
    }

    /// True if the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The reasons in the set.
    pub fn iter(self) -> impl Iterator<Item = SessionReason> {
        SessionReason::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Display for SessionReasons {
    /// Comma-separated reason names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fingerprinting layer's view of the request's session, carried in the request
/// ([`CarryExt`]); handlers can extract it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// The session's pseudonym.
    pub session: Pseudonym,
    /// The pseudonym of this request's fingerprint.
    pub fingerprint: Pseudonym,
    /// The verdict.
    pub health: SessionHealth,
    /// The reasons behind it.
    pub reasons: SessionReasons,
}

impl<S: Send + Sync> FromRequestParts<S> for SessionInfo {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.carried::<SessionInfo>().copied().ok_or_else(|| {
            Problem::misconfigured(
                "SessionInfo is missing: add FingerprintLayer inside the authentication layer, or extract Option<SessionInfo> on routes without credentials",
            )
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for SessionInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.carried::<SessionInfo>().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_display() {
        let mut r = SessionReasons::default();
        assert_eq!(r.to_string(), "");
        r.insert(SessionReason::StaleToken);
        r.insert(SessionReason::NewFingerprint);
        assert_eq!(r.to_string(), "new_fingerprint,stale_token");
    }

    #[test]
    fn name_table_matches_the_reasons() {
        for bits in 0u8..16 {
            let set = SessionReasons::from(bits);
            let joined: Vec<&str> = set.iter().map(SessionReason::as_str).collect();
            assert_eq!(set.as_str(), joined.join(","), "bits {bits:04b}");
            assert_eq!(set.len() as usize, joined.len());
        }
        assert_eq!(SessionReasons::from(0xff).bits(), 0b1111);
    }

    #[test]
    fn verdicts_serialize_compactly() {
        let mut r = SessionReasons::default();
        r.insert(SessionReason::ConcurrentNetworks);
        assert_eq!(serde_json::to_string(&r).unwrap(), "2");
        assert_eq!(serde_json::from_str::<SessionReasons>("2").unwrap(), r);
        assert_eq!(
            serde_json::to_string(&SessionHealth::Unhealthy).unwrap(),
            "\"unhealthy\""
        );
    }
}
