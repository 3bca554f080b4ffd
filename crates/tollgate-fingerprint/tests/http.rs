//! The layer over real HTTP, behind a trusted proxy so each test picks client addresses.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use support::{CHROME, Client, Env, FIREFOX, app, app_with_routes, call, me_route};
use tollgate_core::{Clock, FreezeList, RouteMap, Timestamp};
use tollgate_fingerprint::{FingerprintConfig, SessionPolicy};
use tollgate_test_support::serve;

const A: Client = Client {
    ip: "198.51.100.7",
    user_agent: FIREFOX,
};
const B: Client = Client {
    ip: "203.0.113.9",
    user_agent: CHROME,
};

fn config(policy: SessionPolicy) -> FingerprintConfig {
    FingerprintConfig {
        policy,
        ..FingerprintConfig::default()
    }
}

#[tokio::test]
async fn a_token_moved_between_clients_is_flagged_then_unhealthy() {
    let env = Env::new();
    let addr = serve(app(&env, env.layer(&config(SessionPolicy::Tag)), None)).await;
    for _ in 0..5 {
        let a = call(addr, "/me", "jti-1", A).await;
        assert_eq!((a.status, a.body.as_str()), (200, "healthy "));
        env.clock.advance(Duration::from_secs(5));
    }
    let b = call(addr, "/me", "jti-1", B).await;
    assert_eq!(b.status, 200);
    // One switch could be a move; the new client is what stands out.
    assert_eq!(b.body, "suspicious new_fingerprint");

    // Another token used steadily from B meanwhile is not affected.
    assert_eq!(call(addr, "/me", "jti-other", B).await.body, "healthy ");

    // Then the two take turns: each quick switch counts, the third makes it unhealthy.
    let a = call(addr, "/me", "jti-1", A).await;
    assert_eq!(a.body, "suspicious concurrent_networks");
    let b = call(addr, "/me", "jti-1", B).await;
    assert_eq!(b.body, "suspicious concurrent_networks");
    let a = call(addr, "/me", "jti-1", A).await;
    assert_eq!(a.status, 200, "tag only never refuses");
    assert_eq!(a.body, "unhealthy concurrent_networks,fingerprint_alternation");
}

#[tokio::test]
async fn a_mobile_client_moving_within_its_24_is_not_flagged() {
    let env = Env::new();
    let addr = serve(app(&env, env.layer(&config(SessionPolicy::Reauthenticate)), None)).await;
    let ips = [
        "198.51.100.7",
        "198.51.100.200",
        "198.51.100.31",
        "198.51.100.7",
        "198.51.100.99",
        "198.51.100.1",
        "198.51.100.254",
        "198.51.100.13",
    ];
    for ip in ips {
        let answer = call(
            addr,
            "/me",
            "jti-mobile",
            Client {
                ip,
                user_agent: CHROME,
            },
        )
        .await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "healthy "), "{ip}");
        env.clock.advance(Duration::from_secs(2));
    }
    // A change of browser version is a new fingerprint, but the network is the same.
    let upgraded = call(
        addr,
        "/me",
        "jti-mobile",
        Client {
            ip: "198.51.100.7",
            user_agent: FIREFOX,
        },
    )
    .await;
    assert_eq!(upgraded.body, "suspicious new_fingerprint");
}

#[tokio::test]
async fn the_reauthenticate_policy_answers_401_once_unhealthy() {
    let env = Env::new();
    let addr = serve(app(&env, env.layer(&config(SessionPolicy::Reauthenticate)), None)).await;
    for _ in 0..3 {
        assert_eq!(call(addr, "/me", "jti-2", A).await.status, 200);
    }
    // Suspicious is below the default act_on (unhealthy): let through.
    assert_eq!(call(addr, "/me", "jti-2", B).await.status, 200);
    assert_eq!(call(addr, "/me", "jti-2", A).await.status, 200);
    assert_eq!(call(addr, "/me", "jti-2", B).await.status, 200);
    // The third quick switch: two clients taking turns.
    let refused = call(addr, "/me", "jti-2", A).await;
    assert_eq!(refused.status, 401);
    let problem: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(problem["type"], "urn:tollgate:problem:session-changed");
    assert!(problem["detail"].as_str().unwrap().contains("session changed"));
    let challenge = refused.www_authenticate.unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert!(challenge.contains("session changed"), "{challenge}");
    // The same token keeps being refused while the alternation window holds.
    assert_eq!(call(addr, "/me", "jti-2", B).await.status, 401);
    // A fresh token (re-authentication) starts a fresh, healthy session.
    assert_eq!(call(addr, "/me", "jti-3", A).await.body, "healthy ");
    // Once the windows have passed, the old session settles again.
    env.clock.advance(Duration::from_secs(301));
    assert_eq!(call(addr, "/me", "jti-2", A).await.status, 200);
}

#[tokio::test]
async fn the_freeze_policy_freezes_the_credential() {
    let env = Env::new();
    let addr = serve(app(&env, env.layer(&config(SessionPolicy::Freeze)), None)).await;
    let principal = env.principal("jti-4");
    for c in [A, A, A, B, A, B] {
        assert_eq!(call(addr, "/me", "jti-4", c).await.status, 200);
    }
    assert!(env.freeze_list.check(&principal).await.unwrap().is_none());
    let frozen = call(addr, "/me", "jti-4", A).await;
    assert_eq!(frozen.status, 401);
    assert!(frozen.body.contains("urn:tollgate:problem:credential-frozen"));
    assert!(frozen.www_authenticate.unwrap().contains("invalid_token"));
    let freeze = env.freeze_list.check(&principal).await.unwrap().expect("frozen");
    assert_eq!(
        freeze.reason,
        "session unhealthy: concurrent_networks,fingerprint_alternation"
    );
    assert_eq!(
        freeze.until,
        Some(env.clock.now().saturating_add(Duration::from_secs(86_400)))
    );
    // The authentication layer, sharing the list, refuses the credential from now on,
    // from either client, even after the session would have settled.
    env.clock.advance(Duration::from_secs(3_600));
    let again = call(addr, "/me", "jti-4", A).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("credential-frozen"));
    // Other credentials are untouched.
    assert_eq!(call(addr, "/me", "jti-5", B).await.status, 200);
}

#[tokio::test]
async fn report_only_acts_on_nothing() {
    let env = Env::new();
    let config = FingerprintConfig {
        report_only: true,
        ..config(SessionPolicy::Freeze)
    };
    let addr = serve(app(&env, env.layer(&config), None)).await;
    for c in [A, A, A, B, A, B, A] {
        assert_eq!(call(addr, "/me", "jti-6", c).await.status, 200);
    }
    assert!(env.freeze_list.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_route_can_be_stricter_or_skipped() {
    let env = Env::new();
    // /health is not fingerprinted: the layer's RouteMap, read from MatchedPath.
    let layer = env
        .builder(&config(SessionPolicy::Tag))
        .routes(RouteMap::new([("/health", false)], true).unwrap())
        .build()
        .unwrap();
    let addr = serve(app_with_routes(&env, routes_for(&env), layer, None)).await;
    for c in [A, A, A, B, A, B] {
        assert_eq!(call(addr, "/me", "jti-7", c).await.status, 200);
    }
    assert_eq!(call(addr, "/me", "jti-7", A).await.status, 200);
    // /admin has its own layer with the reauthenticate policy: it reuses the verdict.
    let admin = call(addr, "/admin", "jti-7", B).await;
    assert_eq!(admin.status, 401, "{}", admin.body);
    assert!(admin.body.contains("session-changed"));
    assert_eq!(call(addr, "/admin", "jti-fresh", B).await.status, 200);
    assert_eq!(call(addr, "/health", "jti-7", A).await.body, "false");
}

/// `/me` (tag), `/admin` (its own stricter layer), `/health`.
fn routes_for(env: &Env) -> Router {
    let strict = env.layer(&config(SessionPolicy::Reauthenticate));
    Router::new()
        .route("/me", me_route())
        .route("/admin", me_route().layer(strict))
        .route(
            "/health",
            get(|info: Option<tollgate_core::SessionInfo>| async move { format!("{}", info.is_some()) }),
        )
}

#[tokio::test]
async fn routes_turned_off_get_no_verdict_and_no_record() {
    let env = Env::new();
    let config = config(SessionPolicy::Reauthenticate);
    let store = env.store(&config);
    // Off: /health and everything under /public, except /public/strict (most specific wins).
    let routes = RouteMap::new(
        [("/health", false), ("/public/*", false), ("/public/strict", true)],
        true,
    )
    .unwrap();
    let layer = env
        .builder(&config)
        .store(Arc::new(store.clone()))
        .routes(routes)
        .build()
        .unwrap();
    let app = app_with_routes(
        &env,
        Router::new()
            .route("/me", me_route())
            .route("/health", me_route())
            .route("/public", me_route())
            .route("/public/{id}", me_route())
            .route("/public/{id}/notes", me_route())
            .route("/public/strict", me_route()),
        layer,
        None,
    );
    let addr = serve(app).await;
    // A token moving between clients on routes turned off: no verdict, never
    // refused, nothing recorded.
    for c in [A, A, A, B, A, B, A, B] {
        for path in ["/health", "/public", "/public/7", "/public/7/notes"] {
            let r = call(addr, path, "jti-off", c).await;
            assert_eq!((r.status, r.body.as_str()), (200, "none"), "{path}");
        }
    }
    let off = env.principal("jti-off").credential_key();
    assert!(store.record(&off).is_none());
    assert_eq!(store.entry_count(), 0);
    // The same token on a route that is on starts a fresh session.
    assert_eq!(call(addr, "/me", "jti-off", B).await.body, "healthy ");
    assert_eq!(store.record(&off).unwrap().requests, 1);
    // The exact route under the wildcard is on.
    assert_eq!(call(addr, "/public/strict", "jti-off", B).await.body, "healthy ");
    assert_eq!(store.record(&off).unwrap().requests, 2);
    assert_eq!(store.entry_count(), 1);
}

#[tokio::test]
async fn a_token_first_seen_long_after_issue_is_stale() {
    let env = Env::new();
    let layer = env.layer(&FingerprintConfig::default());
    let issued = env.clock.now();
    env.clock.advance(Duration::from_secs(2 * 3_600));
    let addr = serve(app(&env, layer, Some(issued))).await;
    assert_eq!(call(addr, "/me", "jti-8", A).await.body, "suspicious stale_token");
    assert_eq!(call(addr, "/me", "jti-8", A).await.body, "suspicious stale_token");
}

#[tokio::test]
async fn tokens_issued_before_the_layer_started_are_not_stale() {
    let env = Env::new();
    let issued = Timestamp::from_secs(1_000);
    let addr = serve(app(&env, env.layer(&FingerprintConfig::default()), Some(issued))).await;
    assert_eq!(call(addr, "/me", "jti-9", A).await.body, "healthy ");
}

#[tokio::test]
async fn requests_without_credentials_pass_untouched() {
    let env = Env::new();
    let addr = serve(app(&env, env.layer(&config(SessionPolicy::Reauthenticate)), None)).await;
    let answer = reqwest::get(format!("http://{addr}/me")).await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "none");
}

#[tokio::test]
async fn hostile_headers_get_an_answer_not_a_panic() {
    let env = Env::new();
    let config = FingerprintConfig {
        dimensions: tollgate_fingerprint::Dimensions {
            network: true,
            user_agent: true,
            accept_language: true,
            client_hints: true,
        },
        ..config(SessionPolicy::Reauthenticate)
    };
    let addr = serve(app(&env, env.layer(&config), None)).await;
    let long = "x".repeat(6_000);
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/me"))
        .header("authorization", "Bearer jti-10")
        .header("x-forwarded-for", "not-an-address, , 999.1.1.1")
        .header("user-agent", long.as_str())
        .header("user-agent", "second")
        .header("accept-language", long.as_str())
        .header(
            "sec-ch-ua-platform",
            reqwest::header::HeaderValue::from_bytes(b"\"\xff\xfe\"").unwrap(),
        )
        .header("sec-ch-ua-mobile", "?7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "healthy ");
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/me"))
        .header("authorization", "Bearer jti-10")
        .header("x-forwarded-for", "198.51.100.7")
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"Mozilla/5.0 \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}
