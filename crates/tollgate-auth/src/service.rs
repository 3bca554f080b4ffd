//! [`AuthService`]: the per-request path.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::Request;
use tollgate_core::CarryExt;
use tollgate_core::future::ResponseFuture;
use tower::Service;

use crate::authenticator::{Authenticator, Pending, Step};
use crate::credential::Credential;
use crate::dpop::DpopMode;
use crate::error::AuthError;
use crate::route::AuthRequirement;

/// The service made by [`AuthLayer`](crate::AuthLayer).
///
/// Per request: the route's [`AuthRoute`](crate::AuthRoute) (from the layer's route
/// map), then the credential, the cache or a verifier, the freeze list and the
/// route's scopes. The fast path (cached token, known key, in-process freeze list)
/// calls the inner service directly; a request that must wait (JWKS refetch,
/// introspection, a remote freeze list) goes through one boxed future.
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S> AuthService<S> {
    pub(crate) fn new(inner: S, auth: Arc<Authenticator>) -> Self {
        AuthService { inner, auth }
    }
}

impl<S: Clone> Clone for AuthService<S> {
    fn clone(&self) -> Self {
        AuthService {
            inner: self.inner.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AuthService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let auth = &*self.auth;
        if let Some(metadata) = &auth.metadata
            && let Some(document) = metadata.answer(&req)
        {
            return ResponseFuture::ready(document);
        }
        let route = auth.routes.get_for(&req);
        if route.requirement == AuthRequirement::Skip {
            return ResponseFuture::inner(self.inner.call(req), ());
        }
        // A `DPoP` challenge when the route requires DPoP or the request uses it.
        let mut dpop = route.dpop == DpopMode::Required;
        let mut proof = None;
        let step = match auth.source.read(req.headers()) {
            Err(e) => Step::Fail(e),
            Ok(None) if route.admits_anonymous() => return ResponseFuture::inner(self.inner.call(req), ()),
            Ok(None) => Step::Fail(AuthError::MissingCredentials),
            Ok(Some(credential)) => {
                dpop |= matches!(credential, Credential::Dpop(_)) && route.dpop != DpopMode::Off;
                match auth.dpop_proof(&req, route, &credential) {
                    Ok(p) => {
                        proof = p;
                        auth.authenticate_now(credential)
                    }
                    Err(e) => Step::Fail(e),
                }
            }
        };
        // The proof whose `jti` is still to be recorded.
        let mut unrecorded = proof;
        let pending = match step {
            Step::Fail(e) => return ResponseFuture::ready(auth.reject_with(e, dpop)),
            Step::Done(accepted) => {
                if let Err(e) = auth.bind(&accepted, proof.as_ref()) {
                    return ResponseFuture::ready(auth.reject_with(e, dpop));
                }
                if let Some(p) = &proof {
                    match auth.replay_now(p) {
                        Some(Ok(())) => unrecorded = None,
                        Some(Err(e)) => return ResponseFuture::ready(auth.reject_with(e, dpop)),
                        None => {}
                    }
                }
                match (unrecorded.is_none(), auth.freeze_now(accepted.principal())) {
                    (true, Some(Ok(()))) => {
                        if let Some(refusal) = auth.admit(&accepted, route.scopes.as_deref()) {
                            return ResponseFuture::ready(refusal);
                        }
                        req.extensions_mut().carry(accepted.principal().clone());
                        return ResponseFuture::inner(self.inner.call(req), ());
                    }
                    (_, Some(Err(e))) => return ResponseFuture::ready(auth.reject_with(e, dpop)),
                    _ => Pending::Freeze(accepted),
                }
            }
            Step::Slow(pending) => pending,
        };
        let scopes = route.scopes.clone();
        let auth = self.auth.clone();
        // The service that was polled ready goes into the future; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(async move {
            let accepted = async {
                let accepted = auth.authenticate_later(pending).await?;
                auth.bind(&accepted, proof.as_ref())?;
                if let Some(p) = &unrecorded {
                    auth.replay_later(p).await?;
                }
                Ok::<_, AuthError>(accepted)
            };
            match accepted.await {
                Ok(accepted) => {
                    if let Some(refusal) = auth.admit(&accepted, scopes.as_deref()) {
                        return Ok(refusal);
                    }
                    req.extensions_mut().carry(accepted.principal().clone());
                    inner.call(req).await
                }
                Err(e) => Ok(auth.reject_with(e, dpop)),
            }
        }))
    }
}
