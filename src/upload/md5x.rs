//! Content-MD5 of several parts at once.
//!
//! MD5 is one long chain of dependent additions and rotations: a core
//! hashing one message leaves most of its execution units idle. Hashing
//! two to four messages side by side (their rounds interleaved, "lanes")
//! fills them: on the machine of `docs/BENCHMARKS.md` one lane ran 600 MB/s,
//! two 1,050-1,100 MB/s and four 1,430-1,610 MB/s. MD5 is two thirds of
//! the daemon's CPU on a write, so parts are hashed in batches: a full part
//! waits up to [`PAIR_WAIT`] for the next to come (a `cp` fills an 8 MiB
//! part every ~30 ms here), and whoever completes a batch of [`LANES`], or
//! waits longest, hashes everything waiting.
//!
//! The algorithm is RFC 1321's; the result is checked against the `md-5`
//! crate in the tests.

use crate::s3::md5_of;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most messages hashed side by side.
pub const LANES: usize = 4;

/// How long a part that will be followed by more waits for company.
pub const PAIR_WAIT: Duration = Duration::from_millis(30);

const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];
/// Rotations, four per round.
const S: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The 64 steps, unrolled, each done for every lane before the next.
macro_rules! steps {
    ($st:ident, $m:ident, $n:ident; $($i:literal)*) => {$(
        {
            const I: usize = $i;
            const R: usize = I / 16;
            // The message word each step adds.
            const W: usize = match R {
                0 => I,
                1 => (5 * I + 1) % 16,
                2 => (3 * I + 5) % 16,
                _ => (7 * I) % 16,
            };
            const SH: u32 = S[R * 4 + I % 4];
            for l in 0..$n {
                let [a, b, c, d] = $st[l];
                let f = match R {
                    0 => ((c ^ d) & b) ^ d,
                    // (b & d) | (c & !d): the two never share a bit.
                    1 => (b & d).wrapping_add(c & !d),
                    2 => b ^ c ^ d,
                    _ => c ^ (b | !d),
                };
                let t = a
                    .wrapping_add(K[I])
                    .wrapping_add($m[W][l])
                    .wrapping_add(f)
                    .rotate_left(SH)
                    .wrapping_add(b);
                $st[l] = [d, t, b, c];
            }
        }
    )*};
}

/// One 64-byte block of each lane into its state.
#[inline(always)]
fn compress<const N: usize>(state: &mut [[u32; 4]; N], blocks: [&[u8]; N]) {
    let mut m = [[0u32; N]; 16];
    for (l, block) in blocks.iter().enumerate() {
        for (w, word) in block[..64].chunks_exact(4).enumerate() {
            m[w][l] = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        }
    }
    let mut st = *state;
    steps!(st, m, N;
        0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31
        32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63);
    for (s, t) in state.iter_mut().zip(st) {
        for (x, y) in s.iter_mut().zip(t) {
            *x = x.wrapping_add(y);
        }
    }
}

/// The MD5s of `N` messages, hashed side by side for as many blocks as the
/// shortest has, then each finished alone.
pub fn md5_lanes<const N: usize>(msgs: [&[u8]; N]) -> [[u8; 16]; N] {
    let mut state = [INIT; N];
    let common = msgs.iter().map(|m| m.len() / 64).min().unwrap_or(0);
    for i in 0..common {
        compress(&mut state, std::array::from_fn(|l| &msgs[l][i * 64..]));
    }
    std::array::from_fn(|l| {
        let mut s = [state[l]];
        let rest = &msgs[l][common * 64..];
        let mut blocks = rest.chunks_exact(64);
        for b in &mut blocks {
            compress(&mut s, [b]);
        }
        let tail = blocks.remainder();
        let mut pad = [0u8; 128];
        pad[..tail.len()].copy_from_slice(tail);
        pad[tail.len()] = 0x80;
        let end = if tail.len() < 56 { 64 } else { 128 };
        let bits = (msgs[l].len() as u64).wrapping_mul(8);
        pad[end - 8..end].copy_from_slice(&bits.to_le_bytes());
        for b in pad[..end].chunks_exact(64) {
            compress(&mut s, [b]);
        }
        let mut out = [0u8; 16];
        for (o, w) in out.chunks_exact_mut(4).zip(s[0]) {
            o.copy_from_slice(&w.to_le_bytes());
        }
        out
    })
}

struct Job {
    id: u64,
    body: Bytes,
    done: oneshot::Sender<[u8; 16]>,
}

static NEXT_JOB: AtomicU64 = AtomicU64::new(0);

/// Takes a caller's job back out of the waiting list if the caller goes
/// away first (its part task aborted): a part's bytes must not outlive the
/// task that holds its memory grant.
struct Unqueue<'a> {
    batcher: &'a Batcher,
    id: u64,
}

impl Drop for Unqueue<'_> {
    fn drop(&mut self) {
        let mut w = self.batcher.lock();
        w.retain(|j| j.id != self.id);
    }
}

/// The MD5 of a whole body sent in one request: a small one at once, on
/// the caller's thread (a blocking thread's hand-off costs more than 256
/// KiB of MD5), a larger one off the async workers.
pub async fn md5_of_body(body: &Bytes) -> Option<[u8; 16]> {
    if body.len() <= crate::s3::http::INLINE_HASH_MAX {
        return Some(md5_of(body));
    }
    PARTS.md5(body.clone(), false).await
}

/// Parts waiting to be hashed together.
pub struct Batcher {
    waiting: Mutex<Vec<Job>>,
    wait: Duration,
}

/// The one every upload of the process shares.
pub static PARTS: Batcher = Batcher::new(PAIR_WAIT);

impl Batcher {
    pub const fn new(wait: Duration) -> Self {
        Batcher {
            waiting: Mutex::new(Vec::new()),
            wait,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Job>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Vec<Job> {
        std::mem::take(&mut *self.lock())
    }

    /// The MD5 of `body`. With `company`, it may wait up to the batcher's
    /// wait for other parts to hash alongside; without (the last parts of
    /// a file, a part sent because memory is short), it is hashed at once,
    /// with whatever waits.
    pub async fn md5(&self, body: Bytes, company: bool) -> Option<[u8; 16]> {
        let (done, mut rx) = oneshot::channel();
        let id = NEXT_JOB.fetch_add(1, Ordering::Relaxed);
        let ready = {
            let mut w = self.lock();
            w.push(Job { id, body, done });
            (w.len() >= LANES || !company).then(|| std::mem::take(&mut *w))
        };
        let _unqueue = Unqueue { batcher: self, id };
        if let Some(jobs) = ready {
            hash(jobs).await;
            return rx.await.ok();
        }
        if let Ok(r) = tokio::time::timeout(self.wait, &mut rx).await {
            return r.ok();
        }
        // Waited long enough: hash what waits (this part, unless another
        // caller's batch already took it).
        let jobs = self.take();
        if !jobs.is_empty() {
            hash(jobs).await;
        }
        rx.await.ok()
    }
}

/// Hashes `jobs` (at most [`LANES`]) off the async workers and answers each.
async fn hash(jobs: Vec<Job>) {
    let _ = tokio::task::spawn_blocking(move || {
        let sums: Vec<[u8; 16]> = match &jobs[..] {
            // Alone: the md-5 crate's MD5 (630 MB/s here against 600 for one lane).
            [a] => vec![md5_of(&a.body)],
            [a, b] => md5_lanes([&a.body[..], &b.body[..]]).to_vec(),
            [a, b, c] => md5_lanes([&a.body[..], &b.body[..], &c.body[..]]).to_vec(),
            [a, b, c, d] => {
                md5_lanes([&a.body[..], &b.body[..], &c.body[..], &d.body[..]]).to_vec()
            }
            more => more.iter().map(|j| md5_of(&j.body)).collect(),
        };
        for (j, s) in jobs.into_iter().zip(sums) {
            let _ = j.done.send(s);
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn data(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32)
            .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    /// Every lane agrees with the md-5 crate, whatever the lengths: around
    /// the padding edges (55, 56, 63, 64 bytes...) and lanes of different
    /// lengths, finished alone past the shortest.
    #[test]
    fn lanes_agree_with_md5() {
        let d = data(70_000, 1);
        let lens = [
            0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4097, 65_536,
        ];
        for &a in &lens {
            for &b in &[0usize, 56, 64, 129, 4097, 69_000] {
                let (x, y) = (&d[..a], &d[3..3 + b]);
                assert_eq!(md5_lanes([x]), [md5_of(x)], "{a}");
                assert_eq!(md5_lanes([x, y]), [md5_of(x), md5_of(y)], "{a} {b}");
                let z = &d[a..];
                assert_eq!(
                    md5_lanes([y, x, z, x]),
                    [md5_of(y), md5_of(x), md5_of(z), md5_of(x)],
                    "{a} {b}"
                );
            }
        }
        // RFC 1321's own example.
        assert_eq!(
            crate::s3::hex(&md5_lanes([b"abc".as_slice()])[0]),
            "900150983cd24fb0d6963f7d28e17f72"
        );
    }

    /// Parts that may wait are hashed together (one batch of four here, so
    /// nobody waits for the timer), parts that may not are hashed at once;
    /// every caller gets its own part's MD5.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_are_hashed_in_batches() {
        let b = Arc::new(Batcher::new(Duration::from_secs(30)));
        let bodies: Vec<Bytes> = (0..4)
            .map(|i| Bytes::from(data(100_000 + i, i as u32)))
            .collect();
        let t = std::time::Instant::now();
        let tasks: Vec<_> = bodies
            .iter()
            .map(|body| {
                let (b, body) = (b.clone(), body.clone());
                tokio::spawn(async move { b.md5(body, true).await })
            })
            .collect();
        for (task, body) in tasks.into_iter().zip(&bodies) {
            assert_eq!(task.await.unwrap(), Some(md5_of(body)));
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the fourth completed the batch"
        );
        // One that may not wait is hashed at once, and takes the waiting along.
        let waiting = tokio::spawn({
            let (b, body) = (b.clone(), bodies[0].clone());
            async move { b.md5(body, true).await }
        });
        while b.waiting.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            b.md5(bodies[1].clone(), false).await,
            Some(md5_of(&bodies[1]))
        );
        assert_eq!(waiting.await.unwrap(), Some(md5_of(&bodies[0])));
        assert!(t.elapsed() < Duration::from_secs(20));
        // A caller that goes away while it waits takes its part along.
        let gone = tokio::spawn({
            let (b, body) = (b.clone(), bodies[3].clone());
            async move { b.md5(body, true).await }
        });
        while b.waiting.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        assert!(
            b.waiting.lock().unwrap().is_empty(),
            "the part left with its caller"
        );
        // Alone, a part waits out the timer and is hashed by itself.
        let short = Batcher::new(Duration::from_millis(10));
        assert_eq!(
            short.md5(bodies[2].clone(), true).await,
            Some(md5_of(&bodies[2]))
        );
    }
}
