//! Group commit over the database: every write that arrives while a transaction
//! runs shares the next one. New messages go in with one multi-row `INSERT … SELECT
//! FROM UNNEST` per table, so that concurrent sessions cost one commit between them;
//! recipient results, holds, finished messages and released leases ride along.
//! Before it begins, a batch waits briefly for stores already on their way
//! ([`GATHER`]), and one without stores for company ([`LINGER`]); its statements are
//! prepared once per connection and sent together.

mod settle;

use super::{Cluster, Error};
use crate::spool::{Change, RcptState};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

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

/// How long a batch with a store in it may wait for messages on their way (see
/// [`Coming`]) before its transaction begins, as PostgreSQL's `commit_delay` waits
/// for `commit_siblings`: only while some are, and then for all of it. Measured with
/// `bench/run` scenario D (three nodes, 7 sessions each, 2 cores): 0.38 database
/// commits per message without a window, 0.36–0.37 with windows of 1–3 ms that
/// ended once nothing was on its way, 0.32 with this one; one node 0.13 either way.
const GATHER: Duration = Duration::from_millis(2);

/// How long a batch of delivery results and released leases (which no client
/// waits for) may wait for company, stores above all, before it commits alone.
const LINGER: Duration = Duration::from_millis(2);

/// Messages on their way to the writer: content arriving, or a store not yet
/// handed over. A batch about to commit waits a little for them (see [`GATHER`]).
#[derive(Clone, Default)]
pub struct Coming(Arc<AtomicUsize>);

/// One message on its way; it counts until dropped.
pub struct OnItsWay(Arc<AtomicUsize>);

impl Coming {
    pub fn begin(&self) -> OnItsWay {
        self.0.fetch_add(1, Ordering::Relaxed);
        OnItsWay(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the writers; they end when every sender is gone.
pub fn start(
    cluster: Cluster,
    counters: Arc<Counters>,
    draining: Arc<AtomicBool>,
    coming: Coming,
) -> mpsc::UnboundedSender<Request> {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WRITERS {
        let (cluster, counters, draining, rx, coming) =
            (cluster.clone(), counters.clone(), draining.clone(), rx.clone(), coming.clone());
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else { return };
                    let mut bytes = size(&first);
                    let mut batch = vec![first];
                    let began = Instant::now();
                    let mut stores_since = is_store(&batch[0]).then_some(began);
                    let mut waited = false;
                    while batch.len() < MAX_REQUESTS && bytes < MAX_BYTES {
                        let next = match rx.try_recv() {
                            Ok(next) => next,
                            Err(_) => {
                                // Once others were on their way, the window runs out in full:
                                // what arrives meanwhile shares the commit.
                                waited |= stores_since.is_some() && coming.any();
                                let until = match stores_since {
                                    Some(_) if !waited => break,
                                    Some(since) => since + GATHER,
                                    None => began + LINGER,
                                };
                                match tokio::time::timeout_at(until, rx.recv()).await {
                                    Ok(Some(next)) => next,
                                    _ => break,
                                }
                            }
                        };
                        if stores_since.is_none() && is_store(&next) {
                            stores_since = Some(Instant::now());
                        }
                        bytes += size(&next);
                        batch.push(next);
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

fn is_store(request: &Request) -> bool {
    matches!(request.write, Write::Store(_))
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

/// The statements of a transaction, prepared once per connection. New messages come
/// with the transaction's id, for settling a cut-off COMMIT.
const INSERT_MESSAGES: &str = "WITH stored AS (
       INSERT INTO messages (id, envelope, size, accepted_by, due, owner, instance, lease_until)
       SELECT i, e, s, $4, 0, $5::text, $6::text,
              CASE WHEN $5::text IS NULL THEN NULL ELSE now() + $7::float8 * interval '1 second' END
       FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS t (i, e, s)
     ) SELECT txid_current()";
const INSERT_RECIPIENTS: &str = "INSERT INTO recipients (message_id, idx, state, next_attempt)
     SELECT * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[])";
const INSERT_CONTENTS: &str =
    "INSERT INTO contents (message_id, seq, data) SELECT * FROM UNNEST($1::text[], $2::int4[], $3::bytea[])";
const UPDATE_STATES: &str = "UPDATE recipients r SET state = u.s, next_attempt = u.n
     FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::int8[]) AS u (m, i, s, n)
     WHERE r.message_id = u.m AND r.idx = u.i";
const UPDATE_DUE: &str =
    "UPDATE messages m SET due = (SELECT min(r.next_attempt) FROM recipients r WHERE r.message_id = m.id)
     WHERE m.id = ANY($1)";
const UPDATE_HELD: &str =
    "UPDATE messages m SET held = u.h FROM UNNEST($1::text[], $2::bool[]) AS u (i, h) WHERE m.id = u.i";
const DELETE_DONE: &str = "DELETE FROM messages WHERE id = ANY($1)";
const RELEASE: &str = "UPDATE messages m SET owner = NULL, instance = NULL, lease_until = NULL,
         due = CASE WHEN m.due IS NULL THEN NULL ELSE greatest(m.due, u.d) END
     FROM UNNEST($1::text[], $2::int8[]) AS u (i, d) WHERE m.id = u.i AND m.instance = $3";

/// A batch as the parameters of its statements; an empty list skips its statement.
#[derive(Default)]
struct Rows<'a> {
    ids: Vec<&'a str>,
    envelopes: Vec<&'a str>,
    lens: Vec<i64>,
    r_ids: Vec<&'a str>,
    r_idx: Vec<i32>,
    r_state: Vec<&'a str>,
    r_next: Vec<Option<i64>>,
    c_ids: Vec<&'a str>,
    c_seq: Vec<i32>,
    c_data: Vec<&'a [u8]>,
    s_ids: Vec<&'a str>,
    s_idx: Vec<i32>,
    s_json: Vec<String>,
    s_next: Vec<Option<i64>>,
    touched: Vec<&'a str>,
    h_ids: Vec<&'a str>,
    h_held: Vec<bool>,
    done: Vec<&'a str>,
    released: Vec<&'a str>,
    dues: Vec<i64>,
}

impl<'a> Rows<'a> {
    fn of(batch: &'a [Request]) -> Rows<'a> {
        let mut rows = Rows::default();
        // New messages, their recipients and their content.
        for m in batch.iter().filter_map(|r| if let Write::Store(m) = &r.write { Some(m) } else { None }) {
            rows.ids.push(&m.id);
            rows.envelopes.push(&m.envelope);
            rows.lens.push(m.len);
            for (i, (state, next)) in m.recipients.iter().enumerate() {
                rows.r_ids.push(&m.id);
                rows.r_idx.push(i as i32);
                rows.r_state.push(state);
                rows.r_next.push(*next);
            }
            for (seq, chunk) in m.chunks.iter().enumerate() {
                rows.c_ids.push(&m.id);
                rows.c_seq.push(seq as i32);
                rows.c_data.push(chunk);
            }
        }

        // Changes, the last of each kind per message and recipient winning; a
        // finished message's states go with its row.
        let mut states: HashMap<(&str, i32), (String, Option<i64>)> = HashMap::new();
        let mut holds: HashMap<&str, bool> = HashMap::new();
        for change in
            batch.iter().filter_map(|r| if let Write::Record(c) = &r.write { Some(c) } else { None }).flatten()
        {
            match change {
                Change::Recipient { id, index, state } => {
                    let json = serde_json::to_string(state).expect("state serializes");
                    states.insert((id.as_str(), *index as i32), (json, next_attempt(state)));
                }
                Change::Hold { id, held } => {
                    holds.insert(id.as_str(), *held);
                }
                Change::Done { id } => rows.done.push(id.as_str()),
            }
        }
        for ((id, i), (json, next)) in states {
            if !rows.done.contains(&id) {
                rows.s_ids.push(id);
                rows.s_idx.push(i);
                rows.s_json.push(json);
                rows.s_next.push(next);
            }
        }
        rows.touched = rows.s_ids.clone();
        rows.touched.sort_unstable();
        rows.touched.dedup();
        (rows.h_ids, rows.h_held) = holds.into_iter().unzip();

        // Leases handed back: the message waits for its due time, for any node.
        let mut released: HashMap<&str, i64> = HashMap::new();
        for (id, due) in
            batch.iter().filter_map(|r| if let Write::Release(v) = &r.write { Some(v) } else { None }).flatten()
        {
            released.insert(id.as_str(), *due);
        }
        (rows.released, rows.dues) = released.into_iter().unzip();
        rows
    }

    /// Whether the transaction wakes the schedulers: work any node may take.
    fn notify(&self, owned: bool) -> bool {
        let now = crate::queue::now();
        (!owned && !self.ids.is_empty()) || !self.h_ids.is_empty() || self.dues.iter().any(|&d| d <= now)
    }
}

/// The batch in one transaction: its statements are sent together (tokio-postgres
/// pipelines what one client is asked at once, and runs it in order), so that a
/// batch costs three round trips (`BEGIN`, the statements, `COMMIT`) whatever it holds.
async fn transaction(cluster: &Cluster, batch: &[Request], owned: bool, progress: &Progress) -> Result<(), Failure> {
    let rows = Rows::of(batch);
    let mut client = cluster.client().await.map_err(Failure::Pool)?;
    let tx = client.transaction().await?;
    let t = &tx;
    let wanted = |sql: &'static str, rows: bool| async move {
        Ok::<_, tokio_postgres::Error>(if rows { Some(t.prepare_cached(sql).await?) } else { None })
    };
    let (insert_messages, insert_recipients, insert_contents, update_states, update_due, update_held, delete, release) =
        tokio::try_join!(
            wanted(INSERT_MESSAGES, !rows.ids.is_empty()),
            wanted(INSERT_RECIPIENTS, !rows.r_ids.is_empty()),
            wanted(INSERT_CONTENTS, !rows.c_ids.is_empty()),
            wanted(UPDATE_STATES, !rows.s_ids.is_empty()),
            wanted(UPDATE_DUE, !rows.touched.is_empty()),
            wanted(UPDATE_HELD, !rows.h_ids.is_empty()),
            wanted(DELETE_DONE, !rows.done.is_empty()),
            wanted(RELEASE, !rows.released.is_empty()),
        )?;
    let owner = owned.then_some(cluster.node.as_str());
    let instance = owned.then_some(cluster.instance.as_str());
    let lease = cluster.lease_secs();
    // Biased: the statements go out in this order on the first poll.
    tokio::try_join!(
        biased;
        async {
            if let Some(s) = insert_messages {
                let params: [&(dyn ToSql + Sync); 7] =
                    [&rows.ids, &rows.envelopes, &rows.lens, &cluster.node, &owner, &instance, &lease];
                progress.xid.store(t.query_one(&s, &params).await?.get(0), Ordering::SeqCst);
            }
            Ok(())
        },
        run(t, insert_recipients, vec![&rows.r_ids, &rows.r_idx, &rows.r_state, &rows.r_next]),
        run(t, insert_contents, vec![&rows.c_ids, &rows.c_seq, &rows.c_data]),
        run(t, update_states, vec![&rows.s_ids, &rows.s_idx, &rows.s_json, &rows.s_next]),
        run(t, update_due, vec![&rows.touched]),
        run(t, update_held, vec![&rows.h_ids, &rows.h_held]),
        run(t, delete, vec![&rows.done]),
        run(t, release, vec![&rows.released, &rows.dues, &cluster.instance]),
        async {
            if rows.notify(owned) { t.batch_execute("NOTIFY tern_queue").await } else { Ok(()) }
        },
    )?;
    progress.commit_sent.store(true, Ordering::SeqCst);
    tx.commit().await?;
    Ok(())
}

/// `statement` with `params`, when the batch has rows for it.
async fn run(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: Option<tokio_postgres::Statement>,
    params: Vec<&(dyn ToSql + Sync)>,
) -> Result<(), tokio_postgres::Error> {
    match statement {
        Some(s) => tx.execute(&s, &params).await.map(drop),
        None => Ok(()),
    }
}
