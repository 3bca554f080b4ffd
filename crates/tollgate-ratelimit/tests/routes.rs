//! Per-route rules through `Router::layer` and a `RouteMap`, and client resolution
//! shared with the other layers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{HeaderMap, Request, StatusCode};
use tollgate_core::{
    ClientConfig, Clock, CredentialKind, Domain, FakeClock, Principal, Pseudonymizer, RouteMap, RouteTable,
    Tier,
};
use tollgate_ratelimit::{
    LimitConfig, MemoryRateLimitStore, Mode, RateLimitConfig, RateLimitKey, RateLimitLayer, RateLimitRoute,
    RateLimitStatus,
};
use tollgate_test_support::{clock, pseudonymizer, serve};
use tower::ServiceExt;

const OK: StatusCode = StatusCode::OK;
const LIMITED: StatusCode = StatusCode::TOO_MANY_REQUESTS;

fn config() -> RateLimitConfig {
    RateLimitConfig::default()
        .tier(
            "free",
            [LimitConfig::new("burst", 2, Duration::from_secs(1)).burst(3)],
        )
        .tier("pro", [LimitConfig::new("burst", 10, Duration::from_secs(1))])
        .tier(
            "search",
            [LimitConfig::new("search", 2, Duration::from_secs(120))],
        )
        .tier(
            "anonymous",
            [LimitConfig::new("burst", 2, Duration::from_secs(1))],
        )
        .default_tier("free")
}

struct Stack {
    app: Router,
    store: MemoryRateLimitStore,
    clock: FakeClock,
    p: Pseudonymizer,
}

/// One router with the given routes, behind a layer over `routes`.
fn stack(routes: RouteMap<RateLimitRoute>) -> Stack {
    let p = pseudonymizer();
    let clock = clock();
    let store = MemoryRateLimitStore::new(1_000);
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock.clone()))
        .store(Arc::new(store.clone()))
        .routes(routes)
        .build()
        .unwrap();
    let ok = || {
        get(|status: Option<RateLimitStatus>| async move {
            status.map(|s| s.tier().to_string()).unwrap_or_default()
        })
    };
    let app = Router::new()
        .route("/items", ok())
        .route("/health", ok())
        .route("/login", ok())
        .route("/export", ok())
        .route("/search", ok())
        .route("/admin", ok())
        .route("/admin/users/{id}", ok())
        .route("/admin/bulk", ok())
        .layer(layer);
    Stack { app, store, clock, p }
}

impl Stack {
    fn user(&self, subject: &str, tier: &str) -> Principal {
        Principal::new(&self.p, CredentialKind::ApiKey, subject, subject.as_bytes())
            .with_tier(Tier::new(tier))
    }

    async fn send(&self, path: &str, who: &Principal) -> http::Response<Body> {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(who.clone());
        self.app.clone().oneshot(req).await.unwrap()
    }

    async fn statuses(&self, path: &str, who: &Principal, n: usize) -> Vec<StatusCode> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.send(path, who).await.status());
        }
        out
    }

    fn has_state(&self, key: RateLimitKey) -> bool {
        self.store.tats(&key, self.clock.now()).is_some()
    }
}

fn routes(entries: Vec<(&'static str, RateLimitRoute)>) -> RouteMap<RateLimitRoute> {
    RouteMap::new(entries, RateLimitRoute::default()).unwrap()
}

#[tokio::test]
async fn an_exempt_route_is_not_counted_and_carries_no_headers() {
    let s = stack(routes(vec![("/health", RateLimitRoute::exempt())]));
    let user = s.user("exempt", "free");
    for _ in 0..50 {
        let r = s.send("/health", &user).await;
        assert_eq!(r.status(), OK);
        assert!(r.headers().get("ratelimit").is_none());
        assert!(r.extensions().get::<RateLimitStatus>().is_none());
    }
    assert!(!s.has_state(RateLimitKey::new(user.subject_key())));
    // The tier still applies elsewhere.
    assert_eq!(s.statuses("/items", &user, 4).await, [OK, OK, OK, LIMITED]);
}

#[tokio::test]
async fn a_route_with_its_own_limits_counts_under_a_key_of_its_own() {
    let login = RateLimitRoute::limits([LimitConfig::new("login", 1, Duration::from_secs(60))]);
    let s = stack(routes(vec![("/login", login)]));
    let user = s.user("own", "free");
    let r = s.send("/login", &user).await;
    assert_eq!(r.status(), OK);
    assert_eq!(r.headers()["ratelimit-policy"], "\"login\";q=1;w=60");
    let r = s.send("/login", &user).await;
    assert_eq!(r.status(), LIMITED);
    assert_eq!(
        r.extensions().get::<RateLimitStatus>().unwrap().policy(),
        "route:login/login"
    );
    // /login has its own key: the tier's budget is untouched and still whole.
    assert!(!s.has_state(RateLimitKey::new(user.subject_key())));
    assert!(s.has_state(RateLimitKey::scoped("login", user.subject_key()).unwrap()));
    assert_eq!(s.statuses("/items", &user, 4).await, [OK, OK, OK, LIMITED]);
    // And the route's budget is per caller.
    assert_eq!(s.send("/login", &s.user("other", "free")).await.status(), OK);
}

#[tokio::test]
async fn a_route_can_use_another_tier() {
    let s = stack(routes(vec![("/search", RateLimitRoute::tier("search"))]));
    let pro = s.user("searcher", "pro");
    let r = s.send("/search", &pro).await;
    assert_eq!(r.status(), OK);
    assert_eq!(r.headers()["ratelimit-policy"], "\"search\";q=2;w=120");
    let body = axum::body::to_bytes(r.into_body(), 100).await.unwrap();
    assert_eq!(&body[..], b"search");
    // The search tier's two requests, whatever the caller's own tier.
    assert_eq!(s.statuses("/search", &pro, 2).await, [OK, LIMITED]);
    // Counted apart from the caller's own tier, which still has its burst of 10.
    assert!(s.has_state(RateLimitKey::scoped("tier.search", pro.subject_key()).unwrap()));
    assert!(!s.has_state(RateLimitKey::new(pro.subject_key())));
    assert_eq!(
        s.statuses("/items", &pro, 11)
            .await
            .iter()
            .filter(|c| **c == OK)
            .count(),
        10
    );
}

#[tokio::test]
async fn a_costly_route_spends_more_of_the_same_budget() {
    let s = stack(routes(vec![("/export", RateLimitRoute::default().cost(2))]));
    let user = s.user("exporter", "free");
    // Burst 3: one export (2) and one item (1), then nothing.
    let r = s.send("/export", &user).await;
    assert_eq!(r.status(), OK);
    assert_eq!(r.headers()["ratelimit"], "\"burst\";r=1;t=1");
    assert_eq!(s.send("/export", &user).await.status(), LIMITED);
    assert_eq!(s.statuses("/items", &user, 2).await, [OK, LIMITED]);
    // Refilled (1.5 s for 3 units), an export passes again.
    s.clock.advance(Duration::from_millis(1500));
    assert_eq!(s.send("/export", &user).await.status(), OK);
}

#[tokio::test]
async fn a_wildcard_route_covers_everything_under_its_prefix() {
    let admin = RateLimitRoute::limits([LimitConfig::new("admin", 1, Duration::from_secs(60))]);
    let s = stack(routes(vec![("/admin/*", admin)]));
    let user = s.user("admin", "free");
    // /admin and /admin/users/{id} share the wildcard's own budget of one.
    assert_eq!(s.send("/admin/users/7", &user).await.status(), OK);
    let r = s.send("/admin", &user).await;
    assert_eq!(r.status(), LIMITED);
    assert_eq!(r.headers()["ratelimit-policy"], "\"admin\";q=1;w=60");
    assert_eq!(s.send("/admin/bulk", &user).await.status(), LIMITED);
    assert!(s.has_state(RateLimitKey::scoped("admin", user.subject_key()).unwrap()));
    // Other routes are on the tier.
    assert_eq!(s.send("/items", &user).await.status(), OK);
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let s = stack(routes(vec![
        (
            "/admin/*",
            RateLimitRoute::limits([LimitConfig::new("admin", 1, Duration::from_secs(60))]),
        ),
        ("/admin/bulk", RateLimitRoute::exempt()),
        ("default", RateLimitRoute::tier("search")),
    ]));
    let user = s.user("specific", "pro");
    // The exact template beats the wildcard...
    for _ in 0..5 {
        assert_eq!(s.send("/admin/bulk", &user).await.status(), OK);
    }
    // ...the wildcard beats the default...
    assert_eq!(s.statuses("/admin/users/1", &user, 2).await, [OK, LIMITED]);
    // ...and `default` applies to every other route (here: the search tier).
    let r = s.send("/items", &user).await;
    assert_eq!(r.headers()["ratelimit-policy"], "\"search\";q=2;w=120");
    assert_eq!(s.statuses("/login", &user, 2).await, [OK, LIMITED]);
}

#[tokio::test]
async fn a_route_can_report_only() {
    let s = stack(routes(vec![(
        "/items",
        RateLimitRoute::default().mode(Mode::ReportOnly),
    )]));
    let user = s.user("shadow-route", "free");
    assert_eq!(s.statuses("/items", &user, 5).await, [OK; 5]);
    let r = s.send("/items", &user).await;
    assert!(r.extensions().get::<RateLimitStatus>().unwrap().is_limited());
    // The same budget is enforced on the other routes.
    assert_eq!(s.send("/login", &user).await.status(), LIMITED);
}

#[tokio::test]
async fn a_map_over_the_stack_table_follows_the_outer_resolution() {
    // The facade's shape: one table, each layer's map over it, the outermost layer
    // resolving the route once (inserting a `Route` the inner layers index with).
    let table = RouteTable::new(["/health", "/admin/*"]).unwrap();
    let map = RouteMap::from_table(&table, |_, pattern| match pattern {
        "/health" => RateLimitRoute::exempt(),
        _ => RateLimitRoute::default(),
    });
    let p = pseudonymizer();
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .routes(map)
        .build()
        .unwrap();
    let resolved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = resolved.clone();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/items", get(|| async { "ok" }))
        .layer(layer)
        .layer(tower::util::MapRequestLayer::new(
            move |mut req: Request<Body>| {
                table.resolve_and_insert(&mut req);
                seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                req
            },
        ));
    let user = Principal::new(&p, CredentialKind::ApiKey, "outer", b"outer").with_tier(Tier::new("free"));
    let send = |path: &'static str| {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        req.extensions_mut().insert(user.clone());
        app.clone().oneshot(req)
    };
    for _ in 0..10 {
        assert_eq!(send("/health").await.unwrap().status(), OK);
    }
    let mut items = Vec::new();
    for _ in 0..4 {
        items.push(send("/items").await.unwrap().status());
    }
    assert_eq!(items, [OK, OK, OK, LIMITED]);
    assert_eq!(resolved.load(std::sync::atomic::Ordering::Relaxed), 14);
}

/// A standalone layer keys anonymous callers exactly as the other layers do: through
/// the trusted proxy to the forwarded client, coarsened as configured, under the
/// digest of the network `ClientConfig::context` gives. Over real HTTP, behind
/// 127.0.0.1 as the proxy.
#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_clients_network_is_the_key() {
    let p = pseudonymizer();
    let store = MemoryRateLimitStore::new(1_000);
    let client = ClientConfig::default().trust_proxies(["127.0.0.0/8".parse().unwrap()]);
    let layer = RateLimitLayer::builder(config(), p.clone())
        .clock(Arc::new(clock()))
        .store(Arc::new(store.clone()))
        .client(client.clone())
        .build()
        .unwrap();
    let addr = serve(Router::new().route("/items", get(|| async { "ok" })).layer(layer)).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let send = |forwarded: &'static str| {
        http.get(format!("http://{addr}/items"))
            .header("x-forwarded-for", forwarded)
            .send()
    };

    // Two clients of one /24, forwarded by the proxy, share the anonymous budget of 2;
    // a client of another network has its own.
    assert_eq!(send("198.51.100.7").await.unwrap().status(), OK);
    assert_eq!(send("6.6.6.6, 198.51.100.200").await.unwrap().status(), OK);
    assert_eq!(send("198.51.100.9").await.unwrap().status(), LIMITED);
    assert_eq!(send("203.0.113.5").await.unwrap().status(), OK);

    let expected = |ip: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", ip.parse().unwrap());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let network = client.context(peer, &headers, &p).network();
        let (bytes, len) = network.to_bytes();
        p.digest(Domain::NETWORK, &bytes[..len])
    };
    let mut keys: Vec<_> = store
        .keys(clock().now())
        .iter()
        .map(RateLimitKey::digest)
        .collect();
    let mut want = vec![expected("198.51.100.7"), expected("203.0.113.5")];
    keys.sort();
    want.sort();
    assert_eq!(
        keys, want,
        "keyed by the forwarded clients' networks, not the proxy's"
    );

    // A ClientContext an outer layer resolved the same way counts in the same budget.
    let app = Router::new().route("/items", get(|| async { "ok" })).layer(
        RateLimitLayer::builder(config(), p.clone())
            .store(Arc::new(store.clone()))
            .clock(Arc::new(clock()))
            .build()
            .unwrap(),
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-forwarded-for", "198.51.100.42".parse().unwrap());
    let mut req = Request::get("/items").body(Body::empty()).unwrap();
    req.extensions_mut()
        .insert(client.context("127.0.0.1".parse().unwrap(), &headers, &p));
    assert_eq!(app.oneshot(req).await.unwrap().status(), LIMITED);

    // Without trusting the proxy, every forwarded client would be the proxy's network.
    let untrusting = Router::new().route("/items", get(|| async { "ok" })).layer(
        RateLimitLayer::builder(config(), p.clone())
            .clock(Arc::new(clock()))
            .build()
            .unwrap(),
    );
    let mut statuses = Vec::new();
    for forwarded in ["198.51.100.7", "203.0.113.5", "192.0.2.1"] {
        let mut req = Request::get("/items")
            .header("x-forwarded-for", forwarded)
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
        statuses.push(untrusting.clone().oneshot(req).await.unwrap().status());
    }
    assert_eq!(statuses, [OK, OK, LIMITED]);
}
