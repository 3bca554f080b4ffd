//! Canary: known identifiers go in; none may come out in any log byte or stored key.

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate_auth::AuthLayer;
use tollgate_test_support::{LogCapture, canary};
use tracing_subscriber::fmt::format::FmtSpan;

use crate::common::*;

#[tokio::test(flavor = "current_thread")]
async fn no_identifier_reaches_logs_spans_or_store_keys() {
    let capture = LogCapture::new();
    let subscriber = capture
        .json_subscriber()
        .with_span_events(FmtSpan::CLOSE)
        .with_current_span(true)
        .with_env_filter("tollgate_auth=trace,tollgate_core=trace,canary=trace")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let intro = IntrospectionServer::start().await;
    let jwks = JwksServer::start(jwks_doc("rsa1")).await;
    let mut cfg = config(Some(&jwks.url()));
    cfg.introspection = Some(
        toml::from_str(&format!(
            "url = \"{}\"\nclient_id = \"rs\"\nclient_secret = \"s\"",
            intro.url()
        ))
        .unwrap(),
    );
    let layer = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap();
    let freeze = layer.freeze_list().clone();
    let span_layer =
        tower_http::trace::TraceLayer::new_for_http().make_span_with(|_: &axum::http::Request<_>| {
            tracing::info_span!(
                target: "canary",
                "request",
                principal = tracing::field::Empty,
                credential = tracing::field::Empty,
                tier = tracing::field::Empty,
                "auth.error" = tracing::field::Empty,
            )
        });
    let app = run(app(layer).layer(span_layer)).await;

    let subject = canary::SUBJECT;
    let mut c = claims(subject);
    c["jti"] = json!(canary::JTI);
    let token = sign(Algorithm::ES256, Some("es256"), &c);
    let me: Value = app.bearer("/me", &token).await.json().await.unwrap();
    let pseudonym = me["subject"].as_str().unwrap().to_string();
    app.bearer("/me", &token).await;
    app.get("/me", &[("x-api-key", "tg_test_key_1")]).await;
    app.get("/me", &[("x-api-key", "tg_canary_wrong_key")]).await;
    app.bearer("/me", "active-carol.canary@example.org").await;
    app.bearer("/me", "inactive-canary-opaque").await;
    let mut expired = claims(subject);
    expired["exp"] = json!(now() - 600);
    let expired = sign(Algorithm::RS256, Some("rs256"), &expired);
    app.bearer("/me", &expired).await;
    app.bearer(
        "/me",
        &sign_with(Algorithm::RS256, Some("kid-canary-forged"), &c, "rsa2"),
    )
    .await;
    // Freeze by subject through the admin API, then hit the frozen path.
    let r = app
        .client
        .post(format!("{}/admin/freezes", app.base))
        .header("x-api-key", "tg_test_key_1")
        .json(&json!({"kind": "subject", "id": subject, "reason": "canary"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(app.bearer("/me", &token).await.status(), 401);
    let stored = serde_json::to_string(&freeze.list().await.unwrap()).unwrap();
    let store_keys: Vec<String> = freeze
        .list()
        .await
        .unwrap()
        .iter()
        .map(|f| f.target.store_key().to_string())
        .collect();

    let logs = capture.text();
    // The capture saw the request spans and their auth fields...
    assert!(logs.contains(&pseudonym), "the principal pseudonym is logged");
    assert!(logs.contains("\"credential\":\"jwt\"") && logs.contains("\"credential\":\"api_key\""));
    assert!(logs.contains("\"auth.error\":\"expired\"") && logs.contains("\"auth.error\":\"frozen\""));
    assert!(logs.contains("\"auth.error\":\"inactive_token\""));
    // ...and no identifier.
    let token_parts: Vec<&str> = token.split('.').collect();
    let secrets = [
        subject,
        "alice.canary",
        canary::JTI,
        "tg_test_key_1",
        "tg_canary_wrong_key",
        "ops-team",
        "carol.canary",
        "inactive-canary-opaque",
        "kid-canary-forged",
        token_parts[1],
        token_parts[2],
        &expired,
    ];
    for (what, haystack) in [
        ("the log output", &logs),
        ("the freeze list", &stored),
        ("the store keys", &store_keys.join(" ")),
    ] {
        canary::assert_absent(what, haystack, secrets);
    }
}
