//! Redis-backed stores for [tollgate](https://docs.rs/tollgate): several replicas of an
//! API share one rate-limit budget, one freeze list and the session records, on one
//! Redis server or on a Redis Cluster.
//!
//! - [`RedisBackend`]: the shared connection, per-call timeout, circuit breaker and
//!   counters ([`RedisStats`]).
//! - [`RedisStore`]: [`tollgate_core::StateStore`] on Redis (session records).
//! - [`RedisFreezeList`]: [`tollgate_core::FreezeList`] on Redis, checked from a local
//!   copy kept current over pub/sub.
//! - [`RedisRateLimitStore`]: `tollgate_ratelimit::RateLimitStore` on Redis, GCRA as an
//!   atomic Lua script; on one server, decisions made while others are in flight are
//!   decided together by one script call.
//! - [`RedisPenaltyBoard`]: `tollgate_anomaly::PenaltyBoard` on Redis (throttles and
//!   blocks), read from a local copy kept current over pub/sub as the freeze list's.
//! - [`RedisReplayCache`]: `tollgate_auth::ReplayCache` on Redis (DPoP proof `jti`s,
//!   `SET NX PX`), so a proof used on one replica is a replay on every other.
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
//! # Redis Cluster
//!
//! `backend = "redis-cluster"` with `urls` (seed nodes; any reachable one suffices)
//! uses `redis`'s async cluster client: each command goes to the primary of its
//! key's hash slot, and the slot map is refreshed after a failover (`MOVED`). Every
//! store command touches exactly one key (all stacked limits of one client are one
//! key, decided by one script), so each decision stays atomic on one shard without
//! hash tags, and keys of different clients spread over every shard. The freeze
//! events use classic pub/sub, which a cluster broadcasts to every node, so a
//! replica's subscriber listens on any seed node and moves to the next when its node
//! fails (see [`RedisFreezeList`]).
//!
//! **Failover.** When a primary dies, its replica takes over after about the
//! cluster's `cluster-node-timeout` plus an election (2–3 s on loopback with a 1 s
//! timeout, measured by the crate's `cluster` tests). Until then, the calls on that
//! shard's keys follow the per-use failure policies below; the breaker is per slot
//! group (1/64 of the slots), so the other shards' keys keep being decided in Redis.
//! With Redis's default `cluster-require-full-coverage yes` every node refuses every
//! key while a slot has no primary, so every key follows the policies for that
//! time; set it to `no` to confine the gap to the failed shard.
//!
//! **What a failover can lose.** Redis replicates asynchronously; writes a primary
//! acknowledged but had not yet sent to its replica are lost with it:
//! - rate limits: the spending of the last moments before the failure (the
//!   replication lag, usually well under a millisecond on a LAN). A client can regain
//!   at most what it spent then, never more than one full burst per key, since a
//!   GCRA state never holds more than the burst;
//! - the freeze list: nothing acknowledged without a warning. `freeze` waits
//!   (`WAIT`) until `[store.freeze] wait_replicas` replicas (1 on a cluster) hold the
//!   freeze; when they do not in time it is logged and counted;
//! - session records: the last update of a session (its fingerprints are learnt
//!   again on the next requests);
//! - DPoP replay entries: a proof first seen in the lag window could be replayed
//!   once, within its `max_age`.
//!
//! # Keys
//!
//! Every key starts with `tollgate:`, then the optional `[store] namespace` and `:`
//! (written `[ns:]` below):
//!
//! | key | type | holds | TTL |
//! |---|---|---|---|
//! | `tollgate:[ns:]rl:{digest}`, `tollgate:[ns:]rl:{scope}:{digest}` | string | a rate-limit key's TATs, `"s1 n1 s2 n2 …"` (seconds and nanoseconds since the epoch, per stacked limit) | until every budget would be full again |
//! | `tollgate:[ns:]session:{digest}` | string | a session record as a JSON array (its fields in order, no names; any [`tollgate_core::StoreKey`] of a [`RedisStore`]) | the TTL given to `insert` |
//! | `tollgate:[ns:]freeze` | hash | field `credential:{digest}` / `subject:{digest}`, value the `Freeze` as JSON | none: a freeze holds until lifted; expired ones are dropped when seen |
//! | `tollgate:[ns:]dpop-jti:{digest}` | string | `1`: a DPoP proof seen (digest of its key thumbprint and `jti`) | the end of the proof's acceptance window (`auth.dpop.max_age` + `leeway`) |
//! | `tollgate:[ns:]freeze-events` | pub/sub channel | `set {field} {json}` / `del {field}` | - |
//! | `tollgate:[ns:]penalties` | hash | field: a penalty key (16 hex digits, a keyed 64-bit hash of a credential digest or a coarsened network), value `{action} {until_ms} {tags}` | until its last penalty ends |
//! | `tollgate:[ns:]penalties-events` | pub/sub channel | `set {field} {value}` / `del {field}` | - |
//!
//! Apart from the penalty keys, `{digest}` is always a [`tollgate_core::KeyedDigest`] (32 hex digits, an HMAC under
//! the deployment's pseudonym secret), so no raw IP, key, token or subject appears in
//! any key; the tests enumerate every key written (`SCAN`) to check it. Replicas that
//! share a budget must share the pseudonym secret (`TOLLGATE_PSEUDONYM_SECRET`), or
//! their digests, and so their keys, differ.
//!
//! # Failures
//!
//! Each use has its policy (`[store]` settings): rate limits fail open (or `closed`,
//! or to a `local` in-process limiter), the freeze list fails closed (its `check`
//! returns an error, which the auth layer answers with 503), session reads return the
//! error to the fingerprinting layer (or miss, with `open`). A circuit breaker keeps
//! calls from waiting on a dead server. Every switch is logged once and counted
//! ([`RedisBackend::stats`]); nothing panics; everything reconnects by itself.
//!
//! # Wiring
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tollgate_redis::{RedisBackend, RedisFreezeList, RedisRateLimitStore, RedisStore, StoreConfig};
//!
//! let config: StoreConfig = toml::from_str(r#"
//!     backend = "redis"
//!     url = "redis://127.0.0.1:6379"
//! "#)?;
//! let backend = RedisBackend::new(&config)?; // no I/O; a bad setting is named
//! if let Err(e) = backend.ping().await {
//!     eprintln!("redis not answering yet ({e}); continuing per the failure policies");
//! }
//! let freeze_list = RedisFreezeList::new(&backend); // spawns its subscriber
//! freeze_list.wait_synced(Duration::from_secs(2)).await;
//! let rate_limits = RedisRateLimitStore::new(&backend);
//! let sessions: RedisStore<Vec<u8>> = RedisStore::new(&backend);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod backend;
mod batch;
pub mod config;
mod connection;
mod freeze;
mod penalty;
mod ratelimit;
mod replay;
mod replica;
mod script;
mod store;

pub use backend::{RedisBackend, RedisStats};
pub use config::{
    FreezeConfig, RateLimitClock, RateLimitFallback, RateLimitStoreConfig, SessionStoreConfig, StoreBackend,
    StoreConfig,
};
pub use freeze::RedisFreezeList;
pub use penalty::RedisPenaltyBoard;
pub use ratelimit::RedisRateLimitStore;
pub use replay::RedisReplayCache;
pub use store::RedisStore;
