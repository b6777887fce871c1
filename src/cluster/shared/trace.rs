//! The message trace in the `trace` table, so that `tern queue trace` and the admin
//! API on any node show a message's events from every node that wrote them.
//!
//! Events are batched like the file trace: a background task writes what gathered
//! at most every [`ROUND`] in one `INSERT … SELECT FROM unnest(…)`, never a round trip
//! per event. While the database is away the events wait in memory (at most
//! [`MAX_HELD`]; beyond that the oldest are dropped, and the log says how many) and
//! are written when it is back.

use super::{Error, failed};
use crate::admin::trace::{Entry, MAX_EVENTS};
use crate::cluster::Cluster;
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long events gather before they are written.
const ROUND: Duration = Duration::from_millis(250);
/// Most events written by one statement.
const BATCH: usize = 1000;
/// Most events held while the database cannot take them.
const MAX_HELD: usize = 100_000;

enum Msg {
    Entry(Entry),
    /// Write out what is held, then answer.
    Flush(oneshot::Sender<()>),
}

static SINK: OnceLock<mpsc::UnboundedSender<Msg>> = OnceLock::new();

/// Starts the writer (once per process).
pub fn start(cluster: &Cluster) {
    if SINK.get().is_some() {
        return;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if SINK.set(tx).is_ok() {
        tokio::spawn(writer(cluster.clone(), rx));
    }
}

/// Whether the trace goes to the database (then [`send`] takes every event).
pub fn active() -> bool {
    SINK.get().is_some()
}

/// Hands an event to the writer; false when the trace is not in the database.
pub fn send(entry: Entry) -> bool {
    match SINK.get() {
        Some(tx) => {
            let _ = tx.send(Msg::Entry(entry));
            true
        }
        None => false,
    }
}

/// Writes out what the writer holds (before a read, and at shutdown); gives up
/// after a few seconds when the database does not answer.
pub async fn flush() {
    let Some(tx) = SINK.get() else { return };
    let (reply, wait) = oneshot::channel();
    if tx.send(Msg::Flush(reply)).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
    }
}

async fn writer(cluster: Cluster, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut held: VecDeque<Entry> = VecDeque::new();
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut dropped = 0usize;
    loop {
        // Wait for something, then let a round's worth gather.
        if held.is_empty() && waiting.is_empty() {
            match rx.recv().await {
                Some(msg) => take(msg, &mut held, &mut waiting),
                None => return,
            }
            if waiting.is_empty() {
                tokio::time::sleep(ROUND).await;
            }
        }
        while let Ok(msg) = rx.try_recv() {
            take(msg, &mut held, &mut waiting);
        }
        if held.len() > MAX_HELD {
            let excess = held.len() - MAX_HELD;
            held.drain(..excess);
            dropped += excess;
        }
        while !held.is_empty() {
            let n = held.len().min(BATCH);
            match write(&cluster, held.range(..n)).await {
                Ok(()) => {
                    held.drain(..n);
                }
                Err(e) => {
                    failed("trace", &e);
                    break;
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(dropped, "trace events dropped while the cluster's database was away");
            dropped = 0;
        }
        // Readers are answered even when the write failed: they read what is there.
        for reply in waiting.drain(..) {
            let _ = reply.send(());
        }
        if !held.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

fn take(msg: Msg, held: &mut VecDeque<Entry>, waiting: &mut Vec<oneshot::Sender<()>>) {
    match msg {
        Msg::Entry(entry) => held.push_back(entry),
        Msg::Flush(reply) => waiting.push(reply),
    }
}

async fn write<'a>(cluster: &Cluster, entries: impl Iterator<Item = &'a Entry>) -> Result<(), Error> {
    let (mut ids, mut ats, mut events) = (Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        ids.push(entry.id.clone());
        ats.push(entry.at);
        events.push(serde_json::to_string(entry).map_err(|e| Error(e.to_string()))?);
    }
    let client = cluster.client().await?;
    let statement = client
        .prepare_cached(
            "INSERT INTO trace (message_id, at, node, event)
             SELECT id, at, $4, event FROM unnest($1::text[], $2::int8[], $3::text[]) AS t (id, at, event)",
        )
        .await?;
    client.execute(&statement, &[&ids, &ats, &events, &cluster.node]).await?;
    Ok(())
}

/// The events of message `id`, from every node, in order.
pub async fn read(cluster: &Cluster, id: &str) -> Result<Vec<Entry>, Error> {
    flush().await;
    let id = id.to_ascii_uppercase();
    let client = cluster.client().await?;
    let rows = client
        .query("SELECT event FROM trace WHERE message_id = $1 ORDER BY at, seq LIMIT $2", &[&id, &(MAX_EVENTS as i64)])
        .await?;
    // An event this version cannot read (written by a newer node) is left out.
    Ok(rows.into_iter().filter_map(|r| serde_json::from_str::<Entry>(r.get(0)).ok()).collect())
}
