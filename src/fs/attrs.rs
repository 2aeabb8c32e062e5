//! Attributes: getattr, setattr, and writing pending attributes back
//! (onto a file's object, or a directory's marker).

use super::*;

impl Fs {
    /// Attributes of an inode (cached; files being written show their current size).
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = self.table();
        Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
    }

    /// Changes attributes. Mode, owner and times are kept by this mount (the
    /// rsync issue persists them). A size change goes to the inode's open
    /// file whichever descriptor (`_fh`) asks; a closed file is cut or grown
    /// into a new version at once (to 0: an empty object keeping its
    /// metadata).
    pub async fn setattr(&self, ino: u64, _fh: Option<u64>, s: SetAttr) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if let Some(size) = s.size {
            self.writable()?;
            if inode.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            match self.open_file(ino) {
                Some(f) => {
                    let mut g = f.lock().await;
                    self.file_truncate(&mut g, size).await?;
                }
                None if size == inode.size => {}
                None if size == 0 => {
                    // The empty object keeps the file's Content-Type, mode,
                    // owner and other metadata; its mtime becomes now.
                    self.settled(ino, |_| ()).await?;
                    let mut emptied = inode.clone();
                    emptied.mtime_set = false;
                    let opts = self.replace_options(&emptied).await?;
                    let etag = self
                        .store
                        .put_object(&inode.key, bytes::Bytes::new(), None, &opts)
                        .await?;
                    if let Some(i) = self.table().get_mut(ino) {
                        i.etag = Some(etag.clone());
                        i.version = Some(Version::of(etag));
                        i.stored = Some(StoredMeta::of_options(&opts));
                    }
                }
                None => {
                    // A stored file cut or grown: a new version made on
                    // the server (the bytes kept are copied there).
                    let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                    if let Some(i) = self.table().get_mut(ino) {
                        if i.writer.is_none() {
                            i.writer = Some(fh);
                        }
                    }
                    let f = self.join_file(ino, fh, false).await?;
                    let r = {
                        let mut g = f.lock().await;
                        match self.file_truncate(&mut g, size).await {
                            Ok(()) => self.file_commit(&mut g).await,
                            Err(e) => Err(e),
                        }
                    };
                    self.file_release(&f).await;
                    r?;
                }
            }
        }
        if s.mode.is_some() || s.uid.is_some() || s.gid.is_some() || s.mtime.is_some() {
            // The change goes over what the object has, not over defaults.
            self.read_unread_metadata(ino).await?;
        }
        let mut t = self.table();
        let i = t.get_mut(ino).ok_or(FsError::NotFound)?;
        let before = posix_of(i);
        if let Some(size) = s.size {
            i.size = size;
            i.mtime = SystemTime::now();
            i.mtime_set = false;
        }
        if let Some(m) = s.mode {
            i.perm = Some((m & 0o7777) as u16);
        }
        if let Some(u) = s.uid {
            i.uid = Some(u);
        }
        if let Some(g) = s.gid {
            i.gid = Some(g);
        }
        if let Some(a) = s.atime {
            i.atime = a;
        }
        if let Some(m) = s.mtime {
            i.mtime = m;
            i.mtime_set = true;
        }
        i.ctime = SystemTime::now();
        let attr = self.attr_of(i);
        // A file being written gets its attributes at close; a stored one
        // soon, by a copy onto itself (or folded into a rename).
        let stored = ino != ROOT && !i.local && i.writer.is_none();
        if stored && posix_of(i) != before && !self.cfg.read_only {
            i.attrs_pending = true;
            drop(t);
            self.persist_later(ino);
        }
        Ok(attr)
    }

    /// Writes pending attributes of `ino` after [`ATTR_DELAY`].
    pub(super) fn persist_later(&self, ino: u64) {
        let Some(fs) = self.me.upgrade() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep(ATTR_DELAY).await;
            if let Err(e) = fs.persist_attrs(ino).await {
                tracing::warn!(ino, error = %e, "attributes not stored; will retry at fsync or unmount");
            }
        });
    }

    /// The metadata a CopyObject with REPLACE must send for this inode:
    /// everything the object had, with our attributes over it.
    pub(super) async fn replace_options(&self, i: &Inode) -> FsResult<PutOptions> {
        let mut opts = match &i.stored {
            Some(m) => m.to_options(),
            None => StoredMeta::of_head(&self.store.head_object(&i.key).await?).to_options(),
        };
        posix_of(i).apply(&mut opts.metadata, i.kind.type_bits());
        Ok(opts)
    }

    /// Writes pending attributes of a stored file to its object now (one
    /// CopyObject onto itself with REPLACE; the data does not move). Not
    /// while the file is open for reading: the last reader's release
    /// writes them.
    pub async fn persist_attrs(&self, ino: u64) -> FsResult<()> {
        self.persist(ino, false).await
    }

    /// [`Fs::persist_attrs`]; `force` (fsync, unmount) writes them even
    /// while the file has readers, and gives those readers the new ETag.
    pub(super) async fn persist(&self, ino: u64, force: bool) -> FsResult<()> {
        let i = self.inode(ino)?;
        if !i.attrs_pending || i.local || i.writer.is_some() || ino == ROOT {
            return Ok(());
        }
        if i.readers > 0 && !force {
            return Ok(());
        }
        // Unlinked (or replaced) since: nothing to write, and a directory
        // marker must not come back.
        if self.table().child(i.parent, &i.name).map(|c| c.ino) != Some(ino) {
            if let Some(n) = self.table().get_mut(ino) {
                n.attrs_pending = false;
            }
            return Ok(());
        }
        if i.kind == Kind::Dir {
            if let Some(n) = self.table().get_mut(ino) {
                n.attrs_pending = false;
            }
            return match self.persist_dir_attrs(&i).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    if let Some(n) = self.table().get_mut(ino) {
                        n.attrs_pending = true;
                    }
                    tracing::warn!(key = %i.key, error = %e, "storing directory attributes failed");
                    Err(e)
                }
            };
        }
        // Cleared first: a change while the copy runs sets it again. A
        // rename waits for the copy (it would copy the old object).
        if let Some(n) = self.table().get_mut(ino) {
            n.attrs_pending = false;
            n.persisting = true;
        }
        let result = async {
            let opts = self.replace_options(&i).await?;
            let etag = if i.size > self.cfg.upload.max_copy_object {
                // Past CopyObject's limit: a multipart copy onto itself
                // (the server copies the bytes; the object is replaced at
                // Complete). Built from byte ranges, so only of the version
                // this mount knows: another client's newer object is not
                // cut to the old size.
                let h = self.store.head_object(&i.key).await?;
                let known = i.etag.as_deref().map(crate::s3::bare_etag);
                if h.size != i.size || known.is_some_and(|e| e != crate::s3::bare_etag(&h.etag)) {
                    return Err(FsError::Io(format!(
                        "{} changed on the server; its attributes were not written",
                        i.key
                    )));
                }
                self.copy_large(&i.key, &i.key, i.size, opts.clone())
                    .await?
            } else {
                self.store
                    .copy_object(
                        Source::key(&i.key),
                        &i.key,
                        &MetadataDirective::Replace(opts.clone()),
                    )
                    .await?
            };
            Ok::<_, FsError>((etag, opts))
        }
        .await;
        let mut t = self.table();
        if let Some(n) = t.get_mut(ino) {
            n.persisting = false;
        }
        self.persisted.notify_waiters();
        match result {
            Ok((etag, opts)) => {
                tracing::debug!(key = %i.key, "attributes stored");
                let readers = t.get_mut(ino).map_or(0, |n| {
                    n.etag = Some(etag.clone());
                    n.version = Some(Version::of(etag.clone()));
                    n.stored = Some(StoredMeta::of_options(&opts));
                    n.readers
                });
                drop(t);
                if let (true, Some(old)) = (readers > 0, &i.etag) {
                    self.repin_readers(ino, old, &etag);
                }
                Ok(())
            }
            Err(e) => {
                if let Some(n) = t.get_mut(ino) {
                    n.attrs_pending = true;
                }
                tracing::warn!(key = %i.key, error = %e, "storing attributes failed");
                Err(e)
            }
        }
    }

    /// Waits until no write of `ino`'s attributes is in flight (a copy onto
    /// itself: an object copied, replaced or deleted meanwhile would lose
    /// them, or come back), then runs `f` on the inode under the same lock.
    pub(super) async fn settled<T>(&self, ino: u64, f: impl Fn(&mut Inode) -> T) -> FsResult<T> {
        self.after_attr_writes(|t| match t.get_mut(ino) {
            None => Some(Err(FsError::NotFound)),
            Some(i) if !i.persisting => Some(Ok(f(i))),
            Some(_) => None,
        })
        .await
    }

    /// Runs `ready` on the inode table, again each time a write of pending
    /// attributes ends, until it answers.
    pub(super) async fn after_attr_writes<T>(
        &self,
        ready: impl Fn(&mut InodeTable) -> Option<T>,
    ) -> T {
        loop {
            let done = self.persisted.notified();
            if let Some(v) = ready(&mut self.table()) {
                return v;
            }
            // Bounded by the copy's own retries and deadlines; the timeout
            // only guards against a missed wake-up.
            let _ = tokio::time::timeout(Duration::from_millis(200), done).await;
        }
    }

    /// Reads an object's metadata into its inode when only a listing filled
    /// it (`--attrs-from-listing`), so that a copy keeps what the object has
    /// (mode, owner, mtime, type, storage class...) and changes only what is
    /// asked. Attribute changes made here since are kept.
    pub(super) async fn read_unread_metadata(&self, ino: u64) -> FsResult<()> {
        let i = self.inode(ino)?;
        if !self.cfg.attrs_from_listing || i.local || i.writer.is_some() || ino == ROOT {
            return Ok(());
        }
        if i.kind == Kind::Dir {
            if i.stored.is_none() {
                self.read_dir_marker(ino).await;
            }
            return Ok(());
        }
        if i.stored.is_some() {
            return Ok(());
        }
        let h = self.store.head_object(&i.key).await?;
        let mut t = self.table();
        if let Some(n) = t.get_mut(ino) {
            if n.attrs_pending {
                n.stored = Some(StoredMeta::of_head(&h));
            } else {
                fill_from_head(n, &h, self.mounted_at);
            }
        }
        Ok(())
    }

    /// Writes a directory's pending mode/owner/mtime onto its marker: the
    /// empty `dir/` object is stored again with them (a PutObject, not a
    /// copy onto itself: SeaweedFS answers such a copy of a marker with
    /// NoSuchKey, and an empty PUT costs no more), keeping the marker's other
    /// metadata; a directory that was only a prefix gets a marker.
    async fn persist_dir_attrs(&self, i: &Inode) -> FsResult<String> {
        let key = self.cfg.dir_attrs.key(&i.key);
        let existing = match &i.stored {
            Some(m) if matches!(&i.version, Some(Version::Object { etag, .. }) if !etag.is_empty()) => {
                Some(m.clone())
            }
            _ => match self.store.head_object(&key).await {
                Ok(h) => Some(StoredMeta::of_head(&h)),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            },
        };
        let mut opts = existing
            .as_ref()
            .map(StoredMeta::to_options)
            .unwrap_or_default();
        opts.content_type = opts.content_type.or(Some(DIR_CONTENT_TYPE.into()));
        posix_of(i).apply(&mut opts.metadata, libc::S_IFDIR);
        let etag = self
            .store
            .put_object(&key, bytes::Bytes::new(), None, &opts)
            .await?;
        if let Some(n) = self.table().get_mut(i.ino) {
            n.version = Some(Version::of(etag.clone()));
            n.stored = Some(StoredMeta::of_options(&opts));
        }
        Ok(etag)
    }

    /// Writes every pending attribute change (at unmount), open readers
    /// or not.
    pub async fn persist_all(&self) {
        let pending: Vec<u64> = self.table().pending_attrs();
        for ino in pending {
            let _ = self.persist(ino, true).await;
        }
    }
}
