//! Faults: Redis unreachable from the start, and a test-owned `redis-server` killed
//! mid-test and restarted. Every use follows its policy, nothing panics, every switch
//! is logged once and counted, and the stack recovers by itself.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_core::{
    CredentialKind, Domain, FailurePolicy, Freeze, FreezeList, FreezeTarget, Principal, StateStore,
    StoreError, StoreKey, SystemClock, clock::Clock, clock::system_clock,
};
use tollgate_ratelimit::{Limit, RateLimitKey, RateLimitStore};
use tollgate_redis::{
    FreezeConfig, RateLimitFallback, RedisBackend, RedisFreezeList, RedisRateLimitStore, RedisStore,
    StoreConfig,
};
use tollgate_test_support::{LogCapture, free_port, pseudonymizer, random_namespace};

fn fast_config(url: String) -> StoreConfig {
    StoreConfig {
        timeout: Duration::from_millis(100),
        connect_timeout: Duration::from_millis(200),
        retry_interval: Duration::from_millis(100),
        freeze: FreezeConfig {
            heartbeat: Duration::from_millis(100),
            ..FreezeConfig::default()
        },
        ..StoreConfig::redis(url).with_namespace(random_namespace())
    }
}

fn limits() -> [Limit; 1] {
    [Limit::new(5, Duration::from_secs(60), 5).unwrap()]
}

/// Redis was never there: every use answers per its policy at once, one outage is
/// logged and counted, and no identifier reaches the logs.
#[test]
fn unreachable_redis_follows_each_policy() {
    let logs = LogCapture::new();
    let _guard = tracing::subscriber::set_default(
        logs.json_subscriber()
            .with_max_level(tracing::Level::DEBUG)
            .finish(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = RedisBackend::new(&fast_config(format!("redis://127.0.0.1:{}", free_port()))).unwrap();
        let p = pseudonymizer();
        let key = RateLimitKey::new(p.digest(Domain::SUBJECT, b"alice@example.com"));
        let principal = Principal::new(&p, CredentialKind::ApiKey, "alice@example.com", b"key-secret-123");

        let open = RedisRateLimitStore::new(&backend);
        let closed = RedisRateLimitStore::new(&backend).with_fallback(RateLimitFallback::Closed);
        let local = RedisRateLimitStore::new(&backend).with_fallback(RateLimitFallback::Local);
        let freeze_closed = RedisFreezeList::new(&backend);
        let freeze_open = RedisFreezeList::with_config(
            &backend,
            &FreezeConfig {
                on_failure: FailurePolicy::Open,
                ..FreezeConfig::default()
            },
            system_clock(),
        );
        let sessions: RedisStore<u64> = RedisStore::new(&backend);
        let sessions_open: RedisStore<u64> =
            RedisStore::new(&backend).with_failure_policy(FailurePolicy::Open);
        let skey = StoreKey::new("session", &p.digest(Domain::SESSION, b"jti-zzz-999"));

        let started = Instant::now();
        let mut local_allowed = 0;
        for _ in 0..50 {
            let now = SystemClock.now();
            assert!(
                open.check_and_spend(&key, &limits(), 1, now)
                    .await
                    .unwrap()
                    .allowed()
            );
            let refused = closed.check_and_spend(&key, &limits(), 1, now).await.unwrap();
            assert!(!refused.allowed());
            assert_eq!(refused.retry_after(), limits()[0].interval());
            local_allowed += usize::from(
                local
                    .check_and_spend(&key, &limits(), 1, now)
                    .await
                    .unwrap()
                    .allowed(),
            );
            assert!(freeze_closed.check(&principal).await.is_err());
            assert_eq!(freeze_open.check(&principal).await.unwrap(), None);
            assert!(sessions.get(&skey).await.is_err());
            assert_eq!(sessions_open.get(&skey).await.unwrap(), None);
            sessions_open
                .insert(&skey, 1, Duration::from_secs(1))
                .await
                .unwrap();
        }
        // The local fallback keeps its own budget of 5.
        assert_eq!(local_allowed, 5);
        // No call waited for a dead server: the breaker answered at once.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let freeze = Freeze {
            target: FreezeTarget::credential(&p, "key-secret-123"),
            reason: "t".into(),
            frozen_at: SystemClock.now(),
            until: None,
        };
        assert!(matches!(
            freeze_closed.freeze(freeze).await,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        ));

        let stats = backend.stats();
        assert!(!stats.up);
        assert_eq!(stats.outages, 1, "{stats:?}");
        assert_eq!(stats.recoveries, 0);
        assert!(stats.short_circuited > 0, "{stats:?}");
        assert_eq!(stats.fail_open, 50 * 4, "{stats:?}");
        assert_eq!(stats.fail_closed, 50 * 3, "{stats:?}");
        assert_eq!(stats.fallback_local, 50);
        assert!(!freeze_closed.is_synced());
    });
    drop(rt);
    let text = logs.text();
    assert_eq!(text.matches("redis unreachable").count(), 1, "{text}");
    assert_eq!(text.matches("failing open").count(), 3, "{text}");
    assert_eq!(text.matches("failing closed").count(), 3, "{text}");
    for raw in ["alice@example.com", "key-secret-123", "jti-zzz-999"] {
        assert!(!text.contains(raw), "{raw} in logs");
    }
}

/// Where `redis-server` is; `None` (skip) when absent outside CI.
fn redis_server() -> Option<String> {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some("redis-server".into());
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("CI is set but redis-server is not installed");
    }
    println!("skipped: redis-server not installed");
    None
}

/// A test-owned `redis-server`, killed on drop.
struct Server(Child);

impl Server {
    fn start(bin: &str, port: u16) -> Server {
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = Server(child);
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ok.is_ok() {
                return server;
            }
            assert!(Instant::now() < deadline, "redis-server did not start on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn eventually(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Redis killed mid-test, then restarted on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_mid_test() {
    let Some(bin) = redis_server() else { return };
    let port = free_port();
    let server = Server::start(&bin, port);
    let backend = RedisBackend::new(&fast_config(format!("redis://127.0.0.1:{port}"))).unwrap();
    let rl = RedisRateLimitStore::new(&backend);
    let local = RedisRateLimitStore::new(&backend).with_fallback(RateLimitFallback::Local);
    let freeze = RedisFreezeList::new(&backend);
    let sessions: RedisStore<u64> = RedisStore::new(&backend);
    assert!(freeze.wait_synced(Duration::from_secs(5)).await);
    let p = pseudonymizer();
    let principal = Principal::new(&p, CredentialKind::ApiKey, "owner", b"key-1");
    let skey = StoreKey::new("session", &p.digest(Domain::SESSION, b"s"));

    let spend = |store: &RedisRateLimitStore, key: &RateLimitKey| {
        let (store, key) = (store.clone(), *key);
        async move {
            let mut allowed = 0;
            for _ in 0..8 {
                allowed += usize::from(
                    store
                        .check_and_spend(&key, &limits(), 1, SystemClock.now())
                        .await
                        .unwrap()
                        .allowed(),
                );
            }
            allowed
        }
    };
    let key = |name: &str| RateLimitKey::new(p.digest(Domain::SUBJECT, name.as_bytes()));

    // Shared limiting works: 5 of 8 pass, and the budget is spent in Redis.
    assert_eq!(spend(&rl, &key("before")).await, 5, "{:?}", backend.stats());
    assert_eq!(spend(&local, &key("before")).await, 0);
    sessions.insert(&skey, 1, Duration::from_secs(60)).await.unwrap();
    let open_sessions = sessions.clone().with_failure_policy(FailurePolicy::Open);
    let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
    // Read, then swapped: from here on this process knows the value and swaps unread.
    assert_eq!(
        sessions
            .update(&skey, Duration::from_secs(60), &mut add_one)
            .await,
        Ok(2)
    );

    drop(server);

    // An update of a known key whose swap fails follows the policy: `closed` reports
    // the failure (the value was not stored), `open` hands back the computed value.
    assert!(
        sessions
            .update(&skey, Duration::from_secs(60), &mut add_one)
            .await
            .is_err(),
        "closed: the failed swap is an error"
    );
    assert!(
        open_sessions
            .update(&skey, Duration::from_secs(60), &mut add_one)
            .await
            .is_ok(),
        "open: the computed value"
    );

    // Requests keep flowing per policy while Redis is gone, each answered promptly.
    let down_since = Instant::now();
    let mut closed_checks = 0;
    while down_since.elapsed() < Duration::from_millis(700) {
        let t = Instant::now();
        assert!(
            rl.check_and_spend(&key("during"), &limits(), 1, SystemClock.now())
                .await
                .unwrap()
                .allowed(),
            "rate limits fail open"
        );
        match freeze.check(&principal).await {
            Ok(None) => {} // the copy was still current (the loss not yet seen)
            Ok(Some(_)) => panic!("nothing is frozen"),
            Err(_) => closed_checks += 1,
        }
        let _ = sessions.get(&skey).await;
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "a call hung: {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(closed_checks > 0, "the freeze list failed closed");
    assert!(!freeze.is_synced());
    // The local fallback decides alone: its own budget of 5.
    assert_eq!(spend(&local, &key("during-local")).await, 5);
    let stats = backend.stats();
    assert!(!stats.up);
    assert_eq!(stats.outages, 1, "{stats:?}");
    assert!(stats.fail_open > 0 && stats.fail_closed > 0, "{stats:?}");

    // Redis returns (empty): everything recovers by itself.
    let _server = Server::start(&bin, port);
    let restarted = Instant::now();
    eventually("freeze list resync", Duration::from_secs(5), async || {
        freeze.is_synced()
    })
    .await;
    eventually("backend up", Duration::from_secs(5), async || {
        let _ = rl
            .check_and_spend(&key("probe"), &limits(), 0, SystemClock.now())
            .await;
        backend.is_up()
    })
    .await;
    println!("recovered {:?} after the restart", restarted.elapsed());
    let fail_open = backend.stats().fail_open;
    assert_eq!(spend(&rl, &key("after")).await, 5, "shared limiting resumed");
    assert_eq!(backend.stats().fail_open, fail_open, "decided in Redis");
    assert!(freeze.check(&principal).await.unwrap().is_none());
    // A freeze made now holds (through Redis and pub/sub).
    freeze
        .freeze(Freeze {
            target: FreezeTarget::credential(&p, "key-1"),
            reason: "t".into(),
            frozen_at: SystemClock.now(),
            until: None,
        })
        .await
        .unwrap();
    assert!(freeze.check(&principal).await.unwrap().is_some());
    let stats = backend.stats();
    assert!(
        stats.up && stats.recoveries >= 1 && stats.freeze_syncs >= 2,
        "{stats:?}"
    );
}

/// Redis hangs (SIGSTOP: connections stay open, nothing answers), then resumes: calls
/// time out after `timeout` and follow their policies, the freeze list notices by
/// its heartbeat, and everything recovers after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_times_out_then_recovers() {
    let Some(bin) = redis_server() else { return };
    let port = free_port();
    let server = Server::start(&bin, port);
    let pid = server.0.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    };
    let backend = RedisBackend::new(&fast_config(format!("redis://127.0.0.1:{port}"))).unwrap();
    let rl = RedisRateLimitStore::new(&backend);
    let freeze = RedisFreezeList::new(&backend);
    assert!(freeze.wait_synced(Duration::from_secs(5)).await);
    let p = pseudonymizer();
    let principal = Principal::new(&p, CredentialKind::ApiKey, "owner", b"key-1");
    let key = RateLimitKey::new(p.digest(Domain::SUBJECT, b"k"));
    assert!(
        rl.check_and_spend(&key, &limits(), 1, SystemClock.now())
            .await
            .unwrap()
            .allowed()
    );

    signal("-STOP");
    let t = Instant::now();
    let d = rl
        .check_and_spend(&key, &limits(), 1, SystemClock.now())
        .await
        .unwrap();
    let took = t.elapsed();
    assert!(d.allowed(), "fails open");
    assert!(
        took >= Duration::from_millis(90) && took < Duration::from_millis(400),
        "{took:?}"
    );
    assert_eq!(backend.stats().timeouts, 1);
    eventually("heartbeat notices", Duration::from_secs(2), async || {
        !freeze.is_synced()
    })
    .await;
    assert!(freeze.check(&principal).await.is_err(), "fails closed");

    signal("-CONT");
    eventually("freeze list resync", Duration::from_secs(5), async || {
        freeze.is_synced()
    })
    .await;
    eventually("backend up", Duration::from_secs(5), async || {
        let _ = rl.check_and_spend(&key, &limits(), 0, SystemClock.now()).await;
        backend.is_up()
    })
    .await;
    assert!(freeze.check(&principal).await.unwrap().is_none());
    let stats = backend.stats();
    assert_eq!(stats.outages, 1, "{stats:?}");
    assert!(stats.recoveries >= 1, "{stats:?}");
    drop(server);
}
