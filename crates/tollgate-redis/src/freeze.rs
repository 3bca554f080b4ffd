//! `RedisFreezeList`: one freeze list for every replica, checked from a local copy
//! that pub/sub keeps current.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tollgate_core::clock::{SharedClock, Timestamp, system_clock};
use tollgate_core::{
    BoxFuture, FailurePolicy, Freeze, FreezeList, FreezeTarget, KeyedDigest, Principal, StoreError,
};

use crate::backend::{Counters, RedisBackend};
use crate::config::FreezeConfig;
use crate::replica::{Following, Mirror, Replica, ReplicaCounters, Replicated, Snapshot};
use crate::script::ScriptCall;

/// Adds or replaces a freeze and announces it. When the list is full, expired freezes
/// are dropped first; if it is still full the freeze is refused.
static FREEZE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key, field, value, max, channel = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('HEXISTS', key, field) == 0 and redis.call('HLEN', key) >= max then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1e9 + tonumber(t[2]) * 1e3
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local ok, f = pcall(cjson.decode, all[i + 1])
    local u = ok and type(f) == 'table' and f['until'] or nil
    if type(u) == 'number' and u <= now then
      redis.call('HDEL', key, all[i])
      redis.call('PUBLISH', channel, 'del ' .. all[i])
    end
  end
  if redis.call('HLEN', key) >= max then
    return redis.error_reply('TOLLGATE_FULL freeze list is full')
  end
end
redis.call('HSET', key, field, value)
redis.call('PUBLISH', channel, 'set ' .. field .. ' ' .. value)
return 1
"#,
    )
});

/// How long `freeze` waits in all for its replicas to confirm it.
const REPLICATION_PATIENCE: Duration = Duration::from_secs(1);

/// Lifts a freeze and announces it; answers 1 if an active freeze was lifted.
static UNFREEZE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'del ' .. ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1e9 + tonumber(t[2]) * 1e3
local ok, f = pcall(cjson.decode, v)
local u = ok and type(f) == 'table' and f['until'] or nil
if type(u) == 'number' and u <= now then return 0 end
return 1
"#,
    )
});

struct Inner {
    replica: Arc<Replica<Freeze>>,
    policy: FailurePolicy,
    max_entries: usize,
    wait_replicas: u32,
    engaged: AtomicBool,
    _following: Following,
}

/// The freeze list in Redis, shared by every replica.
///
/// **Storage.** One hash, `tollgate:{namespace}:freeze` (on a cluster: one slot, so
/// one shard and its replicas), whose fields are
/// `credential:{digest}` / `subject:{digest}` ([`KeyedDigest`]s, never a raw id) and
/// whose values are the [`Freeze`] as JSON. Every change is made by a Lua script that
/// also publishes it on the channel `tollgate:{namespace}:freeze-events`.
///
/// **Checks are local.** Each instance keeps a copy of the whole list, loaded after
/// subscribing to the channel and updated by every event, so
/// [`check`](FreezeList::check) is a lock-free map lookup (no Redis round trip), and a
/// freeze made on one replica holds on every other within the pub/sub delivery time
/// (well under 100 ms on a LAN; the crate's tests measure it). On a Redis Cluster the
/// channel is classic pub/sub, not sharded: a `PUBLISH` reaches every node, so the
/// subscriber can listen on any seed node and move to the next when its node fails;
/// sharded pub/sub would tie it to the freeze hash's shard and follow that shard
/// through failovers, for no gain at one event per freeze. The copy is reloaded in
/// full every `resync_interval` as a safety net, and expired freezes are dropped
/// from Redis when seen.
///
/// **Failure contract of `check`.** The copy is *current* while the subscription is
/// up (pinged every `heartbeat`). When it is not:
/// - `check` reads the two fields from Redis directly (bounded by `timeout`);
/// - if Redis cannot answer either, the credential cannot be checked, and the
///   `[store.freeze] on_failure` policy decides:
///   - `closed` (default): `check` returns `Err(StoreError)`. The authentication layer
///     answers such an error with **503** (problem+json), never lets the request
///     through and never answers 500;
///   - `open`: `check` answers from the last copy received (freezes known before the
///     outage still hold; newer ones are missed).
///
/// Every such use is counted (`fail_closed` / `fail_open`) and the first of a run is
/// logged. The subscription reconnects and reloads by itself when Redis returns.
///
/// **Durability.** Redis replicates asynchronously: a write acknowledged by a primary
/// that fails before its replica copied it is lost in the failover. So `freeze`
/// returns once `[store.freeze] wait_replicas` replicas hold it (`WAIT`; 1 by
/// default on a cluster), asking again for up to a second while they are slow to
/// confirm. When they do not confirm in that time the freeze is still in force (and
/// in every replica's local copy), but a failover could lose it: that is logged and
/// counted (`freeze_unreplicated`).
///
/// `freeze` and `unfreeze` write to Redis and return its error if it cannot be
/// reached (nothing is applied locally then, so no replica holds a freeze that the
/// others never saw). Built inside a Tokio runtime: it spawns the subscriber task,
/// which ends when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tollgate_core::{CredentialKind, Freeze, FreezeList, FreezeTarget, Principal, Pseudonymizer, PseudonymSecret, Timestamp};
/// use tollgate_redis::{RedisBackend, RedisFreezeList, StoreConfig};
///
/// let backend = RedisBackend::new(&StoreConfig::redis("redis://127.0.0.1:6379"))?;
/// let list = RedisFreezeList::new(&backend);
/// list.wait_synced(Duration::from_secs(1)).await;
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32])?, Duration::from_secs(86_400));
/// let target = FreezeTarget::credential(&p, "key-1");
/// list.freeze(Freeze { target, reason: "leaked".into(), frozen_at: Timestamp::ZERO, until: None }).await?;
/// let principal = Principal::new(&p, CredentialKind::ApiKey, "owner-1", b"key-1");
/// assert!(list.check(&principal).await?.is_some());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisFreezeList(Arc<Inner>);

impl fmt::Debug for RedisFreezeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFreezeList")
            .field("entries", &self.0.replica.mirror.load().len())
            .field("synced", &self.0.replica.is_synced())
            .field("policy", &self.0.policy)
            .finish()
    }
}

impl Replicated for Freeze {
    type Key = FreezeTarget;
    type Mirror = Snapshot<Freeze>;

    const USE: &'static str = "freeze_list";

    /// `credential:{hex}` or `subject:{hex}`.
    fn field(target: &FreezeTarget) -> String {
        match target {
            FreezeTarget::Credential(d) => format!("credential:{}", d.to_hex().as_str()),
            FreezeTarget::Subject(d) => format!("subject:{}", d.to_hex().as_str()),
        }
    }

    fn parse_field(field: &str) -> Option<FreezeTarget> {
        let (kind, hex) = field.split_once(':')?;
        let digest = KeyedDigest::from_hex(hex)?;
        match kind {
            "credential" => Some(FreezeTarget::Credential(digest)),
            "subject" => Some(FreezeTarget::Subject(digest)),
            _ => None,
        }
    }

    fn decode(target: &FreezeTarget, value: &[u8]) -> Option<Freeze> {
        serde_json::from_slice::<Freeze>(value)
            .ok()
            .filter(|f| f.target == *target)
    }

    fn is_active(&self, now: Timestamp) -> bool {
        Freeze::is_active(self, now)
    }

    fn counters(c: &Counters) -> ReplicaCounters<'_> {
        ReplicaCounters {
            syncs: &c.freeze_syncs,
            losses: &c.freeze_sync_losses,
            events: &c.freeze_events,
        }
    }
}

impl RedisFreezeList {
    /// The freeze list on `backend`, with the settings of `[store.freeze]`, on the
    /// system clock. Must be called inside a Tokio runtime.
    pub fn new(backend: &RedisBackend) -> Self {
        Self::with_clock(backend, system_clock())
    }

    /// As [`RedisFreezeList::new`], on the given clock (used to tell whether a freeze
    /// with an end time is still active).
    pub fn with_clock(backend: &RedisBackend, clock: SharedClock) -> Self {
        Self::with_config(backend, &backend.config().freeze, clock)
    }

    /// A freeze list on `backend` with its own settings (in place of the backend's
    /// `[store.freeze]`), on the given clock. Must be called inside a Tokio runtime.
    pub fn with_config(backend: &RedisBackend, config: &FreezeConfig, clock: SharedClock) -> Self {
        let replica = Arc::new(Replica::new(backend, "freeze", clock, Snapshot::new()));
        let following = replica.follow(config.heartbeat, config.resync_interval);
        RedisFreezeList(Arc::new(Inner {
            replica,
            policy: config.on_failure,
            max_entries: config.max_entries.max(1),
            wait_replicas: config
                .wait_replicas
                .unwrap_or_else(|| backend.config().freeze_wait_replicas()),
            engaged: AtomicBool::new(false),
            _following: following,
        }))
    }

    /// True while the local copy is current (subscribed and loaded).
    pub fn is_synced(&self) -> bool {
        self.0.replica.is_synced()
    }

    /// Waits until the local copy is current, up to `timeout`; returns whether it is.
    pub async fn wait_synced(&self, timeout: Duration) -> bool {
        self.0.replica.wait_synced(timeout).await
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.0.replica.backend
    }

    fn lookup(&self, principal: &Principal) -> Option<Freeze> {
        let r = &self.0.replica;
        let entries = r.mirror.load();
        if entries.is_empty() {
            return None;
        }
        let now = r.clock.now();
        FreezeTarget::of(principal)
            .iter()
            .filter_map(|t| entries.get(t))
            .find(|f| f.is_active(now))
            .cloned()
    }

    /// The active freeze on `principal`'s credential or subject.
    ///
    /// From the local copy while it is current; otherwise read from Redis; if Redis
    /// cannot answer, per the failure policy: `closed` returns the error (the auth
    /// layer answers 503), `open` answers from the last copy. See the type's docs.
    async fn check_async(&self, principal: &Principal) -> Result<Option<Freeze>, StoreError> {
        let (inner, r) = (&*self.0, &self.0.replica);
        if r.is_synced() {
            return Ok(self.lookup(principal));
        }
        r.backend
            .counters()
            .freeze_read_through
            .fetch_add(1, Ordering::Relaxed);
        let key = r.hash_key.clone();
        let targets = FreezeTarget::of(principal);
        let fields = targets.map(|t| Freeze::field(&t));
        let read = r
            .backend
            .run(&r.hash_key, |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&fields[..])
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await
            })
            .await;
        match read {
            Ok(values) => {
                r.backend.record_recovered(&inner.engaged, Freeze::USE);
                let now = r.clock.now();
                Ok(values
                    .iter()
                    .zip(targets)
                    .filter_map(|(v, t)| v.as_ref().and_then(|v| Freeze::decode(&t, v)))
                    .find(|f| f.is_active(now)))
            }
            Err(e) => {
                r.backend.record_policy(&inner.engaged, Freeze::USE, inner.policy);
                match inner.policy {
                    FailurePolicy::Closed => Err(e),
                    FailurePolicy::Open => Ok(self.lookup(principal)),
                }
            }
        }
    }

    async fn freeze_async(&self, freeze: Freeze) -> Result<(), StoreError> {
        let (inner, r) = (&*self.0, &self.0.replica);
        let value = serde_json::to_string(&freeze)
            .map_err(|_| StoreError::Corrupt("freeze does not encode".into()))?;
        let (key, channel, f, max) = (
            r.hash_key.clone(),
            r.channel.clone(),
            Freeze::field(&freeze.target),
            inner.max_entries,
        );
        let result = r
            .backend
            .run(&r.hash_key, |mut c| async move {
                ScriptCall::new(&FREEZE, key)
                    .arg(f)
                    .arg(value)
                    .arg(max)
                    .arg(channel)
                    .invoke::<i64>(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(_) => {
                // Hold it here at once; the event brings the same value back.
                r.mirror.insert(freeze.target, freeze, r.clock.now());
                self.wait_for_replicas().await;
                Ok(())
            }
            Err(StoreError::Corrupt(text)) if text.contains("TOLLGATE_FULL") => Err(StoreError::Unavailable(
                format!("freeze list is full ({max} entries)"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Waits until `wait_replicas` replicas hold the freeze list's latest write, so a
    /// failover right after `freeze` returns cannot lose the freeze. The freeze is in
    /// force either way: when fewer replicas confirm in time (a shard that lost its
    /// replica, a slow link), it is counted and logged, not refused, so an operator
    /// can still freeze a leaked key while the cluster is degraded.
    async fn wait_for_replicas(&self) {
        let r = &self.0.replica;
        let want = self.0.wait_replicas;
        if want == 0 {
            return;
        }
        // Each WAIT within the call's own timeout (leaving room for the round trip),
        // asked again while a replica is slow to acknowledge (a loaded host, a replica
        // that just synced), for up to `REPLICATION_PATIENCE` in all.
        let wait = r.backend.config().timeout * 3 / 4;
        let give_up = tokio::time::Instant::now() + REPLICATION_PATIENCE;
        let mut held = 0;
        while held < want && tokio::time::Instant::now() < give_up {
            let key = r.hash_key.clone();
            match r
                .backend
                .run(&r.hash_key, |mut c| async move {
                    c.wait_for_replicas(&key, want, wait).await
                })
                .await
            {
                Ok(n) => held = n,
                // A WAIT that timed out on a stalled host, or a shard without a primary
                // for a moment: ask again shortly, within the same patience.
                Err(_) => tokio::time::sleep(wait / 4).await,
            }
        }
        if held < want {
            r.backend
                .counters()
                .freeze_unreplicated
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                store = "redis",
                r#use = Freeze::USE,
                replicas = held,
                wanted = want,
                "freeze in force but not yet on enough replicas: a failover now could lose it"
            );
        }
    }

    async fn unfreeze_async(&self, target: &FreezeTarget) -> Result<bool, StoreError> {
        let r = &self.0.replica;
        let (key, channel, f) = (r.hash_key.clone(), r.channel.clone(), Freeze::field(target));
        let lifted = r
            .backend
            .run(&r.hash_key, |mut c| async move {
                ScriptCall::new(&UNFREEZE, key)
                    .arg(f)
                    .arg(channel)
                    .invoke::<i64>(&mut c)
                    .await
            })
            .await?;
        r.mirror.remove(target, r.clock.now());
        Ok(lifted == 1)
    }

    async fn list_async(&self) -> Result<Vec<Freeze>, StoreError> {
        let r = &self.0.replica;
        if r.is_synced() {
            let now = r.clock.now();
            return Ok(r
                .mirror
                .load()
                .values()
                .filter(|f| f.is_active(now))
                .cloned()
                .collect());
        }
        Ok(r.active(&r.read_all().await?))
    }
}

impl FreezeList for RedisFreezeList {
    fn check<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<Option<Freeze>, StoreError>> {
        Box::pin(self.check_async(principal))
    }

    /// Answers at once from the local copy while it is current; `None` otherwise (the
    /// caller then awaits [`check`](FreezeList::check), which reads Redis).
    fn check_immediate(&self, principal: &Principal) -> Option<Result<Option<Freeze>, StoreError>> {
        self.0.replica.is_synced().then(|| Ok(self.lookup(principal)))
    }

    fn freeze(&self, freeze: Freeze) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.freeze_async(freeze))
    }

    fn unfreeze<'a>(&'a self, target: &'a FreezeTarget) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.unfreeze_async(target))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Freeze>, StoreError>> {
        Box::pin(self.list_async())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let d = KeyedDigest::from_hex("00112233445566778899aabbccddeeff").unwrap();
        for t in [FreezeTarget::Credential(d), FreezeTarget::Subject(d)] {
            assert_eq!(Freeze::parse_field(&Freeze::field(&t)), Some(t));
        }
        assert_eq!(
            Freeze::parse_field("other:00112233445566778899aabbccddeeff"),
            None
        );
        assert_eq!(Freeze::parse_field("credential:xyz"), None);
    }
}
