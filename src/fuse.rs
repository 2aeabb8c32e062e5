//! The kernel adapter: `impl fuser::Filesystem`. Decodes each request, moves
//! its reply into a tokio task that calls the filesystem core, and encodes
//! the answer; lookups and getattrs that memory answers are replied to on
//! the FUSE thread itself (a task costs a cross-thread wake-up). No S3 types and no decisions live here, and no FUSE worker
//! thread ever blocks on the network or on memory.

use crate::fs::inode::Kind;
use crate::fs::{Attr, Closer, Fs, FsError, SetAttr};
use fuser::{
    CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1024 * 1024;

/// `fuser::Filesystem` over the filesystem core.
pub struct FuseFs {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
    /// Tells the kernel to drop what it caches (set once the session exists).
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    /// Read-only handles are direct I/O (decided at init, see [`fopen_flags`]).
    direct_reads: bool,
    /// Page ranges to drop from the kernel's cache, sent by a thread of
    /// their own: an invalidation waits for page locks, which a writer
    /// holds until its next WRITE is answered, so it must never block a
    /// worker that would answer it.
    stale: std::sync::mpsc::Sender<(INodeNo, i64, i64)>,
}

/// Starts the thread that sends page invalidations, in order.
fn invalidator(
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
) -> std::sync::mpsc::Sender<(INodeNo, i64, i64)> {
    let (tx, rx) = std::sync::mpsc::channel::<(INodeNo, i64, i64)>();
    let spawned = std::thread::Builder::new()
        .name("bucketfs-inval".into())
        .spawn(move || {
            for (ino, off, len) in rx {
                if let Some(n) = notifier.get() {
                    if let Err(e) = n.inval_inode(ino, off, len) {
                        tracing::debug!(ino = ino.0, error = %e, "page invalidation failed");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no invalidation thread: other descriptors may read stale pages");
    }
    tx
}

impl FuseFs {
    /// Wraps the core; requests run as tasks on `rt`. `notifier` is filled
    /// with the session's once it is made.
    pub fn new(
        fs: Arc<Fs>,
        rt: tokio::runtime::Handle,
        notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
    ) -> Self {
        let ttl = fs.config().metadata_ttl;
        FuseFs {
            fs,
            rt,
            ttl,
            stale: invalidator(notifier.clone()),
            notifier,
            direct_reads: false,
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

/// How the kernel treats a handle opened with `flags`. A write-only handle
/// is direct I/O: the kernel hands the writer's pages to this daemon
/// without first copying them into its page cache, which nothing could
/// read back through that handle anyway (a 1 GiB `cp`: 0.45-0.53 s of the
/// writer's system time became 0.15-0.22 s). A read-only handle is direct
/// I/O too when `direct_reads`: each read is answered straight into the
/// reader's buffer from this daemon's read-ahead, instead of being copied
/// into the page cache first (a 1 GiB `cat`: 0.52-0.56 CPU-s of the daemon
/// instead of 0.81-3.41, the page cache's fresh pages being what varied).
/// `O_RDWR` handles keep the page cache: a program reading back what it
/// wrote through one is answered from it. A created file's handle is a
/// writer's whatever its flags (`Fs::create`), so `create` passes
/// `direct_reads: false`: a read of a new `O_RDONLY|O_CREAT` file is then
/// answered by the kernel (empty) instead of failing in the daemon.
fn fopen_flags(flags: i32, direct_reads: bool) -> FopenFlags {
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => FopenFlags::FOPEN_DIRECT_IO,
        libc::O_RDONLY if direct_reads => FopenFlags::FOPEN_DIRECT_IO,
        _ => FopenFlags::empty(),
    }
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Special(libc::S_IFIFO) => FileType::NamedPipe,
        Kind::Special(libc::S_IFSOCK) => FileType::Socket,
        Kind::Special(libc::S_IFCHR) => FileType::CharDevice,
        Kind::Special(libc::S_IFBLK) => FileType::BlockDevice,
        Kind::Special(_) => FileType::RegularFile,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

/// Runs one request as a task: `$body` yields a Result; Ok goes to `$ok`, Err to `reply.error`.
macro_rules! run {
    ($self:ident, $reply:ident, $body:expr, |$v:pat_param| $ok:expr) => {{
        let fs = $self.fs.clone();
        let _ = &fs;
        $self.rt.spawn(async move {
            let fs = fs;
            let _ = &fs;
            match $body(fs).await {
                Ok($v) => $ok,
                Err(e) => $reply.error(errno(&e)),
            }
        });
    }};
}

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        // open(O_TRUNC) arrives with O_TRUNC instead of OPEN + SETATTR(size=0).
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        // Direct reads only where a direct-I/O handle can still be mapped
        // shared (Linux 6.6+); elsewhere mmap of it would fail with ENODEV.
        self.direct_reads = !self.fs.config().page_cache
            && config
                .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
                .is_ok();
        tracing::info!(direct_reads = self.direct_reads, "FUSE session starts");
        Ok(())
    }

    /// At unmount: attribute changes not yet written to their objects are
    /// written now (bounded by 30 s; the data itself is already durable).
    fn destroy(&mut self) {
        let fs = self.fs.clone();
        let done = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(30), fs.persist_all()).await
        });
        if done.is_err() {
            tracing::warn!("unmount: gave up writing pending attributes after 30 s");
        }
    }

    /// The kernel no longer names `ino` (as often as it was given it):
    /// the inode table drops what nothing else holds. (fuser's default
    /// batch_forget calls this for each inode.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ttl = self.ttl;
        // Known names are answered here, without a task (a hit may start
        // the next statahead batch: a spawn, hence the runtime context).
        let cached = {
            let _rt = self.rt.enter();
            self.fs.lookup_cached(parent.0, name)
        };
        match cached {
            Some(Ok(a)) => {
                self.fs.remember(a.ino);
                return reply.entry(&ttl, &file_attr(&a), Generation(0));
            }
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        let name = name.to_owned();
        let known = self.fs.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.lookup(parent.0, &name).await },
            |a| {
                known.remember(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // Memory alone answers it: no task.
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time),
            mtime: mtime.map(time),
        };
        let ttl = self.ttl;
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.setattr(ino.0, fh.map(|f| f.0), s).await },
            |a| reply.attr(&ttl, &file_attr(&a))
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        let ttl = self.ttl;
        let known = self.fs.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.mkdir(parent.0, &name, mode & !umask).await },
            |a| {
                known.remember(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.unlink(parent.0, &name).await },
            |()| reply.ok()
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.rmdir(parent.0, &name).await },
            |()| reply.ok()
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        let flags = flags.bits();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move {
                fs.rename(parent.0, &name, newparent.0, &newname, flags)
                    .await
            },
            |()| reply.ok()
        );
    }

    fn link(&self, _req: &Request, _ino: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = (link_name.to_owned(), target.to_owned());
        let ttl = self.ttl;
        let known = self.fs.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.symlink(parent.0, &name, &target).await },
            |a| {
                known.remember(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.readlink(ino.0).await },
            |d| reply.data(&d)
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        let ttl = self.ttl;
        let known = self.fs.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.mknod(parent.0, &name, mode & !umask, rdev).await },
            |a| {
                known.remember(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0))
            }
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let pid = req.pid();
        let direct_reads = self.direct_reads;
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.open(ino.0, flags.0, pid).await },
            |fh| reply.opened(FileHandle(fh), fopen_flags(flags.0, direct_reads))
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let pid = req.pid();
        let ttl = self.ttl;
        let known = self.fs.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.create(parent.0, &name, mode & !umask, pid).await },
            |(a, fh)| {
                known.remember(a.ino);
                reply.created(
                    &ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    fopen_flags(flags, false),
                )
            }
        );
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // Bytes the read-ahead already holds are answered here, without a
        // task (a spawned read-ahead GET needs the runtime context).
        let ready = {
            let _rt = self.rt.enter();
            self.fs.read_ready(fh.0, offset, size)
        };
        match ready {
            Some(Ok(b)) => return reply.data(&b),
            Some(Err(e)) => return reply.error(errno(&e)),
            None => {}
        }
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.read(fh.0, offset, size).await },
            |b| reply.data(&b)
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        // The writer lacks CAP_FSETID: the kernel asks us to clear the
        // set-ID bits (on direct-I/O writes it does not do it itself).
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let notifier = self.notifier.clone();
        let stale = self.stale.clone();
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move {
                if kill && fs.kill_set_id_bits(ino.0).await? {
                    // The kernel keeps the old mode until its attributes
                    // expire: have it ask again (attributes only).
                    if let Some(n) = notifier.get() {
                        if let Err(e) = n.inval_inode(ino, -1, 0) {
                            tracing::debug!(ino = ino.0, error = %e, "attribute invalidation failed");
                        }
                    }
                }
                let n = fs
                    .write(fh.0, offset, &data, lock_owner.map(|o| o.0))
                    .await?;
                Ok::<_, FsError>((n, fs.shared_with_others(ino.0)))
            },
            |(n, shared)| {
                reply.written(n);
                // Other descriptors may hold the old bytes in the page
                // cache: dropped, after the reply (from inside a buffered
                // WRITE, the writer holds the page lock the kernel would wait for).
                if shared {
                    let off = i64::try_from(offset).unwrap_or(i64::MAX);
                    let _ = stale.send((ino, off, i64::from(n)));
                }
            }
        );
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        let closer = Closer {
            pid: req.pid(),
            owner: Some(lock.0),
        };
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.flush(fh.0, closer).await },
            |()| reply.ok()
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.release(fh.0).await },
            |()| reply.ok()
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.fsync(ino.0, fh.0).await },
            |()| reply.ok()
        );
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move {
                fs.copy_file_range(ino_in.0, offset_in, fh_out.0, offset_out, len)
                    .await
            },
            |n| reply.written(n)
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.opendir(ino.0).await },
            |fh| reply.opened(FileHandle(fh), FopenFlags::empty())
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir(fh.0, offset).await {
                Ok(entries) => {
                    for (i, e) in entries.iter().enumerate() {
                        let next = offset + i as u64 + 1;
                        if reply.add(INodeNo(e.ino), next, file_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.releasedir(fh.0).await },
            |()| reply.ok()
        );
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _d: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bfree, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _s: u32, reply: ReplyXattr) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        run!(
            self,
            reply,
            |fs: Arc<Fs>| async move { fs.fallocate(ino.0, fh.0, offset, length, mode).await },
            |()| reply.ok()
        );
    }

    /// No ioctl is supported (FICLONE, FS_IOC_GETFLAGS, terminal probes):
    /// ENOTTY, the usual answer, without fuser's warning per call.
    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        tracing::debug!(
            ino = ino.0,
            cmd = format_args!("{cmd:#x}"),
            "ioctl: not supported"
        );
        reply.error(Errno::from_i32(libc::ENOTTY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_only_handles_are_direct_read_only_ones_when_enabled() {
        for direct_reads in [false, true] {
            let wo = fopen_flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC, direct_reads);
            assert_eq!(wo, FopenFlags::FOPEN_DIRECT_IO);
            let rw = fopen_flags(libc::O_RDWR | libc::O_CREAT, direct_reads);
            assert_eq!(rw, FopenFlags::empty());
        }
        let ro = fopen_flags(libc::O_RDONLY, true);
        assert_eq!(ro, FopenFlags::FOPEN_DIRECT_IO);
        assert_eq!(fopen_flags(libc::O_RDONLY, false), FopenFlags::empty());
    }
}
