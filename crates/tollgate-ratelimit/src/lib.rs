//! Tiered rate limiting for axum: GCRA per pseudonymous key, stacked limits per tier,
//! per-route rules, IETF `RateLimit` header fields and a bounded in-process store.
//!
//! - [`gcra`]: the algorithm as pure functions on integer nanoseconds.
//! - [`RateLimitStore`]: where state lives, and the contract every backend follows
//!   (the in-process [`MemoryRateLimitStore`], a Redis store in `tollgate-redis`).
//! - [`RateLimitLayer`], built by [`RateLimitBuilder`]: tiers, keys, routes, headers,
//!   report-only mode.
//! - [`RateLimitConfig`]: the `[ratelimit]` section; [`RateLimitRoute`]: one route's
//!   settings, given per route through a [`RouteMap`](tollgate_core::RouteMap).
//!
//! # Header fields
//!
//! The layer follows **draft-ietf-httpapi-ratelimit-headers-11** (May 2026), the
//! latest revision whose full text we could read. The datatracker lists a -12
//! (November 2026), but only its abstract was available to us; it matches an
//! editor's copy of August 2026 that renames the `RateLimit` parameters (`a` and `w`
//! for `r` and `t`) and adds others, changes not yet confirmed as adopted, so the
//! layer keeps the parameters of the last revision that can be checked. In -11:
//!
//! - `RateLimit-Policy: "burst";q=20;w=2, "daily";q=10000;w=86400`: every limit of
//!   the tier or route, as a String with its quota `q` (the burst: the most requests
//!   admitted at once) and window `w` (the whole seconds a full quota takes to come
//!   back). `qu` is left out: the unit is the default, `requests` (a route with a
//!   `cost` spends several units per request, which the draft leaves to the server).
//! - `RateLimit: "burst";r=3;t=1`: the limit with the least left, its available
//!   quota `r`, and its effective window `t`: the seconds until that limit's quota is
//!   full again, so a client that spends no more than `r` within `t` is not refused
//!   by it. On a refusal `t` equals `Retry-After`, as the draft asks that
//!   `Retry-After` name no point earlier than the end of the effective window.
//! - No partition key `pk`: the policy names already tell a route's own budget from
//!   the tier's, a key clients cannot predict does not serve the draft's purpose for
//!   it (§6.1, §7.1), and a per-caller token on every response would be one more
//!   linkable value. If one is ever emitted it must be a rotating pseudonym
//!   ([`tollgate_core::Pseudonym`]), never a digest or a raw identifier.
//! - 429 answers are problem+json (`urn:tollgate:problem:rate-limited`), with
//!   `Retry-After` and `Cache-Control: no-store`.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod builder;
mod config;
mod future;
pub mod gcra;
mod inventory;
mod layer;
mod policy;
mod service;
mod status;
mod store;

pub use builder::RateLimitBuilder;
pub use config::{LimitConfig, Mode, RateLimitConfig, RateLimitRoute, TierConfig};
pub use future::ResponseFuture;
pub use gcra::{Decision, Limit, LimitError, MAX_LIMITS};
pub use layer::RateLimitLayer;
pub use service::RateLimitService;
pub use status::{Outcome, RATELIMIT, RATELIMIT_POLICY, RateLimitStatus};
pub use store::{MemoryRateLimitStore, RateLimitKey, RateLimitStore, ScopeError, SharedRateLimitStore};
