//! How long UploadParts take, so a part far slower than its peers can be
//! sent again on another connection (a hedge) instead of waiting for its
//! deadline. A server that read a part whole and never answered (seen from
//! Garage on sqlite, in 4 of 25 3 GiB uploads here) held a file's close for
//! the whole deadline: 62 s for an 8 MiB part.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Durations remembered (the most recent).
const SAMPLES: usize = 32;
/// Fewer than this and no part is hedged: nothing says what "slow" is yet.
const MIN_SAMPLES: usize = 8;
/// A part is sent again once it has taken this many times the median.
const FACTOR: f64 = 8.0;
/// Never sooner than this: a part that is merely unlucky is not sent twice.
const FLOOR: Duration = Duration::from_secs(2);
/// Bodies are measured per MiB, counting smaller ones as one (their time
/// is mostly the round trip, not the bytes).
const UNIT: f64 = 1024.0 * 1024.0;

/// Recent UploadPart times, in seconds per MiB.
#[derive(Default)]
pub struct Pace {
    samples: Mutex<VecDeque<f64>>,
}

impl Pace {
    /// Notes that a part of `bytes` took `took` from request to answer.
    pub fn record(&self, bytes: usize, took: Duration) {
        let per_mib = took.as_secs_f64() / units(bytes);
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() == SAMPLES {
            s.pop_front();
        }
        s.push_back(per_mib);
    }

    /// When a part of `bytes` still unanswered is sent again: [`FACTOR`]
    /// times the median pace for its size, at least [`FLOOR`]; `None` until
    /// [`MIN_SAMPLES`] parts have been timed.
    pub fn hedge_after(&self, bytes: usize) -> Option<Duration> {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < MIN_SAMPLES {
            return None;
        }
        let mut v: Vec<f64> = s.iter().copied().collect();
        drop(s);
        v.sort_by(f64::total_cmp);
        let median = v[v.len() / 2];
        let after = Duration::try_from_secs_f64(median * units(bytes) * FACTOR).ok()?;
        Some(after.max(FLOOR))
    }
}

fn units(bytes: usize) -> f64 {
    (bytes as f64 / UNIT).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn no_hedge_before_enough_parts_were_timed() {
        let p = Pace::default();
        for _ in 0..MIN_SAMPLES - 1 {
            p.record(8 * MIB, Duration::from_millis(400));
            assert_eq!(p.hedge_after(8 * MIB), None);
        }
        p.record(8 * MIB, Duration::from_millis(400));
        assert!(p.hedge_after(8 * MIB).is_some());
    }

    #[test]
    fn hedge_after_eight_medians_scaled_to_the_part_and_never_before_the_floor() {
        let p = Pace::default();
        // 8 MiB parts at 0.5 s each (62.5 ms per MiB), one outlier.
        for _ in 0..9 {
            p.record(8 * MIB, Duration::from_millis(500));
        }
        p.record(8 * MIB, Duration::from_secs(60));
        assert_eq!(p.hedge_after(8 * MIB), Some(Duration::from_secs(4)));
        // A 32 MiB part is expected to take 4 times as long.
        assert_eq!(p.hedge_after(32 * MIB), Some(Duration::from_secs(16)));
        // Small parts count as 1 MiB: 0.5 s, below the floor.
        assert_eq!(p.hedge_after(100), Some(FLOOR));
    }

    #[test]
    fn only_the_most_recent_parts_count() {
        let p = Pace::default();
        for _ in 0..SAMPLES {
            p.record(MIB, Duration::from_secs(10));
        }
        // The link got faster: after SAMPLES new parts, the old pace is gone.
        for _ in 0..SAMPLES {
            p.record(MIB, Duration::from_millis(300));
        }
        let after = p.hedge_after(MIB).unwrap();
        assert!(
            after < Duration::from_secs(3),
            "{after:?} still reflects the old pace"
        );
    }
}
