//! Files' data: create, open, read, write, and the close that stores a
//! file (flush, fsync, release).

use super::*;

/// A failed read, logged with the handle and range, as the kernel gets it.
fn read_failed(fh: u64, offset: u64, size: u32, e: crate::s3::S3Error) -> FsError {
    tracing::warn!(fh, offset, size, error = %e, "read failed");
    FsError::from(e)
}

impl Fs {
    /// An upload that appends to the stored object of `i` (`>>`, `rsync
    /// --append`): from 5 MiB on, the existing bytes become the first parts
    /// by UploadPartCopy (the server copies them); a smaller object is read
    /// and re-sent. The object keeps its Content-Type and metadata; the old
    /// object stays until the new one completes.
    async fn append_upload(&self, i: &Inode) -> FsResult<Upload> {
        let stored = match &i.stored {
            Some(m) => m.clone(),
            None => {
                let h = self.store.head_object(&i.key).await?;
                if h.size != i.size {
                    return Err(FsError::Io(format!(
                        "{} changed on the server ({} bytes, {} expected)",
                        i.key, h.size, i.size
                    )));
                }
                StoredMeta::of_head(&h)
            }
        };
        let mut opts = stored.to_options();
        // The content changes: Last-Modified becomes the mtime.
        PosixMeta {
            mtime: None,
            ..posix_of(i)
        }
        .apply(&mut opts.metadata, libc::S_IFREG);
        let cfg = self.cfg.upload.clone();
        if i.size >= MIN_PART_SIZE {
            return Ok(Upload::new_append(
                self.store.clone(),
                i.key.clone(),
                opts,
                cfg,
                i.size,
            ));
        }
        let g = self.store.get_object(Source::key(&i.key), None).await?;
        if g.body.len() as u64 != i.size {
            return Err(FsError::Io(format!(
                "{} changed on the server ({} bytes, {} expected)",
                i.key,
                g.body.len(),
                i.size
            )));
        }
        let mut u = Upload::new(self.store.clone(), i.key.clone(), opts, cfg);
        u.write(0, &g.body).await?;
        Ok(u)
    }

    /// A new upload of `key` for inode `ino`, created with its attributes.
    pub(super) fn new_upload(&self, key: String, ino: u64) -> Upload {
        // S3's own default when the name says nothing, sent rather than
        // left to the server: SeaweedFS sniffs the bytes instead, and a
        // sniffed type would stick through rsync's rename to the real name.
        let mut opts = PutOptions {
            content_type: content_type_of(&key).or_else(|| Some(GENERIC_CONTENT_TYPE.into())),
            ..PutOptions::default()
        };
        if let Some(i) = self.table().get(ino) {
            posix_of(i).write(&mut opts.metadata, libc::S_IFREG);
        }
        Upload::new(self.store.clone(), key, opts, self.cfg.upload.clone())
    }

    /// Creates a file: it exists in this mount at once and in the bucket at close.
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        pid: u32,
    ) -> FsResult<(Attr, u64)> {
        self.writable()?;
        self.not_closing()?;
        let name = check_name(name)?;
        let pkey = self.dir_key(parent)?;
        let key = format!("{pkey}{name}");
        if key.len() > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        if let Some(c) = self.table().child(parent, name) {
            if c.writer.is_some() {
                return Err(FsError::Busy("file is being written"));
            }
            if c.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let (ino, attr) = {
            let mut t = self.table();
            if t.renaming_over(&key) {
                return Err(FsError::Busy("its directory is being renamed"));
            }
            let ino = t.upsert_child(parent, name, Kind::File, |i| {
                i.size = 0;
                i.mtime = now;
                i.ctime = now;
                i.perm = Some((mode & 0o7777) as u16);
                i.writer = Some(fh);
                i.local = true;
                i.etag = None;
            });
            (ino, self.attr_of(t.get(ino).expect("inserted")))
        };
        self.insert_handle(
            fh,
            Handle::Write(Box::new(WriteHandle {
                fh,
                ino,
                key: key.clone(),
                opener_tgid: tgid_of(pid).or(Some(pid)),
                upload: Some(self.new_upload(key, ino)),
                state: WriteState::Open,
                stored_size: 0,
                writer_owner: None,
            })),
        );
        Ok((attr, fh))
    }

    /// Opens a file. Reading streams the object; writing replaces it at close
    /// (with O_TRUNC at once, without O_TRUNC only once a write at offset 0 comes).
    pub async fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<u64> {
        self.not_closing()?;
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let acc = flags & libc::O_ACCMODE;
        if acc == libc::O_RDONLY {
            if inode.writer.is_some() || inode.local {
                return Err(FsError::Busy("file is being written through this mount"));
            }
            let mut r = Reader::new(
                self.store.clone(),
                inode.key.clone(),
                inode.size,
                self.cfg.max_readahead,
                self.cfg.read_budget.clone(),
            );
            r.ino = ino;
            if let Some(i) = self.table().get_mut(ino) {
                i.readers += 1;
            }
            return Ok(self.new_fh(Handle::Read(r)));
        }
        self.writable()?;
        if inode.writer.is_some() {
            return Err(FsError::Busy("file is already open for writing"));
        }
        // No attribute write starts while a writer holds the file.
        self.settled(ino, |_| ()).await?;
        let trunc = flags & libc::O_TRUNC != 0 || inode.size == 0;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            // Marked a writer before anything else, so that a directory
            // rename either sees it or is seen here.
            let mut t = self.table();
            if t.renaming_over(&inode.key) {
                return Err(FsError::Busy("its directory is being renamed"));
            }
            if let Some(i) = t.get_mut(ino) {
                i.writer = Some(fh);
            }
        }
        self.insert_handle(
            fh,
            Handle::Write(Box::new(WriteHandle {
                fh,
                ino,
                key: inode.key.clone(),
                opener_tgid: tgid_of(pid).or(Some(pid)),
                upload: trunc.then(|| self.new_upload(inode.key.clone(), ino)),
                state: WriteState::Open,
                stored_size: inode.size,
                writer_owner: None,
            })),
        );
        if trunc {
            if let Some(i) = self.table().get_mut(ino) {
                i.size = 0;
            }
        }
        Ok(fh)
    }

    /// Reads from a file opened for reading.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<bytes::Bytes> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        match &mut *g {
            Handle::Read(r) => r
                .read(offset, size)
                .await
                .map_err(|e| read_failed(fh, offset, size, e)),
            Handle::Write(_) => Err(FsError::BadHandle),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// A read answered on the calling thread from bytes already fetched;
    /// `None` when it must wait for the server (or the handle is busy).
    /// Spawns read-ahead GETs: call it inside the runtime.
    pub fn read_ready(&self, fh: u64, offset: u64, size: u32) -> Option<FsResult<bytes::Bytes>> {
        let h = self.handle(fh).ok()?;
        let mut g = h.try_lock().ok()?;
        let Handle::Read(r) = &mut *g else {
            return None;
        };
        Some(
            r.read_ready(offset, size)?
                .map_err(|e| read_failed(fh, offset, size, e)),
        )
    }

    /// A write by a process without CAP_FSETID: clears the set-user-ID
    /// bit, and the set-group-ID bit when group execution is on, as local
    /// filesystems do (Linux's rule), through the same path as a chmod.
    /// True when a bit was cleared.
    pub async fn kill_set_id_bits(&self, ino: u64) -> FsResult<bool> {
        let perm = u32::from(self.getattr(ino)?.perm);
        let mut kill = 0;
        if perm & libc::S_ISUID != 0 {
            kill |= libc::S_ISUID;
        }
        let sgid_gx = libc::S_ISGID | libc::S_IXGRP;
        if perm & sgid_gx == sgid_gx {
            kill |= libc::S_ISGID;
        }
        if kill == 0 {
            return Ok(false);
        }
        let mode = Some(perm & !kill);
        self.setattr(
            ino,
            None,
            SetAttr {
                mode,
                ..SetAttr::default()
            },
        )
        .await
        .map(|_| true)
    }

    /// Writes into a file being uploaded. `owner`: the writer's descriptor
    /// table, when the kernel names it (direct-I/O writes do).
    pub async fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        owner: Option<u64>,
    ) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        let Handle::Write(w) = &mut *g else {
            return Err(FsError::BadHandle);
        };
        if w.writer_owner.is_none() {
            w.writer_owner = owner;
        }
        if w.state == WriteState::Done && offset == 0 && w.upload.is_none() {
            // A shell redirection (`echo hi > f`) opens the file, dup2()s
            // the descriptor and closes the original: that close completed
            // the (empty) file. Writing from the start again replaces it.
            // Only an empty one: a file with bytes (completed by fsync, or
            // by the close of a dup) would lose every byte not written
            // again, so such a write fails below instead.
            let mut t = self.table();
            match t.get_mut(w.ino) {
                Some(i) if (i.writer.is_none() || i.writer == Some(w.fh)) && i.size == 0 => {
                    i.writer = Some(w.fh);
                    w.state = WriteState::Open;
                    tracing::debug!(key = %w.key, "write after a close on the same handle: replacing the object");
                }
                _ => {}
            }
        }
        if w.state != WriteState::Open {
            tracing::warn!(key = %w.key, offset, "write after the file was completed or failed");
            return Err(FsError::Io("file already completed or failed".into()));
        }
        if w.upload.is_none() {
            let existing = self.inode(w.ino)?;
            if offset == 0 {
                w.upload = Some(self.new_upload(w.key.clone(), w.ino));
            } else if offset == existing.size {
                w.upload = Some(self.append_upload(&existing).await.inspect_err(|e| {
                    tracing::warn!(key = %w.key, error = %e, "append refused");
                })?);
            } else {
                tracing::warn!(key = %w.key, offset, size = existing.size, "write into an existing object neither at 0 nor at its end");
                return Err(FsError::Invalid(format!(
                    "write at {offset} into existing object of {} bytes",
                    existing.size
                )));
            }
        }
        let u = w.upload.as_mut().expect("set above");
        self.track(w.fh, &w.key, u);
        if let Err(e) = u.write(offset, data).await {
            tracing::warn!(key = %w.key, offset, len = data.len(), size = u.size(), error = %e, "write refused");
            // A refused write dooms the file (the upload says why at close).
            w.state = WriteState::Failed;
            return Err(e.into());
        }
        let size = u.size();
        if let Some(i) = self.table().get_mut(w.ino) {
            i.size = size;
            i.mtime = SystemTime::now();
            i.mtime_set = false;
        }
        Ok(data.len() as u32)
    }

    /// copy_file_range from a stored file into a file being written (GNU cp
    /// tries it first): recorded as a server-side copy made at close
    /// (CopyObject, or UploadPartCopy over 5 GiB), so no data passes through
    /// this machine. Anything else gets EOPNOTSUPP, and the kernel or cp
    /// copies the bytes through read and write instead. Answers at most
    /// u32::MAX bytes (the reply's limit); cp asks again for the rest.
    pub async fn copy_file_range(
        &self,
        ino_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        let src = self.inode(ino_in)?;
        if src.kind != Kind::File || src.local || src.writer.is_some() {
            return Err(FsError::NotSupported("copy from a file not stored yet"));
        }
        if offset_in >= src.size {
            return Ok(0);
        }
        let n = len.min(src.size - offset_in).min(u32::MAX as u64 & !0xfff);
        let h = self.handle(fh_out)?;
        let mut g = h.lock().await;
        let Handle::Write(w) = &mut *g else {
            return Err(FsError::BadHandle);
        };
        if w.state != WriteState::Open {
            return Err(FsError::Io("file already completed or failed".into()));
        }
        if w.upload.is_none() && offset_out == 0 {
            w.upload = Some(self.new_upload(w.key.clone(), w.ino));
        }
        let Some(u) = w.upload.as_mut() else {
            return Err(FsError::NotSupported(
                "copy into the middle of an existing object",
            ));
        };
        if !u.copy_range(&src.key, offset_in, offset_out, n) {
            return Err(FsError::NotSupported("server-side copy of this range"));
        }
        tracing::debug!(from = %src.key, to = %w.key, offset_in, n, "server-side copy recorded");
        let size = u.size();
        if let Some(i) = self.table().get_mut(w.ino) {
            i.size = size;
            i.mtime = SystemTime::now();
            i.mtime_set = false;
        }
        Ok(n as u32)
    }

    /// Completes the upload of a write handle; the object is durable when this returns Ok.
    async fn complete(&self, w: &mut WriteHandle) -> FsResult<()> {
        let Some(upload) = w.upload.take() else {
            // Opened for writing but never written: nothing changes.
            return Ok(());
        };
        let (unlinked, rebound) = {
            let t = self.table();
            match t.get(w.ino) {
                Some(i) => (
                    i.unlinked,
                    t.child(i.parent, &i.name).map(|c| c.ino) != Some(w.ino),
                ),
                None => (true, true),
            }
        };
        if rebound && !unlinked {
            tracing::warn!(key = %w.key, "the file's name now shows a directory another client made: storing the file at its key all the same");
        }
        if unlinked {
            let mut u = upload;
            u.abort().await;
            w.state = WriteState::Done;
            return Ok(());
        }
        // Attributes set while writing (tar sets them before close) go into
        // the PutObject; a multipart upload was created with the ones known
        // at its first part, and later changes are written after it.
        let mut upload = upload;
        let now_posix = self.table().get(w.ino).map(posix_of).unwrap_or_default();
        if !upload.is_multipart() {
            now_posix.apply(&mut upload.options_mut().metadata, libc::S_IFREG);
        }
        let sent = upload.options().clone();
        match upload.finish().await {
            Ok(f) if self.unlinked_meanwhile(w).await => {
                tracing::info!(key = %w.key, size = f.size, "stored, but unlinked during the close: deleted");
                self.untrack(w.fh);
                w.state = WriteState::Done;
                Ok(())
            }
            Ok(f) => {
                tracing::info!(key = %w.key, size = f.size, parts = f.parts, etag = %f.etag, "stored");
                self.untrack(w.fh);
                self.stats.files_stored.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_stored.fetch_add(f.size, Ordering::Relaxed);
                w.state = WriteState::Done;
                let mut later = false;
                if let Some(i) = self.table().get_mut(w.ino) {
                    i.size = f.size;
                    i.etag = Some(f.etag.clone());
                    i.local = false;
                    i.valid_until = Instant::now() + self.cfg.metadata_ttl;
                    i.version = Some((f.etag, None));
                    i.stored = Some(StoredMeta::of_options(&sent));
                    // Changed while the upload ran, or after its creation.
                    if posix_of(i).attrs() != PosixMeta::parse(&sent.metadata).attrs() {
                        i.attrs_pending = true;
                        later = true;
                    }
                    // Durable now: readers need not wait for the (asynchronous) release.
                    if i.writer == Some(w.fh) {
                        i.writer = None;
                    }
                }
                if later {
                    self.persist_later(w.ino);
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(key = %w.key, error = %e, "close failed: nothing was stored at the key");
                self.untrack(w.fh);
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                w.state = WriteState::Failed;
                // A stored object is still what it was: so is the file
                // (its size grew with the writes; reads past the old end
                // would ask the server for bytes it does not have).
                if let Some(i) = self.table().get_mut(w.ino) {
                    if !i.local {
                        i.size = w.stored_size;
                    }
                }
                Err(e.into())
            }
        }
    }

    /// After a close stored the file: whether it was unlinked while the
    /// close was on its way. Then the object just stored is deleted again,
    /// unless the name was given to a new file meanwhile (its own close
    /// will replace the object). A failed delete is logged.
    async fn unlinked_meanwhile(&self, w: &WriteHandle) -> bool {
        let gone = {
            let t = self.table();
            match t.get(w.ino) {
                Some(i) if i.unlinked => Some(t.child(i.parent, &i.name).is_none()),
                _ => None,
            }
        };
        match gone {
            None => false,
            Some(false) => true,
            Some(true) => {
                if let Err(e) = self.store.delete_object(&w.key).await {
                    tracing::error!(key = %w.key, error = %e, "unlinked during its close, and the stored object could not be deleted");
                }
                true
            }
        }
    }

    /// close(): the close from the descriptor table that wrote first (or,
    /// when no write named one, from the opener's process) completes the
    /// upload and returns its outcome; a close from another table (a
    /// forked child's copy) does nothing.
    pub async fn flush(&self, fh: u64, closer: impl Into<Closer>) -> FsResult<()> {
        let Closer { pid, owner } = closer.into();
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        let Handle::Write(w) = &mut *g else {
            return Ok(());
        };
        if w.state == WriteState::Failed {
            // Every close of a failed file reports it; the upload is aborted at release.
            return Err(FsError::Io("an earlier write failed".into()));
        }
        if w.state != WriteState::Open {
            return Ok(());
        }
        // The descriptor table that wrote first closes: not a forked
        // child's copy, in any PID namespace. Without one (writes through
        // the page cache name none), the opener's process by its pid.
        let other = match (w.writer_owner, owner) {
            (Some(wrote), Some(closing)) => wrote != closing,
            _ => {
                let caller = tgid_of(pid).unwrap_or(pid);
                w.opener_tgid.is_some() && w.opener_tgid != Some(caller)
            }
        };
        if other {
            tracing::debug!(key = %w.key, pid, ?owner, "close from another process: not completing");
            return Ok(());
        }
        self.complete(w).await
    }

    /// fsync: completes the upload whoever calls it (later writes fail),
    /// and writes attributes still pending on the object.
    pub async fn fsync(&self, ino: u64, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        {
            let mut g = h.lock().await;
            match &mut *g {
                Handle::Write(w) if w.state == WriteState::Open => self.complete(w).await?,
                Handle::Write(w) if w.state == WriteState::Failed => {
                    return Err(FsError::Io("an earlier write failed".into()))
                }
                _ => {}
            }
        }
        // A write of the attributes already in flight counts as this one.
        self.settled(ino, |_| ()).await?;
        self.persist(ino, true).await
    }

    /// This mount's own copy gave the object of `ino` a new ETag (the bytes
    /// are the same): its readers take it instead of reporting the object
    /// replaced. A reader busy reading right now is skipped.
    pub(super) fn repin_readers(&self, ino: u64, old: &str, new: &str) {
        let handles: Vec<SharedHandle> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for h in handles {
            if let Ok(mut g) = h.try_lock() {
                if let Handle::Read(r) = &mut *g {
                    if r.ino == ino {
                        r.repin(old, new);
                    }
                }
            }
        }
    }

    /// The last close: completes what no flush completed (errors only logged),
    /// and forgets the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let Some(h) = h else { return Ok(()) };
        self.untrack(fh);
        let mut g = h.lock().await;
        if let Handle::Write(w) = &mut *g {
            if w.state == WriteState::Open && w.upload.is_some() {
                if let Err(e) = self.complete(w).await {
                    tracing::error!(key = %w.key, error = %e, "upload at release failed");
                }
            }
            if let Some(mut u) = w.upload.take() {
                u.abort().await;
            }
            let mut t = self.table();
            let drop_name = if let Some(i) = t.get_mut(w.ino) {
                if i.writer == Some(fh) {
                    i.writer = None;
                }
                // A file that never reached the bucket disappears.
                (i.local && w.state != WriteState::Done).then(|| (i.parent, i.name.clone()))
            } else {
                None
            };
            if let Some((p, n)) = drop_name {
                if t.child(p, &n).map(|c| c.ino) == Some(w.ino) {
                    t.remove_child(p, &n);
                }
            }
        }
        if let Handle::Read(r) = &*g {
            let pending = {
                let mut t = self.table();
                t.get_mut(r.ino).is_some_and(|i| {
                    i.readers = i.readers.saturating_sub(1);
                    i.readers == 0 && i.attrs_pending
                })
            };
            if pending {
                self.persist_later(r.ino);
            }
        }
        Ok(())
    }
}
