//! JWT verification: keys pinned to one algorithm each (RFC 8725 §3.1), `exp` and
//! `nbf` checked against the layer's clock.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::clock::Timestamp;
use tollgate_core::{BoundKey, CredentialKind, Principal, Pseudonymizer, Scopes};

use crate::error::AuthError;
use crate::jwks::Jwks;
use crate::keys::{Algorithm, Found, JwtRules, KeySet};
use crate::policy::TierPolicy;

/// The longest JWT header accepted, in base64 characters.
const MAX_HEADER_B64: usize = 2048;

#[derive(Deserialize)]
struct RawHeader<'a> {
    alg: Option<&'a str>,
    #[serde(default, deserialize_with = "string_if_present")]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    typ: Option<&'a str>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A header parameter that must be a string when present: `null` is refused like
/// any other non-string (RFC 7515 §4.1.4).
fn string_if_present<'de, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::borrow::Cow<'a, str>>, D::Error> {
    String::deserialize(d).map(|s| Some(std::borrow::Cow::Owned(s)))
}

/// A verified token, ready to become a principal.
pub(crate) struct Verified {
    pub(crate) principal: Principal,
    pub(crate) expires_at: Option<Timestamp>,
}

/// What verification concluded.
pub(crate) enum Outcome {
    Verified(Verified),
    Rejected(AuthError),
    /// The `kid` is unknown and the JWKS may be refetched: call again after
    /// [`Jwks::refetch_for_unknown_kid`] with `allow_refetch = false`.
    Refetch,
}

/// Verifies JWTs against static keys and a JWKS.
pub(crate) struct JwtVerifier {
    pub(crate) rules: JwtRules,
    pub(crate) static_keys: KeySet,
    pub(crate) jwks: Option<Arc<Jwks>>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("algorithms", &self.rules.algorithms)
            .field("static_keys", &self.static_keys.len())
            .field("jwks", &self.jwks.is_some())
            .finish()
    }
}

/// One trusted issuer: its verifier and where its tokens' tiers come from.
#[derive(Debug)]
pub(crate) struct JwtIssuer {
    pub(crate) verifier: JwtVerifier,
    pub(crate) tiers: TierPolicy,
}

#[derive(Deserialize)]
struct RawIss<'a> {
    #[serde(default, borrow)]
    iss: Option<std::borrow::Cow<'a, str>>,
}

/// The issuer that verifies `token`: the only one, else the one naming the token's
/// `iss` (read before verification, only to choose), else one accepting any issuer.
pub(crate) fn select_issuer(issuers: &[JwtIssuer], token: &str) -> Result<usize, AuthError> {
    if issuers.len() == 1 {
        return Ok(0);
    }
    let payload = token.split('.').nth(1).unwrap_or("");
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| AuthError::MalformedToken)?;
    let raw: RawIss<'_> = serde_json::from_slice(&json).map_err(|_| AuthError::MalformedToken)?;
    let named = raw.iss.as_deref().and_then(|iss| {
        issuers
            .iter()
            .position(|i| i.verifier.rules.issuers.iter().any(|x| x == iss))
    });
    named
        .or_else(|| issuers.iter().position(|i| i.verifier.rules.issuers.is_empty()))
        .ok_or(AuthError::WrongIssuer)
}

/// True if `token` has the shape of a JWS compact serialization (three parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

impl JwtVerifier {
    /// Verifies `token` at time `now` (the layer's clock).
    pub(crate) fn verify(
        &self,
        token: &str,
        allow_refetch: bool,
        now: Timestamp,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
    ) -> Outcome {
        match self.verify_inner(token, allow_refetch, now, p, tiers) {
            Ok(Some(v)) => Outcome::Verified(v),
            Ok(None) => Outcome::Refetch,
            Err(e) => Outcome::Rejected(e),
        }
    }

    fn verify_inner(
        &self,
        token: &str,
        allow_refetch: bool,
        now: Timestamp,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
    ) -> Result<Option<Verified>, AuthError> {
        let header_b64 = token.split('.').next().unwrap_or("");
        if header_b64.is_empty() || header_b64.len() > MAX_HEADER_B64 {
            return Err(AuthError::MalformedToken);
        }
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::MalformedToken)?;
        let header: RawHeader<'_> =
            serde_json::from_slice(&header_json).map_err(|_| AuthError::MalformedToken)?;
        // `none`, `None`, `NONE`, `nOnE` and every other unknown name fail here:
        // only the exact names of supported algorithms parse.
        let alg = header
            .alg
            .and_then(|a| a.parse::<Algorithm>().ok())
            .ok_or(AuthError::UnsupportedAlgorithm)?;
        if !self.rules.algorithms.contains(&alg) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        if header.crit.is_some() {
            // No extension is understood, so any critical one must be refused (RFC 7515 §4.1.11).
            return Err(AuthError::MalformedToken);
        }
        if self.rules.rfc9068 {
            let typ = header.typ.unwrap_or("");
            if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
                return Err(AuthError::WrongType);
            }
        }
        // `jku`, `x5u` and embedded `jwk` headers are never read: keys come only
        // from configuration and the configured JWKS URL.
        let kid = header.kid.as_deref();
        let remote = self.jwks.as_ref().map(|j| j.keys());
        let key = match self.static_keys.find(kid, alg) {
            Found::Key(k) => k.clone(),
            Found::Ambiguous => return Err(AuthError::UnknownKey),
            Found::None => match remote.as_ref().map(|r| r.find(kid, alg)) {
                Some(Found::Key(k)) => k.clone(),
                Some(Found::None) if allow_refetch && kid.is_some() => return Ok(None),
                _ => return Err(AuthError::UnknownKey),
            },
        };
        if key.alg != alg {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &key.validation)
            .map_err(|e| map_error(e.kind()))?;
        // A JSON parser keeps the last of duplicate names, another issuer's or
        // gateway's may keep the first: refuse them (RFC 7519 §4, RFC 8725 §3.9).
        if has_duplicate_claims(token) {
            return Err(AuthError::MalformedToken);
        }
        self.check_times(&data.claims, now)?;
        self.principal(token, &data.claims, p, tiers).map(Some)
    }

    /// `exp`, `nbf` and `iat` against `now`, with the configured leeway either way
    /// (a token issued in the future comes from a skewed or forged issuer). A present
    /// claim that is not a NumericDate is refused like a missing one.
    fn check_times(&self, claims: &Map<String, Value>, now: Timestamp) -> Result<(), AuthError> {
        let date = |name: &str| match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => numeric_date(v).map(Some).ok_or(AuthError::MissingClaim),
        };
        let leeway = self.rules.leeway;
        if let Some(exp) = date("exp")?
            && now > exp.saturating_add(leeway)
        {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = date("nbf")?
            && nbf > now.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if let Some(iat) = date("iat")?
            && iat > now.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        Ok(())
    }

    fn principal(
        &self,
        token: &str,
        claims: &Map<String, Value>,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
    ) -> Result<Verified, AuthError> {
        for name in self.rules.all_required() {
            if claims.get(name).is_none_or(Value::is_null) {
                return Err(AuthError::MissingClaim);
            }
        }
        let subject = claims
            .get("sub")
            .or_else(|| claims.get("client_id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(AuthError::MissingClaim)?;
        let scopes = scopes_of(claims);
        let tier_claim = tiers
            .claim
            .as_deref()
            .and_then(|c| claims.get(c))
            .and_then(Value::as_str);
        let tier = tiers.resolve(tier_claim, &scopes);
        let principal = match claims
            .get("jti")
            .and_then(Value::as_str)
            .filter(|j| !j.is_empty())
        {
            Some(jti) => Principal::new(p, CredentialKind::Jwt, subject, jti.as_bytes()),
            None => Principal::new(
                p,
                CredentialKind::Jwt,
                subject,
                token_digest_hex(token).as_bytes(),
            ),
        };
        let mut principal = principal.with_tier(tier).with_scopes(scopes);
        if let Some(key) = bound_key(claims.get("cnf"), p)? {
            principal = principal.with_bound_key(key);
        }
        if let Some(iat) = claims.get("iat").and_then(numeric_date) {
            principal = principal.with_issued_at(iat);
        }
        Ok(Verified {
            principal,
            expires_at: claims.get("exp").and_then(numeric_date),
        })
    }
}

/// The DPoP key a token is bound to (`cnf.jkt`, RFC 9449 §6.1). A `cnf` with
/// `jkt` of the wrong shape is refused rather than ignored, so that a bound token
/// can never pass as a bearer token.
pub(crate) fn bound_key(cnf: Option<&Value>, p: &Pseudonymizer) -> Result<Option<BoundKey>, AuthError> {
    let Some(jkt) = cnf.and_then(|c| c.get("jkt")) else {
        return Ok(None);
    };
    match jkt.as_str() {
        Some(t) if !t.is_empty() && t.len() <= 128 => Ok(Some(BoundKey::new(p, t))),
        _ => Err(AuthError::MissingClaim),
    }
}

/// The credential id of a token without `jti`: the hex SHA-256 of the token. An
/// operator freezes such a token by this id (`kind = "token"`).
pub fn token_digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// True if the claims set of `token` (already verified) names a claim twice.
fn has_duplicate_claims(token: &str) -> bool {
    struct Names(bool);
    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if !seen.insert(name) {
                    return Ok(true);
                }
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(self.0)
        }
    }
    let payload = token.split('.').nth(1).unwrap_or("");
    let Ok(json) = URL_SAFE_NO_PAD.decode(payload) else {
        return true;
    };
    let mut de = serde_json::Deserializer::from_slice(&json);
    serde::Deserializer::deserialize_map(&mut de, Names(false)).unwrap_or(true)
}

fn numeric_date(v: &Value) -> Option<Timestamp> {
    let secs = v
        .as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))?;
    Some(Timestamp::from_secs(secs))
}

/// Scopes from `scope` (space-separated, RFC 8693/9068) or `scp` (array or string).
pub(crate) fn scopes_of(claims: &Map<String, Value>) -> Scopes {
    if let Some(s) = claims.get("scope").and_then(Value::as_str) {
        return Scopes::from_space_separated(s);
    }
    match claims.get("scp") {
        Some(Value::String(s)) => Scopes::from_space_separated(s),
        Some(Value::Array(a)) => Scopes::new(a.iter().filter_map(Value::as_str)),
        _ => Scopes::default(),
    }
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::InvalidSubject => {
            AuthError::MissingClaim
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::UnsupportedAlgorithm,
        _ => AuthError::MalformedToken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn duplicate_claim_names_are_found() {
        let token = |payload: &str| format!("e30.{}.sig", URL_SAFE_NO_PAD.encode(payload));
        assert!(!has_duplicate_claims(&token(
            r#"{"sub":"a","aud":"b","x":{"y":1,"z":2}}"#
        )));
        assert!(has_duplicate_claims(&token(r#"{"sub":"a","sub":"admin"}"#)));
        // The same name spelt with an escape is the same name.
        assert!(has_duplicate_claims(&token(r#"{"sub":"a","s\u0075b":"admin"}"#)));
        assert!(has_duplicate_claims("e30.!!!.sig"));
    }

    #[test]
    fn scopes_forms() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert!(scopes_of(&m(json!({"scope": "a b"}))).contains("b"));
        assert!(scopes_of(&m(json!({"scp": ["a", "b"]}))).contains("b"));
        assert!(scopes_of(&m(json!({"scp": "a b"}))).contains("a"));
        assert_eq!(scopes_of(&m(json!({}))).iter().count(), 0);
    }
}
