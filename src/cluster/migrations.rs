//! The database schema, built by an ordered list of migrations. Each runs once, in
//! order, recorded in `schema_version`; `tern cluster init` applies those missing,
//! and a node refuses to start on a schema that is not exactly its own.

use super::{Cluster, Error};

/// One step of the schema.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first; a later change appends its own, never edits one.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "nodes and queue", sql: include_str!("sql/0001_queue.sql") },
    Migration { version: 2, name: "shared state", sql: include_str!("sql/0002_shared.sql") },
    Migration { version: 3, name: "report counts", sql: include_str!("sql/0003_reports.sql") },
];

/// The schema version this binary runs on.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Serializes migrations of every node (`pg_advisory_xact_lock`): "tern" in ASCII.
const LOCK_KEY: i64 = 0x7465_726e;

/// What `init` did.
#[derive(Debug)]
pub struct Applied {
    pub from: i32,
    pub to: i32,
    pub names: Vec<&'static str>,
}

/// Brings the schema up to [`latest`] in one transaction, under a lock that makes
/// two nodes running it at once safe: the second finds nothing left to do.
pub async fn init(cluster: &Cluster) -> Result<Applied, Error> {
    let mut client = cluster.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version integer PRIMARY KEY,
            name text NOT NULL,
            applied timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let from: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[]).await?.get(0);
    if from > latest() {
        return Err(newer(from));
    }
    let mut names = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| Error(format!("migration {} ({}): {}", m.version, m.name, Error::from(e))))?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", &[&m.version, &m.name]).await?;
        names.push(m.name);
    }
    tx.commit().await?;
    Ok(Applied { from, to: latest(), names })
}

/// The schema's version; 0 when it was never made.
pub async fn current(cluster: &Cluster) -> Result<i32, Error> {
    let client = cluster.client().await?;
    let exists: bool = client.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[]).await?.get(0);
    if !exists {
        return Ok(0);
    }
    Ok(client.query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[]).await?.get(0))
}

/// Ok when the schema is exactly this binary's; else what to do about it.
pub async fn check(cluster: &Cluster) -> Result<(), Error> {
    let version = current(cluster).await?;
    match version.cmp(&latest()) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(Error(format!(
            "the database schema is at version {version}, older than this Tern's {}: run `tern cluster init`",
            latest()
        ))),
        std::cmp::Ordering::Greater => Err(newer(version)),
    }
}

fn newer(version: i32) -> Error {
    Error(format!(
        "the database schema is at version {version}, newer than this Tern's {}: upgrade Tern on this node",
        latest()
    ))
}
