//! A throwaway Redis Cluster on loopback: 3 primaries and 3 replicas started with
//! `redis-server --cluster-enabled yes` and joined by `redis-cli --cluster create`
//! (feature `redis`), with a 1 s node timeout and `cluster-require-full-coverage no`.
//!
//! ```no_run
//! use tollgate_test_support::redis_cluster::RedisCluster;
//!
//! // Skips (after printing why) when redis-server is missing outside CI; panics under CI.
//! let Some(mut cluster) = RedisCluster::start() else { return };
//! let urls = cluster.urls();
//! let primary = cluster.primary_for_key("tollgate:rl:00");
//! cluster.kill(primary);
//! cluster.wait_healthy(std::time::Duration::from_secs(15));
//! // Dropping `cluster` stops every node and removes its files.
//! ```

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ::redis::{Client, Connection, RedisResult, cmd};

use crate::redis::scan_keys;

/// How long a node may be unreachable before the others fail it over: short, so a
/// test's failover takes a second or two.
pub const NODE_TIMEOUT_MS: u64 = 1000;

/// A running Redis Cluster of 3 primaries with one replica each, on free loopback
/// ports. Stopped and deleted on drop.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: BTreeMap<u16, Child>,
}

fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// A port `p` with `p` and its cluster bus port `p + 10000` both free.
fn free_cluster_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn connect(port: u16) -> RedisResult<Connection> {
    Client::open(format!("redis://127.0.0.1:{port}"))?.get_connection_with_timeout(Duration::from_millis(500))
}

impl RedisCluster {
    /// Starts a cluster and waits until it serves every slot.
    ///
    /// Returns `None` (after printing why) when `redis-server` or `redis-cli` is
    /// missing and `CI` is unset; panics under `CI`, or when the cluster does not form
    /// within 30 s.
    pub fn start() -> Option<Self> {
        for tool in ["redis-server", "redis-cli"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                assert!(
                    !ci(),
                    "CI is set but {tool} is missing: the cluster tests must run under CI"
                );
                println!("skipped: {tool} not found");
                return None;
            }
        }
        let dir = std::env::temp_dir().join(format!("tollgate-cluster-{}", crate::random_namespace()));
        std::fs::create_dir_all(&dir).expect("create the cluster's directory");
        let mut cluster = RedisCluster {
            dir,
            nodes: BTreeMap::new(),
        };
        for _ in 0..6 {
            let port = free_cluster_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica takes over however long it was out of touch.
                .args(["--cluster-replica-validity-factor", "0"])
                // The other shards keep serving while one has no primary (Redis's
                // default stops the whole cluster until the failover is done).
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--logfile", &format!("{port}.log")])
                .arg("--dir")
                .arg(&cluster.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            cluster.nodes.insert(port, child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in cluster.nodes.keys() {
            while connect(port)
                .and_then(|mut c| cmd("PING").query::<String>(&mut c))
                .is_err()
            {
                assert!(Instant::now() < deadline, "redis-server on {port} did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.nodes.keys().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .expect("run redis-cli --cluster create");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_healthy(Duration::from_secs(30));
        Some(cluster)
    }

    /// The URL of every node still running (the seed list of a client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .keys()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn live_connection(&self) -> Connection {
        self.nodes
            .keys()
            .find_map(|&p| connect(p).ok())
            .expect("a live cluster node")
    }

    /// The ports of the primaries serving slots, as the cluster now sees them.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.slot_owners().into_iter().map(|(_, _, p)| p).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// `(first slot, last slot, primary port)` per slot range (`CLUSTER SLOTS`).
    fn slot_owners(&self) -> Vec<(u16, u16, u16)> {
        let slots: Vec<::redis::Value> = cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.live_connection())
            .expect("CLUSTER SLOTS answers");
        let int = |v: &::redis::Value| match v {
            ::redis::Value::Int(i) => u16::try_from(*i).ok(),
            _ => None,
        };
        slots
            .iter()
            .filter_map(|range| match range {
                ::redis::Value::Array(items) => match items.get(2) {
                    Some(::redis::Value::Array(node)) => {
                        Some((int(items.first()?)?, int(items.get(1)?)?, int(node.get(1)?)?))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn key_slot(&self, key: &str) -> u16 {
        cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.live_connection())
            .expect("CLUSTER KEYSLOT answers")
    }

    /// The slot ranges (first, last) the primary on `port` now serves.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.slot_owners()
            .into_iter()
            .filter(|&(_, _, p)| p == port)
            .map(|(first, last, _)| (first, last))
            .collect()
    }

    /// The port of the primary that now holds `key`'s slot.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let slot = self.key_slot(key);
        self.slot_owners()
            .into_iter()
            .find(|&(first, last, _)| (first..=last).contains(&slot))
            .map(|(_, _, port)| port)
            .expect("every slot is served")
    }

    /// Every key matching `pattern` on each primary, by primary port.
    pub fn keys_by_primary(&self, pattern: &str) -> BTreeMap<u16, Vec<String>> {
        self.primaries()
            .into_iter()
            .map(|p| {
                let mut conn = connect(p).expect("the primary answers");
                (p, scan_keys(&mut conn, pattern))
            })
            .collect()
    }

    /// A plain connection to the node on `port` (for reading what it holds).
    pub fn connection(&self, port: u16) -> Connection {
        connect(port).expect("the node answers")
    }

    /// Kills the node on `port` (`SIGKILL`: no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.nodes.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every running node reports `cluster_state:ok` with all 16384 slots
    /// served, the primaries serving them are running, and every other running node
    /// is a replica in sync with its primary (a node still a primary without slots,
    /// as a replica is for a moment after the cluster is created, is not yet).
    ///
    /// # Panics
    /// If that takes longer than `timeout`.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let primaries = self.primaries();
            let healthy = self.nodes.keys().all(|&p| {
                let Ok(mut c) = connect(p) else { return false };
                let cluster = cmd("CLUSTER").arg("INFO").query::<String>(&mut c);
                let replication = cmd("INFO").arg("replication").query::<String>(&mut c);
                cluster.is_ok_and(|i| i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384"))
                    && replication.is_ok_and(|i| {
                        (primaries.contains(&p) && i.contains("role:master"))
                            || i.contains("master_link_status:up")
                    })
            }) && primaries.iter().all(|p| self.nodes.contains_key(p));
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster is not healthy after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.nodes.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_forms_and_fails_over() {
        let Some(mut cluster) = RedisCluster::start() else {
            return;
        };
        assert_eq!(cluster.urls().len(), 6);
        assert_eq!(cluster.primaries().len(), 3);
        let key = "tollgate:test:failover";
        let primary = cluster.primary_for_key(key);
        cluster.kill(primary);
        cluster.wait_healthy(Duration::from_secs(20));
        let after = cluster.primary_for_key(key);
        assert_ne!(after, primary, "a replica took over the slot");
        assert_eq!(cluster.primaries().len(), 3);
    }
}
