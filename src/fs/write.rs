//! Files' data: create, open, read, write, and the close that stores a
//! file (flush, fsync, release).

use super::*;

/// A failed read, logged with the handle and range, as the kernel gets it.
fn read_failed(fh: u64, offset: u64, size: u32, e: crate::s3::S3Error) -> FsError {
    tracing::warn!(fh, offset, size, error = %e, "read failed");
    FsError::from(e)
}

impl Fs {
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
        let existing = self
            .table()
            .child(parent, name)
            .map(|c| (c.ino, c.kind, c.writer.is_some()));
        if let Some((ino, kind, open)) = existing {
            if kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if open {
                // Open here already: the new descriptor joins it, emptied.
                let fh = self.open(ino, libc::O_WRONLY | libc::O_TRUNC, pid).await?;
                return Ok((self.getattr(ino)?, fh));
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let ino = {
            let mut t = self.table();
            if t.renaming_over(&key) {
                return Err(FsError::Busy("its directory is being renamed"));
            }
            t.upsert_child(parent, name, Kind::File, |i| {
                i.size = 0;
                i.mtime = now;
                i.ctime = now;
                i.perm = Some((mode & 0o7777) as u16);
                i.writer = Some(fh);
                i.local = true;
                i.etag = None;
            })
        };
        let file = self.join_file(ino, fh, true).await?;
        self.insert_write_handle(fh, ino, file, pid);
        Ok((self.getattr(ino)?, fh))
    }

    /// Records descriptor `fh` of open file `file`, opened by `pid`.
    fn insert_write_handle(&self, fh: u64, ino: u64, file: file::SharedFile, pid: u32) {
        let w = WriteHandle {
            ino,
            file,
            opener_tgid: tgid_of(pid).or(Some(pid)),
            writer_owner: None,
        };
        self.insert_handle(fh, Handle::Write(Box::new(w)));
    }

    /// Opens a file. Every descriptor open for writing shares the file's
    /// one [`file::OpenFile`]; while it lives, reads of the file (through
    /// any descriptor) see what was written.
    pub async fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<u64> {
        self.not_closing()?;
        let inode = self.inode(ino)?;
        if inode.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let acc = flags & libc::O_ACCMODE;
        if acc == libc::O_RDONLY {
            // Pinned by its first GET, not by the ETag this mount last saw:
            // a reopen after another client's replacement reads the new
            // object (the replacement is not ours to report).
            let r = self.reader_for(&inode, false);
            if let Some(i) = self.table().get_mut(ino) {
                i.readers += 1;
            }
            return Ok(self.new_fh(Handle::Read(r)));
        }
        self.writable()?;
        if inode.writer.is_none() {
            // No attribute write starts while a writer holds the file.
            self.settled(ino, |_| ()).await?;
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            // Marked a writer before anything else, so that a directory
            // rename either sees it or is seen here.
            let mut t = self.table();
            if t.renaming_over(&inode.key) {
                return Err(FsError::Busy("its directory is being renamed"));
            }
            if let Some(i) = t.get_mut(ino) {
                if i.writer.is_none() {
                    i.writer = Some(fh);
                }
            }
        }
        let file = match self.join_file(ino, fh, trunc).await {
            Ok(f) => f,
            Err(e) => {
                if self.open_file(ino).is_none() {
                    if let Some(i) = self.table().get_mut(ino) {
                        if i.writer == Some(fh) {
                            i.writer = None;
                        }
                    }
                }
                return Err(e);
            }
        };
        let size = file.lock().await.size();
        if let Some(i) = self.table().get_mut(ino) {
            i.size = size;
        }
        self.insert_write_handle(fh, ino, file, pid);
        Ok(fh)
    }

    /// Reads from a file: through its open file while it is open for
    /// writing (what was written shows), else from the stored object.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<bytes::Bytes> {
        let h = self.handle(fh)?;
        let mut g = h.lock().await;
        let ino = match &*g {
            Handle::Read(r) => r.ino,
            Handle::Write(w) => w.ino,
            Handle::Dir(_) => return Err(FsError::IsDir),
        };
        if let Some(f) = self.open_file(ino) {
            let mut fg = f.lock().await;
            return self.file_read(&mut fg, offset, size).await;
        }
        let Handle::Read(r) = &mut *g else {
            return Err(FsError::BadHandle);
        };
        self.refresh_reader(r)?;
        r.read(offset, size)
            .await
            .map_err(|e| read_failed(fh, offset, size, e))
    }

    /// Whether a reader reads the version of its file this mount stored
    /// last (a replacement by another client is the reader's to find:
    /// ESTALE rather than a silent switch).
    fn reader_current(&self, r: &Reader) -> bool {
        self.table()
            .get(r.ino)
            .is_some_and(|i| i.commits == r.commits && !i.local)
    }

    /// A reader opened while the file was being written, or before this
    /// mount stored a new version of it, reads the version stored now.
    fn refresh_reader(&self, r: &mut Reader) -> FsResult<()> {
        if self.reader_current(r) {
            return Ok(());
        }
        let i = self.inode(r.ino)?;
        if i.local {
            return Err(FsError::Io("file not stored yet".into()));
        }
        *r = self.reader_for(&i, true);
        Ok(())
    }

    /// A reader of `i`; `pin`: of the version this mount knows (one it
    /// stored itself), else of whatever the first GET finds.
    fn reader_for(&self, i: &Inode, pin: bool) -> Reader {
        let mut r = Reader::new(
            self.store.clone(),
            i.key.clone(),
            i.size,
            self.cfg.max_readahead,
            self.cfg.read_budget.clone(),
        );
        if let Some(e) = i.etag.as_ref().filter(|_| pin) {
            r.pin_to(e);
        }
        r.ino = i.ino;
        r.commits = i.commits;
        r
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
        if self.open_file(r.ino).is_some() || !self.reader_current(r) {
            return None;
        }
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

    /// Writes into a file open for writing. `owner`: the writer's
    /// descriptor table, when the kernel names it (direct-I/O writes do).
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
        let mut f = w.file.lock().await;
        let size = self.file_write(&mut f, offset, data).await?;
        if let Some(i) = self.table().get_mut(w.ino) {
            i.size = size;
            i.mtime = SystemTime::now();
            i.mtime_set = false;
        }
        Ok(data.len() as u32)
    }

    /// fallocate: mode 0 (posix_fallocate) grows a file open for writing
    /// to `offset + len` with zeros; FALLOC_FL_KEEP_SIZE alone does nothing
    /// (no space is reserved on a server). Anything else, punching holes
    /// included, gets EOPNOTSUPP (`cp --sparse=always` then writes zeros).
    pub async fn fallocate(
        &self,
        ino: u64,
        _fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> FsResult<()> {
        match mode {
            0 => {}
            libc::FALLOC_FL_KEEP_SIZE => return Ok(()),
            _ => return Err(FsError::NotSupported("this fallocate mode")),
        }
        let Some(f) = self.open_file(ino) else {
            return Err(FsError::BadHandle);
        };
        let mut g = f.lock().await;
        let end = offset.saturating_add(len);
        if end > g.size() {
            self.file_truncate(&mut g, end).await?;
            let size = g.size();
            if let Some(i) = self.table().get_mut(ino) {
                i.size = size;
                i.mtime = SystemTime::now();
                i.mtime_set = false;
            }
        }
        Ok(())
    }

    /// Whether the file has descriptors open besides one writer (whose
    /// cached pages a write through another makes stale).
    pub fn shared_with_others(&self, ino: u64) -> bool {
        let writers = self
            .open_file(ino)
            .map_or(0, |f| f.try_lock().map_or(2, |g| g.handles));
        let readers = self.table().get(ino).map_or(0, |i| i.readers);
        writers + readers as usize > 1
    }

    /// copy_file_range from a stored file into a file being written (GNU cp
    /// tries it first): recorded as a server-side copy made at close
    /// (CopyObject, or UploadPartCopy over 5 GiB), so no data passes through
    /// this machine. Only as the whole content of a new or emptied file;
    /// anything else gets EOPNOTSUPP, and the kernel or cp copies the bytes
    /// through read and write instead. Answers at most u32::MAX bytes (the
    /// reply's limit); cp asks again for the rest.
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
        let g = h.lock().await;
        let Handle::Write(w) = &*g else {
            return Err(FsError::BadHandle);
        };
        let mut f = w.file.lock().await;
        if let Some(e) = f.failed() {
            return Err(e);
        }
        if matches!(f.content, file::Content::Stored(_)) && offset_out == 0 && f.size() == 0 {
            let u = self.new_upload(f.key.clone(), f.ino);
            self.begin(&mut f, file::Content::Streaming(u));
        }
        let file::Content::Streaming(u) = &mut f.content else {
            return Err(FsError::NotSupported(
                "server-side copy into a file with other bytes",
            ));
        };
        if !u.copy_range(&src.key, offset_in, offset_out, n) {
            return Err(FsError::NotSupported("server-side copy of this range"));
        }
        let size = u.size();
        tracing::debug!(from = %src.key, to = %f.key, offset_in, n, "server-side copy recorded");
        if let Some(i) = self.table().get_mut(f.ino) {
            i.size = size;
            i.mtime = SystemTime::now();
            i.mtime_set = false;
        }
        Ok(n as u32)
    }

    /// close(): the close from the descriptor table that wrote first (or,
    /// when no write named one, from the opener's process) stores the file
    /// and returns the outcome; a close from another table (a forked
    /// child's copy) does nothing. The file stays open through its other
    /// descriptors: later writes make a new version, stored by a later close.
    pub async fn flush(&self, fh: u64, closer: impl Into<Closer>) -> FsResult<()> {
        let Closer { pid, owner } = closer.into();
        let h = self.handle(fh)?;
        let g = h.lock().await;
        let Handle::Write(w) = &*g else {
            return Ok(());
        };
        let mut f = w.file.lock().await;
        if let Some(e) = f.failed() {
            // Every close of a failed file reports it.
            return Err(e);
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
            tracing::debug!(key = %f.key, pid, ?owner, "close from another process: not storing");
            return Ok(());
        }
        self.file_commit(&mut f).await
    }

    /// fsync: the key holds exactly what the file holds (writing may go
    /// on), and attributes still pending are written.
    pub async fn fsync(&self, ino: u64, _fh: u64) -> FsResult<()> {
        if let Some(f) = self.open_file(ino) {
            let mut g = f.lock().await;
            self.file_commit(&mut g).await?;
            return Ok(());
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

    /// The last close of a descriptor: the last one of a file open for
    /// writing stores what no close stored (errors only logged).
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        let Some(h) = h else { return Ok(()) };
        let g = h.lock().await;
        if let Handle::Write(w) = &*g {
            self.file_release(&w.file).await;
        }
        if let Handle::Read(r) = &*g {
            let pending = {
                let mut t = self.table();
                t.get_mut(r.ino).is_some_and(|i| {
                    i.readers = i.readers.saturating_sub(1);
                    i.readers == 0 && i.attrs_pending && i.writer.is_none()
                })
            };
            if pending {
                self.persist_later(r.ino);
            }
        }
        Ok(())
    }
}
