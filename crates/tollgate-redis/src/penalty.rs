//! `RedisPenaltyBoard`: the anomaly layer's throttles and blocks, shared by every
//! replica and read from a local copy that pub/sub keeps current.

use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use tollgate_anomaly::{Action, AnomalyTags, Penalty, PenaltyBoard, PenaltyKey};
use tollgate_core::FailurePolicy;
use tollgate_core::clock::{SharedClock, Timestamp};
use tollgate_core::sharded::ShardedMap;

use crate::backend::{Counters, RedisBackend};
use crate::replica::{Following, Mirror, Replica, ReplicaCounters, Replicated};
use crate::script::ScriptCall;

/// Merges a penalty into the hash by [`Penalty::merge`]'s rule, announces the result
/// and keeps the hash no longer than its last penalty. When the hash is full,
/// expired penalties are dropped first; if it is still full the penalty is refused
/// (it then holds on the replica that imposed it only).
static IMPOSE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key, field, channel = KEYS[1], ARGV[1], ARGV[2]
local now, max = tonumber(ARGV[4]), tonumber(ARGV[5])
local rank = { throttle = 1, block = 2 }
local function parse(v)
  local a, u, t = string.match(v, '^(%a+) (%d+) ?(.*)$')
  return a, tonumber(u), t
end
local action, untl, tags = parse(ARGV[3])
if not rank[action] or not untl then
  return redis.error_reply('TOLLGATE_BAD penalty does not parse')
end
local function merge_tags(a, b)
  local score, order = {}, {}
  for pair in string.gmatch(a .. ',' .. b, '[^,]+') do
    local k, s = string.match(pair, '^([%a_]+):(%d+)$')
    if k then
      s = tonumber(s)
      if not score[k] then order[#order + 1] = k end
      if not score[k] or s > score[k] then score[k] = s end
    end
  end
  local out = {}
  for i, k in ipairs(order) do out[i] = k .. ':' .. score[k] end
  return table.concat(out, ',')
end
local current = redis.call('HGET', key, field)
if current then
  local a, u, t = parse(current)
  if a and u and u > now and rank[a] then
    if rank[action] >= rank[a] then
      untl = math.max(untl, u)
    else
      action, untl = a, u
    end
    tags = merge_tags(t, tags)
  end
elseif redis.call('HLEN', key) >= max then
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    local _, u = parse(all[i + 1])
    if not u or u <= now then
      redis.call('HDEL', key, all[i])
      redis.call('PUBLISH', channel, 'del ' .. all[i])
    end
  end
  if redis.call('HLEN', key) >= max then
    return redis.error_reply('TOLLGATE_FULL penalty board is full')
  end
end
local value = action .. ' ' .. string.format('%d', untl) .. ' ' .. tags
redis.call('HSET', key, field, value)
redis.call('PUBLISH', channel, 'set ' .. field .. ' ' .. value)
local left = redis.call('PTTL', key)
if left < untl - now then
  redis.call('PEXPIRE', key, untl - now)
end
return 1
"#,
    )
});

const NANOS_PER_MS: u64 = 1_000_000;

/// A penalty's end in whole milliseconds, rounded up (Lua numbers are doubles: exact
/// up to 2^53, far beyond any millisecond time, not any nanosecond one).
fn until_ms(until: Timestamp) -> u64 {
    until.as_nanos().div_ceil(NANOS_PER_MS)
}

/// The hash value: `{action} {until_ms} {tags}`, e.g. `block 1764800000123 volume:55`.
fn encode(p: &Penalty) -> String {
    format!("{} {} {}", p.action.as_str(), until_ms(p.until), p.tags)
}

/// A replica's copy of the penalties: a bounded concurrent map whose entries go when
/// their penalty ends. Penalties can come in floods (every network of a spread
/// attack), so a change costs one shard's lock, not a copy of the whole list, and a
/// full shard drops the penalty that ends soonest.
pub(crate) struct Penalties(ShardedMap<PenaltyKey, Penalty>);

impl Mirror<Penalty> for Penalties {
    /// Loads over the copy without emptying it first, so no request sees a gap; what
    /// Redis no longer holds has ended (or was refused there) and goes at its end.
    fn reload(&self, entries: Vec<(PenaltyKey, Penalty)>, now: Timestamp) {
        for (key, penalty) in entries {
            self.0.insert(key, penalty, penalty.until, now);
        }
    }

    fn insert(&self, key: PenaltyKey, penalty: Penalty, now: Timestamp) {
        self.0.insert(key, penalty, penalty.until, now);
    }

    fn remove(&self, key: &PenaltyKey, now: Timestamp) {
        self.0.remove(key, now);
    }
}

impl Replicated for Penalty {
    type Key = PenaltyKey;
    type Mirror = Penalties;

    const USE: &'static str = "penalty_board";

    /// The key's 64-bit keyed hash in hex.
    fn field(key: &PenaltyKey) -> String {
        format!("{:016x}", key.as_u64())
    }

    fn parse_field(field: &str) -> Option<PenaltyKey> {
        (field.len() == 16)
            .then(|| u64::from_str_radix(field, 16).ok())
            .flatten()
            .map(PenaltyKey::from_u64)
    }

    fn decode(_: &PenaltyKey, value: &[u8]) -> Option<Penalty> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, ' ');
        let action = match parts.next()? {
            "throttle" => Action::Throttle,
            "block" => Action::Block,
            _ => return None,
        };
        let until = parts.next()?.parse::<u64>().ok()?.checked_mul(NANOS_PER_MS)?;
        let tags: AnomalyTags = parts.next().unwrap_or("").parse().ok()?;
        Some(Penalty {
            action,
            until: Timestamp::from_nanos(until),
            tags,
        })
    }

    fn is_active(&self, now: Timestamp) -> bool {
        Penalty::is_active(self, now)
    }

    fn counters(c: &Counters) -> ReplicaCounters<'_> {
        ReplicaCounters {
            syncs: &c.penalty_syncs,
            losses: &c.penalty_sync_losses,
            events: &c.penalty_events,
        }
    }
}

struct Inner {
    replica: Arc<Replica<Penalty>>,
    max_entries: usize,
    longest: Duration,
    resync: Duration,
    engaged: AtomicBool,
    _following: Following,
}

/// The anomaly layer's penalties in Redis, shared by every replica
/// ([`tollgate_anomaly::AnomalyBuilder::penalty_board`]).
///
/// **Storage.** One hash, `tollgate:[ns:]penalties`, whose fields are the penalty
/// keys (keyed 64-bit hashes of a credential digest or a coarsened network, in hex:
/// never a raw id) and whose values are `{action} {until_ms} {tags}`
/// (`block 1764800000123 volume:55`). A Lua script merges each new penalty with the
/// one in force by [`Penalty::merge`]'s rule (the stronger action and the later end
/// win, the tags add up), publishes the result on `tollgate:[ns:]penalties-events`
/// and keeps the hash's TTL at its last penalty's end; at most `max_entries` fields.
///
/// **Reads are local.** Every replica keeps a copy of the hash (loaded after
/// subscribing, updated by each event, reloaded every `[store.freeze]
/// resync_interval`), so a request reads memory, and a caller blocked on one replica
/// is blocked on the others within the pub/sub delivery time. The copy is a bounded
/// concurrent map (twice `max_entries`: the shared penalties and this replica's own
/// that a full hash refused; each entry gone when its penalty ends), so a flood of
/// penalties costs a shard lock each, not a copy of the list.
///
/// **Failures.** A penalty holds at once on the replica that imposed it; the write to
/// Redis runs in the background. If Redis cannot take it, the penalty stays local
/// (logged once per outage, counted as `fail_open`): penalties are added
/// protection, so an outage never refuses a request that would otherwise pass.
/// While the subscription is down, the copy answers as it last was.
///
/// A replica repeats a penalty to Redis only when it adds something (a stronger
/// action, a new tag, or an end later by more than an eighth of its length), so a
/// throttled flood costs no write per request.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_core::{Pseudonymizer, PseudonymSecret};
/// use tollgate_anomaly::{AnomalyConfig, AnomalyLayer};
/// use tollgate_redis::{RedisBackend, RedisPenaltyBoard, StoreConfig};
///
/// let backend = RedisBackend::new(&StoreConfig::redis("redis://127.0.0.1:6379"))?;
/// let board = RedisPenaltyBoard::new(&backend, 100_000, Duration::from_secs(600));
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32])?, Duration::from_secs(86_400));
/// let layer = AnomalyLayer::builder(AnomalyConfig::default(), p)
///     .penalty_board(Arc::new(board))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisPenaltyBoard(Arc<Inner>);

impl fmt::Debug for RedisPenaltyBoard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPenaltyBoard")
            .field("entries", &self.0.replica.mirror.0.len())
            .field("synced", &self.0.replica.is_synced())
            .finish()
    }
}

impl RedisPenaltyBoard {
    /// A board of at most `max_entries` penalties, none longer than `longest`, on the
    /// system clock. Must be called inside a Tokio runtime (it spawns its subscriber).
    pub fn new(backend: &RedisBackend, max_entries: usize, longest: Duration) -> Self {
        Self::with_clock(
            backend,
            max_entries,
            longest,
            tollgate_core::clock::system_clock(),
        )
    }

    /// As [`RedisPenaltyBoard::new`], on the given clock (the anomaly layer's).
    pub fn with_clock(
        backend: &RedisBackend,
        max_entries: usize,
        longest: Duration,
        clock: SharedClock,
    ) -> Self {
        let max_entries = max_entries.max(1);
        // Room for what every replica shares and as much again of this replica's own
        // penalties that a full hash refused.
        let mirror = Penalties(ShardedMap::new(max_entries.saturating_mul(2)));
        let replica = Arc::new(Replica::new(backend, "penalties", clock, mirror));
        let config = &backend.config().freeze;
        let following = replica.follow(config.heartbeat, config.resync_interval);
        RedisPenaltyBoard(Arc::new(Inner {
            replica,
            max_entries,
            longest,
            resync: config.resync_interval,
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

    async fn write(inner: Arc<Inner>, key: PenaltyKey, penalty: Penalty, now: Timestamp) {
        let r = &inner.replica;
        let (hash, channel) = (r.hash_key.clone(), r.channel.clone());
        let (field, max) = (Penalty::field(&key), inner.max_entries);
        let result = r
            .backend
            .run(&r.hash_key, |mut c| async move {
                ScriptCall::new(&IMPOSE, hash)
                    .arg(field)
                    .arg(channel)
                    .arg(encode(&penalty))
                    .arg(now.as_nanos() / NANOS_PER_MS)
                    .arg(max)
                    .invoke::<i64>(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(_) => r.backend.record_recovered(&inner.engaged, Penalty::USE),
            Err(e) => {
                tracing::debug!(store = "redis", r#use = Penalty::USE, error = %e, "penalty kept on this replica only");
                r.backend
                    .record_policy(&inner.engaged, Penalty::USE, FailurePolicy::Open);
            }
        }
    }
}

impl PenaltyBoard for RedisPenaltyBoard {
    fn get(&self, key: PenaltyKey, now: Timestamp) -> Option<Penalty> {
        self.0
            .replica
            .mirror
            .0
            .get(&key, now)
            .filter(|p| p.is_active(now))
    }

    fn impose(&self, key: PenaltyKey, penalty: Penalty, now: Timestamp) {
        let r = &self.0.replica;
        let current = self.get(key, now).unwrap_or_default();
        let slack = Duration::from_nanos(penalty.until.as_nanos().saturating_sub(now.as_nanos()) / 8);
        if current.covers(&penalty, now, slack) {
            return;
        }
        let mut merged = current;
        merged.merge(penalty, now);
        r.mirror.insert(key, merged, now);
        // Outside a runtime (a synchronous test) the penalty stays local.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Self::write(Arc::clone(&self.0), key, merged, now));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.replica.mirror.0.is_empty()
    }

    fn size(&self) -> (usize, usize) {
        (self.0.replica.mirror.0.len(), self.0.replica.mirror.0.capacity())
    }

    fn retention(&self) -> Duration {
        self.0.longest + self.0.resync
    }

    fn purge_expired(&self, now: Timestamp) {
        self.0.replica.mirror.0.purge_expired(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_anomaly::AnomalyKind;

    #[test]
    fn values_round_trip() {
        let mut tags = AnomalyTags::default();
        tags.insert(AnomalyKind::Volume, 55);
        tags.insert(AnomalyKind::Enumeration, 80);
        let p = Penalty {
            action: Action::Block,
            until: Timestamp::from_nanos(1_764_800_000_123 * NANOS_PER_MS),
            tags,
        };
        let key = PenaltyKey::from_u64(0x00ab_cdef_0123_4567);
        assert_eq!(Penalty::parse_field(&Penalty::field(&key)), Some(key));
        assert_eq!(encode(&p), "block 1764800000123 volume:55,enumeration:80");
        assert_eq!(Penalty::decode(&key, encode(&p).as_bytes()), Some(p));
        for junk in ["freeze 1 ", "block x ", "block 1 nope:3", ""] {
            assert_eq!(Penalty::decode(&key, junk.as_bytes()), None, "{junk}");
        }
        assert_eq!(Penalty::parse_field("abc"), None);
    }
}
