//! The part-size schedule: parts grow with their number so that a stream of
//! unknown length fits in S3's 10,000 parts.
//!
//! Part `n` (1-based) is `base × 2^((n-1) / 500)`, capped at `max_part`.
//! With the defaults (8 MiB base, 128 MiB cap) parts 1–500 are 8 MiB, 501–1000
//! 16 MiB, 1001–1500 32 MiB, 1501–2000 64 MiB and the rest 128 MiB: about
//! 1.03 TiB in 10,000 parts.

use crate::s3::rules::{MAX_PARTS, MAX_SINGLE_SIZE};

/// How many parts share one size before it doubles.
pub const PARTS_PER_STEP: u32 = 500;

/// Part sizes for one upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Size of the first parts.
    pub base: u64,
    /// Largest part (bounded by the memory budget: a part is held whole for its MD5).
    pub max_part: u64,
}

impl Schedule {
    /// The size of part `n` (1-based).
    pub fn part_size(&self, n: u32) -> u64 {
        let step = (n.saturating_sub(1) / PARTS_PER_STEP).min(40);
        self.base
            .checked_shl(step)
            .unwrap_or(u64::MAX)
            .min(self.max_part.max(self.base))
            .min(MAX_SINGLE_SIZE)
    }

    /// The file offset where part `n` starts.
    pub fn part_start(&self, n: u32) -> u64 {
        (1..n).map(|i| self.part_size(i)).sum()
    }

    /// The part (1-based) holding byte `offset`, with its start offset; `None`
    /// past the largest file.
    pub fn part_of(&self, offset: u64) -> Option<(u32, u64)> {
        let mut start = 0u64;
        for n in 1..=MAX_PARTS {
            let size = self.part_size(n);
            if offset < start + size {
                return Some((n, start));
            }
            start += size;
        }
        None
    }

    /// The largest file this schedule can store in 10,000 parts.
    pub fn max_file_size(&self) -> u64 {
        self.part_start(MAX_PARTS + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::rules::MIN_PART_SIZE;
    const MIB: u64 = 1024 * 1024;
    const TIB: u64 = 1024 * 1024 * MIB;

    #[test]
    fn default_schedule_grows_and_reaches_a_tebibyte() {
        let s = Schedule {
            base: 8 * MIB,
            max_part: 128 * MIB,
        };
        assert_eq!(s.part_size(1), 8 * MIB);
        assert_eq!(s.part_size(500), 8 * MIB);
        assert_eq!(s.part_size(501), 16 * MIB);
        assert_eq!(s.part_size(1001), 32 * MIB);
        assert_eq!(s.part_size(2001), 128 * MIB);
        assert_eq!(s.part_size(10_000), 128 * MIB);
        assert!(s.max_file_size() >= TIB, "{}", s.max_file_size());
        assert_eq!(s.part_start(2), 8 * MIB);
        assert_eq!(s.part_of(0), Some((1, 0)));
        assert_eq!(s.part_of(8 * MIB), Some((2, 8 * MIB)));
        assert_eq!(s.part_of(s.max_file_size()), None);
        assert_eq!(s.part_of(s.max_file_size() - 1).unwrap().0, MAX_PARTS);
    }

    #[test]
    fn five_tebibytes_with_a_larger_cap() {
        let s = Schedule {
            base: 8 * MIB,
            max_part: 768 * MIB,
        };
        assert!(s.max_file_size() >= 5 * TIB, "{}", s.max_file_size());
        // Every part but the last must be at least S3's minimum.
        assert!((1..=MAX_PARTS).all(|n| s.part_size(n) >= MIN_PART_SIZE));
    }

    #[test]
    fn parts_never_exceed_s3_limit() {
        let s = Schedule {
            base: 8 * MIB,
            max_part: u64::MAX,
        };
        assert_eq!(s.part_size(10_000), MAX_SINGLE_SIZE);
    }
}
