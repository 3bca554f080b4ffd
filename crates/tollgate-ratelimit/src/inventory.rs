//! The data inventory of the rate-limit layer.

use std::time::Duration;

use tollgate_core::fields;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};

const LAYER: &str = "ratelimit";

/// Every field the layer logs, stores, or sends; `longest` is the longest time any
/// configured limit keeps state for a key.
pub(crate) fn fields(longest: Duration) -> Vec<FieldSpec> {
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
            derived_from: "the principal's subject digest, the client's coarsened network digest, or a custom key \
                           digest; in a scope of its own (tollgate:rl:{scope}:{digest}) on a route with its own \
                           limits or another tier",
            protection: Protection::KeyedDigest,
            purpose: "one theoretical arrival time per limit, to count requests",
            retention: Retention::ttl(longest),
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
            derived_from: "the tier's limits and the caller's remaining quota (no partition key)",
            protection: Protection::NotPersonal,
            purpose: "tells the caller its quota (draft-ietf-httpapi-ratelimit-headers-11, RFC 6585)",
            retention: Retention::Request,
            sinks: &[Sink::ResponseHeader],
        },
    ]
}
