//! A Redis hash mirrored in each replica's memory: loaded after subscribing to the
//! hash's event channel, updated by every event, reloaded in full now and then. The
//! freeze list and the penalty board are kept this way, so the request path reads
//! memory and a change made on one replica reaches the others within the pub/sub
//! delivery time.
//!
//! Writers change the hash with a Lua script that also publishes `set {field} {value}`
//! or `del {field}` on the channel; this module only follows.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use futures_util::StreamExt;
use redis::Script;
use tokio::sync::watch;
use tollgate_core::StoreError;
use tollgate_core::clock::{SharedClock, Timestamp};

use crate::backend::{Counters, RedisBackend};
use crate::script::ScriptCall;

/// Drops an expired entry if it is still the one that was read.
static PRUNE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('PUBLISH', ARGV[3], 'del ' .. ARGV[1])
  return 1
end
return 0
"#,
    )
});

/// The counters of one replicated hash.
pub(crate) struct ReplicaCounters<'a> {
    /// Times the copy became current.
    pub(crate) syncs: &'a AtomicU64,
    /// Times the subscription was lost.
    pub(crate) losses: &'a AtomicU64,
    /// Events received.
    pub(crate) events: &'a AtomicU64,
}

/// An entry of a replicated hash.
pub(crate) trait Replicated: Clone + Send + Sync + 'static {
    /// What an entry is about (a hash field names it).
    type Key: Copy + Eq + Hash + Send + Sync + 'static;

    /// Where a replica keeps its copy.
    type Mirror: Mirror<Self>;

    /// The use named in logs: `freeze_list`, `penalty_board`.
    const USE: &'static str;

    /// The hash field of `key`.
    fn field(key: &Self::Key) -> String;

    /// The key a hash field names, if it is well formed.
    fn parse_field(field: &str) -> Option<Self::Key>;

    /// The entry stored at `key`, if the value decodes and belongs there.
    fn decode(key: &Self::Key, value: &[u8]) -> Option<Self>;

    /// True if the entry is in force at `now` (expired ones are dropped when seen).
    fn is_active(&self, now: Timestamp) -> bool;

    /// This hash's counters.
    fn counters(c: &Counters) -> ReplicaCounters<'_>;
}

/// A replica's copy of one hash, written by loads and events; each use reads its own
/// kind of copy directly.
pub(crate) trait Mirror<E: Replicated>: Send + Sync + 'static {
    /// Takes in the active entries of a full load. What it does with entries the load
    /// lacks is the copy's own rule (a snapshot drops them).
    fn reload(&self, entries: Vec<(E::Key, E)>, now: Timestamp);

    /// Puts one entry in.
    fn insert(&self, key: E::Key, entry: E, now: Timestamp);

    /// Takes one entry out.
    fn remove(&self, key: &E::Key, now: Timestamp);
}

/// A copy for a list that changes rarely and is read on every request (the freeze
/// list): reads are a lock-free load of the whole map; a change copies it (dropping
/// expired entries on the way). Never evicts: the Redis hash bounds it.
pub(crate) struct Snapshot<E: Replicated>(ArcSwap<HashMap<E::Key, E>>);

impl<E: Replicated> Snapshot<E> {
    pub(crate) fn new() -> Self {
        Snapshot(ArcSwap::from_pointee(HashMap::new()))
    }

    /// The map as it is now.
    pub(crate) fn load(&self) -> Guard<Arc<HashMap<E::Key, E>>> {
        self.0.load()
    }

    fn modify(&self, now: Timestamp, f: impl Fn(&mut HashMap<E::Key, E>)) {
        self.0.rcu(|current| {
            let mut next: HashMap<E::Key, E> = current
                .iter()
                .filter(|(_, e)| e.is_active(now))
                .map(|(k, e)| (*k, e.clone()))
                .collect();
            f(&mut next);
            next
        });
    }
}

impl<E: Replicated> Mirror<E> for Snapshot<E> {
    fn reload(&self, entries: Vec<(E::Key, E)>, _: Timestamp) {
        self.0.store(Arc::new(entries.into_iter().collect()));
    }

    fn insert(&self, key: E::Key, entry: E, now: Timestamp) {
        self.modify(now, |m| {
            m.insert(key, entry.clone());
        });
    }

    fn remove(&self, key: &E::Key, now: Timestamp) {
        self.modify(now, |m| {
            m.remove(key);
        });
    }
}

fn decode_entry<E: Replicated>(field: &str, value: &[u8]) -> Option<(E::Key, E)> {
    let key = E::parse_field(field)?;
    Some((key, E::decode(&key, value)?))
}

/// The task following a replicated hash, stopped when this is dropped (with the last
/// clone of the store that owns it).
pub(crate) struct Following(tokio::task::AbortHandle);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One replicated hash and its local copy.
pub(crate) struct Replica<E: Replicated> {
    pub(crate) backend: RedisBackend,
    /// The copy.
    pub(crate) mirror: E::Mirror,
    synced: AtomicBool,
    synced_tx: watch::Sender<bool>,
    /// The hash (one key, so one shard on a cluster).
    pub(crate) hash_key: String,
    /// Its event channel (classic pub/sub, which a cluster broadcasts to every node).
    pub(crate) channel: String,
    pub(crate) clock: SharedClock,
}

impl<E: Replicated> Replica<E> {
    /// The hash `tollgate:[ns:]{name}` and its channel `…{name}-events`, copied into
    /// `mirror`; not yet followed.
    pub(crate) fn new(backend: &RedisBackend, name: &str, clock: SharedClock, mirror: E::Mirror) -> Self {
        Replica {
            backend: backend.clone(),
            mirror,
            synced: AtomicBool::new(false),
            synced_tx: watch::channel(false).0,
            hash_key: backend.named_key(name),
            channel: backend.named_key(&format!("{name}-events")),
            clock,
        }
    }

    /// Spawns the task that keeps the copy current; it runs until the returned guard
    /// is dropped.
    pub(crate) fn follow(self: &Arc<Self>, heartbeat: Duration, resync: Duration) -> Following {
        Following(
            tokio::spawn(subscriber(
                Arc::clone(self),
                heartbeat.max(Duration::from_millis(10)),
                resync.max(Duration::from_millis(100)),
            ))
            .abort_handle(),
        )
    }

    /// True while the copy is current (subscribed and loaded).
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Waits until the copy is current, up to `timeout`; returns whether it is.
    pub(crate) async fn wait_synced(&self, timeout: Duration) -> bool {
        let mut rx = self.synced_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s)).await.is_ok()
    }

    /// Every entry in Redis (active or not) with its raw field and value.
    pub(crate) async fn read_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let key = self.hash_key.clone();
        self.backend
            .run_now(&self.hash_key, |mut c| async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<Vec<(String, Vec<u8>)>>(&mut c)
                    .await
            })
            .await
    }

    /// Every active entry, decoded from what [`Replica::read_all`] returned.
    pub(crate) fn active(&self, all: &[(String, Vec<u8>)]) -> Vec<E> {
        let now = self.clock.now();
        all.iter()
            .filter_map(|(f, v)| decode_entry::<E>(f, v))
            .map(|(_, e)| e)
            .filter(|e| e.is_active(now))
            .collect()
    }

    fn set_synced(&self, synced: bool, cause: &str) {
        if self.synced.swap(synced, Ordering::AcqRel) != synced {
            let c = E::counters(self.backend.counters());
            if synced {
                c.syncs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(store = "redis", r#use = E::USE, synced, "local copy is current");
            } else {
                c.losses.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    store = "redis",
                    r#use = E::USE,
                    synced,
                    cause,
                    "subscription lost: the local copy may be behind until it is back"
                );
            }
            self.synced_tx.send_replace(synced);
        }
    }

    /// Loads the whole hash, drops expired entries from Redis, installs the copy.
    async fn reload(&self) -> Result<(), StoreError> {
        let all = self.read_all().await?;
        let now = self.clock.now();
        let mut active = Vec::with_capacity(all.len());
        for (f, v) in all {
            match decode_entry::<E>(&f, &v) {
                Some((key, entry)) if entry.is_active(now) => active.push((key, entry)),
                Some(_) => {
                    let (key, channel) = (self.hash_key.clone(), self.channel.clone());
                    // Best effort: another replica may have pruned it already.
                    let _ = self
                        .backend
                        .run_now(&self.hash_key, |mut c| async move {
                            ScriptCall::new(&PRUNE, key)
                                .arg(f)
                                .arg(v)
                                .arg(channel)
                                .invoke::<i64>(&mut c)
                                .await
                        })
                        .await;
                }
                None => tracing::warn!(store = "redis", r#use = E::USE, "skipping an undecodable entry"),
            }
        }
        self.mirror.reload(active, now);
        Ok(())
    }

    fn apply(&self, payload: &[u8]) {
        E::counters(self.backend.counters())
            .events
            .fetch_add(1, Ordering::Relaxed);
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let (op, rest) = text.split_once(' ').unwrap_or((text, ""));
        match op {
            "set" => {
                let Some((f, value)) = rest.split_once(' ') else {
                    return;
                };
                if let Some((key, entry)) = decode_entry::<E>(f, value.as_bytes()) {
                    self.mirror.insert(key, entry, self.clock.now());
                }
            }
            "del" => {
                if let Some(key) = E::parse_field(rest) {
                    self.mirror.remove(&key, self.clock.now());
                }
            }
            _ => {}
        }
    }
}

async fn follow<E: Replicated>(
    replica: &Replica<E>,
    attempt: usize,
    heartbeat: Duration,
    resync: Duration,
) -> Result<(), String> {
    let ct = replica.backend.connect_timeout();
    let pubsub = tokio::time::timeout(ct, replica.backend.pubsub(attempt))
        .await
        .map_err(|_| "connect timeout".to_string())?
        .map_err(|e| e.category().to_string())?;
    let (mut sink, mut stream) = pubsub.split();
    tokio::time::timeout(ct, sink.subscribe(&replica.channel))
        .await
        .map_err(|_| "subscribe timeout".to_string())?
        .map_err(|e| e.category().to_string())?;
    // Subscribed first, then loaded: every change after the load arrives as an event
    // (queued in `stream` meanwhile), and replaying older ones is harmless.
    replica.reload().await.map_err(|e| e.to_string())?;
    replica.set_synced(true, "");
    let mut hb = tokio::time::interval(heartbeat);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hb.tick().await;
    let mut rs = tokio::time::interval(resync);
    rs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rs.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => replica.apply(msg.get_payload_bytes()),
                None => return Err("subscription closed".into()),
            },
            _ = hb.tick() => {
                match tokio::time::timeout(ct, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.category().to_string()),
                    Err(_) => return Err("heartbeat timeout".into()),
                }
            }
            _ = rs.tick() => replica.reload().await.map_err(|e| e.to_string())?,
        }
    }
}

async fn subscriber<E: Replicated>(replica: Arc<Replica<E>>, heartbeat: Duration, resync: Duration) {
    let retry = replica.backend.config().retry_interval;
    // On a cluster each attempt subscribes through the next seed node.
    for attempt in 0.. {
        let cause = follow(&replica, attempt, heartbeat, resync)
            .await
            .err()
            .unwrap_or_default();
        replica.set_synced(false, &cause);
        tokio::time::sleep(retry).await;
    }
}
