//! The queue's store on PostgreSQL, behind the same [`Store`] trait as the local
//! spool. Writes go through the group-committing writer; deliveries are claimed with
//! leases; a heartbeat renews them; `LISTEN/NOTIFY` (with polling behind it) says
//! when there may be new work.

use super::content::Rows;
use super::writer::{self, CHUNK, Coming, Counters, NewMessage, OnItsWay, Request, Write};
use super::{Cluster, Error, node};
use crate::queue::Summary;
use crate::spool::{BodyRef, Change, Content, Durable, Envelope, Part, RcptState, Store, Stored};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use tokio::sync::{Notify, mpsc, oneshot};

/// The store of one node.
pub struct PgStore {
    cluster: Cluster,
    writes: mpsc::UnboundedSender<Request>,
    last_id: AtomicU64,
    /// The low bits of every queue id this process makes, so that nodes making ids
    /// in the same millisecond do not collide.
    id_tag: u64,
    draining: Arc<AtomicBool>,
    in_flight: Arc<AtomicI32>,
    counters: Arc<Counters>,
    coming: Coming,
    wake: Arc<Notify>,
    runtime: tokio::runtime::Handle,
    summary: super::queue::SummaryCache,
}

/// The bits of a queue id that name the process (about a millisecond of time).
const TAG_BITS: u32 = 10;

impl PgStore {
    /// The store, with its writers, heartbeat and listener running; `config_hash`
    /// is reported with each heartbeat.
    pub fn start(cluster: Cluster) -> PgStore {
        let counters = Arc::new(Counters::default());
        let draining = Arc::new(AtomicBool::new(false));
        let coming = Coming::default();
        let writes = writer::start(cluster.clone(), counters.clone(), draining.clone(), coming.clone());
        let store = PgStore {
            id_tag: fastrand::u64(..(1 << TAG_BITS)),
            cluster,
            writes,
            last_id: AtomicU64::new(0),
            draining,
            in_flight: Arc::new(AtomicI32::new(0)),
            counters,
            coming,
            wake: Arc::new(Notify::new()),
            runtime: tokio::runtime::Handle::current(),
            summary: Default::default(),
        };
        super::wake::start(&store.cluster, store.wake.clone());
        super::wake::heartbeat(
            store.cluster.clone(),
            store.draining.clone(),
            store.in_flight.clone(),
            store.counters.clone(),
            store.wake.clone(),
        );
        store
    }

    /// `write` in the next commit; a store on its way counts until it is handed over.
    async fn write(&self, write: Write, on_its_way: Option<OnItsWay>) -> io::Result<()> {
        let (reply, wait) = oneshot::channel();
        self.writes.send(Request { write, reply }).map_err(|_| io::Error::other("database writer stopped"))?;
        drop(on_its_way);
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("database writer stopped")),
        }
    }

    async fn claim_due(&self, limit: usize) -> Result<Vec<Stored>, Error> {
        if self.draining.load(Ordering::Relaxed) || limit == 0 {
            return Ok(Vec::new());
        }
        let client = self.cluster.client().await?;
        // A lease that ran out, or one held by an earlier process of this node's name
        // (that process is gone: a live one keeps its name to itself), may be taken.
        let rows = client
            .query(
                "WITH c AS (
                    SELECT id FROM messages
                    WHERE (due IS NULL OR due <= extract(epoch FROM now())) AND NOT held
                      AND (lease_until IS NULL OR lease_until < now() OR (owner = $1 AND instance <> $2))
                    ORDER BY due LIMIT $3 FOR UPDATE SKIP LOCKED)
                 UPDATE messages m SET owner = $1, instance = $2, lease_until = now() + $4::float8 * interval '1 second'
                 FROM c WHERE m.id = c.id
                 RETURNING m.id, m.envelope, m.size",
                &[&self.cluster.node, &self.cluster.instance, &(limit as i64), &self.cluster.lease_secs()],
            )
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let states = recipient_states(&client, &ids).await?;
        Ok(rows.iter().filter_map(|r| assemble(r.get(0), r.get(1), r.get(2), &states)).collect())
    }
}

/// Every recipient's state of the messages `ids`.
pub(super) async fn recipient_states(
    client: &tokio_postgres::Client,
    ids: &[String],
) -> Result<HashMap<String, Vec<(usize, RcptState)>>, Error> {
    let rows =
        client.query("SELECT message_id, idx, state FROM recipients WHERE message_id = ANY($1)", &[&ids]).await?;
    let mut states: HashMap<String, Vec<(usize, RcptState)>> = HashMap::new();
    for row in rows {
        let idx: i32 = row.get(1);
        let state: &str = row.get(2);
        match serde_json::from_str(state) {
            Ok(state) => states.entry(row.get(0)).or_default().push((idx as usize, state)),
            Err(e) => tracing::error!(id = row.get::<_, &str>(0), idx, error = %e, "unreadable recipient state"),
        }
    }
    Ok(states)
}

/// A message from its row and its recipients' states; none when unreadable.
pub(super) fn assemble(
    id: String,
    envelope: &str,
    len: i64,
    states: &HashMap<String, Vec<(usize, RcptState)>>,
) -> Option<Stored> {
    let mut envelope: Envelope = match serde_json::from_str(envelope) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(id, error = %e, "unreadable envelope in the database");
            return None;
        }
    };
    for (idx, state) in states.get(&id)? {
        if let Some(r) = envelope.recipients.get_mut(*idx) {
            r.state = state.clone();
        }
    }
    envelope.id = id;
    Some(Stored { envelope, body: BodyRef { segment: 0, offset: 0, len: len as u64 } })
}

/// The content of `parts` in rows of [`CHUNK`] bytes (blocking reads of spill files).
fn chunks(parts: Vec<Part>) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut rows: Vec<Vec<u8>> = Vec::new();
    let mut total = 0;
    let mut push = |bytes: &[u8]| {
        let mut bytes = bytes;
        while !bytes.is_empty() {
            if rows.last().is_none_or(|r| r.len() >= CHUNK) {
                rows.push(Vec::with_capacity(CHUNK.min(bytes.len())));
            }
            let last = rows.last_mut().expect("pushed");
            let n = (CHUNK - last.len()).min(bytes.len());
            last.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    };
    for part in parts {
        total += part.len();
        match part {
            Part::Bytes(b) => push(&b),
            Part::File { file, offset, len } => {
                let mut buf = vec![0; (len as usize).min(CHUNK)];
                let mut at = 0;
                while at < len {
                    let n = ((len - at) as usize).min(buf.len());
                    file.read_exact_at(&mut buf[..n], offset + at)?;
                    push(&buf[..n]);
                    at += n as u64;
                }
            }
        }
    }
    Ok((rows, total))
}

impl Store for PgStore {
    /// 16 hex digits of Unix microseconds, as the spool's, whose lowest bits name
    /// this process.
    fn new_id(&self) -> String {
        let mask = (1u64 << TAG_BITS) - 1;
        let now = (chrono::Utc::now().timestamp_micros() as u64 & !mask) | self.id_tag;
        let prev = self
            .last_id
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| Some(now.max(last + (1 << TAG_BITS))))
            .expect("closure never fails");
        format!("{:016X}", now.max(prev + (1 << TAG_BITS)))
    }

    fn store<'a>(&'a self, envelope: &'a Envelope, parts: Vec<Part>) -> Durable<'a, Stored> {
        Box::pin(async move {
            let on_its_way = self.coming.begin();
            // Spill files are read off the async threads; bytes in memory are not worth the hop.
            let (rows, len) = if parts.iter().any(|p| matches!(p, Part::File { .. })) {
                tokio::task::spawn_blocking(move || chunks(parts)).await.map_err(io::Error::other)??
            } else {
                chunks(parts)?
            };
            let recipients = envelope
                .recipients
                .iter()
                .map(|r| (serde_json::to_string(&r.state).expect("state serializes"), writer::next_attempt(&r.state)))
                .collect();
            let message = NewMessage {
                id: envelope.id.clone(),
                envelope: serde_json::to_string(envelope).expect("envelope serializes"),
                len: len as i64,
                recipients,
                chunks: rows,
            };
            self.write(Write::Store(message), Some(on_its_way)).await?;
            Ok(Stored { envelope: envelope.clone(), body: BodyRef { segment: 0, offset: 0, len } })
        })
    }

    fn record<'a>(&'a self, changes: &'a [Change]) -> Durable<'a, ()> {
        Box::pin(self.write(Write::Record(changes.to_vec()), None))
    }

    /// Every message in the database (for listings); the scheduler claims instead.
    fn load(&self) -> Durable<'_, Vec<Stored>> {
        Box::pin(async move { Ok(super::answered(super::queue::all(&self.cluster)).await?) })
    }

    fn compact(&self) -> Durable<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn open_content(&self, stored: &Stored) -> io::Result<Content> {
        let rows = Rows {
            cluster: self.cluster.clone(),
            id: stored.envelope.id.clone(),
            runtime: self.runtime.clone(),
            last: Default::default(),
        };
        Ok(Content::from_reader(Arc::new(rows), stored.body.len))
    }

    fn shared(&self) -> bool {
        true
    }

    fn claim(&self, limit: usize) -> Durable<'_, Vec<Stored>> {
        Box::pin(async move { Ok(super::answered(self.claim_due(limit)).await?) })
    }

    fn release<'a>(&'a self, messages: &'a [(String, i64)]) -> Durable<'a, ()> {
        Box::pin(self.write(Write::Release(messages.to_vec()), None))
    }

    fn take<'a>(&'a self, ids: &'a [String], held: bool) -> Durable<'a, Vec<Stored>> {
        Box::pin(async move { Ok(super::answered(super::queue::take(&self.cluster, ids, held)).await?) })
    }

    fn summary(&self) -> Durable<'_, Option<Summary>> {
        Box::pin(async move { Ok(Some(super::answered(super::queue::summary(&self.cluster, &self.summary)).await?)) })
    }

    fn wake(&self) -> Durable<'_, ()> {
        let poll = super::wake::poll_interval(self.cluster.lease);
        Box::pin(async move {
            let _ = tokio::time::timeout(poll, self.wake.notified()).await;
            Ok(())
        })
    }

    fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    fn set_load(&self, in_flight: usize) {
        self.in_flight.store(in_flight as i32, Ordering::Relaxed);
    }

    fn incoming(&self) -> Option<Box<dyn Send + Sync>> {
        Some(Box::new(self.coming.begin()))
    }
}

/// Ends this node's membership: leases back, name free.
pub async fn leave(cluster: &Cluster) {
    if let Err(e) = node::stop(cluster).await {
        tracing::warn!(error = %e, "cannot tell the cluster this node stops; its leases run out by themselves");
    }
}
