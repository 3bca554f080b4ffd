//! Names of the request span's fields. [`PrivacyTraceLayer`] declares all of them
//! when it opens the span; each layer records its own with [`crate::span::record_current`].
//!
//! [`PrivacyTraceLayer`]: https://docs.rs/tollgate-privacy

/// The HTTP method.
pub const METHOD: &str = "http.method";
/// The matched route template (`/v1/items/{id}`), never the raw path.
pub const ROUTE: &str = "http.route";
/// The response status code.
pub const STATUS: &str = "http.status";
/// Time to the response head, in microseconds.
pub const LATENCY_US: &str = "latency_us";
/// The W3C trace id.
pub const TRACE_ID: &str = "trace_id";
/// The pseudonym of the client's coarsened network.
pub const CLIENT_NETWORK: &str = "client.network";
/// Allowlisted request headers, as `name=value` pairs.
pub const HEADERS: &str = "http.headers";
/// The principal's subject pseudonym.
pub const PRINCIPAL: &str = "principal";
/// The credential kind (`jwt`, `api_key`, `introspection`).
pub const CREDENTIAL: &str = "credential";
/// The principal's tier.
pub const TIER: &str = "tier";
/// Why authentication failed (an RFC 6750 error code or a cause slug).
pub const AUTH_ERROR: &str = "auth.error";
/// The session pseudonym.
pub const SESSION: &str = "session";
/// The session health verdict.
pub const SESSION_HEALTH: &str = "session.health";
/// The reasons behind the session verdict.
pub const SESSION_REASONS: &str = "session.reasons";
/// What the session policy did: `reauthenticate`, `freeze`, or `would_reauthenticate` /
/// `would_freeze` (report-only). Empty when it did nothing.
pub const SESSION_ACTION: &str = "session.action";
/// The rate-limit policy with the lowest remaining quota.
pub const RATELIMIT_POLICY: &str = "ratelimit.policy";
/// `allowed`, `denied`, or `would_deny` (report-only).
pub const RATELIMIT_OUTCOME: &str = "ratelimit.outcome";
/// Requests remaining under that policy.
pub const RATELIMIT_REMAINING: &str = "ratelimit.remaining";
/// Anomaly tags and scores.
pub const ANOMALY: &str = "anomaly";

/// Every field the request span declares, in declaration order.
pub const ALL: &[&str] = &[
    METHOD,
    ROUTE,
    STATUS,
    LATENCY_US,
    TRACE_ID,
    CLIENT_NETWORK,
    HEADERS,
    PRINCIPAL,
    CREDENTIAL,
    TIER,
    AUTH_ERROR,
    SESSION,
    SESSION_HEALTH,
    SESSION_REASONS,
    SESSION_ACTION,
    RATELIMIT_POLICY,
    RATELIMIT_OUTCOME,
    RATELIMIT_REMAINING,
    ANOMALY,
];
