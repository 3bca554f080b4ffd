//! Every action over real HTTP: throttle, block, freeze, report-only, and the
//! outer failure watch for credential stuffing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind, AnomalyLayer, AnomalyRoute, HealthLevel};
use tollgate_core::{FreezeList, MemoryFreezeList, RouteMap};
use tollgate_test_support::{clock, pseudonymizer_with_clock, serve};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn problem_type(r: reqwest::Response) -> String {
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.unwrap();
    v["type"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn block_stops_an_enumeration_and_the_caller_stays_blocked() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.enumeration.max_distinct_ids = 20;
    config.actions = config.actions.set(AnomalyKind::Enumeration, Action::Block);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let app = routes().layer(anomaly.clone()).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();

    let mut blocked_at = None;
    for id in 0..60 {
        let r = c
            .get(format!("{base}/v1/items/{id}"))
            .header("x-test-user", "mallory")
            .send()
            .await
            .unwrap();
        if r.status() == 403 {
            assert_eq!(problem_type(r).await, "urn:tollgate:problem:request-blocked");
            blocked_at = Some(id);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let at = blocked_at.expect("the walk was blocked");
    assert!((18..=30).contains(&at), "blocked at {at}");
    // Blocked on every route now, before the handler runs.
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Someone else is not.
    let r = c
        .get(format!("{base}/v1/items/1"))
        .header("x-test-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The block lifts after `penalties.block`.
    clock.advance(std::time::Duration::from_secs(601));
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn throttle_holds_a_volume_spike_to_the_stricter_tier() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 10;
    config.throttle.requests = 3;
    config.throttle.period = Duration::from_secs(60);
    config.actions = config.actions.set(AnomalyKind::Volume, Action::Throttle);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let app = routes().layer(anomaly).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();

    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = c
            .get(format!("{base}/v1/search"))
            .header("x-test-user", "bulk")
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            assert_eq!(problem_type(r).await, "urn:tollgate:problem:rate-limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    // 10 under the norm, then 3 on the throttle tier, then 429s.
    assert_eq!(&statuses[..13], &[200; 13]);
    assert!(statuses[13..].iter().all(|s| *s == 429), "{statuses:?}");
    // The throttle tier refills: one request per 20 s.
    clock.advance(std::time::Duration::from_secs(21));
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "bulk")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn freeze_puts_a_shared_token_on_the_freeze_list() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::with_clock(100, Arc::new(clock.clone()));
    let mut config = AnomalyConfig::default();
    config.token_sharing.min_health = HealthLevel::Unhealthy;
    config.actions = config.actions.set(AnomalyKind::TokenSharing, Action::Freeze);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .freeze_list(Arc::new(freeze.clone()))
        .build()
        .unwrap();
    let app = routes().layer(anomaly.clone()).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();

    let ok = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "victim")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "victim")
        .header("x-test-shared", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(problem_type(r).await, "urn:tollgate:problem:credential-frozen");
    let list = freeze.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].reason.starts_with("anomaly: token_sharing:"));
    assert!(list[0].until.is_some());
    // The auth layer now refuses the credential on every request.
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "victim")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Others are untouched.
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A freeze without a freeze list is refused at build time, naming the setting.
    let mut config = AnomalyConfig::default();
    config.actions = config.actions.set(AnomalyKind::TokenSharing, Action::Freeze);
    let err = AnomalyLayer::from_config(&config, p.clone()).unwrap_err();
    assert_eq!(err.setting, "anomaly.actions.token_sharing", "{err}");
    // The same for a route's action.
    let policies = RouteMap::new(
        [(
            "/v1/items/{id}",
            AnomalyRoute::default().action(AnomalyKind::Enumeration, Action::Freeze),
        )],
        AnomalyRoute::default(),
    )
    .unwrap();
    let err = AnomalyLayer::builder(AnomalyConfig::default(), p.clone())
        .routes(policies)
        .build()
        .unwrap_err();
    assert_eq!(
        err.setting, "routes.\"/v1/items/{id}\".anomaly.actions.enumeration",
        "{err}"
    );
}

#[tokio::test]
async fn failure_watch_sees_auth_401s_and_blocks_the_network_before_auth() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.stuffing.max_failures = 10;
    config.actions = config.actions.set(AnomalyKind::CredentialStuffing, Action::Block);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .debug_header(true)
        .build()
        .unwrap();
    let app = routes()
        .layer(anomaly.clone())
        .layer(auth_layer(&p, &freeze))
        .layer(anomaly.failure_watch());
    let base = format!("http://{}", serve(app).await);
    let c = client();

    let mut statuses = Vec::new();
    for _ in 0..15 {
        let r = c
            .get(format!("{base}/v1/search"))
            .header("x-test-user", "bad")
            .send()
            .await
            .unwrap();
        if r.status() == 401 && statuses.len() == 10 {
            // The 11th failure trips the detector: tagged, with the action.
            let header = r.headers()["x-tollgate-anomaly"].to_str().unwrap().to_string();
            assert!(header.starts_with("credential_stuffing:"), "{header}");
            assert!(header.ends_with(";action=block"), "{header}");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(&statuses[..11], &[401; 11]);
    assert!(statuses[11..].iter().all(|s| *s == 403), "{statuses:?}");
    // Valid credentials from the same network are blocked too, before auth runs.
    let r = c
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "alice")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn app_login_failures_count_without_the_watch_and_tag_a_lucky_success() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.stuffing.max_failures = 10;
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .debug_header(true)
        .build()
        .unwrap();
    let app = routes().layer(anomaly).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();
    for _ in 0..12 {
        let r = c.post(format!("{base}/v1/login")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    // Record only: the successful login from the same network is let through, tagged.
    let r = c
        .post(format!("{base}/v1/login"))
        .header("x-good-password", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let header = r.headers()["x-tollgate-anomaly"].to_str().unwrap();
    assert!(header.starts_with("credential_stuffing:"), "{header}");
}

#[tokio::test]
async fn report_only_decides_but_does_not_enforce() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.enumeration.max_distinct_ids = 10;
    config.actions = config.actions.set(AnomalyKind::Enumeration, Action::Block);
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .report_only(true)
        .debug_header(true)
        .build()
        .unwrap();
    let app = routes().layer(anomaly).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();
    let mut last_header = None;
    for id in 0..40 {
        let r = c
            .get(format!("{base}/v1/items/{id}"))
            .header("x-test-user", "mallory")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        last_header = r
            .headers()
            .get("x-tollgate-anomaly")
            .map(|v| v.to_str().unwrap().to_string());
        if id == 39 {
            // The handler saw the tags too.
            let body = r.text().await.unwrap();
            assert!(body.contains("tags=enumeration:"), "{body}");
        }
    }
    let header = last_header.expect("tagged");
    assert!(header.starts_with("enumeration:"), "{header}");
    assert!(header.ends_with(";action=would_block"), "{header}");
}

#[tokio::test]
async fn route_policies_override_actions_and_skip_routes() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 5;
    config.actions = config.actions.set(AnomalyKind::Volume, Action::Block);
    let policies = RouteMap::new(
        [
            ("/health", AnomalyRoute::default().skip()),
            (
                "/v1/search",
                AnomalyRoute::default().action(AnomalyKind::Volume, Action::Record),
            ),
        ],
        AnomalyRoute::default(),
    )
    .unwrap();
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .routes(policies)
        .debug_header(true)
        .build()
        .unwrap();
    let app = routes().layer(anomaly).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    let c = client();
    // Health checks are never counted or tagged.
    for _ in 0..20 {
        let r = c
            .get(format!("{base}/health"))
            .header("x-test-user", "monitor")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("x-tollgate-anomaly"));
    }
    // On /v1/search, volume is recorded only.
    for i in 0..10 {
        let r = c
            .get(format!("{base}/v1/search"))
            .header("x-test-user", "monitor")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().contains_key("x-tollgate-anomaly"),
            i >= 5,
            "request {i}"
        );
    }
    // Elsewhere the global action (block) applies.
    let r = c
        .get(format!("{base}/v1/items/1"))
        .header("x-test-user", "monitor")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn no_debug_header_by_default() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 1;
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .build()
        .unwrap();
    let app = routes().layer(anomaly).layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    for _ in 0..3 {
        let r = client()
            .get(format!("{base}/v1/items/3"))
            .header("x-test-user", "x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(!r.headers().contains_key("x-tollgate-anomaly"));
    }
}

#[tokio::test]
async fn a_route_policy_relaxes_one_route_of_an_app_wide_layer() {
    let clock = clock();
    let p = pseudonymizer_with_clock(&clock);
    let freeze = MemoryFreezeList::new(100);
    let mut config = AnomalyConfig::default();
    config.volume.default_norm = 2;
    config.actions = config.actions.set(AnomalyKind::Volume, Action::Block);
    // One layer over the whole router: the route's policy is found by its template.
    let policies = RouteMap::new(
        [(
            "/v1/bulk",
            AnomalyRoute::default().action(AnomalyKind::Volume, Action::Record),
        )],
        AnomalyRoute::default(),
    )
    .unwrap();
    let anomaly = AnomalyLayer::builder(config, p.clone())
        .clock(Arc::new(clock.clone()))
        .routes(policies)
        .build()
        .unwrap();
    let app = routes()
        .route("/v1/bulk", axum::routing::get(|| async { "bulk" }))
        .layer(anomaly)
        .layer(auth_layer(&p, &freeze));
    let base = format!("http://{}", serve(app).await);
    for _ in 0..10 {
        let r = client()
            .get(format!("{base}/v1/bulk"))
            .header("x-test-user", "etl")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // The same caller on a route without the override is over the norm: blocked.
    let r = client()
        .get(format!("{base}/v1/search"))
        .header("x-test-user", "etl")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}
