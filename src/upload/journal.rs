//! The crash journal: each mount writes down, before CreateMultipartUpload,
//! that it is about to start an upload of a key, then the upload ID, and
//! forgets the entry once the upload is completed or aborted. A mount that
//! starts after a crash (kill -9, power loss) finds what its predecessor left
//! and aborts it, so no multipart upload stays behind to be billed.
//!
//! Layout, under `--state-dir`:
//!
//! ```text
//! <state-dir>/<bucket>-<hash of bucket, prefix, mount point>/
//!     mount.info      bucket, prefix and mount point, for `bucketfs status`
//!     lock            flock'ed by the live mount
//!     control.sock    the status socket (see crate::status)
//!     uploads/<n>     one entry per upload: key, start time, upload ID
//! ```
//!
//! Each entry is written to a temporary file, fsync'ed and renamed, so a
//! crash leaves either the old entry or the new one, never a torn one.

use crate::s3::{hex, unhex, ObjectStore, S3Error};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How far apart our clock and the server's may be when an intent without an
/// upload ID is matched to the server's in-progress uploads of its key.
pub const INTENT_WINDOW: Duration = Duration::from_secs(300);

const MAGIC: &str = "bucketfs-journal 1";

/// One upload the journal knows of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    pub key: String,
    /// When the intent was written (seconds since the epoch).
    pub started: u64,
    /// Known once CreateMultipartUpload answered.
    pub upload_id: Option<String>,
}

/// What a sweep of entries did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Uploads aborted on the server.
    pub aborted: usize,
    /// Entries whose upload no longer existed (completed, or aborted before).
    pub gone: usize,
    /// Entries kept because the server could not be asked.
    pub failed: usize,
}

/// A mount's journal. Entries are only ever touched by the mount holding the lock.
pub struct Journal {
    dir: PathBuf,
    uploads: PathBuf,
    next: AtomicU64,
    /// Entries whose abort failed (or whose Create had an unknown outcome):
    /// the reaper tries them again.
    doomed: Mutex<BTreeSet<u64>>,
    aborted: AtomicU64,
    _lock: File,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The default state directory: `$XDG_STATE_HOME/bucketfs`, else
/// `~/.local/state/bucketfs` for users and `/var/lib/bucketfs` for root.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("bucketfs");
    }
    // SAFETY: getuid cannot fail.
    let root = unsafe { libc::getuid() } == 0;
    match std::env::var_os("HOME").filter(|h| !h.is_empty() && !root) {
        Some(h) => PathBuf::from(h).join(".local/state/bucketfs"),
        None => PathBuf::from("/var/lib/bucketfs"),
    }
}

/// The directory name of one mount's state: readable, and unique per
/// bucket, prefix and mount point. Short, so the status socket's path in
/// it stays within the 108 bytes a Unix socket address holds.
pub fn mount_id(bucket: &str, prefix: &str, mountpoint: &Path) -> String {
    let mut h = Sha256::new();
    h.update(bucket.as_bytes());
    h.update([0]);
    h.update(prefix.as_bytes());
    h.update([0]);
    h.update(mountpoint.as_os_str().as_encoded_bytes());
    let safe: String = bucket
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    format!("{safe}-{}", &hex(&h.finalize())[..16])
}

/// Fields of `mount.info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub bucket: String,
    pub prefix: String,
    pub mountpoint: PathBuf,
    pub pid: u32,
}

impl MountInfo {
    fn render(&self) -> String {
        format!(
            "bucket {}\nprefix {}\nmountpoint {}\npid {}\n",
            hex(self.bucket.as_bytes()),
            hex(self.prefix.as_bytes()),
            hex(self.mountpoint.as_os_str().as_encoded_bytes()),
            self.pid
        )
    }

    /// Reads a `mount.info`; None if it is missing or not ours.
    pub fn read(path: &Path) -> Option<MountInfo> {
        let text = fs::read_to_string(path).ok()?;
        let mut bucket = None;
        let mut prefix = None;
        let mut mp = None;
        let mut pid = 0;
        for line in text.lines() {
            let (k, v) = line.split_once(' ')?;
            match k {
                "bucket" => bucket = String::from_utf8(unhex(v)?).ok(),
                "prefix" => prefix = String::from_utf8(unhex(v)?).ok(),
                "mountpoint" => {
                    use std::os::unix::ffi::OsStringExt;
                    mp = Some(PathBuf::from(std::ffi::OsString::from_vec(unhex(v)?)))
                }
                "pid" => pid = v.parse().ok()?,
                _ => {}
            }
        }
        Some(MountInfo {
            bucket: bucket?,
            prefix: prefix?,
            mountpoint: mp?,
            pid,
        })
    }
}

/// Finds the state directory of the mount at `mountpoint` (for `bucketfs status`).
pub fn find_mount(state_dir: &Path, mountpoint: &Path) -> Option<(PathBuf, MountInfo)> {
    let mut found = None;
    for e in fs::read_dir(state_dir).ok()?.flatten() {
        if let Some(info) = MountInfo::read(&e.path().join("mount.info")) {
            if info.mountpoint == mountpoint {
                // The live one holds the lock; prefer it over stale ones.
                let live = lock_held(&e.path().join("lock"));
                if live || found.is_none() {
                    found = Some((e.path(), info));
                }
                if live {
                    break;
                }
            }
        }
    }
    found
}

/// Refuses a state directory another local user could tamper with: the
/// mount's own directory must be a real directory (not a symlink) of this
/// user that nobody else may enter, and the directory holding it must not
/// let others replace it (owned by this user or root, and not writable by
/// others unless sticky, as /tmp is).
fn check_private(state_dir: &Path, dir: &Path) -> io::Result<()> {
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    let refuse = |what: String| Err(io::Error::new(io::ErrorKind::PermissionDenied, what));
    let m = fs::symlink_metadata(dir)?;
    if !m.file_type().is_dir() {
        return refuse(format!("{} is not a directory (a symlink?)", dir.display()));
    }
    if m.uid() != me || m.mode() & 0o077 != 0 {
        return refuse(format!(
            "{} must belong to uid {me} with mode 0700 (it has uid {}, mode {:o})",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        ));
    }
    let p = fs::metadata(state_dir)?;
    let sticky = p.mode() & libc::S_ISVTX != 0;
    if (p.uid() != me && p.uid() != 0) || (p.mode() & 0o022 != 0 && !sticky) {
        return refuse(format!(
            "{} may be changed by other users (uid {}, mode {:o})",
            state_dir.display(),
            p.uid(),
            p.mode() & 0o7777
        ));
    }
    Ok(())
}

/// A private state directory for a mount that needs no journal (read
/// only): `$XDG_RUNTIME_DIR/bucketfs` when the session has one, else a new
/// directory with a random name under the temporary directory (mkdtemp),
/// never a predictable shared path another user could prepare.
pub fn private_fallback_dir() -> io::Result<PathBuf> {
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(run).join("bucketfs");
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(dir),
            Err(_) => {}
        }
    }
    let template = std::env::temp_dir().join("bucketfs-state-XXXXXX");
    let mut bytes = std::ffi::CString::new(template.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .into_bytes_with_nul();
    // SAFETY: a NUL-terminated buffer that mkdtemp rewrites in place.
    let made = unsafe { libc::mkdtemp(bytes.as_mut_ptr().cast()) };
    if made.is_null() {
        return Err(io::Error::last_os_error());
    }
    bytes.pop();
    let dir = PathBuf::from(std::ffi::OsString::from(
        String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
    ));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

fn lock_held(path: &Path) -> bool {
    match File::open(path) {
        Ok(f) => {
            // SAFETY: flock on a descriptor we own.
            let free = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 };
            !free
        }
        Err(_) => false,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("state directory {dir}: {err}")]
    Io { dir: PathBuf, err: io::Error },
    #[error("{dir} is locked: another bucketfs mounts the same bucket and prefix at the same place (pid {pid})")]
    Locked { dir: PathBuf, pid: u32 },
}

impl Journal {
    /// Opens (creating) the journal of this bucket, prefix and mount point,
    /// locks it, and returns the entries a previous mount left behind.
    pub fn open(state_dir: &Path, info: &MountInfo) -> Result<(Journal, Vec<Entry>), JournalError> {
        let dir = state_dir.join(mount_id(&info.bucket, &info.prefix, &info.mountpoint));
        let io = |err| JournalError::Io {
            dir: dir.clone(),
            err,
        };
        // Checked before anything is made inside: mkdir of the last
        // component never follows a symlink, but a recursive one would.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        check_private(state_dir, &dir).map_err(io)?;
        match fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join("uploads"))
        {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io(e)),
            _ => {}
        }
        check_private(&dir, &dir.join("uploads")).map_err(io)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join("lock"))
            .map_err(io)?;
        if !try_lock(&lock) {
            let pid = MountInfo::read(&dir.join("mount.info"))
                .map(|i| i.pid)
                .unwrap_or(0);
            return Err(JournalError::Locked { dir, pid });
        }
        let j = Journal {
            uploads: dir.join("uploads"),
            dir: dir.clone(),
            next: AtomicU64::new(1),
            doomed: Mutex::new(BTreeSet::new()),
            aborted: AtomicU64::new(0),
            _lock: lock,
        };
        j.write_atomic(&dir.join("mount.info"), info.render().as_bytes())
            .map_err(io)?;
        let left = j.entries().map_err(io)?;
        let max = left.iter().map(|e| e.id).max().unwrap_or(0);
        j.next.store(max + 1, Ordering::Relaxed);
        Ok((j, left))
    }

    /// This mount's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        {
            // A new file, never one found there (a symlink would be followed).
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))
    }

    fn write_entry(&self, e: &Entry) -> io::Result<()> {
        let mut text = format!(
            "{MAGIC}\nkey {}\nstarted {}\n",
            hex(e.key.as_bytes()),
            e.started
        );
        if let Some(id) = &e.upload_id {
            text.push_str(&format!("upload_id {}\n", hex(id.as_bytes())));
        }
        self.write_atomic(&self.uploads.join(e.id.to_string()), text.as_bytes())
    }

    fn read_entry(&self, id: u64) -> Option<Entry> {
        let text = fs::read_to_string(self.uploads.join(id.to_string())).ok()?;
        parse_entry(id, &text)
    }

    /// Writes down the intent to start an upload of `key`; call before
    /// CreateMultipartUpload. Returns the entry's number.
    pub fn begin(&self, key: &str) -> io::Result<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.write_entry(&Entry {
            id,
            key: key.to_string(),
            started: now_secs(),
            upload_id: None,
        })?;
        Ok(id)
    }

    /// Adds the upload ID to an entry, once CreateMultipartUpload answered.
    pub fn set_upload_id(&self, id: u64, upload_id: &str) -> io::Result<()> {
        let mut e = self.read_entry(id).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("journal entry {id}"))
        })?;
        e.upload_id = Some(upload_id.to_string());
        self.write_entry(&e)
    }

    /// Forgets an entry: its upload completed or was aborted.
    pub fn end(&self, id: u64) {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        match fs::remove_file(self.uploads.join(id.to_string())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), entry = id, error = %e, "journal: removing an entry failed")
            }
        }
    }

    /// Hands an entry to the reaper: its upload must be aborted, and the
    /// abort failed (or the Create's outcome is unknown).
    pub fn doom(&self, id: u64) {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    /// Entries waiting for the reaper.
    pub fn doomed(&self) -> Vec<u64> {
        self.doomed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Uploads this journal's sweeps aborted so far.
    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }

    /// Every entry on disk.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.uploads)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                // A temporary file of a write that never finished: no intent yet.
                let _ = fs::remove_file(e.path());
                continue;
            };
            match fs::read_to_string(e.path())
                .ok()
                .and_then(|t| parse_entry(id, &t))
            {
                Some(entry) => out.push(entry),
                None => {
                    tracing::warn!(path = %e.path().display(), "journal: unreadable entry removed");
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        out.sort_by_key(|e| e.id);
        Ok(out)
    }

    /// Aborts the uploads of `entries` and forgets each one that is settled.
    /// An entry without an upload ID (the crash came during Create) is
    /// matched to the server's in-progress uploads of its key that began
    /// within [`INTENT_WINDOW`] of the intent.
    pub async fn sweep(&self, store: &dyn ObjectStore, entries: &[Entry]) -> SweepReport {
        self.sweep_sparing(store, entries, &HashSet::new()).await
    }

    /// [`Journal::sweep`], leaving alone the uploads in `spare` (this
    /// mount's live ones, of the same key as an entry matched by listing).
    async fn sweep_sparing(
        &self,
        store: &dyn ObjectStore,
        entries: &[Entry],
        spare: &HashSet<String>,
    ) -> SweepReport {
        let mut r = SweepReport::default();
        for e in entries {
            match self.settle(store, e, spare).await {
                Ok(0) => {
                    r.gone += 1;
                    self.end(e.id);
                }
                Ok(n) => {
                    r.aborted += n;
                    self.aborted.fetch_add(n as u64, Ordering::Relaxed);
                    self.end(e.id);
                }
                Err(err) => {
                    r.failed += 1;
                    self.doom(e.id);
                    tracing::warn!(key = %e.key, upload_id = ?e.upload_id, error = %err, "journal: could not abort a left-over upload; will retry");
                }
            }
        }
        r
    }

    async fn settle(
        &self,
        store: &dyn ObjectStore,
        e: &Entry,
        spare: &HashSet<String>,
    ) -> Result<usize, S3Error> {
        if let Some(id) = &e.upload_id {
            return match store.abort_multipart_upload(&e.key, id).await {
                Ok(()) => {
                    tracing::info!(key = %e.key, upload_id = %id, "journal: left-over upload aborted");
                    Ok(1)
                }
                Err(err) if err.is_not_found() => Ok(0),
                Err(err) => Err(err),
            };
        }
        let from = UNIX_EPOCH + Duration::from_secs(e.started) - INTENT_WINDOW;
        let to = UNIX_EPOCH + Duration::from_secs(e.started) + INTENT_WINDOW;
        let mut n = 0;
        for u in store.list_uploads(&e.key).await? {
            if u.key != e.key
                || u.initiated < from
                || u.initiated > to
                || spare.contains(&u.upload_id)
            {
                continue;
            }
            match store.abort_multipart_upload(&u.key, &u.upload_id).await {
                Ok(()) => {
                    tracing::info!(key = %u.key, upload_id = %u.upload_id, "journal: left-over upload (found by listing) aborted");
                    n += 1;
                }
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        Ok(n)
    }

    /// Sweeps the entries handed to the reaper; returns how many remain.
    pub async fn reap(&self, store: &dyn ObjectStore) -> usize {
        let ids = self.doomed();
        if ids.is_empty() {
            return 0;
        }
        let entries: Vec<Entry> = ids.iter().filter_map(|id| self.read_entry(*id)).collect();
        for id in &ids {
            if !entries.iter().any(|e| e.id == *id) {
                self.end(*id);
            }
        }
        // This mount's own uploads of the same keys are not matched: the
        // live ones are spared, and an entry whose key has a Create in
        // progress (no ID recorded yet) waits for the next round.
        let live: Vec<Entry> = self
            .entries()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| !ids.contains(&e.id))
            .collect();
        let spare: HashSet<String> = live.iter().filter_map(|e| e.upload_id.clone()).collect();
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| {
                e.upload_id.is_some()
                    || !live.iter().any(|l| l.upload_id.is_none() && l.key == e.key)
            })
            .collect();
        self.sweep_sparing(store, &entries, &spare).await;
        self.doomed().len()
    }

    /// At a clean exit: removes this mount's state directory when no entry
    /// is left, so mounts at ever new places do not pile up directories.
    /// Entries that could not be settled stay for the next mount.
    pub fn retire(&self) {
        match self.entries() {
            Ok(e) if e.is_empty() => {
                if let Err(err) = fs::remove_dir_all(&self.dir) {
                    tracing::debug!(dir = %self.dir.display(), error = %err, "journal: state directory not removed");
                }
            }
            Ok(e) => {
                tracing::warn!(dir = %self.dir.display(), left = e.len(), "journal: uploads could not be aborted; the next mount here will try again")
            }
            Err(_) => {}
        }
    }

    /// Aborts every upload still in the journal (shutdown: what no close finished).
    pub async fn sweep_all(&self, store: &dyn ObjectStore) -> SweepReport {
        match self.entries() {
            Ok(entries) => self.sweep(store, &entries).await,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "journal: cannot read entries");
                SweepReport::default()
            }
        }
    }
}

fn parse_entry(id: u64, text: &str) -> Option<Entry> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC {
        return None;
    }
    let mut key = None;
    let mut started = None;
    let mut upload_id = None;
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        match k {
            "key" => key = String::from_utf8(unhex(v)?).ok(),
            "started" => started = v.parse().ok(),
            "upload_id" => upload_id = Some(String::from_utf8(unhex(v)?).ok()?),
            _ => {}
        }
    }
    Some(Entry {
        id,
        key: key?,
        started: started?,
        upload_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::memory::MemoryStore;
    use crate::s3::{Op, PutOptions};

    /// A state directory another user could have prepared is refused: a
    /// symlink where the mount's directory goes (it would make the mount
    /// write its lock and mount.info wherever it points), or a parent
    /// others may write to; the read-only fallback is private and new.
    #[test]
    fn a_state_directory_others_could_prepare_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let mi = info("/mnt/x");
        let state = base.path().join("state");
        fs::create_dir(&state).unwrap();
        let victim = base.path().join("victim");
        fs::create_dir(&victim).unwrap();
        let id = mount_id(&mi.bucket, &mi.prefix, &mi.mountpoint);
        std::os::unix::fs::symlink(&victim, state.join(&id)).unwrap();
        let Err(e) = Journal::open(&state, &mi) else {
            panic!("a symlinked mount directory")
        };
        assert!(e.to_string().contains("not a directory"), "{e}");
        assert_eq!(
            fs::read_dir(&victim).unwrap().count(),
            0,
            "nothing made in the victim's directory"
        );
        fs::remove_file(state.join(&id)).unwrap();

        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        let Err(e) = Journal::open(&state, &mi) else {
            panic!("a world-writable state dir")
        };
        assert!(
            e.to_string().contains("may be changed by other users"),
            "{e}"
        );
        fs::set_permissions(&state, fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(
            Journal::open(&state, &mi).is_ok(),
            "sticky, as /tmp is, is fine"
        );

        let a = private_fallback_dir().unwrap();
        let b = private_fallback_dir().unwrap();
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            assert_ne!(a, b, "a new directory each time");
            fs::remove_dir(&b).unwrap();
        }
        let m = fs::symlink_metadata(&a).unwrap();
        assert!(m.is_dir() && m.mode() & 0o077 == 0, "{:o}", m.mode());
        assert!(Journal::open(&a, &mi).is_ok());
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            fs::remove_dir_all(&a).unwrap();
        }
    }

    fn info(mp: &str) -> MountInfo {
        MountInfo {
            bucket: "b".into(),
            prefix: "p/".into(),
            mountpoint: PathBuf::from(mp),
            pid: 42,
        }
    }

    #[test]
    fn entries_survive_reopen_and_keys_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let hostile = "a b\nc\\d/é\u{0}";
        {
            let (j, left) = Journal::open(tmp.path(), &info("/mnt")).unwrap();
            assert!(left.is_empty());
            let a = j.begin(hostile).unwrap();
            let b = j.begin("done").unwrap();
            j.set_upload_id(a, "id with spaces").unwrap();
            j.end(b);
            // A torn write of a later entry: only its temporary file exists.
            fs::write(j.uploads.join("9.tmp"), "garbage").unwrap();
            fs::write(j.uploads.join("7"), "not a journal entry").unwrap();
        }
        let (j, left) = Journal::open(tmp.path(), &info("/mnt")).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].key, hostile);
        assert_eq!(left[0].upload_id.as_deref(), Some("id with spaces"));
        // New entries never reuse a number still on disk.
        let x = j.begin("x").unwrap();
        assert!(x > left[0].id);
        assert!(!j.uploads.join("9.tmp").exists() && !j.uploads.join("7").exists());
        // Retiring keeps a journal that still holds entries...
        j.retire();
        assert!(j.dir().exists());
        // ...and removes an empty one.
        j.end(x);
        j.end(left[0].id);
        j.retire();
        assert!(!j.dir().exists());
    }

    #[test]
    fn one_live_mount_per_state_and_mount_found_by_mount_point() {
        let tmp = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(tmp.path(), &info("/mnt/a")).unwrap();
        match Journal::open(tmp.path(), &info("/mnt/a")) {
            Err(JournalError::Locked { pid, .. }) => assert_eq!(pid, 42),
            other => panic!("expected Locked, got {:?}", other.map(|_| ())),
        }
        // Another mount point is another journal.
        let (_k, _) = Journal::open(tmp.path(), &info("/mnt/b")).unwrap();
        let (dir, found) = find_mount(tmp.path(), Path::new("/mnt/a")).unwrap();
        assert_eq!(dir, j.dir());
        assert_eq!(found, info("/mnt/a"));
        assert!(find_mount(tmp.path(), Path::new("/mnt/c")).is_none());
        // The state directory is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(j.dir()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }

    #[tokio::test]
    async fn sweep_aborts_with_id_and_by_listing_and_keeps_what_it_cannot() {
        let tmp = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let opts = PutOptions::default();
        let (j, _) = Journal::open(tmp.path(), &info("/m")).unwrap();
        // With an ID.
        let a = j.begin("k1").unwrap();
        let id1 = store.create_multipart_upload("k1", &opts).await.unwrap();
        j.set_upload_id(a, &id1).unwrap();
        // Intent only: the crash came before Create answered.
        j.begin("k2").unwrap();
        let id2 = store.create_multipart_upload("k2", &opts).await.unwrap();
        // Someone else's upload of a key with k2 as prefix is left alone.
        let other = store.create_multipart_upload("k2x", &opts).await.unwrap();
        // An entry whose upload already completed.
        let c = j.begin("k3").unwrap();
        j.set_upload_id(c, "gone").unwrap();
        drop(j);
        let (j, left) = Journal::open(tmp.path(), &info("/m")).unwrap();
        assert_eq!(left.len(), 3);
        let r = j.sweep(&store, &left).await;
        assert_eq!(
            r,
            SweepReport {
                aborted: 2,
                gone: 1,
                failed: 0
            }
        );
        let ids: Vec<String> = store
            .list_uploads("")
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.upload_id)
            .collect();
        assert_eq!(ids, vec![other]);
        assert!(!ids.contains(&id1) && !ids.contains(&id2));
        assert!(j.entries().unwrap().is_empty());

        // A server that refuses: the entry stays, doomed, until the reaper succeeds.
        let d = j.begin("k4").unwrap();
        let id4 = store.create_multipart_upload("k4", &opts).await.unwrap();
        j.set_upload_id(d, &id4).unwrap();
        store.fail_all(Op::AbortMultipartUpload, "InternalError");
        assert_eq!(j.sweep_all(&store).await.failed, 1);
        assert_eq!(j.doomed(), vec![d]);
        assert_eq!(j.reap(&store).await, 1);
        store.clear_faults();
        assert_eq!(j.reap(&store).await, 0);
        assert!(j.entries().unwrap().is_empty());
        assert_eq!(store.list_uploads("k4").await.unwrap().len(), 0);
    }
}
