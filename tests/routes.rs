//! The `[routes]` table, through `Tollgate::from_config` over real HTTP: a route of
//! each kind, a wildcard, and the most specific match winning.

mod common;

use axum::Router;
use axum::routing::{get, post};
use common::{API_KEY, PSEUDONYM_SECRET, token};
use reqwest::StatusCode;
use tollgate::TollgateConfig;

fn config() -> TollgateConfig {
    TollgateConfig::from_toml(&format!(
        r#"
[pseudonym]
secret = "{PSEUDONYM_SECRET}"

[client]
trusted_proxies = ["127.0.0.0/8"]

[routes.default]
auth = "optional"

[routes."/health"]
auth = "skip"
fingerprint = false
ratelimit = {{ exempt = true }}
anomaly = {{ skip = true }}
log = "off"

[routes."/v1/me"]
auth = "required"

[routes."/login"]
auth = "skip"
ratelimit = {{ limits = [{{ name = "login", quota = 2, window = "1m" }}] }}

[routes."/v1/status"]
log = "minimal"

[routes."/admin/*"]
auth = "required"
scopes = ["tollgate:admin"]

[routes."/admin/about"]
auth = "skip"

{auth}
[fingerprint]

[ratelimit]
default_tier = "free"
anonymous_tier = "anonymous"
[ratelimit.tiers.free]
limits = [{{ name = "burst", quota = 100, window = "1s" }}]
[ratelimit.tiers.pro]
limits = [{{ name = "burst", quota = 100, window = "1s" }}]
[ratelimit.tiers.anonymous]
limits = [{{ name = "burst", quota = 3, window = "1m", burst = 3 }}]

[anomaly]
"#,
        auth = common::auth_section(),
    ))
    .expect("the test config parses")
}

fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/v1/items/{id}", get(|| async { "item" }))
        .route("/v1/me", get(|| async { "me" }))
        .route("/v1/status", get(|| async { "status" }))
        .route("/login", post(|| async { "welcome" }))
        .route("/admin/about", get(|| async { "about" }))
        .route("/admin/stats", get(|| async { "stats" }))
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str, network: &str, auth: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-forwarded-for", network);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        req.send().await.unwrap()
    }
}

fn is_problem(response: &reqwest::Response) -> bool {
    response.headers()["content-type"] == "application/problem+json"
}

#[tokio::test]
async fn each_kind_of_route_behaves_as_configured() {
    let server = common::serve_app(config(), app);
    let c = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}", server.addr),
    };
    let bearer = format!("Bearer {}", token("route-user", "jti-routes-1", "free"));
    let api_key = format!("ApiKey {API_KEY}");

    // skip + exempt: garbage credentials are not even read, and no limit applies.
    for _ in 0..10 {
        let r = c.get("/health", "198.51.100.1", Some("Bearer garbage")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers().get("ratelimit").is_none(),
            "an exempt route sends no RateLimit header"
        );
    }

    // optional: anonymous callers pass, invalid credentials do not.
    let r = c.get("/v1/items/7", "198.51.100.2", None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = c.get("/v1/items/7", "198.51.100.2", Some("Bearer garbage")).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(is_problem(&r));

    // required: 401 problem+json without credentials, 200 with them.
    let r = c.get("/v1/me", "198.51.100.3", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(is_problem(&r));
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let r = c.get("/v1/me", "198.51.100.3", Some(&bearer)).await;
    assert_eq!(r.status(), StatusCode::OK);

    // scoped, through a wildcard: 401 anonymous, 403 without the scope, 200 with it.
    let r = c.get("/admin/stats", "198.51.100.4", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c.get("/admin/stats", "198.51.100.4", Some(&bearer)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(is_problem(&r));
    let r = c.get("/admin/stats", "198.51.100.4", Some(&api_key)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The wildcard also covers paths no route matched (no way around it by a typo).
    let r = c.get("/admin/unrouted", "198.51.100.4", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // The most specific pattern wins: /admin/about skips authentication.
    let r = c.get("/admin/about", "198.51.100.4", None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // own limits: /login allows 2 a minute per network, under a key of its own.
    let login = |network: &'static str| {
        c.http
            .post(format!("{}/login", c.base))
            .header("x-forwarded-for", network)
            .send()
    };
    assert_eq!(login("203.0.113.5").await.unwrap().status(), StatusCode::OK);
    assert_eq!(login("203.0.113.5").await.unwrap().status(), StatusCode::OK);
    let refused = login("203.0.113.5").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(is_problem(&refused));
    // The anonymous tier's own budget for that network is untouched.
    let r = c.get("/v1/items/1", "203.0.113.5", None).await;
    assert_eq!(r.status(), StatusCode::OK);

    // The anonymous tier (3 a minute) applies where no route sets limits.
    for _ in 0..2 {
        assert_eq!(
            c.get("/v1/items/2", "192.0.2.9", None).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        c.get("/v1/items/2", "192.0.2.9", None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        c.get("/v1/items/2", "192.0.2.9", None).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Logging: `off` writes no line, `minimal` writes one without caller fields,
    // the default writes the full line.
    let r = c.get("/v1/status", "198.51.100.8", Some(&bearer)).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The line is written when the response head is ready, before it is sent.
    let requests = server.capture.requests();
    let status_line = &requests
        .iter()
        .find(|l| l["span"]["http.route"] == "/v1/status")
        .expect("the /v1/status line")["span"];
    assert!(status_line.get("principal").is_none(), "minimal: {status_line}");
    assert!(
        status_line.get("client.network").is_none(),
        "minimal: {status_line}"
    );
    assert!(
        requests.iter().all(|l| l["span"]["http.route"] != "/health"),
        "a route with log = \"off\" wrote a line"
    );
    let me = requests
        .iter()
        .find(|l| l["span"]["http.route"] == "/v1/me" && l["span"]["http.status"] == 200)
        .expect("the /v1/me line");
    assert!(me["span"]["principal"].is_string(), "full: {me}");
}

#[tokio::test]
async fn a_route_key_without_its_layer_is_refused() {
    let config = TollgateConfig::from_toml(
        r#"
[pseudonym]
secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
[routes."/admin/*"]
scopes = ["tollgate:admin"]
"#,
    )
    .unwrap();
    let err = tollgate::Tollgate::from_config(&config).await.unwrap_err();
    assert!(err.to_string().contains(r#"routes."/admin/*".scopes"#), "{err}");
}

#[tokio::test]
async fn a_bad_pattern_is_refused_by_name() {
    let config = TollgateConfig::from_toml(
        r#"
[pseudonym]
secret = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
[ratelimit]
[routes."health"]
ratelimit = { exempt = true }
"#,
    )
    .unwrap();
    let err = tollgate::Tollgate::from_config(&config).await.unwrap_err();
    assert!(err.to_string().contains(r#"routes."health""#), "{err}");
}
