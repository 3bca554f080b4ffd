//! `RedisReplayCache`: the DPoP proof replay cache shared by every replica.

use std::fmt;
use std::time::Duration;

use tollgate_auth::ReplayCache;
use tollgate_core::{BoxFuture, KeyedDigest, StoreError, StoreKey};

use crate::backend::RedisBackend;
use crate::store::ttl_millis;

/// The namespace of replay-cache keys.
const NAMESPACE: &str = "dpop-jti";

/// A [`ReplayCache`] on Redis: each proof is one `SET key 1 NX PX ttl` under
/// `tollgate:{namespace}:dpop-jti:{digest}`, so the first replica to see a proof
/// records it and every other use, on any replica, is a replay. Keys are the
/// keyed digests the auth layer computes (never a `jti` or a key thumbprint), and
/// Redis drops them at the end of the proof's acceptance window.
///
/// Errors (Redis unreachable, slow, or down per the backend's breaker) are
/// returned as they are; the auth layer applies `auth.dpop.replay_failure`.
#[derive(Clone)]
pub struct RedisReplayCache {
    backend: RedisBackend,
}

impl fmt::Debug for RedisReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayCache")
            .field("backend", &self.backend)
            .finish()
    }
}

impl RedisReplayCache {
    /// A replay cache on `backend`.
    pub fn new(backend: &RedisBackend) -> Self {
        RedisReplayCache {
            backend: backend.clone(),
        }
    }

    async fn record_async(&self, key: KeyedDigest, ttl: Duration) -> Result<bool, StoreError> {
        let k = &self.backend.key(&StoreKey::new(NAMESPACE, &key));
        let ms = ttl_millis(ttl);
        let set: Option<String> = self
            .backend
            .run(k, |mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }
}

impl ReplayCache for RedisReplayCache {
    fn record(&self, key: KeyedDigest, ttl: Duration) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(self.record_async(key, ttl))
    }
}
