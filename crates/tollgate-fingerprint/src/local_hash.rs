//! Hashes under a random per-process key, for in-memory cache keys only.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// A hash under a random per-process key: it tells cached entries apart in memory
/// and is never kept past the process, so it needs no secret of the deployment.
#[derive(Clone, Default)]
pub(crate) struct LocalHasher(RandomState);

impl LocalHasher {
    pub(crate) fn hash(&self, bytes: &[u8]) -> u64 {
        self.0.hash_one(bytes)
    }

    /// A hasher under the same key, to hash several parts.
    pub(crate) fn hasher(&self) -> impl Hasher {
        self.0.build_hasher()
    }
}
