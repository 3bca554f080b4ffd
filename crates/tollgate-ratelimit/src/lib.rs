//! Tiered rate limiting for axum: GCRA per pseudonymous key, stacked limits per tier,
//! per-route overrides, IETF `RateLimit` headers and a bounded in-process store.
#![warn(missing_docs)]

pub mod gcra;
pub mod store;

pub use gcra::{Decision, Limit, LimitError, MAX_LIMITS};
pub use store::{MemoryRateLimitStore, RateLimitKey, RateLimitStore};
