//! Rate limits for log lines that can repeat many times a second (a full disk, no
//! file descriptors left): the first occurrence is logged, then at most one line per
//! period, carrying how many occurrences were left out since the last line.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a repeating error is logged.
pub const PERIOD: Duration = Duration::from_secs(10);

/// One kind of log line, usually a `static` beside the line it limits.
pub struct LogLimit {
    period: Duration,
    state: Mutex<State>,
}

struct State {
    /// When a line was last let through.
    last: Option<Instant>,
    /// Occurrences left out since then.
    suppressed: u64,
}

impl LogLimit {
    /// A limit of one line per `period`.
    pub const fn new(period: Duration) -> LogLimit {
        LogLimit { period, state: Mutex::new(State { last: None, suppressed: 0 }) }
    }

    /// Counts one occurrence now; see [`LogLimit::admit_at`].
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// Counts one occurrence at `now`. `Some(repeats)` means log it, saying that
    /// `repeats` occurrences were left out since the previous line; `None` means
    /// leave it out.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update; the counts are
        // still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state.last.is_none_or(|last| now.saturating_duration_since(last) >= self.period);
        if !due {
            state.suppressed += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_then_once_per_period_with_count() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        assert_eq!(limit.admit_at(at(0)), Some(0));
        for ms in (1..1000).step_by(100) {
            assert_eq!(limit.admit_at(at(ms)), None);
        }
        assert_eq!(limit.admit_at(at(9_999)), None);
        // Eleven left out: ten in the loop, one just before the period ended.
        assert_eq!(limit.admit_at(at(10_000)), Some(11));
        assert_eq!(limit.admit_at(at(10_001)), None);
        // A quiet spell: the next occurrence is logged at once.
        assert_eq!(limit.admit_at(at(60_000)), Some(1));
        assert_eq!(limit.admit_at(at(60_000)), None);
    }

    #[test]
    fn clock_going_backwards_suppresses_rather_than_floods() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now() + Duration::from_secs(100);
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0 - Duration::from_secs(50)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(1));
    }
}
