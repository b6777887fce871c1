//! Membership: each node registers under its name, proves it is alive with a
//! heartbeat stamped by the database's clock, and says when it stops. A name held
//! by a live process is refused to a second one.

use super::{Cluster, Error};
use crate::config::Config;
use std::time::Duration;

/// Tern's version, as nodes report it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A short digest of the configuration as it matters cluster-wide: the file's
/// settings without `[cluster] node`, so that nodes differing only in name agree.
pub fn config_hash(config: &Config) -> String {
    let text = match &config.source {
        Some((path, _)) => std::fs::read_to_string(path).unwrap_or_default(),
        None => crate::config::EMBEDDED_DEFAULT.to_string(),
    };
    let canonical = match text.parse::<toml::Table>() {
        Ok(mut table) => {
            if let Some(toml::Value::Table(cluster)) = table.get_mut("cluster") {
                cluster.remove("node");
            }
            toml::to_string(&table).unwrap_or(text)
        }
        Err(_) => text,
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    digest.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// Takes the node's name for this process, or says who holds it. A holder whose
/// heartbeat has stopped (a crashed process of this node) is waited out until its
/// lease runs out; one whose heartbeat goes on is a second live node of that name.
pub async fn register(cluster: &Cluster, config_hash: &str) -> Result<(), Error> {
    let mut seen: Option<(String, f64)> = None;
    loop {
        let mut client = cluster.client().await?;
        let tx = client.transaction().await?;
        let holder = tx
            .query_opt(
                "SELECT instance, extract(epoch FROM heartbeat)::float8, extract(epoch FROM now() - heartbeat)::float8
                 FROM nodes
                 WHERE name = $1 AND stopped IS NULL AND heartbeat > now() - $2::float8 * interval '1 second'
                 FOR UPDATE",
                &[&cluster.node, &cluster.lease_secs()],
            )
            .await?;
        let Some(row) = holder else {
            tx.execute(
                "INSERT INTO nodes (name, instance, version, config_hash, started, heartbeat)
                 VALUES ($1, $2, $3, $4, now(), now())
                 ON CONFLICT (name) DO UPDATE SET instance = $2, version = $3, config_hash = $4, started = now(),
                     heartbeat = now(), stopped = NULL, in_flight = 0, stored_messages = 0, store_commits = 0",
                &[&cluster.node, &cluster.instance, &VERSION, &config_hash],
            )
            .await?;
            tx.commit().await?;
            return Ok(());
        };
        drop(tx);
        let (instance, beat, ago): (String, f64, f64) = (row.get(0), row.get(1), row.get(2));
        let wait = match &seen {
            // A beat since the last look: that process lives.
            Some((was, at)) if *was != instance || *at != beat => {
                return Err(Error(format!(
                    "another live node is named {:?} (last heartbeat {ago:.0}s ago): give each node its own [cluster] node",
                    cluster.node
                )));
            }
            // Silent for longer than it beats: wait for its lease to run out.
            Some(_) => Duration::from_secs_f64((cluster.lease_secs() - ago).max(0.0)) + Duration::from_millis(200),
            None => {
                tracing::info!(node = %cluster.node, ago, "a process of this node's name beat recently; waiting to see whether it lives");
                super::wake::heartbeat_interval(cluster.lease) * 3 / 2
            }
        };
        seen = Some((instance, beat));
        tokio::time::sleep(wait).await;
    }
}

/// The condition on `nodes` of those that share per-host connection limits, with
/// `lease` (a parameter) in seconds: running, beating within the lease, and not
/// draining unless deliveries they started are still under way.
pub fn sharing(lease: &str) -> String {
    format!(
        "stopped IS NULL AND heartbeat > now() - {lease}::float8 * interval '1 second'
         AND (NOT draining OR in_flight > 0)"
    )
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Beat {
    /// `tern cluster drain` asked this node to take no new work.
    pub draining: bool,
    /// Nodes sharing the per-host connection limits, this one included.
    pub live_nodes: usize,
}

/// Load figures a heartbeat reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Load {
    pub in_flight: i32,
    /// Messages stored, and the commits that stored them, since the node started.
    pub stored: i64,
    pub commits: i64,
}

/// Says the node is alive and renews the leases of every message this process
/// holds, both by the database's clock; counts the live nodes, and reads that clock
/// for [`super::clock`].
pub async fn heartbeat(cluster: &Cluster, load: Load) -> Result<Beat, Error> {
    let client = cluster.client().await?;
    let others = format!("SELECT count(*) FROM nodes WHERE name <> $1 AND {}", sharing("$6"));
    let sent = super::clock::local_ms();
    let row = client
        .query_opt(
            &format!(
                "UPDATE nodes SET heartbeat = now(), in_flight = $3, stored_messages = $4, store_commits = $5
                 WHERE name = $1 AND instance = $2
                 RETURNING draining, ({others}),
                     (extract(epoch FROM clock_timestamp()) * 1000)::int8"
            ),
            &[&cluster.node, &cluster.instance, &load.in_flight, &load.stored, &load.commits, &cluster.lease_secs()],
        )
        .await?;
    let received = super::clock::local_ms();
    let Some(row) = row else {
        return Err(Error(format!("node {:?} was taken over by another process", cluster.node)));
    };
    super::clock::learn(row.get(2), sent, received);
    let others: i64 = row.get(1);
    client
        .execute(
            "UPDATE messages SET lease_until = now() + $2::float8 * interval '1 second' WHERE instance = $1",
            &[&cluster.instance, &cluster.lease_secs()],
        )
        .await?;
    Ok(Beat { draining: row.get(0), live_nodes: others as usize + 1 })
}

/// A graceful stop: leases go back at once, and the name is free.
pub async fn stop(cluster: &Cluster) -> Result<(), Error> {
    let client = cluster.client().await?;
    let released = client
        .execute(
            "UPDATE messages SET owner = NULL, instance = NULL, lease_until = NULL WHERE instance = $1",
            &[&cluster.instance],
        )
        .await?;
    if released > 0 {
        client.batch_execute("NOTIFY tern_queue").await?;
    }
    client
        .execute(
            "UPDATE nodes SET stopped = now() WHERE name = $1 AND instance = $2",
            &[&cluster.node, &cluster.instance],
        )
        .await?;
    Ok(())
}

/// Sets (or clears) a node's drain; false when no such node ever registered.
pub async fn set_draining(cluster: &Cluster, name: &str, draining: bool) -> Result<bool, Error> {
    let client = cluster.client().await?;
    Ok(client.execute("UPDATE nodes SET draining = $2 WHERE name = $1", &[&name, &draining]).await? > 0)
}
