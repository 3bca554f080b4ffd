//! Session fingerprinting for [tollgate](https://docs.rs/tollgate): a session is more
//! than its token.
//!
//! [`FingerprintLayer`] runs inside the authentication layer. For every request with a
//! [`Principal`](tollgate_core::Principal) it
//!
//! 1. builds a **fingerprint** from coarsened traits only (network prefix, user-agent
//!    family and major version, and, when enabled, the `Accept-Language` primary tag
//!    and low-entropy client hints), as a keyed hash: nothing raw is kept;
//! 2. updates the **session record** keyed by the credential (token `jti`, API key id
//!    or token digest): first and last seen to the minute, a request count, the last
//!    four fingerprints and network prefixes as 64-bit keyed hashes, bounded in number
//!    of sessions and expiring with the session TTL;
//! 3. reads the **signals**: a new fingerprint on an established session, use from two
//!    network prefixes within the concurrency window, rapid alternation between
//!    fingerprints, a token first seen long after it was issued. A request that
//!    proved possession of the key its token is bound to (DPoP,
//!    [`Principal::bound_key`](tollgate_core::Principal::bound_key)) is the same
//!    client wherever it comes from: network changes and alternation raise no signal
//!    for it, since a copied token is useless without the key;
//! 4. gives a **verdict** ([`SessionHealth`]: one or two signals make a session
//!    suspicious; alternation, or three signals at once, unhealthy) as a
//!    [`SessionInfo`] carried in the request (an extractor) and as the span fields `session`,
//!    `session.health` and `session.reasons`;
//! 5. applies the **policy** ([`SessionPolicy`]): tag only (default), answer 401 so
//!    the client authenticates again, or freeze the credential on the freeze list
//!    shared with the authentication layer; optionally report-only.
//!
//! Routes are fingerprinted or not through a [`RouteMap<bool>`](tollgate_core::RouteMap)
//! ([`FingerprintBuilder::routes`]; in the facade's configuration,
//! `fingerprint = false` in a `[routes."<template>"]` table). Session records live in
//! a [`SessionStore`]: in process by default ([`MemorySessionStore`]), or any
//! [`StateStore<SessionRecord>`](tollgate_core::StateStore) such as Redis.
//!
//! A mobile client whose address moves within its /24 keeps its fingerprint: the
//! network is coarsened before it is hashed.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod builder;
mod config;
mod dimensions;
mod inventory;
mod layer;
mod local_hash;
mod memory;
mod record;
mod service;
mod store;
mod verdict;

pub use builder::FingerprintBuilder;
pub use config::{ActOn, Dimensions, FingerprintConfig, SessionPolicy};
pub use layer::FingerprintLayer;
pub use memory::MemorySessionStore;
pub use record::{MAX_FINGERPRINTS, MAX_NETWORKS, NetworkSeen, SessionRecord};
pub use service::FingerprintService;
pub use store::{SESSION_NAMESPACE, SessionCell, SessionStore, session_key};
pub use tollgate_core::future::ResponseFuture;
pub use tollgate_core::{SessionHealth, SessionInfo, SessionReason, SessionReasons};
