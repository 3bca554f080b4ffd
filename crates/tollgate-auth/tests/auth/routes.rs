//! Per-route policy over real HTTP: one layer on the whole router, a `RouteMap` of
//! `AuthRoute`s deciding per route template.

use axum::Router;
use axum::routing::get;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate_auth::{AuthLayer, AuthRoute};
use tollgate_core::RouteMap;

use crate::common::*;

async fn stack() -> Running {
    let routes = RouteMap::new(
        [
            ("/health", AuthRoute::skip()),
            ("/items/{id}", AuthRoute::optional()),
            ("/reports", AuthRoute::required().with_scopes(["read:reports"])),
            (
                "/reports/summary",
                AuthRoute::optional().with_scopes(["read:reports"]),
            ),
            ("/admin/*", AuthRoute::required().with_scopes(["tollgate:admin"])),
            ("/admin/status", AuthRoute::optional()),
        ],
        AuthRoute::required(),
    )
    .unwrap();
    let layer = AuthLayer::builder(config(None), pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/health", get(maybe_me))
        .route("/items/{id}", get(maybe_me))
        .route("/me", get(me))
        .route("/reports", get(|| async { "reports" }))
        .route("/reports/summary", get(|| async { "summary" }))
        .route("/admin", get(|| async { "admin" }))
        .route("/admin/users/{id}", get(|| async { "user" }))
        .route("/admin/status", get(maybe_me))
        .layer(layer);
    run(router).await
}

fn token_with_scope(scope: &str) -> String {
    let mut c = claims("alice");
    c["scope"] = json!(scope);
    sign(Algorithm::HS256, Some("hs256"), &c)
}

const ADMIN_KEY: (&str, &str) = ("x-api-key", "tg_test_key_1");

#[tokio::test]
async fn skip_never_reads_credentials() {
    let app = stack().await;
    let garbage = [
        vec![],
        vec![("authorization", "Bearer abc.def.ghi")],
        vec![("authorization", "Basic YWxpY2U6cHc=")],
        vec![("authorization", "Bearer a"), ("authorization", "Bearer b")],
        vec![("x-api-key", "not a key")],
    ];
    for headers in garbage {
        let r = app.get("/health", &headers).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["authenticated"], false, "no principal, even for a valid key");
    }
    let body: Value = app.get("/health", &[ADMIN_KEY]).await.json().await.unwrap();
    assert_eq!(body["authenticated"], false);
}

#[tokio::test]
async fn optional_passes_anonymous_and_refuses_invalid_credentials() {
    let app = stack().await;
    let body: Value = app.get("/items/7", &[]).await.json().await.unwrap();
    assert_eq!(body["authenticated"], false);
    let token = token_with_scope("read:items");
    let body: Value = app.bearer("/items/7", &token).await.json().await.unwrap();
    assert_eq!(body["authenticated"], true);
    let (status, code, problem) = outcome(app.bearer("/items/7", "abc.def.ghi").await).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid_token")));
    assert_eq!(problem, "urn:tollgate:problem:invalid-token");
    let (status, ..) = outcome(app.get("/items/7", &[("x-api-key", "tg_unknown")]).await).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn required_answers_401_problem_json() {
    let app = stack().await;
    let r = app.get("/me", &[]).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate-test\"");
    assert_eq!(outcome(r).await.2, "urn:tollgate:problem:missing-credentials");
    assert_eq!(app.get("/me", &[ADMIN_KEY]).await.status(), 200);
}

#[tokio::test]
async fn scoped_route_is_403_without_the_scope_and_200_with_it() {
    let app = stack().await;
    let r = app.bearer("/reports", &token_with_scope("read:items")).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"tollgate-test\", error=\"insufficient_scope\", scope=\"read:reports\""
    );
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let (_, code, problem) = outcome(r).await;
    assert_eq!(code.as_deref(), Some("insufficient_scope"));
    assert_eq!(problem, "urn:tollgate:problem:insufficient-scope");

    let r = app
        .bearer("/reports", &token_with_scope("read:items read:reports"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "reports");
    // Without credentials: 401, not 403.
    assert_eq!(app.get("/reports", &[]).await.status(), 401);
    // Scopes imply credentials, even on an optional route.
    assert_eq!(app.get("/reports/summary", &[]).await.status(), 401);
    let r = app
        .bearer("/reports/summary", &token_with_scope("read:reports"))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn wildcard_route_requires_its_scope_and_the_most_specific_route_wins() {
    let app = stack().await;
    let user = token_with_scope("read:items");
    for path in ["/admin", "/admin/users/7"] {
        assert_eq!(app.get(path, &[]).await.status(), 401, "{path}");
        let r = app.bearer(path, &user).await;
        assert_eq!(r.status(), 403, "{path}");
        assert!(
            r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("scope=\"tollgate:admin\"")
        );
        assert_eq!(app.get(path, &[ADMIN_KEY]).await.status(), 200, "{path}");
    }
    // A path no route matches falls under the wildcard by its raw path.
    assert_eq!(app.get("/admin/unrouted", &[]).await.status(), 401);
    assert_eq!(app.bearer("/admin/unrouted", &user).await.status(), 403);
    assert_eq!(app.get("/admin/unrouted", &[ADMIN_KEY]).await.status(), 404);
    // Elsewhere, the default applies to unrouted paths.
    assert_eq!(app.get("/nowhere", &[]).await.status(), 401);

    // /admin/status is more specific than /admin/*: optional, no scope.
    let body: Value = app.get("/admin/status", &[]).await.json().await.unwrap();
    assert_eq!(body["authenticated"], false);
    let body: Value = app.bearer("/admin/status", &user).await.json().await.unwrap();
    assert_eq!(body["authenticated"], true);
    assert_eq!(app.bearer("/admin/status", "abc.def.ghi").await.status(), 401);
}

#[tokio::test]
async fn a_skipped_route_with_scopes_is_refused_at_build() {
    let routes = RouteMap::new(
        [("/health", AuthRoute::skip().with_scopes(["x"]))],
        AuthRoute::required(),
    )
    .unwrap();
    let err = AuthLayer::builder(config(None), pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.setting, "routes.\"/health\".scopes");
}
