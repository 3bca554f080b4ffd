//! `AuthLayer`: identification for [tollgate](https://docs.rs/tollgate).
//!
//! Verifies who is calling (a JWT against static keys or a JWKS, an API key, or an
//! opaque token by OAuth2 introspection), checks the freeze list on every request,
//! and hands the rest of the stack a pseudonymous [`Principal`] in request
//! extensions: subject and credential as pseudonyms and keyed digests, tier, scopes.
//! No token, key or subject leaves this layer.
//!
//! - JWT: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA; every key is
//!   pinned to one algorithm (RFC 8725 §3.1), so `alg: none` and HMAC signed with an
//!   RSA public key are refused. `jku`, `x5u` and embedded `jwk` headers are never
//!   followed. Verified tokens are cached (keyed by a keyed 128-bit hash of the
//!   token, never past `exp`), so a repeated token skips signature verification.
//! - API keys: stored only as SHA-256 digests, compared in constant time.
//! - Introspection (RFC 7662) with the `oauth2` crate; an unreachable endpoint is a
//!   503, never a pass.
//! - Errors: RFC 9457 problem+json, `WWW-Authenticate: Bearer` with RFC 6750 codes,
//!   customizable through a [`ProblemResponder`](tollgate_core::ProblemResponder).
//!
//! Handlers extract the [`Principal`]; [`require_scope`] guards single routes; the
//! [`freeze_admin_router`] freezes, unfreezes and lists.
#![warn(missing_docs)]

mod admin;
mod api_key;
mod cache;
mod config;
mod error;
mod introspection;
mod jwks;
mod jwt;
mod layer;
mod policy;
mod scope;
mod span;

pub use admin::{
    DEFAULT_ADMIN_SCOPE, FreezeAdmin, FreezeKind, FreezeRequest, INVALID_ADMIN_REQUEST, NOT_FROZEN,
    freeze_admin_router,
};
pub use api_key::{ApiKeyRecord, ApiKeys};
pub use config::{
    Anonymous, ApiKeyConfig, AuthConfig, ConfigError, IntrospectionConfig, JwtConfig, JwtProfile, OneOrMany,
    StaticKeyConfig,
};
pub use error::AuthError;
pub use jsonwebtoken::{Algorithm, DecodingKey};
pub use jwt::{SUPPORTED_ALGORITHMS, token_digest_hex};
pub use layer::{AuthBuilder, AuthFuture, AuthLayer, AuthOverride, AuthService};
pub use policy::TierPolicy;
pub use scope::{RequireScope, RequireScopeFuture, RequireScopeLayer, require_scope};
pub use tollgate_core::Principal;

#[doc(hidden)]
pub mod bench {
    //! Internals exposed for the crate's benchmarks only; not a stable API.
    pub use crate::layer::bench_support::*;
}
