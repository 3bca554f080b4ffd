//! The session store trait: where session records live, as a trait object.

use std::fmt;
use std::time::Duration;

use tollgate_core::inventory::FieldSpec;
use tollgate_core::{BoxFuture, KeyedDigest, Pseudonym, StateStore, StoreError, StoreKey, Timestamp};

use crate::record::SessionRecord;

/// The store namespace of session records: keys are `tollgate:session:{digest}`.
pub const SESSION_NAMESPACE: &str = "session";

/// The store key of the session of a credential
/// ([`Principal::credential_key`](tollgate_core::Principal::credential_key)).
pub fn session_key(credential: &KeyedDigest) -> StoreKey {
    StoreKey::new(SESSION_NAMESPACE, credential)
}

/// Where the fingerprinting layer keeps [`SessionRecord`]s, keyed by the credential's
/// keyed digest. The layer holds it as an `Arc<dyn SessionStore>`.
///
/// Every [`StateStore<SessionRecord>`] is a `SessionStore` (a blanket impl): its
/// [`observe`](SessionStore::observe) is a `get` then an `insert` under
/// [`session_key`]. Two replicas serving one session at the same instant then each
/// write their own view and the last writer wins (one request's fingerprint may be
/// missing from the record). That is how a Redis store is used: give the layer
/// `Arc::new(RedisStore::<SessionRecord>::new(&backend))` (from `tollgate-redis`).
///
/// ```
/// use std::sync::Arc;
/// use tollgate_core::MemoryStore;
/// use tollgate_fingerprint::{SessionRecord, SessionStore};
///
/// // Core's in-process `StateStore`, standing in for a shared one.
/// let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::<SessionRecord>::new(10_000));
/// # let _ = store;
/// ```
///
/// An in-process store ([`MemorySessionStore`](crate::MemorySessionStore)) also
/// answers [`observe_immediate`](SessionStore::observe_immediate), so the request
/// path needs no future and a steady session costs no HMAC.
pub trait SessionStore: Send + Sync + 'static {
    /// A read-modify-write of the record of `credential`'s session: `f` gets the
    /// current record (`None` for a new or expired session) and returns the next,
    /// which the store keeps for `ttl` after this request; returns the next record.
    ///
    /// `f` may run more than once if the store retries a conflicting write, so it
    /// must do nothing but compute its result. An error means the record could not
    /// be read: the layer then applies its `on_store_failure` policy. A record computed
    /// but not saved is logged and returned, so the request still gets its verdict.
    fn observe<'a>(
        &'a self,
        credential: KeyedDigest,
        ttl: Duration,
        f: &'a mut (dyn FnMut(Option<&SessionRecord>) -> SessionRecord + Send),
    ) -> BoxFuture<'a, Result<SessionRecord, StoreError>>;

    /// The synchronous fast path of an in-process store: runs `f` on the
    /// [`SessionCell`] of `credential`'s session (an empty one for a new or expired
    /// session), atomically with respect to the session's other requests, and
    /// returns `Some(())`. `None` (the default) means only
    /// [`observe`](SessionStore::observe) can answer; `f` is then not called.
    ///
    /// `f` is short (no keyed hash in it): the layer computes what the cell lacks
    /// between two calls.
    ///
    /// `now` is the request's time on the layer's clock, read once per request.
    fn observe_immediate(
        &self,
        credential: KeyedDigest,
        now: Timestamp,
        f: &mut dyn FnMut(&mut SessionCell),
    ) -> Option<()> {
        let _ = (credential, now, f);
        None
    }

    /// The record of `credential`'s session as it stands, without observing a
    /// request (for showing a caller what is kept about them).
    fn record(&self, credential: KeyedDigest) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>>;

    /// How many sessions the store holds now, and its capacity, when it can tell at
    /// once (the in-process store); `None`, the default, for a remote store.
    fn size(&self) -> Option<(usize, usize)> {
        None
    }

    /// What the store keeps besides the records, for the layer's data inventory
    /// (the in-process store's caches). The default is nothing.
    fn inventory(&self) -> Vec<FieldSpec> {
        Vec::new()
    }
}

impl<S: StateStore<SessionRecord>> SessionStore for S {
    fn record(&self, credential: KeyedDigest) -> BoxFuture<'_, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(async move { self.get(&session_key(&credential)).await })
    }

    fn observe<'a>(
        &'a self,
        credential: KeyedDigest,
        ttl: Duration,
        f: &'a mut (dyn FnMut(Option<&SessionRecord>) -> SessionRecord + Send),
    ) -> BoxFuture<'a, Result<SessionRecord, StoreError>> {
        Box::pin(async move {
            let key = session_key(&credential);
            self.update(&key, SessionRecord::ttl(ttl), f).await
        })
    }
}

/// What an in-process [`SessionStore`] keeps per session: the [`SessionRecord`],
/// and, in memory only, the pseudonyms and keyed hashes last computed for the
/// session, so that a steady session costs no HMAC. The caches are tagged with
/// hashes under a random per-process key and never leave the process.
///
/// A store makes an empty cell with `SessionCell::default()` for a new session (and
/// for an expired one) and hands it to the layer through
/// [`SessionStore::observe_immediate`].
#[derive(Clone, Default)]
pub struct SessionCell {
    pub(crate) record: Option<SessionRecord>,
    /// The session pseudonym, for the epoch it carries.
    pub(crate) session: Option<Pseudonym>,
    /// What the last request's fingerprint input gave.
    pub(crate) fingerprint: Option<SeenInput>,
    /// (local hash of the network prefix, keyed hash).
    pub(crate) network: Option<(u64, u64)>,
}

impl SessionCell {
    /// The session's record; `None` before its first request.
    pub fn record(&self) -> Option<&SessionRecord> {
        self.record.as_ref()
    }
}

impl fmt::Debug for SessionCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionCell")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The keyed hashes of one fingerprint input, cached with the session.
#[derive(Clone, Copy)]
pub(crate) struct SeenInput {
    /// The input's local key (equal keys mean equal inputs).
    pub(crate) key: u64,
    /// The fingerprint's keyed hash.
    pub(crate) hash: u64,
    /// The fingerprint pseudonym, for the epoch it carries.
    pub(crate) pseudonym: Pseudonym,
    /// The keyed hash of the network prefix in the input. The input holds the
    /// prefix (or its absence), so the same input always has the same network.
    pub(crate) network: Option<u64>,
}
