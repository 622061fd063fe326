//! Statistics: a mergeable latency histogram and per-connection division.
//!
//! Workers cannot ship every latency sample to the parent (10,000
//! subscribers × 200 events is two million numbers), so each keeps a
//! log-linear histogram and sends its non-empty buckets; the parent merges
//! them and reads percentiles from the merge.

use serde_json::{json, Value};

/// Sub-buckets per power of two: values are kept to within 1/64 (1.6%).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets for every u64: exact values below `SUB`, then `SUB` per octave.
const BUCKETS: usize = (SUB as usize) * (64 - SUB_BITS as usize + 1);

/// Log-linear histogram of u64 samples (nanoseconds, here).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let octave = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = octave - SUB_BITS;
    let sub = (v >> shift) - SUB; // 0..SUB
    (SUB + u64::from(shift) * SUB + sub) as usize
}

/// The smallest value that lands in bucket `b`.
fn bucket_low(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let shift = (b - SUB) / SUB;
    let sub = (b - SUB) % SUB;
    (SUB + sub) << shift
}

/// A representative value for bucket `b`: the middle of its range.
fn bucket_mid(b: usize) -> u64 {
    let low = bucket_low(b);
    let b = b as u64;
    if b < SUB {
        return low;
    }
    let width = 1u64 << ((b - SUB) / SUB);
    low + width / 2
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// The exact largest sample (not a bucket estimate).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The `p`th percentile (0 < p <= 100) by nearest rank, as the middle of
    /// its bucket; `None` when empty.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Never report more than the true maximum.
                return Some(bucket_mid(b).min(self.max));
            }
        }
        Some(self.max)
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// `{"max":M,"b":[[bucket,count],...]}` with only non-empty buckets.
    pub fn to_json(&self) -> Value {
        let buckets: Vec<Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| json!([b, c]))
            .collect();
        json!({ "max": self.max, "b": buckets })
    }

    pub fn from_json(v: &Value) -> Result<Histogram, String> {
        let mut h = Histogram::new();
        h.max = v["max"].as_u64().ok_or("histogram: no max")?;
        for pair in v["b"].as_array().ok_or("histogram: no buckets")? {
            let b = pair[0].as_u64().ok_or("histogram: bad bucket")? as usize;
            let c = pair[1].as_u64().ok_or("histogram: bad count")?;
            if b >= BUCKETS {
                return Err(format!("histogram: bucket {b} out of range"));
            }
            h.counts[b] += c;
            h.total += c;
        }
        Ok(h)
    }
}

/// Bytes per connection from a delta in kB (as /proc reports memory);
/// negative deltas are kept (they mean the sample was noise-dominated).
pub fn per_conn_bytes(before_kb: u64, after_kb: u64, n: u64) -> Option<f64> {
    if n == 0 {
        return None;
    }
    Some((after_kb as f64 - before_kb as f64) * 1024.0 / n as f64)
}

/// `count / secs`, or `None` for an empty interval.
pub fn rate(count: u64, secs: f64) -> Option<f64> {
    (secs > 0.0).then(|| count as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..5000u64).chain([1 << 20, (1 << 20) + 1, u64::MAX / 3, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last || v > 5000, "non-monotonic at {v}");
            last = b;
            assert!(bucket_low(b) <= v, "low {} > {v}", bucket_low(b));
            // Relative error bound of the representative value.
            let mid = bucket_mid(b) as f64;
            assert!((mid - v as f64).abs() <= v as f64 / SUB as f64 + 1.0);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn percentiles_exact_for_small_values() {
        let mut h = Histogram::new();
        for v in 1..=50 {
            h.record(v);
        }
        assert_eq!(h.total(), 50);
        assert_eq!(h.percentile(50.0), Some(25));
        assert_eq!(h.percentile(99.0), Some(50));
        assert_eq!(h.percentile(100.0), Some(50));
        assert_eq!(h.max(), 50);
        assert_eq!(Histogram::new().percentile(50.0), None);
    }

    #[test]
    fn percentiles_within_bucket_error() {
        let mut h = Histogram::new();
        // 1 µs .. 1000 µs uniformly: p50 ≈ 500 µs, p99 ≈ 990 µs.
        for i in 1..=1000u64 {
            h.record(i * 1000);
        }
        let p50 = h.percentile(50.0).unwrap() as f64;
        let p99 = h.percentile(99.0).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "p50 {p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "p99 {p99}");
        assert_eq!(h.max(), 1_000_000);
        assert!(h.percentile(100.0).unwrap() <= 1_000_000);
    }

    #[test]
    fn merge_and_json_roundtrip() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in [3u64, 70, 9_000, 123_456_789] {
            a.record(v);
            b.record(v * 2);
        }
        let back = Histogram::from_json(&a.to_json()).unwrap();
        assert_eq!(back, a);
        a.merge(&b);
        assert_eq!(a.total(), 8);
        assert_eq!(a.max(), 246_913_578);
        assert!(Histogram::from_json(&json!({"max":1,"b":[[999999,1]]})).is_err());
        assert!(Histogram::from_json(&json!({"b":[]})).is_err());
    }

    #[test]
    fn per_connection_division() {
        assert_eq!(per_conn_bytes(1000, 1100, 100), Some(1024.0));
        assert_eq!(per_conn_bytes(1000, 1000, 7), Some(0.0));
        assert_eq!(per_conn_bytes(1100, 1000, 1024), Some(-100.0));
        assert_eq!(per_conn_bytes(1, 2, 0), None);
        assert_eq!(rate(10, 2.0), Some(5.0));
        assert_eq!(rate(10, 0.0), None);
    }
}
