//! Data-minimizing request logging for axum: [`PrivacyTraceLayer`].
//!
//! The outermost tollgate layer. It opens one span per request in which every field
//! the other layers fill is declared up front ([`tollgate_core::fields::ALL`]), and
//! writes one completion line per request. What it logs is listed by
//! [`PrivacyTraceLayer::inventory`]; what it never logs: the raw path, the query
//! string, the client address, the user agent, credentials, or any header outside
//! the allowlist.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod config;
mod future;
mod inventory;
mod layer;
mod log;
#[cfg(feature = "otel")]
mod otel;
mod service;
mod writer;

pub use config::{BUILT_IN_VOCABULARIES, FORBIDDEN_HEADERS, LogProfile, PrivacyConfig};
pub use future::ResponseFuture;
pub use layer::{PrivacyTraceBuilder, PrivacyTraceLayer};
pub use log::{JsonLogLayer, RAW_INPUT_TARGETS, RecordedValue, RequestObserver, RequestRecord, json_layer};
pub use service::PrivacyTraceService;

/// The `target` of request spans and their completion events.
pub const TARGET: &str = "tollgate::request";
/// The route recorded when no route matched: the raw path is never logged.
pub const UNMATCHED_ROUTE: &str = "(unmatched)";
pub use tollgate_core::trace_id::{TraceId, TraceIdHex};
pub use writer::{BatchLine, BatchWriter, FlushGuard};
