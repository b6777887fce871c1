//! The retry schedule: configured waits, the last one repeating, with a little jitter
//! so that messages deferred together do not all come back at once.

use std::time::Duration;

/// The wait before attempt number `attempts + 1` (after `attempts` failures).
pub fn delay(schedule: &[Duration], attempts: u32) -> Duration {
    let i = (attempts.saturating_sub(1) as usize).min(schedule.len().saturating_sub(1));
    let base = schedule.get(i).copied().unwrap_or(Duration::from_secs(300));
    // Up to +10%.
    base + base.mul_f64(fastrand::f64() * 0.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_steps_then_repeats_last() {
        let s = [Duration::from_secs(60), Duration::from_secs(300)];
        let within =
            |d: Duration, base: u64| d >= Duration::from_secs(base) && d <= Duration::from_secs(base) * 11 / 10;
        assert!(within(delay(&s, 1), 60));
        assert!(within(delay(&s, 2), 300));
        assert!(within(delay(&s, 9), 300));
    }
}
