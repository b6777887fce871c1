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
    /// Starts the clock of an attempt on the message `id` that arrived at `arrival`
    /// (Unix seconds). A spool id is the arrival time in microseconds, in hex; when it
    /// agrees with `arrival` it gives the finer time.
    pub fn start(arrival: i64, id: &str) -> Clock {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = Duration::from_secs(arrival.max(0) as u64);
        let arrived = u64::from_str_radix(id, 16)
            .ok()
            .map(Duration::from_micros)
            .filter(|at| *at >= second && *at < second + Duration::from_secs(1))
            .unwrap_or(second);
        Clock { started: Instant::now(), waited: now.saturating_sub(arrived) }
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
    fn the_id_gives_the_arrival_to_the_microsecond() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let id = format!("{:016X}", now.as_micros() - 250_000);
        let clock = Clock::start((now.as_secs_f64() - 0.25) as i64, &id);
        assert!((0.24..0.5).contains(&clock.waited.as_secs_f64()), "{:?}", clock.waited);
        // An id that does not agree with the arrival second is not used.
        let clock = Clock::start(now.as_secs() as i64 - 10, "0000000000000001");
        assert!(clock.waited.as_secs() >= 10, "{:?}", clock.waited);
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
