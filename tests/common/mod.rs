//! Shared helpers for the integration tests: a client for the local Garage
//! that `scripts/test.sh` starts, fresh buckets, and the independent boto3
//! reference client (`tests/s3ref.py`).
#![allow(dead_code)]

use bucketfs::s3::{Client, ConfigOverrides, S3Config};
use std::io::Write;
use std::process::{Command, Stdio};

/// close(2) with its result (dropping a File ignores it).
pub fn close(f: std::fs::File) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: fd was just released by the File and is closed once.
    if unsafe { libc::close(fd) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One `x-amz-meta-*` value of a HEAD (name without the prefix).
pub fn meta<'a>(h: &'a bucketfs::s3::ObjectHead, k: &str) -> Option<&'a str> {
    h.metadata.get(k).map(String::as_str)
}

/// An environment variable the test harness must set; a clear failure otherwise.
pub fn require_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests with scripts/test.sh, which starts a local Garage")
    })
}

/// A client for the test server, configured from the environment as a user's would be.
pub fn client() -> Client {
    require_env("AWS_ENDPOINT_URL");
    let cfg = S3Config::from_env(&ConfigOverrides::default()).expect("config from env");
    Client::new(cfg).expect("client")
}

/// Creates a bucket with a random name, so tests never see each other's objects.
pub async fn fresh_bucket(c: &Client) -> String {
    let name = format!("t{:016x}", fastrand::u64(..));
    c.create_bucket(&name).await.expect("create bucket");
    name
}

/// Stores `count` objects `PREFIX00000`, `PREFIX00001`, ... holding `body`, 32 at a time.
pub async fn put_many(c: &Client, bucket: &str, prefix: &str, count: usize, body: &'static [u8]) {
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..count {
        let (c, b, sem, key) = (
            c.clone(),
            bucket.to_string(),
            sem.clone(),
            format!("{prefix}{i:05}"),
        );
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            let opts = bucketfs::s3::PutOptions::default();
            c.put_object(&b, &key, bytes::Bytes::from_static(body), None, &opts)
                .await
                .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Stores `body` at `key` with default options.
pub async fn put(c: &Client, bucket: &str, key: &str, body: &[u8]) {
    let opts = bucketfs::s3::PutOptions::default();
    c.put_object(bucket, key, body.to_vec().into(), None, &opts)
        .await
        .unwrap_or_else(|e| panic!("storing {key}: {e}"));
}

/// Every key of the bucket, sorted.
pub async fn keys(c: &Client, b: &str) -> Vec<String> {
    let mut all: Vec<String> = c
        .list_objects_all(b, "", None)
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    all.sort();
    all
}

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Runs the boto3 reference client; Ok(stdout) or Err(stderr).
pub fn s3ref(args: &[&str], stdin: &[u8]) -> Result<Vec<u8>, String> {
    let python = require_env("BUCKETFS_PYTHON");
    let script = require_env("BUCKETFS_S3REF");
    let mut child = Command::new(python)
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn s3ref.py");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("s3ref.py output");
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The reference client's JSON answer, parsed.
pub fn s3ref_json(args: &[&str]) -> serde_json::Value {
    let out = s3ref(args, b"").unwrap_or_else(|e| panic!("s3ref {args:?}: {e}"));
    serde_json::from_slice(&out).expect("s3ref JSON")
}
pub mod mount;
pub mod proxy;

/// The key that stands for a directory `dir` made through the mount: its
/// marker `dir/`, or, on SeaweedFS (whose markers keep no metadata, see
/// tests/conformance.rs), the attributes object the mount stores instead.
pub fn dir_key(dir: &str) -> String {
    match std::env::var("BUCKETFS_TEST_SERVER").as_deref() {
        Ok("seaweedfs") => format!("{dir}/.bucketfs-directory"),
        _ => format!("{dir}/"),
    }
}

/// Keys as owned strings, sorted as a listing returns them.
pub fn sorted<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Vec<String> {
    let mut v: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
    v.sort();
    v
}
