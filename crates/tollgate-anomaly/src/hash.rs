//! A keyed 64-bit hash for detector state: map keys, object-id sketches.
//!
//! SipHash-1-3 (std's `DefaultHasher`) whose state first absorbs a 128-bit secret:
//! without the secret, an attacker can neither predict where an id lands in a
//! sketch (to evade distinct counting) nor link the in-memory keys to anything
//! outside this process's configuration.

use std::hash::{DefaultHasher, Hash, Hasher};

use tollgate_core::pseudonym::{Domain, Pseudonymizer};

/// The pseudonym domain from which the anomaly layer derives its hash key.
const HASH_DOMAIN: Domain = Domain::new("anomaly-hash-key");

/// Domain tags that keep keys of different kinds apart.
#[derive(Clone, Copy, Debug)]
#[repr(u8)]
pub(crate) enum KeyKind {
    Principal = 1,
    Network = 2,
    Credential = 3,
    Session = 4,
    Enumeration = 5,
    ObjectId = 6,
    Subject = 7,
    Account = 8,
}

/// The number of [`KeyKind`] tags (one past the largest).
const KINDS: usize = 9;

/// A keyed hasher; cloning the pre-keyed state is the whole per-hash setup.
#[derive(Clone, Debug)]
pub(crate) struct KeyedHasher {
    base: DefaultHasher,
    /// Secret per-kind salts for [`KeyedHasher::derive`], themselves keyed hashes.
    salts: [u64; KINDS],
}

impl KeyedHasher {
    /// A hasher keyed by 16 secret bytes.
    pub(crate) fn new(key: [u8; 16]) -> Self {
        let mut base = DefaultHasher::new();
        base.write(&key);
        let salts = std::array::from_fn(|kind| {
            let mut h = base.clone();
            h.write(b"derive");
            h.write_u8(kind as u8);
            h.finish()
        });
        KeyedHasher { base, salts }
    }

    /// A hasher keyed from the pseudonym secret (stable for a given secret, so
    /// simulator runs are reproducible).
    pub(crate) fn from_pseudonymizer(p: &Pseudonymizer) -> Self {
        let digest = p.digest(HASH_DOMAIN, b"v1");
        let mut key = [0u8; 16];
        let hex = digest.to_hex();
        for (i, pair) in hex.as_str().as_bytes().chunks(2).enumerate() {
            key[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        KeyedHasher::new(key)
    }

    /// The keyed hash of `value` under the domain tag `kind`.
    pub(crate) fn hash<T: Hash + ?Sized>(&self, kind: KeyKind, value: &T) -> u64 {
        let mut h = self.base.clone();
        h.write_u8(kind as u8);
        value.hash(&mut h);
        h.finish()
    }

    /// The keyed hash of raw bytes under the domain tag `kind`.
    pub(crate) fn hash_bytes(&self, kind: KeyKind, bytes: &[u8]) -> u64 {
        let mut h = self.base.clone();
        h.write_u8(kind as u8);
        h.write(bytes);
        h.finish()
    }

    /// The key of a value that is keyed output already (the leading 64 bits of a
    /// pseudonym or a keyed digest): mixed with the kind's secret salt, so it is
    /// unlinkable to the pseudonym without this layer's key, at the cost of a few
    /// multiplications where hashing it again cost about 350 instructions.
    pub(crate) fn rekey(&self, kind: KeyKind, keyed: u64) -> u64 {
        self.derive(kind, keyed, 0)
    }

    /// A key of another kind from a keyed hash `a` and a small discriminator `b`
    /// (a route index, say): a bijective mix of `a`, `b` and a secret per-kind salt.
    /// As unpredictable as `a` without the secret, and distinct for distinct `b`,
    /// at the cost of a few multiplications instead of another SipHash.
    pub(crate) fn derive(&self, kind: KeyKind, a: u64, b: u64) -> u64 {
        mix(a ^ self.salts[kind as usize] ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// The SplitMix64 finalizer: a bijection on 64-bit words with full avalanche.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_domain_separated() {
        let a = KeyedHasher::new([1; 16]);
        let b = KeyedHasher::new([2; 16]);
        assert_ne!(
            a.hash_bytes(KeyKind::ObjectId, b"42"),
            b.hash_bytes(KeyKind::ObjectId, b"42")
        );
        assert_ne!(
            a.hash_bytes(KeyKind::ObjectId, b"42"),
            a.hash_bytes(KeyKind::Network, b"42")
        );
        assert_eq!(
            a.hash_bytes(KeyKind::ObjectId, b"42"),
            a.hash_bytes(KeyKind::ObjectId, b"42")
        );
        // Derived keys depend on the secret, the kind and both inputs.
        assert_ne!(
            a.derive(KeyKind::Enumeration, 7, 1),
            b.derive(KeyKind::Enumeration, 7, 1)
        );
        assert_ne!(
            a.derive(KeyKind::Enumeration, 7, 1),
            a.derive(KeyKind::Principal, 7, 1)
        );
        assert_ne!(
            a.derive(KeyKind::Enumeration, 7, 1),
            a.derive(KeyKind::Enumeration, 7, 2)
        );
        assert_ne!(
            a.derive(KeyKind::Enumeration, 7, 1),
            a.derive(KeyKind::Enumeration, 8, 1)
        );
        // A rekeyed pseudonym is neither the pseudonym nor the same under another
        // secret or kind.
        assert_ne!(a.rekey(KeyKind::Subject, 7), 7);
        assert_ne!(a.rekey(KeyKind::Subject, 7), b.rekey(KeyKind::Subject, 7));
        assert_ne!(a.rekey(KeyKind::Subject, 7), a.rekey(KeyKind::Session, 7));
    }
}
