//! The verified-credential cache: a repeated token or API key skips verification.
//!
//! Keys are SipHash-1-3-128 of the credential under a random per-process 128-bit
//! key: a keyed 128-bit pseudo-random function of the credential, never the
//! credential itself. Without the key nobody can compute an entry's key, and the
//! only oracle is the service's answer, so forging a token that lands on a cached
//! entry is a blind guess at a 128-bit value; the lookup therefore needs no second
//! comparison (a stored SHA-256 would cost more than the whole hit). SipHash-1-3 is
//! the variant Rust's `HashMap` and CPython use; it hashes a 600-byte RS256 token
//! about twice as fast as SipHash-2-4 and three times as fast as SHA-256 here.
//! Values are ready-made [`Principal`]s behind an `Arc`, so a hit allocates nothing.
//!
//! The table is a few hash maps under short mutexes (sharded by the key's top
//! bits), each entry carrying its deadline on the layer's clock: a hit is one
//! uncontended lock, one probe and one clock read. Because the keys are already
//! uniformly random, the table hashes them with a fold of their two halves. When a
//! shard is full, a new entry replaces the sampled entry closest to its deadline
//! (an expired one if the sample holds one); expired entries count as absent at once
//! and are removed by a small sweep on every insertion.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use siphasher::sip128::{Hasher128, SipHasher13};
use tollgate_core::clock::{SharedClock, Timestamp};
use tollgate_core::{Principal, Pseudonymizer};

/// A verified principal, with the span text of its subject pseudonym made once (the
/// cached and API key paths hand the same one to every request).
#[derive(Debug)]
pub(crate) struct Accepted {
    principal: Principal,
    subject_hex: Box<str>,
}

impl Accepted {
    pub(crate) fn new(principal: Principal) -> Self {
        let subject_hex = principal.subject().to_hex().as_str().into();
        Accepted {
            principal,
            subject_hex,
        }
    }

    pub(crate) fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The subject pseudonym as hex: the value of the `principal` span field.
    pub(crate) fn subject_hex(&self) -> &str {
        &self.subject_hex
    }
}

/// What kind of credential a cache key was computed from, so that other kinds
/// cached later never share an entry with bearer tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Presented {
    Bearer = b'b',
}

#[derive(Clone)]
pub(crate) struct TokenCache {
    keys: (u64, u64),
    table: Arc<Table>,
    max_ttl: Duration,
    clock: SharedClock,
    epoch_nanos: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.table.len())
            .field("max_ttl", &self.max_ttl)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    pub(crate) fn new(
        max_entries: u64,
        max_ttl: Duration,
        clock: SharedClock,
        pseudonymizer: &Pseudonymizer,
    ) -> Self {
        let mut seed = [0u8; 24];
        // A failed OS random source leaves a zero key; refuse to run that way.
        getrandom::fill(&mut seed).expect("the operating system's random source works");
        let word = |i: usize| u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        TokenCache {
            keys: (word(0), word(1)),
            table: Arc::new(Table::new(max_entries, word(2))),
            max_ttl,
            clock,
            epoch_nanos: tollgate_core::clock::duration_nanos(pseudonymizer.epoch_length()).max(1),
        }
    }

    /// The cache key of a presented credential.
    #[inline]
    pub(crate) fn key(&self, kind: Presented, credential: &[u8]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.keys.0, self.keys.1);
        h.write_u8(kind as u8);
        h.write(credential);
        h.finish128().as_u128()
    }

    #[inline]
    pub(crate) fn get(&self, key: u128) -> Option<Arc<Accepted>> {
        self.table.get(key, self.clock.now().as_nanos())
    }

    /// Caches `principal` until the earliest of: `expires_at` (the token's `exp`),
    /// the configured maximum TTL, and the end of the pseudonym epoch its subject
    /// pseudonym was made in (so a cached principal never carries a stale pseudonym).
    pub(crate) fn insert(&self, key: u128, principal: Arc<Accepted>, expires_at: Option<Timestamp>) {
        let now = self.clock.now();
        let epoch_end = Timestamp::from_nanos(
            principal
                .principal()
                .subject()
                .epoch()
                .saturating_add(1)
                .saturating_mul(self.epoch_nanos),
        );
        let mut ttl = self.max_ttl.min(epoch_end.saturating_since(now));
        if let Some(exp) = expires_at {
            ttl = ttl.min(exp.saturating_since(now));
        }
        if ttl.is_zero() {
            return;
        }
        let deadline = now.saturating_add(ttl).as_nanos();
        self.table.insert(key, principal, deadline, now.as_nanos());
    }

    pub(crate) fn clear(&self) {
        self.table.clear();
    }

    pub(crate) fn max_ttl(&self) -> Duration {
        self.max_ttl
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.table.len()
    }
}

/// Hashes a key that is already a uniformly random 128-bit value: folds its halves.
#[derive(Default, Clone, Copy)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed; this is for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 ^= (n as u64) ^ ((n >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct Entry {
    principal: Arc<Accepted>,
    /// When the entry stops counting (ns on the layer's clock).
    deadline: u64,
    /// Where the key sits in `Shard::keys`.
    pos: u32,
}

struct Shard {
    map: HashMap<u128, Entry, BuildHasherDefault<FoldHasher>>,
    /// Every key with a copy of its deadline, for sampling on eviction and the sweep.
    keys: Vec<(u128, u64)>,
    cap: usize,
    rng: u64,
    sweep: usize,
}

/// How many keys an insertion into a full shard samples to choose a victim.
const EVICTION_SAMPLES: usize = 8;
/// How many keys each insertion examines for expiry.
const SWEEP_PER_INSERT: usize = 4;

impl Shard {
    fn next_rand(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    fn insert(&mut self, key: u128, principal: Arc<Accepted>, deadline: u64, now: u64) {
        self.sweep(now);
        if let Some(entry) = self.map.get_mut(&key) {
            entry.principal = principal;
            entry.deadline = deadline;
            self.keys[entry.pos as usize].1 = deadline;
            return;
        }
        let pos = if self.keys.len() < self.cap {
            self.keys.push((key, deadline));
            self.keys.len() - 1
        } else {
            // Full: replace the sampled entry closest to its deadline.
            let len = self.keys.len() as u64;
            let mut victim = (self.next_rand() % len) as usize;
            for _ in 1..EVICTION_SAMPLES {
                if self.keys[victim].1 <= now {
                    break;
                }
                let j = (self.next_rand() % len) as usize;
                if self.keys[j].1 < self.keys[victim].1 {
                    victim = j;
                }
            }
            self.map.remove(&self.keys[victim].0);
            self.keys[victim] = (key, deadline);
            victim
        };
        self.map.insert(
            key,
            Entry {
                principal,
                deadline,
                pos: pos as u32,
            },
        );
    }

    fn sweep(&mut self, now: u64) {
        for _ in 0..SWEEP_PER_INSERT {
            if self.keys.is_empty() {
                return;
            }
            if self.sweep >= self.keys.len() {
                self.sweep = 0;
            }
            let i = self.sweep;
            if self.keys[i].1 <= now {
                self.remove_at(i);
            } else {
                self.sweep += 1;
            }
        }
    }

    fn remove_at(&mut self, i: usize) {
        let (gone, _) = self.keys.swap_remove(i);
        self.map.remove(&gone);
        if let Some((moved, _)) = self.keys.get(i)
            && let Some(e) = self.map.get_mut(moved)
        {
            e.pos = i as u32;
        }
    }
}

#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The bounded table behind [`TokenCache`].
struct Table {
    shards: Box<[Padded]>,
    /// How far to shift a key right to get its shard index.
    shift: u32,
}

/// At most this many shards: enough that two cores rarely meet on one lock.
const MAX_SHARDS: u64 = 16;

impl Table {
    fn new(max_entries: u64, seed: u64) -> Self {
        let max_entries = max_entries.max(1);
        // A power of two no larger than `max_entries`, so every shard holds one or
        // more, and the shard caps add up to `max_entries` exactly.
        let n = MAX_SHARDS.min(1 << max_entries.ilog2());
        let cap = |i: u64| (max_entries / n + u64::from(i < max_entries % n)) as usize;
        // A zero xorshift state stays zero.
        let seed = seed | 1;
        let shards = (0..n)
            .map(|i| {
                Padded(Mutex::new(Shard {
                    map: HashMap::default(),
                    keys: Vec::new(),
                    cap: cap(i),
                    rng: seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1,
                    sweep: 0,
                }))
            })
            .collect();
        Table {
            shards,
            shift: 128 - n.trailing_zeros(),
        }
    }

    fn shard(&self, key: u128) -> std::sync::MutexGuard<'_, Shard> {
        // `checked_shr`: one shard means a shift by 128, which is index 0.
        let i = key.checked_shr(self.shift).unwrap_or(0) as usize;
        self.shards[i].0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: u128, now: u64) -> Option<Arc<Accepted>> {
        let shard = self.shard(key);
        match shard.map.get(&key) {
            Some(e) if e.deadline > now => Some(e.principal.clone()),
            _ => None,
        }
    }

    fn insert(&self, key: u128, principal: Arc<Accepted>, deadline: u64, now: u64) {
        self.shard(key).insert(key, principal, deadline, now);
    }

    fn clear(&self) {
        for s in &self.shards {
            let mut s = s.0.lock().unwrap_or_else(PoisonError::into_inner);
            s.map.clear();
            s.keys.clear();
            s.sweep = 0;
        }
    }

    /// Entries held, expired or not.
    fn len(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).keys.len() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_core::{CredentialKind, FakeClock, PseudonymSecret};

    #[test]
    fn entries_end_with_exp_and_epoch() {
        let clock = FakeClock::new(Timestamp::from_secs(86_400 * 10 + 100));
        let shared: SharedClock = Arc::new(clock.clone());
        let p = Pseudonymizer::with_clock(
            PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
            Duration::from_secs(86_400),
            shared.clone(),
        );
        let cache = TokenCache::new(100, Duration::from_secs(300), shared, &p);
        let principal = Arc::new(Accepted::new(Principal::new(&p, CredentialKind::Jwt, "s", b"j")));
        let k = cache.key(Presented::Bearer, b"tok");
        assert_ne!(k, cache.key(Presented::Bearer, b"tok2"));
        // Already expired: not cached.
        cache.insert(k, principal.clone(), Some(Timestamp::from_secs(86_400 * 10 + 50)));
        assert!(cache.get(k).is_none());
        cache.insert(
            k,
            principal.clone(),
            Some(Timestamp::from_secs(86_400 * 10 + 200)),
        );
        assert!(cache.get(k).is_some());
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.get(k).is_none());
        // Entries end at their deadline on the layer's clock.
        cache.insert(
            k,
            principal.clone(),
            Some(Timestamp::from_secs(86_400 * 10 + 200)),
        );
        clock.advance(Duration::from_secs(99));
        assert!(cache.get(k).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(cache.get(k).is_none(), "never past exp");
        // And at the end of the pseudonym epoch, whatever the token's exp.
        clock.set(Timestamp::from_secs(86_400 * 11 - 10));
        let principal = Arc::new(Accepted::new(Principal::new(&p, CredentialKind::Jwt, "s", b"j")));
        cache.insert(k, principal, Some(Timestamp::from_secs(86_400 * 12)));
        clock.advance(Duration::from_secs(9));
        assert!(cache.get(k).is_some());
        clock.advance(Duration::from_secs(1));
        assert!(cache.get(k).is_none(), "never past the epoch");
    }

    #[test]
    fn stays_bounded_and_keeps_live_entries_over_expired_ones() {
        let clock = FakeClock::new(Timestamp::from_secs(1_000));
        let shared: SharedClock = Arc::new(clock.clone());
        let p = Pseudonymizer::with_clock(
            PseudonymSecret::from_bytes(&[1; 32]).unwrap(),
            Duration::from_secs(86_400),
            shared.clone(),
        );
        for max in [1, 3, 100] {
            let cache = TokenCache::new(max, Duration::from_secs(300), shared.clone(), &p);
            let principal = Arc::new(Accepted::new(Principal::new(&p, CredentialKind::Jwt, "s", b"j")));
            for i in 0..5_000u32 {
                let k = cache.key(Presented::Bearer, &i.to_le_bytes());
                cache.insert(k, principal.clone(), None);
                assert!(cache.get(k).is_some(), "the newest entry is kept");
                assert!(cache.len() <= max, "{} > {max}", cache.len());
            }
        }
        // Once entries expire, they give way before live ones do.
        let cache = TokenCache::new(64, Duration::from_secs(300), shared.clone(), &p);
        let principal = Arc::new(Accepted::new(Principal::new(&p, CredentialKind::Jwt, "s", b"j")));
        let short: Vec<u128> = (0..48u32)
            .map(|i| cache.key(Presented::Bearer, &i.to_le_bytes()))
            .collect();
        for k in &short {
            cache.insert(*k, principal.clone(), Some(Timestamp::from_secs(1_010)));
        }
        clock.advance(Duration::from_secs(20));
        assert!(
            short.iter().all(|k| cache.get(*k).is_none()),
            "expired count as absent"
        );
        for i in 100..148u32 {
            let k = cache.key(Presented::Bearer, &i.to_le_bytes());
            cache.insert(k, principal.clone(), None);
        }
        assert!(cache.len() <= 64);
    }
}
