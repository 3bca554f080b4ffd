//! Per-route policies through `Router::layer` and a `RouteMap`: a skipped route, a
//! detector turned off on one route, a wildcard pattern, and a map over a table an
//! outer layer already resolved.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use http::Response;
use tollgate_anomaly::{AnomalyConfig, AnomalyKind, AnomalyLayer, AnomalyRoute, AnomalyTags};
use tollgate_core::pseudonym::Domain;
use tollgate_core::{
    CredentialKind, FakeClock, Principal, Pseudonymizer, RouteMap, RouteTable, SessionHealth, SessionInfo,
    SessionReasons,
};
use tollgate_test_support::{clock, pseudonymizer_with_clock};
use tower::ServiceExt;

fn app() -> Router {
    let ok = || async { "ok" };
    Router::new()
        .route("/health", get(ok))
        .route("/v1/items/{id}", get(ok))
        .route("/v1/export/{id}", get(ok))
        .route("/admin/users/{id}", get(ok))
        .route("/admin/audit/{id}", get(ok))
}

/// Every token-sharing and enumeration verdict fires quickly: the session is judged
/// shared, and more than five distinct ids on one route is a walk.
fn config() -> AnomalyConfig {
    let mut config = AnomalyConfig::default();
    config.enumeration.max_distinct_ids = 5;
    config
}

/// A request from `user`, whose session the fingerprinting layer judged shared.
fn request(p: &Pseudonymizer, user: &str, path: &str) -> http::Request<Body> {
    let mut req = http::Request::get(path).body(Body::empty()).unwrap();
    let ext = req.extensions_mut();
    ext.insert(Principal::new(
        p,
        CredentialKind::ApiKey,
        user,
        format!("key-{user}").as_bytes(),
    ));
    ext.insert(SessionInfo {
        session: p.pseudonym(Domain::SESSION, user.as_bytes()),
        fingerprint: p.pseudonym(Domain::FINGERPRINT, b"fp"),
        health: SessionHealth::Unhealthy,
        reasons: SessionReasons::default(),
    });
    req
}

/// The tags of a response; `None` when the layer attached none.
fn tags(response: &Response<Body>) -> Option<AnomalyTags> {
    let tags = response.extensions().get::<AnomalyTags>().copied();
    assert_eq!(
        tags.is_some(),
        response.headers().contains_key("x-tollgate-anomaly"),
        "the debug header goes with the tags"
    );
    tags
}

/// Walks `ids` distinct ids under `prefix` as `user`; the tags of every response.
async fn walk(
    app: &Router,
    p: &Pseudonymizer,
    user: &str,
    prefix: &str,
    ids: u32,
) -> Vec<Option<AnomalyTags>> {
    let mut out = Vec::new();
    for id in 0..ids {
        let response = app
            .clone()
            .oneshot(request(p, user, &format!("{prefix}/{id}")))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        out.push(tags(&response));
    }
    out
}

fn layer(p: &Pseudonymizer, clock: &FakeClock, routes: RouteMap<AnomalyRoute>) -> AnomalyLayer {
    AnomalyLayer::builder(config(), p.clone())
        .clock(Arc::new(clock.clone()))
        .routes(routes)
        .debug_header(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_skipped_route_gets_no_tags() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let routes = RouteMap::new(
        [("/health", AnomalyRoute::default().skip())],
        AnomalyRoute::default(),
    )
    .unwrap();
    let app = app().layer(layer(&p, &clock, routes));

    for _ in 0..20 {
        let response = app
            .clone()
            .oneshot(request(&p, "mallory", "/health"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(tags(&response), None);
    }
    // The same shared session elsewhere is tagged.
    let response = app
        .clone()
        .oneshot(request(&p, "mallory", "/v1/items/1"))
        .await
        .unwrap();
    assert!(tags(&response).unwrap().contains(AnomalyKind::TokenSharing));
}

#[tokio::test]
async fn a_disabled_kind_is_not_tagged_on_its_route() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let routes = RouteMap::new(
        [(
            "/v1/export/{id}",
            AnomalyRoute::default().disable(AnomalyKind::Enumeration),
        )],
        AnomalyRoute::default(),
    )
    .unwrap();
    let app = app().layer(layer(&p, &clock, routes));

    // On the export route: the other detectors still run, enumeration never fires.
    let export = walk(&app, &p, "bulk", "/v1/export", 30).await;
    for t in &export {
        let t = t.expect("token sharing is still tagged");
        assert!(t.contains(AnomalyKind::TokenSharing), "{t}");
        assert!(!t.contains(AnomalyKind::Enumeration), "{t}");
    }
    // The same walk on a route without the policy is an enumeration.
    let items = walk(&app, &p, "bulk", "/v1/items", 30).await;
    assert!(
        items
            .iter()
            .flatten()
            .any(|t| t.contains(AnomalyKind::Enumeration)),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_wildcard_route_covers_its_subtree_and_the_most_specific_pattern_wins() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let routes = RouteMap::new(
        [
            (
                "/admin/*",
                AnomalyRoute::default().disable(AnomalyKind::TokenSharing),
            ),
            ("/admin/audit/{id}", AnomalyRoute::default().skip()),
        ],
        AnomalyRoute::default(),
    )
    .unwrap();
    let app = app().layer(layer(&p, &clock, routes));

    // Under `/admin/*`: no token-sharing tag, enumeration still fires.
    let users = walk(&app, &p, "ops", "/admin/users", 30).await;
    assert!(
        users
            .iter()
            .flatten()
            .all(|t| !t.contains(AnomalyKind::TokenSharing)),
        "{users:?}"
    );
    assert!(
        users
            .iter()
            .flatten()
            .any(|t| t.contains(AnomalyKind::Enumeration)),
        "{users:?}"
    );
    // Its own pattern is more specific than the wildcard: skipped.
    let audit = walk(&app, &p, "ops", "/admin/audit", 30).await;
    assert!(audit.iter().all(Option::is_none), "{audit:?}");
    // Outside the subtree the default applies.
    let response = app
        .clone()
        .oneshot(request(&p, "ops", "/v1/items/1"))
        .await
        .unwrap();
    assert!(tags(&response).unwrap().contains(AnomalyKind::TokenSharing));
}

#[tokio::test]
async fn a_map_over_a_shared_table_reads_the_route_an_outer_layer_resolved() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    // As a stack's facade does: one table, each layer's values over it, and the
    // outermost layer resolving the route once.
    let table = RouteTable::new(["/health", "/admin/*"]).unwrap();
    let routes = RouteMap::from_table(&table, |_, pattern| match pattern {
        "/health" => AnomalyRoute::default().skip(),
        _ => AnomalyRoute::default(),
    });
    let app = app().layer(layer(&p, &clock, routes)).layer(middleware::from_fn(
        move |mut req: Request, next: Next| {
            let table = table.clone();
            async move {
                table.resolve_and_insert(&mut req);
                next.run(req).await
            }
        },
    ));
    let response = app.clone().oneshot(request(&p, "eve", "/health")).await.unwrap();
    assert_eq!(tags(&response), None);
    let response = app
        .clone()
        .oneshot(request(&p, "eve", "/v1/items/1"))
        .await
        .unwrap();
    assert!(tags(&response).unwrap().contains(AnomalyKind::TokenSharing));
}
