//! The in-process session store: one small cell per session, in core's bounded
//! sharded map, updated under its shard's lock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tollgate_core::clock::duration_nanos;
use tollgate_core::inventory::{FieldSpec, Protection, Retention, Sink};
use tollgate_core::sharded::ShardedMap;
use tollgate_core::{BoxFuture, KeyedDigest, SharedClock, StoreError, StoreKey, Timestamp, system_clock};

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
/// The cells sit in a [`ShardedMap`], each with a deadline one TTL after its
/// session's last request. A session idle for the TTL counts as absent at once, and
/// is removed by a small sweep on every insertion of a new session, by eviction, or
/// by [`MemorySessionStore::purge_expired`]. When a shard is full, a new session
/// replaces the sampled session idle the longest (an expired one if the sample holds
/// one). The TTL given to [`SessionStore::observe`] is ignored: the store's own applies.
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
}

struct Inner {
    cells: ShardedMap<KeyedDigest, SessionCell>,
    clock: SharedClock,
    ttl: Duration,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("sessions", &self.entry_count())
            .field("ttl", &self.inner.ttl)
            .finish()
    }
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
        let max_sessions = usize::try_from(max_sessions).unwrap_or(usize::MAX);
        Self::from_map(ShardedMap::new(max_sessions), ttl, clock)
    }

    fn from_map(cells: ShardedMap<KeyedDigest, SessionCell>, ttl: Duration, clock: SharedClock) -> Self {
        MemorySessionStore {
            inner: Arc::new(Inner {
                cells,
                clock,
                ttl: Duration::from_nanos(duration_nanos(ttl).max(1_000_000_000)),
            }),
        }
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Runs `f` on the cell of a session (made empty if there is none or it
    /// expired), under the lock of its shard, and restarts its idle time: keep `f`
    /// short (no keyed hash in it).
    pub(crate) fn with_cell<R>(&self, credential: KeyedDigest, f: impl FnOnce(&mut SessionCell) -> R) -> R {
        self.with_cell_at(credential, self.now(), f)
    }

    /// [`Self::with_cell`] at a time the caller already read.
    fn with_cell_at<R>(
        &self,
        credential: KeyedDigest,
        now: Timestamp,
        f: impl FnOnce(&mut SessionCell) -> R,
    ) -> R {
        let deadline = now.saturating_add(self.inner.ttl);
        self.inner
            .cells
            .update(&credential, now, deadline, SessionCell::default, f)
    }

    /// The record of the session of `credential` ([`Principal::credential_key`](tollgate_core::Principal::credential_key)).
    /// Reading it does not restart the session's idle time.
    pub fn record(&self, credential: &KeyedDigest) -> Option<SessionRecord> {
        self.inner
            .cells
            .get_with(credential, self.now(), |cell| cell.record)
            .flatten()
    }

    /// Forgets the session of `credential`.
    pub fn remove(&self, credential: &KeyedDigest) {
        self.inner.cells.remove(credential, self.now());
    }

    /// The number of sessions (expired ones included until
    /// [`MemorySessionStore::purge_expired`] or the sweep removes them).
    pub fn entry_count(&self) -> u64 {
        self.inner.cells.len() as u64
    }

    /// Removes expired sessions now; tests use it to read an exact count.
    pub fn purge_expired(&self) {
        self.inner.cells.purge_expired(self.now());
    }

    /// Every live record with its store key (for admin listings; not for the request path).
    pub fn entries(&self) -> Vec<(StoreKey, SessionRecord)> {
        let mut out = Vec::new();
        self.inner.cells.for_each(self.now(), |digest, cell, _| {
            if let Some(record) = cell.record {
                out.push((session_key(digest), record));
            }
        });
        out
    }
}

impl SessionStore for MemorySessionStore {
    fn size(&self) -> Option<(usize, usize)> {
        Some((self.inner.cells.len(), self.inner.cells.capacity()))
    }

    fn record(&self, credential: KeyedDigest) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        let record = self
            .inner
            .cells
            .get_with(&credential, self.now(), |cell| cell.record)
            .flatten();
        Box::pin(std::future::ready(Ok(record)))
    }

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

    fn observe_immediate(
        &self,
        credential: KeyedDigest,
        now: Timestamp,
        f: &mut dyn FnMut(&mut SessionCell),
    ) -> Option<()> {
        self.with_cell_at(credential, now, f);
        Some(())
    }

    fn inventory(&self) -> Vec<FieldSpec> {
        vec![FieldSpec {
            name: "session.cache",
            layer: "fingerprint",
            derived_from: "the session's and latest fingerprint's pseudonyms, and the keyed hashes of its latest fingerprint and prefix, tagged with hashes under a random per-process key",
            protection: Protection::Pseudonym,
            purpose: "spare a steady session's requests every HMAC; in process memory only, never stored elsewhere",
            retention: Retention::ttl(self.inner.ttl),
            sinks: &[Sink::Store],
        }]
    }
}

#[cfg(test)]
mod tests {
    use tollgate_core::FakeClock;

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

    /// A store of `max` sessions in one shard (so eviction is exact), on `clock`.
    fn one_shard(max: usize, ttl_secs: u64, clock: &FakeClock) -> MemorySessionStore {
        MemorySessionStore::from_map(
            ShardedMap::builder(max).shards(1).seed(7).build(),
            Duration::from_secs(ttl_secs),
            Arc::new(clock.clone()),
        )
    }

    #[test]
    fn a_session_lives_until_idle_for_the_ttl_on_the_clock() {
        let clock = FakeClock::new(Timestamp::from_secs(100));
        let store = one_shard(10, 50, &clock);
        store.with_cell(digest(1), |c| mark(c, 1));
        // Each request restarts the idle time; reading the record does not.
        clock.set(Timestamp::from_secs(149));
        assert_eq!(store.with_cell(digest(1), |c| tag(c)), Some(1));
        clock.set(Timestamp::from_secs(198));
        assert!(store.entries().is_empty(), "no record yet, only caches");
        assert_eq!(store.with_cell(digest(1), |c| tag(c)), Some(1));
        clock.set(Timestamp::from_secs(248));
        // An empty cell takes the expired one's place.
        assert_eq!(store.with_cell(digest(1), |c| tag(c)), None, "idle for the TTL");
        assert_eq!(store.entry_count(), 1);
    }

    #[test]
    fn a_full_store_replaces_the_session_idle_the_longest() {
        let clock = FakeClock::new(Timestamp::from_secs(1_000));
        let store = one_shard(4, 1_000, &clock);
        for i in 0..4 {
            clock.set(Timestamp::from_secs(1_000 + 10 * u64::from(i)));
            store.with_cell(digest(i), |c| mark(c, u64::from(i)));
        }
        // Sessions 1..3 stay busy; 0 is idle the longest.
        clock.set(Timestamp::from_secs(1_500));
        for i in 1..4 {
            store.with_cell(digest(i), |_| ());
        }
        clock.set(Timestamp::from_secs(1_600));
        store.with_cell(digest(9), |c| mark(c, 9));
        assert_eq!(store.entry_count(), 4);
        assert_eq!(store.with_cell(digest(0), |c| tag(c)), None, "the idlest went");
        // Many more: never above the cap, and expired sessions are purged.
        for i in 10..200 {
            store.with_cell(digest(i), |_| ());
            assert!(store.entry_count() <= 4);
        }
        clock.set(Timestamp::from_secs(10_000));
        store.purge_expired();
        assert_eq!(store.entry_count(), 0);
    }

    #[test]
    fn remove_forgets_one_session() {
        let clock = FakeClock::new(Timestamp::from_secs(1));
        let store = one_shard(10, 1_000, &clock);
        for i in 0..5 {
            store.with_cell(digest(i), |c| mark(c, u64::from(i)));
        }
        store.remove(&digest(1));
        store.remove(&digest(42));
        assert_eq!(store.entry_count(), 4);
        assert_eq!(store.with_cell(digest(1), |c| tag(c)), None);
        for i in [0, 2, 3, 4] {
            assert_eq!(store.with_cell(digest(i), |c| tag(c)), Some(u64::from(i)));
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
