//! The filesystem core: every POSIX operation bucketfs supports, as async
//! functions returning `FsResult`, testable without a kernel. `fuse.rs` only
//! decodes requests, calls these and encodes replies.
//!
//! The contract each operation keeps is written down in `docs/SEMANTICS.md`.

pub mod dir_attrs;
pub mod error;
pub mod inode;
pub mod meta;

use crate::prefetch::Reader;
use crate::s3::rules::{MAX_KEY_LEN, MIN_PART_SIZE};
use crate::s3::{MetadataDirective, ObjectStore, PutOptions, S3Error, Source};
use crate::upload::{Progress, Upload, UploadConfig};
use dir_attrs::{DirAttrs, DIR_ATTRS_NAME};
pub use error::{FsError, FsResult};
use inode::{Inode, InodeTable, Kind, StoredMeta, ROOT};
use meta::PosixMeta;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// The longest file name a listing may show (longer keys are skipped).
pub const MAX_NAME_LEN: usize = 255;
/// `st_blksize`: tools size their writes by it.
pub const BLOCK_SIZE: u32 = 1024 * 1024;

/// How a mount behaves.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Key prefix the mount shows ("" or ending in `/`).
    pub prefix: String,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub read_only: bool,
    pub upload: UploadConfig,
    /// How long attributes and listings are trusted.
    pub metadata_ttl: Duration,
    /// Largest read-ahead window per open file.
    pub max_readahead: u64,
    /// Memory all read-ahead shares.
    pub read_budget: Arc<crate::upload::budget::Budget>,
    /// Inodes kept beyond those the kernel knows (names listings brought in
    /// are dropped past this, except the directory being listed).
    pub max_inodes: usize,
    /// Files and directories seen in a listing take their attributes from
    /// it (size, Last-Modified, default mode and owner), without a HEAD of
    /// each for `x-amz-meta-*` (`--attrs-from-listing`).
    pub attrs_from_listing: bool,
    /// Read-only handles read through the kernel's page cache instead of
    /// directly (`--page-cache`).
    pub page_cache: bool,
    /// Where directory attributes are stored on this server.
    pub dir_attrs: DirAttrs,
}

/// The default of [`FsConfig::max_inodes`]: about 40 MiB of metadata.
pub const MAX_INODES: usize = 100_000;

impl FsConfig {
    /// The whole bucket, owned by root, with `bucketfs mount`'s defaults for
    /// the rest (modes 644/755, 1 s TTL, 64 MiB read-ahead from a 64 MiB
    /// budget); callers change what they need.
    pub fn new(upload: UploadConfig) -> Self {
        FsConfig {
            prefix: String::new(),
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
            upload,
            metadata_ttl: Duration::from_secs(1),
            max_readahead: 64 << 20,
            read_budget: crate::upload::budget::Budget::new(64 << 20),
            max_inodes: MAX_INODES,
            attrs_from_listing: false,
            page_cache: false,
            dir_attrs: DirAttrs::OnMarker,
        }
    }
}

/// File attributes as the kernel wants them (converted in `fuse.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks: ceil(size / 512), so `cp` does not think files sparse.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub blksize: u32,
    /// Device number (device nodes only).
    pub rdev: u32,
}

/// One entry of a directory listing snapshot.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

/// Attribute changes of a setattr call.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SystemTime>,
    pub mtime: Option<SystemTime>,
}

/// Filesystem totals for statfs: large, so `df` and `cp` never refuse.
#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// How a write handle stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteState {
    /// Accepting writes.
    Open,
    /// Completed by flush or fsync: the object is durable; later writes fail.
    Done,
    /// Failed; the error was reported once.
    Failed,
}

/// A file open for writing.
struct WriteHandle {
    fh: u64,
    ino: u64,
    key: String,
    /// Thread group of the opener: only its close completes the upload.
    opener_tgid: Option<u32>,
    /// None until the first write for files opened without O_TRUNC.
    upload: Option<Upload>,
    state: WriteState,
    /// The stored object's size at open: what the file is again when the
    /// close fails (the object at the key is then unchanged).
    stored_size: u64,
    /// The descriptor table (lock owner) of the first write that named
    /// one: its close completes the file ([`Fs::flush`]).
    writer_owner: Option<u64>,
}

/// Who closes a descriptor: the pid FUSE reports (0 from another PID
/// namespace) and the descriptor table it closes from (FLUSH's lock
/// owner, the same in every namespace; shared by threads and dups,
/// another one after fork).
#[derive(Debug, Clone, Copy)]
pub struct Closer {
    pub pid: u32,
    pub owner: Option<u64>,
}

impl From<u32> for Closer {
    /// A closer known by its pid alone.
    fn from(pid: u32) -> Self {
        Closer { pid, owner: None }
    }
}

/// A directory rename in progress: its prefix is marked in the inode
/// table until this is dropped, whatever way the rename ends.
struct RenameMark<'a> {
    fs: &'a Fs,
    prefix: &'a str,
}

impl Drop for RenameMark<'_> {
    fn drop(&mut self) {
        self.fs.table().end_rename(self.prefix);
    }
}

/// What an open file handle holds.
enum Handle {
    Dir(Vec<DirEntry>),
    Read(Reader),
    Write(Box<WriteHandle>),
}

type SharedHandle = Arc<tokio::sync::Mutex<Handle>>;

/// The filesystem: a bucket (through an [`ObjectStore`]) seen as directories and files.
pub struct Fs {
    store: Arc<dyn ObjectStore>,
    cfg: FsConfig,
    inodes: Mutex<InodeTable>,
    handles: Mutex<HashMap<u64, SharedHandle>>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
    /// This filesystem, for the tasks it starts (metadata written later).
    me: Weak<Fs>,
    /// Woken when a statahead batch has been recorded.
    ahead_done: tokio::sync::Notify,
    /// Woken when a write of pending attributes ends.
    persisted: tokio::sync::Notify,
    /// Set at shutdown: new opens are refused.
    closing: std::sync::atomic::AtomicBool,
    /// Files being written (by handle), for `bucketfs status`.
    writers: Mutex<BTreeMap<u64, (String, Arc<Progress>)>>,
    stats: MountStats,
    /// Keys listings skipped (each is logged once), up to [`MAX_SKIPPED_LOGGED`].
    skipped: Mutex<std::collections::HashSet<String>>,
    /// One stale directory listed again at a time (lookups wait, then find it fresh).
    relisting: tokio::sync::Mutex<()>,
}

/// Largest directory (children known here) listed again for a lookup.
const RELIST_MAX: usize = 2000;

/// Skipped keys remembered (so each is logged once); past this, no more are logged.
const MAX_SKIPPED_LOGGED: usize = 10_000;

/// Counters of the whole mount, for `bucketfs status`.
#[derive(Debug, Default)]
pub struct MountStats {
    /// Files whose close stored them.
    pub files_stored: AtomicU64,
    pub bytes_stored: AtomicU64,
    /// Closes that failed (nothing stored).
    pub failures: AtomicU64,
    /// Uploads of files still open at shutdown, aborted.
    pub aborted_at_shutdown: AtomicU64,
}

/// A failed read, logged with the handle and range, as the kernel gets it.
fn read_failed(fh: u64, offset: u64, size: u32, e: crate::s3::S3Error) -> FsError {
    tracing::warn!(fh, offset, size, error = %e, "read failed");
    FsError::from(e)
}

/// One file being written, as `bucketfs status` shows it.
#[derive(Debug, Clone)]
pub struct WriterStatus {
    pub key: String,
    pub bytes_written: u64,
    pub bytes_sent: u64,
    pub parts_sent: u64,
    pub parts_in_flight: u64,
    pub elapsed: Duration,
}

/// Siblings read ahead with one lookup (HEADs sent together).
const STATAHEAD: usize = 64;

/// Requests at once when renaming a directory.
const RENAME_CONCURRENCY: usize = 16;

/// Content-Type of directory markers.
const DIR_CONTENT_TYPE: &str = "application/x-directory";

/// How long attributes set on a stored object wait to be written (a rename
/// or another change in that time is folded into the same request).
pub const ATTR_DELAY: Duration = Duration::from_secs(1);

/// The Content-Type of bytes nothing is known of: S3's default.
pub const GENERIC_CONTENT_TYPE: &str = "binary/octet-stream";

/// The Content-Type a file name suggests (`a.html`: `text/html`), if any.
pub fn content_type_of(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    mime_guess::from_path(base).first_raw().map(str::to_string)
}

/// The Content-Type an object renamed from `old` to `new` should carry:
/// when the stored one was generic or came from the old name (rsync's temp
/// names have none), the new name's; a type set some other way stays.
/// None: keep what is stored.
pub fn content_type_after_rename(stored: Option<&str>, old: &str, new: &str) -> Option<String> {
    let from_new = content_type_of(new)?;
    let from_old = content_type_of(old);
    let generic = match stored {
        None => true,
        Some(t) => {
            let t = t.split(';').next().unwrap_or(t).trim();
            t.eq_ignore_ascii_case("application/octet-stream")
                || t.eq_ignore_ascii_case("binary/octet-stream")
                || from_old.as_deref() == Some(t)
        }
    };
    (generic && stored != Some(from_new.as_str())).then_some(from_new)
}

/// The attributes of an inode that go into the object's metadata.
fn posix_of(i: &Inode) -> PosixMeta {
    PosixMeta {
        perm: i.perm,
        uid: i.uid,
        gid: i.gid,
        mtime: i.mtime_set.then_some(i.mtime),
        file_type: None,
        rdev: (i.rdev != 0).then_some(i.rdev),
    }
}

/// Takes mode, owner, mtime and the stored metadata from a HEAD (of an
/// object, or of a directory's marker).
fn fill_marker_attrs(i: &mut Inode, h: &crate::s3::ObjectHead, fallback_mtime: SystemTime) {
    let p = PosixMeta::parse(&h.metadata);
    i.mtime = p.mtime.or(h.last_modified).unwrap_or(fallback_mtime);
    i.mtime_set = p.mtime.is_some();
    i.perm = p.perm;
    i.uid = p.uid;
    i.gid = p.gid;
    i.version = Some((h.etag.clone(), h.last_modified));
    i.stored = Some(StoredMeta::of_head(h));
}

/// Takes a file's attributes and the rest of its metadata from a HEAD.
fn fill_from_head(i: &mut Inode, h: &crate::s3::ObjectHead, fallback_mtime: SystemTime) {
    fill_marker_attrs(i, h, fallback_mtime);
    i.size = h.size;
    i.rdev = PosixMeta::parse(&h.metadata).rdev.unwrap_or(0);
    i.link_target = None;
    i.ctime = h.last_modified.unwrap_or(i.mtime);
    i.etag = Some(h.etag.clone());
    i.attrs_pending = false;
}

/// The thread-group id (process id) of a thread, from /proc.
pub fn tgid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Whether two Last-Modified times are the same second (HEAD gives whole
/// seconds, listings milliseconds).
fn same_second(a: Option<SystemTime>, b: Option<SystemTime>) -> bool {
    let secs = |t: Option<SystemTime>| {
        t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
    };
    secs(a) == secs(b)
}

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

/// Checks a name given by a program: UTF-8, and short enough for S3.
/// A failed store call as the errno it gives, logged with the key it was
/// for (a missing object is an answer, not a failure: not logged).
fn failed<'k>(key: &'k str, what: &'static str) -> impl FnOnce(S3Error) -> FsError + 'k {
    move |e| {
        if !e.is_not_found() {
            tracing::warn!(key, error = %e, "{what} failed");
        }
        FsError::from(e)
    }
}

fn check_name(name: &OsStr) -> FsResult<&str> {
    let name = name.to_str().ok_or(FsError::IllegalName)?;
    if name.len() > MAX_NAME_LEN {
        return Err(FsError::NameTooLong);
    }
    if name == DIR_ATTRS_NAME {
        // Where directory attributes may live: never a file of the mount.
        return Err(FsError::Denied(format!(
            "{DIR_ATTRS_NAME} is reserved for directory attributes"
        )));
    }
    Ok(name)
}

/// Whether a listed name can be shown as a file name.
fn listable_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != DIR_ATTRS_NAME
        && !name.contains('/')
        && name.len() <= MAX_NAME_LEN
}

impl Fs {
    /// A filesystem over `store` (one bucket), showing keys under `cfg.prefix`.
    pub fn new(store: Arc<dyn ObjectStore>, cfg: FsConfig) -> Arc<Self> {
        let now = SystemTime::now();
        Arc::new_cyclic(|me| Fs {
            inodes: Mutex::new(InodeTable::new(cfg.prefix.clone(), now)),
            store,
            cfg,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: now,
            me: me.clone(),
            ahead_done: tokio::sync::Notify::new(),
            persisted: tokio::sync::Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            writers: Mutex::new(BTreeMap::new()),
            stats: MountStats::default(),
            skipped: Mutex::new(std::collections::HashSet::new()),
            relisting: tokio::sync::Mutex::new(()),
        })
    }

    /// A listing skips `key` (`a//b`, `..`, a name over 255 bytes): logged
    /// once per key, so a big bucket's listings do not flood the log.
    fn skip_key(&self, key: &str, why: &str) {
        let mut s = self.skipped.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() < MAX_SKIPPED_LOGGED && s.insert(key.to_string()) {
            tracing::warn!(key = %crate::admin::escape_key(key), "skipping {why} (logged once)");
            if s.len() == MAX_SKIPPED_LOGGED {
                tracing::warn!("{MAX_SKIPPED_LOGGED} keys skipped; no more are logged");
            }
        }
    }

    /// The kernel got an entry reply for `ino`.
    pub fn remember(&self, ino: u64) {
        self.table().remember(ino);
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.table().forget(ino, n);
    }

    /// Inodes held (tests: the table stays bounded).
    pub fn inode_count(&self) -> usize {
        self.table().len()
    }

    /// How many distinct keys listings have skipped (tests, status).
    pub fn skipped_keys(&self) -> usize {
        self.skipped.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The mount's counters.
    pub fn stats(&self) -> &MountStats {
        &self.stats
    }

    /// The files being written now, in key order.
    pub fn writers(&self) -> Vec<WriterStatus> {
        let w = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<WriterStatus> = w
            .values()
            .map(|(key, p)| WriterStatus {
                key: key.clone(),
                bytes_written: p.bytes_written.load(Ordering::Relaxed),
                bytes_sent: p.bytes_sent.load(Ordering::Relaxed),
                parts_sent: p.parts_sent.load(Ordering::Relaxed),
                parts_in_flight: p.parts_in_flight.load(Ordering::Relaxed),
                elapsed: p.started.elapsed(),
            })
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Shows the file of handle `fh` in `bucketfs status` (once per upload).
    fn track(&self, fh: u64, key: &str, u: &Upload) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(fh)
            .or_insert_with(|| (key.to_string(), u.progress_handle()));
    }

    fn untrack(&self, fh: u64) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh);
    }

    fn not_closing(&self) -> FsResult<()> {
        if self.closing.load(Ordering::Relaxed) {
            Err(FsError::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Shuts down (SIGTERM, SIGINT): new opens get ESHUTDOWN; closes in
    /// progress get until `grace` to finish; files still open for writing
    /// have their uploads aborted (their later writes and close get EIO,
    /// nothing appears at their keys); pending attributes are written.
    /// Returns how many uploads it aborted.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.closing.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + grace;
        let handles: Vec<(u64, SharedHandle)> = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(fh, h)| (*fh, h.clone()))
            .collect();
        let mut aborted = 0;
        for (fh, h) in handles {
            let Ok(mut g) = tokio::time::timeout_at(deadline, h.lock()).await else {
                tracing::warn!(fh, "shutdown: a close is still running after the grace period; its upload is left to the journal");
                continue;
            };
            let Handle::Write(w) = &mut *g else { continue };
            if w.state != WriteState::Open {
                continue;
            }
            w.state = WriteState::Failed;
            if let Some(mut u) = w.upload.take() {
                tracing::warn!(key = %w.key, written = u.size(), "shutdown: file still open for writing; its upload is aborted and nothing is stored");
                u.abort().await;
                aborted += 1;
                self.stats
                    .aborted_at_shutdown
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let attrs = left.max(Duration::from_secs(5));
        if tokio::time::timeout(attrs, self.persist_all())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: gave up writing pending attributes");
        }
        aborted
    }

    /// The configuration.
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    fn table(&self) -> std::sync::MutexGuard<'_, InodeTable> {
        self.inodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn attr_of(&self, i: &Inode) -> Attr {
        let (default_perm, nlink) = match i.kind {
            Kind::Dir => (self.cfg.dir_mode, 2),
            Kind::Symlink => (0o777, 1),
            Kind::File | Kind::Special(_) => (self.cfg.file_mode, 1),
        };
        Attr {
            ino: i.ino,
            kind: i.kind,
            size: i.size,
            blocks: i.size.div_ceil(512),
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            perm: i.perm.unwrap_or(default_perm),
            nlink,
            uid: i.uid.unwrap_or(self.cfg.uid),
            gid: i.gid.unwrap_or(self.cfg.gid),
            blksize: BLOCK_SIZE,
            rdev: i.rdev,
        }
    }

    fn inode(&self, ino: u64) -> FsResult<Inode> {
        self.table().get(ino).cloned().ok_or(FsError::NotFound)
    }

    fn new_fh(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.insert_handle(fh, h);
        fh
    }

    fn insert_handle(&self, fh: u64, h: Handle) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(tokio::sync::Mutex::new(h)));
    }

    fn handle(&self, fh: u64) -> FsResult<SharedHandle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn dir_key(&self, parent: u64) -> FsResult<String> {
        let p = self.inode(parent)?;
        if p.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        Ok(p.key)
    }

    fn writable(&self) -> FsResult<()> {
        if self.cfg.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

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
                            i.version = Some((String::new(), None));
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
            None if p.complete_until.is_some_and(|u| u > now) => Cached::Missing,
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

    /// Attributes of an inode (cached; files being written show their current size).
    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = self.table();
        Ok(self.attr_of(t.get(ino).ok_or(FsError::NotFound)?))
    }

    /// Changes attributes. Mode, owner and times are kept by this mount (the
    /// rsync issue persists them); size works on files being written, and
    /// truncating a closed file to 0 stores an empty object.
    pub async fn setattr(&self, ino: u64, fh: Option<u64>, s: SetAttr) -> FsResult<Attr> {
        let inode = self.inode(ino)?;
        if let Some(size) = s.size {
            self.writable()?;
            if inode.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let writer = fh.filter(|f| self.is_write_handle(*f)).or(inode.writer);
            match writer {
                Some(wfh) => {
                    let h = self.handle(wfh)?;
                    let mut g = h.lock().await;
                    let Handle::Write(w) = &mut *g else {
                        return Err(FsError::BadHandle);
                    };
                    if w.state != WriteState::Open {
                        return Err(FsError::Io("file already completed".into()));
                    }
                    if w.upload.is_none() {
                        if size != 0 && size != inode.size {
                            return Err(FsError::NotSupported(
                                "resizing an existing object other than to 0",
                            ));
                        }
                        if size == 0 {
                            w.upload = Some(self.new_upload(w.key.clone(), ino));
                        }
                    }
                    if let Some(u) = w.upload.as_mut() {
                        if let Err(e) = u.truncate(size).await {
                            tracing::warn!(key = %w.key, size, error = %e, "truncate refused");
                            // As a refused write: the file is doomed, and its
                            // close fails rather than store the old length.
                            w.state = WriteState::Failed;
                            return Err(e.into());
                        }
                    }
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
                        i.version = Some((etag, None));
                        i.stored = Some(StoredMeta::of_options(&opts));
                    }
                }
                None => {
                    return Err(FsError::NotSupported(
                        "resizing a closed object other than to 0",
                    ))
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
    fn persist_later(&self, ino: u64) {
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
    async fn replace_options(&self, i: &Inode) -> FsResult<PutOptions> {
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
    async fn persist(&self, ino: u64, force: bool) -> FsResult<()> {
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
                    n.version = Some((etag.clone(), None));
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
    async fn settled<T>(&self, ino: u64, f: impl Fn(&mut Inode) -> T) -> FsResult<T> {
        self.after_attr_writes(|t| match t.get_mut(ino) {
            None => Some(Err(FsError::NotFound)),
            Some(i) if !i.persisting => Some(Ok(f(i))),
            Some(_) => None,
        })
        .await
    }

    /// Runs `ready` on the inode table, again each time a write of pending
    /// attributes ends, until it answers.
    async fn after_attr_writes<T>(&self, ready: impl Fn(&mut InodeTable) -> Option<T>) -> T {
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
    async fn read_unread_metadata(&self, ino: u64) -> FsResult<()> {
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

    /// Siblings to read ahead with a lookup that needs a HEAD: none for the
    /// first such lookup in a directory, then up to [`STATAHEAD`] at a time,
    /// so `ls -l` and rsync over a listed directory cost a few rounds of
    /// parallel HEADs rather than one HEAD after another.
    fn statahead_candidates(
        &self,
        parent: u64,
        name: &str,
        dirs_only: bool,
    ) -> Vec<(u64, String, Kind, String)> {
        let mut t = self.table();
        let Some(p) = t.get_mut(parent) else {
            return Vec::new();
        };
        p.head_misses += 1;
        if p.head_misses < 2 {
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
            if t.get(parent).is_none_or(|p| p.head_misses < 2) {
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
    fn release_claims(&self, batch: &[(u64, String, Kind, String)]) {
        let mut t = self.table();
        for (ino, ..) in batch {
            if let Some(i) = t.get_mut(*ino) {
                i.ahead_pending = false;
            }
        }
        drop(t);
        self.ahead_done.notify_waiters();
    }

    /// HEADs the given children of `parent` concurrently and records what
    /// they say (a file's metadata and kind; a directory's marker).
    async fn read_ahead(&self, parent: u64, children: Vec<(u64, String, Kind, String)>) {
        if children.is_empty() {
            return;
        }
        let claims = children.clone();
        let heads = futures_util::future::join_all(
            children
                .iter()
                .map(|(_, _, _, key)| self.store.head_object(key)),
        )
        .await;
        // Just confirmed by the server: trusted as long as a listing is.
        let valid_until = Instant::now() + self.cfg.metadata_ttl;
        let mut t = self.table();
        for ((ino, name, kind, key), head) in children.into_iter().zip(heads) {
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
                        i.version = Some((String::new(), None));
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
    async fn read_dir_marker(&self, ino: u64) {
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
            Err(e) if e.is_not_found() => i.version = Some((String::new(), None)),
            Err(e) => tracing::warn!(key = %d.key, error = %e, "reading a directory marker failed"),
        }
    }

    /// Writes a directory's pending mode/owner/mtime onto its marker: the
    /// empty `dir/` object is stored again with them (a PutObject, not a
    /// copy onto itself: SeaweedFS answers such a copy of a marker with
    /// NoSuchKey, and an empty PUT costs no more), keeping the marker's other
    /// metadata; a directory that was only a prefix gets a marker.
    async fn persist_dir_attrs(&self, i: &Inode) -> FsResult<String> {
        let key = self.cfg.dir_attrs.key(&i.key);
        let existing = match &i.stored {
            Some(m) if i.version.as_ref().is_some_and(|(e, _)| !e.is_empty()) => Some(m.clone()),
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
            n.version = Some((etag.clone(), None));
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

    fn is_write_handle(&self, fh: u64) -> bool {
        self.handle(fh)
            .ok()
            .and_then(|h| h.try_lock().ok().map(|g| matches!(&*g, Handle::Write(_))))
            .unwrap_or(true)
    }

    /// Takes one listing snapshot of a directory (ListObjectsV2 with
    /// delimiter `/`, every page) and returns a handle serving it.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.list_dir(ino).await?;
        Ok(self.new_fh(Handle::Dir(entries)))
    }

    /// Lists a directory (every page) and records what it shows: its
    /// children, and that a name not among them does not exist (for
    /// `--metadata-ttl`). Names being created here are added.
    async fn list_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
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
                            i.version = Some((String::new(), None)); // marker unread
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
                    i.version.as_ref().is_some_and(|(etag, lm)| {
                        *etag == o.etag && (lm.is_none() || same_second(*lm, o.last_modified))
                    })
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
                        i.version = self
                            .cfg
                            .attrs_from_listing
                            .then(|| (o.etag.clone(), o.last_modified));
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
                d.complete_until = Some(valid_until);
                d.listing = Some(Arc::new(order));
                d.ahead_scanned = 0;
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
            p.complete_until.is_some_and(|u| u <= Instant::now()) && p.kids <= RELIST_MAX
        })
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
    fn new_upload(&self, key: String, ino: u64) -> Upload {
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
    fn repin_readers(&self, ino: u64, old: &str, new: &str) {
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
            i.version = Some((etag, None));
            i.stored = Some(StoredMeta::of_options(&opts));
            i.valid_until = valid_until;
            // Just made, so empty: lookups inside need no request for a while.
            i.complete_until = Some(valid_until);
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

    /// Copies an object over 5 GiB on the server (multipart, UploadPartCopy).
    async fn copy_large(
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
            i.version = Some((etag, None));
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
        if src.local || src.writer.is_some() {
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
                i.version = Some((etag, None));
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

    /// statfs: large numbers, so `df` and `cp` never refuse.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: 1 << 40,
            bfree: 1 << 40,
            files: 1 << 40,
            ffree: 1 << 40,
            bsize: BLOCK_SIZE,
            namelen: MAX_NAME_LEN as u32,
        }
    }

    /// Number of open handles (tests, status).
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The inode of a path relative to the root, if known (tests).
    pub fn known_inode(&self, parent: u64, name: &str) -> Option<u64> {
        self.table().child(parent, name).map(|i| i.ino)
    }

    /// The root inode number.
    pub fn root(&self) -> u64 {
        ROOT
    }
}

#[cfg(test)]
mod tests;
