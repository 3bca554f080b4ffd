//! Core types of [tollgate](https://docs.rs/tollgate): the privacy types every layer
//! passes along instead of raw identifiers, problem+json errors, the data inventory,
//! state stores and the clock.
//!
//! - [`pseudonym`]: keyed, rotating [`Pseudonym`]s for logs; stable [`KeyedDigest`]s for store keys.
//! - [`coarsen`]: network prefixes (IPv4 /24, IPv6 /48) and user-agent families.
//! - [`client`]: [`ClientContext`], resolved through trusted proxies only.
//! - [`principal`]: the authenticated caller as pseudonyms, tier and scopes.
//! - [`problem`]: RFC 9457 answers with a stable `type` per cause.
//! - [`inventory`]: the declared list of every field kept.
//! - [`freeze`]: the freeze list trait and its in-process store.
//! - [`session`]: the session verdict the fingerprinting layer hands on.
//! - [`carry`]: [`CarryExt`], the one request extension the layers hand values on in.
//! - [`trace_id`]: the request's W3C [`TraceId`].
//! - [`login`]: [`LoginAttempt`], a login handler's report of the account tried.
//! - [`store`]: async store traits and the bounded in-process store.
//! - [`sharded`]: the bounded sharded map with a pluggable eviction rule under the in-process stores.
//! - [`clock`]: integer-nanosecond time behind a trait, with a fake clock for tests.
//! - [`fields`]: the request span's field names; [`span`] records them.
//! - [`route`]: per-route settings, resolved once per request.
//! - [`config`]: the configuration error and duration format every section shares.
//! - [`future`]: the response future of layers that may answer early.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

pub mod carry;
pub mod client;
pub mod clock;
pub mod coarsen;
pub mod config;
pub mod fields;
pub mod freeze;
pub mod future;
pub mod inventory;
pub mod login;
pub mod principal;
pub mod problem;
pub mod pseudonym;
pub mod route;
pub mod session;
pub mod sharded;
pub mod span;
pub mod store;
pub mod trace_id;

pub use carry::{Carried, CarryExt};
pub use client::{ClientConfig, ClientContext};
pub use clock::{Clock, FakeClock, SharedClock, SystemClock, Timestamp, system_clock};
pub use coarsen::{Coarsening, NetworkPrefix, UserAgentFamily};
pub use config::ConfigError;
pub use freeze::{Freeze, FreezeList, FreezeTarget, MemoryFreezeList, SharedFreezeList};
pub use inventory::{DataInventory, FieldSpec, Protection, Retention, Sink};
pub use login::{LoginAttempt, LoginOutcome};
pub use principal::{BoundKey, CredentialKind, Principal, Scopes, Tier};
pub use problem::{Problem, ProblemResponder, ProblemType};
pub use pseudonym::{Domain, KeyedDigest, Pseudonym, PseudonymSecret, Pseudonymizer};
pub use route::{Route, RouteId, RouteMap, RouteTable};
pub use session::{SessionHealth, SessionInfo, SessionReason, SessionReasons};
pub use store::{BoxFuture, FailurePolicy, MemoryCache, MemoryStore, StateStore, StoreError, StoreKey};
pub use trace_id::{TraceId, TraceIdHex};
