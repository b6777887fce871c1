//! The database's clock as a node sees it. Leases are timed by the database alone;
//! Unix times that the node writes for others to compare with the database's
//! (arrival, `due`, `next_attempt`, the MTA-STS cache's times) are the node's clock
//! corrected by the offset each heartbeat measures, so that a node whose clock is
//! ahead does not hold mail back and one behind does not retry it at once.

use std::sync::atomic::{AtomicI64, Ordering};

/// The database's clock minus this node's, in milliseconds; 0 outside a cluster.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// An offset beyond this is said in the log: the node's clock is wrong.
const WORTH_SAYING_MS: i64 = 2_000;

/// Now, in Unix milliseconds, by the database's clock (the node's own outside a
/// cluster).
pub fn now_ms() -> i64 {
    local_ms() + OFFSET_MS.load(Ordering::Relaxed)
}

/// Takes a reading of the database's clock, `db_ms`, made between the node's
/// `sent_ms` and `received_ms`: the database read it halfway, on average.
pub fn learn(db_ms: i64, sent_ms: i64, received_ms: i64) {
    let offset = db_ms - sent_ms.midpoint(received_ms);
    let was = OFFSET_MS.swap(offset, Ordering::Relaxed);
    let worth = |ms: i64| ms.abs() >= WORTH_SAYING_MS;
    if worth(offset - was) || (was == 0 && worth(offset)) {
        tracing::warn!(
            offset_ms = offset,
            "this node's clock differs from the database's; queue times follow the database's clock"
        );
    }
}

/// The node's clock now, in Unix milliseconds, for [`learn`].
pub fn local_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
