//! A keyed 64-bit hash for detector state: map keys, object-id sketches.
//!
//! SipHash-1-3 (std's `DefaultHasher`) whose state first absorbs a 128-bit secret:
//! without the secret, an attacker can neither predict where an id lands in a
//! sketch (to evade distinct counting) nor link the in-memory keys to anything
//! outside this process's configuration.

use std::hash::{DefaultHasher, Hash, Hasher};

use tollgate_core::pseudonym::{Domain, Pseudonymizer};

/// The pseudonym domain from which the anomaly layer derives its hash key.
pub const HASH_DOMAIN: Domain = Domain::new("anomaly-hash-key");

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
}

/// A keyed hasher; cloning the pre-keyed state is the whole per-hash setup.
#[derive(Clone, Debug)]
pub struct KeyedHasher {
    base: DefaultHasher,
}

impl KeyedHasher {
    /// A hasher keyed by 16 secret bytes.
    pub fn new(key: [u8; 16]) -> Self {
        let mut base = DefaultHasher::new();
        base.write(&key);
        KeyedHasher { base }
    }

    /// A hasher keyed from the pseudonym secret (stable for a given secret, so
    /// simulator runs are reproducible).
    pub fn from_pseudonymizer(p: &Pseudonymizer) -> Self {
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

    /// Combines two keys into one (for `session + route` keys).
    pub(crate) fn combine(&self, kind: KeyKind, a: u64, b: u64) -> u64 {
        let mut h = self.base.clone();
        h.write_u8(kind as u8);
        h.write_u64(a);
        h.write_u64(b);
        h.finish()
    }
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
    }
}
