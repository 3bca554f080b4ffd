//! Faults of the application behind the stack: a handler that panics.

mod common;

use axum::Router;
use axum::routing::get;
use common::*;
use tollgate_test_support::canary;

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
