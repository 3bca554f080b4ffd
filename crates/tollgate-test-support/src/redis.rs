//! The Redis to test against, and one test's slice of it (feature `redis`).
//!
//! ```no_run
//! use tollgate_test_support::redis::RedisNamespace;
//!
//! // Skips the test (after printing why) when REDIS_URL is unset outside CI.
//! let Some(redis) = RedisNamespace::new() else { return };
//! let config = format!("[store]\nbackend = \"redis\"\nurl = \"{}\"\nnamespace = \"{}\"\n", redis.url, redis.namespace);
//! # let _ = config;
//! // ... run the test ...
//! assert!(redis.keys().iter().all(|k| k.starts_with(&format!("tollgate:{}:", redis.namespace))));
//! // Dropping `redis` deletes every key under the namespace.
//! ```

use std::time::Duration;

use ::redis::{Client, Connection, RedisResult, cmd};

/// How long a test waits to connect to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis to test against, from `REDIS_URL`.
///
/// - unset (or empty) and `CI` unset: prints `skipped: REDIS_URL not set` and returns
///   `None`; the test returns early and passes;
/// - unset under `CI`: panics (the Redis tests must run under CI);
/// - set but Redis does not answer `PING` within 2 s: panics.
pub fn redis_url() -> Option<String> {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    let url = match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if ci => panic!("CI is set but REDIS_URL is not: the Redis tests must run under CI"),
        _ => {
            println!("skipped: REDIS_URL not set");
            return None;
        }
    };
    let reachable = connect(&url).and_then(|mut c| cmd("PING").query::<String>(&mut c));
    if let Err(e) = reachable {
        panic!("REDIS_URL is set but Redis does not answer: {}", e.category());
    }
    Some(url)
}

/// One test's slice of Redis: the keys under `tollgate:{namespace}:`, a
/// [`random_namespace`](crate::random_namespace) of its own, deleted on drop (also
/// when the test fails).
#[derive(Debug)]
pub struct RedisNamespace {
    /// The Redis URL, from [`redis_url`].
    pub url: String,
    /// The key namespace, for the `[store]` section's `namespace`.
    pub namespace: String,
}

impl RedisNamespace {
    /// A fresh namespace on the Redis of [`redis_url`]; `None` (after printing why)
    /// when the Redis tests are skipped.
    pub fn new() -> Option<Self> {
        Some(RedisNamespace {
            url: redis_url()?,
            namespace: crate::random_namespace(),
        })
    }

    /// The pattern of every key in the namespace: `tollgate:{namespace}:*`.
    pub fn pattern(&self) -> String {
        format!("tollgate:{}:*", self.namespace)
    }

    /// A plain synchronous connection, for inspecting what was written.
    ///
    /// # Panics
    /// If Redis does not answer within 2 s.
    pub fn connection(&self) -> Connection {
        connect(&self.url).expect("Redis answers")
    }

    /// Every key in the namespace.
    pub fn keys(&self) -> Vec<String> {
        scan_keys(&mut self.connection(), &self.pattern())
    }

    /// Deletes every key in the namespace.
    pub fn clear(&self) {
        self.try_clear().expect("the namespace's keys are deleted");
    }

    fn try_clear(&self) -> RedisResult<()> {
        let mut conn = connect(&self.url)?;
        let keys = scan_keys(&mut conn, &self.pattern());
        if keys.is_empty() {
            return Ok(());
        }
        cmd("DEL").arg(keys).query(&mut conn)
    }
}

impl Drop for RedisNamespace {
    fn drop(&mut self) {
        // Best effort: a test whose Redis went away must not also fail here.
        let _ = self.try_clear();
    }
}

/// Every key matching `pattern`, by `SCAN` (not `KEYS`, which blocks a shared Redis).
///
/// # Panics
/// If a `SCAN` fails.
pub fn scan_keys(conn: &mut Connection, pattern: &str) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("SCAN answers");
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

fn connect(url: &str) -> RedisResult<Connection> {
    Client::open(url)?.get_connection_with_timeout(CONNECT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_emptied_on_drop() {
        let Some(redis) = RedisNamespace::new() else {
            return;
        };
        let key = format!("tollgate:{}:test:1", redis.namespace);
        let _: () = cmd("SET")
            .arg(&key)
            .arg("v")
            .query(&mut redis.connection())
            .unwrap();
        assert_eq!(redis.keys(), std::slice::from_ref(&key));
        let url = redis.url.clone();
        drop(redis);
        let left: i64 = cmd("EXISTS")
            .arg(&key)
            .query(&mut connect(&url).unwrap())
            .unwrap();
        assert_eq!(left, 0);
    }
}
