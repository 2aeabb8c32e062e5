//! The write path: one [`Upload`] per file open for writing. Bytes fill a
//! part buffer; each full part leaves as UploadPart (MD5 computed once, when
//! it is sent) while the writer goes on, a bounded number at a time. Part 1 is
//! held in memory until close, so writers that patch a header near the start
//! still work. `finish` sends what is left and completes the upload — or a
//! single PutObject when the file is at most one part; any failure aborts.
//!
//! Knows the [`ObjectStore`] trait, never inodes or FUSE.

pub mod budget;
pub mod journal;
pub mod md5x;
pub mod schedule;

mod finish;
mod held;
mod layout;
pub mod patch;
mod target;

use crate::s3::rules::MAX_SINGLE_SIZE;
use crate::s3::{hex, md5_of, ObjectStore, PutOptions, S3Error};
use budget::{Budget, BudgetError, Grant, Spill};
use bytes::{Bytes, BytesMut};
use held::{HeldPart, HeldState};
use journal::Journal;
use schedule::Schedule;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use target::Target;
use tokio::task::{JoinHandle, JoinSet};

/// How long a writer waits for memory before its write fails (ENOBUFS).
pub const MEMORY_WAIT: Duration = Duration::from_secs(120);

/// How an upload behaves; shared by every file of a mount.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub schedule: Schedule,
    /// Parts of one file uploading at once.
    pub max_in_flight: usize,
    /// Keep part 1 in memory until close so it can be rewritten.
    pub hold_first_part: bool,
    /// The memory every buffer of the mount comes from.
    pub budget: Arc<Budget>,
    /// How long a writer waits for memory before its write fails.
    pub memory_wait: Duration,
    /// Where multipart uploads are written down before they start, so a
    /// crash leaves nothing the next mount cannot abort.
    pub journal: Option<Arc<Journal>>,
    /// Largest object one CopyObject copies ([`MAX_SINGLE_SIZE`], S3's
    /// limit); larger ones are copied by UploadPartCopy ranges. Tests lower
    /// it to exercise that path without 5 GiB objects.
    pub max_copy_object: u64,
}

impl UploadConfig {
    /// A configuration whose budget can never run short (tools, tests).
    pub fn unbounded(schedule: Schedule, max_in_flight: usize) -> Self {
        UploadConfig {
            schedule,
            max_in_flight,
            hold_first_part: true,
            budget: Budget::new(u64::MAX),
            memory_wait: MEMORY_WAIT,
            journal: None,
            max_copy_object: MAX_SINGLE_SIZE,
        }
    }
}

/// Why a write or close failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The store failed (after the client's retries); the upload is or will be aborted.
    #[error("upload failed: {0}")]
    Failed(String),
    /// A write into a part that has already been sent.
    #[error(
        "write at offset {offset} into part {part}, which was already uploaded (file size {size})"
    )]
    IntoSentPart { offset: u64, part: u32, size: u64 },
    /// The file would exceed what 10,000 parts of the schedule hold.
    #[error(
        "file would reach {end} bytes; the largest file this mount allows is {max} bytes (10,000 parts growing to --max-part-size: raise it, and --memory-limit so that 3/4 of it holds such a part)"
    )]
    TooLarge { end: u64, max: u64 },
    /// The memory budget stayed full for the whole wait.
    #[error("{0}")]
    NoMemory(BudgetError),
}

/// Live counters of one upload, read by `bucketfs status`.
#[derive(Debug)]
pub struct Progress {
    pub started: std::time::Instant,
    /// The file's size so far.
    pub bytes_written: AtomicU64,
    /// Bytes the server confirmed (parts, or the single PutObject).
    pub bytes_sent: AtomicU64,
    pub parts_sent: AtomicU64,
    pub parts_in_flight: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Progress {
            started: std::time::Instant::now(),
            bytes_written: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            parts_sent: AtomicU64::new(0),
            parts_in_flight: AtomicU64::new(0),
        }
    }
}

/// Counts a part in flight for as long as it lives (its task may be aborted).
struct InFlight(Arc<Progress>);

impl InFlight {
    fn new(p: &Arc<Progress>) -> Self {
        p.parts_in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(p.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.parts_in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A part that made it to the server.
#[derive(Debug, Clone)]
struct SentPart {
    number: u32,
    etag: String,
    md5: [u8; 16],
}

/// The outcome of a successful close.
#[derive(Debug, Clone)]
pub struct Finished {
    pub etag: String,
    pub size: u64,
    /// Number of parts (0 for a single PutObject).
    pub parts: u32,
    /// The object's bytes, when it was one PutObject: a next version
    /// over it (sqlite's next transaction) need not read them back.
    pub body: Option<Bytes>,
}

type PartTask = JoinHandle<Result<SentPart, S3Error>>;

/// One file being written.
pub struct Upload {
    target: Target,
    cfg: UploadConfig,
    /// Part 1, full, held until close (or sent early when memory is short).
    held: Option<Arc<HeldPart>>,
    /// The part being filled, and the memory granted for all of it.
    tail: BytesMut,
    tail_grant: Option<Grant>,
    tail_no: u32,
    tail_start: u64,
    in_flight: JoinSet<Result<SentPart, S3Error>>,
    sent: BTreeMap<u32, SentPart>,
    failed: Option<String>,
    /// A part was handed to a task (the multipart upload exists or is being created).
    multipart: bool,
    /// Completed or aborted: the upload ID no longer names a live upload.
    ended: bool,
    /// The file is (so far) bytes 0..n of another object, copied by the
    /// server at close: (source key, n).
    copy: Option<(String, u64)>,
    /// The largest this file may grow (10,000 parts); summing the schedule
    /// is too slow to do per write.
    max_size: u64,
}

/// Bytes the tail asks the allocator for before it knows the file is large.
const FIRST_ALLOCATION: usize = 256 * 1024;

impl Upload {
    /// Starts an empty file at `key`. Nothing is sent until a part fills or the file closes.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        opts: PutOptions,
        cfg: UploadConfig,
    ) -> Self {
        let cfg_max = cfg.schedule.max_file_size();
        Upload {
            target: Target::new(store, &key, opts, &cfg),
            cfg,
            held: None,
            tail: BytesMut::new(),
            tail_grant: None,
            tail_no: 1,
            tail_start: 0,
            in_flight: JoinSet::new(),
            sent: BTreeMap::new(),
            failed: None,
            multipart: false,
            ended: false,
            copy: None,
            max_size: cfg_max,
        }
    }

    /// Bytes written into this upload's own parts.
    fn data_size(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// The key this upload writes.
    pub fn key(&self) -> &str {
        &self.target.key
    }

    /// Options (content type, metadata) the object will be created with;
    /// they must be set before the first part is sent.
    pub fn options_mut(&mut self) -> &mut PutOptions {
        &mut self.target.opts
    }

    /// The options the object is created with.
    pub fn options(&self) -> &PutOptions {
        &self.target.opts
    }

    /// Whether the multipart upload was started (its options are then fixed).
    pub fn is_multipart(&self) -> bool {
        // A first part sent early (memory short) created the upload too.
        self.multipart || self.held.as_ref().is_some_and(|h| !h.holds())
    }

    /// Bytes written so far (the file size).
    pub fn size(&self) -> u64 {
        match &self.copy {
            Some((_, n)) => *n,
            None => self.data_size(),
        }
    }

    /// Makes bytes `src_off..src_off + len` of object `src_key` the bytes at
    /// `dst_off` of this file, copied by the server at close, with no data
    /// through this machine. Only as the whole content so far: a file that
    /// is empty, or already a copy of `src_key` up to `dst_off == src_off`.
    /// Returns false (nothing changed) otherwise: the caller copies bytes.
    pub fn copy_range(&mut self, src_key: &str, src_off: u64, dst_off: u64, len: u64) -> bool {
        if self.failed.is_some() || src_off != dst_off || len == 0 {
            return false;
        }
        let pristine = self.copy.is_none() && self.size() == 0 && !self.multipart;
        let continues = matches!(&self.copy, Some((k, n)) if k == src_key && *n == dst_off);
        if !(pristine && dst_off == 0 || continues) {
            return false;
        }
        if dst_off + len > self.max_size.max(MAX_SINGLE_SIZE) {
            return false;
        }
        self.copy = Some((src_key.to_string(), dst_off + len));
        true
    }

    /// Live counters, shared with `bucketfs status`.
    pub fn progress_handle(&self) -> Arc<Progress> {
        self.target.progress.clone()
    }

    /// Parts confirmed by the server, and parts on their way.
    pub fn progress(&self) -> (usize, usize) {
        (self.sent.len(), self.in_flight.len())
    }

    /// The multipart upload ID, once created (and until completed or aborted).
    pub fn upload_id(&self) -> Option<&str> {
        if self.ended {
            return None;
        }
        self.target.upload_id.get().map(String::as_str)
    }

    /// Whether an earlier failure doomed this upload.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Whether part 1 is held in memory (not sent early).
    pub fn holds_first_part(&self) -> bool {
        self.held.as_ref().is_some_and(|h| h.holds())
    }

    fn part1_len(&self) -> u64 {
        self.cfg.schedule.part_size(1)
    }

    fn refused(&self, offset: u64) -> UploadError {
        let (part, _) = self.cfg.schedule.part_of(offset).unwrap_or((0, 0));
        UploadError::IntoSentPart {
            offset,
            part,
            size: self.size(),
        }
    }

    /// Whether bytes [start, end) (all below the current size) are still in memory.
    fn check_rewritable(&self, start: u64, end: u64) -> Result<(), UploadError> {
        if start >= self.tail_start {
            return Ok(());
        }
        // Part 1 is rewritable when held; the bytes after it must be in the tail.
        let p1 = self.part1_len();
        if self.holds_first_part() && (end <= p1 || self.tail_start == p1) {
            return Ok(());
        }
        Err(self.refused(start))
    }

    /// Writes `data` at `offset`: appends, rewrites bytes still in memory, or
    /// zero-fills a forward seek. A write that fails dooms the upload: the
    /// close reports it and nothing is stored.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Failed(f.clone()));
        }
        let r = self.try_write(offset, data).await;
        self.target
            .progress
            .bytes_written
            .store(self.size(), Ordering::Relaxed);
        // A write refused for landing in a sent part changed nothing: the
        // caller may go on another way. Any other failure dooms the upload.
        if let Err(e) = &r {
            if self.failed.is_none() && !matches!(e, UploadError::IntoSentPart { .. }) {
                self.failed = Some(e.to_string());
            }
        }
        r
    }

    /// Bytes `offset..offset + len` of the file (fewer at its end) when
    /// every one is still in memory (the held first part, the part being
    /// filled); else [`UploadError::IntoSentPart`].
    pub fn read_mem(&self, offset: u64, len: u32) -> Result<Bytes, UploadError> {
        let size = self.size();
        let end = (offset + len as u64).min(size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        if self.copy.is_some() {
            return Err(self.refused(offset));
        }
        let (start, stop) = (offset, end);
        let mut out = BytesMut::with_capacity((stop - start) as usize);
        if start < self.tail_start {
            self.check_rewritable(start, stop)?;
            let held = self.held.as_ref().ok_or_else(|| self.refused(offset))?;
            let st = held.lock();
            let HeldState::Held(buf, _) = &*st else {
                return Err(self.refused(offset));
            };
            let upto = stop.min(buf.len() as u64) as usize;
            out.extend_from_slice(&buf[start as usize..upto]);
        }
        if stop > self.tail_start {
            let from = start.max(self.tail_start) - self.tail_start;
            out.extend_from_slice(&self.tail[from as usize..(stop - self.tail_start) as usize]);
        }
        Ok(out.freeze())
    }

    async fn try_write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if let Some((src, _)) = &self.copy {
            return Err(UploadError::Failed(format!(
                "a write after a server-side copy from {src} into the same file is not supported"
            )));
        }
        let end = offset + data.len() as u64;
        let max = self.max_size;
        if end > max {
            return Err(UploadError::TooLarge { end, max });
        }
        let size = self.data_size();
        if offset < size {
            self.check_rewritable(offset, end.min(size))?;
        }
        if offset > size {
            self.append_zeros(offset - size).await?;
        }
        let mut pos = offset;
        let mut d = data;
        if pos < self.tail_start && !d.is_empty() {
            // Into the held first part (checked above; the budget may have
            // sent it since, which the lock tells).
            let held = self.held.clone().ok_or_else(|| self.refused(pos))?;
            let mut st = held.lock();
            let HeldState::Held(buf, _) = &mut *st else {
                drop(st);
                return Err(self.refused(pos));
            };
            let idx = pos as usize;
            let n = d.len().min(buf.len() - idx);
            buf[idx..idx + n].copy_from_slice(&d[..n]);
            pos += n as u64;
            d = &d[n..];
        }
        if pos < self.data_size() && !d.is_empty() {
            let idx = (pos - self.tail_start) as usize;
            let n = d.len().min(self.tail.len() - idx);
            self.tail[idx..idx + n].copy_from_slice(&d[..n]);
            d = &d[n..];
        }
        self.append(d).await
    }

    /// Sets the file size: grows with zeros, or shrinks while the cut bytes are still in memory.
    pub async fn truncate(&mut self, new_size: u64) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Failed(f.clone()));
        }
        if self.copy.is_some() && new_size != self.size() {
            return Err(UploadError::Failed(
                "resizing a file made by a server-side copy is not supported".into(),
            ));
        }
        let size = self.data_size();
        if new_size >= size {
            let max = self.max_size;
            if new_size > max {
                return Err(UploadError::TooLarge { end: new_size, max });
            }
            return self.append_zeros(new_size - size).await;
        }
        if new_size >= self.tail_start {
            self.tail.truncate((new_size - self.tail_start) as usize);
            return Ok(());
        }
        self.check_rewritable(new_size, size)?;
        // Back into part 1, which is still held and no part after it was sent.
        let held = self.held.take().expect("checked rewritable");
        match held.take() {
            HeldState::Held(mut first, grant) => {
                first.truncate(new_size as usize);
                self.tail = first;
                self.tail_grant = grant;
                self.tail_no = 1;
                self.tail_start = 0;
                Ok(())
            }
            other => {
                // Sent early in the meantime: put it back and refuse.
                *held.lock() = other;
                self.held = Some(held);
                Err(self.refused(new_size))
            }
        }
    }

    /// Makes sure the whole of the tail part is granted before a byte goes in,
    /// so a writer waiting for memory never sits on a half-filled part.
    async fn ensure_tail_memory(&mut self, want: usize) -> Result<(), UploadError> {
        let part = self.cfg.schedule.part_size(self.tail_no) as usize;
        if self.tail_grant.is_none() {
            let g = self
                .cfg
                .budget
                .grant(part as u64, self.cfg.memory_wait)
                .await
                .map_err(|e| match e {
                    BudgetError::TooLarge { .. } => UploadError::TooLarge {
                        end: self.size() + want as u64,
                        max: self.max_size,
                    },
                    e => UploadError::NoMemory(e),
                })?;
            self.tail_grant = Some(g);
        }
        // Small files stay small; once a file outgrows the first allocation,
        // allocate the whole part at once (no copies while doubling).
        let need = self.tail.len() + want;
        if need > self.tail.capacity() {
            let cap = if need <= FIRST_ALLOCATION {
                FIRST_ALLOCATION.min(part)
            } else {
                part
            };
            self.tail.reserve(cap - self.tail.len());
        }
        Ok(())
    }

    async fn append(&mut self, mut d: &[u8]) -> Result<(), UploadError> {
        while !d.is_empty() {
            let room = self.cfg.schedule.part_size(self.tail_no) as usize - self.tail.len();
            let n = room.min(d.len());
            self.ensure_tail_memory(n).await?;
            self.tail.extend_from_slice(&d[..n]);
            d = &d[n..];
            self.rotate_if_full().await?;
        }
        Ok(())
    }

    async fn append_zeros(&mut self, mut n: u64) -> Result<(), UploadError> {
        while n > 0 {
            let room = self.cfg.schedule.part_size(self.tail_no) - self.tail.len() as u64;
            let take = room.min(n);
            self.ensure_tail_memory(take as usize).await?;
            self.tail.resize(self.tail.len() + take as usize, 0);
            n -= take;
            self.rotate_if_full().await?;
        }
        Ok(())
    }

    async fn rotate_if_full(&mut self) -> Result<(), UploadError> {
        let part_size = self.cfg.schedule.part_size(self.tail_no);
        if (self.tail.len() as u64) < part_size {
            return Ok(());
        }
        let full = std::mem::take(&mut self.tail);
        let grant = self.tail_grant.take();
        if self.tail_no == 1 && self.cfg.hold_first_part {
            let held = Arc::new(HeldPart {
                state: Mutex::new(HeldState::Held(full, grant)),
                target: self.target.clone(),
                rt: tokio::runtime::Handle::current(),
                number: 1,
            });
            let weak: Weak<dyn Spill> = Arc::downgrade(&(held.clone() as Arc<dyn Spill>));
            self.cfg.budget.register(weak);
            self.held = Some(held);
        } else {
            self.send_part(self.tail_no, full.freeze(), grant, true)
                .await?;
        }
        self.tail_no += 1;
        self.tail_start += part_size;
        Ok(())
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> UploadError {
        let msg = e.to_string();
        tracing::warn!(key = %self.target.key, error = %msg, "upload failed");
        if self.failed.is_none() {
            self.failed = Some(msg.clone());
        }
        UploadError::Failed(msg)
    }

    /// Records one finished part task; a failed part dooms the upload.
    async fn reap_one(&mut self) -> Result<(), UploadError> {
        match reap_part(&mut self.in_flight, &mut self.sent).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    async fn send_part(
        &mut self,
        number: u32,
        body: Bytes,
        grant: Option<Grant>,
        more: bool,
    ) -> Result<(), UploadError> {
        while self.in_flight.len() >= self.cfg.max_in_flight.max(1) {
            self.reap_one().await?;
        }
        self.multipart = true;
        self.in_flight
            .spawn(self.target.clone().send(number, body, grant, more));
        Ok(())
    }
}

/// Waits for one part task of `in_flight` and records the part in `sent`;
/// the error of a failed one.
async fn reap_part(
    in_flight: &mut JoinSet<Result<SentPart, S3Error>>,
    sent: &mut BTreeMap<u32, SentPart>,
) -> Result<(), String> {
    match in_flight.join_next().await {
        None => Ok(()),
        Some(Ok(Ok(p))) => {
            sent.insert(p.number, p);
            Ok(())
        }
        Some(Ok(Err(e))) => Err(e.to_string()),
        Some(Err(e)) => Err(format!("part task: {e}")),
    }
}

/// Hex MD5 of a body (what a single PutObject's ETag should be).
pub fn single_etag(body: &[u8]) -> String {
    hex(&md5_of(body))
}

#[cfg(test)]
mod tests;
