//! JWT acceptance and rejection over real HTTP, keys from a local JWKS server.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tollgate_auth::{AuthLayer, AuthRoute};
use tollgate_core::{RouteMap, Timestamp};

use crate::common::*;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

/// A token with an arbitrary header, signed by `alg` with `key` (or unsigned).
fn raw_token(header: &Value, claims: &Value, sign: Option<(&EncodingKey, Algorithm)>) -> String {
    let message = format!("{}.{}", b64(header), b64(claims));
    let sig = match sign {
        Some((key, alg)) => jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap(),
        None => String::new(),
    };
    format!("{message}.{sig}")
}

#[tokio::test]
async fn every_algorithm_family_is_accepted() {
    let jwks = JwksServer::start(jwks_doc("rsa1")).await;
    let layer = AuthLayer::from_config(&config(Some(&jwks.url())), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;
    for alg in ASYMMETRIC.iter().chain(HMAC) {
        let token = sign(*alg, Some(&kid_of(*alg)), &claims("alice"));
        let r = app.bearer("/me", &token).await;
        assert_eq!(r.status(), 200, "{alg:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["credential"], "jwt");
        assert_eq!(body["tier"], "pro", "tier from the `plan` claim");
        assert!(body["scopes"].as_array().unwrap().contains(&json!("read:items")));
        assert!(!body["subject"].as_str().unwrap().contains("alice"));
        // The same token again comes from the cache and gives the same principal.
        let again: Value = app.bearer("/me", &token).await.json().await.unwrap();
        assert_eq!(again, body);
    }
    // One fetch at start; every kid was known.
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_answer() {
    let jwks = JwksServer::start(jwks_doc("rsa1")).await;
    let attacker = JwksServer::start(jwks_doc("rsa2")).await;
    let layer = AuthLayer::from_config(&config(Some(&jwks.url())), pseudonymizer())
        .await
        .unwrap();
    let app = run(app(layer)).await;

    let good = sign(Algorithm::RS256, Some("rs256"), &claims("alice"));
    let mut cases: Vec<(&str, String, u16, Option<&str>)> = Vec::new();

    let mut c = claims("alice");
    c["exp"] = json!(now() - 120);
    cases.push((
        "expired",
        sign(Algorithm::RS256, Some("rs256"), &c),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims("alice");
    c["nbf"] = json!(now() + 120);
    cases.push((
        "not yet valid",
        sign(Algorithm::ES256, Some("es256"), &c),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.test");
    cases.push((
        "wrong issuer",
        sign(Algorithm::EdDSA, Some("eddsa"), &c),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims("alice");
    c["aud"] = json!("another-api");
    cases.push((
        "wrong audience",
        sign(Algorithm::HS256, Some("hs256"), &c),
        401,
        Some("invalid_token"),
    ));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    cases.push((
        "no exp",
        sign(Algorithm::RS256, Some("rs256"), &c),
        401,
        Some("invalid_token"),
    ));

    // Tampered payload: another subject under the original signature.
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims("mallory");
    c["scope"] = json!("tollgate:admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    cases.push(("tampered payload", tampered, 401, Some("invalid_token")));
    // Tampered signature: one character changed.
    let mut sig = parts[2].to_string();
    let at = sig.len() - 5;
    let replacement = if &sig[at..at + 1] == "A" { "B" } else { "A" };
    sig.replace_range(at..at + 1, replacement);
    cases.push((
        "tampered signature",
        format!("{}.{}.{sig}", parts[0], parts[1]),
        401,
        Some("invalid_token"),
    ));

    // alg: none in several spellings, with and without a signature.
    for alg in ["none", "None", "NONE", "nOnE", ""] {
        let header = json!({"alg": alg, "typ": "JWT", "kid": "rs256"});
        cases.push((
            "alg none",
            raw_token(&header, &claims("alice"), None),
            401,
            Some("invalid_token"),
        ));
        let header = json!({"alg": alg});
        let t = format!("{}.{}.{}", b64(&header), b64(&claims("alice")), parts[2]);
        cases.push(("alg none with signature", t, 401, Some("invalid_token")));
    }
    cases.push((
        "no alg",
        raw_token(&json!({"typ": "JWT"}), &claims("alice"), None),
        401,
        Some("invalid_token"),
    ));

    // HMAC signed with the RSA public key, naming the RSA key's kid, and without a kid.
    let public_pem = key_file("rsa1.pub");
    let confused = EncodingKey::from_secret(&public_pem);
    for header in [json!({"alg": "HS256", "kid": "rs256"}), json!({"alg": "HS256"})] {
        let t = raw_token(&header, &claims("alice"), Some((&confused, Algorithm::HS256)));
        cases.push(("HMAC with RSA public key", t, 401, Some("invalid_token")));
    }
    // An RS256 key asked to verify PS256 (key pinned to one algorithm).
    let mut h = Header::new(Algorithm::PS256);
    h.kid = Some("rs256".into());
    let t = jsonwebtoken::encode(&h, &claims("alice"), &encoding_key(Algorithm::PS256, "rsa1")).unwrap();
    cases.push(("alg differs from the key's", t, 401, Some("invalid_token")));

    // Unknown kid; jku, x5u and embedded jwk pointing at the attacker's keys.
    cases.push((
        "unknown kid",
        sign_with(Algorithm::RS256, Some("forged"), &claims("alice"), "rsa2"),
        401,
        Some("invalid_token"),
    ));
    let attacker_key = encoding_key(Algorithm::RS256, "rsa2");
    let jwk = public_jwk(Algorithm::RS256, "evil", "rsa2");
    for header in [
        json!({"alg": "RS256", "kid": "evil", "jku": attacker.url()}),
        json!({"alg": "RS256", "kid": "evil", "x5u": attacker.url()}),
        json!({"alg": "RS256", "jwk": jwk}),
        json!({"alg": "RS256", "kid": "evil", "jwk": jwk}),
    ] {
        let t = raw_token(&header, &claims("alice"), Some((&attacker_key, Algorithm::RS256)));
        cases.push(("attacker-chosen key", t, 401, Some("invalid_token")));
    }
    // A critical extension nobody understands.
    let t = raw_token(
        &json!({"alg": "HS256", "kid": "hs256", "crit": ["exp-ext"], "exp-ext": 1}),
        &claims("alice"),
        Some((&encoding_key(Algorithm::HS256, ""), Algorithm::HS256)),
    );
    cases.push(("crit header", t, 401, Some("invalid_token")));

    // Garbage.
    cases.push(("garbage base64", "abc.def.ghi".into(), 401, Some("invalid_token")));
    cases.push((
        "garbage json",
        format!("{0}.{0}.{0}", URL_SAFE_NO_PAD.encode(b"{not json")),
        401,
        Some("invalid_token"),
    ));
    cases.push(("two parts", "abc.def".into(), 401, Some("invalid_token")));
    cases.push(("not a b64token", "a$b.c%d.e".into(), 400, Some("invalid_request")));
    cases.push((
        "oversized token",
        format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c"),
        431,
        Some("invalid_request"),
    ));
    cases.push(("empty bearer", String::new(), 400, Some("invalid_request")));

    for (name, token, status, code) in &cases {
        let r = app.bearer("/me", token).await;
        let (got_status, got_code, problem) = outcome(r).await;
        assert!(got_status < 500, "{name}: a 5xx");
        assert_eq!(got_status, *status, "{name}");
        assert_eq!(got_code.as_deref(), *code, "{name}");
        assert!(
            problem.starts_with("urn:tollgate:problem:"),
            "{name}: problem+json"
        );
    }
    assert_eq!(attacker.hits(), 0, "jku/x5u/jwk headers are never followed");
    // The good token still works after all that.
    assert_eq!(app.bearer("/me", &good).await.status(), 200);
}

#[tokio::test]
async fn header_abuse_is_refused() {
    let app = run(app(layer(config(None)).await)).await;
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));
    let bearer = format!("Bearer {token}");

    let r = app
        .get("/me", &[("authorization", &bearer), ("authorization", &bearer)])
        .await;
    assert_eq!(outcome(r).await.0, 400, "repeated Authorization");
    let r = app
        .get(
            "/me",
            &[("x-api-key", "tg_test_key_1"), ("x-api-key", "tg_test_key_1")],
        )
        .await;
    assert_eq!(outcome(r).await.0, 400, "repeated X-Api-Key");
    let r = app
        .get(
            "/me",
            &[("authorization", &bearer), ("x-api-key", "tg_test_key_1")],
        )
        .await;
    assert_eq!(
        outcome(r).await,
        (
            400,
            Some("invalid_request".into()),
            "urn:tollgate:problem:malformed-credentials".into()
        )
    );
    let r = app.get("/me", &[("authorization", "Basic YWxpY2U6cHc=")]).await;
    let (status, code, _) = outcome(r).await;
    assert_eq!((status, code), (401, None), "unsupported scheme");
    let r = app.get("/me", &[("x-api-key", &"k".repeat(9000))]).await;
    assert_eq!(outcome(r).await.0, 431, "oversized API key");

    // No credentials: 401 with a bare challenge (RFC 6750 §3.1).
    let r = app.get("/me", &[]).await;
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate-test\"");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(outcome(r).await.2, "urn:tollgate:problem:missing-credentials");

    // Scopes: granted passes, missing is a 403 naming the scope.
    assert_eq!(app.bearer("/items", &token).await.status(), 200);
    let r = app.bearer("/write", &token).await;
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"delete:all\"")
    );
    assert_eq!(outcome(r).await.1.as_deref(), Some("insufficient_scope"));
    // Case-insensitive scheme.
    assert_eq!(
        app.get("/me", &[("authorization", &format!("bEaReR {token}"))])
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn anonymous_default_and_per_route_requirements() {
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));

    // An optional default: anonymous passes, credentials are still checked.
    let optional = AuthLayer::builder(config(None), pseudonymizer())
        .routes(RouteMap::uniform(AuthRoute::optional()))
        .build()
        .await
        .unwrap();
    let router = axum::Router::new()
        .route("/maybe", axum::routing::get(maybe_me))
        .layer(optional);
    let app1 = run(router).await;
    let body: Value = app1.get("/maybe", &[]).await.json().await.unwrap();
    assert_eq!(body["authenticated"], false);
    let body: Value = app1.bearer("/maybe", &token).await.json().await.unwrap();
    assert_eq!(body["authenticated"], true);
    // Optional does not mean bad credentials pass.
    assert_eq!(app1.bearer("/maybe", "abc.def.ghi").await.status(), 401);

    // Per route, one layer: /health skips, /open is optional, /strict requires
    // credentials over an optional default; /me keeps the default. With route_layer,
    // /late (added after the layer) is not authenticated at all and unknown paths
    // are 404, not 401.
    let routes = RouteMap::new(
        [
            ("/health", AuthRoute::skip()),
            ("/open", AuthRoute::optional()),
            ("/strict", AuthRoute::required()),
        ],
        AuthRoute::optional(),
    )
    .unwrap();
    let layer = AuthLayer::builder(config(None), pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap();
    let router = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        .route("/open", axum::routing::get(maybe_me))
        .route("/strict", axum::routing::get(maybe_me))
        .route("/me", axum::routing::get(maybe_me))
        .route_layer(layer)
        .route("/late", axum::routing::get(|| async { "late" }));
    let app2 = run(router).await;
    assert_eq!(
        app2.get("/health", &[("authorization", "Bearer abc.def.ghi")])
            .await
            .status(),
        200
    );
    assert_eq!(app2.get("/open", &[]).await.status(), 200);
    assert_eq!(app2.bearer("/open", "abc.def.ghi").await.status(), 401);
    assert_eq!(app2.get("/strict", &[]).await.status(), 401);
    assert_eq!(app2.bearer("/strict", &token).await.status(), 200);
    assert_eq!(app2.get("/me", &[]).await.status(), 200);
    assert_eq!(app2.get("/late", &[]).await.status(), 200);
    assert_eq!(app2.get("/nowhere", &[]).await.status(), 404);
}

#[tokio::test]
async fn exp_and_nbf_follow_the_layers_clock() {
    // In the past by the system clock: a check against system time would refuse
    // every token below as expired.
    let clock = tollgate_test_support::clock();
    let start = tollgate_test_support::START.as_secs();
    let p = tollgate_test_support::pseudonymizer_with_clock(&clock);
    let layer = AuthLayer::builder(config(None), p)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap();
    let app = run(app(layer)).await;
    let at = |sub: &str, exp: u64, nbf: Option<u64>| {
        let mut c = claims(sub);
        c["iat"] = json!(start);
        c["exp"] = json!(exp);
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        sign(Algorithm::HS256, Some("hs256"), &c)
    };

    let token = at("alice", start + 600, None);
    assert_eq!(app.bearer("/me", &token).await.status(), 200);
    let later = at("bob", start + 1200, Some(start + 100));
    let (status, code, _) = outcome(app.bearer("/me", &later).await).await;
    assert_eq!(
        (status, code.as_deref()),
        (401, Some("invalid_token")),
        "nbf ahead"
    );

    // Within the 5 s leeway of nbf: accepted.
    clock.set(Timestamp::from_secs(start + 96));
    assert_eq!(app.bearer("/me", &later).await.status(), 200);

    // Within the leeway of exp: still accepted (the cache never holds past exp,
    // so this is a fresh verification).
    clock.set(Timestamp::from_secs(start + 604));
    assert_eq!(app.bearer("/me", &token).await.status(), 200);
    // Past it: expired.
    clock.set(Timestamp::from_secs(start + 606));
    let r = app.bearer("/me", &token).await;
    assert_eq!(r.status(), 401);
    assert_eq!(outcome(r).await.2, "urn:tollgate:problem:invalid-token");
    assert_eq!(app.bearer("/me", &later).await.status(), 200);

    // An exp or nbf that is not a NumericDate is refused like a missing claim.
    for (claim, value) in [
        ("exp", json!("tomorrow")),
        ("nbf", json!("soon")),
        ("nbf", json!(-5)),
    ] {
        let mut c = claims("carol");
        c["exp"] = json!(start + 1200);
        c[claim] = value;
        let bad = sign(Algorithm::HS256, Some("hs256"), &c);
        assert_eq!(app.bearer("/me", &bad).await.status(), 401, "{claim}");
    }
}

#[tokio::test]
async fn errors_can_be_answered_by_a_custom_responder() {
    use axum::response::IntoResponse;
    let layer = AuthLayer::builder(config(None), pseudonymizer())
        .routes(routes())
        .responder(tollgate_core::ProblemResponder::new(|p| {
            (
                p.status(),
                [("content-type", "text/plain")],
                format!("nope: {}", p.problem_type().uri),
            )
                .into_response()
        }))
        .build()
        .await
        .unwrap();
    let app = run(app(layer)).await;
    let r = app.bearer("/me", "abc.def.ghi").await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(
        r.text().await.unwrap(),
        "nope: urn:tollgate:problem:invalid-token"
    );
    let token = sign(Algorithm::HS256, Some("hs256"), &claims("alice"));
    let r = app.bearer("/write", &token).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.text().await.unwrap(),
        "nope: urn:tollgate:problem:insufficient-scope"
    );
}

#[tokio::test]
async fn rfc9068_profile_requires_at_jwt() {
    let mut cfg = config(None);
    cfg.jwt.as_mut().unwrap().profile = Some(tollgate_auth::JwtProfile::Rfc9068);
    let layer = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap();
    let app = run(app(layer)).await;
    let mut c = claims("alice");
    c["client_id"] = json!("client-1");
    let plain = sign(Algorithm::HS256, Some("hs256"), &c);
    assert_eq!(
        outcome(app.bearer("/me", &plain).await).await.0,
        401,
        "typ JWT refused"
    );
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("hs256".into());
    h.typ = Some("at+jwt".into());
    let key = encoding_key(Algorithm::HS256, "");
    let at = jsonwebtoken::encode(&h, &c, &key).unwrap();
    assert_eq!(app.bearer("/me", &at).await.status(), 200);
    c.as_object_mut().unwrap().remove("client_id");
    let no_client = jsonwebtoken::encode(&h, &c, &key).unwrap();
    assert_eq!(
        outcome(app.bearer("/me", &no_client).await).await.0,
        401,
        "client_id required"
    );
}

#[tokio::test]
async fn misconfiguration_names_the_setting() {
    let mut cfg = config(None);
    cfg.jwt.as_mut().unwrap().keys[0].secret_hex = Some("00".repeat(8));
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert!(
        err.to_string().starts_with("auth.jwt.keys[0].secret_hex"),
        "{err}"
    );

    let mut cfg = config(None);
    cfg.jwt.as_mut().unwrap().algorithms.push("none".into());
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert!(err.to_string().starts_with("auth.jwt.algorithms"), "{err}");

    let mut cfg = config(Some("https://127.0.0.1:1/jwks.json"));
    cfg.jwt.as_mut().unwrap().jwks_required_at_start = false;
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert!(err.to_string().starts_with("auth.jwt.jwks_url"), "{err}");

    let mut cfg = config(None);
    cfg.api_keys[0].sha256 = "xyz".into();
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert!(err.to_string().starts_with("auth.api_keys[0].sha256"), "{err}");

    let err = toml::from_str::<tollgate_auth::AuthConfig>("unknown_setting = 1").unwrap_err();
    assert!(err.to_string().contains("unknown_setting"), "{err}");

    let cfg: tollgate_auth::AuthConfig = toml::from_str("").unwrap();
    let err = AuthLayer::from_config(&cfg, pseudonymizer()).await.unwrap_err();
    assert!(err.to_string().starts_with("auth:"), "{err}");
}
