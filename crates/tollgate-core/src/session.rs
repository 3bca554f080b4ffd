//! What the fingerprinting layer concludes about a session, for the layers after it.

use std::fmt;

use crate::pseudonym::Pseudonym;

/// A session's health verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// A set of [`SessionReason`]s, stored as bits (no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionReasons(u8);

impl SessionReasons {
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
        for (i, r) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(r.as_str())?;
        }
        Ok(())
    }
}

/// The fingerprinting layer's view of the request's session, in request extensions.
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
}
