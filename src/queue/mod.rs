//! Scheduling: what to deliver when, retries, expiry and notices.
//!
//! One scheduler task owns every pending message. New messages and messages recovered
//! at start-up enter through the same door ([`Queue::enqueue`]); each attempt runs as
//! its own task under the scheduler's watch, and every result is recorded in the spool
//! before the scheduler moves on. An attempt that panics is retried later like one
//! that failed for a while.

mod attempt;
pub mod bounce;
mod log;
mod manage;
mod retry;
pub mod select;

pub use manage::{Action, ManageError, Summary};
pub use select::{Filter, MessageState, Selection};

use crate::delivery::maildir::MailRoot;
use crate::delivery::remote::RemoteConfig;
use crate::dns::Dns;
use crate::spool::{Change, RcptState, Store, Stored};
use arc_swap::ArcSwap;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};

/// What the queue needs to know.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    pub delay_notice: Option<Duration>,
    pub concurrency: usize,
    pub mail_root: MailRoot,
    pub hostname: String,
    pub remote: RemoteConfig,
    /// `[local]`: how each local domain's mail is delivered, and the subaddress
    /// separator and time limit a delivery command needs.
    pub local: crate::config::Local,
}

/// Where mail for an address goes, for notices sent to senders: (address, is local).
pub trait Router: Send + Sync {
    fn route(&self, address: &str) -> Vec<(String, bool)>;
}

/// What the queue's work follows, replaced whole by a configuration reload: an
/// attempt uses the settings it started with.
pub struct Settings {
    pub config: QueueConfig,
    pub dns: Dns,
    pub router: Box<dyn Router>,
}

/// What attempts share.
pub struct Shared {
    pub store: Arc<dyn Store>,
    settings: Arc<ArcSwap<Settings>>,
    /// A write to the store failed and has not succeeded since: no new attempts.
    store_failing: AtomicBool,
    /// Set once the queue is asked to stop.
    stopping: watch::Sender<bool>,
}

impl Shared {
    pub fn new(store: Arc<dyn Store>, config: QueueConfig, dns: Dns, router: Box<dyn Router>) -> Shared {
        let stopping = watch::Sender::new(false);
        let settings = Arc::new(ArcSwap::from_pointee(Settings { config, dns, router }));
        Shared { store, settings, store_failing: AtomicBool::new(false), stopping }
    }

    /// The settings in force now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    fn set_store_failing(&self, failing: bool) {
        self.store_failing.store(failing, Ordering::Relaxed);
    }

    fn store_failing(&self) -> bool {
        self.store_failing.load(Ordering::Relaxed)
    }

    /// Waits `wait`, or less if the queue is asked to stop; false when it is.
    async fn pause(&self, wait: Duration) -> bool {
        let mut stopping = self.stopping.subscribe();
        if *stopping.borrow_and_update() {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            _ = stopping.changed() => false,
        }
    }
}

enum Command {
    /// A message to schedule; its content when it is still in memory.
    Enqueue(Box<Stored>, Option<Arc<Vec<u8>>>),
    /// An administrative operation, with the selected messages of a shared store;
    /// answers how many messages it changed.
    Manage(Selection, Action, Vec<Stored>, oneshot::Sender<Result<usize, ManageError>>),
    Summary(oneshot::Sender<Summary>),
    /// A shared store says there may be new due work.
    Wake,
    /// What a claim of up to `.1` messages brought.
    Claimed(std::io::Result<Vec<Stored>>, usize),
    Stop,
}

/// Handle to the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Command>,
    settings: Arc<ArcSwap<Settings>>,
    store: Arc<dyn Store>,
}

/// Now in Unix seconds; in a cluster, by the database's clock (see
/// [`crate::cluster::clock`]).
pub fn now() -> i64 {
    crate::cluster::clock::now_ms().div_euclid(1000)
}

impl Queue {
    /// Starts the scheduler with the messages found in the spool.
    pub fn start(shared: Shared, pending: Vec<Stored>) -> (Queue, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue { tx, settings: shared.settings.clone(), store: shared.store.clone() };
        for stored in pending {
            queue.enqueue(stored, None);
        }
        if shared.store.shared() {
            let (store, tx) = (shared.store.clone(), queue.tx.downgrade());
            tokio::spawn(async move {
                loop {
                    let _ = store.wake().await;
                    match tx.upgrade() {
                        Some(tx) if tx.send(Command::Wake).is_ok() => {}
                        _ => return,
                    }
                }
            });
        }
        let claims = Claims { wanted: shared.store.shared(), running: false, backlog: false, tx: queue.tx.downgrade() };
        let scheduler = Scheduler {
            claims,
            shared: Arc::new(shared),
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            in_flight: HashSet::new(),
            attempts: JoinSet::new(),
            running: HashMap::new(),
            held: 0,
        };
        let handle = tokio::spawn(scheduler.run(rx));
        (queue, handle)
    }

    pub fn enqueue(&self, stored: Stored, content: Option<Arc<Vec<u8>>>) {
        let _ = self.tx.send(Command::Enqueue(Box::new(stored), content));
    }

    /// Carries out an administrative operation; answers how many messages it changed.
    /// With a shared store, the selection is read from it first (the scheduler keeps
    /// going meanwhile): every node's messages.
    pub async fn manage(&self, selection: Selection, action: Action) -> Result<usize, ManageError> {
        let mut found = Vec::new();
        if self.store.shared() {
            let all = (self.store.load().await)
                .map_err(|e| ManageError::Failed(format!("cannot read the cluster's queue: {e}")))?;
            let now = now();
            found = all.into_iter().filter(|s| selection.matches(&s.envelope, now)).collect();
        }
        let (reply, wait) = oneshot::channel();
        let _ = self.tx.send(Command::Manage(selection, action, found, reply));
        wait.await.unwrap_or_else(|_| Err(ManageError::Failed("the queue is stopping".into())))
    }

    /// How many messages wait in each state: with a shared store, on every node.
    pub async fn summary(&self) -> Summary {
        match self.store.summary().await {
            Ok(Some(summary)) => return summary,
            Ok(None) => {}
            Err(e) => {
                static FAILED: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new(crate::log_limit::PERIOD);
                if let Some(repeats) = FAILED.admit() {
                    tracing::warn!(error = %e, repeats, "cannot count the cluster's queue; counting this node's");
                }
            }
        }
        let (reply, wait) = oneshot::channel();
        let _ = self.tx.send(Command::Summary(reply));
        wait.await.unwrap_or_default()
    }

    /// Puts new settings in force (a configuration reload): attempts started from now
    /// on use them; those under way finish with theirs.
    pub fn reconfigure(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// Asks the scheduler to stop once the attempts under way are finished.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

struct Entry {
    stored: Stored,
    content: Option<Arc<Vec<u8>>>,
    due: i64,
}

/// Taking due work from a shared store.
struct Claims {
    /// There may be due work to claim (woken, or capacity freed after a full claim).
    wanted: bool,
    running: bool,
    /// The last claim took all it asked for: more may be waiting.
    backlog: bool,
    tx: mpsc::WeakUnboundedSender<Command>,
}

struct Scheduler {
    claims: Claims,
    shared: Arc<Shared>,
    /// Pending messages that are not being attempted right now.
    entries: HashMap<String, Entry>,
    /// (due time in Unix seconds, id) of messages waiting for a retry.
    timers: BTreeSet<(i64, String)>,
    ready: VecDeque<String>,
    in_flight: HashSet<String>,
    /// The attempts under way.
    attempts: JoinSet<attempt::Finished>,
    /// Each attempt's message as it was when the attempt started: what is retried
    /// if the attempt never reports back.
    running: HashMap<tokio::task::Id, (Entry, attempt::Progress)>,
    /// Bytes of message content kept in memory by waiting entries.
    held: usize,
}

/// Waiting messages keep their content in memory up to this much in all; beyond it
/// their first attempt reads the content back from the spool.
const CONTENT_BUDGET: usize = 64 << 20;

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut stopping = false;
        loop {
            if self.shared.store.shared() && !stopping {
                if self.shared.store.draining() {
                    self.hand_back_ready();
                } else {
                    self.claim();
                }
            }
            // While the store refuses writes, results could not be recorded: wait until
            // the attempt retrying its write gets through.
            while !stopping
                && !self.shared.store_failing()
                && self.in_flight.len() < self.shared.settings.load().config.concurrency
            {
                let Some(id) = self.ready.pop_front() else { break };
                self.start_attempt(&id);
            }
            if stopping && self.in_flight.is_empty() {
                return;
            }
            let next_due = self.timers.first().map(|(due, _)| *due);
            let sleep = async {
                match next_due {
                    Some(due) => tokio::time::sleep(Duration::from_secs((due - now()).max(0) as u64)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv(), if !stopping => match command {
                    Some(Command::Enqueue(stored, content)) => self.enqueue(*stored, content),
                    Some(Command::Manage(selection, action, found, reply)) => {
                        let _ = reply.send(self.manage(selection, action, found).await);
                    }
                    Some(Command::Summary(reply)) => {
                        let _ = reply.send(self.summary());
                    }
                    Some(Command::Wake) => self.claims.wanted = true,
                    Some(Command::Claimed(claimed, asked)) => self.claimed(claimed, asked),
                    Some(Command::Stop) | None => {
                        stopping = true;
                        self.shared.stopping.send_replace(true);
                    }
                },
                Some(joined) = self.attempts.join_next_with_id(), if !self.attempts.is_empty() => {
                    self.attempt_ended(joined);
                }
                () = sleep, if !stopping => {
                    let now = now();
                    while self.timers.first().is_some_and(|(due, _)| *due <= now) {
                        let (_, id) = self.timers.pop_first().expect("checked");
                        self.ready.push_back(id);
                    }
                }
            }
        }
    }

    /// Takes a new or recovered message. One whose recipients are all final lost its
    /// `Done` record to a crash after the last result was recorded: it is finished now.
    fn enqueue(&mut self, stored: Stored, content: Option<Arc<Vec<u8>>>) {
        if stored.envelope.recipients.iter().all(|r| r.state.is_final()) {
            let (shared, id) = (self.shared.clone(), stored.envelope.id);
            tokio::spawn(async move { attempt::record(&shared, &id, &[Change::Done { id: id.clone() }]).await });
            return;
        }
        self.schedule(stored, content);
    }

    /// Puts a message in line: now if any recipient is due, else at its next retry.
    /// A message with every recipient final is dropped.
    fn schedule(&mut self, stored: Stored, content: Option<Arc<Vec<u8>>>) {
        let due = stored
            .envelope
            .recipients
            .iter()
            .filter_map(|r| match &r.state {
                RcptState::Queued => Some(i64::MIN),
                RcptState::Deferred { next_attempt, .. } => Some(*next_attempt),
                _ => None,
            })
            .min();
        let Some(due) = due else { return };
        self.wait(stored, content, due);
    }

    /// Puts a message in line for `due` (Unix seconds); a held message waits for its
    /// release instead.
    fn wait(&mut self, stored: Stored, content: Option<Arc<Vec<u8>>>, due: i64) {
        let id = stored.envelope.id.clone();
        let due = if stored.envelope.held { i64::MAX } else { due };
        if stored.envelope.held {
            // Neither timer nor line: only a release brings it back.
        } else if due <= now() {
            self.ready.push_back(id.clone());
        } else {
            self.timers.insert((due, id.clone()));
        }
        let content = content.filter(|c| self.held + c.len() <= CONTENT_BUDGET);
        self.held += content.as_ref().map_or(0, |c| c.len());
        self.entries.insert(id, Entry { stored, content, due });
    }

    /// Takes a waiting message out of the scheduler's hands.
    fn take(&mut self, id: &str) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.held -= entry.content.as_ref().map_or(0, |c| c.len());
        Some(entry)
    }

    fn start_attempt(&mut self, id: &str) {
        let Some(entry) = self.take(id) else { return };
        self.in_flight.insert(id.to_string());
        self.shared.store.set_load(self.in_flight.len());
        let shared = self.shared.clone();
        let (stored, content) = (entry.stored.clone(), entry.content.clone());
        let progress = Arc::new(std::sync::Mutex::new(entry.stored.clone()));
        let watched = progress.clone();
        let task = self.attempts.spawn(async move { attempt::run(&shared, stored, content, watched).await });
        self.running.insert(task.id(), (entry, progress));
    }

    /// Takes the result of an attempt: the message and its notices go back in line.
    fn attempt_ended(&mut self, joined: Result<(tokio::task::Id, attempt::Finished), JoinError>) {
        let task = match &joined {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        let Some((before, progress)) = self.running.remove(&task) else { return };
        let id = before.stored.envelope.id.clone();
        self.in_flight.remove(&id);
        self.shared.store.set_load(self.in_flight.len());
        if self.claims.backlog {
            self.claims.wanted = true;
        }
        // Put on hold (or released) while it was being attempted: already recorded.
        let held = before.stored.envelope.held;
        match joined {
            Ok((_, mut finished)) => {
                for (notice, content) in finished.notices {
                    self.schedule(notice, Some(content));
                }
                finished.stored.envelope.held = held;
                self.schedule(finished.stored, None);
            }
            Err(e) => {
                let mut stored = progress.lock().unwrap_or_else(|e| e.into_inner()).clone();
                stored.envelope.held = held;
                self.attempt_failed(stored, before.content, e);
            }
        }
        self.hand_back_waiting(&id);
    }

    /// Asks a shared store for due work when there may be some and room for it.
    fn claim(&mut self) {
        let concurrency = self.shared.settings.load().config.concurrency;
        let want = concurrency.saturating_sub(self.in_flight.len() + self.ready.len());
        if !self.claims.wanted || self.claims.running || want == 0 {
            return;
        }
        self.claims.wanted = false;
        self.claims.running = true;
        let (store, tx) = (self.shared.store.clone(), self.claims.tx.clone());
        tokio::spawn(async move {
            let claimed = store.claim(want).await;
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Command::Claimed(claimed, want));
            }
        });
    }

    /// Takes claimed messages in, but none already here.
    fn claimed(&mut self, claimed: std::io::Result<Vec<Stored>>, asked: usize) {
        self.claims.running = false;
        match claimed {
            Ok(list) => {
                self.claims.backlog = list.len() >= asked;
                self.claims.wanted |= self.claims.backlog;
                for stored in list {
                    let id = &stored.envelope.id;
                    if !self.entries.contains_key(id) && !self.in_flight.contains(id) {
                        self.enqueue(stored, None);
                    }
                }
            }
            Err(e) => {
                static FAILED: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new(crate::log_limit::PERIOD);
                if let Some(repeats) = FAILED.admit() {
                    tracing::error!(error = %e, repeats, "cannot claim due deliveries; trying again");
                }
                self.claims.backlog = false;
            }
        }
    }

    /// With a shared store, a message that now waits for a later try (or is held) is
    /// handed back, for whichever node is free when it is due.
    fn hand_back_waiting(&mut self, id: &str) {
        if !self.shared.store.shared() || self.entries.get(id).is_none_or(|e| e.due <= now()) {
            return;
        }
        let entry = self.take(id).expect("checked");
        self.timers.remove(&(entry.due, id.to_string()));
        let due = if entry.due == i64::MAX { now() } else { entry.due };
        self.release(vec![(id.to_string(), due)]);
    }

    /// A draining node hands back what it has not started.
    fn hand_back_ready(&mut self) {
        let now = now();
        let ids: Vec<String> = self.ready.drain(..).collect();
        let mut back = Vec::new();
        for id in ids {
            if let Some(entry) = self.take(&id) {
                back.push((entry.stored.envelope.id, now));
            }
        }
        if !back.is_empty() {
            self.release(back);
        }
    }

    /// Hands messages back to a shared store; a failure leaves them to their lease
    /// running out.
    fn release(&self, messages: Vec<(String, i64)>) {
        let store = self.shared.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.release(&messages).await {
                tracing::warn!(error = %e, count = messages.len(), "cannot hand messages back; their leases run out instead");
            }
        });
    }

    /// An attempt that panicked leaves the message as the store holds it: the results
    /// recorded before the panic, the others as they were. It is tried again after
    /// the first retry delay, as after a temporary failure, rather than left stuck
    /// until a restart.
    fn attempt_failed(&mut self, stored: Stored, content: Option<Arc<Vec<u8>>>, error: JoinError) {
        let id = stored.envelope.id.clone();
        let why = if error.is_panic() { panic_text(error.into_panic()) } else { "cancelled".to_string() };
        let wait = retry::delay(&self.shared.settings.load().config.retry, 1);
        tracing::error!(id, panic = %why, retry_in = ?wait, "delivery attempt failed; will retry");
        self.wait(stored, content, now() + wait.as_secs().max(1) as i64);
    }
}

/// The message a panic carried, if it was text.
fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload.downcast_ref::<&str>().map_or_else(|| "unknown panic".to_string(), |s| s.to_string()),
    }
}
