//! Shared helpers for the black-box tests of the composed stack.
#![allow(dead_code)]

pub mod gateway;

use std::net::SocketAddr;
use std::ops::Deref;

use axum::extract::Path;
use axum::{Router, routing::get, routing::post};
use tollgate::{Tollgate, TollgateConfig};
use tollgate_test_support::{LogCapture, jwt, serve_captured};

/// The HS256 secret of the test issuer (test-only).
pub const JWT_SECRET: [u8; 32] = [0x5a; 32];
pub const ISSUER: &str = "https://issuer.test.invalid";
pub const AUDIENCE: &str = "tollgate-tests";
pub const PSEUDONYM_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every byte the server thread logged (derefs to [`LogCapture`]).
#[derive(Clone, Debug)]
pub struct Capture(LogCapture);

impl Capture {
    pub fn new(capture: LogCapture) -> Self {
        Capture(capture)
    }

    /// The request lines (one per request).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.0.lines_with_target(tollgate::privacy::TARGET)
    }
}

impl Deref for Capture {
    type Target = LogCapture;

    fn deref(&self) -> &LogCapture {
        &self.0
    }
}

/// The test API: the demo gateway's routes.
pub fn api() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/v1/items/{id}",
            get(|Path(id): Path<u64>| async move { format!("item {id}") }),
        )
        .route("/v1/me", get(|| async { "me" }))
        .route("/login", post(refuse_login))
}

/// The test API's login: every attempt fails, reported to the anomaly layer with
/// the username tried when the body names one.
async fn refuse_login(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refused = (http::StatusCode::UNAUTHORIZED, "invalid credentials");
    let username = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["username"].as_str().map(str::to_string));
    match username {
        Some(name) => (tollgate::core::LoginAttempt::failed(name), refused).into_response(),
        None => refused.into_response(),
    }
}

/// A running server; its thread's every log event (all levels and targets) is captured.
pub struct Server {
    pub addr: SocketAddr,
    pub capture: Capture,
}

/// Builds the stack from `config` and serves the test API behind it on 127.0.0.1,
/// on a thread of its own whose log output is captured.
pub fn serve(config: TollgateConfig) -> Server {
    serve_app(config, api)
}

/// [`serve`] with the routes `app` builds instead of the test API; the freeze admin
/// API, when configured, is nested under `/admin`.
pub fn serve_app(config: TollgateConfig, app: impl FnOnce() -> Router + Send + 'static) -> Server {
    let server = serve_captured(tollgate::privacy::json_layer, move || async move {
        let tollgate = Tollgate::from_config(&config).await.expect("the stack builds");
        let mut app = app();
        if let Some(admin) = tollgate.freeze_admin() {
            app = app.nest("/admin", admin);
        }
        tollgate.apply(app)
    });
    Server {
        addr: server.addr,
        capture: Capture(server.capture),
    }
}

/// The `[auth]` section every black-box test uses: the test issuer's HS256 key and
/// the test API key (pro tier, admin scope, its owner a canary).
pub fn auth_section() -> String {
    format!(
        r#"
[auth]
default_tier = "free"
[auth.jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
algorithms = ["HS256"]
tier_claim = "plan"
[[auth.jwt.keys]]
kid = "test"
alg = "HS256"
secret_hex = "{secret}"
[[auth.api_keys]]
id = "canary-key-id-31337"
sha256 = "{api_key_digest}"
tier = "pro"
scopes = ["read:items", "tollgate:admin"]
subject = "canary.keyowner@example.com"
"#,
        secret = hex::encode(JWT_SECRET),
        api_key_digest = sha256_hex(API_KEY),
    )
}

/// The whole stack's config: every layer on, loopback trusted as a proxy so tests
/// can set client addresses with `X-Forwarded-For`, anonymous callers welcome.
/// `extra` is appended to `[anomaly]`.
pub fn stack_config(extra: &str) -> TollgateConfig {
    TollgateConfig::from_toml(&format!(
        r#"
[pseudonym]
secret = "{PSEUDONYM_SECRET}"

[client]
trusted_proxies = ["127.0.0.0/8"]

[routes.default]
auth = "optional"

[privacy]
log_headers = ["accept"]
{auth}
[fingerprint]

[ratelimit]
default_tier = "free"
anonymous_tier = "anonymous"
[ratelimit.tiers.free]
limits = [{{ name = "burst", quota = 5, window = "1s", burst = 5 }}]
[ratelimit.tiers.pro]
limits = [{{ name = "burst", quota = 1000, window = "1s" }}]
[ratelimit.tiers.anonymous]
limits = [{{ name = "burst", quota = 20, window = "1s", burst = 20 }}]

[anomaly]
{extra}
"#,
        auth = auth_section(),
    ))
    .expect("the test config parses")
}

/// The test API key (its digest is configured, never the key).
pub const API_KEY: &str = "tgk_canary_apikey_5f0e1d9c";

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// An HS256 token from the test issuer.
pub fn token(sub: &str, jti: &str, plan: &str) -> String {
    let mut claims = jwt::claims(ISSUER, AUDIENCE, sub);
    claims["jti"] = jti.into();
    claims["plan"] = plan.into();
    claims["scope"] = "read:items".into();
    jwt::hs256(&JWT_SECRET, Some("test"), &claims)
}
