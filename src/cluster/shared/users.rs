//! Users in the `users` table (`[auth] users = "database"`): address → argon2id
//! hash, as in the users file. Each node keeps a copy in memory, checked against
//! `users_version` every second and read again when it changed, so AUTH costs no
//! round trip and keeps working on the last copy while the database is away.
//! `tern user add|passwd|del|list` change the table directly.

use super::{Error, failed};
use crate::cluster::Cluster;
use crate::policy::users::{Change, canonical, hash};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often a node asks whether the users changed.
const POLL: Duration = Duration::from_secs(1);

/// This node's copy of the table.
pub struct Table {
    copy: RwLock<(i64, Arc<BTreeMap<String, String>>)>,
    /// The configuration takes its users from the table (`[auth] users =
    /// "database"`), now or since a reload: only then is the copy kept fresh.
    used: AtomicBool,
}

/// The table's version and content.
async fn read(cluster: &Cluster) -> Result<(i64, BTreeMap<String, String>), Error> {
    let mut client = cluster.client().await?;
    // One snapshot: the version goes with the rows read.
    let tx = client.build_transaction().isolation_level(tokio_postgres::IsolationLevel::RepeatableRead).start().await?;
    let version: i64 = tx.query_one("SELECT version FROM users_version", &[]).await?.get(0);
    let rows = tx.query("SELECT address, hash FROM users", &[]).await?;
    tx.commit().await?;
    Ok((version, rows.into_iter().map(|r| (r.get(0), r.get(1))).collect()))
}

impl Table {
    /// Reads the table (at start: a failure stops the start).
    pub async fn load(cluster: &Cluster) -> Result<Table, Error> {
        let (version, users) = read(cluster).await?;
        Ok(Table { copy: RwLock::new((version, Arc::new(users))), used: AtomicBool::new(false) })
    }

    /// Marks the table as the configuration's users (see [`Table::follow`]).
    pub fn used(&self) -> &Table {
        self.used.store(true, Ordering::Relaxed);
        self
    }

    /// The hash of a canonical user name.
    pub fn hash(&self, name: &str) -> Option<String> {
        self.copy.read().unwrap_or_else(|e| e.into_inner()).1.get(name).cloned()
    }

    /// Keeps the copy fresh, for as long as the process runs, once it is
    /// [`used`](Table::used): a node with a users file asks nothing.
    pub fn follow(&'static self, cluster: &Cluster) {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !self.used.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = self.refresh(&cluster).await {
                    failed("users", &e);
                }
            }
        });
    }

    async fn refresh(&self, cluster: &Cluster) -> Result<(), Error> {
        let known = self.copy.read().unwrap_or_else(|e| e.into_inner()).0;
        let version: i64 = {
            let client = cluster.client().await?;
            client.query_one("SELECT version FROM users_version", &[]).await?.get(0)
        };
        if version != known {
            let (version, users) = read(cluster).await?;
            tracing::info!(users = users.len(), version, "users read again from the cluster's database");
            *self.copy.write().unwrap_or_else(|e| e.into_inner()) = (version, Arc::new(users));
        }
        Ok(())
    }
}

/// Adds a user or changes a password (`must_exist` for `passwd`).
pub async fn set_password(
    cluster: &Cluster,
    address: &str,
    password: &str,
    must_exist: bool,
) -> Result<Change, String> {
    let name = canonical(address).ok_or_else(|| format!("{address:?} is not an address"))?;
    if password.is_empty() {
        return Err("empty password".into());
    }
    let hashed = hash(password)?;
    let run = async {
        let mut client = cluster.client().await?;
        let tx = client.transaction().await?;
        let exists = tx.query_opt("SELECT 1 FROM users WHERE address = $1 FOR UPDATE", &[&name]).await?.is_some();
        if exists != must_exist {
            return Ok(Err(exists));
        }
        tx.execute(
            "INSERT INTO users (address, hash) VALUES ($1, $2)
             ON CONFLICT (address) DO UPDATE SET hash = $2, changed = clock_timestamp()",
            &[&name, &hashed],
        )
        .await?;
        tx.execute("UPDATE users_version SET version = version + 1", &[]).await?;
        tx.commit().await?;
        Ok::<_, Error>(Ok(exists))
    };
    match run.await.map_err(|e| e.to_string())? {
        Ok(true) => Ok(Change::Updated),
        Ok(false) => Ok(Change::Added),
        Err(true) => Err(format!("user {name} exists already (use `tern user passwd`)")),
        Err(false) => Err(format!("no user {name}")),
    }
}

/// Removes a user.
pub async fn remove(cluster: &Cluster, address: &str) -> Result<(), String> {
    let name = canonical(address).ok_or_else(|| format!("{address:?} is not an address"))?;
    let run = async {
        let mut client = cluster.client().await?;
        let tx = client.transaction().await?;
        let removed = tx.execute("DELETE FROM users WHERE address = $1", &[&name]).await?;
        if removed > 0 {
            tx.execute("UPDATE users_version SET version = version + 1", &[]).await?;
        }
        tx.commit().await?;
        Ok::<_, Error>(removed > 0)
    };
    match run.await.map_err(|e| e.to_string())? {
        true => Ok(()),
        false => Err(format!("no user {name}")),
    }
}

/// The users' addresses, sorted.
pub async fn list(cluster: &Cluster) -> Result<Vec<String>, String> {
    let run = async {
        let client = cluster.client().await?;
        let rows = client.query("SELECT address FROM users ORDER BY address", &[]).await?;
        Ok::<_, Error>(rows.into_iter().map(|r| r.get(0)).collect())
    };
    run.await.map_err(|e| e.to_string())
}
