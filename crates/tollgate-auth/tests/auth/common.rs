//! Test fixtures: keys, token signing, a JWKS server, an introspection server and
//! the app under test, all over real HTTP on 127.0.0.1.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tollgate_auth::{AuthConfig, AuthLayer, AuthRoute};
use tollgate_core::{Principal, RouteMap};
pub use tollgate_test_support::{free_port, pseudonymizer, serve};

pub const ISS: &str = "https://issuer.test";
pub const AUD: &str = "tollgate-api";
pub const HMAC_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

pub use tollgate_test_support::jwt::unix_now as now;

/// The signing key of an algorithm (RSA keys: `rsa1` unless `rsa2` is asked for).
pub fn encoding_key(alg: Algorithm, rsa: &str) -> EncodingKey {
    match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(&hex::decode(hmac_hex(alg)).unwrap())
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&key_file("p256.key")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(&key_file("p384.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&key_file("ed25519.key")).unwrap(),
        _ => EncodingKey::from_rsa_pem(&key_file(&format!("{rsa}.key"))).unwrap(),
    }
}

/// HMAC secrets long enough for each algorithm.
pub fn hmac_hex(alg: Algorithm) -> String {
    match alg {
        Algorithm::HS256 => HMAC_HEX.to_string(),
        Algorithm::HS384 => HMAC_HEX.repeat(2)[..96].to_string(),
        _ => HMAC_HEX.repeat(2),
    }
}

pub fn kid_of(alg: Algorithm) -> String {
    format!("{alg:?}").to_lowercase()
}

/// The public JWK for `alg` under `kid`, from the private key.
pub fn public_jwk(alg: Algorithm, kid: &str, rsa: &str) -> Value {
    let jwk = Jwk::from_encoding_key(&encoding_key(alg, rsa), alg).unwrap();
    let mut v = serde_json::to_value(jwk).unwrap();
    v["kid"] = json!(kid);
    v["use"] = json!("sig");
    v
}

pub const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

pub const HMAC: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// A JWKS with one key per asymmetric algorithm, RSA keys from `rsa`.
pub fn jwks_doc(rsa: &str) -> Value {
    json!({"keys": ASYMMETRIC.iter().map(|a| public_jwk(*a, &kid_of(*a), rsa)).collect::<Vec<_>>()})
}

pub fn claims(sub: &str) -> Value {
    let now = now();
    json!({
        "sub": sub,
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "jti": format!("jti-{sub}"),
        "scope": "read:items write:items",
        "plan": "pro",
    })
}

pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    sign_with(alg, kid, claims, "rsa1")
}

pub fn sign_with(alg: Algorithm, kid: Option<&str>, claims: &Value, rsa: &str) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(alg, rsa)).unwrap()
}

/// A JWKS endpoint whose document, status and `Cache-Control` tests can change.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<Value>>,
    pub status: Arc<Mutex<StatusCode>>,
    pub cache_control: Arc<Mutex<Option<String>>>,
    pub hits: Arc<AtomicUsize>,
    /// How long each answer waits before it is sent.
    pub delay: Arc<Mutex<Duration>>,
    /// A body sent as is (with status 200) in place of the document.
    pub raw_body: Arc<Mutex<Option<Vec<u8>>>>,
}

impl JwksServer {
    pub async fn start(doc: Value) -> Self {
        let server = JwksServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            doc: Arc::new(Mutex::new(doc)),
            status: Arc::new(Mutex::new(StatusCode::OK)),
            cache_control: Arc::new(Mutex::new(None)),
            hits: Arc::new(AtomicUsize::new(0)),
            delay: Arc::new(Mutex::new(Duration::ZERO)),
            raw_body: Arc::new(Mutex::new(None)),
        };
        let router = Router::new()
            .route("/jwks.json", get(jwks_handler))
            .with_state(server.clone());
        JwksServer {
            addr: serve(router).await,
            ..server
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_doc(&self, doc: Value) {
        *self.doc.lock().unwrap() = doc;
    }

    pub fn set_status(&self, status: StatusCode) {
        *self.status.lock().unwrap() = status;
    }
}

async fn jwks_handler(State(s): State<JwksServer>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    let delay = *s.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    if let Some(body) = s.raw_body.lock().unwrap().clone() {
        let cache_control = s.cache_control.lock().unwrap().clone().unwrap_or_default();
        return (
            [
                ("content-type", "application/json"),
                ("cache-control", cache_control.as_str()),
            ],
            body,
        )
            .into_response();
    }
    let status = *s.status.lock().unwrap();
    if status != StatusCode::OK {
        return status.into_response();
    }
    let mut response = Json(s.doc.lock().unwrap().clone()).into_response();
    if let Some(cc) = s.cache_control.lock().unwrap().clone() {
        response
            .headers_mut()
            .insert("cache-control", cc.parse().unwrap());
    }
    response
}

/// An RFC 7662 endpoint: `active-*` tokens are active for subject `*`, others not.
#[derive(Clone)]
pub struct IntrospectionServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub last_authorization: Arc<Mutex<Option<String>>>,
}

impl IntrospectionServer {
    pub async fn start() -> Self {
        let server = IntrospectionServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            hits: Arc::new(AtomicUsize::new(0)),
            last_authorization: Arc::new(Mutex::new(None)),
        };
        let router = Router::new()
            .route("/introspect", post(introspect_handler))
            .with_state(server.clone());
        IntrospectionServer {
            addr: serve(router).await,
            ..server
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn introspect_handler(
    State(s): State<IntrospectionServer>,
    headers: HeaderMap,
    body: String,
) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    *s.last_authorization.lock().unwrap() = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let token = body
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .unwrap_or("")
        .to_string();
    // `active-{sub}`: active for this API; `foreign-aud-{sub}` / `foreign-iss-{sub}`:
    // active, but for another API or from another issuer; anything else: inactive.
    let (sub, aud, iss) = if let Some(sub) = token.strip_prefix("active-") {
        (sub, AUD, ISS)
    } else if let Some(sub) = token.strip_prefix("foreign-aud-") {
        (sub, "another-api", ISS)
    } else if let Some(sub) = token.strip_prefix("foreign-iss-") {
        (sub, AUD, "https://evil.test")
    } else {
        return Json(json!({"active": false})).into_response();
    };
    Json(json!({
        "active": true,
        "sub": sub,
        "scope": "read:items",
        "exp": now() + 600,
        "jti": format!("ijti-{sub}"),
        "plan": "gold",
        "aud": [aud],
        "iss": iss,
    }))
    .into_response()
}

/// What `/me` answers: the principal as the handler sees it.
pub async fn me(principal: Principal) -> Json<Value> {
    Json(json!({
        "subject": principal.subject().to_string(),
        "credential": principal.credential().as_str(),
        "tier": principal.tier().as_str(),
        "scopes": principal.scopes().iter().collect::<Vec<_>>(),
    }))
}

pub async fn maybe_me(principal: Option<Principal>) -> Json<Value> {
    Json(json!({"authenticated": principal.is_some()}))
}

/// The route policy of [`app`]: `/items` needs `read:items`, `/write` needs
/// `delete:all`, everything else credentials.
pub fn routes() -> RouteMap<AuthRoute> {
    RouteMap::new(
        [
            ("/items", AuthRoute::required().with_scopes(["read:items"])),
            ("/write", AuthRoute::required().with_scopes(["delete:all"])),
        ],
        AuthRoute::required(),
    )
    .unwrap()
}

/// The layer for `cfg` with the route policy of [`app`].
pub async fn layer(cfg: AuthConfig) -> AuthLayer {
    AuthLayer::builder(cfg, pseudonymizer())
        .routes(routes())
        .build()
        .await
        .unwrap()
}

/// The app under test: `/me` behind the layer, `/admin/*` freeze handlers.
pub fn app(layer: AuthLayer) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/maybe", get(maybe_me))
        .route("/items", get(|| async { "items" }))
        .route("/write", get(|| async { "ok" }))
        .nest("/admin", layer.freeze_admin().router())
        .layer(layer)
}

pub struct Running {
    pub base: String,
    pub client: reqwest::Client,
}

pub async fn run(router: Router) -> Running {
    let addr = serve(router).await;
    Running {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
    }
}

impl Running {
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn bearer(&self, path: &str, token: &str) -> reqwest::Response {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }
}

/// Status, RFC 6750 error code from `WWW-Authenticate`, and the problem type.
pub async fn outcome(r: reqwest::Response) -> (u16, Option<String>, String) {
    let status = r.status().as_u16();
    let code = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("error=\"").nth(1))
        .map(|rest| rest.split('"').next().unwrap_or("").to_string());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, code, body["type"].as_str().unwrap_or("").to_string())
}

/// The base config: JWT with JWKS at `jwks_url`, static HMAC keys, an API key.
pub fn config(jwks_url: Option<&str>) -> AuthConfig {
    let mut keys = String::new();
    for alg in HMAC {
        keys.push_str(&format!(
            "[[jwt.keys]]\nkid = \"{}\"\nalg = \"{alg:?}\"\nsecret_hex = \"{}\"\n",
            kid_of(*alg),
            hmac_hex(*alg)
        ));
    }
    let algs: Vec<String> = ASYMMETRIC
        .iter()
        .chain(HMAC)
        .map(|a| format!("\"{a:?}\""))
        .collect();
    let jwks = jwks_url
        .map(|u| format!("jwks_url = \"{u}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
realm = "tollgate-test"
[jwt]
issuer = "{ISS}"
audience = "{AUD}"
algorithms = [{algs}]
{jwks}leeway = "5s"
tier_claim = "plan"
required_claims = ["exp", "sub"]
jwks_unknown_kid_interval = "30s"
{keys}
[[api_keys]]
id = "key-1"
sha256 = "{digest}"
tier = "free"
scopes = ["read:items", "tollgate:admin"]
subject = "ops-team"
"#,
        algs = algs.join(", "),
        digest = hex::encode(tollgate_auth::ApiKeyRecord::digest_of(b"tg_test_key_1")),
    );
    toml::from_str(&text).unwrap()
}
