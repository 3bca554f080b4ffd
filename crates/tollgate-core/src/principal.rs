//! The authenticated caller, as the rest of the stack sees it: pseudonyms, a tier
//! and scopes, never the subject or the credential itself.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::carry::CarryExt;
use crate::clock::Timestamp;
use crate::problem::{Problem, types};
use crate::pseudonym::{Domain, KeyedDigest, Pseudonym, Pseudonymizer};

/// How the caller authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialKind {
    /// A JSON Web Token verified locally.
    Jwt,
    /// An API key.
    ApiKey,
    /// An OAuth2 access token checked by introspection (RFC 7662).
    Introspection,
}

impl CredentialKind {
    /// The name used in spans: `jwt`, `api_key`, `introspection`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Introspection => "introspection",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A plan name such as `free` or `pro`. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tier(Arc<str>);

impl Tier {
    /// A tier by name.
    pub fn new(name: impl AsRef<str>) -> Self {
        Tier(Arc::from(name.as_ref()))
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tier({})", self.0)
    }
}

/// The scopes granted to a credential. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scopes(Arc<[Box<str>]>);

impl Scopes {
    /// Scopes from a list.
    pub fn new<I, S>(scopes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Scopes(scopes.into_iter().map(|s| Box::from(s.as_ref())).collect())
    }

    /// Scopes from an OAuth2 space-separated `scope` string.
    pub fn from_space_separated(scope: &str) -> Self {
        Scopes::new(scope.split_ascii_whitespace())
    }

    /// True if `scope` was granted.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.iter().any(|s| &**s == scope)
    }

    /// The scopes.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|s| &**s)
    }
}

/// The authenticated caller.
///
/// Built from raw identifiers, which it hashes at once and does not keep:
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::principal::{CredentialKind, Principal, Tier};
/// use tollgate_core::pseudonym::{Pseudonymizer, PseudonymSecret};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let principal = Principal::new(&p, CredentialKind::ApiKey, "alice@example.com", b"key-7")
///     .with_tier(Tier::new("pro"));
/// assert!(!format!("{principal:?}").contains("alice"));
/// assert_eq!(principal.tier().as_str(), "pro");
/// ```
#[derive(Clone, Debug)]
pub struct Principal {
    subject: Pseudonym,
    subject_key: KeyedDigest,
    credential: CredentialKind,
    credential_key: KeyedDigest,
    tier: Tier,
    scopes: Scopes,
    issued_at: Option<Timestamp>,
    bound_key: Option<BoundKey>,
}

/// The proof-of-possession key a credential is bound to (DPoP, RFC 9449 `cnf.jkt`),
/// as a pseudonym and a keyed digest of its RFC 7638 thumbprint: never the
/// thumbprint or the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundKey {
    pseudonym: Pseudonym,
    digest: KeyedDigest,
}

impl BoundKey {
    /// The key bound to by `thumbprint` (the base64url RFC 7638 thumbprint).
    pub fn new(p: &Pseudonymizer, thumbprint: &str) -> Self {
        BoundKey {
            pseudonym: p.pseudonym(Domain::DPOP_KEY, thumbprint.as_bytes()),
            digest: p.digest(Domain::DPOP_KEY, thumbprint.as_bytes()),
        }
    }

    /// The thumbprint's pseudonym in the current epoch: the same for every request
    /// signed with the same key (key continuity), for logs and session signals.
    pub fn pseudonym(&self) -> Pseudonym {
        self.pseudonym
    }

    /// The thumbprint's stable digest: for comparisons and store keys. Never log it.
    pub fn digest(&self) -> KeyedDigest {
        self.digest
    }
}

/// The tier of a principal for whom no tier was found.
pub const DEFAULT_TIER: &str = "default";

impl Principal {
    /// A principal for `subject`, authenticated by a credential identified by
    /// `credential_id` (API key id, token `jti`, or a digest of the token).
    pub fn new(p: &Pseudonymizer, credential: CredentialKind, subject: &str, credential_id: &[u8]) -> Self {
        Principal {
            subject: p.pseudonym(Domain::SUBJECT, subject.as_bytes()),
            subject_key: p.digest(Domain::SUBJECT, subject.as_bytes()),
            credential,
            credential_key: p.digest(Domain::CREDENTIAL, credential_id),
            tier: Tier::new(DEFAULT_TIER),
            scopes: Scopes::default(),
            issued_at: None,
            bound_key: None,
        }
    }

    /// Sets the tier.
    pub fn with_tier(mut self, tier: Tier) -> Self {
        self.tier = tier;
        self
    }

    /// Sets the scopes.
    pub fn with_scopes(mut self, scopes: Scopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets when the credential was issued (`iat`), kept to the minute.
    pub fn with_issued_at(mut self, issued_at: Timestamp) -> Self {
        self.issued_at = Some(issued_at.to_minute());
        self
    }

    /// Sets the proof-of-possession key the credential is bound to (DPoP `cnf.jkt`).
    pub fn with_bound_key(mut self, key: BoundKey) -> Self {
        self.bound_key = Some(key);
        self
    }

    /// The key the credential is bound to, if it is sender-constrained (DPoP). A
    /// principal that passed the authentication layer with a bound key proved
    /// possession of that key on this request.
    pub fn bound_key(&self) -> Option<&BoundKey> {
        self.bound_key.as_ref()
    }

    /// The subject's pseudonym in the current epoch: for logs and spans.
    pub fn subject(&self) -> Pseudonym {
        self.subject
    }

    /// The subject's stable digest: for store keys (freeze list, rate limits). Never log it.
    pub fn subject_key(&self) -> KeyedDigest {
        self.subject_key
    }

    /// How the caller authenticated.
    pub fn credential(&self) -> CredentialKind {
        self.credential
    }

    /// The credential's stable digest: for store keys (freeze list, sessions). Never log it.
    pub fn credential_key(&self) -> KeyedDigest {
        self.credential_key
    }

    /// The tier.
    pub fn tier(&self) -> &Tier {
        &self.tier
    }

    /// The scopes.
    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }

    /// When the credential was issued, to the minute, if known.
    pub fn issued_at(&self) -> Option<Timestamp> {
        self.issued_at
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts
            .extensions
            .carried::<Principal>()
            .cloned()
            .ok_or_else(|| Problem::new(types::MISSING_CREDENTIALS))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.carried::<Principal>().cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = Scopes::from_space_separated("read:items  write:items");
        assert!(s.contains("read:items"));
        assert!(!s.contains("read"));
        assert_eq!(s.iter().count(), 2);
    }
}
