//! Hostile answers from a server: a listing that repeats its continuation
//! token, malformed and truncated XML, a 200 whose body is an `<Error>`, a
//! part ETag that is not the body's MD5. Each is a clear error after a
//! bounded number of requests — never a panic or an endless loop. The
//! server here is a canned one that answers every request the same way.

use bucketfs::s3::{Client, PartUpload, S3Error};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A server answering every request with `status` and `body`; counts them
/// and keeps the last one (its head lowercased, then its body).
struct Canned {
    url: String,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<(String, Vec<u8>)>>,
}

fn canned(status: u16, headers: &'static str, body: &'static str) -> Canned {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let last = Arc::new(Mutex::new((String::new(), Vec::new())));
    let kept = last.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            // Read the head and any Content-Length body.
            let mut buf = Vec::new();
            let mut b = [0u8; 4096];
            let head_end = loop {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + len {
                match s.read(&mut b) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&b[..n]),
                }
            }
            *kept.lock().unwrap() = (head, buf[head_end..].to_vec());
            h.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                body.len()
            );
        }
    });
    Canned { url, hits, last }
}

fn client(url: &str, attempts: u32) -> Client {
    let mut cfg = bucketfs::s3::S3Config::from_env(&bucketfs::s3::ConfigOverrides {
        endpoint_url: Some(url.to_string()),
        ..Default::default()
    })
    .expect("config (credentials come from the environment or ~/.aws)");
    cfg.max_attempts = attempts;
    Client::new(cfg).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// CompleteMultipartUpload of one part against `s`, which must fail.
fn complete_fails(s: &Canned, attempts: u32) -> S3Error {
    rt().block_on(client(&s.url, attempts).complete_multipart_upload(
        "b",
        "k",
        "u",
        &[(1, "\"e\"".into())],
    ))
    .unwrap_err()
}

#[test]
fn a_listing_that_repeats_its_token_is_an_error_not_a_loop() {
    let s = canned(
        200,
        "",
        "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken>same</NextContinuationToken>\
         <Contents><Key>a</Key><Size>1</Size></Contents></ListBucketResult>",
    );
    let e = rt()
        .block_on(client(&s.url, 2).list_objects_all("b", "", Some("/")))
        .unwrap_err();
    assert!(matches!(e, S3Error::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("looping"), "{e}");
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        2,
        "one page, then the repeat"
    );
}

#[test]
fn malformed_and_truncated_xml_are_clear_errors() {
    for body in [
        "<ListBucketResult><IsTruncated>maybe</IsTruncated></ListBucketResult>",
        "<ListBucketResult><Contents><Key>a</Key><Size>x</Size></Contents>",
        "not xml at all",
        "",
    ] {
        let s = canned(200, "", body);
        let e = rt()
            .block_on(client(&s.url, 1).list_objects_page("b", "", None, None, None))
            .unwrap_err();
        assert!(matches!(e, S3Error::Malformed { .. }), "{body:?}: {e}");
    }
    // A Complete answer cut short: no ETag made of a fragment.
    let s = canned(
        200,
        "",
        "<CompleteMultipartUploadResult><Location>l</Location><ETag>&quot;abc",
    );
    let e = complete_fails(&s, 1);
    assert!(matches!(e, S3Error::Malformed { .. }), "{e}");
}

#[test]
fn a_200_whose_body_is_an_error_fails_complete_after_bounded_retries() {
    let s = canned(
        200,
        "",
        "\n\n   <Error><Code>InternalError</Code><Message>We encountered an internal error.</Message><RequestId>r1</RequestId></Error>",
    );
    let e = complete_fails(&s, 3);
    assert_eq!(e.code(), Some("InternalError"), "{e}");
    assert_eq!(
        s.hits.load(Ordering::SeqCst),
        3,
        "retried up to --max-attempts"
    );
}

/// Complete's XML body carries its Content-MD5, so under the default
/// signing it goes as UNSIGNED-PAYLOAD like every other body (OBS's V4
/// accepts no signed payload).
#[test]
fn complete_carries_its_md5_and_an_unsigned_payload() {
    use base64::Engine;
    use md5::{Digest, Md5};
    let s = canned(
        200,
        "",
        "<CompleteMultipartUploadResult><ETag>&quot;abc-1&quot;</ETag></CompleteMultipartUploadResult>",
    );
    let etag = rt()
        .block_on(client(&s.url, 1).complete_multipart_upload(
            "b",
            "k",
            "u",
            &[(1, "\"e\"".into())],
        ))
        .unwrap();
    assert_eq!(etag, "\"abc-1\"");
    let (head, body) = s.last.lock().unwrap().clone();
    assert!(body.starts_with(b"<CompleteMultipartUpload"), "{body:?}");
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
    assert!(
        head.contains(&format!(
            "\r\ncontent-md5: {}\r\n",
            md5.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(
        head.contains("\r\nx-amz-content-sha256: unsigned-payload\r\n"),
        "{head}"
    );
}

#[test]
fn a_part_etag_that_is_not_the_md5_is_refused() {
    let s = canned(200, "etag: \"0123456789abcdef0123456789abcdef\"\r\n", "");
    let e = rt()
        .block_on(client(&s.url, 1).upload_part(
            "b",
            "k",
            PartUpload::new("u", 1, bytes::Bytes::from_static(b"body")),
        ))
        .unwrap_err();
    assert!(matches!(e, S3Error::EtagMismatch { .. }), "{e}");
}

/// HEAD reads an object's own SSE-KMS key and the standard headers a
/// REPLACE copy must send again.
#[test]
fn head_reads_encryption_and_standard_headers() {
    // What a HEAD answered with these headers (after the ETag) says.
    let head = |headers: &'static str| {
        let s = canned(200, headers, "");
        rt().block_on(client(&s.url, 1).head_object("b", "k", None))
            .unwrap()
    };
    let h = head(
        "etag: \"e\"\r\nx-amz-server-side-encryption: aws:kms\r\n\
         x-amz-server-side-encryption-aws-kms-key-id: arn:aws:kms:eu-west-1:1:key/k\r\n\
         cache-control: no-cache\r\ncontent-encoding: gzip\r\n",
    );
    assert_eq!(
        h.encryption,
        Some(bucketfs::s3::types::Sse::Kms {
            key_id: Some("arn:aws:kms:eu-west-1:1:key/k".into()),
            dsse: false,
        })
    );
    assert_eq!(
        h.system,
        [
            ("cache-control".to_string(), "no-cache".to_string()),
            ("content-encoding".to_string(), "gzip".to_string())
        ]
    );
    let h = head("etag: \"e\"\r\nx-amz-server-side-encryption: aws:kms:dsse\r\n");
    assert_eq!(
        h.encryption,
        Some(bucketfs::s3::types::Sse::Kms {
            key_id: None,
            dsse: true,
        }),
        "dual-layer KMS stays dual-layer"
    );
    let h = head("etag: \"e\"\r\nx-amz-server-side-encryption: AES256\r\n");
    assert_eq!(h.encryption, Some(bucketfs::s3::types::Sse::Aes256));
    assert!(h.system.is_empty());
}
