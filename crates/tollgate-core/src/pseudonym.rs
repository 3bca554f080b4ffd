//! Keyed, rotating pseudonyms and stable keyed digests.
//!
//! Two outputs of one HMAC-SHA256 construction:
//! - [`Pseudonym`]: for logs and spans. Keyed per epoch (24 h by default), so a
//!   pseudonym links events only inside its epoch.
//! - [`KeyedDigest`]: for store keys (freeze list, rate-limit cells, sessions) whose
//!   state must outlive an epoch. Never logged by tollgate.
//!
//! Both are one-way: there is no accessor for the input.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use serde::{Serialize, Serializer};
use sha2::Sha256;

use crate::clock::{SharedClock, Timestamp, duration_nanos, system_clock};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC output kept in a [`Pseudonym`] (96 bits).
const PSEUDONYM_LEN: usize = 12;
/// Bytes of HMAC output kept in a [`KeyedDigest`] (128 bits).
const DIGEST_LEN: usize = 16;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// The environment variable read by [`PseudonymSecret::from_env`].
pub const SECRET_ENV: &str = "TOLLGATE_PSEUDONYM_SECRET";

/// What a pseudonym is of. Two domains never give the same pseudonym for the same
/// input, so a subject's pseudonym cannot be matched against a network's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Domain(&'static str);

impl Domain {
    /// A domain with its own name; names must be unique across the stack.
    pub const fn new(name: &'static str) -> Self {
        Domain(name)
    }

    /// The domain's name.
    pub const fn name(self) -> &'static str {
        self.0
    }

    /// A client's coarsened network prefix.
    pub const NETWORK: Domain = Domain("network");
    /// A principal's subject (`sub` claim, API key owner).
    pub const SUBJECT: Domain = Domain("subject");
    /// A credential: API key id, token `jti`, or token digest.
    pub const CREDENTIAL: Domain = Domain("credential");
    /// A session record.
    pub const SESSION: Domain = Domain("session");
    /// A session fingerprint over coarsened request traits.
    pub const FINGERPRINT: Domain = Domain("fingerprint");
    /// The RFC 7638 thumbprint of a DPoP key (RFC 9449) a token is bound to.
    pub const DPOP_KEY: Domain = Domain("dpop-key");
}

/// A keyed, truncated, epoch-bound pseudonym. Displays, debugs and serializes as
/// 24 hex characters; the input cannot be recovered from it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pseudonym {
    epoch: u64,
    bytes: [u8; PSEUDONYM_LEN],
}

impl Pseudonym {
    /// The key epoch this pseudonym was made in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The pseudonym as lowercase hex, without allocating.
    pub fn to_hex(&self) -> HexBuf<{ PSEUDONYM_LEN * 2 }> {
        HexBuf::encode(&self.bytes)
    }

    /// The pseudonym's first 64 bits, a ready key for in-process tables: keyed
    /// output, so as uniform and as unpredictable without the secret as the whole.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_core::{Domain, Pseudonymizer};
    ///
    /// let p = Pseudonymizer::ephemeral(Duration::from_secs(3600)).unwrap();
    /// let a = p.pseudonym(Domain::SUBJECT, b"alice");
    /// assert_eq!(a.leading_u64(), p.pseudonym(Domain::SUBJECT, b"alice").leading_u64());
    /// assert_ne!(a.leading_u64(), p.pseudonym(Domain::SUBJECT, b"bob").leading_u64());
    /// ```
    pub fn leading_u64(&self) -> u64 {
        leading_u64(&self.bytes)
    }
}

fn leading_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("digests are longer than 8 bytes"))
}

impl fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_hex().as_str())
    }
}

impl fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pseudonym({self})")
    }
}

impl Serialize for Pseudonym {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.to_hex().as_str())
    }
}

/// A stable keyed digest (128 bits) for store keys. It does not rotate with the
/// pseudonym epoch, so tollgate keeps it out of logs: see [`crate::store::StoreKey`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyedDigest([u8; DIGEST_LEN]);

impl KeyedDigest {
    /// The digest as lowercase hex, without allocating.
    pub fn to_hex(&self) -> HexBuf<{ DIGEST_LEN * 2 }> {
        HexBuf::encode(&self.0)
    }

    /// The digest's first 64 bits, a ready key for in-process tables (see
    /// [`Pseudonym::leading_u64`]).
    pub fn leading_u64(&self) -> u64 {
        leading_u64(&self.0)
    }

    /// Parses the hex form written by [`KeyedDigest::to_hex`].
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; DIGEST_LEN];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(KeyedDigest(out))
    }
}

impl Serialize for KeyedDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.to_hex().as_str())
    }
}

impl<'de> serde::Deserialize<'de> for KeyedDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyedDigest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a keyed digest is 32 hex digits"))
    }
}

impl fmt::Debug for KeyedDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyedDigest({})", self.to_hex().as_str())
    }
}

/// Lowercase hex of a fixed-size value, on the stack.
#[derive(Clone, Copy)]
pub struct HexBuf<const N: usize>([u8; N]);

impl<const N: usize> HexBuf<N> {
    pub(crate) fn encode(bytes: &[u8]) -> Self {
        let mut out = [0u8; N];
        // Cannot fail: N is always twice the input length at the call sites.
        hex::encode_to_slice(bytes, &mut out).expect("hex buffer is twice the input");
        HexBuf(out)
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).expect("hex is ascii")
    }
}

impl<const N: usize> fmt::Display for HexBuf<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The secret under which pseudonyms are keyed: at least 32 bytes.
#[derive(Clone)]
pub struct PseudonymSecret(Arc<[u8]>);

impl fmt::Debug for PseudonymSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymSecret(..)")
    }
}

/// Why a pseudonym secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("pseudonym secret is {0} bytes; it must be at least {MIN_SECRET_LEN}")]
    TooShort(usize),
    /// The environment variable is set but is not valid hex.
    #[error("{SECRET_ENV} must be hex (64 or more hex digits)")]
    NotHex,
    /// The operating system's random source failed.
    #[error("could not read the operating system's random source: {0}")]
    Random(String),
}

impl PseudonymSecret {
    /// A secret from raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort(bytes.len()));
        }
        Ok(PseudonymSecret(bytes.into()))
    }

    /// A secret from hex text (as kept in config files and environment variables).
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SecretError::NotHex)?;
        Self::from_bytes(&bytes)
    }

    /// The secret in [`SECRET_ENV`], if that variable is set.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var(SECRET_ENV) {
            Ok(text) => Self::from_hex(&text).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// 32 fresh random bytes from the operating system.
    pub fn random() -> Result<Self, SecretError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        Self::from_bytes(&bytes)
    }
}

struct EpochKey {
    epoch: u64,
    mac: HmacSha256,
}

struct Inner {
    /// Distinguishes pseudonymizers in the per-thread memo.
    id: u64,
    root: HmacSha256,
    digest_mac: HmacSha256,
    epoch_nanos: u64,
    clock: SharedClock,
    current: ArcSwap<EpochKey>,
    ephemeral: bool,
}

/// Makes [`Pseudonym`]s and [`KeyedDigest`]s. Cheap to clone (one `Arc`).
///
/// ```
/// use std::time::Duration;
/// use tollgate_core::pseudonym::{Domain, Pseudonymizer, PseudonymSecret};
///
/// let secret = PseudonymSecret::from_bytes(&[7u8; 32]).unwrap();
/// let p = Pseudonymizer::new(secret, Duration::from_secs(86_400));
/// let a = p.pseudonym(Domain::SUBJECT, b"alice@example.com");
/// assert_eq!(a, p.pseudonym(Domain::SUBJECT, b"alice@example.com"));
/// assert!(!a.to_string().contains("alice"));
/// ```
#[derive(Clone)]
pub struct Pseudonymizer(Arc<Inner>);

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("epoch", &Duration::from_nanos(self.0.epoch_nanos))
            .field("ephemeral", &self.0.ephemeral)
            .finish_non_exhaustive()
    }
}

/// The default pseudonym epoch: 24 hours.
pub const DEFAULT_EPOCH: Duration = Duration::from_secs(24 * 60 * 60);

impl Pseudonymizer {
    /// A pseudonymizer keyed by `secret`, rotating every `epoch`, on the system clock.
    pub fn new(secret: PseudonymSecret, epoch: Duration) -> Self {
        Self::with_clock(secret, epoch, system_clock())
    }

    /// As [`Pseudonymizer::new`], on the given clock.
    ///
    /// An `epoch` shorter than one second is raised to one second.
    pub fn with_clock(secret: PseudonymSecret, epoch: Duration, clock: SharedClock) -> Self {
        Self::build(secret, epoch, clock, false)
    }

    /// A pseudonymizer under a fresh random secret, for a single process.
    ///
    /// Logs a warning: its pseudonyms do not link across restarts or replicas.
    pub fn ephemeral(epoch: Duration) -> Result<Self, SecretError> {
        Self::ephemeral_with_clock(epoch, system_clock())
    }

    /// As [`Pseudonymizer::ephemeral`], on the given clock.
    pub fn ephemeral_with_clock(epoch: Duration, clock: SharedClock) -> Result<Self, SecretError> {
        tracing::warn!(
            setting = SECRET_ENV,
            "no pseudonym secret configured: using a random one; pseudonyms will not link across restarts or replicas"
        );
        Ok(Self::build(PseudonymSecret::random()?, epoch, clock, true))
    }

    fn build(secret: PseudonymSecret, epoch: Duration, clock: SharedClock, ephemeral: bool) -> Self {
        let root = HmacSha256::new_from_slice(&secret.0).expect("HMAC accepts any key length");
        let digest_key = derive(&root, b"tollgate/digest", &[]);
        let digest_mac = HmacSha256::new_from_slice(&digest_key).expect("HMAC accepts any key length");
        let epoch_nanos = duration_nanos(epoch).max(1_000_000_000);
        let epoch_index = clock.now().as_nanos() / epoch_nanos;
        let current = ArcSwap::from_pointee(epoch_key(&root, epoch_index));
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Pseudonymizer(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            root,
            digest_mac,
            epoch_nanos,
            clock,
            current,
            ephemeral,
        }))
    }

    /// True when the secret was generated at start rather than configured.
    pub fn is_ephemeral(&self) -> bool {
        self.0.ephemeral
    }

    /// The epoch length.
    pub fn epoch_length(&self) -> Duration {
        Duration::from_nanos(self.0.epoch_nanos)
    }

    /// The key epoch containing `at` (what [`Pseudonym::epoch`] reports).
    pub fn epoch_at(&self, at: Timestamp) -> u64 {
        at.as_nanos() / self.0.epoch_nanos
    }

    /// When `epoch` ends: pseudonyms made in it are stale from then on.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_core::{Pseudonymizer, PseudonymSecret, Timestamp};
    ///
    /// let p = Pseudonymizer::new(PseudonymSecret::from_bytes(&[1; 32])?, Duration::from_secs(86_400));
    /// let at = Timestamp::from_secs(86_400 * 3 + 5);
    /// assert_eq!(p.epoch_end(p.epoch_at(at)), Timestamp::from_secs(86_400 * 4));
    /// # Ok::<(), tollgate_core::pseudonym::SecretError>(())
    /// ```
    pub fn epoch_end(&self, epoch: u64) -> Timestamp {
        Timestamp::from_nanos(epoch.saturating_add(1).saturating_mul(self.0.epoch_nanos))
    }

    /// The pseudonym of `input` in `domain`, in the current epoch.
    pub fn pseudonym(&self, domain: Domain, input: &[u8]) -> Pseudonym {
        self.pseudonym_at(domain, input, self.0.clock.now())
    }

    /// The pseudonym of `input` in `domain`, in the epoch containing `at`.
    pub fn pseudonym_at(&self, domain: Domain, input: &[u8], at: Timestamp) -> Pseudonym {
        let epoch = self.epoch_at(at);
        let key = self.0.current.load();
        let mac = if key.epoch == epoch {
            key.mac.clone()
        } else {
            let fresh = epoch_key(&self.0.root, epoch);
            let mac = fresh.mac.clone();
            // Only move forward: a late caller asking for an old epoch must not
            // make every other caller re-derive the current key.
            if epoch > key.epoch {
                self.0.current.store(Arc::new(fresh));
            }
            mac
        };
        let out = finish(mac, domain, input);
        let mut bytes = [0u8; PSEUDONYM_LEN];
        bytes.copy_from_slice(&out[..PSEUDONYM_LEN]);
        Pseudonym { epoch, bytes }
    }

    /// As [`Pseudonymizer::pseudonym`], remembered in a per-thread table.
    ///
    /// Only for short, already coarsened inputs (network prefixes, at most
    /// [`MEMO_INPUT_LEN`] bytes): the table holds the input in this process's memory
    /// (at most 4,096 inputs per thread, never written anywhere) for as long as its
    /// entry is not reused. Longer inputs are not remembered.
    pub fn pseudonym_memoized(&self, domain: Domain, input: &[u8]) -> Pseudonym {
        if input.len() > MEMO_INPUT_LEN {
            return self.pseudonym(domain, input);
        }
        let now = self.0.clock.now();
        let epoch = self.epoch_at(now);
        let mut key = [0u8; MEMO_INPUT_LEN];
        key[..input.len()].copy_from_slice(input);
        let hash = memo_hash(self.0.id, domain, &key);
        let set = (hash >> (64 - MEMO_SETS.trailing_zeros())) as usize * MEMO_WAYS;
        let is_it = |e: &MemoEntry| {
            e.owner == self.0.id
                && e.domain == domain.0
                && usize::from(e.len) == input.len()
                && e.input == key
                && e.pseudonym.epoch == epoch
        };
        let hit = MEMO.with_borrow(|memo| {
            memo.get(set..set + MEMO_WAYS)?
                .iter()
                .flatten()
                .find(|e| is_it(e))
                .map(|e| e.pseudonym)
        });
        if let Some(pseudonym) = hit {
            return pseudonym;
        }
        let pseudonym = self.pseudonym_at(domain, input, now);
        MEMO.with_borrow_mut(|memo| {
            if memo.is_empty() {
                memo.resize(MEMO_SETS * MEMO_WAYS, None);
            }
            let ways = &mut memo[set..set + MEMO_WAYS];
            // An empty way, else one picked by the hash's high bits.
            let way = ways
                .iter()
                .position(Option::is_none)
                .unwrap_or(hash as usize % MEMO_WAYS);
            ways[way] = Some(MemoEntry {
                owner: self.0.id,
                domain: domain.0,
                len: input.len() as u8,
                input: key,
                pseudonym,
            });
        });
        pseudonym
    }

    /// The stable keyed digest of `input` in `domain`, for store keys.
    pub fn digest(&self, domain: Domain, input: &[u8]) -> KeyedDigest {
        let out = finish(self.0.digest_mac.clone(), domain, input);
        let mut bytes = [0u8; DIGEST_LEN];
        bytes.copy_from_slice(&out[..DIGEST_LEN]);
        KeyedDigest(bytes)
    }
}

/// The longest input [`Pseudonymizer::pseudonym_memoized`] remembers: an IPv6 prefix
/// in [`crate::coarsen::NetworkPrefix::to_bytes`] form.
pub const MEMO_INPUT_LEN: usize = 18;
/// The memo holds `MEMO_SETS` sets of `MEMO_WAYS` entries per thread (4,096 inputs,
/// about 320 KiB): 256 direct-mapped slots missed most requests once a few hundred
/// networks were active, and a miss costs an HMAC-SHA256 (about 7,000 instructions).
const MEMO_SETS: usize = 1024; // a power of two: the hash's top bits index it
const MEMO_WAYS: usize = 4;

#[derive(Clone, Copy)]
struct MemoEntry {
    owner: u64,
    domain: &'static str,
    len: u8,
    input: [u8; MEMO_INPUT_LEN],
    pseudonym: Pseudonym,
}

thread_local! {
    static MEMO: RefCell<Vec<Option<MemoEntry>>> = const { RefCell::new(Vec::new()) };
}

/// The memo hash of (pseudonymizer, domain, input): FNV-1a, then a multiplicative
/// mix whose high bits pick the set (FNV's low bits spread prefixes poorly).
fn memo_hash(owner: u64, domain: Domain, input: &[u8; MEMO_INPUT_LEN]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ owner;
    for &b in domain.0.as_bytes().iter().chain(input) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn epoch_key(root: &HmacSha256, epoch: u64) -> EpochKey {
    let key = derive(root, b"tollgate/epoch", &epoch.to_be_bytes());
    EpochKey {
        epoch,
        mac: HmacSha256::new_from_slice(&key).expect("HMAC accepts any key length"),
    }
}

fn derive(root: &HmacSha256, label: &[u8], context: &[u8]) -> [u8; 32] {
    let mut mac = root.clone();
    mac.update(label);
    mac.update(&[0]);
    mac.update(context);
    mac.finalize().into_bytes().into()
}

fn finish(mut mac: HmacSha256, domain: Domain, input: &[u8]) -> [u8; 32] {
    // Length-prefix the domain so ("ab", "c") and ("a", "bc") differ.
    mac.update(&(domain.0.len() as u32).to_be_bytes());
    mac.update(domain.0.as_bytes());
    mac.update(input);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;
    use std::sync::Arc;

    const DAY: Duration = Duration::from_secs(86_400);

    fn at(clock: &FakeClock, secret: u8) -> Pseudonymizer {
        let secret = PseudonymSecret::from_bytes(&[secret; 32]).unwrap();
        Pseudonymizer::with_clock(secret, DAY, Arc::new(clock.clone()))
    }

    #[test]
    fn stable_within_an_epoch() {
        let clock = FakeClock::new(Timestamp::from_secs(10 * 86_400));
        let p = at(&clock, 1);
        let first = p.pseudonym(Domain::SUBJECT, b"alice");
        clock.advance(Duration::from_secs(86_399));
        assert_eq!(first, p.pseudonym(Domain::SUBJECT, b"alice"));
    }

    #[test]
    fn differs_across_epochs() {
        let clock = FakeClock::new(Timestamp::from_secs(10 * 86_400));
        let p = at(&clock, 1);
        let first = p.pseudonym(Domain::SUBJECT, b"alice");
        clock.advance(DAY);
        let second = p.pseudonym(Domain::SUBJECT, b"alice");
        assert_ne!(first, second);
        assert_eq!(second.epoch(), first.epoch() + 1);
        // Asking for the old epoch again still gives the old pseudonym.
        let old = p.pseudonym_at(Domain::SUBJECT, b"alice", Timestamp::from_secs(10 * 86_400));
        assert_eq!(old, first);
    }

    #[test]
    fn differs_across_secrets_domains_and_inputs() {
        let clock = FakeClock::new(Timestamp::from_secs(5));
        let a = at(&clock, 1);
        let b = at(&clock, 2);
        assert_ne!(
            a.pseudonym(Domain::SUBJECT, b"x"),
            b.pseudonym(Domain::SUBJECT, b"x")
        );
        assert_ne!(
            a.pseudonym(Domain::SUBJECT, b"x"),
            a.pseudonym(Domain::NETWORK, b"x")
        );
        assert_ne!(
            a.pseudonym(Domain::SUBJECT, b"x"),
            a.pseudonym(Domain::SUBJECT, b"y")
        );
        assert_ne!(a.digest(Domain::SUBJECT, b"x"), b.digest(Domain::SUBJECT, b"x"));
    }

    #[test]
    fn memoized_pseudonyms_match_and_follow_epochs_and_owners() {
        let clock = FakeClock::new(Timestamp::from_secs(10 * 86_400));
        let a = at(&clock, 1);
        let b = at(&clock, 2);
        let input = [4, 24, 198, 51, 100, 0];
        for _ in 0..2 {
            assert_eq!(
                a.pseudonym_memoized(Domain::NETWORK, &input),
                a.pseudonym(Domain::NETWORK, &input)
            );
            assert_eq!(
                b.pseudonym_memoized(Domain::NETWORK, &input),
                b.pseudonym(Domain::NETWORK, &input)
            );
            assert_eq!(
                a.pseudonym_memoized(Domain::SUBJECT, &input),
                a.pseudonym(Domain::SUBJECT, &input)
            );
        }
        let before = a.pseudonym_memoized(Domain::NETWORK, &input);
        clock.advance(DAY);
        let after = a.pseudonym_memoized(Domain::NETWORK, &input);
        assert_ne!(before, after);
        assert_eq!(after, a.pseudonym(Domain::NETWORK, &input));
        let long = [7u8; 40];
        assert_eq!(
            a.pseudonym_memoized(Domain::NETWORK, &long),
            a.pseudonym(Domain::NETWORK, &long)
        );
    }

    /// Thousands of networks in turn (a busy API) stay in the memo.
    #[test]
    fn the_memo_holds_thousands_of_networks() {
        let clock = FakeClock::new(Timestamp::from_secs(10 * 86_400));
        let a = at(&clock, 3);
        let inputs: Vec<[u8; 6]> = (0..2_000u32)
            .map(|i| {
                let [_, x, y, z] = i.to_be_bytes();
                [4, 24, x, y, z, 0]
            })
            .collect();
        for input in &inputs {
            a.pseudonym_memoized(Domain::NETWORK, input);
        }
        let held = inputs
            .iter()
            .filter(|input| {
                let mut key = [0u8; MEMO_INPUT_LEN];
                key[..input.len()].copy_from_slice(&input[..]);
                MEMO.with_borrow(|memo| memo.iter().flatten().any(|e| e.owner == a.0.id && e.input == key))
            })
            .count();
        assert!(held >= 1_900, "{held} of 2,000 networks held");
    }

    #[test]
    fn digest_does_not_rotate() {
        let clock = FakeClock::new(Timestamp::from_secs(5));
        let p = at(&clock, 1);
        let before = p.digest(Domain::CREDENTIAL, b"key-1");
        clock.advance(DAY * 3);
        assert_eq!(before, p.digest(Domain::CREDENTIAL, b"key-1"));
        assert_eq!(KeyedDigest::from_hex(before.to_hex().as_str()), Some(before));
    }

    #[test]
    fn output_shape_hides_input() {
        let clock = FakeClock::new(Timestamp::from_secs(5));
        let p = at(&clock, 1);
        let ps = p.pseudonym(Domain::SUBJECT, b"alice@example.com");
        let shown = ps.to_string();
        assert_eq!(shown.len(), 24);
        assert!(shown.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(format!("{ps:?}"), format!("Pseudonym({shown})"));
        assert_eq!(serde_json::to_string(&ps).unwrap(), format!("\"{shown}\""));
    }

    #[test]
    fn short_or_bad_secrets_are_refused() {
        assert_eq!(
            PseudonymSecret::from_bytes(&[0; 31]).unwrap_err(),
            SecretError::TooShort(31)
        );
        assert_eq!(PseudonymSecret::from_hex("zz").unwrap_err(), SecretError::NotHex);
        assert!(PseudonymSecret::from_hex(&"ab".repeat(32)).is_ok());
    }
}
