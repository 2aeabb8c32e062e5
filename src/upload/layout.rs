//! Where the parts of a new version lie: the schedule's parts, with a
//! boundary at the base's end where S3's part minimum allows.

use crate::s3::rules::{MAX_PARTS, MIN_PART_SIZE};
use crate::upload::schedule::Schedule;

/// Where the parts of a new version lie. The schedule's parts, except that
/// the base's end is a part boundary when it can be (S3's parts but the
/// last are at least 5 MiB): parts `1..=k` cover the base's `b` bytes (the
/// last of them cut at `b`, or grown to it when the rest would be too
/// small), and the parts after follow from `b` with the schedule's sizes.
/// So an append copies the whole base on the server and sends only the
/// new bytes (`>>` onto a 6 MiB log sends the appended line, not 6 MiB).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    sched: Schedule,
    k: u32,
    b: u64,
}

impl Layout {
    pub(super) fn new(sched: Schedule, base_len: u64) -> Self {
        let plain = Layout { sched, k: 0, b: 0 };
        let Some((n, s)) = sched.part_of(base_len) else {
            return plain;
        };
        let r = base_len - s;
        if base_len == 0 || r == 0 {
            return plain;
        }
        if r >= MIN_PART_SIZE {
            Layout {
                sched,
                k: n,
                b: base_len,
            }
        } else if n > 1 {
            Layout {
                sched,
                k: n - 1,
                b: base_len,
            }
        } else {
            plain
        }
    }

    /// The file offset where part `n` starts.
    pub(super) fn part_start(&self, n: u32) -> u64 {
        if n <= self.k {
            self.sched.part_start(n)
        } else {
            self.b + self.sched.part_start(n) - self.sched.part_start(self.k + 1)
        }
    }

    /// The size of part `n` (before the file's end cuts it).
    pub(super) fn part_size(&self, n: u32) -> u64 {
        if n == self.k {
            self.b - self.sched.part_start(n)
        } else {
            self.sched.part_size(n)
        }
    }

    /// The part holding byte `offset`, with its start.
    pub(super) fn part_of(&self, offset: u64) -> Option<(u32, u64)> {
        if offset < self.b {
            let (n, s) = self.sched.part_of(offset)?;
            return Some(if n > self.k {
                (self.k, self.sched.part_start(self.k))
            } else {
                (n, s)
            });
        }
        let shift = self.sched.part_start(self.k + 1);
        let (n, s) = self.sched.part_of(offset - self.b + shift)?;
        Some((n, s - shift + self.b))
    }

    /// The largest file these parts hold.
    pub(super) fn max_file_size(&self) -> u64 {
        self.part_start(MAX_PARTS + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn the_layout_ends_a_part_at_the_base_end() {
        let sched = Schedule {
            base: 8 * MIB,
            max_part: 8 * MIB,
        };
        // 6 MiB base: part 1 is the base, part 2 starts at its end.
        let l = Layout::new(sched, 6 * MIB);
        assert_eq!((l.part_start(1), l.part_size(1)), (0, 6 * MIB));
        assert_eq!((l.part_start(2), l.part_size(2)), (6 * MIB, 8 * MIB));
        assert_eq!(l.part_of(6 * MIB - 1), Some((1, 0)));
        assert_eq!(l.part_of(6 * MIB), Some((2, 6 * MIB)));
        assert_eq!(l.part_of(14 * MIB), Some((3, 14 * MIB)));
        // 18 MiB: the 2 MiB past 16 MiB are too few for a part: part 2 grows.
        let l = Layout::new(sched, 18 * MIB);
        assert_eq!((l.part_start(2), l.part_size(2)), (8 * MIB, 10 * MIB));
        assert_eq!(l.part_of(17 * MIB), Some((2, 8 * MIB)));
        assert_eq!(l.part_of(18 * MIB), Some((3, 18 * MIB)));
        // Small bases and exact boundaries keep the schedule.
        for b in [0, 3 * MIB, 16 * MIB] {
            let l = Layout::new(sched, b);
            assert_eq!(
                (l.part_start(3), l.part_size(3)),
                (16 * MIB, 8 * MIB),
                "{b}"
            );
        }
    }
}
