//! Group commit over the database: every write that arrives while a transaction
//! runs shares the next one. New messages go in with one multi-row `INSERT … SELECT
//! FROM UNNEST` per table, so that concurrent sessions cost one commit between them;
//! recipient results, holds, finished messages and released leases ride along.

mod settle;

use super::{Cluster, Error};
use crate::spool::{Change, RcptState};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use tokio::sync::{Mutex, mpsc, oneshot};

/// Content is kept in rows of at most this many bytes.
pub const CHUNK: usize = 1 << 20;

/// A batch holds at most this many requests, or this much content.
const MAX_REQUESTS: usize = 1000;
const MAX_BYTES: usize = 32 << 20;

/// Transactions run at once. One: what arrives while it commits shares the next,
/// which measured fewer commits per message than two at the same throughput.
const WRITERS: usize = 1;

/// A transaction that failed for a passing reason is tried this many times in all.
const TRIES: usize = 3;

/// A message as it goes into the database.
pub struct NewMessage {
    pub id: String,
    pub envelope: String,
    pub len: i64,
    /// Each recipient's state (JSON) and its next try (see [`next_attempt`]).
    pub recipients: Vec<(String, Option<i64>)>,
    pub chunks: Vec<Vec<u8>>,
}

pub enum Write {
    Store(NewMessage),
    Record(Vec<Change>),
    /// Messages handed back, each with the earliest time it may be tried again.
    Release(Vec<(String, i64)>),
}

pub struct Request {
    pub write: Write,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// The counters behind commits per message.
#[derive(Default)]
pub struct Counters {
    pub stored: AtomicI64,
    pub commits: AtomicI64,
}

/// When a recipient in `state` is next due: 0 for a new one, null once final.
pub fn next_attempt(state: &RcptState) -> Option<i64> {
    match state {
        RcptState::Queued => Some(0),
        RcptState::Deferred { next_attempt, .. } => Some(*next_attempt),
        RcptState::Delivered { .. } | RcptState::Bounced { .. } => None,
    }
}

/// Starts the writers; they end when every sender is gone.
pub fn start(cluster: Cluster, counters: Arc<Counters>, draining: Arc<AtomicBool>) -> mpsc::UnboundedSender<Request> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WRITERS {
        let (cluster, counters, draining, rx) = (cluster.clone(), counters.clone(), draining.clone(), rx.clone());
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else { return };
                    let mut bytes = size(&first);
                    let mut batch = vec![first];
                    while batch.len() < MAX_REQUESTS && bytes < MAX_BYTES {
                        match rx.try_recv() {
                            Ok(next) => {
                                bytes += size(&next);
                                batch.push(next);
                            }
                            Err(_) => break,
                        }
                    }
                    batch
                };
                let owned = !draining.load(Ordering::Relaxed);
                let result = commit(&cluster, &batch, owned).await;
                if result.is_ok() {
                    let stored = batch.iter().filter(|r| matches!(r.write, Write::Store(_))).count() as i64;
                    if stored > 0 {
                        counters.stored.fetch_add(stored, Ordering::Relaxed);
                        counters.commits.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::get().cluster_commit_batch.observe(stored as f64);
                    }
                }
                for request in batch {
                    let _ = request.reply.send(result.clone().map_err(|e| e.0));
                }
            }
        });
    }
    tx
}

fn size(request: &Request) -> usize {
    match &request.write {
        Write::Store(m) => m.len as usize + m.envelope.len(),
        _ => 256,
    }
}

impl Clone for Error {
    fn clone(&self) -> Error {
        Error(self.0.clone())
    }
}

/// One transaction for the batch, tried again after a serialization failure, a
/// deadlock or a lost connection; all or nothing each time. A COMMIT whose answer
/// never came is settled (see [`settle`]) before anything is said or tried again.
async fn commit(cluster: &Cluster, batch: &[Request], owned: bool) -> Result<(), Error> {
    let mut last = Error("no try".into());
    for attempt in 0..TRIES {
        let progress = Progress::default();
        let within = tokio::time::timeout(super::ANSWER_TIMEOUT, transaction(cluster, batch, owned, &progress));
        let mut outcome = within.await.unwrap_or_else(|_| {
            Err(Failure::Pool(Error(format!("database: no answer within {:?}", super::ANSWER_TIMEOUT))))
        });
        if progress.commit_sent.load(Ordering::SeqCst)
            && let Err(e) = outcome
        {
            outcome = match e {
                e if answered_by_server(&e) => Err(e),
                e => settle::outcome(cluster, batch, progress.xid.load(Ordering::SeqCst), Error::from(e)).await,
            };
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if retryable(&e) && attempt + 1 < TRIES => {
                tracing::warn!(error = %Error::from(e), attempt = attempt + 1, "database write failed; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => {
                last = Error::from(e);
                break;
            }
        }
    }
    Err(last)
}

/// How far a transaction got, kept outside it so that a timeout does not lose it.
#[derive(Default)]
struct Progress {
    /// `txid_current()` of a transaction that stores new messages, else 0.
    xid: AtomicI64,
    /// COMMIT was (or was about to be) sent.
    commit_sent: AtomicBool,
}

/// The server itself answered (a COMMIT it refused was rolled back).
fn answered_by_server(e: &Failure) -> bool {
    matches!(e, Failure::Db(e) if e.as_db_error().is_some())
}

enum Failure {
    Pool(Error),
    Db(tokio_postgres::Error),
    /// Safe to try again: known not to have committed, or only idempotent writes.
    Again(Error),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Failure {
        Failure::Db(e)
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::Pool(e) | Failure::Again(e) => e,
            Failure::Db(e) => Error::from(e),
        }
    }
}

/// Serialization failure (40001), deadlock (40P01), or a connection that broke before
/// COMMIT (one cut off during COMMIT was settled into [`Failure::Again`] or an
/// answer): the transaction did not happen.
fn retryable(e: &Failure) -> bool {
    match e {
        Failure::Pool(_) => false,
        Failure::Again(_) => true,
        Failure::Db(e) => match e.code() {
            Some(code) => matches!(code.code(), "40001" | "40P01"),
            None => e.is_closed(),
        },
    }
}

async fn transaction(cluster: &Cluster, batch: &[Request], owned: bool, progress: &Progress) -> Result<(), Failure> {
    let mut client = cluster.client().await.map_err(Failure::Pool)?;
    let tx = client.transaction().await?;
    let mut notify = false;

    // New messages, their recipients and their content.
    let new: Vec<&NewMessage> =
        batch.iter().filter_map(|r| if let Write::Store(m) = &r.write { Some(m) } else { None }).collect();
    if !new.is_empty() {
        let ids: Vec<&str> = new.iter().map(|m| m.id.as_str()).collect();
        let envelopes: Vec<&str> = new.iter().map(|m| m.envelope.as_str()).collect();
        let lens: Vec<i64> = new.iter().map(|m| m.len).collect();
        let owner = owned.then_some(cluster.node.as_str());
        let instance = owned.then_some(cluster.instance.as_str());
        // The transaction's id comes with the insert, for settling a cut-off COMMIT.
        let row = tx
            .query_one(
                "WITH stored AS (
                   INSERT INTO messages (id, envelope, size, accepted_by, due, owner, instance, lease_until)
                   SELECT i, e, s, $4, 0, $5::text, $6::text,
                          CASE WHEN $5::text IS NULL THEN NULL ELSE now() + $7::float8 * interval '1 second' END
                   FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t (i, e, s)
                 ) SELECT txid_current()",
                &[&ids, &envelopes, &lens, &cluster.node, &owner, &instance, &cluster.lease_secs()],
            )
            .await?;
        progress.xid.store(row.get(0), Ordering::SeqCst);
        let (mut r_ids, mut r_idx, mut r_state, mut r_next) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut c_ids, mut c_seq, mut c_data) = (Vec::new(), Vec::new(), Vec::new());
        for m in &new {
            for (i, (state, next)) in m.recipients.iter().enumerate() {
                r_ids.push(m.id.as_str());
                r_idx.push(i as i32);
                r_state.push(state.as_str());
                r_next.push(*next);
            }
            for (seq, chunk) in m.chunks.iter().enumerate() {
                c_ids.push(m.id.as_str());
                c_seq.push(seq as i32);
                c_data.push(chunk.as_slice());
            }
        }
        tx.execute(
            "INSERT INTO recipients (message_id, idx, state, next_attempt)
             SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[])",
            &[&r_ids, &r_idx, &r_state, &r_next],
        )
        .await?;
        if !c_ids.is_empty() {
            tx.execute(
                "INSERT INTO contents (message_id, seq, data) SELECT * FROM UNNEST($1::text[], $2::int4[], $3::bytea[])",
                &[&c_ids, &c_seq, &c_data],
            )
            .await?;
        }
        notify |= !owned;
    }

    // Changes, the last of each kind per message and recipient winning.
    let mut states: HashMap<(&str, i32), (String, Option<i64>)> = HashMap::new();
    let mut holds: HashMap<&str, bool> = HashMap::new();
    let mut done: Vec<&str> = Vec::new();
    for change in batch.iter().filter_map(|r| if let Write::Record(c) = &r.write { Some(c) } else { None }).flatten() {
        match change {
            Change::Recipient { id, index, state } => {
                let json = serde_json::to_string(state).expect("state serializes");
                states.insert((id.as_str(), *index as i32), (json, next_attempt(state)));
            }
            Change::Hold { id, held } => {
                holds.insert(id.as_str(), *held);
            }
            Change::Done { id } => done.push(id.as_str()),
        }
    }
    if !states.is_empty() {
        let (mut ids, mut idx, mut json, mut next) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((id, i), (s, n)) in &states {
            ids.push(*id);
            idx.push(*i);
            json.push(s.as_str());
            next.push(*n);
        }
        tx.execute(
            "UPDATE recipients r SET state = u.s, next_attempt = u.n
             FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[]) AS u (m, i, s, n)
             WHERE r.message_id = u.m AND r.idx = u.i",
            &[&ids, &idx, &json, &next],
        )
        .await?;
        let mut touched: Vec<&str> = ids;
        touched.sort_unstable();
        touched.dedup();
        tx.execute(
            "UPDATE messages m SET due = (SELECT min(r.next_attempt) FROM recipients r WHERE r.message_id = m.id)
             WHERE m.id = ANY($1)",
            &[&touched],
        )
        .await?;
    }
    if !holds.is_empty() {
        let (ids, held): (Vec<&str>, Vec<bool>) = holds.into_iter().unzip();
        tx.execute(
            "UPDATE messages m SET held = u.h FROM UNNEST($1::text[], $2::bool[]) AS u (i, h) WHERE m.id = u.i",
            &[&ids, &held],
        )
        .await?;
        notify = true;
    }
    if !done.is_empty() {
        tx.execute("DELETE FROM messages WHERE id = ANY($1)", &[&done]).await?;
    }

    // Leases handed back: the message waits for its due time, for any node.
    let mut released: HashMap<&str, i64> = HashMap::new();
    for (id, due) in
        batch.iter().filter_map(|r| if let Write::Release(v) = &r.write { Some(v) } else { None }).flatten()
    {
        released.insert(id.as_str(), *due);
    }
    if !released.is_empty() {
        let (ids, dues): (Vec<&str>, Vec<i64>) = released.into_iter().unzip();
        let now = crate::queue::now();
        notify |= dues.iter().any(|&d| d <= now);
        tx.execute(
            "UPDATE messages m SET owner = NULL, instance = NULL, lease_until = NULL,
                 due = CASE WHEN m.due IS NULL THEN NULL ELSE greatest(m.due, u.d) END
             FROM UNNEST($1::text[], $2::int8[]) AS u (i, d) WHERE m.id = u.i AND m.instance = $3",
            &[&ids, &dues, &cluster.instance],
        )
        .await?;
    }
    if notify {
        tx.batch_execute("NOTIFY tern_queue").await?;
    }
    progress.commit_sent.store(true, Ordering::SeqCst);
    tx.commit().await?;
    Ok(())
}
