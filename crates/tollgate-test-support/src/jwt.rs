//! HS256 JSON Web Tokens for tests of JWT verification.
//!
//! Signed here with HMAC-SHA256 (RFC 7515), not with the library that verifies them,
//! so a test does not check a verifier against itself.
//!
//! ```
//! use serde_json::json;
//! use tollgate_test_support::jwt;
//!
//! let mut claims = jwt::claims("https://issuer.test", "tollgate-tests", "alice");
//! claims["plan"] = json!("pro");
//! let token = jwt::hs256(&[0x5a; 32], Some("test"), &claims);
//! assert_eq!(token.split('.').count(), 3);
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// How long [`claims`] keeps a token valid: 10 minutes.
pub const LIFETIME_SECS: u64 = 600;

/// The current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// Claims valid now for `subject`: `sub`, `iss`, `aud`, `iat` (now), `exp` (now +
/// [`LIFETIME_SECS`]) and `jti` (`jti-{subject}`). Tests add or change claims by
/// indexing (`claims["scope"] = json!("read:items")`).
pub fn claims(issuer: &str, audience: &str, subject: &str) -> Value {
    let now = unix_now();
    json!({
        "sub": subject,
        "iss": issuer,
        "aud": audience,
        "iat": now,
        "exp": now + LIFETIME_SECS,
        "jti": format!("jti-{subject}"),
    })
}

/// A compact JWS over `claims`, signed with HS256 under `secret`, with `kid` in the
/// header when given.
pub fn hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": "HS256", "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let mut token = String::new();
    URL_SAFE_NO_PAD.encode_string(header.to_string(), &mut token);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims.to_string(), &mut token);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(mac.finalize().into_bytes(), &mut token);
    token
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

    const SECRET: [u8; 32] = [0x5a; 32];

    #[test]
    fn an_independent_verifier_accepts_the_token() {
        let mut c = claims("https://issuer.test", "tollgate-tests", "alice");
        c["plan"] = json!("pro");
        let token = hs256(&SECRET, Some("test"), &c);

        let header = decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::HS256);
        assert_eq!(header.kid.as_deref(), Some("test"));
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&["https://issuer.test"]);
        validation.set_audience(&["tollgate-tests"]);
        let data = decode::<Value>(&token, &DecodingKey::from_secret(&SECRET), &validation).unwrap();
        assert_eq!(data.claims, c);
        assert_eq!(data.claims["jti"], "jti-alice");
        assert_eq!(
            data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap(),
            LIFETIME_SECS
        );
    }

    #[test]
    fn another_secret_does_not_verify() {
        let token = hs256(&SECRET, None, &claims("i", "a", "bob"));
        assert!(decode_header(&token).unwrap().kid.is_none());
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["a"]);
        assert!(decode::<Value>(&token, &DecodingKey::from_secret(&[0x5b; 32]), &validation).is_err());
    }
}
