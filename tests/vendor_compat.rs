//! Vendor options and long-running mounts: storage class, vendor headers
//! and ACL reach the server; Content-Type follows file names (and renames);
//! SSE-C round-trips; ListObjects V1; two mounts of one bucket; a wrong
//! region is corrected from the server's answer; a rotated credentials file
//! is re-read. Checked through S3 itself and, for headers Garage does not
//! keep, at the request (the tests' proxy records what was sent).

mod common;

use common::mount::Mounted;
use common::proxy::FaultProxy;
use md5::{Digest, Md5};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case(name) && v.trim() == value)
    })
}

/// The request heads whose request line starts with `start` (e.g. "PUT /b/k").
fn heads_of(p: &FaultProxy, start: &str) -> Vec<String> {
    p.heads()
        .into_iter()
        .filter(|h| h.starts_with(start))
        .collect()
}

#[test]
fn storage_class_headers_acl_and_content_type_reach_the_server() {
    let c = common::client();
    let b = rt().block_on(common::fresh_bucket(&c));
    let proxy = FaultProxy::start(&common::require_env("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let m = Mounted::new(
        &b,
        &[
            "--endpoint-url",
            &url,
            "--storage-class",
            "STANDARD",
            "--header",
            "x-kss-storage-class:STANDARD_IA",
            "--acl",
            "private",
        ],
        &[],
    );
    std::fs::write(m.path("page.html"), b"<p>hi</p>").unwrap();
    std::fs::write(m.path("movie.mp4"), common::data(17 * MIB, 3)).unwrap();
    // rsync's pattern: a temporary name without a type, renamed.
    std::fs::write(m.path(".style.css.Xy12Zq"), b"p{}").unwrap();
    m.run(
        Command::new("mv")
            .arg(m.path(".style.css.Xy12Zq"))
            .arg(m.path("style.css")),
    );
    // A rename that keeps the type is a COPY-directive copy: it still
    // carries the mount's storage class, ACL and headers.
    std::fs::write(m.path("a.bin"), b"bytes").unwrap();
    m.run(Command::new("mv").arg(m.path("a.bin")).arg(m.path("b.bin")));

    let ct = |k: &str| {
        rt().block_on(c.head_object(&b, k, None))
            .unwrap()
            .content_type
    };
    assert_eq!(ct("page.html").as_deref(), Some("text/html"));
    assert_eq!(ct("movie.mp4").as_deref(), Some("video/mp4"));
    assert_eq!(ct("style.css").as_deref(), Some("text/css"));

    let put = heads_of(&proxy, &format!("PUT /{b}/page.html "));
    let create = heads_of(&proxy, &format!("POST /{b}/movie.mp4?uploads"));
    let copy: Vec<String> = heads_of(&proxy, &format!("PUT /{b}/style.css "))
        .into_iter()
        .filter(|h| h.to_ascii_lowercase().contains("x-amz-copy-source:"))
        .collect();
    let plain_copy: Vec<String> = heads_of(&proxy, &format!("PUT /{b}/b.bin "))
        .into_iter()
        .filter(|h| has_header(h, "x-amz-metadata-directive", "COPY"))
        .collect();
    for (what, hs) in [
        ("PutObject", put),
        ("Create", create),
        ("CopyObject", copy),
        ("CopyObject COPY", plain_copy),
    ] {
        assert_eq!(hs.len(), 1, "{what}: {hs:?}");
        let h = &hs[0];
        assert!(
            has_header(h, "x-amz-storage-class", "STANDARD"),
            "{what}: {h}"
        );
        assert!(
            has_header(h, "x-kss-storage-class", "STANDARD_IA"),
            "{what}: {h}"
        );
        assert!(has_header(h, "x-amz-acl", "private"), "{what}: {h}");
    }
}

#[test]
fn sse_c_objects_round_trip_and_need_the_key() {
    use base64::Engine;
    let c = common::client();
    let b = rt().block_on(common::fresh_bucket(&c));
    let key = [7u8; 32];
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let m = Mounted::new(
        &b,
        &["--sse", "c"],
        &[("BUCKETFS_SSE_C_KEY", &b64), ("BUCKETFS_LOG", "trace")],
    );
    let small = b"secret words".to_vec();
    let big = common::data(17 * MIB, 4);
    std::fs::write(m.path("small"), &small).unwrap();
    std::fs::write(m.path("big"), &big).unwrap();
    m.run(Command::new("mv").arg(m.path("big")).arg(m.path("big2")));
    assert_eq!(std::fs::read(m.path("small")).unwrap(), small);
    let back = std::fs::read(m.path("big2")).unwrap();
    assert!(back == big, "big2 differs through the mount");
    let log = m.log();
    assert!(log.contains("TRACE"), "trace logging is on");
    assert!(!log.contains(&b64), "the SSE-C key is in the log");

    // Without the key the server refuses; with it, the bytes are ours.
    assert!(rt()
        .block_on(c.get_object(&b, "small", None, None))
        .is_err());
    let sse = bucketfs::s3::Sse::Customer { key };
    let got = rt()
        .block_on(c.get_object(&b, "big2", None, Some(&sse)))
        .unwrap();
    assert_eq!(Md5::digest(&got.body), Md5::digest(&big));
    // A key that is not base64 of 32 bytes is refused before mounting.
    let out = Command::new(env!("CARGO_BIN_EXE_bucketfs"))
        .args(["mount", &b, "/nonexistent", "--sse", "c"])
        .env("BUCKETFS_SSE_C_KEY", "c2hvcnQ=")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("BUCKETFS_SSE_C_KEY"));
}

#[test]
fn list_type_1_pages_through_every_key() {
    let c = common::client();
    let b = rt().block_on(common::fresh_bucket(&c));
    rt().block_on(common::put_many(&c, &b, "d/f", 1100, b"x"));
    rt().block_on(common::put_many(&c, &b, "e/", 3, b"y"));
    let proxy = FaultProxy::start(&common::require_env("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let m = Mounted::new(&b, &["--list-type", "1", "--endpoint-url", &url], &[]);
    let n = std::fs::read_dir(m.path("d")).unwrap().count();
    assert_eq!(n, 1100);
    let mut top: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["d", "e"]);
    // V1 on the wire: no list-type, and the second page of d/ by marker.
    let lists = heads_of(&proxy, &format!("GET /{b}?"));
    assert!(!lists.is_empty());
    assert!(lists
        .iter()
        .all(|h| !h.lines().next().unwrap().contains("list-type")));
    assert!(
        lists
            .iter()
            .any(|h| h.lines().next().unwrap().contains("marker=d%2Ff")),
        "{lists:?}"
    );
}

/// Two mounts of one bucket: a file written through one shows in the other
/// within the metadata TTL; two writers of one key: the last Complete wins,
/// whole, never a mix.
#[test]
fn two_mounts_of_one_bucket() {
    let c = common::client();
    let b = rt().block_on(common::fresh_bucket(&c));
    let a = Mounted::new(&b, &["--metadata-ttl", "1s"], &[]);
    let z = Mounted::new(&b, &["--metadata-ttl", "1s"], &[]);
    // z looks first, so its cache says "no such file" for a while.
    assert!(!z.path("note.txt").exists());
    std::fs::write(a.path("note.txt"), b"from a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::fs::read(z.path("note.txt")).ok().as_deref() == Some(b"from a".as_slice()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not visible through the other mount"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let x = common::data(17 * MIB, 5);
    let y = common::data(19 * MIB, 6);
    let (pa, pz) = (a.path("same.bin"), z.path("same.bin"));
    let (x2, y2) = (x.clone(), y.clone());
    let t1 = std::thread::spawn(move || std::fs::write(pa, x2));
    let t2 = std::thread::spawn(move || std::fs::write(pz, y2));
    t1.join().unwrap().unwrap();
    t2.join().unwrap().unwrap();
    let got = rt()
        .block_on(c.get_object(&b, "same.bin", None, None))
        .unwrap();
    let sum = Md5::digest(&got.body);
    assert!(
        sum == Md5::digest(&x) || sum == Md5::digest(&y),
        "a mixed object of {} bytes",
        got.body.len()
    );
    assert!(rt().block_on(c.list_uploads(&b, "")).unwrap().is_empty());
}

/// A client signing for the wrong region learns the right one from the
/// server's AuthorizationHeaderMalformed, once, and carries on.
#[test]
fn a_wrong_region_is_corrected_from_the_answer() {
    let mut cfg = common::client().config().clone();
    cfg.region = "eu-west-9".into();
    let c = bucketfs::s3::Client::new(cfg).unwrap();
    let b = rt().block_on(common::fresh_bucket(&common::client()));
    rt().block_on(c.head_bucket(&b)).expect("corrected");
    assert_eq!(c.region(), common::require_env("AWS_REGION"));
}

/// Temporary credentials rotate: the credentials file is re-read when it
/// changes, so a long-running mount keeps working.
#[test]
fn a_changed_credentials_file_is_re_read() {
    let base = common::client().config().clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    let write = |secret: &str| {
        std::fs::write(
            &file,
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {secret}\n",
                base.credentials.access_key_id
            ),
        )
        .unwrap();
    };
    let good = base.credentials.secret_access_key.clone();
    write(&good);
    let mut cfg = base.clone();
    cfg.credentials_file = Some((file.clone(), "default".into()));
    let c = bucketfs::s3::Client::new(cfg).unwrap();
    let b = rt().block_on(common::fresh_bucket(&common::client()));
    rt().block_on(c.head_bucket(&b)).expect("good credentials");
    std::thread::sleep(Duration::from_millis(1100));
    write(&"0".repeat(64));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(
        rt().block_on(c.head_bucket(&b)).is_err(),
        "the new (wrong) secret is used"
    );
    write(&good);
    std::thread::sleep(Duration::from_millis(1100));
    rt().block_on(c.head_bucket(&b))
        .expect("the rotated secret is used");
}

/// Several endpoints: a refused connection or a 5xx moves requests to the
/// next one, and they stay there.
#[test]
fn requests_fail_over_to_the_next_endpoint() {
    let real = common::require_env("AWS_ENDPOINT_URL");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }; // the listener is closed: connections are refused
    let proxy = FaultProxy::start(&real);
    proxy.set(common::proxy::Faults {
        fail_all: Some(common::proxy::FailAll::Status(503)),
        ..Default::default()
    });
    let b = rt().block_on(common::fresh_bucket(&common::client()));
    for first in [dead, proxy.url()] {
        let mut cfg = common::client().config().clone();
        cfg.endpoint = bucketfs::s3::config::parse_endpoint(&first).unwrap();
        cfg.extra_endpoints = vec![bucketfs::s3::config::parse_endpoint(&real).unwrap()];
        let c = bucketfs::s3::Client::new(cfg).unwrap();
        let body = bytes::Bytes::from_static(b"over");
        rt().block_on(c.put_object(&b, "k", body, None, &Default::default()))
            .unwrap_or_else(|e| panic!("via {first}: {e}"));
        assert_eq!(
            c.endpoint().as_str().trim_end_matches('/'),
            real.trim_end_matches('/')
        );
        let got = rt().block_on(c.get_object(&b, "k", None, None)).unwrap();
        assert_eq!(&got.body[..], b"over");
    }
    assert!(proxy.stats().refused >= 1);
}
