//! Latency histograms that many threads record into at once, without a lock: log-linear
//! buckets of microseconds (exact below 8 µs, then eight buckets per power of two, so a
//! bucket is at most 12.5 % wide), one relaxed atomic add per sample. Counts only grow; two
//! snapshots taken some time apart subtract to what happened in between, which is how
//! `thinpool iostat` gets per-interval percentiles from a running server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two (as a shift: 2^3 = 8).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values up to 2^40 µs (12 days) get their own bucket; larger ones share the last.
const MAX_EXP: u32 = 40;
/// Number of buckets.
pub const BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;

/// The bucket of a value of `us` microseconds.
fn index(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros(); // >= SUB_BITS
    if exp > MAX_EXP {
        return BUCKETS - 1;
    }
    let mantissa = (us >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + (exp - SUB_BITS) as u64 * SUB + mantissa) as usize
}

/// The largest value (µs) bucket `i` holds.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let exp = (i - SUB) / SUB + SUB_BITS as u64;
    let mantissa = (i - SUB) % SUB;
    ((SUB + mantissa + 1) << (exp - SUB_BITS as u64)) - 1
}

/// A histogram recorded into concurrently.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[index(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as they are now (each bucket read on its own: a sample recorded during
    /// the copy is in it or in the next one).
    pub fn snapshot(&self) -> Counts {
        Counts(
            self.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        )
    }
}

/// A histogram's counts at one moment, or the difference of two such moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts(Vec<u64>);

impl Default for Counts {
    fn default() -> Counts {
        Counts(vec![0; BUCKETS])
    }
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// What was recorded after `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .zip(earlier.0.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        )
    }

    /// The `q`-quantile (0 < q <= 1) in microseconds, as the upper bound of its bucket;
    /// `None` with no samples.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let n = self.total();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }

    /// Non-empty buckets as `[index, count]` pairs (how a sample travels as JSON).
    pub fn to_sparse(&self) -> Vec<[u64; 2]> {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| [i as u64, *c])
            .collect()
    }

    /// The inverse of [`Counts::to_sparse`]; out-of-range indexes are an error.
    pub fn from_sparse(pairs: &[[u64; 2]]) -> Result<Counts, String> {
        let mut c = Counts::default();
        for &[i, n] in pairs {
            let slot =
                c.0.get_mut(i as usize)
                    .ok_or_else(|| format!("histogram bucket {i} is out of range"))?;
            *slot = n;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_and_are_at_most_an_eighth_wide() {
        for us in 1..5000u64 {
            assert!(index(us) >= index(us - 1), "{us}");
        }
        for us in (0..5000u64).chain([1 << 20, (1 << 20) + 1, 1 << 39, 1 << 40, u64::MAX]) {
            let i = index(us);
            assert!(i < BUCKETS);
            if us <= 1 << MAX_EXP {
                assert!(upper(i) >= us, "{us} above its bucket's bound {}", upper(i));
                let lower = if i == 0 { 0 } else { upper(i - 1) + 1 };
                assert!(lower <= us, "{us} below bucket {i}");
                assert!(
                    (upper(i) - lower) * 8 <= lower.max(8),
                    "bucket {i} [{lower}, {}] too wide",
                    upper(i)
                );
            }
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_of_known_samples_and_of_a_difference() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile_us(0.5), None);
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let a = h.snapshot();
        assert_eq!(a.total(), 100);
        // Exact below 8 µs, within an eighth above.
        assert_eq!(a.quantile_us(0.05), Some(5));
        let p50 = a.quantile_us(0.5).unwrap();
        assert!((50..=56).contains(&p50), "{p50}");
        let p100 = a.quantile_us(1.0).unwrap();
        assert!((100..=112).contains(&p100), "{p100}");
        for _ in 0..10 {
            h.record(Duration::from_millis(10));
        }
        let d = h.snapshot().since(&a);
        assert_eq!(d.total(), 10);
        let p = d.quantile_us(0.5).unwrap();
        assert!((10_000..=11_250).contains(&p), "{p}");
        assert_eq!(Counts::from_sparse(&d.to_sparse()), Ok(d));
        assert!(Counts::from_sparse(&[[BUCKETS as u64, 1]]).is_err());
    }
}
