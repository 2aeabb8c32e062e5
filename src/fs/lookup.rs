//! Lookups: answered from cached attributes or the server, with the
//! statahead that reads siblings' attributes ahead of `ls -l`.

use super::*;
use inode::AheadCandidate;

/// Largest directory (children known here) listed again for a lookup.
const RELIST_MAX: usize = 2000;

/// What memory alone knows of a name in a directory (see [`Fs::lookup`]).
enum Cached {
    /// Fresh attributes.
    Hit(Attr),
    /// Not in a complete, fresh listing of the directory.
    Missing,
    /// A directory seen in a fresh listing: its marker is still unread.
    ListedDir(u64),
    /// A file seen in a listing fresh until then: its metadata is unread.
    ListedFile(Instant),
    /// Nothing fresh: ask the server.
    Unknown,
}

impl Fs {
    /// Looks up `name` in `parent`: served from fresh cached attributes (a
    /// listing fills them), else one HEAD and one LIST sent together.
    pub async fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Attr> {
        if name == DIR_ATTRS_NAME {
            return Err(FsError::NotFound);
        }
        let name = check_name(name)?;
        let pkey = self.dir_key(parent)?;
        // A directory seen in a listing: its marker (if any) holds its mode
        // and mtime, read once. A file seen in a listing: a listing has no
        // metadata (mode, mtime...), so one HEAD, whose result later
        // listings keep while they show the same version.
        // A statahead HEAD for this name on its way: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ahead = self.ahead_done.notified();
            let pending = self
                .table()
                .child(parent, name)
                .is_some_and(|c| c.ahead_pending);
            if !pending || Instant::now() > deadline {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), ahead).await;
        }
        // rsync and cp -r look up every new name; in a directory whose
        // listing went stale, one LIST answers this lookup and the next
        // ones, instead of a HEAD and a LIST for each.
        if self.should_relist(parent, name) {
            let _one = self.relisting.lock().await;
            if self.should_relist(parent, name) {
                if let Err(e) = self.list_dir(parent).await {
                    tracing::debug!(parent, error = %e, "listing again failed; asking for the name");
                }
            }
        }
        let (listed_dir, listed_file) = match self.cached(parent, name) {
            Cached::Hit(attr) => return Ok(attr),
            Cached::Missing => return Err(FsError::NotFound),
            Cached::ListedDir(ino) => (Some(ino), None),
            Cached::ListedFile(until) => (None, Some(until)),
            Cached::Unknown => (None, None),
        };
        if let Some(ino) = listed_dir {
            // find looks up directories only: their siblings that are
            // directories are read ahead, files are not.
            let ahead = self.statahead_candidates(parent, name, true);
            tokio::join!(self.read_dir_marker(ino), self.read_ahead(parent, ahead));
            let t = self.table();
            return Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?));
        }
        let key = format!("{pkey}{name}");
        // What this mount learns of the name after this moment is newer
        // than the answers to the requests sent now.
        let asked = Instant::now();
        if let Some(valid_until) = listed_file {
            let ahead = self.statahead_candidates(parent, name, false);
            let (head, ()) =
                tokio::join!(self.store.head_object(&key), self.read_ahead(parent, ahead));
            return self.record_file_head(parent, name, &key, head, valid_until, asked);
        }
        if key.len() + 1 > MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        let dir_prefix = format!("{key}/");
        // A name known from an older listing: its siblings likely follow.
        let known = self.table().child(parent, name).is_some();
        let ahead = if known {
            self.statahead_candidates(parent, name, false)
        } else {
            Vec::new()
        };
        let (head, list, ()) = tokio::join!(
            self.store.head_object(&key),
            self.store
                .list_objects_page(&dir_prefix, None, None, Some(1)),
            self.read_ahead(parent, ahead)
        );
        let list = list?;
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        if !list.objects.is_empty() || !list.common_prefixes.is_empty() {
            let has_marker = list.objects.first().is_some_and(|o| o.key == dir_prefix);
            let ino = {
                let mut t = self.table();
                let ino = t.upsert_child(parent, name, Kind::Dir, |i| {
                    i.valid_until = valid_until;
                    if i.version.is_none() && !i.attrs_pending {
                        i.mtime = self.mounted_at;
                    }
                });
                if !has_marker && self.cfg.dir_attrs == DirAttrs::OnMarker {
                    if let Some(i) = t.get_mut(ino) {
                        if i.version.is_none() {
                            // No marker: nothing to read (and no HEAD next time).
                            i.version = Some(Version::Absent);
                        }
                    }
                }
                ino
            };
            if has_marker || self.cfg.dir_attrs == DirAttrs::InObject {
                self.read_dir_marker(ino).await;
            }
            let t = self.table();
            return Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?));
        }
        self.record_file_head(parent, name, &key, head, valid_until, asked)
    }

    /// A lookup answered from memory alone, without waiting: the FUSE thread
    /// tries this before handing the request to a task (a cross-thread
    /// wake-up per name), so `ls -l` over a listed directory whose
    /// attributes were read ahead costs no task per name. `None`: the name
    /// needs the server, or a read-ahead of it is on its way.
    pub fn lookup_cached(&self, parent: u64, name: &OsStr) -> Option<FsResult<Attr>> {
        let name = check_name(name).ok()?;
        if self
            .table()
            .child(parent, name)
            .is_some_and(|c| c.ahead_pending)
        {
            return None;
        }
        match self.cached(parent, name) {
            Cached::Hit(attr) => Some(Ok(attr)),
            Cached::Missing => Some(Err(FsError::NotFound)),
            Cached::ListedDir(_) | Cached::ListedFile(_) | Cached::Unknown => None,
        }
    }

    /// What the inode table alone says of `name` in `parent`. A hit keeps
    /// the statahead ahead of the reader.
    fn cached(&self, parent: u64, name: &str) -> Cached {
        let t = self.table();
        let now = Instant::now();
        let Some(p) = t.get(parent) else {
            return Cached::Unknown;
        };
        if p.kind != Kind::Dir {
            return Cached::Unknown;
        }
        match t.child(parent, name) {
            Some(c) if c.local || c.writer.is_some() => Cached::Hit(self.attr_of(c)),
            Some(c) if c.valid_until > now && (c.version.is_some() || c.attrs_pending) => {
                let attr = self.attr_of(c);
                let dirs_only = c.kind == Kind::Dir;
                drop(t);
                self.prefetch_after(parent, name, dirs_only);
                Cached::Hit(attr)
            }
            Some(c) if c.valid_until > now && c.kind == Kind::Dir => Cached::ListedDir(c.ino),
            Some(c) if c.valid_until > now => Cached::ListedFile(c.valid_until),
            None if p.dir.complete_until.is_some_and(|u| u > now) => Cached::Missing,
            None if t.known_missing(parent, name, now) => Cached::Missing,
            _ => Cached::Unknown,
        }
    }

    /// Records what a HEAD of the file `name` in `parent` found and answers
    /// the lookup: its attributes, or ENOENT (forgetting a stored file that
    /// is gone).
    fn record_file_head(
        &self,
        parent: u64,
        name: &str,
        key: &str,
        head: Result<crate::s3::ObjectHead, crate::s3::S3Error>,
        valid_until: Instant,
        asked: Instant,
    ) -> FsResult<Attr> {
        let mut t = self.table();
        match head {
            Ok(h) => {
                let kind = Kind::of_object(PosixMeta::parse(&h.metadata).file_type);
                let ino = t.upsert_child(parent, name, kind, |i| {
                    if i.writer.is_none() && !i.local && !i.attrs_pending {
                        fill_from_head(i, &h, self.mounted_at);
                    }
                    i.valid_until = valid_until;
                });
                Ok(self.attr_of(t.get(ino).expect("inserted")))
            }
            Err(e) if e.is_not_found() => {
                if let Some(c) = t.child(parent, name) {
                    // Written, renamed or confirmed here after the HEAD was
                    // sent: that is newer than its "not found".
                    if c.local
                        || c.writer.is_some()
                        || c.valid_until > asked + self.cfg.metadata_ttl
                    {
                        return Ok(self.attr_of(c));
                    }
                    t.remove_child(parent, name);
                }
                t.note_missing(parent, name, valid_until);
                Err(FsError::NotFound)
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "lookup failed");
                Err(e.into())
            }
        }
    }

    /// Siblings to read ahead with a lookup that needs a HEAD: none for the
    /// first such lookup in a directory, then up to [`STATAHEAD`] at a time,
    /// so `ls -l` and rsync over a listed directory cost a few rounds of
    /// parallel HEADs rather than one HEAD after another.
    fn statahead_candidates(
        &self,
        parent: u64,
        name: &str,
        dirs_only: bool,
    ) -> Vec<AheadCandidate> {
        let mut t = self.table();
        let Some(p) = t.get_mut(parent) else {
            return Vec::new();
        };
        p.dir.head_misses += 1;
        if p.dir.head_misses < 2 {
            return Vec::new();
        }
        t.unread_children(parent, name, 4 * STATAHEAD, STATAHEAD, dirs_only)
    }

    /// A lookup served from the cache while siblings are being read ahead
    /// keeps the reading ahead of the reader: when unread names come within
    /// [`STATAHEAD`] of this one, the next batch is read in the background.
    fn prefetch_after(&self, parent: u64, name: &str, dirs_only: bool) {
        let batch = {
            let mut t = self.table();
            if t.get(parent).is_none_or(|p| p.dir.head_misses < 2) {
                return;
            }
            t.unread_children(parent, name, STATAHEAD, STATAHEAD, dirs_only)
        };
        if batch.is_empty() {
            return;
        }
        let Some(fs) = self.me.upgrade() else {
            self.release_claims(&batch);
            return;
        };
        tokio::spawn(async move { fs.read_ahead(parent, batch).await });
    }

    /// Ends the claims of a statahead batch and wakes lookups waiting on it.
    fn release_claims(&self, batch: &[AheadCandidate]) {
        let mut t = self.table();
        for c in batch {
            if let Some(i) = t.get_mut(c.ino) {
                i.ahead_pending = false;
            }
        }
        drop(t);
        self.ahead_done.notify_waiters();
    }

    /// HEADs the given children of `parent` concurrently and records what
    /// they say (a file's metadata and kind; a directory's marker).
    async fn read_ahead(&self, parent: u64, children: Vec<AheadCandidate>) {
        if children.is_empty() {
            return;
        }
        let claims = children.clone();
        let heads =
            futures_util::future::join_all(children.iter().map(|c| self.store.head_object(&c.key)))
                .await;
        // Just confirmed by the server: trusted as long as a listing is.
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        let mut t = self.table();
        for (
            AheadCandidate {
                ino,
                name,
                kind,
                key,
            },
            head,
        ) in children.into_iter().zip(heads)
        {
            let current = t.child(parent, &name).map(|c| {
                (
                    c.ino,
                    c.version.is_some() || c.attrs_pending || c.local || c.writer.is_some(),
                )
            });
            if current != Some((ino, false)) {
                continue; // changed meanwhile
            }
            match (kind, head) {
                (Kind::Dir, Ok(h)) => {
                    if let Some(i) = t.get_mut(ino) {
                        i.valid_until = valid_until;
                        fill_marker_attrs(i, &h, self.mounted_at);
                    }
                }
                (Kind::Dir, Err(e)) if e.is_not_found() => {
                    if let Some(i) = t.get_mut(ino) {
                        i.version = Some(Version::Absent);
                        i.valid_until = valid_until;
                    }
                }
                (_, Ok(h)) => {
                    let kind = Kind::of_object(PosixMeta::parse(&h.metadata).file_type);
                    t.upsert_child(parent, &name, kind, |i| {
                        fill_from_head(i, &h, self.mounted_at);
                        i.valid_until = valid_until;
                    });
                }
                (_, Err(e)) => {
                    tracing::debug!(key, error = %e, "statahead HEAD failed; the lookup will ask again");
                }
            }
        }
        drop(t);
        self.release_claims(&claims);
    }

    /// Reads a directory's mode and mtime from its `name/` marker (one
    /// HEAD); a directory without a marker keeps the defaults. Errors only
    /// leave the defaults (logged).
    pub(super) async fn read_dir_marker(&self, ino: u64) {
        let Ok(d) = self.inode(ino) else { return };
        if d.kind != Kind::Dir || ino == ROOT {
            return;
        }
        let mut head = self
            .store
            .head_object(&self.cfg.dir_attrs.key(&d.key))
            .await;
        // A read-only mount cannot ask where a server keeps them: a marker
        // without attributes may have them in the attributes object.
        let bare = |h: &crate::s3::ObjectHead| !h.metadata.contains_key("mode");
        if self.cfg.read_only
            && self.cfg.dir_attrs == DirAttrs::OnMarker
            && head.as_ref().is_ok_and(bare)
        {
            if let Ok(h) = self.store.head_object(&dir_attrs::object_key(&d.key)).await {
                head = Ok(h);
            }
        }
        let mut t = self.table();
        let Some(i) = t.get_mut(ino) else { return };
        if i.attrs_pending {
            return;
        }
        match head {
            Ok(h) => fill_marker_attrs(i, &h, self.mounted_at),
            Err(e) if e.is_not_found() => i.version = Some(Version::Absent),
            Err(e) => tracing::warn!(key = %d.key, error = %e, "reading a directory marker failed"),
        }
    }

    /// Whether a lookup of `name` should first list `parent` again: the
    /// name is unknown, and `parent` was listed (or made) here and its
    /// listing went stale, and it is small enough that one LIST is cheaper
    /// than the HEAD and LIST a lookup of an unknown name costs.
    fn should_relist(&self, parent: u64, name: &str) -> bool {
        let t = self.table();
        if t.child(parent, name).is_some() || t.known_missing(parent, name, Instant::now()) {
            return false;
        }
        t.get(parent).is_some_and(|p| {
            p.dir.complete_until.is_some_and(|u| u <= Instant::now()) && p.dir.kids <= RELIST_MAX
        })
    }
}
