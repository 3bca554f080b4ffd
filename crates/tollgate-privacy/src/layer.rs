//! [`PrivacyTraceLayer`]: the outermost layer, which opens the request span.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath};
use http::{HeaderName, Request, Response};
use pin_project_lite::pin_project;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::{ClientConfig, Pseudonymizer, fields};
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;

use crate::config::{LogProfile, PrivacyConfig, PrivacyConfigError, allowed_header};
use crate::trace_id::TraceId;

/// The `target` of request spans and their completion events.
pub const TARGET: &str = "tollgate::request";
/// The route recorded when no route matched: the raw path is never logged.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
/// Longest header value logged; longer values are cut.
const MAX_HEADER_VALUE: usize = 64;

#[derive(Clone, Debug)]
struct Config {
    pseudonymizer: Pseudonymizer,
    client: ClientConfig,
    log_headers: Vec<HeaderName>,
    default_profile: LogProfile,
    routes: HashMap<String, LogProfile>,
}

/// Opens one span per request, with every field of [`fields::ALL`] declared so the
/// layers inside can record into it, and emits one completion event per request.
///
/// It logs the route template (never the raw path, never the query string), the
/// pseudonym of the client's coarsened network, a W3C trace id, status and latency;
/// request headers only from an allowlist. It inserts [`tollgate_core::ClientContext`]
/// and [`TraceId`] into request extensions.
///
/// Serve the router with `into_make_service_with_connect_info::<SocketAddr>()` so the
/// layer can see the peer address.
///
/// ```
/// use axum::{Router, routing::get};
/// use tollgate_core::{Pseudonymizer, PseudonymSecret};
/// use tollgate_privacy::{LogProfile, PrivacyTraceLayer};
///
/// let secret = PseudonymSecret::from_bytes(&[42; 32]).unwrap();
/// let pseudonymizer = Pseudonymizer::new(secret, std::time::Duration::from_secs(86_400));
/// let app: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .route("/v1/items/{id}", get(|| async { "item" }))
///     .layer(PrivacyTraceLayer::new(pseudonymizer).route_profile("/health", LogProfile::Minimal));
/// ```
#[derive(Clone, Debug)]
pub struct PrivacyTraceLayer {
    config: Arc<Config>,
}

impl PrivacyTraceLayer {
    /// A layer with the default configuration: no trusted proxies, IPv4 /24 and IPv6
    /// /48 coarsening, no headers logged, every route on [`LogProfile::Full`].
    pub fn new(pseudonymizer: Pseudonymizer) -> Self {
        PrivacyTraceLayer {
            config: Arc::new(Config {
                pseudonymizer,
                client: ClientConfig::default(),
                log_headers: Vec::new(),
                default_profile: LogProfile::Full,
                routes: HashMap::new(),
            }),
        }
    }

    /// A layer from its configuration section.
    pub fn from_config(
        config: &PrivacyConfig,
        pseudonymizer: Pseudonymizer,
    ) -> Result<Self, PrivacyConfigError> {
        let mut layer = PrivacyTraceLayer::new(pseudonymizer)
            .client_config(config.client.clone())
            .default_profile(config.default_profile)
            .log_headers(config.log_headers.iter().map(String::as_str))?;
        for (route, profile) in &config.routes {
            layer = layer.route_profile(route, *profile);
        }
        Ok(layer)
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Resolves and coarsens client addresses this way.
    pub fn client_config(mut self, client: ClientConfig) -> Self {
        self.config_mut().client = client;
        self
    }

    /// Logs these request headers' values. Refuses headers that carry identifiers.
    pub fn log_headers<'a>(
        mut self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PrivacyConfigError> {
        let headers = names
            .into_iter()
            .map(allowed_header)
            .collect::<Result<Vec<_>, _>>()?;
        self.config_mut().log_headers = headers;
        Ok(self)
    }

    /// The profile of routes with no profile of their own.
    pub fn default_profile(mut self, profile: LogProfile) -> Self {
        self.config_mut().default_profile = profile;
        self
    }

    /// The profile of one route template, such as `/health`.
    pub fn route_profile(mut self, route: &str, profile: LogProfile) -> Self {
        self.config_mut().routes.insert(route.to_string(), profile);
        self
    }

    /// The fields this layer writes, for the data inventory.
    pub fn inventory(&self) -> Vec<FieldSpec> {
        inventory(!self.config.log_headers.is_empty())
    }
}

impl<S> Layer<S> for PrivacyTraceLayer {
    type Service = PrivacyTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PrivacyTrace {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service made by [`PrivacyTraceLayer`].
#[derive(Clone, Debug)]
pub struct PrivacyTrace<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PrivacyTrace<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        let config = &*self.config;
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let profile = match route {
            Some(r) if !config.routes.is_empty() => {
                config.routes.get(r).copied().unwrap_or(config.default_profile)
            }
            _ => config.default_profile,
        };
        let trace_id = TraceId::from_headers_or_new(req.headers());
        let span = open_span(
            profile,
            req.method().as_str(),
            route.unwrap_or(UNMATCHED_ROUTE),
            trace_id,
        );

        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(peer) = peer {
            let client = config.client.context(peer, req.headers(), &config.pseudonymizer);
            if profile == LogProfile::Full {
                span.record(
                    fields::CLIENT_NETWORK,
                    client.network_pseudonym().to_hex().as_str(),
                );
            }
            req.extensions_mut().insert(client);
        }
        if profile == LogProfile::Full && !config.log_headers.is_empty() {
            span.record(
                fields::HEADERS,
                allowlisted_headers(&config.log_headers, req.headers()).as_str(),
            );
        }
        req.extensions_mut().insert(trace_id);

        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture {
            inner,
            span,
            start,
            emit: profile != LogProfile::Off,
        }
    }
}

fn open_span(profile: LogProfile, method: &str, route: &str, trace_id: TraceId) -> Span {
    let trace_id = trace_id.to_hex();
    // One callsite per profile: a span can only carry fields its callsite declares,
    // so the minimal profile cannot leak what it does not declare.
    match profile {
        LogProfile::Full => tracing::info_span!(
            target: TARGET,
            "request",
            http.method = method,
            http.route = route,
            http.status = Empty,
            latency_us = Empty,
            trace_id = trace_id.as_str(),
            client.network = Empty,
            http.headers = Empty,
            principal = Empty,
            credential = Empty,
            tier = Empty,
            auth.error = Empty,
            session = Empty,
            session.health = Empty,
            session.reasons = Empty,
            session.action = Empty,
            ratelimit.policy = Empty,
            ratelimit.outcome = Empty,
            ratelimit.remaining = Empty,
            anomaly = Empty,
        ),
        LogProfile::Minimal => tracing::info_span!(
            target: TARGET,
            "request",
            http.method = method,
            http.route = route,
            http.status = Empty,
            latency_us = Empty,
            trace_id = trace_id.as_str(),
        ),
        LogProfile::Off => Span::none(),
    }
}

/// `name=value` pairs of the allowlisted headers present, values cut to printable ASCII.
fn allowlisted_headers(allow: &[HeaderName], headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for name in allow {
        for value in headers.get_all(name) {
            let text: String = value
                .as_bytes()
                .iter()
                .take(MAX_HEADER_VALUE)
                .map(|b| {
                    if b.is_ascii_graphic() || *b == b' ' {
                        *b as char
                    } else {
                        '?'
                    }
                })
                .collect();
            if !out.is_empty() {
                out.push(' ');
            }
            let _ = write!(out, "{}={}", name.as_str(), text);
        }
    }
    out
}

pin_project! {
    /// The response future of [`PrivacyTrace`]: records status and latency and emits
    /// the completion event when the response head is ready.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        start: Instant,
        emit: bool,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let span: &Span = this.span;
        let _entered = span.enter();
        let result = ready!(this.inner.poll(cx));
        if *this.emit {
            let latency = u64::try_from(this.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            record_completion(span, status, latency);
            tracing::info!(target: TARGET, parent: span, "request completed");
        }
        Poll::Ready(result)
    }
}

/// Records status and latency with one call to the subscriber instead of two.
fn record_completion(span: &Span, status: Option<u16>, latency_us: u64) {
    let Some(metadata) = span.metadata() else { return };
    let names = metadata.fields();
    let (Some(status_field), Some(latency_field)) =
        (names.field(fields::STATUS), names.field(fields::LATENCY_US))
    else {
        return;
    };
    let status = status.map(u64::from);
    let values: [(&tracing::field::Field, Option<&dyn tracing::Value>); 2] = [
        (&status_field, status.as_ref().map(|s| s as &dyn tracing::Value)),
        (&latency_field, Some(&latency_us)),
    ];
    span.record_all(&names.value_set(&values));
}

/// The fields [`PrivacyTraceLayer`] writes, plus the log line's envelope.
fn inventory(logs_headers: bool) -> Vec<FieldSpec> {
    const LAYER: &str = "privacy";
    let span = |name, derived_from, protection, purpose| FieldSpec {
        name,
        layer: LAYER,
        derived_from,
        protection,
        purpose,
        retention: Retention::LogPipeline,
        sinks: &[Sink::Span],
    };
    let mut out = vec![
        span(
            fields::METHOD,
            "the request method",
            Protection::NotPersonal,
            "which operation was called",
        ),
        span(
            fields::ROUTE,
            "the matched route template; never the raw path or query",
            Protection::NotPersonal,
            "which endpoint was called",
        ),
        span(
            fields::STATUS,
            "the response status",
            Protection::NotPersonal,
            "outcome of the request",
        ),
        span(
            fields::LATENCY_US,
            "time to the response head",
            Protection::NotPersonal,
            "performance monitoring",
        ),
        span(
            fields::TRACE_ID,
            "the incoming W3C traceparent, or random",
            Protection::NotPersonal,
            "correlating one request across services",
        ),
        span(
            fields::CLIENT_NETWORK,
            "the client address (through trusted proxies only), coarsened to IPv4 /24 or IPv6 /48, then pseudonymized",
            Protection::Pseudonym,
            "telling networks apart within one epoch for abuse handling, without addresses",
        ),
        span(
            "timestamp",
            "the time the line was written, to the minute",
            Protection::Coarsened,
            "when it happened, to the minute",
        ),
        span(
            "level",
            "the event level",
            Protection::NotPersonal,
            "log envelope",
        ),
        span(
            "target",
            "the emitting module",
            Protection::NotPersonal,
            "log envelope",
        ),
        span(
            "message",
            "the fixed text `request completed`",
            Protection::NotPersonal,
            "log envelope",
        ),
        span(
            "name",
            "the span name `request`",
            Protection::NotPersonal,
            "log envelope",
        ),
        FieldSpec {
            name: "ClientContext",
            layer: LAYER,
            derived_from: "the client address, coarsened, and its pseudonym",
            protection: Protection::Coarsened,
            purpose: "handing the client's network to the layers inside",
            retention: Retention::Request,
            sinks: &[Sink::Extension],
        },
    ];
    if logs_headers {
        out.push(span(
            fields::HEADERS,
            "values of allowlisted request headers (never credentials, addresses or user agents)",
            Protection::NotPersonal,
            "operator-chosen request context",
        ));
    }
    out
}
