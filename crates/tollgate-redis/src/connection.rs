//! One connection type for a single Redis server and for a Redis Cluster, so every
//! store has one implementation of each command.

use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::IntoConnectionInfo;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, PubSub};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::io::tcp::TcpSettings;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

/// A multiplexed connection to the store: cheap to clone, pipelines concurrent calls,
/// reconnects by itself. Every store command goes through [`ConnectionLike`], which
/// on a cluster routes each command to the primary of its key's slot (following
/// `MOVED` after a failover).
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// `WAIT replicas timeout` on the server that holds `key`: how many replicas
    /// acknowledged every write made so far on that server's connection.
    pub(crate) async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> RedisResult<u32> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1));
        match self {
            Connection::Single(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => {
                // WAIT has no key: left to the client it would go to every primary.
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let value = c.route_command(cmd, routing).await?;
                Ok(redis::from_redis_value(value)?)
            }
        }
    }
}

/// Where connections come from: one server's client, or a cluster's.
pub(crate) enum Target {
    Single {
        client: redis::Client,
        manager: std::sync::OnceLock<ConnectionManager>,
    },
    Cluster {
        client: Box<ClusterClient>,
        /// The seed nodes, for the pub/sub connection (any node hears every
        /// `PUBLISH` of the cluster).
        seeds: Vec<redis::Client>,
        connection: ArcSwapOption<ClusterConnection>,
        connecting: tokio::sync::Mutex<()>,
    },
}

/// `TCP_NODELAY` on every connection (redis-rs leaves Nagle's algorithm on, which
/// holds a small command back while an earlier one is unacknowledged).
fn tcp_settings() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// A client for `url` with [`tcp_settings`].
pub(crate) fn client(url: &str) -> RedisResult<redis::Client> {
    redis::Client::open(url.into_connection_info()?.set_tcp_settings(tcp_settings()))
}

impl Target {
    pub(crate) fn single(url: &str) -> RedisResult<Target> {
        Ok(Target::Single {
            client: client(url)?,
            manager: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn cluster(
        urls: &[String],
        connect_timeout: Duration,
        timeout: Duration,
    ) -> RedisResult<Target> {
        let seeds = urls.iter().map(|u| client(u)).collect::<RedisResult<Vec<_>>>()?;
        // Few, short retries: a call is bounded by the store timeout anyway, and the
        // backend's breaker paces the probes of a failed shard.
        let client = ClusterClientBuilder::new(urls.iter().map(String::as_str))
            .connection_timeout(connect_timeout)
            .response_timeout(timeout)
            .retries(2)
            .min_retry_wait(5)
            .max_retry_wait(50)
            .tcp_settings(tcp_settings())
            .build()?;
        Ok(Target::Cluster {
            client: Box::new(client),
            seeds,
            connection: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The shared connection, connecting on first use (and again after a cluster
    /// connection could not be made).
    pub(crate) async fn connection(
        &self,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> RedisResult<Connection> {
        match self {
            Target::Single { client, manager } => {
                if let Some(m) = manager.get() {
                    return Ok(Connection::Single(m.clone()));
                }
                // One attempt per reconnection: the breaker paces the retries.
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(100))
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(timeout));
                let m = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
                Ok(Connection::Single(manager.get_or_init(|| m).clone()))
            }
            Target::Cluster {
                client,
                connection,
                connecting,
                ..
            } => {
                if let Some(c) = connection.load_full() {
                    return Ok(Connection::Cluster((*c).clone()));
                }
                let _guard = connecting.lock().await;
                if let Some(c) = connection.load_full() {
                    return Ok(Connection::Cluster((*c).clone()));
                }
                let c = client.get_async_connection().await?;
                connection.store(Some(std::sync::Arc::new(c.clone())));
                Ok(Connection::Cluster(c))
            }
        }
    }

    /// A pub/sub connection; on a cluster, to the `attempt`-th seed node (mod their
    /// number), so a subscriber that lost its node tries the next one.
    pub(crate) async fn pubsub(&self, attempt: usize) -> RedisResult<PubSub> {
        match self {
            Target::Single { client, .. } => client.get_async_pubsub().await,
            Target::Cluster { seeds, .. } => seeds[attempt % seeds.len()].get_async_pubsub().await,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster { .. })
    }
}
