//! The read path: ranged GETs with a sequential read-ahead window that grows
//! from 1 MiB to a maximum (64 MiB by default) while reads stay sequential.
//! Reads that jump elsewhere fetch only what they need and start another
//! stream with its own window (up to four per open file). The kernel may
//! deliver read-ahead requests slightly out of order, so a read that falls
//! inside the fetched window still counts as sequential.
//!
//! Read-ahead memory comes from a budget shared by all readers and is never
//! waited for: when it is used up, a read fetches only what it needs itself
//! (those bytes are not counted: they are answered at once).
//!
//! Never touches the upload path.

use crate::s3::{Frames, ObjectStore, S3Error};
use crate::upload::budget::{Budget, Grant};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

/// First read-ahead window.
pub const INITIAL_WINDOW: u64 = 1024 * 1024;
/// Largest single GET of the read-ahead.
const MAX_CHUNK: u64 = 8 * 1024 * 1024;
/// Smallest GET for a random read (a few kernel pages cost the same round trip).
const MIN_RANDOM_READ: u64 = 128 * 1024;
/// Fetched bytes kept behind the reader, for out-of-order reads (the
/// kernel's read-ahead sends several at once).
const KEEP_BEHIND: u64 = 4 * 1024 * 1024;
/// Most sequential streams one open file is read in at once, each with its
/// own read-ahead: threads reading one descriptor at far-apart places.
const MAX_STREAMS: usize = 4;
/// A stream no read has continued for this many reads of its file is
/// retired, giving back its read-ahead and its share of the window.
const IDLE_READS: u64 = 256;

enum ChunkData {
    Pending(JoinHandle<Result<Frames, S3Error>>),
    /// The body in the pieces it arrived in: a read inside one piece is
    /// answered with a slice of it, without a copy.
    Ready(Vec<Bytes>),
}

struct Chunk {
    start: u64,
    end: u64,
    data: ChunkData,
    /// Read-ahead memory, given back when the chunk is dropped.
    _grant: Option<Grant>,
}

impl Chunk {
    /// Whether it holds any byte of `offset..end`.
    fn overlaps(&self, offset: u64, end: u64) -> bool {
        self.end > offset && self.start < end
    }
}

/// Reads one object through ranged GETs with read-ahead, in up to
/// [`MAX_STREAMS`] streams: a read continues the stream whose window it
/// falls in, or starts one (the least recently used makes room). One
/// stream is what a single sequential reader needs; several threads reading
/// one descriptor far apart each keep their own read-ahead instead of
/// restarting one window at every read (4 threads reading a quarter of
/// 1 GiB each through one descriptor: 10.7 s with one window, 2.6 s with
/// streams; one thread alone: 1.45 s).
pub struct Reader {
    obj: Arc<Object>,
    /// Most recently used last.
    streams: Vec<Stream>,
    /// Reads so far (each stream notes the last it served).
    reads: u64,
    /// The inode read (the filesystem's bookkeeping; 0 when unset).
    pub ino: u64,
    /// The versions of the inode the filesystem had stored when this
    /// reader was made (its bookkeeping too).
    pub commits: u64,
}

/// The object a reader reads, shared by its streams.
struct Object {
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
    max_window: u64,
    budget: Arc<Budget>,
    /// The ETag the first GET of any stream answered: every later GET must
    /// answer the same, or the object was replaced mid-read and its bytes
    /// would mix.
    etag: Mutex<Option<String>>,
}

impl Object {
    /// The pinned ETag.
    fn pin(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.etag.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a read of `len` bytes at `offset` ends (cut at the end of the
    /// object); `None` when it reads nothing.
    fn end_of(&self, offset: u64, len: u32) -> Option<u64> {
        (offset < self.size && len > 0).then(|| (offset + len as u64).min(self.size))
    }
}

/// One sequential stream through the object and its read-ahead.
struct Stream {
    obj: Arc<Object>,
    window: u64,
    chunks: VecDeque<Chunk>,
    /// Where the next read-ahead GET starts.
    next_fetch: u64,
    /// Where the last read planned ended; `None` before the first.
    pos: Option<u64>,
    /// The reader's read count when this stream last served one.
    last_read: u64,
    /// The window grows to this: `max_window` shared out among the streams
    /// (one stream's read-ahead must not take the whole budget from the
    /// others, which would then fetch read by read).
    grow_to: u64,
}

impl Reader {
    /// A reader of `key`, whose size is `size`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        size: u64,
        max_window: u64,
        budget: Arc<Budget>,
    ) -> Self {
        let obj = Arc::new(Object {
            store,
            key,
            size,
            max_window: max_window.max(INITIAL_WINDOW),
            budget,
            etag: Mutex::new(None),
        });
        Reader {
            streams: vec![Stream::new(obj.clone(), obj.max_window)],
            obj,
            reads: 0,
            ino: 0,
            commits: 0,
        }
    }

    /// The object got the ETag `new` from a copy of the same bytes (this
    /// mount's attribute write): later GETs answering it are not a change.
    pub fn repin(&mut self, old: &str, new: &str) {
        let mut pin = self.obj.pin();
        if pin.as_deref().is_some_and(|e| same_etag(e, old)) {
            *pin = Some(new.to_string());
        }
    }

    /// Pins the reader to the version whose ETag is `etag` (a GET that
    /// answers another fails as a replaced object). Empty: not pinned.
    pub fn pin_to(&self, etag: &str) {
        if !etag.is_empty() {
            *self.obj.pin() = Some(etag.to_string());
        }
    }

    /// The ETag the reader is pinned to, if any.
    pub fn pinned(&self) -> Option<String> {
        self.obj.pin().clone()
    }

    /// The size of the object it reads.
    pub fn size(&self) -> u64 {
        self.obj.size
    }

    /// Bytes fetched or being fetched ahead (for the memory budget and tests).
    pub fn buffered(&self) -> u64 {
        self.streams.iter().map(Stream::buffered).sum()
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Bytes, S3Error> {
        if self.reads_nothing(offset, len) {
            return Ok(Bytes::new());
        }
        self.pick(offset).read(offset, len).await
    }

    /// The same read, answered at once when its bytes have already
    /// arrived, so the FUSE thread answers it without handing it to a task
    /// (a wake-up of another thread per kernel read). `None`: it would wait
    /// for the server. Spawns read-ahead GETs: call it inside the runtime.
    pub fn read_ready(&mut self, offset: u64, len: u32) -> Option<Result<Bytes, S3Error>> {
        if self.reads_nothing(offset, len) {
            return Some(Ok(Bytes::new()));
        }
        self.pick(offset).read_ready(offset, len)
    }

    /// A read at or past the end, or of nothing: no stream is involved.
    fn reads_nothing(&self, offset: u64, len: u32) -> bool {
        self.obj.end_of(offset, len).is_none()
    }

    /// The stream a read at `offset` belongs to, made the most recently
    /// used: the nearest whose window it falls in, else a new one (in place
    /// of the least recently used when there are [`MAX_STREAMS`]). Streams
    /// idle for [`IDLE_READS`] reads are retired first.
    fn pick(&mut self, offset: u64) -> &mut Stream {
        self.reads += 1;
        let now = self.reads;
        let before = self.streams.len();
        if before > 1 {
            // The most recently used stays.
            let last = before - 1;
            let mut i = 0;
            self.streams.retain(|s| {
                i += 1;
                i - 1 == last || now - s.last_read <= IDLE_READS || s.distance(offset).is_some()
            });
            if self.streams.len() != before {
                self.share_window();
            }
        }
        let nearest = self
            .streams
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.distance(offset).map(|d| (d, i)))
            .min();
        let i = match nearest {
            Some((_, i)) => i,
            None => {
                let mut s = Stream::new(self.obj.clone(), self.streams[0].grow_to);
                s.pos = Some(offset);
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(s);
                self.share_window();
                self.streams.len() - 1
            }
        };
        let mut s = self.streams.remove(i);
        s.last_read = now;
        self.streams.push(s);
        self.streams.last_mut().expect("a reader has a stream")
    }

    /// Shares the window limit out among the streams: one stream's
    /// read-ahead must not take the whole budget from the others (which
    /// would then fetch read by read), and a stream left alone gets it all.
    fn share_window(&mut self) {
        let n = self.streams.len() as u64;
        let share = (self.obj.max_window / n).max(INITIAL_WINDOW);
        for s in &mut self.streams {
            s.grow_to = share;
            s.window = s.window.min(share);
        }
    }

    /// Where the most recently used stream's next read-ahead GET starts.
    #[cfg(test)]
    fn next_fetch(&self) -> u64 {
        self.streams
            .last()
            .expect("a reader has a stream")
            .next_fetch
    }
}

impl Stream {
    /// A new, empty stream of `obj` whose window grows to `grow_to`.
    fn new(obj: Arc<Object>, grow_to: u64) -> Stream {
        Stream {
            obj,
            window: INITIAL_WINDOW,
            chunks: VecDeque::new(),
            next_fetch: 0,
            pos: None,
            last_read: 0,
            grow_to,
        }
    }

    /// How far a read at `offset` is from where this stream is, if it
    /// continues it: inside its fetched bytes, or within [`MAX_CHUNK`] (at
    /// most the window) of them, where [`Stream::plan`] fills the gap (the
    /// kernel's out-of-order read-ahead stays well within that). Further
    /// away is another stream. A stream not read yet takes any read.
    fn distance(&self, offset: u64) -> Option<u64> {
        let Some(pos) = self.pos else { return Some(0) };
        let near = self.obj.max_window.min(MAX_CHUNK);
        let from = self.chunks.front().map_or(pos, |c| c.start).min(pos);
        let to = self.next_fetch.max(pos);
        (offset + near >= from && offset <= to + near).then(|| offset.abs_diff(pos))
    }

    fn buffered(&self) -> u64 {
        self.chunks.iter().map(|c| c.end - c.start).sum()
    }

    fn spawn(&self, start: u64, end: u64, grant: Option<Grant>) -> Chunk {
        let (store, key) = (self.obj.store.clone(), self.obj.key.clone());
        let task = tokio::spawn(async move { store.get_object_frames(&key, start..end).await });
        Chunk {
            start,
            end,
            data: ChunkData::Pending(task),
            _grant: grant,
        }
    }

    async fn read(&mut self, offset: u64, len: u32) -> Result<Bytes, S3Error> {
        let Some(end) = self.obj.end_of(offset, len) else {
            return Ok(Bytes::new());
        };
        self.plan(offset, end);
        self.wait_for(offset, end).await?;
        self.gather(offset, end)
    }

    fn read_ready(&mut self, offset: u64, len: u32) -> Option<Result<Bytes, S3Error>> {
        let Some(end) = self.obj.end_of(offset, len) else {
            return Some(Ok(Bytes::new()));
        };
        match self.settle(offset, end) {
            Err(e) => Some(Err(e)),
            Ok(false) => None,
            Ok(true) => {
                // The bytes are here, so this read is sequential or near:
                // planning keeps them and only extends the read-ahead.
                self.plan(offset, end);
                Some(self.gather(offset, end))
            }
        }
    }

    /// Moves the window for a read of `offset..end`: fetches what it needs
    /// and reads ahead past it.
    fn plan(&mut self, offset: u64, end: u64) {
        self.pos = Some(end);
        let fetched_from = self
            .chunks
            .front()
            .map(|c| c.start)
            .unwrap_or(self.next_fetch);
        let sequential = offset >= fetched_from && offset <= self.next_fetch;
        // The kernel's read-ahead sends several reads at once and they may
        // arrive out of order: a read a little before the fetched bytes, or
        // a little past them, is filled in, not taken for a jump.
        let near = !self.chunks.is_empty()
            && offset + self.obj.max_window >= fetched_from
            && offset <= self.next_fetch + self.obj.max_window;
        if sequential {
            self.window = (self.window * 2).min(self.grow_to);
        } else if near {
            if offset < fetched_from {
                // The gap before the fetched bytes, in pieces, kept in order.
                let mut at = fetched_from;
                while at > offset {
                    let from = at.saturating_sub(MAX_CHUNK).max(offset);
                    let c = self.spawn(from, at, None);
                    self.chunks.push_front(c);
                    at = from;
                }
            }
            // Past the fetched bytes: the read-ahead below reaches it.
        } else {
            self.drop_chunks();
            self.window = INITIAL_WINDOW;
            // Fetch what this read needs (at least a little), then read ahead from there.
            let first_end = (offset + (end - offset).max(MIN_RANDOM_READ)).min(self.obj.size);
            let c = self.spawn(offset, first_end, None);
            self.chunks.push_back(c);
            self.next_fetch = first_end;
        }
        // Read ahead up to the window past this read.
        let target = (end + self.window).min(self.obj.size);
        while self.next_fetch < target.max(end) {
            let chunk = (self.window / 2).clamp(INITIAL_WINDOW, MAX_CHUNK);
            let stop = (self.next_fetch + chunk).min(self.obj.size);
            let (stop, grant) = match self.obj.budget.try_grant(stop - self.next_fetch) {
                Some(g) => (stop, Some(g)),
                // Read-ahead memory is used up: fetch only what this read needs.
                None if self.next_fetch < end => {
                    let needed = (end - self.next_fetch).max(MIN_RANDOM_READ);
                    ((self.next_fetch + needed).min(self.obj.size), None)
                }
                None => break,
            };
            let c = self.spawn(self.next_fetch, stop, grant);
            self.chunks.push_back(c);
            self.next_fetch = stop;
        }
        // Drop chunks well behind the reader.
        while let Some(c) = self.chunks.front() {
            if c.end + KEEP_BEHIND <= offset {
                if let Some(Chunk {
                    data: ChunkData::Pending(t),
                    ..
                }) = self.chunks.pop_front()
                {
                    t.abort();
                }
            } else {
                break;
            }
        }
    }

    /// Waits for the GETs of the chunks under `offset..end`.
    async fn wait_for(&mut self, offset: u64, end: u64) -> Result<(), S3Error> {
        for i in 0..self.chunks.len() {
            let c = &mut self.chunks[i];
            if !c.overlaps(offset, end) {
                continue;
            }
            if let ChunkData::Pending(t) = &mut c.data {
                let got = t.await;
                self.arrived(i, got)?;
            }
        }
        Ok(())
    }

    /// Takes in the finished GETs under `offset..end`, without waiting.
    /// `Ok(true)`: every byte of it is here.
    fn settle(&mut self, offset: u64, end: u64) -> Result<bool, S3Error> {
        let mut have = 0;
        for i in 0..self.chunks.len() {
            let c = &mut self.chunks[i];
            if !c.overlaps(offset, end) {
                continue;
            }
            if let ChunkData::Pending(t) = &mut c.data {
                if !t.is_finished() {
                    return Ok(false);
                }
                let Some(got) = futures_util::FutureExt::now_or_never(t) else {
                    return Ok(false);
                };
                self.arrived(i, got)?;
            }
            let c = &self.chunks[i];
            have += end.min(c.end) - offset.max(c.start);
        }
        Ok(have == end - offset)
    }

    /// Records the answer of chunk `i`'s GET. A failure forgets every
    /// chunk: the next read starts afresh.
    fn arrived(
        &mut self,
        i: usize,
        got: Result<Result<Frames, S3Error>, tokio::task::JoinError>,
    ) -> Result<(), S3Error> {
        let got =
            got.unwrap_or_else(|e| Err(S3Error::malformed("GetObject", format!("read task: {e}"))));
        // Checked and pinned under one lock: the first GETs of two streams
        // cannot both pass with different versions.
        let got = got.and_then(|f| {
            let mut pin = self.obj.pin();
            match &*pin {
                Some(was) if !f.etag.is_empty() && !same_etag(was, &f.etag) => {
                    Err(S3Error::Changed {
                        key: self.obj.key.clone(),
                        was: format!("ETag {was}"),
                        now: format!("ETag {}", f.etag),
                    })
                }
                // The first GET of a file replaced since it was opened (its
                // size then is what reads are cut to).
                _ if f.object_size != self.obj.size => Err(S3Error::Changed {
                    key: self.obj.key.clone(),
                    was: format!("{} bytes", self.obj.size),
                    now: format!("{} bytes, ETag {}", f.object_size, f.etag),
                }),
                _ => {
                    if pin.is_none() && !f.etag.is_empty() {
                        *pin = Some(f.etag.clone());
                    }
                    Ok(f)
                }
            }
        });
        match got {
            Ok(f) => {
                self.chunks[i].data = ChunkData::Ready(f.pieces);
                Ok(())
            }
            Err(e) => {
                self.next_fetch = self.chunks[i].start;
                self.drop_chunks();
                Err(e)
            }
        }
    }

    /// Forgets every chunk, stopping the GETs still on their way (their
    /// read-ahead memory is given back with them).
    fn drop_chunks(&mut self) {
        for c in self.chunks.drain(..) {
            if let ChunkData::Pending(t) = c.data {
                t.abort();
            }
        }
    }

    /// The bytes of `offset..end` from chunks that have all arrived. Fewer
    /// bytes than asked (the object was replaced by a shorter one) is an
    /// error, and the next read starts afresh.
    fn gather(&mut self, offset: u64, end: u64) -> Result<Bytes, S3Error> {
        let mut parts: Vec<Bytes> = Vec::new();
        for c in self.chunks.iter() {
            if !c.overlaps(offset, end) {
                continue;
            }
            if let ChunkData::Ready(frames) = &c.data {
                let mut at = c.start;
                for f in frames {
                    let f_end = at + f.len() as u64;
                    if f_end > offset && at < end {
                        let from = offset.max(at) - at;
                        let to = end.min(f_end) - at;
                        parts.push(f.slice(from as usize..to as usize));
                    }
                    at = f_end;
                    if at >= end {
                        break;
                    }
                }
            }
        }
        let got: u64 = parts.iter().map(|p| p.len() as u64).sum();
        if got != end - offset {
            self.drop_chunks();
            self.next_fetch = offset;
            return Err(S3Error::malformed(
                "GetObject",
                format!(
                    "object {} shorter than expected ({} of {} bytes at {offset})",
                    self.obj.key,
                    got,
                    end - offset
                ),
            ));
        }
        if parts.len() == 1 {
            return Ok(parts.pop().expect("one part"));
        }
        let mut out = BytesMut::with_capacity(got as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }
}

/// Whether two ETag headers name the same version, however a server or a
/// proxy wrote them (quoted or not, weak or not).
fn same_etag(a: &str, b: &str) -> bool {
    let norm = |e: &str| crate::s3::bare_etag(e.trim().trim_start_matches("W/"));
    norm(a) == norm(b)
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.drop_chunks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::memory::MemoryStore;
    use crate::s3::PutOptions;

    const MIB: u64 = 1024 * 1024;

    fn store_with(len: usize) -> (Arc<MemoryStore>, Bytes) {
        let store = Arc::new(MemoryStore::new());
        let mut rng = fastrand::Rng::with_seed(7);
        let mut v = vec![0u8; len];
        rng.fill(&mut v);
        let body = Bytes::from(v);
        store.insert_object("obj", body.clone(), &PutOptions::default());
        (store, body)
    }

    /// A reader of "obj" with a 4 MiB read-ahead window and room for it.
    fn small_window_reader(store: &Arc<MemoryStore>, len: u64) -> Reader {
        Reader::new(
            store.clone(),
            "obj".into(),
            len,
            4 * MIB,
            Budget::new(64 * MIB),
        )
    }

    async fn read_all(r: &mut Reader, len: u64, step: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut off = 0;
        while off < len {
            let b = r.read(off, step).await.unwrap();
            assert!(!b.is_empty());
            off += b.len() as u64;
            out.extend_from_slice(&b);
        }
        out
    }

    /// Read-ahead never takes more than its budget, gives it all back, and
    /// reads stay exact when the budget is small or empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_stays_within_its_budget() {
        let len = 40 * MIB;
        let (store, body) = store_with(len as usize);
        for limit in [0, 3 * MIB, 64 * MIB] {
            let budget = Budget::new(limit);
            let mut r = Reader::new(store.clone(), "obj".into(), len, 64 * MIB, budget.clone());
            let got = read_all(&mut r, len, 128 * 1024).await;
            assert!(got[..] == body[..], "limit {limit}: bytes differ");
            assert!(
                budget.peak() <= limit,
                "limit {limit}: peak {}",
                budget.peak()
            );
            if limit >= 64 * MIB {
                assert!(
                    budget.peak() > 8 * MIB,
                    "a large budget lets the window grow"
                );
            }
            drop(r);
            assert_eq!(
                budget.used(),
                0,
                "limit {limit}: read-ahead memory given back"
            );
        }
    }

    /// The kernel's read-ahead sends several reads at once and they arrive
    /// out of order: each group of four 1 MiB reads comes as 3, 1, 0, 2.
    /// The bytes are exact and the GETs stay few (no restart per read).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_reads_are_filled_in_not_restarted() {
        use crate::s3::Op;
        let len = 48 * MIB;
        let (store, body) = store_with(len as usize);
        let mut r = Reader::new(
            store.clone(),
            "obj".into(),
            len,
            64 * MIB,
            Budget::new(64 * MIB),
        );
        let mut got = vec![0u8; len as usize];
        for group in 0..(len / (4 * MIB)) {
            for k in [3u64, 1, 0, 2] {
                let off = (group * 4 + k) * MIB;
                let b = r.read(off, MIB as u32).await.unwrap();
                assert_eq!(b.len() as u64, MIB);
                got[off as usize..(off + MIB) as usize].copy_from_slice(&b);
            }
        }
        assert!(got[..] == body[..], "bytes differ");
        let gets = store.calls(Op::GetObject);
        assert!(gets <= 20, "{gets} GETs for 48 MiB read out of order");
    }

    /// Four threads reading one descriptor at far-apart places, their reads
    /// interleaved: each keeps a read-ahead stream of its own, so the GETs
    /// stay few (one shared window restarted at every read sent two GETs
    /// per read: about 500 here). A fifth place takes the least recently
    /// used stream's slot; a read past the end starts none; streams left
    /// idle are retired and the one left gets the whole window back. Every
    /// byte stays exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn far_apart_readers_of_one_file_each_keep_a_stream() {
        use crate::s3::Op;
        let len = 80 * MIB;
        let (store, body) = store_with(len as usize);
        let mut r = small_window_reader(&store, len);
        let step = 256 * 1024;
        let check = |b: &Bytes, a: u64| {
            assert!(b[..] == body[a as usize..a as usize + b.len()], "at {a}");
        };
        let mut at: Vec<u64> = (0..4).map(|i| i * 16 * MIB).collect();
        for _ in 0..(8 * MIB / step) {
            for a in at.iter_mut() {
                check(&r.read(*a, step as u32).await.unwrap(), *a);
                *a += step;
            }
        }
        let gets = store.calls(Op::GetObject);
        assert!(gets <= 60, "{gets} GETs for 4 streams of 8 MiB");
        assert_eq!(r.streams.len(), MAX_STREAMS);
        let positions = |r: &Reader| -> Vec<u64> {
            let mut p: Vec<u64> = r.streams.iter().filter_map(|s| s.pos).collect();
            p.sort();
            p
        };
        assert_eq!(positions(&r), vec![8 * MIB, 24 * MIB, 40 * MIB, 56 * MIB]);
        // A fifth place, far from all four: the least recently used stream
        // (the one at 56 MiB was read last, the one at 8 MiB first) goes.
        check(&r.read(72 * MIB, step as u32).await.unwrap(), 72 * MIB);
        assert_eq!(
            positions(&r),
            vec![24 * MIB, 40 * MIB, 56 * MIB, 72 * MIB + step]
        );
        // Past the end: nothing to read, no stream started.
        assert!(r.read(len, 4096).await.unwrap().is_empty());
        assert_eq!(r.streams.len(), MAX_STREAMS);
        // One stream read on alone: the others retire, and it grows again.
        let (mut a, small) = (72 * MIB + step, 16 * 1024);
        for _ in 0..=IDLE_READS {
            check(&r.read(a, small as u32).await.unwrap(), a);
            a += small;
        }
        assert_eq!(r.streams.len(), 1, "idle streams retired");
        assert_eq!(r.streams[0].grow_to, 4 * MIB, "the whole window again");
    }

    /// A GET's body stays in the pieces it arrived in (the memory store
    /// cuts it at odd sizes): a read inside one piece is a slice of it (the
    /// very bytes the store answered, not a copy), a read across pieces is
    /// joined, and every read is exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_across_the_pieces_of_a_body_are_exact() {
        let len = 20 * MIB;
        let (store, body) = store_with(len as usize);
        let mut r = Reader::new(store, "obj".into(), len, 64 * MIB, Budget::new(64 * MIB));
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut sliced, mut joined, mut off) = (0, 0, 0usize);
        while off < len as usize {
            let b = r.read(off as u64, rng.u32(1..=256 * 1024)).await.unwrap();
            assert!(!b.is_empty());
            assert!(b[..] == body[off..off + b.len()], "bytes differ at {off}");
            if b.as_ptr() == body[off..].as_ptr() {
                sliced += 1;
            } else {
                joined += 1;
            }
            off += b.len();
        }
        assert!(
            sliced > 0 && joined > 0,
            "{sliced} reads sliced, {joined} joined"
        );
    }

    /// What the FUSE thread may answer by itself: a read whose bytes have
    /// arrived (exact, and it keeps the read-ahead going); not a read
    /// whose GET is still on its way or was never sent (that one leaves
    /// the reader as it was); and a failed GET as the error it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_arrived_bytes_are_answered_without_waiting() {
        use crate::s3::Op;
        use std::time::Duration;
        let len = 16 * MIB;
        let (store, body) = store_with(len as usize);
        let k = 128 * 1024;
        let new_reader = || small_window_reader(&store, len);
        // What read_ready answers once the GETs under it are back (polled:
        // the GET tasks run on other threads).
        async fn ready(r: &mut Reader, off: u64, len: u64) -> Option<Result<Bytes, S3Error>> {
            for _ in 0..500 {
                if let Some(got) = r.read_ready(off, len as u32) {
                    return Some(got);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            None
        }
        let mut r = new_reader();
        assert!(r.read_ready(0, k as u32).is_none(), "nothing fetched yet");
        assert_eq!(r.buffered(), 0, "a refused read fetches nothing");
        // The read waits for the GET under it: its first MiB has arrived.
        r.read(0, k as u32).await.unwrap();
        let far = r.next_fetch();
        // From now on GETs are slow: the ones the next reads send are on
        // their way while the reads are answered from what arrived.
        store.delay(Op::GetObject, Duration::from_secs(5));
        let mut off = k;
        while off < MIB {
            let b = r.read_ready(off, k as u32).expect("arrived").unwrap();
            assert!(b[..] == body[off as usize..(off + k) as usize], "at {off}");
            off += k;
        }
        assert!(r.next_fetch() > far, "the read-ahead moves on");
        assert!(
            r.read_ready(far, k as u32).is_none(),
            "its GET is on its way"
        );
        store.delay(Op::GetObject, Duration::ZERO);
        // A GET that failed: the read that meets it gets the error.
        let mut r = new_reader();
        r.read(0, k as u32).await.unwrap();
        let far = r.next_fetch();
        store.fail_all(Op::GetObject, "InternalError");
        // Sequential: reads ahead past `far`, and those GETs fail.
        assert!(r.read_ready(k, k as u32).is_some_and(|b| b.is_ok()));
        assert!(r.next_fetch() > far);
        match ready(&mut r, far, k).await {
            Some(Err(e)) => assert_eq!(e.code(), Some("InternalError")),
            other => panic!("expected the GET's error, got {other:?}"),
        }
    }

    /// An object replaced while it is being read: the GET that meets the
    /// new version fails with `Changed` (ESTALE) instead of mixing its
    /// bytes with the old version's, and so does every later read of this
    /// reader; a new reader reads the new object. (The far read starts a
    /// second stream: the streams of a reader share the pinned version.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_replaced_mid_read_is_stale_not_mixed() {
        let len = 24 * MIB;
        let (store, old) = store_with(len as usize);
        let new_reader = || small_window_reader(&store, len);
        let mut r = new_reader();
        let b = r.read(0, 128 * 1024).await.unwrap();
        assert!(b[..] == old[..128 * 1024]);
        let new = Bytes::from(vec![7u8; len as usize]);
        store.insert_object("obj", new.clone(), &PutOptions::default());
        let err = r.read(20 * MIB, 128 * 1024).await.unwrap_err();
        assert!(matches!(err, S3Error::Changed { .. }), "{err}");
        let err = r.read(22 * MIB, 128 * 1024).await.unwrap_err();
        assert!(matches!(err, S3Error::Changed { .. }), "still stale: {err}");
        let mut r = new_reader();
        let b = r.read(20 * MIB, 128 * 1024).await.unwrap();
        assert!(
            b.iter().all(|&x| x == 7),
            "a new reader reads the new object"
        );
    }

    /// The same version however it is written; another version is not.
    #[test]
    fn etags_compare_as_versions() {
        assert!(same_etag(
            "\"9b2cf535f27731c974343645a3985328\"",
            "9b2cf535f27731c974343645a3985328"
        ));
        assert!(same_etag("W/\"ABC-2\"", "\"abc-2\""));
        assert!(!same_etag("\"abc-2\"", "\"abc-3\""));
    }

    /// After this mount's own copy gave the object a new ETag, a reader
    /// told of it reads on; told of another ETag, it still reports the
    /// object replaced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_told_of_its_own_copy_reads_on() {
        let len = 24 * MIB;
        let (store, old) = store_with(len as usize);
        let old_etag = store.object("obj").unwrap().etag;
        for (told, ok) in [
            (old_etag.clone(), true),
            ("\"elsewhere\"".to_string(), false),
        ] {
            store.insert_object("obj", old.clone(), &PutOptions::default());
            let mut r = small_window_reader(&store, len);
            r.read(0, 1024).await.unwrap();
            let new_etag = store.insert_object(
                "obj",
                Bytes::from(vec![1u8; len as usize]),
                &PutOptions::default(),
            );
            r.repin(&told, &new_etag);
            assert_eq!(r.read(20 * MIB, 1024).await.is_ok(), ok, "told {told}");
        }
    }

    /// A file replaced between open and its first read: the first GET
    /// answers another size than the one reads are cut to, and that is
    /// reported as the object replaced, not read as a cut or short file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_replaced_before_its_first_read_is_stale() {
        let len = 6 * MIB;
        for new_len in [len + 1, len - 1] {
            let (store, _) = store_with(len as usize);
            let mut r = small_window_reader(&store, len);
            store.insert_object(
                "obj",
                Bytes::from(vec![3u8; new_len as usize]),
                &PutOptions::default(),
            );
            let err = r.read(0, 4096).await.unwrap_err();
            assert!(matches!(err, S3Error::Changed { .. }), "{new_len}: {err}");
        }
    }
}
