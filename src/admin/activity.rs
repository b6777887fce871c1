//! What the console shows live, in memory since start: messages accepted and
//! refused (by reason), recipients delivered, deferred and bounced, in the last
//! minute (a ring of per-second counts) and since start; and each destination
//! domain's delivery health, from the attempts' results.

use super::trace::Event;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};

/// Destination domains kept; beyond this the least recently tried is forgotten.
const MAX_DOMAINS: usize = 1000;

/// The process's activity.
pub fn get() -> &'static Activity {
    static ACTIVITY: LazyLock<Activity> = LazyLock::new(Activity::default);
    &ACTIVITY
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    pub delivered: u64,
    pub deferred: u64,
    pub bounced: u64,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.accepted += other.accepted;
        self.delivered += other.delivered;
        self.deferred += other.deferred;
        self.bounced += other.bounced;
        for (reason, n) in &other.refused {
            *self.refused.entry(reason.clone()).or_default() += n;
        }
    }
}

/// One destination domain's results since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    /// Unix seconds of the last attempt.
    pub last_attempt: i64,
    /// The last failure, as text.
    pub last_error: Option<String>,
    /// The TLS of the last connection: none, encrypted or verified.
    pub tls: Option<String>,
}

/// What `GET /api/v1/activity` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub since_start: Counts,
    pub last_minute: Counts,
    /// Unix seconds.
    pub started_at: i64,
    pub domains: BTreeMap<String, Health>,
}

#[derive(Default)]
pub struct Activity(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    started_at: i64,
    total: Counts,
    /// (Unix second, counts) of the last 60 seconds with something in them.
    seconds: VecDeque<(i64, Counts)>,
    domains: BTreeMap<String, Health>,
}

impl Inner {
    fn now(&mut self, now: i64) -> &mut Counts {
        while self.seconds.front().is_some_and(|(s, _)| *s <= now - 60) {
            self.seconds.pop_front();
        }
        if self.seconds.back().is_none_or(|(s, _)| *s != now) {
            self.seconds.push_back((now, Counts::default()));
        }
        &mut self.seconds.back_mut().expect("just pushed").1
    }

    fn count(&mut self, f: impl Fn(&mut Counts)) {
        f(&mut self.total);
        f(self.now(crate::queue::now()));
    }
}

impl Activity {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the start time.
    pub fn start(&self) {
        self.inner().started_at = crate::queue::now();
    }

    /// A refusal, by its metrics reason.
    pub fn refused(&self, reason: &str) {
        self.inner().count(|c| *c.refused.entry(reason.to_string()).or_default() += 1);
    }

    /// Counts what a trace event says.
    pub fn event(&self, event: &Event) {
        let mut inner = self.inner();
        match event {
            Event::Received { .. } => inner.count(|c| c.accepted += 1),
            Event::Attempt { destination, tls, results } => {
                let now = crate::queue::now();
                if !inner.domains.contains_key(destination) && inner.domains.len() >= MAX_DOMAINS {
                    let oldest = inner.domains.iter().min_by_key(|(_, h)| h.last_attempt).map(|(d, _)| d.clone());
                    if let Some(oldest) = oldest {
                        inner.domains.remove(&oldest);
                    }
                }
                let health = inner.domains.entry(destination.clone()).or_default();
                health.last_attempt = now;
                if tls.is_some() {
                    health.tls = tls.clone();
                }
                for r in results {
                    match r.outcome.as_str() {
                        "delivered" => health.delivered += 1,
                        "deferred" => health.deferred += 1,
                        _ => health.failed += 1,
                    }
                    if r.outcome != "delivered" {
                        health.last_error = Some(r.detail.to_string());
                    }
                }
                for r in results {
                    match r.outcome.as_str() {
                        "delivered" => inner.count(|c| c.delivered += 1),
                        "deferred" => inner.count(|c| c.deferred += 1),
                        _ => inner.count(|c| c.bounced += 1),
                    }
                }
            }
            _ => {}
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.inner();
        let now = crate::queue::now();
        inner.now(now);
        let mut last_minute = Counts::default();
        for (_, c) in &inner.seconds {
            last_minute.add(c);
        }
        Snapshot {
            since_start: inner.total.clone(),
            last_minute,
            started_at: inner.started_at,
            domains: inner.domains.clone(),
        }
    }
}
