//! The data inventory of what the privacy layer writes.

use tollgate_core::fields;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};

/// The fields [`PrivacyTraceLayer`] writes, plus the log line's envelope.
pub(crate) fn fields(logs_headers: bool) -> Vec<FieldSpec> {
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
            "elements of allowlisted request headers found in their vocabulary, others as `other` (never credentials, addresses or user agents)",
            Protection::NotPersonal,
            "operator-chosen request context",
        ));
    }
    out
}
