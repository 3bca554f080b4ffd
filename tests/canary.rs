//! Privacy canaries through the whole stack over real HTTP: known identifiers go in,
//! every byte the server logs (and, with Redis or a Redis Cluster, every key and value
//! it stores on every shard, and every pub/sub message) is captured, and none of the
//! identifiers comes out.

mod common;

use common::*;
use std::time::Duration;
use tollgate_test_support::canary::{self, EMAIL, IP, JTI, OTHER_IP, SUBJECT, USER_AGENT, assert_absent};
use tollgate_test_support::redis::RedisNamespace;
use tollgate_test_support::redis_cluster::RedisCluster;

const PATH_ID: &str = "987654321";

/// Drives every kind of request through the stack at `addr`; returns the canaries.
async fn traffic(addr: std::net::SocketAddr) -> Vec<String> {
    let token = token(SUBJECT, JTI, "pro");
    let client = reqwest::Client::new();
    let get = |path: &str| {
        client
            .get(format!("http://{addr}{path}"))
            .header("x-forwarded-for", IP)
            .header("user-agent", USER_AGENT)
            // `accept` is a logged header: the canaries hidden in it must stay out too.
            .header(
                "accept",
                format!("application/json, {EMAIL};q={IP}, {USER_AGENT}"),
            )
    };
    let ok = get(&format!("/v1/items/{PATH_ID}?email={EMAIL}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let me = get("/v1/me").header("x-api-key", API_KEY).send().await.unwrap();
    assert_eq!(me.status(), 200);
    // A tier claim is the issuer's text: one that is no configured tier is not logged.
    let odd_tier = get("/v1/me")
        .bearer_auth(common::token(SUBJECT, "canary-jti-tier", IP))
        .send()
        .await
        .unwrap();
    assert_eq!(odd_tier.status(), 200);
    // Failed logins naming the account tried (the email): only its keyed hash is kept.
    for password in ["canary-password-1", "canary-password-2", "canary-password-3"] {
        let r = client
            .post(format!("http://{addr}/login"))
            .header("x-forwarded-for", IP)
            .header("user-agent", USER_AGENT)
            .json(&serde_json::json!({ "username": EMAIL, "password": password }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Failures: a tampered token, a wrong key, an anonymous burst into the limit.
    let bad = get("/v1/me")
        .bearer_auth(format!("{token}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let wrong_key = get("/v1/me")
        .header("x-api-key", "tgk_canary_wrong_key_0000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);
    let mut limited = false;
    for _ in 0..30 {
        let r = get(&format!("/v1/items/{PATH_ID}")).send().await.unwrap();
        limited |= r.status() == 429;
    }
    assert!(limited, "the anonymous burst reached the limit");
    // The same token from a second network: the session layer notices.
    let moved = client
        .get(format!("http://{addr}/v1/me"))
        .header("x-forwarded-for", OTHER_IP)
        .header("user-agent", "OtherCanary/1.0")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    // And back on the first network moments later: one token in two places at once.
    let back = get("/v1/me").bearer_auth(&token).send().await.unwrap();
    assert_eq!(back.status(), 200);

    let mut canaries: Vec<String> = canary::FRAGMENTS.iter().map(|c| c.to_string()).collect();
    canaries.extend(
        [
            "OtherCanary",
            "email=",
            PATH_ID,
            API_KEY,
            "tgk_canary",
            "canary-key-id-31337",
            "canary.keyowner",
            "canary-password",
        ]
        .map(String::from),
    );
    canaries.push(token.clone());
    canaries.extend(token.split('.').skip(1).map(String::from));
    canaries
}

/// The request lines prove the stack did its work, so the absence of canaries means something.
fn assert_lines_carry_pseudonyms(capture: &Capture) {
    let lines = capture.requests();
    assert!(lines.len() >= 35, "one line per request: {}", lines.len());
    let spans: Vec<&serde_json::Value> = lines.iter().map(|l| &l["span"]).collect();
    assert!(spans.iter().any(|s| s["http.route"] == "/v1/items/{id}"));
    assert!(spans.iter().any(|s| s["http.status"] == 429));
    assert!(
        spans
            .iter()
            .any(|s| s["credential"] == "jwt" && s["principal"].as_str().map(str::len) == Some(24))
    );
    assert!(spans.iter().any(|s| s["credential"] == "api_key"));
    assert!(spans.iter().any(|s| s["auth.error"].is_string()));
    assert!(
        spans
            .iter()
            .any(|s| s["session.health"] == "suspicious" || s["session.health"] == "unhealthy")
    );
    assert!(
        spans
            .iter()
            .all(|s| s["client.network"].as_str().is_none_or(|n| n.len() == 24))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_reaches_the_logs() {
    let server = serve(stack_config(""));
    let canaries = traffic(server.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = server.capture.text();
    assert_lines_carry_pseudonyms(&server.capture);
    assert_absent("the log output", &text, &canaries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_reaches_the_logs_or_redis() {
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let server = serve(stack_config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nnamespace = \"{}\"\n",
        redis.url, redis.namespace
    )));
    let mut canaries = traffic(server.addr).await;
    // Freeze the credential through the admin API, so the freeze list holds an entry.
    let freeze = reqwest::Client::new()
        .post(format!("http://{}/admin/freezes", server.addr))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({ "kind": "token", "id": JTI, "reason": "canary test" }))
        .send()
        .await
        .unwrap();
    assert!(freeze.status().is_success(), "{}", freeze.status());
    tokio::time::sleep(Duration::from_millis(50)).await;

    let keys = redis.keys();
    assert_holds_every_store(&keys);
    let stored = stored_text(&mut redis.connection(), &keys);

    // The operator's freeze reason is the one free text stored; it is not a canary.
    canaries.retain(|c| c != "canary test");
    assert_lines_carry_pseudonyms(&server.capture);
    assert_absent("the log output", &server.capture.text(), &canaries);
    assert_absent("the Redis keys and values", &stored, &canaries);
}

/// The same traffic with the state on a Redis Cluster: nothing on any shard, and no
/// freeze event the cluster broadcasts, carries an identifier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_identifier_reaches_the_logs_or_any_shard_of_a_redis_cluster() {
    use futures_util::StreamExt;
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let namespace = tollgate_test_support::random_namespace();
    let urls: Vec<String> = cluster.urls().iter().map(|u| format!("\"{u}\"")).collect();
    let server = serve(stack_config(&format!(
        "[store]\nbackend = \"redis-cluster\"\nurls = [{}]\nnamespace = \"{namespace}\"\n",
        urls.join(", ")
    )));
    let mut events = redis::Client::open(cluster.urls()[0].as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    events
        .subscribe(format!("tollgate:{namespace}:freeze-events"))
        .await
        .unwrap();
    let canaries = traffic(server.addr).await;
    // What the traffic left (rate-limit cells expire a second after their last use).
    let after_traffic = cluster.keys_by_primary(&format!("tollgate:{namespace}:*"));
    let mut stored = String::new();
    for (port, keys) in &after_traffic {
        stored.push_str(&stored_text(&mut cluster.connection(*port), keys));
    }
    let freeze = reqwest::Client::new()
        .post(format!("http://{}/admin/freezes", server.addr))
        .header("x-api-key", API_KEY)
        .json(&serde_json::json!({ "kind": "token", "id": JTI, "reason": "a cluster canary run" }))
        .send()
        .await
        .unwrap();
    assert!(freeze.status().is_success(), "{}", freeze.status());
    let mut messages = String::new();
    let mut stream = events.on_message();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        messages.push_str(&msg.get_payload::<String>().unwrap());
        messages.push('\n');
    }
    assert!(
        messages.starts_with("set credential:"),
        "the freeze event arrived: {messages}"
    );

    let by_shard = cluster.keys_by_primary(&format!("tollgate:{namespace}:*"));
    let keys: Vec<String> = by_shard
        .values()
        .chain(after_traffic.values())
        .flatten()
        .cloned()
        .collect();
    assert_holds_every_store(&keys);
    for (port, keys) in &by_shard {
        stored.push_str(&stored_text(&mut cluster.connection(*port), keys));
    }
    assert_lines_carry_pseudonyms(&server.capture);
    assert_absent("the log output", &server.capture.text(), &canaries);
    assert_absent("the keys and values on every shard", &stored, &canaries);
    assert_absent("the freeze events", &messages, &canaries);
}

fn assert_holds_every_store(keys: &[String]) {
    assert!(
        keys.iter().any(|k| k.contains(":rl")),
        "rate-limit cells are in Redis: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.contains(":session:")),
        "session records are in Redis: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.ends_with(":freeze")),
        "the freeze list is in Redis: {keys:?}"
    );
}

/// Every key and its value (strings and hashes), as text.
fn stored_text(conn: &mut redis::Connection, keys: &[String]) -> String {
    let mut stored = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(key).query(conn).unwrap();
        // Rate-limit cells live about a second after their last use: one may expire
        // between the scan and the read.
        let value: Vec<String> = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(key)
                .query::<Option<String>>(conn)
                .unwrap()
                .into_iter()
                .collect(),
            "hash" => redis::cmd("HGETALL").arg(key).query(conn).unwrap(),
            "none" => continue,
            other => panic!("unexpected Redis type {other} at {key}"),
        };
        stored.push_str(key);
        stored.push('\n');
        stored.push_str(&value.join("\n"));
        stored.push('\n');
    }
    stored
}
