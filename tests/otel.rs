//! Feature `otel`: the request spans exported through an in-memory OpenTelemetry
//! exporter join the caller's trace and carry no identifier.

mod common;

use common::*;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
use tollgate_test_support::canary::{self, assert_absent};
use tollgate_test_support::serve_captured;
use tracing_subscriber::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_spans_join_the_callers_trace_and_hold_no_canary() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(tollgate::otel::Redacting(SimpleSpanProcessor::new(
            exporter.clone(),
        )))
        .build();
    let otel = provider.clone();
    let server = serve_captured(
        move |capture| tollgate::privacy::json_layer(capture).and_then(tollgate::otel::layer(&otel)),
        || async {
            let tollgate = tollgate::Tollgate::from_config(&stack_config(""))
                .await
                .expect("the stack builds");
            tollgate.apply(api())
        },
    );
    let client = reqwest::Client::new();
    let token = token(canary::SUBJECT, canary::JTI, "pro");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (path, tp) in [
        ("/v1/items/987654321?email=a@b.c", Some(traceparent)),
        ("/v1/me", None),
    ] {
        let mut r = client
            .get(format!("http://{}{path}", server.addr))
            .bearer_auth(&token)
            .header("x-forwarded-for", canary::IP)
            .header("user-agent", canary::USER_AGENT)
            .header("tracestate", format!("vendor={}", canary::EMAIL))
            .header("baggage", format!("user={}", canary::SUBJECT));
        if let Some(tp) = tp {
            r = r.header("traceparent", tp);
        }
        assert_eq!(r.send().await.unwrap().status(), 200);
    }
    let wrong = client
        .get(format!("http://{}/v1/me", server.addr))
        .header("x-api-key", "tgk_canary_wrong_key_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    provider.force_flush().unwrap();

    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(spans.len(), 3, "one span per request, and only the request spans");
    assert!(spans.iter().all(|s| s.name == "request"));
    let joined = spans
        .iter()
        .find(|s| s.span_context.trace_id() == TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736))
        .expect("the request with a traceparent is in the caller's trace");
    assert_eq!(joined.parent_span_id, SpanId::from(0x00f067aa0ba902b7));
    assert!(
        joined.attributes.iter().any(|kv| kv.key.as_str() == "http.route"),
        "the redacted fields are exported: {:?}",
        joined.attributes
    );
    let exported = format!("{spans:?}");
    let mut forbidden: Vec<String> = canary::FRAGMENTS.iter().map(|c| c.to_string()).collect();
    forbidden.extend([
        token.clone(),
        "987654321".into(),
        "vendor=".into(),
        API_KEY.into(),
    ]);
    // No pseudonym either: every pseudonym the log lines carry is absent.
    for line in server.capture.lines_with_target(tollgate::privacy::TARGET) {
        for field in ["principal", "session", "client.network"] {
            if let Some(p) = line["span"][field].as_str() {
                forbidden.push(p.to_string());
            }
        }
    }
    assert!(forbidden.len() > 12, "the logs carried pseudonyms to look for");
    assert!(joined.attributes.iter().any(|kv| kv.key.as_str() == "tier"));
    assert_absent("the exported spans", &exported, &forbidden);
}
