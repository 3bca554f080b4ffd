//! `AuthLayer`: identification for [tollgate](https://docs.rs/tollgate).
//!
//! Verifies who is calling (a JWT against static keys or a JWKS, an API key, or an
//! opaque token by OAuth2 introspection), checks the freeze list on every request,
//! and hands the rest of the stack a pseudonymous [`Principal`] (an extractor, carried
//! in the request's extensions: [`tollgate_core::CarryExt`]): subject and credential as pseudonyms and keyed digests, tier, scopes.
//! No token, key or subject leaves this layer.
//!
//! - Per route, through a [`RouteMap<AuthRoute>`](tollgate_core::RouteMap): credentials
//!   [required, optional or skipped](AuthRequirement), and scopes the principal must
//!   hold (403 `insufficient_scope` otherwise). By default every route requires
//!   credentials.
//! - JWT: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA; every key is
//!   pinned to one [`Algorithm`] (RFC 8725 §3.1), so `alg: none` and HMAC signed with
//!   an RSA public key are refused. `jku`, `x5u` and embedded `jwk` headers are never
//!   followed. `exp` and `nbf` are checked on the layer's clock. Verified tokens are
//!   cached (keyed by a keyed 128-bit hash of the token, never past `exp`), so a
//!   repeated token skips signature verification.
//! - Several issuers: `[[auth.issuers]]`, each with its own keys or JWKS, audiences,
//!   algorithms, tier claim and required claims; a token is verified by the issuer
//!   its `iss` names (an unknown one gets 401), next to the single `[auth.jwt]`.
//! - API keys: stored only as SHA-256 digests, compared in constant time.
//! - Introspection (RFC 7662) with the `oauth2` crate; an unreachable endpoint is a
//!   503, never a pass.
//! - DPoP (RFC 9449, `[auth.dpop]`): `Authorization: DPoP` with a proof checked per
//!   §4.3 (`typ`, asymmetric `alg` from an allowlist, public `jwk`, signature,
//!   `htm`, `htu`, `iat`, `ath`, optional server nonces), the token's `cnf.jkt`
//!   compared with the proof key's RFC 7638 thumbprint, and each proof's `jti`
//!   recorded once in a [`ReplayCache`] (keyed digests only). A token carrying
//!   `cnf.jkt` is refused as a bearer token. Per route, DPoP is
//!   [required, optional or off](DpopMode); the proven key reaches the stack as the
//!   principal's [`BoundKey`](tollgate_core::BoundKey) pseudonym.
//! - RFC 9728 protected resource metadata (`[auth.resource_metadata]`): the layer
//!   answers `GET /.well-known/oauth-protected-resource` itself (authorization
//!   servers, bearer methods, DPoP algorithms) and names it in every challenge.
//! - Errors: RFC 9457 problem+json, `WWW-Authenticate: Bearer` with RFC 6750 codes,
//!   customizable through a [`ProblemResponder`](tollgate_core::ProblemResponder).
//!
//! Handlers extract the [`Principal`]; the [`FreezeAdmin`] router freezes, unfreezes
//! and lists.
#![warn(missing_docs)]
#![deny(unreachable_pub)]

mod admin;
mod api_key;
mod authenticator;
mod builder;
mod cache;
mod config;
mod credential;
mod dpop;
mod error;
mod introspection;
mod inventory;
mod jwks;
mod jwt;
mod keys;
mod layer;
mod metadata;
mod policy;
mod route;
mod scope;
mod service;

pub use admin::{
    DEFAULT_ADMIN_SCOPE, FreezeAdmin, FreezeKind, FreezeRequest, INVALID_ADMIN_REQUEST, NOT_FROZEN,
    freeze_admin_router,
};
pub use api_key::{ApiKeyRecord, ApiKeys};
pub use builder::AuthBuilder;
pub use config::{
    ApiKeyConfig, AuthConfig, DpopConfig, IntrospectionConfig, JwtConfig, JwtProfile, OneOrMany,
    ResourceMetadataConfig, StaticKeyConfig,
};
pub use dpop::{
    DPOP, DPOP_NONCE, DpopMode, MemoryReplayCache, ReplayCache, SharedReplayCache, jwk_thumbprint,
};
pub use error::AuthError;
pub use jwt::token_digest_hex;
pub use keys::{Algorithm, JwtKey, JwtKeyError, UnknownAlgorithm};
pub use layer::AuthLayer;
pub use metadata::WELL_KNOWN as RESOURCE_METADATA_PATH;
pub use route::{AuthRequirement, AuthRoute};
pub use service::AuthService;
pub use tollgate_core::Principal;
pub use tollgate_core::future::ResponseFuture;

#[doc(hidden)]
pub mod bench;
