//! Each anomaly action over real HTTP, through the real composed stack: privacy
//! trace, failure watch, auth (API keys, freeze list), fingerprinting, rate limits
//! and the anomaly layer.

use std::sync::Arc;
use std::time::Duration;

use tollgate_anomaly::{Action, AnomalyConfig, AnomalyKind};
use tollgate_sim::app::{Stack, anomaly_config, stack};
use tollgate_sim::traffic::{Account, Credential};

const KEY_A: &str = "tgk_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const KEY_B: &str = "tgk_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

async fn serve(config: AnomalyConfig) -> (String, Stack) {
    let accounts = vec![
        Account {
            name: "alice@example.com".into(),
            password: "pw-a".into(),
            tier: "free",
            orders: [100_000, 100_001, 100_002],
        },
        Account {
            name: "bob@example.com".into(),
            password: "pw-b".into(),
            tier: "free",
            orders: [100_008, 100_009, 100_010],
        },
    ];
    let credentials = vec![
        Credential {
            id: "key-a".into(),
            key: Arc::from(KEY_A),
            account: 0,
        },
        Credential {
            id: "key-b".into(),
            key: Arc::from(KEY_B),
            account: 1,
        },
    ];
    let s = stack(&accounts, &credentials, 1_000, 1_700_006_400, config).await;
    let addr = tollgate_test_support::serve(s.router.clone()).await;
    (format!("http://{addr}"), s)
}

async fn get(base: &str, path: &str, key: &str, ua: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("x-api-key", key)
        .header("user-agent", ua)
        .send()
        .await
        .unwrap()
}

async fn problem_type(r: reqwest::Response) -> String {
    let v: serde_json::Value = r.json().await.unwrap();
    v["type"].as_str().unwrap_or_default().to_string()
}

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

#[tokio::test]
async fn block_stops_a_bola_walk() {
    let mut config = anomaly_config();
    config.actions = config.actions.set(AnomalyKind::Enumeration, Action::Block);
    let (base, s) = serve(config).await;
    let mut statuses = Vec::new();
    for id in 200_000..200_040 {
        s.clock.advance(Duration::from_secs(1));
        statuses.push(
            get(&base, &format!("/v1/orders/{id}"), KEY_A, FIREFOX)
                .await
                .status()
                .as_u16(),
        );
    }
    // 404s until the error ratio trips (judged from the 10th request), then 403
    // before the handler runs.
    assert!(statuses[..10].iter().all(|s| *s == 404), "{statuses:?}");
    assert!(statuses[11..].iter().all(|s| *s == 403), "{statuses:?}");
    let r = get(&base, "/v1/search", KEY_A, FIREFOX).await;
    assert_eq!(r.status(), 403);
    assert_eq!(problem_type(r).await, "urn:tollgate:problem:request-blocked");
    assert_eq!(get(&base, "/v1/search", KEY_B, FIREFOX).await.status(), 200);
}

#[tokio::test]
async fn throttle_holds_a_burst_to_the_stricter_tier() {
    let mut config = anomaly_config();
    config.volume.tier_norms.insert("free".into(), 30);
    config.actions = config.actions.set(AnomalyKind::Volume, Action::Throttle);
    let (base, s) = serve(config).await;
    let mut statuses = Vec::new();
    // The caller's own pace: a request every 5 s.
    const QUIET: usize = 30;
    for _ in 0..QUIET {
        s.clock.advance(Duration::from_secs(5));
        statuses.push(get(&base, "/v1/search", KEY_A, FIREFOX).await.status().as_u16());
    }
    for _ in 0..50 {
        // Then 10 a second: under the rate-limit tier (20/s), 50 times its own pace.
        s.clock.advance(Duration::from_millis(100));
        statuses.push(get(&base, "/v1/search", KEY_A, FIREFOX).await.status().as_u16());
    }
    let first_429 = statuses.iter().position(|s| *s == 429).expect("throttled");
    // The burst is tagged within a dozen requests; the throttle tier's 10 requests
    // (the tagged one the first of them) go through, then 429s.
    assert!(
        (QUIET + 10..=QUIET + 22).contains(&first_429),
        "{first_429}: {statuses:?}"
    );
    assert!(statuses[first_429..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(get(&base, "/v1/search", KEY_B, FIREFOX).await.status(), 200);
}

#[tokio::test]
async fn freeze_locks_a_shared_key_through_the_auth_layer() {
    let mut config = anomaly_config();
    config.actions = config.actions.set(AnomalyKind::TokenSharing, Action::Freeze);
    let (base, s) = serve(config).await;
    // Establish the session, then alternate between two browsers: the fingerprinting
    // layer judges the session unhealthy, and the anomaly layer freezes the key.
    let mut statuses = Vec::new();
    for i in 0..12 {
        s.clock.advance(Duration::from_secs(5));
        let ua = if i < 4 || i % 2 == 0 { FIREFOX } else { CHROME };
        statuses.push(get(&base, "/v1/search", KEY_A, ua).await.status().as_u16());
    }
    let frozen_at = statuses.iter().position(|s| *s == 401).expect("frozen");
    assert!(statuses[..frozen_at].iter().all(|s| *s == 200), "{statuses:?}");
    // From then on the auth layer refuses the key, whatever the browser.
    s.clock.advance(Duration::from_secs(600));
    let r = get(&base, "/v1/search", KEY_A, FIREFOX).await;
    assert_eq!(r.status(), 401);
    assert_eq!(problem_type(r).await, "urn:tollgate:problem:credential-frozen");
    assert_eq!(get(&base, "/v1/search", KEY_B, FIREFOX).await.status(), 200);
}

#[tokio::test]
async fn failure_watch_blocks_a_stuffing_network_before_auth() {
    let mut config = anomaly_config();
    config.actions = config.actions.set(AnomalyKind::CredentialStuffing, Action::Block);
    let (base, s) = serve(config).await;
    let mut statuses = Vec::new();
    for i in 0..30 {
        s.clock.advance(Duration::from_secs(1));
        let guess = format!("tgk_{i:032x}");
        statuses.push(get(&base, "/v1/account", &guess, FIREFOX).await.status().as_u16());
    }
    // The auth layer's 401s (which the inner anomaly layer never sees) trip the
    // detector within 20 failures (the API-wide rate, or the network's count); then
    // the network is blocked before auth runs.
    let blocked = statuses.iter().position(|s| *s == 403).expect("blocked");
    assert!((10..=21).contains(&blocked), "{statuses:?}");
    assert!(statuses[..blocked].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[blocked..].iter().all(|s| *s == 403), "{statuses:?}");
    let r = get(&base, "/v1/account", KEY_A, FIREFOX).await;
    assert_eq!(r.status(), 403);
    assert_eq!(problem_type(r).await, "urn:tollgate:problem:request-blocked");
}
