//! The filesystem core on the in-memory store, for keys a real server
//! cannot be made to hold through our client (`..` segments, `a//b`).

use super::*;
use crate::s3::memory::MemoryStore;
use crate::s3::Op;
use crate::upload::schedule::Schedule;
use bytes::Bytes;

fn cfg() -> FsConfig {
    let upload = UploadConfig::unbounded(
        Schedule {
            base: 5 << 20,
            max_part: 64 << 20,
        },
        2,
    );
    FsConfig {
        metadata_ttl: Duration::from_secs(60),
        max_readahead: 8 << 20,
        read_budget: crate::upload::budget::Budget::new(16 << 20),
        ..FsConfig::new(upload)
    }
}

async fn names(fs: &Fs, ino: u64) -> Vec<String> {
    let fh = fs.opendir(ino).await.unwrap();
    let mut v: Vec<String> = fs
        .readdir(fh, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    fs.releasedir(fh).await.unwrap();
    v.sort();
    v
}

/// Keys that cannot be file names are skipped (each logged once), nothing
/// resolves outside the mount, and a key that is both a file and a prefix
/// shows as the directory.
#[tokio::test]
async fn keys_that_cannot_be_names_are_skipped_once() {
    let store = Arc::new(MemoryStore::new());
    let long = "L".repeat(MAX_NAME_LEN + 1);
    let fits = "F".repeat(MAX_NAME_LEN);
    let keys = [
        "ok",
        "a//b",
        "a/fine",
        ".",
        "..",
        "./x",
        "../escape",
        "x/../y",
        "x/./z",
        long.as_str(),
        fits.as_str(),
        "both",
        "both/inner",
        "dir/",
    ];
    for k in keys {
        store.insert_object(k, Bytes::from_static(b"1"), &PutOptions::default());
    }
    let fs = Fs::new(store.clone(), cfg());
    let root = fs.root();
    let mut want = vec![".", "..", "a", "both", "dir", "ok", "x", fits.as_str()];
    want.sort();
    assert_eq!(names(&fs, root).await, want);
    // "./", "../", ".", "..", the long key: five at the root.
    assert_eq!(fs.skipped_keys(), 5);
    // Listing again logs nothing new.
    names(&fs, root).await;
    assert_eq!(fs.skipped_keys(), 5);

    let a = fs.lookup(root, OsStr::new("a")).await.unwrap();
    assert_eq!(names(&fs, a.ino).await, [".", "..", "fine"]);
    let x = fs.lookup(root, OsStr::new("x")).await.unwrap();
    assert_eq!(names(&fs, x.ino).await, [".", ".."]);
    // a//, x/../, x/./ were skipped as well.
    assert_eq!(fs.skipped_keys(), 8);

    // The key that is a file and a prefix is the directory.
    let both = fs.lookup(root, OsStr::new("both")).await.unwrap();
    assert_eq!(both.kind, Kind::Dir);
    assert_eq!(names(&fs, both.ino).await, [".", "..", "inner"]);

    // Lookups of such names fail cleanly; none reaches outside the mount.
    assert!(matches!(
        fs.lookup(root, OsStr::new(&long)).await,
        Err(FsError::NameTooLong)
    ));
    assert!(fs.lookup(root, OsStr::new(&fits)).await.is_ok());
    for bad in ["a/b", ""] {
        assert!(fs.lookup(root, OsStr::new(bad)).await.is_err(), "{bad:?}");
    }
    assert!(fs.lookup(x.ino, OsStr::new("y")).await.is_err());
}

/// The inode table stays bounded: what the kernel forgets is dropped, and
/// names a listing brought in are dropped past `max_inodes` (except the
/// directory being listed). Dropped names still resolve, by asking the store.
#[tokio::test]
async fn the_inode_table_forgets_and_stays_bounded() {
    let store = Arc::new(MemoryStore::new());
    for d in ["d1", "d2"] {
        for i in 0..10 {
            let k = format!("{d}/f{i}");
            store.insert_object(&k, Bytes::from_static(b"12"), &PutOptions::default());
        }
    }
    let mut c = cfg();
    c.max_inodes = 15;
    let fs = Fs::new(store.clone(), c);
    let root = fs.root();
    let d1 = fs.lookup(root, OsStr::new("d1")).await.unwrap();
    fs.remember(d1.ino);
    assert_eq!(names(&fs, d1.ino).await.len(), 12);
    assert_eq!(fs.inode_count(), 12); // root, d1, 10 files
    let f0 = fs.lookup(d1.ino, OsStr::new("f0")).await.unwrap();
    fs.remember(f0.ino);
    fs.remember(f0.ino);
    fs.forget(f0.ino, 1);
    assert_eq!(fs.inode_count(), 12, "one lookup is left");
    fs.forget(f0.ino, 1);
    assert_eq!(fs.inode_count(), 11, "forgotten and dropped");
    let heads = store.calls(Op::HeadObject);
    let again = fs.lookup(d1.ino, OsStr::new("f0")).await.unwrap();
    assert_eq!(again.size, 2);
    assert!(store.calls(Op::HeadObject) > heads, "asked the store again");
    fs.remember(again.ino);

    // Listing d2 brings 11 more: d1's idle files go, d2's and the known stay.
    let d2 = fs.lookup(root, OsStr::new("d2")).await.unwrap();
    fs.remember(d2.ino);
    assert_eq!(names(&fs, d2.ino).await.len(), 12);
    assert!(fs.inode_count() <= 15, "{} inodes", fs.inode_count());
    assert!(fs.lookup(d1.ino, OsStr::new("f0")).await.is_ok());
    // d1's listing is no longer complete: a dropped name is found by asking.
    let f5 = fs.lookup(d1.ino, OsStr::new("f5")).await.unwrap();
    assert_eq!(f5.size, 2);
    assert!(matches!(
        fs.lookup(d1.ino, OsStr::new("nope")).await,
        Err(FsError::NotFound)
    ));
    // The kernel forgetting a directory with children here keeps it.
    fs.forget(d2.ino, 1);
    assert!(fs.lookup(root, OsStr::new("d2")).await.is_ok());
}

/// Past `max_inodes`, names go directory by directory, the one listed
/// longest ago first: the other directories keep complete listings, so a
/// name absent from them still costs no request.
#[tokio::test]
async fn trimming_drops_whole_directories_listed_longest_ago() {
    let store = Arc::new(MemoryStore::new());
    for d in ["d1", "d2", "d3"] {
        for i in 0..20 {
            let k = format!("{d}/f{i:02}");
            store.insert_object(&k, Bytes::from_static(b"12"), &PutOptions::default());
        }
    }
    let mut c = cfg();
    c.max_inodes = 50;
    let fs = Fs::new(store.clone(), c);
    let root = fs.root();
    let mut dirs = Vec::new();
    for d in ["d1", "d2", "d3"] {
        let a = fs.lookup(root, OsStr::new(d)).await.unwrap();
        fs.remember(a.ino);
        assert_eq!(names(&fs, a.ino).await.len(), 22);
        dirs.push(a.ino);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // root, 3 directories and 60 names, 14 over the limit: trimmed to 7/8
    // of 50, which is d1's 20 names.
    assert_eq!(fs.inode_count(), 44);
    let (heads, lists) = (store.calls(Op::HeadObject), store.calls(Op::ListObjects));
    for &d in &dirs[1..] {
        assert!(matches!(
            fs.lookup(d, OsStr::new("nope")).await,
            Err(FsError::NotFound)
        ));
    }
    assert_eq!(
        (store.calls(Op::HeadObject), store.calls(Op::ListObjects)),
        (heads, lists),
        "d2 and d3 are still complete"
    );
    assert!(matches!(
        fs.lookup(dirs[0], OsStr::new("nope")).await,
        Err(FsError::NotFound)
    ));
    assert!(
        store.calls(Op::HeadObject) + store.calls(Op::ListObjects) > heads + lists,
        "d1 lost its listing and asks"
    );
}

#[test]
fn content_types_follow_names() {
    assert_eq!(content_type_of("d/a.html").as_deref(), Some("text/html"));
    assert_eq!(
        content_type_of("x.tar.gz").as_deref(),
        Some("application/gzip")
    );
    assert_eq!(content_type_of("noext"), None);
    // rsync: .a.html.Xy12Zq (no type) becomes a.html
    assert_eq!(
        content_type_after_rename(Some("application/octet-stream"), ".a.html.Xy12Zq", "a.html")
            .as_deref(),
        Some("text/html")
    );
    assert_eq!(
        content_type_after_rename(None, "t.tmp", "a.css").as_deref(),
        Some("text/css")
    );
    // a.html -> a.htm keeps; a.txt -> a.html follows the name.
    assert_eq!(
        content_type_after_rename(Some("text/html"), "a.html", "a.htm"),
        None
    );
    assert_eq!(
        content_type_after_rename(Some("text/plain"), "a.txt", "a.html").as_deref(),
        Some("text/html")
    );
    // A type set by someone else stays; a name without a type changes nothing.
    assert_eq!(
        content_type_after_rename(Some("video/x-custom"), "a.bin", "a.html"),
        None
    );
    assert_eq!(
        content_type_after_rename(Some("text/html"), "a.html", "a.bak"),
        None
    );
}

/// `ls -l` over a listed directory: one HEAD per file (read ahead in
/// batches), and once read ahead, names are answered from memory alone
/// (the FUSE thread's path, no task); a name missing from the complete
/// listing is ENOENT from memory, and an unread one needs the server.
#[tokio::test]
async fn listed_names_are_answered_from_memory_once_read_ahead() {
    let store = Arc::new(MemoryStore::new());
    let n = 3 * STATAHEAD;
    for i in 0..n {
        let k = format!("d/f{i:04}");
        store.insert_object(&k, Bytes::from_static(b"123"), &PutOptions::default());
    }
    let fs = Fs::new(store.clone(), cfg());
    let d = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap();
    let listed = names(&fs, d.ino).await;
    assert_eq!(listed.len(), n + 2);
    assert!(
        fs.lookup_cached(d.ino, OsStr::new("f0000")).is_none(),
        "not read yet"
    );
    assert!(matches!(
        fs.lookup_cached(d.ino, OsStr::new("nope")),
        Some(Err(FsError::NotFound))
    ));
    let heads = store.calls(Op::HeadObject);
    let mut from_memory = 0;
    for name in listed.iter().skip(2) {
        let a = match fs.lookup_cached(d.ino, OsStr::new(name)) {
            Some(r) => {
                from_memory += 1;
                r.unwrap()
            }
            None => fs.lookup(d.ino, OsStr::new(name)).await.unwrap(),
        };
        assert_eq!(a.size, 3, "{name}");
        // Let a background statahead batch land, as a slower reader would.
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.calls(Op::HeadObject) - heads,
        n as u64,
        "one HEAD per file"
    );
    assert!(
        from_memory >= n / 2,
        "{from_memory} of {n} answered from memory"
    );
}

/// chmod and utimes of an object past CopyObject's limit (5 GiB on S3; a
/// 12 MiB limit here, which the store enforces) are written by a multipart
/// copy of the object onto itself: same bytes, Content-Type and other
/// metadata kept, the new mode and mtime stored, no upload left over.
#[tokio::test]
async fn attributes_of_an_object_past_the_copy_limit_use_a_multipart_copy() {
    const LIMIT: u64 = 12 << 20;
    let store = Arc::new(MemoryStore::with_limits(1, LIMIT));
    let body = Bytes::from(
        (0..20u32 << 20)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut opts = PutOptions {
        content_type: Some("video/mp4".into()),
        ..PutOptions::default()
    };
    opts.metadata.insert("color".into(), "blue".into());
    store.insert_object("big.mp4", body.clone(), &opts);
    let mut c = cfg();
    c.upload.max_copy_object = LIMIT;
    let fs = Fs::new(store.clone(), c);
    let a = fs.lookup(fs.root(), OsStr::new("big.mp4")).await.unwrap();
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let set = SetAttr {
        mode: Some(0o600),
        mtime: Some(when),
        ..SetAttr::default()
    };
    fs.setattr(a.ino, None, set).await.unwrap();
    fs.persist_attrs(a.ino).await.unwrap();

    assert_eq!(store.calls(Op::CopyObject), 0, "CopyObject refuses it");
    assert!(store.calls(Op::UploadPartCopy) >= 1);
    assert_eq!(
        store.calls(Op::UploadPart),
        0,
        "no bytes through this machine"
    );
    let o = store.object("big.mp4").unwrap();
    assert_eq!(o.body, body);
    assert_eq!(o.content_type, "video/mp4");
    assert_eq!(o.metadata.get("color").map(String::as_str), Some("blue"));
    let mode = (libc::S_IFREG | 0o600).to_string();
    assert_eq!(o.metadata.get("mode"), Some(&mode));
    assert_eq!(
        o.metadata.get("mtime").map(String::as_str),
        Some("1600000000")
    );
    assert!(store.uploads().is_empty());
    assert_eq!(fs.getattr(a.ino).unwrap().perm, 0o600);

    // A rename of it is a multipart copy too, keeping all of that.
    let copies = store.calls(Op::UploadPartCopy);
    fs.rename(
        fs.root(),
        OsStr::new("big.mp4"),
        fs.root(),
        OsStr::new("moved.mp4"),
        0,
    )
    .await
    .unwrap();
    assert!(store.calls(Op::UploadPartCopy) > copies);
    assert_eq!(store.calls(Op::CopyObject), 0);
    let o = store.object("moved.mp4").unwrap();
    assert_eq!((o.body, o.metadata.get("mode")), (body, Some(&mode)));
    assert_eq!(o.content_type, "video/mp4");
    assert!(store.object("big.mp4").is_none());
    assert!(store.uploads().is_empty());
}

/// `truncate -s 0` of a stored file stores an empty object that keeps the
/// file's Content-Type, mode and other metadata (only its mtime is new).
#[tokio::test]
async fn truncating_a_stored_file_to_zero_keeps_its_metadata() {
    let store = Arc::new(MemoryStore::new());
    let mut opts = PutOptions {
        content_type: Some("text/csv".into()),
        ..PutOptions::default()
    };
    opts.metadata.insert("color".into(), "blue".into());
    opts.metadata
        .insert("mode".into(), (libc::S_IFREG | 0o640).to_string());
    opts.metadata.insert("mtime".into(), "1600000000".into());
    store.insert_object("t.csv", Bytes::from_static(b"a,b\n1,2\n"), &opts);
    let fs = Fs::new(store.clone(), cfg());
    let a = fs.lookup(fs.root(), OsStr::new("t.csv")).await.unwrap();
    let set = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    let after = fs.setattr(a.ino, None, set).await.unwrap();
    assert_eq!((after.size, after.perm), (0, 0o640));
    let o = store.object("t.csv").unwrap();
    assert!(o.body.is_empty());
    assert_eq!(o.content_type, "text/csv");
    assert_eq!(o.metadata.get("color").map(String::as_str), Some("blue"));
    let mode = (libc::S_IFREG | 0o640).to_string();
    assert_eq!(o.metadata.get("mode"), Some(&mode));
    assert_eq!(o.metadata.get("mtime"), None, "the old mtime is gone");
}

/// A name the server said is absent is trusted for the TTL (rsync looks
/// up each temporary and final name, and the rename looks up its target):
/// the second lookup sends nothing, a create here makes the name exist at
/// once, and after the TTL the server is asked again.
#[tokio::test]
async fn absent_names_are_remembered_for_the_ttl() {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("d/x", Bytes::from_static(b"1"), &PutOptions::default());
    let mut c = cfg();
    c.metadata_ttl = Duration::from_secs(1);
    let fs = Fs::new(store.clone(), c);
    let d = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap().ino;
    let asked = || store.calls(Op::HeadObject) + store.calls(Op::ListObjects);
    let before = asked();
    let absent = |n: &'static str| {
        let fs = &fs;
        async move { fs.lookup(d, OsStr::new(n)).await }
    };
    assert!(matches!(absent("new").await, Err(FsError::NotFound)));
    let first = asked() - before;
    assert!(first >= 1);
    assert!(matches!(absent("new").await, Err(FsError::NotFound)));
    assert!(matches!(
        fs.lookup_cached(d, OsStr::new("new")),
        Some(Err(FsError::NotFound))
    ));
    assert_eq!(asked() - before, first, "answered from memory");

    let (_, fh) = fs.create(d, OsStr::new("new"), 0o644, 1).await.unwrap();
    assert!(
        fs.lookup(d, OsStr::new("new")).await.is_ok(),
        "created here"
    );
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.object("d/new").is_some());

    assert!(matches!(absent("other").await, Err(FsError::NotFound)));
    store.insert_object("d/other", Bytes::from_static(b"2"), &PutOptions::default());
    assert!(
        matches!(absent("other").await, Err(FsError::NotFound)),
        "cached"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        absent("other").await.unwrap().size,
        1,
        "asked again after the TTL"
    );
}

/// Copies carry what a plain copy would lose: chmod (a REPLACE copy onto
/// itself) keeps Cache-Control, Content-Encoding, the storage class and the
/// object's SSE-KMS key; a rename of such an object is a REPLACE copy that
/// keeps them too; a directory rename re-sends the metadata of objects in
/// another storage class.
#[tokio::test]
async fn copies_keep_headers_storage_class_and_encryption() {
    let store = Arc::new(MemoryStore::new());
    let kms = crate::s3::Sse::Kms {
        key_id: Some("key-1".into()),
        dsse: true,
    };
    let opts = PutOptions {
        content_type: Some("text/plain".into()),
        storage_class: Some("STANDARD_IA".into()),
        sse: Some(kms.clone()),
        extra_headers: vec![
            ("Cache-Control".into(), "max-age=60".into()),
            ("Content-Encoding".into(), "gzip".into()),
        ],
        ..PutOptions::default()
    };
    store.insert_object("d/f.txt", Bytes::from_static(b"zz"), &opts);
    store.insert_object("d/g.txt", Bytes::from_static(b"yy"), &opts);
    let fs = Fs::new(store.clone(), cfg());
    let root = fs.root();
    let d = fs.lookup(root, OsStr::new("d")).await.unwrap().ino;
    let keeps = |key: &str, what: &str| {
        let o = store.object(key).unwrap_or_else(|| panic!("{key}: gone"));
        let h = |n: &str| {
            o.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("cache-control").as_deref(), Some("max-age=60"), "{what}");
        assert_eq!(h("content-encoding").as_deref(), Some("gzip"), "{what}");
        assert_eq!(o.content_type, "text/plain", "{what}");
        assert_eq!(o.storage_class.as_deref(), Some("STANDARD_IA"), "{what}");
        assert_eq!(o.sse, Some(kms.clone()), "{what}");
    };

    let f = fs.lookup(d, OsStr::new("f.txt")).await.unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, None, chmod).await.unwrap();
    fs.persist_attrs(f.ino).await.unwrap();
    keeps("d/f.txt", "chmod");
    let mode = (libc::S_IFREG | 0o600).to_string();
    assert_eq!(
        store.object("d/f.txt").unwrap().metadata.get("mode"),
        Some(&mode)
    );

    fs.rename(d, OsStr::new("f.txt"), d, OsStr::new("h.txt"), 0)
        .await
        .unwrap();
    keeps("d/h.txt", "file rename");

    fs.rename(root, OsStr::new("d"), root, OsStr::new("e"), 0)
        .await
        .unwrap();
    keeps("e/g.txt", "directory rename");
    keeps("e/h.txt", "directory rename");
    assert_eq!(store.keys(), ["e/g.txt", "e/h.txt"]);
}

/// Attributes set on a stored object are written at fsync and at unmount
/// (`persist_all`, what FUSE destroy runs) without waiting for the timer:
/// mode, uid and gid as s3fs stores them.
#[tokio::test]
async fn pending_attributes_are_written_at_fsync_and_at_unmount() {
    let store = Arc::new(MemoryStore::new());
    for k in ["a", "b"] {
        store.insert_object(k, Bytes::from_static(b"x"), &PutOptions::default());
    }
    let fs = Fs::new(store.clone(), cfg());
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(1234),
        gid: Some(4321),
        ..SetAttr::default()
    };
    let a = fs.lookup(fs.root(), OsStr::new("a")).await.unwrap().ino;
    let b = fs.lookup(fs.root(), OsStr::new("b")).await.unwrap().ino;
    fs.setattr(a, None, set.clone()).await.unwrap();
    fs.setattr(b, None, set).await.unwrap();
    // The timer waits ATTR_DELAY (1 s); nothing is written before it.
    assert_eq!(store.calls(Op::CopyObject), 0);
    let fh = fs.open(a, libc::O_RDONLY, 1).await.unwrap();
    fs.fsync(a, fh).await.unwrap();
    assert_eq!(store.calls(Op::CopyObject), 1, "written at fsync");
    fs.persist_all().await;
    assert_eq!(store.calls(Op::CopyObject), 2, "and the rest at unmount");
    let mode = (libc::S_IFREG | 0o600).to_string();
    for k in ["a", "b"] {
        let m = store.object(k).unwrap().metadata;
        assert_eq!(m.get("mode"), Some(&mode), "{k}");
        assert_eq!(m.get("uid").map(String::as_str), Some("1234"), "{k}");
        assert_eq!(m.get("gid").map(String::as_str), Some("4321"), "{k}");
    }
}

/// chmod 600 of a stored file, then its attribute write started (as the
/// timer would) with `op` slowed to 400 ms; returns once that write is at
/// the store.
async fn chmod_with_a_slow_write(
    fs: &Arc<Fs>,
    store: &MemoryStore,
    ino: u64,
    op: Op,
) -> tokio::task::JoinHandle<FsResult<()>> {
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    fs.setattr(ino, None, chmod).await.unwrap();
    store.delay(op, Duration::from_millis(400));
    let writing = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.persist_attrs(ino).await })
    };
    while store.in_flight(op) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writing
}

/// A rename that starts while the object's pending attributes are being
/// written (the timer fired) waits for that copy: otherwise it would copy
/// the object as it was, and the attributes would land on the old key just
/// before it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_waits_for_an_attribute_write_in_flight() {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("t.tmp", Bytes::from_static(b"x"), &PutOptions::default());
    let fs = Fs::new(store.clone(), cfg());
    let root = fs.root();
    let t = fs.lookup(root, OsStr::new("t.tmp")).await.unwrap().ino;
    // The write of the attributes is slow; the rename's own copy is not.
    let writing = chmod_with_a_slow_write(&fs, &store, t, Op::CopyObject).await;
    store.delay(Op::CopyObject, Duration::ZERO);
    fs.rename(root, OsStr::new("t.tmp"), root, OsStr::new("t"), 0)
        .await
        .unwrap();
    writing.await.unwrap().unwrap();
    let mode = (libc::S_IFREG | 0o600).to_string();
    let o = store.object("t").expect("renamed");
    assert_eq!(
        o.metadata.get("mode"),
        Some(&mode),
        "the copy has the new mode"
    );
    assert!(store.object("t.tmp").is_none());
}

/// A directory of files and subdirectories: readdir gives them interleaved
/// in byte order, the order `ls -l` stats in, so statahead keeps ahead of
/// it (each name HEADed once, most answered from memory); `find`, which
/// looks up only the subdirectories, costs one HEAD per directory and none
/// per file.
#[tokio::test]
async fn mixed_directories_read_ahead_in_readdir_order() {
    let store = Arc::new(MemoryStore::new());
    let n = 4 * STATAHEAD;
    for i in 0..n {
        let k = if i % 2 == 0 {
            format!("m/n{i:04}")
        } else {
            format!("m/n{i:04}/x")
        };
        store.insert_object(&k, Bytes::from_static(b"1"), &PutOptions::default());
    }
    let listed = |fs: Arc<Fs>| async move {
        let m = fs.lookup(fs.root(), OsStr::new("m")).await.unwrap().ino;
        let fh = fs.opendir(m).await.unwrap();
        let entries = fs.readdir(fh, 0).await.unwrap();
        fs.releasedir(fh).await.unwrap();
        (m, entries.into_iter().skip(2).collect::<Vec<_>>())
    };

    // ls -l: every entry, in readdir order.
    let fs = Fs::new(store.clone(), cfg());
    let (m, entries) = listed(fs.clone()).await;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        names, sorted,
        "byte order, directories and files interleaved"
    );
    let heads = store.calls(Op::HeadObject);
    let mut from_memory = 0;
    for e in &entries {
        match fs.lookup_cached(m, OsStr::new(&e.name)) {
            Some(r) => {
                r.unwrap();
                from_memory += 1;
            }
            None => {
                fs.lookup(m, OsStr::new(&e.name)).await.unwrap();
            }
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.calls(Op::HeadObject) - heads,
        n as u64,
        "one HEAD per name"
    );
    assert!(from_memory >= n / 2, "{from_memory} of {n} from memory");

    // find: the subdirectories only.
    let fs = Fs::new(store.clone(), cfg());
    let (m, entries) = listed(fs.clone()).await;
    let heads = store.calls(Op::HeadObject);
    for e in entries.iter().filter(|e| e.kind == Kind::Dir) {
        fs.lookup(m, OsStr::new(&e.name)).await.unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(
        store.calls(Op::HeadObject) - heads,
        (n / 2) as u64,
        "one HEAD per directory (its marker), none per file"
    );
}

/// An attribute write of a large object (a multipart copy onto itself,
/// minutes on a real server) in flight when the file is deleted: the delete
/// waits for it, so its Complete cannot bring the object back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_waits_for_a_multipart_attribute_copy() {
    const LIMIT: u64 = 6 << 20;
    let store = Arc::new(MemoryStore::with_limits(1, LIMIT));
    let body = Bytes::from(vec![3u8; 8 << 20]);
    store.insert_object("big", body, &PutOptions::default());
    let mut c = cfg();
    c.upload.max_copy_object = LIMIT;
    let fs = Fs::new(store.clone(), c);
    let root = fs.root();
    let big = fs.lookup(root, OsStr::new("big")).await.unwrap().ino;
    let writing = chmod_with_a_slow_write(&fs, &store, big, Op::UploadPartCopy).await;
    fs.unlink(root, OsStr::new("big")).await.unwrap();
    writing.await.unwrap().unwrap();
    assert!(store.object("big").is_none(), "deleted, and stays deleted");
    assert!(store.uploads().is_empty());
}

/// With --attrs-from-listing, chmod of a listed file reads the object's
/// metadata first: its stored mtime and the rest stay, only the mode
/// changes.
#[tokio::test]
async fn attrs_from_listing_changes_only_what_is_asked() {
    let store = Arc::new(MemoryStore::new());
    let mut opts = PutOptions::default();
    opts.metadata
        .insert("mode".into(), (libc::S_IFREG | 0o640).to_string());
    opts.metadata.insert("mtime".into(), "1600000000".into());
    opts.metadata.insert("uid".into(), "7".into());
    store.insert_object("d/f", Bytes::from_static(b"x"), &opts);
    let mut c = cfg();
    c.attrs_from_listing = true;
    let fs = Fs::new(store.clone(), c);
    let d = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap().ino;
    names(&fs, d).await;
    let f = fs.lookup(d, OsStr::new("f")).await.unwrap();
    assert_eq!(f.perm, 0o644, "the listing's default");
    let heads = store.calls(Op::HeadObject);
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let after = fs.setattr(f.ino, None, chmod).await.unwrap();
    assert_eq!(store.calls(Op::HeadObject) - heads, 1, "read once, first");
    assert_eq!(after.uid, 7);
    assert_eq!(
        after.mtime,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
    );
    fs.persist_attrs(f.ino).await.unwrap();
    let m = store.object("d/f").unwrap().metadata;
    assert_eq!(m.get("mode"), Some(&(libc::S_IFREG | 0o600).to_string()));
    assert_eq!(m.get("mtime").map(String::as_str), Some("1600000000"));
    assert_eq!(m.get("uid").map(String::as_str), Some("7"));
}

/// A lookup whose HEAD was sent before this mount stored the name answers
/// with what the mount now knows, not with the HEAD's stale "not found"
/// (which would also be remembered as absent for the TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_not_found_does_not_hide_a_file_stored_here() {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("d/x", Bytes::from_static(b"1"), &PutOptions::default());
    let fs = Fs::new(store.clone(), cfg());
    let d = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap().ino;
    // The next HEAD answers "not found" late, as a server that read its
    // table before the PUT below landed would.
    store.delay(Op::HeadObject, Duration::from_millis(400));
    store.fail_nth(Op::HeadObject, store.calls(Op::HeadObject) + 1, "NoSuchKey");
    let looking = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.lookup(d, OsStr::new("new")).await })
    };
    while store.in_flight(Op::HeadObject) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.delay(Op::HeadObject, Duration::ZERO);
    let (_, fh) = fs.create(d, OsStr::new("new"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"abc", None).await.unwrap();
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    let seen = looking.await.unwrap();
    assert_eq!(seen.map(|a| a.size).ok(), Some(3), "newer than the HEAD");
    assert!(matches!(
        fs.lookup_cached(d, OsStr::new("new")),
        Some(Ok(_))
    ));
}

/// A server whose listings loop (a token cycle, or ever-new tokens over
/// the same page) fails opendir and the rename of a directory with EIO
/// after a few pages instead of hanging them; nothing is copied or
/// deleted by the failed rename.
#[tokio::test]
async fn a_looping_listing_fails_opendir_and_rename_instead_of_hanging() {
    let store = Arc::new(MemoryStore::new());
    for k in ["d/a", "d/b", "d/c"] {
        store.insert_object(k, Bytes::from_static(b"x"), &PutOptions::default());
    }
    let fs = Fs::new(store.clone(), cfg());
    let d = fs.lookup(ROOT, OsStr::new("d")).await.unwrap().ino;
    store.loop_listings();
    let fh = tokio::time::timeout(Duration::from_secs(10), fs.opendir(d))
        .await
        .expect("opendir hangs on a looping listing");
    let listed = match fh {
        Ok(fh) => {
            let r = tokio::time::timeout(Duration::from_secs(10), fs.readdir(fh, 0))
                .await
                .expect("readdir hangs on a looping listing");
            let _ = fs.releasedir(fh).await;
            r.map(|_| ())
        }
        Err(e) => Err(e),
    };
    assert!(matches!(listed, Err(FsError::Io(_))), "{listed:?}");
    let before = store.calls(Op::ListObjects);
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), 0),
    )
    .await
    .expect("rename hangs on a looping listing");
    assert!(matches!(r, Err(FsError::Io(_))), "{r:?}");
    assert!(
        store.calls(Op::ListObjects) - before < 10,
        "a few pages, not a loop"
    );
    assert_eq!(store.keys(), ["d/a", "d/b", "d/c"], "nothing moved");
}

/// Where a server keeps no metadata on `dir/` markers (SeaweedFS, modelled
/// by the store's `drop_marker_metadata`), the probe says so and directory
/// attributes live in `dir/.bucketfs-directory`: mkdir's mode and a later
/// chmod and utimes survive a new mount; the object is never shown, cannot
/// be made or looked up, moves with a rename and goes with rmdir. Where
/// markers keep metadata, nothing changes.
#[tokio::test]
async fn directory_attributes_live_in_an_object_where_markers_drop_them() {
    use dir_attrs::{probe, DirAttrs, DIR_ATTRS_NAME};
    assert_eq!(probe(&MemoryStore::new(), "p/").await, DirAttrs::OnMarker);
    let store = Arc::new(MemoryStore::new());
    store.drop_marker_metadata();
    assert_eq!(probe(store.as_ref(), "").await, DirAttrs::InObject);
    assert!(store.keys().is_empty(), "the probe leaves nothing behind");
    let fs_at = |store: &Arc<MemoryStore>| {
        Fs::new(
            store.clone(),
            FsConfig {
                dir_attrs: DirAttrs::InObject,
                ..cfg()
            },
        )
    };
    let fs = fs_at(&store);
    let d = fs.mkdir(ROOT, OsStr::new("d"), 0o700).await.unwrap();
    let attrs_key = format!("d/{DIR_ATTRS_NAME}");
    let mode = |store: &MemoryStore| {
        store
            .object(&attrs_key)
            .and_then(|o| o.metadata.get("mode").cloned())
    };
    assert_eq!(mode(&store), Some((libc::S_IFDIR | 0o700).to_string()));
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let change = SetAttr {
        mode: Some(0o750),
        mtime: Some(when),
        ..SetAttr::default()
    };
    fs.setattr(d.ino, None, change).await.unwrap();
    fs.persist_attrs(d.ino).await.unwrap();
    assert_eq!(mode(&store), Some((libc::S_IFDIR | 0o750).to_string()));
    store.insert_object("d/f", Bytes::from_static(b"x"), &PutOptions::default());

    // A new mount reads them back; the object is no entry of the directory.
    let fs2 = fs_at(&store);
    let d2 = fs2.lookup(ROOT, OsStr::new("d")).await.unwrap();
    assert_eq!((d2.perm, d2.mtime), (0o750, when));
    assert!(!names(&fs2, d2.ino)
        .await
        .contains(&DIR_ATTRS_NAME.to_string()));
    assert!(matches!(
        fs2.lookup(d2.ino, OsStr::new(DIR_ATTRS_NAME)).await,
        Err(FsError::NotFound)
    ));
    assert!(fs2
        .create(d2.ino, OsStr::new(DIR_ATTRS_NAME), 0o644, 1)
        .await
        .is_err());
    assert_eq!(
        store.object(&attrs_key).map(|o| o.body.len()),
        Some(0),
        "not overwritten"
    );

    // A rename carries them; rmdir of the emptied directory takes them.
    fs2.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), 0)
        .await
        .unwrap();
    let fs3 = fs_at(&store);
    let e = fs3.lookup(ROOT, OsStr::new("e")).await.unwrap();
    assert_eq!((e.perm, e.mtime), (0o750, when));
    let e_names = names(&fs3, e.ino).await;
    for n in &e_names {
        if n != "." && n != ".." {
            fs3.unlink(e.ino, OsStr::new(n)).await.unwrap();
        }
    }
    fs3.rmdir(ROOT, OsStr::new("e")).await.unwrap();
    assert!(store.keys().is_empty(), "{:?}", store.keys());
}

/// A failed append (or overwrite) of a stored object leaves the object as
/// it was, and the mount says so: the file reads back whole at its old
/// size, instead of failing every read past the old end (a GET of a range
/// the object does not have answers 416). Small objects are rewritten by
/// one PutObject, large ones start with UploadPartCopy of the old bytes.
#[tokio::test]
async fn a_failed_append_leaves_the_file_as_it_was() {
    for (size, op) in [(1000usize, Op::PutObject), (6 << 20, Op::UploadPartCopy)] {
        let store = Arc::new(MemoryStore::new());
        let old = Bytes::from(vec![7u8; size]);
        store.insert_object("f", old.clone(), &PutOptions::default());
        let fs = Fs::new(store.clone(), cfg());
        let f = fs.lookup(ROOT, OsStr::new("f")).await.unwrap();
        store.fail_all(op, "InternalError");
        let fh = fs
            .open(f.ino, libc::O_WRONLY | libc::O_APPEND, 1)
            .await
            .unwrap();
        let w = fs.write(fh, size as u64, b"more", None).await;
        let closed = match w {
            Ok(_) => fs.flush(fh, 1).await,
            Err(e) => Err(e),
        };
        assert!(closed.is_err(), "{op:?}: the close reports the failure");
        fs.release(fh).await.unwrap();
        store.clear_faults();
        assert_eq!(
            store.object("f").unwrap().body,
            old,
            "{op:?}: the object is as it was"
        );
        let a = fs.lookup(ROOT, OsStr::new("f")).await.unwrap();
        assert_eq!(a.size, size as u64, "{op:?}: the old size");
        let rh = fs.open(f.ino, libc::O_RDONLY, 1).await.unwrap();
        let mut got = Vec::new();
        while got.len() < size + 10 {
            let b = fs
                .read(rh, got.len() as u64, 128 << 10)
                .await
                .unwrap_or_else(|e| panic!("{op:?}: read at {}: {e}", got.len()));
            if b.is_empty() {
                break;
            }
            got.extend_from_slice(&b);
        }
        fs.release(rh).await.unwrap();
        assert!(got == old, "{op:?}: read back {} bytes", got.len());
    }
}

/// Another client makes the name of a file being written here a
/// directory (it stores `f/x`), and a listing shows it: the close still
/// stores the file at its key and says so. It used to take the writer for
/// unlinked, abort the upload and return success with nothing stored.
#[tokio::test]
async fn a_name_taken_by_a_directory_while_written_still_stores_the_file() {
    let store = Arc::new(MemoryStore::new());
    let fs = Fs::new(store.clone(), cfg());
    let (_, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"bytes", None).await.unwrap();
    store.insert_object("f/x", Bytes::from_static(b"x"), &PutOptions::default());
    let listed = names(&fs, ROOT).await;
    assert!(listed.contains(&"f".to_string()), "{listed:?}");
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        store.object("f").map(|o| o.body),
        Some(Bytes::from_static(b"bytes")),
        "a close that returned success stored the bytes"
    );
}

/// unlink while the close is on its way to the server (a killed writer's
/// release, then `rm`): the file stays removed; the object the close
/// stored after the unlink's check is deleted.
#[tokio::test]
async fn unlink_during_a_close_stays_unlinked() {
    let store = Arc::new(MemoryStore::new());
    let fs = Fs::new(store.clone(), cfg());
    let (_, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"bytes", None).await.unwrap();
    store.delay(Op::PutObject, Duration::from_millis(300));
    let closing = {
        let fs = fs.clone();
        tokio::spawn(async move { fs.flush(fh, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    fs.unlink(ROOT, OsStr::new("f")).await.unwrap();
    closing.await.unwrap().unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.object("f").is_none(), "the unlinked file reappeared");
    assert!(matches!(
        fs.lookup(ROOT, OsStr::new("f")).await,
        Err(FsError::NotFound)
    ));
}

/// A store holding "f" = "old", and "f" opened with O_TRUNC (an overwrite).
async fn overwriting_old() -> (Arc<MemoryStore>, Arc<Fs>, Attr, u64) {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("f", Bytes::from_static(b"old"), &PutOptions::default());
    let fs = Fs::new(store.clone(), cfg());
    let f = fs.lookup(ROOT, OsStr::new("f")).await.unwrap();
    let trunc = libc::O_WRONLY | libc::O_TRUNC;
    let fh = fs.open(f.ino, trunc, 1).await.unwrap();
    (store, fs, f, fh)
}

/// An unlink the server refuses unlinks nothing: the close that follows
/// stores the file as if no unlink had been tried.
#[tokio::test]
async fn a_refused_unlink_does_not_cost_a_close_its_bytes() {
    let (store, fs, _, fh) = overwriting_old().await;
    fs.write(fh, 0, b"new", None).await.unwrap();
    store.fail_all(Op::DeleteObject, "AccessDenied");
    assert!(fs.unlink(ROOT, OsStr::new("f")).await.is_err());
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.object("f").unwrap().body, Bytes::from_static(b"new"));
}

/// A shrinking ftruncate into bytes already sent, of a file replacing an
/// object (no checkpoint may go to its key), is refused and, like a
/// refused write, dooms the file: its close fails and the old object
/// stays, rather than a close that succeeds with the length the program
/// tried to cut.
#[tokio::test]
async fn a_refused_truncate_fails_the_close() {
    let (store, fs, f, fh) = overwriting_old().await;
    let body = vec![1u8; 12 << 20];
    fs.write(fh, 0, &body, None).await.unwrap();
    let shrink = SetAttr {
        size: Some(1 << 20),
        ..SetAttr::default()
    };
    assert!(fs.setattr(f.ino, Some(fh), shrink).await.is_err());
    assert!(fs.flush(fh, 1).await.is_err(), "the close reports it");
    fs.release(fh).await.unwrap();
    assert_eq!(store.object("f").unwrap().body, Bytes::from_static(b"old"));
}

/// The same shrink in a file this mount created: a checkpoint of what was
/// written is stored, and the shrink goes on from it.
#[tokio::test]
async fn a_shrink_into_sent_parts_of_a_new_file_works() {
    let store = Arc::new(MemoryStore::new());
    let fs = Fs::new(store.clone(), cfg());
    let (f, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    let body: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    fs.write(fh, 0, &body, None).await.unwrap();
    let shrink = SetAttr {
        size: Some(1 << 20),
        ..SetAttr::default()
    };
    fs.setattr(f.ino, Some(fh), shrink).await.unwrap();
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(store.object("f").unwrap().body[..] == body[..1 << 20]);
}

/// A directory renamed while a file under it is open for writing: the
/// close must not land at the old prefix (a key no name shows), nor may
/// the rename's delete phase remove what the close stored. Either the
/// rename waits or refuses, or the close follows the new name; the bytes
/// written end up under exactly one name the mount shows.
#[tokio::test]
async fn renaming_a_directory_with_a_file_being_written() {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("d/old", Bytes::from_static(b"o"), &PutOptions::default());
    let fs = Fs::new(store.clone(), cfg());
    let d = fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    let (_, fh) = fs.create(d.ino, OsStr::new("f"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"bytes", None).await.unwrap();
    let renamed = fs
        .rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), 0)
        .await;
    fs.flush(fh, 1).await.unwrap();
    fs.release(fh).await.unwrap();
    let keys = store.keys();
    match renamed {
        Ok(()) => assert_eq!(keys, ["e/f", "e/old"], "the close followed the rename"),
        Err(e) => {
            assert!(matches!(e, FsError::Busy(_)), "{e:?}");
            assert_eq!(keys, ["d/f", "d/old"], "the rename was refused");
        }
    }
}

/// The same, with the file opened while the rename runs (its copies are
/// slow): the new file's bytes end up under exactly one name the mount
/// shows, or its creation is refused; never at the old prefix nor deleted
/// by the rename's delete phase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_created_while_its_directory_is_renamed() {
    let store = Arc::new(MemoryStore::new());
    store.insert_object("d/old", Bytes::from_static(b"o"), &PutOptions::default());
    let fs = Fs::new(store.clone(), cfg());
    let d = fs.lookup(ROOT, OsStr::new("d")).await.unwrap();
    store.delay(Op::CopyObject, Duration::from_millis(300));
    let renaming = {
        let fs = fs.clone();
        tokio::spawn(async move {
            fs.rename(ROOT, OsStr::new("d"), ROOT, OsStr::new("e"), 0)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let created = fs.create(d.ino, OsStr::new("f"), 0o644, 1).await;
    let stored = match created {
        Ok((_, fh)) => {
            fs.write(fh, 0, b"bytes", None).await.unwrap();
            let closed = fs.flush(fh, 1).await;
            fs.release(fh).await.unwrap();
            closed.is_ok()
        }
        Err(_) => false,
    };
    renaming.await.unwrap().unwrap();
    let keys = store.keys();
    if stored {
        assert_eq!(keys, ["e/f", "e/old"], "the bytes are under the new name");
    } else {
        assert_eq!(keys, ["e/old"]);
    }
}
