//! The privacy trace layer over real HTTP, with every byte of log output captured.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::{Router, routing::get};
use serde_json::Value;
use tollgate_core::{ClientConfig, ClientContext, RouteMap, fields};
use tollgate_privacy::{LogProfile, PrivacyConfig, PrivacyTraceLayer};
use tollgate_test_support::{LogCapture, pseudonymizer, serve_captured};
use tracing_subscriber::prelude::*;

async fn network(ctx: ClientContext) -> String {
    ctx.network().to_string()
}

/// Serves `layer` around a small app on 127.0.0.1, on a thread of its own whose
/// every log event (all levels, all targets) is captured. The test's own HTTP client
/// runs elsewhere, so the capture holds exactly what the server emitted.
fn serve(layer: PrivacyTraceLayer) -> (SocketAddr, LogCapture) {
    let server = serve_captured(tollgate_privacy::json_layer, || async move {
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/v1/items/{id}", get(|| async { "item" }))
            .route("/network", get(network))
            .layer(layer)
    });
    (server.addr, server.capture)
}

/// The request lines (target `tollgate::request`) among the captured events.
fn request_lines(capture: &LogCapture) -> Vec<Value> {
    capture.lines_with_target(tollgate_privacy::TARGET)
}

fn headers(names: &[&str]) -> PrivacyConfig {
    PrivacyConfig {
        log_headers: names.iter().map(|n| n.to_string()).collect(),
        ..PrivacyConfig::default()
    }
}

fn trusting_loopback() -> ClientConfig {
    ClientConfig::default().trust_proxies(["127.0.0.0/8".parse().unwrap()])
}

#[tokio::test]
async fn one_line_per_request_with_route_template_and_no_raw_path() {
    let (addr, capture) = serve(PrivacyTraceLayer::new(pseudonymizer()));
    let client = reqwest::Client::new();
    let r = client
        .get(format!(
            "http://{addr}/v1/items/order-99817?email=canary@example.com"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let lines = request_lines(&capture);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let span = &lines[0]["span"];
    assert_eq!(span["http.route"], "/v1/items/{id}");
    assert_eq!(span["http.method"], "GET");
    assert_eq!(span["http.status"], 200);
    assert_eq!(span["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(span["client.network"].as_str().unwrap().len(), 24);
    assert!(lines[0]["timestamp"].as_str().unwrap().ends_with(":00Z"));
    assert_eq!(lines[0]["fields"]["message"], "request completed");
    let text = capture.text();
    for canary in ["order-99817", "canary@example.com", "127.0.0.1", "email"] {
        assert!(!text.contains(canary), "{canary} leaked: {text}");
    }
}

#[tokio::test]
async fn spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    // No trusted proxies: the loopback peer's own prefix is the client's.
    let (addr, _) = serve(PrivacyTraceLayer::new(pseudonymizer()));
    let client = reqwest::Client::new();
    let plain = client
        .get(format!("http://{addr}/network"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let spoofed = client
        .get(format!("http://{addr}/network"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("forwarded", "for=198.51.100.7")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(plain, "127.0.0.0/24");
    assert_eq!(spoofed, plain);
}

#[tokio::test]
async fn trusted_proxy_header_sets_the_client_network() {
    let layer = PrivacyTraceLayer::builder(PrivacyConfig::default(), pseudonymizer())
        .client(trusting_loopback())
        .build()
        .unwrap();
    let (addr, _) = serve(layer);
    let client = reqwest::Client::new();
    let via_proxy = client
        .get(format!("http://{addr}/network"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(via_proxy, "198.51.100.0/24");
}

#[tokio::test]
async fn incoming_traceparent_is_kept_and_minimal_routes_carry_no_client_fields() {
    let routes = RouteMap::new(
        [("/health", LogProfile::Minimal), ("/network", LogProfile::Off)],
        LogProfile::Full,
    )
    .unwrap();
    let layer = PrivacyTraceLayer::builder(PrivacyConfig::default(), pseudonymizer())
        .routes(routes)
        .build()
        .unwrap();
    let (addr, capture) = serve(layer);
    let client = reqwest::Client::new();
    client
        .get(format!("http://{addr}/health"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .unwrap();
    // An Off route still gets its ClientContext, but writes nothing.
    let network = client.get(format!("http://{addr}/network")).send().await.unwrap();
    assert_eq!(network.text().await.unwrap(), "127.0.0.0/24");

    let lines = request_lines(&capture);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let span = lines[0]["span"].as_object().unwrap();
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(!span.contains_key(fields::CLIENT_NETWORK));
}

#[tokio::test]
async fn allowlisted_headers_only() {
    let layer = PrivacyTraceLayer::from_config(&headers(&["accept"]), pseudonymizer()).unwrap();
    let (addr, capture) = serve(layer);
    reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .header("accept", "application/json")
        .header("x-secret-thing", "canary-value")
        .send()
        .await
        .unwrap();
    // An allowlisted header's text is the client's to choose: only its vocabulary's
    // elements are logged.
    reqwest::Client::new()
        .get(format!("http://{addr}/health"))
        .header("accept", "canary.user@example.org, text/html;q=203.0.113.77")
        .send()
        .await
        .unwrap();
    let lines = request_lines(&capture);
    assert_eq!(lines[0]["span"][fields::HEADERS], "accept=application/json");
    assert_eq!(lines[1]["span"][fields::HEADERS], "accept=other,text/html");
    let text = capture.text();
    for canary in ["canary-value", "canary.user", "203.0.113"] {
        assert!(!text.contains(canary), "{canary} logged");
    }
}

#[test]
fn identifying_headers_cannot_be_allowlisted() {
    for name in [
        "Authorization",
        "user-agent",
        "X-Forwarded-For",
        "cookie",
        "x-api-key",
    ] {
        let err = PrivacyTraceLayer::from_config(&headers(&[name]), pseudonymizer()).unwrap_err();
        assert!(err.to_string().contains("privacy.log_headers"), "{err}");
    }
    assert!(PrivacyTraceLayer::from_config(&headers(&["not a header"]), pseudonymizer()).is_err());
    let mut typo = headers(&["accept"]);
    typo.header_values
        .insert("acept".into(), vec!["application/json".into()]);
    let err = PrivacyTraceLayer::from_config(&typo, pseudonymizer()).unwrap_err();
    assert!(err.to_string().contains("privacy.header_values"), "{err}");
    let mut configured = headers(&["accept"]);
    configured
        .header_values
        .insert("Accept".into(), vec!["application/json".into()]);
    assert!(PrivacyTraceLayer::from_config(&configured, pseudonymizer()).is_ok());
}

#[test]
fn the_span_declares_every_field_in_order() {
    use tracing::subscriber::with_default;
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Clone, Default)]
    struct Names(Arc<Mutex<Vec<Vec<String>>>>);
    impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Names {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: Context<'_, S>,
        ) {
            let names = attrs
                .metadata()
                .fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect();
            self.0.lock().unwrap().push(names);
        }
    }

    let names = Names::default();
    let subscriber = tracing_subscriber::registry().with(names.clone());
    with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            use tower::ServiceExt;
            let app = Router::new()
                .route("/x", get(|| async { "x" }))
                .layer(PrivacyTraceLayer::new(pseudonymizer()));
            let req = http::Request::get("/x").body(axum::body::Body::empty()).unwrap();
            app.oneshot(req).await.unwrap();
        });
    });
    let seen = names.0.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0],
        fields::ALL.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn works_as_a_route_layer_on_some_routes_only() {
    use tower::ServiceExt;

    let capture = LogCapture::new();
    let subscriber = tracing_subscriber::registry().with(tollgate_privacy::json_layer(capture.clone()));
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route("/v1/items/{id}", get(|| async { "item" }))
        .route_layer(PrivacyTraceLayer::new(pseudonymizer()))
        .route("/health", get(|| async { "ok" }));
    for path in ["/v1/items/5", "/health", "/v1/items/6"] {
        let req = http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
    }
    let lines = request_lines(&capture);
    assert_eq!(lines.len(), 2, "only the layered route logs: {lines:?}");
    assert!(lines.iter().all(|l| l["span"]["http.route"] == "/v1/items/{id}"));
}
