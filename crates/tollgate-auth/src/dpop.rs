//! DPoP (RFC 9449): proofs of possession checked per §4.3, the replay cache their
//! `jti`s go into, and stateless server nonces.
//!
//! A proof is checked in full (shape, `typ`, algorithm, public `jwk`, signature,
//! `htm`, `htu`, `iat`, `ath`, nonce) before the access token's binding (`cnf.jkt`)
//! is compared and its `jti` recorded, so only proofs that would otherwise pass
//! take room in the replay cache. Nothing from a proof is kept or logged as is: the
//! replay cache holds keyed digests of (key thumbprint, `jti`), and the key reaches
//! the rest of the stack as a [`BoundKey`](tollgate_core::BoundKey) pseudonym.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::HOST;
use http::{HeaderMap, HeaderName, Method, Uri};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::clock::{SharedClock, Timestamp};
use tollgate_core::sharded::{Entry, ShardedMap};
use tollgate_core::{BoxFuture, ConfigError, Domain, FailurePolicy, KeyedDigest, Pseudonymizer, StoreError};

use crate::error::AuthError;
use crate::keys::{Algorithm, jwk_algorithm, key_from_jwk};

/// The `DPoP` request header carrying the proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The `DPoP-Nonce` response header carrying a server nonce.
pub const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// The domain of replay-cache keys: (key thumbprint, `jti`).
const JTI: Domain = Domain::new("dpop-jti");
/// The domain of server nonces: the time slot they were issued in.
const NONCE: Domain = Domain::new("dpop-nonce");
/// The longest `jti` accepted.
const MAX_JTI: usize = 256;
/// The longest proof header, in base64 characters.
const MAX_HEADER_B64: usize = 4096;
/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The algorithms accepted for proofs by default.
pub(crate) const DEFAULT_ALGORITHMS: &[&str] = &["ES256", "ES384", "EdDSA", "RS256", "PS256"];

/// Where DPoP proof `jti`s are recorded so that a proof is used once: in process
/// ([`MemoryReplayCache`]) or shared by replicas (`tollgate_redis::RedisReplayCache`).
///
/// Keys are keyed digests of the proof key's thumbprint and the `jti`, never
/// either of them.
pub trait ReplayCache: Send + Sync + 'static {
    /// Records `key` for `ttl`: `Ok(true)` if it was not recorded yet (a fresh
    /// proof), `Ok(false)` if it was (a replay).
    fn record(&self, key: KeyedDigest, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// The same answer at once, for stores that can give it without waiting.
    fn record_immediate(&self, key: KeyedDigest, ttl: Duration) -> Option<Result<bool, StoreError>> {
        let _ = (key, ttl);
        None
    }
}

/// A replay cache shared by the layers and replicas that must agree on it.
pub type SharedReplayCache = Arc<dyn ReplayCache>;

/// The in-process [`ReplayCache`]: a bounded sharded map of keyed digests, each
/// until the end of its proof's acceptance window.
///
/// When full, a new entry replaces the one closest to its deadline, so a flood of
/// fresh proofs cannot exhaust memory; size it above the number of proofs accepted
/// per `max_age` (the default 100 000 covers ~1 600 requests per second at the
/// default 60 s window).
pub struct MemoryReplayCache {
    map: ShardedMap<KeyedDigest, ()>,
    clock: SharedClock,
}

impl std::fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("entries", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl MemoryReplayCache {
    /// A cache of at most `max_entries` entries on the system clock.
    pub fn new(max_entries: usize) -> Self {
        Self::with_clock(max_entries, tollgate_core::system_clock())
    }

    /// A cache of at most `max_entries` entries on `clock`.
    pub fn with_clock(max_entries: usize, clock: SharedClock) -> Self {
        MemoryReplayCache {
            map: ShardedMap::builder(max_entries.max(1))
                .sweep_interval(Duration::from_secs(10))
                .build(),
            clock,
        }
    }

    /// Entries held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if no entry is held.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn record_now(&self, key: KeyedDigest, ttl: Duration) -> bool {
        let now = self.clock.now();
        let until = now.saturating_add(ttl.max(Duration::from_millis(1)));
        self.map.entry(&key, now, |e| match e {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert((), until);
                true
            }
        })
    }
}

impl ReplayCache for MemoryReplayCache {
    fn record(&self, key: KeyedDigest, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(self.record_now(key, ttl))))
    }

    fn record_immediate(&self, key: KeyedDigest, ttl: Duration) -> Option<Result<bool, StoreError>> {
        Some(Ok(self.record_now(key, ttl)))
    }
}

/// How a route treats DPoP (RFC 9449).
///
/// In configuration: `"required"`, `"optional"` (the default) or `"off"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpopMode {
    /// Only DPoP-bound tokens presented with `Authorization: DPoP` and a valid proof;
    /// bearer tokens and API keys get 401 `invalid_token`. Needs `[auth.dpop]`.
    Required,
    /// `Authorization: DPoP` with a proof is checked when `[auth.dpop]` is
    /// configured; unbound bearer tokens and API keys pass as before.
    #[default]
    Optional,
    /// The `DPoP` scheme is not accepted (401) and proofs are not read.
    Off,
}

/// A proof that passed every check but the binding and the replay cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Proof {
    /// The keyed digest of the proof key's thumbprint, compared with the token's `cnf.jkt`.
    pub(crate) key: KeyedDigest,
    /// The replay-cache key.
    pub(crate) replay_key: KeyedDigest,
    /// How long the proof stays acceptable, hence recorded.
    pub(crate) ttl: Duration,
}

/// The proof checker of one layer.
pub(crate) struct DpopVerifier {
    pub(crate) algorithms: Vec<Algorithm>,
    /// The normalised external origin (and base path, without a trailing slash).
    pub(crate) origin: Option<String>,
    pub(crate) max_age: Duration,
    pub(crate) leeway: Duration,
    pub(crate) replay: SharedReplayCache,
    pub(crate) replay_failure: FailurePolicy,
    /// The nonce time slot, when server nonces are required.
    pub(crate) nonce_slot: Option<Duration>,
    pub(crate) max_bytes: usize,
}

impl std::fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("algorithms", &self.algorithms)
            .field("origin", &self.origin)
            .field("max_age", &self.max_age)
            .field("nonce", &self.nonce_slot.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: Value,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

impl DpopVerifier {
    /// Checks the request's proof for `token` (RFC 9449 §4.3).
    pub(crate) fn verify(
        &self,
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
        token: &[u8],
        now: Timestamp,
        p: &Pseudonymizer,
    ) -> Result<Proof, AuthError> {
        self.verify_with_thumbprint(headers, method, uri, Some(token), now, p)
            .map(|(proof, _)| proof)
    }

    /// Checks the request's proof; with `token`, its `ath` too (a token request
    /// carries no access token and its proof no `ath`). Also returns the key's
    /// thumbprint, for a token endpoint to bind the token it issues to.
    pub(crate) fn verify_with_thumbprint(
        &self,
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
        token: Option<&[u8]>,
        now: Timestamp,
        p: &Pseudonymizer,
    ) -> Result<(Proof, String), AuthError> {
        let mut values = headers.get_all(&DPOP).iter();
        let value = values.next().ok_or(AuthError::DpopMissing)?;
        if values.next().is_some() {
            return Err(AuthError::DpopInvalid);
        }
        if value.len() > self.max_bytes {
            return Err(AuthError::OversizedCredentials);
        }
        let proof = value.to_str().map_err(|_| AuthError::DpopInvalid)?.trim();
        let mut parts = proof.split('.');
        let (Some(h64), Some(c64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::DpopInvalid);
        };
        if h64.is_empty() || h64.len() > MAX_HEADER_B64 || c64.is_empty() || s64.is_empty() {
            return Err(AuthError::DpopInvalid);
        }
        let header: Map<String, Value> = URL_SAFE_NO_PAD
            .decode(h64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::DpopInvalid)?;
        if !header
            .get("typ")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(AuthError::DpopInvalid);
        }
        if header.contains_key("crit") {
            return Err(AuthError::DpopInvalid);
        }
        // `none`, HMAC and every name not allowed fail here: the allowlist holds
        // asymmetric algorithms only (checked when the layer is built).
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<Algorithm>().ok())
            .filter(|a| self.algorithms.contains(a))
            .ok_or(AuthError::DpopAlgorithm)?;
        let jwk = header
            .get("jwk")
            .filter(|j| j.is_object())
            .ok_or(AuthError::DpopKey)?;
        if PRIVATE_MEMBERS.iter().any(|m| jwk.get(m).is_some()) {
            return Err(AuthError::DpopKey);
        }
        jwk_algorithm(jwk, &[alg]).map_err(|_| AuthError::DpopKey)?;
        let thumbprint = jwk_thumbprint(jwk).ok_or(AuthError::DpopKey)?;
        let key = key_from_jwk(jwk, alg).map_err(|_| AuthError::DpopKey)?;
        let message_len = h64.len() + 1 + c64.len();
        let verified = jsonwebtoken::crypto::verify(
            s64,
            &proof.as_bytes()[..message_len],
            key.decoding_key(),
            alg.jwt(),
        );
        if !matches!(verified, Ok(true)) {
            return Err(AuthError::DpopSignature);
        }

        let claims: ProofClaims = URL_SAFE_NO_PAD
            .decode(c64)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::DpopInvalid)?;
        if claims.jti.is_empty() || claims.jti.len() > MAX_JTI {
            return Err(AuthError::DpopInvalid);
        }
        if claims.htm != method.as_str() {
            return Err(AuthError::DpopMethod);
        }
        let expected = self.expected_htu(headers, uri).ok_or(AuthError::DpopUri)?;
        if normalize_htu(&claims.htu).as_deref() != Some(expected.as_str()) {
            return Err(AuthError::DpopUri);
        }
        let iat = claims
            .iat
            .as_u64()
            .or_else(|| claims.iat.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .map(Timestamp::from_secs)
            .ok_or(AuthError::DpopInvalid)?;
        let until = iat.saturating_add(self.max_age + self.leeway);
        if iat > now.saturating_add(self.leeway) || now > until {
            return Err(AuthError::DpopTime);
        }
        if let Some(token) = token {
            let ath = URL_SAFE_NO_PAD.encode(Sha256::digest(token));
            match &claims.ath {
                Some(a) if bool::from(a.as_bytes().ct_eq(ath.as_bytes())) => {}
                _ => return Err(AuthError::DpopTokenHash),
            }
        }
        if let Some(slot) = self.nonce_slot
            && !claims
                .nonce
                .as_deref()
                .is_some_and(|n| nonce_valid(p, slot, n, now))
        {
            return Err(AuthError::DpopNonce);
        }
        let mut jti_input = Vec::with_capacity(thumbprint.len() + 1 + claims.jti.len());
        jti_input.extend_from_slice(thumbprint.as_bytes());
        jti_input.push(0);
        jti_input.extend_from_slice(claims.jti.as_bytes());
        let proof = Proof {
            key: p.digest(Domain::DPOP_KEY, thumbprint.as_bytes()),
            replay_key: p.digest(JTI, &jti_input),
            ttl: until.saturating_since(now).max(Duration::from_secs(1)),
        };
        Ok((proof, thumbprint))
    }

    /// The `htu` this request must carry, normalised.
    fn expected_htu(&self, headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let path = normalize_path(uri.path());
        match &self.origin {
            Some(origin) => Some(format!("{origin}{path}")),
            None => {
                let host = match uri.authority() {
                    Some(a) => a.as_str(),
                    None => headers.get(HOST)?.to_str().ok()?,
                };
                let scheme = uri.scheme_str().unwrap_or("http");
                normalize_htu(&format!("{scheme}://{host}{path}"))
            }
        }
    }

    /// The nonce to hand out at `now`.
    pub(crate) fn nonce(&self, p: &Pseudonymizer, now: Timestamp) -> Option<String> {
        let slot = self.nonce_slot?;
        let n = now.as_secs() / slot.as_secs().max(1);
        Some(nonce_for(p, n))
    }

    /// The `algs` parameter of DPoP challenges.
    pub(crate) fn algs(&self) -> String {
        self.algorithms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn nonce_for(p: &Pseudonymizer, slot: u64) -> String {
    format!(
        "{slot:x}.{}",
        p.digest(NONCE, &slot.to_be_bytes()).to_hex().as_str()
    )
}

/// A nonce of the current slot or the one before.
fn nonce_valid(p: &Pseudonymizer, slot: Duration, nonce: &str, now: Timestamp) -> bool {
    let current = now.as_secs() / slot.as_secs().max(1);
    let Some(n) = nonce
        .split_once('.')
        .and_then(|(s, _)| u64::from_str_radix(s, 16).ok())
    else {
        return false;
    };
    (n == current || n.saturating_add(1) == current)
        && bool::from(nonce.as_bytes().ct_eq(nonce_for(p, n).as_bytes()))
}

/// The RFC 7638 thumbprint (base64url SHA-256 of the required members in
/// lexicographic order) of a public EC, OKP or RSA JWK.
pub fn jwk_thumbprint(jwk: &Value) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str).filter(|v| !v.is_empty());
    let kty = member("kty")?;
    let names: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    };
    let mut canonical = String::from("{");
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let value = serde_json::to_string(member(name)?).ok()?;
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":");
        canonical.push_str(&value);
    }
    canonical.push('}');
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `htu` without query and fragment, after RFC 3986 syntax- and scheme-based
/// normalisation: lowercase scheme and host, no default port, an empty path as
/// `/`, percent-encodings in uppercase and unreserved characters decoded. `None`
/// for anything but an absolute `http`/`https` URI without user info.
pub(crate) fn normalize_htu(htu: &str) -> Option<String> {
    let end = htu.find(['?', '#']).unwrap_or(htu.len());
    let htu = &htu[..end];
    if htu.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return None;
    }
    let (scheme, rest) = htu.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let mut authority = authority.to_ascii_lowercase();
    if let Some((host, port)) = authority.rsplit_once(':')
        && !host.is_empty()
        && (port.is_empty() || port == default_port)
        && !port.contains(']')
    {
        authority.truncate(host.len());
    }
    Some(format!("{scheme}://{authority}{}", normalize_path(path)))
}

/// A path with percent-encodings in uppercase and unreserved characters decoded;
/// an empty path is `/`.
fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push((bytes[i + 1] as char).to_ascii_uppercase());
                    out.push((bytes[i + 2] as char).to_ascii_uppercase());
                }
                i += 3;
                continue;
            }
        }
        out.push(b as char);
        i += 1;
    }
    out
}

/// The external origin from configuration, normalised, without a trailing slash.
pub(crate) fn parse_origin(setting: &str, origin: &str) -> Result<String, ConfigError> {
    if origin.contains(['?', '#']) {
        return Err(ConfigError::new(setting, "must not have a query or a fragment"));
    }
    let normalized = normalize_htu(origin).ok_or_else(|| {
        ConfigError::new(
            setting,
            "must be an absolute http(s) URI such as \"https://api.example\"",
        )
    })?;
    Ok(normalized.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_core::PseudonymSecret;

    #[test]
    fn htu_normalisation() {
        let n = |s: &str| normalize_htu(s);
        assert_eq!(
            n("HTTPS://API.Example:443/a/b?x=1#f").unwrap(),
            "https://api.example/a/b"
        );
        assert_eq!(n("http://h:80").unwrap(), "http://h/");
        assert_eq!(n("http://h:8080/%7euser/%2f").unwrap(), "http://h:8080/~user/%2F");
        assert_eq!(n("http://[::1]:80/x").unwrap(), "http://[::1]/x");
        assert_eq!(n("http://[::1]/x").unwrap(), "http://[::1]/x");
        assert!(n("ftp://h/x").is_none());
        assert!(n("https://user@h/x").is_none());
        assert!(n("/relative").is_none());
        assert!(n("https://h/a b").is_none());
        assert_eq!(
            parse_origin("o", "https://api.example/base/").unwrap(),
            "https://api.example/base"
        );
        assert_eq!(
            parse_origin("o", "https://API.example:443").unwrap(),
            "https://api.example"
        );
        assert!(parse_origin("o", "https://api.example/?q").is_err());
        assert_eq!(normalize_path("/a%"), "/a%");
        assert_eq!(normalize_path("/a%4"), "/a%4");
        assert_eq!(normalize_path("/a%41"), "/aA");
    }

    #[test]
    fn rfc7638_example() {
        // RFC 7638 §3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
        assert!(jwk_thumbprint(&json!({"kty": "oct", "k": "abc"})).is_none());
        assert!(jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256", "x": "a"})).is_none());
    }

    #[test]
    fn nonces_live_two_slots() {
        let p = Pseudonymizer::new(
            PseudonymSecret::from_bytes(&[3; 32]).unwrap(),
            Duration::from_secs(86_400),
        );
        let slot = Duration::from_secs(300);
        let t = Timestamp::from_secs(3_000);
        let nonce = nonce_for(&p, 10);
        assert!(nonce_valid(&p, slot, &nonce, t));
        assert!(nonce_valid(&p, slot, &nonce, Timestamp::from_secs(3_599)));
        assert!(!nonce_valid(&p, slot, &nonce, Timestamp::from_secs(3_600)));
        assert!(
            !nonce_valid(&p, slot, &nonce_for(&p, 11), t),
            "not from the future"
        );
        assert!(!nonce_valid(&p, slot, "a.00", t));
        assert!(!nonce_valid(&p, slot, "garbage", t));
    }

    #[test]
    fn memory_replay_cache_records_once_until_ttl() {
        let clock = tollgate_core::FakeClock::new(Timestamp::from_secs(100));
        let cache = MemoryReplayCache::with_clock(10, Arc::new(clock.clone()));
        let p = Pseudonymizer::new(
            PseudonymSecret::from_bytes(&[3; 32]).unwrap(),
            Duration::from_secs(86_400),
        );
        let k = p.digest(JTI, b"x");
        assert_eq!(cache.record_immediate(k, Duration::from_secs(5)), Some(Ok(true)));
        assert_eq!(cache.record_immediate(k, Duration::from_secs(5)), Some(Ok(false)));
        clock.advance(Duration::from_secs(5));
        assert_eq!(cache.record_immediate(k, Duration::from_secs(5)), Some(Ok(true)));
        for i in 0..1_000u32 {
            cache.record_immediate(p.digest(JTI, &i.to_le_bytes()), Duration::from_secs(60));
        }
        assert!(cache.len() <= 10);
    }
}
