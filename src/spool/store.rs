//! The interface the queue keeps its messages through, so that another store can
//! stand in for the local spool without a second scheduler.

use super::{Change, Content, Envelope, Part, Spool, Stored};
use std::future::Future;
use std::io;
use std::pin::Pin;

/// An answer that arrives once the store has made it durable.
pub type Durable<'a, T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send + 'a>>;

/// Durable storage of messages and of every change of their state.
pub trait Store: Send + Sync + 'static {
    /// A new queue id, unique and increasing with time.
    fn new_id(&self) -> String;
    /// Stores a message whose content is the concatenation of `parts`.
    fn store<'a>(&'a self, envelope: &'a Envelope, parts: Vec<Part>) -> Durable<'a, Stored>;
    /// Records state changes (recipient results, done).
    fn record<'a>(&'a self, changes: &'a [Change]) -> Durable<'a, ()>;
    /// The pending messages with their current state, in arrival order.
    fn load(&self) -> Durable<'_, Vec<Stored>>;
    /// Gives back the space of what is no longer needed.
    fn compact(&self) -> Durable<'_, ()>;
    /// A message's content, to read in pieces (blocking: call it off the async
    /// threads). It stays readable while the handle lives, whatever the store does
    /// with its copies meanwhile.
    fn open_content(&self, stored: &Stored) -> io::Result<Content>;
    /// A message's whole content in memory (blocking).
    fn read_content(&self, stored: &Stored) -> io::Result<Vec<u8>> {
        self.open_content(stored)?.to_vec()
    }

    // Sharing the queue with other nodes. The local spool owns every message it
    // loads: it claims nothing more, keeps what waits, and is never woken.

    /// Whether other nodes share this store: a message that waits for a later try is
    /// then handed back ([`Store::release`]) rather than kept, and due work is taken
    /// with [`Store::claim`] rather than loaded at start.
    fn shared(&self) -> bool {
        false
    }
    /// Takes up to `limit` due messages that no live attempt holds, each leased to
    /// this node (the lease is renewed while the node lives).
    fn claim(&self, _limit: usize) -> Durable<'_, Vec<Stored>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// Hands messages back, each not to be tried before the given time (Unix
    /// seconds): any node may take them then.
    fn release<'a>(&'a self, _messages: &'a [(String, i64)]) -> Durable<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    /// Takes the messages `ids` for an operation of the mail administrator, due or
    /// not (held ones only when `held`), each leased to this node unless another
    /// live attempt holds it: answers those taken.
    fn take<'a>(&'a self, _ids: &'a [String], _held: bool) -> Durable<'a, Vec<Stored>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    /// The queue's sizes across every node sharing the store; none when the
    /// scheduler's own count is the whole queue.
    fn summary(&self) -> Durable<'_, Option<crate::queue::Summary>> {
        Box::pin(async { Ok(None) })
    }
    /// Resolves when there may be new due work (another node queued or handed back
    /// mail), or after a while in any case.
    fn wake(&self) -> Durable<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// This node was asked to take no new work (`tern cluster drain`).
    fn draining(&self) -> bool {
        false
    }
    /// The attempts under way, reported to the other nodes.
    fn set_load(&self, _in_flight: usize) {}
    /// Marks a message whose content has begun to arrive, until the mark is
    /// dropped: a store that commits in groups may wait briefly for it.
    fn incoming(&self) -> Option<Box<dyn Send + Sync>> {
        None
    }
}

impl Store for Spool {
    fn new_id(&self) -> String {
        Spool::new_id(self)
    }

    fn store<'a>(&'a self, envelope: &'a Envelope, parts: Vec<Part>) -> Durable<'a, Stored> {
        Box::pin(self.store_parts(envelope, parts))
    }

    fn record<'a>(&'a self, changes: &'a [Change]) -> Durable<'a, ()> {
        Box::pin(Spool::record(self, changes))
    }

    fn load(&self) -> Durable<'_, Vec<Stored>> {
        Box::pin(Spool::load(self))
    }

    fn compact(&self) -> Durable<'_, ()> {
        Box::pin(Spool::compact(self))
    }

    fn open_content(&self, stored: &Stored) -> io::Result<Content> {
        Spool::open_content(self, stored)
    }
}
