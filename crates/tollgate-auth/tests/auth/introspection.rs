//! OAuth2 token introspection over real HTTP.

use serde_json::Value;
use tollgate_auth::{AuthConfig, AuthLayer, IntrospectionConfig, OneOrMany};

use crate::common::*;

fn introspection_config(url: &str) -> AuthConfig {
    let mut cfg = config(None);
    cfg.introspection = Some(
        toml::from_str::<IntrospectionConfig>(&format!(
            "url = \"{url}\"\nclient_id = \"rs-1\"\nclient_secret = \"rs-secret\"\ntimeout = \"1s\"\ncache_ttl = \"1m\"\ntier_claim = \"plan\"\n"
        ))
        .unwrap(),
    );
    cfg
}

#[tokio::test]
async fn active_inactive_cached_and_unreachable() {
    let server = IntrospectionServer::start().await;
    let layer = AuthLayer::from_config(&introspection_config(&server.url()), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;

    let r = app.bearer("/me", "active-bob").await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["credential"], "introspection");
    assert_eq!(body["tier"], "gold");
    assert_eq!(server.hits(), 1);
    // Client credentials went as HTTP Basic.
    let auth = server.last_authorization.lock().unwrap().clone().unwrap();
    assert!(auth.starts_with("Basic "), "{auth}");
    // Cached: no second call.
    assert_eq!(app.bearer("/me", "active-bob").await.status(), 200);
    assert_eq!(server.hits(), 1);

    let (status, code, problem) = outcome(app.bearer("/me", "revoked-token").await).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid_token")));
    assert_eq!(problem, "urn:tollgate:problem:invalid-token");

    // JWT-shaped tokens still go to JWT verification.
    assert_eq!(app.bearer("/me", "abc.def.ghi").await.status(), 401);
    assert_eq!(server.hits(), 2);
}

/// With `issuer` and `audience` set, an active answer for another API or from
/// another issuer is refused; `active: false` answers are remembered for
/// `negative_cache_ttl`, so repeating a dead token does not call the endpoint again.
#[tokio::test]
async fn answers_are_checked_for_issuer_and_audience_and_refusals_are_remembered() {
    let server = IntrospectionServer::start().await;
    let mut cfg = introspection_config(&server.url());
    let ic = cfg.introspection.as_mut().unwrap();
    ic.issuer = Some(OneOrMany(vec![ISS.into()]));
    ic.audience = Some(OneOrMany(vec![AUD.into()]));
    ic.negative_cache_ttl = std::time::Duration::from_millis(300);
    let app = run(app(AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap())).await;

    assert_eq!(app.bearer("/me", "active-bob").await.status(), 200);
    for token in ["foreign-aud-bob", "foreign-iss-bob"] {
        let (status, code, _) = outcome(app.bearer("/me", token).await).await;
        assert_eq!((status, code.as_deref()), (401, Some("invalid_token")), "{token}");
    }

    let before = server.hits();
    for _ in 0..5 {
        assert_eq!(app.bearer("/me", "revoked-token").await.status(), 401);
    }
    assert_eq!(
        server.hits(),
        before + 1,
        "one call for five uses of a dead token"
    );
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(app.bearer("/me", "revoked-token").await.status(), 401);
    assert_eq!(server.hits(), before + 2, "asked again once the refusal expired");

    let mut long = introspection_config(&server.url());
    long.introspection.as_mut().unwrap().negative_cache_ttl = std::time::Duration::from_secs(3_600);
    let err = AuthLayer::from_config(&long, pseudonymizer()).await.unwrap_err();
    assert_eq!(err.setting, "auth.introspection.negative_cache_ttl");
}

#[tokio::test]
async fn unreachable_endpoint_is_a_503_never_a_pass() {
    let url = format!("http://127.0.0.1:{}/introspect", free_port());
    let layer = AuthLayer::from_config(&introspection_config(&url), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;
    let r = app.bearer("/me", "active-bob").await;
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("www-authenticate").is_none());
    assert_eq!(outcome(r).await.2, "urn:tollgate:problem:unavailable");
}
