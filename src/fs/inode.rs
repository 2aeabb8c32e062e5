//! The inode table: inode numbers <-> object keys, cached attributes, and
//! which inodes are being written through this mount.

use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime};

/// The root directory's inode number.
pub const ROOT: u64 = 1;

/// What an inode is. Symlinks and special files are objects whose
/// `x-amz-meta-mode` says so (as s3fs stores them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// The object's body is the target.
    Symlink,
    /// FIFO, socket or device node: an empty object; the `S_IFMT` bits.
    Special(u32),
}

impl Kind {
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Special(t) => t,
        }
    }

    /// The kind an object's stored `st_mode` type bits name (a plain file
    /// when there are none, or when they name a directory: a key without a
    /// trailing `/` cannot be one).
    pub fn of_object(type_bits: Option<u32>) -> Kind {
        match type_bits {
            Some(libc::S_IFLNK) => Kind::Symlink,
            Some(t @ (libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK)) => {
                Kind::Special(t)
            }
            _ => Kind::File,
        }
    }
}

/// What we know of one file or directory.
#[derive(Debug, Clone)]
pub struct Inode {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: Kind,
    /// Object key for a file; key prefix ending in `/` (or the mount prefix) for a directory.
    pub key: String,
    pub size: u64,
    pub mtime: SystemTime,
    pub atime: SystemTime,
    pub ctime: SystemTime,
    /// Permission bits set through this mount (chmod), else the mount's default.
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub etag: Option<String>,
    /// Attributes are trusted until then (then looked up again).
    pub valid_until: Instant,
    /// The handle writing this file, if any.
    pub writer: Option<u64>,
    /// Handles reading this file: attribute copies of it wait until none
    /// is left (a copy can give the object a new ETag, which a reader
    /// would take for the object being replaced).
    pub readers: u32,
    /// Exists only in this mount so far (created, not yet stored).
    pub local: bool,
    /// Unlinked through this mount: a close still on its way must not
    /// leave the file stored. (A name merely taken by a directory another
    /// client made is not an unlink.)
    pub unlinked: bool,
    /// Versions this mount stored of the file: a reader opened before the
    /// last one reads the new one (another client's replacement is not
    /// counted: a reader of that gets ESTALE instead of mixing versions).
    pub commits: u64,
    /// The stored object's metadata as last seen or written (a CopyObject
    /// with REPLACE must send all of it again).
    pub stored: Option<StoredMeta>,
    /// Where the attributes came from (None: not read yet): a listing
    /// showing the same object version keeps them.
    pub version: Option<Version>,
    /// Mode, owner or mtime changed on the stored object and not yet written to it.
    pub attrs_pending: bool,
    /// mtime was set explicitly (utimes) since the last write.
    pub mtime_set: bool,
    /// Device number of a device node.
    pub rdev: u32,
    /// A symlink's target, once read.
    pub link_target: Option<String>,
    /// A statahead HEAD for this name is on its way.
    pub ahead_pending: bool,
    /// Its pending attributes are being written (a copy onto itself).
    pub persisting: bool,
    /// Entry replies the kernel has not forgotten: while above 0 the kernel
    /// may name this inode, so it stays.
    pub lookups: u64,
    /// What only a directory has (unused for files).
    pub dir: DirState,
}

/// What a directory's inode holds besides its attributes.
#[derive(Debug, Clone, Default)]
pub struct DirState {
    /// Its children here are its complete listing until then (a fresh
    /// listing, or mkdir of an empty directory), so a name not among them
    /// does not exist and costs no request.
    pub complete_until: Option<Instant>,
    /// Lookups of its children that needed a HEAD; from the second on,
    /// siblings are read ahead (`ls -l`, rsync).
    pub head_misses: u32,
    /// The names of its last listing, sorted.
    pub listing: Option<std::sync::Arc<Vec<String>>>,
    /// How far into `listing` statahead has scanned (names before it were
    /// read, are being read, or are left to their lookups).
    pub ahead_scanned: usize,
    /// Children this table holds.
    pub kids: usize,
}

/// A sibling whose attributes statahead reads before it is looked up.
#[derive(Debug, Clone)]
pub struct AheadCandidate {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
    pub key: String,
}

/// Where an inode's attributes were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// The object (or directory marker) with this ETag and Last-Modified
    /// (None when the answer that made it had none: a PUT, a copy).
    Object {
        etag: String,
        last_modified: Option<SystemTime>,
    },
    /// Read, and no object holds them: a directory without a marker, or
    /// whose marker is gone (nothing to HEAD next time).
    Absent,
}

impl Version {
    /// The version a write or copy of ours answered with this ETag.
    pub fn of(etag: impl Into<String>) -> Self {
        Version::Object {
            etag: etag.into(),
            last_modified: None,
        }
    }
}

/// What a CopyObject with REPLACE must carry over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredMeta {
    pub content_type: Option<String>,
    pub storage_class: Option<String>,
    /// `x-amz-meta-*`, names without the prefix.
    pub user: BTreeMap<String, String>,
    /// Cache-Control, Content-Encoding and the other standard headers.
    pub system: Vec<(String, String)>,
    /// The object's own SSE-S3 / SSE-KMS encryption.
    pub sse: Option<crate::s3::Sse>,
}

/// Whether a storage class (as HEAD or a listing shows it) is one a plain
/// copy would not keep: anything but STANDARD, the server's default.
pub fn not_standard(class: Option<&str>) -> bool {
    class.is_some_and(|c| !c.eq_ignore_ascii_case("STANDARD"))
}

impl StoredMeta {
    /// The metadata a HEAD shows.
    pub fn of_head(h: &crate::s3::ObjectHead) -> Self {
        StoredMeta {
            content_type: h.content_type.clone(),
            storage_class: h.storage_class.clone(),
            user: h.metadata.clone(),
            system: h.system.clone(),
            sse: h.encryption.clone(),
        }
    }

    /// The metadata an object was created (or copied) with.
    pub fn of_options(o: &crate::s3::PutOptions) -> Self {
        StoredMeta {
            content_type: o.content_type.clone(),
            storage_class: o.storage_class.clone(),
            user: o.metadata.clone(),
            system: o
                .extra_headers
                .iter()
                .filter(|(k, _)| {
                    crate::s3::types::SYSTEM_HEADERS.contains(&k.to_ascii_lowercase().as_str())
                })
                .cloned()
                .collect(),
            sse: o.sse.clone(),
        }
    }

    /// Whether a COPY-directive copy would lose some of it: a copy gets the
    /// server's default storage class and encryption unless told.
    /// (SSE-S3 is every AWS bucket's default since 2023, so only SSE-KMS
    /// counts.)
    pub fn copy_would_lose(&self) -> bool {
        not_standard(self.storage_class.as_deref())
            || matches!(self.sse, Some(crate::s3::Sse::Kms { .. }))
    }

    /// Options that give an object this metadata (a copy with REPLACE, an append).
    pub fn to_options(&self) -> crate::s3::PutOptions {
        crate::s3::PutOptions {
            content_type: self.content_type.clone(),
            storage_class: self.storage_class.clone(),
            metadata: self.user.clone(),
            extra_headers: self.system.clone(),
            sse: self.sse.clone(),
            ..crate::s3::PutOptions::default()
        }
    }
}

impl Inode {
    /// A fresh inode whose attributes are not trusted yet.
    fn new(ino: u64, parent: u64, name: &str, kind: Kind, key: String, now: SystemTime) -> Self {
        Inode {
            ino,
            parent,
            name: name.to_string(),
            kind,
            key,
            size: 0,
            mtime: now,
            atime: now,
            ctime: now,
            perm: None,
            uid: None,
            gid: None,
            etag: None,
            valid_until: Instant::now(),
            writer: None,
            readers: 0,
            local: false,
            unlinked: false,
            commits: 0,
            stored: None,
            version: None,
            attrs_pending: false,
            mtime_set: false,
            rdev: 0,
            link_target: None,
            ahead_pending: false,
            persisting: false,
            lookups: 0,
            dir: DirState::default(),
        }
    }
}

/// All inodes the kernel may refer to.
#[derive(Debug)]
pub struct InodeTable {
    inodes: HashMap<u64, Inode>,
    /// Directory inode → child name → inode (nested, so a lookup by
    /// `&str` allocates nothing).
    children: HashMap<u64, HashMap<String, u64>>,
    /// Names the server said do not exist, until when that is trusted
    /// (rsync's temporary names, rename targets): the most recent
    /// [`NEGATIVE_NAMES`]. A name that comes into the table leaves it.
    negative: lru::LruCache<(u64, String), Instant>,
    next_ino: u64,
    /// Prefixes of directories being renamed: no file under one may start
    /// being written until the rename ends (its key would be the old one).
    renaming: Vec<String>,
}

/// Names the negative cache holds.
pub const NEGATIVE_NAMES: usize = 4096;

impl InodeTable {
    /// A table holding only the root, whose key prefix is `root_key`.
    pub fn new(root_key: String, now: SystemTime) -> Self {
        let mut root = Inode::new(ROOT, ROOT, "", Kind::Dir, root_key, now);
        // The root always exists.
        root.valid_until = Instant::now() + std::time::Duration::from_secs(u32::MAX as u64);
        let mut inodes = HashMap::new();
        inodes.insert(ROOT, root);
        InodeTable {
            inodes,
            children: HashMap::new(),
            negative: lru::LruCache::new(
                std::num::NonZeroUsize::new(NEGATIVE_NAMES).expect("not zero"),
            ),
            next_ino: ROOT + 1,
            renaming: Vec::new(),
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    /// The child called `name` of `parent`, if known.
    pub fn child(&self, parent: u64, name: &str) -> Option<&Inode> {
        self.child_ino(parent, name)
            .and_then(|i| self.inodes.get(&i))
    }

    fn child_ino(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    /// The server said `name` is not in `parent`: trusted until `until`
    /// unless the name comes into the table (create, rename, a listing).
    pub fn note_missing(&mut self, parent: u64, name: &str, until: Instant) {
        if self.child_ino(parent, name).is_none() {
            self.negative.put((parent, name.to_string()), until);
        }
    }

    /// Whether the server said lately that `name` is not in `parent`.
    pub fn known_missing(&self, parent: u64, name: &str, now: Instant) -> bool {
        self.negative
            .peek(&(parent, name.to_string()))
            .is_some_and(|until| *until > now)
    }

    /// Names `ino` as `name` in `parent`; returns the inode the name had.
    fn insert_child(&mut self, parent: u64, name: &str, ino: u64) -> Option<u64> {
        if !self.negative.is_empty() {
            self.negative.pop(&(parent, name.to_string()));
        }
        let replaced = self
            .children
            .entry(parent)
            .or_default()
            .insert(name.to_string(), ino);
        if replaced.is_none() {
            self.kid_count(parent, 1);
        }
        replaced
    }

    /// Unnames `name` in `parent`; returns the inode it had.
    fn take_child(&mut self, parent: u64, name: &str) -> Option<u64> {
        let names = self.children.get_mut(&parent)?;
        let removed = names.remove(name)?;
        if names.is_empty() {
            self.children.remove(&parent);
        }
        self.kid_count(parent, -1);
        Some(removed)
    }

    /// The key a child called `name` of directory `parent` has (a file's key;
    /// add `/` for a directory's prefix).
    pub fn child_key(&self, parent: u64, name: &str) -> Option<String> {
        self.inodes
            .get(&parent)
            .map(|p| format!("{}{}", p.key, name))
    }

    /// Records a child with fresh attributes, keeping its inode number when
    /// it is already known as the same kind (so `ls` twice shows one inode).
    pub fn upsert_child(
        &mut self,
        parent: u64,
        name: &str,
        kind: Kind,
        fill: impl FnOnce(&mut Inode),
    ) -> u64 {
        let Some(pkey) = self.inodes.get(&parent).map(|p| p.key.clone()) else {
            return 0;
        };
        let key = match kind {
            Kind::Dir => format!("{pkey}{name}/"),
            _ => format!("{pkey}{name}"),
        };
        let existing = self.child_ino(parent, name);
        let ino = match existing {
            Some(i) if self.inodes.get(&i).map(|n| n.kind) == Some(kind) => i,
            _ => {
                let i = self.next_ino;
                self.next_ino += 1;
                self.inodes.insert(
                    i,
                    Inode::new(i, parent, name, kind, key.clone(), SystemTime::now()),
                );
                self.insert_child(parent, name, i);
                i
            }
        };
        let inode = self.inodes.get_mut(&ino).expect("just inserted");
        inode.key = key;
        fill(inode);
        ino
    }

    /// Forgets the name `name` in `parent` (the inode stays while handles use it).
    pub fn remove_child(&mut self, parent: u64, name: &str) -> Option<u64> {
        self.take_child(parent, name)
    }

    fn kid_count(&mut self, parent: u64, delta: isize) {
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.dir.kids = p.dir.kids.saturating_add_signed(delta);
        }
    }

    /// The kernel got an entry for `ino` (lookup, create, mkdir...).
    pub fn remember(&mut self, ino: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups += 1;
        }
    }

    /// The kernel forgot `n` of its lookups of `ino`; once none is left the
    /// inode is dropped if nothing else holds it.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.lookups = i.lookups.saturating_sub(n);
        }
        self.evict(ino);
    }

    fn idle(i: &Inode) -> bool {
        i.ino != ROOT
            && i.lookups == 0
            && i.writer.is_none()
            && !i.local
            && !i.attrs_pending
            && !i.ahead_pending
            && !i.persisting
            && i.dir.kids == 0
    }

    /// Drops `ino` when idle: the kernel does not know it, nothing is
    /// pending on it, and (a directory) it holds no children here. Its
    /// parent's listing is then no longer complete, so a later lookup of
    /// the name asks the server instead of answering "no such file".
    pub fn evict(&mut self, ino: u64) -> bool {
        let Some(i) = self.inodes.get(&ino) else {
            return false;
        };
        if !Self::idle(i) {
            return false;
        }
        let (parent, name) = (i.parent, i.name.clone());
        self.inodes.remove(&ino);
        if self.child_ino(parent, &name) == Some(ino) {
            self.take_child(parent, &name);
            if let Some(p) = self.inodes.get_mut(&parent) {
                p.dir.complete_until = None;
                p.dir.listing = None;
            }
        }
        true
    }

    /// Keeps the table near `max` inodes by dropping idle ones the kernel
    /// does not know (names listings brought in), except children of
    /// `keep` (the directory being listed). Returns how many went.
    ///
    /// Each dropped name makes its directory's listing incomplete, so names
    /// go directory by directory: first those of directories whose listing
    /// is already incomplete, then those listed longest ago. A few names
    /// from every directory would cost every directory its listing. Past
    /// `max` the table is trimmed to 7/8 of it, so a walk of many
    /// directories sorts the candidates once per several listings.
    pub fn trim(&mut self, max: usize, keep: u64) -> usize {
        if self.inodes.len() <= max {
            return 0;
        }
        let excess = self.inodes.len() - max + max / 8;
        // (until when the parent's listing is complete, parent, inode)
        let mut victims: Vec<(Option<Instant>, u64, u64)> = self
            .inodes
            .values()
            .filter(|i| i.parent != keep && Self::idle(i))
            .map(|i| {
                let listed = self
                    .inodes
                    .get(&i.parent)
                    .and_then(|p| p.dir.complete_until);
                (listed, i.parent, i.ino)
            })
            .collect();
        victims.sort_unstable();
        let mut dropped = 0;
        for (_, _, ino) in victims {
            if dropped == excess {
                break;
            }
            if self.evict(ino) {
                dropped += 1;
            }
        }
        dropped
    }

    /// Moves a file's name to `newparent`/`newname` (its key follows);
    /// returns the inode that name had before, now forgotten.
    pub fn move_child(
        &mut self,
        parent: u64,
        name: &str,
        newparent: u64,
        newname: &str,
    ) -> Option<u64> {
        let pkey = self.inodes.get(&newparent)?.key.clone();
        let ino = self.take_child(parent, name)?;
        let replaced = self.insert_child(newparent, newname, ino);
        let mut moved_dir = None;
        if let Some(i) = self.inodes.get_mut(&ino) {
            i.parent = newparent;
            i.name = newname.to_string();
            let old = std::mem::take(&mut i.key);
            i.key = match i.kind {
                Kind::Dir => format!("{pkey}{newname}/"),
                _ => format!("{pkey}{newname}"),
            };
            if i.kind == Kind::Dir {
                moved_dir = Some((old, i.key.clone()));
            }
        }
        // Everything known under a moved directory follows it.
        if let Some((old, new)) = moved_dir {
            for i in self.inodes.values_mut() {
                if i.ino != ino && i.key.starts_with(&old) {
                    i.key = format!("{new}{}", &i.key[old.len()..]);
                }
            }
        }
        replaced.filter(|r| *r != ino)
    }

    /// Whether a write of attributes under `prefix` is in flight.
    pub fn persisting_under(&self, prefix: &str) -> bool {
        self.inodes
            .values()
            .any(|i| i.persisting && i.key.starts_with(prefix))
    }

    /// Whether a file under `prefix` is being written or not stored yet.
    /// Marks the directory `prefix` as being renamed, unless a file under
    /// it is being written (false). Checked and marked under the table's
    /// lock, as writers check [`InodeTable::renaming_over`]: a rename and a
    /// writer under it cannot both go ahead.
    pub fn begin_rename(&mut self, prefix: &str) -> bool {
        if self.busy_under(prefix) {
            return false;
        }
        self.renaming.push(prefix.to_string());
        true
    }

    /// The rename of `prefix` is over.
    pub fn end_rename(&mut self, prefix: &str) {
        if let Some(i) = self.renaming.iter().position(|p| p == prefix) {
            self.renaming.swap_remove(i);
        }
    }

    /// Whether `key` is under a directory being renamed.
    pub fn renaming_over(&self, key: &str) -> bool {
        self.renaming.iter().any(|p| key.starts_with(p.as_str()))
    }

    pub fn busy_under(&self, prefix: &str) -> bool {
        self.inodes
            .values()
            .any(|i| i.key.starts_with(prefix) && (i.local || i.writer.is_some()))
    }

    /// The children of `parent` that follow `after` in its last listing
    /// (byte order, as ls and find go) and whose metadata no HEAD has read
    /// yet — statahead candidates — at most `max` among the next `window`
    /// names (`dirs_only`: directories only, for find). They are marked as
    /// being read.
    pub fn unread_children(
        &mut self,
        parent: u64,
        after: &str,
        window: usize,
        max: usize,
        dirs_only: bool,
    ) -> Vec<AheadCandidate> {
        let Some(order) = self.inodes.get(&parent).and_then(|p| p.dir.listing.clone()) else {
            return Vec::new();
        };
        let start = match order.binary_search_by(|n| n.as_str().cmp(after)) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        let end = (start + window).min(order.len());
        let scanned = self.inodes.get(&parent).map_or(0, |p| p.dir.ahead_scanned);
        if scanned >= end {
            return Vec::new(); // the reader is still inside what was read ahead
        }
        let mut picked: Vec<AheadCandidate> = Vec::new();
        let mut at = start.max(scanned);
        while at < end && picked.len() < max {
            if let Some(i) = self.child(parent, &order[at]) {
                if i.version.is_none()
                    && (!dirs_only || i.kind == Kind::Dir)
                    && !i.local
                    && i.writer.is_none()
                    && !i.attrs_pending
                    && !i.ahead_pending
                {
                    picked.push(AheadCandidate {
                        ino: i.ino,
                        name: i.name.clone(),
                        kind: i.kind,
                        key: i.key.clone(),
                    });
                }
            }
            at += 1;
        }
        // Readers go forward (ls, find, rsync): a name a jump passed over
        // is not read ahead, its own lookup reads it. A directories-only
        // scan leaves the files it passed for a later one.
        if !dirs_only {
            if let Some(p) = self.inodes.get_mut(&parent) {
                p.dir.ahead_scanned = at;
            }
        }
        // Claimed: no other lookup sends the same HEADs meanwhile.
        for c in &picked {
            if let Some(i) = self.inodes.get_mut(&c.ino) {
                i.ahead_pending = true;
            }
        }
        picked
    }

    /// Children known locally that are not stored yet or being written (they
    /// must show in listings and keep a directory non-empty).
    pub fn local_children(&self, parent: u64) -> Vec<&Inode> {
        self.children
            .get(&parent)
            .into_iter()
            .flat_map(|names| names.values())
            .filter_map(|i| self.inodes.get(i))
            .filter(|i| i.local || i.writer.is_some())
            .collect()
    }

    /// Inodes whose attributes still have to be written to their objects.
    pub fn pending_attrs(&self) -> Vec<u64> {
        self.inodes
            .values()
            .filter(|i| i.attrs_pending)
            .map(|i| i.ino)
            .collect()
    }

    /// Number of inodes held (for tests and status).
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Always false: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.inodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_keep_their_inode_numbers() {
        let mut t = InodeTable::new("pfx/".into(), SystemTime::now());
        let a = t.upsert_child(ROOT, "a", Kind::File, |i| i.size = 3);
        let a2 = t.upsert_child(ROOT, "a", Kind::File, |i| i.size = 4);
        assert_eq!(a, a2);
        assert_eq!(t.get(a).unwrap().size, 4);
        assert_eq!(t.get(a).unwrap().key, "pfx/a");
        let d = t.upsert_child(ROOT, "d", Kind::Dir, |_| {});
        assert_eq!(t.get(d).unwrap().key, "pfx/d/");
        let f = t.upsert_child(d, "f", Kind::File, |_| {});
        assert_eq!(t.get(f).unwrap().key, "pfx/d/f");
        // A name that changes kind gets a new inode.
        let a3 = t.upsert_child(ROOT, "a", Kind::Dir, |_| {});
        assert_ne!(a, a3);
        assert_eq!(t.remove_child(ROOT, "a"), Some(a3));
        assert!(t.child(ROOT, "a").is_none());
    }

    #[test]
    fn statahead_claims_each_name_once_and_skips_what_it_scanned() {
        let mut t = InodeTable::new(String::new(), SystemTime::now());
        let d = t.upsert_child(ROOT, "d", Kind::Dir, |_| {});
        let names: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
        for n in &names {
            t.upsert_child(d, n, Kind::File, |_| {});
        }
        assert_eq!(t.get(d).unwrap().dir.kids, 10);
        t.get_mut(d).unwrap().dir.listing = Some(std::sync::Arc::new(names.clone()));
        let keys =
            |v: &[AheadCandidate]| -> Vec<String> { v.iter().map(|c| c.key.clone()).collect() };
        // After f0: the next 4 names, claimed.
        let first = t.unread_children(d, "f0", 4, 4, false);
        assert_eq!(keys(&first), ["d/f1", "d/f2", "d/f3", "d/f4"]);
        assert!(t.child(d, "f1").unwrap().ahead_pending);
        // The reader inside the claimed window: nothing to add.
        assert!(t.unread_children(d, "f1", 3, 4, false).is_empty());
        // Further on: only the names not claimed yet.
        assert_eq!(
            keys(&t.unread_children(d, "f2", 4, 4, false)),
            ["d/f5", "d/f6"]
        );
        // A name whose read-ahead failed is offered again after a new listing.
        t.get_mut(t.child(d, "f3").unwrap().ino)
            .unwrap()
            .ahead_pending = false;
        assert!(t.unread_children(d, "f2", 4, 4, false).is_empty());
        t.get_mut(d).unwrap().dir.listing = Some(std::sync::Arc::new(names.clone()));
        t.get_mut(d).unwrap().dir.ahead_scanned = 0;
        assert_eq!(keys(&t.unread_children(d, "f2", 4, 4, false)), ["d/f3"]);
        // Moving and removing keep the child counts.
        t.move_child(d, "f9", ROOT, "g");
        assert_eq!(
            (t.get(d).unwrap().dir.kids, t.get(ROOT).unwrap().dir.kids),
            (9, 2)
        );
        assert_eq!(t.child(ROOT, "g").unwrap().key, "g");
        t.remove_child(d, "f8");
        assert_eq!(t.get(d).unwrap().dir.kids, 8);
        assert!(t.child(d, "f8").is_none());
    }
}
