//! Every transition of a file's write state, on the in-memory store (which
//! enforces S3's part rules), each checked through the store.

use super::*;
use crate::s3::memory::MemoryStore;
use crate::s3::Op;
use crate::upload::schedule::Schedule;
use bytes::Bytes;

const MIB: usize = 1 << 20;

fn setup() -> (Arc<MemoryStore>, Arc<Fs>) {
    let upload = UploadConfig::unbounded(
        Schedule {
            base: 5 << 20,
            max_part: 64 << 20,
        },
        2,
    );
    let cfg = FsConfig {
        metadata_ttl: Duration::from_secs(60),
        ..FsConfig::new(upload)
    };
    let store = Arc::new(MemoryStore::new());
    let fs = Fs::new(store.clone(), cfg);
    (store, fs)
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn stored(store: &MemoryStore, key: &str) -> Vec<u8> {
    store.object(key).expect("stored").body.to_vec()
}

async fn ino_of(fs: &Fs, name: &str) -> u64 {
    fs.lookup(ROOT, OsStr::new(name)).await.unwrap().ino
}

/// A closer from descriptor table `owner`.
fn from(owner: u64) -> Closer {
    Closer {
        pid: 1,
        owner: Some(owner),
    }
}

/// Stored(base) → Patching → commit → Stored: a patch in the middle of an
/// existing object sends the part holding it and copies the others.
#[tokio::test]
async fn stored_to_patching_to_stored() {
    let (store, fs) = setup();
    let mut want = body(17 * MIB, 1);
    store.insert_object("f", Bytes::from(want.clone()), &PutOptions::default());
    let ino = ino_of(&fs, "f").await;
    let fh = fs.open(ino, libc::O_WRONLY, 1).await.unwrap();
    fs.write(fh, 7 * MIB as u64, b"patch", Some(9))
        .await
        .unwrap();
    want[7 * MIB..7 * MIB + 5].copy_from_slice(b"patch");
    fs.flush(fh, from(9)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "f") == want);
    assert_eq!(store.calls(Op::UploadPart), 1);
    assert_eq!(store.calls(Op::UploadPartCopy), 2);
}

/// An open without writes changes nothing: no request at all.
#[tokio::test]
async fn an_open_without_writes_stores_nothing() {
    let (store, fs) = setup();
    store.insert_object("f", Bytes::from_static(b"same"), &PutOptions::default());
    let ino = ino_of(&fs, "f").await;
    let fh = fs.open(ino, libc::O_RDWR, 1).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.calls(Op::PutObject), 0);
    assert_eq!(store.calls(Op::CreateMultipartUpload), 0);
}

/// Stored → Streaming by a truncate to 0, then a fresh stream.
#[tokio::test]
async fn a_truncate_to_zero_starts_a_new_stream() {
    let (store, fs) = setup();
    store.insert_object("f", Bytes::from(body(3 * MIB, 2)), &PutOptions::default());
    let ino = ino_of(&fs, "f").await;
    let fh = fs.open(ino, libc::O_WRONLY, 1).await.unwrap();
    let zero = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(ino, Some(fh), zero).await.unwrap();
    fs.write(fh, 0, b"new", Some(1)).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(stored(&store, "f"), b"new");
    assert_eq!(
        store.calls(Op::GetObject),
        0,
        "nothing of the old object read"
    );
}

/// Streaming → commit (fsync) → Patching: writes after an fsync keep what
/// came before, and the fsync made it durable.
#[tokio::test]
async fn fsync_then_pwrite_goes_on_from_the_stored_version() {
    let (store, fs) = setup();
    let (a, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    let mut want = body(12 * MIB, 3);
    fs.write(fh, 0, &want, Some(1)).await.unwrap();
    fs.fsync(a.ino, fh).await.unwrap();
    assert!(stored(&store, "f") == want);
    fs.write(fh, 0, b"HDR!", Some(1)).await.unwrap();
    fs.write(fh, 12 * MIB as u64, b"END", Some(1))
        .await
        .unwrap();
    want[..4].copy_from_slice(b"HDR!");
    want.extend_from_slice(b"END");
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "f") == want);
    assert!(store.uploads().is_empty());
}

/// A dup's close commits; a write through the dup after it makes a new
/// version over the stored one, committed by the next close.
#[tokio::test]
async fn a_write_after_a_close_of_the_same_table_makes_a_new_version() {
    let (store, fs) = setup();
    let (_, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    let mut want = body(MIB, 4);
    fs.write(fh, 0, &want, Some(1)).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    assert!(stored(&store, "f") == want);
    fs.write(fh, 0, b"X", Some(1)).await.unwrap();
    want[0] = b'X';
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "f") == want);
}

/// Two opens share one file; a reader opened meanwhile reads the writes,
/// and a close from a table that did not write commits nothing.
#[tokio::test]
async fn two_opens_share_the_file_and_a_reader_sees_it() {
    let (store, fs) = setup();
    let (a, w1) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    fs.write(w1, 0, b"hello world", Some(1)).await.unwrap();
    let w2 = fs.open(a.ino, libc::O_WRONLY, 2).await.unwrap();
    fs.write(w2, 6, b"WORLD", Some(2)).await.unwrap();
    let r = fs.open(a.ino, libc::O_RDONLY, 3).await.unwrap();
    assert_eq!(&fs.read(r, 0, 100).await.unwrap()[..], b"hello WORLD");
    assert_eq!(&fs.read(w1, 6, 3).await.unwrap()[..], b"WOR");
    fs.flush(w1, from(7)).await.unwrap();
    assert!(store.object("f").is_none(), "another table's close");
    fs.flush(w2, from(2)).await.unwrap();
    assert_eq!(stored(&store, "f"), b"hello WORLD");
    fs.release(w2).await.unwrap();
    fs.write(w1, 11, b"!", Some(1)).await.unwrap();
    fs.release(w1).await.unwrap();
    assert_eq!(
        stored(&store, "f"),
        b"hello WORLD!",
        "the last release commits"
    );
    assert_eq!(&fs.read(r, 0, 100).await.unwrap()[..], b"hello WORLD!");
    fs.release(r).await.unwrap();
}

/// Streaming → checkpoint → Patching, in a new file: a write into a part
/// already sent stores what was written, then lands.
#[tokio::test]
async fn a_new_file_checkpoints_to_write_into_a_sent_part() {
    let (store, fs) = setup();
    let (_, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    let mut want = body(16 * MIB, 5);
    fs.write(fh, 0, &want, Some(1)).await.unwrap();
    fs.write(fh, 6 * MIB as u64, b"late", Some(1))
        .await
        .unwrap();
    want[6 * MIB..6 * MIB + 4].copy_from_slice(b"late");
    assert_eq!(store.calls(Op::CompleteMultipartUpload), 1, "a checkpoint");
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "f") == want);
    assert!(store.uploads().is_empty());
}

/// Streaming → Failed in a file replacing an object: the write into a sent
/// part gets EIO, every close reports it, the old object stays.
#[tokio::test]
async fn an_overwrite_refuses_to_checkpoint_and_keeps_the_old_object() {
    let (store, fs) = setup();
    store.insert_object("f", Bytes::from_static(b"old"), &PutOptions::default());
    let ino = ino_of(&fs, "f").await;
    let fh = fs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC, 1)
        .await
        .unwrap();
    fs.write(fh, 0, &body(16 * MIB, 6), Some(1)).await.unwrap();
    let e = fs
        .write(fh, 6 * MIB as u64, b"late", Some(1))
        .await
        .unwrap_err();
    assert_eq!(e.errno(), libc::EIO);
    assert!(fs.flush(fh, from(1)).await.is_err());
    assert!(
        fs.flush(fh, from(1)).await.is_err(),
        "every close reports it"
    );
    fs.release(fh).await.unwrap();
    assert_eq!(stored(&store, "f"), b"old");
    assert!(store.uploads().is_empty());
    // The next open starts over.
    let fh = fs
        .open(ino, libc::O_WRONLY | libc::O_TRUNC, 1)
        .await
        .unwrap();
    fs.write(fh, 0, b"again", Some(1)).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(stored(&store, "f"), b"again");
}

/// A rename between the close and the release (rsync's order): the open
/// file follows the new name, and a write after it lands there.
#[tokio::test]
async fn a_rename_before_the_release_moves_the_open_file() {
    let (store, fs) = setup();
    let (_, fh) = fs.create(ROOT, OsStr::new(".tmp"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"content", Some(1)).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    fs.rename(ROOT, OsStr::new(".tmp"), ROOT, OsStr::new("final"), 0)
        .await
        .unwrap();
    assert!(store.object(".tmp").is_none());
    fs.write(fh, 7, b"+", Some(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(
        store.object(".tmp").is_none(),
        "nothing back at the old name"
    );
    assert_eq!(stored(&store, "final"), b"content+");
}

/// A rename of a file with writes not stored yet stores them first.
#[tokio::test]
async fn a_rename_of_a_file_being_written_stores_it_first() {
    let (store, fs) = setup();
    let (_, fh) = fs.create(ROOT, OsStr::new("a"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"abc", Some(1)).await.unwrap();
    fs.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), 0)
        .await
        .unwrap();
    fs.write(fh, 3, b"d", Some(1)).await.unwrap();
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(stored(&store, "b"), b"abcd");
    assert!(store.object("a").is_none());
}

/// A failed commit of a patch leaves the old object, and the file's size
/// is the stored one again.
#[tokio::test]
async fn a_failed_commit_leaves_the_old_object_and_size() {
    let (store, fs) = setup();
    store.insert_object("f", Bytes::from(body(12 * MIB, 7)), &PutOptions::default());
    let ino = ino_of(&fs, "f").await;
    let fh = fs.open(ino, libc::O_WRONLY, 1).await.unwrap();
    fs.write(fh, 12 * MIB as u64, b"more", Some(1))
        .await
        .unwrap();
    assert_eq!(fs.getattr(ino).unwrap().size, 12 * MIB as u64 + 4);
    store.fail_all(Op::CompleteMultipartUpload, "InternalError");
    assert!(fs.flush(fh, from(1)).await.is_err());
    store.clear_faults();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "f") == body(12 * MIB, 7));
    assert_eq!(fs.getattr(ino).unwrap().size, 12 * MIB as u64);
    assert!(store.uploads().is_empty());
}

/// posix_fallocate grows with zeros; punching a hole is not supported.
#[tokio::test]
async fn fallocate_grows_or_is_refused() {
    let (store, fs) = setup();
    let (a, fh) = fs.create(ROOT, OsStr::new("f"), 0o644, 1).await.unwrap();
    fs.write(fh, 0, b"ab", Some(1)).await.unwrap();
    fs.fallocate(a.ino, fh, 0, 10, 0).await.unwrap();
    fs.fallocate(a.ino, fh, 0, 4, libc::FALLOC_FL_KEEP_SIZE)
        .await
        .unwrap();
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    let e = fs.fallocate(a.ino, fh, 0, 1, punch).await.unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(stored(&store, "f"), b"ab\0\0\0\0\0\0\0\0");
}

/// A reader open across a rename reads on (at the new key): the object it
/// read is not gone from under it.
#[tokio::test]
async fn a_reader_reads_on_after_a_rename() {
    let (store, fs) = setup();
    let want = body(40 * MIB, 8);
    store.insert_object("a", Bytes::from(want.clone()), &PutOptions::default());
    let ino = ino_of(&fs, "a").await;
    let r = fs.open(ino, libc::O_RDONLY, 1).await.unwrap();
    assert_eq!(&fs.read(r, 0, 10).await.unwrap()[..], &want[..10]);
    fs.rename(ROOT, OsStr::new("a"), ROOT, OsStr::new("b"), 0)
        .await
        .unwrap();
    let got = fs.read(r, 30 * MIB as u64, 10).await.unwrap();
    assert_eq!(&got[..], &want[30 * MIB..30 * MIB + 10]);
    fs.release(r).await.unwrap();
}

/// A small file committed again and again (sqlite's transactions): each
/// new version is laid over the bytes this mount just sent, with no GET
/// of them; reads through a reader of the patched file stay exact.
#[tokio::test]
async fn small_commits_do_not_read_their_own_bytes_back() {
    let (store, fs) = setup();
    let (a, fh) = fs.create(ROOT, OsStr::new("db"), 0o644, 1).await.unwrap();
    let mut want = body(100_000, 9);
    fs.write(fh, 0, &want, Some(1)).await.unwrap();
    for i in 0..5u8 {
        fs.fsync(a.ino, fh).await.unwrap();
        let at = 4096 * (i as usize + 1);
        fs.write(fh, at as u64, &[i; 4096], Some(1)).await.unwrap();
        want[at..at + 4096].copy_from_slice(&[i; 4096]);
        let got = fs.read(fh, at as u64 - 10, 20).await.unwrap();
        assert_eq!(&got[..], &want[at - 10..at + 10]);
    }
    fs.flush(fh, from(1)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(stored(&store, "db") == want);
    assert_eq!(store.calls(Op::GetObject), 0, "no byte read back");
}
