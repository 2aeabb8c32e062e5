//! Writes anywhere in a file, with no local disk: the new version is a
//! base object (pinned by its ETag) with the bytes written since laid over
//! it. Written bytes are kept as extents per part of the schedule; at
//! commit each part of the new version is, in order of preference:
//!
//! - a part already sent: a part fully written is sent as soon as it is
//!   (a sequential rewrite streams as an upload does);
//! - UploadPartCopy of the base's bytes, pinned with
//!   `x-amz-copy-source-if-match`, when nothing in it changed;
//! - rebuilt here: a ranged GET of the base (pinned by `If-Match`), the
//!   extents laid over it, zeros past the base, sent as UploadPart.
//!
//! A file of at most one part is one PutObject. A part number is sent at
//! most once per upload (SeaweedFS does not reliably replace a part sent
//! again): a write or read into a part already sent, whose bytes are no
//! longer here, is refused with [`UploadError::IntoSentPart`], and the
//! caller decides (a new file commits what it has as a checkpoint and goes
//! on from it; an overwrite fails with EIO).
//!
//! Memory: extents take from the mount's budget; past half of it, the
//! part holding the most written bytes is rebuilt and sent early.

use super::budget::Grant;
use super::layout::Layout;
use super::target::Target;
use super::{Finished, Progress, SentPart, UploadConfig, UploadError};
use crate::s3::rules::MAX_PARTS;
use crate::s3::{bare_etag, ObjectStore, PutOptions, S3Error, Source};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Arc;
use tokio::task::JoinSet;

/// The object a new version is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

impl Base {
    /// The base as a copy or GET source, pinned to its version (unpinned
    /// when the server told no ETag: Ceph RGW's Complete may not, and a
    /// HEAD after it can find another writer's object).
    fn source(&self) -> Source<'_> {
        if self.etag.is_empty() {
            Source::key(&self.key)
        } else {
            Source::pinned(&self.key, &self.etag)
        }
    }
}

/// Bytes of the base read for readers, fetched in blocks of this size.
const READ_BLOCK: u64 = 4 << 20;
/// Memory is granted for extents in steps of this size.
const GRANT_STEP: u64 = 1 << 20;

/// Extents of one part, by offset within the part: never overlapping,
/// never touching (neighbours are merged).
type Extents = BTreeMap<u64, Vec<u8>>;

/// A new version of a file being composed.
pub struct Patch {
    target: Target,
    layout: Layout,
    cfg: UploadConfig,
    base: Option<Base>,
    /// Bytes 0..base_len of the file are the base's (a shrink cuts it).
    base_len: u64,
    size: u64,
    /// Written bytes not sent yet, by part number.
    parts: BTreeMap<u32, Extents>,
    /// Bytes held in `parts`.
    dirty: u64,
    grant: Option<Grant>,
    /// Parts handed to a task (sent, or on their way): final in this upload.
    early: BTreeSet<u32>,
    sent: BTreeMap<u32, SentPart>,
    in_flight: JoinSet<Result<SentPart, S3Error>>,
    /// The last block of the base read for a reader, or the whole base
    /// when it was seeded.
    cache: Option<(u64, Bytes)>,
    /// The memory of a seeded base.
    seed_grant: Option<Grant>,
    /// Where the last write ended, and the parts where the last two runs
    /// of contiguous writes began (kept unsent: see `write`).
    run_end: Option<u64>,
    run_parts: [Option<u32>; 2],
    /// The largest this file may grow (10,000 parts); summing the parts
    /// is too slow to do per write.
    max_size: u64,
    failed: Option<String>,
    ended: bool,
}

fn extents_len(e: &Extents) -> u64 {
    e.values().map(|v| v.len() as u64).sum()
}

/// Whether `e` covers all `len` bytes of its part (merged extents: one
/// extent from 0).
fn covers(e: &Extents, len: u64) -> bool {
    matches!(e.first_key_value(), Some((0, v)) if v.len() as u64 == len)
}

/// Lays `data` at `off` into `e`, merging what it overlaps or touches;
/// returns by how many bytes `e` grew.
fn insert_extent(e: &mut Extents, off: u64, data: &[u8]) -> u64 {
    let end = off + data.len() as u64;
    let touching: Vec<u64> = e
        .range(..=end)
        .rev()
        .take_while(|(s, v)| **s + v.len() as u64 >= off)
        .map(|(s, _)| *s)
        .collect();
    // The common case: appending to (or writing inside) one extent.
    if let [only] = touching[..] {
        if only <= off {
            let v = e.get_mut(&only).expect("listed");
            let rel = (off - only) as usize;
            let was = v.len();
            let keep = was.max(rel + data.len());
            v.resize(keep, 0);
            v[rel..rel + data.len()].copy_from_slice(data);
            return (keep - was) as u64;
        }
    }
    let start = touching.iter().copied().min().unwrap_or(off).min(off);
    let mut stop = end;
    for s in &touching {
        stop = stop.max(s + e[s].len() as u64);
    }
    let mut buf = vec![0u8; (stop - start) as usize];
    let mut was = 0;
    for s in touching {
        let v = e.remove(&s).expect("listed");
        let r = (s - start) as usize;
        buf[r..r + v.len()].copy_from_slice(&v);
        was += v.len() as u64;
    }
    let r = (off - start) as usize;
    buf[r..r + data.len()].copy_from_slice(data);
    let now = buf.len() as u64;
    e.insert(start, buf);
    now - was
}

/// Copies the parts of `e` (offsets relative to `e_start`) that fall in
/// `buf`, which holds bytes from `buf_start` on.
fn overlay(buf: &mut [u8], buf_start: u64, e: &Extents, e_start: u64) {
    let buf_end = buf_start + buf.len() as u64;
    for (s, v) in e {
        let a = (e_start + s).max(buf_start);
        let b = (e_start + s + v.len() as u64).min(buf_end);
        if a < b {
            let from = (a - e_start - s) as usize;
            buf[(a - buf_start) as usize..(b - buf_start) as usize]
                .copy_from_slice(&v[from..from + (b - a) as usize]);
        }
    }
}

impl Patch {
    /// A new version of `key` made of `base` (none: a file of zeros) cut or
    /// grown to `size`, written by later calls, stored by [`Patch::commit`].
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: &str,
        opts: PutOptions,
        cfg: UploadConfig,
        base: Option<Base>,
        size: u64,
    ) -> Self {
        let base_len = base.as_ref().map_or(0, |b| b.size.min(size));
        let layout = Layout::new(cfg.schedule, base_len);
        Patch {
            target: Target::new(store, key, opts, &cfg),
            max_size: layout.max_file_size(),
            layout,
            cfg,
            base,
            base_len,
            size,
            parts: BTreeMap::new(),
            dirty: 0,
            grant: None,
            early: BTreeSet::new(),
            sent: BTreeMap::new(),
            in_flight: JoinSet::new(),
            cache: None,
            seed_grant: None,
            run_end: None,
            run_parts: [None, None],
            failed: None,
            ended: false,
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Written bytes held in memory.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty
    }

    /// Parts sent before the commit.
    pub fn parts_sent_early(&self) -> usize {
        self.early.len()
    }

    /// Whether nothing was written since the base (the commit has nothing to do).
    pub fn unchanged(&self) -> bool {
        self.parts.is_empty()
            && self.early.is_empty()
            && self
                .base
                .as_ref()
                .is_some_and(|b| b.size == self.size && self.base_len == self.size)
    }

    /// The options the new version is created with; fixed once a part is sent.
    pub fn options_mut(&mut self) -> &mut PutOptions {
        &mut self.target.opts
    }

    /// The options the new version is created with.
    pub fn options(&self) -> &PutOptions {
        &self.target.opts
    }

    /// Whether the multipart upload was started (its options are then fixed).
    pub fn is_multipart(&self) -> bool {
        !self.early.is_empty()
    }

    /// Live counters, shared with `bucketfs status`.
    pub fn progress_handle(&self) -> Arc<Progress> {
        self.target.progress.clone()
    }

    /// Whether an earlier failure doomed this version.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The range of part `n` in the file, cut at its size.
    fn part_range(&self, n: u32) -> Range<u64> {
        let s = self.layout.part_start(n);
        s..(s + self.layout.part_size(n)).min(self.size)
    }

    /// The parts that `range` touches, with each one's start and length.
    fn pieces(&self, range: Range<u64>) -> Vec<(u32, u64, u64)> {
        let mut v = Vec::new();
        let Some((mut n, mut s)) = self.layout.part_of(range.start) else {
            return v;
        };
        while s < range.end && n <= MAX_PARTS {
            let len = self.layout.part_size(n);
            v.push((n, s, len));
            s += len;
            n += 1;
        }
        v
    }

    fn refused(&self, offset: u64, part: u32) -> UploadError {
        UploadError::IntoSentPart {
            offset,
            part,
            size: self.size,
        }
    }

    fn check(&self) -> Result<(), UploadError> {
        match &self.failed {
            Some(f) => Err(UploadError::Failed(f.clone())),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> UploadError {
        let msg = e.to_string();
        tracing::warn!(key = %self.target.key, error = %msg, "new version failed");
        if self.failed.is_none() {
            self.failed = Some(msg.clone());
        }
        UploadError::Failed(msg)
    }

    /// Writes `data` at `offset` (past the end, the gap reads as zeros).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        self.check()?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        let max = self.max_size;
        if end > max {
            return Err(UploadError::TooLarge { end, max });
        }
        let pieces = self.pieces(offset..end);
        if let Some((n, ..)) = pieces.iter().find(|(n, ..)| self.early.contains(n)) {
            return Err(self.refused(offset, *n));
        }
        // A write that does not continue the last one starts a run: the
        // parts where the last two runs began stay here even when full
        // (formats patch the header at the start of what they just wrote:
        // zip's local headers, an MP4's mdat size).
        let mut released = None;
        if self.run_end != Some(offset) {
            let n = pieces.first().map(|(n, ..)| *n);
            if self.run_parts[0] != n {
                released = self.run_parts[1];
                self.run_parts = [n, self.run_parts[0]];
            }
        }
        self.run_end = Some(end);
        let mut full = Vec::new();
        if let Some(r) = released.filter(|r| !self.run_parts.contains(&Some(*r))) {
            full.extend(self.is_full(r).then_some(r));
        }
        for (n, s, len) in pieces {
            let a = offset.max(s);
            let b = end.min(s + len);
            let e = self.parts.entry(n).or_default();
            self.dirty += insert_extent(
                e,
                a - s,
                &data[(a - offset) as usize..(b - offset) as usize],
            );
            if covers(e, len) {
                full.push(n);
            }
        }
        self.size = self.size.max(end);
        for n in full {
            if !self.run_parts.contains(&Some(n)) {
                self.send_early(n).await?;
            }
        }
        self.hold_memory().await
    }

    /// Whether the program wrote all of part `n` (not sent yet).
    fn is_full(&self, n: u32) -> bool {
        self.parts
            .get(&n)
            .is_some_and(|e| covers(e, self.layout.part_size(n)))
    }

    /// Grants memory for the extents held; past half the budget, sends the
    /// part with the most written bytes first.
    async fn hold_memory(&mut self) -> Result<(), UploadError> {
        let share = self.cfg.budget.limit() / 2;
        while self.dirty > share {
            let Some(n) = self
                .parts
                .iter()
                .max_by_key(|(_, e)| extents_len(e))
                .map(|(n, _)| *n)
            else {
                break;
            };
            tracing::debug!(key = %self.target.key, part = n, dirty = self.dirty, "written bytes outgrow their memory share: sending a part early");
            self.send_early(n).await?;
        }
        let want = self.dirty.div_ceil(GRANT_STEP) * GRANT_STEP;
        let have = self.grant.as_ref().map_or(0, Grant::bytes);
        if want > have {
            let g = match self
                .cfg
                .budget
                .grant(want - have, self.cfg.memory_wait)
                .await
            {
                Ok(g) => g,
                Err(e) => return Err(UploadError::NoMemory(e)),
            };
            match &mut self.grant {
                Some(mine) => mine.absorb(g),
                None => self.grant = Some(g),
            }
        } else if let Some(g) = &mut self.grant {
            g.shrink_to(want);
        }
        Ok(())
    }

    /// The base's bytes, known without reading them back (the body of the
    /// PutObject that made it), held under `grant`: rebuilding a part of
    /// it then needs no GET.
    pub fn seed_base(&mut self, body: Bytes, grant: Grant) {
        if self
            .base
            .as_ref()
            .is_some_and(|b| b.size == body.len() as u64)
        {
            self.cache = Some((0, body));
            self.seed_grant = Some(grant);
        }
    }

    /// Bytes `range` of the base from the cache, if it holds them.
    fn cached(&self, range: Range<u64>) -> Option<Bytes> {
        let (at, b) = self.cache.as_ref()?;
        (*at <= range.start && range.end <= at + b.len() as u64)
            .then(|| b.slice((range.start - at) as usize..(range.end - at) as usize))
    }

    /// Bytes `range` of the base (within `base_len`), pinned to its version.
    async fn base_bytes(&self, range: Range<u64>) -> Result<Bytes, S3Error> {
        if let Some(b) = self.cached(range.clone()) {
            return Ok(b);
        }
        let b = self
            .base
            .as_ref()
            .expect("bytes below base_len have a base");
        let g = self
            .target
            .store
            .get_object(b.source(), Some(range.clone()))
            .await?;
        if g.body.len() as u64 != range.end - range.start {
            return Err(S3Error::malformed(
                "GetObject",
                format!(
                    "{} bytes for range {}..{} of {}",
                    g.body.len(),
                    range.start,
                    range.end,
                    b.key
                ),
            ));
        }
        Ok(g.body)
    }

    /// The bytes of part `n` of the new version.
    async fn rebuild(&self, n: u32) -> Result<Bytes, S3Error> {
        let r = self.part_range(n);
        let mut buf = BytesMut::zeroed((r.end - r.start) as usize);
        let covered = self
            .parts
            .get(&n)
            .is_some_and(|e| covers(e, r.end - r.start));
        if r.start < self.base_len && !covered {
            let b = self.base_bytes(r.start..r.end.min(self.base_len)).await?;
            buf[..b.len()].copy_from_slice(&b);
        }
        if let Some(e) = self.parts.get(&n) {
            overlay(&mut buf, r.start, e, r.start);
        }
        Ok(buf.freeze())
    }

    /// Sends part `n` now (before the commit): it is final in this upload.
    async fn send_early(&mut self, n: u32) -> Result<(), UploadError> {
        let body = match self.rebuild(n).await {
            Ok(b) => b,
            Err(e) => return Err(self.fail(format!("reading the base for part {n}: {e}"))),
        };
        if let Some(e) = self.parts.remove(&n) {
            self.dirty -= extents_len(&e);
        }
        self.early.insert(n);
        self.spawn_send(n, body, true).await
    }

    async fn spawn_send(&mut self, n: u32, body: Bytes, more: bool) -> Result<(), UploadError> {
        while self.in_flight.len() >= self.cfg.max_in_flight.max(1) {
            self.reap_one().await?;
        }
        self.in_flight
            .spawn(self.target.clone().send(n, body, None, more));
        Ok(())
    }

    fn spawn_copy(&mut self, n: u32, range: Range<u64>) {
        let t = self.target.clone();
        let b = self.base.clone().expect("copied parts have a base");
        self.in_flight.spawn(async move {
            let id = t.upload_id().await?;
            let etag = t
                .store
                .upload_part_copy(&t.key, &id, n, b.source(), range)
                .await?;
            let md5 = crate::s3::parse_hex_md5(&bare_etag(&etag)).unwrap_or([0; 16]);
            Ok(SentPart {
                number: n,
                etag,
                md5,
            })
        });
    }

    async fn reap_one(&mut self) -> Result<(), UploadError> {
        match super::reap_part(&mut self.in_flight, &mut self.sent).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Reads `len` bytes at `offset` of the new version (fewer at its end).
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Bytes, UploadError> {
        self.read_via(offset, len, None).await
    }

    /// The base this version is made of.
    pub fn base(&self) -> Option<&Base> {
        self.base.as_ref()
    }

    /// [`Patch::read`], the base's bytes taken from `base_reader` (a
    /// reader of the base with read-ahead, for sequential readers) when
    /// given, else fetched a block at a time.
    pub async fn read_via(
        &mut self,
        offset: u64,
        len: u32,
        base_reader: Option<&mut crate::prefetch::Reader>,
    ) -> Result<Bytes, UploadError> {
        self.check()?;
        let end = (offset + len as u64).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let pieces = self.pieces(offset..end);
        if let Some((n, ..)) = pieces.iter().find(|(n, ..)| self.early.contains(n)) {
            return Err(self.refused(offset, *n));
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        if offset < self.base_len {
            let upto = end.min(self.base_len);
            let failed = |e: S3Error| UploadError::Failed(format!("reading the base: {e}"));
            match base_reader {
                _ if self.cached(offset..upto).is_some() => {
                    let b = self.cached(offset..upto).expect("checked");
                    buf[..b.len()].copy_from_slice(&b);
                }
                Some(r) => {
                    let mut at = offset;
                    while at < upto {
                        let want = (upto - at).min(u32::MAX as u64) as u32;
                        let b = r.read(at, want).await.map_err(failed)?;
                        if b.is_empty() {
                            return Err(UploadError::Failed(format!(
                                "reading the base: it ends at {at}, before {upto}"
                            )));
                        }
                        let i = (at - offset) as usize;
                        buf[i..i + b.len()].copy_from_slice(&b);
                        at += b.len() as u64;
                    }
                }
                None => {
                    let b = self.cached_base(offset..upto).await.map_err(failed)?;
                    buf[..b.len()].copy_from_slice(&b);
                }
            }
        }
        for (n, s, _) in pieces {
            if let Some(e) = self.parts.get(&n) {
                overlay(&mut buf, offset, e, s);
            }
        }
        Ok(Bytes::from(buf))
    }

    /// Base bytes for a reader, through a one-block cache.
    async fn cached_base(&mut self, r: Range<u64>) -> Result<Bytes, S3Error> {
        if let Some((at, b)) = &self.cache {
            if *at <= r.start && r.end <= at + b.len() as u64 {
                return Ok(b.slice((r.start - at) as usize..(r.end - at) as usize));
            }
        }
        let at = r.start - r.start % READ_BLOCK;
        let upto = (at + READ_BLOCK).max(r.end).min(self.base_len);
        let b = self.base_bytes(at..upto).await?;
        let out = b.slice((r.start - at) as usize..(r.end - at) as usize);
        self.cache = Some((at, b));
        Ok(out)
    }

    /// Sets the size: a shrink drops what lies past it (and the base's
    /// bytes there: growing again shows zeros); a grow adds zeros.
    pub async fn truncate(&mut self, size: u64) -> Result<(), UploadError> {
        self.check()?;
        let max = self.max_size;
        if size > max {
            return Err(UploadError::TooLarge { end: size, max });
        }
        if size < self.size {
            let cut = self
                .early
                .iter()
                .copied()
                .find(|n| self.layout.part_start(n + 1) > size);
            if let Some(n) = cut {
                return Err(self.refused(size, n));
            }
            let keep = self.layout.part_of(size).map(|(n, s)| (n, size - s));
            self.parts.retain(|n, e| match keep {
                Some((k, _)) if *n < k => true,
                Some((k, rel)) if *n == k => {
                    e.retain(|s, _| *s < rel);
                    if let Some((s, v)) = e.iter_mut().next_back() {
                        v.truncate((rel - s).min(v.len() as u64) as usize);
                    }
                    !e.is_empty()
                }
                _ => false,
            });
            self.dirty = self.parts.values().map(extents_len).sum();
            self.base_len = self.base_len.min(size);
            self.cache = None;
            self.seed_grant = None;
        }
        self.size = size;
        self.hold_memory().await
    }

    /// Stores the new version at the key; any failure aborts it and is
    /// returned (the object at the key is then what it was). Asks no
    /// memory of the budget, so a close always makes progress.
    pub async fn commit(mut self) -> Result<Finished, UploadError> {
        let r = self.try_commit().await;
        if r.is_err() {
            self.abort().await;
        }
        r
    }

    async fn try_commit(&mut self) -> Result<Finished, UploadError> {
        self.check()?;
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let size = self.size;
        if self.unchanged() {
            let b = self.base.as_ref().expect("unchanged has a base");
            return Ok(Finished {
                etag: b.etag.clone(),
                size,
                parts: 0,
                body: None,
            });
        }
        if self.early.is_empty() && size <= self.layout.part_size(1) {
            let body = if size == 0 {
                Bytes::new()
            } else {
                match self.rebuild(1).await {
                    Ok(b) => b,
                    Err(e) => return Err(self.fail(format!("reading the base: {e}"))),
                }
            };
            return match self.target.put_single(body).await {
                Ok(f) => Ok(f),
                Err(e) => Err(self.fail(e)),
            };
        }
        let last = self.layout.part_of(size - 1).map_or(MAX_PARTS, |(n, _)| n);
        for n in 1..=last {
            if self.early.contains(&n) {
                continue;
            }
            let r = self.part_range(n);
            if !self.parts.contains_key(&n) && r.end <= self.base_len {
                while self.in_flight.len() >= self.cfg.max_in_flight.max(1) {
                    self.reap_one().await?;
                }
                self.spawn_copy(n, r);
            } else {
                let body = match self.rebuild(n).await {
                    Ok(b) => b,
                    Err(e) => return Err(self.fail(format!("reading the base for part {n}: {e}"))),
                };
                self.parts.remove(&n);
                self.spawn_send(n, body, n < last).await?;
            }
            self.early.insert(n);
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        match self.target.complete_all(&self.sent, size).await {
            Ok(f) => {
                self.ended = true;
                Ok(f)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Stops every part and aborts the multipart upload, if one was created.
    pub async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if !self.ended {
            self.ended = true;
            self.target.abort_created().await;
        }
        self.parts.clear();
        self.dirty = 0;
        self.grant = None;
        if self.failed.is_none() {
            self.failed = Some("aborted".into());
        }
    }
}

#[cfg(test)]
mod tests;
