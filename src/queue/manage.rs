//! What the mail administrator does to queued messages, carried out by the scheduler:
//! flush, hold, release, bounce and delete, for one message or every message a filter
//! matches; and the queue's sizes.
//!
//! A hold is recorded in the store before the scheduler lets go of the message, so
//! it survives a restart. Held mail is never attempted, and so never expires while
//! held (as with Postfix's `postsuper -h`); once released, its age still counts from
//! its arrival, so mail held past `max_age` bounces at its next temporary failure.
//!
//! With a shared store (a cluster) the operations reach every node's messages: a
//! hold or release of a message this node does not have is recorded in the store
//! alone, and a message to flush, bounce or delete is first leased to this node
//! unless another node is attempting it.

use super::select::{MessageState, Selection};
use super::{Entry, Scheduler, attempt, now};
use crate::admin::trace::{self, Event};
use crate::spool::{Change, Detail, Stored};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// An operation on queued messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Try now, without waiting for the next retry.
    Flush,
    /// Not attempted until released.
    Hold,
    Release,
    /// Removed, and its sender told with a bounce.
    Bounce,
    /// Removed without a word.
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Flush => "flush",
            Action::Hold => "hold",
            Action::Release => "release",
            Action::Bounce => "bounce",
            Action::Delete => "delete",
        }
    }
}

/// Why an operation on a message could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    #[error("{0} is not in the queue")]
    NotFound(String),
    /// The message is not in a state the operation applies to.
    #[error("{0}")]
    Conflict(String),
    /// The store refused the change.
    #[error("{0}")]
    Failed(String),
}

/// How many messages wait in each state, and since when the oldest.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub queued: usize,
    pub deferred: usize,
    pub held: usize,
    /// Of those, being attempted right now.
    pub in_flight: usize,
    /// Arrival (Unix seconds) of the oldest message.
    pub oldest_arrival: Option<i64>,
}

impl Summary {
    pub fn count(&self, state: MessageState) -> usize {
        match state {
            MessageState::Queued => self.queued,
            MessageState::Deferred => self.deferred,
            MessageState::Held => self.held,
        }
    }
}

impl Scheduler {
    /// Messages the selection matches: those waiting, and those being attempted.
    fn select(&self, selection: &Selection) -> (Vec<String>, Vec<String>) {
        let now = now();
        let waiting = self.entries.values().map(|e| &e.stored).filter(|s| selection.matches(&s.envelope, now));
        let running = self.running.values().map(|(e, _)| &e.stored).filter(|s| selection.matches(&s.envelope, now));
        let ids = |s: &Stored| s.envelope.id.clone();
        let (mut waiting, mut running): (Vec<String>, Vec<String>) =
            (waiting.map(ids).collect(), running.map(ids).collect());
        waiting.sort_unstable();
        running.sort_unstable();
        (waiting, running)
    }

    /// Leases messages of the database to this node for a flush, bounce or delete
    /// (held ones only for the latter): those taken wait here, in no line yet; the
    /// others are being attempted by another node. Answers (taken, busy).
    async fn take_over(&mut self, elsewhere: &[Stored], held: bool) -> Result<(Vec<String>, Vec<String>), ManageError> {
        let ids: Vec<String> =
            elsewhere.iter().filter(|s| held || !s.envelope.held).map(|s| s.envelope.id.clone()).collect();
        let taken = (self.shared.store.take(&ids, held).await)
            .map_err(|e| ManageError::Failed(format!("cannot take messages from the cluster's queue: {e}")))?;
        let mut taken_ids = Vec::new();
        for stored in taken {
            let id = stored.envelope.id.clone();
            self.entries.insert(id.clone(), Entry { stored, content: None, due: now() });
            taken_ids.push(id);
        }
        let is_taken: HashSet<&String> = taken_ids.iter().collect();
        let busy = ids.iter().filter(|id| !is_taken.contains(id)).cloned().collect();
        Ok((taken_ids, busy))
    }

    /// Carries out `action` on the selected messages; returns how many it changed.
    /// For one message by id, an error says why nothing was done. With a shared
    /// store, `found` are the selected messages of every node: those this node
    /// neither keeps nor attempts are held and released in the store, and taken
    /// over to be flushed or deleted here.
    pub(super) async fn manage(
        &mut self,
        selection: Selection,
        action: Action,
        found: Vec<Stored>,
    ) -> Result<usize, ManageError> {
        let (mut waiting, mut running) = self.select(&selection);
        let here = |id: &String| self.entries.contains_key(id) || self.in_flight.contains(id);
        let elsewhere: Vec<Stored> = found.into_iter().filter(|s| !here(&s.envelope.id)).collect();
        let one = match &selection {
            Selection::Id(id) => Some(id.clone()),
            Selection::Filter(_) => None,
        };
        if let Some(id) = &one
            && waiting.is_empty()
            && running.is_empty()
            && elsewhere.is_empty()
        {
            return Err(ManageError::NotFound(id.clone()));
        }
        let mut taken = Vec::new();
        if action != Action::Hold && action != Action::Release && !elsewhere.is_empty() {
            let busy;
            (taken, busy) = self.take_over(&elsewhere, action != Action::Flush).await?;
            running.extend(busy);
        }
        let result = match action {
            Action::Flush => Ok(self.flush_ids(&waiting) + self.flush_taken(&taken)),
            Action::Hold => self.set_held(&waiting, &running, &elsewhere, true).await,
            Action::Release => self.set_held(&waiting, &running, &elsewhere, false).await,
            Action::Bounce | Action::Delete => {
                waiting.extend(taken.iter().cloned());
                self.delete_ids(&waiting, action == Action::Bounce).await
            }
        };
        // What was taken and not deleted waits for its time again, on any node.
        for id in &taken {
            self.hand_back_waiting(id);
        }
        if let Some(id) = one {
            let held = waiting.first().and_then(|id| self.entries.get(id)).is_some_and(|e| e.stored.envelope.held)
                || elsewhere.first().is_some_and(|s| s.envelope.held);
            return match result {
                Ok(0) => Err(ManageError::Conflict(nothing_done(&id, action, !running.is_empty(), held))),
                other => other,
            };
        }
        result
    }

    /// Moves waiting messages that are not held up to now.
    fn flush_ids(&mut self, ids: &[String]) -> usize {
        let mut moved = 0;
        for id in ids {
            let Some(entry) = self.entries.get(id) else { continue };
            if self.timers.remove(&(entry.due, id.clone())) {
                self.ready.push_back(id.clone());
                moved += 1;
                trace::emit(id, Event::Admin { action: "flush".into() });
            }
        }
        moved
    }

    /// Puts messages taken from the shared store at the front of the line, whatever
    /// their recipients' next try.
    fn flush_taken(&mut self, ids: &[String]) -> usize {
        for id in ids.iter().rev() {
            self.ready.push_front(id.clone());
            trace::emit(id, Event::Admin { action: "flush".into() });
        }
        ids.len()
    }

    /// Holds or releases: recorded first (one write for all), then applied. A message
    /// being attempted is held once its attempt ends.
    /// Messages of other nodes (`elsewhere`) change in the store only.
    async fn set_held(
        &mut self,
        waiting: &[String],
        running: &[String],
        elsewhere: &[Stored],
        held: bool,
    ) -> Result<usize, ManageError> {
        let waiting: Vec<&String> =
            waiting.iter().filter(|id| self.entries.get(*id).is_some_and(|e| e.stored.envelope.held != held)).collect();
        let running: Vec<&String> = running
            .iter()
            .filter(|id| self.running_entry(id).is_some_and(|e| e.stored.envelope.held != held))
            .collect();
        let elsewhere: Vec<&String> =
            elsewhere.iter().filter(|s| s.envelope.held != held).map(|s| &s.envelope.id).collect();
        let changes: Vec<Change> = (waiting.iter().chain(&running).chain(&elsewhere))
            .map(|id| Change::Hold { id: id.to_string(), held })
            .collect();
        if changes.is_empty() {
            return Ok(0);
        }
        self.shared
            .store
            .record(&changes)
            .await
            .map_err(|e| ManageError::Failed(format!("cannot record the hold: {e}")))?;
        // Applied to the message when its attempt ends.
        for id in &running {
            if let Some(entry) = self.running_entry(id) {
                entry.stored.envelope.held = held;
            }
        }
        for id in &waiting {
            let Some(mut entry) = self.take(id) else { continue };
            self.timers.remove(&(entry.due, id.to_string()));
            self.ready.retain(|r| r != *id);
            entry.stored.envelope.held = held;
            self.schedule(entry.stored, entry.content);
            self.hand_back_waiting(id);
        }
        tracing::info!(messages = changes.len(), held, "hold changed by the mail administrator");
        let action = if held { "hold" } else { "release" };
        for id in waiting.iter().chain(&running).chain(&elsewhere) {
            trace::emit(id, Event::Admin { action: action.into() });
        }
        Ok(changes.len())
    }

    /// Deletes waiting messages, each bounced if asked; messages being attempted are
    /// left alone. An error only when nothing could be deleted.
    async fn delete_ids(&mut self, ids: &[String], bounce: bool) -> Result<usize, ManageError> {
        let mut deleted = 0;
        let mut failed = None;
        for id in ids {
            match self.delete(id, bounce).await {
                Ok(()) => deleted += 1,
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) if deleted == 0 => Err(ManageError::Failed(e)),
            _ => Ok(deleted),
        }
    }

    /// The message of an attempt under way, as it was when the attempt started.
    fn running_entry(&mut self, id: &str) -> Option<&mut Entry> {
        self.running.values_mut().map(|(entry, _)| entry).find(|e| e.stored.envelope.id == id)
    }

    /// Removes a waiting message, bouncing it if asked.
    async fn delete(&mut self, id: &str, bounce: bool) -> Result<(), String> {
        let Some(entry) = self.take(id) else { return Err(format!("{id} is not in the queue")) };
        self.timers.remove(&(entry.due, id.to_string()));
        self.ready.retain(|r| r != id);
        if let Err(e) = self.finish_deleted(id, &entry, bounce).await {
            tracing::error!(id, error = %e, "cannot delete");
            // Not deleted after all: it waits as it did.
            self.schedule(entry.stored, entry.content);
            return Err(e);
        }
        tracing::info!(id, bounce, "deleted from the queue");
        let action = if bounce { "bounce" } else { "delete" };
        trace::emit(id, Event::Admin { action: action.into() });
        trace::emit(id, Event::Finished { state: "deleted".into(), delivered: 0, bounced: 0 });
        Ok(())
    }

    /// Bounces a deleted message if asked, then records that it is done.
    async fn finish_deleted(&mut self, id: &str, entry: &Entry, bounce: bool) -> Result<(), String> {
        if bounce {
            let detail = Detail::new((5, 0, 0), "deleted by the mail administrator");
            let notices = attempt::bounce_all(&self.shared, &entry.stored, entry.content.clone(), detail).await?;
            for (notice, content) in notices {
                self.schedule(notice, Some(content));
            }
        }
        self.shared
            .store
            .record(&[Change::Done { id: id.to_string() }])
            .await
            .map_err(|e| format!("cannot record deletion: {e}"))
    }

    pub(super) fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        let waiting = self.entries.values().map(|e| (&e.stored, false));
        let running = self.running.values().map(|(e, _)| (&e.stored, true));
        for (stored, in_flight) in waiting.chain(running) {
            match MessageState::of(&stored.envelope) {
                MessageState::Queued => summary.queued += 1,
                MessageState::Deferred => summary.deferred += 1,
                MessageState::Held => summary.held += 1,
            }
            summary.in_flight += usize::from(in_flight);
            let arrival = stored.envelope.arrival;
            summary.oldest_arrival = Some(summary.oldest_arrival.map_or(arrival, |o| o.min(arrival)));
        }
        summary
    }
}

/// Why an operation on one message changed nothing.
fn nothing_done(id: &str, action: Action, running: bool, held: bool) -> String {
    match action {
        Action::Flush if running => format!("{id} is being delivered right now"),
        Action::Flush if held => format!("{id} is on hold; release it first"),
        Action::Flush => format!("{id} is not waiting for a retry"),
        Action::Hold => format!("{id} is already on hold"),
        Action::Release => format!("{id} is not on hold"),
        Action::Bounce | Action::Delete => format!("{id} is being delivered right now; try again in a moment"),
    }
}
