//! Feature `otel`: the stack's redacted request spans, exported over OTLP.
//!
//! The request span joins the caller's trace when the request has a valid W3C
//! `traceparent` (only that header is read: `tracestate` and baggage are not). It
//! leaves with its route template, status, latency, tier and verdicts, but without
//! the pseudonyms the log line carries ([`PSEUDONYM_FIELDS`]): a trace backend is
//! often another party's, and pseudonyms would let it link one caller's requests.
//!
//! ```no_run
//! use tracing_subscriber::prelude::*;
//!
//! let provider = tollgate::otel::otlp_provider("http://127.0.0.1:4318/v1/traces").unwrap();
//! tracing_subscriber::registry()
//!     .with(tollgate::privacy::json_layer(std::io::stdout))
//!     .with(tollgate::otel::layer(&provider))
//!     .init();
//! // ... serve; at shutdown:
//! provider.shutdown().unwrap();
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider, Span, SpanData, SpanProcessor};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// A layer exporting the stack's request spans (target `tollgate::request`) through
/// `provider`, and nothing else: spans and events of other targets (an
/// application's own, axum's that quote raw input) never reach it.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tollgate"))
        .with_filter(filter_fn(|metadata| {
            metadata.target() == tollgate_privacy::TARGET
        }))
}

/// The request span's fields that never leave in an exported span.
pub const PSEUDONYM_FIELDS: &[&str] = &[
    tollgate_core::fields::PRINCIPAL,
    tollgate_core::fields::SESSION,
    tollgate_core::fields::CLIENT_NETWORK,
    tollgate_core::fields::HEADERS,
];

/// A span processor that drops [`PSEUDONYM_FIELDS`] from every span before handing
/// it to `inner` (the batch or simple processor in front of an exporter).
#[derive(Debug)]
pub struct Redacting<P>(pub P);

impl<P: SpanProcessor> SpanProcessor for Redacting<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        span.attributes
            .retain(|kv| !PSEUDONYM_FIELDS.contains(&kv.key.as_str()));
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
}

/// A tracer provider exporting over OTLP/HTTP (protobuf) to `endpoint` (such as
/// `http://collector:4318/v1/traces`), in batches from a thread of its own, without
/// the pseudonyms ([`Redacting`]).
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_span_processor(Redacting(BatchSpanProcessor::builder(exporter).build()))
        .build())
}
