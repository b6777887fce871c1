//! Connections to remote servers: at most `max_per_host` transactions at once to one
//! server (in a cluster, this node's share of it, which changes as nodes come and
//! go), and connections kept open a few seconds for the next message to the same
//! server.

use super::transaction::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long an idle connection is kept for reuse.
const IDLE_TIME: Duration = Duration::from_secs(5);

struct Host {
    slots: Arc<Slots>,
    idle: Vec<(Instant, Connection)>,
}

/// The transactions under way to one server.
#[derive(Default)]
struct Slots {
    busy: Mutex<usize>,
    freed: Notify,
}

/// A transaction's place among those to one server, given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.slots.busy.lock().expect("slots lock") -= 1;
        self.slots.freed.notify_waiters();
    }
}

pub struct Pool {
    max_per_host: usize,
    hosts: Mutex<HashMap<String, Host>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool(max_per_host: {})", self.max_per_host)
    }
}

impl Pool {
    pub fn new(max_per_host: usize) -> Pool {
        Pool { max_per_host, hosts: Mutex::new(HashMap::new()) }
    }

    /// Transactions allowed at once per server now: the limit, or this node's share.
    pub fn limit(&self) -> usize {
        crate::cluster::share::per_node(self.max_per_host)
    }

    fn with_host<T>(&self, key: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().expect("pool lock");
        // Idle connections past their time are dropped (closed) here.
        let now = Instant::now();
        for host in hosts.values_mut() {
            host.idle.retain(|(since, _)| now.duration_since(*since) < IDLE_TIME);
        }
        let host = hosts.entry(key.to_string()).or_insert_with(|| Host { slots: Arc::default(), idle: Vec::new() });
        f(host)
    }

    /// Waits for a free slot at the server `key`. When the limit shrinks, those
    /// under way finish and no new one starts until they are below it.
    pub async fn slot(&self, key: &str) -> Slot {
        let slots = self.with_host(key, |h| h.slots.clone());
        loop {
            // Listening before looking, so that no release or change is missed.
            let freed = slots.freed.notified();
            let changed = crate::cluster::share::changed();
            tokio::pin!(freed, changed);
            freed.as_mut().enable();
            changed.as_mut().enable();
            {
                let mut busy = slots.busy.lock().expect("slots lock");
                if *busy < self.limit() {
                    *busy += 1;
                    return Slot { slots: slots.clone() };
                }
            }
            tokio::select! {
                () = freed => {}
                () = changed => {}
            }
        }
    }

    /// An idle connection to `key`, most recent first.
    pub fn take(&self, key: &str) -> Option<Connection> {
        self.with_host(key, |h| h.idle.pop().map(|(_, c)| c))
    }

    /// Keeps a connection for reuse by the holder of a slot, unless the connections
    /// open to `key` would then exceed the limit (it shrank meanwhile).
    pub fn put(&self, key: &str, conn: Connection) {
        let max = self.limit();
        self.with_host(key, |h| {
            let busy = *h.slots.busy.lock().expect("slots lock");
            if h.idle.len() + busy.max(1) <= max {
                h.idle.push((Instant::now(), conn));
            }
        });
    }
}
