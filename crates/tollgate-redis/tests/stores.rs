//! The Redis stores against a real Redis (`REDIS_URL`): sessions, freeze list across
//! two instances, rate limits shared by two backends.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestRedis;
use serde::{Deserialize, Serialize};
use tollgate_core::clock::system_clock;
use tollgate_core::{
    CredentialKind, Domain, Freeze, FreezeList, FreezeTarget, Principal, StateStore, StoreKey, SystemClock,
    Timestamp, clock::Clock,
};
use tollgate_ratelimit::{Limit, RateLimitKey, RateLimitStore};
use tollgate_redis::{FreezeConfig, RedisFreezeList, RedisRateLimitStore, RedisStore};
use tollgate_test_support::pseudonymizer;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    fingerprints: Vec<String>,
    seen: u64,
}

#[tokio::test]
async fn session_store_round_trip_with_ttl() {
    let Some(t) = TestRedis::new() else { return };
    let backend = t.backend();
    let store: RedisStore<Record> = RedisStore::new(&backend);
    let p = pseudonymizer();
    let key = StoreKey::new("session", &p.digest(Domain::SESSION, b"jti-1"));
    assert_eq!(store.get(&key).await.unwrap(), None);
    let rec = Record {
        fingerprints: vec!["abc".into()],
        seen: 3,
    };
    store
        .insert(&key, rec.clone(), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(store.get(&key).await.unwrap(), Some(rec.clone()));

    // The TTL is set in Redis.
    let redis_key = backend.key(&key);
    assert!(redis_key.starts_with(&format!("tollgate:{}:session:", t.namespace)));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&redis_key)
        .query(&mut t.connection())
        .unwrap();
    assert!((1..=300).contains(&pttl), "{pttl}");

    store.remove(&key).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap(), None);

    store.insert(&key, rec, Duration::from_millis(50)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.get(&key).await.unwrap(), None, "expired in Redis");

    // A value of another shape is reported as corrupt, not as a miss or a panic.
    let other: RedisStore<u64> = RedisStore::new(&backend);
    other.insert(&key, 7, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(
        store.get(&key).await,
        Err(tollgate_core::StoreError::Corrupt(_))
    ));
    assert_eq!(backend.stats().outages, 0);
}

fn freeze_of(target: FreezeTarget, until: Option<Timestamp>) -> Freeze {
    Freeze {
        target,
        reason: "test".into(),
        frozen_at: SystemClock.now(),
        until,
    }
}

/// Two replicas, each with its own connections: a freeze on A holds on B within
/// 100 ms, and so does the unfreeze. Measured over 20 rounds.
#[tokio::test]
async fn freeze_on_one_replica_holds_on_the_other_within_100ms() {
    let Some(t) = TestRedis::new() else { return };
    // Heartbeats every 20 ms: the subscription must stay up through them.
    let config = FreezeConfig {
        heartbeat: Duration::from_millis(20),
        ..FreezeConfig::default()
    };
    let a = RedisFreezeList::with_config(&t.backend(), &config, system_clock());
    let b = RedisFreezeList::with_config(&t.backend(), &config, system_clock());
    assert!(a.wait_synced(Duration::from_secs(5)).await);
    assert!(b.wait_synced(Duration::from_secs(5)).await);

    let p = pseudonymizer();
    let mut lags = Vec::new();
    for round in 0..20 {
        let id = format!("key-{round}");
        let principal = Principal::new(&p, CredentialKind::ApiKey, "owner", id.as_bytes());
        assert!(b.check(&principal).await.unwrap().is_none());
        let started = Instant::now();
        a.freeze(freeze_of(FreezeTarget::credential(&p, &id), None))
            .await
            .unwrap();
        // Held on A at once.
        assert!(a.check(&principal).await.unwrap().is_some());
        loop {
            if b.check(&principal).await.unwrap().is_some() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "freeze not on B after 100 ms"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lags.push(started.elapsed());
        // The answer came from B's local copy, not a read of Redis.
        assert!(b.is_synced());

        let started = Instant::now();
        assert!(b.unfreeze(&FreezeTarget::credential(&p, &id)).await.unwrap());
        while a.check(&principal).await.unwrap().is_some() {
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "unfreeze not on A after 100 ms"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    lags.sort();
    println!(
        "freeze propagation A -> B over {} rounds: median {:?}, max {:?}",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    for list in [&a, &b] {
        let stats = list.backend().stats();
        assert_eq!(stats.freeze_read_through, 0, "{stats:?}");
        assert_eq!(
            (stats.freeze_syncs, stats.freeze_sync_losses),
            (1, 0),
            "{stats:?}"
        );
    }

    // A subject freeze covers every credential of the subject, on both.
    let other = Principal::new(&p, CredentialKind::Jwt, "sub-9", b"jti-x");
    a.freeze(freeze_of(FreezeTarget::subject(&p, "sub-9"), None))
        .await
        .unwrap();
    let started = Instant::now();
    while b.check(&other).await.unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_millis(100));
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(b.list().await.unwrap().len(), 1);
    assert!(b.check_immediate(&other).unwrap().unwrap().is_some());
}

#[tokio::test]
async fn freeze_list_bounds_expiry_and_late_joiners() {
    let Some(t) = TestRedis::new() else { return };
    let config = FreezeConfig {
        max_entries: 2,
        ..FreezeConfig::default()
    };
    let a = RedisFreezeList::with_config(&t.backend(), &config, system_clock());
    assert!(a.wait_synced(Duration::from_secs(5)).await);
    let p = pseudonymizer();
    let now = SystemClock.now();
    let soon = Some(now.saturating_add(Duration::from_millis(300)));
    a.freeze(freeze_of(FreezeTarget::credential(&p, "k1"), None))
        .await
        .unwrap();
    a.freeze(freeze_of(FreezeTarget::credential(&p, "k2"), soon))
        .await
        .unwrap();
    let third = freeze_of(FreezeTarget::credential(&p, "k3"), None);
    let err = a.freeze(third.clone()).await.unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");

    // A replica that starts later loads the list.
    let late = RedisFreezeList::new(&t.backend());
    assert!(late.wait_synced(Duration::from_secs(5)).await);
    let k2 = Principal::new(&p, CredentialKind::ApiKey, "o", b"k2");
    assert!(late.check(&k2).await.unwrap().is_some());

    // The timed freeze lifts by itself, and its place is freed for a new one.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(late.check(&k2).await.unwrap().is_none());
    a.freeze(third).await.unwrap();
    assert_eq!(a.list().await.unwrap().len(), 2);

    // Unfreezing what is not frozen says so.
    assert!(!a.unfreeze(&FreezeTarget::credential(&p, "nope")).await.unwrap());
}

/// Two backends (two replicas) spending from one key concurrently get exactly the
/// budget between them.
#[tokio::test]
async fn two_replicas_share_one_budget() {
    let Some(t) = TestRedis::new() else { return };
    let a = RedisRateLimitStore::new(&t.backend());
    let b = RedisRateLimitStore::new(&t.backend());
    let p = pseudonymizer();
    let key = RateLimitKey::new(p.digest(Domain::SUBJECT, b"alice"));
    // 50 per hour, stacked with 1000 per day.
    let limits = [
        Limit::new(50, Duration::from_secs(3_600), 50).unwrap(),
        Limit::new(1_000, Duration::from_secs(86_400), 1_000).unwrap(),
    ];
    let limits = Arc::new(limits);
    let mut tasks = Vec::new();
    for i in 0..160 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (key, limits) = (key, limits.clone());
        tasks.push(tokio::spawn(async move {
            store
                .check_and_spend(&key, &limits[..], 1, SystemClock.now())
                .await
                .unwrap()
                .allowed()
        }));
    }
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap());
    }
    assert_eq!(allowed, 50);

    // The denials spent nothing in the daily limit: 1000 - 50 left there.
    let d = a
        .check_and_spend(&key, &limits[..], 0, SystemClock.now())
        .await
        .unwrap();
    assert_eq!(d.cells()[1].remaining, 950);
    assert_eq!(d.cells()[0].remaining, 0);
    // The decision time is Redis's, within a second of ours.
    let skew = d.now().abs_diff(SystemClock.now().as_nanos());
    assert!(skew < 1_000_000_000, "{skew}");

    // The key expires when the state would be full again: about the daily window's
    // share of 50 units (50 * 86.4 s), not later.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(a.backend().key_of(&key.store_key()))
        .query(&mut t.connection())
        .unwrap();
    let full_again: i64 = 50 * 86_400_000 / 1_000;
    assert!(pttl > full_again - 5_000 && pttl <= full_again + 1, "{pttl}");
    assert_eq!(a.backend().stats().fail_open, 0);
}

/// Decisions made while others are in flight go to Redis together (fewer calls than
/// decisions), and a batch decides its keys one after the other: every key, however
/// its decisions were grouped, spends exactly its budget and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_are_batched_and_each_key_spends_its_budget() {
    let Some(t) = TestRedis::new() else { return };
    let store = RedisRateLimitStore::new(&t.backend());
    let p = pseudonymizer();
    let keys: Vec<RateLimitKey> = (0..5u8)
        .map(|i| RateLimitKey::new(p.digest(Domain::SUBJECT, &[b'k', i])))
        .collect();
    let limits = Arc::new([Limit::new(7, Duration::from_secs(3_600), 7).unwrap()]);
    let decisions = 400;
    let tasks: Vec<_> = (0..decisions)
        .map(|i| {
            let (store, key, limits) = (store.clone(), keys[i % keys.len()], limits.clone());
            tokio::spawn(async move {
                let d = store
                    .check_and_spend(&key, &limits[..], 1, SystemClock.now())
                    .await
                    .unwrap();
                (i % 5, d.allowed())
            })
        })
        .collect();
    let mut allowed = [0; 5];
    for task in tasks {
        let (k, ok) = task.await.unwrap();
        allowed[k] += usize::from(ok);
    }
    assert_eq!(allowed, [7; 5]);
    let stats = store.backend().stats();
    assert_eq!(stats.fail_open, 0);
    assert!(
        stats.calls < decisions as u64 / 2,
        "{} calls for {decisions} decisions",
        stats.calls
    );
}

/// Requests dropped while their decisions wait or are out (clients hanging up) leave
/// the batching whole: the decisions after them are still made in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_dropped_in_flight_leave_the_store_deciding() {
    let Some(t) = TestRedis::new() else { return };
    let store = RedisRateLimitStore::new(&t.backend());
    let p = pseudonymizer();
    let limits = Arc::new([Limit::new(1_000, Duration::from_secs(60), 1_000).unwrap()]);
    for round in 0..20u8 {
        let tasks: Vec<_> = (0..64u8)
            .map(|i| {
                let (store, limits) = (store.clone(), limits.clone());
                let key = RateLimitKey::new(p.digest(Domain::SUBJECT, &[round, i]));
                tokio::spawn(async move {
                    let decide = store.check_and_spend(&key, &limits[..], 1, SystemClock.now());
                    // Every other request hangs up before its decision is made.
                    let _ = tokio::time::timeout(Duration::from_micros(u64::from(i % 2) * 50), decide).await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
    let key = RateLimitKey::new(p.digest(Domain::SUBJECT, b"after"));
    for _ in 0..3 {
        let decided = tokio::time::timeout(
            Duration::from_secs(5),
            store.check_and_spend(&key, &limits[..], 1, SystemClock.now()),
        )
        .await
        .expect("decided, not left waiting");
        assert!(decided.unwrap().allowed());
    }
    assert_eq!(store.backend().stats().fail_open, 0);
}

/// Redis `TIME` is used by default: a caller clock a day off changes nothing.
#[tokio::test]
async fn redis_time_overrides_a_skewed_caller_clock() {
    let Some(t) = TestRedis::new() else { return };
    let store = RedisRateLimitStore::new(&t.backend());
    let key = RateLimitKey::new(pseudonymizer().digest(Domain::SUBJECT, b"bob"));
    let limits = [Limit::new(2, Duration::from_secs(60), 2).unwrap()];
    let real = SystemClock.now();
    let skewed_back = Timestamp::from_nanos(real.as_nanos() - 86_400_000_000_000);
    let skewed_ahead = real.saturating_add(Duration::from_secs(86_400));
    assert!(
        store
            .check_and_spend(&key, &limits, 1, skewed_back)
            .await
            .unwrap()
            .allowed()
    );
    assert!(
        store
            .check_and_spend(&key, &limits, 1, skewed_ahead)
            .await
            .unwrap()
            .allowed()
    );
    let d = store
        .check_and_spend(&key, &limits, 1, skewed_back)
        .await
        .unwrap();
    assert!(
        !d.allowed(),
        "a replica whose clock is a day ahead must not refill the budget"
    );
    assert!(d.now().abs_diff(real.as_nanos()) < 5_000_000_000);
}

/// The key layout: every key under the namespace is `tollgate:{ns}:{store}:{32 hex}`
/// or the freeze hash, and no raw identifier appears in any key, field or value.
#[tokio::test]
async fn keys_are_namespaced_digests_and_hold_no_raw_identifier() {
    let Some(t) = TestRedis::new() else { return };
    let backend = t.backend();
    let p = pseudonymizer();
    let raw = [
        "alice@example.com",
        "key-secret-123",
        "203.0.113.77",
        "jti-zzz-999",
    ];

    let sessions: RedisStore<Record> = RedisStore::new(&backend);
    let limits = [Limit::new(5, Duration::from_secs(60), 5).unwrap()];
    let rl = RedisRateLimitStore::new(&backend);
    let freeze = RedisFreezeList::new(&backend);
    assert!(freeze.wait_synced(Duration::from_secs(5)).await);
    for id in raw {
        let session = StoreKey::new("session", &p.digest(Domain::SESSION, id.as_bytes()));
        let record = Record {
            fingerprints: vec![p.pseudonym(Domain::FINGERPRINT, id.as_bytes()).to_string()],
            seen: 1,
        };
        sessions
            .insert(&session, record, Duration::from_secs(60))
            .await
            .unwrap();
        let key = RateLimitKey::new(p.digest(Domain::SUBJECT, id.as_bytes()));
        rl.check_and_spend(&key, &limits, 1, SystemClock.now())
            .await
            .unwrap();
        let scoped = RateLimitKey::scoped("login", p.digest(Domain::NETWORK, id.as_bytes())).unwrap();
        rl.check_and_spend(&scoped, &limits, 1, SystemClock.now())
            .await
            .unwrap();
        freeze
            .freeze(freeze_of(FreezeTarget::credential(&p, id), None))
            .await
            .unwrap();
        freeze
            .freeze(freeze_of(FreezeTarget::subject(&p, id), None))
            .await
            .unwrap();
    }

    let keys = t.keys();
    assert_eq!(keys.len(), 3 * raw.len() + 1, "{keys:?}");
    let prefix = format!("tollgate:{}:", t.namespace);
    let mut conn = t.connection();
    for key in &keys {
        let rest = key.strip_prefix(&prefix).expect("namespaced");
        if rest == "freeze" {
            let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap();
            assert_eq!(all.len(), 2 * raw.len());
            for (field, value) in all {
                let (kind, hex) = field.split_once(':').unwrap();
                assert!(kind == "credential" || kind == "subject");
                assert!(
                    hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{field}"
                );
                for id in raw {
                    assert!(!value.contains(id), "{value}");
                }
            }
            continue;
        }
        let (store, hex) = rest.rsplit_once(':').unwrap();
        assert!(["session", "rl", "rl:login"].contains(&store), "{key}");
        assert!(
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{key}"
        );
        let value: String = redis::cmd("GET").arg(key).query(&mut conn).unwrap();
        for id in raw {
            assert!(!key.contains(id) && !value.contains(id), "{key} = {value}");
        }
        let ttl: i64 = redis::cmd("PTTL").arg(key).query(&mut conn).unwrap();
        assert!(ttl > 0, "{key} has no TTL");
    }
}

/// The script is sent by digest (`EVALSHA`); after `SCRIPT FLUSH` (as after a Redis
/// restart) the `NOSCRIPT` answer makes the client load it again, and the decision is
/// still made in Redis, not by the fallback.
#[tokio::test]
async fn script_is_reloaded_after_noscript() {
    let Some(t) = TestRedis::new() else { return };
    let store = RedisRateLimitStore::new(&t.backend());
    let key = RateLimitKey::new(pseudonymizer().digest(Domain::SUBJECT, b"carol"));
    let limits = [Limit::new(3, Duration::from_secs(60), 3).unwrap()];
    assert!(
        store
            .check_and_spend(&key, &limits, 1, SystemClock.now())
            .await
            .unwrap()
            .allowed()
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut t.connection())
        .unwrap();
    let d = store
        .check_and_spend(&key, &limits, 1, SystemClock.now())
        .await
        .unwrap();
    assert_eq!(d.cells()[0].remaining, 1, "second unit spent in Redis");
    let stats = store.backend().stats();
    assert_eq!((stats.fail_open, stats.errors), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn dpop_replay_cache_is_shared_by_two_backends() {
    use tollgate_auth::ReplayCache;
    use tollgate_redis::RedisReplayCache;

    let Some(t) = TestRedis::new() else { return };
    let a = RedisReplayCache::new(&t.backend());
    let b = RedisReplayCache::new(&t.backend());
    let p = pseudonymizer();
    let key = p.digest(Domain::new("dpop-jti"), b"thumbprint\0jti-1");
    assert_eq!(a.record(key, Duration::from_millis(300)).await, Ok(true));
    assert_eq!(
        b.record(key, Duration::from_millis(300)).await,
        Ok(false),
        "a replay on the other replica"
    );
    assert_eq!(a.record(key, Duration::from_millis(300)).await, Ok(false));
    let keys = t.keys();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0].starts_with(&format!("tollgate:{}:dpop-jti:", t.namespace)),
        "{keys:?}"
    );
    assert!(!keys[0].contains("jti-1"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        b.record(key, Duration::from_millis(300)).await,
        Ok(true),
        "expired in Redis"
    );
}

/// Two replicas updating one value at once, 32 updates in flight in each: every
/// update that returns `Ok` is kept (compare-and-set with retries; a batch whose swap
/// loses starts over), none is lost to a later writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_from_two_replicas_are_not_lost() {
    let Some(t) = TestRedis::new() else { return };
    let stores: [RedisStore<u64>; 2] = [RedisStore::new(&t.backend()), RedisStore::new(&t.backend())];
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"shared"));
    let mut workers = Vec::new();
    for w in 0..64 {
        let (store, key) = (stores[w % 2].clone(), key.clone());
        workers.push(tokio::spawn(async move {
            let mut kept = 0u64;
            for _ in 0..20 {
                let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
                if store
                    .update(&key, Duration::from_secs(60), &mut add_one)
                    .await
                    .is_ok()
                {
                    kept += 1;
                }
            }
            kept
        }));
    }
    let mut kept = 0;
    for w in workers {
        kept += w.await.unwrap();
    }
    let stored = stores[0].get(&key).await.unwrap().unwrap();
    assert_eq!(stored, kept, "every acknowledged update is in the value");
    assert!(kept >= 1216, "{kept} of 1,280 updates went through");
}

/// Many requests of one session in flight in one process (one client, many
/// connections): their updates take turns in the process instead of colliding in
/// Redis, so every one goes through, where compare-and-set retries alone give up
/// after 12 collisions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_of_one_key_in_one_process_all_go_through() {
    let Some(t) = TestRedis::new() else { return };
    let store: RedisStore<u64> = RedisStore::new(&t.backend());
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"busy"));
    let updates: Vec<_> = (0..64)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
                store.update(&key, Duration::from_secs(60), &mut add_one).await
            })
        })
        .collect();
    for update in updates {
        assert!(update.await.unwrap().is_ok());
    }
    assert_eq!(store.get(&key).await.unwrap(), Some(64));
}

/// Updates of one session arriving while its write is in flight are applied to the
/// newest value in turn and written together: 64 at once cost a few swaps, not 64
/// round trips one after another, and each sees the ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_in_flight_together_are_written_together() {
    let Some(t) = TestRedis::new() else { return };
    let backend = t.backend();
    let store: RedisStore<u64> = RedisStore::new(&backend);
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"batched"));
    let ttl = Duration::from_secs(60);
    let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
    assert_eq!(store.update(&key, ttl, &mut add_one).await, Ok(1));
    let calls_before = backend.stats().calls;
    let updates: Vec<_> = (0..64)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
                store.update(&key, ttl, &mut add_one).await.unwrap()
            })
        })
        .collect();
    let mut seen = Vec::new();
    for update in updates {
        seen.push(update.await.unwrap());
    }
    let calls = backend.stats().calls - calls_before;
    seen.sort_unstable();
    assert_eq!(
        seen,
        (2..=65).collect::<Vec<u64>>(),
        "each update saw every one before it"
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(65));
    assert!(calls < 32, "64 updates took {calls} calls to Redis");
}

/// One client busy on many connections to two replicas: each replica's writes fail
/// whenever the other's came first, and the updates a failed write carried read
/// again in turn; once one has stored the value it read, the rest go on from it
/// instead of reading and colliding with the updates arriving meanwhile until their
/// attempts run out. Every update of both goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_busy_on_two_replicas_loses_no_update() {
    let Some(t) = TestRedis::new() else { return };
    let replicas: [RedisStore<u64>; 2] = [RedisStore::new(&t.backend()), RedisStore::new(&t.backend())];
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"contended"));
    let ttl = Duration::from_secs(60);
    let (connections, requests) = (32u64, 100u64);
    let tasks: Vec<_> = (0..2 * connections)
        .map(|i| {
            let (store, key) = (replicas[i as usize % 2].clone(), key.clone());
            tokio::spawn(async move {
                let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
                for _ in 0..requests {
                    store.update(&key, ttl, &mut add_one).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        replicas[0].get(&key).await.unwrap(),
        Some(2 * connections * requests)
    );
}

/// An update dropped while its swap is in flight (a request cancelled) leaves the
/// key to be read again, not waiting forever for a write nobody finishes.
#[tokio::test]
async fn an_update_dropped_in_flight_leaves_the_key_usable() {
    let Some(t) = TestRedis::new() else { return };
    let store: RedisStore<u64> = RedisStore::new(&t.backend());
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"dropped"));
    let ttl = Duration::from_secs(60);
    let mut add_one = |prev: Option<&u64>| prev.copied().unwrap_or(0) + 1;
    assert_eq!(store.update(&key, ttl, &mut add_one).await, Ok(1));
    // Polled once, so its swap is under way, then dropped (a fast reply may finish
    // it within that poll: then again).
    let mut finished = 1;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::ZERO, store.update(&key, ttl, &mut add_one)).await {
            Ok(done) => finished = done.unwrap(),
            Err(_) => break,
        }
    }
    let next = tokio::time::timeout(Duration::from_secs(5), store.update(&key, ttl, &mut add_one))
        .await
        .expect("the next update does not hang")
        .unwrap();
    assert!(
        next == finished + 1 || next == finished + 2,
        "{finished} then {next}"
    );
    assert_eq!(store.get(&key).await.unwrap(), Some(next));
}

/// An update that follows this process's own last write tries its swap unread;
/// when another replica wrote in between, the swap fails and it reads again.
#[tokio::test]
async fn an_update_after_another_replicas_write_reads_again() {
    let Some(t) = TestRedis::new() else { return };
    let a: RedisStore<Vec<u32>> = RedisStore::new(&t.backend());
    let b: RedisStore<Vec<u32>> = RedisStore::new(&t.backend());
    let key = StoreKey::new("session", &pseudonymizer().digest(Domain::SESSION, b"moved"));
    let ttl = Duration::from_secs(60);
    let push = |n: u32| {
        move |prev: Option<&Vec<u32>>| {
            let mut v = prev.cloned().unwrap_or_default();
            v.push(n);
            v
        }
    };
    assert_eq!(a.update(&key, ttl, &mut push(1)).await, Ok(vec![1]));
    assert_eq!(a.update(&key, ttl, &mut push(2)).await, Ok(vec![1, 2]));
    assert_eq!(b.update(&key, ttl, &mut push(3)).await, Ok(vec![1, 2, 3]));
    b.insert(&key, vec![9], ttl).await.unwrap();
    assert_eq!(a.update(&key, ttl, &mut push(4)).await, Ok(vec![9, 4]));
    a.remove(&key).await.unwrap();
    assert_eq!(a.update(&key, ttl, &mut push(5)).await, Ok(vec![5]));
    assert_eq!(b.get(&key).await.unwrap(), Some(vec![5]));
}

mod penalties {
    use super::*;
    use tollgate_anomaly::{Action, AnomalyKind, AnomalyTags, Penalty, PenaltyBoard, PenaltyKey};
    use tollgate_redis::RedisPenaltyBoard;

    fn penalty(action: Action, from: Timestamp, secs: u64, kind: AnomalyKind) -> Penalty {
        let mut tags = AnomalyTags::default();
        tags.insert(kind, 60);
        Penalty {
            action,
            until: from.saturating_add(Duration::from_secs(secs)),
            tags,
        }
    }

    async fn until_seen(
        board: &RedisPenaltyBoard,
        key: PenaltyKey,
        want: impl Fn(&Penalty) -> bool,
    ) -> Penalty {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(p) = board.get(key, SystemClock.now()).filter(|p| want(p)) {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "never seen: {:?}",
                board.get(key, SystemClock.now())
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Two replicas impose on one caller: both end with the stronger action, the later
    /// end and every tag, as `Penalty::merge` says; a replica started later loads it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn boards_merge_across_replicas_and_late_joiners_load() {
        let Some(t) = TestRedis::new() else { return };
        let (a, b) = (
            RedisPenaltyBoard::new(&t.backend(), 100, Duration::from_secs(600)),
            RedisPenaltyBoard::new(&t.backend(), 100, Duration::from_secs(600)),
        );
        assert!(a.wait_synced(Duration::from_secs(2)).await && b.wait_synced(Duration::from_secs(2)).await);
        let key = PenaltyKey::from_u64(0x1234_5678_9abc_def0);
        let now = SystemClock.now();
        a.impose(key, penalty(Action::Throttle, now, 120, AnomalyKind::Volume), now);
        until_seen(&b, key, |p| p.action == Action::Throttle).await;
        b.impose(
            key,
            penalty(Action::Block, now, 30, AnomalyKind::Enumeration),
            now,
        );
        let on_a = until_seen(&a, key, |p| p.action == Action::Block).await;
        assert_eq!(
            on_a.until.as_nanos().div_ceil(1_000_000),
            now.saturating_add(Duration::from_secs(120))
                .as_nanos()
                .div_ceil(1_000_000)
        );
        assert_eq!(on_a.tags.to_string(), "volume:60,enumeration:60");
        assert_eq!(b.get(key, SystemClock.now()), Some(on_a));

        let c = RedisPenaltyBoard::new(&t.backend(), 100, Duration::from_secs(600));
        assert!(c.wait_synced(Duration::from_secs(2)).await);
        assert_eq!(c.get(key, SystemClock.now()), Some(on_a));
        assert!(c.get(PenaltyKey::from_u64(1), SystemClock.now()).is_none());

        // The hash lives no longer than its last penalty, and holds no raw identifier.
        let hash = format!("tollgate:{}:penalties", t.namespace);
        let pttl: i64 = redis::cmd("PTTL").arg(&hash).query(&mut t.connection()).unwrap();
        assert!((100_000..=120_000).contains(&pttl), "{pttl}");
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&hash)
            .query(&mut t.connection())
            .unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "123456789abcdef0");
        assert!(all[0].1.starts_with("block "), "{}", all[0].1);
    }

    /// A full hash refuses new callers (they stay penalized on the replica that saw
    /// them) once expired penalties are gone; it never grows past `max_entries`, and
    /// the local copy never past twice that, whatever the flood.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hash_is_bounded() {
        let Some(t) = TestRedis::new() else { return };
        let backend = t.backend();
        let board = RedisPenaltyBoard::new(&backend, 3, Duration::from_secs(600));
        assert!(board.wait_synced(Duration::from_secs(2)).await);
        let now = SystemClock.now();
        for i in 0..5 {
            board.impose(
                PenaltyKey::from_u64(i),
                penalty(Action::Block, now, 60, AnomalyKind::Volume),
                now,
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hash = format!("tollgate:{}:penalties", t.namespace);
        let held: usize = redis::cmd("HLEN").arg(&hash).query(&mut t.connection()).unwrap();
        assert_eq!(held, 3);
        for i in 0..5 {
            assert!(
                board.get(PenaltyKey::from_u64(i), SystemClock.now()).is_some(),
                "penalty {i} holds here, shared or not"
            );
        }
        assert!(backend.stats().fail_open >= 2, "the refusals are counted");
        for i in 5..10_000 {
            board.impose(
                PenaltyKey::from_u64(i),
                penalty(Action::Block, now, 60, AnomalyKind::Volume),
                now,
            );
        }
        let (held, capacity) = board.size();
        assert!(held <= capacity && capacity == 6, "{held} of {capacity}");
    }
}
