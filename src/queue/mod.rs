//! Scheduling: what to deliver when, retries and expiry.
//!
//! One scheduler task owns every pending message. New messages and messages recovered
//! at start-up enter through the same door ([`Queue::enqueue`]); each attempt runs as
//! its own task and reports back, and every result is recorded in the spool before the
//! scheduler moves on.

mod attempt;
mod retry;

use crate::spool::{RcptState, Spool, Stored};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the queue needs to know.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    pub concurrency: usize,
    pub mail_root: PathBuf,
    pub hostname: String,
}

enum Command {
    /// A message to schedule; its content when it is still in memory.
    Enqueue(Box<Stored>, Option<Arc<Vec<u8>>>),
    Stop,
}

/// Handle to the scheduler; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<Command>,
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Queue {
    /// Starts the scheduler with the messages found in the spool.
    pub fn start(
        spool: Spool,
        config: QueueConfig,
        pending: Vec<Stored>,
    ) -> (Queue, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue { tx };
        for stored in pending {
            queue.enqueue(stored, None);
        }
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let scheduler = Scheduler {
            spool,
            config: Arc::new(config),
            entries: HashMap::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            running: 0,
            done_tx,
        };
        let handle = tokio::spawn(scheduler.run(rx, done_rx));
        (queue, handle)
    }

    pub fn enqueue(&self, stored: Stored, content: Option<Arc<Vec<u8>>>) {
        let _ = self.tx.send(Command::Enqueue(Box::new(stored), content));
    }

    /// Asks the scheduler to stop once the attempts under way are finished.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }
}

struct Entry {
    stored: Stored,
    content: Option<Arc<Vec<u8>>>,
}

struct Scheduler {
    spool: Spool,
    config: Arc<QueueConfig>,
    /// Pending messages that are not being attempted right now.
    entries: HashMap<String, Entry>,
    /// (due time in Unix seconds, id) of messages waiting for a retry.
    timers: BTreeSet<(i64, String)>,
    ready: VecDeque<String>,
    running: usize,
    done_tx: mpsc::UnboundedSender<Stored>,
}

impl Scheduler {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut done_rx: mpsc::UnboundedReceiver<Stored>,
    ) {
        let mut stopping = false;
        loop {
            while !stopping && self.running < self.config.concurrency {
                let Some(id) = self.ready.pop_front() else {
                    break;
                };
                self.start_attempt(&id);
            }
            if stopping && self.running == 0 {
                return;
            }
            let next_due = self.timers.first().map(|(due, _)| *due);
            let sleep = async {
                match next_due {
                    Some(due) => {
                        let wait = (due - now()).max(0) as u64;
                        tokio::time::sleep(Duration::from_secs(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                command = rx.recv(), if !stopping => match command {
                    Some(Command::Enqueue(stored, content)) => self.schedule(*stored, content),
                    Some(Command::Stop) | None => stopping = true,
                },
                Some(stored) = done_rx.recv() => {
                    self.running -= 1;
                    if !stored.envelope.recipients.iter().all(|r| r.state.is_final()) {
                        self.schedule(stored, None);
                    }
                }
                () = sleep, if !stopping => {
                    let now = now();
                    while let Some((due, _)) = self.timers.first() {
                        if *due > now {
                            break;
                        }
                        let (_, id) = self.timers.pop_first().expect("checked");
                        self.ready.push_back(id);
                    }
                }
            }
        }
    }

    /// Puts a message in line: now if any recipient is due, else at its next retry.
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
        let id = stored.envelope.id.clone();
        self.entries.insert(id.clone(), Entry { stored, content });
        if due <= now() {
            self.ready.push_back(id);
        } else {
            self.timers.insert((due, id));
        }
    }

    fn start_attempt(&mut self, id: &str) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        self.running += 1;
        let spool = self.spool.clone();
        let config = self.config.clone();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let stored = attempt::run(&spool, &config, entry.stored, entry.content).await;
            let _ = done.send(stored);
        });
    }
}
