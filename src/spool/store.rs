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
