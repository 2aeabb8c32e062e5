//! The write path: one [`Upload`] per file open for writing. Bytes fill a
//! part buffer; each full part leaves as UploadPart (MD5 computed once, when
//! it is sent) while the writer goes on, a bounded number at a time. Part 1 is
//! held in memory until close, so writers that patch a header near the start
//! still work. `finish` sends what is left and completes the upload — or a
//! single PutObject when the file is at most one part; any failure aborts.
//!
//! Knows the [`ObjectStore`] trait, never inodes or FUSE.

pub mod budget;
pub mod schedule;

use crate::s3::{bare_etag, hex, md5_of, multipart_etag, ObjectStore, PutOptions, S3Error};
use bytes::{Bytes, BytesMut};
use schedule::Schedule;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::task::JoinSet;

/// How an upload behaves; shared by every file of a mount.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    pub schedule: Schedule,
    /// Parts of one file uploading at once.
    pub max_in_flight: usize,
    /// Keep part 1 in memory until close so it can be rewritten.
    pub hold_first_part: bool,
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
        "file would reach {end} bytes; the largest file with this part schedule is {max} bytes"
    )]
    TooLarge { end: u64, max: u64 },
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

/// One file being written.
pub struct Upload {
    store: Arc<dyn ObjectStore>,
    key: String,
    opts: PutOptions,
    cfg: UploadConfig,
    /// Part 1, full, held until close.
    held: Option<BytesMut>,
    /// The part being filled.
    tail: BytesMut,
    tail_no: u32,
    tail_start: u64,
    upload_id: Option<String>,
    in_flight: JoinSet<Result<SentPart, S3Error>>,
    sent: BTreeMap<u32, SentPart>,
    failed: Option<String>,
}

impl Upload {
    /// Starts an empty file at `key`. Nothing is sent until a part fills or the file closes.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: String,
        opts: PutOptions,
        cfg: UploadConfig,
    ) -> Self {
        Upload {
            store,
            key,
            opts,
            cfg,
            held: None,
            tail: BytesMut::new(),
            tail_no: 1,
            tail_start: 0,
            upload_id: None,
            in_flight: JoinSet::new(),
            sent: BTreeMap::new(),
            failed: None,
        }
    }

    /// The key this upload writes.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Options (content type, metadata) the object will be created with.
    pub fn options_mut(&mut self) -> &mut PutOptions {
        &mut self.opts
    }

    /// Bytes written so far (the file size).
    pub fn size(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// Parts confirmed by the server, and parts on their way.
    pub fn progress(&self) -> (usize, usize) {
        (self.sent.len(), self.in_flight.len())
    }

    /// The multipart upload ID, once created.
    pub fn upload_id(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    /// Whether an earlier failure doomed this upload.
    pub fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn part1_len(&self) -> u64 {
        self.cfg.schedule.part_size(1)
    }

    /// Whether bytes [start, end) (all below the current size) are still in memory.
    fn check_rewritable(&self, start: u64, end: u64) -> Result<(), UploadError> {
        if start >= self.tail_start {
            return Ok(());
        }
        let p1 = self.part1_len();
        // Part 1 is rewritable when held; the bytes after it must be in the tail.
        if self.held.is_some() && (end <= p1 || self.tail_start == p1) {
            return Ok(());
        }
        let (part, _) = self.cfg.schedule.part_of(start).unwrap_or((0, 0));
        Err(UploadError::IntoSentPart {
            offset: start,
            part,
            size: self.size(),
        })
    }

    /// Writes `data` at `offset`: appends, rewrites bytes still in memory, or
    /// zero-fills a forward seek. A write into a part already sent fails.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), UploadError> {
        if let Some(f) = &self.failed {
            return Err(UploadError::Failed(f.clone()));
        }
        let end = offset + data.len() as u64;
        let max = self.cfg.schedule.max_file_size();
        if end > max {
            return Err(UploadError::TooLarge { end, max });
        }
        let size = self.size();
        if offset < size {
            self.check_rewritable(offset, end.min(size))?;
        }
        if offset > size {
            self.append_zeros(offset - size).await?;
        }
        let mut pos = offset;
        let mut d = data;
        while pos < self.size() && !d.is_empty() {
            let (buf, base) = if pos >= self.tail_start {
                (&mut self.tail, self.tail_start)
            } else {
                (self.held.as_mut().expect("checked rewritable"), 0)
            };
            let idx = (pos - base) as usize;
            let n = d.len().min(buf.len() - idx);
            buf[idx..idx + n].copy_from_slice(&d[..n]);
            pos += n as u64;
            d = &d[n..];
        }
        self.append(d).await
    }

    /// Sets the file size: grows with zeros, or shrinks while the cut bytes are still in memory.
    pub async fn truncate(&mut self, new_size: u64) -> Result<(), UploadError> {
        let size = self.size();
        if new_size >= size {
            return self.append_zeros(new_size - size).await;
        }
        if new_size >= self.tail_start {
            self.tail.truncate((new_size - self.tail_start) as usize);
            return Ok(());
        }
        if self.upload_id.is_none() && self.held.is_some() && self.tail_start == self.part1_len() {
            let mut first = self.held.take().expect("held");
            first.truncate(new_size as usize);
            self.tail = first;
            self.tail_no = 1;
            self.tail_start = 0;
            return Ok(());
        }
        self.check_rewritable(new_size, size)
    }

    async fn append(&mut self, mut d: &[u8]) -> Result<(), UploadError> {
        while !d.is_empty() {
            let room = self.cfg.schedule.part_size(self.tail_no) as usize - self.tail.len();
            let n = room.min(d.len());
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
        if self.tail_no == 1 && self.cfg.hold_first_part {
            self.held = Some(full);
        } else {
            self.send_part(self.tail_no, full.freeze()).await?;
        }
        self.tail_no += 1;
        self.tail_start += part_size;
        Ok(())
    }

    fn fail(&mut self, e: impl std::fmt::Display) -> UploadError {
        let msg = e.to_string();
        tracing::warn!(key = %self.key, error = %msg, "upload failed");
        if self.failed.is_none() {
            self.failed = Some(msg.clone());
        }
        UploadError::Failed(msg)
    }

    async fn ensure_upload(&mut self) -> Result<String, UploadError> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        match self
            .store
            .create_multipart_upload(&self.key, &self.opts)
            .await
        {
            Ok(id) => {
                tracing::debug!(key = %self.key, upload_id = %id, "multipart upload created");
                self.upload_id = Some(id.clone());
                Ok(id)
            }
            Err(e) => Err(self.fail(format!("CreateMultipartUpload: {e}"))),
        }
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

    async fn send_part(&mut self, number: u32, body: Bytes) -> Result<(), UploadError> {
        let upload_id = self.ensure_upload().await?;
        while self.in_flight.len() >= self.cfg.max_in_flight.max(1) {
            self.reap_one().await?;
        }
        let (store, key) = (self.store.clone(), self.key.clone());
        self.in_flight.spawn(async move {
            let md5 = md5_of(&body);
            let etag = store
                .upload_part(&key, &upload_id, number, body, md5)
                .await
                .map_err(|e| S3Error::Malformed {
                    operation: "UploadPart",
                    detail: format!("part {number}: {e}"),
                })?;
            Ok(SentPart { number, etag, md5 })
        });
        Ok(())
    }

    /// Sends what is left and makes the object durable: one PutObject for a
    /// file of at most one part, else the last parts and CompleteMultipartUpload
    /// (its ETag checked). Any failure aborts the upload and is returned.
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
        let size = self.size();
        if self.upload_id.is_none() && (self.held.is_none() || self.tail.is_empty()) {
            let body = self
                .held
                .take()
                .unwrap_or_else(|| std::mem::take(&mut self.tail));
            let body = body.freeze();
            let md5 = md5_of(&body);
            return match self
                .store
                .put_object(&self.key, body, Some(md5), &self.opts)
                .await
            {
                Ok(etag) => Ok(Finished {
                    etag,
                    size,
                    parts: 0,
                }),
                Err(e) => Err(self.fail(format!("PutObject: {e}"))),
            };
        }
        if let Some(first) = self.held.take() {
            self.send_part(1, first.freeze()).await?;
        }
        if !self.tail.is_empty() {
            let last = std::mem::take(&mut self.tail).freeze();
            self.send_part(self.tail_no, last).await?;
        }
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let upload_id = self.ensure_upload().await?;
        let parts: Vec<(u32, String)> = self
            .sent
            .values()
            .map(|p| (p.number, p.etag.clone()))
            .collect();
        let md5s: Vec<[u8; 16]> = self.sent.values().map(|p| p.md5).collect();
        let etag = match self
            .store
            .complete_multipart_upload(&self.key, &upload_id, &parts)
            .await
        {
            Ok(etag) => etag,
            Err(e) => return Err(self.fail(format!("CompleteMultipartUpload: {e}"))),
        };
        // The upload is gone on the server now: nothing left to abort.
        self.upload_id = None;
        let expected = multipart_etag(&md5s);
        let got = bare_etag(&etag);
        if got != expected {
            if looks_like_multipart_etag(&got)
                && crate::s3::Sse::etag_is_md5(self.opts.sse.as_ref())
            {
                tracing::error!(key = %self.key, expected, got, "completed object has the wrong ETag; deleting it");
                let _ = self.store.delete_object(&self.key).await;
                return Err(self.fail(format!(
                    "ETag mismatch after Complete: expected {expected}, got {got}"
                )));
            }
            tracing::info!(key = %self.key, etag = %got, "ETag format not judged (vendor or encryption)");
        }
        Ok(Finished {
            etag,
            size,
            parts: parts.len() as u32,
        })
    }

    /// Stops everything and aborts the multipart upload, if one was created.
    /// Errors can only be logged (the orphan shows in `bucketfs uploads list`).
    pub async fn abort(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            match self.store.abort_multipart_upload(&self.key, &id).await {
                Ok(()) => tracing::info!(key = %self.key, upload_id = %id, "upload aborted"),
                Err(e) => {
                    tracing::warn!(key = %self.key, upload_id = %id, error = %e, "abort failed; the upload is left on the server")
                }
            }
        }
        self.held = None;
        self.tail = BytesMut::new();
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
