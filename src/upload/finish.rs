//! Closing a file: the last parts and Complete (or one PutObject), a
//! server-side copy's CopyObject or UploadPartCopy ranges, an append's
//! copied first parts, and the abort when anything fails.

use super::held::HeldState;
use super::{Finished, Upload, UploadError};
use crate::s3::rules::MAX_PARTS;
use crate::s3::{S3Error, Source};
use bytes::BytesMut;
use tokio::task::JoinSet;

/// Smallest part of a multipart server-side copy.
const COPY_PART: u64 = 512 * 1024 * 1024;

impl Upload {
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
        let single = match &first {
            None => !created,
            Some(HeldState::Held(..)) => !created && self.tail.is_empty(),
            Some(_) => false,
        };
        if single {
            let body = match first {
                Some(HeldState::Held(b, _)) => b,
                _ => std::mem::take(&mut self.tail),
            };
            return match self.target.put_single(body.freeze()).await {
                Ok(f) => Ok(f),
                Err(e) => Err(self.fail(e)),
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
        match self.target.complete_all(&self.sent, size).await {
            Ok(f) => {
                // The upload is gone on the server now: nothing left to abort.
                self.ended = true;
                Ok(f)
            }
            Err(e) => Err(self.fail(e)),
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
                    body: None,
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
                    body: None,
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
        if !self.ended {
            self.ended = true;
            self.target.abort_created().await;
        }
        self.tail = BytesMut::new();
        self.tail_grant = None;
        if self.failed.is_none() {
            self.failed = Some("aborted".into());
        }
    }
}
