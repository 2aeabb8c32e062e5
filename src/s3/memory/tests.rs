//! The store's unit tests: S3's rules, listing, faults and observation.

use super::list::{decode_token, encode_token, Resume};
use super::*;
use crate::s3::etag::{bare_etag, multipart_etag};
use crate::s3::rules::{MAX_METADATA_SIZE, MAX_PARTS};
use std::sync::Arc;
use std::time::Duration;

fn opts() -> PutOptions {
    PutOptions::default()
}

fn code<T: std::fmt::Debug>(r: Result<T, S3Error>) -> (String, u16) {
    let e = r.expect_err("expected an error");
    (
        e.code().unwrap_or("<none>").to_string(),
        e.status().unwrap_or(0),
    )
}

fn body(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>(),
    )
}

async fn part(s: &MemoryStore, key: &str, id: &str, n: u32, b: &Bytes) -> String {
    s.upload_part(key, id, n, b.clone(), md5_of(b))
        .await
        .unwrap()
}

#[tokio::test]
async fn small_object_round_trip_with_metadata_and_ranges() {
    let s = MemoryStore::new();
    let mut o = opts();
    o.content_type = Some("text/plain".into());
    o.metadata.insert("Mode".into(), "644".into());
    let b = Bytes::from_static(b"hello world");
    let etag = s
        .put_object("dir/a.txt", b.clone(), None, &o)
        .await
        .unwrap();
    assert_eq!(etag, format!("\"{}\"", hex(&md5_of(&b))));

    let h = s.head_object("dir/a.txt").await.unwrap();
    assert_eq!(h.size, 11);
    assert_eq!(h.etag, etag);
    assert_eq!(h.content_type.as_deref(), Some("text/plain"));
    assert_eq!(h.metadata.get("mode").map(String::as_str), Some("644"));
    assert_eq!(s.object("dir/a.txt").unwrap().metadata, h.metadata);

    let g = s.get_object(Source::key("dir/a.txt"), None).await.unwrap();
    assert_eq!(
        (g.body.clone(), g.object_size, g.etag),
        (b.clone(), 11, etag)
    );
    let g = s
        .get_object(Source::key("dir/a.txt"), Some(0..1))
        .await
        .unwrap();
    assert_eq!((&g.body[..], g.object_size), (&b"h"[..], 11));
    let g = s
        .get_object(Source::key("dir/a.txt"), Some(10..11))
        .await
        .unwrap();
    assert_eq!(&g.body[..], b"d");
    let g = s
        .get_object(Source::key("dir/a.txt"), Some(6..1000))
        .await
        .unwrap();
    assert_eq!((&g.body[..], g.object_size), (&b"world"[..], 11));
    assert_eq!(
        code(s.get_object(Source::key("dir/a.txt"), Some(11..12)).await),
        ("InvalidRange".into(), 416)
    );
    assert_eq!(
        code(
            s.get_object(Source::key("dir/a.txt"), Some(u64::MAX - 1..u64::MAX))
                .await
        ),
        ("InvalidRange".into(), 416)
    );
    assert_eq!(
        code(s.get_object(Source::key("nope"), None).await),
        ("NoSuchKey".into(), 404)
    );
    assert_eq!(code(s.head_object("nope").await), ("NotFound".into(), 404));

    // Default content type, as S3.
    s.put_object("b", Bytes::from_static(b"x"), None, &opts())
        .await
        .unwrap();
    assert_eq!(s.object("b").unwrap().content_type, DEFAULT_CONTENT_TYPE);

    // Delete is idempotent.
    s.delete_object("dir/a.txt").await.unwrap();
    s.delete_object("dir/a.txt").await.unwrap();
    assert_eq!(s.keys(), vec!["b".to_string()]);
}

#[tokio::test]
async fn put_bad_digest_and_bad_input() {
    let s = MemoryStore::new();
    let b = Bytes::from_static(b"data");
    let r = s
        .put_object("k", b.clone(), Some(md5_of(b"other")), &opts())
        .await;
    assert_eq!(code(r), ("BadDigest".into(), 400));
    assert!(s.object("k").is_none());
    assert!(s
        .put_object("k", b.clone(), Some(md5_of(&b)), &opts())
        .await
        .is_ok());

    assert!(matches!(
        s.put_object("", b.clone(), None, &opts()).await,
        Err(S3Error::InvalidKey { .. })
    ));
    assert!(matches!(
        s.get_object(Source::key("a/../b"), None).await,
        Err(S3Error::InvalidKey { .. })
    ));
    let long = "x".repeat(rules::MAX_KEY_LEN + 1);
    assert_eq!(
        code(s.put_object(&long, b.clone(), None, &opts()).await),
        ("KeyTooLongError".into(), 400)
    );
    let mut o = opts();
    o.metadata
        .insert("big".into(), "v".repeat(MAX_METADATA_SIZE));
    assert_eq!(
        code(s.put_object("m", b.clone(), None, &o).await),
        ("MetadataTooLarge".into(), 400)
    );
    let mut o = opts();
    o.storage_class = Some("WARM".into());
    assert_eq!(
        code(s.create_multipart_upload("m", &o).await),
        ("InvalidStorageClass".into(), 400)
    );
    assert!(s.uploads().is_empty());
}

#[tokio::test]
async fn multipart_happy_path_out_of_order() {
    let s = MemoryStore::with_limits(8, MAX_SINGLE_SIZE);
    let mut o = opts();
    o.metadata.insert("k".into(), "v".into());
    let id = s.create_multipart_upload("big", &o).await.unwrap();
    assert_eq!(s.uploads(), vec![("big".to_string(), id.clone())]);
    let (p1, p2, p3) = (body(10, 1), body(8, 2), body(3, 3));
    let e3 = part(&s, "big", &id, 3, &p3).await;
    let e1 = part(&s, "big", &id, 1, &p1).await;
    let e2 = part(&s, "big", &id, 2, &p2).await;
    assert_eq!(e1, format!("\"{}\"", hex(&md5_of(&p1))));

    let listed = s.list_parts("big", &id).await.unwrap();
    let numbers: Vec<u32> = listed.iter().map(|p| p.part_number).collect();
    assert_eq!(numbers, vec![1, 2, 3]);
    assert_eq!(listed[1].size, 8);

    // ETags accepted without quotes and in upper case.
    let parts = vec![(1, e1), (2, bare_etag(&e2).to_uppercase()), (3, e3)];
    let etag = s
        .complete_multipart_upload("big", &id, &parts)
        .await
        .unwrap();
    let expected = multipart_etag(&[md5_of(&p1), md5_of(&p2), md5_of(&p3)]);
    assert_eq!(etag, format!("\"{expected}\""));
    assert!(etag.ends_with("-3\""));

    let obj = s.object("big").unwrap();
    let mut all = p1.to_vec();
    all.extend_from_slice(&p2);
    all.extend_from_slice(&p3);
    assert_eq!(obj.body, Bytes::from(all));
    assert_eq!(obj.etag, etag);
    assert_eq!(obj.metadata.get("k").map(String::as_str), Some("v"));
    assert!(s.uploads().is_empty());
    // The upload is gone: a retried Complete meets NoSuchUpload.
    assert_eq!(
        code(s.complete_multipart_upload("big", &id, &parts).await),
        ("NoSuchUpload".into(), 404)
    );
}

#[tokio::test]
async fn unlisted_parts_are_dropped_and_last_part_may_be_small() {
    let s = MemoryStore::with_limits(4, MAX_SINGLE_SIZE);
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let (a, b, c) = (body(4, 1), body(5, 2), body(1, 3));
    let ea = part(&s, "k", &id, 1, &a).await;
    let _ = part(&s, "k", &id, 2, &b).await;
    let ec = part(&s, "k", &id, 5, &c).await;
    let etag = s
        .complete_multipart_upload("k", &id, &[(1, ea), (5, ec)])
        .await
        .unwrap();
    assert_eq!(
        etag,
        format!("\"{}\"", multipart_etag(&[md5_of(&a), md5_of(&c)]))
    );
    let mut all = a.to_vec();
    all.extend_from_slice(&c);
    assert_eq!(s.object("k").unwrap().body, Bytes::from(all));
}

#[tokio::test]
async fn entity_too_small_for_small_non_last_part() {
    // S3's real limit: a 1-byte first part is refused.
    let s = MemoryStore::new();
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let e1 = part(&s, "k", &id, 1, &body(1, 1)).await;
    let e2 = part(&s, "k", &id, 2, &body(1, 2)).await;
    let r = s
        .complete_multipart_upload("k", &id, &[(1, e1.clone()), (2, e2)])
        .await;
    assert_eq!(code(r), ("EntityTooSmall".into(), 400));
    assert!(s.object("k").is_none());
    assert_eq!(s.uploads().len(), 1, "a refused Complete leaves the upload");
    // A single small part is fine: it is the last one.
    s.complete_multipart_upload("k", &id, &[(1, e1)])
        .await
        .unwrap();
    assert_eq!(s.object("k").unwrap().body.len(), 1);

    // With a small configured limit, exactly the limit passes.
    let s = MemoryStore::with_limits(4, MAX_SINGLE_SIZE);
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let e1 = part(&s, "k", &id, 1, &body(3, 1)).await;
    let e2 = part(&s, "k", &id, 2, &body(4, 2)).await;
    let e3 = part(&s, "k", &id, 3, &body(1, 3)).await;
    let r = s
        .complete_multipart_upload("k", &id, &[(1, e1), (2, e2.clone()), (3, e3.clone())])
        .await;
    assert_eq!(code(r), ("EntityTooSmall".into(), 400));
    s.complete_multipart_upload("k", &id, &[(2, e2), (3, e3)])
        .await
        .unwrap();
}

#[tokio::test]
async fn complete_rules() {
    let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let e1 = part(&s, "k", &id, 1, &body(2, 1)).await;
    let e2 = part(&s, "k", &id, 2, &body(2, 2)).await;
    let complete = |parts: Vec<(u32, String)>| {
        let s = &s;
        let id = id.clone();
        async move { s.complete_multipart_upload("k", &id, &parts).await }
    };
    assert_eq!(
        code(complete(vec![(2, e2.clone()), (1, e1.clone())]).await),
        ("InvalidPartOrder".into(), 400)
    );
    assert_eq!(
        code(complete(vec![(1, e1.clone()), (1, e1.clone())]).await),
        ("InvalidPartOrder".into(), 400)
    );
    assert_eq!(
        code(complete(vec![(1, e1.clone()), (2, "\"0123\"".into())]).await),
        ("InvalidPart".into(), 400)
    );
    assert_eq!(
        code(complete(vec![(1, e1.clone()), (3, e2.clone())]).await),
        ("InvalidPart".into(), 400)
    );
    assert_eq!(code(complete(vec![]).await), ("MalformedXML".into(), 400));
    let r = s
        .complete_multipart_upload("other", &id, &[(1, e1.clone())])
        .await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    assert!(s.keys().is_empty());

    let small = MemoryStore::with_config(Limits {
        min_part_size: 1,
        max_object_size: 3,
        ..Limits::default()
    });
    let id2 = small.create_multipart_upload("k", &opts()).await.unwrap();
    let f1 = part(&small, "k", &id2, 1, &body(2, 1)).await;
    let f2 = part(&small, "k", &id2, 2, &body(2, 2)).await;
    let r = small
        .complete_multipart_upload("k", &id2, &[(1, f1), (2, f2)])
        .await;
    assert_eq!(code(r), ("EntityTooLarge".into(), 400));
    complete(vec![(1, e1), (2, e2)]).await.unwrap();
}

#[tokio::test]
async fn upload_part_rules() {
    let s = MemoryStore::new();
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let b = body(4, 0);
    for n in [0, MAX_PARTS + 1] {
        let r = s.upload_part("k", &id, n, b.clone(), md5_of(&b)).await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400), "part {n}");
    }
    part(&s, "k", &id, MAX_PARTS, &b).await;
    let r = s.upload_part("k", &id, 1, Bytes::new(), md5_of(b"")).await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
    let r = s.upload_part("k", &id, 1, b.clone(), md5_of(b"x")).await;
    assert_eq!(code(r), ("BadDigest".into(), 400));
    let r = s.upload_part("other", &id, 1, b.clone(), md5_of(&b)).await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    let r = s.upload_part("k", "bogus", 1, b.clone(), md5_of(&b)).await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    let parts = s.list_parts("k", &id).await.unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].part_number, MAX_PARTS);

    let tiny = MemoryStore::with_config(Limits {
        max_body_size: 3,
        ..Limits::default()
    });
    let id = tiny.create_multipart_upload("k", &opts()).await.unwrap();
    let r = tiny.upload_part("k", &id, 1, b.clone(), md5_of(&b)).await;
    assert_eq!(code(r), ("EntityTooLarge".into(), 400));
    let r = tiny.put_object("k", b.clone(), None, &opts()).await;
    assert_eq!(code(r), ("EntityTooLarge".into(), 400));
}

#[tokio::test]
async fn reuploaded_part_wins() {
    let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let old = part(&s, "k", &id, 1, &body(5, 1)).await;
    let new_body = body(6, 2);
    let new = part(&s, "k", &id, 1, &new_body).await;
    let r = s.complete_multipart_upload("k", &id, &[(1, old)]).await;
    assert_eq!(code(r), ("InvalidPart".into(), 400));
    s.complete_multipart_upload("k", &id, &[(1, new)])
        .await
        .unwrap();
    assert_eq!(s.object("k").unwrap().body, new_body);
}

#[tokio::test]
async fn abort_and_list_uploads() {
    let s = MemoryStore::new();
    let a = s.create_multipart_upload("d/b", &opts()).await.unwrap();
    let b = s.create_multipart_upload("d/a", &opts()).await.unwrap();
    let c = s.create_multipart_upload("d/a", &opts()).await.unwrap();
    let _ = s.create_multipart_upload("e", &opts()).await.unwrap();
    assert_ne!(b, c);
    let listed: Vec<(String, String)> = s
        .list_uploads("d/")
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.key, u.upload_id))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("d/a".to_string(), b.clone()),
            ("d/a".to_string(), c.clone()),
            ("d/b".to_string(), a.clone())
        ]
    );
    part(&s, "d/b", &a, 1, &body(3, 0)).await;
    assert_eq!(
        code(s.abort_multipart_upload("d/a", &a).await),
        ("NoSuchUpload".into(), 404)
    );
    s.abort_multipart_upload("d/b", &a).await.unwrap();
    let b3 = body(3, 0);
    let r = s.upload_part("d/b", &a, 2, b3.clone(), md5_of(&b3)).await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    assert_eq!(
        code(s.list_parts("d/b", &a).await),
        ("NoSuchUpload".into(), 404)
    );
    assert_eq!(
        code(s.abort_multipart_upload("d/b", &a).await),
        ("NoSuchUpload".into(), 404)
    );
    assert_eq!(s.uploads().len(), 3);
}

#[tokio::test]
async fn listing_with_delimiter_pages_each_entry_once() {
    let s = MemoryStore::new();
    for k in [
        "a", "b/1", "b/2", "b/3", "c", "d/x/1", "d/y", "e", "f/", "f/g", "z",
    ] {
        s.insert_object(k, Bytes::from_static(b"1"), &opts());
    }
    let all = s
        .list_objects_page("", Some("/"), None, None)
        .await
        .unwrap();
    let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, vec!["a", "c", "e", "z"]);
    assert_eq!(all.common_prefixes, vec!["b/", "d/", "f/"]);
    assert!(all.next_token.is_none());

    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = s
            .list_objects_page("", Some("/"), token.as_deref(), Some(2))
            .await
            .unwrap();
        pages += 1;
        assert!(p.objects.len() + p.common_prefixes.len() <= 2);
        objects.extend(p.objects.into_iter().map(|o| o.key));
        prefixes.extend(p.common_prefixes);
        match p.next_token {
            Some(t) => token = Some(t),
            None => break,
        }
        assert!(pages < 20, "listing does not end");
    }
    assert_eq!(objects, vec!["a", "c", "e", "z"]);
    assert_eq!(prefixes, vec!["b/", "d/", "f/"]);
    assert_eq!(pages, 4);

    // Prefix and nested delimiter.
    let p = s
        .list_objects_page("d/", Some("/"), None, None)
        .await
        .unwrap();
    assert_eq!(p.common_prefixes, vec!["d/x/"]);
    assert_eq!(p.objects[0].key, "d/y");
    // No delimiter: everything flat, byte order.
    let p = s
        .list_objects_page("b/", None, None, Some(2))
        .await
        .unwrap();
    assert_eq!(p.objects.len(), 2);
    let t = p.next_token.unwrap();
    let p = s
        .list_objects_page("b/", None, Some(&t), Some(2))
        .await
        .unwrap();
    assert_eq!(p.objects[0].key, "b/3");
    assert!(p.next_token.is_none());
    // Exactly max_keys left: no token.
    let p = s
        .list_objects_page("b/", None, None, Some(3))
        .await
        .unwrap();
    assert!(p.next_token.is_none());
    // Garbage token.
    let r = s.list_objects_page("", None, Some("zz\u{e9}"), None).await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
    let r = s.list_objects_page("", None, Some("k0"), None).await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
}

#[tokio::test]
async fn copy_limit_and_metadata_directive() {
    let s = MemoryStore::with_limits(MIN_PART_SIZE, 4);
    let mut o = opts();
    o.content_type = Some("image/png".into());
    o.metadata.insert("a".into(), "1".into());
    let small = s
        .put_object("small", Bytes::from_static(b"1234"), None, &o)
        .await
        .unwrap();
    s.put_object("large", Bytes::from_static(b"12345"), None, &o)
        .await
        .unwrap();
    let r = s
        .copy_object(Source::key("large"), "dst", &MetadataDirective::Copy)
        .await;
    assert_eq!(code(r), ("InvalidRequest".into(), 400));
    assert!(s.object("dst").is_none());
    let r = s
        .copy_object(Source::key("missing"), "dst", &MetadataDirective::Copy)
        .await;
    assert_eq!(code(r), ("NoSuchKey".into(), 404));

    let e = s
        .copy_object(Source::key("small"), "copy", &MetadataDirective::Copy)
        .await
        .unwrap();
    assert_eq!(e, small);
    let c = s.object("copy").unwrap();
    assert_eq!(c.content_type, "image/png");
    assert_eq!(c.metadata.get("a").map(String::as_str), Some("1"));

    let mut r = opts();
    r.metadata.insert("b".into(), "2".into());
    let e = s
        .copy_object(
            Source::key("small"),
            "repl",
            &MetadataDirective::Replace(r.clone()),
        )
        .await
        .unwrap();
    assert_eq!(e, small);
    let c = s.object("repl").unwrap();
    assert_eq!(c.content_type, DEFAULT_CONTENT_TYPE);
    assert_eq!(c.metadata.len(), 1);
    assert_eq!(c.metadata.get("b").map(String::as_str), Some("2"));
    assert_eq!(c.body, Bytes::from_static(b"1234"));

    // Copying onto itself needs REPLACE, as on S3.
    let r2 = s
        .copy_object(Source::key("small"), "small", &MetadataDirective::Copy)
        .await;
    assert_eq!(code(r2), ("InvalidRequest".into(), 400));
    s.copy_object(
        Source::key("small"),
        "small",
        &MetadataDirective::Replace(r),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn upload_part_copy_rules() {
    let s = MemoryStore::with_limits(2, 1);
    s.insert_object("src", Bytes::from_static(b"abcdef"), &opts());
    let id = s.create_multipart_upload("dst", &opts()).await.unwrap();
    let r = s
        .upload_part_copy("dst", &id, 1, Source::key("nope"), 0..1)
        .await;
    assert_eq!(code(r), ("NoSuchKey".into(), 404));
    let r = s
        .upload_part_copy("dst", &id, 1, Source::key("src"), 2..7)
        .await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
    let r = s
        .upload_part_copy("dst", &id, 1, Source::key("src"), 3..3)
        .await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
    let r = s
        .upload_part_copy("dst", "bogus", 1, Source::key("src"), 0..1)
        .await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    let r = s
        .upload_part_copy("dst", &id, 0, Source::key("src"), 0..1)
        .await;
    assert_eq!(code(r), ("InvalidArgument".into(), 400));
    // Part copies are not limited by the CopyObject limit.
    let e1 = s
        .upload_part_copy("dst", &id, 1, Source::key("src"), 0..4)
        .await
        .unwrap();
    assert_eq!(e1, format!("\"{}\"", hex(&md5_of(b"abcd"))));
    let e2 = s
        .upload_part_copy("dst", &id, 2, Source::key("src"), 5..6)
        .await
        .unwrap();
    s.complete_multipart_upload("dst", &id, &[(1, e1), (2, e2)])
        .await
        .unwrap();
    assert_eq!(s.object("dst").unwrap().body, Bytes::from_static(b"abcdf"));
}

#[tokio::test]
async fn fail_nth_fails_exactly_that_call_without_effect() {
    let s = MemoryStore::new();
    s.fail_nth(Op::PutObject, 2, "InternalError");
    s.put_object("one", Bytes::from_static(b"1"), None, &opts())
        .await
        .unwrap();
    let e = s
        .put_object("two", Bytes::from_static(b"2"), None, &opts())
        .await
        .unwrap_err();
    assert_eq!((e.code(), e.status()), (Some("InternalError"), Some(500)));
    assert_eq!(e.retry(), crate::s3::Retry::Yes);
    assert!(s.object("two").is_none(), "the failed call had no effect");
    s.put_object("three", Bytes::from_static(b"3"), None, &opts())
        .await
        .unwrap();
    assert_eq!(s.keys(), vec!["one".to_string(), "three".to_string()]);
    assert_eq!(s.calls(Op::PutObject), 3);
    assert_eq!(s.calls(Op::UploadPart), 0);

    // Non-retryable code gets 400; SlowDown 503.
    s.fail_nth(Op::DeleteObject, 1, "AccessDenied");
    s.fail_nth(Op::DeleteObject, 2, "SlowDown");
    let e = s.delete_object("one").await.unwrap_err();
    assert_eq!((e.status(), e.retry()), (Some(403), crate::s3::Retry::No));
    let e = s.delete_object("one").await.unwrap_err();
    assert_eq!((e.status(), e.retry()), (Some(503), crate::s3::Retry::Yes));
    assert!(s.object("one").is_some());

    // HEAD sees only the status.
    s.fail_nth(Op::HeadObject, 1, "SlowDown");
    let e = s.head_object("one").await.unwrap_err();
    assert_eq!(e.code(), Some("ServiceUnavailable"));

    // fail_all until cleared.
    s.fail_all(Op::GetObject, "ServiceUnavailable");
    for _ in 0..3 {
        assert_eq!(
            code(s.get_object(Source::key("one"), None).await),
            ("ServiceUnavailable".into(), 503)
        );
    }
    s.clear_faults();
    assert!(s.get_object(Source::key("one"), None).await.is_ok());
    assert_eq!(s.calls(Op::GetObject), 4);
}

#[tokio::test]
async fn lost_response_applies_the_effect() {
    let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    let e1 = part(&s, "k", &id, 1, &body(3, 0)).await;
    s.lose_response_nth(Op::CompleteMultipartUpload, 1, "InternalError");
    let parts = vec![(1, e1)];
    let r = s.complete_multipart_upload("k", &id, &parts).await;
    assert_eq!(code(r), ("InternalError".into(), 500));
    assert!(s.object("k").is_some());
    let r = s.complete_multipart_upload("k", &id, &parts).await;
    assert_eq!(code(r), ("NoSuchUpload".into(), 404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_shows_parts_in_flight() {
    let s = Arc::new(MemoryStore::new());
    let id = s.create_multipart_upload("k", &opts()).await.unwrap();
    s.delay(Op::UploadPart, Duration::from_millis(400));
    let mut tasks = Vec::new();
    for n in 1..=4u32 {
        let (s, id) = (s.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let b = body(1000, n as u8);
            s.upload_part("k", &id, n, b.clone(), md5_of(&b)).await
        }));
    }
    // Wait (bounded) until all four are inside their delay.
    let start = std::time::Instant::now();
    while s.in_flight(Op::UploadPart) < 4 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(s.in_flight(Op::UploadPart), 4);
    assert_eq!(s.bytes_in_flight(), 4000);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.peak_in_flight(Op::UploadPart), 4);
    assert_eq!(s.in_flight(Op::UploadPart), 0);
    assert_eq!(s.peak_bytes_in_flight(), 4000);
    assert_eq!(s.bytes_in_flight(), 0);
    assert_eq!(s.list_parts("k", &id).await.unwrap().len(), 4);

    // A cancelled call leaves the in-flight counts.
    let b = body(10, 9);
    let r = tokio::time::timeout(
        Duration::from_millis(10),
        s.upload_part("k", &id, 5, b.clone(), md5_of(&b)),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(s.in_flight(Op::UploadPart), 0);
    assert_eq!(s.bytes_in_flight(), 0);
    assert_eq!(s.list_parts("k", &id).await.unwrap().len(), 4);
    s.delay(Op::UploadPart, Duration::ZERO);
    part(&s, "k", &id, 5, &b).await;
}

#[test]
fn tokens_round_trip() {
    for r in [Resume::Key("a/é\u{0}".into()), Resume::Prefix("p/".into())] {
        let t = encode_token(&r);
        match (r, decode_token(&t)) {
            (Resume::Key(a), Some(Resume::Key(b)))
            | (Resume::Prefix(a), Some(Resume::Prefix(b))) => {
                assert_eq!(a, b)
            }
            _ => panic!("token {t} did not round-trip"),
        }
    }
    assert!(matches!(decode_token("k"), Some(Resume::Key(k)) if k.is_empty()));
    for t in ["", "kf", "x00", "k0g", "\u{e9}00", "kff"] {
        assert!(decode_token(t).is_none(), "{t:?}");
    }
}
