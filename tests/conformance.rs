//! One conformance suite of the S3 behaviours the mount relies on, run on
//! the in-memory store (`memory::*`) and on the server `scripts/test.sh`
//! started (`server::*`: Garage, Ceph RGW or SeaweedFS, named by
//! `BUCKETFS_TEST_SERVER`).
//!
//! Where servers differ, the difference is a named capability ([`Caps`]):
//! each scenario observes the server's answer and asserts it is the one
//! [`Caps::of`] records for that server. A server that changes its dialect,
//! or an in-memory model that drifts from S3, fails here instead of being
//! skipped. The write path reads the same table through the mount's
//! behaviour (what it must never rely on).

mod common;

use bucketfs::s3::memory::MemoryStore;
use bucketfs::s3::*;
use bytes::Bytes;
use common::{client, data, fresh_bucket};
use std::collections::BTreeSet;

const MIB: usize = 1024 * 1024;

/// How a part made by UploadPartCopy is named in the copy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopiedPartEtag {
    /// The MD5 of the part's bytes, as for an uploaded part (AWS S3, Garage, Ceph RGW).
    Md5,
    /// Something else (SeaweedFS: `"<md5 of md5s>-N"`, a multipart ETag):
    /// Complete cannot be checked against MD5s we compute.
    Other,
}

/// The answers where S3 servers differ, as the suite observed them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Caps {
    /// Complete refuses a part under 5 MiB that is not the last (EntityTooSmall).
    min_part_enforced: bool,
    /// Complete refuses a part list that leaves out an uploaded part (InvalidPart).
    complete_needs_every_part: bool,
    /// Complete's answer carries the object's ETag (Ceph RGW 16 sends `<ETag></ETag>`).
    complete_names_etag: bool,
    /// The ETag form of a part made by UploadPartCopy.
    copied_part_etag: CopiedPartEtag,
    /// ListParts names a re-uploaded part number once (SeaweedFS lists
    /// every upload of it).
    reupload_listed_once: bool,
    /// Complete refuses the ETag of a part number's earlier upload.
    replaced_part_refused: bool,
    /// A `dir/` marker keeps its user metadata (SeaweedFS drops it: its
    /// filer makes the key a directory).
    marker_keeps_metadata: bool,
    /// A CopyObject of a `dir/` marker onto itself with REPLACE works
    /// (SeaweedFS answers NoSuchKey).
    copy_marker_onto_itself: bool,
    /// `x-amz-copy-source-if-match` is enforced (412 on another ETag).
    copy_source_if_match: bool,
    /// GET `If-Match` is enforced (412 on another ETag).
    get_if_match: bool,
    /// A prefix whose last key is deleted is gone from delimiter listings
    /// at once (SeaweedFS lists it for minutes more).
    emptied_prefix_vanishes: bool,
    /// Complete refuses parts listed out of order (InvalidPartOrder).
    complete_checks_order: bool,
    /// UploadPartCopy refuses a range that ends past the source's end
    /// (Garage copies what there is).
    copy_range_checked: bool,
}

impl Caps {
    /// AWS S3's documented behaviour: the in-memory store models it.
    const S3: Caps = Caps {
        min_part_enforced: true,
        complete_needs_every_part: false,
        complete_names_etag: true,
        copied_part_etag: CopiedPartEtag::Md5,
        reupload_listed_once: true,
        replaced_part_refused: true,
        copy_marker_onto_itself: true,
        marker_keeps_metadata: true,
        copy_source_if_match: true,
        get_if_match: true,
        complete_checks_order: true,
        copy_range_checked: true,
        emptied_prefix_vanishes: true,
    };

    /// What each server we run in CI answers.
    fn of(server: &str) -> Option<Caps> {
        match server {
            "memory" => Some(Caps::S3),
            "garage" => Some(Caps {
                min_part_enforced: false,
                complete_checks_order: false,
                copy_range_checked: false,
                ..Caps::S3
            }),
            "ceph" => Some(Caps {
                complete_needs_every_part: true,
                complete_names_etag: false,
                copy_source_if_match: false,
                complete_checks_order: false,
                ..Caps::S3
            }),
            "seaweedfs" => Some(Caps {
                emptied_prefix_vanishes: false,
                complete_checks_order: false,
                copied_part_etag: CopiedPartEtag::Other,
                reupload_listed_once: false,
                replaced_part_refused: false,
                copy_marker_onto_itself: false,
                marker_keeps_metadata: false,
                ..Caps::S3
            }),
            _ => None,
        }
    }
}

/// A store under test and the capabilities it is expected to show.
struct Subject {
    name: String,
    store: Box<dyn ObjectStore>,
    caps: Option<Caps>,
}

impl Subject {
    fn memory() -> Self {
        Subject {
            name: "memory".into(),
            store: Box::new(MemoryStore::new()),
            caps: Caps::of("memory"),
        }
    }

    async fn server() -> Self {
        let c = client();
        let b = fresh_bucket(&c).await;
        let name = std::env::var("BUCKETFS_TEST_SERVER").unwrap_or_else(|_| "garage".into());
        Subject {
            caps: Caps::of(&name),
            name,
            store: Box::new(BucketClient::new(c, b)),
        }
    }

    /// Asserts that the observed value of one capability is the one
    /// recorded for this server (any value is accepted, and printed, for a
    /// server the table does not know).
    fn observed<T: PartialEq + std::fmt::Debug>(&self, what: &str, got: T, pick: fn(&Caps) -> T) {
        println!("capability {}: {what} = {got:?}", self.name);
        if let Some(c) = &self.caps {
            let want = pick(c);
            assert_eq!(
                got, want,
                "{}: capability {what} is {got:?}, the table says {want:?}: the server (or the model) changed",
                self.name
            );
        }
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, S3Error>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => e.code().unwrap_or("no code").to_string(),
    }
}

fn etag_of(body: &[u8]) -> String {
    hex(&md5_of(body))
}

async fn put(s: &dyn ObjectStore, key: &str, body: &[u8]) -> String {
    s.put_object(
        key,
        Bytes::copy_from_slice(body),
        None,
        &PutOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e}"))
}

async fn part(s: &dyn ObjectStore, key: &str, id: &str, n: u32, body: &[u8]) -> String {
    s.upload_part(key, id, n, Bytes::copy_from_slice(body), md5_of(body))
        .await
        .unwrap_or_else(|e| panic!("part {n} of {key}: {e}"))
}

async fn body_of(s: &dyn ObjectStore, key: &str) -> Bytes {
    s.get_object(Source::key(key), None)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
        .body
}

// ---- the scenarios ----

/// PutObject, GetObject whole and by ranges, HeadObject, and the errors
/// of a missing key and an unsatisfiable range.
async fn put_get_ranges(s: Subject) {
    let st = &*s.store;
    let body = data(300_000, 1);
    let etag = put(st, "dir/obj", &body).await;
    assert_eq!(
        bare_etag(&etag),
        etag_of(&body),
        "a single PUT's ETag is its MD5"
    );
    assert_eq!(body_of(st, "dir/obj").await, body);
    for r in [0..1, 1000..2000, 299_999..300_000, 123_456..300_000] {
        let g = st
            .get_object(Source::key("dir/obj"), Some(r.clone()))
            .await
            .unwrap();
        assert_eq!(
            &g.body[..],
            &body[r.start as usize..r.end as usize],
            "{r:?}"
        );
        assert_eq!(g.object_size, 300_000);
        assert_eq!(bare_etag(&g.etag), etag_of(&body));
    }
    // A range past the end is cut at the end.
    let g = st
        .get_object(Source::key("dir/obj"), Some(299_000..400_000))
        .await
        .unwrap();
    assert_eq!(&g.body[..], &body[299_000..]);
    // A range that starts at or past the end: 416 InvalidRange.
    assert_eq!(
        code(
            st.get_object(Source::key("dir/obj"), Some(300_000..300_001))
                .await
        ),
        "InvalidRange"
    );
    let h = st.head_object("dir/obj").await.unwrap();
    assert_eq!((h.size, bare_etag(&h.etag)), (300_000, etag_of(&body)));
    let e = st
        .get_object(Source::key("dir/none"), None)
        .await
        .unwrap_err();
    assert!(e.is_not_found() && e.code() == Some("NoSuchKey"), "{e}");
    let e = st.head_object("dir/none").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // An empty object (an empty file, a directory marker).
    let e0 = put(st, "empty", b"").await;
    assert_eq!(bare_etag(&e0), etag_of(b""));
    assert_eq!(st.head_object("empty").await.unwrap().size, 0);
    assert!(body_of(st, "empty").await.is_empty());
    // A wrong Content-MD5 is refused and stores nothing.
    let e = st
        .put_object(
            "bad",
            Bytes::from_static(b"abc"),
            Some([0; 16]),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("BadDigest"), "{e}");
    assert!(st.head_object("bad").await.unwrap_err().is_not_found());
    st.delete_object("dir/obj").await.unwrap();
    assert!(st.head_object("dir/obj").await.unwrap_err().is_not_found());
    // Deleting what is not there succeeds, as on S3.
    st.delete_object("dir/obj").await.unwrap();
}

/// Multipart: parts in any order, a re-uploaded part number wins, the
/// multipart ETag, and Complete's rules where servers differ.
async fn multipart_rules(s: Subject) {
    let st = &*s.store;
    let p = [data(5 * MIB, 2), data(5 * MIB, 3), data(1000, 4)];
    let o = PutOptions::default();
    let id = st.create_multipart_upload("mp", &o).await.unwrap();
    let e3 = part(st, "mp", &id, 3, &p[2]).await;
    let e1 = part(st, "mp", &id, 1, &p[0]).await;
    let stale = part(st, "mp", &id, 2, &data(5 * MIB, 9)).await;
    let e2 = part(st, "mp", &id, 2, &p[1]).await;
    for (e, b) in [(&e1, &p[0]), (&e2, &p[1]), (&e3, &p[2])] {
        assert_eq!(
            bare_etag(e),
            etag_of(b),
            "an uploaded part's ETag is its MD5"
        );
    }
    let listed = st.list_parts("mp", &id).await.unwrap();
    let numbers: Vec<u32> = listed.iter().map(|p| p.part_number).collect();
    s.observed(
        "ListParts names a re-uploaded part once",
        numbers == [1, 2, 3],
        |c| c.reupload_listed_once,
    );
    assert!(
        listed.iter().any(|p| p.part_number == 2
            && p.size == 5 * MIB as u64
            && bare_etag(&p.etag) == bare_etag(&e2)),
        "the re-uploaded part 2 is listed: {listed:?}"
    );
    // The part 2 that was replaced is no longer a part.
    let r = st
        .complete_multipart_upload("mp", &id, &[(1, e1.clone()), (2, stale), (3, e3.clone())])
        .await;
    let refused = matches!(&r, Err(e) if e.code() == Some("InvalidPart"));
    assert!(refused || r.is_ok(), "{r:?}");
    s.observed("Complete refuses a replaced part's ETag", refused, |c| {
        c.replaced_part_refused
    });
    let id = if r.is_ok() {
        // What was stored is the replaced bytes: a part number sent again
        // does not take the place of its earlier upload there.
        let got = body_of(st, "mp").await;
        assert!(got[5 * MIB..10 * MIB] == data(5 * MIB, 9)[..]);
        let id = st.create_multipart_upload("mp", &o).await.unwrap();
        for (n, b) in [(1, &p[0]), (2, &p[1]), (3, &p[2])] {
            part(st, "mp", &id, n, b).await;
        }
        id
    } else {
        id
    };
    let parts = [(1, e1.clone()), (2, e2.clone()), (3, e3.clone())];
    let etag = st
        .complete_multipart_upload("mp", &id, &parts)
        .await
        .unwrap();
    let want = multipart_etag(&[md5_of(&p[0]), md5_of(&p[1]), md5_of(&p[2])]);
    let head = st.head_object("mp").await.unwrap();
    s.observed(
        "Complete answers the ETag",
        !bare_etag(&etag).is_empty(),
        |c| c.complete_names_etag,
    );
    if !bare_etag(&etag).is_empty() {
        assert_eq!(bare_etag(&etag), want);
    }
    assert_eq!(bare_etag(&head.etag), want, "HEAD shows the multipart ETag");
    assert_eq!(head.size, 10 * MIB as u64 + 1000);
    let got = body_of(st, "mp").await;
    assert!(
        got[..5 * MIB] == p[0][..]
            && got[5 * MIB..10 * MIB] == p[1][..]
            && got[10 * MIB..] == p[2][..]
    );
    // The upload is gone once completed.
    assert!(st.list_parts("mp", &id).await.unwrap_err().is_not_found());

    // A part under 5 MiB that is not the last.
    let id = st.create_multipart_upload("small", &o).await.unwrap();
    let a = part(st, "small", &id, 1, &p[2]).await;
    let b = part(st, "small", &id, 2, &p[2]).await;
    let r = st
        .complete_multipart_upload("small", &id, &[(1, a), (2, b)])
        .await;
    let refused = matches!(&r, Err(e) if e.code() == Some("EntityTooSmall"));
    if r.is_err() {
        assert!(refused, "{r:?}");
        st.abort_multipart_upload("small", &id).await.unwrap();
    }
    s.observed("Complete enforces the 5 MiB minimum part", refused, |c| {
        c.min_part_enforced
    });

    // Complete that leaves out an uploaded part (part 2 of 3).
    let id = st.create_multipart_upload("skip", &o).await.unwrap();
    let a = part(st, "skip", &id, 1, &p[0]).await;
    part(st, "skip", &id, 2, &p[1]).await;
    let c3 = part(st, "skip", &id, 3, &p[2]).await;
    let r = st
        .complete_multipart_upload("skip", &id, &[(1, a), (3, c3)])
        .await;
    match &r {
        Ok(_) => {
            let got = body_of(st, "skip").await;
            assert_eq!(
                got.len(),
                5 * MIB + 1000,
                "only the listed parts are the object"
            );
            assert!(got[..5 * MIB] == p[0][..] && got[5 * MIB..] == p[2][..]);
        }
        Err(e) => {
            assert_eq!(e.code(), Some("InvalidPart"), "{e}");
            st.abort_multipart_upload("skip", &id).await.unwrap();
        }
    }
    s.observed("Complete needs every uploaded part", r.is_err(), |c| {
        c.complete_needs_every_part
    });
    // Parts listed out of order.
    let id = st.create_multipart_upload("order", &o).await.unwrap();
    let a = part(st, "order", &id, 1, &p[0]).await;
    let b = part(st, "order", &id, 2, &p[2]).await;
    let r = st
        .complete_multipart_upload("order", &id, &[(2, b), (1, a)])
        .await;
    if r.is_err() {
        st.abort_multipart_upload("order", &id).await.unwrap();
    }
    let refused = matches!(&r, Err(e) if e.code() == Some("InvalidPartOrder"));
    assert!(refused || r.is_ok(), "{r:?}");
    s.observed("Complete refuses parts out of order", refused, |c| {
        c.complete_checks_order
    });
    // Nothing is left behind.
    let left: Vec<String> = st
        .list_uploads("")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect();
    assert!(left.is_empty(), "uploads left: {left:?}");
}

/// UploadPartCopy builds an object from ranges of another; the ETag form
/// of a copied part; pinned sources (`x-amz-copy-source-if-match`).
async fn upload_part_copy(s: Subject) {
    let st = &*s.store;
    let src = data(6 * MIB, 5);
    let src_etag = put(st, "src", &src).await;
    let o = PutOptions::default();
    let id = st.create_multipart_upload("dst", &o).await.unwrap();
    let first = 0..5 * MIB as u64;
    let p1 = st
        .upload_part_copy("dst", &id, 1, Source::pinned("src", &src_etag), first)
        .await
        .unwrap();
    // A source pinned to another version: the copy fails and adds no part
    // (where it is not enforced, part 2 below takes its place).
    let other = "\"0123456789abcdef0123456789abcdef\"";
    let r = st
        .upload_part_copy("dst", &id, 2, Source::pinned("src", other), 0..10)
        .await;
    let enforced = matches!(&r, Err(e) if e.code() == Some("PreconditionFailed"));
    assert!(enforced || r.is_ok(), "{r:?}");
    s.observed(
        "x-amz-copy-source-if-match on UploadPartCopy",
        enforced,
        |c| c.copy_source_if_match,
    );
    let p2 = st
        .upload_part_copy(
            "dst",
            &id,
            2,
            Source::key("src"),
            5 * MIB as u64..6 * MIB as u64,
        )
        .await
        .unwrap();
    let form = if bare_etag(&p1) == etag_of(&src[..5 * MIB]) {
        CopiedPartEtag::Md5
    } else {
        CopiedPartEtag::Other
    };
    s.observed("a copied part's ETag", form, |c| c.copied_part_etag);
    let listed = st.list_parts("dst", &id).await.unwrap();
    let first_listed = listed.iter().find(|p| p.part_number == 1).unwrap();
    assert_eq!(
        bare_etag(&first_listed.etag),
        bare_etag(&p1),
        "ListParts names the copied part as the copy did"
    );
    assert_eq!(first_listed.size, 5 * MIB as u64);
    st.complete_multipart_upload("dst", &id, &[(1, p1), (2, p2)])
        .await
        .unwrap();
    assert_eq!(body_of(st, "dst").await, src);
    // A missing source, or a range past its end, is refused.
    let id = st.create_multipart_upload("dst2", &o).await.unwrap();
    let e = st
        .upload_part_copy("dst2", &id, 1, Source::key("nope"), 0..1)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let r = st
        .upload_part_copy("dst2", &id, 1, Source::key("src"), 0..6 * MIB as u64 + 1)
        .await;
    let refused =
        matches!(&r, Err(e) if matches!(e.code(), Some("InvalidArgument" | "InvalidRange")));
    assert!(refused || r.is_ok(), "{r:?}");
    s.observed(
        "UploadPartCopy refuses a range past the source's end",
        refused,
        |c| c.copy_range_checked,
    );
    st.abort_multipart_upload("dst2", &id).await.unwrap();
}

/// CopyObject with COPY and REPLACE metadata, onto itself, pinned sources,
/// and GET's If-Match.
async fn copy_and_conditions(s: Subject) {
    let st = &*s.store;
    let mut o = PutOptions {
        content_type: Some("text/html".into()),
        ..Default::default()
    };
    o.metadata.insert("mode".into(), "33188".into());
    let body = data(10_000, 6);
    let etag = st
        .put_object("a", Bytes::from(body.clone()), None, &o)
        .await
        .unwrap();

    let c = st
        .copy_object(Source::key("a"), "b", &MetadataDirective::Copy)
        .await
        .unwrap();
    assert!(c.starts_with('"'), "the client quotes a copy's ETag: {c}");
    assert_eq!(bare_etag(&c), etag_of(&body));
    let h = st.head_object("b").await.unwrap();
    assert_eq!(h.metadata.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(h.content_type.as_deref(), Some("text/html"));

    let mut r = PutOptions {
        content_type: Some("application/x-test".into()),
        ..Default::default()
    };
    r.metadata.insert("mtime".into(), "1700000000".into());
    st.copy_object(Source::key("a"), "a", &MetadataDirective::Replace(r))
        .await
        .unwrap();
    let h = st.head_object("a").await.unwrap();
    assert_eq!(
        h.metadata.get("mtime").map(String::as_str),
        Some("1700000000")
    );
    assert!(
        !h.metadata.contains_key("mode"),
        "REPLACE drops the old metadata"
    );
    assert_eq!(h.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(
        bare_etag(&h.etag),
        etag_of(&body),
        "a copy keeps a single-part object's ETag"
    );
    assert_eq!(body_of(st, "a").await, body);

    // Pinned copy: the right ETag copies, another one is refused.
    st.copy_object(Source::pinned("a", &etag), "c", &MetadataDirective::Copy)
        .await
        .unwrap();
    let r = st
        .copy_object(
            Source::pinned("a", "\"0123456789abcdef0123456789abcdef\""),
            "d",
            &MetadataDirective::Copy,
        )
        .await;
    s.observed(
        "x-amz-copy-source-if-match on CopyObject",
        code(r) == "PreconditionFailed",
        |c| c.copy_source_if_match,
    );
    // GET If-Match.
    assert_eq!(
        st.get_object(Source::pinned("a", &etag), None)
            .await
            .unwrap()
            .body,
        body
    );
    let r = st
        .get_object(
            Source::pinned("a", "\"0123456789abcdef0123456789abcdef\""),
            None,
        )
        .await;
    s.observed("GET If-Match", code(r) == "PreconditionFailed", |c| {
        c.get_if_match
    });
}

/// Directory markers: an empty `dir/` object, seen by HEAD, as a common
/// prefix under a delimiter and as a key of its own prefix; its metadata
/// rewritten by PutObject (what the mount does) and by a copy onto itself.
async fn directory_markers(s: Subject) {
    let st = &*s.store;
    let mode = |st: &'static str| {
        let mut o = PutOptions {
            content_type: Some("application/x-directory".into()),
            ..Default::default()
        };
        o.metadata.insert("mode".into(), st.into());
        o
    };
    let mode_of = |h: ObjectHead| h.metadata.get("mode").cloned();
    st.put_object("d/", Bytes::new(), None, &mode("16877"))
        .await
        .unwrap();
    put(st, "d/f", b"x").await;
    put(st, "top", b"y").await;
    let h = st.head_object("d/").await.unwrap();
    assert_eq!(h.size, 0);
    let kept = mode_of(h) == Some("16877".into());
    s.observed("a dir/ marker keeps its metadata", kept, |c| {
        c.marker_keeps_metadata
    });
    let root = st
        .list_objects_page("", Some("/"), None, None)
        .await
        .unwrap();
    assert_eq!(root.common_prefixes, ["d/"]);
    let keys = |p: &ListPage| p.objects.iter().map(|o| o.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&root), ["top"]);
    let inside = st
        .list_objects_page("d/", Some("/"), None, None)
        .await
        .unwrap();
    assert_eq!(keys(&inside), ["d/", "d/f"]);
    // The mount's way: the empty marker stored again with new metadata.
    st.put_object("d/", Bytes::new(), None, &mode("16832"))
        .await
        .unwrap();
    let h = st.head_object("d/").await.unwrap();
    assert_eq!(mode_of(h), kept.then(|| "16832".to_string()));
    // A copy onto itself.
    let r = st
        .copy_object(
            Source::key("d/"),
            "d/",
            &MetadataDirective::Replace(mode("16800")),
        )
        .await;
    s.observed("CopyObject of a dir/ marker onto itself", r.is_ok(), |c| {
        c.copy_marker_onto_itself
    });
    if r.is_ok() {
        let h = st.head_object("d/").await.unwrap();
        assert_eq!(mode_of(h), kept.then(|| "16800".to_string()));
    }
}

/// Listing: delimiter, pagination (each page starts after the previous
/// page's last entry, together they are every key once), keys that need
/// encoding, and listing entries equal to HEAD's.
async fn listing(s: Subject) {
    let st = &*s.store;
    let keys = [
        "l/a b",
        "l/a+b",
        "l/a%20b",
        "l/ü ñ",
        "l/tab\there",
        "l/x/1",
        "l/x/2",
        "l/y/1",
        "l/z",
        "l/~q=1&r",
    ];
    for k in keys {
        put(st, k, k.as_bytes()).await;
    }
    let mut seen_objects = Vec::new();
    let mut seen_prefixes = Vec::new();
    let mut token: Option<String> = None;
    let mut last_of_previous: Option<String> = None;
    for _ in 0..20 {
        let page = st
            .list_objects_page("l/", Some("/"), token.as_deref(), Some(2))
            .await
            .unwrap();
        let mut names: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
        names.extend(page.common_prefixes.iter().cloned());
        names.sort();
        if let (Some(prev), Some(first)) = (&last_of_previous, names.first()) {
            assert!(first > prev, "page starts at {first:?}, not after {prev:?}");
        }
        assert!(names.len() <= 2, "max-keys 2 gave {names:?}");
        last_of_previous = names.last().cloned().or(last_of_previous);
        seen_objects.extend(page.objects);
        seen_prefixes.extend(page.common_prefixes);
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert!(token.is_none(), "the listing did not end in 20 pages");
    let got: BTreeSet<&str> = seen_objects.iter().map(|o| o.key.as_str()).collect();
    let want: BTreeSet<&str> = keys
        .iter()
        .copied()
        .filter(|k| k.matches('/').count() == 1)
        .collect();
    assert_eq!(got, want);
    assert_eq!(seen_objects.len(), want.len(), "no key twice");
    assert_eq!(seen_prefixes, ["l/x/", "l/y/"]);
    for o in &seen_objects {
        let h = st.head_object(&o.key).await.unwrap();
        assert_eq!(o.size, h.size, "{}", o.key);
        assert_eq!(bare_etag(&o.etag), bare_etag(&h.etag), "{}", o.key);
        let (lm, hm) = (o.last_modified.unwrap(), h.last_modified.unwrap());
        let secs =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(
            secs(lm),
            secs(hm),
            "Last-Modified of {} in the listing and in HEAD",
            o.key
        );
        assert_eq!(&body_of(st, &o.key).await[..], o.key.as_bytes());
    }
    // No delimiter: every key, in order.
    let all = st.list_objects_page("l/", None, None, None).await.unwrap();
    let mut sorted: Vec<&str> = keys.to_vec();
    sorted.sort();
    assert_eq!(
        all.objects
            .iter()
            .map(|o| o.key.as_str())
            .collect::<Vec<_>>(),
        sorted
    );
    // A prefix emptied of its last key.
    put(st, "gone/x", b"x").await;
    st.delete_object("gone/x").await.unwrap();
    let root = st
        .list_objects_page("", Some("/"), None, None)
        .await
        .unwrap();
    let vanished = !root.common_prefixes.iter().any(|p| p == "gone/");
    s.observed(
        "an emptied prefix is gone from listings at once",
        vanished,
        |c| c.emptied_prefix_vanishes,
    );
    // An empty prefix result.
    let none = st
        .list_objects_page("nothing/", Some("/"), None, None)
        .await
        .unwrap();
    assert!(
        none.objects.is_empty() && none.common_prefixes.is_empty() && none.next_token.is_none()
    );
}

/// ListMultipartUploads and AbortMultipartUpload, and the errors of an
/// unknown upload.
async fn uploads_and_abort(s: Subject) {
    let st = &*s.store;
    let o = PutOptions::default();
    let a = st.create_multipart_upload("u/one", &o).await.unwrap();
    let b = st.create_multipart_upload("u/two", &o).await.unwrap();
    let c = st.create_multipart_upload("other", &o).await.unwrap();
    let listed: BTreeSet<(String, String)> = st
        .list_uploads("u/")
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("u/one".to_string(), a.clone()),
        ("u/two".to_string(), b.clone()),
    ]
    .into();
    assert_eq!(listed, want);
    st.abort_multipart_upload("u/one", &a).await.unwrap();
    st.abort_multipart_upload("u/two", &b).await.unwrap();
    st.abort_multipart_upload("other", &c).await.unwrap();
    assert!(st.list_uploads("").await.unwrap().is_empty());
    let e = st
        .upload_part("u/one", &a, 1, Bytes::from_static(b"x"), md5_of(b"x"))
        .await
        .unwrap_err();
    assert!(e.is_not_found() && e.code() == Some("NoSuchUpload"), "{e}");
    let e = st.list_parts("u/one", &a).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = st
        .upload_part(
            "u/one",
            "no-such-upload",
            1,
            Bytes::from_static(b"x"),
            md5_of(b"x"),
        )
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    // A part whose bytes do not match their MD5.
    let id = st.create_multipart_upload("u/md5", &o).await.unwrap();
    let e = st
        .upload_part("u/md5", &id, 1, Bytes::from_static(b"abc"), [0; 16])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("BadDigest"), "{e}");
    st.abort_multipart_upload("u/md5", &id).await.unwrap();
}

/// Each scenario twice: on the in-memory store and on the test server.
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Subject::memory()).await;
                }
            )*
        }
        mod server {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Subject::server().await).await;
                }
            )*
        }
    };
}

scenarios!(
    put_get_ranges,
    multipart_rules,
    upload_part_copy,
    copy_and_conditions,
    directory_markers,
    listing,
    uploads_and_abort,
);
