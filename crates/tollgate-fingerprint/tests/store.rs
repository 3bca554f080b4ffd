//! The session store: bounded, expiring, and usable through any `StateStore`.

mod support;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use support::Env;
use tollgate_core::inventory::Retention;
use tollgate_core::{
    BoxFuture, CarryExt, ClientConfig, FailurePolicy, MemoryStore, Principal, SessionHealth, SessionInfo,
    StateStore, StoreError, StoreKey, fields,
};
use tollgate_fingerprint::{FingerprintConfig, FingerprintLayer, SessionPolicy, SessionRecord, session_key};
use tower::{Layer, Service, ServiceExt};

/// The handler: 200, with the verdict in a header.
fn handler()
-> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|req: Request<Body>| async move {
        let info = req.extensions().carried::<SessionInfo>();
        let health = info.map_or("none", |i| i.health.as_str());
        let session = info.map_or(String::new(), |i| format!("{} {}", i.session, i.fingerprint));
        Ok::<_, Infallible>(
            Response::builder()
                .header("x-health", health)
                .header("x-session", session)
                .body(Body::empty())
                .unwrap(),
        )
    })
}

fn request(env: &Env, principal: &Principal, ip: &str) -> Request<Body> {
    let mut req = Request::new(Body::empty());
    let ip: IpAddr = ip.parse().unwrap();
    let ctx = ClientConfig::default().context(ip, req.headers(), &env.p);
    req.extensions_mut().insert(ctx);
    req.extensions_mut().insert(principal.clone());
    req
}

async fn send<S>(svc: &S, req: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone,
{
    svc.clone().oneshot(req).await.unwrap()
}

fn health(r: &Response) -> &str {
    r.headers()
        .get("x-health")
        .map_or("refused", |v| v.to_str().unwrap())
}

#[tokio::test]
async fn the_store_stays_bounded_under_many_sessions() {
    let env = Env::new();
    let config = FingerprintConfig {
        max_sessions: 500,
        ..FingerprintConfig::default()
    };
    let store = env.store(&config);
    let svc = env.layer_on(&config, &store).layer(handler());
    for i in 0..20_000u32 {
        let principal = env.principal(&format!("flood-{i}"));
        let r = send(&svc, request(&env, &principal, "198.51.100.7")).await;
        assert_eq!(health(&r), "healthy");
    }
    store.purge_expired();
    assert!(store.entry_count() <= 500, "{} records", store.entry_count());
    assert!(store.entry_count() > 0);
}

#[tokio::test]
async fn records_expire_with_their_ttl() {
    let env = Env::new();
    let config = FingerprintConfig {
        session_ttl: Duration::from_secs(1),
        concurrency_window: Duration::from_secs(1),
        alternation_window: Duration::from_secs(1),
        ..FingerprintConfig::default()
    };
    let store = env.store(&config);
    let layer = env.layer_on(&config, &store);
    let svc = layer.layer(handler());
    let principal = env.principal("short-lived");
    send(&svc, request(&env, &principal, "198.51.100.7")).await;
    let credential = principal.credential_key();
    let record = store.record(&credential).expect("recorded");
    assert_eq!(record.requests, 1);
    assert_eq!(
        record.first_seen.as_nanos() % 60_000_000_000,
        0,
        "minute resolution"
    );
    // Expiry follows the layer's clock, not the wall clock.
    env.clock.advance(Duration::from_millis(999));
    assert_eq!(store.entries().len(), 1);
    env.clock.advance(Duration::from_millis(1));
    assert!(store.record(&credential).is_none());
    assert!(store.entries().is_empty());
    store.purge_expired();
    assert_eq!(store.entry_count(), 0);
    // The inventory states that retention.
    let declared = layer.inventory();
    let record_spec = declared.iter().find(|f| f.name == "tollgate:session").unwrap();
    assert_eq!(record_spec.retention, Retention::Ttl { seconds: 1 });
}

#[tokio::test]
async fn store_keys_are_keyed_digests_of_the_credential() {
    let env = Env::new();
    let store = env.store(&FingerprintConfig::default());
    let svc = env
        .layer_on(&FingerprintConfig::default(), &store)
        .layer(handler());
    let principal = env.principal("jti-key");
    send(&svc, request(&env, &principal, "198.51.100.7")).await;
    let entries = store.entries();
    assert_eq!(entries.len(), 1);
    let key: &StoreKey = &entries[0].0;
    assert_eq!(*key, session_key(&principal.credential_key()));
    let text = key.as_str().strip_prefix("tollgate:session:").unwrap();
    assert_eq!(text.len(), 32);
    assert!(text.bytes().all(|b| b.is_ascii_hexdigit()));
}

/// A store that is not the in-process one, so the layer takes its get-then-insert
/// path (the `SessionStore` every `StateStore<SessionRecord>` is); it can be made to fail.
#[derive(Clone)]
struct Remote {
    inner: MemoryStore<SessionRecord>,
    down: Arc<AtomicBool>,
}

impl Remote {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("test store down".into()))
        } else {
            Ok(())
        }
    }
}

impl StateStore<SessionRecord> for Remote {
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(async move {
            self.check()?;
            // Through serde, as a remote store would.
            let json = StateStore::get(&self.inner, key)
                .await?
                .map(|r| serde_json::to_string(&r).unwrap());
            Ok(json.map(|j| serde_json::from_str(&j).unwrap()))
        })
    }

    fn insert<'a>(
        &'a self,
        key: &'a StoreKey,
        value: SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            StateStore::insert(&self.inner, key, value, ttl).await
        })
    }

    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.check()?;
            StateStore::remove(&self.inner, key).await
        })
    }
}

#[tokio::test]
async fn a_remote_store_gives_the_same_verdicts() {
    let env = Env::new();
    let remote = Remote {
        inner: MemoryStore::new(1_000),
        down: Arc::new(AtomicBool::new(false)),
    };
    let layer = env
        .builder(&FingerprintConfig {
            policy: SessionPolicy::Reauthenticate,
            ..FingerprintConfig::default()
        })
        .store(Arc::new(remote.clone()))
        .build()
        .unwrap();
    let svc = layer.layer(handler());
    let principal = env.principal("jti-remote");
    let a = "198.51.100.7";
    let b = "203.0.113.9";
    let mut seen = Vec::new();
    for ip in [a, a, a, b, a, b, a] {
        let r = send(&svc, request(&env, &principal, ip)).await;
        seen.push((r.status().as_u16(), health(&r).to_owned()));
    }
    let want: Vec<(u16, String)> = [
        (200, "healthy"),
        (200, "healthy"),
        (200, "healthy"),
        (200, "suspicious"),
        (200, "suspicious"),
        (200, "suspicious"),
        (401, "refused"),
    ]
    .into_iter()
    .map(|(s, h)| (s, h.to_owned()))
    .collect();
    assert_eq!(seen, want);
    let record = StateStore::get(&remote.inner, &session_key(&principal.credential_key()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.requests, 7);
    assert_eq!(record.health, SessionHealth::Unhealthy);
}

#[tokio::test]
async fn an_unreachable_store_fails_open_or_closed_as_configured() {
    let env = Env::new();
    let remote = Remote {
        inner: MemoryStore::new(1_000),
        down: Arc::new(AtomicBool::new(true)),
    };
    let principal = env.principal("jti-down");
    let open = env
        .builder(&FingerprintConfig::default())
        .store(Arc::new(remote.clone()))
        .build()
        .unwrap();
    let r = send(&open.layer(handler()), request(&env, &principal, "198.51.100.7")).await;
    assert_eq!((r.status().as_u16(), health(&r)), (200, "none"));

    let closed = env
        .builder(&FingerprintConfig {
            on_store_failure: FailurePolicy::Closed,
            ..FingerprintConfig::default()
        })
        .store(Arc::new(remote.clone()))
        .build()
        .unwrap();
    let r = send(
        &closed.layer(handler()),
        request(&env, &principal, "198.51.100.7"),
    )
    .await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[test]
fn the_inventory_declares_every_span_field_and_store_field() {
    let env = Env::new();
    let layer = env.layer(&FingerprintConfig {
        policy: SessionPolicy::Freeze,
        ..FingerprintConfig::default()
    });
    let declared = layer.inventory();
    for name in [
        fields::SESSION,
        fields::SESSION_HEALTH,
        fields::SESSION_REASONS,
        fields::SESSION_ACTION,
        "tollgate:session",
        "session.networks",
        "session.fingerprints",
        "tollgate:freeze-credential",
        "fingerprint.user_agent_cache",
    ] {
        assert!(declared.iter().any(|f| f.name == name), "{name} not declared");
    }
    for f in &declared {
        if f.sinks.contains(&tollgate_core::inventory::Sink::Store) {
            assert!(
                matches!(f.retention, Retention::Ttl { .. }),
                "{} has no TTL",
                f.name
            );
        }
    }
    let no_freeze = env.layer(&FingerprintConfig::default()).inventory();
    assert!(!no_freeze.iter().any(|f| f.name == "tollgate:freeze-credential"));
    // The in-process store declares its caches; a shared store keeps records only.
    assert!(declared.iter().any(|f| f.name == "session.cache"));
    let shared = env
        .builder(&FingerprintConfig::default())
        .store(Arc::new(MemoryStore::<SessionRecord>::new(10)))
        .build()
        .unwrap()
        .inventory();
    assert!(!shared.iter().any(|f| f.name == "session.cache"));
    assert!(shared.iter().any(|f| f.name == "tollgate:session"));
}

#[test]
fn a_bad_config_fails_at_build_naming_the_setting() {
    let env = Env::new();
    let err = FingerprintLayer::from_config(
        &FingerprintConfig {
            alternation_switches: 0,
            ..FingerprintConfig::default()
        },
        env.p.clone(),
    )
    .unwrap_err();
    assert_eq!(err.setting, "fingerprint.alternation_switches");
    assert!(
        err.to_string().starts_with("fingerprint.alternation_switches: "),
        "{err}"
    );
}

fn session_header(r: &Response) -> String {
    r.headers()["x-session"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn pseudonyms_rotate_with_the_epoch_and_verdicts_do_not() {
    let env = Env::new();
    // Sessions outlive the pseudonym epoch (a day) here.
    let config = FingerprintConfig {
        session_ttl: Duration::from_secs(7 * 86_400),
        ..FingerprintConfig::default()
    };
    let store = env.store(&config);
    let svc = env.layer_on(&config, &store).layer(handler());
    let principal = env.principal("jti-epoch");
    let first = send(&svc, request(&env, &principal, "198.51.100.7")).await;
    let again = send(&svc, request(&env, &principal, "198.51.100.7")).await;
    assert_eq!(
        session_header(&first),
        session_header(&again),
        "cached pseudonyms are the same"
    );
    // The same pseudonyms as computed afresh by a layer with an empty store.
    let fresh = env.layer(&config).layer(handler());
    let other = send(&fresh, request(&env, &principal, "198.51.100.7")).await;
    assert_eq!(session_header(&first), session_header(&other));

    env.clock.advance(Duration::from_secs(86_400));
    let next_day = send(&svc, request(&env, &principal, "198.51.100.7")).await;
    assert_eq!(
        health(&next_day),
        "healthy",
        "stable digests: same fingerprint, same network"
    );
    let (before, after) = (session_header(&first), session_header(&next_day));
    let (before, after): (Vec<&str>, Vec<&str>) = (before.split(' ').collect(), after.split(' ').collect());
    assert_ne!(before[0], after[0], "session pseudonym rotates");
    assert_ne!(before[1], after[1], "fingerprint pseudonym rotates");
    let record = store.record(&principal.credential_key()).unwrap();
    assert_eq!(record.requests, 3);
    assert_eq!(record.fingerprints[1], 0, "one fingerprint across the epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_of_one_session_are_all_counted() {
    let env = Env::new();
    let store = env.store(&FingerprintConfig::default());
    let svc = env
        .layer_on(&FingerprintConfig::default(), &store)
        .layer(handler());
    let principal = env.principal("jti-busy");
    let env = Arc::new(env);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (svc, env, principal) = (svc.clone(), env.clone(), principal.clone());
            tokio::spawn(async move {
                let ip = if t % 2 == 0 {
                    "198.51.100.7"
                } else {
                    "198.51.100.8"
                };
                for _ in 0..250 {
                    send(&svc, request(&env, &principal, ip)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let record = store.record(&principal.credential_key()).unwrap();
    assert_eq!(record.requests, 2_000);
    assert_eq!(record.health, SessionHealth::Healthy);
}

#[tokio::test]
async fn the_in_process_caches_give_what_a_fresh_computation_gives() {
    // The in-process store reuses keyed hashes while a session's input stays the
    // same; the remote path computes them all afresh. Both must agree on every
    // pseudonym and verdict, as networks, user agents and epochs change.
    let env = Env::new();
    // Sessions outlive the pseudonym epochs the steps cross.
    let config = FingerprintConfig {
        session_ttl: Duration::from_secs(7 * 86_400),
        ..FingerprintConfig::default()
    };
    let local = env.layer(&config).layer(handler());
    let remote = Remote {
        inner: MemoryStore::new(1_000),
        down: Arc::new(AtomicBool::new(false)),
    };
    let fresh = env
        .builder(&config)
        .store(Arc::new(remote))
        .build()
        .unwrap()
        .layer(handler());
    let principal = env.principal("jti-cache");
    let steps = [
        ("198.51.100.7", support::FIREFOX, 0),
        ("198.51.100.7", support::FIREFOX, 0),
        ("198.51.100.7", support::CHROME, 0),
        ("203.0.113.9", support::CHROME, 0),
        ("198.51.100.7", support::CHROME, 0),
        ("198.51.100.7", support::CHROME, 86_400),
        ("198.51.100.7", support::FIREFOX, 0),
        ("203.0.113.9", support::FIREFOX, 86_400),
        ("203.0.113.9", support::FIREFOX, 0),
    ];
    for (i, (ip, ua, advance)) in steps.into_iter().enumerate() {
        env.clock.advance(Duration::from_secs(advance));
        let with_ua = |mut req: Request<Body>| {
            req.headers_mut().insert("user-agent", ua.parse().unwrap());
            req
        };
        let a = send(&local, with_ua(request(&env, &principal, ip))).await;
        let b = send(&fresh, with_ua(request(&env, &principal, ip))).await;
        assert_eq!(session_header(&a), session_header(&b), "step {i}");
        assert_eq!(health(&a), health(&b), "step {i}");
    }
}
