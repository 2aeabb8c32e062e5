//! The upload engine against the in-memory store, which enforces S3's rules
//! (5 MiB minimum part, ascending parts, matching ETags) that Garage does not.

use super::*;
use crate::s3::memory::MemoryStore;
use crate::s3::{bare_etag, hex, multipart_etag, Op};
use std::time::Duration;
use tokio::task::JoinSet;

const MIB: usize = 1024 * 1024;

fn cfg(base: usize, in_flight: usize) -> UploadConfig {
    UploadConfig::unbounded(
        Schedule {
            base: base as u64,
            max_part: 128 * MIB as u64,
        },
        in_flight,
    )
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

fn upload(store: &Arc<MemoryStore>, key: &str, c: UploadConfig) -> Upload {
    Upload::new(store.clone(), key.to_string(), PutOptions::default(), c)
}

/// Random write sizes, every size class around the part boundaries: the
/// object is byte-exact, a single PUT up to one part, multipart beyond.
#[tokio::test]
async fn random_write_sizes_land_byte_exact() {
    let store = Arc::new(MemoryStore::new());
    let part = 5 * MIB;
    let mut rng = fastrand::Rng::with_seed(42);
    for (i, size) in [
        0,
        1,
        part - 1,
        part,
        part + 1,
        3 * part + part / 2,
        4 * part,
    ]
    .into_iter()
    .enumerate()
    {
        let body = data(size, i as u64);
        let key = format!("k{i}");
        let mut u = upload(&store, &key, cfg(part, 3));
        let mut off = 0;
        while off < size {
            let n = rng.usize(1..=300_000).min(size - off);
            u.write(off as u64, &body[off..off + n]).await.unwrap();
            off += n;
        }
        let f = u.finish().await.unwrap();
        let stored = store.object(&key).expect("stored");
        let (got, etag) = (stored.body, stored.etag);
        assert!(got[..] == body[..], "{size}");
        let parts = size.div_ceil(part);
        if parts <= 1 {
            assert_eq!(f.parts, 0, "{size}: one PUT");
            assert_eq!(bare_etag(&etag), hex(&md5_of(&body)));
        } else {
            assert_eq!(f.parts as usize, parts, "{size}");
            let md5s: Vec<[u8; 16]> = body.chunks(part).map(md5_of).collect();
            assert_eq!(bare_etag(&etag), multipart_etag(&md5s));
        }
    }
    assert!(store.uploads().is_empty());
    assert_eq!(
        store.calls(Op::CreateMultipartUpload),
        3,
        "only the three files over one part"
    );
}

/// A failed UploadPart (after the client's retries) aborts: close fails,
/// nothing at the key, no upload left, later writes fail.
#[tokio::test]
async fn a_failed_part_aborts_and_stores_nothing() {
    let store = Arc::new(MemoryStore::new());
    store.fail_nth(Op::UploadPart, 2, "InternalError");
    let mut u = upload(&store, "f", cfg(5 * MIB, 2));
    let body = data(30 * MIB, 1);
    let mut failed = false;
    for chunk in body.chunks(MIB) {
        let off = u.size();
        if u.write(off, chunk).await.is_err() {
            failed = true;
            break;
        }
    }
    let r = u.finish().await;
    assert!(failed || r.is_err());
    assert!(r.is_err(), "close must fail");
    assert!(store.object("f").is_none(), "nothing at the key");
    assert!(store.uploads().is_empty(), "the upload was aborted");
    assert_eq!(store.calls(Op::AbortMultipartUpload), 1);
}

/// Failing Complete, or the single PUT, fails close and leaves nothing.
#[tokio::test]
async fn failed_complete_or_put_fails_close() {
    let store = Arc::new(MemoryStore::new());
    store.fail_all(Op::CompleteMultipartUpload, "InternalError");
    let mut u = upload(&store, "big", cfg(5 * MIB, 2));
    u.write(0, &data(12 * MIB, 2)).await.unwrap();
    assert!(u.finish().await.is_err());
    assert!(store.object("big").is_none());
    assert!(store.uploads().is_empty());

    store.fail_all(Op::PutObject, "InternalError");
    let mut u = upload(&store, "small", cfg(5 * MIB, 2));
    u.write(0, b"abc").await.unwrap();
    assert!(u.finish().await.is_err());
    assert!(store.object("small").is_none());
}

/// No more than `max_in_flight` parts of one file upload at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_in_flight_are_bounded() {
    let store = Arc::new(MemoryStore::new());
    store.delay(Op::UploadPart, Duration::from_millis(50));
    let mut u = upload(&store, "f", cfg(5 * MIB, 3));
    let body = data(60 * MIB, 3);
    for chunk in body.chunks(MIB) {
        let off = u.size();
        u.write(off, chunk).await.unwrap();
    }
    u.finish().await.unwrap();
    let peak = store.peak_in_flight(Op::UploadPart);
    assert!(peak <= 3, "peak {peak}");
    assert!(peak >= 2, "parts should overlap, peak {peak}");
    assert!(store.object("f").unwrap().body[..] == body[..]);
}

/// Part 1 stays in memory until close: bytes 8..24 rewritten after 20 MiB
/// were written land exactly.
#[tokio::test]
async fn rewrites_into_the_held_first_part_land() {
    let store = Arc::new(MemoryStore::new());
    let mut u = upload(&store, "mp4", cfg(5 * MIB, 2));
    let mut body = data(20 * MIB, 4);
    u.write(0, &body).await.unwrap();
    let patch = [0xAB; 16];
    u.write(8, &patch).await.unwrap();
    body[8..24].copy_from_slice(&patch);
    let f = u.finish().await.unwrap();
    assert_eq!(f.parts, 4);
    assert!(store.object("mp4").unwrap().body[..] == body[..]);
}

/// A write into a part already sent is refused before it changes
/// anything: the upload goes on as it was (the file layer then stores a
/// checkpoint or fails the file, see `fs::file`).
#[tokio::test]
async fn a_write_into_a_sent_part_is_refused_and_changes_nothing() {
    let store = Arc::new(MemoryStore::new());
    let mut u = upload(&store, "mp4", cfg(5 * MIB, 2));
    u.write(0, &data(20 * MIB, 4)).await.unwrap();
    // Part 2 (5..10 MiB) has been sent.
    let e = u.write(6 * MIB as u64, b"late").await.unwrap_err();
    assert!(
        matches!(e, UploadError::IntoSentPart { part: 2, offset, .. } if offset == 6 * MIB as u64),
        "{e}"
    );
    assert!(u.upload_id().is_some(), "parts were sent");
    // The refusal changed nothing: the caller may go on another way (or
    // store what was written, as here).
    u.write(20 * MIB as u64, b"more").await.unwrap();
    let mut want = data(20 * MIB, 4);
    want.extend_from_slice(b"more");
    u.finish().await.unwrap();
    assert!(store.object("mp4").unwrap().body[..] == want[..]);
    assert!(store.uploads().is_empty());
}

fn budgeted(base: usize, in_flight: usize, limit: usize) -> UploadConfig {
    let mut c = cfg(base, in_flight);
    c.budget = budget::Budget::new(limit as u64);
    c.schedule.max_part = (limit - base) as u64;
    c.memory_wait = Duration::from_secs(30);
    c
}

/// Eight writers share a budget of four parts while the store is slow: the
/// bytes granted (and the bytes in flight at the store) never pass the
/// budget, every object lands byte-exact, and all memory comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_bounds_buffered_bytes() {
    let store = Arc::new(MemoryStore::new());
    store.delay(Op::UploadPart, Duration::from_millis(30));
    let limit = 4 * 5 * MIB;
    let c = budgeted(5 * MIB, 3, limit);
    let budget = c.budget.clone();
    let mut tasks = JoinSet::new();
    for i in 0..8u64 {
        let mut u = upload(&store, &format!("f{i}"), c.clone());
        tasks.spawn(async move {
            let body = data(23 * MIB + i as usize * 1000, i);
            for chunk in body.chunks(MIB / 2) {
                let off = u.size();
                u.write(off, chunk).await.unwrap();
            }
            u.finish().await.unwrap();
            body
        });
    }
    let mut bodies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        bodies.push(r.unwrap());
    }
    assert!(budget.peak() <= limit as u64, "peak {}", budget.peak());
    assert!(budget.peak() >= 2 * 5 * MIB as u64, "the budget was used");
    assert!(store.peak_bytes_in_flight() <= limit as u64);
    assert_eq!(budget.used(), 0, "every grant given back");
    for i in 0..8u64 {
        let got = store.object(&format!("f{i}")).unwrap().body;
        assert!(bodies.iter().any(|b| b[..] == got[..]), "f{i} byte-exact");
    }
    assert!(store.uploads().is_empty());
}

/// When memory is short, a held first part is sent early (oldest first) so
/// the waiting writer goes on; a later rewrite of that part is refused, and
/// the spilled file still completes when not rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_memory_sends_held_first_parts_oldest_first() {
    let store = Arc::new(MemoryStore::new());
    // Room for three 5 MiB parts.
    let c = budgeted(5 * MIB, 2, 15 * MIB);
    let budget = c.budget.clone();
    let mut old = upload(&store, "old", c.clone());
    let mut young = upload(&store, "young", c.clone());
    let old_body = data(6 * MIB, 1);
    old.write(0, &old_body).await.unwrap(); // held part 1 + 1 MiB of tail: 10 MiB
    young.write(0, &data(MIB, 2)).await.unwrap(); // 5 MiB tail: 15 MiB
    assert!(old.holds_first_part() && budget.used() == 15 * MIB as u64);
    let mut third = upload(&store, "third", c.clone());
    // Waits for memory; "old"'s held part is sent, which frees it.
    let third_body = data(2 * MIB, 3);
    third.write(0, &third_body).await.unwrap();
    assert!(!old.holds_first_part(), "the oldest held part was sent");
    let e = old.write(8, b"patch").await.unwrap_err();
    assert!(
        matches!(e, UploadError::IntoSentPart { part: 1, .. }),
        "{e}"
    );
    // Refused without harm: the file is still what was written.
    old.finish().await.unwrap();
    assert!(store.object("old").unwrap().body[..] == old_body[..]);
    third.finish().await.unwrap();
    young.finish().await.unwrap();
    assert!(store.object("third").unwrap().body[..] == third_body[..]);
    assert!(store.uploads().is_empty());

    // Not rewritten, a spilled file completes.
    let mut a = upload(&store, "a", c.clone());
    let a_body = data(7 * MIB, 4);
    a.write(0, &a_body).await.unwrap();
    let mut b = upload(&store, "b", c.clone());
    b.write(0, &data(MIB, 5)).await.unwrap();
    let mut c3 = upload(&store, "c", c.clone());
    c3.write(0, b"x").await.unwrap();
    assert!(!a.holds_first_part());
    a.finish().await.unwrap();
    b.finish().await.unwrap();
    c3.finish().await.unwrap();
    assert!(store.object("a").unwrap().body[..] == a_body[..]);
    assert_eq!(budget.used(), 0);
}

/// Memory that never comes back ends the wait with NoMemory (ENOBUFS), and
/// the doomed file stores nothing.
#[tokio::test]
async fn a_full_budget_ends_the_wait_with_an_error() {
    let store = Arc::new(MemoryStore::new());
    let mut c = budgeted(5 * MIB, 2, 10 * MIB);
    c.memory_wait = Duration::from_millis(50);
    c.hold_first_part = false;
    let mut a = upload(&store, "a", c.clone());
    let mut b = upload(&store, "b", c.clone());
    a.write(0, b"a").await.unwrap();
    b.write(0, b"b").await.unwrap();
    let mut late = upload(&store, "late", c.clone());
    let e = late.write(0, b"x").await.unwrap_err();
    assert!(matches!(e, UploadError::NoMemory(_)), "{e}");
    assert!(e.to_string().contains("--memory-limit"), "{e}");
    assert!(late.finish().await.is_err());
    assert!(store.object("late").is_none());
    a.finish().await.unwrap();
    b.finish().await.unwrap();
}

/// A forward seek past the end zero-fills the gap (cp over sparse files).
#[tokio::test]
async fn forward_seek_zero_fills() {
    let store = Arc::new(MemoryStore::new());
    let mut u = upload(&store, "sparse", cfg(5 * MIB, 2));
    u.write(0, b"head").await.unwrap();
    u.write(12 * MIB as u64, b"tail").await.unwrap();
    u.truncate(13 * MIB as u64).await.unwrap();
    u.finish().await.unwrap();
    let got = store.object("sparse").unwrap().body;
    assert_eq!(got.len(), 13 * MIB);
    assert_eq!(&got[..4], b"head");
    assert!(got[4..12 * MIB].iter().all(|b| *b == 0));
    assert_eq!(&got[12 * MIB..12 * MIB + 4], b"tail");
    assert!(got[12 * MIB + 4..].iter().all(|b| *b == 0));
}

/// Without the held first part, part minimums still hold: the store
/// rejects a small non-last part, so the engine must never send one.
#[tokio::test]
async fn never_sends_an_empty_or_undersized_part() {
    let store = Arc::new(MemoryStore::new());
    let mut c = cfg(5 * MIB, 2);
    c.hold_first_part = false;
    let mut u = upload(&store, "exact", c);
    // Exactly two parts: the last part must not be an empty third.
    u.write(0, &data(10 * MIB, 5)).await.unwrap();
    let f = u.finish().await.unwrap();
    assert_eq!(f.parts, 2);
}

/// The write that would pass the schedule's largest file gets EFBIG.
#[tokio::test]
async fn past_the_largest_file_is_too_large() {
    let store = Arc::new(MemoryStore::new());
    let mut u = upload(&store, "huge", cfg(5 * MIB, 2));
    let max = u.cfg.schedule.max_file_size();
    let e = u.write(max, b"x").await.unwrap_err();
    assert!(matches!(e, UploadError::TooLarge { .. }), "{e}");
    u.abort().await;
    assert!(store.uploads().is_empty());
}

/// A server-side copy: the whole object is one CopyObject; a prefix of it,
/// built from contiguous ranges, is UploadPartCopy. Ranges that are not the
/// whole content so far are refused (the caller copies bytes instead), and a
/// write after a copy fails the file.
#[tokio::test]
async fn server_side_copies() {
    let store = Arc::new(MemoryStore::new());
    let body = data(12 * MIB, 8);
    store.insert_object("src", body.clone().into(), &PutOptions::default());

    let mut whole = upload(&store, "whole", cfg(5 * MIB, 2));
    assert!(whole.copy_range("src", 0, 0, 12 * MIB as u64));
    let f = whole.finish().await.unwrap();
    assert_eq!((f.size, f.parts), (12 * MIB as u64, 0));
    assert_eq!(store.calls(Op::CopyObject), 1);
    assert!(store.object("whole").unwrap().body[..] == body[..]);

    let mut prefix = upload(&store, "prefix", cfg(5 * MIB, 2));
    assert!(prefix.copy_range("src", 0, 0, 6 * MIB as u64));
    assert!(
        !prefix.copy_range("src", 7 * MIB as u64, 7 * MIB as u64, 1),
        "gap"
    );
    assert!(
        !prefix.copy_range("other", 6 * MIB as u64, 6 * MIB as u64, 1),
        "other source"
    );
    assert!(prefix.copy_range("src", 6 * MIB as u64, 6 * MIB as u64, 4 * MIB as u64));
    assert_eq!(prefix.size(), 10 * MIB as u64);
    let f = prefix.finish().await.unwrap();
    assert_eq!(f.parts, 1);
    assert!(store.object("prefix").unwrap().body[..] == body[..10 * MIB]);

    let mut written = upload(&store, "written", cfg(5 * MIB, 2));
    written.write(0, b"bytes").await.unwrap();
    assert!(
        !written.copy_range("src", 5, 5, 10),
        "not the whole content"
    );
    written.finish().await.unwrap();

    let mut mixed = upload(&store, "mixed", cfg(5 * MIB, 2));
    assert!(mixed.copy_range("src", 0, 0, MIB as u64));
    assert!(mixed.write(MIB as u64, b"x").await.is_err());
    assert!(mixed.finish().await.is_err());
    assert!(store.object("mixed").is_none());
    assert!(store.uploads().is_empty());
}

/// Complete is not idempotent: when its answer is lost after the server
/// did the work, the engine asks (ListParts says the upload is gone; the
/// HEAD shows our ETag) instead of failing a close whose object exists.
#[tokio::test]
async fn a_lost_complete_answer_is_found_by_asking() {
    let store = Arc::new(MemoryStore::new());
    store.lose_response_nth(Op::CompleteMultipartUpload, 1, "InternalError");
    let body = data(12 * MIB, 21);
    let mut u = upload(&store, "lost", cfg(5 * MIB, 2));
    u.write(0, &body).await.unwrap();
    let f = u.finish().await.expect("the object was completed");
    assert_eq!(f.parts, 3);
    assert_eq!(store.calls(Op::CompleteMultipartUpload), 1);
    assert!(store.object("lost").unwrap().body[..] == body[..]);
    assert!(store.uploads().is_empty());

    // A Complete that failed without effect is sent again while the upload exists.
    store.fail_nth(Op::CompleteMultipartUpload, 2, "InternalError");
    let mut u = upload(&store, "again", cfg(5 * MIB, 2));
    u.write(0, &body).await.unwrap();
    u.finish().await.expect("the second Complete works");
    assert_eq!(store.calls(Op::CompleteMultipartUpload), 3);
    assert!(store.object("again").unwrap().body[..] == body[..]);
}

/// A journal of a mount of bucket "b" at "/m", under `dir`.
fn journal_in(dir: &std::path::Path) -> Arc<Journal> {
    let info = journal::MountInfo {
        bucket: "b".into(),
        prefix: String::new(),
        mountpoint: "/m".into(),
        pid: 1,
    };
    Arc::new(Journal::open(dir, &info).unwrap().0)
}

/// With a journal: the entry exists (with its upload ID) while the upload
/// runs and is gone once it completes; an abort that fails leaves the
/// entry to the reaper, which aborts the upload once the store answers.
#[tokio::test]
async fn the_journal_follows_each_upload_to_its_end() {
    let tmp = tempfile::tempdir().unwrap();
    let j = journal_in(tmp.path());
    let store = Arc::new(MemoryStore::new());
    let mut c = cfg(5 * MIB, 2);
    c.journal = Some(j.clone());

    let mut u = upload(&store, "ok", c.clone());
    u.write(0, &data(12 * MIB, 22)).await.unwrap();
    // Part 2 went out in a task: let it create the upload.
    for _ in 0..500 {
        if u.upload_id().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live = j.entries().unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].key, "ok");
    assert_eq!(live[0].upload_id.as_deref(), u.upload_id());
    u.finish().await.unwrap();
    assert!(j.entries().unwrap().is_empty());

    // A single PutObject never touches the journal.
    let mut u = upload(&store, "small", c.clone());
    u.write(0, b"abc").await.unwrap();
    u.finish().await.unwrap();
    assert!(j.entries().unwrap().is_empty());

    // Complete refused for good, and the abort fails too: the upload stays,
    // and so does its entry.
    store.fail_all(Op::CompleteMultipartUpload, "InvalidPart");
    store.fail_all(Op::AbortMultipartUpload, "InternalError");
    let mut u = upload(&store, "stuck", c.clone());
    u.write(0, &data(12 * MIB, 23)).await.unwrap();
    assert!(u.finish().await.is_err());
    assert!(store.object("stuck").is_none());
    assert_eq!(store.uploads().len(), 1);
    assert_eq!(j.doomed().len(), 1);
    assert_eq!(j.reap(store.as_ref()).await, 1, "still failing");
    store.clear_faults();
    assert_eq!(j.reap(store.as_ref()).await, 0);
    assert!(store.uploads().is_empty());
    assert!(j.entries().unwrap().is_empty());
}

/// A CreateMultipartUpload whose connection breaks after it was sent (a
/// cluster node lost mid-request): its outcome is unknown, so with a
/// journal it is tried again, and the file still lands. The upload the
/// first attempt made is aborted by the reaper, which spares the live one
/// (same key, same minute) while it runs.
#[tokio::test]
async fn a_create_with_an_unknown_outcome_is_tried_again() {
    let tmp = tempfile::tempdir().unwrap();
    let j = journal_in(tmp.path());
    let store = Arc::new(MemoryStore::new());
    store.lose_response_nth(
        Op::CreateMultipartUpload,
        1,
        crate::s3::memory::CONNECTION_RESET,
    );
    let mut c = cfg(5 * MIB, 2);
    c.journal = Some(j.clone());
    let body = data(12 * MIB, 24);
    let mut u = upload(&store, "k", c);
    u.write(0, &body).await.unwrap();
    for _ in 0..500 {
        if u.upload_id().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let live = u
        .upload_id()
        .expect("created on the second try")
        .to_string();
    assert_eq!(store.calls(Op::CreateMultipartUpload), 2);
    assert_eq!(store.uploads().len(), 2, "the first one was made too");
    assert_eq!(j.reap(store.as_ref()).await, 0);
    assert_eq!(
        store.uploads(),
        [("k".to_string(), live)],
        "the orphan is aborted, the live upload spared"
    );
    u.finish().await.unwrap();
    assert!(store.object("k").unwrap().body[..] == body[..]);
    assert!(store.uploads().is_empty());
    assert!(j.entries().unwrap().is_empty());
}

/// An abort while CreateMultipartUpload is on its way (it took effect, its
/// answer is slow) waits for it and aborts the upload it made: the part
/// task that started it is cancelled, the Create is not.
#[tokio::test]
async fn an_abort_during_create_leaves_no_upload() {
    let store = Arc::new(MemoryStore::new());
    store.delay_answer(Op::CreateMultipartUpload, Duration::from_millis(300));
    let mut u = upload(&store, "k", cfg(5 * MIB, 2));
    // Part 1 is held; part 2 goes out in a task, which creates the upload.
    u.write(0, &data(12 * MIB, 3)).await.unwrap();
    while store.in_flight(Op::CreateMultipartUpload) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    u.abort().await;
    assert_eq!(store.calls(Op::CreateMultipartUpload), 1);
    assert!(store.uploads().is_empty(), "{:?}", store.uploads());
    assert_eq!(store.calls(Op::AbortMultipartUpload), 1);
}

/// A held first part sent early (memory short) created the multipart
/// upload with the metadata known then: the upload says it is multipart,
/// so the file system writes attributes changed later after it, instead
/// of folding them into options that are never sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_part_sent_early_makes_the_upload_multipart() {
    let store = Arc::new(MemoryStore::new());
    let c = budgeted(5 * MIB, 2, 15 * MIB);
    let mut a = upload(&store, "a", c.clone());
    let a_body = data(7 * MIB, 4);
    a.write(0, &a_body).await.unwrap();
    assert!(!a.is_multipart(), "part 1 held, nothing sent yet");
    let mut b = upload(&store, "b", c.clone());
    b.write(0, &data(MIB, 5)).await.unwrap();
    let mut c3 = upload(&store, "c", c.clone());
    c3.write(0, b"x").await.unwrap();
    assert!(!a.holds_first_part(), "sent early");
    assert!(a.is_multipart());
    a.options_mut()
        .metadata
        .insert("mode".into(), "33152".into());
    a.finish().await.unwrap();
    b.finish().await.unwrap();
    c3.finish().await.unwrap();
    let o = store.object("a").unwrap();
    assert!(o.body[..] == a_body[..]);
    assert!(
        !o.metadata.contains_key("mode"),
        "options changed after the upload was created are not sent: why is_multipart must say so"
    );
}
