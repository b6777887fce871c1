//! Aggregates by UTC day and domain, as kept in memory and in `<data_dir>/reports/`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// Most domains one day of one kind holds; sessions or messages of further domains
/// are not counted (and one line says so).
pub const MAX_DOMAINS: usize = 10_000;

/// Aggregates that add up.
pub trait Merge {
    fn merge(&mut self, other: Self);
}

/// What was counted, by the start of its UTC day (Unix seconds) and domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de>"))]
pub struct Book<T> {
    pub days: BTreeMap<i64, BTreeMap<String, T>>,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Book { days: BTreeMap::new() }
    }
}

/// The start of the UTC day of `unix` seconds.
pub fn day_of(unix: i64) -> i64 {
    unix.div_euclid(DAY) * DAY
}

impl<T: Default + Merge> Book<T> {
    /// The aggregate of `domain` on `day`, made if new; `None` when the day already
    /// holds [`MAX_DOMAINS`] others.
    pub fn entry(&mut self, day: i64, domain: &str) -> Option<&mut T> {
        let domains = self.days.entry(day).or_default();
        if !domains.contains_key(domain) && domains.len() >= MAX_DOMAINS {
            return None;
        }
        Some(domains.entry(domain.to_string()).or_default())
    }

    /// Takes out the days before `before` (every day for `None`).
    pub fn take(&mut self, before: Option<i64>) -> Vec<(i64, String, T)> {
        let kept = match before {
            Some(day) => self.days.split_off(&day),
            None => BTreeMap::new(),
        };
        let taken = std::mem::replace(&mut self.days, kept);
        taken.into_iter().flat_map(|(day, domains)| domains.into_iter().map(move |(d, t)| (day, d, t))).collect()
    }

    /// Puts back what could not be sent.
    pub fn put_back(&mut self, day: i64, domain: String, aggregate: T) {
        match self.days.entry(day).or_default().entry(domain) {
            std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(aggregate),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(aggregate);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.days.values().all(BTreeMap::is_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
    struct N(u32);

    impl Merge for N {
        fn merge(&mut self, other: N) {
            self.0 += other.0;
        }
    }

    #[test]
    fn days_are_taken_before_a_day_or_all() {
        let mut b = Book::<N>::default();
        b.entry(0, "a.test").unwrap().0 += 1;
        b.entry(DAY, "a.test").unwrap().0 += 2;
        b.entry(DAY, "b.test").unwrap().0 += 3;
        let old = b.take(Some(DAY));
        assert_eq!(old, vec![(0, "a.test".to_string(), N(1))]);
        b.put_back(DAY, "a.test".into(), N(5));
        let all = b.take(None);
        assert_eq!(all, vec![(DAY, "a.test".into(), N(7)), (DAY, "b.test".into(), N(3))]);
        assert!(b.is_empty());
    }

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(1_700_000_000), 1_699_920_000);
        assert_eq!(day_of(DAY - 1), 0);
        assert_eq!(day_of(-1), -DAY);
    }
}
