//! Every field the composed stack emits is declared in its data inventory.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

use tollgate::Tollgate;

/// Every key of every log line: top level, `fields`, and `span`.
fn emitted_keys(capture: &Capture) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for line in capture.lines() {
        let object = line.as_object().unwrap();
        for (key, value) in object {
            match (key.as_str(), value.as_object()) {
                ("fields" | "span", Some(inner)) => keys.extend(inner.keys().cloned()),
                _ => {
                    keys.insert(key.clone());
                }
            }
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_emitted_field_is_in_the_inventory() {
    let config = stack_config("");
    let inventory = Tollgate::from_config(&config).await.unwrap().inventory();
    let server = serve(config);
    let client = reqwest::Client::new();
    let token = token("inventory-user", "inventory-jti", "free");
    let base = format!("http://{}", server.addr);
    // Authenticated, anonymous, failing, limited and moved-session requests.
    for i in 0..8 {
        client
            .get(format!("{base}/v1/items/{i}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
    }
    client
        .get(format!("{base}/v1/me"))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    client
        .get(format!("{base}/v1/me"))
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    client.post(format!("{base}/login")).send().await.unwrap();
    client.get(format!("{base}/nowhere")).send().await.unwrap();
    client
        .get(format!("{base}/v1/me"))
        .header("x-forwarded-for", "198.51.100.23")
        .header("accept", "application/json")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let emitted = emitted_keys(&server.capture);
    // Sanity: the traffic reached every layer, so the check below covers them all.
    for field in [
        "http.route",
        "principal",
        "tier",
        "session.health",
        "ratelimit.outcome",
        "auth.error",
    ] {
        assert!(emitted.contains(field), "{field} was not emitted: {emitted:?}");
    }
    let undeclared: Vec<&String> = emitted.iter().filter(|k| inventory.get(k).is_none()).collect();
    assert!(
        undeclared.is_empty(),
        "emitted but not in the data inventory: {undeclared:?}"
    );
}

#[tokio::test]
async fn the_inventory_prints_as_json_and_markdown() {
    let inventory = Tollgate::from_config(&stack_config(""))
        .await
        .unwrap()
        .inventory();
    let json: serde_json::Value = serde_json::from_str(&inventory.to_json()).unwrap();
    let fields = json.as_array().unwrap();
    assert!(fields.len() >= 20);
    for field in fields {
        for key in [
            "name",
            "layer",
            "derived_from",
            "protection",
            "purpose",
            "retention",
            "sinks",
        ] {
            assert!(field.get(key).is_some(), "{key} missing in {field}");
        }
    }
    assert!(inventory.to_markdown().contains("| client.network | privacy |"));
}
