//! [`RateLimitLayer`] and its service.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::{ConnectInfo, MatchedPath};
use axum::response::Response;
use http::header::{CACHE_CONTROL, RETRY_AFTER};
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Request};
use pin_project_lite::pin_project;
use tollgate_core::clock::{SharedClock, system_clock};
use tollgate_core::coarsen::Coarsening;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::problem::{Problem, ProblemResponder, types};
use tollgate_core::pseudonym::{Domain, KeyedDigest, Pseudonymizer};
use tollgate_core::store::{FailurePolicy, StoreError};
use tollgate_core::{ClientContext, Principal, fields};
use tower::{Layer, Service};
use tracing::Span;

use crate::config::{
    ConfigError, LimitConfig, Mode, RateLimitConfig, build_limits, invalid, scope_from_template, valid_name,
};
use crate::gcra::{Decision, Limit};
use crate::span::record_current;
use crate::status::{NamedLimit, Outcome, Policy, RateLimitStatus};
use crate::store::{MemoryRateLimitStore, RateLimitKey, RateLimitStore};

/// A custom key: given the request's headers and extensions, the digest to count the
/// request under, or `None` for the default key. Build digests with a
/// [`Pseudonymizer`], never from raw identifiers.
pub type KeyFn = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<KeyedDigest> + Send + Sync>;

/// A per-route override set in request extensions by an outer layer or middleware.
///
/// A route's own `route_layer` runs after the outer layers, so to exempt a route
/// from a `Router::layer(RateLimitLayer)` use the layer's `routes` map instead, or
/// insert this extension before the rate-limit layer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RateLimitOverride {
    /// No rate limit for this request.
    Exempt,
    /// Apply the configured route rule with this template (a key of `routes`).
    Route(&'static str),
}

#[derive(Debug)]
struct Rule {
    exempt: bool,
    policy: Option<Arc<Policy>>,
    cost: u64,
    mode: Option<Mode>,
}

static NO_RULE: Rule = Rule {
    exempt: false,
    policy: None,
    cost: 1,
    mode: None,
};

static EXEMPT: Rule = Rule {
    exempt: true,
    policy: None,
    cost: 1,
    mode: None,
};

#[derive(Clone)]
struct Shared {
    /// By name, sorted: a binary search over a few names beats hashing the name.
    tiers: Box<[(Box<str>, Arc<Policy>)]>,
    default: Arc<Policy>,
    anonymous: Arc<Policy>,
    routes: HashMap<Box<str>, Arc<Rule>>,
    headers: bool,
    on_store_failure: FailurePolicy,
    clock: SharedClock,
    pseudonymizer: Pseudonymizer,
    key_fn: Option<KeyFn>,
    responder: ProblemResponder,
    warned: Arc<Warned>,
}

#[derive(Default)]
struct Warned {
    tiers: Mutex<HashSet<Box<str>>>,
    unkeyed: AtomicU64,
    store_error_at: AtomicU64,
}

/// The most distinct unknown tier names warned about (each once).
const MAX_WARNED_TIERS: usize = 64;

/// Tiered GCRA rate limiting.
///
/// Each request is counted under a key: the principal's stable subject digest when
/// authenticated, the digest of the client's coarsened network (`/24`, `/48`) when
/// anonymous, or a custom key. The key's tier (the principal's, or the anonymous
/// tier) gives one to four stacked limits, all checked before any is spent. Routes
/// can be exempt, cost more, or have their own limits under a key of their own.
///
/// On a refusal the answer is 429 problem+json with `Retry-After`; every response
/// carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10)
/// unless headers are switched off. A [`RateLimitStatus`] goes into the request and
/// response extensions, and `ratelimit.policy`, `ratelimit.outcome` and
/// `ratelimit.remaining` into the current span.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use axum::{Router, routing::get, body::Body};
/// use http::Request;
/// use tower::ServiceExt;
/// use tollgate_core::{CredentialKind, Principal, Pseudonymizer, PseudonymSecret, Tier};
/// use tollgate_ratelimit::{LimitConfig, RateLimitConfig, RateLimitLayer};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let config = RateLimitConfig::default()
///     .tier("free", [LimitConfig::new("burst", 2, Duration::from_secs(60))]);
/// let app = Router::new().route("/", get(|| async { "ok" })).layer(RateLimitLayer::new(&config, p.clone()).unwrap());
///
/// let principal = Principal::new(&p, CredentialKind::ApiKey, "alice", b"k1").with_tier(Tier::new("free"));
/// let call = || {
///     let mut req = Request::get("/").body(Body::empty()).unwrap();
///     req.extensions_mut().insert(principal.clone());
///     app.clone().oneshot(req)
/// };
/// assert_eq!(call().await.unwrap().headers()["ratelimit"], "\"burst\";r=1;t=30");
/// assert_eq!(call().await.unwrap().status(), 200);
/// let refused = call().await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert_eq!(refused.headers()["retry-after"], "30");
/// assert_eq!(refused.headers()["ratelimit-policy"], "\"burst\";q=2;w=60");
/// # });
/// ```
pub struct RateLimitLayer<St = MemoryRateLimitStore> {
    /// Everything behind one `Arc`: axum may clone the layer and make its service for
    /// every request, and each `Arc` is an atomic increment and decrement.
    inner: Arc<Parts<St>>,
}

#[derive(Clone)]
struct Parts<St> {
    shared: Arc<Shared>,
    store: St,
}

impl<St> Clone for RateLimitLayer<St> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            inner: self.inner.clone(),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for RateLimitLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Parts { shared, store } = &*self.inner;
        let tiers: Vec<&str> = shared.tiers.iter().map(|(k, _)| &**k).collect();
        f.debug_struct("RateLimitLayer")
            .field("tiers", &tiers)
            .field("routes", &shared.routes.len())
            .field("headers", &shared.headers)
            .field("store", store)
            .finish()
    }
}

fn policy(
    tier: &str,
    scope: Option<&str>,
    limits: &[LimitConfig],
    mode: Mode,
    at: &str,
) -> Result<Policy, ConfigError> {
    let built = build_limits(at, limits)?;
    let named: Vec<NamedLimit> = limits
        .iter()
        .zip(&built)
        .map(|(c, l)| NamedLimit {
            name: c.name.as_str().into(),
            span_name: format!("{tier}/{}", c.name).into(),
            limit: *l,
        })
        .collect();
    let header = named
        .iter()
        .map(|n| {
            format!(
                "\"{}\";q={};w={}",
                n.name,
                n.limit.burst(),
                n.limit.capacity_secs()
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let placeholder = KeyedDigest::from_hex("00000000000000000000000000000000").expect("valid hex");
    let key = match scope {
        None => RateLimitKey::new(placeholder),
        Some(s) => {
            RateLimitKey::scoped(s, placeholder).map_err(|e| invalid(format!("{at}.scope"), e.to_string()))?
        }
    };
    Ok(Policy {
        tier: tier.into(),
        limits: built,
        named,
        policy_header: HeaderValue::from_str(&header).expect("names are token characters"),
        key,
        mode,
    })
}

impl RateLimitLayer<MemoryRateLimitStore> {
    /// A layer from its configuration, on the in-process store sized by
    /// `max_entries`. `pseudonymizer` keys anonymous traffic by network.
    ///
    /// Fails, naming the setting, on an invalid limit, an unknown default or
    /// anonymous tier, or clashing route scopes.
    pub fn new(config: &RateLimitConfig, pseudonymizer: Pseudonymizer) -> Result<Self, ConfigError> {
        if config.max_entries == 0 {
            return Err(invalid("max_entries", "must be at least 1"));
        }
        let store = MemoryRateLimitStore::new(config.max_entries);
        Self::with_store(config, pseudonymizer, store)
    }
}

impl<St: RateLimitStore> RateLimitLayer<St> {
    /// A layer from its configuration on the given store (for example a Redis store
    /// shared by replicas).
    pub fn with_store(
        config: &RateLimitConfig,
        pseudonymizer: Pseudonymizer,
        store: St,
    ) -> Result<Self, ConfigError> {
        let mut tiers = HashMap::new();
        for (name, tier) in &config.tiers {
            if !valid_name(name, 32) {
                return Err(invalid(
                    format!("tiers.{name}"),
                    "a tier name is 1 to 32 of a-z 0-9 - _ .",
                ));
            }
            let at = format!("tiers.{name}");
            let p = policy(name, None, &tier.limits, tier.mode.unwrap_or(config.mode), &at)?;
            tiers.insert(Box::<str>::from(name.as_str()), Arc::new(p));
        }
        let find = |name: &str, setting: &str| {
            tiers
                .get(name)
                .cloned()
                .ok_or_else(|| invalid(setting, format!("{name:?} names no tier in ratelimit.tiers")))
        };
        let default = find(&config.default_tier, "default_tier")?;
        let anonymous = find(&config.anonymous_tier, "anonymous_tier")?;

        let mut routes = HashMap::new();
        let mut scopes: HashMap<String, &str> = HashMap::new();
        for (template, route) in &config.routes {
            let at = format!("routes.{template:?}");
            if !template.starts_with('/') {
                return Err(invalid(at, "a route is a template starting with '/'"));
            }
            if route.exempt && (!route.limits.is_empty() || route.cost.is_some() || route.mode.is_some()) {
                return Err(invalid(at, "an exempt route takes no limits, cost or mode"));
            }
            if route.cost == Some(0) {
                return Err(invalid(format!("{at}.cost"), "cost must be at least 1"));
            }
            let policy = if route.limits.is_empty() {
                if route.scope.is_some() {
                    return Err(invalid(
                        format!("{at}.scope"),
                        "a scope needs the route's own limits",
                    ));
                }
                None
            } else {
                let scope = route
                    .scope
                    .clone()
                    .unwrap_or_else(|| scope_from_template(template));
                if let Some(other) = scopes.insert(scope.clone(), template) {
                    return Err(invalid(
                        format!("{at}.scope"),
                        format!("scope {scope:?} is also used by route {other:?}; set a distinct `scope`"),
                    ));
                }
                let mode = route.mode.unwrap_or(config.mode);
                let tier = format!("route:{scope}");
                Some(Arc::new(policy(&tier, Some(&scope), &route.limits, mode, &at)?))
            };
            let cost = route.cost.unwrap_or(1);
            let applies: Vec<&Arc<Policy>> = match &policy {
                Some(p) => vec![p],
                // In configuration order, so the error names the same tier every time.
                None => config
                    .tiers
                    .keys()
                    .filter_map(|k| tiers.get(k.as_str()))
                    .collect(),
            };
            for p in applies {
                if let Some(l) = p.named.iter().find(|l| l.limit.burst() < cost) {
                    return Err(invalid(
                        format!("{at}.cost"),
                        format!(
                            "cost {cost} exceeds the burst {} of {}, so no request could pass",
                            l.limit.burst(),
                            l.span_name
                        ),
                    ));
                }
            }
            let rule = Rule {
                exempt: route.exempt,
                policy,
                cost,
                mode: route.mode,
            };
            routes.insert(Box::<str>::from(template.as_str()), Arc::new(rule));
        }

        let mut tiers: Vec<(Box<str>, Arc<Policy>)> = tiers.into_iter().collect();
        tiers.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let shared = Arc::new(Shared {
            tiers: tiers.into(),
            default,
            anonymous,
            routes,
            headers: config.headers,
            on_store_failure: config.on_store_failure,
            clock: system_clock(),
            pseudonymizer,
            key_fn: None,
            responder: ProblemResponder::default(),
            warned: Arc::default(),
        });
        Ok(RateLimitLayer {
            inner: Arc::new(Parts { shared, store }),
        })
    }

    fn edit(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        f(Arc::make_mut(&mut Arc::make_mut(&mut self.inner).shared));
        self
    }

    /// Uses this clock (a [`tollgate_core::FakeClock`] in tests).
    pub fn clock(self, clock: SharedClock) -> Self {
        self.edit(|s| s.clock = clock)
    }

    /// Counts requests under a custom key when `f` returns one.
    pub fn key_fn(
        self,
        f: impl Fn(&HeaderMap, &Extensions) -> Option<KeyedDigest> + Send + Sync + 'static,
    ) -> Self {
        self.edit(|s| s.key_fn = Some(Arc::new(f)))
    }

    /// Answers refusals with this responder instead of problem+json.
    pub fn responder(self, responder: ProblemResponder) -> Self {
        self.edit(|s| s.responder = responder)
    }

    /// Switches the `RateLimit-Policy` and `RateLimit` headers on or off.
    pub fn headers(self, on: bool) -> Self {
        self.edit(|s| s.headers = on)
    }

    /// What to do when the store fails.
    pub fn on_store_failure(self, policy: FailurePolicy) -> Self {
        self.edit(|s| s.on_store_failure = policy)
    }

    /// Moves the layer onto another store.
    pub fn store<St2: RateLimitStore>(self, store: St2) -> RateLimitLayer<St2> {
        RateLimitLayer {
            inner: Arc::new(Parts {
                shared: self.inner.shared.clone(),
                store,
            }),
        }
    }

    /// The store.
    pub fn store_ref(&self) -> &St {
        &self.inner.store
    }

    /// Every field this layer logs, stores, or sends.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        const LAYER: &str = "ratelimit";
        let policies = self.inner.shared.tiers.iter().map(|(_, p)| p).chain(
            self.inner
                .shared
                .routes
                .values()
                .filter_map(|r| r.policy.as_ref()),
        );
        let longest = policies
            .flat_map(|p| p.limits.iter().map(Limit::capacity))
            .max()
            .unwrap_or(0);
        let span = |name, purpose| FieldSpec {
            name,
            layer: LAYER,
            derived_from: "the rate-limit decision",
            protection: Protection::NotPersonal,
            purpose,
            retention: Retention::LogPipeline,
            sinks: &[Sink::Span],
        };
        vec![
            span(
                fields::RATELIMIT_POLICY,
                "which tier and limit was closest to refusing",
            ),
            span(
                fields::RATELIMIT_OUTCOME,
                "allowed, denied, or would_deny in report-only mode",
            ),
            span(fields::RATELIMIT_REMAINING, "requests left under that limit"),
            FieldSpec {
                name: "tollgate:rl:{digest}",
                layer: LAYER,
                derived_from: "the principal's subject digest, the client's coarsened network digest, or a custom key digest; scoped per route with own limits",
                protection: Protection::KeyedDigest,
                purpose: "one theoretical arrival time per limit, to count requests",
                retention: Retention::ttl(Duration::from_nanos(longest)),
                sinks: &[Sink::Store],
            },
            FieldSpec {
                name: "RateLimitStatus",
                layer: LAYER,
                derived_from: "the rate-limit decision",
                protection: Protection::NotPersonal,
                purpose: "lets later layers (anomaly) see the verdict",
                retention: Retention::Request,
                sinks: &[Sink::Extension],
            },
            FieldSpec {
                name: "RateLimit-Policy, RateLimit, Retry-After",
                layer: LAYER,
                derived_from: "the tier's limits and the caller's remaining quota",
                protection: Protection::NotPersonal,
                purpose: "tells the caller its quota (draft-ietf-httpapi-ratelimit-headers-10, RFC 6585)",
                retention: Retention::Request,
                sinks: &[Sink::ResponseHeader],
            },
        ]
    }
}

impl<S, St> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimitService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            layer: self.inner.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
pub struct RateLimitService<S, St = MemoryRateLimitStore> {
    inner: S,
    /// The layer's parts behind one `Arc`: the service is cloned for every request.
    layer: Arc<Parts<St>>,
}

impl<S: Clone, St> Clone for RateLimitService<S, St> {
    fn clone(&self) -> Self {
        RateLimitService {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for RateLimitService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("store", &self.layer.store)
            .finish_non_exhaustive()
    }
}

/// What the decision means for the request.
enum Verdict {
    /// Answer now.
    Early(Response),
    /// Go on; add these headers and this status to the response.
    Continue(Option<Stamp>),
}

/// What goes onto the response: the status, and whether to write its headers.
struct Stamp {
    status: RateLimitStatus,
    headers: bool,
}

impl Shared {
    fn rule<'a>(&'a self, ext: &Extensions) -> &'a Rule {
        if let Some(o) = ext.get::<RateLimitOverride>() {
            return match o {
                RateLimitOverride::Exempt => &EXEMPT,
                RateLimitOverride::Route(t) => self.routes.get(*t).map_or(&NO_RULE, |r| r),
            };
        }
        if self.routes.is_empty() {
            return &NO_RULE;
        }
        match ext.get::<MatchedPath>() {
            Some(path) => self.routes.get(path.as_str()).map_or(&NO_RULE, |r| r),
            None => &NO_RULE,
        }
    }

    fn tier(&self, principal: &Principal) -> &Arc<Policy> {
        let name = principal.tier().as_str();
        if let Ok(i) = self.tiers.binary_search_by(|(k, _)| (**k).cmp(name)) {
            return &self.tiers[i].1;
        }
        let mut warned = self.warned.tiers.lock().unwrap_or_else(|e| e.into_inner());
        if warned.len() < MAX_WARNED_TIERS && !warned.contains(name) {
            warned.insert(name.into());
            tracing::warn!(
                tier = name,
                default = &*self.default.tier,
                "ratelimit: unknown tier; using the default tier (logged once per tier name)"
            );
        }
        &self.default
    }

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
        let network = match ext.get::<ClientContext>() {
            Some(c) => c.network(),
            None => Coarsening::default().network(ext.get::<ConnectInfo<SocketAddr>>()?.0.ip()),
        };
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
            if self.headers {
                h.insert(POLICY_NAME, status.policy_header());
                h.insert(RATELIMIT_NAME, status.ratelimit_header());
            }
            response.extensions_mut().insert(status);
            return Verdict::Early(response);
        }
        ext.insert(status.clone());
        Verdict::Continue(Some(Stamp {
            status,
            headers: self.headers,
        }))
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
        if self.warned.unkeyed.swap(1, Ordering::Relaxed) == 0 {
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

fn stamp(response: &mut Response, stamp: Option<Stamp>) {
    if let Some(stamp) = stamp {
        let Stamp { status, headers } = stamp;
        if headers {
            let h = response.headers_mut();
            h.insert(POLICY_NAME, status.policy_header());
            h.insert(RATELIMIT_NAME, status.ratelimit_header());
        }
        response.extensions_mut().insert(status);
    }
}

/// The header names as constants: each use is a ready value, not a clone of the statics.
const POLICY_NAME: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT_NAME: HeaderName = HeaderName::from_static("ratelimit");

type BoxFuture<E> = Pin<Box<dyn Future<Output = Result<Response, E>> + Send>>;

impl<S, B, St> Service<Request<B>> for RateLimitService<S, St>
where
    S: Service<Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    St: RateLimitStore,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let shared = &*self.layer.shared;
        let rule = shared.rule(req.extensions());
        if rule.exempt {
            return ResponseFuture::inner(self.inner.call(req), None);
        }
        let principal = req.extensions().get::<Principal>();
        let policy = match &rule.policy {
            Some(p) => p,
            None => match principal {
                Some(p) => shared.tier(p),
                None => &shared.anonymous,
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

        if let Some(result) = self
            .layer
            .store
            .check_and_spend_now(&key, &policy.limits, cost, now)
        {
            return match shared.conclude(req.extensions_mut(), result, policy, mode) {
                Verdict::Early(response) => ResponseFuture::ready(response),
                Verdict::Continue(stamp) => ResponseFuture::inner(self.inner.call(req), stamp),
            };
        }

        // A store that must be awaited (Redis): one boxed future.
        let policy = policy.clone();
        let shared = self.layer.shared.clone();
        let store = self.layer.store.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = Span::current();
        ResponseFuture::boxed(Box::pin(async move {
            let result = store
                .check_and_spend(&key.store_key(), &policy.limits, cost, now)
                .await;
            let verdict = span.in_scope(|| shared.conclude(req.extensions_mut(), result, &policy, mode));
            match verdict {
                Verdict::Early(response) => Ok(response),
                Verdict::Continue(s) => {
                    let mut response = inner.call(req).await?;
                    stamp(&mut response, s);
                    Ok(response)
                }
            }
        }))
    }
}

pin_project! {
    /// The response future of [`RateLimitService`].
    pub struct ResponseFuture<F, E> {
        #[pin]
        kind: Kind<F, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, E> {
        Inner { #[pin] fut: F, stamp: Option<Stamp> },
        Ready { response: Option<Response> },
        Boxed { fut: BoxFuture<E> },
    }
}

impl<F, E> ResponseFuture<F, E> {
    fn inner(fut: F, stamp: Option<Stamp>) -> Self {
        ResponseFuture {
            kind: Kind::Inner { fut, stamp },
        }
    }

    fn ready(response: Response) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    fn boxed(fut: BoxFuture<E>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { fut },
        }
    }
}

impl<F, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

impl<F, E> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut, stamp: s } => {
                let mut response = ready!(fut.poll(cx))?;
                stamp(&mut response, s.take());
                Poll::Ready(Ok(response))
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{RATELIMIT, RATELIMIT_POLICY};

    #[test]
    fn header_name_constants_are_the_public_names() {
        assert_eq!(POLICY_NAME, RATELIMIT_POLICY);
        assert_eq!(RATELIMIT_NAME, RATELIMIT);
    }
}
