//! JWT verification: keys pinned to one algorithm each (RFC 8725 §3.1).

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tollgate_core::clock::Timestamp;
use tollgate_core::{CredentialKind, Principal, Pseudonymizer, Scopes};

use crate::error::AuthError;
use crate::jwks::Jwks;
use crate::policy::TierPolicy;

/// The longest JWT header accepted, in base64 characters.
const MAX_HEADER_B64: usize = 2048;

/// Every algorithm this layer verifies.
pub const SUPPORTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a JWT must satisfy besides its signature.
#[derive(Clone, Debug)]
pub(crate) struct JwtRules {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway_s: u64,
    /// Claims that must be present (any name, spec or not).
    pub(crate) required_claims: Vec<String>,
    /// RFC 9068: `typ: at+jwt` and its required claims.
    pub(crate) rfc9068: bool,
}

impl JwtRules {
    /// The `jsonwebtoken` validation for a key pinned to `alg`.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        if self.audiences.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audiences);
        }
        if !self.issuers.is_empty() {
            v.set_issuer(&self.issuers);
        }
        let spec: Vec<&str> = self
            .all_required()
            .filter(|c| matches!(*c, "exp" | "nbf" | "aud" | "iss" | "sub"))
            .collect();
        v.set_required_spec_claims(&spec);
        v
    }

    fn all_required(&self) -> impl Iterator<Item = &str> {
        const RFC9068: &[&str] = &["iss", "exp", "aud", "sub", "client_id", "iat", "jti"];
        let profile = if self.rfc9068 { RFC9068 } else { &[] };
        self.required_claims
            .iter()
            .map(String::as_str)
            .chain(profile.iter().copied())
    }
}

/// A verification key pinned to exactly one algorithm.
pub(crate) struct PinnedKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for PinnedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl PinnedKey {
    pub(crate) fn new(kid: Option<String>, alg: Algorithm, key: DecodingKey, rules: &JwtRules) -> Self {
        PinnedKey {
            kid,
            alg,
            key,
            validation: rules.validation(alg),
        }
    }
}

/// Keys by `kid`, plus all keys for tokens without one.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
    all: Vec<Arc<PinnedKey>>,
}

pub(crate) enum Found<'a> {
    Key(&'a Arc<PinnedKey>),
    None,
    Ambiguous,
}

impl KeySet {
    pub(crate) fn new(keys: impl IntoIterator<Item = PinnedKey>) -> Self {
        let mut set = KeySet::default();
        for key in keys {
            let key = Arc::new(key);
            if let Some(kid) = &key.kid {
                set.by_kid.insert(kid.clone(), key.clone());
            }
            set.all.push(key);
        }
        set
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    /// The key for `kid`; without a kid, the only key of algorithm `alg`.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found<'_> {
        match kid {
            Some(kid) => self.by_kid.get(kid).map_or(Found::None, Found::Key),
            None => {
                let mut matching = self.all.iter().filter(|k| k.alg == alg);
                match (matching.next(), matching.next()) {
                    (Some(k), None) => Found::Key(k),
                    (None, _) => Found::None,
                    (Some(_), Some(_)) => Found::Ambiguous,
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    alg: Option<&'a str>,
    #[serde(default, borrow)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    typ: Option<&'a str>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
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

/// True if `token` has the shape of a JWS compact serialization (three parts).
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

impl JwtVerifier {
    pub(crate) fn verify(
        &self,
        token: &str,
        allow_refetch: bool,
        p: &Pseudonymizer,
        tiers: &TierPolicy,
    ) -> Outcome {
        match self.verify_inner(token, allow_refetch, p, tiers) {
            Ok(Some(v)) => Outcome::Verified(v),
            Ok(None) => Outcome::Refetch,
            Err(e) => Outcome::Rejected(e),
        }
    }

    fn verify_inner(
        &self,
        token: &str,
        allow_refetch: bool,
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
            .and_then(|a| Algorithm::from_str(a).ok())
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
        self.principal(token, &data.claims, p, tiers).map(Some)
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
        if let Some(iat) = claims.get("iat").and_then(numeric_date) {
            principal = principal.with_issued_at(iat);
        }
        Ok(Verified {
            principal,
            expires_at: claims.get("exp").and_then(numeric_date),
        })
    }
}

/// The credential id of a token without `jti`: the hex SHA-256 of the token. An
/// operator freezes such a token by this id (`kind = "token"`).
pub fn token_digest_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
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

/// The algorithm a JWK is pinned to: its `alg` when present (and consistent with
/// its key type and curve), otherwise the only algorithm its curve allows; an RSA
/// key without `alg` only when exactly one RSA algorithm is allowed.
pub(crate) fn jwk_algorithm(jwk: &Value, allowed: &[Algorithm]) -> Result<Algorithm, &'static str> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str);
    let by_curve = match (kty, crv) {
        ("EC", Some("P-256")) => Some(Algorithm::ES256),
        ("EC", Some("P-384")) => Some(Algorithm::ES384),
        ("OKP", Some("Ed25519")) => Some(Algorithm::EdDSA),
        ("EC", _) | ("OKP", _) => return Err("unsupported curve"),
        ("RSA", _) => None,
        ("oct", _) => return Err("symmetric keys are not accepted from a JWKS URL"),
        _ => return Err("unsupported key type"),
    };
    let alg = match jwk.get("alg").and_then(Value::as_str) {
        Some(name) => {
            let alg = Algorithm::from_str(name).map_err(|_| "unsupported alg")?;
            let consistent = match kty {
                "RSA" => matches!(
                    alg,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                ),
                _ => Some(alg) == by_curve,
            };
            if !consistent {
                return Err("alg does not match the key type or curve");
            }
            alg
        }
        None => match by_curve {
            Some(alg) => alg,
            None => {
                let mut rsa = allowed.iter().filter(|a| rsa_family(**a));
                match (rsa.next(), rsa.next()) {
                    (Some(a), None) => *a,
                    _ => return Err("RSA key without alg while several RSA algorithms are allowed"),
                }
            }
        },
    };
    if !allowed.contains(&alg) {
        return Err("alg is not among the allowed algorithms");
    }
    Ok(alg)
}

pub(crate) fn rsa_family(a: Algorithm) -> bool {
    matches!(
        a,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
    )
}

pub(crate) fn hmac_family(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The shortest HMAC secret accepted for `alg`: the hash's output size (RFC 7518 §3.2).
pub(crate) fn min_hmac_secret(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwk_pinning() {
        let all = SUPPORTED_ALGORITHMS;
        assert_eq!(
            jwk_algorithm(&json!({"kty":"EC","crv":"P-256"}), all),
            Ok(Algorithm::ES256)
        );
        assert!(jwk_algorithm(&json!({"kty":"EC","crv":"P-256","alg":"ES384"}), all).is_err());
        assert!(jwk_algorithm(&json!({"kty":"RSA"}), all).is_err());
        assert_eq!(
            jwk_algorithm(&json!({"kty":"RSA"}), &[Algorithm::RS256, Algorithm::ES256]),
            Ok(Algorithm::RS256)
        );
        assert!(jwk_algorithm(&json!({"kty":"RSA","alg":"HS256"}), all).is_err());
        assert!(jwk_algorithm(&json!({"kty":"oct","alg":"HS256"}), all).is_err());
        assert!(jwk_algorithm(&json!({"kty":"RSA","alg":"RS256"}), &[Algorithm::ES256]).is_err());
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
