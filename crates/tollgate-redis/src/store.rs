//! `RedisStore<V>`: the [`StateStore`] on Redis, for session records and other values.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tollgate_core::{BoxFuture, FailurePolicy, StateStore, StoreError, StoreKey};

use crate::backend::RedisBackend;

/// A [`StateStore`] on Redis: values as JSON under their [`StoreKey`], with the
/// `[store] namespace` inserted (`tollgate:[ns:]session:{digest}` for session records),
/// each with its TTL set in Redis (`SET … PX`), so Redis drops them by itself.
///
/// [`StateStore::update`] is atomic across replicas: it reads the value, computes
/// the next, and writes it with a compare-and-set script only if the value is still
/// the one read, reading again otherwise (up to 12 times, pausing a little after
/// the second collision). Two replicas updating one
/// session record at once therefore both count, where a plain read then write would
/// let the last writer erase the other's update. Within one process, updates of a
/// key take turns (first come, first served) instead of colliding, and an update
/// that follows this process's own last write of the key tries its swap without
/// reading first: a steady session costs one round trip per update, and a client
/// with many requests in flight on one session no storm of retries.
///
/// On failure (Redis unreachable, slow, or down per the backend's breaker):
/// - [`FailurePolicy::Closed`] (the default): every method returns the [`StoreError`],
///   and the layer using the store applies its own policy;
/// - [`FailurePolicy::Open`]: `get` answers `None`, `insert` and `remove` succeed
///   without effect.
///
/// Either way the use is counted (`fail_open` / `fail_closed` in
/// [`RedisBackend::stats`]) and the first of a run is logged.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tollgate_core::{Domain, Pseudonymizer, PseudonymSecret, StateStore, StoreKey};
/// use tollgate_redis::{RedisBackend, RedisStore, StoreConfig};
///
/// let backend = RedisBackend::new(&StoreConfig::redis("redis://127.0.0.1:6379"))?;
/// let sessions: RedisStore<Vec<u32>> = RedisStore::new(&backend);
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32])?, Duration::from_secs(86_400));
/// let key = StoreKey::new("session", &p.digest(Domain::SESSION, b"jti-1"));
/// sessions.insert(&key, vec![1, 2], Duration::from_secs(600)).await?;
/// assert_eq!(sessions.get(&key).await?, Some(vec![1, 2]));
/// # Ok(()) }
/// ```
pub struct RedisStore<V> {
    backend: RedisBackend,
    policy: FailurePolicy,
    engaged: Arc<AtomicBool>,
    turns: Arc<Turns<V>>,
    _values: PhantomData<fn() -> V>,
}

/// Queues for the updates of this process, one per key stripe (see
/// [`RedisStore`]): waiting here costs nothing in Redis, where colliding updates
/// cost a read, a failed swap and a pause each. Keys are striped, not mapped: the
/// queues are few and fixed, whatever the number of sessions. Each queue remembers
/// the values its last updates wrote (at most [`REMEMBERED_PER_STRIPE`] keys), so
/// the next update of such a key can try its compare-and-set at once, without
/// reading or decoding first (one round trip, not two).
struct Turns<V> {
    queues: Box<[tokio::sync::Mutex<Vec<Written<V>>>]>,
    hasher: std::hash::RandomState,
}

/// Keys whose last written value a queue of [`Turns`] remembers, oldest forgotten
/// first: 4,096 in all, so a few thousand active sessions skip their read.
const REMEMBERED_PER_STRIPE: usize = 16;

/// The last value an update wrote through a queue of [`Turns`], encoded and not.
struct Written<V> {
    key: String,
    bytes: Vec<u8>,
    value: V,
}

/// Stripes of [`Turns`]: two sessions rarely share one among the requests in flight.
const TURN_STRIPES: usize = 256;

impl<V> Turns<V> {
    fn new() -> Self {
        Turns {
            queues: (0..TURN_STRIPES)
                .map(|_| tokio::sync::Mutex::new(Vec::new()))
                .collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn of(&self, key: &str) -> &tokio::sync::Mutex<Vec<Written<V>>> {
        use std::hash::BuildHasher;
        &self.queues[(self.hasher.hash_one(key) % TURN_STRIPES as u64) as usize]
    }
}

impl<V> Clone for RedisStore<V> {
    fn clone(&self) -> Self {
        RedisStore {
            backend: self.backend.clone(),
            policy: self.policy,
            engaged: self.engaged.clone(),
            turns: self.turns.clone(),
            _values: PhantomData,
        }
    }
}

impl<V> fmt::Debug for RedisStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.backend)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<V> RedisStore<V> {
    /// A store on `backend`, with the failure policy of `[store.sessions]`.
    pub fn new(backend: &RedisBackend) -> Self {
        RedisStore {
            policy: backend.config().sessions.on_failure,
            backend: backend.clone(),
            engaged: Arc::new(AtomicBool::new(false)),
            turns: Arc::new(Turns::new()),
            _values: PhantomData,
        }
    }

    /// Sets the failure policy.
    pub fn with_failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The backend.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    fn fail<T>(&self, e: StoreError, open: T) -> Result<T, StoreError> {
        // A value that does not decode is not an outage: report it whatever the policy.
        if matches!(e, StoreError::Corrupt(_)) {
            return Err(e);
        }
        self.backend.record_policy(&self.engaged, "sessions", self.policy);
        match self.policy {
            FailurePolicy::Open => Ok(open),
            FailurePolicy::Closed => Err(e),
        }
    }

    fn ok(&self) {
        self.backend.record_recovered(&self.engaged, "sessions");
    }
}

/// How often [`StateStore::update`] reads again after another replica wrote first.
const MAX_UPDATE_ATTEMPTS: usize = 12;

/// Compare and set: KEYS[1] becomes ARGV[2] for ARGV[3] ms if it still holds ARGV[1]
/// (or, when ARGV[4] is `1`, if it is still absent); answers 1 if it did.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local current = redis.call('GET', KEYS[1])
if (ARGV[4] == '1' and not current) or (ARGV[4] == '0' and current == ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#,
    )
});

/// Milliseconds of a TTL, at least 1.
pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl<V> RedisStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn get_async(&self, key: &StoreKey) -> Result<Option<V>, StoreError> {
        let k = &self.backend.key(key);
        let raw = self
            .backend
            .run(k, |mut c| async move { c.get::<_, Option<Vec<u8>>>(k).await })
            .await;
        match raw {
            Ok(None) => {
                self.ok();
                Ok(None)
            }
            Ok(Some(bytes)) => {
                self.ok();
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("value does not decode: {}", e.classify_str())))
            }
            Err(e) => self.fail(e, None),
        }
    }

    async fn insert_async(&self, key: &StoreKey, value: V, ttl: Duration) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(&value)
            .map_err(|e| StoreError::Corrupt(format!("value does not encode: {}", e.classify_str())))?;
        let k = &self.backend.key(key);
        let ms = ttl_millis(ttl);
        match self
            .backend
            .run(
                k,
                |mut c| async move { c.pset_ex::<_, _, ()>(k, bytes, ms).await },
            )
            .await
        {
            Ok(()) => {
                self.ok();
                Ok(())
            }
            Err(e) => self.fail(e, ()),
        }
    }

    /// Read, compute, then write only if the value is still the one read (one script:
    /// compare and set); another replica's write in between makes it start again.
    async fn update_async(
        &self,
        key: &StoreKey,
        ttl: Duration,
        f: &mut (dyn FnMut(Option<&V>) -> V + Send),
    ) -> Result<V, StoreError>
    where
        V: Clone,
    {
        let owned_key = self.backend.key(key);
        let k = &owned_key;
        let ms = ttl_millis(ttl);
        let mut turn = self.turns.of(k).lock().await;
        // What this process wrote last, if it was this key: tried first, unread.
        let mut remembered = turn.iter().position(|w| w.key == *k).map(|i| turn.remove(i));
        for attempt in 0..MAX_UPDATE_ATTEMPTS {
            if attempt >= 2 {
                // Writers that keep colliding take turns instead of racing again.
                tokio::time::sleep(Duration::from_millis(attempt as u64 / 2)).await;
            }
            let (current, prev) = match remembered.take() {
                Some(written) => (Some(written.bytes), Some(written.value)),
                None => {
                    let current = match self
                        .backend
                        .run(k, |mut c| async move { c.get::<_, Option<Vec<u8>>>(k).await })
                        .await
                    {
                        Ok(current) => current,
                        // Under `open` the value is computed afresh and not stored.
                        Err(e) => return self.fail(e, ()).map(|()| f(None)),
                    };
                    let prev = match &current {
                        Some(bytes) => Some(serde_json::from_slice::<V>(bytes).map_err(|e| {
                            StoreError::Corrupt(format!("value does not decode: {}", e.classify_str()))
                        })?),
                        None => None,
                    };
                    (current, prev)
                }
            };
            let next = f(prev.as_ref());
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| StoreError::Corrupt(format!("value does not encode: {}", e.classify_str())))?;
            let (expected, absent) = match &current {
                Some(bytes) => (bytes.as_slice(), "0"),
                None => (&[][..], "1"),
            };
            let written = &bytes[..];
            let swapped = self
                .backend
                .run(k, |mut c| async move {
                    SWAP.key(k)
                        .arg(expected)
                        .arg(written)
                        .arg(ms)
                        .arg(absent)
                        .invoke_async::<i64>(&mut c)
                        .await
                })
                .await;
            match swapped {
                Ok(1) => {
                    self.ok();
                    if turn.len() >= REMEMBERED_PER_STRIPE {
                        turn.remove(0);
                    }
                    turn.push(Written {
                        key: owned_key,
                        bytes,
                        value: next.clone(),
                    });
                    return Ok(next);
                }
                Ok(_) => continue,
                Err(e) => {
                    // Read but not stored: the caller still gets its value.
                    let _ = self.fail(e, ());
                    return Ok(next);
                }
            }
        }
        tracing::warn!(
            store = "redis",
            r#use = "sessions",
            attempts = MAX_UPDATE_ATTEMPTS,
            "value not stored: other replicas kept writing it first"
        );
        Err(StoreError::Unavailable("too many concurrent updates".into()))
    }

    async fn remove_async(&self, key: &StoreKey) -> Result<(), StoreError> {
        let k = &self.backend.key(key);
        match self
            .backend
            .run(k, |mut c| async move { c.del::<_, ()>(k).await })
            .await
        {
            Ok(()) => {
                self.ok();
                Ok(())
            }
            Err(e) => self.fail(e, ()),
        }
    }
}

impl<V> StateStore<V> for RedisStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn get<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<Option<V>, StoreError>> {
        Box::pin(self.get_async(key))
    }

    fn insert<'a>(
        &'a self,
        key: &'a StoreKey,
        value: V,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.insert_async(key, value, ttl))
    }

    fn remove<'a>(&'a self, key: &'a StoreKey) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.remove_async(key))
    }

    fn update<'a>(
        &'a self,
        key: &'a StoreKey,
        ttl: Duration,
        f: &'a mut (dyn FnMut(Option<&V>) -> V + Send),
    ) -> BoxFuture<'a, Result<V, StoreError>>
    where
        V: Clone + Send + 'a,
    {
        Box::pin(self.update_async(key, ttl, f))
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> &'static str;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        }
    }
}
