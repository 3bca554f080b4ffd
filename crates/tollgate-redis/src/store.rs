//! `RedisStore<V>`: the [`StateStore`] on Redis, for session records and other values.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{AsyncCommands, Script};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tollgate_core::{BoxFuture, FailurePolicy, StateStore, StoreError, StoreKey};

use crate::backend::RedisBackend;
use crate::script::ScriptCall;

/// A [`StateStore`] on Redis: values as JSON under their [`StoreKey`], with the
/// `[store] namespace` inserted (`tollgate:[ns:]session:{digest}` for session records),
/// each with its TTL set in Redis (`SET … PX`), so Redis drops them by itself.
///
/// [`StateStore::update`] is atomic across replicas: it reads the value, computes
/// the next, and writes it with a compare-and-set script only if the value is still
/// the one read, reading again otherwise (up to 12 times, pausing a little after
/// the second collision). Two replicas updating one
/// session record at once therefore both count, where a plain read then write would
/// let the last writer erase the other's update. Within one process, the updates of
/// a key are applied in turn to the value this process wrote last and written with
/// one swap each, without reading first: a steady session costs one round trip per
/// update. Updates that arrive while a write of their key is in flight are applied
/// at once to the newest value and written together by one swap when it lands, so a
/// client with many requests in flight on one session costs a few round trips in
/// all, not one after another per request (were the updates to wait for each
/// other's round trip, one session could not pass about one request per round trip
/// in each replica). When another replica wrote in between, the swap fails and every
/// update it carried starts over: they read in turn, and once one has stored the
/// value it read, the rest go on from that value without reading, so they do not
/// collide with the updates arriving meanwhile.
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

/// The updates of this process, by key stripe: what each stripe's keys were last
/// written as, and the gate of updates that must read first. Keys are striped, not
/// mapped: the stripes are few and fixed, whatever the number of sessions.
struct Turns<V> {
    stripes: Box<[Stripe<V>]>,
    hasher: std::hash::RandomState,
}

struct Stripe<V> {
    /// Updates of keys without a [`Slot`] read, then swap, one at a time: colliding
    /// in Redis would cost each a read, a failed swap and a pause.
    gate: tokio::sync::Mutex<()>,
    /// The stripe's keys whose value this process knows, at most
    /// [`REMEMBERED_PER_STRIPE`]; when full, the first remembered of the idle ones
    /// makes room.
    slots: std::sync::Mutex<Vec<Slot<V>>>,
}

/// Keys a stripe remembers: 4,096 in all, so a few thousand active sessions skip
/// their read.
const REMEMBERED_PER_STRIPE: usize = 16;

/// Stripes of [`Turns`]: two sessions rarely share one among the requests in flight.
const TURN_STRIPES: usize = 256;

/// One key's value as this process knows it, and its write in flight.
struct Slot<V> {
    key: String,
    /// The newest value: in Redis, or being written, or to be written next.
    head: V,
    /// What Redis holds, encoded: the expected value of the next swap (taken by the
    /// write in flight, put back by it when the swap lands).
    stored: Vec<u8>,
    writing: bool,
    /// Updates applied to `head` while a write was in flight, told how the write
    /// that carries them ends (`Some(true)`: stored).
    waiting: Option<watch::Sender<Option<bool>>>,
}

impl<V> Slot<V> {
    fn idle(&self) -> bool {
        !self.writing && self.waiting.is_none()
    }
}

/// How an update starts when its key has a [`Slot`].
enum Start<V> {
    /// Write `next` over `expected` now.
    Write { next: V, expected: Vec<u8> },
    /// `next` is carried by the write after the one in flight.
    Wait {
        next: V,
        outcome: watch::Receiver<Option<bool>>,
    },
}

/// Updates applied while a write was in flight, to be written after it.
struct Batch<V> {
    expected: Vec<u8>,
    value: V,
    waiting: watch::Sender<Option<bool>>,
}

impl<V> Turns<V> {
    fn new() -> Self {
        Turns {
            stripes: (0..TURN_STRIPES)
                .map(|_| Stripe {
                    gate: tokio::sync::Mutex::new(()),
                    slots: std::sync::Mutex::new(Vec::new()),
                })
                .collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn of(&self, key: &str) -> &Stripe<V> {
        use std::hash::BuildHasher;
        &self.stripes[(self.hasher.hash_one(key) % TURN_STRIPES as u64) as usize]
    }
}

impl<V> Stripe<V> {
    /// The slots; an update that panicked under the lock left them whole.
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot<V>>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets `key` (what Redis holds under it is no longer known); the updates
    /// waiting on its write start over.
    fn forget(&self, key: &str) {
        let mut slots = self.slots();
        if let Some(i) = slots.iter().position(|s| s.key == key)
            && let Some(waiting) = slots.swap_remove(i).waiting
        {
            let _ = waiting.send(Some(false));
        }
    }

    /// Remembers that Redis holds `stored` (`value`) under `key`, after a read and a
    /// swap: replaces an idle slot, leaves one whose write is in flight (its swap
    /// will fail and its updates read again).
    fn remember(&self, key: &str, stored: Vec<u8>, value: V) {
        let mut slots = self.slots();
        match slots.iter_mut().find(|s| s.key == key) {
            Some(slot) if slot.idle() => {
                slot.head = value;
                slot.stored = stored;
            }
            Some(_) => {}
            None => {
                if slots.len() >= REMEMBERED_PER_STRIPE {
                    match slots.iter().position(Slot::idle) {
                        Some(i) => drop(slots.remove(i)),
                        None => return,
                    }
                }
                slots.push(Slot {
                    key: key.to_owned(),
                    head: value,
                    stored,
                    writing: false,
                    waiting: None,
                });
            }
        }
    }
}

/// Forgets the key of a write dropped before its swap answered: what Redis holds is
/// then unknown.
struct WriteGuard<'a, V> {
    stripe: &'a Stripe<V>,
    key: &'a str,
    armed: bool,
}

impl<V> Drop for WriteGuard<'_, V> {
    fn drop(&mut self) {
        if self.armed {
            self.stripe.forget(self.key);
        }
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
                decode(&bytes).map(Some)
            }
            Err(e) => self.fail(e, None),
        }
    }

    async fn insert_async(&self, key: &StoreKey, value: V, ttl: Duration) -> Result<(), StoreError> {
        let bytes = encode(&value)?;
        let k = &self.backend.key(key);
        let ms = ttl_millis(ttl);
        self.turns.of(k).forget(k);
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

    /// Applies `f` to the value this process knows for the key and swaps the result
    /// in, or reads, computes, then writes only if the value is still the one read
    /// (one script: compare and set); another replica's write in between makes it
    /// start again.
    async fn update_async(
        &self,
        key: &StoreKey,
        ttl: Duration,
        f: &mut (dyn FnMut(Option<&V>) -> V + Send),
    ) -> Result<V, StoreError>
    where
        V: Clone,
    {
        let k = self.backend.key(key);
        let ms = ttl_millis(ttl);
        if let Some(started) = start(self.turns.of(&k), &k, f)
            && let Some(done) = self.finish_started(started, &k, ms).await
        {
            return done;
        }
        self.read_and_swap(&k, ms, f).await
    }

    /// Ends an update [`start`] began: `Some` once it is stored (or failed under the
    /// policy), `None` when the write carrying it failed and it must start over.
    async fn finish_started(&self, started: Start<V>, k: &str, ms: u64) -> Option<Result<V, StoreError>>
    where
        V: Clone,
    {
        match started {
            Start::Write { next, expected } => match self.write(k, expected, &next, ms).await {
                Ok(true) => Some(Ok(next)),
                Ok(false) => None,
                Err(e) => Some(self.fail(e, ()).map(|()| next)),
            },
            Start::Wait { next, mut outcome } => {
                // A sender dropped unanswered (its task ended early) counts as a failed write.
                match outcome.wait_for(Option::is_some).await {
                    Ok(stored) if *stored == Some(true) => Some(Ok(next)),
                    _ => None,
                }
            }
        }
    }

    /// Swaps `value` in for `expected` under `k`, whose slot this call writes; on
    /// failure the slot is forgotten and the updates that waited meanwhile start over.
    /// On success, those updates are written next by a task of their own (this
    /// caller is done), and so on while more arrive.
    async fn write(&self, k: &str, expected: Vec<u8>, value: &V, ms: u64) -> Result<bool, StoreError>
    where
        V: Clone,
    {
        let (stored, mut next) = self.write_once(k, expected, value, ms).await;
        if next.is_some() {
            let (store, key) = (self.clone(), k.to_owned());
            tokio::spawn(async move {
                while let Some(Batch {
                    expected,
                    value,
                    waiting,
                }) = next
                {
                    let stored;
                    (stored, next) = store.write_once(&key, expected, &value, ms).await;
                    let _ = waiting.send(Some(matches!(stored, Ok(true))));
                }
            });
        }
        stored
    }

    /// One swap of [`RedisStore::write`], and the batch to write after it.
    async fn write_once(
        &self,
        k: &str,
        expected: Vec<u8>,
        value: &V,
        ms: u64,
    ) -> (Result<bool, StoreError>, Option<Batch<V>>)
    where
        V: Clone,
    {
        let stripe = self.turns.of(k);
        let mut guard = WriteGuard {
            stripe,
            key: k,
            armed: true,
        };
        let swapped = match encode(value) {
            Ok(bytes) => self
                .swap(k, Some(&expected), &bytes, ms)
                .await
                .map(|s| s.then_some(bytes)),
            Err(e) => Err(e),
        };
        guard.armed = false;
        let bytes = match swapped {
            Ok(Some(bytes)) => bytes,
            other => {
                stripe.forget(k);
                return (other.map(|_| false), None);
            }
        };
        self.ok();
        let mut slots = stripe.slots();
        let Some(slot) = slots.iter_mut().find(|s| s.key == k) else {
            return (Ok(true), None);
        };
        let batch = match slot.waiting.take() {
            Some(waiting) => Some(Batch {
                expected: bytes,
                value: slot.head.clone(),
                waiting,
            }),
            None => {
                slot.stored = bytes;
                slot.writing = false;
                None
            }
        };
        (Ok(true), batch)
    }

    /// The update of a key this process does not know: read, compute, swap; again,
    /// up to [`MAX_UPDATE_ATTEMPTS`] times, while other replicas write first.
    async fn read_and_swap(
        &self,
        k: &str,
        ms: u64,
        f: &mut (dyn FnMut(Option<&V>) -> V + Send),
    ) -> Result<V, StoreError>
    where
        V: Clone,
    {
        let stripe = self.turns.of(k);
        for attempt in 0..MAX_UPDATE_ATTEMPTS {
            let turn = stripe.gate.lock().await;
            // An update that had the turn before stored the value it read: go on from
            // it like any update of a known key, rather than read and collide with
            // the updates that already do.
            if let Some(started) = start(stripe, k, f) {
                drop(turn);
                match self.finish_started(started, k, ms).await {
                    Some(done) => return done,
                    None => continue,
                }
            }
            if attempt >= 2 {
                // Writers that keep colliding take turns instead of racing again.
                tokio::time::sleep(Duration::from_millis(attempt as u64 / 2)).await;
            }
            let current = match self
                .backend
                .run(k, |mut c| async move { c.get::<_, Option<Vec<u8>>>(k).await })
                .await
            {
                Ok(current) => current,
                // Under `open` the value is computed afresh and not stored.
                Err(e) => return self.fail(e, ()).map(|()| f(None)),
            };
            let prev: Option<V> = current.as_deref().map(decode).transpose()?;
            let next = f(prev.as_ref());
            let bytes = encode(&next)?;
            match self.swap(k, current.as_deref(), &bytes, ms).await {
                Ok(true) => {
                    self.ok();
                    stripe.remember(k, bytes, next.clone());
                    return Ok(next);
                }
                Ok(false) => continue,
                // Computed but not stored: the failure policy says whether it counts.
                Err(e) => return self.fail(e, ()).map(|()| next),
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

    /// Sets `k` to `written` if it still holds `expected` (`None`: if it is absent).
    async fn swap(
        &self,
        k: &str,
        expected: Option<&[u8]>,
        written: &[u8],
        ms: u64,
    ) -> Result<bool, StoreError> {
        let (expected, absent) = match expected {
            Some(bytes) => (bytes, "0"),
            None => (&[][..], "1"),
        };
        self.backend
            .run(k, |mut c| async move {
                ScriptCall::new(&SWAP, k)
                    .arg(expected)
                    .arg(written)
                    .arg(ms)
                    .arg(absent)
                    .invoke::<i64>(&mut c)
                    .await
            })
            .await
            .map(|swapped| swapped == 1)
    }

    async fn remove_async(&self, key: &StoreKey) -> Result<(), StoreError> {
        let k = &self.backend.key(key);
        self.turns.of(k).forget(k);
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

/// A value as stored: JSON.
fn encode<V: Serialize>(value: &V) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value)
        .map_err(|e| StoreError::Corrupt(format!("value does not encode: {}", e.classify_str())))
}

/// A stored value read back.
fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("value does not decode: {}", e.classify_str())))
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

/// Applies `f` to the value `stripe` knows for `k`, if it knows one, and says who
/// writes the result: this update now, or the write after the one in flight.
fn start<V: Clone>(
    stripe: &Stripe<V>,
    k: &str,
    f: &mut (dyn FnMut(Option<&V>) -> V + Send),
) -> Option<Start<V>> {
    let mut slots = stripe.slots();
    let slot = slots.iter_mut().find(|s| s.key == k)?;
    let next = f(Some(&slot.head));
    slot.head = next.clone();
    Some(if slot.writing {
        let waiting = slot.waiting.get_or_insert_with(|| watch::channel(None).0);
        Start::Wait {
            next,
            outcome: waiting.subscribe(),
        }
    } else {
        slot.writing = true;
        Start::Write {
            next,
            expected: std::mem::take(&mut slot.stored),
        }
    })
}
