//! The queue of the whole cluster, for the mail administrator: every message in the
//! database whichever node accepted it, messages taken over by id for an operation,
//! and the queue's sizes in one aggregate query.

use super::store::{assemble, recipient_states};
use super::{Cluster, Error};
use crate::queue::Summary;
use crate::spool::Stored;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Every message in the database, in id (arrival) order, its hold as the `held`
/// column says.
pub async fn all(cluster: &Cluster) -> Result<Vec<Stored>, Error> {
    let client = cluster.client().await?;
    let rows = client.query("SELECT id, envelope, size, held FROM messages ORDER BY id", &[]).await?;
    messages(&client, &rows).await
}

/// Leases the messages `ids` to this node whatever their due time, each only when
/// no live lease holds it: one another node is attempting is left alone, and so is
/// one this process leased already (a claim of it is on its way to the scheduler).
/// Held ones only when `held`. Answers the messages taken.
pub async fn take(cluster: &Cluster, ids: &[String], held: bool) -> Result<Vec<Stored>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let client = cluster.client().await?;
    let rows = client
        .query(
            "WITH c AS (
                SELECT id FROM messages
                WHERE id = ANY($3) AND ($5 OR NOT held)
                  AND (lease_until IS NULL OR lease_until < now() OR (owner = $1 AND instance <> $2))
                FOR UPDATE SKIP LOCKED)
             UPDATE messages m SET owner = $1, instance = $2, lease_until = now() + $4::float8 * interval '1 second'
             FROM c WHERE m.id = c.id
             RETURNING m.id, m.envelope, m.size, m.held",
            &[&cluster.node, &cluster.instance, &ids, &cluster.lease_secs(), &held],
        )
        .await?;
    messages(&client, &rows).await
}

/// The messages of rows `(id, envelope, size, held)`, with their recipients' states.
async fn messages(client: &tokio_postgres::Client, rows: &[tokio_postgres::Row]) -> Result<Vec<Stored>, Error> {
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let states = recipient_states(client, &ids).await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some(with_hold(assemble(r.get(0), r.get(1), r.get(2), &states)?, r.get(3))))
        .collect())
}

/// How long an answer of [`summary`] is reused: scrapes and status requests in a
/// burst cost one query.
const SUMMARY_FRESH: Duration = Duration::from_secs(2);

/// The last [`summary`] and when it was counted.
#[derive(Default)]
pub struct SummaryCache(Mutex<Option<(Instant, Summary)>>);

/// How many messages of the cluster wait in each state; "in flight" are those a
/// live lease holds (being attempted, or due and about to be).
pub async fn summary(cluster: &Cluster, cache: &SummaryCache) -> Result<Summary, Error> {
    let mut last = cache.0.lock().await;
    if let Some((at, summary)) = &*last
        && at.elapsed() < SUMMARY_FRESH
    {
        return Ok(summary.clone());
    }
    let client = cluster.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE NOT held AND NOT deferred),
                    count(*) FILTER (WHERE NOT held AND deferred),
                    count(*) FILTER (WHERE held),
                    count(*) FILTER (WHERE lease_until > now()),
                    extract(epoch FROM min(accepted))::int8
             FROM (SELECT m.held, m.lease_until, m.accepted,
                          EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
                                  AND r.state::jsonb ->> 'state' = 'deferred') AS deferred
                   FROM messages m) q",
            &[],
        )
        .await?;
    let count = |i: usize| row.get::<_, i64>(i) as usize;
    let summary = Summary {
        queued: count(0),
        deferred: count(1),
        held: count(2),
        in_flight: count(3),
        oldest_arrival: row.get(4),
    };
    *last = Some((Instant::now(), summary.clone()));
    Ok(summary)
}

/// The message of a row, its hold from the `held` column.
fn with_hold(mut stored: Stored, held: bool) -> Stored {
    stored.envelope.held = held;
    stored
}
