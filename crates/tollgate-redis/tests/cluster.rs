//! The Redis stores on a real Redis Cluster (3 primaries, 3 replicas) that each test
//! starts on loopback: exact shared budgets, keys on every shard, the freeze list
//! across replicas, no raw identifier on any shard, and a primary killed mid-load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tollgate_auth::ReplayCache;
use tollgate_core::clock::system_clock;
use tollgate_core::{
    CredentialKind, Domain, Freeze, FreezeList, FreezeTarget, Principal, StateStore, StoreKey, SystemClock,
    clock::Clock,
};
use tollgate_ratelimit::{Limit, RateLimitKey, RateLimitStore};
use tollgate_redis::{
    FreezeConfig, RateLimitFallback, RedisBackend, RedisFreezeList, RedisRateLimitStore, RedisReplayCache,
    RedisStore, StoreConfig,
};
use tollgate_test_support::canary;
use tollgate_test_support::redis_cluster::RedisCluster;
use tollgate_test_support::{pseudonymizer, random_namespace};

fn config(cluster: &RedisCluster, namespace: &str) -> StoreConfig {
    StoreConfig {
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(500),
        retry_interval: Duration::from_millis(100),
        freeze: FreezeConfig {
            heartbeat: Duration::from_millis(100),
            ..FreezeConfig::default()
        },
        ..StoreConfig::redis_cluster(cluster.urls()).with_namespace(namespace)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    fingerprints: Vec<String>,
}

fn freeze_of(target: FreezeTarget) -> Freeze {
    Freeze {
        target,
        reason: "cluster test".into(),
        frozen_at: SystemClock.now(),
        until: None,
    }
}

/// Every key and value under `pattern` on every primary, as text.
fn stored_text(cluster: &RedisCluster, keys: &BTreeMap<u16, Vec<String>>) -> String {
    let mut out = String::new();
    for (port, keys) in keys {
        let mut conn = cluster.connection(*port);
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(key).query(&mut conn).unwrap();
            let values: Vec<String> = match kind.as_str() {
                "string" => vec![redis::cmd("GET").arg(key).query(&mut conn).unwrap()],
                "hash" => redis::cmd("HGETALL").arg(key).query(&mut conn).unwrap(),
                other => panic!("unexpected type {other} at {key}"),
            };
            out.push_str(key);
            out.push('\n');
            out.push_str(&values.join("\n"));
            out.push('\n');
        }
    }
    out
}

/// Two backends (two replicas of an API) on one cluster: each client's budget is
/// spent exactly once across both, the keys spread over all three shards, the freeze
/// list and the other stores work through the cluster, and no raw identifier appears
/// in any key, value or pub/sub message on any shard.
/// One cluster at a time: two 6-node clusters and their loads on a 2-core machine
/// push calls past the backend's timeout, which the budgets then rightly fail open on.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_exact_budgets_over_every_shard() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let ns = random_namespace();
    // Nothing fails here: a longer call timeout keeps a stalled moment of six servers on
    // two cores from opening a breaker, which is the other test's subject.
    let config = StoreConfig {
        timeout: Duration::from_secs(1),
        ..config(&cluster, &ns)
    };
    let (a, b) = (
        RedisBackend::new(&config).unwrap(),
        RedisBackend::new(&config).unwrap(),
    );
    assert!(a.is_cluster());
    a.ping().await.unwrap();
    b.ping().await.unwrap();

    // Listen on one node for every freeze event the cluster publishes.
    let mut events = redis::Client::open(cluster.urls()[5].as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    events
        .subscribe(format!("tollgate:{ns}:freeze-events"))
        .await
        .unwrap();

    let p = pseudonymizer();
    let limits = Arc::new([
        Limit::new(5, Duration::from_secs(60), 5).unwrap(),
        Limit::new(100, Duration::from_secs(3_600), 100).unwrap(),
    ]);
    let (rl_a, rl_b) = (RedisRateLimitStore::new(&a), RedisRateLimitStore::new(&b));
    let clients: Vec<String> = (0..300).map(|i| format!("{}-{i}", canary::EMAIL)).collect();
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let key = RateLimitKey::new(p.digest(Domain::SUBJECT, client.as_bytes()));
        for j in 0..8 {
            let store = if (i + j) % 2 == 0 {
                rl_a.clone()
            } else {
                rl_b.clone()
            };
            let limits = limits.clone();
            tasks.push(tokio::spawn(async move {
                let d = store
                    .check_and_spend(&key, &limits[..], 1, SystemClock.now())
                    .await
                    .unwrap();
                (i, d.allowed())
            }));
        }
    }
    let mut allowed = vec![0u32; clients.len()];
    for t in tasks {
        let (i, ok) = t.await.unwrap();
        allowed[i] += u32::from(ok);
    }
    assert!(
        allowed.iter().all(|&n| n == 5),
        "admitted per client: {allowed:?}"
    );
    let stats = a.stats();
    assert_eq!(
        (stats.fail_open, stats.fail_closed, stats.outages),
        (0, 0, 0),
        "{stats:?}"
    );

    // Sessions, replay cache and freezes through the cluster.
    let sessions: RedisStore<Record> = RedisStore::new(&a);
    let session = StoreKey::new("session", &p.digest(Domain::SESSION, canary::JTI.as_bytes()));
    let record = Record {
        fingerprints: vec![
            p.pseudonym(Domain::FINGERPRINT, canary::USER_AGENT.as_bytes())
                .to_string(),
        ],
    };
    sessions
        .insert(&session, record.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        RedisStore::<Record>::new(&b).get(&session).await.unwrap(),
        Some(record)
    );
    let jti = p.digest(Domain::SESSION, canary::JTI.as_bytes());
    assert!(
        RedisReplayCache::new(&a)
            .record(jti, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        !RedisReplayCache::new(&b)
            .record(jti, Duration::from_secs(60))
            .await
            .unwrap()
    );

    let (list_a, list_b) = (
        RedisFreezeList::with_clock(&a, system_clock()),
        RedisFreezeList::with_clock(&b, system_clock()),
    );
    assert!(list_a.wait_synced(Duration::from_secs(5)).await);
    assert!(list_b.wait_synced(Duration::from_secs(5)).await);
    let mut propagation = Vec::new();
    for i in 0..20 {
        let key = format!("{}-{i}", canary::SUBJECT);
        let principal = Principal::new(&p, CredentialKind::ApiKey, canary::SUBJECT, key.as_bytes());
        let start = Instant::now();
        list_a
            .freeze(freeze_of(FreezeTarget::credential(&p, &key)))
            .await
            .unwrap();
        while list_b.check(&principal).await.unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_millis(500),
                "B did not see freeze {i}"
            );
            tokio::task::yield_now().await;
        }
        propagation.push(start.elapsed());
    }
    propagation.sort();
    println!(
        "freeze on A (WAIT for a replica included) to refused on B: median {:?}, max {:?}",
        propagation[10], propagation[19]
    );

    // Keys of different clients spread over every shard.
    let keys = cluster.keys_by_primary(&format!("tollgate:{ns}:*"));
    assert_eq!(keys.len(), 3);
    let rl_per_shard: Vec<usize> = keys
        .values()
        .map(|k| k.iter().filter(|k| k.contains(":rl:")).count())
        .collect();
    assert_eq!(rl_per_shard.iter().sum::<usize>(), clients.len());
    assert!(
        rl_per_shard.iter().all(|&n| n >= 60),
        "rate-limit keys per shard: {rl_per_shard:?}"
    );

    // No raw identifier in any key, value or message, on any shard.
    let mut messages = String::new();
    let mut stream = events.on_message();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
        messages.push_str(&msg.get_payload::<String>().unwrap());
        messages.push('\n');
    }
    assert_eq!(
        messages.lines().count(),
        20,
        "every freeze event reached the listening node"
    );
    let stored = stored_text(&cluster, &keys);
    assert!(stored.contains(":freeze\n"), "the freeze hash is on a shard");
    let mut raw: Vec<String> = canary::FRAGMENTS.iter().map(|c| c.to_string()).collect();
    raw.extend(clients.iter().take(10).cloned());
    canary::assert_absent("the keys and values on every shard", &stored, &raw);
    canary::assert_absent("the freeze events", &messages, &raw);
}

/// A primary killed under load: decisions on its slots follow the failure policy
/// (here `closed`, so a refusal marks a decision Redis could not make) until its
/// replica takes over, then resume by themselves; a freeze acknowledged before the
/// kill survives the failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_mid_load_fails_over_and_decisions_resume() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(mut cluster) = RedisCluster::start() else {
        return;
    };
    let ns = random_namespace();
    let config = config(&cluster, &ns);
    let backend = RedisBackend::new(&config).unwrap();
    backend.ping().await.unwrap();
    let p = pseudonymizer();

    // A freeze made before the kill, held by a replica before `freeze` returned.
    let list = RedisFreezeList::with_clock(&backend, system_clock());
    assert!(list.wait_synced(Duration::from_secs(5)).await);
    let principal = Principal::new(&p, CredentialKind::ApiKey, "owner", b"leaked-key");
    list.freeze(freeze_of(FreezeTarget::credential(&p, "leaked-key")))
        .await
        .unwrap();
    assert_eq!(
        backend.stats().freeze_unreplicated,
        0,
        "a replica confirmed the freeze before the kill"
    );

    // The shard to kill: the one holding the freeze hash.
    let victim = cluster.primary_for_key(&format!("tollgate:{ns}:freeze"));

    let store = RedisRateLimitStore::new(&backend).with_fallback(RateLimitFallback::Closed);
    let limits = Arc::new([Limit::new(1_000_000, Duration::from_secs(1), 1_000_000).unwrap()]);
    let keys: Arc<Vec<RateLimitKey>> = Arc::new(
        (0u32..64)
            .map(|i| RateLimitKey::new(p.digest(Domain::SUBJECT, &i.to_be_bytes())))
            .collect(),
    );
    let on_victim = keys
        .iter()
        .filter(|k| cluster.primary_for_key(&backend.key_of(&k.store_key())) == victim)
        .count();
    assert!(on_victim > 0, "some keys live on the killed shard");
    // The backend's breakers cover 256 slots each: the keys that share one with the
    // killed shard's slots may follow the policy too; every other key must not.
    let victim_groups: Vec<u16> = cluster
        .slots_of(victim)
        .into_iter()
        .flat_map(|(first, last)| first / 256..=last / 256)
        .collect();
    let exposed: Vec<bool> = keys
        .iter()
        .map(|k| victim_groups.contains(&(cluster.key_slot(&backend.key_of(&k.store_key())) / 256)))
        .collect();

    let start = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8usize {
        let (store, limits, keys, stop) = (store.clone(), limits.clone(), keys.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            // (time since start, decided by Redis, key)
            let mut log = Vec::new();
            let mut i = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i = (i + 1) % keys.len();
                let d = store
                    .check_and_spend(&keys[i], &limits[..], 1, SystemClock.now())
                    .await
                    .expect("the failure policy answers, never an error");
                log.push((start.elapsed(), d.allowed(), i));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = start.elapsed();
    let victim_for_thread = victim;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(victim_for_thread);
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    })
    .await
    .unwrap();
    let healthy_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut log = Vec::new();
    for w in workers {
        log.extend(w.await.unwrap());
    }
    log.sort();

    let before: Vec<_> = log.iter().filter(|(t, ..)| *t < killed_at).collect();
    let refused_before = before.iter().filter(|(_, ok, _)| !ok).count();
    assert!(
        !before.is_empty() && refused_before == 0,
        "all decided in Redis before the kill: {refused_before} of {} were not; {:?}",
        before.len(),
        backend.stats()
    );
    let refused: Vec<Duration> = log.iter().filter(|(_, ok, _)| !ok).map(|(t, ..)| *t).collect();
    let spared: Vec<Duration> = log
        .iter()
        .filter(|(_, ok, i)| !ok && !exposed[*i])
        .map(|(t, ..)| t.saturating_sub(killed_at))
        .collect();
    assert!(
        spared.is_empty(),
        "keys on the healthy shards were decided in Redis throughout: {} were not, {:?} .. {:?} after the kill; {:?}",
        spared.len(),
        spared.first(),
        spared.last(),
        backend.stats()
    );
    assert!(!refused.is_empty(), "the failure policy answered during the gap");
    let last_refusal = *refused.last().unwrap();
    let recovered_after = last_refusal.saturating_sub(killed_at);
    let after: Vec<_> = log.iter().filter(|(t, ..)| *t > last_refusal).collect();
    assert!(
        after.len() > 100,
        "decisions resumed in Redis after the failover ({} after the last refusal)",
        after.len()
    );
    assert!(
        recovered_after < Duration::from_secs(10),
        "decisions resumed {recovered_after:?} after the kill"
    );
    let stats = backend.stats();
    assert!(stats.outages >= 1 && stats.recoveries >= 1, "{stats:?}");
    assert_eq!(stats.fail_closed as usize, refused.len(), "{stats:?}");
    println!(
        "primary killed at {killed_at:?}; cluster healthy {:?} later; last decision by the failure policy {recovered_after:?} after the kill; {} of {} decisions by the policy ({on_victim} of 64 keys on the killed shard)",
        healthy_at.saturating_sub(killed_at),
        refused.len(),
        log.len()
    );

    // The freeze survived: a fresh replica loads it from the promoted replica.
    let fresh = RedisFreezeList::with_clock(&RedisBackend::new(&config).unwrap(), system_clock());
    assert!(fresh.wait_synced(Duration::from_secs(10)).await);
    assert!(
        fresh.check(&principal).await.unwrap().is_some(),
        "the freeze survived the failover; the list before: {:?}, {:?}",
        list.list().await,
        backend.stats()
    );
    assert!(list.check(&principal).await.unwrap().is_some());

    // The promoted shard has no replica now: a new freeze still holds (counted as
    // unreplicated), so operators can freeze while the cluster is degraded.
    let other = Principal::new(&p, CredentialKind::ApiKey, "owner", b"second-key");
    list.freeze(freeze_of(FreezeTarget::credential(&p, "second-key")))
        .await
        .unwrap();
    assert!(list.check(&other).await.unwrap().is_some());
    assert_eq!(backend.stats().freeze_unreplicated, 1, "{:?}", backend.stats());
    drop(cluster);
}
