//! The `[auth]` configuration section.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tollgate_core::{ConfigError, FailurePolicy};

use crate::api_key::ApiKeyRecord;
use crate::keys::{Algorithm, JwtKey, JwtRules, PinnedKey};

/// The `[auth]` section. Durations are written as strings (`"30s"`, `"5m"`, `"30d"`).
///
/// Which routes need credentials, and which scopes, is not part of this section:
/// it is the per-route [`AuthRoute`](crate::AuthRoute) given to
/// [`AuthBuilder::routes`](crate::AuthBuilder::routes) (by default every route
/// requires credentials).
///
/// ```
/// let config: tollgate_auth::AuthConfig = toml::from_str(r#"
///     cache_max_ttl = "2m"
///     [[api_keys]]
///     id = "key-1"
///     sha256 = "6f7aa9b3b51bdd2c3c1b0d0f0f2f6a5ecb1d5c1d1c7b8b4d2b0f8c1b1c3c2b1a"
///     tier = "pro"
/// "#).unwrap();
/// assert_eq!(config.api_keys.len(), 1);
/// assert_eq!(config.cache_max_ttl, std::time::Duration::from_secs(120));
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
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
    /// The longest a verified token is cached (default `"5m"`); never past its `exp`.
    #[serde(with = "tollgate_core::config::duration")]
    pub cache_max_ttl: Duration,
    /// What happens when this layer's store, the freeze list, cannot answer: `closed`
    /// (default, 503) or `open`.
    pub on_store_failure: FailurePolicy,
    /// The longest freeze the admin handlers create (default `"30d"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub max_freeze_ttl: Duration,
    /// JWT verification (`[auth.jwt]`).
    pub jwt: Option<JwtConfig>,
    /// More trusted issuers (`[[auth.issuers]]`), each a [`JwtConfig`] with its own
    /// keys or JWKS, audiences, algorithms, tier claim and required claims. Each must
    /// name its `issuer`; a token is verified by the issuer its `iss` names, and one
    /// naming none of them (nor matching `[auth.jwt]`) gets 401 `invalid_token`.
    pub issuers: Vec<JwtConfig>,
    /// API keys (`[[auth.api_keys]]`).
    pub api_keys: Vec<ApiKeyConfig>,
    /// OAuth2 token introspection (`[auth.introspection]`).
    pub introspection: Option<IntrospectionConfig>,
    /// DPoP proofs (`[auth.dpop]`, RFC 9449). Without it, the `DPoP` scheme is
    /// refused, routes cannot require DPoP, and DPoP-bound tokens (`cnf.jkt`) are
    /// refused as bearer tokens.
    pub dpop: Option<DpopConfig>,
    /// RFC 9728 protected resource metadata (`[auth.resource_metadata]`): served
    /// by the layer at `/.well-known/oauth-protected-resource` and named in every
    /// `WWW-Authenticate` challenge (`resource_metadata`).
    pub resource_metadata: Option<ResourceMetadataConfig>,
}

/// The `[auth.resource_metadata]` section (RFC 9728).
///
/// ```
/// let m: tollgate_auth::ResourceMetadataConfig = toml::from_str(r#"
///     resource = "https://api.example"
///     scopes_supported = ["read:items"]
/// "#).unwrap();
/// assert!(m.authorization_servers.is_empty(), "default: every configured issuer");
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceMetadataConfig {
    /// The resource identifier: this API's URL as clients know it (required).
    pub resource: String,
    /// Authorization servers' issuer identifiers (default: the issuers of
    /// `[auth.jwt]` and `[[auth.issuers]]`).
    pub authorization_servers: Vec<String>,
    /// Scopes clients may ask for.
    pub scopes_supported: Vec<String>,
    /// A human-readable name of the resource.
    pub resource_name: Option<String>,
    /// A page of developer documentation.
    pub resource_documentation: Option<String>,
}

/// The `[auth.dpop]` section: how DPoP proofs (RFC 9449 §4.3) are checked.
///
/// ```
/// let dpop: tollgate_auth::DpopConfig = toml::from_str(r#"
///     external_origin = "https://api.example"
///     max_age = "30s"
///     nonce = true
/// "#).unwrap();
/// assert_eq!(dpop.max_age, std::time::Duration::from_secs(30));
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DpopConfig {
    /// Proof algorithms accepted (default `["ES256", "ES384", "EdDSA", "RS256",
    /// "PS256"]`); asymmetric ones only.
    pub algorithms: Vec<String>,
    /// The scheme, host (and base path) clients address, e.g. `"https://api.example"`:
    /// the `htu` of a proof must be this followed by the request path. Set it
    /// behind proxies and TLS terminators. Without it, `http://` and the request's
    /// `Host` are expected.
    pub external_origin: Option<String>,
    /// How old a proof's `iat` may be (default `"60s"`); also how long its `jti`
    /// is remembered.
    #[serde(with = "tollgate_core::config::duration")]
    pub max_age: Duration,
    /// Clock skew allowed on `iat`, either way (default `"5s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub leeway: Duration,
    /// The most proof digests the in-process replay cache holds (default 100 000).
    pub replay_max_entries: usize,
    /// What happens when the replay cache cannot answer: `closed` (default, 503) or `open`.
    pub replay_failure: FailurePolicy,
    /// Require server nonces (`DPoP-Nonce`, RFC 9449 §9; default false).
    pub nonce: bool,
    /// How long a nonce is issued for (default `"5m"`); one stays valid for up to
    /// twice this.
    #[serde(with = "tollgate_core::config::duration")]
    pub nonce_lifetime: Duration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        DpopConfig {
            algorithms: crate::dpop::DEFAULT_ALGORITHMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            external_origin: None,
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay_max_entries: 100_000,
            replay_failure: FailurePolicy::Closed,
            nonce: false,
            nonce_lifetime: Duration::from_secs(300),
        }
    }
}

impl DpopConfig {
    /// The proof algorithms, checked.
    pub(crate) fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        let setting = "auth.dpop.algorithms";
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            let alg = name
                .parse::<Algorithm>()
                .map_err(|_| ConfigError::new(setting, format!("unsupported algorithm {name:?}")))?;
            if alg.is_hmac() {
                return Err(ConfigError::new(
                    setting,
                    format!("{name} is symmetric; proofs need an asymmetric algorithm"),
                ));
            }
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(ConfigError::new(setting, "list at least one algorithm"));
        }
        Ok(algorithms)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: None,
            api_key_header: "x-api-key".into(),
            api_key_scheme: true,
            max_credential_bytes: 8192,
            default_tier: tollgate_core::principal::DEFAULT_TIER.into(),
            tier_scope_prefix: None,
            tiers: Vec::new(),
            cache_max_entries: 100_000,
            cache_max_ttl: Duration::from_secs(300),
            on_store_failure: FailurePolicy::Closed,
            max_freeze_ttl: Duration::from_secs(30 * 86_400),
            jwt: None,
            issuers: Vec::new(),
            api_keys: Vec::new(),
            introspection: None,
            dpop: None,
            resource_metadata: None,
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
///
/// ```
/// let jwt: tollgate_auth::JwtConfig = toml::from_str(r#"
///     issuer = "https://issuer.example"
///     audience = ["api", "api-v2"]
///     jwks_url = "http://idp.internal/jwks.json"
///     leeway = "10s"
///     jwks_min_refresh = "1m"
/// "#).unwrap();
/// assert_eq!(jwt.leeway, std::time::Duration::from_secs(10));
/// ```
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
    /// Clock skew allowed on `exp` and `nbf` (default `"30s"`). Both are checked on
    /// the layer's clock.
    #[serde(with = "tollgate_core::config::duration")]
    pub leeway: Duration,
    /// The claim holding the tier (e.g. `plan`).
    pub tier_claim: Option<String>,
    /// Claims every token must carry (default `["exp"]`).
    pub required_claims: Vec<String>,
    /// `rfc9068` to require RFC 9068 access tokens.
    pub profile: Option<JwtProfile>,
    /// Refuse to start when the first JWKS fetch fails (default true).
    pub jwks_required_at_start: bool,
    /// JWKS refresh period when the response has no `max-age` (default `"5m"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub jwks_refresh: Duration,
    /// The shortest JWKS refresh period, and the retry delay after a failure (default `"30s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub jwks_min_refresh: Duration,
    /// The longest JWKS refresh period (default `"1d"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub jwks_max_refresh: Duration,
    /// At most one refetch per this interval for unknown `kid`s (default `"30s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub jwks_unknown_kid_interval: Duration,
    /// JWKS request timeout (default `"5s"`).
    #[serde(with = "tollgate_core::config::duration")]
    pub jwks_timeout: Duration,
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
            leeway: Duration::from_secs(30),
            tier_claim: None,
            required_claims: vec!["exp".into()],
            profile: None,
            jwks_required_at_start: true,
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_refresh: Duration::from_secs(86_400),
            jwks_unknown_kid_interval: Duration::from_secs(30),
            jwks_timeout: Duration::from_secs(5),
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
    /// Request timeout (default `"2s"`); past it the answer is 503.
    #[serde(
        default = "default_introspection_timeout",
        with = "tollgate_core::config::duration"
    )]
    pub timeout: Duration,
    /// The longest an answer is cached (default `"1m"`); never past `exp`.
    #[serde(
        default = "default_introspection_ttl",
        with = "tollgate_core::config::duration"
    )]
    pub cache_ttl: Duration,
    /// How long an `active: false` answer is remembered (default `"10s"`, at most
    /// `"5m"`, `"0s"` to never remember one), so a flood of dead or made-up tokens
    /// costs one call each per interval, not one per request.
    #[serde(default = "default_negative_ttl", with = "tollgate_core::config::duration")]
    pub negative_cache_ttl: Duration,
    /// The most `active: false` answers remembered at once (default 10,000).
    #[serde(default = "default_negative_entries")]
    pub negative_cache_max_entries: usize,
    /// When set, the answer's `iss` must be one of these (RFC 7662 §2.2): a token of
    /// another issuer the same server knows is refused.
    #[serde(default)]
    pub issuer: Option<OneOrMany>,
    /// When set, the answer's `aud` must name one of these: a token meant for
    /// another API is refused.
    #[serde(default)]
    pub audience: Option<OneOrMany>,
    /// The response field holding the tier.
    #[serde(default)]
    pub tier_claim: Option<String>,
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_negative_entries() -> usize {
    10_000
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("negative_cache_ttl", &self.negative_cache_ttl)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_introspection_ttl() -> Duration {
    Duration::from_secs(60)
}

impl JwtConfig {
    /// The rules of this section, named `section` in errors (`auth.jwt`, `auth.issuers[1]`).
    pub(crate) fn rules(&self, section: &str) -> Result<JwtRules, ConfigError> {
        let mut algorithms = Vec::new();
        for name in &self.algorithms {
            let alg = name.parse::<Algorithm>().map_err(|_| {
                ConfigError::new(
                    format!("{section}.algorithms"),
                    format!("unsupported algorithm {name:?}"),
                )
            })?;
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }
        if algorithms.is_empty() {
            return Err(ConfigError::new(
                format!("{section}.algorithms"),
                "list at least one algorithm",
            ));
        }
        Ok(JwtRules {
            issuers: self.issuer.0.clone(),
            audiences: self.audience.0.clone(),
            algorithms,
            leeway: self.leeway,
            required_claims: self.required_claims.clone(),
            rfc9068: self.profile == Some(JwtProfile::Rfc9068),
        })
    }
}

impl StaticKeyConfig {
    pub(crate) fn pinned(
        &self,
        section: &str,
        index: usize,
        rules: &JwtRules,
    ) -> Result<PinnedKey, ConfigError> {
        let at = |field: &str| format!("{section}.keys[{index}].{field}");
        let alg = self
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| rules.algorithms.contains(a))
            .ok_or_else(|| ConfigError::new(at("alg"), format!("must be one of {section}.algorithms")))?;
        let sources = [
            self.pem.is_some(),
            self.pem_file.is_some(),
            self.jwk.is_some(),
            self.secret_env.is_some(),
            self.secret_hex.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::new(
                at("pem"),
                "give exactly one of pem, pem_file, jwk, secret_env, secret_hex",
            ));
        }
        let secret = match (&self.secret_env, &self.secret_hex) {
            (Some(var), _) => Some((
                at("secret_env"),
                std::env::var(var)
                    .map_err(|_| ConfigError::new(at("secret_env"), format!("{var} is not set")))?,
            )),
            (None, Some(hex)) => Some((at("secret_hex"), hex.clone())),
            (None, None) => None,
        };
        let key = if let Some((setting, hex_text)) = secret {
            let bytes =
                hex::decode(hex_text.trim()).map_err(|_| ConfigError::new(&setting, "must be hex"))?;
            JwtKey::from_secret(alg, &bytes).map_err(|e| ConfigError::new(setting, e))?
        } else if alg.is_hmac() {
            return Err(ConfigError::new(
                at("alg"),
                "HS* keys take secret_env or secret_hex",
            ));
        } else if let Some(jwk) = &self.jwk {
            JwtKey::from_jwk(alg, jwk).map_err(|e| ConfigError::new(at("jwk"), e))?
        } else {
            let (setting, pem) = match (&self.pem, &self.pem_file) {
                (Some(p), _) => (at("pem"), p.clone().into_bytes()),
                (None, Some(path)) => (
                    at("pem_file"),
                    std::fs::read(path).map_err(|e| ConfigError::new(at("pem_file"), e))?,
                ),
                (None, None) => unreachable!("one source is set"),
            };
            JwtKey::from_pem(alg, &pem).map_err(|e| ConfigError::new(setting, e))?
        };
        Ok(PinnedKey::new(self.kid.clone(), key, rules))
    }
}

impl ApiKeyConfig {
    pub(crate) fn record(&self, index: usize) -> Result<ApiKeyRecord, ConfigError> {
        let mut record = ApiKeyRecord::from_hex(&self.id, &self.sha256).map_err(|_| {
            ConfigError::new(
                format!("auth.api_keys[{index}].sha256"),
                "must be the 64 hex digits of the key's SHA-256",
            )
        })?;
        if self.id.is_empty() {
            return Err(ConfigError::new(
                format!("auth.api_keys[{index}].id"),
                "must not be empty",
            ));
        }
        record.tier = self.tier.clone();
        record.scopes = self.scopes.clone();
        record.subject = self.subject.clone();
        Ok(record)
    }
}
