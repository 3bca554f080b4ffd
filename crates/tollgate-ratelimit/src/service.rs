//! [`RateLimitService`]: the per-request decision.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::response::Response;
use http::header::{CACHE_CONTROL, RETRY_AFTER};
use http::{Extensions, HeaderMap, HeaderValue, Request};
use tollgate_core::clock::SharedClock;
use tollgate_core::future::OnResponse;
use tollgate_core::problem::{Problem, ProblemResponder, types};
use tollgate_core::pseudonym::{Domain, KeyedDigest, Pseudonymizer};
use tollgate_core::span::record_current;
use tollgate_core::store::{FailurePolicy, StoreError};
use tollgate_core::{CarryExt, ClientConfig, Principal, RouteMap, fields};
use tower::Service;
use tracing::Span;

use crate::config::Mode;
use crate::future::ResponseFuture;
use crate::gcra::Decision;
use crate::policy::{Policy, Rule, Tiers};
use crate::status::{Outcome, RateLimitStatus};
use crate::store::SharedRateLimitStore;

/// A custom key: given the request's headers and extensions (tollgate's values in
/// them are read with [`tollgate_core::CarryExt`]), the digest to count the
/// request under, or `None` for the default key.
pub(crate) type KeyFn = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<KeyedDigest> + Send + Sync>;

/// Everything the service reads per request, built once by the builder.
pub(crate) struct Shared {
    pub(crate) tiers: Tiers,
    pub(crate) routes: RouteMap<Arc<Rule>>,
    pub(crate) on_store_failure: FailurePolicy,
    pub(crate) store: SharedRateLimitStore,
    pub(crate) clock: SharedClock,
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) client: ClientConfig,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) responder: ProblemResponder,
    pub(crate) warned: Warned,
}

/// Warnings given once, or at most so often.
#[derive(Default)]
pub(crate) struct Warned {
    tiers: Mutex<HashSet<Box<str>>>,
    unkeyed: AtomicBool,
    store_error_at: AtomicU64,
}

/// The most distinct unknown tier names warned about (each once).
const MAX_WARNED_TIERS: usize = 64;

/// The service of [`RateLimitLayer`](crate::RateLimitLayer).
pub struct RateLimitService<S> {
    inner: S,
    /// The layer's state behind one `Arc`: axum may make a service per request.
    shared: Arc<Shared>,
}

impl<S> RateLimitService<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        RateLimitService { inner, shared }
    }
}

impl<S: Clone> Clone for RateLimitService<S> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// What the decision means for the request.
enum Verdict {
    /// Answer now.
    Early(Response),
    /// Go on; stamp this status onto the response.
    Continue(Option<RateLimitStatus>),
}

impl Shared {
    fn tier(&self, principal: &Principal) -> &Arc<Policy> {
        let name = principal.tier().as_str();
        if let Some(policy) = self.tiers.get(name) {
            return policy;
        }
        let mut warned = self.warned.tiers.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < MAX_WARNED_TIERS && !warned.contains(name) {
            warned.insert(name.into());
            tracing::warn!(
                tier = name,
                default = &*self.tiers.default.tier,
                "ratelimit: unknown tier; using the default tier (logged once per tier name)"
            );
        }
        &self.tiers.default
    }

    /// The digest to count the request under: a custom key, the principal's subject,
    /// or the client's coarsened network resolved as every layer resolves it.
    fn key(
        &self,
        headers: &HeaderMap,
        ext: &Extensions,
        principal: Option<&Principal>,
    ) -> Option<KeyedDigest> {
        if let Some(f) = &self.key_fn
            && let Some(d) = f(headers, ext)
        {
            return Some(d);
        }
        if let Some(p) = principal {
            return Some(p.subject_key());
        }
        let network = self.client.resolve(ext, headers, &self.pseudonymizer)?.network();
        let (bytes, len) = network.to_bytes();
        Some(self.pseudonymizer.digest(Domain::NETWORK, &bytes[..len]))
    }

    /// Turns the store's answer into a verdict; records the span fields and inserts
    /// the status into the request.
    fn conclude(
        &self,
        ext: &mut Extensions,
        result: Result<Decision, StoreError>,
        policy: &Arc<Policy>,
        mode: Mode,
    ) -> Verdict {
        let decision = match result {
            Ok(d) => d,
            Err(e) => return self.store_failed(e),
        };
        let Some(index) = decision.tightest() else {
            return Verdict::Continue(None);
        };
        let cell = decision.cells()[index];
        let outcome = match (decision.allowed(), mode) {
            (true, _) => Outcome::Allowed,
            (false, Mode::Enforce) => Outcome::Denied,
            (false, Mode::ReportOnly) => Outcome::WouldDeny,
        };
        let status = RateLimitStatus {
            policy: policy.clone(),
            index: index as u8,
            outcome,
            remaining: cell.remaining,
            reset_nanos: cell.reset,
            retry_after_nanos: decision.retry_after(),
        };
        record_current([
            (fields::RATELIMIT_POLICY, &status.policy()),
            (fields::RATELIMIT_OUTCOME, &outcome.as_str()),
            (fields::RATELIMIT_REMAINING, &cell.remaining),
        ]);

        if outcome == Outcome::Denied {
            let problem = Problem::new(types::RATE_LIMITED).with_detail(limit_detail(&status));
            let mut response = self.responder.respond(problem);
            // Set after the responder, so a custom error shape keeps them too.
            let h = response.headers_mut();
            h.insert(RETRY_AFTER, status.retry_after_header());
            h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            status.on_response(&mut response);
            return Verdict::Early(response);
        }
        ext.insert(status.clone());
        Verdict::Continue(Some(status))
    }

    fn store_failed(&self, error: StoreError) -> Verdict {
        // At most one warning every ten seconds while the store is down.
        let now = self.clock.now().as_nanos();
        let last = self.warned.store_error_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000_000_000
            && self
                .warned
                .store_error_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %error, policy = ?self.on_store_failure, "ratelimit: store failed");
        }
        match self.on_store_failure {
            FailurePolicy::Open => Verdict::Continue(None),
            FailurePolicy::Closed => Verdict::Early(self.responder.respond(
                Problem::new(types::UNAVAILABLE).with_detail("the rate-limit store is unavailable"),
            )),
        }
    }

    fn warn_unkeyed(&self) {
        if !self.warned.unkeyed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "ratelimit: an anonymous request carried neither ClientContext nor ConnectInfo, so it was not \
                 rate limited; wrap the router in PrivacyTraceLayer or serve with into_make_service_with_connect_info"
            );
        }
    }
}

fn limit_detail(status: &RateLimitStatus) -> String {
    let mut out = String::from("the limit \"");
    out.push_str(status.limit_name());
    out.push_str("\" of ");
    out.push_str(status.tier());
    out.push_str(" is reached");
    out
}

impl<S, B> Service<Request<B>> for RateLimitService<S>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
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
        let rule = shared.routes.get_for(&req);
        if rule.exempt {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        let principal = req.extensions().carried::<Principal>();
        let policy = match &rule.policy {
            Some(p) => p,
            None => match principal {
                Some(p) => shared.tier(p),
                None => &shared.tiers.anonymous,
            },
        };
        let mode = rule.mode.unwrap_or(policy.mode);
        let cost = rule.cost;
        let Some(digest) = shared.key(req.headers(), req.extensions(), principal) else {
            shared.warn_unkeyed();
            return ResponseFuture::inner(self.inner.call(req), None);
        };
        let key = policy.key.with_digest(digest);
        let now = shared.clock.now();

        if let Some(result) = shared.store.check_and_spend_now(&key, &policy.limits, cost, now) {
            return match shared.conclude(req.extensions_mut(), result, policy, mode) {
                Verdict::Early(response) => ResponseFuture::ready(response),
                Verdict::Continue(status) => ResponseFuture::inner(self.inner.call(req), status),
            };
        }

        // A store that must be awaited (Redis): one boxed future.
        let policy = policy.clone();
        let shared = self.shared.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = Span::current();
        ResponseFuture::boxed(Box::pin(async move {
            let result = shared
                .store
                .check_and_spend(&key, &policy.limits, cost, now)
                .await;
            let verdict = span.in_scope(|| shared.conclude(req.extensions_mut(), result, &policy, mode));
            match verdict {
                Verdict::Early(response) => Ok(response),
                Verdict::Continue(status) => {
                    let mut response = inner.call(req).await?;
                    status.on_response(&mut response);
                    Ok(response)
                }
            }
        }))
    }
}
