//! Test scaffolding: tiny stand-ins for the auth and fingerprinting layers, and the
//! demo API's routes. The pseudonymizer, clock and server are `tollgate_test_support`'s.
#![allow(dead_code)]

use axum::Router;
use axum::extract::{Path, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::StatusCode;
use tollgate_anomaly::AnomalyTags;
use tollgate_core::problem::types;
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    CredentialKind, FreezeList, MemoryFreezeList, Principal, Problem, Pseudonymizer, SessionHealth,
    SessionInfo, SessionReasons, Tier,
};

/// A stand-in auth layer: `x-test-user: name[:tier]` authenticates (the credential id
/// is `key-{name}`), `x-test-user: bad` answers 401, no header passes anonymously.
/// Checks the freeze list like the real one.
pub fn test_auth(
    p: Pseudonymizer,
    freeze: MemoryFreezeList,
) -> impl Clone + Fn(Request, Next) -> TestFut + use<> {
    move |mut req: Request, next: Next| {
        let p = p.clone();
        let freeze = freeze.clone();
        Box::pin(async move {
            let user = req
                .headers()
                .get("x-test-user")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Some(user) = user {
                if user == "bad" {
                    return Problem::new(types::INVALID_TOKEN).into_response();
                }
                let (name, tier) = user.split_once(':').unwrap_or((&user, "free"));
                let principal =
                    Principal::new(&p, CredentialKind::ApiKey, name, format!("key-{name}").as_bytes())
                        .with_tier(Tier::new(tier));
                if freeze.check(&principal).await.unwrap().is_some() {
                    return Problem::new(types::CREDENTIAL_FROZEN).into_response();
                }
                let shared = req.headers().contains_key("x-test-shared");
                req.extensions_mut().insert(SessionInfo {
                    session: p.pseudonym(Domain::SESSION, name.as_bytes()),
                    fingerprint: p.pseudonym(Domain::FINGERPRINT, b"fp"),
                    health: if shared {
                        SessionHealth::Unhealthy
                    } else {
                        SessionHealth::Healthy
                    },
                    reasons: SessionReasons::default(),
                });
                req.extensions_mut().insert(principal);
            }
            next.run(req).await
        })
    }
}

pub type TestFut = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// The demo API's routes.
pub fn routes() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/items/{id}",
            get(|Path(id): Path<u64>, tags: AnomalyTags| async move {
                if id >= 1_000_000 {
                    return (StatusCode::NOT_FOUND, String::new()).into_response();
                }
                format!("item {id} tags={tags}").into_response()
            }),
        )
        .route("/v1/search", get(|| async { "results" }))
        .route(
            "/v1/login",
            post(|req: Request| async move {
                if req.headers().contains_key("x-good-password") {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                }
            }),
        )
}

pub fn auth_layer(
    p: &Pseudonymizer,
    freeze: &MemoryFreezeList,
) -> axum::middleware::FromFnLayer<impl Clone + Fn(Request, Next) -> TestFut + use<>, (), (Request,)> {
    middleware::from_fn(test_auth(p.clone(), freeze.clone()))
}
