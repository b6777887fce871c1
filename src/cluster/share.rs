//! The cluster's share of per-destination limits: `[outbound]
//! max_connections_per_host` holds for the cluster as a whole, each of the N live
//! nodes allowing `ceil(limit / N)` connections per host. The heartbeat counts the
//! live nodes; outside a cluster the count is unknown and a node has the whole limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

/// Live nodes as the last heartbeat counted them; 0 outside a cluster.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Woken whenever the count changes, so that waiters for a slot look again.
static CHANGED: Notify = Notify::const_new();

/// Sets the count of live nodes (at least this one).
pub fn set_live_nodes(n: usize) {
    let n = n.max(1);
    let was = LIVE.swap(n, Ordering::Relaxed);
    if was != n {
        tracing::info!(live_nodes = n, "per-host connection limits now shared by {n} live node(s)");
        CHANGED.notify_waiters();
    }
}

/// This node's part of a cluster-wide `limit`.
pub fn per_node(limit: usize) -> usize {
    share(limit, LIVE.load(Ordering::Relaxed))
}

/// `limit` shared by `live` nodes, rounded up and at least 1; 0 nodes: the whole.
pub fn share(limit: usize, live: usize) -> usize {
    if live == 0 { limit } else { limit.div_ceil(live).max(1) }
}

/// Resolves at the next change of the count; enable it before looking at the limit.
pub fn changed() -> tokio::sync::futures::Notified<'static> {
    CHANGED.notified()
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_round_up() {
        assert_eq!(share(10, 0), 10);
        assert_eq!(share(10, 1), 10);
        assert_eq!(share(10, 3), 4);
        assert_eq!(share(3, 3), 1);
        assert_eq!(share(3, 2), 2);
        assert_eq!(share(2, 5), 1);
    }
}
