//! DPoP (RFC 9449) over real HTTP: proofs accepted, and refused with the right
//! error for every check of §4.3 and the token binding.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tollgate_auth::{AuthConfig, AuthLayer, AuthRoute, DpopMode, jwk_thumbprint};
use tollgate_core::{Principal, RouteMap};

use crate::common::*;

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

fn ath(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("jti-{}-{}", now(), N.fetch_add(1, Ordering::Relaxed))
}

/// A client key: its signing key, algorithm and public JWK.
struct ClientKey {
    key: EncodingKey,
    alg: Algorithm,
    jwk: Value,
}

impl ClientKey {
    fn new(alg: Algorithm, rsa: &str) -> Self {
        let mut jwk = public_jwk(alg, "k", rsa);
        if let Some(o) = jwk.as_object_mut() {
            o.remove("kid");
            o.remove("use");
        }
        ClientKey {
            key: encoding_key(alg, rsa),
            alg,
            jwk,
        }
    }

    fn thumbprint(&self) -> String {
        jwk_thumbprint(&self.jwk).unwrap()
    }

    fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": format!("{:?}", self.alg), "jwk": self.jwk})
    }

    /// A proof with this header and these claims, signed by this key.
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let message = format!("{}.{}", b64(header), b64(claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.alg).unwrap();
        format!("{message}.{sig}")
    }

    /// A valid proof for `htm` on `htu` with `token`.
    fn proof(&self, htm: &str, htu: &str, token: &str) -> String {
        self.sign(&self.header(), &proof_claims(htm, htu, token))
    }
}

fn proof_claims(htm: &str, htu: &str, token: &str) -> Value {
    json!({"jti": jti(), "htm": htm, "htu": htu, "iat": now(), "ath": ath(token)})
}

/// An access token for `sub`, bound to `jkt` if given.
fn access_token(sub: &str, jkt: Option<&str>) -> String {
    let mut c = claims(sub);
    if let Some(jkt) = jkt {
        c["cnf"] = json!({"jkt": jkt});
    }
    sign(Algorithm::HS256, Some("hs256"), &c)
}

fn dpop_config(extra: &str) -> AuthConfig {
    toml::from_str(&format!(
        r#"
realm = "tollgate-test"
[jwt]
issuer = "{ISS}"
audience = "{AUD}"
algorithms = ["HS256"]
[[jwt.keys]]
kid = "hs256"
alg = "HS256"
secret_hex = "{HMAC_HEX}"
[dpop]
{extra}
"#
    ))
    .unwrap()
}

async fn bound_me(principal: Principal) -> axum::Json<Value> {
    axum::Json(json!({
        "bound": principal.bound_key().map(|k| k.pseudonym().to_string()),
    }))
}

/// `/me` (DPoP optional) and `/bound` (DPoP required) behind a layer for `cfg`.
async fn dpop_app(cfg: AuthConfig) -> (Running, String) {
    let routes = RouteMap::new(
        [
            ("/bound", AuthRoute::required().with_dpop(DpopMode::Required)),
            ("/plain", AuthRoute::required().with_dpop(DpopMode::Off)),
        ],
        AuthRoute::required(),
    )
    .unwrap();
    let layer = AuthLayer::builder(cfg, pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/me", get(bound_me).post(bound_me))
        .route("/bound", get(bound_me))
        .route("/plain", get(bound_me))
        .route("/other", post(bound_me))
        .layer(layer);
    let app = run(router).await;
    let base = app.base.clone();
    (app, base)
}

impl Running {
    async fn dpop(&self, path: &str, token: &str, proof: Option<&str>) -> reqwest::Response {
        let mut req = self
            .client
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("DPoP {token}"));
        if let Some(p) = proof {
            req = req.header("dpop", p);
        }
        req.send().await.unwrap()
    }
}

/// Status, error code, problem type and the challenge's scheme.
async fn refusal(r: reqwest::Response) -> (u16, Option<String>, String, String) {
    let scheme = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(' ').next())
        .unwrap_or("")
        .to_string();
    let (status, code, ty) = outcome(r).await;
    (status, code, ty, scheme)
}

const BAD_PROOF: &str = "urn:tollgate:problem:invalid-dpop-proof";
const BAD_TOKEN: &str = "urn:tollgate:problem:invalid-token";

#[tokio::test]
async fn valid_proofs_are_accepted_for_every_allowed_algorithm() {
    let (app, base) = dpop_app(dpop_config("")).await;
    for (alg, rsa) in [
        (Algorithm::ES256, "rsa1"),
        (Algorithm::ES384, "rsa1"),
        (Algorithm::EdDSA, "rsa1"),
        (Algorithm::RS256, "rsa1"),
        (Algorithm::PS256, "rsa2"),
    ] {
        let client = ClientKey::new(alg, rsa);
        let token = access_token("alice", Some(&client.thumbprint()));
        for path in ["/me", "/bound"] {
            let proof = client.proof("GET", &format!("{base}{path}"), &token);
            let r = app.dpop(path, &token, Some(&proof)).await;
            assert_eq!(r.status(), 200, "{alg:?} {path}");
            let body: Value = r.json().await.unwrap();
            let bound = body["bound"]
                .as_str()
                .expect("the principal carries the bound key");
            assert!(!bound.contains(&client.thumbprint()));
        }
    }
    // The key pseudonym is the same on every request with the same key.
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let token = access_token("alice", Some(&client.thumbprint()));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let proof = client.proof("GET", &format!("{base}/me"), &token);
        let body: Value = app.dpop("/me", &token, Some(&proof)).await.json().await.unwrap();
        seen.push(body["bound"].clone());
    }
    assert_eq!(seen[0], seen[1]);
    // htu is compared after normalisation, without query and fragment.
    let port = base.rsplit(':').next().unwrap();
    let htu = format!("HTTP://127.0.0.1:{port}/me?page=2#top");
    let proof = client.proof("GET", &htu, &token);
    assert_eq!(app.dpop("/me", &token, Some(&proof)).await.status(), 200);
    // POST proofs for POST requests.
    let proof = client.proof("POST", &format!("{base}/me"), &token);
    let r = app
        .client
        .post(format!("{base}/me"))
        .header("authorization", format!("DPoP {token}"))
        .header("dpop", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Unbound bearer tokens still pass where DPoP is optional.
    let bearer = access_token("bob", None);
    assert_eq!(app.bearer("/me", &bearer).await.status(), 200);
}

#[tokio::test]
async fn bad_proofs_are_refused_with_the_right_error() {
    let (app, base) = dpop_app(dpop_config("")).await;
    let me = format!("{base}/me");
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let token = access_token("alice", Some(&client.thumbprint()));
    let mut cases: Vec<(&str, String, &str, &str)> = Vec::new();

    // Replayed jti: the first use passes, the second does not.
    let proof = client.proof("GET", &me, &token);
    assert_eq!(app.dpop("/me", &token, Some(&proof)).await.status(), 200);
    cases.push(("replayed jti", proof, "invalid_dpop_proof", BAD_PROOF));

    cases.push((
        "wrong htm",
        client.proof("POST", &me, &token),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    cases.push((
        "wrong htu path",
        client.proof("GET", &format!("{base}/other"), &token),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    cases.push((
        "wrong htu host",
        client.proof("GET", "http://api.example/me", &token),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    let mut c = proof_claims("GET", &me, &token);
    c["iat"] = json!(now() - 120);
    cases.push((
        "stale iat",
        client.sign(&client.header(), &c),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    let mut c = proof_claims("GET", &me, &token);
    c["iat"] = json!(now() + 60);
    cases.push((
        "future iat",
        client.sign(&client.header(), &c),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    let mut c = proof_claims("GET", &me, &token);
    c["ath"] = json!(ath("another-token"));
    cases.push((
        "wrong ath",
        client.sign(&client.header(), &c),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    let mut c = proof_claims("GET", &me, &token);
    c.as_object_mut().unwrap().remove("ath");
    cases.push((
        "missing ath",
        client.sign(&client.header(), &c),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    let mut c = proof_claims("GET", &me, &token);
    c.as_object_mut().unwrap().remove("jti");
    cases.push((
        "missing jti",
        client.sign(&client.header(), &c),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));

    // Signed by another key than its jwk: rsa2 signs, rsa1's public key is named.
    let rsa1 = ClientKey::new(Algorithm::RS256, "rsa1");
    let rsa2 = ClientKey::new(Algorithm::RS256, "rsa2");
    let rsa_token = access_token("alice", Some(&rsa1.thumbprint()));
    cases.push((
        "signed by another key",
        rsa2.sign(&rsa1.header(), &proof_claims("GET", &me, &rsa_token)),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    // A private key in the jwk.
    let mut h = client.header();
    h["jwk"]["d"] = json!("c2VjcmV0LXNjYWxhcg");
    cases.push((
        "private key in jwk",
        client.sign(&h, &proof_claims("GET", &me, &token)),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    // Wrong typ.
    let mut h = client.header();
    h["typ"] = json!("JWT");
    cases.push((
        "typ JWT",
        client.sign(&h, &proof_claims("GET", &me, &token)),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    // alg none.
    let mut h = client.header();
    h["alg"] = json!("none");
    cases.push((
        "alg none",
        format!("{}.{}.", b64(&h), b64(&proof_claims("GET", &me, &token))),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    // HMAC, keyed with a secret the proof names as an `oct` JWK.
    let secret = [7u8; 32];
    let hmac_header = json!({
        "typ": "dpop+jwt", "alg": "HS256",
        "jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)},
    });
    let message = format!("{}.{}", b64(&hmac_header), b64(&proof_claims("GET", &me, &token)));
    let sig = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(&secret),
        Algorithm::HS256,
    )
    .unwrap();
    cases.push((
        "HMAC proof",
        format!("{message}.{sig}"),
        "invalid_dpop_proof",
        BAD_PROOF,
    ));
    cases.push(("garbage", "not.a.proof".into(), "invalid_dpop_proof", BAD_PROOF));

    // Valid proof, but the token is bound to another key.
    let other = access_token("alice", Some(&rsa1.thumbprint()));
    let r = app
        .dpop("/me", &other, Some(&client.proof("GET", &me, &other)))
        .await;
    assert_eq!(
        refusal(r).await,
        (401, Some("invalid_token".into()), BAD_TOKEN.into(), "DPoP".into()),
        "cnf.jkt mismatch"
    );

    for (name, proof, code, ty) in cases {
        let r = app.dpop("/me", &token, Some(&proof)).await;
        assert_eq!(
            refusal(r).await,
            (401, Some(code.into()), ty.into(), "DPoP".into()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn bound_tokens_and_dpop_routes_need_proofs() {
    let (app, base) = dpop_app(dpop_config("")).await;
    let client = ClientKey::new(Algorithm::EdDSA, "rsa1");
    let bound = access_token("alice", Some(&client.thumbprint()));
    let unbound = access_token("bob", None);

    // A bound token sent as a bearer token.
    for path in ["/me", "/bound"] {
        let r = app.bearer(path, &bound).await;
        assert_eq!(
            refusal(r).await,
            (401, Some("invalid_token".into()), BAD_TOKEN.into(), "DPoP".into()),
            "{path}"
        );
    }
    // The DPoP scheme without a proof.
    let r = app.dpop("/bound", &bound, None).await;
    assert_eq!(
        refusal(r).await,
        (
            401,
            Some("invalid_dpop_proof".into()),
            BAD_PROOF.into(),
            "DPoP".into()
        )
    );
    // A bearer token on a DPoP-required route.
    let r = app.bearer("/bound", &unbound).await;
    assert_eq!(
        refusal(r).await,
        (401, Some("invalid_token".into()), BAD_TOKEN.into(), "DPoP".into())
    );
    // No credentials on a DPoP-required route: a DPoP challenge naming the algorithms.
    let r = app.get("/bound", &[]).await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains("algs=\"ES256 ES384 EdDSA RS256 PS256\""),
        "{challenge}"
    );
    // An unbound token with the DPoP scheme and a valid proof.
    let proof = client.proof("GET", &format!("{base}/me"), &unbound);
    let r = app.dpop("/me", &unbound, Some(&proof)).await;
    assert_eq!(
        refusal(r).await,
        (401, Some("invalid_token".into()), BAD_TOKEN.into(), "DPoP".into())
    );
    // Where DPoP is off, the scheme is refused with a Bearer challenge; bearer
    // tokens pass, bound ones do not.
    let proof = client.proof("GET", &format!("{base}/plain"), &bound);
    let r = app.dpop("/plain", &bound, Some(&proof)).await;
    assert_eq!(refusal(r).await.3, "Bearer");
    assert_eq!(app.bearer("/plain", &unbound).await.status(), 200);
    assert_eq!(app.bearer("/plain", &bound).await.status(), 401);
    // Two DPoP headers.
    let p1 = client.proof("GET", &format!("{base}/me"), &bound);
    let p2 = client.proof("GET", &format!("{base}/me"), &bound);
    let r = app
        .get(
            "/me",
            &[
                ("authorization", &format!("DPoP {bound}")),
                ("dpop", &p1),
                ("dpop", &p2),
            ],
        )
        .await;
    assert_eq!(refusal(r).await.1.as_deref(), Some("invalid_dpop_proof"));
}

#[tokio::test]
async fn without_dpop_config_bound_tokens_and_the_scheme_are_refused() {
    let mut cfg = dpop_config("");
    cfg.dpop = None;
    let layer = AuthLayer::builder(cfg.clone(), pseudonymizer())
        .build()
        .await
        .unwrap();
    let app = run(Router::new().route("/me", get(bound_me)).layer(layer)).await;
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let bound = access_token("alice", Some(&client.thumbprint()));
    let r = app.bearer("/me", &bound).await;
    assert_eq!(outcome(r).await.1.as_deref(), Some("invalid_token"));
    let proof = client.proof("GET", &format!("{}/me", app.base), &bound);
    let r = app.dpop("/me", &bound, Some(&proof)).await;
    assert_eq!(r.status(), 401);
    // A route cannot require DPoP without [auth.dpop].
    let routes = RouteMap::new(
        [("/b", AuthRoute::required().with_dpop(DpopMode::Required))],
        AuthRoute::required(),
    )
    .unwrap();
    let err = AuthLayer::builder(cfg, pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.setting, "routes.\"/b\".dpop");
}

#[tokio::test]
async fn external_origin_is_what_htu_must_name() {
    let (app, base) = dpop_app(dpop_config("external_origin = \"https://API.example:443/api/\"")).await;
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let token = access_token("alice", Some(&client.thumbprint()));
    let proof = client.proof("GET", "https://api.example/api/me", &token);
    assert_eq!(app.dpop("/me", &token, Some(&proof)).await.status(), 200);
    let proof = client.proof("GET", &format!("{base}/me"), &token);
    let r = app.dpop("/me", &token, Some(&proof)).await;
    assert_eq!(outcome(r).await.1.as_deref(), Some("invalid_dpop_proof"));
}

#[tokio::test]
async fn server_nonces_are_required_when_configured() {
    let (app, base) = dpop_app(dpop_config("nonce = true")).await;
    let me = format!("{base}/me");
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let token = access_token("alice", Some(&client.thumbprint()));

    // Without a nonce: 401 use_dpop_nonce and a nonce to retry with.
    let r = app
        .dpop("/me", &token, Some(&client.proof("GET", &me, &token)))
        .await;
    let nonce = r.headers()["dpop-nonce"].to_str().unwrap().to_string();
    assert_eq!(
        refusal(r).await,
        (
            401,
            Some("use_dpop_nonce".into()),
            "urn:tollgate:problem:use-dpop-nonce".into(),
            "DPoP".into()
        )
    );
    // With it: accepted.
    let mut c = proof_claims("GET", &me, &token);
    c["nonce"] = json!(nonce);
    let r = app
        .dpop("/me", &token, Some(&client.sign(&client.header(), &c)))
        .await;
    assert_eq!(r.status(), 200);
    // A stale or forged nonce: use_dpop_nonce again.
    for bad in ["1.00000000000000000000000000000000", "garbage"] {
        let mut c = proof_claims("GET", &me, &token);
        c["nonce"] = json!(bad);
        let r = app
            .dpop("/me", &token, Some(&client.sign(&client.header(), &c)))
            .await;
        assert!(r.headers().get("dpop-nonce").is_some());
        assert_eq!(outcome(r).await.1.as_deref(), Some("use_dpop_nonce"), "{bad}");
    }
}

#[tokio::test]
async fn bad_dpop_settings_fail_at_build() {
    for (extra, setting) in [
        ("algorithms = [\"HS256\"]", "auth.dpop.algorithms"),
        ("algorithms = []", "auth.dpop.algorithms"),
        ("algorithms = [\"none\"]", "auth.dpop.algorithms"),
        ("external_origin = \"ftp://x\"", "auth.dpop.external_origin"),
        ("external_origin = \"https://x/?q\"", "auth.dpop.external_origin"),
        ("max_age = \"0s\"", "auth.dpop.max_age"),
    ] {
        let err = AuthLayer::builder(dpop_config(extra), pseudonymizer())
            .build()
            .await
            .unwrap_err();
        assert_eq!(err.setting, setting, "{extra}");
    }
}

#[tokio::test]
async fn protected_resource_metadata_is_served_and_named_in_challenges() {
    let (app, _) = dpop_app(dpop_config(
        "[resource_metadata]\nresource = \"https://api.example/v1\"\nscopes_supported = [\"read:items\"]",
    ))
    .await;
    // Served without credentials, although every route requires them.
    let r = app.get("/.well-known/oauth-protected-resource/v1", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["resource"], "https://api.example/v1");
    assert_eq!(doc["authorization_servers"], json!([ISS]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["scopes_supported"], json!(["read:items"]));
    assert_eq!(
        doc["dpop_signing_alg_values_supported"],
        json!(["ES256", "ES384", "EdDSA", "RS256", "PS256"])
    );
    assert!(
        doc.get("dpop_bound_access_tokens_required").is_none(),
        "/me takes bearer tokens"
    );
    // Every challenge names it.
    let url = "resource_metadata=\"https://api.example/.well-known/oauth-protected-resource/v1\"";
    for (path, scheme) in [("/me", "Bearer "), ("/bound", "DPoP ")] {
        let r = app.get(path, &[]).await;
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
        assert!(
            challenge.starts_with(scheme) && challenge.contains(url),
            "{challenge}"
        );
    }
    let r = app.bearer("/me", "garbage").await;
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains(url),
        "{challenge}"
    );
    // Other paths under .well-known are not answered by the layer.
    assert_eq!(
        app.get("/.well-known/oauth-protected-resource", &[])
            .await
            .status(),
        401
    );
}

#[tokio::test]
async fn token_request_proofs_give_the_thumbprint_to_bind_to() {
    let layer = AuthLayer::builder(dpop_config(""), pseudonymizer())
        .build()
        .await
        .unwrap();
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let claims = json!({"jti": jti(), "htm": "POST", "htu": "http://gw.test/login", "iat": now()});
    let proof = client.sign(&client.header(), &claims);
    let mut headers = http::HeaderMap::new();
    headers.insert("host", "gw.test".parse().unwrap());
    headers.insert("dpop", proof.parse().unwrap());
    let uri: http::Uri = "/login".parse().unwrap();
    let jkt = layer
        .verify_token_request_proof(&http::Method::POST, &uri, &headers)
        .await
        .unwrap();
    assert_eq!(jkt, client.thumbprint());
    let again = layer
        .verify_token_request_proof(&http::Method::POST, &uri, &headers)
        .await;
    assert_eq!(again, Err(tollgate_auth::AuthError::DpopReplay));
    headers.remove("dpop");
    let missing = layer
        .verify_token_request_proof(&http::Method::POST, &uri, &headers)
        .await;
    assert_eq!(missing, Err(tollgate_auth::AuthError::DpopMissing));
}

#[tokio::test(flavor = "current_thread")]
async fn no_jti_thumbprint_key_or_token_reaches_logs() {
    use tollgate_test_support::{LogCapture, canary};
    use tracing_subscriber::fmt::format::FmtSpan;

    let capture = LogCapture::new();
    let subscriber = capture
        .json_subscriber()
        .with_span_events(FmtSpan::CLOSE)
        .with_current_span(true)
        .with_env_filter("tollgate_auth=trace,tollgate_core=trace,canary=trace")
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
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
    let routes = RouteMap::new(
        [("/bound", AuthRoute::required().with_dpop(DpopMode::Required))],
        AuthRoute::required(),
    )
    .unwrap();
    let layer = AuthLayer::builder(dpop_config("nonce = false"), pseudonymizer())
        .routes(routes)
        .build()
        .await
        .unwrap();
    let app = run(Router::new()
        .route("/bound", get(bound_me))
        .layer(layer)
        .layer(span_layer))
    .await;
    let url = format!("{}/bound", app.base);
    let client = ClientKey::new(Algorithm::ES256, "rsa1");
    let mut c = claims(canary::SUBJECT);
    c["cnf"] = json!({"jkt": client.thumbprint()});
    let token = sign(Algorithm::HS256, Some("hs256"), &c);
    let mut pc = proof_claims("GET", &url, &token);
    pc["jti"] = json!(canary::JTI);
    let proof = client.sign(&client.header(), &pc);
    assert_eq!(app.dpop("/bound", &token, Some(&proof)).await.status(), 200);
    assert_eq!(
        app.dpop("/bound", &token, Some(&proof)).await.status(),
        401,
        "replay"
    );
    app.bearer("/bound", &token).await;
    let other = ClientKey::new(Algorithm::EdDSA, "rsa1");
    app.dpop("/bound", &token, Some(&other.proof("GET", &url, &token)))
        .await;
    let mut h = client.header();
    h["jwk"]["d"] = json!("canary-private-scalar");
    app.dpop(
        "/bound",
        &token,
        Some(&client.sign(&h, &proof_claims("GET", &url, &token))),
    )
    .await;

    let logs = capture.text();
    assert!(
        logs.contains("\"auth.error\":\"dpop_replay\""),
        "the capture saw the refusals"
    );
    assert!(logs.contains("\"auth.error\":\"dpop_key_mismatch\""));
    let proof_parts: Vec<&str> = proof.split('.').collect();
    let token_parts: Vec<&str> = token.split('.').collect();
    let thumbprint = client.thumbprint();
    let x = client.jwk["x"].as_str().unwrap().to_string();
    let other_thumbprint = other.thumbprint();
    let secrets = [
        canary::SUBJECT,
        canary::JTI,
        thumbprint.as_str(),
        other_thumbprint.as_str(),
        x.as_str(),
        "canary-private-scalar",
        proof_parts[0],
        proof_parts[1],
        proof_parts[2],
        token_parts[1],
        token_parts[2],
    ];
    canary::assert_absent("the log output", &logs, secrets);
}
