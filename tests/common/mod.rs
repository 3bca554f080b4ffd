//! Shared helpers for the black-box tests of the composed stack.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::{Router, routing::get, routing::post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tollgate::{Tollgate, TollgateConfig};
use tracing_subscriber::prelude::*;

/// The HS256 secret of the test issuer (test-only).
pub const JWT_SECRET: [u8; 32] = [0x5a; 32];
pub const ISSUER: &str = "https://issuer.test.invalid";
pub const AUDIENCE: &str = "tollgate-tests";
pub const PSEUDONYM_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Every byte the server thread logged.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).expect("log output is UTF-8")
    }

    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The request lines (one per request).
    pub fn requests(&self) -> Vec<serde_json::Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["target"] == tollgate::privacy::TARGET)
            .collect()
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
        .route(
            "/login",
            post(|| async { (http::StatusCode::UNAUTHORIZED, "invalid credentials") }),
        )
}

/// A running server; its thread's every log event (all levels and targets) is captured.
pub struct Server {
    pub addr: SocketAddr,
    pub capture: Capture,
}

/// Builds the stack from `config` and serves the test API behind it on 127.0.0.1,
/// on a thread of its own whose log output is captured.
pub fn serve(config: TollgateConfig) -> Server {
    let capture = Capture::default();
    let writer = capture.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let subscriber = tracing_subscriber::registry()
            .with(tollgate::privacy::json_layer(move || writer.clone()))
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        let _guard = tracing::subscriber::set_default(subscriber);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let tollgate = Tollgate::from_config(&config).await.expect("the stack builds");
            let mut app = api();
            if let Some(admin) = tollgate.freeze_admin() {
                app = app.nest("/admin", admin);
            }
            let app = tollgate.apply(app);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap();
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server starts");
    Server { addr, capture }
}

/// The whole stack's config: every layer on, loopback trusted as a proxy so tests
/// can set client addresses with `X-Forwarded-For`. `extra` is appended.
pub fn stack_config(extra: &str) -> TollgateConfig {
    let secret = hex::encode(JWT_SECRET);
    TollgateConfig::from_toml(&format!(
        r#"
[pseudonym]
secret = "{PSEUDONYM_SECRET}"

[privacy]
log_headers = ["accept"]
[privacy.client]
trusted_proxies = ["127.0.0.0/8"]

[auth]
anonymous = "optional"
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
        api_key_digest = sha256_hex(API_KEY),
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
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, "jti": jti, "plan": plan,
        "scope": "read:items",
    });
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test".into());
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&JWT_SECRET)).unwrap()
}

/// The Redis to test against, from `REDIS_URL`: `None` (after printing that the
/// test is skipped) when it is unset outside CI; a failure under `CI` or when set
/// but unreachable.
pub fn redis_url() -> Option<String> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let url = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if ci => panic!("CI is set but REDIS_URL is not: the Redis tests must run under CI"),
        _ => {
            println!("skipped: REDIS_URL not set");
            return None;
        }
    };
    let reachable = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    if let Err(e) = reachable {
        panic!("REDIS_URL is set but Redis does not answer: {}", e.category());
    }
    Some(url)
}

/// A random key namespace for one test.
pub fn random_namespace() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("t{}", hex::encode(b))
}
