//! Abuse limits: connections per client, message and recipient rates, and failed
//! authentication tracking.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections, in all and per client IP.
#[derive(Default)]
pub struct Connections {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Held while a connection is open; dropping it releases the slot.
pub struct Slot {
    owner: Arc<Connections>,
    ip: IpAddr,
}

impl Connections {
    /// Takes a slot unless a limit is reached (`per_ip` of `None` means no per-IP limit).
    pub fn open(self: &Arc<Self>, ip: IpAddr, total: usize, per_ip: Option<usize>) -> Option<Slot> {
        let mut open = self.open.lock().expect("connections lock");
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if open.0 >= total || per_ip.is_some_and(|max| from_ip >= max) {
            return None;
        }
        open.0 += 1;
        *open.1.entry(ip).or_default() += 1;
        Some(Slot { owner: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().expect("connections lock");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Fixed-window counters of messages and recipients per key (client IP or user).
pub struct Rates {
    window: Duration,
    max_messages: u32,
    max_recipients: u32,
    counts: Mutex<HashMap<String, (Instant, u32, u32)>>,
}

impl Rates {
    pub fn new(window: Duration, max_messages: u32, max_recipients: u32) -> Rates {
        Rates { window, max_messages, max_recipients, counts: Mutex::new(HashMap::new()) }
    }

    fn count(&self, key: &str, messages: u32, recipients: u32) -> bool {
        let now = Instant::now();
        let mut counts = self.counts.lock().expect("rates lock");
        if counts.len() > 100_000 {
            counts.retain(|_, (start, _, _)| now.duration_since(*start) < self.window);
        }
        let entry = counts.entry(key.to_string()).or_insert((now, 0, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0, 0);
        }
        if entry.1 + messages > self.max_messages || entry.2 + recipients > self.max_recipients {
            return false;
        }
        entry.1 += messages;
        entry.2 += recipients;
        true
    }

    /// Counts one more message for `key`; false when over the limit.
    pub fn message(&self, key: &str) -> bool {
        self.count(key, 1, 0)
    }

    /// Counts one more recipient for `key`; false when over the limit.
    pub fn recipient(&self, key: &str) -> bool {
        self.count(key, 0, 1)
    }
}

/// Failed AUTH attempts per client IP.
pub struct AuthFailures {
    window: Duration,
    max: u32,
    ban: Duration,
    seen: Mutex<HashMap<IpAddr, Failures>>,
}

/// Recent failure times, and the end of a ban.
#[derive(Default)]
struct Failures {
    times: Vec<Instant>,
    banned_until: Option<Instant>,
}

impl AuthFailures {
    pub fn new(max: u32, window: Duration, ban: Duration) -> AuthFailures {
        AuthFailures { window, max, ban, seen: Mutex::new(HashMap::new()) }
    }

    /// Records a failure; returns how many this IP has in the window.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("auth lock");
        let f = seen.entry(ip).or_default();
        f.times.retain(|t| now.duration_since(*t) < self.window);
        f.times.push(now);
        if f.times.len() as u32 >= self.max {
            f.banned_until = Some(now + self.ban);
        }
        f.times.len() as u32
    }

    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let seen = self.seen.lock().expect("auth lock");
        seen.get(&ip).and_then(|f| f.banned_until).is_some_and(|until| Instant::now() < until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots() {
        let c = Arc::new(Connections::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = c.open(ip, 3, Some(2)).unwrap();
        let _b = c.open(ip, 3, Some(2)).unwrap();
        assert!(c.open(ip, 3, Some(2)).is_none(), "per-IP limit");
        let _d = c.open("192.0.2.2".parse().unwrap(), 3, Some(2)).unwrap();
        assert!(c.open("192.0.2.3".parse().unwrap(), 3, Some(2)).is_none(), "total limit");
        drop(a);
        assert!(c.open(ip, 3, Some(2)).is_some());
    }

    #[test]
    fn rates_and_bans() {
        let r = Rates::new(Duration::from_secs(60), 2, 3);
        assert!(r.message("ip:a") && r.message("ip:a"));
        assert!(!r.message("ip:a"));
        assert!(r.message("ip:b"));
        assert!(r.recipient("ip:a") && r.recipient("ip:a") && r.recipient("ip:a"));
        assert!(!r.recipient("ip:a"));
        let f = AuthFailures::new(3, Duration::from_secs(60), Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(f.failed(ip), 1);
        f.failed(ip);
        assert!(!f.is_banned(ip));
        f.failed(ip);
        assert!(f.is_banned(ip));
    }
}
