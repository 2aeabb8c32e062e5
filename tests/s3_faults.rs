//! The S3 client through the fault-injecting proxy (`common::proxy`): what
//! retries recover from, and that a total outage fails cleanly.

mod common;

use bucketfs::s3::*;
use common::proxy::{FailAll, FaultProxy, Faults};
use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// A proxy in front of the test server.
fn proxy() -> FaultProxy {
    FaultProxy::start(&require_env("AWS_ENDPOINT_URL"))
}

/// Uploads `parts` one at a time as a new multipart upload of `key`,
/// checking each part's ETag; `before(n)` runs before part `n` is sent.
/// Returns the upload id and the parts for Complete.
async fn upload_in_parts(
    pc: &Client,
    b: &str,
    key: &str,
    parts: &[Vec<u8>],
    mut before: impl FnMut(u32),
) -> (String, Vec<(u32, String)>) {
    let id = pc
        .create_multipart_upload(b, key, &PutOptions::default())
        .await
        .unwrap();
    let mut etags = Vec::new();
    for (i, d) in parts.iter().enumerate() {
        let n = i as u32 + 1;
        before(n);
        let etag = pc
            .upload_part(b, key, PartUpload::new(&id, n, d.clone().into()))
            .await
            .unwrap_or_else(|e| panic!("part {n}: {e}"));
        assert_eq!(bare_etag(&etag), hex(&md5_of(d)), "part {n}");
        etags.push((n, etag));
    }
    (id, etags)
}

/// Waits (up to 10 s) until the proxy has seen the client close a stalled
/// or hung connection.
fn await_stall_closed(p: &FaultProxy, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while p.stats().stall_closed == 0 {
        assert!(Instant::now() < deadline, "{what}: {:?}", p.stats());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client configured like a user's, talking to the proxy.
fn proxied_client(p: &FaultProxy) -> Client {
    let cfg = S3Config::from_env(&ConfigOverrides {
        endpoint_url: Some(p.url()),
        ..Default::default()
    })
    .expect("config from env");
    Client::new(cfg).expect("client")
}

#[tokio::test]
async fn no_faults_round_trip_byte_exact() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let p = proxy();
    let pc = proxied_client(&p);
    let body = data(3 * MIB + 17, 11);
    let etag = pc
        .put_object(
            &b,
            "dir/obj",
            body.clone().into(),
            None,
            &PutOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(bare_etag(&etag), hex(&md5_of(&body)));
    assert_eq!(
        pc.head_object(&b, "dir/obj", None).await.unwrap().size,
        body.len() as u64
    );
    let g = pc.get_object(&b, "dir/obj", None, None).await.unwrap();
    assert!(g.body[..] == body[..], "GET through the proxy differs");
    let g = pc
        .get_object(&b, "dir/obj", Some(MIB as u64..2 * MIB as u64 + 5), None)
        .await
        .unwrap();
    assert!(g.body[..] == body[MIB..2 * MIB + 5], "ranged GET differs");
    // And the server holds the same bytes.
    let g = c.get_object(&b, "dir/obj", None, None).await.unwrap();
    assert!(g.body[..] == body[..], "GET from the server differs");

    let s = p.stats();
    assert_eq!(
        pc.counters()
            .retries
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(s.requests, 4, "{s:?}");
    assert_eq!((s.forwarded, s.answered), (4, 4), "{s:?}");
    assert_eq!(s.connections, 4, "one request per connection: {s:?}");
    assert_eq!(
        s.injected_500 + s.injected_reset + s.injected_stall + s.refused + s.upstream_errors,
        0,
        "{s:?}"
    );
}

#[tokio::test]
async fn multipart_upload_survives_part_errors_and_resets() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let p = proxy();
    let pc = proxied_client(&p);
    // With this seed and parts sent one at a time, the draws inject both
    // kinds of fault and never fail one part more than twice in a row.
    p.set(Faults {
        upload_part_500: 0.3,
        upload_part_reset: 0.1,
        seed: 15,
        ..Default::default()
    });
    let key = "big/file.bin";
    let parts: Vec<Vec<u8>> = (0..6).map(|i| data(5 * MIB, 100 + i)).collect();
    let started = Instant::now();
    let (id, etags) = upload_in_parts(&pc, &b, key, &parts, |_| {}).await;
    let md5s: Vec<[u8; 16]> = parts.iter().map(|d| md5_of(d)).collect();
    let etag = pc
        .complete_multipart_upload(&b, key, &id, &etags)
        .await
        .unwrap();
    assert_eq!(bare_etag(&etag), bare_etag(&multipart_etag(&md5s)));
    let elapsed = started.elapsed();

    // The server holds exactly the parts, read without the proxy.
    let g = c.get_object(&b, key, None, None).await.unwrap();
    assert_eq!(g.body.len(), 30 * MIB);
    assert!(
        g.body[..] == parts.concat()[..],
        "object differs from the parts"
    );

    let s = p.stats();
    let retries = pc
        .counters()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("upload took {elapsed:?}; {retries} retries; {s:?}");
    assert!(retries > 0, "no retries: {s:?}");
    assert!(s.injected_500 > 0 && s.injected_reset > 0, "{s:?}");
    assert_eq!(s.injected_stall, 0, "{s:?}");
    assert_eq!(retries, s.injected_500 + s.injected_reset, "{s:?}");
    assert_eq!(
        s.upload_parts,
        6 + s.injected_500 + s.injected_reset,
        "{s:?}"
    );
    assert_eq!(
        pc.counters().requests(Op::UploadPart),
        s.upload_parts,
        "{s:?}"
    );
    assert!(c.list_uploads(&b, "").await.unwrap().is_empty());
}

/// GETs whose answers are cut off mid-body (the connection reset after
/// about half the body) are sent again: whole and ranged GETs, and the
/// read path's GETs that keep the body in pieces, all come back
/// byte-exact, and each cut cost one retry.
#[tokio::test]
async fn gets_cut_off_mid_body_are_retried_byte_exact() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let body = data(6 * MIB + 5, 31);
    put(&c, &b, "obj", &body).await;
    let p = proxy();
    let pc = proxied_client(&p);
    p.set(Faults {
        get_cut: 0.4,
        seed: 7,
        ..Default::default()
    });
    let g = pc.get_object(&b, "obj", None, None).await.unwrap();
    assert!(g.body[..] == body[..], "whole GET differs");
    let ranges = [0..MIB, MIB + 3..4 * MIB, 4 * MIB..body.len(), 17..18];
    for _ in 0..4 {
        for r in ranges.iter().cloned() {
            let range = r.start as u64..r.end as u64;
            let g = pc
                .get_object(&b, "obj", Some(range.clone()), None)
                .await
                .unwrap();
            assert!(g.body[..] == body[r.clone()], "ranged GET {r:?} differs");
            let f = pc.get_object_frames(&b, "obj", range, None).await.unwrap();
            assert_eq!(bare_etag(&f.etag), hex(&md5_of(&body)), "the object's ETag");
            let joined: Vec<u8> = f.pieces.iter().flat_map(|p| p.iter().copied()).collect();
            assert!(joined[..] == body[r.clone()], "GET in pieces {r:?} differs");
        }
    }
    let s = p.stats();
    let retries = pc
        .counters()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{retries} retries; {s:?}");
    assert!(s.injected_cut >= 5, "{s:?}");
    assert_eq!(retries, s.injected_cut, "one retry per cut: {s:?}");
    assert_eq!(s.gets, 1 + 2 * 16 + s.injected_cut, "{s:?}");
}

/// A PutObject during a total outage fails (after its retries) and leaves
/// nothing; once the outage ends the same client works again.
async fn outage(kind: FailAll) -> S3Error {
    let c = client();
    let b = fresh_bucket(&c).await;
    let p = proxy();
    let pc = proxied_client(&p);
    p.set(Faults {
        fail_all: Some(kind),
        ..Default::default()
    });
    let body = data(100_000, 21);
    let started = Instant::now();
    let err = pc
        .put_object(&b, "k", body.clone().into(), None, &PutOptions::default())
        .await
        .expect_err("PutObject during an outage");
    let attempts = pc.counters().requests(Op::PutObject);
    let s = p.stats();
    eprintln!(
        "{kind:?}: failed after {:?}, {attempts} attempts: {err}; {s:?}",
        started.elapsed()
    );
    assert!(attempts > 1, "retried: {s:?}");
    assert!(s.refused >= attempts, "{s:?}");
    assert_eq!(s.forwarded, 0, "{s:?}");
    let e = c.head_object(&b, "k", None).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");

    p.set(Faults::default());
    pc.put_object(&b, "k", body.clone().into(), None, &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(
        c.head_object(&b, "k", None).await.unwrap().size,
        body.len() as u64
    );
    err
}

#[tokio::test]
async fn outage_503_fails_cleanly() {
    let e = outage(FailAll::Status(503)).await;
    assert_eq!(e.status(), Some(503), "{e}");
    assert_eq!(e.code(), Some("SlowDown"), "{e}");
}

#[tokio::test]
async fn outage_reset_fails_cleanly() {
    let e = outage(FailAll::Reset).await;
    assert!(matches!(e, S3Error::Transport { .. }), "{e}");
}

// ---- the proxy itself, against a scripted upstream (no S3 server needed) ----

/// An upstream that accepts one connection, records the request head, answers
/// `answer` and closes.
fn scripted_upstream(answer: &'static [u8]) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "upstream: EOF inside the head");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).unwrap();
        got
    });
    (url, t)
}

/// A raw client: sends `req`, returns everything answered until EOF.
fn raw_exchange(url: &str, req: &[u8]) -> Vec<u8> {
    let mut s = std::net::TcpStream::connect(url.strip_prefix("http://").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn forwards_the_head_byte_exact_but_for_connection() {
    let (up, t) = scripted_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nconnection: keep-alive\r\nKeep-Alive: timeout=5\r\nETag: \"x\"\r\n\r\nhello",
    );
    let p = FaultProxy::start(&up);
    let answer = raw_exchange(
        &p.url(),
        b"GET /b/k%20x?list-type=2&prefix=a HTTP/1.1\r\nHost: 127.0.0.1:3900\r\nConnection: keep-alive\r\nX-Amz-Date: 20240101T000000Z\r\nauthorization: AWS4-HMAC-SHA256 Credential=x\r\n\r\n",
    );
    assert_eq!(
        t.join().unwrap(),
        b"GET /b/k%20x?list-type=2&prefix=a HTTP/1.1\r\nHost: 127.0.0.1:3900\r\nX-Amz-Date: 20240101T000000Z\r\nauthorization: AWS4-HMAC-SHA256 Credential=x\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8(answer).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"x\"\r\nConnection: close\r\n\r\nhello"
    );
}

#[test]
fn upload_part_faults_and_refusals_at_the_socket() {
    // Nothing listens upstream: no request here may be forwarded.
    let p = FaultProxy::start("http://127.0.0.1:9");
    let part = |body: usize| {
        let mut r = format!(
            "PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nHost: h\r\nContent-Length: {body}\r\n\r\n"
        )
        .into_bytes();
        r.resize(r.len() + body, b'x');
        r
    };

    p.set(Faults {
        upload_part_500: 1.0,
        ..Default::default()
    });
    let a = String::from_utf8(raw_exchange(&p.url(), &part(100_000))).unwrap();
    assert!(
        a.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{a}"
    );
    assert!(a.contains("\r\nConnection: close\r\n"), "{a}");
    assert!(a.ends_with("<Code>InternalError</Code><Message>injected</Message><RequestId>proxy</RequestId></Error>"), "{a}");

    // An UploadPartCopy is not an UploadPart: forwarded (here: 502, no upstream).
    let a = raw_exchange(
        &p.url(),
        b"PUT /b/k?partNumber=1&uploadId=u HTTP/1.1\r\nHost: h\r\nx-amz-copy-source: /b/s\r\n\r\n",
    );
    assert!(
        a.starts_with(b"HTTP/1.1 502 "),
        "{}",
        String::from_utf8_lossy(&a)
    );

    p.set(Faults {
        upload_part_reset: 1.0,
        ..Default::default()
    });
    let mut s = std::net::TcpStream::connect(p.url().strip_prefix("http://").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&part(100_000)).unwrap();
    let e = s.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");

    // A stall reads half the body, never answers, and notices the close.
    p.set(Faults {
        upload_part_stall: 1.0,
        ..Default::default()
    });
    let mut s = std::net::TcpStream::connect(p.url().strip_prefix("http://").unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s.write_all(&part(60_000)).unwrap();
    let e = s.read(&mut [0u8; 16]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    drop(s);
    await_stall_closed(&p, "stall not released");

    p.set(Faults {
        fail_all: Some(FailAll::Status(503)),
        ..Default::default()
    });
    let a =
        String::from_utf8(raw_exchange(&p.url(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")).unwrap();
    assert!(a.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{a}");
    assert!(a.contains("<Code>SlowDown</Code>"), "{a}");

    // Chunked request bodies are not supported.
    p.set(Faults::default());
    let a = raw_exchange(
        &p.url(),
        b"PUT /b/k HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(
        a.starts_with(b"HTTP/1.1 501 "),
        "{}",
        String::from_utf8_lossy(&a)
    );

    let s = p.stats();
    assert_eq!(
        (
            s.upload_parts,
            s.injected_500,
            s.injected_reset,
            s.injected_stall
        ),
        (3, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(
        (s.refused, s.forwarded, s.upstream_errors),
        (1, 0, 1),
        "{s:?}"
    );
}

/// Uploads `n` parts of a little over 1 MiB as `key` through a proxy that
/// takes `faults` just before part 10 (9 parts have been timed by then, so
/// a hedge may fire), with attempts whose fixed deadline is
/// `request_timeout`; completes it and checks the object through the
/// server itself. The upload must end within 60 s: that bound only tells a
/// part left waiting out a hung attempt's deadline from progress. Returns
/// the client (for its counters) and the proxy.
async fn upload_with_part_10_faulted(
    key: &str,
    n: u64,
    seed: u64,
    request_timeout: Duration,
    faults: Faults,
) -> (Client, FaultProxy) {
    let c = client();
    let b = fresh_bucket(&c).await;
    let p = proxy();
    let cfg = S3Config::from_env(&ConfigOverrides {
        endpoint_url: Some(p.url()),
        request_timeout: Some(request_timeout),
        ..Default::default()
    })
    .unwrap();
    let pc = Client::new(cfg).unwrap();
    let parts: Vec<Vec<u8>> = (0..n).map(|i| data(MIB + i as usize, seed + i)).collect();
    let upload = upload_in_parts(&pc, &b, key, &parts, |n| {
        if n == 10 {
            p.set(faults.clone());
        }
    });
    let (id, etags) = tokio::time::timeout(Duration::from_secs(60), upload)
        .await
        .expect("the part waited for the hung attempt's deadline");
    pc.complete_multipart_upload(&b, key, &id, &etags)
        .await
        .unwrap();
    let g = c.get_object(&b, key, None, None).await.unwrap();
    assert!(
        g.body[..] == parts.concat()[..],
        "object differs from the parts"
    );
    (pc, p)
}

/// A part the server reads whole and never answers (Garage on sqlite did
/// that in 4 of 25 3 GiB uploads here) is sent again on another
/// connection once it has taken 8 times the median of the parts before it
/// (at least 2 s), not after its deadline: the upload completes byte-exact,
/// one hedge is counted and no retry, and the hung connection is closed.
/// (Without the hedge the part waits for its 64 s deadline.)
#[tokio::test]
async fn a_part_never_answered_is_sent_again_on_another_connection() {
    use std::sync::atomic::Ordering::Relaxed;
    let faults = Faults {
        upload_part_hang_next: 1,
        ..Default::default()
    };
    let (pc, p) =
        upload_with_part_10_faulted("hedged.bin", 11, 200, Duration::from_secs(60), faults).await;
    let s = p.stats();
    assert_eq!(s.injected_hang, 1, "{s:?}");
    assert_eq!(pc.counters().hedges.load(Relaxed), 1, "{s:?}");
    assert_eq!(pc.counters().retries.load(Relaxed), 0, "{s:?}");
    assert_eq!(s.upload_parts, 12, "11 parts and one hedge: {s:?}");
    assert_eq!(pc.counters().requests(Op::UploadPart), 12);
    // The winner's answer closed the hung attempt's connection.
    await_stall_closed(&p, "hung connection kept");
}

/// A hedge that fails is sent again at once by the retry loop, not after
/// the hung first attempt's deadline (600 s here): the upload ends with one
/// hedge and one retry (the old behaviour waited the whole 600 s).
#[tokio::test]
async fn a_failed_hedge_is_retried_without_waiting_for_the_hung_attempt() {
    use std::sync::atomic::Ordering::Relaxed;
    let faults = Faults {
        upload_part_hang_next: 1,
        upload_part_500_next: 1,
        ..Default::default()
    };
    let (pc, p) = upload_with_part_10_faulted(
        "hedge-failed.bin",
        10,
        300,
        Duration::from_secs(600),
        faults,
    )
    .await;
    let s = p.stats();
    assert_eq!((s.injected_hang, s.injected_500), (1, 1), "{s:?}");
    assert_eq!(pc.counters().hedges.load(Relaxed), 1, "{s:?}");
    assert_eq!(pc.counters().retries.load(Relaxed), 1, "{s:?}");
    assert_eq!(
        s.upload_parts, 12,
        "9 parts, then hang, hedge, retry: {s:?}"
    );
    await_stall_closed(&p, "hung connection kept");
}
