//! The multipart upload as the part tasks share it: created once (the
//! journal told first), each part sent, Complete with its outcome checked.

use super::budget::Grant;
use super::journal::Journal;
use super::{md5x, Finished, InFlight, Progress, SentPart, UploadConfig};
use crate::s3::{bare_etag, ObjectStore, PutOptions, S3Error};
use crate::s3::{hex, multipart_etag};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

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

/// CreateMultipartUploads tried when the outcome of one is unknown (the
/// connection broke after it was sent); with a journal only, whose reaper
/// aborts the upload an unknown outcome may have made.
const CREATE_ATTEMPTS: u32 = 3;

/// What the multipart upload's parts need: shared by the writer and a
/// held part sent early by the budget.
#[derive(Clone)]
pub(super) struct Target {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) key: Arc<str>,
    pub(super) opts: PutOptions,
    /// Created once, by whoever sends a part first.
    pub(super) upload_id: Arc<OnceCell<String>>,
    /// Held by a CreateMultipartUpload while it runs (in a task of its own,
    /// which no cancelled caller can cut short); the abort takes it to wait
    /// for a running Create and, once `aborting` is set, to start none.
    pub(super) creating: Arc<tokio::sync::Mutex<()>>,
    pub(super) aborting: Arc<std::sync::atomic::AtomicBool>,
    journal: Option<Arc<Journal>>,
    /// The journal entry of this upload, once written.
    entry: Arc<std::sync::OnceLock<u64>>,
    pub(super) progress: Arc<Progress>,
}

impl Target {
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        key: &str,
        opts: PutOptions,
        cfg: &UploadConfig,
    ) -> Self {
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
    pub(super) async fn upload_id(&self) -> Result<String, S3Error> {
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
    pub(super) async fn complete(
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
    pub(super) fn settled(&self) {
        if let (Some(j), Some(n)) = (&self.journal, self.entry.get()) {
            j.end(*n);
        }
    }

    /// The abort failed: the journal keeps the upload for the reaper.
    pub(super) fn unsettled(&self) {
        if let (Some(j), Some(n)) = (&self.journal, self.entry.get()) {
            j.doom(*n);
        }
    }

    /// Sends one part; its memory is given back when the request ends.
    /// `more`: more parts of this file follow soon, so its MD5 may wait a
    /// moment to be computed alongside theirs ([`md5x`]).
    pub(super) async fn send(
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

    /// Completes the upload with `sent` (every part, by number) and checks
    /// the object's ETag against the parts' MD5s where the server shows
    /// MD5 ETags; a completed object with the wrong ETag is deleted. The
    /// error says which request failed.
    pub(super) async fn complete_checked(
        &self,
        sent: &BTreeMap<u32, SentPart>,
        size: u64,
    ) -> Result<String, String> {
        let upload_id = self
            .upload_id()
            .await
            .map_err(|e| format!("CreateMultipartUpload: {e}"))?;
        let parts: Vec<(u32, String)> = sent.values().map(|p| (p.number, p.etag.clone())).collect();
        let md5s: Vec<[u8; 16]> = sent.values().map(|p| p.md5).collect();
        let expected = multipart_etag(&md5s);
        // Judged only when the server showed MD5 ETags for every part (a
        // copied part's ETag from a vendor or an encrypted source may be
        // something else).
        let verifiable = md5s.iter().all(|m| *m != [0; 16])
            && crate::s3::Sse::etag_is_md5(self.opts.sse.as_ref())
            && self.store.etags_are_md5()
            && sent.values().all(|p| bare_etag(&p.etag) == hex(&p.md5));
        let etag = self
            .complete(&upload_id, &parts, verifiable.then_some(&*expected), size)
            .await
            .map_err(|e| format!("CompleteMultipartUpload: {e}"))?;
        self.settled();
        let got = bare_etag(&etag);
        if verifiable && got != expected {
            if looks_like_multipart_etag(&got)
                && crate::s3::Sse::etag_is_md5(self.opts.sse.as_ref())
            {
                tracing::error!(key = %self.key, expected, got, "completed object has the wrong ETag; deleting it");
                let _ = self.store.delete_object(&self.key).await;
                return Err(format!(
                    "ETag mismatch after Complete: expected {expected}, got {got}"
                ));
            }
            tracing::info!(key = %self.key, etag = %got, "ETag format not judged (vendor or encryption)");
        }
        Ok(etag)
    }

    /// Stores `body` as the whole object in one PutObject (Content-MD5);
    /// the error says which step failed.
    pub(super) async fn put_single(&self, body: Bytes) -> Result<Finished, String> {
        let size = body.len() as u64;
        let md5 = md5x::md5_of_body(&body)
            .await
            .ok_or("PutObject: hashing the body failed")?;
        let etag = self
            .store
            .put_object(&self.key, body.clone(), Some(md5), &self.opts)
            .await
            .map_err(|e| format!("PutObject: {e}"))?;
        self.progress.bytes_sent.fetch_add(size, Ordering::Relaxed);
        Ok(Finished {
            etag,
            size,
            parts: 0,
            body: Some(body),
        })
    }

    /// [`Target::complete_checked`] with every part in `sent`, as the
    /// outcome of a close.
    pub(super) async fn complete_all(
        &self,
        sent: &BTreeMap<u32, SentPart>,
        size: u64,
    ) -> Result<Finished, String> {
        let etag = self.complete_checked(sent, size).await?;
        Ok(Finished {
            etag,
            size,
            parts: sent.len() as u32,
            body: None,
        })
    }

    /// Aborts the multipart upload if one was created: a Create still
    /// running (its caller was just aborted) ends first, so its ID is
    /// known, and none starts after this. Errors can only be logged (the
    /// journal keeps the upload for the reaper).
    pub(super) async fn abort_created(&self) {
        self.aborting.store(true, Ordering::Release);
        drop(self.creating.lock().await);
        if let Some(id) = self.upload_id.get() {
            let key = &self.key;
            match self.store.abort_multipart_upload(key, id).await {
                Ok(()) => {
                    tracing::info!(key = %key, upload_id = %id, "upload aborted");
                    self.settled();
                }
                Err(e) if e.is_not_found() => self.settled(),
                Err(e) => {
                    tracing::warn!(key = %key, upload_id = %id, error = %e, "abort failed; will try again (the journal keeps the upload)");
                    self.unsettled();
                }
            }
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
