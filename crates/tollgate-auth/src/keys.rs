//! JWT verification keys, each pinned to one algorithm (RFC 8725 §3.1), and the
//! rules a token must satisfy besides its signature. Shared by static keys and the
//! JWKS, so neither depends on the other.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{DecodingKey, Validation};
use serde_json::Value;

/// A JWS algorithm this layer verifies. Every verification key is pinned to exactly
/// one, so a token cannot pick how its signature is checked (no `alg: none`, no
/// HMAC keyed with an RSA public key).
///
/// ```
/// use tollgate_auth::Algorithm;
///
/// assert_eq!("ES256".parse::<Algorithm>(), Ok(Algorithm::ES256));
/// assert!("none".parse::<Algorithm>().is_err());
/// assert!("es256".parse::<Algorithm>().is_err(), "names are exact");
/// assert_eq!(Algorithm::EdDSA.to_string(), "EdDSA");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every algorithm this layer verifies.
    pub const ALL: [Algorithm; 12] = [
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

    /// The name in the JOSE header's `alg` (RFC 7518).
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// True for the HMAC algorithms (HS*).
    pub(crate) fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    /// True for the RSA algorithms (RS*, PS*).
    pub(crate) fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }

    /// The shortest HMAC secret accepted: the hash's output size (RFC 7518 §3.2).
    pub(crate) fn min_hmac_secret(self) -> usize {
        match self {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::HS256 => J::HS256,
            Algorithm::HS384 => J::HS384,
            Algorithm::HS512 => J::HS512,
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of [`Algorithm::ALL`] (names are case-sensitive; `none` is
/// never an algorithm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownAlgorithm;

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a supported JWS algorithm")
    }
}

impl std::error::Error for UnknownAlgorithm {}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or(UnknownAlgorithm)
    }
}

/// Why key material was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtKeyError(String);

impl fmt::Display for JwtKeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for JwtKeyError {}

fn key_error(message: impl fmt::Display) -> JwtKeyError {
    JwtKeyError(message.to_string())
}

/// A JWT verification key pinned to one [`Algorithm`], for keys kept outside the
/// configuration file; add it with
/// [`AuthBuilder::jwt_key`](crate::AuthBuilder::jwt_key).
///
/// ```
/// use tollgate_auth::{Algorithm, JwtKey};
///
/// let key = JwtKey::from_secret(Algorithm::HS256, &[7; 32]).unwrap();
/// assert_eq!(key.algorithm(), Algorithm::HS256);
/// assert!(JwtKey::from_secret(Algorithm::HS256, &[7; 16]).is_err(), "too short");
/// assert!(JwtKey::from_secret(Algorithm::RS256, &[7; 32]).is_err(), "not an HMAC algorithm");
/// ```
#[derive(Clone)]
pub struct JwtKey {
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl JwtKey {
    /// A public key in PEM (SPKI; PKCS#1 for RSA) for an asymmetric algorithm.
    pub fn from_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, JwtKeyError> {
        if alg.is_hmac() {
            return Err(key_error("HS* keys are secrets, not PEM keys"));
        }
        let key = match alg {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => DecodingKey::from_rsa_pem(pem),
        };
        let key = key.map_err(|e| key_error(format_args!("not a {alg} public key: {e}")))?;
        Ok(JwtKey { alg, key })
    }

    /// A public JWK (RFC 7517) as JSON. Its `alg`, if present, and its key type and
    /// curve must agree with `alg`.
    pub fn from_jwk(alg: Algorithm, jwk: &str) -> Result<Self, JwtKeyError> {
        let v: Value = serde_json::from_str(jwk).map_err(|e| key_error(format_args!("not JSON: {e}")))?;
        jwk_algorithm(&v, &[alg]).map_err(|why| match why {
            NOT_ALLOWED => key_error(format_args!("the JWK's alg or curve is not {alg}")),
            other => key_error(other),
        })?;
        key_from_jwk(&v, alg).map_err(key_error)
    }

    /// An HMAC secret for HS256, HS384 or HS512, at least as long as the hash's
    /// output (32, 48 or 64 bytes).
    pub fn from_secret(alg: Algorithm, secret: &[u8]) -> Result<Self, JwtKeyError> {
        if !alg.is_hmac() {
            return Err(key_error("HMAC secrets only verify HS256/HS384/HS512"));
        }
        if secret.len() < alg.min_hmac_secret() {
            return Err(key_error(format_args!(
                "{alg} needs a secret of at least {} bytes",
                alg.min_hmac_secret()
            )));
        }
        Ok(JwtKey {
            alg,
            key: DecodingKey::from_secret(secret),
        })
    }

    /// The algorithm the key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }
}

/// The key of a public JWK already pinned to `alg`.
pub(crate) fn key_from_jwk(v: &Value, alg: Algorithm) -> Result<JwtKey, &'static str> {
    check_material(v)?;
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(v.clone()).map_err(|_| "malformed JWK")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "unusable key material")?;
    Ok(JwtKey { alg, key })
}

/// Refuses key material that could never verify, so that a broken entry in a JWKS
/// document cannot displace a good key of the same `kid`: RSA moduli of fewer than
/// 2048 bits (RFC 7518 §3.3) or an empty exponent, EC and OKP coordinates of the
/// wrong length for their curve.
fn check_material(v: &Value) -> Result<(), &'static str> {
    use base64::Engine;
    let member = |name: &str| -> Result<Vec<u8>, &'static str> {
        let text = v.get(name).and_then(Value::as_str).ok_or("missing key member")?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| "key member is not base64url")
    };
    let sized = |name: &str, len: usize| match member(name)? {
        bytes if bytes.len() == len => Ok(()),
        _ => Err("key coordinate of the wrong length"),
    };
    match (
        v.get("kty").and_then(Value::as_str),
        v.get("crv").and_then(Value::as_str),
    ) {
        (Some("RSA"), _) => {
            let n = member("n")?;
            let n = &n[n.iter().take_while(|b| **b == 0).count()..];
            let bits = n.first().map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if bits < 2048 {
                return Err("RSA modulus shorter than 2048 bits");
            }
            let e = member("e")?;
            if e.is_empty() || e.len() > 8 || e.iter().all(|b| *b == 0) {
                return Err("unusable RSA exponent");
            }
            Ok(())
        }
        (Some("EC"), Some("P-256")) => sized("x", 32).and(sized("y", 32)),
        (Some("EC"), Some("P-384")) => sized("x", 48).and(sized("y", 48)),
        (Some("OKP"), Some("Ed25519")) => sized("x", 32),
        _ => Ok(()),
    }
}

const NOT_ALLOWED: &str = "alg is not among the allowed algorithms";

#[cfg(test)]
mod material_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_material_that_cannot_verify_is_refused() {
        let b = |bytes: &[u8]| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let mut n2048 = vec![0x80u8];
        n2048.extend([1u8; 255]);
        let rsa = |n: &[u8], e: &[u8]| json!({"kty": "RSA", "n": b(n), "e": b(e)});
        assert!(check_material(&rsa(&n2048, &[1, 0, 1])).is_ok());
        assert!(
            check_material(&rsa(&n2048[1..], &[1, 0, 1])).is_err(),
            "2040 bits"
        );
        let mut padded = vec![0u8];
        padded.extend(&n2048[1..]);
        assert!(
            check_material(&rsa(&padded, &[1, 0, 1])).is_err(),
            "leading zeros do not count"
        );
        assert!(check_material(&rsa(&[], &[])).is_err());
        assert!(check_material(&rsa(&n2048, &[])).is_err());
        assert!(check_material(&json!({"kty": "RSA", "e": "AQAB"})).is_err());
        let ec = |x: usize, y: usize| json!({"kty": "EC", "crv": "P-256", "x": b(&vec![1; x]), "y": b(&vec![1; y])});
        assert!(check_material(&ec(32, 32)).is_ok());
        assert!(check_material(&ec(31, 32)).is_err());
        assert!(check_material(&ec(32, 0)).is_err());
        assert!(check_material(&json!({"kty": "OKP", "crv": "Ed25519", "x": b(&[1; 33])})).is_err());
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
        ("oct", _) => return Err("symmetric keys are not accepted as JWKs"),
        _ => return Err("unsupported key type"),
    };
    let alg = match jwk.get("alg").and_then(Value::as_str) {
        Some(name) => {
            let alg = Algorithm::from_str(name).map_err(|_| "unsupported alg")?;
            let consistent = match kty {
                "RSA" => alg.is_rsa(),
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
                let mut rsa = allowed.iter().filter(|a| a.is_rsa());
                match (rsa.next(), rsa.next()) {
                    (Some(a), None) => *a,
                    _ => return Err("RSA key without alg while several RSA algorithms are allowed"),
                }
            }
        },
    };
    if !allowed.contains(&alg) {
        return Err(NOT_ALLOWED);
    }
    Ok(alg)
}

/// What a JWT must satisfy besides its signature.
#[derive(Clone, Debug)]
pub(crate) struct JwtRules {
    pub(crate) issuers: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub(crate) leeway: Duration,
    /// Claims that must be present (any name, spec or not).
    pub(crate) required_claims: Vec<String>,
    /// RFC 9068: `typ: at+jwt` and its required claims.
    pub(crate) rfc9068: bool,
}

impl JwtRules {
    /// The `jsonwebtoken` validation for a key pinned to `alg`: signature, issuer,
    /// audience and presence of the spec claims. `exp` and `nbf` are checked by the
    /// verifier against the layer's clock, not by `jsonwebtoken` against system time.
    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg.jwt());
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
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

    /// Every claim a token must carry: the configured ones and the profile's.
    pub(crate) fn all_required(&self) -> impl Iterator<Item = &str> {
        const RFC9068: &[&str] = &["iss", "exp", "aud", "sub", "client_id", "iat", "jti"];
        let profile = if self.rfc9068 { RFC9068 } else { &[] };
        self.required_claims
            .iter()
            .map(String::as_str)
            .chain(profile.iter().copied())
    }
}

/// A verification key pinned to exactly one algorithm, with its validation.
pub(crate) struct PinnedKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
    pub(crate) validation: Validation,
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
    pub(crate) fn new(kid: Option<String>, key: JwtKey, rules: &JwtRules) -> Self {
        PinnedKey {
            kid,
            alg: key.alg,
            validation: rules.validation(key.alg),
            key: key.key,
        }
    }
}

/// Keys by `kid`, plus all keys for tokens without one.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<PinnedKey>>,
    all: Vec<Arc<PinnedKey>>,
}

/// What a key lookup found.
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn jwk_pinning() {
        let all = &Algorithm::ALL;
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
    fn names_round_trip() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.name().parse::<Algorithm>(), Ok(alg));
            assert_eq!(format!("{:?}", alg.jwt()), alg.name());
        }
        for bad in ["none", "None", "", "hs256", "RS1"] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad}");
        }
    }
}
