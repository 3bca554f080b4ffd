//! Shared test helpers: where Redis is, a per-test key namespace, cleanup.
#![allow(dead_code)]

use std::time::Duration;

use tollgate_core::{PseudonymSecret, Pseudonymizer};
use tollgate_redis::{RedisBackend, StoreConfig};

/// The Redis to test against, from `REDIS_URL`.
///
/// - unset, and `CI` unset: prints "skipped: REDIS_URL not set" and returns `None`;
/// - unset under `CI`, or set but unreachable: panics (the test fails).
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
    let reachable = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    if let Err(e) = reachable {
        panic!("REDIS_URL is set but Redis does not answer: {}", e.category());
    }
    Some(url)
}

/// A random namespace for one test's keys: `t{16 hex}`.
pub fn random_namespace() -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    format!("t{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// One test's slice of Redis: its own namespace, deleted on drop.
pub struct TestRedis {
    pub url: String,
    pub namespace: String,
}

impl TestRedis {
    /// `None` (after printing why) when the Redis tests are skipped.
    pub fn new() -> Option<Self> {
        let url = redis_url()?;
        Some(TestRedis {
            url,
            namespace: random_namespace(),
        })
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

    /// A plain synchronous connection, for inspecting what was written.
    pub fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .unwrap()
    }

    /// Every key under this test's namespace.
    pub fn keys(&self) -> Vec<String> {
        scan(&mut self.raw(), &format!("tollgate:{}:*", self.namespace))
    }
}

pub fn scan(conn: &mut redis::Connection, pattern: &str) -> Vec<String> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .unwrap();
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Ok(mut conn) = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
        {
            let keys = scan(&mut conn, &format!("tollgate:{}:*", self.namespace));
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
    }
}

/// A pseudonymizer under a fixed test secret.
pub fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(
        PseudonymSecret::from_bytes(&[42; 32]).unwrap(),
        Duration::from_secs(86_400),
    )
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}
