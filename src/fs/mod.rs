//! The filesystem core: every POSIX operation bucketfs supports, as async
//! functions returning `FsResult`, testable without a kernel. `fuse.rs` only
//! decodes requests, calls these and encodes replies.
//!
//! The contract each operation keeps is written down in `docs/SEMANTICS.md`.

pub mod dir_attrs;
pub mod error;
pub mod inode;
pub mod meta;

mod attrs;
mod file;
mod lookup;
mod namespace;
mod readdir;
mod rename;
mod write;

use crate::prefetch::Reader;
use crate::s3::rules::MAX_KEY_LEN;
use crate::s3::{MetadataDirective, ObjectStore, PutOptions, S3Error, Source};
use crate::upload::{Progress, Upload, UploadConfig};
use dir_attrs::{DirAttrs, DIR_ATTRS_NAME};
pub use error::{FsError, FsResult};
use inode::{Inode, InodeTable, Kind, StoredMeta, Version, ROOT};
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

/// A descriptor open for writing: a share of the inode's [`file::OpenFile`].
struct WriteHandle {
    ino: u64,
    file: file::SharedFile,
    /// Thread group of the opener: without a descriptor table named by a
    /// write, only its close stores the file.
    opener_tgid: Option<u32>,
    /// The descriptor table (lock owner) of the first write that named
    /// one: its close stores the file ([`Fs::flush`]).
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
    /// Files being written (by inode), for `bucketfs status`.
    writers: Mutex<BTreeMap<u64, (String, Arc<Progress>)>>,
    /// Files open for writing, by inode: every descriptor of one shares it.
    files: Mutex<HashMap<u64, file::SharedFile>>,
    stats: MountStats,
    /// Keys listings skipped (each is logged once), up to [`MAX_SKIPPED_LOGGED`].
    skipped: Mutex<std::collections::HashSet<String>>,
    /// One stale directory listed again at a time (lookups wait, then find it fresh).
    relisting: tokio::sync::Mutex<()>,
}

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
    i.version = Some(Version::Object {
        etag: h.etag.clone(),
        last_modified: h.last_modified,
    });
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
            files: Mutex::new(HashMap::new()),
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

    /// Shows the file `ino` in `bucketfs status` while it is written.
    fn track(&self, ino: u64, key: &str, p: Arc<Progress>) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ino, (key.to_string(), p));
    }

    fn untrack(&self, ino: u64) {
        self.writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
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
        let files: Vec<file::SharedFile> = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut aborted = 0;
        for f in files {
            let Ok(mut g) = tokio::time::timeout_at(deadline, f.lock()).await else {
                tracing::warn!("shutdown: a close is still running after the grace period; its upload is left to the journal");
                continue;
            };
            if self.file_abort(&mut g).await {
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
