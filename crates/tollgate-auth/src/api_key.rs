//! API keys, stored only as SHA-256 digests.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tollgate_core::clock::Timestamp;
use tollgate_core::{CredentialKind, Principal, Pseudonymizer, Scopes};

use crate::cache::Accepted;
use crate::policy::TierPolicy;

/// One API key: its id, the SHA-256 of the key, and what it grants.
///
/// The key itself is never stored; [`ApiKeyRecord::digest_of`] computes the digest
/// an operator puts in configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// The key's id: what the freeze list and the principal's credential digest use.
    pub id: String,
    /// The SHA-256 of the key.
    pub sha256: [u8; 32],
    /// The tier; `None` gives the layer's default tier.
    pub tier: Option<String>,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The owner, as the principal's subject; `None` uses the key id.
    pub subject: Option<String>,
}

impl fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("tier", &self.tier)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ApiKeyRecord {
    /// A record for the key whose SHA-256 is `sha256`.
    pub fn new(id: impl Into<String>, sha256: [u8; 32]) -> Self {
        ApiKeyRecord {
            id: id.into(),
            sha256,
            tier: None,
            scopes: Vec::new(),
            subject: None,
        }
    }

    /// A record from the lowercase or uppercase hex of the key's SHA-256.
    pub fn from_hex(id: impl Into<String>, sha256_hex: &str) -> Result<Self, hex::FromHexError> {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(sha256_hex.trim(), &mut sha256)?;
        Ok(Self::new(id, sha256))
    }

    /// Sets the tier.
    pub fn tier(mut self, tier: impl Into<String>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Sets the scopes.
    pub fn scopes<I: IntoIterator<Item = S>, S: Into<String>>(mut self, scopes: I) -> Self {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the owner used as the principal's subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The SHA-256 of `key`, as stored in records and configuration.
    ///
    /// ```
    /// use tollgate_auth::ApiKeyRecord;
    /// let digest = ApiKeyRecord::digest_of(b"tg_live_example");
    /// assert_eq!(hex::encode(digest).len(), 64);
    /// ```
    pub fn digest_of(key: &[u8]) -> [u8; 32] {
        Sha256::digest(key).into()
    }
}

pub(crate) struct ApiKeyEntry {
    record: ApiKeyRecord,
    scopes: Scopes,
    /// The principal, built for the pseudonym epoch it was first needed in.
    principal: ArcSwapOption<Accepted>,
}

impl ApiKeyEntry {
    /// The principal for this key, rebuilt when the pseudonym epoch has moved on.
    pub(crate) fn principal(&self, p: &Pseudonymizer, policy: &TierPolicy, now: Timestamp) -> Arc<Accepted> {
        let epoch = p.epoch_at(now);
        if let Some(current) = &*self.principal.load()
            && current.principal().subject().epoch() == epoch
        {
            return current.clone();
        }
        let tier = match &self.record.tier {
            Some(t) => policy.named(t),
            None => policy.default.clone(),
        };
        let subject = self.record.subject.as_deref().unwrap_or(&self.record.id);
        let principal = Arc::new(Accepted::new(
            Principal::new(p, CredentialKind::ApiKey, subject, self.record.id.as_bytes())
                .with_tier(tier)
                .with_scopes(self.scopes.clone()),
        ));
        self.principal.store(Some(principal.clone()));
        principal
    }
}

#[derive(Default)]
struct Table {
    /// By the first 8 bytes of the digest; the full digest is compared in constant time.
    buckets: HashMap<u64, Vec<Arc<ApiKeyEntry>>>,
    ids: HashMap<String, [u8; 32]>,
}

/// The API key store: records keyed by the SHA-256 of the key, looked up by digest
/// and compared in constant time. Cheap to clone; clones share the keys, and keys
/// added or removed at run time take effect on the next request.
///
/// ```
/// use tollgate_auth::{ApiKeyRecord, ApiKeys};
///
/// let keys = ApiKeys::new();
/// keys.insert(ApiKeyRecord::new("key-1", ApiKeyRecord::digest_of(b"secret-key")).tier("pro"));
/// assert!(keys.contains_id("key-1"));
/// assert!(keys.remove("key-1"));
/// ```
#[derive(Clone, Default)]
pub struct ApiKeys {
    table: Arc<ArcSwap<Table>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.table.load().ids.len())
            .finish()
    }
}

fn bucket(digest: &[u8; 32]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl ApiKeys {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `records`.
    pub fn from_records(records: impl IntoIterator<Item = ApiKeyRecord>) -> Self {
        let keys = Self::new();
        for r in records {
            keys.insert(r);
        }
        keys
    }

    /// Adds a key, replacing any key with the same id or digest.
    pub fn insert(&self, record: ApiKeyRecord) {
        self.table.rcu(|current| {
            let mut next = clone_table(current);
            remove_from(&mut next, &record.id);
            let digest = record.sha256;
            remove_digest(&mut next, &digest);
            next.ids.insert(record.id.clone(), digest);
            next.buckets
                .entry(bucket(&digest))
                .or_default()
                .push(Arc::new(ApiKeyEntry {
                    scopes: Scopes::new(&record.scopes),
                    record: record.clone(),
                    principal: ArcSwapOption::empty(),
                }));
            next
        });
    }

    /// Removes the key with this id; returns whether there was one.
    pub fn remove(&self, id: &str) -> bool {
        let mut found = false;
        self.table.rcu(|current| {
            let mut next = clone_table(current);
            found = remove_from(&mut next, id);
            next
        });
        found
    }

    /// True if a key with this id is stored.
    pub fn contains_id(&self, id: &str) -> bool {
        self.table.load().ids.contains_key(id)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.table.load().ids.len()
    }

    /// True if there are no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for a presented key: SHA-256, bucket by digest prefix, then a
    /// constant-time comparison of the whole digest.
    pub(crate) fn lookup(&self, presented: &[u8]) -> Option<Arc<ApiKeyEntry>> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let table = self.table.load();
        let candidates = table.buckets.get(&bucket(&digest))?;
        let mut found = None;
        for entry in candidates {
            if bool::from(entry.record.sha256.ct_eq(&digest)) {
                found = Some(entry.clone());
            }
        }
        found
    }
}

fn clone_table(t: &Table) -> Table {
    Table {
        buckets: t.buckets.clone(),
        ids: t.ids.clone(),
    }
}

fn remove_from(t: &mut Table, id: &str) -> bool {
    let Some(digest) = t.ids.remove(id) else {
        return false;
    };
    remove_digest(t, &digest);
    true
}

fn remove_digest(t: &mut Table, digest: &[u8; 32]) {
    let b = bucket(digest);
    if let Some(list) = t.buckets.get_mut(&b) {
        list.retain(|e| {
            let keep = e.record.sha256 != *digest;
            if !keep {
                t.ids.remove(&e.record.id);
            }
            keep
        });
        if list.is_empty() {
            t.buckets.remove(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tollgate_core::PseudonymSecret;

    #[test]
    fn lookup_by_digest() {
        let keys = ApiKeys::new();
        keys.insert(
            ApiKeyRecord::new("k1", ApiKeyRecord::digest_of(b"alpha"))
                .tier("pro")
                .scopes(["read"]),
        );
        keys.insert(ApiKeyRecord::new("k2", ApiKeyRecord::digest_of(b"beta")));
        assert!(keys.lookup(b"alpha").is_some());
        assert!(keys.lookup(b"alphA").is_none());
        let p = Pseudonymizer::new(
            PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
            Duration::from_secs(60),
        );
        let entry = keys.lookup(b"alpha").unwrap();
        let now = tollgate_core::Clock::now(&tollgate_core::SystemClock);
        let a = entry.principal(&p, &TierPolicy::default(), now);
        assert_eq!(a.principal().tier().as_str(), "pro");
        assert!(a.principal().scopes().contains("read"));
        assert!(Arc::ptr_eq(&a, &entry.principal(&p, &TierPolicy::default(), now)));
        // Replacing k1's key drops the old digest.
        keys.insert(ApiKeyRecord::new("k1", ApiKeyRecord::digest_of(b"gamma")));
        assert!(keys.lookup(b"alpha").is_none());
        assert!(keys.lookup(b"gamma").is_some());
        assert_eq!(keys.len(), 2);
        assert!(keys.remove("k2"));
        assert!(keys.lookup(b"beta").is_none());
        assert!(!keys.remove("k2"));
    }
}
