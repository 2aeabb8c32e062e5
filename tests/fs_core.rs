//! The filesystem core in-process on a real Garage, where requests can be
//! counted: listings cost one LIST per page, lookups after a listing none.

mod common;

use bucketfs::fs::{Fs, FsConfig};
use bucketfs::s3::{BucketClient, Op};
use bucketfs::upload::schedule::Schedule;
use bucketfs::upload::UploadConfig;
use common::*;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

fn fs_config() -> FsConfig {
    let upload = UploadConfig::unbounded(
        Schedule {
            base: 8 << 20,
            max_part: 128 << 20,
        },
        4,
    );
    FsConfig {
        metadata_ttl: Duration::from_secs(60),
        ..FsConfig::new(upload)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_2500_keys_costs_3_lists_and_metadata_is_read_once() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put_many(&c, &b, "big/", 2500, b"xy").await;
    let store = Arc::new(BucketClient::new(c.clone(), b.clone()));
    let fs = Fs::new(store, fs_config());
    let dir = fs.lookup(fs.root(), OsStr::new("big")).await.unwrap();

    let lists = c.counters().requests(Op::ListObjects);
    let heads = c.counters().requests(Op::HeadObject);
    let fh = fs.opendir(dir.ino).await.unwrap();
    // Page through it the way the kernel does, a few entries at a time.
    let mut names = Vec::new();
    loop {
        let chunk = fs.readdir(fh, names.len() as u64).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        names.extend(chunk.into_iter().take(37).map(|e| e.name));
    }
    assert_eq!(names.len(), 2502, "2,500 files plus . and ..");
    assert_eq!(
        c.counters().requests(Op::ListObjects) - lists,
        3,
        "one LIST per 1,000 keys, once per opendir"
    );
    // A listing has no metadata (mode, mtime): the first lookup of a listed
    // file costs one HEAD and no LIST; later ones read siblings ahead.
    let a = fs.lookup(dir.ino, OsStr::new("00000")).await.unwrap();
    assert_eq!(a.size, 2);
    assert_eq!(c.counters().requests(Op::HeadObject) - heads, 1);
    for n in ["01234", "02499"] {
        let a = fs.lookup(dir.ino, OsStr::new(n)).await.unwrap();
        assert_eq!(a.size, 2);
    }
    let used = c.counters().requests(Op::HeadObject) - heads;
    assert!((3..=3 + 2 * 32).contains(&used), "{used} HEADs");
    assert_eq!(c.counters().requests(Op::ListObjects) - lists, 3);
    fs.releasedir(fh).await.unwrap();
    // Listed again: what the HEADs found is kept while the listing shows
    // the same version (ETag and Last-Modified), so memory answers these
    // names (no HEAD for them; a hit may read unread neighbours ahead in
    // the background, which is why HEADs are not counted here).
    let fh = fs.opendir(dir.ino).await.unwrap();
    fs.releasedir(fh).await.unwrap();
    assert_eq!(c.counters().requests(Op::ListObjects) - lists, 6);
    for n in ["00000", "01234", "02499"] {
        let a = fs.lookup_cached(dir.ino, OsStr::new(n));
        assert!(
            matches!(a, Some(Ok(ref a)) if a.size == 2),
            "{n}: metadata cached across listings: {a:?}"
        );
    }
}

/// `ls -l` of a listed directory: every file is HEADed exactly once (read
/// ahead in parallel, never twice), and a listing again costs no HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_l_heads_each_file_once_reading_ahead() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put_many(&c, &b, "d/", 200, b"abc").await;
    let store = Arc::new(BucketClient::new(c.clone(), b.clone()));
    let fs = Fs::new(store, fs_config());
    let dir = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap();
    let fh = fs.opendir(dir.ino).await.unwrap();
    let names: Vec<String> = fs
        .readdir(fh, 2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names.len(), 200);
    let heads = c.counters().requests(Op::HeadObject);
    for n in &names {
        assert_eq!(fs.lookup(dir.ino, OsStr::new(n)).await.unwrap().size, 3);
    }
    assert_eq!(
        c.counters().requests(Op::HeadObject) - heads,
        200,
        "one HEAD per file, no duplicates"
    );
    fs.releasedir(fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_file_costs_one_put() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let store = Arc::new(BucketClient::new(c.clone(), b.clone()));
    let fs = Fs::new(store, fs_config());
    let before: Vec<u64> = [Op::PutObject, Op::CreateMultipartUpload, Op::UploadPart]
        .iter()
        .map(|o| c.counters().requests(*o))
        .collect();
    let (_, fh) = fs
        .create(fs.root(), OsStr::new("small"), 0o644, std::process::id())
        .await
        .unwrap();
    fs.write(fh, 0, b"hello", None).await.unwrap();
    fs.flush(fh, std::process::id()).await.unwrap();
    fs.release(fh).await.unwrap();
    let after: Vec<u64> = [Op::PutObject, Op::CreateMultipartUpload, Op::UploadPart]
        .iter()
        .map(|o| c.counters().requests(*o))
        .collect();
    assert_eq!(after[0] - before[0], 1);
    assert_eq!(after[1], before[1]);
    assert_eq!(after[2], before[2]);
    let g = c.get_object(&b, "small", None, None).await.unwrap();
    assert_eq!(&g.body[..], b"hello");
}

/// `cp -r` into a new directory: mkdir makes it known-empty, so the lookups
/// of the names cp creates cost no HEAD or LIST — one PUT per file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_files_in_a_new_directory_costs_no_lookups() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let store = Arc::new(BucketClient::new(c.clone(), b.clone()));
    let fs = Fs::new(store, fs_config());
    let dir = fs.mkdir(fs.root(), OsStr::new("new"), 0o755).await.unwrap();
    let (heads, lists, puts) = (
        c.counters().requests(Op::HeadObject),
        c.counters().requests(Op::ListObjects),
        c.counters().requests(Op::PutObject),
    );
    let pid = std::process::id();
    for i in 0..20 {
        let name = format!("f{i}");
        let e = fs.lookup(dir.ino, OsStr::new(&name)).await.unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
        let (_, fh) = fs
            .create(dir.ino, OsStr::new(&name), 0o644, pid)
            .await
            .unwrap();
        fs.write(fh, 0, name.as_bytes(), None).await.unwrap();
        fs.flush(fh, pid).await.unwrap();
        fs.release(fh).await.unwrap();
        assert!(fs.lookup(dir.ino, OsStr::new(&name)).await.is_ok());
    }
    assert_eq!(c.counters().requests(Op::HeadObject), heads);
    assert_eq!(c.counters().requests(Op::ListObjects), lists);
    assert_eq!(c.counters().requests(Op::PutObject) - puts, 20);
    assert_eq!(
        c.list_objects_all(&b, "new/", None)
            .await
            .unwrap()
            .objects
            .len(),
        21
    );
}

/// Once a directory's listing is stale (past --metadata-ttl), lookups of
/// new names cost one LIST of the directory between them, not a HEAD and
/// a LIST each (rsync looks up every temporary and final name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_names_in_a_stale_directory_cost_one_listing() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put_many(&c, &b, "d/", 30, b"z").await;
    let store = Arc::new(BucketClient::new(c.clone(), b.clone()));
    let mut cfg = fs_config();
    cfg.metadata_ttl = Duration::from_millis(300);
    let fs = Fs::new(store, cfg);
    let dir = fs.lookup(fs.root(), OsStr::new("d")).await.unwrap();
    let fh = fs.opendir(dir.ino).await.unwrap();
    fs.releasedir(fh).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (heads, lists) = (
        c.counters().requests(Op::HeadObject),
        c.counters().requests(Op::ListObjects),
    );
    for i in 0..50 {
        let e = fs
            .lookup(dir.ino, OsStr::new(&format!("new{i}")))
            .await
            .unwrap_err();
        assert_eq!(e.errno(), libc::ENOENT);
    }
    assert_eq!(c.counters().requests(Op::HeadObject), heads);
    assert_eq!(c.counters().requests(Op::ListObjects) - lists, 1);
    // A name another client stored meanwhile is found by that listing.
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.put_object(
        &b,
        "d/theirs",
        bytes::Bytes::from_static(b"t"),
        None,
        &Default::default(),
    )
    .await
    .unwrap();
    let a = fs.lookup(dir.ino, OsStr::new("theirs")).await.unwrap();
    assert_eq!(a.size, 1);
}
