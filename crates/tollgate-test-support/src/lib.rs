//! Helpers the tollgate crates' tests share, so each is written once.
//!
//! A dev-dependency only (`publish = false`). It depends on `tollgate-core` and no
//! layer crate, so every crate of the workspace can use it without a cycle.
//!
//! - [`LogCapture`]: every byte a `tracing` subscriber writes, for asserting what the
//!   logs hold (and what they must not).
//! - [`serve`]: an axum app on 127.0.0.1 on the current runtime; [`serve_captured`]:
//!   one on a thread of its own whose log output is captured; [`free_port`]: a port
//!   where nothing listens.
//! - [`pseudonymizer`], [`pseudonymizer_with_clock`], [`clock`]: a pseudonymizer under a
//!   fixed test secret and a fake clock at a fixed instant.
//! - [`random_namespace`]: a unique name for one test's keys or files.
//! - [`canary`]: well-known identifiers to send through a layer, and the check that
//!   none of them comes out.
//! - [`jwt`]: HS256 tokens for tests of JWT verification.
//! - `redis` (feature `redis`): the Redis to test against (`REDIS_URL`) and a per-test
//!   key namespace deleted on drop; `redis_cluster` (feature `redis`): a throwaway
//!   Redis Cluster of 3 primaries and 3 replicas on loopback.
//!
//! ```
//! use tollgate_test_support::{LogCapture, canary};
//!
//! let capture = LogCapture::new();
//! {
//!     let _guard = capture.set_default();
//!     tracing::info!(client.network = "pseudonym-of-the-network", "request completed");
//! }
//! assert_eq!(capture.lines()[0]["fields"]["message"], "request completed");
//! canary::assert_absent("the log output", &capture.text(), canary::FRAGMENTS);
//! ```
#![deny(unreachable_pub)]
#![warn(missing_docs)]

pub mod canary;
mod fixtures;
pub mod jwt;
mod log;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_cluster;
mod server;

pub use fixtures::{
    PSEUDONYM_EPOCH, PSEUDONYM_SECRET, START, clock, pseudonymizer, pseudonymizer_with_clock,
    random_namespace,
};
pub use log::LogCapture;
pub use server::{CapturedServer, free_port, serve, serve_captured};
