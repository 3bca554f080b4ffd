//! Two demo gateway processes on different ports sharing one Redis, or one Redis
//! Cluster: one budget, one freeze list and one set of anomaly penalties between
//! them, and on the cluster a primary killed under load. And the demo gateway alone,
//! on its shipped configuration, answering malformed requests.

mod common;

use common::gateway::{ConfigFile, Gateway};
use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tollgate_test_support::canary;
use tollgate_test_support::random_namespace;
use tollgate_test_support::redis::RedisNamespace;
use tollgate_test_support::redis_cluster::RedisCluster;

fn config_file(store: &str) -> ConfigFile {
    let text = format!(
        r#"
[gateway]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"

[routes.default]
auth = "optional"
{auth}
[ratelimit]
default_tier = "free"
anonymous_tier = "free"
[ratelimit.tiers.free]
limits = [{{ name = "minute", quota = 10, window = "1m", burst = 10 }}]
[ratelimit.tiers.pro]
limits = [{{ name = "burst", quota = 1000, window = "1s" }}]

{store}
"#,
        auth = auth_section(),
    );
    ConfigFile::with_contents(&text)
}

/// The `[store]` section on one Redis server, under the test's namespace.
fn redis_store(redis: &RedisNamespace) -> String {
    format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nnamespace = \"{}\"\n",
        redis.url, redis.namespace
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget_and_one_freeze_list() {
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let config = config_file(&redis_store(&redis));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    share_one_budget_and_one_freeze_list(&a, &b).await;
}

/// An object-id walk blocked on A is refused on B at once, for that caller only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_block_on_one_replica_holds_on_the_other() {
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let config = config_file(&format!(
        "[anomaly]\n[anomaly.enumeration]\nmax_distinct_ids = 12\n[anomaly.actions]\nenumeration = \"block\"\n{}",
        redis_store(&redis)
    ));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let client = reqwest::Client::new();
    let walker = token("walker-user", "walker-jti", "pro");
    let bystander = token("bystander-user", "bystander-jti", "pro");
    let get = |addr: SocketAddr, path: String, token: &str| {
        client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .send()
    };

    let mut walked = 0;
    loop {
        walked += 1;
        assert!(walked <= 40, "A never blocked the walk");
        let r = get(a.addr, format!("/v1/items/{walked}"), &walker).await.unwrap();
        match r.status().as_u16() {
            200 => {}
            403 => break,
            other => panic!("unexpected status {other} on A"),
        }
    }
    let blocked_at = Instant::now();
    loop {
        let r = get(b.addr, "/v1/items/1".into(), &walker).await.unwrap();
        if r.status() == 403 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["type"].as_str().unwrap().ends_with("request-blocked"),
                "{body}"
            );
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(
            blocked_at.elapsed() < Duration::from_millis(100),
            "B still serves the blocked caller after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "block on A (after {walked} ids) held on B after {:?}",
        blocked_at.elapsed()
    );
    for replica in [&a, &b] {
        let r = get(replica.addr, "/v1/items/1".into(), &bystander).await.unwrap();
        assert_eq!(r.status(), 200, "another caller is not blocked");
    }
    // B logs the refusal with its action (the log writer flushes on its own schedule).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !b
        .log_text()
        .lines()
        .any(|l| l.contains("\"http.status\":403") && l.contains("action=block"))
    {
        assert!(Instant::now() < deadline, "B's log: {}", b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A replica started after the block loads it.
    let c = Gateway::start(&config);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(c.addr, "/v1/items/1".into(), &walker).await.unwrap().status() != 403 {
        assert!(Instant::now() < deadline, "a new replica never loaded the block");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A caller throttled on A is held to the throttle tier on both replicas together:
/// its budget is spent once, not once per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_throttle_is_one_budget_over_both_replicas() {
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let config = config_file(&format!(
        r#"
[anomaly]
debug_header = true
[anomaly.enumeration]
max_distinct_ids = 12
[anomaly.actions]
enumeration = "throttle"
[anomaly.throttle]
requests = 4
period = "1m"
{}"#,
        redis_store(&redis)
    ));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    let client = reqwest::Client::new();
    let walker = token("throttled-user", "throttled-jti", "pro");
    let get = |addr: SocketAddr, path: String| {
        client
            .get(format!("http://{addr}{path}"))
            .bearer_auth(&walker)
            .send()
    };

    // Walk ids on A until the walk is tagged and throttled (that request spends one).
    let mut walked = 0;
    loop {
        walked += 1;
        assert!(walked <= 40, "A never throttled the walk");
        let r = get(a.addr, format!("/v1/items/{walked}")).await.unwrap();
        assert_eq!(r.status(), 200);
        let tag = r.headers().get("x-tollgate-anomaly");
        if tag.is_some_and(|t| t.to_str().unwrap().contains("action=throttle")) {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await; // the penalty reaches B
    let mut allowed = [0u32; 2];
    for i in 0..20 {
        let (replica, slot) = if i % 2 == 0 { (&b, 1) } else { (&a, 0) };
        let r = get(replica.addr, "/v1/items/1".into()).await.unwrap();
        match r.status().as_u16() {
            200 => allowed[slot] += 1,
            429 => assert!(r.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(
        1 + allowed[0] + allowed[1],
        4,
        "the throttle tier over both replicas, after the tagged request: {allowed:?}"
    );
    assert!(
        allowed[1] > 0,
        "B applied the same budget, not a refusal of its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_a_redis_cluster_share_one_budget_and_survive_a_failover() {
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let config = config_file(&format!(
        "[store]\nbackend = \"redis-cluster\"\nurls = [{}]\nnamespace = \"{}\"\nretry_interval = \"100ms\"\n",
        urls.join(", "),
        random_namespace()
    ));
    let a = Gateway::start(&config);
    let b = Gateway::start(&config);
    share_one_budget_and_one_freeze_list(&a, &b).await;

    // Many callers on both replicas while one primary dies: every answer is 200,
    // 429 or the freeze list's fail-closed 503, never another 5xx; once a replica
    // has taken over, every answer is 200 again.
    let client = reqwest::Client::new();
    let keys: Vec<String> = (0..24).map(|i| format!("failover-key-{i}")).collect();
    let started = Instant::now();
    let load = |until: Duration| {
        let (client, keys, a, b) = (client.clone(), keys.clone(), a.addr, b.addr);
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut i = 0usize;
            while started.elapsed() < until {
                i += 1;
                let addr = if i.is_multiple_of(2) { a } else { b };
                let r = client
                    .get(format!("http://{addr}/v1/me"))
                    .bearer_auth(token(&keys[i % keys.len()], &keys[i % keys.len()], "pro"))
                    .send()
                    .await
                    .unwrap();
                seen.push((started.elapsed(), r.status().as_u16()));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            seen
        })
    };
    let until = Duration::from_secs(12);
    let loads: Vec<_> = (0..4).map(|_| load(until)).collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = cluster.primaries()[1];
    let killed_at = started.elapsed();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(victim);
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    })
    .await
    .unwrap();
    let healthy_at = started.elapsed();
    assert!(
        healthy_at + Duration::from_secs(3) < until,
        "the failover took {:?}",
        healthy_at - killed_at
    );
    let mut seen = Vec::new();
    for l in loads {
        seen.extend(l.await.unwrap());
    }
    seen.sort();
    let statuses: std::collections::BTreeMap<u16, usize> =
        seen.iter().fold(Default::default(), |mut m, (_, s)| {
            *m.entry(*s).or_default() += 1;
            m
        });
    assert!(
        statuses.keys().all(|s| [200, 429, 503].contains(s)),
        "statuses during the failover: {statuses:?}"
    );
    let last_not_ok = seen
        .iter()
        .filter(|(_, s)| *s != 200)
        .map(|(t, _)| *t)
        .next_back();
    let resumed = last_not_ok.map_or(Duration::ZERO, |t| t.saturating_sub(killed_at));
    let after: Vec<_> = seen
        .iter()
        .filter(|(t, _)| *t > healthy_at + Duration::from_secs(1))
        .collect();
    assert!(
        after.len() > 50 && after.iter().all(|(_, s)| *s == 200),
        "answers after the failover"
    );
    println!(
        "gateway on a cluster, primary killed: answers {statuses:?}; cluster healthy {:?} after the kill; last non-200 {resumed:?} after the kill",
        healthy_at - killed_at
    );

    // The outage was logged (once per switch, not per request) and decisions are made
    // in the cluster again: a fresh client gets its budget exactly once over both.
    for replica in [&a, &b] {
        let log = replica.log_text();
        let down = log.matches("redis unreachable").count();
        let back = log.matches("redis answers again").count();
        assert!(down >= 1 && back >= 1, "outage and recovery logged:\n{log}");
        assert!(
            down < 40,
            "an outage is logged per switch, not per request ({down} lines)"
        );
        canary::assert_absent("the gateway log", &log, canary::FRAGMENTS);
    }
    let fresh = token("after-failover", "after-failover-jti", "free");
    let mut allowed = 0;
    for i in 0..30 {
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let r = client
            .get(format!("http://{addr}/v1/items/{}", i + 1))
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap();
        allowed += u32::from(r.status() == 200);
    }
    assert_eq!(allowed, 10, "one budget over both replicas after the failover");
    drop(cluster);
}

/// One client spread over both replicas gets its budget once; a freeze on A is
/// refused on B within 100 ms.
async fn share_one_budget_and_one_freeze_list(a: &Gateway, b: &Gateway) {
    let client = reqwest::Client::new();
    let first = token("replica-user", "replica-jti", "free");

    // A client spread over both replicas gets its tier's budget once: 10, not 20.
    let mut allowed = [0u32; 2];
    for i in 0..40 {
        let (replica, slot) = if i % 2 == 0 { (&a, 0) } else { (&b, 1) };
        let r = client
            .get(format!("http://{}/v1/items/{}", replica.addr, i + 1))
            .bearer_auth(&first)
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => allowed[slot] += 1,
            429 => assert!(r.headers().contains_key("retry-after")),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(allowed[0] + allowed[1], 10, "allowed per replica: {allowed:?}");
    assert!(
        allowed[0] > 0 && allowed[1] > 0,
        "both replicas served: {allowed:?}"
    );

    // A second user is not affected by the first one's spent budget.
    let other = token("replica-user-2", "replica-jti-2", "free");
    let r = client
        .get(format!("http://{}/v1/me", b.addr))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Freeze it on A; B refuses it within 100 ms.
    let freeze = client
        .post(format!("http://{}/admin/freezes", a.addr))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({ "kind": "token", "id": "replica-jti-2", "reason": "replica test" }))
        .send()
        .await
        .unwrap();
    assert!(
        freeze.status().is_success(),
        "freeze answered {}",
        freeze.status()
    );
    let frozen_at = Instant::now();
    loop {
        let r = client
            .get(format!("http://{}/v1/me", b.addr))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(
            frozen_at.elapsed() < Duration::from_millis(100),
            "B still accepts the frozen token after 100 ms"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("freeze on A held on B after {:?}", frozen_at.elapsed());
}

/// The demo gateway as the quick start runs it (`examples/gateway.toml`, state in
/// process): malformed paths and bodies, unknown paths and methods get a 4xx with a
/// problem (the token endpoint: OAuth's error shape), none quoting the input, and the
/// input reaches neither answer nor log.
#[tokio::test]
async fn the_demo_answers_malformed_requests_with_problems() {
    let demo = Gateway::start(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/gateway.toml"
    )));
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", demo.addr);
    let problem = |r: reqwest::Response, status: u16, kind: &'static str| async move {
        assert_eq!(r.status(), status, "{kind}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{kind}");
        let body = r.text().await.unwrap();
        assert!(body.contains(&format!("urn:tollgate:problem:{kind}")), "{body}");
        assert!(!body.contains("alice"), "{body}");
    };
    for (method, path, status, kind) in [
        (
            reqwest::Method::GET,
            "/v1/items/alice@example.com",
            400,
            "invalid-request",
        ),
        (
            reqwest::Method::GET,
            "/no/such/alice@example.com",
            404,
            "not-found",
        ),
        (reqwest::Method::DELETE, "/v1/items/7", 405, "method-not-allowed"),
    ] {
        let r = client.request(method, url(path)).send().await.unwrap();
        problem(r, status, kind).await;
    }

    let login = |content_type: &'static str, body: &'static str| {
        client
            .post(url("/login"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for (content_type, body, error) in [
        (
            "text/plain",
            r#"{"username":"alice@example.com","password":"x"}"#,
            "invalid_request",
        ),
        (
            "application/json",
            r#"{"username":"alice@example.com""#,
            "invalid_request",
        ),
        (
            "application/json",
            r#"{"username":"alice@example.com","password":"x"}"#,
            "invalid_grant",
        ),
    ] {
        let r = login(content_type, body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert_eq!(r.headers()["content-type"], "application/json");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(answer, serde_json::json!({ "error": error }), "{body}");
    }
    // The log is written in batches (every 50 ms): wait for the last request's line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = demo.log_text();
        if log.matches(r#""http.route":"/login""#).count() == 3 {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the requests were not all logged: {log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!log.contains("alice"), "{log}");
}
