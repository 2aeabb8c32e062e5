//! `bucketfs mount`: option parsing (including fstab's `-o`), mount point
//! checks, detaching into the background with a readiness pipe, and the
//! session itself.

use crate::fs::dir_attrs::DirAttrs;
use crate::fs::{Fs, FsConfig};
use crate::fuse::FuseFs;
use crate::s3::rules::MIN_PART_SIZE;
use crate::s3::{BucketClient, Client, ObjectStore, S3Error};
use crate::upload::budget::Budget;
use crate::upload::journal::{Journal, JournalError, MountInfo};
use crate::upload::schedule::Schedule;
use crate::upload::UploadConfig;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Everything a mount needs besides the S3 configuration.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub bucket: String,
    /// Key prefix, "" or ending in `/`.
    pub prefix: String,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub read_only: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub part_size: u64,
    pub max_part_size: u64,
    pub max_parts_in_flight: usize,
    /// Every buffer of the mount: write parts and read-ahead.
    pub memory_limit: u64,
    pub fuse_threads: usize,
    /// Workers of the async runtime (S3 requests and task replies).
    pub io_threads: usize,
    pub metadata_ttl: Duration,
    /// Trust listings for attributes: no HEAD per listed file.
    pub attrs_from_listing: bool,
    /// Read-only handles read through the kernel's page cache, not directly.
    pub page_cache: bool,
    pub max_readahead: u64,
    /// Where the crash journal and the status socket live.
    pub state_dir: PathBuf,
    /// How long a shutdown waits for closes in progress.
    pub shutdown_grace: Duration,
    /// Storage class, ACL and vendor headers of every object written.
    pub object_defaults: crate::s3::PutOptions,
    /// Server-side encryption of every object written (and the key reads need).
    pub sse: Option<crate::s3::Sse>,
}

/// The default `--io-threads`: one async worker per 4 cores, at least 1.
/// The work on them is socket I/O and TLS (hashing runs on blocking
/// threads, FUSE requests arrive on their own threads); a second worker on
/// a small machine mostly adds wake-ups between workers.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(4))
}

/// How often uploads whose abort failed are tried again.
const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Applies comma-separated `-o` options as fstab and mount(8) pass them.
/// Names `-o` takes itself; any other `-o name=value` is the long option
/// `--name-with-dashes value` (see [`o_to_long_options`]).
const O_NAMES: &[&str] = &[
    "ro",
    "rw",
    "allow_other",
    "allow_root",
    "uid",
    "gid",
    "file_mode",
    "dir_mode",
    "foreground",
    "memory_limit",
    "state_dir",
    "default_permissions",
    "_netdev",
    "nofail",
    "noauto",
    "auto",
    "user",
    "users",
    "nouser",
    "defaults",
    "exec",
    "noexec",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "atime",
    "noatime",
    "relatime",
    "async",
];

/// Splits `-o` options into those [`apply_o_options`] takes and long
/// options for the others (`endpoint_url=URL` becomes `--endpoint-url=URL`,
/// `virtual_hosted` becomes `--virtual-hosted`), so fstab can give any flag.
pub fn o_to_long_options(spec: &str) -> (String, Vec<String>) {
    let mut keep = Vec::new();
    let mut long = Vec::new();
    for opt in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let name = opt.split_once('=').map_or(opt, |(n, _)| n);
        if O_NAMES.contains(&name) || name.starts_with("x-") || name.starts_with("comment") {
            keep.push(opt.to_string());
        } else {
            long.push(format!(
                "--{}",
                opt.replacen('_', "-", name.matches('_').count())
            ));
        }
    }
    (keep.join(","), long)
}

pub fn apply_o_options(o: &mut MountOptions, spec: &str) -> Result<(), String> {
    for opt in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        let num = |v: Option<&str>| -> Result<u32, String> {
            v.ok_or_else(|| format!("-o {name} needs a value"))?
                .parse()
                .map_err(|_| format!("-o {opt}: not a number"))
        };
        let mode = |v: Option<&str>| -> Result<u16, String> {
            let v = v.ok_or_else(|| format!("-o {name} needs a value"))?;
            u16::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| format!("-o {opt}: not an octal mode"))
        };
        match name {
            "ro" => o.read_only = true,
            "rw" => o.read_only = false,
            "allow_other" => o.allow_other = true,
            "allow_root" => o.allow_root = true,
            "uid" => o.uid = num(value)?,
            "gid" => o.gid = num(value)?,
            "file_mode" => o.file_mode = mode(value)?,
            "dir_mode" => o.dir_mode = mode(value)?,
            "foreground" => o.foreground = true,
            "memory_limit" => {
                o.memory_limit =
                    parse_size(value.ok_or_else(|| format!("-o {name} needs a value"))?)?
            }
            "state_dir" => {
                o.state_dir = value
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("-o {name} needs a value"))?
                    .into()
            }
            // Accepted and meaningless here (fstab/mount(8) pass them), or always on.
            "default_permissions"
            | "_netdev"
            | "nofail"
            | "noauto"
            | "auto"
            | "user"
            | "users"
            | "nouser"
            | "defaults"
            | "exec"
            | "noexec"
            | "suid"
            | "nosuid"
            | "dev"
            | "nodev"
            | "atime"
            | "noatime"
            | "relatime"
            | "async" => {}
            n if n.starts_with("x-") || n.starts_with("comment") => {}
            _ => return Err(format!("unknown mount option -o {opt}")),
        }
    }
    Ok(())
}

/// How `--memory-limit` is shared out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryPlan {
    /// Parts being filled, in flight, and held first parts.
    pub write_budget: u64,
    /// Read-ahead (never waited for: a read that finds it full reads less ahead).
    pub read_budget: u64,
    /// The part schedule, its largest part capped so that a held first
    /// part and one largest part fit the write budget together.
    pub schedule: Schedule,
}

/// The share of `--memory-limit` read-ahead may use.
pub const READ_SHARE: u64 = 4;

/// Splits the memory limit: a quarter for read-ahead, the rest for writes.
pub fn plan_memory(
    part_size: u64,
    max_part_size: u64,
    memory_limit: u64,
) -> Result<MemoryPlan, String> {
    let read_budget = memory_limit / READ_SHARE;
    let write_budget = memory_limit - read_budget;
    let base = part_size.max(MIN_PART_SIZE);
    if write_budget < 2 * base {
        return Err(format!(
            "--memory-limit {} is too small for --part-size {}: writes get 3/4 of it and need two parts (at least {} bytes of limit)",
            memory_limit,
            part_size,
            (2 * base * READ_SHARE).div_ceil(READ_SHARE - 1)
        ));
    }
    Ok(MemoryPlan {
        write_budget,
        read_budget,
        schedule: Schedule {
            base,
            max_part: max_part_size.max(base).min(write_budget - base),
        },
    })
}

/// Makes sure the mount point is a usable directory. A mount left dead by a
/// crashed daemon ("Transport endpoint is not connected") is detached first.
pub fn prepare_mountpoint(dir: &Path) -> Result<(), String> {
    // stat may be answered from the kernel's attribute cache; statfs always
    // asks the filesystem, so it sees a dead FUSE connection.
    let probe = std::fs::metadata(dir).and_then(|m| {
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: c is a valid path and st a valid buffer.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(m)
    });
    match probe {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            lazy_unmount(dir).map_err(|e| {
                format!(
                    "{}: a dead mount is there and could not be cleared: {e}",
                    dir.display()
                )
            })?;
            tracing::info!(dir = %dir.display(), "cleared a dead mount left by a crashed daemon");
            prepare_mountpoint(dir)
        }
        Err(e) => Err(format!("{}: {e}", dir.display())),
        Ok(m) if !m.is_dir() => Err(format!("{}: not a directory", dir.display())),
        Ok(_) => {
            if !Path::new("/dev/fuse").exists() {
                return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or pass the device to the container".into());
            }
            Ok(())
        }
    }
}

/// One line saying why the bucket cannot be mounted.
pub fn describe_bucket_error(bucket: &str, e: &S3Error) -> String {
    match e {
        _ if e.is_not_found() => format!("bucket {bucket:?} does not exist"),
        S3Error::Service { status: 403, .. } => {
            format!("access to bucket {bucket:?} denied (check the credentials): {e}")
        }
        S3Error::Transport { .. } => format!("cannot reach the S3 endpoint: {e}"),
        _ => format!("cannot use bucket {bucket:?}: {e}"),
    }
}

/// The other end of the readiness pipe: the parent waits on it.
pub struct Readiness {
    fd: Option<std::fs::File>,
}

impl Readiness {
    /// Tells the waiting parent the mount is ready (or why it failed).
    pub fn report(&mut self, outcome: Result<(), String>) {
        if let Some(mut f) = self.fd.take() {
            let msg = match outcome {
                Ok(()) => "OK\n".to_string(),
                Err(e) => format!("ERR {e}\n"),
            };
            let _ = f.write_all(msg.as_bytes());
        } else if let Err(e) = outcome {
            eprintln!("bucketfs: {e}");
        }
    }
}

/// Forks before any thread exists. The parent waits on the readiness pipe
/// and exits with the mount's outcome; the child returns and goes on.
pub fn daemonize() -> Result<Readiness, String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the process is single-threaded here (before the runtime starts).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if pid > 0 {
        drop(w);
        let mut msg = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut msg);
        if msg.starts_with("OK") {
            std::process::exit(0);
        }
        let line = msg
            .strip_prefix("ERR ")
            .unwrap_or("the mount daemon exited before the mount was ready");
        eprintln!("bucketfs: {}", line.trim_end());
        std::process::exit(1);
    }
    drop(r);
    // SAFETY: plain syscalls in the child.
    unsafe {
        libc::setsid();
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::dup2(null, 2);
            libc::close(null);
        }
    }
    Ok(Readiness {
        fd: Some(std::fs::File::from(w)),
    })
}

/// Readiness for a foreground mount: errors go to stderr.
pub fn foreground() -> Readiness {
    Readiness { fd: None }
}

/// Mounts and serves until unmounted or signalled. Reports readiness once
/// the kernel handshake is done, or the first error.
///
/// Before mounting, the crash journal is opened and what a previous mount
/// left (uploads of a killed daemon) is aborted. SIGTERM and SIGINT shut
/// down cleanly: see [`Fs::shutdown`]; what remains in the journal then is
/// aborted, the mount is removed, and the process exits 0.
pub fn serve(client: Client, o: &MountOptions, mut ready: Readiness) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.io_threads.max(1))
        .enable_all()
        .thread_name("bucketfs")
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let started = std::time::Instant::now();
    type Parts = (
        fuser::Session<FuseFs>,
        Arc<Fs>,
        Arc<Journal>,
        Arc<dyn ObjectStore>,
    );
    let result: Result<Parts, String> = (|| {
        let plan = plan_memory(o.part_size, o.max_part_size, o.memory_limit)?;
        client
            .config()
            .check_encryption(o.sse.as_ref())
            .map_err(|e| e.to_string())?;
        rt.block_on(client.head_bucket(&o.bucket))
            .map_err(|e| describe_bucket_error(&o.bucket, &e))?;
        let store: Arc<dyn ObjectStore> = Arc::new(BucketClient {
            client: client.clone(),
            bucket: o.bucket.clone(),
            sse: o.sse.clone(),
            defaults: o.object_defaults.clone(),
        });
        let info = MountInfo {
            bucket: o.bucket.clone(),
            prefix: o.prefix.clone(),
            mountpoint: o.mountpoint.clone(),
            pid: std::process::id(),
        };
        let (journal, left) = match Journal::open(&o.state_dir, &info) {
            Ok(j) => j,
            // A read-only mount starts no upload: any private directory
            // will do for its (always empty) journal and status socket.
            Err(JournalError::Io { err, .. }) if o.read_only => {
                let fallback = crate::upload::journal::private_fallback_dir()
                    .map_err(|e| format!("no private state directory: {e}"))?;
                tracing::info!(state_dir = %o.state_dir.display(), error = %err, fallback = %fallback.display(), "state directory unusable; read-only mount uses a temporary one");
                Journal::open(&fallback, &info).map_err(|e| e.to_string())?
            }
            Err(e) => return Err(e.to_string()),
        };
        let journal = Arc::new(journal);
        if !left.is_empty() {
            let r = rt.block_on(journal.sweep(store.as_ref(), &left));
            tracing::warn!(
                aborted = r.aborted,
                already_gone = r.gone,
                failed = r.failed,
                dir = %journal.dir().display(),
                "a previous mount left uploads behind; aborted them"
            );
        }
        let cfg = FsConfig {
            prefix: o.prefix.clone(),
            uid: o.uid,
            gid: o.gid,
            file_mode: o.file_mode,
            dir_mode: o.dir_mode,
            read_only: o.read_only,
            upload: UploadConfig {
                budget: Budget::new(plan.write_budget),
                journal: Some(journal.clone()),
                ..UploadConfig::unbounded(plan.schedule, o.max_parts_in_flight)
            },
            metadata_ttl: o.metadata_ttl,
            max_readahead: o.max_readahead,
            read_budget: Budget::new(plan.read_budget),
            max_inodes: crate::fs::MAX_INODES,
            attrs_from_listing: o.attrs_from_listing,
            page_cache: o.page_cache,
            // A read-only mount writes nothing, not even a probe.
            dir_attrs: if o.read_only {
                DirAttrs::OnMarker
            } else {
                rt.block_on(crate::fs::dir_attrs::probe(store.as_ref(), &o.prefix))
            },
        };
        tracing::info!(
            memory_limit = o.memory_limit,
            write_budget = plan.write_budget,
            read_budget = plan.read_budget,
            largest_part = plan.schedule.max_part,
            largest_file = plan.schedule.max_file_size(),
            "memory plan"
        );
        let fs = Fs::new(store.clone(), cfg);
        let mut opts = vec![
            fuser::MountOption::FSName(format!("bucketfs:{}", o.bucket)),
            fuser::MountOption::Subtype("bucketfs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoDev,
            fuser::MountOption::NoSuid,
        ];
        opts.push(if o.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        });
        let mut config = fuser::Config::default();
        config.mount_options = opts;
        config.acl = if o.allow_other {
            fuser::SessionACL::All
        } else if o.allow_root {
            fuser::SessionACL::RootAndOwner
        } else {
            fuser::SessionACL::Owner
        };
        config.n_threads = Some(o.fuse_threads.max(1));
        let notifier = Arc::new(std::sync::OnceLock::new());
        let session = fuser::Session::new(
            FuseFs::new(fs.clone(), rt.handle().clone(), notifier.clone()),
            &o.mountpoint,
            &config,
        )
        .map_err(|e| format!("mounting {}: {e}", o.mountpoint.display()))?;
        let _ = notifier.set(session.notifier());
        let _guard = rt.enter();
        crate::status::serve(crate::status::Sources {
            fs: fs.clone(),
            client: client.clone(),
            journal: journal.clone(),
            bucket: o.bucket.clone(),
            prefix: o.prefix.clone(),
            mountpoint: o.mountpoint.clone(),
            started,
        })
        .map_err(|e| {
            // Status is a convenience: the mount goes on without it.
            tracing::warn!(dir = %journal.dir().display(), error = %e, "no status socket (bucketfs status will not reach this mount)")
        })
        .ok();
        Ok((session, fs, journal, store))
    })();
    let (mut session, fs, journal, store) = match result {
        Ok(s) => s,
        Err(e) => {
            ready.report(Err(e.clone()));
            return Err(e);
        }
    };
    // Uploads whose abort failed (a dead path) are aborted once it recovers.
    {
        let (journal, store) = (journal.clone(), store.clone());
        rt.spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                journal.reap(store.as_ref()).await;
            }
        });
    }
    let unmounter = std::sync::Mutex::new(Some(session.unmount_callable()));
    let dir = o.mountpoint.clone();
    let grace = o.shutdown_grace;
    {
        let (fs, journal, store) = (fs.clone(), journal.clone(), store.clone());
        rt.spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let int = tokio::signal::ctrl_c();
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
                _ = int => {}
            }
            tracing::info!(dir = %dir.display(), ?grace, "signal received: shutting down");
            let aborted = fs.shutdown(grace).await;
            let r = journal.sweep_all(store.as_ref()).await;
            tracing::info!(
                aborted_open_files = aborted,
                aborted_left = r.aborted,
                failed = r.failed,
                "shutdown: uploads settled; unmounting"
            );
            let busy = match unmounter.lock().unwrap_or_else(|e| e.into_inner()).take() {
                Some(mut u) => u.unmount().err(),
                None => None,
            };
            match busy {
                // Files are still open (their writers got EIO): detach the
                // mount so the name is free, and leave; the kernel fails the
                // remaining calls of those descriptors.
                Some(e) => tracing::info!(error = %e, "unmount busy: detaching"),
                // Unmounted: the session ends and main exits. A non-root
                // unmount goes through fusermount, which may refuse
                // quietly: do not wait for ever.
                None => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    tracing::info!("session still running after unmount: detaching and exiting");
                }
            }
            if let Err(e) = lazy_unmount(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not detach the mount");
            }
            journal.retire();
            std::process::exit(0);
        });
    }
    tracing::info!(bucket = %o.bucket, prefix = %o.prefix, dir = %o.mountpoint.display(), "mounted");
    ready.report(Ok(()));
    let r = session.run().map_err(|e| format!("FUSE session: {e}"));
    tracing::info!("unmounted");
    // An unmount from outside (umount, fusermount -u) comes here directly:
    // the kernel allowed it, so no file is open; settle what is left.
    rt.block_on(async {
        fs.shutdown(Duration::ZERO).await;
        journal.sweep_all(store.as_ref()).await;
    });
    journal.retire();
    rt.shutdown_timeout(Duration::from_secs(30));
    r
}

/// Detaches the mount at `dir`: umount2(MNT_DETACH), else `fusermount3 -u
/// -z` (what a user without CAP_SYS_ADMIN has); the umount2 error if both fail.
fn lazy_unmount(dir: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    let ok = std::process::Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> MountOptions {
        MountOptions {
            bucket: "b".into(),
            prefix: String::new(),
            mountpoint: "/mnt".into(),
            foreground: false,
            read_only: false,
            allow_other: false,
            allow_root: false,
            uid: 0,
            gid: 0,
            file_mode: 0o644,
            dir_mode: 0o755,
            part_size: 8 << 20,
            max_part_size: 128 << 20,
            max_parts_in_flight: 8,
            memory_limit: 256 << 20,
            fuse_threads: 2,
            io_threads: 1,
            metadata_ttl: Duration::from_secs(1),
            attrs_from_listing: false,
            page_cache: false,
            max_readahead: 64 << 20,
            state_dir: "/tmp/state".into(),
            shutdown_grace: Duration::from_secs(30),
            object_defaults: Default::default(),
            sse: None,
        }
    }

    #[test]
    fn fstab_options() {
        let mut o = defaults();
        apply_o_options(&mut o, "ro,allow_other,uid=1000,gid=100,file_mode=0600,dir_mode=700,_netdev,nofail,x-systemd.automount,state_dir=/run/bfs").unwrap();
        assert!(o.read_only && o.allow_other);
        assert_eq!(o.state_dir, PathBuf::from("/run/bfs"));
        let (keep, long) = o_to_long_options(
            "rw,nosuid,endpoint_url=http://a:1,storage_class=COLD,virtual_hosted,header=x-kss-acl:private,x-systemd.automount",
        );
        assert_eq!(keep, "rw,nosuid,x-systemd.automount");
        assert_eq!(
            long,
            [
                "--endpoint-url=http://a:1",
                "--storage-class=COLD",
                "--virtual-hosted",
                "--header=x-kss-acl:private"
            ]
        );
        assert_eq!(
            (o.uid, o.gid, o.file_mode, o.dir_mode),
            (1000, 100, 0o600, 0o700)
        );
        assert!(apply_o_options(&mut o, "bogus").is_err());
        assert!(apply_o_options(&mut o, "uid=x").is_err());
        assert!(apply_o_options(&mut o, "file_mode=999").is_err());
        apply_o_options(&mut o, "rw").unwrap();
        assert!(!o.read_only);
    }

    #[test]
    fn memory_plans() {
        const GIB: u64 = 1 << 30;
        const TIB: u64 = 1 << 40;
        let d = defaults();
        let p = plan_memory(d.part_size, d.max_part_size, d.memory_limit).unwrap();
        assert_eq!(p.write_budget + p.read_budget, d.memory_limit);
        assert!(p.schedule.max_file_size() >= TIB, "{p:?}");
        // A larger budget and part cap: 5 TiB.
        let big = plan_memory(8 << 20, GIB, 2 * GIB).unwrap();
        assert!(big.schedule.max_file_size() >= 5 * TIB, "{big:?}");
        // The budget caps the largest part below --max-part-size.
        let small = plan_memory(8 << 20, GIB, 64 << 20).unwrap();
        assert_eq!(small.schedule.max_part, 40 << 20);
        assert!(small.schedule.max_file_size() < TIB);
        assert!(plan_memory(8 << 20, GIB, 20 << 20)
            .unwrap_err()
            .contains("--memory-limit"));
        let mut o = defaults();
        apply_o_options(&mut o, "memory_limit=1G").unwrap();
        assert_eq!(o.memory_limit, GIB);
    }

    #[test]
    fn mountpoint_checks() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(prepare_mountpoint(f.path())
            .unwrap_err()
            .contains("not a directory"));
        assert!(prepare_mountpoint(Path::new("/no/such/dir")).is_err());
    }
}

/// Parses a byte size: `8388608`, `8M`, `8MiB`, `1G`, `512k` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G, T)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn sizes() {
        use super::parse_size;
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("8X").is_err());
        assert!(parse_size("").is_err());
    }
}
