//! The MTA-STS policy cache in the `mta_sts` table: a policy fetched by one node is
//! used by all (RFC 8461 §5.1 rules unchanged, [`crate::tls_policy::cache::decide`]).
//! Entries are the file cache's JSON. While the database is away each node uses
//! what it holds in memory.

use super::{Error, guarded};
use crate::tls_policy::cache::Entry;

/// The cluster's entry for `domain`: `None` when the database failed, `Some(None)`
/// when it has none (or none readable).
pub async fn load(domain: &str) -> Option<Option<Entry>> {
    let shared = super::get()?;
    let domain = domain.to_ascii_lowercase();
    guarded("mta_sts", async {
        let client = shared.cluster.client().await?;
        let row = client.query_opt("SELECT entry FROM mta_sts WHERE domain = $1", &[&domain]).await?;
        Ok(row.and_then(|r| serde_json::from_str(r.get(0)).ok()))
    })
    .await
}

/// Stores `entry` for `domain` for every node; false when the database failed.
pub async fn store(domain: &str, entry: &Entry) -> bool {
    let Some(shared) = super::get() else { return false };
    let domain = domain.to_ascii_lowercase();
    guarded("mta_sts", async {
        let text = serde_json::to_string(entry).map_err(|e| Error(e.to_string()))?;
        let client = shared.cluster.client().await?;
        client
            .execute(
                "INSERT INTO mta_sts (domain, entry) VALUES ($1, $2)
                 ON CONFLICT (domain) DO UPDATE SET entry = $2",
                &[&domain, &text],
            )
            .await?;
        Ok(())
    })
    .await
    .is_some()
}
