//! tollgate-auth over real HTTP: JWKS and introspection servers on 127.0.0.1.

mod api_keys;
mod canary;
mod common;
mod dpop;
mod freeze;
mod interop;
mod introspection;
mod issuers;
mod jwks;
mod jwt;
mod routes;
