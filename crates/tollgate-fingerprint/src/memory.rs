//! The in-process session store: one small cell per session, updated under its shard's lock.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tollgate_core::clock::duration_nanos;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::{BoxFuture, KeyedDigest, SharedClock, StoreError, StoreKey, system_clock};

use crate::record::SessionRecord;
use crate::store::{SessionCell, SessionStore, session_key};

/// The default session store: in process, bounded by a number of sessions, each
/// record dropped after the session TTL without a request (time to idle), on the
/// clock it is given (the layer's).
///
/// A session's read-modify-write runs under the lock of its shard, so concurrent
/// requests of one session are judged one after the other and none is lost. The
/// lock is held for the update only (tens of nanoseconds): the keyed hashes a new
/// session, a new epoch or new traits need are computed outside it, so requests of
/// different sessions wait for each other at most that long.
///
/// The cells sit in a few hash maps under short mutexes (sharded by the credential
/// digest), with each session's last request time. A session idle for the TTL
/// counts as absent at once, and is removed by a small sweep on every insertion of
/// a new session, by eviction, or by [`MemorySessionStore::run_pending_tasks`]. When
/// a shard is full, a new session replaces the sampled session idle the longest (an
/// expired one if the sample holds one). The TTL given to
/// [`SessionStore::observe`] is ignored: the store's own applies.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tollgate_core::{FakeClock, Timestamp};
/// use tollgate_fingerprint::MemorySessionStore;
///
/// let clock = FakeClock::new(Timestamp::from_secs(1_000));
/// let store = MemorySessionStore::with_clock(10_000, Duration::from_secs(3_600), Arc::new(clock));
/// assert_eq!(store.entry_count(), 0);
/// ```
#[derive(Clone)]
pub struct MemorySessionStore {
    inner: Arc<Inner>,
    ttl: Duration,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("sessions", &self.entry_count())
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// A folded-multiply hasher: the keys are keyed HMAC outputs nobody can choose, so a
/// fast non-cryptographic mix is enough and HashDoS is not a concern.
#[derive(Default, Clone, Copy)]
struct MixHasher(u64);

const MIX: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for MixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let full = u128::from(self.0 ^ n) * u128::from(MIX);
        self.0 = (full as u64) ^ ((full >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Shard {
    /// Where each session sits in `keys` and `cells`.
    map: HashMap<KeyedDigest, u32, BuildHasherDefault<MixHasher>>,
    /// Every key with the time of its session's last request (ns since the Unix
    /// epoch, on the store's clock), for the expiry check, sampling on eviction and
    /// the sweep.
    keys: Vec<(KeyedDigest, u64)>,
    /// The sessions' cells, in the order of `keys`.
    cells: Vec<SessionCell>,
    cap: usize,
    rng: u64,
    sweep: usize,
}

/// How many sessions an insertion into a full shard samples to choose a victim.
const EVICTION_SAMPLES: usize = 8;
/// How many sessions each insertion of a new session examines for expiry.
const SWEEP_PER_INSERT: usize = 4;
/// At most this many shards: enough that two cores rarely meet on one lock.
const MAX_SHARDS: u64 = 16;

impl Shard {
    fn new(cap: usize, rng: u64) -> Self {
        Shard {
            map: HashMap::default(),
            keys: Vec::new(),
            cells: Vec::new(),
            cap,
            rng,
            sweep: 0,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// The live cell of `key`, touched at `now`.
    fn get(&mut self, key: &KeyedDigest, now: u64, ttl: u64) -> Option<&mut SessionCell> {
        let pos = *self.map.get(key)? as usize;
        let seen = &mut self.keys[pos].1;
        if now.saturating_sub(*seen) >= ttl {
            return None;
        }
        *seen = now;
        Some(&mut self.cells[pos])
    }

    /// The cell of `key`, touched at `now`: a new, empty one if the session is
    /// unknown or has expired.
    fn touch(&mut self, key: KeyedDigest, now: u64, ttl: u64) -> &mut SessionCell {
        let pos = match self.map.get(&key) {
            Some(&pos) => {
                let pos = pos as usize;
                let seen = &mut self.keys[pos].1;
                if now.saturating_sub(*seen) >= ttl {
                    self.cells[pos] = SessionCell::default();
                }
                *seen = now;
                pos
            }
            None => self.insert(key, now, ttl),
        };
        &mut self.cells[pos]
    }

    /// Adds an empty cell for a new `key`; returns its position.
    fn insert(&mut self, key: KeyedDigest, now: u64, ttl: u64) -> usize {
        self.sweep(now, ttl);
        let pos = if self.keys.len() < self.cap {
            self.keys.push((key, now));
            self.cells.push(SessionCell::default());
            self.keys.len() - 1
        } else {
            // Full: replace the sampled session idle the longest.
            let len = self.keys.len() as u64;
            let mut victim = (self.next_rand() % len) as usize;
            for _ in 1..EVICTION_SAMPLES {
                if now.saturating_sub(self.keys[victim].1) >= ttl {
                    break;
                }
                let j = (self.next_rand() % len) as usize;
                if self.keys[j].1 < self.keys[victim].1 {
                    victim = j;
                }
            }
            self.map.remove(&self.keys[victim].0);
            self.keys[victim] = (key, now);
            self.cells[victim] = SessionCell::default();
            victim
        };
        self.map.insert(key, pos as u32);
        pos
    }

    fn sweep(&mut self, now: u64, ttl: u64) {
        for _ in 0..SWEEP_PER_INSERT {
            if self.keys.is_empty() {
                return;
            }
            if self.sweep >= self.keys.len() {
                self.sweep = 0;
            }
            let i = self.sweep;
            if now.saturating_sub(self.keys[i].1) >= ttl {
                self.remove_at(i);
            } else {
                self.sweep += 1;
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let (gone, _) = self.keys.swap_remove(i);
        self.cells.swap_remove(i);
        self.map.remove(&gone);
        if let Some((moved, _)) = self.keys.get(i)
            && let Some(pos) = self.map.get_mut(moved)
        {
            *pos = i as u32;
        }
    }

    fn remove(&mut self, key: &KeyedDigest) {
        if let Some(&pos) = self.map.get(key) {
            self.remove_at(pos as usize);
        }
    }

    fn purge(&mut self, now: u64, ttl: u64) {
        let mut i = 0;
        while i < self.keys.len() {
            if now.saturating_sub(self.keys[i].1) >= ttl {
                self.remove_at(i);
            } else {
                i += 1;
            }
        }
    }
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

struct Inner {
    shards: Box<[Padded]>,
    mask: u64,
    clock: SharedClock,
    ttl_nanos: u64,
}

impl MemorySessionStore {
    /// A store of at most `max_sessions` sessions, each dropped `ttl` after its last
    /// request, on the system clock.
    pub fn new(max_sessions: u64, ttl: Duration) -> Self {
        Self::with_clock(max_sessions, ttl, system_clock())
    }

    /// As [`MemorySessionStore::new`], with idle times read from `clock` (the
    /// layer's, so a [`FakeClock`](tollgate_core::FakeClock) expires sessions too).
    pub fn with_clock(max_sessions: u64, ttl: Duration, clock: SharedClock) -> Self {
        let ttl = Duration::from_nanos(duration_nanos(ttl).max(1_000_000_000));
        let max_sessions = max_sessions.max(1);
        // A power of two no larger than `max_sessions`, so every shard holds one or
        // more and the shard caps add up to `max_sessions` exactly.
        let n = MAX_SHARDS.min(1 << max_sessions.ilog2());
        let seed = RandomState::new().hash_one(0u64) | 1;
        let shards = (0..n)
            .map(|i| {
                Padded(Mutex::new(Shard::new(
                    (max_sessions / n + u64::from(i < max_sessions % n)) as usize,
                    seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
                )))
            })
            .collect();
        MemorySessionStore {
            inner: Arc::new(Inner {
                shards,
                mask: n - 1,
                clock,
                ttl_nanos: duration_nanos(ttl),
            }),
            ttl,
        }
    }

    fn now(&self) -> u64 {
        self.inner.clock.now().as_nanos()
    }

    fn shard(&self, key: &KeyedDigest) -> MutexGuard<'_, Shard> {
        let mut h = MixHasher::default();
        key.hash(&mut h);
        // The high bits pick the shard; the table uses the low ones.
        let i = (h.finish() >> 32) & self.inner.mask;
        self.inner.shards[i as usize]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the cell of a session (made empty if there is none), under the
    /// lock of its shard: keep `f` short (no keyed hash in it).
    pub(crate) fn with_cell<R>(&self, credential: KeyedDigest, f: impl FnOnce(&mut SessionCell) -> R) -> R {
        let now = self.now();
        let ttl = self.inner.ttl_nanos;
        f(self.shard(&credential).touch(credential, now, ttl))
    }

    /// The record of the session of `credential` ([`Principal::credential_key`](tollgate_core::Principal::credential_key)).
    pub fn record(&self, credential: &KeyedDigest) -> Option<SessionRecord> {
        let now = self.now();
        self.shard(credential)
            .get(credential, now, self.inner.ttl_nanos)?
            .record
    }

    /// Forgets the session of `credential`.
    pub fn remove(&self, credential: &KeyedDigest) {
        self.shard(credential).remove(credential);
    }

    /// The number of sessions (expired ones included until
    /// [`MemorySessionStore::run_pending_tasks`] or the sweep removes them).
    pub fn entry_count(&self) -> u64 {
        self.inner
            .shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).keys.len() as u64)
            .sum()
    }

    /// Removes expired sessions now; tests use it to read an exact count.
    pub fn run_pending_tasks(&self) {
        let now = self.now();
        for s in &self.inner.shards {
            s.0.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .purge(now, self.inner.ttl_nanos);
        }
    }

    /// Every live record with its store key (for admin listings; not for the request path).
    pub fn entries(&self) -> Vec<(StoreKey, SessionRecord)> {
        let now = self.now();
        let ttl = self.inner.ttl_nanos;
        let mut out = Vec::new();
        for s in &self.inner.shards {
            let shard = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                shard
                    .keys
                    .iter()
                    .zip(&shard.cells)
                    .filter(|((_, seen), _)| now.saturating_sub(*seen) < ttl)
                    .filter_map(|((digest, _), cell)| Some((session_key(digest), cell.record?))),
            );
        }
        out
    }
}

impl SessionStore for MemorySessionStore {
    fn observe<'a>(
        &'a self,
        credential: KeyedDigest,
        _ttl: Duration,
        f: &'a mut (dyn FnMut(Option<&SessionRecord>) -> SessionRecord + Send),
    ) -> BoxFuture<'a, Result<SessionRecord, StoreError>> {
        let next = self.with_cell(credential, |cell| {
            let next = f(cell.record.as_ref());
            cell.record = Some(next);
            next
        });
        Box::pin(std::future::ready(Ok(next)))
    }

    fn observe_immediate(&self, credential: KeyedDigest, f: &mut dyn FnMut(&mut SessionCell)) -> Option<()> {
        self.with_cell(credential, f);
        Some(())
    }

    fn inventory(&self) -> Vec<FieldSpec> {
        vec![FieldSpec {
            name: "session.cache",
            layer: "fingerprint",
            derived_from: "the session's and latest fingerprint's pseudonyms, and the keyed hashes of its latest fingerprint and prefix, tagged with hashes under a random per-process key",
            protection: Protection::Pseudonym,
            purpose: "spare a steady session's requests every HMAC; in process memory only, never stored elsewhere",
            retention: Retention::ttl(self.ttl),
            sinks: &[Sink::Store],
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u32) -> KeyedDigest {
        KeyedDigest::from_hex(&format!("{i:032x}")).unwrap()
    }

    /// Marks a cell, to know it again.
    fn mark(cell: &mut SessionCell, tag: u64) {
        cell.network = Some((tag, tag));
    }

    fn tag(cell: &SessionCell) -> Option<u64> {
        cell.network.map(|(t, _)| t)
    }

    /// Every key sits where `map` says, with its cell.
    fn consistent(s: &Shard) {
        assert_eq!(s.map.len(), s.keys.len());
        assert_eq!(s.cells.len(), s.keys.len());
        for (i, (k, _)) in s.keys.iter().enumerate() {
            assert_eq!(s.map[k] as usize, i);
        }
    }

    #[test]
    fn a_session_lives_until_idle_for_the_ttl() {
        let mut s = Shard::new(10, 7);
        mark(s.touch(digest(1), 100, 50), 1);
        // Each request restarts the idle time.
        assert_eq!(tag(s.get(&digest(1), 149, 50).unwrap()), Some(1));
        assert!(s.get(&digest(1), 198, 50).is_some());
        assert!(s.get(&digest(1), 248, 50).is_none(), "idle for the TTL");
        // An empty cell takes the expired one's place.
        assert_eq!(tag(s.touch(digest(1), 248, 50)), None);
        mark(s.touch(digest(1), 249, 50), 2);
        assert_eq!(tag(s.get(&digest(1), 250, 50).unwrap()), Some(2));
        assert_eq!(s.keys.len(), 1);
        consistent(&s);
    }

    #[test]
    fn a_full_shard_replaces_an_expired_or_idle_session() {
        let mut s = Shard::new(4, 7);
        for i in 0..4 {
            mark(s.touch(digest(i), 10 * u64::from(i), 1_000), u64::from(i));
        }
        // Sessions 1..3 stay busy; 0 is idle the longest.
        for i in 1..4 {
            assert!(s.get(&digest(i), 500, 1_000).is_some());
        }
        s.touch(digest(9), 600, 1_000);
        assert_eq!(s.keys.len(), 4);
        assert!(s.get(&digest(9), 600, 1_000).is_some());
        // With eight samples of four keys (and this seed), the idlest one goes.
        assert!(s.get(&digest(0), 600, 1_000).is_none());
        for i in 1..4 {
            assert_eq!(tag(s.get(&digest(i), 600, 1_000).unwrap()), Some(u64::from(i)));
        }
        consistent(&s);
        // Many more: never above the cap.
        for i in 10..200 {
            s.touch(digest(i), 700 + u64::from(i), 1_000);
            assert!(s.keys.len() <= 4);
            consistent(&s);
        }
        // The sweep removes expired sessions as new ones arrive; purge removes all.
        s.purge(10_000, 1_000);
        assert!(s.keys.is_empty());
        consistent(&s);
    }

    #[test]
    fn remove_keeps_positions_and_cells_right() {
        let mut s = Shard::new(10, 7);
        for i in 0..5 {
            mark(s.touch(digest(i), 1, 1_000), u64::from(i));
        }
        s.remove(&digest(1));
        s.remove(&digest(42));
        consistent(&s);
        assert!(s.get(&digest(1), 2, 1_000).is_none());
        for i in [0, 2, 3, 4] {
            assert_eq!(tag(s.get(&digest(i), 2, 1_000).unwrap()), Some(u64::from(i)));
        }
    }

    #[test]
    fn the_store_holds_at_most_its_sessions() {
        for max in [1, 3, 17, 100] {
            let store = MemorySessionStore::new(max, Duration::from_secs(60));
            for i in 0..1_000 {
                store.with_cell(digest(i), |c| mark(c, u64::from(i)));
                // The cell just made is the one found next.
                assert_eq!(store.with_cell(digest(i), |c| tag(c)), Some(u64::from(i)));
                assert!(store.entry_count() <= max);
            }
        }
    }
}
