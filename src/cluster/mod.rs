//! Tern nodes sharing one PostgreSQL database: the connection pool, the schema and
//! its migrations, node membership, and the queue store over them.
//!
//! Every node is alike and keeps nothing of its own: messages and their state live
//! in the database, deliveries are claimed with leases timed by the database's
//! clock, and `LISTEN/NOTIFY` wakes the schedulers (with polling behind it).

pub mod clock;
mod content;
pub mod migrations;
pub mod node;
pub mod queue;
pub mod share;
pub mod shared;
pub mod status;
pub mod store;
mod tls;
pub(crate) mod wake;
mod writer;

use crate::config;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use std::fmt;
use std::time::Duration;
use tls::Verify;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long a start waits for a connection before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest any one exchange with the database may take (a transaction, a claim,
/// a heartbeat, a content row): a database that stops answering fails the work
/// instead of holding it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `work`, or an error once [`ANSWER_TIMEOUT`] has passed.
pub async fn answered<T>(work: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::time::timeout(ANSWER_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(Error(format!("database: no answer within {ANSWER_TIMEOUT:?}"))))
}

/// A database problem, said with what Tern was doing.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Error {
        // The server's own words (a `DbError`) say more than the generic text.
        match e.as_db_error() {
            Some(db) => Error(format!("database: {} ({})", db.message(), db.code().code())),
            // The cause (a refused certificate, a refused connection) is in the source.
            None => {
                let mut text = format!("database: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    if let Some(words) = tls::describe(cause) {
                        text = format!("{text}: {words}");
                        break;
                    }
                    text = format!("{text}: {cause}");
                    source = cause.source();
                }
                Error(text)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Error {
        match e {
            deadpool_postgres::PoolError::Backend(e) => Error::from(e),
            e => Error(format!("database unreachable: {e}")),
        }
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::other(e.0)
    }
}

/// The connection settings of `[cluster] database`, and how TLS checks the server.
pub fn parse_database(text: &str) -> Result<(tokio_postgres::Config, Verify), String> {
    // tokio-postgres knows `sslmode` up to `require`; libpq's verifying modes are
    // taken out here and done by our own TLS connector.
    let mut verify = Verify::Nothing;
    let mut mode = None;
    let mut keep = |key: &str, value: &str| -> Result<bool, String> {
        if key != "sslmode" {
            return Ok(true);
        }
        mode = Some(match value {
            "disable" => tokio_postgres::config::SslMode::Disable,
            "prefer" | "allow" => tokio_postgres::config::SslMode::Prefer,
            "require" => tokio_postgres::config::SslMode::Require,
            "verify-ca" | "verify-full" => {
                verify = if value == "verify-ca" { Verify::Chain } else { Verify::Full };
                tokio_postgres::config::SslMode::Require
            }
            other => return Err(format!("unknown sslmode {other:?}")),
        });
        Ok(false)
    };
    let rest = if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        match text.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if keep(k, v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) }
            }
            None => text.to_string(),
        }
    } else {
        let mut kept = Vec::new();
        for pair in text.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if keep(k, v)? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
    if let Some(mode) = mode {
        config.ssl_mode(mode);
    }
    if config.get_hosts().is_empty() {
        return Err("no host given".into());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.application_name("tern");
    Ok((config, verify))
}

/// Connects a starting node: the schema must be this binary's, and the node's name
/// free; then the node is registered.
pub async fn join(settings: &config::Cluster, config: &config::Config) -> Result<Cluster, String> {
    let cluster = Cluster::new(settings)?;
    let fail = |e: Error| format!("cluster: {e}");
    migrations::check(&cluster).await.map_err(fail)?;
    node::register(&cluster, &node::config_hash(config)).await.map_err(fail)?;
    // The clock and the count of live nodes are known before any mail is.
    let beat = node::heartbeat(&cluster, node::Load::default()).await.map_err(fail)?;
    share::set_live_nodes(beat.live_nodes);
    tracing::info!(node = %cluster.node, instance = %cluster.instance, "joined the cluster");
    Ok(cluster)
}

/// This node's handle on the cluster: its identity and the connection pool. Cheap to
/// clone; everything cluster-wide (the queue store, and whatever shares the database)
/// borrows connections from [`Cluster::client`].
#[derive(Clone)]
pub struct Cluster {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    /// `[cluster] node`.
    pub node: String,
    /// This process among all that ever ran as `node`: leases name it.
    pub instance: String,
    /// `[cluster] lease`.
    pub lease: Duration,
}

impl Cluster {
    /// The pool for `[cluster]` (no connection is made yet).
    pub fn new(config: &config::Cluster) -> Result<Cluster, String> {
        let (pg, verify) = parse_database(&config.database).map_err(|e| format!("cluster.database: {e}"))?;
        let tls = tls::connector(verify, config.ca_file.as_deref()).map_err(|e| format!("cluster: {e}"))?;
        let manager =
            Manager::from_config(pg.clone(), tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("cluster: {e}"))?;
        let instance = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        Ok(Cluster { pool, pg, tls, node: config.node.clone(), instance, lease: config.lease })
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, Error> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own, outside the pool (for `LISTEN`): the client, and the
    /// connection's messages (notifications) as they arrive.
    pub async fn dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::AsyncMessage>), Error>
    {
        let (client, mut connection) = self.pg.connect(self.tls.clone()).await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Ok((client, rx))
    }

    /// The lease as seconds, for SQL parameters.
    pub fn lease_secs(&self) -> f64 {
        self.lease.as_secs_f64()
    }
}
