//! Directory listings: opendir, readdir, releasedir and the listing
//! that records what a directory holds.

use super::*;

/// Whether two Last-Modified times are the same second (HEAD gives whole
/// seconds, listings milliseconds).
fn same_second(a: Option<SystemTime>, b: Option<SystemTime>) -> bool {
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    secs(a) == secs(b)
}

impl Fs {
    /// Takes one listing snapshot of a directory (ListObjectsV2 with
    /// delimiter `/`, every page) and returns a handle serving it.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.list_dir(ino).await?;
        Ok(self.new_fh(Handle::Dir(entries)))
    }

    /// Lists a directory (every page) and records what it shows: its
    /// children, and that a name not among them does not exist (for
    /// `--metadata-ttl`). Names being created here are added.
    pub(super) async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let dir = self.inode(ino)?;
        if dir.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let mut entries = vec![
            DirEntry {
                ino,
                kind: Kind::Dir,
                name: ".".into(),
            },
            DirEntry {
                ino: dir.parent,
                kind: Kind::Dir,
                name: "..".into(),
            },
        ];
        let mut dirs: Vec<String> = Vec::new();
        let mut files: Vec<(String, crate::s3::ObjectEntry)> = Vec::new();
        crate::s3::paging::each_page(
            "ListObjectsV2",
            |token| {
                let (store, key) = (&self.store, &dir.key);
                async move {
                    store
                        .list_objects_page(key, Some("/"), token.as_deref(), None)
                        .await
                }
            },
            |page| {
                for p in page.common_prefixes {
                    let name = p[dir.key.len().min(p.len())..]
                        .trim_end_matches('/')
                        .to_string();
                    if listable_name(&name)
                        && p.ends_with('/')
                        && !p[dir.key.len()..].trim_end_matches('/').contains('/')
                    {
                        dirs.push(name);
                    } else {
                        self.skip_key(&p, "a prefix that cannot be a directory name");
                    }
                }
                for o in page.objects {
                    if o.key == dir.key {
                        continue; // the directory's own marker
                    }
                    let name = o.key[dir.key.len().min(o.key.len())..].to_string();
                    if listable_name(&name) {
                        files.push((name, o));
                    } else if name != DIR_ATTRS_NAME {
                        self.skip_key(&o.key, "a key that cannot be a file name");
                    }
                }
                Ok::<_, FsError>(())
            },
        )
        .await
        .map_err(|e| {
            tracing::warn!(key = %dir.key, error = %e, "listing the directory failed");
            e
        })?;
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        {
            let mut t = self.table();
            let dir_names: std::collections::HashSet<&str> =
                dirs.iter().map(String::as_str).collect();
            for name in &dirs {
                let ino = t.upsert_child(ino, name, Kind::Dir, |i| {
                    i.valid_until = valid_until;
                    if i.version.is_none() && !i.attrs_pending {
                        i.mtime = self.mounted_at;
                        if self.cfg.attrs_from_listing {
                            i.version = Some(Version::Absent); // marker unread
                        }
                    }
                });
                entries.push(DirEntry {
                    ino,
                    kind: Kind::Dir,
                    name: name.clone(),
                });
            }
            for (name, o) in &files {
                // A key that is both a file and a prefix shows as the directory.
                if dir_names.contains(name.as_str()) {
                    continue;
                }
                // Attributes from metadata (and the kind: symlink, FIFO...)
                // stay while the listing shows the version they came from;
                // a listing has no metadata.
                let same_version = |i: &Inode| {
                    matches!(&i.version, Some(Version::Object { etag, last_modified: lm })
                        if *etag == o.etag && (lm.is_none() || same_second(*lm, o.last_modified)))
                };
                let kind = match t.child(ino, name) {
                    Some(c) if c.kind != Kind::Dir && (same_version(c) || c.local) => c.kind,
                    _ => Kind::File,
                };
                let child = t.upsert_child(ino, name, kind, |i| {
                    if i.writer.is_none() && !i.local && !i.attrs_pending && !same_version(i) {
                        i.size = o.size;
                        i.mtime = o.last_modified.unwrap_or(self.mounted_at);
                        i.mtime_set = false;
                        i.ctime = i.mtime;
                        i.etag = Some(o.etag.clone());
                        i.perm = None;
                        i.uid = None;
                        i.gid = None;
                        i.rdev = 0;
                        i.stored = None;
                        // Unread metadata: the first lookup HEADs it,
                        // unless the listing is to be trusted.
                        i.version = self.cfg.attrs_from_listing.then(|| Version::Object {
                            etag: o.etag.clone(),
                            last_modified: o.last_modified,
                        });
                        i.link_target = None;
                    }
                    i.valid_until = valid_until;
                });
                entries.push(DirEntry {
                    ino: child,
                    kind,
                    name: name.clone(),
                });
            }
            let dropped = t.trim(self.cfg.max_inodes, ino);
            if dropped > 0 {
                tracing::debug!(dropped, "inode table trimmed");
            }
            // Directories and files interleaved in byte order: readdir's
            // order is then the order ls -l and rsync stat in, which the
            // statahead follows.
            entries[2..].sort_unstable_by(|a, b| a.name.cmp(&b.name));
            let order: Vec<String> = entries.iter().skip(2).map(|e| e.name.clone()).collect();
            if let Some(d) = t.get_mut(ino) {
                d.dir.complete_until = Some(valid_until);
                d.dir.listing = Some(Arc::new(order));
                d.dir.ahead_scanned = 0;
            }
            let listed: std::collections::HashSet<String> =
                entries.iter().map(|e| e.name.clone()).collect();
            for c in t.local_children(ino) {
                if !listed.contains(&c.name) {
                    entries.push(DirEntry {
                        ino: c.ino,
                        kind: c.kind,
                        name: c.name.clone(),
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Entries of a directory snapshot from `offset` on.
    pub async fn readdir(&self, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let h = self.handle(fh)?;
        let g = h.lock().await;
        match &*g {
            Handle::Dir(entries) => Ok(entries.iter().skip(offset as usize).cloned().collect()),
            _ => Err(FsError::BadHandle),
        }
    }

    /// Forgets a directory snapshot.
    pub async fn releasedir(&self, fh: u64) -> FsResult<()> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
        Ok(())
    }
}
