//! The freeze list: a token accepted, frozen, refused (cached or not), unfrozen, accepted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tollgate_auth::{AuthLayer, token_digest_hex};
use tollgate_core::{BoxFuture, Freeze, FreezeList, FreezeTarget, MemoryFreezeList, Principal, StoreError};

use crate::common::*;

async fn admin(app: &Running, method: reqwest::Method, body: Value) -> reqwest::Response {
    app.client
        .request(method, format!("{}/admin/freezes", app.base))
        .header("x-api-key", "tg_test_key_1")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn freeze_refuses_at_once_and_unfreeze_restores() {
    let layer = AuthLayer::from_config(&config(None), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));
    assert_eq!(app.bearer("/me", &token).await.status(), 200);
    assert_eq!(app.bearer("/me", &token).await.status(), 200, "now cached");

    // Freeze the token by its jti.
    let r = admin(
        &app,
        reqwest::Method::POST,
        json!({"kind": "token", "id": "jti-alice", "reason": "leaked", "ttl_s": 600}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["target"]["kind"], "credential");
    assert!(!created.to_string().contains("jti-alice"));

    let (status, code, problem) = outcome(app.bearer("/me", &token).await).await;
    assert_eq!((status, code.as_deref()), (401, Some("invalid_token")));
    assert_eq!(problem, "urn:tollgate:problem:credential-frozen");
    // Another token of the same subject is not affected by a credential freeze.
    let mut c = claims("alice");
    c["jti"] = json!("jti-alice-2");
    let other = sign(Algorithm::HS256, Some("hs256"), &c);
    assert_eq!(app.bearer("/me", &other).await.status(), 200);

    let list: Value = app
        .get("/admin/freezes", &[("x-api-key", "tg_test_key_1")])
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["reason"], "leaked");

    let r = admin(
        &app,
        reqwest::Method::DELETE,
        json!({"kind": "token", "id": "jti-alice"}),
    )
    .await;
    assert_eq!(r.status(), 204);
    assert_eq!(app.bearer("/me", &token).await.status(), 200, "accepted again");
    let r = admin(
        &app,
        reqwest::Method::DELETE,
        json!({"kind": "token", "id": "jti-alice"}),
    )
    .await;
    assert_eq!(r.status(), 404);

    // A subject freeze covers every credential of the subject; unfreeze by listed digest.
    let r = admin(
        &app,
        reqwest::Method::POST,
        json!({"kind": "subject", "id": "alice"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.bearer("/me", &token).await.status(), 401);
    assert_eq!(app.bearer("/me", &other).await.status(), 401);
    let list: Value = app
        .get("/admin/freezes", &[("x-api-key", "tg_test_key_1")])
        .await
        .json()
        .await
        .unwrap();
    let digest = list[0]["target"]["digest"].as_str().unwrap().to_string();
    let r = app
        .client
        .delete(format!("{}/admin/freezes/subject/{digest}", app.base))
        .header("x-api-key", "tg_test_key_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(app.bearer("/me", &other).await.status(), 200);

    // A token without jti is frozen by its SHA-256.
    let mut c = claims("bob");
    c.as_object_mut().unwrap().remove("jti");
    let no_jti = sign(Algorithm::HS256, Some("hs256"), &c);
    assert_eq!(app.bearer("/me", &no_jti).await.status(), 200);
    let r = admin(
        &app,
        reqwest::Method::POST,
        json!({"kind": "token", "id": token_digest_hex(&no_jti)}),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.bearer("/me", &no_jti).await.status(), 401);

    // API keys freeze by id.
    let r = admin(
        &app,
        reqwest::Method::POST,
        json!({"kind": "api_key", "id": "key-1", "ttl_s": 60}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let (status, _, problem) = outcome(app.get("/me", &[("x-api-key", "tg_test_key_1")]).await).await;
    assert_eq!(
        (status, problem.as_str()),
        (401, "urn:tollgate:problem:credential-frozen")
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_scope_and_valid_bodies() {
    let layer = AuthLayer::from_config(&config(None), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));
    let r = app.bearer("/admin/freezes", &token).await;
    assert_eq!(r.status(), 403);
    assert_eq!(outcome(r).await.1.as_deref(), Some("insufficient_scope"));
    assert_eq!(app.get("/admin/freezes", &[]).await.status(), 401);

    for body in [
        json!({"kind": "password", "id": "x"}),
        json!({"kind": "token"}),
        json!({"kind": "token", "id": ""}),
        json!({"kind": "token", "id": "x", "extra": 1}),
        json!({"kind": "token", "id": "x", "reason": "r".repeat(300)}),
        json!({"kind": "token", "id": "x", "ttl_s": 0}),
    ] {
        let r = admin(&app, reqwest::Method::POST, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = app
        .client
        .delete(format!("{}/admin/freezes/subject/not-hex", app.base))
        .header("x-api-key", "tg_test_key_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// A remote-like freeze list: answers only through the async `check` (so the layer
/// takes its boxed path), and can be made to fail.
#[derive(Clone)]
struct FlakyList {
    inner: MemoryFreezeList,
    down: Arc<AtomicBool>,
}

impl FreezeList for FlakyList {
    fn check<'a>(&'a self, p: &'a Principal) -> BoxFuture<'a, Result<Option<Freeze>, StoreError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable("test".into()));
            }
            self.inner.check(p).await
        })
    }
    fn freeze(&self, f: Freeze) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.freeze(f)
    }
    fn unfreeze<'a>(&'a self, t: &'a FreezeTarget) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.unfreeze(t)
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<Freeze>, StoreError>> {
        self.inner.list()
    }
}

#[tokio::test]
async fn an_unreachable_freeze_list_follows_its_failure_policy() {
    let list = FlakyList {
        inner: MemoryFreezeList::new(100),
        down: Default::default(),
    };
    let closed = AuthLayer::builder(config(None), pseudonymizer())
        .freeze_list(Arc::new(list.clone()))
        .build()
        .await
        .unwrap();
    let mut cfg = config(None);
    cfg.on_store_failure = tollgate_core::FailurePolicy::Open;
    let open = AuthLayer::builder(cfg, pseudonymizer())
        .freeze_list(Arc::new(list.clone()))
        .build()
        .await
        .unwrap();
    let closed = run(app(closed)).await;
    let open = run(app(open)).await;
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));

    // Up: the async path freezes and unfreezes like the in-process list.
    assert_eq!(closed.bearer("/me", &token).await.status(), 200);
    let r = admin(
        &closed,
        reqwest::Method::POST,
        json!({"kind": "subject", "id": "alice"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(closed.bearer("/me", &token).await.status(), 401);
    assert_eq!(open.bearer("/me", &token).await.status(), 401);
    let r = admin(
        &closed,
        reqwest::Method::DELETE,
        json!({"kind": "subject", "id": "alice"}),
    )
    .await;
    assert_eq!(r.status(), 204);

    // Down: closed answers 503, open lets the request through.
    list.down.store(true, Ordering::SeqCst);
    let (status, code, problem) = outcome(closed.bearer("/me", &token).await).await;
    assert_eq!(
        (status, code, problem.as_str()),
        (503, None, "urn:tollgate:problem:unavailable")
    );
    assert_eq!(open.bearer("/me", &token).await.status(), 200);
}
