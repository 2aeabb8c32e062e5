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
        let h = c.head_object(b, key).await.unwrap();
        if check(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{key}: metadata never arrived: {:?}",
            h.metadata
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn meta<'a>(h: &'a ObjectHead, k: &str) -> Option<&'a str> {
    h.metadata.get(k).map(String::as_str)
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

/// cp -p sets mode and times on the open file before close: they go into
/// the PutObject itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_p_keeps_mode_and_mtime() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("script.sh");
    std::fs::write(&src, data(3000, 1)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o750)).unwrap();
    let when = UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(when)
        .unwrap();
    let out = Command::new("cp")
        .arg("-p")
        .arg(&src)
        .arg(m.path("script.sh"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -p: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
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
    let out = Command::new("rsync")
        .arg("-a")
        .arg("--stats")
        .arg(format!("{}/", src.display()))
        .arg(dst)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rsync: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
        let h = c.head_object(&b, "dst/f1").await.unwrap();
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
