//! A file open for writing, and the one state machine of its content.
//!
//! One [`OpenFile`] per inode, shared by every descriptor of it in this
//! mount (each open for writing joins it; reads of the inode go through
//! it while it lives). Its [`Content`] is in one of four states, and every
//! transition is a method here:
//!
//! ```text
//!            open (no O_TRUNC)             create, O_TRUNC, truncate to 0
//!   Stored(base) ──────── write ────────▶ Patching      Streaming ◀──────
//!        ▲  ▲                                 │               │
//!        │  └──────── commit (close, fsync) ──┴───────────────┘
//!        │                                    │               │
//!        └─ checkpoint: a write or read into a sent part no longer in
//!           memory, in a file this mount created: commit, then go on
//!   any ── a failed write, commit or refused checkpoint ──▶ Failed
//! ```
//!
//! - `Stored(base)`: the key holds the file's bytes (`base`, pinned by its
//!   ETag; none for a file not stored yet).
//! - `Streaming`: written from 0 in order into a new upload at the key,
//!   parts leaving as they fill (cp, rsync, tar: no extra copy).
//! - `Patching`: written anywhere, a new version over the base.
//! - `Failed`: nothing more is stored; every close reports it.
//!
//! A commit never leaves a mix: the key gets the whole new version or
//! keeps the old one. A file that replaces an object (opened without
//! O_CREAT of a new name) never gets a checkpoint at its key: a write that
//! would need one fails with EIO, and its close leaves the old object.

use super::*;
use crate::upload::patch::{Base, Patch};
use crate::upload::UploadError;

/// Where the bytes of a file open for writing are.
pub(super) enum Content {
    Stored(Option<Base>),
    Streaming(Upload),
    Patching(Patch),
    Failed(String),
}

impl Content {
    fn name(&self) -> &'static str {
        match self {
            Content::Stored(_) => "stored",
            Content::Streaming(_) => "streaming",
            Content::Patching(_) => "patching",
            Content::Failed(_) => "failed",
        }
    }
}

/// A file open for writing in this mount.
pub(super) struct OpenFile {
    pub(super) ino: u64,
    /// The key its commits store (a rename of the file moves it).
    pub(super) key: String,
    /// No object was at the key when writing began: checkpoints may store
    /// the bytes written so far there (a local filesystem shows a new
    /// file's bytes as they are written too).
    pub(super) fresh: bool,
    pub(super) content: Content,
    /// Descriptors open for writing.
    pub(super) handles: usize,
    /// The stored object's size (at open, or the last commit): what the
    /// file is again after a failed commit. None: nothing stored.
    stored_size: Option<u64>,
    /// Reads of the stored version, with read-ahead.
    pub(super) reader: Option<Reader>,
    /// The stored version's bytes when this mount just sent them in one
    /// PutObject (a small file's commit), held from the write budget: the
    /// next version over it needs no GET of them (sqlite commits often).
    base_body: Option<(bytes::Bytes, crate::upload::budget::Grant)>,
    /// Its last descriptor was released: no longer the inode's open file
    /// (an open that found it just before must start a new one).
    ended: bool,
}

pub(super) type SharedFile = Arc<tokio::sync::Mutex<OpenFile>>;

impl OpenFile {
    /// The file's size.
    pub(super) fn size(&self) -> u64 {
        match &self.content {
            Content::Stored(b) => b.as_ref().map_or(0, |b| b.size),
            Content::Streaming(u) => u.size(),
            Content::Patching(p) => p.size(),
            Content::Failed(_) => self.stored_size.unwrap_or(0),
        }
    }

    pub(super) fn failed(&self) -> Option<FsError> {
        match &self.content {
            Content::Failed(m) => Some(FsError::Io(format!("an earlier write failed: {m}"))),
            _ => None,
        }
    }
}

impl Fs {
    /// The open file of `ino`, if it is open for writing.
    pub(super) fn open_file(&self, ino: u64) -> Option<SharedFile> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .cloned()
    }

    /// Opens `ino` for writing as handle `fh`: joins the open file of the
    /// inode, or starts one (`trunc`: empty, streaming). The caller marked
    /// the inode's writer.
    pub(super) async fn join_file(&self, ino: u64, fh: u64, trunc: bool) -> FsResult<SharedFile> {
        loop {
            if let Some(f) = self.start_or_join(ino, fh, trunc).await? {
                return Ok(f);
            }
        }
    }

    /// [`Fs::join_file`] once: None when the open file it found ended
    /// meanwhile (its last release ran first).
    async fn start_or_join(&self, ino: u64, fh: u64, trunc: bool) -> FsResult<Option<SharedFile>> {
        if let Some(f) = self.open_file(ino) {
            return self.join_open(f, trunc).await;
        }
        let i = self.inode(ino)?;
        let fresh = i.local;
        let base = if fresh {
            None
        } else {
            let etag = match &i.etag {
                Some(e) => e.clone(),
                None => self.store.head_object(&i.key).await?.etag,
            };
            Some(Base {
                key: i.key.clone(),
                etag,
                size: i.size,
            })
        };
        let stored_size = base.as_ref().map(|b| b.size);
        let open = OpenFile {
            ino,
            key: i.key.clone(),
            fresh,
            content: Content::Stored(base),
            handles: 1,
            stored_size,
            reader: None,
            base_body: None,
            ended: false,
        };
        let file = Arc::new(tokio::sync::Mutex::new(open));
        let other = {
            let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            match files.get(&ino) {
                Some(o) => Some(o.clone()),
                None => {
                    files.insert(ino, file.clone());
                    None
                }
            }
        };
        if let Some(other) = other {
            // Another open won the race: join it (it holds the same base).
            return self.join_open(other, trunc).await;
        }
        if let Some(t) = self.table().get_mut(ino) {
            if t.writer.is_none() {
                t.writer = Some(fh);
            }
            if trunc {
                t.size = 0;
            }
        }
        if trunc {
            // Emptied once it is the inode's: an open that joined meanwhile
            // came first (its open returned before this one's).
            let mut g = file.lock().await;
            if let Err(e) = self.file_truncate(&mut g, 0).await {
                g.handles -= 1;
                return Err(e);
            }
        }
        Ok(Some(file))
    }

    /// One more descriptor of an open file (`trunc`: emptied); a refused
    /// truncation leaves the count as it was. None: it ended meanwhile.
    async fn join_open(&self, f: SharedFile, trunc: bool) -> FsResult<Option<SharedFile>> {
        let mut g = f.lock().await;
        if g.ended {
            return Ok(None);
        }
        if trunc {
            self.file_truncate(&mut g, 0).await?;
        }
        g.handles += 1;
        drop(g);
        Ok(Some(f))
    }

    /// The options a new version of the file is created with: what the
    /// stored object has (Content-Type, metadata), with the file's
    /// attributes over it; its mtime becomes the new Last-Modified.
    async fn version_options(&self, ino: u64) -> FsResult<PutOptions> {
        let i = self.inode(ino)?;
        let mut opts = match &i.stored {
            Some(m) => m.to_options(),
            None if i.local => return Ok(self.new_upload(i.key.clone(), ino).options().clone()),
            None => StoredMeta::of_head(&self.store.head_object(&i.key).await?).to_options(),
        };
        PosixMeta {
            mtime: None,
            ..posix_of(&i)
        }
        .apply(&mut opts.metadata, libc::S_IFREG);
        Ok(opts)
    }

    /// Makes the content take writes: a stored file starts a new version
    /// (an empty one streams; one with bytes is patched over them).
    async fn editable(&self, f: &mut OpenFile) -> FsResult<()> {
        if let Some(e) = f.failed() {
            return Err(e);
        }
        let Content::Stored(base) = &f.content else {
            return Ok(());
        };
        let next = match base {
            None => Content::Streaming(self.new_upload(f.key.clone(), f.ino)),
            Some(b) => {
                let opts = self.version_options(f.ino).await?;
                let (store, cfg) = (self.store.clone(), self.cfg.upload.clone());
                let mut p = Patch::new(store, &f.key, opts, cfg, Some(b.clone()), b.size);
                if let Some((body, grant)) = f.base_body.take() {
                    p.seed_base(body, grant);
                }
                Content::Patching(p)
            }
        };
        tracing::debug!(key = %f.key, to = next.name(), "writing begins");
        self.begin(f, next);
        Ok(())
    }

    /// The content starts being written (shown in `bucketfs status`).
    pub(super) fn begin(&self, f: &mut OpenFile, c: Content) {
        f.reader = None;
        f.base_body = None;
        f.content = c;
        match &f.content {
            Content::Streaming(u) => self.track(f.ino, &f.key, u.progress_handle()),
            Content::Patching(p) => self.track(f.ino, &f.key, p.progress_handle()),
            _ => {}
        }
    }

    /// The content failed: what it sent is aborted, and every later write
    /// and close of the file reports `e`.
    async fn doom(&self, f: &mut OpenFile, msg: String) {
        tracing::warn!(key = %f.key, error = %msg, "write failed: the file will not be stored");
        match std::mem::replace(&mut f.content, Content::Failed(msg)) {
            Content::Streaming(mut u) => u.abort().await,
            Content::Patching(mut p) => p.abort().await,
            _ => {}
        }
        self.untrack(f.ino);
    }

    /// A write or read needs bytes already sent and no longer in memory:
    /// a file this mount created stores what it has (a checkpoint) and
    /// goes on from there; any other fails (its old object stays).
    async fn checkpoint(&self, f: &mut OpenFile, offset: u64) -> FsResult<()> {
        if !f.fresh {
            let e = FsError::Io(format!(
                "offset {offset}: bytes already sent to the server and no longer in memory; a file replacing an existing object cannot store a checkpoint"
            ));
            tracing::warn!(key = %f.key, offset, "write or read into bytes already sent, in a file replacing an object: refused");
            self.doom(f, e.to_string()).await;
            return Err(e);
        }
        tracing::info!(key = %f.key, offset, size = f.size(), "bytes already sent are needed: storing a checkpoint of the new file");
        self.file_commit(f).await
    }

    /// Writes `data` at `offset`. Returns the file's new size.
    pub(super) async fn file_write(
        &self,
        f: &mut OpenFile,
        offset: u64,
        data: &[u8],
    ) -> FsResult<u64> {
        for attempt in 0..2 {
            self.editable(f).await?;
            let r = match &mut f.content {
                Content::Streaming(u) => u.write(offset, data).await,
                Content::Patching(p) => p.write(offset, data).await,
                _ => unreachable!("editable"),
            };
            match r {
                Ok(()) => return Ok(f.size()),
                Err(UploadError::IntoSentPart { .. }) if attempt == 0 => {
                    self.checkpoint(f, offset).await?
                }
                Err(e) => {
                    tracing::warn!(key = %f.key, offset, len = data.len(), error = %e, "write refused");
                    self.doom(f, e.to_string()).await;
                    return Err(e.into());
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Reads what the file holds now, written bytes included.
    pub(super) async fn file_read(
        &self,
        f: &mut OpenFile,
        offset: u64,
        len: u32,
    ) -> FsResult<bytes::Bytes> {
        for attempt in 0..2 {
            let r = match &mut f.content {
                Content::Failed(_) => return Err(f.failed().expect("failed")),
                Content::Stored(None) => return Ok(bytes::Bytes::new()),
                Content::Stored(Some(b)) => {
                    if let Some((body, _)) = &f.base_body {
                        let at = (offset as usize).min(body.len());
                        let end = (at + len as usize).min(body.len());
                        return Ok(body.slice(at..end));
                    }
                    let b = b.clone();
                    if f.reader.is_none() {
                        f.reader = Some(self.base_reader(&b));
                    }
                    let r = f.reader.as_mut().expect("set above");
                    return r
                        .read(offset, len)
                        .await
                        .map_err(failed(&b.key, "read of the stored version"));
                }
                Content::Streaming(u) => u.read_mem(offset, len),
                Content::Patching(p) => {
                    // The base through a reader with read-ahead (rsync
                    // --inplace reads the whole old file as it writes).
                    if f.reader.is_none() {
                        f.reader = p.base().map(|b| self.base_reader(b));
                    }
                    p.read_via(offset, len, f.reader.as_mut()).await
                }
            };
            match r {
                Ok(b) => return Ok(b),
                Err(UploadError::IntoSentPart { .. }) if attempt == 0 => {
                    self.checkpoint(f, offset).await?
                }
                Err(e) => {
                    tracing::warn!(key = %f.key, offset, len, error = %e, "read of a file being written failed");
                    return Err(e.into());
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// A reader of `b`, pinned to its version, with read-ahead.
    fn base_reader(&self, b: &Base) -> Reader {
        let r = Reader::new(
            self.store.clone(),
            b.key.clone(),
            b.size,
            self.cfg.max_readahead,
            self.cfg.read_budget.clone(),
        );
        r.pin_to(&b.etag);
        r
    }

    /// Sets the file's size (ftruncate, O_TRUNC). To 0, a new version
    /// starts empty; a refused one dooms the file, as a refused write does.
    pub(super) async fn file_truncate(&self, f: &mut OpenFile, size: u64) -> FsResult<()> {
        if let Some(e) = f.failed() {
            return Err(e);
        }
        if size == 0 {
            match std::mem::replace(&mut f.content, Content::Stored(None)) {
                Content::Streaming(mut u) => u.abort().await,
                Content::Patching(mut p) => p.abort().await,
                _ => {}
            }
            f.reader = None;
            return self.editable(f).await;
        }
        if size == f.size() {
            return Ok(());
        }
        for attempt in 0..2 {
            self.editable(f).await?;
            let r = match &mut f.content {
                Content::Streaming(u) => u.truncate(size).await,
                Content::Patching(p) => p.truncate(size).await,
                _ => unreachable!("editable"),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(UploadError::IntoSentPart { .. }) if attempt == 0 => {
                    self.checkpoint(f, size).await?
                }
                Err(e) => {
                    tracing::warn!(key = %f.key, size, error = %e, "truncate refused");
                    self.doom(f, e.to_string()).await;
                    return Err(e.into());
                }
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Makes the key hold exactly what the file holds (close, fsync, a
    /// checkpoint); writing may go on after. The object is durable when
    /// this returns Ok; on failure the key keeps what it had.
    pub(super) async fn file_commit(&self, f: &mut OpenFile) -> FsResult<()> {
        if let Some(e) = f.failed() {
            return Err(e);
        }
        let (unlinked, rebound) = {
            let t = self.table();
            match t.get(f.ino) {
                Some(i) => (
                    i.unlinked,
                    t.child(i.parent, &i.name).map(|c| c.ino) != Some(f.ino),
                ),
                None => (true, true),
            }
        };
        if unlinked && !matches!(f.content, Content::Stored(_)) {
            // Unlinked: nothing is stored (the descriptors' later writes
            // go nowhere either).
            match std::mem::replace(&mut f.content, Content::Stored(None)) {
                Content::Streaming(mut u) => u.abort().await,
                Content::Patching(mut p) => p.abort().await,
                _ => {}
            }
            self.untrack(f.ino);
            return Ok(());
        }
        if rebound && !unlinked {
            tracing::warn!(key = %f.key, "the file's name now shows a directory another client made: storing the file at its key all the same");
        }
        // Attributes set while writing (tar sets them before close) go into
        // the new version when its options are not fixed yet.
        let now_posix = self.table().get(f.ino).map(posix_of).unwrap_or_default();
        let (result, sent) = match std::mem::replace(&mut f.content, Content::Stored(None)) {
            Content::Stored(b) => {
                f.content = Content::Stored(b);
                return Ok(());
            }
            Content::Failed(_) => unreachable!("checked above"),
            Content::Streaming(mut u) => {
                if !u.is_multipart() {
                    now_posix.apply(&mut u.options_mut().metadata, libc::S_IFREG);
                }
                let sent = u.options().clone();
                (u.finish().await, sent)
            }
            Content::Patching(mut p) => {
                if !p.is_multipart() {
                    now_posix.apply(&mut p.options_mut().metadata, libc::S_IFREG);
                }
                let sent = p.options().clone();
                (p.commit().await, sent)
            }
        };
        self.untrack(f.ino);
        let fin = match result {
            Ok(fin) => fin,
            Err(e) => {
                tracing::error!(key = %f.key, error = %e, "close failed: nothing was stored at the key");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                f.content = Content::Failed(e.to_string());
                // The stored object is still what it was: so is the file.
                if let (Some(n), Some(i)) = (f.stored_size, self.table().get_mut(f.ino)) {
                    i.size = n;
                }
                return Err(e.into());
            }
        };
        if self.unlinked_meanwhile(f).await {
            tracing::info!(key = %f.key, size = fin.size, "stored, but unlinked during the close: deleted");
            return Ok(());
        }
        tracing::info!(key = %f.key, size = fin.size, parts = fin.parts, etag = %fin.etag, "stored");
        self.stats.files_stored.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes_stored
            .fetch_add(fin.size, Ordering::Relaxed);
        f.stored_size = Some(fin.size);
        f.reader = None;
        f.base_body = fin.body.and_then(|b| {
            let g = self.cfg.upload.budget.try_grant(b.len() as u64)?;
            Some((b, g))
        });
        f.content = Content::Stored(Some(Base {
            key: f.key.clone(),
            etag: fin.etag.clone(),
            size: fin.size,
        }));
        if let Some(i) = self.table().get_mut(f.ino) {
            i.size = fin.size;
            i.etag = Some(fin.etag.clone());
            i.local = false;
            i.commits += 1;
            i.valid_until = Instant::now() + self.cfg.metadata_ttl;
            i.version = Some(Version::of(fin.etag));
            i.stored = Some(StoredMeta::of_options(&sent));
            // Changed while the upload ran, or after its creation: written
            // when the last descriptor closes.
            if posix_of(i).attrs() != PosixMeta::parse(&sent.metadata).attrs() {
                i.attrs_pending = true;
            }
        }
        Ok(())
    }

    /// After a commit stored the file: whether it was unlinked while the
    /// commit was on its way. Then the object just stored is deleted again,
    /// unless the name was given to a new file meanwhile (its own close
    /// will replace the object). A failed delete is logged.
    async fn unlinked_meanwhile(&self, f: &mut OpenFile) -> bool {
        let gone = {
            let t = self.table();
            match t.get(f.ino) {
                Some(i) if i.unlinked => Some(t.child(i.parent, &i.name).is_none()),
                _ => None,
            }
        };
        match gone {
            None => false,
            Some(false) => true,
            Some(true) => {
                if let Err(e) = self.store.delete_object(&f.key).await {
                    tracing::error!(key = %f.key, error = %e, "unlinked during its close, and the stored object could not be deleted");
                }
                true
            }
        }
    }

    /// A descriptor open for writing is released; the last one stores what
    /// no close stored (errors can only be logged) and ends the open file.
    pub(super) async fn file_release(&self, f: &SharedFile) {
        let mut g = f.lock().await;
        g.handles = g.handles.saturating_sub(1);
        if g.handles > 0 {
            return;
        }
        if matches!(g.content, Content::Streaming(_) | Content::Patching(_)) {
            if let Err(e) = self.file_commit(&mut g).await {
                tracing::error!(key = %g.key, error = %e, "storing the file at its last release failed");
            }
        }
        self.untrack(g.ino);
        g.ended = true;
        let ino = g.ino;
        let stored = matches!(g.content, Content::Stored(Some(_)));
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
        let mut t = self.table();
        let (drop_name, pending) = match t.get_mut(ino) {
            Some(i) => {
                i.writer = None;
                // A file that never reached the bucket disappears.
                (
                    (i.local && !stored).then(|| (i.parent, i.name.clone())),
                    i.attrs_pending,
                )
            }
            None => (None, false),
        };
        if let Some((p, n)) = drop_name {
            if t.child(p, &n).map(|c| c.ino) == Some(ino) {
                t.remove_child(p, &n);
            }
        }
        drop(t);
        if pending {
            self.persist_later(ino);
        }
    }

    /// Shutdown: the content still being written is aborted (nothing is
    /// stored); true if there was some.
    pub(super) async fn file_abort(&self, f: &mut OpenFile) -> bool {
        let written = f.size();
        match std::mem::replace(
            &mut f.content,
            Content::Failed("the mount was shut down".into()),
        ) {
            Content::Streaming(mut u) => u.abort().await,
            Content::Patching(mut p) => p.abort().await,
            other => {
                f.content = other;
                return false;
            }
        }
        tracing::warn!(key = %f.key, written, "shutdown: file still open for writing; its upload is aborted and nothing is stored");
        self.untrack(f.ino);
        true
    }
}

#[cfg(test)]
mod tests;
