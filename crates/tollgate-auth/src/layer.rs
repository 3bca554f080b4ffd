//! [`AuthLayer`]: authentication for a router or a route.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::inventory::FieldSpec;
use tollgate_core::{Pseudonymizer, SharedFreezeList};
use tower::Layer;

use crate::admin::FreezeAdmin;
use crate::api_key::ApiKeys;
use crate::authenticator::Authenticator;
use crate::error::AuthError;
use crate::service::AuthService;

/// Authenticates requests by JWT, API key or token introspection, checks the freeze
/// list, and hands the stack a pseudonymous [`Principal`](tollgate_core::Principal)
/// (an extractor; read it in a middleware with
/// [`CarryExt::carried`](tollgate_core::CarryExt::carried)).
///
/// What each route requires is a [`RouteMap<AuthRoute>`](tollgate_core::RouteMap)
/// given to [`AuthBuilder::routes`](crate::AuthBuilder::routes): credentials
/// required, optional or skipped, and scopes. Without one, every route requires
/// credentials and no scope.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tollgate_auth::{AuthConfig, AuthLayer, AuthRoute};
/// use tollgate_core::{Principal, Pseudonymizer, PseudonymSecret, RouteMap};
///
/// let config: AuthConfig = toml::from_str(r#"
///     [[api_keys]]
///     id = "key-1"
///     sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b" # sha256("secret")
///     tier = "pro"
///     scopes = ["tollgate:admin"]
/// "#).unwrap();
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[7; 32]).unwrap(), Duration::from_secs(86_400));
/// let routes = RouteMap::new(
///     [
///         ("/health", AuthRoute::skip()),
///         ("/v1/items/{id}", AuthRoute::optional()),
///         ("/admin/*", AuthRoute::required().with_scopes(["tollgate:admin"])),
///     ],
///     AuthRoute::required(),
/// )
/// .unwrap();
/// let auth = AuthLayer::builder(config, p).routes(routes).build().await.unwrap();
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .route("/me", get(|principal: Principal| async move { principal.tier().to_string() }))
///     .nest("/admin", auth.freeze_admin().router())
///     .layer(auth);
/// # });
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.auth;
        f.debug_struct("AuthLayer")
            .field("jwt", &a.jwt)
            .field("api_keys", &a.api_keys)
            .field("introspection", &a.introspection)
            .field("cache", &a.cache)
            .field("routes", &a.routes)
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    pub(crate) fn new(auth: Authenticator) -> Self {
        AuthLayer { auth: Arc::new(auth) }
    }

    pub(crate) fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The freeze list this layer checks.
    pub fn freeze_list(&self) -> &SharedFreezeList {
        &self.auth.freeze
    }

    /// The API key store, if API keys are configured: add or remove keys at run time.
    pub fn api_keys(&self) -> Option<&ApiKeys> {
        self.auth.api_keys.as_ref()
    }

    /// The pseudonymizer principals are made with.
    pub fn pseudonymizer(&self) -> &Pseudonymizer {
        &self.auth.pseudonymizer
    }

    /// How many JWKS fetches were attempted since start (0 without a JWKS URL).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.auth
            .jwt
            .iter()
            .filter_map(|i| i.verifier.jwks.as_ref())
            .map(|j| j.fetch_count())
            .sum()
    }

    /// How many of those fetches failed (bad status, timeout, unusable document); the
    /// last good keys stayed in use each time.
    pub fn jwks_fetch_failures(&self) -> u64 {
        self.auth
            .jwt
            .iter()
            .filter_map(|i| i.verifier.jwks.as_ref())
            .map(|j| j.failure_count())
            .sum()
    }

    /// Empties the verified-token cache (the freeze list makes this unnecessary for
    /// revocation; it exists for key rotation emergencies).
    pub fn clear_cache(&self) {
        self.auth.cache.clear();
    }

    /// A [`FreezeAdmin`] over this layer's freeze list, pseudonymizer and clock,
    /// answering like this layer (same realm, same responder), capped at
    /// `auth.max_freeze_ttl`.
    pub fn freeze_admin(&self) -> FreezeAdmin {
        let a = &self.auth;
        FreezeAdmin::new(a.freeze.clone(), a.pseudonymizer.clone())
            .max_ttl(a.max_freeze_ttl)
            .clock(a.clock.clone())
            .responder(a.responder.clone())
            .realm(a.realm.as_deref())
    }

    /// The longest freeze the admin handlers create (`auth.max_freeze_ttl`).
    pub fn max_freeze_ttl(&self) -> Duration {
        self.auth.max_freeze_ttl
    }

    /// Checks the DPoP proof of a token request (RFC 9449 §5) as this layer checks
    /// proofs (algorithms, `htm`, `htu`, `iat`, nonce) and records its `jti`, for
    /// a token endpoint served behind the layer. Returns the proof key's RFC 7638
    /// thumbprint, the `cnf.jkt` to bind the issued token to: the caller must not
    /// log or store it. Fails with [`AuthError::UnsupportedScheme`] without
    /// `[auth.dpop]`, with [`AuthError::DpopMissing`] without a proof.
    pub async fn verify_token_request_proof(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Result<String, AuthError> {
        let a = &self.auth;
        let verifier = a.dpop.as_ref().ok_or(AuthError::UnsupportedScheme)?;
        let (proof, thumbprint) =
            verifier.verify_with_thumbprint(headers, method, uri, None, a.clock.now(), &a.pseudonymizer)?;
        a.replay_later(&proof).await?;
        Ok(thumbprint)
    }

    /// A fresh server nonce for `DPoP-Nonce`, when `auth.dpop.nonce` is on.
    pub fn dpop_nonce(&self) -> Option<String> {
        let a = &self.auth;
        a.dpop.as_ref()?.nonce(&a.pseudonymizer, a.clock.now())
    }

    /// The verified-token cache's entries held now.
    pub fn state_sizes(&self) -> Vec<tollgate_core::inventory::StateSize> {
        let cache = &self.auth.cache;
        vec![tollgate_core::inventory::StateSize {
            name: "auth.token_cache",
            len: cache.len() as usize,
            capacity: cache.capacity(),
        }]
    }

    /// Every field this layer logs or stores.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        crate::inventory::fields(
            self.auth.cache.max_ttl(),
            self.auth.max_freeze_ttl,
            self.auth.dpop.as_ref().map(|d| d.max_age + d.leeway),
            self.auth.introspection.as_ref().map(|i| i.negative_ttl()),
        )
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService::new(inner, self.auth.clone())
    }
}
