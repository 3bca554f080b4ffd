//! What the layer decided, for the layers and handlers after it, and the header
//! fields that tell the caller.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::Response;
use http::request::Parts;
use http::{HeaderName, HeaderValue};
use tollgate_core::future::OnResponse;
use tollgate_core::problem::Problem;

use crate::gcra::Limit;
use crate::policy::{NamedLimit, Policy};

/// `RateLimit-Policy`: the quota policies of the tier or route.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the policy with the lowest available quota, that quota and its
/// effective window.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What the layer did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Every limit admitted it.
    Allowed,
    /// A limit refused it and the layer answered 429.
    Denied,
    /// A limit refused it, but the mode is report-only: it went through.
    WouldDeny,
}

impl Outcome {
    /// `allowed`, `denied` or `would_deny`: the value of `ratelimit.outcome`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::WouldDeny => "would_deny",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate-limit verdict on a request, in its request and response extensions.
///
/// Reports the limit with the lowest remaining units (the one that refused, if one
/// did). Cheap to clone. Handlers can extract it (`Option<RateLimitStatus>` when the
/// layer may skip the route).
#[derive(Clone)]
pub struct RateLimitStatus {
    pub(crate) policy: Arc<Policy>,
    pub(crate) index: u8,
    pub(crate) outcome: Outcome,
    pub(crate) remaining: u64,
    pub(crate) reset_nanos: u64,
    pub(crate) retry_after_nanos: u64,
}

impl fmt::Debug for RateLimitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitStatus")
            .field("policy", &self.policy())
            .field("outcome", &self.outcome)
            .field("remaining", &self.remaining)
            .field("reset", &self.reset())
            .field("retry_after", &self.retry_after())
            .finish()
    }
}

impl RateLimitStatus {
    fn named(&self) -> &NamedLimit {
        &self.policy.named[self.index as usize]
    }

    /// What the layer did.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// True if a limit refused the request (whether or not it was let through).
    pub fn is_limited(&self) -> bool {
        self.outcome != Outcome::Allowed
    }

    /// `{tier}/{limit}`, e.g. `free/daily` or `route:login/login`: the value of
    /// `ratelimit.policy`.
    pub fn policy(&self) -> &str {
        &self.named().span_name
    }

    /// The tier whose limits applied (`route:{scope}` for a route's own limits).
    pub fn tier(&self) -> &str {
        &self.policy.tier
    }

    /// The reported limit's name, as in the headers.
    pub fn limit_name(&self) -> &str {
        &self.named().name
    }

    /// The reported limit.
    pub fn limit(&self) -> Limit {
        self.named().limit
    }

    /// Units left under the reported limit after this request.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Time until the reported limit's budget is full again.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset_nanos)
    }

    /// When refused: the time until every limit would admit the request.
    pub fn retry_after(&self) -> Option<Duration> {
        self.is_limited()
            .then(|| Duration::from_nanos(self.retry_after_nanos))
    }

    /// The `RateLimit-Policy` value: every limit of the tier or route, as
    /// `"{name}";q={quota};w={window seconds}`.
    pub fn policy_header(&self) -> HeaderValue {
        self.policy.policy_header.clone()
    }

    /// The `RateLimit` value: `"{name}";r={available};t={effective window}`.
    ///
    /// `t` is the time until the reported limit's budget is full again: a client
    /// that spends no more than `r` units in `t` seconds is never refused by it. On
    /// a refused request it is the `Retry-After` delay instead, so that both fields
    /// name the same instant (the draft's §6: `Retry-After` no earlier than the end
    /// of the effective window). Written into a stack buffer with `itoa`.
    pub fn ratelimit_header(&self) -> HeaderValue {
        let name = self.named().name.as_bytes();
        let window = if self.is_limited() {
            self.retry_after_secs()
        } else {
            secs_ceil(self.reset_nanos)
        };
        // name <= 32 bytes, two u64 of <= 20 digits, 10 bytes of punctuation.
        let mut buf = [0u8; 96];
        let mut n = 0;
        let mut put = |bytes: &[u8]| {
            buf[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        };
        let mut num = itoa::Buffer::new();
        put(b"\"");
        put(name);
        put(b"\";r=");
        put(num.format(self.remaining).as_bytes());
        put(b";t=");
        put(num.format(window).as_bytes());
        HeaderValue::from_bytes(&buf[..n]).expect("names are checked to be token characters")
    }

    /// The `Retry-After` value in whole seconds, rounded up, at least 1.
    pub fn retry_after_header(&self) -> HeaderValue {
        HeaderValue::from(self.retry_after_secs())
    }

    fn retry_after_secs(&self) -> u64 {
        secs_ceil(self.retry_after_nanos).max(1)
    }
}

/// Adds the header fields (unless switched off) and the status to a response.
impl OnResponse for RateLimitStatus {
    fn on_response(self, response: &mut Response) {
        if self.policy.headers {
            let h = response.headers_mut();
            h.insert(RATELIMIT_POLICY, self.policy_header());
            h.insert(RATELIMIT, self.ratelimit_header());
        }
        response.extensions_mut().insert(self);
    }
}

/// Nanoseconds to whole seconds, rounded up.
fn secs_ceil(nanos: u64) -> u64 {
    nanos.div_ceil(1_000_000_000)
}

impl<S: Send + Sync> FromRequestParts<S> for RateLimitStatus {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        parts.extensions.get::<RateLimitStatus>().cloned().ok_or_else(|| {
            Problem::misconfigured("RateLimitStatus is missing: add RateLimitLayer to this route")
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for RateLimitStatus {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<RateLimitStatus>().cloned())
    }
}
