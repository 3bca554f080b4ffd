//! API keys over real HTTP.

use serde_json::Value;
use tollgate_auth::{ApiKeyRecord, AuthLayer};

use crate::common::*;

#[tokio::test]
async fn api_keys_by_header_and_scheme() {
    let layer = AuthLayer::from_config(&config(None), pseudonymizer())
        .await
        .unwrap();
    let handle = layer.clone();
    let app = run(app(layer)).await;

    for headers in [
        vec![("x-api-key", "tg_test_key_1")],
        vec![("authorization", "ApiKey tg_test_key_1")],
        vec![("authorization", "apikey   tg_test_key_1")],
    ] {
        let r = app.get("/me", &headers).await;
        assert_eq!(r.status(), 200, "{headers:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["credential"], "api_key");
        assert_eq!(body["tier"], "free");
        assert!(!body["subject"].as_str().unwrap().contains("ops"));
    }
    let (status, code, problem) = outcome(app.get("/me", &[("x-api-key", "tg_test_key_2")]).await).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid_token")));
    assert_eq!(problem, "urn:tollgate:problem:invalid-token");
    let (status, ..) = outcome(app.get("/me", &[("x-api-key", "bad key")]).await).await;
    assert_eq!(status, 400, "spaces are not key characters");

    // Keys added and removed at run time take effect on the next request.
    let keys = handle.api_keys().unwrap();
    keys.insert(ApiKeyRecord::new("key-2", ApiKeyRecord::digest_of(b"tg_test_key_2")).tier("pro"));
    let body: Value = app
        .get("/me", &[("x-api-key", "tg_test_key_2")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["tier"], "pro");
    assert!(keys.remove("key-2"));
    assert_eq!(
        app.get("/me", &[("x-api-key", "tg_test_key_2")]).await.status(),
        401
    );
}

#[tokio::test]
async fn custom_header_and_no_scheme() {
    let mut cfg = config(None);
    cfg.api_key_header = "X-Tollgate-Key".into();
    cfg.api_key_scheme = false;
    let layer = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap();
    let app = run(app(layer)).await;
    assert_eq!(
        app.get("/me", &[("x-tollgate-key", "tg_test_key_1")])
            .await
            .status(),
        200
    );
    // The default header is now just another header: no credentials.
    let (status, code, _) = outcome(app.get("/me", &[("x-api-key", "tg_test_key_1")]).await).await;
    assert_eq!((status, code), (401, None));
    let (status, ..) = outcome(app.get("/me", &[("authorization", "ApiKey tg_test_key_1")]).await).await;
    assert_eq!(status, 401);
}
