//! The `[auth]` configuration section.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tollgate_core::FailurePolicy;

use crate::api_key::ApiKeyRecord;
use crate::jwt::{JwtRules, PinnedKey, SUPPORTED_ALGORITHMS, hmac_family, min_hmac_secret};

/// A misconfiguration, naming the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has an unusable value.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting, as a TOML path (`auth.jwt.jwks_url`).
        setting: String,
        /// What is wrong with it.
        message: String,
    },
}

pub(crate) fn invalid(setting: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        message: message.to_string(),
    }
}

/// What to do with a request that carries no credentials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anonymous {
    /// Answer 401 (the default).
    #[default]
    Required,
    /// Pass the request on without a `Principal` (for `/health`, public pages,
    /// anonymous rate limits). Invalid credentials are still refused.
    Optional,
}

/// The `[auth]` section.
///
/// ```
/// let config: tollgate_auth::AuthConfig = toml::from_str(r#"
///     anonymous = "optional"
///     [[api_keys]]
///     id = "key-1"
///     sha256 = "6f7aa9b3b51bdd2c3c1b0d0f0f2f6a5ecb1d5c1d1c7b8b4d2b0f8c1b1c3c2b1a"
///     tier = "pro"
/// "#).unwrap();
/// assert_eq!(config.api_keys.len(), 1);
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `required` (default): 401 without credentials; `optional`: pass through without a principal.
    pub anonymous: Anonymous,
    /// The `realm` of `WWW-Authenticate` challenges; none by default.
    pub realm: Option<String>,
    /// The API key header (default `x-api-key`); an empty string disables it.
    pub api_key_header: String,
    /// Accept `Authorization: ApiKey <key>` too (default true).
    pub api_key_scheme: bool,
    /// The longest authentication header accepted, in bytes (default 8192); longer ones get 431.
    pub max_credential_bytes: usize,
    /// The tier of callers for whom no tier is found (default `default`).
    pub default_tier: String,
    /// Read the tier from a scope with this prefix (`tier:` makes scope `tier:pro` tier `pro`).
    pub tier_scope_prefix: Option<String>,
    /// Tier names accepted from tokens; others give the default tier. Empty: any short name.
    pub tiers: Vec<String>,
    /// The most verified tokens cached (default 100 000).
    pub cache_max_entries: u64,
    /// The longest a verified token is cached, in seconds (default 300); never past its `exp`.
    pub cache_max_ttl_s: u64,
    /// What happens when the freeze list cannot answer: `closed` (default, 503) or `open`.
    pub freeze_failure: FailurePolicy,
    /// The longest freeze the admin handlers create, in seconds (default 30 days).
    pub max_freeze_ttl_s: u64,
    /// JWT verification (`[auth.jwt]`).
    pub jwt: Option<JwtConfig>,
    /// API keys (`[[auth.api_keys]]`).
    pub api_keys: Vec<ApiKeyConfig>,
    /// OAuth2 token introspection (`[auth.introspection]`).
    pub introspection: Option<IntrospectionConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous: Anonymous::Required,
            realm: None,
            api_key_header: "x-api-key".into(),
            api_key_scheme: true,
            max_credential_bytes: 8192,
            default_tier: tollgate_core::principal::DEFAULT_TIER.into(),
            tier_scope_prefix: None,
            tiers: Vec::new(),
            cache_max_entries: 100_000,
            cache_max_ttl_s: 300,
            freeze_failure: FailurePolicy::Closed,
            max_freeze_ttl_s: 30 * 86_400,
            jwt: None,
            api_keys: Vec::new(),
            introspection: None,
        }
    }
}

/// One string or a list of strings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(from = "OneOrManyRepr")]
pub struct OneOrMany(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrManyRepr {
    One(String),
    Many(Vec<String>),
}

impl From<OneOrManyRepr> for OneOrMany {
    fn from(r: OneOrManyRepr) -> Self {
        match r {
            OneOrManyRepr::One(s) => OneOrMany(vec![s]),
            OneOrManyRepr::Many(v) => OneOrMany(v),
        }
    }
}

/// A token profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JwtProfile {
    /// RFC 9068 access tokens: `typ: at+jwt`, and `iss`, `exp`, `aud`, `sub`,
    /// `client_id`, `iat`, `jti` required.
    Rfc9068,
}

/// The `[auth.jwt]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `iss` values (one or a list); empty accepts any issuer.
    pub issuer: OneOrMany,
    /// Accepted `aud` values (one or a list); empty skips the audience check.
    pub audience: OneOrMany,
    /// Accepted algorithms (default `["RS256", "ES256", "EdDSA"]`). Every key is
    /// pinned to one of them.
    pub algorithms: Vec<String>,
    /// The JWKS URL (`http://` or, with the `rustls-tls` feature, `https://`).
    pub jwks_url: Option<String>,
    /// Static keys (`[[auth.jwt.keys]]`).
    pub keys: Vec<StaticKeyConfig>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30).
    pub leeway_s: u64,
    /// The claim holding the tier (e.g. `plan`).
    pub tier_claim: Option<String>,
    /// Claims every token must carry (default `["exp"]`).
    pub required_claims: Vec<String>,
    /// `rfc9068` to require RFC 9068 access tokens.
    pub profile: Option<JwtProfile>,
    /// Refuse to start when the first JWKS fetch fails (default true).
    pub jwks_required_at_start: bool,
    /// JWKS refresh period when the response has no `max-age`, in seconds (default 300).
    pub jwks_refresh_s: f64,
    /// The shortest JWKS refresh period and the retry delay after a failure, in seconds (default 30).
    pub jwks_min_refresh_s: f64,
    /// The longest JWKS refresh period, in seconds (default 86 400).
    pub jwks_max_refresh_s: f64,
    /// At most one refetch per this interval for unknown `kid`s, in seconds (default 30).
    pub jwks_unknown_kid_interval_s: f64,
    /// JWKS request timeout, in milliseconds (default 5000).
    pub jwks_timeout_ms: u64,
    /// The largest JWKS document accepted, in bytes (default 262 144).
    pub jwks_max_bytes: usize,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            issuer: OneOrMany::default(),
            audience: OneOrMany::default(),
            algorithms: vec!["RS256".into(), "ES256".into(), "EdDSA".into()],
            jwks_url: None,
            keys: Vec::new(),
            leeway_s: 30,
            tier_claim: None,
            required_claims: vec!["exp".into()],
            profile: None,
            jwks_required_at_start: true,
            jwks_refresh_s: 300.0,
            jwks_min_refresh_s: 30.0,
            jwks_max_refresh_s: 86_400.0,
            jwks_unknown_kid_interval_s: 30.0,
            jwks_timeout_ms: 5_000,
            jwks_max_bytes: 256 * 1024,
        }
    }
}

/// A static verification key (`[[auth.jwt.keys]]`): exactly one of `pem`,
/// `pem_file`, `jwk`, `secret_env`, `secret_hex`.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticKeyConfig {
    /// The key id tokens name in their `kid` header; optional for a single key per algorithm.
    pub kid: Option<String>,
    /// The one algorithm this key verifies.
    pub alg: String,
    /// A public key in PEM (SPKI; PKCS#1 for RSA).
    pub pem: Option<String>,
    /// A file holding a PEM public key.
    pub pem_file: Option<PathBuf>,
    /// A public JWK, as a JSON string.
    pub jwk: Option<String>,
    /// The environment variable holding the hex HMAC secret (HS* only).
    pub secret_env: Option<String>,
    /// The HMAC secret in hex (HS* only; prefer `secret_env`).
    pub secret_hex: Option<String>,
}

impl std::fmt::Debug for StaticKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// One API key (`[[auth.api_keys]]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The key's id (used by the freeze list).
    pub id: String,
    /// The hex SHA-256 of the key; the key itself is never configured.
    pub sha256: String,
    /// The key's tier; the default tier if absent.
    #[serde(default)]
    pub tier: Option<String>,
    /// The scopes it grants.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The owner used as the principal's subject; the key id if absent.
    #[serde(default)]
    pub subject: Option<String>,
}

/// The `[auth.introspection]` section.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint.
    pub url: String,
    /// This resource server's client id.
    pub client_id: String,
    /// The environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The client secret (prefer `client_secret_env`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Request timeout in milliseconds (default 2000); past it the answer is 503.
    #[serde(default = "default_introspection_timeout")]
    pub timeout_ms: u64,
    /// The longest an answer is cached, in seconds (default 60); never past `exp`.
    #[serde(default = "default_introspection_ttl")]
    pub cache_ttl_s: u64,
    /// The response field holding the tier.
    #[serde(default)]
    pub tier_claim: Option<String>,
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("timeout_ms", &self.timeout_ms)
            .field("cache_ttl_s", &self.cache_ttl_s)
            .finish_non_exhaustive()
    }
}

fn default_introspection_timeout() -> u64 {
    2_000
}

fn default_introspection_ttl() -> u64 {
    60
}

pub(crate) fn seconds(setting: &str, s: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(s).map_err(|_| invalid(setting, "must be a non-negative number of seconds"))
}

impl JwtConfig {
    pub(crate) fn rules(&self) -> Result<JwtRules, ConfigError> {
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            let alg = Algorithm::from_str(name)
                .ok()
                .filter(|a| SUPPORTED_ALGORITHMS.contains(a))
                .ok_or_else(|| invalid("auth.jwt.algorithms", format!("unsupported algorithm {name:?}")))?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(invalid("auth.jwt.algorithms", "list at least one algorithm"));
        }
        Ok(JwtRules {
            issuers: self.issuer.0.clone(),
            audiences: self.audience.0.clone(),
            algorithms,
            leeway_s: self.leeway_s,
            required_claims: self.required_claims.clone(),
            rfc9068: self.profile == Some(JwtProfile::Rfc9068),
        })
    }
}

impl StaticKeyConfig {
    pub(crate) fn pinned(&self, index: usize, rules: &JwtRules) -> Result<PinnedKey, ConfigError> {
        let at = |field: &str| format!("auth.jwt.keys[{index}].{field}");
        let alg = Algorithm::from_str(&self.alg)
            .ok()
            .filter(|a| rules.algorithms.contains(a))
            .ok_or_else(|| invalid(at("alg"), "must be one of auth.jwt.algorithms"))?;
        let sources = [
            self.pem.is_some(),
            self.pem_file.is_some(),
            self.jwk.is_some(),
            self.secret_env.is_some(),
            self.secret_hex.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                at("pem"),
                "give exactly one of pem, pem_file, jwk, secret_env, secret_hex",
            ));
        }
        let secret = match (&self.secret_env, &self.secret_hex) {
            (Some(var), _) => Some((
                at("secret_env"),
                std::env::var(var).map_err(|_| invalid(at("secret_env"), format!("{var} is not set")))?,
            )),
            (None, Some(hex)) => Some((at("secret_hex"), hex.clone())),
            (None, None) => None,
        };
        let key = if let Some((setting, hex_text)) = secret {
            if !hmac_family(alg) {
                return Err(invalid(setting, "HMAC secrets only verify HS256/HS384/HS512"));
            }
            let bytes = hex::decode(hex_text.trim()).map_err(|_| invalid(&setting, "must be hex"))?;
            if bytes.len() < min_hmac_secret(alg) {
                return Err(invalid(
                    setting,
                    format!(
                        "{alg:?} needs a secret of at least {} bytes",
                        min_hmac_secret(alg)
                    ),
                ));
            }
            DecodingKey::from_secret(&bytes)
        } else {
            if hmac_family(alg) {
                return Err(invalid(at("alg"), "HS* keys take secret_env or secret_hex"));
            }
            if let Some(jwk) = &self.jwk {
                let v: serde_json::Value =
                    serde_json::from_str(jwk).map_err(|e| invalid(at("jwk"), format!("not JSON: {e}")))?;
                let pinned =
                    crate::jwt::jwk_algorithm(&v, &rules.algorithms).map_err(|m| invalid(at("jwk"), m))?;
                if pinned != alg {
                    return Err(invalid(at("jwk"), "the JWK's alg or curve differs from alg"));
                }
                let jwk: jsonwebtoken::jwk::Jwk =
                    serde_json::from_value(v).map_err(|e| invalid(at("jwk"), e))?;
                DecodingKey::from_jwk(&jwk).map_err(|e| invalid(at("jwk"), e))?
            } else {
                let (setting, pem) = match (&self.pem, &self.pem_file) {
                    (Some(p), _) => (at("pem"), p.clone().into_bytes()),
                    (None, Some(path)) => (
                        at("pem_file"),
                        std::fs::read(path).map_err(|e| invalid(at("pem_file"), e))?,
                    ),
                    (None, None) => unreachable!("one source is set"),
                };
                let key = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                key.map_err(|e| invalid(setting, format!("not a {alg:?} public key: {e}")))?
            }
        };
        Ok(PinnedKey::new(self.kid.clone(), alg, key, rules))
    }
}

impl ApiKeyConfig {
    pub(crate) fn record(&self, index: usize) -> Result<ApiKeyRecord, ConfigError> {
        let mut record = ApiKeyRecord::from_hex(&self.id, &self.sha256).map_err(|_| {
            invalid(
                format!("auth.api_keys[{index}].sha256"),
                "must be the 64 hex digits of the key's SHA-256",
            )
        })?;
        if self.id.is_empty() {
            return Err(invalid(format!("auth.api_keys[{index}].id"), "must not be empty"));
        }
        record.tier = self.tier.clone();
        record.scopes = self.scopes.clone();
        record.subject = self.subject.clone();
        Ok(record)
    }
}
