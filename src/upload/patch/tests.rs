//! The patch engine against the in-memory store, which enforces S3's rules
//! (5 MiB minimum part but the last, ascending parts, matching ETags).

use super::*;
use crate::s3::memory::MemoryStore;
use crate::s3::Op;
use crate::upload::budget::Budget;
use crate::upload::schedule::Schedule;

const MIB: u64 = 1024 * 1024;

fn cfg(budget: u64) -> UploadConfig {
    let mut c = UploadConfig::unbounded(
        Schedule {
            base: 5 * MIB,
            max_part: 5 * MIB,
        },
        3,
    );
    c.budget = Budget::new(budget);
    c
}

fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len as usize];
    rng.fill(&mut v);
    v
}

/// A stored object of `len` random bytes and a patch over it.
fn setup(len: u64, budget: u64) -> (Arc<MemoryStore>, Vec<u8>, Patch) {
    let store = Arc::new(MemoryStore::new());
    let body = data(len, 7);
    let etag = store.insert_object("k", Bytes::from(body.clone()), &PutOptions::default());
    let base = Base {
        key: "k".into(),
        etag,
        size: len,
    };
    let p = Patch::new(
        store.clone(),
        "k",
        PutOptions::default(),
        cfg(budget),
        Some(base),
        len,
    );
    (store, body, p)
}

/// A patch of a new, empty file "k" (no base).
fn new_file(store: &Arc<MemoryStore>) -> Patch {
    let opts = PutOptions::default();
    Patch::new(store.clone(), "k", opts, cfg(64 * MIB), None, 0)
}

fn stored(store: &MemoryStore) -> Vec<u8> {
    store.object("k").expect("stored").body.to_vec()
}

#[test]
fn extents_merge_what_they_overlap_or_touch() {
    let mut e = Extents::new();
    assert_eq!(insert_extent(&mut e, 10, b"abc"), 3);
    assert_eq!(insert_extent(&mut e, 20, b"xyz"), 3);
    assert_eq!(insert_extent(&mut e, 13, b"de"), 2);
    assert_eq!(
        insert_extent(&mut e, 11, b"BC"),
        0,
        "a rewrite grows nothing"
    );
    insert_extent(&mut e, 11, b"bc");
    assert_eq!(e.len(), 2, "touching extents merge: {e:?}");
    assert_eq!(insert_extent(&mut e, 12, b"QQQQQQQQQ"), 5, "fills 15..20");
    assert_eq!(e.len(), 1);
    assert!(!covers(&e, 13) && e.keys().next() == Some(&10));
    assert_eq!(e[&10], b"abQQQQQQQQQyz".to_vec());
    insert_extent(&mut e, 0, b"0");
    insert_extent(&mut e, 11, b"B");
    assert_eq!(e.len(), 2);
    assert_eq!(e[&10], b"aBQQQQQQQQQyz".to_vec());
}

/// Three small patches into a 23 MiB object: only the parts holding them
/// travel; the other is copied by the server, pinned to the base.
#[tokio::test]
async fn patches_copy_the_untouched_parts() {
    let (store, mut want, mut p) = setup(23 * MIB, 64 * MIB);
    for (off, s) in [(100u64, 1u64), (12 * MIB, 2), (23 * MIB - 3, 3)] {
        let d = data(3, s);
        p.write(off, &d).await.unwrap();
        want[off as usize..off as usize + 3].copy_from_slice(&d);
    }
    let f = p.commit().await.unwrap();
    // 5, 5, 5 MiB and the last 8 (3 MiB alone would be too small a part).
    assert_eq!(f.parts, 4);
    assert_eq!(stored(&store), want);
    assert_eq!(store.calls(Op::UploadPart), 3);
    assert_eq!(store.calls(Op::UploadPartCopy), 1);
    assert!(store.uploads().is_empty());
}

/// Reads see the writes laid over the base; past the base, zeros.
#[tokio::test]
async fn reads_see_the_writes() {
    let (_store, mut want, mut p) = setup(6 * MIB, 64 * MIB);
    p.write(5 * MIB - 2, b"ABCD").await.unwrap();
    p.write(7 * MIB, b"end").await.unwrap();
    want[(5 * MIB - 2) as usize..(5 * MIB + 2) as usize].copy_from_slice(b"ABCD");
    want.resize(7 * MIB as usize, 0);
    want.extend_from_slice(b"end");
    let got = p.read(5 * MIB - 10, 20).await.unwrap();
    assert_eq!(
        &got[..],
        &want[(5 * MIB - 10) as usize..(5 * MIB + 10) as usize]
    );
    let tail = p.read(7 * MIB - 2, 100).await.unwrap();
    assert_eq!(&tail[..], &want[(7 * MIB - 2) as usize..]);
}

/// A shrink cuts the base: growing again shows zeros, not old bytes.
#[tokio::test]
async fn shrink_then_grow_shows_zeros() {
    let (store, mut want, mut p) = setup(12 * MIB, 64 * MIB);
    p.truncate(MIB).await.unwrap();
    p.truncate(8 * MIB).await.unwrap();
    want.truncate(MIB as usize);
    want.resize(8 * MIB as usize, 0);
    assert_eq!(
        &p.read(MIB - 1, 2).await.unwrap()[..],
        &[want[MIB as usize - 1], 0]
    );
    p.commit().await.unwrap();
    assert_eq!(stored(&store), want);
}

/// A sequential rewrite streams: each full part leaves as it fills but
/// the one where the run began, and a later write into a sent one is
/// refused (a part is sent once per upload).
#[tokio::test]
async fn full_parts_leave_early_and_are_final() {
    let (store, _, mut p) = setup(20 * MIB, 64 * MIB);
    let mut want = data(20 * MIB, 9);
    for c in want.chunks(MIB as usize).enumerate() {
        p.write(c.0 as u64 * MIB, c.1).await.unwrap();
    }
    assert_eq!(p.parts_sent_early(), 3);
    assert_eq!(p.dirty_bytes(), 5 * MIB, "sent parts leave memory");
    p.write(3, b"x").await.unwrap();
    want[3] = b'x';
    let e = p.write(6 * MIB, b"x").await.unwrap_err();
    assert!(
        matches!(e, UploadError::IntoSentPart { part: 2, .. }),
        "{e}"
    );
    assert!(matches!(
        p.read(6 * MIB, 10).await,
        Err(UploadError::IntoSentPart { .. })
    ));
    p.commit().await.unwrap();
    assert_eq!(stored(&store), want);
    assert_eq!(store.calls(Op::UploadPartCopy), 0);
}

/// zip's pattern: each entry's header is patched after its data, and the
/// next entry starts at the end. The part where each run began stays in
/// memory, so no patch lands in a sent part, and memory stays bounded.
#[tokio::test]
async fn headers_patched_after_each_entry_stay_in_memory() {
    let store = Arc::new(MemoryStore::new());
    let mut p = new_file(&store);
    let mut want = Vec::new();
    for i in 0..6u64 {
        let start = want.len() as u64;
        let entry = data(12 * MIB + 777 * i, i);
        for c in entry.chunks(MIB as usize) {
            p.write(want.len() as u64, c).await.unwrap();
            want.extend_from_slice(c);
        }
        p.write(start, b"HEADER").await.unwrap();
        want[start as usize..start as usize + 6].copy_from_slice(b"HEADER");
        assert!(p.dirty_bytes() <= 4 * 5 * MIB, "{}", p.dirty_bytes());
    }
    assert!(p.parts_sent_early() >= 6);
    p.commit().await.unwrap();
    assert_eq!(stored(&store), want);
}

/// Past half the budget, the part with the most written bytes is rebuilt
/// and sent early; memory stays bounded and the result is exact.
#[tokio::test]
async fn a_patch_log_past_its_share_sends_parts_early() {
    let (store, mut want, mut p) = setup(40 * MIB, 16 * MIB);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut sent_refused = 0;
    for i in 0..4000u64 {
        let off = rng.u64(0..40 * MIB - 5000);
        let d = data(rng.u64(1..5000), i);
        match p.write(off, &d).await {
            Ok(()) => want[off as usize..off as usize + d.len()].copy_from_slice(&d),
            Err(UploadError::IntoSentPart { .. }) => sent_refused += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(p.dirty_bytes() <= 8 * MIB + 5000);
    }
    assert!(p.parts_sent_early() > 0);
    assert!(sent_refused > 0, "writes into sent parts are refused");
    p.commit().await.unwrap();
    assert_eq!(stored(&store), want);
}

/// Another client replaced the base: the pinned copy fails, the commit
/// fails, and the other client's object stays whole.
#[tokio::test]
async fn a_replaced_base_fails_the_commit() {
    let (store, _, mut p) = setup(12 * MIB, 64 * MIB);
    p.write(0, b"mine").await.unwrap();
    let theirs = data(12 * MIB, 99);
    store.insert_object("k", Bytes::from(theirs.clone()), &PutOptions::default());
    assert!(p.commit().await.is_err());
    assert_eq!(stored(&store), theirs);
    assert!(store.uploads().is_empty(), "the upload was aborted");
}

/// Small files are one PutObject; a new file without base is zeros and writes.
#[tokio::test]
async fn small_and_baseless_files() {
    let store = Arc::new(MemoryStore::new());
    let mut p = new_file(&store);
    p.write(10, b"hi").await.unwrap();
    assert_eq!(
        &p.read(0, 100).await.unwrap()[..],
        b"\0\0\0\0\0\0\0\0\0\0hi"
    );
    p.commit().await.unwrap();
    assert_eq!(stored(&store), b"\0\0\0\0\0\0\0\0\0\0hi".to_vec());
    assert_eq!(store.calls(Op::PutObject), 1);
    let (store, body, p) = setup(3 * MIB, 64 * MIB);
    assert!(p.unchanged());
    p.commit().await.unwrap();
    assert_eq!(stored(&store), body);
    assert_eq!(
        store.calls(Op::PutObject),
        0,
        "nothing changed, nothing sent"
    );
}

/// A failed part aborts the upload; the old object stays.
#[tokio::test]
async fn a_failed_part_leaves_the_old_object() {
    let (store, body, mut p) = setup(12 * MIB, 64 * MIB);
    p.write(6 * MIB, b"x").await.unwrap();
    store.fail_all(Op::UploadPart, "InternalError");
    assert!(p.commit().await.is_err());
    store.clear_faults();
    assert_eq!(stored(&store), body);
    assert!(store.uploads().is_empty());
}

/// `>>` onto a 7 MiB object: the base is copied whole, only the new bytes
/// travel.
#[tokio::test]
async fn an_append_sends_only_the_new_bytes() {
    let (store, mut want, mut p) = setup(7 * MIB, 64 * MIB);
    p.write(7 * MIB, b"appended\n").await.unwrap();
    want.extend_from_slice(b"appended\n");
    p.commit().await.unwrap();
    assert_eq!(stored(&store), want);
    assert_eq!(store.calls(Op::UploadPartCopy), 1);
    assert_eq!(store.calls(Op::GetObject), 0, "nothing of the base is read");
}
