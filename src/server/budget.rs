//! The global budget for message bytes held in memory by sessions (`[limits]
//! max_inflight_bytes`): where a session would hold more, the message is refused with
//! 452 4.3.1 instead.

use crate::smtp::Reply;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

/// Bytes taken from the budget, given back when dropped.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget { limit, used: AtomicU64::new(0) })
    }

    /// An empty reservation, to grow as memory is needed.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation { budget: self.clone(), bytes: 0 }
    }

    /// Bytes reserved now, in all.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` if the total stays within `cap` (at most the limit).
    fn take(&self, bytes: u64, cap: u64) -> bool {
        let cap = cap.min(self.limit);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(bytes).filter(|&u| u <= cap))
            .is_ok()
    }
}

impl Reservation {
    /// Takes `bytes` more; false (and nothing taken) when the budget has not enough left.
    pub fn grow(&mut self, bytes: u64) -> bool {
        self.grow_within(bytes, u64::MAX)
    }

    /// Like [`Reservation::grow`], but only while the whole budget's use stays within
    /// `share` of its limit (`share` in (0, 1]): for memory that is a convenience, which
    /// many sessions at once must not take all of.
    pub fn grow_within_share(&mut self, bytes: u64, share: f64) -> bool {
        let cap = (self.budget.limit as f64 * share) as u64;
        self.grow_within(bytes, cap)
    }

    fn grow_within(&mut self, bytes: u64, cap: u64) -> bool {
        let ok = self.budget.take(bytes, cap);
        if ok {
            self.bytes += bytes;
        }
        ok
    }
}

impl Reservation {
    /// A new empty reservation on the same budget.
    pub fn empty(&self) -> Reservation {
        self.budget.reservation()
    }

    /// Gives back all that was taken.
    pub fn clear(&mut self) {
        self.budget.used.fetch_sub(std::mem::take(&mut self.bytes), Ordering::AcqRel);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.clear();
    }
}

/// The answer when the budget is spent.
pub fn exhausted() -> Reply {
    Reply::new(452, (4, 3, 1), "Insufficient system resources, try again later")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_give_back() {
        let budget = Budget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(60));
        let mut b = budget.reservation();
        assert!(!b.grow(41), "over the limit");
        assert!(b.grow(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow(60));
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_share_caps_what_the_whole_budget_may_use() {
        let budget = Budget::new(100);
        let mut a = budget.reservation();
        assert!(a.grow(20));
        let mut b = budget.reservation();
        assert!(b.grow_within_share(5, 0.25));
        assert!(!b.grow_within_share(1, 0.25), "25 of 100 in use");
        assert!(b.grow(75), "the rest of the limit is still there");
    }
}
