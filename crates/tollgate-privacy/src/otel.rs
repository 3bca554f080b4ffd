//! Feature `otel`: the request span joins the caller's OpenTelemetry trace.

use http::HeaderMap;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the remote span a valid W3C `traceparent` names, so a
/// `tracing-opentelemetry` layer exports it into the caller's trace. Only
/// `traceparent` is read: `tracestate` and `baggage` can carry anything a caller
/// puts there, and nothing of theirs is exported.
pub(crate) fn join_callers_trace(span: &Span, headers: &HeaderMap) {
    if let Some(parent) = remote_parent(headers) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// The span context of a single valid `traceparent` (`00-{trace}-{parent}-{flags}`).
fn remote_parent(headers: &HeaderMap) -> Option<SpanContext> {
    let mut values = headers.get_all(tollgate_core::trace_id::TRACEPARENT).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    tollgate_core::TraceId::from_traceparent(value.as_bytes())?;
    let text = value.to_str().ok()?;
    let trace = u128::from_str_radix(text.get(3..35)?, 16).ok()?;
    let parent = u64::from_str_radix(text.get(36..52)?, 16).ok()?;
    let flags = u8::from_str_radix(text.get(53..55)?, 16).ok()?;
    Some(SpanContext::new(
        TraceId::from(trace),
        SpanId::from(parent),
        TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_traceparent_names_a_parent() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        let sc = remote_parent(&h).unwrap();
        assert_eq!(sc.trace_id(), TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736));
        assert_eq!(sc.span_id(), SpanId::from(0x00f067aa0ba902b7));
        assert!(sc.is_sampled() && sc.is_remote());
        h.insert(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(remote_parent(&h).is_none());
        h.append(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert!(
            remote_parent(&h).is_none(),
            "two traceparent headers: neither is trusted"
        );
    }
}
