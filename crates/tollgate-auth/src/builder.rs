//! [`AuthBuilder`]: configuration plus what configuration cannot hold.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::header::AUTHORIZATION;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::{
    ConfigError, MemoryFreezeList, ProblemResponder, Pseudonymizer, RouteMap, SharedFreezeList,
};

use crate::api_key::ApiKeys;
use crate::authenticator::Authenticator;
use crate::cache::TokenCache;
use crate::config::{AuthConfig, JwtConfig};
use crate::credential::CredentialSource;
use crate::dpop::{DpopMode, DpopVerifier, MemoryReplayCache, SharedReplayCache, parse_origin};
use crate::error::Challenges;
use crate::introspection::{AnswerRules, Introspector};
use crate::jwks::{Jwks, JwksSettings};
use crate::jwt::{JwtIssuer, JwtVerifier};
use crate::keys::{JwtKey, KeySet, PinnedKey};
use crate::layer::AuthLayer;
use crate::metadata::ResourceMetadata;
use crate::policy::TierPolicy;
use crate::route::{AuthRequirement, AuthRoute, compile};

/// How many freezes the default in-process freeze list holds.
const DEFAULT_FREEZE_ENTRIES: usize = 100_000;

impl AuthLayer {
    /// A builder over `config`. Unless told otherwise it uses the system clock, a new
    /// in-process freeze list of 100 000 entries, problem+json answers, and requires
    /// credentials on every route.
    pub fn builder(config: AuthConfig, pseudonymizer: Pseudonymizer) -> AuthBuilder {
        AuthBuilder {
            config,
            pseudonymizer,
            clock: None,
            freeze: None,
            responder: ProblemResponder::default(),
            routes: RouteMap::default(),
            api_keys: None,
            extra_keys: Vec::new(),
            replay: None,
        }
    }

    /// The layer for `config` with the builder's defaults. Fetches the JWKS (if
    /// configured) before returning.
    pub async fn from_config(config: &AuthConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build().await
    }
}

/// Builds an [`AuthLayer`]: its `[auth]` section plus what configuration cannot
/// hold (the freeze list the stack shares, the clock, an error responder, the
/// per-route policy, an API key store, keys kept in code).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_auth::{Algorithm, AuthConfig, AuthLayer, AuthRoute, JwtKey};
/// use tollgate_core::{MemoryFreezeList, Pseudonymizer, PseudonymSecret, RouteMap};
///
/// let config: AuthConfig = toml::from_str(r#"
///     [jwt]
///     issuer = "https://issuer.example"
///     algorithms = ["HS256"]
/// "#).unwrap();
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let layer = AuthLayer::builder(config, p)
///     .jwt_key(Some("k1"), JwtKey::from_secret(Algorithm::HS256, &[9; 32]).unwrap())
///     .freeze_list(Arc::new(MemoryFreezeList::new(10_000)))
///     .routes(RouteMap::new([("/health", AuthRoute::skip())], AuthRoute::required()).unwrap())
///     .build()
///     .await
///     .unwrap();
/// # let _ = layer;
/// # });
/// ```
pub struct AuthBuilder {
    config: AuthConfig,
    pseudonymizer: Pseudonymizer,
    clock: Option<SharedClock>,
    freeze: Option<SharedFreezeList>,
    responder: ProblemResponder,
    routes: RouteMap<AuthRoute>,
    api_keys: Option<ApiKeys>,
    extra_keys: Vec<(Option<String>, JwtKey)>,
    replay: Option<SharedReplayCache>,
}

impl fmt::Debug for AuthBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthBuilder")
            .field("config", &self.config)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl AuthBuilder {
    /// Checks this freeze list (shared with the other layers of the stack, or a
    /// Redis one) instead of a new in-process list.
    pub fn freeze_list(mut self, freeze: SharedFreezeList) -> Self {
        self.freeze = Some(freeze);
        self
    }

    /// Answers errors with this responder instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Uses this clock for `exp` and `nbf`, cache lifetimes, the unknown-`kid`
    /// refetch interval and the default freeze list. It should be the
    /// pseudonymizer's clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// What each route requires (default: [`AuthRoute::required`] everywhere).
    pub fn routes(mut self, routes: RouteMap<AuthRoute>) -> Self {
        self.routes = routes;
        self
    }

    /// Uses this API key store (keys from `[[auth.api_keys]]` are added to it), so
    /// keys can be added and removed at run time.
    pub fn api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = Some(keys);
        self
    }

    /// Adds a static verification key, for keys not kept in configuration. Tokens
    /// name it by `kid`; a key without a kid verifies tokens without one. Its
    /// algorithm must be listed in `auth.jwt.algorithms`.
    pub fn jwt_key(mut self, kid: Option<&str>, key: JwtKey) -> Self {
        self.extra_keys.push((kid.map(str::to_string), key));
        self
    }

    /// Records DPoP proof `jti`s in this replay cache (a Redis one, shared by
    /// replicas) instead of a new in-process cache of `auth.dpop.replay_max_entries`.
    pub fn replay_cache(mut self, cache: SharedReplayCache) -> Self {
        self.replay = Some(cache);
        self
    }

    /// Validates the configuration, fetches the JWKS and starts its background refresh.
    pub async fn build(self) -> Result<AuthLayer, ConfigError> {
        let c = &self.config;
        let clock = self.clock.clone().unwrap_or_else(system_clock);
        let mut tiers = TierPolicy::default().default_tier(&c.default_tier);
        if let Some(prefix) = &c.tier_scope_prefix {
            tiers = tiers.scope_prefix(prefix);
        }
        if !c.tiers.is_empty() {
            if !c.tiers.contains(&c.default_tier) {
                return Err(ConfigError::new("auth.default_tier", "must be one of auth.tiers"));
            }
            tiers = tiers.allowed(&c.tiers);
        }
        if c.max_credential_bytes < 64 {
            return Err(ConfigError::new(
                "auth.max_credential_bytes",
                "must be at least 64",
            ));
        }
        let api_key_header = match c.api_key_header.trim() {
            "" => None,
            name => Some(
                HeaderName::try_from(name.to_ascii_lowercase())
                    .map_err(|_| ConfigError::new("auth.api_key_header", "not a valid header name"))?,
            ),
        };
        if api_key_header.as_ref() == Some(&AUTHORIZATION) {
            return Err(ConfigError::new(
                "auth.api_key_header",
                "use api_key_scheme for Authorization: ApiKey",
            ));
        }
        let dpop = match &c.dpop {
            None => None,
            Some(d) => {
                let algorithms = d.algorithms()?;
                let origin = d
                    .external_origin
                    .as_deref()
                    .map(|o| parse_origin("auth.dpop.external_origin", o))
                    .transpose()?;
                if d.max_age.is_zero() {
                    return Err(ConfigError::new("auth.dpop.max_age", "must be positive"));
                }
                if d.nonce && d.nonce_lifetime.as_secs() == 0 {
                    return Err(ConfigError::new(
                        "auth.dpop.nonce_lifetime",
                        "must be at least 1s",
                    ));
                }
                let replay = self.replay.clone().unwrap_or_else(|| {
                    Arc::new(MemoryReplayCache::with_clock(d.replay_max_entries, clock.clone()))
                });
                Some(DpopVerifier {
                    algorithms,
                    origin,
                    max_age: d.max_age,
                    leeway: d.leeway,
                    replay,
                    replay_failure: d.replay_failure,
                    nonce_slot: d.nonce.then_some(d.nonce_lifetime),
                    max_bytes: c.max_credential_bytes,
                })
            }
        };
        let routes = compile(&self.routes, c.realm.as_deref(), dpop.is_some())?;

        let mut jwt = Vec::new();
        match &c.jwt {
            None if self.extra_keys.is_empty() => {}
            None => {
                return Err(ConfigError::new(
                    "auth.jwt",
                    "keys added with jwt_key need an [auth.jwt] section (issuer, audience, algorithms)",
                ));
            }
            Some(j) => jwt.push(build_issuer("auth.jwt", j, &self.extra_keys, &tiers, &clock).await?),
        }
        for (i, j) in c.issuers.iter().enumerate() {
            let section = format!("auth.issuers[{i}]");
            if j.issuer.0.is_empty() || j.issuer.0.iter().any(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{section}.issuer"),
                    "each trusted issuer must name its iss",
                ));
            }
            let taken = jwt.iter().any(|other: &JwtIssuer| {
                other
                    .verifier
                    .rules
                    .issuers
                    .iter()
                    .any(|iss| j.issuer.0.contains(iss))
            });
            if taken {
                return Err(ConfigError::new(
                    format!("{section}.issuer"),
                    "an issuer is listed twice (in [auth.jwt] or another [[auth.issuers]])",
                ));
            }
            jwt.push(build_issuer(&section, j, &[], &tiers, &clock).await?);
        }

        let metadata = match &c.resource_metadata {
            None => None,
            Some(m) => {
                let issuers = jwt
                    .iter()
                    .flat_map(|i| i.verifier.rules.issuers.iter().cloned())
                    .collect();
                let algs = dpop
                    .as_ref()
                    .map(|d| d.algorithms.iter().map(|a| a.name()).collect());
                // Every route that reads credentials requires DPoP (RFC 9728 §2).
                let always = dpop.is_some()
                    && routes
                        .iter()
                        .all(|(_, r)| r.dpop == DpopMode::Required || r.requirement == AuthRequirement::Skip);
                Some(ResourceMetadata::new(m, issuers, algs, always)?)
            }
        };

        let api_keys = if c.api_keys.is_empty() && self.api_keys.is_none() {
            None
        } else {
            let store = self.api_keys.clone().unwrap_or_default();
            for (i, k) in c.api_keys.iter().enumerate() {
                store.insert(k.record(i)?);
            }
            Some(store)
        };

        let mut introspection_tiers = tiers.clone();
        let introspection = match &c.introspection {
            None => None,
            Some(ic) => {
                let setting = "auth.introspection.url";
                let url = reqwest::Url::parse(&ic.url).map_err(|e| ConfigError::new(setting, e))?;
                check_scheme(setting, &url)?;
                let secret = match (&ic.client_secret_env, &ic.client_secret) {
                    (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                        ConfigError::new(
                            "auth.introspection.client_secret_env",
                            format!("{var} is not set"),
                        )
                    })?),
                    (None, secret) => secret.clone(),
                };
                if let Some(claim) = &ic.tier_claim {
                    introspection_tiers = introspection_tiers.claim(claim);
                }
                if ic.negative_cache_ttl > Duration::from_secs(300) {
                    return Err(ConfigError::new(
                        "auth.introspection.negative_cache_ttl",
                        "at most 5m: a token refused once may become valid",
                    ));
                }
                Some(
                    Introspector::new(
                        oauth2::IntrospectionUrl::from_url(url),
                        ic.client_id.clone(),
                        secret,
                        ic.timeout.max(Duration::from_millis(1)),
                        ic.cache_ttl,
                        AnswerRules {
                            issuers: ic.issuer.clone().map(|i| i.0).unwrap_or_default(),
                            audiences: ic.audience.clone().map(|a| a.0).unwrap_or_default(),
                            negative_ttl: ic.negative_cache_ttl,
                            negative_max_entries: ic.negative_cache_max_entries,
                        },
                    )
                    .map_err(|e| ConfigError::new(setting, e))?,
                )
            }
        };

        if jwt.is_empty() && api_keys.is_none() && introspection.is_none() {
            return Err(ConfigError::new(
                "auth",
                "configure at least one of [auth.jwt], [[auth.issuers]], [[auth.api_keys]], [auth.introspection]",
            ));
        }

        let cache = TokenCache::new(
            c.cache_max_entries.max(1),
            c.cache_max_ttl,
            clock.clone(),
            &self.pseudonymizer,
        );
        let freeze = self.freeze.unwrap_or_else(|| {
            Arc::new(MemoryFreezeList::with_clock(
                DEFAULT_FREEZE_ENTRIES,
                clock.clone(),
            ))
        });
        Ok(AuthLayer::new(Authenticator {
            pseudonymizer: self.pseudonymizer,
            clock,
            cache,
            jwt,
            api_keys,
            introspection,
            introspection_tiers,
            freeze,
            on_store_failure: c.on_store_failure,
            max_freeze_ttl: c.max_freeze_ttl,
            source: CredentialSource {
                api_key_header,
                api_key_scheme: c.api_key_scheme,
                max_bytes: c.max_credential_bytes,
            },
            tiers,
            responder: self.responder,
            challenges: Challenges::with_dpop(
                c.realm.as_deref(),
                dpop.as_ref().map(|d| d.algs()).as_deref(),
                metadata.as_ref().map(|m| m.url.as_str()),
            ),
            metadata,
            dpop,
            realm: c.realm.clone(),
            routes,
        }))
    }
}

/// One trusted issuer's verifier: its keys (static, added in code, or a JWKS
/// fetched now and refreshed in the background) and its tier policy.
async fn build_issuer(
    section: &str,
    j: &JwtConfig,
    extra_keys: &[(Option<String>, JwtKey)],
    tiers: &TierPolicy,
    clock: &SharedClock,
) -> Result<JwtIssuer, ConfigError> {
    let mut jwt_tiers = tiers.clone();
    if let Some(claim) = &j.tier_claim {
        jwt_tiers = jwt_tiers.claim(claim);
    }
    let rules = j.rules(section)?;
    let mut keys: Vec<PinnedKey> = j
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| k.pinned(section, i, &rules))
        .collect::<Result<_, _>>()?;
    for (kid, key) in extra_keys {
        if !rules.algorithms.contains(&key.algorithm()) {
            return Err(ConfigError::new(
                format!("{section}.algorithms"),
                format!("does not list {} (a key added with jwt_key)", key.algorithm()),
            ));
        }
        keys.push(PinnedKey::new(kid.clone(), key.clone(), &rules));
    }
    let jwks = match &j.jwks_url {
        None => None,
        Some(url) => {
            let setting = format!("{section}.jwks_url");
            let setting = setting.as_str();
            let url = reqwest::Url::parse(url).map_err(|e| ConfigError::new(setting, e))?;
            check_scheme(setting, &url)?;
            let settings = JwksSettings {
                url,
                timeout: j.jwks_timeout.max(Duration::from_millis(1)),
                default_refresh: j.jwks_refresh,
                min_refresh: j.jwks_min_refresh.max(Duration::from_millis(10)),
                max_refresh: j.jwks_max_refresh,
                unknown_kid_interval: j.jwks_unknown_kid_interval,
                max_bytes: j.jwks_max_bytes,
            };
            let jwks = Arc::new(
                Jwks::new(settings, rules.clone(), clock.clone())
                    .map_err(|e| ConfigError::new(setting, e))?,
            );
            let first = jwks.fetch().await;
            if let Err(e) = &first {
                if j.jwks_required_at_start {
                    return Err(ConfigError::new(setting, format!("first fetch failed: {e}")));
                }
                tracing::warn!(error = %e, cause = "start", "JWKS fetch failed; retrying in the background");
            }
            Jwks::spawn_refresh(&jwks, jwks.first_refresh(&first));
            Some(jwks)
        }
    };
    if keys.is_empty() && jwks.is_none() {
        return Err(ConfigError::new(
            section,
            format!("set jwks_url or at least one [[{section}.keys]]"),
        ));
    }
    Ok(JwtIssuer {
        verifier: JwtVerifier {
            rules,
            static_keys: KeySet::new(keys),
            jwks,
        },
        tiers: jwt_tiers,
    })
}

fn check_scheme(setting: &str, url: &reqwest::Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "http" => Ok(()),
        "https" if cfg!(feature = "rustls-tls") => Ok(()),
        "https" => Err(ConfigError::new(
            setting,
            "https URLs need the `rustls-tls` feature of tollgate-auth",
        )),
        other => Err(ConfigError::new(setting, format!("unsupported scheme {other:?}"))),
    }
}
