//! `require_scope`: a per-route check that the principal holds some scopes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Request};
use pin_project_lite::pin_project;
use tollgate_core::problem::{Problem, types};
use tollgate_core::{Principal, ProblemResponder, fields};
use tower::{Layer, Service};

use crate::error::{AuthError, Challenges, insufficient_scope_challenge};

/// A layer that answers 403 `insufficient_scope` unless the request's [`Principal`]
/// holds every one of its scopes (401 if there is no principal). Use it with
/// `route_layer` behind an [`AuthLayer`](crate::AuthLayer).
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_auth::require_scope;
///
/// let app: Router = Router::new()
///     .route("/items", get(|| async { "items" }))
///     .route_layer(require_scope(["read:items"]));
/// ```
#[derive(Clone)]
pub struct RequireScopeLayer {
    inner: Arc<ScopeInner>,
}

struct ScopeInner {
    scopes: Box<[Box<str>]>,
    challenge: HeaderValue,
    unauthenticated: Challenges,
    responder: ProblemResponder,
}

impl std::fmt::Debug for RequireScopeLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scopes", &self.inner.scopes)
            .finish()
    }
}

/// A [`RequireScopeLayer`] for these scopes.
pub fn require_scope<I, S>(scopes: I) -> RequireScopeLayer
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    RequireScopeLayer::new(scopes, None, ProblemResponder::default())
}

impl RequireScopeLayer {
    /// Requires `scopes`, naming `realm` in challenges and answering through `responder`.
    pub fn new<I, S>(scopes: I, realm: Option<&str>, responder: ProblemResponder) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let scopes: Box<[Box<str>]> = scopes.into_iter().map(|s| Box::from(s.as_ref())).collect();
        RequireScopeLayer {
            inner: Arc::new(ScopeInner {
                challenge: insufficient_scope_challenge(realm, &scopes),
                scopes,
                unauthenticated: Challenges::new(realm),
                responder,
            }),
        }
    }

    /// Answers errors through `responder`.
    pub fn responder(self, responder: ProblemResponder) -> Self {
        RequireScopeLayer {
            inner: Arc::new(ScopeInner {
                scopes: self.inner.scopes.clone(),
                challenge: self.inner.challenge.clone(),
                unauthenticated: self.inner.unauthenticated.clone(),
                responder,
            }),
        }
    }

    /// `None` if the principal may pass, the refusal otherwise.
    fn check(&self, principal: Option<&Principal>) -> Option<Response> {
        let i = &self.inner;
        let error = match principal {
            None => AuthError::MissingCredentials,
            Some(p) if i.scopes.iter().all(|s| p.scopes().contains(s)) => return None,
            Some(_) => AuthError::InsufficientScope,
        };
        tracing::Span::current().record(fields::AUTH_ERROR, error.slug());
        let problem = match error {
            AuthError::InsufficientScope => Problem::new(types::INSUFFICIENT_SCOPE)
                .with_detail(error.detail())
                .with_header(WWW_AUTHENTICATE, i.challenge.clone()),
            _ => i.unauthenticated.problem(error),
        };
        Some(i.responder.respond(problem))
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequireScopeLayer`].
#[derive(Clone, Debug)]
pub struct RequireScope<S> {
    inner: S,
    layer: RequireScopeLayer,
}

pin_project! {
    /// The response future of [`RequireScope`].
    pub struct RequireScopeFuture<Fut> {
        #[pin]
        inner: Option<Fut>,
        early: Option<Response>,
    }
}

impl<Fut, E> Future for RequireScopeFuture<Fut>
where
    Fut: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.as_pin_mut() {
            Some(fut) => fut.poll(cx),
            None => Poll::Ready(Ok(this
                .early
                .take()
                .expect("RequireScopeFuture polled after completion"))),
        }
    }
}

impl<S, B> Service<Request<B>> for RequireScope<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RequireScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.layer.check(req.extensions().get::<Principal>()) {
            None => RequireScopeFuture {
                inner: Some(self.inner.call(req)),
                early: None,
            },
            Some(response) => RequireScopeFuture {
                inner: None,
                early: Some(response),
            },
        }
    }
}
