//! What the detectors concluded about a request: [`AnomalyTags`].

use std::fmt;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;
use serde::{Deserialize, Serialize};

/// One kind of anomaly, one per detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum AnomalyKind {
    /// A principal's request rate far above its own baseline and above its tier's norm.
    Volume = 0,
    /// Many failed logins, or many distinct subjects, from one network prefix.
    CredentialStuffing = 1,
    /// One session walking many distinct object ids on one route, or a high 404/403 ratio.
    Enumeration = 2,
    /// The fingerprinting layer judged the session shared or stolen.
    TokenSharing = 3,
    /// A route sessions hardly ever call, or a step that normally precedes it was skipped.
    UnusualSequence = 4,
}

/// The number of [`AnomalyKind`]s.
pub const KIND_COUNT: usize = 5;

impl AnomalyKind {
    /// Every kind, in a fixed order.
    pub const ALL: [AnomalyKind; KIND_COUNT] = [
        AnomalyKind::Volume,
        AnomalyKind::CredentialStuffing,
        AnomalyKind::Enumeration,
        AnomalyKind::TokenSharing,
        AnomalyKind::UnusualSequence,
    ];

    /// The kind's name in spans, headers and config: `volume`, `credential_stuffing`,
    /// `enumeration`, `token_sharing`, `unusual_sequence`.
    pub const fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Volume => "volume",
            AnomalyKind::CredentialStuffing => "credential_stuffing",
            AnomalyKind::Enumeration => "enumeration",
            AnomalyKind::TokenSharing => "token_sharing",
            AnomalyKind::UnusualSequence => "unusual_sequence",
        }
    }

    /// The kind's position in [`AnomalyKind::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The anomalies found on one request, each with a score from 1 to 100.
///
/// Six bytes, `Copy`, no allocation. Inserted into request extensions (handlers can
/// extract it) and response extensions, and recorded in the request span's
/// `anomaly` field as `kind:score` pairs.
///
/// ```
/// use tollgate_anomaly::{AnomalyKind, AnomalyTags};
///
/// let mut tags = AnomalyTags::default();
/// assert!(tags.is_empty());
/// tags.insert(AnomalyKind::Enumeration, 80);
/// tags.insert(AnomalyKind::Volume, 55);
/// tags.insert(AnomalyKind::Enumeration, 60); // the higher score stays
/// assert_eq!(tags.score(AnomalyKind::Enumeration), Some(80));
/// assert_eq!(tags.to_string(), "volume:55,enumeration:80");
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AnomalyTags {
    bits: u8,
    scores: [u8; KIND_COUNT],
}

impl AnomalyTags {
    /// Adds `kind` with `score` (clamped to 1..=100); an existing tag keeps the higher score.
    pub fn insert(&mut self, kind: AnomalyKind, score: u8) {
        let score = score.clamp(1, 100);
        let slot = &mut self.scores[kind.index()];
        *slot = (*slot).max(score);
        self.bits |= kind.bit();
    }

    /// Removes `kind`.
    pub fn remove(&mut self, kind: AnomalyKind) {
        self.bits &= !kind.bit();
        self.scores[kind.index()] = 0;
    }

    /// True if `kind` is tagged.
    pub fn contains(&self, kind: AnomalyKind) -> bool {
        self.bits & kind.bit() != 0
    }

    /// The score of `kind`, if tagged.
    pub fn score(&self, kind: AnomalyKind) -> Option<u8> {
        self.contains(kind).then_some(self.scores[kind.index()])
    }

    /// The highest score of any tag, 0 if none.
    pub fn max_score(&self) -> u8 {
        self.iter().map(|(_, s)| s).max().unwrap_or(0)
    }

    /// True if no anomaly was found.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// The number of tags.
    pub fn len(&self) -> usize {
        self.bits.count_ones() as usize
    }

    /// Adds every tag of `other`.
    pub fn merge(&mut self, other: AnomalyTags) {
        for (kind, score) in other.iter() {
            self.insert(kind, score);
        }
    }

    /// The tags and their scores, in [`AnomalyKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (AnomalyKind, u8)> + '_ {
        AnomalyKind::ALL
            .into_iter()
            .filter(|k| self.contains(*k))
            .map(|k| (k, self.scores[k.index()]))
    }
}

impl fmt::Display for AnomalyTags {
    /// Comma-separated `kind:score` pairs; empty when there are no tags.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (kind, score)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{score}", kind.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for AnomalyTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AnomalyTags({self})")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AnomalyTags {
    type Rejection = std::convert::Infallible;

    /// The request's tags; empty when the anomaly layer found nothing or is not installed.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<AnomalyTags>().copied().unwrap_or_default())
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for AnomalyTags {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<AnomalyTags>().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_ordered() {
        assert_eq!(std::mem::size_of::<AnomalyTags>(), 6);
        let mut t = AnomalyTags::default();
        t.insert(AnomalyKind::UnusualSequence, 0);
        t.insert(AnomalyKind::Volume, 250);
        assert_eq!(t.to_string(), "volume:100,unusual_sequence:1");
        assert_eq!(t.len(), 2);
        assert_eq!(t.max_score(), 100);
        t.remove(AnomalyKind::Volume);
        assert_eq!(t.to_string(), "unusual_sequence:1");
        let mut u = AnomalyTags::default();
        u.insert(AnomalyKind::TokenSharing, 90);
        u.merge(t);
        assert_eq!(u.to_string(), "token_sharing:90,unusual_sequence:1");
    }
}
