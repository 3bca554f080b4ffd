//! [`PrivacyTraceService`]: opens the request span and hands the client on.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::MatchedPath;
use http::{Request, Response};
use tollgate_core::{CarryExt, ClientConfig, Pseudonymizer, RouteMap, TraceId};
use tower::Service;
use tracing::Span;
use tracing::field::Empty;

use crate::config::{LogProfile, LoggedHeader};
use crate::future::ResponseFuture;
use crate::{TARGET, UNMATCHED_ROUTE};

/// What the service reads per request.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) pseudonymizer: Pseudonymizer,
    pub(crate) client: ClientConfig,
    pub(crate) log_headers: Vec<LoggedHeader>,
    pub(crate) routes: RouteMap<LogProfile>,
}

/// The service made by [`PrivacyTraceLayer`](crate::PrivacyTraceLayer).
#[derive(Clone, Debug)]
pub struct PrivacyTraceService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> PrivacyTraceService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        PrivacyTraceService { inner, config }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PrivacyTraceService<S>
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
        let profile = *config
            .routes
            .get(config.routes.table().resolve_and_insert(&mut req));
        let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
        let trace_id = TraceId::from_headers_or_new(req.headers());
        let client = config
            .client
            .resolve(req.extensions(), req.headers(), &config.pseudonymizer);
        // The span opens with every value known here: each later record is a call to
        // the subscriber.
        let full = profile == LogProfile::Full;
        let network = client
            .as_ref()
            .filter(|_| full)
            .map(|c| c.network_pseudonym().to_hex());
        let headers = (full && !config.log_headers.is_empty())
            .then(|| allowlisted_headers(&config.log_headers, req.headers()));
        let span = open_span(
            profile,
            &RequestLine {
                method: req.method().as_str(),
                route: route.unwrap_or(UNMATCHED_ROUTE),
                trace_id,
                network: network.as_ref().map(|n| n.as_str()),
                headers: headers.as_deref(),
            },
        );
        #[cfg(feature = "otel")]
        crate::otel::join_callers_trace(&span, req.headers());

        if let Some(client) = client {
            req.extensions_mut().carry(client);
        }
        req.extensions_mut().carry(trace_id);

        let inner = span.in_scope(|| self.inner.call(req));
        ResponseFuture::new(inner, span, start, profile != LogProfile::Off)
    }
}

/// What the request span opens with.
struct RequestLine<'a> {
    method: &'a str,
    route: &'a str,
    trace_id: TraceId,
    network: Option<&'a str>,
    headers: Option<&'a str>,
}

fn open_span(profile: LogProfile, line: &RequestLine<'_>) -> Span {
    let trace_id = line.trace_id.to_hex();
    let (method, route) = (line.method, line.route);
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
            client.network = line.network,
            http.headers = line.headers,
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

/// `name=elements` of the logged headers present, each element from its vocabulary.
fn allowlisted_headers(logged: &[LoggedHeader], headers: &http::HeaderMap) -> String {
    let mut out = String::new();
    for header in logged {
        for value in headers.get_all(&header.name) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(header.name.as_str());
            out.push('=');
            header.write_elements(value.as_bytes(), &mut out);
        }
    }
    out
}
