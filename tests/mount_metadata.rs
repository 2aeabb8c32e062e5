//! Mode, owner and mtime kept in the object's metadata (as s3fs keeps them),
//! through a real mount on Garage, checked with HEAD and on a fresh mount.

mod common;

use bucketfs::s3::*;
use common::mount::Mounted;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Polls HEAD until `check` holds (attributes of stored objects are written
/// about a second after they change).
async fn head_until(
    c: &Client,
    b: &str,
    key: &str,
    check: impl Fn(&ObjectHead) -> bool,
) -> ObjectHead {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let seen = match c.head_object(b, key, None).await {
            Ok(h) if check(&h) => return h,
            Ok(h) => format!("{:?}", h.metadata),
            Err(e) if e.is_not_found() => "no such key".to_string(),
            Err(e) => panic!("{key}: {e}"),
        };
        assert!(
            Instant::now() < deadline,
            "{key}: metadata never arrived: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// chmod and utimes on a stored object: one copy onto itself writes them,
/// keeping the body, the Content-Type and the other metadata; a fresh mount
/// shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chmod_and_utimes_on_a_stored_object_are_written_to_it() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let mut opts = PutOptions {
        content_type: Some("text/plain".into()),
        ..PutOptions::default()
    };
    opts.metadata.insert("color".into(), "blue".into());
    c.put_object(&b, "doc.txt", "hello".into(), None, &opts)
        .await
        .unwrap();
    let when = UNIX_EPOCH + Duration::new(1_600_000_000, 500_000_000);
    {
        let m = Mounted::bucket(&b);
        let p = m.path("doc.txt");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(when))
            .unwrap_or_else(|e| panic!("set mtime: {e}\n{}", m.log()));
        let h = head_until(&c, &b, "doc.txt", |h| {
            meta(h, "mtime") == Some("1600000000.500000000")
        })
        .await;
        assert_eq!(
            meta(&h, "mode"),
            Some(&*(libc::S_IFREG | 0o600).to_string())
        );
        assert_eq!(meta(&h, "color"), Some("blue"), "other metadata kept");
        assert_eq!(h.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            &c.get_object(&b, "doc.txt", None, None).await.unwrap().body[..],
            b"hello"
        );
    }
    let m = Mounted::bucket(&b);
    let md = std::fs::metadata(m.path("doc.txt")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600, "a fresh mount reads the mode");
    assert_eq!(
        md.modified().unwrap(),
        when,
        "and the mtime, to the nanosecond"
    );
}

/// Makes `dir/name` with `body`, `mode` and mtime `when`, and `cp -p`s it
/// into the mount under the same name.
fn cp_p_into(
    m: &Mounted,
    dir: &std::path::Path,
    name: &str,
    body: &[u8],
    mode: u32,
    when: SystemTime,
) {
    let src = dir.join(name);
    std::fs::write(&src, body).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(when)
        .unwrap();
    m.run(Command::new("cp").arg("-p").arg(&src).arg(m.path(name)));
}

/// cp -p sets mode and times on the open file before close: they go into
/// the PutObject itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_p_keeps_mode_and_mtime() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let dir = tempfile::tempdir().unwrap();
    let when = UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    cp_p_into(&m, dir.path(), "script.sh", &data(3000, 1), 0o750, when);
    let h = head_until(&c, &b, "script.sh", |h| meta(h, "mtime").is_some()).await;
    assert_eq!(meta(&h, "mtime"), Some("1500000000.123456789"));
    assert_eq!(
        meta(&h, "mode"),
        Some(&*(libc::S_IFREG | 0o750).to_string())
    );
    let md = std::fs::metadata(m.path("script.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o750);
    assert_eq!(md.modified().unwrap(), when);
}

fn rsync(src: &std::path::Path, dst: &std::path::Path, m: &Mounted) -> String {
    m.run(
        Command::new("rsync")
            .arg("-a")
            .arg("--stats")
            .arg(format!("{}/", src.display()))
            .arg(dst),
    )
}

fn transferred(stats: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix("Number of regular files transferred: "))
        .and_then(|n| n.trim().replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("no transfer count in:\n{stats}"))
}

/// rsync sets mtime and mode on its temporary file and renames it: the
/// attributes travel with the rename's copy, and a second rsync — in the
/// same mount after the attribute cache expired, and on a fresh mount —
/// transfers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rsync_transfers_nothing() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir(src.path().join("sub")).unwrap();
    for i in 0..12 {
        let rel = if i % 3 == 0 {
            format!("sub/f{i}")
        } else {
            format!("f{i}")
        };
        let p = src.path().join(&rel);
        std::fs::write(&p, data(500 + i * 10, i as u64)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let t = SystemTime::now() - Duration::from_secs(86_400 * (i as u64 + 1));
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    {
        let m = Mounted::bucket(&b);
        let first = rsync(src.path(), &m.path("dst"), &m);
        assert_eq!(transferred(&first), 12, "{first}");
        let want = std::fs::metadata(src.path().join("f1"))
            .unwrap()
            .modified()
            .unwrap();
        let h = c.head_object(&b, "dst/f1", None).await.unwrap();
        assert_eq!(
            meta(&h, "mtime").and_then(bucketfs::fs::meta::parse_time),
            Some(want),
            "the rename carried the mtime: {:?}",
            h.metadata
        );
        assert_eq!(
            meta(&h, "mode"),
            Some(&*(libc::S_IFREG | 0o640).to_string())
        );
        // Past --metadata-ttl, so the mount has listed and looked up again.
        std::thread::sleep(Duration::from_millis(1500));
        let again = rsync(src.path(), &m.path("dst"), &m);
        assert_eq!(transferred(&again), 0, "same mount:\n{again}");
    }
    let m = Mounted::bucket(&b);
    let fresh = rsync(src.path(), &m.path("dst"), &m);
    assert_eq!(transferred(&fresh), 0, "fresh mount:\n{fresh}");
    let out = Command::new("diff")
        .arg("-r")
        .arg(src.path())
        .arg(m.path("dst"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Symlinks and FIFOs as s3fs stores them: a symlink is an object whose body
/// is the target and whose mode says S_IFLNK; a FIFO an empty object whose
/// mode says S_IFIFO. A fresh mount, even after listing, shows them as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_and_fifos_are_stored_as_s3fs_stores_them() {
    use std::os::unix::fs::FileTypeExt;
    let c = client();
    let b = fresh_bucket(&c).await;
    let target = "../some dir/tärget";
    {
        let m = Mounted::bucket(&b);
        std::os::unix::fs::symlink(target, m.path("link")).unwrap();
        assert_eq!(
            std::fs::read_link(m.path("link")).unwrap().to_str(),
            Some(target)
        );
        let fifo = std::ffi::CString::new(m.path("pipe").to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(
            unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) },
            0,
            "{}",
            m.log()
        );
        assert!(std::fs::symlink_metadata(m.path("pipe"))
            .unwrap()
            .file_type()
            .is_fifo());
        let e = std::fs::hard_link(m.path("pipe"), m.path("hard")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }
    let g = c.get_object(&b, "link", None, None).await.unwrap();
    assert_eq!(&g.body[..], target.as_bytes());
    let h = c.head_object(&b, "link", None).await.unwrap();
    assert_eq!(
        meta(&h, "mode"),
        Some(&*(libc::S_IFLNK | 0o777).to_string())
    );
    let h = c.head_object(&b, "pipe", None).await.unwrap();
    assert_eq!(h.size, 0);
    let mode: u32 = meta(&h, "mode").unwrap().parse().unwrap();
    assert_eq!(mode & libc::S_IFMT, libc::S_IFIFO);

    let m = Mounted::bucket(&b);
    // Listed first (a listing cannot tell), then looked up.
    let names: Vec<_> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(std::fs::symlink_metadata(m.path("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_link(m.path("link")).unwrap().to_str(),
        Some(target)
    );
    assert!(std::fs::symlink_metadata(m.path("pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    // Listed again: they stay what they are.
    let _ = std::fs::read_dir(&m.dir).unwrap().count();
    std::thread::sleep(Duration::from_millis(1200));
    let _ = std::fs::read_dir(&m.dir).unwrap().count();
    assert!(std::fs::symlink_metadata(m.path("link"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// rsync -a of a tree with nested and empty directories, an empty file,
/// unicode and space names, a symlink, a FIFO, a 20 MiB file and old mtimes:
/// exit 0, the same tree in the mount, and a second run sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_a_of_a_mixed_tree() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    std::fs::create_dir_all(s.join("deep/er/est")).unwrap();
    std::fs::create_dir(s.join("empty dir")).unwrap();
    std::fs::write(s.join("empty"), b"").unwrap();
    std::fs::write(s.join("deep/naïve café.txt"), b"unicode").unwrap();
    std::fs::write(s.join("deep/er/est/big.bin"), data(20 << 20, 9)).unwrap();
    std::os::unix::fs::symlink("deep/naïve café.txt", s.join("link")).unwrap();
    let fifo = std::ffi::CString::new(s.join("pipe").to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(s.join("empty"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let m = Mounted::bucket(&b);
    let first = rsync(s, &m.path("t"), &m);
    assert_eq!(transferred(&first), 3, "three regular files: {first}");
    let out = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "pipe"])
        .arg(s)
        .arg(m.path("t"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(m.path("t/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(m.path("t/empty dir").is_dir());
    assert_eq!(
        std::fs::metadata(m.path("t/empty"))
            .unwrap()
            .modified()
            .unwrap(),
        old
    );
    let g = c
        .get_object(&b, "t/deep/er/est/big.bin", None, None)
        .await
        .unwrap();
    assert_eq!(g.body.len(), 20 << 20);
    std::thread::sleep(Duration::from_millis(1200));
    let again = rsync(s, &m.path("t"), &m);
    assert_eq!(transferred(&again), 0, "{again}");
    // Nothing at all to change: not even directory times (kept on markers).
    assert_eq!(rsync_changes(s, &m.path("t")), "", "rsync -i lists changes");
    drop(m);
    let fresh = Mounted::bucket(&b);
    assert_eq!(
        rsync_changes(s, &fresh.path("t")),
        "",
        "a fresh mount: rsync -i lists changes"
    );
}

/// What `rsync -a -i` would change (its itemized list; empty when nothing).
fn rsync_changes(src: &std::path::Path, dst: &std::path::Path) -> String {
    let out = Command::new("rsync")
        .args(["-a", "-i"])
        .arg(format!("{}/", src.display()))
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// mkdir stores the mode on the `name/` marker; chmod and utimes of a
/// directory are written to it (a prefix-only directory gets a marker); a
/// fresh mount reads them, before and after listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_keep_mode_and_mtime_on_their_marker() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put(&c, &b, "p/x", b"x").await;
    // Where the server keeps them: on the marker, except on SeaweedFS,
    // whose markers keep no metadata (the conformance suite checks that).
    let at = dir_key;
    {
        let m = Mounted::bucket(&b);
        std::fs::create_dir(m.path("d")).unwrap();
        std::fs::set_permissions(m.path("d"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let h = head_until(&c, &b, &at("d"), |h| {
            meta(h, "mode") == Some(&*(libc::S_IFDIR | 0o750).to_string())
        })
        .await;
        assert_eq!(h.size, 0);
        let out = Command::new("touch")
            .args(["-m", "-d", "@1500000000"])
            .arg(m.path("d"))
            .output()
            .unwrap();
        assert!(out.status.success());
        head_until(&c, &b, &at("d"), |h| meta(h, "mtime") == Some("1500000000")).await;
        std::fs::set_permissions(m.path("p"), std::fs::Permissions::from_mode(0o700)).unwrap();
        head_until(&c, &b, &at("p"), |h| {
            meta(h, "mode") == Some(&*(libc::S_IFDIR | 0o700).to_string())
        })
        .await;
        let names: Vec<String> = std::fs::read_dir(m.path("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.is_empty(),
            "the attributes object is never shown: {names:?}"
        );
    }
    let m = Mounted::bucket(&b);
    for _ in 0..2 {
        let d = std::fs::metadata(m.path("d")).unwrap();
        assert_eq!(d.mode() & 0o7777, 0o750);
        assert_eq!(
            d.modified().unwrap(),
            UNIX_EPOCH + Duration::from_secs(1_500_000_000)
        );
        assert_eq!(
            std::fs::metadata(m.path("p")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(std::fs::read(m.path("p/x")).unwrap(), b"x");
        // Listed, past the TTL: still the same.
        let _ = std::fs::read_dir(&m.dir).unwrap().count();
        std::thread::sleep(Duration::from_millis(1200));
        let _ = std::fs::read_dir(&m.dir).unwrap().count();
    }
}

/// tar -x into the mount: exit 0, the same bytes, modes and mtimes, and the
/// symlink — checked through a fresh mount (so from the bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_x_into_the_mount() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let src = tempfile::tempdir().unwrap();
    let s = src.path().join("tree");
    std::fs::create_dir_all(s.join("a/b")).unwrap();
    std::fs::write(s.join("a/b/data.bin"), data(9 << 20, 4)).unwrap();
    std::fs::write(s.join("run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(s.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a/b/data.bin", s.join("data")).unwrap();
    let old = UNIX_EPOCH + Duration::from_secs(1_234_567_890);
    std::fs::File::options()
        .write(true)
        .open(s.join("run.sh"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let archive = src.path().join("t.tar");
    let out = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(src.path())
        .arg("tree")
        .output()
        .unwrap();
    assert!(out.status.success());
    {
        let m = Mounted::bucket(&b);
        m.run(
            Command::new("tar")
                .arg("-xf")
                .arg(&archive)
                .arg("-C")
                .arg(&m.dir),
        );
    }
    let m = Mounted::bucket(&b);
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&s)
        .arg(m.path("tree"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let md = std::fs::metadata(m.path("tree/run.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o755);
    assert_eq!(md.modified().unwrap(), old);
    assert_eq!(
        std::fs::read_link(m.path("tree/data")).unwrap().to_str(),
        Some("a/b/data.bin")
    );
}

/// Metadata other tools can read: s3fs, mounted on the same bucket, shows
/// the mode and mtime `cp -p` kept through bucketfs; and what s3fs sets,
/// bucketfs shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3fs_on_the_same_bucket_sees_cp_p_attributes() {
    let s3fs = Command::new("s3fs").arg("--version").output();
    assert!(
        s3fs.is_ok(),
        "s3fs is not installed (apt-get install s3fs): this test reads the metadata through it"
    );
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let dir = tempfile::tempdir().unwrap();
    let when = UNIX_EPOCH + Duration::from_secs(1_400_000_000);
    cp_p_into(&m, dir.path(), "tool.sh", b"#!/bin/sh\n", 0o751, when);
    head_until(&c, &b, "tool.sh", |h| meta(h, "mtime").is_some()).await;

    // s3fs on the same bucket, in the foreground of a child process.
    let passwd = dir.path().join("passwd");
    std::fs::write(
        &passwd,
        format!(
            "{}:{}\n",
            require_env("AWS_ACCESS_KEY_ID"),
            require_env("AWS_SECRET_ACCESS_KEY")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = dir.path().join("s3fs");
    std::fs::create_dir(&other).unwrap();
    let mut child = Command::new("s3fs")
        .arg(&b)
        .arg(&other)
        .arg("-f")
        .arg("-o")
        .arg(format!(
            "passwd_file={},url={},use_path_request_style,endpoint={}",
            passwd.display(),
            require_env("AWS_ENDPOINT_URL"),
            require_env("AWS_REGION")
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn s3fs");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(common::mount::is_mounted(&other) && std::fs::metadata(other.join("tool.sh")).is_ok()) {
        assert!(Instant::now() < deadline, "s3fs did not mount within 20 s");
        assert!(child.try_wait().unwrap().is_none(), "s3fs exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = std::fs::metadata(other.join("tool.sh")).unwrap();
    let got_mode = seen.mode() & 0o7777;
    let got_mtime = seen.modified().unwrap();
    // s3fs changes the mode of a file it did not write? It must not: chmod
    // through s3fs, then read it back through a fresh bucketfs mount.
    std::fs::set_permissions(
        other.join("tool.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let _ = Command::new("fusermount3").arg("-u").arg(&other).status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got_mode, 0o751, "mode through s3fs");
    assert_eq!(got_mtime, when, "mtime through s3fs");
    let fresh = Mounted::bucket(&b);
    let md = std::fs::metadata(fresh.path("tool.sh")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o700, "mode s3fs set, through bucketfs");
    assert_eq!(md.modified().unwrap(), when, "mtime kept by s3fs's chmod");
}

/// `--attrs-from-listing`: `ls -l` of a listed directory sends no HEAD
/// (the default sends one per file, for `x-amz-meta-*`); listed files show
/// the listing's size and Last-Modified with the default mode; a rename
/// reads the metadata first, so the copy keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attrs_from_listing_lists_without_heads() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put_many(&c, &b, "d/p", 20, b"plain").await;
    let mut opts = PutOptions::default();
    opts.metadata
        .insert("mode".into(), (libc::S_IFREG | 0o600).to_string());
    opts.metadata.insert("mtime".into(), "1600000000".into());
    c.put_object(&b, "d/meta", "meta!".into(), None, &opts)
        .await
        .unwrap();
    let listed_at = c
        .head_object(&b, "d/meta", None)
        .await
        .unwrap()
        .last_modified;
    let proxy = common::proxy::FaultProxy::start(&require_env("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let heads = |p: &common::proxy::FaultProxy| {
        p.heads()
            .iter()
            .filter(|h| h.starts_with(&format!("HEAD /{b}/d/")))
            .filter(|h| !h.starts_with(&format!("HEAD /{b}/d/ "))) // the marker
            .filter(|h| !h.starts_with(&format!("HEAD /{b}/d/.bucketfs-directory "))) // or its stand-in
            .count()
    };
    let ls = |m: &Mounted| {
        let out = m.run(Command::new("ls").arg("-ln").arg(m.path("d")));
        assert_eq!(out.lines().count(), 22, "{out}");
        out
    };

    // The default: one HEAD per file, and the stored mode shows.
    {
        let m = Mounted::new(&b, &["--endpoint-url", &url], &[]);
        let out = ls(&m);
        assert!(out.contains("-rw------- 1"), "{out}");
        assert_eq!(heads(&proxy), 21);
    }

    let before = heads(&proxy);
    let m = Mounted::new(&b, &["--endpoint-url", &url, "--attrs-from-listing"], &[]);
    let out = ls(&m);
    assert_eq!(
        heads(&proxy) - before,
        0,
        "no HEAD for a listed file:\n{out}"
    );
    let md = std::fs::metadata(m.path("d/meta")).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o644, "the default mode");
    assert_eq!(md.len(), 5);
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        secs(md.modified().unwrap()),
        secs(listed_at.unwrap()),
        "mtime is Last-Modified"
    );
    assert_eq!(std::fs::read(m.path("d/p00007")).unwrap(), b"plain");

    m.run(
        Command::new("mv")
            .arg(m.path("d/meta"))
            .arg(m.path("d/moved")),
    );
    let h = c.head_object(&b, "d/moved", None).await.unwrap();
    assert_eq!(
        meta(&h, "mode"),
        Some(&*(libc::S_IFREG | 0o600).to_string())
    );
    assert_eq!(meta(&h, "mtime"), Some("1600000000"), "kept by the rename");
    assert!(c
        .head_object(&b, "d/meta", None)
        .await
        .unwrap_err()
        .is_not_found());
}

/// Standard headers a REPLACE copy would drop (Cache-Control,
/// Content-Encoding, Content-Disposition, Content-Language) survive chmod
/// (a copy onto itself) and a rename that changes the Content-Type; checked
/// with HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_keep_cache_control_and_content_encoding() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let opts = PutOptions {
        extra_headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Content-Encoding".into(), "gzip".into()),
            ("Content-Disposition".into(), "attachment".into()),
            ("Content-Language".into(), "fr".into()),
        ],
        // S3's default, said out loud: SeaweedFS would sniff a type.
        content_type: Some("binary/octet-stream".into()),
        ..PutOptions::default()
    };
    c.put_object(&b, ".page.Xy12", "gz".into(), None, &opts)
        .await
        .unwrap();
    let m = Mounted::bucket(&b);
    std::fs::set_permissions(m.path(".page.Xy12"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let mode = (libc::S_IFREG | 0o600).to_string();
    let h = head_until(&c, &b, ".page.Xy12", |h| meta(h, "mode") == Some(&*mode)).await;
    let kept = |h: &ObjectHead, what: &str| {
        for (name, value) in &opts.extra_headers {
            let got = h
                .system
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str());
            assert_eq!(
                got,
                Some(value.as_str()),
                "{what}: {name} in {:?}",
                h.system
            );
        }
    };
    kept(&h, "chmod");
    m.run(
        Command::new("mv")
            .arg(m.path(".page.Xy12"))
            .arg(m.path("page.html")),
    );
    let h = c.head_object(&b, "page.html", None).await.unwrap();
    assert_eq!(
        h.content_type.as_deref(),
        Some("text/html"),
        "typed by the new name"
    );
    assert_eq!(meta(&h, "mode"), Some(&*mode));
    kept(&h, "rename");
}

/// Device nodes and sockets (`rsync -a` as root makes them) are empty
/// objects whose `x-amz-meta-mode` says what they are and whose
/// `x-amz-meta-rdev` holds the device number; a fresh mount shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_nodes_keep_their_rdev() {
    use std::os::unix::fs::FileTypeExt;
    let c = client();
    let b = fresh_bucket(&c).await;
    let dev = libc::makedev(8, 1);
    {
        let m = Mounted::bucket(&b);
        for (name, kind) in [
            ("disk", libc::S_IFBLK),
            ("tty", libc::S_IFCHR),
            ("sock", libc::S_IFSOCK),
        ] {
            let p = std::ffi::CString::new(m.path(name).to_str().unwrap()).unwrap();
            // SAFETY: a valid C string.
            let r = unsafe { libc::mknod(p.as_ptr(), kind | 0o640, dev) };
            assert_eq!(
                r,
                0,
                "mknod {name}: {}\n{}",
                std::io::Error::last_os_error(),
                m.log()
            );
        }
    }
    for (name, kind) in [
        ("disk", libc::S_IFBLK),
        ("tty", libc::S_IFCHR),
        ("sock", libc::S_IFSOCK),
    ] {
        let h = c.head_object(&b, name, None).await.unwrap();
        assert_eq!(h.size, 0, "{name}");
        let mode: u32 = meta(&h, "mode").unwrap().parse().unwrap();
        assert_eq!(mode, kind | 0o640, "{name}");
        if kind != libc::S_IFSOCK {
            assert_eq!(meta(&h, "rdev"), Some(&*dev.to_string()), "{name}");
        }
    }
    let m = Mounted::bucket(&b);
    let md = std::fs::symlink_metadata(m.path("disk")).unwrap();
    assert!(md.file_type().is_block_device());
    assert_eq!(md.rdev(), dev);
    let md = std::fs::symlink_metadata(m.path("tty")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), dev);
    assert!(std::fs::symlink_metadata(m.path("sock"))
        .unwrap()
        .file_type()
        .is_socket());
}

/// A write by a process without CAP_FSETID clears the file's set-user-ID
/// bit, and its set-group-ID bit when group execution is on, as a local
/// disk does (the kernel asks for it on direct-I/O writes with
/// FUSE_WRITE_KILL_SUIDGID); `stat` shows it at once and the object's
/// stored mode follows. Root's writes keep the bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_fsetid_clears_the_set_id_bits() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::new(&b, &["-o", "allow_other"], &[]);
    // The mount's parent is a private temporary directory: let nobody in.
    let parent = m.dir.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = m.path("bin");
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let f = d.join("tool");
    std::fs::write(&f, "v1\n").unwrap();
    let chmod = |mode: u32| {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let mode = || std::fs::metadata(&f).unwrap().mode() & 0o7777;
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
            ])
            .arg(script)
            .arg("sh")
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log()
        );
    };
    chmod(0o6777);
    // What `ls -l` shows before the write.
    assert_eq!(mode(), 0o6777);
    as_nobody("echo v2 > \"$1\"");
    assert_eq!(mode(), 0o777, "both bits cleared (group may execute)");
    chmod(0o6767);
    assert_eq!(mode(), 0o6767);
    as_nobody("echo v3 >> \"$1\"");
    assert_eq!(mode(), 0o2767, "set-group-ID kept without group execute");
    chmod(0o4777);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .and_then(|mut h| std::io::Write::write_all(&mut h, b"v4\n"))
        .unwrap();
    assert_eq!(mode(), 0o4777, "root's write keeps them");
    chmod(0o6777);
    as_nobody("echo v5 > \"$1\"");
    assert_eq!(mode(), 0o777);
    let h = head_until(&c, &b, "bin/tool", |h| {
        meta(h, "mode") == Some(&*(libc::S_IFREG | 0o777).to_string())
    })
    .await;
    assert_eq!(h.size, 3, "the last write replaced the object");
}

/// A chmod of a file that a program is reading waits for the reader to
/// close before the object is copied onto itself: such a copy can give the
/// object a new ETag (a multipart object's becomes its MD5 on AWS), which
/// the reader would take for the object being replaced (ESTALE). The reader
/// reads on undisturbed; the mode is stored once it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chmod_waits_for_the_files_readers() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let body = data(3 * 1024 * 1024, 9);
    put(&c, &b, "clip", &body).await;
    let m = Mounted::bucket(&b);
    let p = m.path("clip");
    let f = std::fs::File::open(&p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let h = c.head_object(&b, "clip", None).await.unwrap();
    assert_eq!(meta(&h, "mode"), None, "copied while a reader was open");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut got).unwrap();
    assert!(got == body, "the reader reads on");
    drop(f);
    let h = head_until(&c, &b, "clip", |h| {
        meta(h, "mode") == Some(&*(libc::S_IFREG | 0o600).to_string())
    })
    .await;
    assert_eq!(h.size, body.len() as u64);
}
