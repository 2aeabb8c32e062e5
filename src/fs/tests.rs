//! The filesystem core on the in-memory store, for keys a real server
//! cannot be made to hold through our client (`..` segments, `a//b`).

use super::*;
use crate::s3::memory::MemoryStore;
use crate::upload::schedule::Schedule;
use bytes::Bytes;

fn cfg() -> FsConfig {
    FsConfig {
        prefix: String::new(),
        uid: 0,
        gid: 0,
        file_mode: 0o644,
        dir_mode: 0o755,
        read_only: false,
        upload: UploadConfig::unbounded(
            Schedule {
                base: 5 << 20,
                max_part: 64 << 20,
            },
            2,
        ),
        metadata_ttl: Duration::from_secs(60),
        max_readahead: 8 << 20,
        read_budget: crate::upload::budget::Budget::new(16 << 20),
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
