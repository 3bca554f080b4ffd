//! What the layer knows (verifiers, keys, cache, freeze list, route policies) and
//! the authentication it does per request, shared by every service of one layer.

use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use tollgate_core::clock::SharedClock;
use tollgate_core::{
    FailurePolicy, Freeze, Principal, ProblemResponder, Pseudonymizer, RouteMap, SharedFreezeList,
    StoreError, fields, span::record_current,
};

use crate::api_key::ApiKeys;
use crate::cache::{Accepted, Presented, TokenCache};
use crate::credential::{Credential, CredentialSource, is_b64token};
use crate::dpop::{DPOP_NONCE, DpopMode, DpopVerifier, Proof};
use crate::error::{AuthError, Challenges};
use crate::introspection::Introspector;
use crate::jwt::{JwtIssuer, Outcome, looks_like_jwt, select_issuer};
use crate::policy::TierPolicy;
use crate::route::RoutePolicy;
use crate::scope::RequiredScopes;

pub(crate) struct Authenticator {
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) clock: SharedClock,
    pub(crate) cache: TokenCache,
    /// The trusted issuers: `[auth.jwt]` first, then `[[auth.issuers]]`.
    pub(crate) jwt: Vec<JwtIssuer>,
    pub(crate) api_keys: Option<ApiKeys>,
    pub(crate) introspection: Option<Introspector>,
    pub(crate) introspection_tiers: TierPolicy,
    pub(crate) freeze: SharedFreezeList,
    pub(crate) on_store_failure: FailurePolicy,
    pub(crate) max_freeze_ttl: Duration,
    pub(crate) source: CredentialSource,
    pub(crate) tiers: TierPolicy,
    pub(crate) responder: ProblemResponder,
    pub(crate) challenges: Challenges,
    pub(crate) realm: Option<String>,
    pub(crate) routes: RouteMap<RoutePolicy>,
    pub(crate) dpop: Option<DpopVerifier>,
    pub(crate) metadata: Option<crate::metadata::ResourceMetadata>,
}

/// Work that must wait: a freeze list that cannot answer at once, a JWKS refetch
/// for an unknown `kid`, or an introspection call.
pub(crate) enum Pending {
    Freeze(Arc<Accepted>),
    Jwt { token: String, key: u128, issuer: usize },
    Introspect { token: String, key: u128 },
}

/// What can be decided without waiting.
pub(crate) enum Step {
    Done(Arc<Accepted>),
    Fail(AuthError),
    Slow(Pending),
}

impl Authenticator {
    /// Everything that can be decided without waiting.
    pub(crate) fn authenticate_now(&self, credential: Credential<'_>) -> Step {
        match credential {
            Credential::ApiKey(key) => match self.api_keys.as_ref().and_then(|k| k.lookup(key)) {
                Some(entry) => {
                    Step::Done(entry.principal(&self.pseudonymizer, &self.tiers, self.clock.now()))
                }
                None => Step::Fail(AuthError::UnknownApiKey),
            },
            Credential::Bearer(raw) | Credential::Dpop(raw) => {
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
                if is_jwt && !self.jwt.is_empty() {
                    let index = match select_issuer(&self.jwt, token) {
                        Ok(i) => i,
                        Err(e) => return Step::Fail(e),
                    };
                    let issuer = &self.jwt[index];
                    let jwt = &issuer.verifier;
                    let now = self.clock.now();
                    return match jwt.verify(
                        token,
                        jwt.jwks.is_some(),
                        now,
                        &self.pseudonymizer,
                        &issuer.tiers,
                    ) {
                        Outcome::Verified(v) => {
                            let principal = Arc::new(Accepted::new(v.principal));
                            self.cache.insert(key, principal.clone(), v.expires_at);
                            Step::Done(principal)
                        }
                        Outcome::Rejected(e) => Step::Fail(e),
                        Outcome::Refetch => Step::Slow(Pending::Jwt {
                            token: token.to_owned(),
                            key,
                            issuer: index,
                        }),
                    };
                }
                if self.introspection.is_some() {
                    return Step::Slow(Pending::Introspect {
                        token: token.to_owned(),
                        key,
                    });
                }
                Step::Fail(if is_jwt || self.jwt.is_empty() {
                    AuthError::UnsupportedToken
                } else {
                    AuthError::MalformedToken
                })
            }
        }
    }

    /// The DPoP proof of a request presenting `credential` on `route`, checked in
    /// full but for the token binding and the replay cache: `None` when the request
    /// uses no DPoP and the route allows that.
    pub(crate) fn dpop_proof<B>(
        &self,
        req: &http::Request<B>,
        route: &RoutePolicy,
        credential: &Credential<'_>,
    ) -> Result<Option<Proof>, AuthError> {
        match (credential, &self.dpop) {
            (Credential::Dpop(_), _) if route.dpop == DpopMode::Off => Err(AuthError::UnsupportedScheme),
            (Credential::Dpop(token), Some(verifier)) => verifier
                .verify(
                    req.headers(),
                    req.method(),
                    req.uri(),
                    token,
                    self.clock.now(),
                    &self.pseudonymizer,
                )
                .map(Some),
            (Credential::Dpop(_), None) => Err(AuthError::UnsupportedScheme),
            _ if route.dpop == DpopMode::Required => Err(AuthError::DpopRequired),
            _ => Ok(None),
        }
    }

    /// The token's binding against the proof: a bound token needs a proof by its
    /// key, a proof needs a bound token.
    pub(crate) fn bind(&self, accepted: &Accepted, proof: Option<&Proof>) -> Result<(), AuthError> {
        match (accepted.principal().bound_key(), proof) {
            (Some(key), Some(proof)) if key.digest() == proof.key => Ok(()),
            (Some(_), Some(_)) => Err(AuthError::DpopKeyMismatch),
            (Some(_), None) => Err(AuthError::DpopBoundBearer),
            (None, Some(_)) => Err(AuthError::DpopUnboundToken),
            (None, None) => Ok(()),
        }
    }

    /// Records the proof's `jti` when the replay cache answers at once.
    pub(crate) fn replay_now(&self, proof: &Proof) -> Option<Result<(), AuthError>> {
        let verifier = self.dpop.as_ref()?;
        verifier
            .replay
            .record_immediate(proof.replay_key, proof.ttl)
            .map(|r| self.replay_verdict(r))
    }

    /// Records the proof's `jti`, waiting for the replay cache.
    pub(crate) async fn replay_later(&self, proof: &Proof) -> Result<(), AuthError> {
        let Some(verifier) = self.dpop.as_ref() else {
            return Ok(());
        };
        let r = match verifier.replay.record_immediate(proof.replay_key, proof.ttl) {
            Some(r) => r,
            None => verifier.replay.record(proof.replay_key, proof.ttl).await,
        };
        self.replay_verdict(r)
    }

    fn replay_verdict(&self, result: Result<bool, StoreError>) -> Result<(), AuthError> {
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(AuthError::DpopReplay),
            Err(e) => {
                let policy = self
                    .dpop
                    .as_ref()
                    .map_or(FailurePolicy::Closed, |d| d.replay_failure);
                tracing::warn!(
                    error = %e,
                    policy = if policy == FailurePolicy::Open { "open" } else { "closed" },
                    "DPoP replay cache unavailable"
                );
                match policy {
                    FailurePolicy::Open => Ok(()),
                    FailurePolicy::Closed => Err(AuthError::ReplayCacheUnavailable),
                }
            }
        }
    }

    /// The freeze verdict when the backend answers at once.
    pub(crate) fn freeze_now(&self, principal: &Principal) -> Option<Result<(), AuthError>> {
        self.freeze
            .check_immediate(principal)
            .map(|r| self.freeze_verdict(r))
    }

    fn freeze_verdict(&self, result: Result<Option<Freeze>, StoreError>) -> Result<(), AuthError> {
        match result {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(AuthError::Frozen),
            Err(e) => {
                let policy = match self.on_store_failure {
                    FailurePolicy::Open => "open",
                    FailurePolicy::Closed => "closed",
                };
                tracing::warn!(error = %e, policy, "freeze list unavailable");
                match self.on_store_failure {
                    FailurePolicy::Open => Ok(()),
                    FailurePolicy::Closed => Err(AuthError::FreezeListUnavailable),
                }
            }
        }
    }

    /// Finishes what [`Authenticator::authenticate_now`] could not decide.
    pub(crate) async fn authenticate_later(&self, pending: Pending) -> Result<Arc<Accepted>, AuthError> {
        let principal = match pending {
            Pending::Freeze(p) => p,
            Pending::Jwt { token, key, issuer } => {
                let issuer = self.jwt.get(issuer).ok_or(AuthError::UnsupportedToken)?;
                let jwt = &issuer.verifier;
                if let Some(jwks) = &jwt.jwks {
                    jwks.refetch_for_unknown_kid().await;
                }
                let now = self.clock.now();
                match jwt.verify(&token, false, now, &self.pseudonymizer, &issuer.tiers) {
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
                    .introspect(&token, key, &self.pseudonymizer, &self.introspection_tiers, now)
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

    /// Records the authenticated principal in the request span, then checks the
    /// route's scopes: `None` if the request passes on, the 403 otherwise.
    pub(crate) fn admit(&self, accepted: &Accepted, scopes: Option<&RequiredScopes>) -> Option<Response> {
        let principal = accepted.principal();
        record_current([
            (fields::PRINCIPAL, &accepted.subject_hex()),
            (fields::CREDENTIAL, &principal.credential().as_str()),
            (fields::TIER, &principal.tier().as_str()),
        ]);
        match scopes {
            Some(scopes) if !scopes.held_by(principal) => {
                record_current([(fields::AUTH_ERROR, &AuthError::InsufficientScope.slug())]);
                Some(self.responder.respond(scopes.problem()))
            }
            _ => None,
        }
    }

    /// The answer to a refused request, with a `DPoP` challenge if `dpop` (the
    /// request used DPoP or the route requires it) and a fresh `DPoP-Nonce` when
    /// the proof lacked one.
    pub(crate) fn reject_with(&self, error: AuthError, dpop: bool) -> Response {
        record_current([(fields::AUTH_ERROR, &error.slug())]);
        let mut problem = self.challenges.problem_for(error, dpop);
        if let Some(verifier) = &self.dpop
            && (error == AuthError::DpopNonce || dpop)
            && let Some(nonce) = verifier.nonce(&self.pseudonymizer, self.clock.now())
            && let Ok(value) = http::HeaderValue::from_str(&nonce)
        {
            problem = problem.with_header(DPOP_NONCE, value);
        }
        self.responder.respond(problem)
    }
}
