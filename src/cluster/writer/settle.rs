//! A COMMIT whose answer never came (the connection broke, or the answer took too
//! long) may or may not have happened. Answering 451 when it did would have the
//! client send the message again, and it would be delivered twice; so the outcome
//! is looked up on a connection of its own before anything is said.
//!
//! Why this is sound: a new message's id is unique and made by this node, and while
//! the writer has not answered, nothing has been told of the message: no delivery
//! can have taken and deleted it (when this node is draining, others could, which
//! the transaction's status still tells). The transaction inserted all of the
//! batch's messages or none, so one of them present means it committed. None present
//! can also mean that the COMMIT is still being carried out by the old connection's
//! server process (a slow flush, a wait for a synchronous standby): the transaction's
//! id, taken inside it, is asked with `txid_status()` until it is `committed` or
//! `aborted` (PostgreSQL keeps that status for exactly this use). After a failover
//! the new primary may never have seen that id: it answers "in the future", which
//! means the transaction is not there. Recipient, hold, finished and released
//! changes are idempotent and are simply tried again.

use super::{Failure, Request, Write};
use crate::cluster::{ANSWER_TIMEOUT, Cluster, Error, answered};
use std::time::Duration;

/// How often a transaction still in progress is asked about again.
const POLL: Duration = Duration::from_millis(100);

/// What became of a transaction `xid` (0: one that stored no new message) whose
/// COMMIT failed with `cause` before the server answered it: `Ok` once it is known
/// to have committed, [`Failure::Again`] when it did not (or need not have), or a
/// final error when that cannot be known within [`ANSWER_TIMEOUT`].
pub(super) async fn outcome(cluster: &Cluster, batch: &[Request], xid: i64, cause: Error) -> Result<(), Failure> {
    let ids: Vec<&str> =
        batch.iter().filter_map(|r| if let Write::Store(m) = &r.write { Some(m.id.as_str()) } else { None }).collect();
    if ids.is_empty() {
        return Err(Failure::Again(cause));
    }
    match answered(look_up(cluster, &ids, xid)).await {
        Ok(Some(true)) => {
            tracing::warn!(error = %cause, messages = ids.len(), "database: the commit was cut off but happened");
            Ok(())
        }
        Ok(Some(false)) => Err(Failure::Again(Error(format!("{cause} (the commit did not happen)")))),
        Ok(None) => Err(unknown(cluster, &ids, cause, "the transaction committed but its messages are gone")),
        Err(e) => Err(unknown(cluster, &ids, cause, &e.0)),
    }
}

/// Refused although the messages may be stored: said loudly, since each may then be
/// delivered twice. Stored ones are leased to this process, which does not know
/// them, and the heartbeat would renew that lease: they are handed back (see
/// [`release`]) so that whichever node is free delivers them.
fn unknown(cluster: &Cluster, ids: &[&str], cause: Error, why: &str) -> Failure {
    tracing::error!(
        ids = %ids.join(","), error = %cause, why,
        "database: the outcome of a commit is unknown; refused, so these messages may be delivered twice"
    );
    let ids = ids.iter().map(|id| id.to_string()).collect();
    tokio::spawn(release(cluster.clone(), ids));
    Failure::Pool(Error(format!("{cause} (the outcome of the commit is unknown)")))
}

/// How often, and how many times, [`release`] tries: past that, the database has
/// been out of reach for longer than any lease, which has run out by itself.
const RELEASE_EVERY: Duration = Duration::from_secs(1);
const RELEASE_TRIES: u32 = 3600;

/// Hands back whichever of `ids` are stored and leased to this process.
async fn release(cluster: Cluster, ids: Vec<String>) {
    for _ in 0..RELEASE_TRIES {
        let done = answered(async {
            let client = cluster.client().await?;
            Ok(client
                .execute(
                    "UPDATE messages SET owner = NULL, instance = NULL, lease_until = NULL
                     WHERE id = ANY($1) AND instance = $2",
                    &[&ids, &cluster.instance],
                )
                .await?)
        })
        .await;
        if let Ok(found) = done {
            tracing::warn!(ids = %ids.join(","), found, "database: messages of an unknown commit handed back");
            return;
        }
        tokio::time::sleep(RELEASE_EVERY).await;
    }
}

/// Whether the transaction committed: Some(true) or Some(false) once known, None
/// when the database's answers disagree. Connections that fail are made again (as
/// while a standby is being promoted) until [`answered`] gives up.
async fn look_up(cluster: &Cluster, ids: &[&str], xid: i64) -> Result<Option<bool>, Error> {
    let mut last = Error("database: not asked".into());
    let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        match ask(cluster, ids, xid, deadline).await {
            Ok(known) => return Ok(known),
            Err(e) => last = e,
        }
        tokio::time::sleep(POLL).await;
    }
    Err(last)
}

/// One connection's answer (see [`look_up`]).
async fn ask(cluster: &Cluster, ids: &[&str], xid: i64, deadline: tokio::time::Instant) -> Result<Option<bool>, Error> {
    // A connection of its own: a pooled one might be the broken one, or wait behind it.
    let (client, _) = cluster.dedicated().await?;
    while tokio::time::Instant::now() < deadline {
        let present: i64 = client.query_one("SELECT count(*) FROM messages WHERE id = ANY($1)", &[&ids]).await?.get(0);
        if present > 0 {
            return Ok(Some(true));
        }
        let status = match client.query_one("SELECT txid_status($1)", &[&xid]).await {
            Ok(row) => row.get::<_, Option<String>>(0),
            // 22023: an id this server never gave out (lost with a failed primary).
            // 42883: a database without txid_status(), where the rows alone decide
            // (a COMMIT still in progress then makes the retry fail on its ids: a
            // refusal, never a loss).
            Err(e) if e.code().is_some_and(|c| matches!(c.code(), "22023" | "42883")) => return Ok(Some(false)),
            Err(e) => return Err(e.into()),
        };
        match status.as_deref() {
            Some("aborted") => return Ok(Some(false)),
            Some("in progress") => tokio::time::sleep(POLL).await,
            _ => return Ok(None),
        }
    }
    Err(Error(format!("database: the transaction was still in progress after {ANSWER_TIMEOUT:?}")))
}
