//! `AuthLayer`, `AuthService` and their response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use jsonwebtoken::DecodingKey;
use pin_project_lite::pin_project;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::{
    FailurePolicy, FreezeList, MemoryFreezeList, Principal, ProblemResponder, Pseudonymizer, fields,
};
use tower::{Layer, Service};

use crate::api_key::ApiKeys;
use crate::cache::{Accepted, Presented, TokenCache};
use crate::config::{Anonymous, AuthConfig, ConfigError, invalid, seconds};
use crate::error::{AuthError, Challenges};
use crate::introspection::Introspector;
use crate::jwks::{Jwks, JwksSettings};
use crate::jwt::{JwtVerifier, KeySet, Outcome, PinnedKey, looks_like_jwt};
use crate::policy::TierPolicy;
use crate::span::record_current;

/// A per-route override, read from request extensions: insert it with a layer that
/// runs before [`AuthLayer`] (for example `axum::Extension(AuthOverride::Skip)`
/// applied outside the auth layer on one route).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOverride {
    /// Do not authenticate this request at all (credentials are not even read).
    Skip,
    /// Authenticate if credentials are sent, pass on without a principal otherwise.
    Optional,
    /// Require credentials, whatever the layer's default.
    Required,
}

pub(crate) struct Shared<F> {
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) clock: SharedClock,
    pub(crate) cache: TokenCache,
    pub(crate) jwt: Option<JwtVerifier>,
    pub(crate) jwt_tiers: TierPolicy,
    pub(crate) api_keys: Option<ApiKeys>,
    pub(crate) introspection: Option<Introspector>,
    pub(crate) introspection_tiers: TierPolicy,
    pub(crate) freeze: F,
    pub(crate) freeze_failure: FailurePolicy,
    pub(crate) max_freeze_ttl: Duration,
    pub(crate) anonymous: Anonymous,
    pub(crate) api_key_header: Option<HeaderName>,
    pub(crate) api_key_scheme: bool,
    pub(crate) max_credential_bytes: usize,
    pub(crate) tiers: TierPolicy,
    pub(crate) responder: ProblemResponder,
    pub(crate) challenges: Challenges,
    pub(crate) realm: Option<String>,
}

/// Authenticates requests by JWT, API key or token introspection, checks the freeze
/// list, and hands the stack a pseudonymous [`Principal`] in request extensions.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tollgate_auth::{AuthConfig, AuthLayer};
/// use tollgate_core::{Principal, Pseudonymizer, PseudonymSecret};
///
/// let config: AuthConfig = toml::from_str(r#"
///     [[api_keys]]
///     id = "key-1"
///     sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" # sha256("secret")
///     tier = "pro"
/// "#).unwrap();
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let auth = AuthLayer::from_config(&config, p).await.unwrap();
/// let app: Router = Router::new()
///     .route("/me", get(|principal: Principal| async move { principal.tier().to_string() }))
///     .layer(auth);
/// # });
/// ```
pub struct AuthLayer<F = MemoryFreezeList> {
    shared: Arc<Shared<F>>,
}

impl<F> Clone for AuthLayer<F> {
    fn clone(&self) -> Self {
        AuthLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<F> std::fmt::Debug for AuthLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.shared;
        f.debug_struct("AuthLayer")
            .field("jwt", &s.jwt)
            .field("api_keys", &s.api_keys)
            .field("introspection", &s.introspection)
            .field("anonymous", &s.anonymous)
            .field("cache", &s.cache)
            .finish_non_exhaustive()
    }
}

impl AuthLayer<MemoryFreezeList> {
    /// A builder over `config`, with an in-process freeze list of 100 000 entries.
    pub fn builder(config: AuthConfig, pseudonymizer: Pseudonymizer) -> AuthBuilder<MemoryFreezeList> {
        AuthBuilder {
            config,
            pseudonymizer,
            clock: None,
            freeze: MemoryFreezeList::new(100_000),
            responder: ProblemResponder::default(),
            api_keys: None,
            extra_keys: Vec::new(),
        }
    }

    /// The layer for `config`, with an in-process freeze list. Fetches the JWKS (if
    /// configured) before returning.
    pub async fn from_config(config: &AuthConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        Self::builder(config.clone(), pseudonymizer).build().await
    }
}

/// Builds an [`AuthLayer`]: configuration plus what configuration cannot hold
/// (a freeze list backend, an error responder, an API key store, keys in code).
pub struct AuthBuilder<F> {
    config: AuthConfig,
    pseudonymizer: Pseudonymizer,
    clock: Option<SharedClock>,
    freeze: F,
    responder: ProblemResponder,
    api_keys: Option<ApiKeys>,
    extra_keys: Vec<(Option<String>, jsonwebtoken::Algorithm, DecodingKey)>,
}

impl<F> std::fmt::Debug for AuthBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F: FreezeList> AuthBuilder<F> {
    /// Uses this freeze list backend (Redis, or a shared in-process list).
    pub fn freeze_list<G: FreezeList>(self, freeze: G) -> AuthBuilder<G> {
        AuthBuilder {
            config: self.config,
            pseudonymizer: self.pseudonymizer,
            clock: self.clock,
            freeze,
            responder: self.responder,
            api_keys: self.api_keys,
            extra_keys: self.extra_keys,
        }
    }

    /// Answers errors with this responder instead of problem+json.
    pub fn responder(mut self, responder: ProblemResponder) -> Self {
        self.responder = responder;
        self
    }

    /// Uses this clock (for `exp` arithmetic, cache lifetimes and the unknown-`kid`
    /// refetch interval). It should be the pseudonymizer's clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Uses this API key store (keys from `[[auth.api_keys]]` are added to it), so
    /// keys can be added and removed at run time.
    pub fn api_keys(mut self, keys: ApiKeys) -> Self {
        self.api_keys = Some(keys);
        self
    }

    /// Adds a static verification key pinned to `alg`, for keys not kept in config.
    pub fn jwt_key(mut self, kid: Option<&str>, alg: jsonwebtoken::Algorithm, key: DecodingKey) -> Self {
        self.extra_keys.push((kid.map(str::to_string), alg, key));
        self
    }

    /// Validates the configuration, fetches the JWKS and starts its background refresh.
    pub async fn build(self) -> Result<AuthLayer<F>, ConfigError> {
        let c = &self.config;
        let clock = self.clock.clone().unwrap_or_else(system_clock);
        let mut tiers = TierPolicy::default().default_tier(&c.default_tier);
        if let Some(prefix) = &c.tier_scope_prefix {
            tiers = tiers.scope_prefix(prefix);
        }
        if !c.tiers.is_empty() {
            if !c.tiers.contains(&c.default_tier) {
                return Err(invalid("auth.default_tier", "must be one of auth.tiers"));
            }
            tiers = tiers.allowed(&c.tiers);
        }
        if c.max_credential_bytes < 64 {
            return Err(invalid("auth.max_credential_bytes", "must be at least 64"));
        }
        let api_key_header = match c.api_key_header.trim() {
            "" => None,
            name => Some(
                HeaderName::try_from(name.to_ascii_lowercase())
                    .map_err(|_| invalid("auth.api_key_header", "not a valid header name"))?,
            ),
        };
        if api_key_header.as_ref() == Some(&AUTHORIZATION) {
            return Err(invalid(
                "auth.api_key_header",
                "use api_key_scheme for Authorization: ApiKey",
            ));
        }

        let mut jwt_tiers = tiers.clone();
        let jwt = match &c.jwt {
            None if self.extra_keys.is_empty() => None,
            None => {
                return Err(invalid(
                    "auth.jwt",
                    "keys added with jwt_key need an [auth.jwt] section (issuer, audience, algorithms)",
                ));
            }
            Some(j) => {
                if let Some(claim) = &j.tier_claim {
                    jwt_tiers = jwt_tiers.claim(claim);
                }
                let rules = j.rules()?;
                let mut keys: Vec<PinnedKey> = j
                    .keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| k.pinned(i, &rules))
                    .collect::<Result<_, _>>()?;
                for (kid, alg, key) in &self.extra_keys {
                    if !rules.algorithms.contains(alg) {
                        return Err(invalid("auth.jwt.algorithms", format!("does not list {alg:?}")));
                    }
                    keys.push(PinnedKey::new(kid.clone(), *alg, key.clone(), &rules));
                }
                let jwks = match &j.jwks_url {
                    None => None,
                    Some(url) => {
                        let url = reqwest::Url::parse(url).map_err(|e| invalid("auth.jwt.jwks_url", e))?;
                        check_scheme("auth.jwt.jwks_url", &url)?;
                        let settings = JwksSettings {
                            url,
                            timeout: Duration::from_millis(j.jwks_timeout_ms.max(1)),
                            default_refresh: seconds("auth.jwt.jwks_refresh_s", j.jwks_refresh_s)?,
                            min_refresh: seconds("auth.jwt.jwks_min_refresh_s", j.jwks_min_refresh_s)?
                                .max(Duration::from_millis(10)),
                            max_refresh: seconds("auth.jwt.jwks_max_refresh_s", j.jwks_max_refresh_s)?,
                            unknown_kid_interval: seconds(
                                "auth.jwt.jwks_unknown_kid_interval_s",
                                j.jwks_unknown_kid_interval_s,
                            )?,
                            max_bytes: j.jwks_max_bytes,
                        };
                        let jwks = Arc::new(
                            Jwks::new(settings, rules.clone(), clock.clone())
                                .map_err(|e| invalid("auth.jwt.jwks_url", e))?,
                        );
                        let first = jwks.fetch().await;
                        if let Err(e) = &first {
                            if j.jwks_required_at_start {
                                return Err(invalid("auth.jwt.jwks_url", format!("first fetch failed: {e}")));
                            }
                            tracing::warn!(error = %e, cause = "start", "JWKS fetch failed; retrying in the background");
                        }
                        Jwks::spawn_refresh(&jwks, jwks.first_refresh(&first));
                        Some(jwks)
                    }
                };
                if keys.is_empty() && jwks.is_none() {
                    return Err(invalid(
                        "auth.jwt",
                        "set jwks_url or at least one [[auth.jwt.keys]]",
                    ));
                }
                Some(JwtVerifier {
                    rules,
                    static_keys: KeySet::new(keys),
                    jwks,
                })
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
                let url = reqwest::Url::parse(&ic.url).map_err(|e| invalid("auth.introspection.url", e))?;
                check_scheme("auth.introspection.url", &url)?;
                let secret = match (&ic.client_secret_env, &ic.client_secret) {
                    (Some(var), _) => Some(std::env::var(var).map_err(|_| {
                        invalid(
                            "auth.introspection.client_secret_env",
                            format!("{var} is not set"),
                        )
                    })?),
                    (None, secret) => secret.clone(),
                };
                if let Some(claim) = &ic.tier_claim {
                    introspection_tiers = introspection_tiers.claim(claim);
                }
                Some(
                    Introspector::new(
                        oauth2::IntrospectionUrl::from_url(url),
                        ic.client_id.clone(),
                        secret,
                        Duration::from_millis(ic.timeout_ms.max(1)),
                        Duration::from_secs(ic.cache_ttl_s),
                    )
                    .map_err(|e| invalid("auth.introspection.url", e))?,
                )
            }
        };

        if jwt.is_none() && api_keys.is_none() && introspection.is_none() {
            return Err(invalid(
                "auth",
                "configure at least one of [auth.jwt], [[auth.api_keys]], [auth.introspection]",
            ));
        }

        let cache = TokenCache::new(
            c.cache_max_entries.max(1),
            Duration::from_secs(c.cache_max_ttl_s),
            clock.clone(),
            &self.pseudonymizer,
        );
        Ok(AuthLayer {
            shared: Arc::new(Shared {
                pseudonymizer: self.pseudonymizer,
                clock,
                cache,
                jwt,
                jwt_tiers,
                api_keys,
                introspection,
                introspection_tiers,
                freeze: self.freeze,
                freeze_failure: c.freeze_failure,
                max_freeze_ttl: Duration::from_secs(c.max_freeze_ttl_s),
                anonymous: c.anonymous,
                api_key_header,
                api_key_scheme: c.api_key_scheme,
                max_credential_bytes: c.max_credential_bytes,
                tiers,
                responder: self.responder,
                challenges: Challenges::new(c.realm.as_deref()),
                realm: c.realm.clone(),
            }),
        })
    }
}

fn check_scheme(setting: &str, url: &reqwest::Url) -> Result<(), ConfigError> {
    match url.scheme() {
        "http" => Ok(()),
        "https" if cfg!(feature = "rustls-tls") => Ok(()),
        "https" => Err(invalid(
            setting,
            "https URLs need the `rustls-tls` feature of tollgate-auth",
        )),
        other => Err(invalid(setting, format!("unsupported scheme {other:?}"))),
    }
}

impl<F: FreezeList> AuthLayer<F> {
    /// The freeze list this layer checks.
    pub fn freeze_list(&self) -> &F {
        &self.shared.freeze
    }

    /// The API key store, if API keys are configured: add or remove keys at run time.
    pub fn api_keys(&self) -> Option<&ApiKeys> {
        self.shared.api_keys.as_ref()
    }

    /// The pseudonymizer principals are made with.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.shared.pseudonymizer
    }

    /// How many JWKS fetches were attempted since start (0 without a JWKS URL).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.shared
            .jwt
            .as_ref()
            .and_then(|j| j.jwks.as_ref())
            .map_or(0, |j| j.fetch_count())
    }

    /// Empties the verified-token cache (the freeze list makes this unnecessary for
    /// revocation; it exists for key rotation emergencies).
    pub fn clear_cache(&self) {
        self.shared.cache.clear();
    }

    /// A [`RequireScopeLayer`](crate::RequireScopeLayer) for `scopes` that answers like
    /// this layer (same realm, same responder).
    pub fn require_scope<I, S>(&self, scopes: I) -> crate::RequireScopeLayer
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        crate::RequireScopeLayer::new(
            scopes,
            self.shared.realm.as_deref(),
            self.shared.responder.clone(),
        )
    }

    /// A [`FreezeAdmin`](crate::FreezeAdmin) over this layer's freeze list and
    /// pseudonymizer, capped at `auth.max_freeze_ttl_s`.
    pub fn freeze_admin(&self) -> crate::FreezeAdmin<F> {
        crate::FreezeAdmin::new(self.shared.freeze.clone(), self.shared.pseudonymizer.clone())
            .max_ttl(self.shared.max_freeze_ttl)
            .clock(self.shared.clock.clone())
    }

    /// The longest freeze the admin handlers create (`auth.max_freeze_ttl_s`).
    pub fn max_freeze_ttl(&self) -> Duration {
        self.shared.max_freeze_ttl
    }

    /// Every field this layer logs or stores.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        const LAYER: &str = "auth";
        vec![
            FieldSpec {
                name: fields::PRINCIPAL,
                layer: LAYER,
                derived_from: "the JWT `sub` (or `client_id`), the introspected `sub`/`username`/`client_id`, or the API key's owner",
                protection: Protection::Pseudonym,
                purpose: "link one caller's requests within a pseudonym epoch",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::CREDENTIAL,
                layer: LAYER,
                derived_from: "how the caller authenticated (jwt, api_key, introspection)",
                protection: Protection::NotPersonal,
                purpose: "tell credential kinds apart in logs",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::TIER,
                layer: LAYER,
                derived_from: "the tier claim, a tier scope, or the API key record",
                protection: Protection::NotPersonal,
                purpose: "rate-limit tiers and usage per plan",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span, Sink::Extension],
            },
            FieldSpec {
                name: fields::AUTH_ERROR,
                layer: LAYER,
                derived_from: "the cause of a refusal, as a fixed slug (never the credential)",
                protection: Protection::NotPersonal,
                purpose: "diagnose authentication failures",
                retention: Retention::LogPipeline,
                sinks: &[Sink::Span],
            },
            FieldSpec {
                name: "auth.token_cache",
                layer: LAYER,
                derived_from: "SipHash-1-3-128 of the token under a per-process random key, mapped to the principal's pseudonyms, keyed digests, tier and scopes",
                protection: Protection::KeyedDigest,
                purpose: "skip signature verification or introspection for a token already verified",
                retention: Retention::ttl(self.shared.cache.max_ttl()),
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "freeze-credential",
                layer: LAYER,
                derived_from: "an API key id or token jti (or token SHA-256), as a keyed digest",
                protection: Protection::KeyedDigest,
                purpose: "refuse a frozen credential at once",
                retention: Retention::ttl(self.shared.max_freeze_ttl),
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "freeze-subject",
                layer: LAYER,
                derived_from: "a subject, as a keyed digest",
                protection: Protection::KeyedDigest,
                purpose: "refuse every credential of a frozen subject at once",
                retention: Retention::ttl(self.shared.max_freeze_ttl),
                sinks: &[Sink::Store],
            },
        ]
    }
}

impl<S, F> Layer<S> for AuthLayer<F> {
    type Service = AuthService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`AuthLayer`].
pub struct AuthService<S, F = MemoryFreezeList> {
    inner: S,
    shared: Arc<Shared<F>>,
}

impl<S: Clone, F> Clone for AuthService<S, F> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: std::fmt::Debug, F> std::fmt::Debug for AuthService<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// The response future of [`AuthService`]: the inner future on the fast path
    /// (cached token, known key, in-process freeze list), a boxed one when the
    /// request must wait (JWKS refetch, introspection, a remote freeze list).
    pub struct AuthFuture<Fut, E> {
        #[pin]
        state: State<Fut, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, E> {
        Inner { #[pin] fut: Fut },
        Slow { fut: BoxFuture<Result<Response, E>> },
        Early { response: Option<Response> },
    }
}

impl<Fut, E> Future for AuthFuture<Fut, E>
where
    Fut: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { fut } => fut.poll(cx),
            StateProj::Slow { fut } => fut.as_mut().poll(cx),
            StateProj::Early { response } => {
                Poll::Ready(Ok(response.take().expect("AuthFuture polled after completion")))
            }
        }
    }
}

impl<Fut, E> AuthFuture<Fut, E> {
    fn inner(fut: Fut) -> Self {
        AuthFuture {
            state: State::Inner { fut },
        }
    }

    fn early(response: Response) -> Self {
        AuthFuture {
            state: State::Early {
                response: Some(response),
            },
        }
    }
}

enum Credential<'a> {
    /// The raw bearer token: validated only on a cache miss (a hit means these exact
    /// bytes were validated before).
    Bearer(&'a [u8]),
    ApiKey(&'a [u8]),
}

enum Pending {
    Freeze(Arc<Accepted>),
    Jwt { token: String, key: u128 },
    Introspect { token: String, key: u128 },
}

enum Step {
    Done(Arc<Accepted>),
    Fail(AuthError),
    Slow(Pending),
}

impl<F: FreezeList> Shared<F> {
    fn credential<'a>(&self, headers: &'a HeaderMap) -> Result<Option<Credential<'a>>, AuthError> {
        let authorization = match single(headers, &AUTHORIZATION, self.max_credential_bytes)? {
            None => None,
            Some(v) => Some(self.parse_authorization(v.as_bytes())?),
        };
        let header = match &self.api_key_header {
            None => None,
            Some(name) => match single(headers, name, self.max_credential_bytes)? {
                None => None,
                Some(v) => Some(Credential::ApiKey(api_key_bytes(v.as_bytes())?)),
            },
        };
        match (authorization, header) {
            // RFC 6750 §2: at most one way of sending credentials per request.
            (Some(_), Some(_)) => Err(AuthError::MalformedRequest),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn parse_authorization<'a>(&self, value: &'a [u8]) -> Result<Credential<'a>, AuthError> {
        let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &value[value.len()..]),
        };
        let rest = rest.trim_ascii();
        if scheme.eq_ignore_ascii_case(b"bearer") {
            if rest.is_empty() {
                return Err(AuthError::MalformedRequest);
            }
            Ok(Credential::Bearer(rest))
        } else if self.api_key_scheme && scheme.eq_ignore_ascii_case(b"apikey") {
            Ok(Credential::ApiKey(api_key_bytes(rest)?))
        } else {
            Err(AuthError::UnsupportedScheme)
        }
    }

    /// Everything that can be decided without waiting.
    fn authenticate_now(&self, credential: Credential<'_>) -> Step {
        match credential {
            Credential::ApiKey(key) => match self.api_keys.as_ref().and_then(|k| k.lookup(key)) {
                Some(entry) => {
                    Step::Done(entry.principal(&self.pseudonymizer, &self.tiers, self.clock.now()))
                }
                None => Step::Fail(AuthError::UnknownApiKey),
            },
            Credential::Bearer(raw) => {
                let key = self.cache.key(Presented::Bearer, raw);
                if let Some(principal) = self.cache.get(key) {
                    return Step::Done(principal);
                }
                // b64token characters are ASCII, so the UTF-8 check cannot fail after it.
                let token = match is_b64token(raw).then(|| std::str::from_utf8(raw)) {
                    Some(Ok(token)) => token,
                    _ => return Step::Fail(AuthError::MalformedRequest),
                };
                let is_jwt = looks_like_jwt(token);
                if is_jwt && let Some(jwt) = &self.jwt {
                    return match jwt.verify(token, jwt.jwks.is_some(), &self.pseudonymizer, &self.jwt_tiers) {
                        Outcome::Verified(v) => {
                            let principal = Arc::new(Accepted::new(v.principal));
                            self.cache.insert(key, principal.clone(), v.expires_at);
                            Step::Done(principal)
                        }
                        Outcome::Rejected(e) => Step::Fail(e),
                        Outcome::Refetch => Step::Slow(Pending::Jwt {
                            token: token.to_owned(),
                            key,
                        }),
                    };
                }
                if self.introspection.is_some() {
                    return Step::Slow(Pending::Introspect {
                        token: token.to_owned(),
                        key,
                    });
                }
                Step::Fail(if is_jwt || self.jwt.is_none() {
                    AuthError::UnsupportedToken
                } else {
                    AuthError::MalformedToken
                })
            }
        }
    }

    /// The freeze verdict when the backend answers at once.
    fn freeze_now(&self, principal: &Principal) -> Option<Result<(), AuthError>> {
        self.freeze
            .check_immediate(principal)
            .map(|r| self.freeze_verdict(r))
    }

    fn freeze_verdict(
        &self,
        result: Result<Option<tollgate_core::Freeze>, tollgate_core::StoreError>,
    ) -> Result<(), AuthError> {
        match result {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(AuthError::Frozen),
            Err(e) => {
                let policy = match self.freeze_failure {
                    FailurePolicy::Open => "open",
                    FailurePolicy::Closed => "closed",
                };
                tracing::warn!(error = %e, policy, "freeze list unavailable");
                match self.freeze_failure {
                    FailurePolicy::Open => Ok(()),
                    FailurePolicy::Closed => Err(AuthError::FreezeListUnavailable),
                }
            }
        }
    }

    async fn authenticate_later(&self, pending: Pending) -> Result<Arc<Accepted>, AuthError> {
        let principal = match pending {
            Pending::Freeze(p) => p,
            Pending::Jwt { token, key } => {
                let jwt = self.jwt.as_ref().ok_or(AuthError::UnsupportedToken)?;
                if let Some(jwks) = &jwt.jwks {
                    jwks.refetch_for_unknown_kid().await;
                }
                match jwt.verify(&token, false, &self.pseudonymizer, &self.jwt_tiers) {
                    Outcome::Verified(v) => {
                        let principal = Arc::new(Accepted::new(v.principal));
                        self.cache.insert(key, principal.clone(), v.expires_at);
                        principal
                    }
                    Outcome::Rejected(e) => return Err(e),
                    Outcome::Refetch => return Err(AuthError::UnknownKey),
                }
            }
            Pending::Introspect { token, key } => {
                let introspector = self.introspection.as_ref().ok_or(AuthError::UnsupportedToken)?;
                let now = self.clock.now();
                let found = introspector
                    .introspect(&token, &self.pseudonymizer, &self.introspection_tiers, now)
                    .await?;
                let cache_until = now.saturating_add(introspector.cache_ttl);
                let until = found.expires_at.map_or(cache_until, |exp| exp.min(cache_until));
                let principal = Arc::new(Accepted::new(found.principal));
                self.cache.insert(key, principal.clone(), Some(until));
                principal
            }
        };
        let verdict = match self.freeze.check_immediate(principal.principal()) {
            Some(r) => r,
            None => self.freeze.check(principal.principal()).await,
        };
        self.freeze_verdict(verdict)?;
        Ok(principal)
    }

    fn accept(&self, accepted: &Accepted) {
        let principal = accepted.principal();
        record_current([
            (fields::PRINCIPAL, &accepted.subject_hex()),
            (fields::CREDENTIAL, &principal.credential().as_str()),
            (fields::TIER, &principal.tier().as_str()),
        ]);
    }

    fn reject(&self, error: AuthError) -> Response {
        record_current([(fields::AUTH_ERROR, &error.slug())]);
        self.responder.respond(self.challenges.problem(error))
    }
}

fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    max: usize,
) -> Result<Option<&'a HeaderValue>, AuthError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthError::RepeatedHeader);
    }
    match first {
        Some(v) if v.len() > max => Err(AuthError::OversizedCredentials),
        other => Ok(other),
    }
}

/// RFC 6750 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(t: &[u8]) -> bool {
    let body = t.iter().position(|b| *b == b'=').map_or(t, |i| &t[..i]);
    !body.is_empty()
        && body
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'))
        && t[body.len()..].iter().all(|b| *b == b'=')
}

fn api_key_bytes(v: &[u8]) -> Result<&[u8], AuthError> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(AuthError::MalformedRequest);
    }
    Ok(v)
}

impl<S, F, B> Service<Request<B>> for AuthService<S, F>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    F: FreezeList,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = AuthFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let mode = match req.extensions().get::<AuthOverride>() {
            Some(AuthOverride::Skip) => return AuthFuture::inner(self.inner.call(req)),
            Some(AuthOverride::Optional) => Anonymous::Optional,
            Some(AuthOverride::Required) => Anonymous::Required,
            None => shared.anonymous,
        };
        let step = match shared.credential(req.headers()) {
            Err(e) => Step::Fail(e),
            Ok(None) => match mode {
                Anonymous::Optional => return AuthFuture::inner(self.inner.call(req)),
                Anonymous::Required => Step::Fail(AuthError::MissingCredentials),
            },
            Ok(Some(credential)) => shared.authenticate_now(credential),
        };
        let pending = match step {
            Step::Fail(e) => return AuthFuture::early(shared.reject(e)),
            Step::Done(principal) => match shared.freeze_now(principal.principal()) {
                Some(Ok(())) => {
                    shared.accept(&principal);
                    req.extensions_mut().insert(principal.principal().clone());
                    return AuthFuture::inner(self.inner.call(req));
                }
                Some(Err(e)) => return AuthFuture::early(shared.reject(e)),
                None => Pending::Freeze(principal),
            },
            Step::Slow(pending) => pending,
        };
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        AuthFuture {
            state: State::Slow {
                fut: Box::pin(async move {
                    match shared.authenticate_later(pending).await {
                        Ok(principal) => {
                            shared.accept(&principal);
                            req.extensions_mut().insert(principal.principal().clone());
                            inner.call(req).await
                        }
                        Err(e) => Ok(shared.reject(e)),
                    }
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64token() {
        assert!(is_b64token(b"abc.DEF-_~+/=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"=="));
        assert!(!is_b64token(b"ab=c"));
        assert!(!is_b64token(b"a b"));
        assert!(!is_b64token("é".as_bytes()));
    }
}

#[doc(hidden)]
pub mod bench_support {
    //! Entry points into the request path for the crate's benchmarks.
    use super::*;

    /// Verifies a JWT with no cache involved; true if it verifies.
    pub fn verify_jwt<F: FreezeList>(layer: &AuthLayer<F>, token: &str) -> bool {
        let s = &layer.shared;
        let jwt = s.jwt.as_ref().expect("JWT configured");
        matches!(
            jwt.verify(token, false, &s.pseudonymizer, &s.jwt_tiers),
            Outcome::Verified(_)
        )
    }

    /// The synchronous request path: read the credential from `headers`, consult the
    /// cache (or verify), check the freeze list. `None` on any failure.
    pub fn authenticate<F: FreezeList>(layer: &AuthLayer<F>, headers: &HeaderMap) -> Option<Principal> {
        let s = &layer.shared;
        let credential = s.credential(headers).ok()??;
        match s.authenticate_now(credential) {
            Step::Done(p) => match s.freeze_now(p.principal()) {
                Some(Ok(())) => Some(p.principal().clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// The cache key computation alone.
    pub fn cache_key<F>(layer: &AuthLayer<F>, token: &[u8]) -> u128 {
        layer.shared.cache.key(Presented::Bearer, token)
    }
}
