//! A Prometheus histogram of atomic counters, encoded by `prometheus-client`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram of atomic counters: observing takes no lock.
#[derive(Clone, Debug)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: Vec<f64>,
    /// One count per bound, and one past the last (+Inf); not cumulative.
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum of observations, as the bits of an f64.
    sum: AtomicU64,
}

impl AtomicHistogram {
    pub(super) fn new(bounds: &[f64]) -> AtomicHistogram {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        let inner =
            HistogramInner { bounds: bounds.to_vec(), counts, count: AtomicU64::new(0), sum: AtomicU64::new(0) };
        AtomicHistogram { inner: Arc::new(inner) }
    }

    pub fn observe(&self, value: f64) {
        let i = self.inner.bounds.partition_point(|b| *b < value);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .inner
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let bounds = inner.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed))).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(inner.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn histogram_counts_into_the_first_bucket_that_holds_it() {
        let h = AtomicHistogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        let mut registry = Registry::default();
        registry.register("h", "test", h);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in
            ["h_sum 6.0", "h_count 4", "h_bucket{le=\"1.0\"} 2", "h_bucket{le=\"2.0\"} 3", "h_bucket{le=\"+Inf\"} 4"]
        {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
