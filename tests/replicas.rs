//! Two demo gateway processes on different ports sharing one Redis: one budget and
//! one freeze list between them.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate_test_support::redis::RedisNamespace;
use tollgate_test_support::{free_port, random_namespace};

/// The demo gateway binary, built by `cargo test --all-targets` next to this test.
fn gateway_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let binary = target.join("examples").join("gateway");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --example gateway` (scripts/test does)",
        binary.display()
    );
    binary
}

struct Replica {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &std::path::Path) -> Replica {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(gateway_binary())
        .args(["--config", config.to_str().unwrap(), "--addr", &addr.to_string()])
        .env("TOLLGATE_PSEUDONYM_SECRET", PSEUDONYM_SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let replica = Replica { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not start on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    replica
}

fn config_file(url: &str, namespace: &str) -> tempfile_path::TempPath {
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

[store]
backend = "redis"
url = "{url}"
namespace = "{namespace}"
"#,
        auth = auth_section(),
    );
    tempfile_path::TempPath::with_contents(&text)
}

/// A file removed on drop (no extra crate needed for one temp file).
mod tempfile_path {
    pub struct TempPath(std::path::PathBuf);
    impl TempPath {
        pub fn with_contents(text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("tollgate-replicas-{}.toml", super::random_namespace()));
            std::fs::write(&path, text).unwrap();
            TempPath(path)
        }
    }
    impl std::ops::Deref for TempPath {
        type Target = std::path::Path;
        fn deref(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_budget_and_one_freeze_list() {
    let Some(redis) = RedisNamespace::new() else {
        return;
    };
    let config = config_file(&redis.url, &redis.namespace);
    let a = start(&config);
    let b = start(&config);
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
