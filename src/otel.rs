//! Feature `otel`: the stack's redacted request spans, exported over OTLP.
//!
//! The request span carries what the log line carries (pseudonyms, route templates,
//! verdicts) and joins the caller's trace when the request has a valid W3C
//! `traceparent` (only that header is read: `tracestate` and baggage are not).
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
use opentelemetry_sdk::trace::SdkTracerProvider;
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

/// A tracer provider exporting over OTLP/HTTP (protobuf) to `endpoint` (such as
/// `http://collector:4318/v1/traces`), in batches from a thread of its own.
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).build())
}
