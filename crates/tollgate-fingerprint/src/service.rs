//! [`FingerprintService`]: judges each authenticated request's session.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::response::Response;
use http::Request;
use tollgate_core::CarryExt;
use tollgate_core::future::ResponseFuture;
use tollgate_core::problem::types;
use tollgate_core::{
    FailurePolicy, Freeze, Principal, Problem, RouteMap, SessionInfo, SharedFreezeList, fields,
};
use tower::Service;
use tracing::Span;

use crate::record::SessionRecord;
use crate::store::SessionStore;
use crate::verdict::{
    Decision, Judge, credential_frozen, record_verdict, record_verdict_here, session_changed,
};

/// The layer's parts, behind one `Arc` shared by the layer and its services: axum
/// may clone the layer and make its service for every request, and each `Arc` is an
/// atomic increment and decrement.
pub(crate) struct Shared {
    pub(crate) judge: Judge,
    /// Whether each route is fingerprinted.
    pub(crate) routes: RouteMap<bool>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) freeze_list: SharedFreezeList,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintLayer")
            .field("config", &self.judge.config)
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

/// The service made by [`FingerprintLayer`](crate::FingerprintLayer).
pub struct FingerprintService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> FingerprintService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        FingerprintService { inner, shared }
    }
}

impl<S: Clone> Clone for FingerprintService<S> {
    fn clone(&self) -> Self {
        FingerprintService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for FingerprintService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintService")
            .field("inner", &self.inner)
            .field("layer", &self.shared)
            .finish()
    }
}

async fn freeze_and_respond(shared: Arc<Shared>, freeze: Freeze) -> Response {
    match shared.freeze_list.freeze(freeze).await {
        Ok(()) => shared.judge.responder.respond(credential_frozen()),
        Err(error) => {
            tracing::warn!(
                target: "tollgate::fingerprint",
                %error,
                "could not freeze the credential; answering 401 session-changed instead"
            );
            shared.judge.responder.respond(session_changed())
        }
    }
}

impl<S, B> Service<Request<B>> for FingerprintService<S>
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
        let shared = &*self.shared;
        if !*shared.routes.get_for(&req) {
            return ResponseFuture::inner(self.inner.call(req), ());
        }
        let judge = &shared.judge;
        let credential = req
            .extensions()
            .carried::<Principal>()
            .map(|p| (p.credential_key(), p.issued_at(), p.bound_key().is_some()));

        // An outer FingerprintLayer already judged this request: apply this layer's policy.
        if let Some(info) = req.extensions().carried::<SessionInfo>().copied() {
            let decision = judge.decide(&info, credential.map(|c| c.0), None);
            return self.finish(req, decision);
        }
        let Some((credential, issued_at, key_bound)) = credential else {
            return ResponseFuture::inner(self.inner.call(req), ());
        };

        let traits = judge.traits(&mut req);
        let store = &*shared.store;
        if let Some(info) =
            judge.observe_immediate(store, credential, &traits, req.headers(), issued_at, key_bound)
        {
            record_verdict_here(&info);
            req.extensions_mut().carry(info);
            let decision = judge.decide(&info, Some(credential), None);
            return self.finish(req, decision);
        }

        // A store that must be waited on: the keyed hashes (kept per credential and
        // input within an epoch), then its observe.
        let (observation, fingerprint, session) =
            judge.observation(credential, &traits, req.headers(), issued_at, key_bound);
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = Span::current();
        ResponseFuture::boxed(Box::pin(async move {
            span.record(fields::SESSION, session.to_hex().as_str());
            let judge = &shared.judge;
            let thresholds = judge.thresholds;
            let mut update =
                |prev: Option<&SessionRecord>| SessionRecord::observe(prev, &observation, &thresholds);
            let observed = shared
                .store
                .observe(credential, judge.config.session_ttl, &mut update)
                .await;
            let record = match observed {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(target: "tollgate::fingerprint", %error, "session store unavailable");
                    return match judge.config.on_store_failure {
                        FailurePolicy::Open => inner.call(req).await,
                        FailurePolicy::Closed => Ok(judge.responder.respond(
                            Problem::new(types::UNAVAILABLE).with_detail("the session store is unavailable"),
                        )),
                    };
                }
            };
            let info = SessionInfo {
                session,
                fingerprint,
                health: record.health,
                reasons: record.reasons,
            };
            record_verdict(&span, &info);
            req.extensions_mut().carry(info);
            match judge.decide(&info, Some(credential), Some(&span)) {
                Decision::Pass => inner.call(req).await,
                Decision::Respond(response) => Ok(response),
                Decision::Freeze(freeze) => Ok(freeze_and_respond(shared.clone(), freeze).await),
            }
        }))
    }
}

impl<S> FingerprintService<S> {
    fn finish<B, E>(&mut self, req: Request<B>, decision: Decision) -> ResponseFuture<S::Future, E>
    where
        S: Service<Request<B>, Response = Response, Error = E>,
        E: Send + 'static,
    {
        match decision {
            Decision::Pass => ResponseFuture::inner(self.inner.call(req), ()),
            Decision::Respond(response) => ResponseFuture::ready(response),
            Decision::Freeze(freeze) => {
                let shared = self.shared.clone();
                ResponseFuture::boxed(Box::pin(
                    async move { Ok(freeze_and_respond(shared, freeze).await) },
                ))
            }
        }
    }
}
