//! The operator and consumer surface over real HTTP: the admin API's guards, a
//! caller's own data and nobody else's, the public inventory, metrics without
//! identifiers and with bounded labels, and the console driven in a real browser.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tollgate::operator::{MAX_LABEL_VALUES, Observers, Operator};
use tollgate::{Tollgate, TollgateConfig};
use tollgate_test_support::canary::{self, assert_absent};
use tollgate_test_support::{free_port, serve_captured};

/// The victim API key the console freezes (its digest is configured).
const VICTIM_KEY: &str = "tgk_victim_key_0123456789";
const VICTIM_ID: &str = "victim-key-id";

fn operator_config() -> TollgateConfig {
    TollgateConfig::from_toml(&format!(
        r#"
[pseudonym]
secret = "{PSEUDONYM_SECRET}"
[client]
trusted_proxies = ["127.0.0.0/8"]
[routes.default]
auth = "optional"
[routes."/admin/*"]
auth = "required"
scopes = ["tollgate:admin"]
[routes."/admin/console"]
auth = "optional"
[routes."/admin/console/*"]
auth = "optional"
[routes."/admin/console/session"]
auth = "required"
scopes = ["tollgate:admin"]
[routes."/.well-known/tollgate/my-data"]
auth = "required"
[routes."/.well-known/tollgate/inventory"]
auth = "skip"
[routes."/metrics"]
auth = "skip"
{auth}
[[auth.api_keys]]
id = "{VICTIM_ID}"
sha256 = "{victim}"
tier = "free"
[fingerprint]
[ratelimit]
default_tier = "free"
anonymous_tier = "anonymous"
[ratelimit.tiers.free]
limits = [{{ name = "burst", quota = 50, window = "1s" }}]
[ratelimit.tiers.pro]
limits = [{{ name = "burst", quota = 1000, window = "1s" }}]
[ratelimit.tiers.anonymous]
limits = [{{ name = "burst", quota = 20, window = "1s" }}]
[anomaly]
"#,
        auth = auth_section(),
        victim = sha256_hex(VICTIM_KEY),
    ))
    .expect("the operator config parses")
}

/// The test API with the operator surface mounted as the demo gateway mounts it.
fn serve_operator() -> Server {
    let config = operator_config();
    let observers = Observers::new(&config);
    let attach = observers.clone();
    let server = serve_captured(
        move |capture| attach.attach(tollgate::privacy::json_layer(capture)),
        move || async move {
            let tollgate = Tollgate::from_config(&config).await.expect("the stack builds");
            let operator = Operator::new(&config, &tollgate, observers);
            let app = api()
                .nest("/admin", operator.admin_api().merge(operator.console()))
                .merge(operator.well_known())
                .merge(operator.metrics());
            tollgate.apply(app)
        },
    );
    Server {
        addr: server.addr,
        capture: Capture::new(server.capture),
    }
}

async fn get_json(client: &reqwest::Client, url: String, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = client.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_without_credentials_or_the_admin_scope() {
    let server = serve_operator();
    let client = reqwest::Client::new();
    let reader = token("reader", "reader-jti", "free");
    for path in [
        "/admin/sessions",
        "/admin/tiers",
        "/admin/anomalies",
        "/admin/inventory",
        "/admin/freezes",
    ] {
        let url = format!("http://{}{path}", server.addr);
        let (status, body) = get_json(&client, url.clone(), &[]).await;
        assert_eq!(status, 401, "{path} without credentials");
        assert_eq!(body["type"], "urn:tollgate:problem:missing-credentials", "{path}");
        let bearer = format!("Bearer {reader}");
        let (status, body) = get_json(&client, url.clone(), &[("authorization", &bearer)]).await;
        assert_eq!(status, 403, "{path} without the admin scope");
        assert_eq!(body["type"], "urn:tollgate:problem:insufficient-scope", "{path}");
        let (status, _) = get_json(&client, url, &[("x-api-key", API_KEY)]).await;
        assert_eq!(status, 200, "{path} with the admin scope");
    }
    // Signing in to the console needs the admin scope too.
    let r = client
        .post(format!("http://{}/admin/console/session", server.addr))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // A console form without a console session is refused.
    let r = client
        .post(format!("http://{}/admin/console/freeze", server.addr))
        .form(&[
            ("token", "x"),
            ("kind", "api_key"),
            ("id", VICTIM_ID),
            ("reason", "r"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// Wrong methods, unreadable forms and paths on the operator surface answer
/// problem+json like the rest of the stack, not axum's empty 405 or its plain text
/// (which quotes the input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_operator_requests_answer_problem_json() {
    let server = serve_operator();
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", server.addr);
    let admin = [("x-api-key", API_KEY)];
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        ("POST /metrics", client.post(url("/metrics")), 405),
        (
            "POST inventory",
            client.post(url("/.well-known/tollgate/inventory")),
            405,
        ),
        ("POST /admin/sessions", client.post(url("/admin/sessions")), 405),
        (
            "GET /admin/console/freeze",
            client.get(url("/admin/console/freeze")),
            405,
        ),
        (
            "GET a freeze by digest",
            client.get(url("/admin/freezes/subject/00")),
            405,
        ),
        (
            "a console form missing fields",
            client
                .post(url("/admin/console/freeze"))
                .form(&[("token", "canary.user@example.org")]),
            422,
        ),
        (
            "a console form sent as JSON",
            client
                .post(url("/admin/console/unfreeze"))
                .header("content-type", "application/json")
                .body("{}"),
            415,
        ),
        (
            "a freeze path that is not UTF-8",
            client.delete(url("/admin/freezes/%ff/%fe")),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let mut request = request;
        for (k, v) in admin {
            request = request.header(k, v);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        if status == 405 {
            assert!(
                r.headers().contains_key("allow"),
                "{what}: the Allow header stays"
            );
        }
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "application/problem+json", "{what}");
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("canary"),
            "{what}: the input is not echoed: {body}"
        );
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(problem["status"], status, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_data_shows_the_caller_and_nobody_else() {
    let server = serve_operator();
    let client = reqwest::Client::new();
    let url = format!("http://{}/.well-known/tollgate/my-data", server.addr);
    let alice = token(canary::SUBJECT, canary::JTI, "free");
    let bob = token("bob@example.org", "bob-jti", "pro");
    for (t, ip) in [(&alice, canary::IP), (&bob, canary::OTHER_IP)] {
        for i in 0..3 {
            let r = client
                .get(format!("http://{}/v1/items/{i}", server.addr))
                .bearer_auth(t)
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let (status, body) = get_json(&client, url.clone(), &[]).await;
    assert_eq!(status, 401, "anonymous callers get 401");
    assert_eq!(body["type"], "urn:tollgate:problem:missing-credentials");

    let mine = |t: &str| {
        let (client, url) = (client.clone(), url.clone());
        let bearer = format!("Bearer {t}");
        async move {
            let (status, body) = get_json(
                &client,
                url,
                &[("authorization", &bearer), ("x-forwarded-for", canary::IP)],
            )
            .await;
            assert_eq!(status, 200);
            body
        }
    };
    let a = mine(&alice).await;
    let b = mine(&bob).await;
    assert_eq!(a["tier"]["name"], "free");
    assert_eq!(b["tier"]["name"], "pro");
    assert_eq!(a["principal"]["credential"], "jwt");
    assert!(a["session"]["requests"].as_u64().unwrap() >= 3);
    assert_eq!(a["session"]["fingerprints"], 1);
    assert!(
        a["principal"]["about"]["purpose"].is_string(),
        "each field says why it is kept"
    );
    assert!(a["session"]["about"]["retention"].is_object());
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let a_pseudonym = a["principal"]["pseudonym"].as_str().unwrap();
    let b_pseudonym = b["principal"]["pseudonym"].as_str().unwrap();
    assert_eq!(a_pseudonym.len(), 24);
    assert_ne!(a_pseudonym, b_pseudonym);
    for other in [b_pseudonym, b["session"]["pseudonym"].as_str().unwrap()] {
        assert!(!a_text.contains(other), "no trace of B in A's data");
    }
    assert!(!b_text.contains(a_pseudonym));
    assert_absent("my-data", &a_text, canary::FRAGMENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_is_public_and_counts_what_is_held() {
    let server = serve_operator();
    let client = reqwest::Client::new();
    for i in 0..5 {
        client
            .get(format!("http://{}/v1/items/{i}", server.addr))
            .header("x-forwarded-for", format!("198.51.{i}.7"))
            .send()
            .await
            .unwrap();
    }
    let (status, body) = get_json(
        &client,
        format!("http://{}/.well-known/tollgate/inventory", server.addr),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let stores = body["stores"].as_array().unwrap();
    let entries = |name: &str| {
        stores
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["entries"].as_u64())
            .unwrap_or_else(|| panic!("{name} in {stores:?}"))
    };
    assert!(entries("tollgate:rl:{digest}") >= 5, "one cell per network");
    assert_eq!(entries("freeze list"), 0);
    assert!(stores.iter().all(|s| s.get("retention").is_some()));
    let fields = body["fields"].as_array().unwrap();
    for name in [
        "principal",
        "operator.activity",
        "operator.flagged_sessions",
        "operator.console_sessions",
    ] {
        assert!(
            fields.iter().any(|f| f["name"] == name),
            "{name} is in the inventory"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_hold_no_identifier_and_labels_stay_bounded() {
    let server = serve_operator();
    let client = reqwest::Client::new();
    // Canary identifiers through every kind of request, as the canary test does.
    let t = token(canary::SUBJECT, canary::JTI, "pro");
    for (path, ip) in [
        ("/v1/items/987654321?email=x@y.z", canary::IP),
        ("/v1/me", canary::OTHER_IP),
    ] {
        client
            .get(format!("http://{}{path}", server.addr))
            .bearer_auth(&t)
            .header("x-forwarded-for", ip)
            .header("user-agent", canary::USER_AGENT)
            .send()
            .await
            .unwrap();
    }
    client
        .get(format!("http://{}/v1/me", server.addr))
        .header("x-api-key", "tgk_canary_wrong_key_0000")
        .send()
        .await
        .unwrap();
    // A flood of distinct unmatched paths, and the anonymous limit reached.
    for i in 0..300 {
        client
            .get(format!("http://{}/no/such/{i}/{}", server.addr, canary::EMAIL))
            .header("x-forwarded-for", canary::IP)
            .send()
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = client
        .get(format!("http://{}/metrics", server.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("tollgate_requests_total{"), "{text}");
    assert!(text.contains("tollgate_early_answers_total{"), "{text}");
    assert!(text.contains("tollgate_ratelimit_decisions_total{"), "{text}");
    assert!(text.contains("tollgate_freeze_list_entries"), "{text}");
    let mut forbidden: Vec<String> = canary::FRAGMENTS.iter().map(|c| c.to_string()).collect();
    forbidden.extend([API_KEY.to_string(), "987654321".into(), t.clone()]);
    // No pseudonym either: every pseudonym the logs carry is absent from the metrics.
    for line in server.capture.requests() {
        for field in ["principal", "session", "client.network"] {
            if let Some(p) = line["span"][field].as_str() {
                forbidden.push(p.to_string());
            }
        }
    }
    assert!(forbidden.len() > 10);
    assert_absent("the metrics", &text, &forbidden);
    let routes: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("tollgate_requests_total{"))
        .filter_map(|l| l.split("route=\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        routes.len() <= MAX_LABEL_VALUES + 2,
        "{} route labels",
        routes.len()
    );
}

/// A click that starts a navigation may be reported as aborted by it: that is the
/// navigation we asked for.
fn navigating<T>(r: Result<T, fantoccini::error::CmdError>) -> Result<(), fantoccini::error::CmdError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("aborted by navigation") => Ok(()),
        Err(e) => Err(e),
    }
}

/// chromedriver on a free port, killed on drop.
struct Driver(std::process::Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromedriver() -> Option<Driver> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let found = std::process::Command::new("chromedriver")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !ci,
            "CI is set but chromedriver is missing: the browser test must run under CI"
        );
        println!("skipped: chromedriver not found (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child, port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(driver)
}

/// Traffic that gives the console something to show: sessions judged unhealthy,
/// an enumeration, rate-limited callers.
async fn some_activity(addr: SocketAddr) {
    let client = reqwest::Client::new();
    let shared = token("shared-token-user", "shared-jti", "free");
    for i in 0..12 {
        let ip = if i % 2 == 0 {
            "203.0.113.10"
        } else {
            "198.51.100.20"
        };
        let ua = if i % 2 == 0 {
            "Mozilla/5.0 Firefox/133.0"
        } else {
            "curl/8.5.0"
        };
        client
            .get(format!("http://{addr}/v1/me"))
            .bearer_auth(&shared)
            .header("x-forwarded-for", ip)
            .header("user-agent", ua)
            .send()
            .await
            .unwrap();
    }
    for i in 0..150 {
        client
            .get(format!("http://{addr}/v1/items/{i}"))
            .header("x-forwarded-for", "192.0.2.55")
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_freezes_a_key_in_a_real_browser() {
    use fantoccini::{ClientBuilder, Locator};

    let Some(driver) = chromedriver() else { return };
    let server = serve_operator();
    some_activity(server.addr).await;
    let victim = || {
        reqwest::Client::new()
            .get(format!("http://{}/v1/me", server.addr))
            .header("x-api-key", VICTIM_KEY)
            .send()
    };
    assert_eq!(victim().await.unwrap().status(), 200, "the key works before");

    let profile = std::env::temp_dir().join(format!(
        "tollgate-chromium-{}",
        tollgate_test_support::random_namespace()
    ));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1700",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let browser = ClientBuilder::rustls()
        .expect("a TLS config for the client")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .expect("chromium starts under chromedriver");
    let run = async {
        browser
            .goto(&format!("http://{}/admin/console", server.addr))
            .await?;
        browser
            .find(Locator::Css("#credential"))
            .await?
            .send_keys(API_KEY)
            .await?;
        navigating(browser.find(Locator::Css("#sign-in")).await?.click().await)?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#freeze-form"))
            .await?;
        browser
            .find(Locator::Css("#freeze-id"))
            .await?
            .send_keys(VICTIM_ID)
            .await?;
        navigating(browser.find(Locator::Css("#freeze-submit")).await?.click().await)?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath("//table[@id='frozen']//form"))
            .await?;
        let html = browser.source().await?;
        let png = browser.screenshot().await?;
        Ok::<_, fantoccini::error::CmdError>((html, png))
    };
    let outcome = run.await;
    let _ = browser.close().await;
    let _ = std::fs::remove_dir_all(&profile);
    let (html, png) = outcome.expect("the console flow runs");

    // The key is refused over HTTP now.
    let r = victim().await.unwrap();
    assert_eq!(r.status(), 401, "the frozen key is refused");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["type"], "urn:tollgate:problem:credential-frozen");
    // The page shows pseudonyms and counts, no identifier.
    assert!(html.contains("anomaly-chart"));
    assert!(!html.contains(VICTIM_ID) && !html.contains(VICTIM_KEY) && !html.contains(API_KEY));
    assert_absent("the console page", &html, canary::FRAGMENTS);
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("console.png"), png).unwrap();
}
