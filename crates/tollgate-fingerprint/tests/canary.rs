//! Canary: known identifiers sent through the layer must appear in no log byte, no
//! span field, no store key and no stored record.

mod support;

use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use support::{Env, app};
use tollgate_core::FreezeList;
use tollgate_fingerprint::{ActOn, Dimensions, FingerprintConfig, SessionPolicy};
use tollgate_test_support::LogCapture;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_subscriber::fmt::format::FmtSpan;

const TOKEN: &str = "jti-qqx-4471";
const UA_A: &str = "Mozilla/5.0 (X11; Linux x86_64; qqxua-1) Gecko/20100101 Firefox/133.0";
const UA_B: &str =
    "Mozilla/5.0 (qqxua-2) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.1.2 Safari/537.36";
const IP_A: &str = "203.0.113.77";
const IP_B: &str = "192.0.2.55";

/// Everything raw the test sends, and the coarsened prefixes too: none may appear.
const FORBIDDEN: &[&str] = &[
    TOKEN,
    "qqx", // token, subject (`subject-of-jti-qqx-4471`), user agents, language, platform
    "203.0.113",
    "192.0.2",
    "Firefox",
    "Chrome",
    "Mozilla",
];

#[tokio::test]
async fn no_raw_dimension_reaches_logs_or_the_store() {
    let captured = LogCapture::new();
    captured.json_subscriber().with_span_events(FmtSpan::CLOSE).init();

    let env = Env::new();
    let config = FingerprintConfig {
        dimensions: Dimensions {
            network: true,
            user_agent: true,
            accept_language: true,
            client_hints: true,
        },
        policy: SessionPolicy::Freeze,
        act_on: ActOn::Unhealthy,
        ..FingerprintConfig::default()
    };
    let store = env.store(&config);
    let layer = env.layer_on(&config, &store);
    // Stands in for PrivacyTraceLayer: one span per request with the session fields.
    let span_layer = from_fn(|req: Request, next: Next| async move {
        let span = tracing::info_span!(
            "request",
            session = Empty,
            "session.health" = Empty,
            "session.reasons" = Empty,
            "session.action" = Empty,
        );
        next.run(req).instrument(span).await
    });
    let addr = tollgate_test_support::serve(app(&env, layer, None).layer(span_layer)).await;

    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for (ip, ua) in [
        (IP_A, UA_A),
        (IP_A, UA_A),
        (IP_A, UA_A),
        (IP_B, UA_B),
        (IP_A, UA_A),
        (IP_B, UA_B),
        (IP_A, UA_A),
    ] {
        let r = client
            .get(format!("http://{addr}/me"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("x-forwarded-for", ip)
            .header("user-agent", ua)
            .header("accept-language", "qqxl-QQ,en;q=0.5")
            .header("sec-ch-ua-platform", "\"Qqxos\"")
            .header("sec-ch-ua-mobile", "?1")
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 401]);

    let logs = captured.text();
    // The capture works and the layer did record.
    assert!(logs.contains("\"session.health\":\"healthy\""), "{logs}");
    assert!(logs.contains("\"session.health\":\"unhealthy\""), "{logs}");
    assert!(logs.contains("\"session.action\":\"freeze\""), "{logs}");
    assert!(logs.contains("new_fingerprint"), "{logs}");

    let mut stored = String::new();
    for (key, record) in store.entries() {
        stored.push_str(key.as_str());
        stored.push_str(&serde_json::to_string(&record).unwrap());
    }
    for freeze in env.freeze_list.list().await.unwrap() {
        stored.push_str(&serde_json::to_string(&freeze).unwrap());
    }
    assert!(stored.contains("tollgate:session:"));
    assert!(stored.contains("credential"), "{stored}");

    for needle in FORBIDDEN {
        let needle = needle.to_lowercase();
        assert!(
            !logs.to_lowercase().contains(&needle),
            "{needle} in logs:\n{logs}"
        );
        assert!(
            !stored.to_lowercase().contains(&needle),
            "{needle} in store:\n{stored}"
        );
    }
}
