//! Names: mkdir, rmdir, unlink, symlink, mknod, readlink.

use super::*;

impl Fs {
    /// mkdir: writes the `name/` marker object so the directory persists.
    pub async fn mkdir(&self, parent: u64, name: &OsStr, mode: u32) -> FsResult<Attr> {
        self.writable()?;
        let name = check_name(name)?;
        let pkey = self.dir_key(parent)?;
        let key = format!("{pkey}{name}/");
        if key.len() > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        if self.table().child(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        if self.table().renaming_over(&key) {
            return Err(FsError::Busy("its directory is being renamed"));
        }
        let perm = (mode & 0o7777) as u16;
        let mut opts = PutOptions {
            content_type: Some(DIR_CONTENT_TYPE.into()),
            ..Default::default()
        };
        PosixMeta {
            perm: Some(perm),
            ..PosixMeta::default()
        }
        .write(&mut opts.metadata, libc::S_IFDIR);
        // Where markers keep no metadata, the attributes object alone
        // makes the directory (a prefix) and holds its mode.
        let stored_at = self.cfg.dir_attrs.key(&key);
        let etag = self
            .store
            .put_object(&stored_at, bytes::Bytes::new(), None, &opts)
            .await
            .map_err(failed(&stored_at, "mkdir: storing the directory marker"))?;
        let now = SystemTime::now();
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        let mut t = self.table();
        let ino = t.upsert_child(parent, name, Kind::Dir, |i| {
            i.mtime = now;
            i.ctime = now;
            i.perm = Some(perm);
            i.version = Some(Version::of(etag));
            i.stored = Some(StoredMeta::of_options(&opts));
            i.valid_until = valid_until;
            // Just made, so empty: lookups inside need no request for a while.
            i.dir.complete_until = Some(valid_until);
        });
        Ok(self.attr_of(t.get(ino).expect("inserted")))
    }

    /// rmdir: ENOTEMPTY while any key is under the prefix; else deletes the marker.
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let name = check_name(name)?;
        let pkey = self.dir_key(parent)?;
        let prefix = format!("{pkey}{name}/");
        {
            let t = self.table();
            if let Some(c) = t.child(parent, name) {
                if c.kind != Kind::Dir {
                    return Err(FsError::NotDir);
                }
                if !t.local_children(c.ino).is_empty() {
                    return Err(FsError::NotEmpty);
                }
            }
        }
        let attrs_key = dir_attrs::object_key(&prefix);
        let page = self
            .store
            .list_objects_page(&prefix, None, None, Some(3))
            .await
            .map_err(failed(&prefix, "rmdir: listing the directory"))?;
        if page
            .objects
            .iter()
            .any(|o| o.key != prefix && o.key != attrs_key)
        {
            return Err(FsError::NotEmpty);
        }
        if page.objects.is_empty() && self.table().child(parent, name).is_none() {
            return Err(FsError::NotFound);
        }
        if page.objects.iter().any(|o| o.key == attrs_key) {
            self.store.delete_object(&attrs_key).await.map_err(failed(
                &attrs_key,
                "rmdir: deleting the directory attributes",
            ))?;
        }
        self.store
            .delete_object(&prefix)
            .await
            .map_err(failed(&prefix, "rmdir: deleting the directory marker"))?;
        self.table().remove_child(parent, name);
        Ok(())
    }

    /// unlink: DeleteObject. A file still being written is forgotten at once
    /// and its upload aborted at close: nothing reappears.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.writable()?;
        let name = check_name(name)?;
        let pkey = self.dir_key(parent)?;
        let key = format!("{pkey}{name}");
        let child = self.table().child(parent, name).cloned();
        if let Some(c) = &child {
            if c.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
        }
        let local_only = child.as_ref().map(|c| c.local).unwrap_or(false);
        if let Some(c) = &child {
            self.settled(c.ino, |_| ()).await?;
            // A close on its way sees it and deletes what it stores.
            if let Some(i) = self.table().get_mut(c.ino) {
                i.unlinked = true;
            }
        }
        if !local_only {
            let deleted = async {
                if child.is_none() {
                    // Not known here: make sure it exists, for a correct ENOENT.
                    self.store.head_object(&key).await?;
                }
                self.store
                    .delete_object(&key)
                    .await
                    .map_err(failed(&key, "unlink: deleting the object"))
            }
            .await;
            if let Err(e) = deleted {
                // Not unlinked after all: a close on its way stores the file.
                if let Some(c) = &child {
                    if let Some(i) = self.table().get_mut(c.ino) {
                        i.unlinked = false;
                    }
                }
                return Err(e);
            }
        }
        self.table().remove_child(parent, name);
        Ok(())
    }

    /// Creates a symlink as s3fs stores one: an object whose body is the
    /// target and whose `x-amz-meta-mode` says `S_IFLNK`.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
    ) -> FsResult<Attr> {
        let target = target.to_str().ok_or(FsError::IllegalName)?.to_string();
        self.make_node(parent, name, Kind::Symlink, 0o777, 0, target)
            .await
    }

    /// Creates a FIFO, socket or device node (as `rsync -a` does as root):
    /// an empty object whose mode (and `x-amz-meta-rdev`) say what it is.
    pub async fn mknod(&self, parent: u64, name: &OsStr, mode: u32, rdev: u32) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            0 | libc::S_IFREG => Kind::File,
            t @ (libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK) => {
                Kind::Special(t)
            }
            _ => return Err(FsError::Invalid(format!("mknod of mode {mode:o}"))),
        };
        self.make_node(
            parent,
            name,
            kind,
            (mode & 0o7777) as u16,
            rdev,
            String::new(),
        )
        .await
    }

    /// Stores a small object in one PutObject and records it: symlinks,
    /// special files, and empty files made by mknod.
    async fn make_node(
        &self,
        parent: u64,
        name: &OsStr,
        kind: Kind,
        perm: u16,
        rdev: u32,
        body: String,
    ) -> FsResult<Attr> {
        self.writable()?;
        let name = check_name(name)?;
        let key = format!("{}{name}", self.dir_key(parent)?);
        if key.len() > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        match self.lookup(parent, OsStr::new(name)).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if self.table().renaming_over(&key) {
            return Err(FsError::Busy("its directory is being renamed"));
        }
        let mut opts = PutOptions::default();
        let p = PosixMeta {
            perm: Some(perm),
            rdev: (rdev != 0).then_some(rdev),
            ..PosixMeta::default()
        };
        p.write(&mut opts.metadata, kind.type_bits());
        let size = body.len() as u64;
        let etag = self
            .store
            .put_object(&key, bytes::Bytes::from(body.clone()), None, &opts)
            .await
            .map_err(failed(&key, "storing a symlink or special file"))?;
        let now = SystemTime::now();
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        let mut t = self.table();
        let ino = t.upsert_child(parent, name, kind, |i| {
            i.size = size;
            i.mtime = now;
            i.ctime = now;
            i.mtime_set = false;
            i.perm = Some(perm);
            i.uid = None;
            i.gid = None;
            i.rdev = rdev;
            i.etag = Some(etag.clone());
            i.version = Some(Version::of(etag));
            i.stored = Some(StoredMeta::of_options(&opts));
            i.link_target = (kind == Kind::Symlink).then_some(body);
            i.attrs_pending = false;
            i.local = false;
            i.valid_until = valid_until;
        });
        Ok(self.attr_of(t.get(ino).expect("inserted")))
    }

    /// A symlink's target (its object's body; read once).
    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink".into()));
        }
        if let Some(t) = i.link_target {
            return Ok(t.into_bytes());
        }
        // PATH_MAX: a longer body is not a target.
        if i.size > 4096 {
            tracing::warn!(key = %i.key, size = i.size, "symlink object too large to be a target");
            return Err(FsError::Io("symlink target longer than PATH_MAX".into()));
        }
        let g = self.store.get_object(Source::key(&i.key), None).await?;
        if let Ok(s) = std::str::from_utf8(&g.body) {
            if let Some(n) = self.table().get_mut(ino) {
                n.link_target = Some(s.to_string());
            }
        }
        Ok(g.body.to_vec())
    }
}
