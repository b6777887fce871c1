//! Which records of the spool are still needed, and so which segments may go.
//!
//! The same bookkeeping runs during recovery (replaying the segments in order) and
//! while the writer appends, so both reach the same state. The rules:
//!
//! 1. A live message pins its *home*, the segment holding its newest full copy, and
//!    every later segment holding a change of it (a recipient's result, a hold or a
//!    release). Older copies and the changes
//!    before its home are superseded: the home copy carries the state as it was
//!    when it was written.
//! 2. A finished message pins the segment holding its `Done` record for as long as
//!    any older segment still holds a copy of it; otherwise that copy would come
//!    back to life at the next recovery.
//! 3. Nothing else pins a segment. An unpinned segment other than the active one is
//!    deleted, and only once the records that unpinned it are on disk.
//!
//! A copy is forgotten only after its segment's deletion is durable, so rule 2
//! releases a `Done` record only when no copy can reappear.

use super::{BodyRef, Change, Stored};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A message that is still pending.
#[derive(Debug, Clone)]
pub struct Live {
    pub stored: Stored,
    /// Length of its home record (envelope and content), for the space accounting.
    pub record_len: u64,
    /// Segments after the home that hold changes of it.
    changes: BTreeSet<u64>,
}

impl Live {
    pub fn home(&self) -> u64 {
        self.stored.body.segment
    }
}

#[derive(Debug, Default)]
pub struct Index {
    /// Pending messages by id (ids sort by arrival).
    live: BTreeMap<String, Live>,
    /// Finished messages whose `Done` record is pinned: id → its segment.
    finished: HashMap<String, u64>,
    /// Every segment holding a copy of each message, live or finished.
    copies: HashMap<String, BTreeSet<u64>>,
    /// The ids with a copy in each segment.
    copies_in: BTreeMap<u64, Vec<String>>,
    /// Pin count of every segment that exists.
    pins: BTreeMap<u64, usize>,
    /// Bytes of the home records of live messages.
    live_bytes: u64,
    /// Test only: keep a segment only for the messages whose newest copy it holds,
    /// and never compact, as the first spool did (neither change records nor `Done`
    /// records pin), so the model test can show it finds what that lost.
    #[cfg(test)]
    pub first_rules: bool,
}

impl Index {
    /// A segment now exists (unpinned until records land in it).
    pub fn add_segment(&mut self, segment: u64) {
        self.pins.entry(segment).or_insert(0);
    }

    fn pin(&mut self, segment: u64) {
        *self.pins.entry(segment).or_insert(0) += 1;
    }

    fn unpin(&mut self, segment: u64) {
        if let Some(n) = self.pins.get_mut(&segment) {
            *n = n.checked_sub(1).expect("spool pin count underflow");
        }
    }

    /// Releases what a live message pins.
    fn release(&mut self, live: &Live) {
        self.unpin(live.home());
        for &s in &live.changes {
            self.unpin(s);
        }
        self.live_bytes -= live.record_len;
    }

    /// A full copy of a message was written: it becomes the message's home.
    pub fn stored(&mut self, stored: Stored, record_len: u64) {
        let id = stored.envelope.id.clone();
        let segment = stored.body.segment;
        if let Some(old) = self.live.remove(&id) {
            self.release(&old);
        }
        // A message stored again after it finished (not done by Tern) starts over.
        if let Some(done) = self.finished.remove(&id) {
            self.unpin(done);
        }
        if self.copies.entry(id.clone()).or_default().insert(segment) {
            self.copies_in.entry(segment).or_default().push(id.clone());
        }
        self.pin(segment);
        self.live_bytes += record_len;
        self.live.insert(id, Live { stored, record_len, changes: BTreeSet::new() });
    }

    /// A change record for a message was written to `segment`. Returns false when the
    /// message is not pending (the change is then not needed).
    pub fn changed(&mut self, change: &Change, segment: u64) -> bool {
        match change {
            Change::Recipient { id, index, state } => {
                let Some(live) = self.live.get_mut(id) else { return false };
                if let Some(r) = live.stored.envelope.recipients.get_mut(*index) {
                    r.state = state.clone();
                }
                #[cfg(test)]
                let segment = if self.first_rules { live.home() } else { segment };
                if segment > live.home() && live.changes.insert(segment) {
                    self.pin(segment);
                }
                true
            }
            Change::Hold { id, held } => {
                let Some(live) = self.live.get_mut(id) else { return false };
                live.stored.envelope.held = *held;
                if segment > live.home() && live.changes.insert(segment) {
                    self.pin(segment);
                }
                true
            }
            Change::Done { id } => {
                let Some(live) = self.live.remove(id) else { return false };
                self.release(&live);
                let older_copy = self.copies.get(id).and_then(|c| c.first()).is_some_and(|&first| first < segment);
                #[cfg(test)]
                let older_copy = older_copy && !self.first_rules;
                if older_copy {
                    self.pin(segment);
                    self.finished.insert(id.clone(), segment);
                }
                true
            }
        }
    }

    /// Segments that hold nothing needed, other than `active`.
    pub fn unneeded(&self, active: u64) -> Vec<u64> {
        self.pins.iter().filter(|&(&s, &n)| n == 0 && s != active).map(|(&s, _)| s).collect()
    }

    /// A segment's deletion is durable: forget the copies it held, which may release
    /// the `Done` records of finished messages.
    pub fn segment_deleted(&mut self, segment: u64) {
        debug_assert_eq!(self.pins.get(&segment).copied().unwrap_or(0), 0, "deleted a pinned segment");
        self.pins.remove(&segment);
        for id in self.copies_in.remove(&segment).unwrap_or_default() {
            let Some(copies) = self.copies.get_mut(&id) else { continue };
            copies.remove(&segment);
            let first = copies.first().copied();
            if first.is_none() && !self.live.contains_key(&id) {
                self.copies.remove(&id);
            }
            if let Some(&done) = self.finished.get(&id)
                && first.is_none_or(|f| f >= done)
            {
                self.finished.remove(&id);
                self.unpin(done);
            }
        }
    }

    pub fn get(&self, id: &str) -> Option<&Live> {
        self.live.get(id)
    }

    /// Live messages whose home is `segment`.
    pub fn homed_in(&self, segment: u64) -> Vec<String> {
        let ids = self.copies_in.get(&segment).map(Vec::as_slice).unwrap_or_default();
        ids.iter().filter(|id| self.live.get(*id).is_some_and(|l| l.home() == segment)).cloned().collect()
    }

    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Segments that exist, ascending.
    pub fn segments(&self) -> impl Iterator<Item = u64> + '_ {
        self.pins.keys().copied()
    }

    pub fn is_pinned(&self, segment: u64) -> bool {
        self.pins.get(&segment).is_some_and(|&n| n > 0)
    }

    /// Where each live message's content lies.
    pub fn locations(&self) -> HashMap<String, BodyRef> {
        self.live.iter().map(|(id, l)| (id.clone(), l.stored.body)).collect()
    }

    pub fn into_pending(self) -> Vec<Stored> {
        self.live.into_values().map(|l| l.stored).collect()
    }

    pub fn pending(&self) -> Vec<Stored> {
        self.live.values().map(|l| l.stored.clone()).collect()
    }
}
