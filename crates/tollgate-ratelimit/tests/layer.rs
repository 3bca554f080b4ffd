//! The layer end to end, on a fake clock, through an axum router.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{HeaderMap, Request, StatusCode};
use tollgate_core::store::{BoxFuture, FailurePolicy, StoreError};
use tollgate_core::{
    ClientConfig, Clock, CredentialKind, Domain, FakeClock, Principal, Pseudonymizer, RouteMap, Tier,
    Timestamp,
};
use tollgate_ratelimit::{
    Decision, Limit, LimitConfig, MemoryRateLimitStore, Mode, Outcome, RateLimitBuilder, RateLimitConfig,
    RateLimitKey, RateLimitLayer, RateLimitRoute, RateLimitStatus, RateLimitStore,
};
use tollgate_test_support::{clock, pseudonymizer};
use tower::ServiceExt;

fn config() -> RateLimitConfig {
    RateLimitConfig::default()
        .tier(
            "free",
            [
                LimitConfig::new("burst", 2, Duration::from_secs(1)).burst(3),
                LimitConfig::new("daily", 5, Duration::from_secs(86_400)),
            ],
        )
        .tier("pro", [LimitConfig::new("burst", 10, Duration::from_secs(1))])
        .tier(
            "anonymous",
            [LimitConfig::new("burst", 2, Duration::from_secs(1))],
        )
        .default_tier("free")
}

/// A builder on `clock` and on `store`, which the test keeps to look inside.
fn builder(
    config: RateLimitConfig,
    p: &Pseudonymizer,
    clock: &FakeClock,
    store: &MemoryRateLimitStore,
) -> RateLimitBuilder {
    RateLimitLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .store(Arc::new(store.clone()))
}

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route(
            "/items",
            get(|status: Option<RateLimitStatus>| async move {
                status.map(|s| s.outcome().to_string()).unwrap_or_default()
            }),
        )
        .route("/login", get(|| async { "login" }))
        .route("/health", get(|| async { "ok" }))
        .route("/export", get(|| async { "big" }))
        .layer(layer)
}

fn principal(p: &Pseudonymizer, subject: &str, tier: &str) -> Principal {
    Principal::new(p, CredentialKind::ApiKey, subject, subject.as_bytes()).with_tier(Tier::new(tier))
}

async fn send(app: &Router, path: &str, principal: Option<&Principal>) -> http::Response<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    if let Some(p) = principal {
        req.extensions_mut().insert(p.clone());
    }
    app.clone().oneshot(req).await.unwrap()
}

async fn send_from(app: &Router, path: &str, ip: &str, p: &Pseudonymizer) -> http::Response<Body> {
    let mut req = Request::get(path).body(Body::empty()).unwrap();
    let ip: IpAddr = ip.parse().unwrap();
    req.extensions_mut()
        .insert(ClientConfig::default().context(ip, &HeaderMap::new(), p));
    app.clone().oneshot(req).await.unwrap()
}

fn admitted(statuses: &[StatusCode]) -> usize {
    statuses.iter().filter(|s| **s == StatusCode::OK).count()
}

#[tokio::test]
async fn two_tiers_side_by_side() {
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap();
    let app = app(layer);
    let free = principal(&p, "free-user", "free");
    let pro = principal(&p, "pro-user", "pro");
    let mut f = Vec::new();
    let mut q = Vec::new();
    for _ in 0..12 {
        f.push(send(&app, "/items", Some(&free)).await.status());
        q.push(send(&app, "/items", Some(&pro)).await.status());
    }
    assert_eq!(admitted(&f), 3, "free: burst 3");
    assert_eq!(admitted(&q), 10, "pro: burst 10");
    let r = send(&app, "/items", Some(&pro)).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"burst\";q=10;w=1");
    let r = send(&app, "/items", Some(&free)).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"burst\";q=3;w=2, \"daily\";q=5;w=86400"
    );
}

#[tokio::test]
async fn daily_denial_does_not_spend_the_per_second_budget() {
    let p = pseudonymizer();
    let clock = clock();
    let store = MemoryRateLimitStore::new(1_000);
    let app = app(builder(config(), &p, &clock, &store).build().unwrap());
    let user = principal(&p, "stacked", "free");
    // 5 a day, 3 at once: spend the daily budget over a few seconds.
    for _ in 0..5 {
        assert_eq!(send(&app, "/items", Some(&user)).await.status(), StatusCode::OK);
        clock.advance(Duration::from_secs(2));
    }
    let key = RateLimitKey::new(user.subject_key());
    let before = store.tats(&key, clock.now()).unwrap();
    for _ in 0..20 {
        let r = send(&app, "/items", Some(&user)).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            r.headers()["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"daily\";r=0;")
        );
    }
    assert_eq!(
        store.tats(&key, clock.now()).unwrap(),
        before,
        "denials spent nothing"
    );
    // The per-second budget is full: the status shows the daily limit refusing, and the
    // burst limit still reports 3 left.
    let burst = Limit::new(2, Duration::from_secs(1), 3).unwrap();
    let now = clock.now().as_nanos();
    assert_eq!(
        tollgate_ratelimit::gcra::decide(before[0], now, &burst, 0).remaining,
        3
    );
}

#[tokio::test]
async fn refusal_is_problem_json_with_retry_after_and_not_cacheable() {
    let p = pseudonymizer();
    let clock = clock();
    let app = app(RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap());
    let user = principal(&p, "u", "free");
    let mut windows = Vec::new();
    for _ in 0..3 {
        let r = send(&app, "/items", Some(&user)).await;
        windows.push(r.headers()["ratelimit"].to_str().unwrap().to_string());
    }
    // Allowed: the effective window is the time until the budget is full again.
    assert_eq!(
        windows,
        ["\"burst\";r=2;t=1", "\"burst\";r=1;t=1", "\"burst\";r=0;t=2"]
    );
    let r = send(&app, "/items", Some(&user)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["retry-after"], "1");
    // Refused: the effective window ends when Retry-After does (draft -11, §6).
    assert_eq!(r.headers()["ratelimit"], "\"burst\";r=0;t=1");
    let status = r.extensions().get::<RateLimitStatus>().unwrap().clone();
    assert_eq!(status.outcome(), Outcome::Denied);
    assert_eq!(status.policy(), "free/burst");
    assert_eq!(status.retry_after(), Some(Duration::from_millis(500)));
    let body = axum::body::to_bytes(r.into_body(), 10_000).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["type"], "urn:tollgate:problem:rate-limited");
    assert_eq!(v["status"], 429);
    // Half a second later one more passes.
    clock.advance(Duration::from_millis(500));
    assert_eq!(send(&app, "/items", Some(&user)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn anonymous_traffic_is_limited_per_network() {
    let p = pseudonymizer();
    let app = app(RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap());
    // Two addresses in one /24 share the anonymous budget of 2.
    assert_eq!(
        send_from(&app, "/items", "198.51.100.7", &p).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send_from(&app, "/items", "198.51.100.200", &p).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send_from(&app, "/items", "198.51.100.9", &p).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another network has its own.
    assert_eq!(
        send_from(&app, "/items", "198.51.101.7", &p).await.status(),
        StatusCode::OK
    );
    // Without ClientContext the peer address from ConnectInfo is resolved and coarsened
    // the same way.
    let mut req = Request::get("/items").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([198, 51, 100, 50], 4000))));
    assert_eq!(
        app.clone().oneshot(req).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Without either, the request passes unlimited (and a warning is logged once).
    for _ in 0..5 {
        assert_eq!(send(&app, "/items", None).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn report_only_lets_through_and_records() {
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config().mode(Mode::ReportOnly), p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap();
    let app = app(layer);
    let user = principal(&p, "shadow", "free");
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let r = send(&app, "/items", Some(&user)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().contains_key("ratelimit"));
        let body = axum::body::to_bytes(r.into_body(), 100).await.unwrap();
        outcomes.push(String::from_utf8(body.to_vec()).unwrap());
    }
    assert_eq!(
        outcomes,
        ["allowed", "allowed", "allowed", "would_deny", "would_deny"]
    );
}

#[tokio::test]
async fn headers_can_be_switched_off_and_unknown_tiers_use_the_default() {
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config().headers(false), p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap();
    let app = app(layer);
    let user = principal(&p, "mystery", "platinum");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = send(&app, "/items", Some(&user)).await;
        assert!(r.headers().get("ratelimit").is_none());
        assert!(r.headers().get("ratelimit-policy").is_none());
        statuses.push(r.status());
    }
    // The default tier is `free`: burst 3.
    assert_eq!(admitted(&statuses), 3);
    let r = send(&app, "/items", Some(&user)).await;
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn a_custom_responder_keeps_the_rate_limit_headers() {
    use axum::response::IntoResponse;
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .responder(tollgate_core::ProblemResponder::new(|problem| {
            (problem.status(), "slow down").into_response()
        }))
        .build()
        .unwrap();
    let app = app(layer);
    let user = principal(&p, "custom", "free");
    for _ in 0..3 {
        send(&app, "/items", Some(&user)).await;
    }
    let r = send(&app, "/items", Some(&user)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().contains_key("ratelimit"));
    let body = axum::body::to_bytes(r.into_body(), 100).await.unwrap();
    assert_eq!(&body[..], b"slow down");
}

#[tokio::test]
async fn custom_key_function() {
    let p = pseudonymizer();
    let keyer = p.clone();
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .key_fn(move |headers, _| {
            let tenant = headers.get("x-tenant")?;
            Some(keyer.digest(Domain::new("tenant"), tenant.as_bytes()))
        })
        .build()
        .unwrap();
    let app = app(layer);
    // Two principals of one tenant share a budget.
    let a = principal(&p, "a", "free");
    let b = principal(&p, "b", "free");
    let mut statuses = Vec::new();
    for who in [&a, &b, &a, &b] {
        let mut req = Request::get("/items")
            .header("x-tenant", "acme")
            .body(Body::empty())
            .unwrap();
        req.extensions_mut().insert(who.clone());
        statuses.push(app.clone().oneshot(req).await.unwrap().status());
    }
    assert_eq!(admitted(&statuses), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_on_one_key_never_exceed_the_quota() {
    let p = pseudonymizer();
    let config = RateLimitConfig::default().tier(
        "default",
        [LimitConfig::new("burst", 100, Duration::from_secs(3600))],
    );
    let app = app(RateLimitLayer::builder(config, p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap());
    let user = principal(&p, "hot", "default");
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (app, user, ok) = (app.clone(), user.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                if send(&app, "/items", Some(&user)).await.status() == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 100);
}

/// A store that can only answer asynchronously: exercises the boxed path.
struct AsyncOnly(MemoryRateLimitStore, bool);

impl RateLimitStore for AsyncOnly {
    fn check_and_spend<'a>(
        &'a self,
        key: &'a RateLimitKey,
        limits: &'a [Limit],
        cost: u64,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Decision, StoreError>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if self.1 {
                return Err(StoreError::Unavailable("down".into()));
            }
            self.0.check_and_spend(key, limits, cost, now).await
        })
    }
}

#[tokio::test]
async fn awaited_stores_and_store_failures() {
    let p = pseudonymizer();
    let user = principal(&p, "remote", "free");
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .store(Arc::new(AsyncOnly(MemoryRateLimitStore::new(100), false)))
        .build()
        .unwrap();
    let app = Router::new().route("/items", get(|| async { "ok" })).layer(layer);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = send(&app, "/items", Some(&user)).await;
        statuses.push(r.status());
        assert!(r.headers().contains_key("ratelimit"));
    }
    assert_eq!(admitted(&statuses), 3);

    for (policy, expected) in [
        (FailurePolicy::Open, StatusCode::OK),
        (FailurePolicy::Closed, StatusCode::SERVICE_UNAVAILABLE),
    ] {
        let layer = RateLimitLayer::builder(config().on_store_failure(policy), p.clone())
            .store(Arc::new(AsyncOnly(MemoryRateLimitStore::new(100), true)))
            .build()
            .unwrap();
        let app = Router::new().route("/items", get(|| async { "ok" })).layer(layer);
        for _ in 0..5 {
            assert_eq!(send(&app, "/items", Some(&user)).await.status(), expected);
        }
    }
}

#[test]
fn misconfiguration_names_the_setting() {
    let p = pseudonymizer();
    let err = |c: RateLimitConfig| {
        RateLimitLayer::from_config(&c, p.clone())
            .unwrap_err()
            .to_string()
    };
    let route_err = |template: &str, route: RateLimitRoute| {
        let routes = RouteMap::new([(template, route)], RateLimitRoute::default()).unwrap();
        RateLimitLayer::builder(config(), p.clone())
            .routes(routes)
            .build()
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(config().default_tier("gold")),
        "ratelimit.default_tier: \"gold\" names no tier in ratelimit.tiers"
    );
    assert_eq!(
        err(config().anonymous_tier("anon")),
        "ratelimit.anonymous_tier: \"anon\" names no tier in ratelimit.tiers"
    );
    assert!(
        err(config().tier("Bad Name", [LimitConfig::new("a", 1, Duration::from_secs(1))]))
            .starts_with("ratelimit.tiers.Bad Name: ")
    );
    let five = (0..5).map(|i| LimitConfig::new(format!("l{i}"), 1, Duration::from_secs(1)));
    assert_eq!(
        err(config().tier("big", five)),
        "ratelimit.tiers.big.limits: needs 1 to 4 limits, got 5"
    );
    assert_eq!(
        err(config().tier("zero", [LimitConfig::new("a", 0, Duration::from_secs(1))])),
        "ratelimit.tiers.zero.limits[0].quota: quota must be at least 1"
    );
    assert_eq!(
        err(config().max_entries(0)),
        "ratelimit.max_entries: must be at least 1"
    );

    let exempt_with_limits = RateLimitRoute {
        exempt: true,
        limits: vec![LimitConfig::new("x", 1, Duration::from_secs(1))],
        ..Default::default()
    };
    assert_eq!(
        route_err("/h", exempt_with_limits),
        "routes.\"/h\".ratelimit: an exempt route takes no limits, tier, cost or mode"
    );
    let both = RateLimitRoute {
        tier: Some("pro".into()),
        ..RateLimitRoute::limits([LimitConfig::new("x", 1, Duration::from_secs(1))])
    };
    assert!(
        route_err("/h", both).starts_with("routes.\"/h\".ratelimit: `limits` and `tier` exclude each other")
    );
    assert_eq!(
        route_err("/x", RateLimitRoute::default().cost(4)),
        "routes.\"/x\".ratelimit.cost: cost 4 exceeds the burst 2 of anonymous/burst, so no request could pass"
    );
    assert_eq!(
        route_err("/x", RateLimitRoute::default().cost(0)),
        "routes.\"/x\".ratelimit.cost: cost must be at least 1"
    );
    assert_eq!(
        route_err("/x", RateLimitRoute::tier("gold")),
        "routes.\"/x\".ratelimit.tier: \"gold\" names no tier in ratelimit.tiers"
    );
    assert_eq!(
        route_err("/x", RateLimitRoute::tier("pro").cost(11)),
        "routes.\"/x\".ratelimit.cost: cost 11 exceeds the burst 10 of pro/burst, so no request could pass"
    );
    assert_eq!(
        route_err(
            "/login",
            RateLimitRoute::limits([LimitConfig::new("login", 5, Duration::from_secs(60)).burst(0)])
        ),
        "routes.\"/login\".ratelimit.limits[0].burst: burst must be at least 1"
    );
    let toml_config: RateLimitConfig = toml::from_str(
        r#"
        default_tier = "free"
        [tiers.free]
        limits = [{ name = "burst", quota = 10, window = "1s", burst = 0 }]
        [tiers.anonymous]
        limits = [{ name = "burst", quota = 1, window = "1s" }]
        "#,
    )
    .unwrap();
    assert_eq!(
        err(toml_config),
        "ratelimit.tiers.free.limits[0].burst: burst must be at least 1"
    );
}

#[tokio::test]
async fn works_as_a_route_layer() {
    let p = pseudonymizer();
    let strict = RateLimitConfig::default()
        .tier(
            "default",
            [LimitConfig::new("strict", 1, Duration::from_secs(60))],
        )
        .tier(
            "anonymous",
            [LimitConfig::new("strict", 1, Duration::from_secs(60))],
        );
    let layer = RateLimitLayer::builder(strict, p.clone())
        .clock(Arc::new(clock()))
        .build()
        .unwrap();
    let routed = Router::new()
        .route("/login", get(|| async { "login" }))
        .route_layer(layer)
        .route("/open", get(|| async { "open" }));
    let user = principal(&p, "route-layer", "default");
    assert_eq!(
        send(&routed, "/login", Some(&user)).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&routed, "/login", Some(&user)).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..5 {
        assert_eq!(send(&routed, "/open", Some(&user)).await.status(), StatusCode::OK);
    }
}

/// The `[ratelimit]` section and the `ratelimit` keys of the `[routes]` tables given to
/// the demo gateway parse and build.
#[tokio::test]
async fn gateway_snippet_builds() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        mode = "enforce"
        headers = true
        default_tier = "free"
        anonymous_tier = "anonymous"
        max_entries = 100000
        on_store_failure = "open"

        [tiers.free]
        limits = [
          { name = "burst", quota = 10, window = "1s", burst = 20 },
          { name = "daily", quota = 10000, window = "1d" },
        ]
        [tiers.pro]
        limits = [
          { name = "burst", quota = 100, window = "1s", burst = 200 },
          { name = "daily", quota = 1000000, window = "1d" },
        ]
        [tiers.anonymous]
        limits = [{ name = "burst", quota = 2, window = "1s", burst = 5 }]
        mode = "report_only"
        "#,
    )
    .unwrap();
    #[derive(serde::Deserialize)]
    struct Route {
        #[serde(default)]
        ratelimit: RateLimitRoute,
    }
    let routes: std::collections::BTreeMap<String, Route> = toml::from_str(
        r#"
        ["/health"]
        ratelimit = { exempt = true }
        ["/login"]
        ratelimit = { limits = [{ name = "login", quota = 5, window = "1m" }] }
        "#,
    )
    .unwrap();
    let routes = RouteMap::new(
        routes.into_iter().map(|(t, r)| (t, r.ratelimit)),
        RateLimitRoute::default(),
    )
    .unwrap();
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config, p.clone())
        .clock(Arc::new(clock()))
        .routes(routes)
        .build()
        .unwrap();
    assert_eq!(layer.inventory().len(), 6);
    let app = app(layer);
    let pro = principal(&p, "gw", "pro");
    let r = send(&app, "/items", Some(&pro)).await;
    assert_eq!(
        r.headers()["ratelimit-policy"],
        "\"burst\";q=200;w=2, \"daily\";q=1000000;w=86400"
    );
    let r = send(&app, "/login", Some(&pro)).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"login\";q=5;w=60");
    // Anonymous traffic is in report-only mode: never refused.
    for _ in 0..10 {
        assert_eq!(
            send_from(&app, "/items", "192.0.2.1", &p).await.status(),
            StatusCode::OK
        );
    }
}
