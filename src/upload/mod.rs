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

use crate::s3::rules::{MAX_PARTS, MAX_SINGLE_SIZE};
use crate::s3::{bare_etag, hex, md5_of, multipart_etag, ObjectStore, PutOptions, S3Error, Source};
use budget::{Budget, BudgetError, Grant, Spill};
use bytes::{Bytes, BytesMut};
use journal::Journal;
use schedule::Schedule;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::task::{JoinHandle, JoinSet};

/// Runs a journal write (files fsync'ed) off the async workers, which keep
/// answering FUSE requests meanwhile.
async fn on_disk<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Times Complete is sent when its outcome is unknown and the upload still exists.
const COMPLETE_ATTEMPTS: u32 = 4;

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
}

type PartTask = JoinHandle<Result<SentPart, S3Error>>;

/// What the multipart upload's parts need: shared by the writer and a
/// held part sent early by the budget.
#[derive(Clone)]
struct Target {
    store: Arc<dyn ObjectStore>,
    key: Arc<str>,
    opts: PutOptions,
    /// Created once, by whoever sends a part first.
    upload_id: Arc<OnceCell<String>>,
    /// Held by a CreateMultipartUpload while it runs (in a task of its own,
    /// which no cancelled caller can cut short); the abort takes it to wait
    /// for a running Create and, once `aborting` is set, to start none.
    creating: Arc<tokio::sync::Mutex<()>>,
    aborting: Arc<std::sync::atomic::AtomicBool>,
    journal: Option<Arc<Journal>>,
    /// The journal entry of this upload, once written.
    entry: Arc<std::sync::OnceLock<u64>>,
    progress: Arc<Progress>,
}

impl Target {
    fn new(store: Arc<dyn ObjectStore>, key: &str, opts: PutOptions, cfg: &UploadConfig) -> Self {
        Target {
            store,
            key: key.into(),
            opts,
            upload_id: Arc::new(OnceCell::new()),
            creating: Arc::new(tokio::sync::Mutex::new(())),
            aborting: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            journal: cfg.journal.clone(),
            entry: Arc::new(std::sync::OnceLock::new()),
            progress: Arc::new(Progress::new()),
        }
    }

    /// The upload ID, creating the upload on first use. The Create runs in
    /// a task of its own: a part task aborted while it waits (the file
    /// failed, or was unlinked) must not cut a Create short after the
    /// request left, or the upload it made would have no known ID to abort.
    async fn upload_id(&self) -> Result<String, S3Error> {
        if let Some(id) = self.upload_id.get() {
            return Ok(id.clone());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let _creating = me.creating.lock().await;
            if me.aborting.load(Ordering::Acquire) {
                return Err(S3Error::Local("the upload was aborted".into()));
            }
            me.create().await
        })
        .await
        .unwrap_or_else(|e| Err(S3Error::Local(format!("CreateMultipartUpload task: {e}"))))
    }

    /// The upload ID, creating the upload if no one has. The journal gets
    /// the intent before the request and the ID after it.
    async fn create(&self) -> Result<String, S3Error> {
        self.upload_id
            .get_or_try_init(|| async {
                let mut attempt = 1;
                loop {
                    let entry = match &self.journal {
                        Some(j) => {
                            let (j2, key) = (j.clone(), self.key.clone());
                            Some(on_disk(move || j2.begin(&key)).await.map_err(|e| {
                                tracing::error!(key = %self.key, dir = %j.dir().display(), error = %e, "journal: cannot record an upload; refusing to start it");
                                S3Error::Local(format!("journal {}: {e}", j.dir().display()))
                            })?)
                        }
                        None => None,
                    };
                    let created = self
                        .store
                        .create_multipart_upload(&self.key, &self.opts)
                        .await;
                    let (Some(j), Some(n)) = (&self.journal, entry) else {
                        return created;
                    };
                    match &created {
                        Ok(id) => {
                            let _ = self.entry.set(n);
                            let (j2, id2) = (j.clone(), id.clone());
                            if let Err(e) = on_disk(move || j2.set_upload_id(n, &id2)).await {
                                // The intent stays: the next mount finds the upload by listing.
                                tracing::warn!(key = %self.key, error = %e, "journal: cannot record the upload ID");
                            }
                        }
                        // The server said no: nothing was created.
                        Err(e) if e.never_sent() || matches!(e, S3Error::Service { .. }) => j.end(n),
                        // Maybe created: the reaper looks for it by listing
                        // (sparing the uploads this mount is using), so one
                        // more Create is safe; after a broken connection it
                        // goes to the next endpoint (a cluster node lost
                        // mid-request).
                        Err(e) => {
                            j.doom(n);
                            if attempt < CREATE_ATTEMPTS && matches!(e, S3Error::Transport { .. }) {
                                tracing::warn!(key = %self.key, attempt, error = %e, "CreateMultipartUpload: outcome unknown; creating again");
                                attempt += 1;
                                continue;
                            }
                        }
                    }
                    return created;
                }
            })
            .await
            .inspect(|id| tracing::debug!(key = %self.key, upload_id = %id, "multipart upload ready"))
            .cloned()
    }

    /// CompleteMultipartUpload, retried with care: Complete is not
    /// idempotent, so after an error whose outcome is unknown (a lost
    /// answer, a 500) it first asks whether the upload still exists
    /// (ListParts). If it does, Complete is sent again; if it is gone, the
    /// object at the key must be the one this upload made (its ETag, or
    /// for unverifiable copies its part count and size), else the error stands.
    async fn complete(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        expected_etag: Option<&str>,
        size: u64,
    ) -> Result<String, S3Error> {
        let key = &*self.key;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self
                .store
                .complete_multipart_upload(key, upload_id, parts)
                .await
            {
                Ok(etag) if !bare_etag(&etag).is_empty() => return Ok(etag),
                Ok(_) => return Ok(self.etag_after_complete(expected_etag, size).await),
                Err(e) => e,
            };
            match self.store.list_parts(key, upload_id).await {
                Ok(_) if err.retry() == crate::s3::Retry::No => return Err(err),
                Ok(_) if attempt < COMPLETE_ATTEMPTS => {
                    tracing::debug!(key = %key, attempt, error = %err, "Complete failed; the upload still exists: sending it again");
                }
                Ok(_) => return Err(err),
                Err(gone) if gone.is_not_found() => {
                    let head = self.store.head_object(key).await;
                    let ours = match &head {
                        Ok(h) => {
                            let got = bare_etag(&h.etag);
                            match expected_etag {
                                Some(x) => got == x,
                                None => {
                                    h.size == size && got.ends_with(&format!("-{}", parts.len()))
                                }
                            }
                        }
                        Err(_) => false,
                    };
                    if ours {
                        let etag = head.map(|h| h.etag).unwrap_or_default();
                        tracing::info!(key = %key, attempt, error = %err, "Complete's answer was lost, but the object is there with our ETag");
                        return Ok(etag);
                    }
                    return Err(err);
                }
                Err(e) if attempt < COMPLETE_ATTEMPTS => {
                    tracing::debug!(key = %key, attempt, error = %e, "cannot tell whether Complete worked; asking again");
                }
                Err(_) => return Err(err),
            }
            tokio::time::sleep(Duration::from_millis(200 << attempt.min(5))).await;
        }
    }

    /// Ceph RGW 16 answers a successful Complete with an empty `<ETag>`:
    /// the object's ETag is then asked of the object. When the object there
    /// is not the one this upload made (another writer came in between),
    /// the empty answer stands, and nothing is judged by it.
    async fn etag_after_complete(&self, expected_etag: Option<&str>, size: u64) -> String {
        match self.store.head_object(&self.key).await {
            Ok(h)
                if h.size == size
                    && expected_etag.is_none_or(|x| bare_etag(&h.etag) == bare_etag(x)) =>
            {
                tracing::debug!(key = %self.key, etag = %h.etag, "Complete answered no ETag; took it from HEAD");
                h.etag
            }
            Ok(h) => {
                tracing::warn!(key = %self.key, etag = %h.etag, size = h.size, "Complete answered no ETag, and the object at the key is not this upload's: another writer replaced it");
                String::new()
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "Complete answered no ETag, and HEAD failed");
                String::new()
            }
        }
    }

    /// The upload is settled on the server (completed or aborted): the journal forgets it.
    fn settled(&self) {
        if let (Some(j), Some(n)) = (&self.journal, self.entry.get()) {
            j.end(*n);
        }
    }

    /// The abort failed: the journal keeps the upload for the reaper.
    fn unsettled(&self) {
        if let (Some(j), Some(n)) = (&self.journal, self.entry.get()) {
            j.doom(*n);
        }
    }

    /// Sends one part; its memory is given back when the request ends.
    /// `more`: more parts of this file follow soon, so its MD5 may wait a
    /// moment to be computed alongside theirs ([`md5x`]).
    async fn send(
        self,
        number: u32,
        body: Bytes,
        grant: Option<Grant>,
        more: bool,
    ) -> Result<SentPart, S3Error> {
        let _counted = InFlight::new(&self.progress);
        let upload_id = self.upload_id().await?;
        // 8 MiB of MD5 is ~13 ms of CPU: off the async workers, which keep
        // answering the writer's FUSE requests meanwhile.
        let md5 = md5x::PARTS.md5(body.clone(), more).await.ok_or_else(|| {
            S3Error::malformed("UploadPart", format!("hashing part {number} failed"))
        })?;
        let len = body.len() as u64;
        let etag = self
            .store
            .upload_part(&self.key, &upload_id, number, body, md5)
            .await
            // The error as the store classified it (its code, status and
            // retry class stay); the part it was is logged here.
            .inspect_err(
                |e| tracing::warn!(key = %self.key, part = number, error = %e, "UploadPart failed"),
            )?;
        drop(grant);
        self.progress.parts_sent.fetch_add(1, Ordering::Relaxed);
        self.progress.bytes_sent.fetch_add(len, Ordering::Relaxed);
        Ok(SentPart { number, etag, md5 })
    }
}

enum HeldState {
    /// Part 1, full, in memory.
    Held(BytesMut, Option<Grant>),
    /// Sent early because memory was short; the task ends with the part's ETag.
    Spilled(PartTask),
    /// Taken by the writer (at close or to shrink the file).
    Taken,
}

/// The held first part, which the budget may ask to be sent early.
struct HeldPart {
    state: Mutex<HeldState>,
    target: Target,
    rt: tokio::runtime::Handle,
    /// Its part number on the wire (1, or after an append's copied parts).
    number: u32,
}

impl HeldPart {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> HeldState {
        std::mem::replace(&mut *self.lock(), HeldState::Taken)
    }
}

impl Spill for HeldPart {
    fn spill(&self) {
        let mut st = self.lock();
        if !matches!(*st, HeldState::Held(..)) {
            return;
        }
        let HeldState::Held(body, grant) = std::mem::replace(&mut *st, HeldState::Taken) else {
            unreachable!("checked above");
        };
        tracing::info!(key = %self.target.key, bytes = body.len(), "memory short: sending the held first part now; later writes into it will fail");
        let task = self.rt.spawn(self.target.clone().send(
            self.number,
            body.freeze(),
            grant,
            false,
        ));
        *st = HeldState::Spilled(task);
    }

    fn holds(&self) -> bool {
        matches!(*self.lock(), HeldState::Held(..))
    }
}

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
    /// Appending: the first `base` bytes are the existing object at the key,
    /// copied by the server as the first `prefix_parts` parts; written bytes
    /// follow them.
    base: u64,
    prefix_parts: u32,
    /// The largest this file may grow (10,000 parts, less an append's
    /// copied ones); summing the schedule is too slow to do per write.
    max_size: u64,
}

/// CreateMultipartUploads tried when the outcome of one is unknown (the
/// connection broke after it was sent); with a journal only, whose reaper
/// aborts the upload an unknown outcome may have made.
const CREATE_ATTEMPTS: u32 = 3;

/// Smallest part of a multipart server-side copy.
const COPY_PART: u64 = 512 * 1024 * 1024;

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
            base: 0,
            prefix_parts: 0,
            max_size: cfg_max,
        }
    }

    /// Starts an append to the existing object at `key` of `existing` bytes
    /// (at least 5 MiB, S3's smallest part): at close its bytes become the
    /// first parts by UploadPartCopy (no data through this machine), and the
    /// bytes written after them follow. The old object stays until then.
    pub fn new_append(
        store: Arc<dyn ObjectStore>,
        key: String,
        opts: PutOptions,
        cfg: UploadConfig,
        existing: u64,
    ) -> Self {
        let mut u = Upload::new(store, key, opts, cfg);
        u.base = existing;
        u.prefix_parts = existing.div_ceil(MAX_SINGLE_SIZE).max(1) as u32;
        u.max_size = existing + u.cfg.schedule.part_start(MAX_PARTS + 1 - u.prefix_parts);
        u
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
            None => self.base + self.data_size(),
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
        let pristine = self.copy.is_none() && self.size() == 0 && !self.multipart && self.base == 0;
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
        if let Err(e) = &r {
            if self.failed.is_none() {
                self.failed = Some(e.to_string());
            }
        }
        r
    }

    async fn try_write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if let Some((src, _)) = &self.copy {
            return Err(UploadError::Failed(format!(
                "a write after a server-side copy from {src} into the same file is not supported"
            )));
        }
        if offset < self.base {
            // Into the existing object being appended to: it is not here.
            return Err(UploadError::IntoSentPart {
                offset,
                part: 1,
                size: self.size(),
            });
        }
        let end = offset + data.len() as u64;
        let max = self.max_size;
        if end > max {
            return Err(UploadError::TooLarge { end, max });
        }
        let offset = offset - self.base;
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
        if new_size < self.base {
            return Err(UploadError::IntoSentPart {
                offset: new_size,
                part: 1,
                size: self.size(),
            });
        }
        let new_size = new_size - self.base;
        let size = self.data_size();
        if new_size >= size {
            let max = self.max_size - self.base;
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
                number: 1 + self.prefix_parts,
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
        match self.in_flight.join_next().await {
            None => Ok(()),
            Some(Ok(Ok(p))) => {
                self.sent.insert(p.number, p);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(self.fail(e)),
            Some(Err(e)) => Err(self.fail(format!("part task: {e}"))),
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
        self.in_flight.spawn(self.target.clone().send(
            number + self.prefix_parts,
            body,
            grant,
            more,
        ));
        Ok(())
    }

    /// Sends what is left and makes the object durable: one PutObject for a
    /// file of at most one part, else the last parts and CompleteMultipartUpload
    /// (its ETag checked). Any failure aborts the upload and is returned.
    /// Asks no memory of the budget, so a close always makes progress.
    pub async fn finish(mut self) -> Result<Finished, UploadError> {
        let result = self.try_finish().await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn try_finish(&mut self) -> Result<Finished, UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Failed(f.clone()));
        }
        if let Some((src, n)) = self.copy.clone() {
            return self.finish_copy(&src, n).await;
        }
        let size = self.size();
        let first = self.held.take().map(|h| h.take());
        let created = self.multipart;
        let single = self.base == 0
            && match &first {
                None => !created,
                Some(HeldState::Held(..)) => !created && self.tail.is_empty(),
                Some(_) => false,
            };
        if self.base > 0 {
            self.spawn_prefix_copies();
        }
        if single {
            let body = match first {
                Some(HeldState::Held(b, _)) => b,
                _ => std::mem::take(&mut self.tail),
            };
            let body = body.freeze();
            let Some(md5) = md5x::md5_of_body(&body).await else {
                return Err(self.fail("PutObject: hashing the body failed"));
            };
            return match self
                .target
                .store
                .put_object(&self.target.key, body, Some(md5), &self.target.opts)
                .await
            {
                Ok(etag) => {
                    self.target
                        .progress
                        .bytes_sent
                        .store(size, Ordering::Relaxed);
                    Ok(Finished {
                        etag,
                        size,
                        parts: 0,
                    })
                }
                Err(e) => Err(self.fail(format!("PutObject: {e}"))),
            };
        }
        match first {
            Some(HeldState::Held(b, g)) => self.send_part(1, b.freeze(), g, false).await?,
            Some(HeldState::Spilled(task)) => {
                self.in_flight.spawn(async move {
                    task.await.unwrap_or_else(|e| {
                        Err(S3Error::Malformed {
                            operation: "UploadPart",
                            detail: format!("part 1 task: {e}"),
                        })
                    })
                });
            }
            Some(HeldState::Taken) | None => {}
        }
        if !self.tail.is_empty() {
            let last = std::mem::take(&mut self.tail).freeze();
            let g = self.tail_grant.take();
            self.send_part(self.tail_no, last, g, false).await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let upload_id = match self.target.upload_id().await {
            Ok(id) => id,
            Err(e) => return Err(self.fail(format!("CreateMultipartUpload: {e}"))),
        };
        let parts: Vec<(u32, String)> = self
            .sent
            .values()
            .map(|p| (p.number, p.etag.clone()))
            .collect();
        let md5s: Vec<[u8; 16]> = self.sent.values().map(|p| p.md5).collect();
        let key = self.target.key.clone();
        let expected = multipart_etag(&md5s);
        // A copied part whose ETag was not an MD5 (a vendor's or an
        // encrypted one) leaves nothing to compare with.
        // Judged only when the server showed MD5 ETags for every part (some
        // vendors' encrypted objects have other ETags).
        let verifiable = md5s.iter().all(|m| *m != [0; 16])
            && crate::s3::Sse::etag_is_md5(self.target.opts.sse.as_ref())
            && self.target.store.etags_are_md5()
            && self
                .sent
                .values()
                .all(|p| bare_etag(&p.etag) == hex(&p.md5));
        let etag = match self
            .target
            .complete(&upload_id, &parts, verifiable.then_some(&*expected), size)
            .await
        {
            Ok(etag) => etag,
            Err(e) => return Err(self.fail(format!("CompleteMultipartUpload: {e}"))),
        };
        // The upload is gone on the server now: nothing left to abort.
        self.ended = true;
        self.target.settled();
        let got = bare_etag(&etag);
        if verifiable && got != expected {
            if looks_like_multipart_etag(&got)
                && crate::s3::Sse::etag_is_md5(self.target.opts.sse.as_ref())
            {
                tracing::error!(key = %key, expected, got, "completed object has the wrong ETag; deleting it");
                let _ = self.target.store.delete_object(&key).await;
                return Err(self.fail(format!(
                    "ETag mismatch after Complete: expected {expected}, got {got}"
                )));
            }
            tracing::info!(key = %key, etag = %got, "ETag format not judged (vendor or encryption)");
        }
        Ok(Finished {
            etag,
            size,
            parts: parts.len() as u32,
        })
    }

    /// An append's first parts: UploadPartCopy of the existing object at the
    /// key, in pieces of at most 5 GiB (each at least 5 MiB: the caller
    /// appends this way only to objects of 5 MiB or more).
    fn spawn_prefix_copies(&mut self) {
        self.multipart = true;
        let k = self.prefix_parts as u64;
        let piece = self.base.div_ceil(k);
        for i in 0..k {
            let range = i * piece..((i + 1) * piece).min(self.base);
            let t = self.target.clone();
            let number = i as u32 + 1;
            self.in_flight.spawn(async move {
                let id = t.upload_id().await?;
                let etag = t
                    .store
                    .upload_part_copy(&t.key, &id, number, Source::key(&t.key), range)
                    .await?;
                // The ETag of a copied part is the MD5 of its bytes (S3):
                // the check at Complete then covers the server's assembly.
                let md5 = crate::s3::parse_hex_md5(&bare_etag(&etag)).unwrap_or([0; 16]);
                Ok(SentPart { number, etag, md5 })
            });
        }
    }

    /// A server-side copy: one CopyObject when it is a whole object of at
    /// most 5 GiB, else UploadPartCopy ranges (a few in flight) and Complete.
    /// The server copies bytes it holds, so there is no MD5 of ours to check.
    async fn finish_copy(&mut self, src: &str, n: u64) -> Result<Finished, UploadError> {
        let store = self.target.store.clone();
        let key = self.target.key.clone();
        let whole = store.head_object(src).await.map(|h| h.size == n);
        if n <= self.cfg.max_copy_object && matches!(whole, Ok(true)) {
            let d = crate::s3::MetadataDirective::Replace(self.target.opts.clone());
            return match store.copy_object(Source::key(src), &key, &d).await {
                Ok(etag) => Ok(Finished {
                    etag,
                    size: n,
                    parts: 0,
                }),
                Err(e) => Err(self.fail(format!("CopyObject from {src}: {e}"))),
            };
        }
        if let Err(e) = whole {
            return Err(self.fail(format!("HEAD of copy source {src}: {e}")));
        }
        self.multipart = true;
        let upload_id = match self.target.upload_id().await {
            Ok(id) => id,
            Err(e) => return Err(self.fail(format!("CreateMultipartUpload: {e}"))),
        };
        let part = COPY_PART.max(n.div_ceil(MAX_PARTS as u64));
        let mut tasks: JoinSet<Result<(u32, String), S3Error>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut start = 0u64;
        let mut number = 1u32;
        while start < n || !tasks.is_empty() {
            if start < n && tasks.len() < self.cfg.max_in_flight.max(1) {
                let end = (start + part).min(n);
                let (store, key, src, id) = (
                    store.clone(),
                    key.clone(),
                    src.to_string(),
                    upload_id.clone(),
                );
                tasks.spawn(async move {
                    let etag = store
                        .upload_part_copy(&key, &id, number, Source::key(&src), start..end)
                        .await?;
                    Ok((number, etag))
                });
                start = end;
                number += 1;
                continue;
            }
            match tasks.join_next().await {
                Some(Ok(Ok(p))) => parts.push(p),
                Some(Ok(Err(e))) => return Err(self.fail(format!("UploadPartCopy: {e}"))),
                Some(Err(e)) => return Err(self.fail(format!("copy task: {e}"))),
                None => break,
            }
        }
        parts.sort();
        let count = parts.len() as u32;
        match self.target.complete(&upload_id, &parts, None, n).await {
            Ok(etag) => {
                self.ended = true;
                self.target.settled();
                Ok(Finished {
                    etag,
                    size: n,
                    parts: count,
                })
            }
            Err(e) => Err(self.fail(format!("CompleteMultipartUpload: {e}"))),
        }
    }

    /// Stops everything and aborts the multipart upload, if one was created.
    /// Errors can only be logged (the orphan shows in `bucketfs uploads list`).
    pub async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        // A part sent early may be creating the upload: let it end, so its ID is known.
        if let Some(held) = self.held.take() {
            if let HeldState::Spilled(task) = held.take() {
                let _ = task.await;
            }
        }
        // A Create still running (its caller was just aborted) ends first,
        // so its ID is known below; none starts after this.
        self.target.aborting.store(true, Ordering::Release);
        drop(self.target.creating.lock().await);
        if !self.ended {
            self.ended = true;
            if let Some(id) = self.target.upload_id.get() {
                let key = &self.target.key;
                match self.target.store.abort_multipart_upload(key, id).await {
                    Ok(()) => {
                        tracing::info!(key = %key, upload_id = %id, "upload aborted");
                        self.target.settled();
                    }
                    Err(e) if e.is_not_found() => self.target.settled(),
                    Err(e) => {
                        tracing::warn!(key = %key, upload_id = %id, error = %e, "abort failed; will try again (the journal keeps the upload)");
                        self.target.unsettled();
                    }
                }
            }
        }
        self.tail = BytesMut::new();
        self.tail_grant = None;
        if self.failed.is_none() {
            self.failed = Some("aborted".into());
        }
    }
}

fn looks_like_multipart_etag(e: &str) -> bool {
    match e.split_once('-') {
        Some((h, n)) => {
            h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()) && n.parse::<u32>().is_ok()
        }
        None => false,
    }
}

/// Hex MD5 of a body (what a single PutObject's ETag should be).
pub fn single_etag(body: &[u8]) -> String {
    hex(&md5_of(body))
}

#[cfg(test)]
mod tests;
