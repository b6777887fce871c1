//! The message trace: every event of a message (received, stored, each delivery
//! attempt, what the administrator did, its final state, the notices sent), appended
//! as JSON lines to daily files `<data_dir>/trace/YYYY-MM-DD.jsonl` (UTC).
//!
//! Events are batched: one background thread writes them and syncs the file at most
//! once a second, never per event, so a crash may lose the last second of trace but
//! never mail (the spool is synced on its own). Daily files are removed once their
//! last day ended more than `[admin] trace_retention` ago. A message's trace is read
//! by scanning the kept files for its id, after the writer has flushed what it holds,
//! from the day before its queue id was made on (older files cannot hold it).

use crate::spool::Detail;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Most events one message's trace returns.
pub const MAX_EVENTS: usize = 10_000;

/// One event of one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Accepted from a client.
    Received {
        client: String,
        helo: String,
        /// `TLSv1.3 with cipher …`, none for plain text.
        tls: Option<String>,
        /// The authenticated user (SMTP AUTH or the local submitter).
        user: Option<String>,
        /// SPF, DKIM and DMARC results, when checked.
        auth: Option<String>,
        sender: String,
        recipients: Vec<String>,
        size: u64,
    },
    /// Judged by the spam filter: rspamd's `action` (or `error`), its score and
    /// symbols, and what became of the message (`outcome`).
    Scanned {
        action: String,
        score: Option<f64>,
        required_score: Option<f64>,
        /// The highest scoring symbols, at most 50.
        symbols: Vec<Symbol>,
        /// Why rspamd gave no verdict.
        error: Option<String>,
        outcome: String,
    },
    /// Made by Tern itself (a delivery status notification).
    Created { reason: String, recipients: Vec<String>, size: u64 },
    /// Durably in the spool.
    Stored,
    /// One delivery attempt to one destination (`local` for mailboxes here).
    Attempt {
        destination: String,
        /// The TLS of the last connection used: none, encrypted or verified.
        tls: Option<String>,
        results: Vec<RcptResult>,
    },
    /// Flush, hold, release, bounce or delete by the mail administrator.
    Admin { action: String },
    /// A delivery status notification was queued, as message `notice`.
    Notice { notice: String, to: String },
    /// A milter's verdict, edits or failure at a stage of the message's transaction.
    Milter { milter: String, stage: String, result: String },
    /// An aggregate report (`tls` or `dmarc`) about `domain`, made by Tern.
    ReportSent { kind: String, domain: String, recipients: Vec<String>, size: u64 },
    /// What the recipient domain's TLS policy (MTA-STS) or the sender's REQUIRETLS or
    /// `TLS-Required: No` made of a delivery.
    TlsPolicy { domain: String, detail: String },
    /// Nothing more will happen: `delivered`, `bounced`, `partly bounced` or `deleted`.
    Finished { state: String, delivered: usize, bounced: usize },
}

/// One rspamd symbol and its score.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Symbol {
    pub name: String,
    pub score: f64,
}

/// One recipient's result in an attempt: `delivered`, `deferred` or `failed`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RcptResult {
    pub recipient: String,
    pub outcome: String,
    pub detail: Detail,
}

/// One line per event, as `tern queue trace` prints it (results on lines of their own).
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let or = |o: &Option<String>, none: &'static str| o.clone().unwrap_or_else(|| none.to_string());
        let sender = |s: &str| if s.is_empty() { "<>".to_string() } else { format!("<{s}>") };
        match self {
            Event::Received { client, helo, tls, user, auth, sender: from, recipients, size } => {
                write!(f, "received from {client} (HELO {helo}), TLS: {}, ", or(tls, "none"))?;
                write!(f, "user: {}, checks: {}, ", or(user, "none"), or(auth, "none"))?;
                write!(f, "{} to {}, {size} bytes", sender(from), recipients.join(", "))
            }
            Event::Scanned { action, score, required_score, symbols, error, outcome } => {
                write!(f, "scanned by rspamd: {action}")?;
                if let Some(score) = score {
                    write!(f, ", score {score:.2}")?;
                    if let Some(required) = required_score {
                        write!(f, " / {required:.2}")?;
                    }
                }
                if let Some(error) = error {
                    write!(f, " ({error})")?;
                }
                write!(f, ": {outcome}")?;
                if !symbols.is_empty() {
                    let list: Vec<String> = symbols.iter().map(|s| format!("{}({:.2})", s.name, s.score)).collect();
                    write!(f, "\n    symbols: {}", list.join(", "))?;
                }
                Ok(())
            }
            Event::Created { reason, recipients, size } => {
                write!(f, "created: {reason}, to {}, {size} bytes", recipients.join(", "))
            }
            Event::Stored => f.write_str("stored in the spool"),
            Event::ReportSent { kind, domain, recipients, size } => {
                write!(f, "report sent: {kind} report about {domain} to {}, {size} bytes", recipients.join(", "))
            }
            Event::Attempt { destination, tls, results } => {
                write!(f, "attempt: {destination}")?;
                if let Some(tls) = tls {
                    write!(f, " (TLS: {tls})")?;
                }
                for r in results {
                    write!(f, "\n    {}: {} {}", r.recipient, r.outcome, r.detail)?;
                }
                Ok(())
            }
            Event::Admin { action } => write!(f, "{action} by the mail administrator"),
            Event::Notice { notice, to } => write!(f, "delivery status notification {notice} sent to {}", sender(to)),
            Event::Milter { milter, stage, result } => write!(f, "milter {milter} at {stage}: {result}"),
            Event::TlsPolicy { domain, detail } => write!(f, "TLS policy of {domain}: {detail}"),
            Event::Finished { state, delivered, bounced } => {
                write!(f, "finished: {state} ({delivered} delivered, {bounced} bounced)")
            }
        }
    }
}

enum Msg {
    /// Serialized by the writer, off the threads that receive and deliver mail.
    Entry(Entry),
    /// Write out and sync what is buffered, then answer.
    Flush(mpsc::Sender<()>),
}

struct Tracer {
    dir: PathBuf,
    tx: mpsc::Sender<Msg>,
    /// The writer thread, woken for a flush; events wait for its next round.
    writer: std::thread::Thread,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts the trace writer for `data_dir` (once per process), removing expired files.
pub fn start(data_dir: &Path, retention: Duration) -> io::Result<()> {
    let dir = data_dir.join("trace");
    crate::files::create_dir_all(&dir, crate::files::Access::PRIVATE)?;
    sweep(&dir, retention);
    if TRACER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new().name("trace".into()).spawn({
        let dir = dir.clone();
        move || writer(dir, rx, retention)
    })?;
    let _ = TRACER.set(Tracer { dir, tx, writer: thread.thread().clone() });
    Ok(())
}

/// Records an event of message `id` (dropped when no trace is kept).
pub fn emit(id: &str, event: Event) {
    let Some(tracer) = TRACER.get() else { return };
    let at = chrono::Utc::now().timestamp_millis();
    crate::admin::activity::get().event(&event);
    let entry = Entry { id: id.to_ascii_uppercase(), at, event };
    // With `[cluster]`, the trace is the cluster's, in its database.
    if crate::cluster::shared::trace::active() {
        crate::cluster::shared::trace::send(entry);
        return;
    }
    let _ = tracer.tx.send(Msg::Entry(entry));
}

/// Writes out and syncs what the writer holds (at shutdown, and before a read).
pub fn flush() {
    let Some(tracer) = TRACER.get() else { return };
    let (reply, wait) = mpsc::channel();
    if tracer.tx.send(Msg::Flush(reply)).is_ok() {
        tracer.writer.unpark();
        let _ = wait.recv_timeout(Duration::from_secs(5));
    }
}

/// The events of message `id` in order (blocking); empty when none are kept.
pub fn read(id: &str) -> io::Result<Vec<Entry>> {
    let Some(tracer) = TRACER.get() else { return Ok(Vec::new()) };
    flush();
    let id = id.to_ascii_uppercase();
    let needle = format!("\"id\":\"{id}\"");
    let first_day = earliest_day(&id);
    let mut events = Vec::new();
    for (_, path) in day_files(&tracer.dir)?.into_iter().filter(|(day, _)| first_day.is_none_or(|first| *day >= first))
    {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Removed by the retention sweep meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in io::BufReader::new(file).lines() {
            let line = line?;
            if !line.contains(&needle) {
                continue;
            }
            // A line cut short by a crash is skipped.
            if let Ok(entry) = serde_json::from_str::<Entry>(&line)
                && entry.id == id
            {
                events.push(entry);
                if events.len() >= MAX_EVENTS {
                    return Ok(events);
                }
            }
        }
    }
    Ok(events)
}

/// The first day whose file may hold events of message `id`: a queue id is the time
/// it was made (Unix microseconds, in hex), before any of its events; a day earlier
/// still, for a clock set back meanwhile. `None` for an id of another form.
fn earliest_day(id: &str) -> Option<chrono::NaiveDate> {
    let micros = u64::from_str_radix(id, 16).ok().filter(|_| id.len() == 16)?;
    let made = chrono::DateTime::from_timestamp_micros(i64::try_from(micros).ok()?)?;
    made.date_naive().pred_opt()
}

/// The daily files in `dir`, oldest first, with their day.
fn day_files(dir: &Path) -> io::Result<Vec<(chrono::NaiveDate, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let day = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
        if let Some(day) = day {
            files.push((day, path));
        }
    }
    files.sort();
    Ok(files)
}

/// Removes the daily files whose day ended more than `retention` ago.
fn sweep(dir: &Path, retention: Duration) {
    let Ok(files) = day_files(dir) else { return };
    let now = chrono::Utc::now();
    for (day, path) in files {
        let end = day.succ_opt().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc());
        let expired = end.is_some_and(|end| now.signed_duration_since(end).to_std().is_ok_and(|past| past > retention));
        if expired {
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::info!(file = %path.display(), "expired trace file removed"),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot remove expired trace file"),
            }
        }
    }
}

/// The day file an event at `at` (Unix ms) goes to.
fn day_name(at: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
    format!("{}.jsonl", t.format("%Y-%m-%d"))
}

/// The writer thread: appends, syncs at most once a second, sweeps expired files.
/// It takes events in rounds (every [`ROUND`], or at once for a flush) rather than
/// waiting on the channel, so that sending an event never wakes a thread: a wake-up
/// per event cost the threads that receive and relay mail about a tenth of their
/// throughput.
fn writer(dir: PathBuf, rx: mpsc::Receiver<Msg>, retention: Duration) {
    const SYNC_EVERY: Duration = Duration::from_secs(1);
    const ROUND: Duration = Duration::from_millis(100);
    let sweep_every = retention.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut open: Option<(String, io::BufWriter<std::fs::File>)> = None;
    let mut dirty = false;
    let (mut synced, mut swept) = (Instant::now(), Instant::now());
    let sync = |open: &mut Option<(String, io::BufWriter<std::fs::File>)>| {
        if let Some((_, file)) = open {
            let result = file.flush().and_then(|()| file.get_ref().sync_data());
            if let Err(e) = result {
                tracing::warn!(error = %e, "cannot write the message trace");
            }
        }
    };
    loop {
        match rx.try_recv() {
            Ok(Msg::Entry(entry)) => {
                let Ok(line) = serde_json::to_string(&entry) else { continue };
                let name = day_name(entry.at);
                if open.as_ref().is_none_or(|(n, _)| *n != name) {
                    sync(&mut open);
                    // Owner-only, like everything in the data directory (umask only removes bits).
                    let file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(&name));
                    open = match file {
                        Ok(f) => Some((name, io::BufWriter::new(f))),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot open the message trace file");
                            None
                        }
                    };
                }
                if let Some((_, file)) = &mut open {
                    let _ = file.write_all(line.as_bytes()).and_then(|()| file.write_all(b"\n"));
                    dirty = true;
                }
            }
            Ok(Msg::Flush(reply)) => {
                sync(&mut open);
                dirty = false;
                synced = Instant::now();
                let _ = reply.send(());
            }
            Err(mpsc::TryRecvError::Empty) => std::thread::park_timeout(ROUND),
            Err(mpsc::TryRecvError::Disconnected) => {
                sync(&mut open);
                return;
            }
        }
        if dirty && synced.elapsed() >= SYNC_EVERY {
            sync(&mut open);
            dirty = false;
            synced = Instant::now();
        }
        if swept.elapsed() >= sweep_every {
            // The file being written to is reopened if the sweep removed it.
            sweep(&dir, retention);
            if open.as_ref().is_some_and(|(n, _)| !dir.join(n).exists()) {
                open = None;
            }
            swept = Instant::now();
        }
    }
}

tokio::task_local! {
    /// The TLS of the last connection a delivery used, noted by the SMTP client.
    static TLS_SEEN: RefCell<Option<String>>;
}

/// Runs a delivery, and answers with the TLS its last connection used.
pub async fn with_tls<F: Future>(delivery: F) -> (F::Output, Option<String>) {
    TLS_SEEN
        .scope(RefCell::new(None), async {
            let out = delivery.await;
            (out, TLS_SEEN.with(|seen| seen.borrow_mut().take()))
        })
        .await
}

/// Notes the TLS of the connection a delivery uses (`none`, `encrypted`, `verified`).
pub fn note_tls(level: impl std::fmt::Display) {
    let _ = TLS_SEEN.try_with(|seen| *seen.borrow_mut() = Some(level.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_read_from_the_day_before_its_id_on() {
        // 2026-12-06T12:00:00Z in microseconds.
        let id = format!("{:016X}", 1_796_558_400_000_000u64);
        assert_eq!(earliest_day(&id), chrono::NaiveDate::from_ymd_opt(2026, 12, 5));
        assert_eq!(earliest_day("NOTANID"), None);
        assert_eq!(earliest_day("FFFFFFFFFFFFFFFF"), None);
    }

    #[test]
    fn expired_days_are_swept_and_recent_kept() {
        let dir = std::env::temp_dir().join(format!("tern-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let today = day_name(chrono::Utc::now().timestamp_millis());
        for name in ["2000-01-01.jsonl", today.as_str(), "notes.txt"] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        sweep(&dir, Duration::from_secs(2));
        assert!(!dir.join("2000-01-01.jsonl").exists());
        assert!(dir.join(&today).exists() && dir.join("notes.txt").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
