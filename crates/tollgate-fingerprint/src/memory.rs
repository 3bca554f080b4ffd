//! The in-process session store: one small cell per session, updated under its own lock.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tollgate_core::clock::duration_nanos;
use tollgate_core::{KeyedDigest, Pseudonym, StateStore, StoreError, StoreKey};

use crate::layer::{SESSION_NAMESPACE, session_key};
use crate::record::SessionRecord;

/// What the in-process store keeps per session: the record, and, in memory only, the
/// pseudonyms and keyed hashes last computed for it, so that a steady session costs
/// no HMAC. The caches are keyed by a hash under a random per-process key and never
/// leave the process.
#[derive(Default)]
pub(crate) struct Cell {
    pub record: Option<SessionRecord>,
    /// The session pseudonym, for the epoch it carries.
    pub session: Option<Pseudonym>,
    /// (local hash of the fingerprint input, keyed hash, pseudonym).
    pub fingerprint: Option<(u64, u64, Pseudonym)>,
    /// (local hash of the network prefix, keyed hash).
    pub network: Option<(u64, u64)>,
}

/// The default session store: in process, bounded by a number of sessions, each
/// record dropped after the session TTL without a request (moka, time to idle).
///
/// A session's read-modify-write runs under that session's own lock, so concurrent
/// requests of one session are judged one after the other and none is lost;
/// requests of different sessions never wait for each other.
///
/// It is also a [`StateStore`] of [`SessionRecord`]s under `tollgate:session:…` keys, for
/// admin tools; through that interface the TTL argument of `insert` is ignored (the
/// store's own TTL applies).
#[derive(Clone)]
pub struct MemorySessionStore {
    cache: moka::sync::Cache<KeyedDigest, Arc<Mutex<Cell>>>,
    ttl: Duration,
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySessionStore")
            .field("sessions", &self.cache.entry_count())
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl MemorySessionStore {
    /// A store of at most `max_sessions` sessions, each dropped `ttl` after its last request.
    pub fn new(max_sessions: u64, ttl: Duration) -> Self {
        let ttl = Duration::from_nanos(duration_nanos(ttl).max(1_000_000_000));
        MemorySessionStore {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_sessions)
                .time_to_idle(ttl)
                .build(),
            ttl,
        }
    }

    /// The cell of a session, made empty if there is none.
    pub(crate) fn cell(&self, credential: KeyedDigest) -> Arc<Mutex<Cell>> {
        if let Some(cell) = self.cache.get(&credential) {
            return cell;
        }
        self.cache
            .entry(credential)
            .or_insert_with(|| Arc::new(Mutex::new(Cell::default())))
            .into_value()
    }

    /// The record of the session of `credential` ([`Principal::credential_key`](tollgate_core::Principal::credential_key)).
    pub fn record(&self, credential: &KeyedDigest) -> Option<SessionRecord> {
        let cell = self.cache.get(credential)?;
        let cell = cell.lock().unwrap_or_else(PoisonError::into_inner);
        cell.record
    }

    /// The number of sessions (approximate until [`MemorySessionStore::run_pending_tasks`]).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Runs pending evictions and expiries now; tests use it to read an exact count.
    pub fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// Every live record with its store key (for admin listings; not for the request path).
    pub fn entries(&self) -> Vec<(StoreKey, SessionRecord)> {
        self.cache
            .iter()
            .filter_map(|(digest, cell)| {
                let record = cell.lock().unwrap_or_else(PoisonError::into_inner).record?;
                Some((session_key(&digest), record))
            })
            .collect()
    }

    fn digest_of(key: &StoreKey) -> Option<KeyedDigest> {
        let hex = key
            .as_str()
            .strip_prefix("tollgate:")?
            .strip_prefix(SESSION_NAMESPACE)?
            .strip_prefix(':')?;
        KeyedDigest::from_hex(hex)
    }
}

impl StateStore<SessionRecord> for MemorySessionStore {
    async fn get(&self, key: &StoreKey) -> Result<Option<SessionRecord>, StoreError> {
        Ok(Self::digest_of(key).and_then(|d| self.record(&d)))
    }

    async fn insert(&self, key: &StoreKey, value: SessionRecord, _ttl: Duration) -> Result<(), StoreError> {
        let digest =
            Self::digest_of(key).ok_or_else(|| StoreError::Corrupt("not a tollgate:session key".into()))?;
        let cell = self.cell(digest);
        cell.lock().unwrap_or_else(PoisonError::into_inner).record = Some(value);
        Ok(())
    }

    async fn remove(&self, key: &StoreKey) -> Result<(), StoreError> {
        if let Some(digest) = Self::digest_of(key) {
            self.cache.invalidate(&digest);
        }
        Ok(())
    }
}

/// A hash under a random per-process key, for in-memory cache keys only.
#[derive(Clone, Default)]
pub(crate) struct LocalHasher(std::collections::hash_map::RandomState);

impl LocalHasher {
    pub(crate) fn hash(&self, bytes: &[u8]) -> u64 {
        self.0.hash_one(bytes)
    }
}
