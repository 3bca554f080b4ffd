//! Redis-backed stores for [tollgate](https://docs.rs/tollgate): several replicas of an
//! API share one rate-limit budget, one freeze list and the session records.
//!
//! - [`RedisBackend`]: the shared connection, per-call timeout, circuit breaker and
//!   counters ([`RedisStats`]).
//! - [`RedisStore`]: [`tollgate_core::StateStore`] on Redis (session records).
//! - [`RedisFreezeList`]: [`tollgate_core::FreezeList`] on Redis, checked from a local
//!   copy kept current over pub/sub.
//! - [`RedisRateLimitStore`]: `tollgate_ratelimit::RateLimitStore` on Redis, GCRA as one
//!   atomic Lua script per decision.
//! - [`StoreConfig`]: the `[store]` configuration section.
//!
//! # Client
//!
//! [`redis`](https://docs.rs/redis) (redis-rs) with its Tokio `ConnectionManager`: the
//! most used Redis client for Rust, maintained with the Redis organisation; one
//! multiplexed connection that pipelines concurrent calls on its own (no pool to size),
//! reconnects by itself after a drop, and has `Script` (`EVALSHA`, reloaded on
//! `NOSCRIPT`) and a dedicated async pub/sub connection. `fred` has the same features
//! and more knobs, but a much larger dependency and API surface for what tollgate needs.
//!
//! # Keys
//!
//! Every key starts with `tollgate:`, then the optional `[store] namespace` and `:`:
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `tollgate:{ns:}{store}:{digest}` | string | a [`tollgate_core::StoreKey`]'s value as JSON (e.g. `session`) | the TTL given to `insert` |
//! | `tollgate:{ns:}freeze` | hash | field `credential:{digest}` / `subject:{digest}`, value the `Freeze` as JSON | none: a freeze holds until lifted; expired ones are dropped when seen |
//! | `tollgate:{ns:}freeze-events` | pub/sub channel | `set {field} {json}` / `del {field}` | - |
//!
//! `{digest}` is always a [`tollgate_core::KeyedDigest`] (32 hex digits, an HMAC under
//! the deployment's secret), so no raw IP, key, token or subject appears in any key,
//! and the tests enumerate every key written to check it.
//!
//! # Failures
//!
//! Each use has its policy (`[store]` settings): the freeze list fails closed (its
//! `check` returns an error, which the auth layer answers with 503), session reads
//! return the error to the fingerprinting layer (or miss, with `open`). Every switch is
//! logged once and counted; nothing panics; everything reconnects by itself.
#![warn(missing_docs)]

mod backend;
pub mod config;
mod freeze;
mod ratelimit;
mod store;

pub use backend::{RedisBackend, RedisStats};
pub use config::{
    ConfigError, FreezeConfig, RateLimitClock, RateLimitFallback, RateLimitStoreConfig, SessionStoreConfig,
    StoreBackend, StoreConfig,
};
pub use freeze::RedisFreezeList;
pub use ratelimit::RedisRateLimitStore;
pub use store::RedisStore;
