//! Renames of files and directories (server-side copies, then deletes).

use super::*;

/// Requests at once when renaming a directory.
const RENAME_CONCURRENCY: usize = 16;

impl Fs {
    /// Copies an object over 5 GiB on the server (multipart, UploadPartCopy).
    pub(super) async fn copy_large(
        &self,
        src: &str,
        dst: &str,
        size: u64,
        opts: PutOptions,
    ) -> FsResult<String> {
        let mut u = Upload::new(
            self.store.clone(),
            dst.to_string(),
            opts,
            self.cfg.upload.clone(),
        );
        if !u.copy_range(src, 0, 0, size) {
            return Err(FsError::Io(format!("cannot copy {src} on the server")));
        }
        Ok(u.finish().await?.etag)
    }

    /// Renames a directory: every key under its prefix (markers included)
    /// is copied to the new prefix, a few at a time, then the old keys are
    /// deleted. Not atomic: a failed copy deletes the copies made and
    /// changes nothing; a failed delete leaves those old keys (EIO, logged).
    async fn rename_dir(
        &self,
        src: &Inode,
        newparent: u64,
        newname: &str,
        flags: u32,
    ) -> FsResult<()> {
        let dst_prefix = format!("{}{newname}/", self.dir_key(newparent)?);
        if dst_prefix == src.key {
            return Ok(());
        }
        if dst_prefix.starts_with(&src.key) {
            return Err(FsError::Invalid(
                "a directory cannot move into itself".into(),
            ));
        }
        if !self.table().begin_rename(&src.key) {
            return Err(FsError::Busy("a file in the directory is being written"));
        }
        let _renaming = RenameMark {
            fs: self,
            prefix: &src.key,
        };
        // Attribute writes in flight under it end first (a copy made before
        // one lands would miss it; one landing after the delete would bring
        // the old key back).
        self.after_attr_writes(|t| (!t.persisting_under(&src.key)).then_some(()))
            .await;
        match self.lookup(newparent, OsStr::new(newname)).await {
            Ok(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(FsError::Exists),
            Ok(a) if a.kind != Kind::Dir => return Err(FsError::NotDir),
            Ok(_) => {
                let page = self
                    .store
                    .list_objects_page(&dst_prefix, None, None, Some(3))
                    .await?;
                let attrs_key = dir_attrs::object_key(&dst_prefix);
                if page
                    .objects
                    .iter()
                    .any(|o| o.key != dst_prefix && o.key != attrs_key)
                {
                    return Err(FsError::NotEmpty);
                }
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // Every key under the old prefix.
        let mut keys: Vec<(String, u64, bool)> = Vec::new();
        crate::s3::paging::each_page(
            "ListObjectsV2",
            |token| {
                let (store, key) = (&self.store, &src.key);
                async move {
                    store
                        .list_objects_page(key, None, token.as_deref(), None)
                        .await
                }
            },
            |page| {
                keys.extend(page.objects.into_iter().map(|o| {
                    let other_class = inode::not_standard(o.storage_class.as_deref());
                    (o.key, o.size, other_class)
                }));
                Ok::<_, FsError>(())
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(key = %src.key, error = %e, "listing the directory to rename failed");
            e
        })?;
        let new_key = |k: &str| format!("{dst_prefix}{}", &k[src.key.len()..]);
        // Copies, a few at a time.
        let mut done: Vec<String> = Vec::new();
        let mut failed: Option<FsError> = None;
        for chunk in keys.chunks(RENAME_CONCURRENCY) {
            let results =
                futures_util::future::join_all(chunk.iter().map(|(k, size, other_class)| {
                    let to = new_key(k);
                    async move {
                        // Past CopyObject's limit, or in a storage class a plain
                        // copy would not keep: the object's metadata is read and
                        // sent again.
                        let large = *size > self.cfg.upload.max_copy_object;
                        // A directory marker is stored anew, not copied:
                        // SeaweedFS answers a copy of a `dir/` key NoSuchKey.
                        let marker = k.ends_with('/') && *size == 0;
                        let r = if large || *other_class || marker {
                            match self.store.head_object(k).await {
                                Ok(h) => {
                                    let opts = StoredMeta::of_head(&h).to_options();
                                    if marker {
                                        self.store
                                            .put_object(&to, bytes::Bytes::new(), None, &opts)
                                            .await
                                            .map(|_| ())
                                            .map_err(FsError::from)
                                    } else if large {
                                        self.copy_large(k, &to, *size, opts).await.map(|_| ())
                                    } else {
                                        self.store
                                            .copy_object(
                                                Source::key(k),
                                                &to,
                                                &MetadataDirective::Replace(opts),
                                            )
                                            .await
                                            .map(|_| ())
                                            .map_err(FsError::from)
                                    }
                                }
                                Err(e) => Err(e.into()),
                            }
                        } else {
                            self.store
                                .copy_object(Source::key(k), &to, &MetadataDirective::Copy)
                                .await
                                .map(|_| ())
                                .map_err(FsError::from)
                        };
                        (to, r)
                    }
                }))
                .await;
            for (to, r) in results {
                match r {
                    Ok(()) => done.push(to),
                    Err(e) => {
                        tracing::error!(from = %src.key, to = %to, error = %e, "directory rename: copy failed");
                        failed.get_or_insert(e);
                    }
                }
            }
            if failed.is_some() {
                break;
            }
        }
        if let Some(e) = failed {
            for chunk in done.chunks(RENAME_CONCURRENCY) {
                futures_util::future::join_all(chunk.iter().map(|k| self.store.delete_object(k)))
                    .await;
            }
            return Err(e);
        }
        // The new names exist: show them, then delete the old keys.
        {
            let mut t = self.table();
            t.move_child(src.parent, &src.name, newparent, newname);
        }
        let mut left = 0usize;
        for chunk in keys.chunks(RENAME_CONCURRENCY) {
            let rs = futures_util::future::join_all(
                chunk.iter().map(|(k, ..)| self.store.delete_object(k)),
            )
            .await;
            for (r, (k, ..)) in rs.into_iter().zip(chunk) {
                if let Err(e) = r {
                    tracing::error!(key = %k, error = %e, "directory rename: old key not deleted");
                    left += 1;
                }
            }
        }
        if left > 0 {
            return Err(FsError::Io(format!(
                "{left} old keys under {} not deleted",
                src.key
            )));
        }
        self.forget_emptied_prefixes(&src.key, keys.iter().map(|(k, ..)| k.as_str()))
            .await;
        tracing::debug!(from = %src.key, to = %dst_prefix, keys = keys.len(), "directory renamed");
        Ok(())
    }

    /// After every key under `top` was deleted: a DELETE of each directory
    /// prefix that had no marker of its own, deepest first. On S3 there is
    /// no such key and nothing happens; SeaweedFS keeps such prefixes as
    /// directories of its filer, still listed for minutes, and a DELETE
    /// removes one once it is empty (never one that still holds a key).
    /// Best effort: a failure is logged, the rename has happened.
    async fn forget_emptied_prefixes<'k>(&self, top: &str, keys: impl Iterator<Item = &'k str>) {
        let keys: std::collections::BTreeSet<&str> = keys.collect();
        let mut dirs = std::collections::BTreeSet::new();
        for k in &keys {
            let mut at = top.len();
            while let Some(i) = k[at..].find('/') {
                at += i + 1;
                dirs.insert(&k[..at]);
            }
        }
        dirs.insert(top);
        let implicit: Vec<&str> = dirs
            .into_iter()
            .filter(|d| !keys.contains(d))
            .rev()
            .collect();
        for d in implicit {
            if let Err(e) = self.store.delete_object(d).await {
                tracing::debug!(key = %d, error = %e, "an emptied directory prefix was not removed");
            }
        }
    }

    /// Renames a stored file: CopyObject to the new key (metadata kept;
    /// past 5 GiB a multipart copy), then DeleteObject of the old one; an
    /// existing target file is replaced unless `RENAME_NOREPLACE`.
    /// Directories move key by key (`rename_dir`); `RENAME_EXCHANGE` gets `EINVAL`.
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        self.writable()?;
        let name = check_name(name)?;
        let newname = check_name(newname)?;
        if flags & libc::RENAME_EXCHANGE != 0 {
            return Err(FsError::Invalid("RENAME_EXCHANGE is not supported".into()));
        }
        let src = self.lookup(parent, OsStr::new(name)).await?;
        let src = self.inode(src.ino)?;
        if src.kind == Kind::Dir {
            return self.rename_dir(&src, newparent, newname, flags).await;
        }
        let Some(open) = self.open_file(src.ino) else {
            return self
                .rename_file(src, name, newparent, newname, flags, false)
                .await;
        };
        // Open for writing (rsync renames its file just after the close,
        // before the release comes): what was written is stored first, and
        // the open file follows the new name; its descriptors go on.
        let mut f = open.lock().await;
        self.file_commit(&mut f).await?;
        let src = self.inode(src.ino)?;
        if src.local {
            return Err(FsError::Busy("file is being written"));
        }
        let dst_key = format!("{}{newname}", self.dir_key(newparent)?);
        self.rename_file(src, name, newparent, newname, flags, true)
            .await?;
        let i = self.inode(f.ino)?;
        f.key = dst_key.clone();
        f.reader = None;
        if let file::Content::Stored(Some(b)) = &mut f.content {
            b.key = dst_key;
            b.etag = i.etag.unwrap_or_default();
        }
        Ok(())
    }

    /// Renames a stored file (`open`: its open file is held by the caller).
    async fn rename_file(
        &self,
        src: Inode,
        name: &str,
        newparent: u64,
        newname: &str,
        flags: u32,
        open: bool,
    ) -> FsResult<()> {
        let parent = src.parent;
        if src.local || (src.writer.is_some() && !open) {
            tracing::warn!(key = %src.key, "rename of a file still being written refused");
            return Err(FsError::Busy("file is being written"));
        }
        let dst_key = format!("{}{newname}", self.dir_key(newparent)?);
        {
            // A copy into (or out of) a directory being renamed would be
            // left at its old prefix, or deleted with it.
            let t = self.table();
            if t.renaming_over(&dst_key) || t.renaming_over(&src.key) {
                return Err(FsError::Busy("a directory on the way is being renamed"));
            }
        }
        match self.lookup(newparent, OsStr::new(newname)).await {
            Ok(_) if flags & libc::RENAME_NOREPLACE != 0 => return Err(FsError::Exists),
            Ok(a) if a.kind == Kind::Dir => return Err(FsError::IsDir),
            Ok(a) => {
                let t = self.inode(a.ino)?;
                if t.local || t.writer.is_some() {
                    return Err(FsError::Busy("target is being written"));
                }
            }
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if src.key == dst_key {
            return Ok(());
        }
        self.read_unread_metadata(src.ino).await?;
        // Attributes set since the file was stored (rsync sets them on its
        // temporary file just before the rename) travel with this copy:
        // taken once no write of them is in flight.
        let (src, pending) = self
            .settled(src.ino, |i| {
                let pending = std::mem::replace(&mut i.attrs_pending, false);
                (i.clone(), pending)
            })
            .await?;
        let copied = async {
            if src.size > self.cfg.upload.max_copy_object {
                // Over CopyObject's limit: UploadPartCopy ranges, a few at a time.
                let mut opts = self.replace_options(&src).await?;
                if let Some(t) =
                    content_type_after_rename(opts.content_type.as_deref(), name, newname)
                {
                    opts.content_type = Some(t);
                }
                let etag = self
                    .copy_large(&src.key, &dst_key, src.size, opts.clone())
                    .await?;
                return Ok((etag, MetadataDirective::Replace(opts)));
            }
            // The Content-Type follows the name when it came from the name
            // (a REPLACE copy; known metadata is carried over).
            let stored_type = match &src.stored {
                Some(m) => m.content_type.clone(),
                None if content_type_of(newname).is_some() => {
                    self.store.head_object(&src.key).await?.content_type
                }
                None => None,
            };
            let new_type = content_type_after_rename(stored_type.as_deref(), name, newname);
            // A copy gets the server's default storage class and encryption
            // unless told: an object with its own is copied with all its
            // metadata.
            let copy_loses = src.stored.as_ref().is_some_and(StoredMeta::copy_would_lose);
            let directive = if pending || new_type.is_some() || copy_loses {
                let mut o = self.replace_options(&src).await?;
                if new_type.is_some() {
                    o.content_type = new_type;
                }
                MetadataDirective::Replace(o)
            } else {
                MetadataDirective::Copy
            };
            let etag = self
                .store
                .copy_object(Source::key(&src.key), &dst_key, &directive)
                .await?;
            Ok::<_, FsError>((etag, directive))
        }
        .await;
        let (etag, directive) = match copied {
            Ok(c) => c,
            Err(e) => {
                if pending {
                    if let Some(i) = self.table().get_mut(src.ino) {
                        i.attrs_pending = true;
                    }
                }
                tracing::error!(from = %src.key, to = %dst_key, error = %e, "rename: copy failed; nothing changed");
                return Err(e);
            }
        };
        let deleted = self.store.delete_object(&src.key).await;
        {
            let mut t = self.table();
            t.move_child(parent, name, newparent, newname);
            if let Some(i) = t.get_mut(src.ino) {
                i.etag = Some(etag.clone());
                i.version = Some(Version::of(etag));
                // Its readers read on at the new key (the same bytes).
                i.commits += 1;
                i.ctime = SystemTime::now();
                i.valid_until = Instant::now() + self.cfg.metadata_ttl;
                if let MetadataDirective::Replace(o) = directive {
                    i.stored = Some(StoredMeta::of_options(&o));
                }
            }
        }
        if let Err(e) = deleted {
            tracing::error!(from = %src.key, to = %dst_key, error = %e, "rename: copied, but the old key could not be deleted; both exist now");
            return Err(FsError::Io(format!("old key {} not deleted: {e}", src.key)));
        }
        tracing::debug!(from = %src.key, to = %dst_key, "renamed");
        Ok(())
    }
}
