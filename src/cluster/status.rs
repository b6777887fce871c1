//! What `tern cluster status` shows: every node, its heartbeat, version and
//! configuration, its share of the queue and its load.

use super::{Cluster, Error};

/// One node as the database knows it.
#[derive(Debug)]
pub struct NodeRow {
    pub name: String,
    pub version: String,
    pub config_hash: String,
    /// Seconds since its last heartbeat.
    pub heartbeat_ago: f64,
    pub live: bool,
    pub draining: bool,
    pub in_flight: i32,
    /// Messages it holds a current lease on.
    pub leased: i64,
    /// Messages it accepted that are still queued.
    pub accepted: i64,
    pub stored: i64,
    pub commits: i64,
}

/// The cluster at a glance.
#[derive(Debug)]
pub struct Overview {
    pub nodes: Vec<NodeRow>,
    pub queued: i64,
    pub due: i64,
    pub held: i64,
    /// Nodes sharing per-host connection limits (see [`super::node::sharing`]).
    pub sharing: usize,
}

pub async fn overview(cluster: &Cluster) -> Result<Overview, Error> {
    let client = cluster.client().await?;
    let rows = client
        .query(
            "SELECT n.name, n.version, n.config_hash, extract(epoch FROM now() - n.heartbeat)::float8,
                    n.stopped IS NULL AND n.heartbeat > now() - $1::float8 * interval '1 second',
                    n.draining, n.in_flight,
                    (SELECT count(*) FROM messages m WHERE m.owner = n.name AND m.lease_until > now()),
                    (SELECT count(*) FROM messages m WHERE m.accepted_by = n.name),
                    n.stored_messages, n.store_commits
             FROM nodes n ORDER BY n.name",
            &[&cluster.lease_secs()],
        )
        .await?;
    let nodes = rows
        .iter()
        .map(|r| NodeRow {
            name: r.get(0),
            version: r.get(1),
            config_hash: r.get(2),
            heartbeat_ago: r.get(3),
            live: r.get(4),
            draining: r.get(5),
            in_flight: r.get(6),
            leased: r.get(7),
            accepted: r.get(8),
            stored: r.get(9),
            commits: r.get(10),
        })
        .collect();
    let totals = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE due <= extract(epoch FROM now()) AND NOT held),
                    count(*) FILTER (WHERE held)
             FROM messages",
            &[],
        )
        .await?;
    let sharing: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM nodes WHERE {}", super::node::sharing("$1")),
            &[&cluster.lease_secs()],
        )
        .await?
        .get(0);
    Ok(Overview { nodes, queued: totals.get(0), due: totals.get(1), held: totals.get(2), sharing: sharing as usize })
}
