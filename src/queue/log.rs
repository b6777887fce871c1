//! The delivery log line's timing: one line per recipient and attempt carries the
//! fields Postfix administrators look for (`relay`, `delay`, `delays=a/b/c/d`, `dsn`,
//! `status`, `tls`); this module works out `delay` and `delays`.

use crate::delivery::Via;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When an attempt began, and how long its message had waited in the queue by then.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub started: Instant,
    pub waited: Duration,
}

impl Clock {
    /// Starts the clock of an attempt on a message that arrived at `arrival` (Unix
    /// seconds, so the wait is counted from the start of that second).
    pub fn start(arrival: i64) -> Clock {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let waited = now.saturating_sub(Duration::from_secs(arrival.max(0) as u64));
        Clock { started: Instant::now(), waited }
    }
}

/// `delay` (from arrival to now, in seconds) and `delays=a/b/c/d` as Postfix writes
/// them: `a` the wait in the queue before this attempt, `b` the attempt's time before
/// it turned to this destination (reading the message, earlier destinations), `c`
/// connection setup (DNS, connect, greeting, EHLO, STARTTLS, AUTH), `d` transmission.
pub fn delays(clock: &Clock, via: &Via) -> (String, String) {
    let a = clock.waited;
    let b = via.started.saturating_duration_since(clock.started);
    let total = a + clock.started.elapsed();
    let parts = [a, b, via.setup, via.transmission].map(seconds);
    (seconds(total), parts.join("/"))
}

/// Seconds with at most two decimals and no trailing zeros: `0.25`, `3`, `0`.
fn seconds(d: Duration) -> String {
    let text = format!("{:.2}", d.as_secs_f64());
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_written_short() {
        assert_eq!(seconds(Duration::from_millis(250)), "0.25");
        assert_eq!(seconds(Duration::from_secs(3)), "3");
        assert_eq!(seconds(Duration::from_millis(1)), "0");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5");
    }

    #[test]
    fn delays_add_up() {
        let clock = Clock { started: Instant::now(), waited: Duration::from_secs(2) };
        let mut via = Via::starting("local");
        via.transmission = Duration::from_millis(10);
        let (delay, delays) = delays(&clock, &via);
        assert!(delay.starts_with('2'), "{delay}");
        let parts: Vec<&str> = delays.split('/').collect();
        assert_eq!(parts.len(), 4, "{delays}");
        assert_eq!((parts[0], parts[2], parts[3]), ("2", "0", "0.01"));
    }
}
