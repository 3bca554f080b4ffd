//! The freeze list: lock a credential or a subject at once.
//!
//! Entries are keyed by [`KeyedDigest`]s, so the list never holds a raw key id, token
//! id or subject. The authentication layer checks it on every request, cached token
//! or not; the fingerprinting and anomaly layers can add to it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::clock::{SharedClock, Timestamp, system_clock};
use crate::principal::Principal;
use crate::pseudonym::{Domain, KeyedDigest, Pseudonymizer};
use crate::store::{BoxFuture, StoreError, StoreKey};

/// What is frozen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "digest", rename_all = "snake_case")]
pub enum FreezeTarget {
    /// One credential: an API key id or a token `jti` (see [`Principal::credential_key`]).
    Credential(KeyedDigest),
    /// Every credential of one subject (see [`Principal::subject_key`]).
    Subject(KeyedDigest),
}

impl FreezeTarget {
    /// The target for an API key id or token `jti`, hashed at once.
    pub fn credential(p: &Pseudonymizer, credential_id: &str) -> Self {
        FreezeTarget::Credential(p.digest(Domain::CREDENTIAL, credential_id.as_bytes()))
    }

    /// The target for a subject, hashed at once.
    pub fn subject(p: &Pseudonymizer, subject: &str) -> Self {
        FreezeTarget::Subject(p.digest(Domain::SUBJECT, subject.as_bytes()))
    }

    /// The targets that would freeze `principal`: its credential and its subject.
    pub fn of(principal: &Principal) -> [FreezeTarget; 2] {
        [
            FreezeTarget::Credential(principal.credential_key()),
            FreezeTarget::Subject(principal.subject_key()),
        ]
    }

    /// The target's store key (`tollgate:freeze-credential:…` or `tollgate:freeze-subject:…`).
    pub fn store_key(&self) -> StoreKey {
        match self {
            FreezeTarget::Credential(d) => StoreKey::new("freeze-credential", d),
            FreezeTarget::Subject(d) => StoreKey::new("freeze-subject", d),
        }
    }
}

/// One freeze.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// What is frozen.
    pub target: FreezeTarget,
    /// Why, as given by the operator or layer that froze it. It must not name the person.
    pub reason: String,
    /// When the freeze was made.
    pub frozen_at: Timestamp,
    /// When it lifts by itself; `None` holds until unfrozen.
    pub until: Option<Timestamp>,
}

impl Freeze {
    /// True if the freeze holds at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

/// A freeze list backend. Layers hold it as a [`SharedFreezeList`], so one list
/// serves every layer of a stack.
pub trait FreezeList: Send + Sync + 'static {
    /// The active freeze on `principal`'s credential or subject, if any.
    fn check<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<Option<Freeze>, StoreError>>;

    /// Adds or replaces a freeze.
    fn freeze(&self, freeze: Freeze) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Lifts the freeze on `target`; returns whether there was one.
    fn unfreeze<'a>(&'a self, target: &'a FreezeTarget) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Every active freeze.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Freeze>, StoreError>>;

    /// The answer of [`FreezeList::check`] when the backend can give it without
    /// waiting (an in-process list, a local replica); `None` when only `check` can
    /// answer. The authentication layer asks this first, so its fast path needs no
    /// boxed future. The default is `None`.
    fn check_immediate(&self, principal: &Principal) -> Option<Result<Option<Freeze>, StoreError>> {
        let _ = principal;
        None
    }
}

/// The freeze list every layer of a stack shares.
pub type SharedFreezeList = std::sync::Arc<dyn FreezeList>;

/// The in-process freeze list.
///
/// Reads are lock-free (a copy-on-write map behind an `ArcSwap`), since every request
/// reads it and freezes are rare. It is never evicted: a freeze that silently
/// disappeared would unfreeze a stolen key, so it is bounded by `max_entries` and a
/// freeze beyond that is refused with an error instead.
///
/// ```
/// # tokio_test_block_on(async {
/// use std::time::Duration;
/// use tollgate_core::freeze::{Freeze, FreezeList, FreezeTarget, MemoryFreezeList};
/// use tollgate_core::{CredentialKind, Principal, Pseudonymizer, PseudonymSecret, Timestamp};
///
/// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32]).unwrap(), Duration::from_secs(86_400));
/// let list = MemoryFreezeList::new(10_000);
/// let principal = Principal::new(&p, CredentialKind::ApiKey, "owner-1", b"key-1");
/// assert!(list.check(&principal).await.unwrap().is_none());
///
/// let target = FreezeTarget::credential(&p, "key-1");
/// list.freeze(Freeze { target, reason: "leaked".into(), frozen_at: Timestamp::ZERO, until: None }).await.unwrap();
/// assert!(list.check(&principal).await.unwrap().is_some());
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryFreezeList {
    entries: Arc<ArcSwap<HashMap<FreezeTarget, Freeze>>>,
    max_entries: usize,
    clock: SharedClock,
}

impl fmt::Debug for MemoryFreezeList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFreezeList")
            .field("entries", &self.entries.load().len())
            .field("max_entries", &self.max_entries)
            .finish()
    }
}

impl MemoryFreezeList {
    /// A freeze list of at most `max_entries` freezes, on the system clock.
    pub fn new(max_entries: usize) -> Self {
        Self::with_clock(max_entries, system_clock())
    }

    /// As [`MemoryFreezeList::new`], on the given clock.
    pub fn with_clock(max_entries: usize, clock: SharedClock) -> Self {
        MemoryFreezeList {
            entries: Arc::new(ArcSwap::from_pointee(HashMap::new())),
            max_entries,
            clock,
        }
    }

    /// The active freeze on `principal`, without a future: the same answer as
    /// [`FreezeList::check`], for callers on a synchronous path.
    pub fn check_now(&self, principal: &Principal) -> Option<Freeze> {
        let entries = self.entries.load();
        if entries.is_empty() {
            return None;
        }
        let now = self.clock.now();
        FreezeTarget::of(principal)
            .iter()
            .filter_map(|t| entries.get(t))
            .find(|f| f.is_active(now))
            .cloned()
    }

    fn modify<R>(&self, f: impl Fn(&mut HashMap<FreezeTarget, Freeze>) -> R) -> R {
        let now = self.clock.now();
        let mut result = None;
        self.entries.rcu(|current| {
            let mut next: HashMap<_, _> = current
                .iter()
                .filter(|(_, f)| f.is_active(now))
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            result = Some(f(&mut next));
            next
        });
        result.expect("rcu runs the closure at least once")
    }
}

impl FreezeList for MemoryFreezeList {
    fn check<'a>(&'a self, principal: &'a Principal) -> BoxFuture<'a, Result<Option<Freeze>, StoreError>> {
        Box::pin(std::future::ready(Ok(self.check_now(principal))))
    }

    fn check_immediate(&self, principal: &Principal) -> Option<Result<Option<Freeze>, StoreError>> {
        Some(Ok(self.check_now(principal)))
    }

    fn freeze(&self, freeze: Freeze) -> BoxFuture<'_, Result<(), StoreError>> {
        let max = self.max_entries;
        Box::pin(std::future::ready(self.modify(|map| {
            if map.len() >= max && !map.contains_key(&freeze.target) {
                return Err(StoreError::Unavailable(format!(
                    "freeze list is full ({max} entries)"
                )));
            }
            map.insert(freeze.target, freeze.clone());
            Ok(())
        })))
    }

    fn unfreeze<'a>(&'a self, target: &'a FreezeTarget) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(std::future::ready(Ok(
            self.modify(|map| map.remove(target).is_some())
        )))
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Freeze>, StoreError>> {
        let now = self.clock.now();
        let active = self
            .entries
            .load()
            .values()
            .filter(|f| f.is_active(now))
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(active)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, FakeClock};
    use crate::principal::CredentialKind;
    use crate::pseudonym::PseudonymSecret;
    use std::time::Duration;

    fn setup() -> (Pseudonymizer, FakeClock, MemoryFreezeList) {
        let clock = FakeClock::new(Timestamp::from_secs(1_000));
        let p = Pseudonymizer::with_clock(
            PseudonymSecret::from_bytes(&[9; 32]).unwrap(),
            Duration::from_secs(86_400),
            Arc::new(clock.clone()),
        );
        let list = MemoryFreezeList::with_clock(2, Arc::new(clock.clone()));
        (p, clock, list)
    }

    #[tokio::test]
    async fn subject_freeze_covers_every_credential() {
        let (p, clock, list) = setup();
        let a = Principal::new(&p, CredentialKind::Jwt, "sub-1", b"jti-a");
        let b = Principal::new(&p, CredentialKind::ApiKey, "sub-1", b"key-b");
        let other = Principal::new(&p, CredentialKind::ApiKey, "sub-2", b"key-c");
        let freeze = Freeze {
            target: FreezeTarget::subject(&p, "sub-1"),
            reason: "test".into(),
            frozen_at: clock.now(),
            until: None,
        };
        list.freeze(freeze).await.unwrap();
        assert!(list.check(&a).await.unwrap().is_some());
        assert!(list.check(&b).await.unwrap().is_some());
        assert!(list.check(&other).await.unwrap().is_none());
        assert!(list.unfreeze(&FreezeTarget::subject(&p, "sub-1")).await.unwrap());
        assert!(list.check(&a).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn freezes_expire_and_the_list_refuses_overflow() {
        let (p, clock, list) = setup();
        let principal = Principal::new(&p, CredentialKind::Jwt, "s", b"jti");
        let until = Some(clock.now().saturating_add(Duration::from_secs(60)));
        for id in ["jti", "other"] {
            let target = FreezeTarget::credential(&p, id);
            list.freeze(Freeze {
                target,
                reason: "t".into(),
                frozen_at: clock.now(),
                until,
            })
            .await
            .unwrap();
        }
        let third = Freeze {
            target: FreezeTarget::credential(&p, "third"),
            reason: "t".into(),
            frozen_at: clock.now(),
            until: None,
        };
        assert!(list.freeze(third.clone()).await.is_err());
        assert!(list.check(&principal).await.unwrap().is_some());
        clock.advance(Duration::from_secs(61));
        assert!(list.check(&principal).await.unwrap().is_none());
        assert!(list.list().await.unwrap().is_empty());
        // Expired freezes free their places.
        list.freeze(third).await.unwrap();
    }

    #[test]
    fn targets_serialize_as_digests() {
        let (p, _, _) = setup();
        let t = FreezeTarget::credential(&p, "key-1");
        let json = serde_json::to_string(&t).unwrap();
        assert!(!json.contains("key-1"));
        assert_eq!(serde_json::from_str::<FreezeTarget>(&json).unwrap(), t);
        assert!(t.store_key().as_str().starts_with("tollgate:freeze-credential:"));
    }
}
