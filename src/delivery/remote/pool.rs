//! Connections to remote servers: at most `max_per_host` transactions at once to one
//! server, and connections kept open a few seconds for the next message to the same
//! server.

use super::transaction::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long an idle connection is kept for reuse.
const IDLE_TIME: Duration = Duration::from_secs(5);

struct Host {
    slots: Arc<Semaphore>,
    idle: Vec<(Instant, Connection)>,
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

    fn with_host<T>(&self, key: &str, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut hosts = self.hosts.lock().expect("pool lock");
        // Idle connections past their time are dropped (closed) here.
        let now = Instant::now();
        for host in hosts.values_mut() {
            host.idle.retain(|(since, _)| now.duration_since(*since) < IDLE_TIME);
        }
        let max = self.max_per_host;
        let host = hosts
            .entry(key.to_string())
            .or_insert_with(|| Host { slots: Arc::new(Semaphore::new(max)), idle: Vec::new() });
        f(host)
    }

    /// Waits for a free slot at the server `key`.
    pub async fn slot(&self, key: &str) -> OwnedSemaphorePermit {
        let slots = self.with_host(key, |h| h.slots.clone());
        slots.acquire_owned().await.expect("semaphore never closed")
    }

    /// An idle connection to `key`, most recent first.
    pub fn take(&self, key: &str) -> Option<Connection> {
        self.with_host(key, |h| h.idle.pop().map(|(_, c)| c))
    }

    /// Keeps a connection for reuse.
    pub fn put(&self, key: &str, conn: Connection) {
        let max = self.max_per_host;
        self.with_host(key, |h| {
            if h.idle.len() < max {
                h.idle.push((Instant::now(), conn));
            }
        });
    }
}
