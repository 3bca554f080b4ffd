//! Faults around the stack: a handler that panics, the clock jumping back and forth.

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use tollgate::Tollgate;
use tollgate_core::{FakeClock, SystemClock, Timestamp, clock::Clock};
use tollgate_test_support::{canary, serve_captured};

async fn boom() -> &'static str {
    panic!("lost {} from {}", canary::SUBJECT, canary::IP)
}

/// A panicking handler is answered with a 500 problem+json that went back through
/// every layer (so the request is logged once, with its status), the panic message
/// never reaches the log, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_gets_one_logged_500_and_the_server_stays_up() {
    tollgate::redact_panic_messages();
    let server = serve_app(stack_config(""), || {
        Router::new()
            .route("/boom", get(boom))
            .route("/health", get(|| async { "ok" }))
    });
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let r = client
            .get(format!("http://{}/boom", server.addr))
            .header("x-forwarded-for", canary::IP)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 500);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["type"], "urn:tollgate:problem:internal-error");
    }
    let r = client
        .get(format!("http://{}/health", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still serving");

    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let lines = server.capture.requests();
    let failed: Vec<_> = lines.iter().filter(|l| l["span"]["http.status"] == 500).collect();
    assert_eq!(failed.len(), 3, "each panicking request logged once: {lines:?}");
    assert!(failed.iter().all(|l| l["span"]["http.route"] == "/boom"));
    let text = server.capture.text();
    assert!(text.contains("panic (message withheld)"), "{text}");
    canary::assert_absent("the log output", &text, canary::FRAGMENTS);
}

/// The clock jumps back an hour, then forward a day: no 5xx; a spent budget is not
/// blocked for the hour (it starts again from one full burst, never more); tokens are
/// judged on the new time (expired after the day); the stack keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_jumps_back_and_forth() {
    let clock = Arc::new(FakeClock::new(SystemClock.now()));
    let config = stack_config("");
    let shared = clock.clone();
    let server = serve_captured(tollgate::privacy::json_layer, move || async move {
        let tollgate = Tollgate::builder(config)
            .clock(shared)
            .build()
            .await
            .expect("the stack builds");
        tollgate.apply(api())
    });
    let client = reqwest::Client::new();
    let get = |path: &str, ip: &str| {
        client
            .get(format!("http://{}{path}", server.addr))
            .header("x-forwarded-for", ip.to_string())
    };
    let token = token("clock-user", "clock-jti", "pro");

    // 25 anonymous requests from one network: the statuses.
    let burst = || async {
        let mut statuses = Vec::new();
        for _ in 0..25 {
            let r = get("/v1/items/1", "198.51.100.9").send().await.unwrap();
            statuses.push(r.status().as_u16());
        }
        statuses
    };
    // The anonymous tier allows a burst of 20 per second per network.
    let statuses = burst().await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 20, "{statuses:?}");

    clock.set(Timestamp::from_nanos(
        clock.now().as_nanos() - 3_600 * 1_000_000_000,
    ));
    let statuses = burst().await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        20,
        "one burst after the jump back, not a blocked hour nor more: {statuses:?}"
    );
    // A token issued "in the future" of the skewed clock is refused, not a 5xx.
    let r = get("/v1/me", "198.51.100.9")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    clock.advance(Duration::from_secs(3_600 + 86_400));
    assert_eq!(
        get("/v1/items/1", "198.51.100.9").send().await.unwrap().status(),
        200
    );
    let r = get("/v1/me", "198.51.100.9")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the token expired a day ago");
    let fresh = jwt_at(clock.now(), "clock-user-2");
    assert_eq!(
        get("/v1/me", "198.51.100.9")
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "a token valid at the new time passes"
    );

    tokio::time::sleep(Duration::from_millis(50)).await;
    let lines = server.capture.lines_with_target(tollgate::privacy::TARGET);
    assert!(lines.len() >= 30);
    assert!(
        lines
            .iter()
            .all(|l| l["span"]["http.status"].as_u64().unwrap_or(0) < 500),
        "{lines:?}"
    );
}

/// An HS256 token of the test issuer valid at `now`.
fn jwt_at(now: Timestamp, sub: &str) -> String {
    let secs = now.as_nanos() / 1_000_000_000;
    let mut claims = tollgate_test_support::jwt::claims(ISSUER, AUDIENCE, sub);
    claims["iat"] = secs.into();
    claims["exp"] = (secs + 600).into();
    tollgate_test_support::jwt::hs256(&JWT_SECRET, Some("test"), &claims)
}
