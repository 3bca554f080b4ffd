//! Shared test helpers: one test's Redis namespace with this crate's store config.
//! Where Redis is, the namespace and its cleanup come from `tollgate-test-support`.
#![allow(dead_code)]

use std::ops::Deref;
use std::time::Duration;

use tollgate_redis::{RedisBackend, StoreConfig};
use tollgate_test_support::redis::RedisNamespace;

/// One test's slice of Redis: its own namespace, deleted on drop. Derefs to
/// [`RedisNamespace`] (`url`, `namespace`, `connection()`, `keys()`).
pub struct TestRedis(RedisNamespace);

impl TestRedis {
    /// `None` (after printing why) when the Redis tests are skipped.
    pub fn new() -> Option<Self> {
        RedisNamespace::new().map(TestRedis)
    }

    /// A `[store]` config for this test's namespace, with short timeouts.
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            timeout: Duration::from_secs(1),
            ..StoreConfig::redis(self.url.clone()).with_namespace(self.namespace.clone())
        }
    }

    /// A fresh backend (its own connection) for this namespace.
    pub fn backend(&self) -> RedisBackend {
        RedisBackend::new(&self.config()).unwrap()
    }
}

impl Deref for TestRedis {
    type Target = RedisNamespace;

    fn deref(&self) -> &RedisNamespace {
        &self.0
    }
}
