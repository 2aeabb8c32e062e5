//! `bucketfs uploads list/abort` against a real server holding 1,005 uploads.

mod common;

use bucketfs::s3::{Client, PutOptions};
use common::*;
use std::process::{Command, Output};
use std::sync::Arc;

fn bucketfs(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bucketfs"));
    cmd.args(args).env_remove("BUCKETFS_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run bucketfs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

async fn create_uploads(c: &Client, b: &str, keys: Vec<String>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for k in keys {
        let (c, b, sem) = (c.clone(), b.to_string(), sem.clone());
        set.spawn(async move {
            let _p = sem.acquire_owned().await.unwrap();
            c.create_multipart_upload(&b, &k, &PutOptions::default())
                .await
                .unwrap();
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

fn boto_upload_keys(b: &str) -> Vec<String> {
    let v = s3ref_json(&["uploads", b, ""]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[0].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_prints_all_1005_and_abort_takes_exactly_the_prefix() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let mut keys: Vec<String> = (0..1000).map(|i| format!("keep/{i:04}")).collect();
    // Five under the prefix to abort, one with a newline that must not forge a line.
    keys.extend((0..4).map(|i| format!("drop/{i}")));
    keys.push("drop/evil\nfake-key fake-id 2020-01-01T00:00:00Z".to_string());
    create_uploads(&c, &b, keys).await;

    let out = bucketfs(&["uploads", "list", &b], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1005, "one line per upload, across pages");
    for l in &lines {
        let mut f = l.rsplitn(3, ' ');
        let initiated = f.next().unwrap();
        let id = f.next().unwrap();
        let key = f.next().unwrap();
        assert!(humantime::parse_rfc3339(initiated).is_ok(), "{l}");
        assert!(
            !id.is_empty() && (key.starts_with("keep/") || key.starts_with("drop/")),
            "{l}"
        );
    }
    assert!(text.contains("drop/evil\\nfake-key"), "newline escaped");

    let out = bucketfs(&["uploads", "list", &format!("{b}/drop/")], &[]);
    assert_eq!(stdout(&out).lines().count(), 5);

    // A bare abort is refused: it would kill live uploads of running mounts.
    let out = bucketfs(&["uploads", "abort", &format!("{b}/drop/")], &[]);
    assert!(!out.status.success());
    assert_eq!(boto_upload_keys(&b).len(), 1005);

    // Nothing is older than an hour.
    let out = bucketfs(&["uploads", "abort", &b, "--older-than", "1h"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("aborted 0 uploads (1005 kept"),
        "{}",
        stdout(&out)
    );

    let out = bucketfs(&["uploads", "abort", &format!("{b}/drop/"), "--all"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("aborted 5 uploads"),
        "{}",
        stdout(&out)
    );
    let left = boto_upload_keys(&b);
    assert_eq!(left.len(), 1000);
    assert!(left.iter().all(|k| k.starts_with("keep/")));

    // Everything is older than zero seconds.
    let out = bucketfs(&["uploads", "abort", &b, "--older-than", "0s"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("aborted 1000 uploads"),
        "{}",
        stdout(&out)
    );
    assert!(boto_upload_keys(&b).is_empty());
}

#[tokio::test]
async fn wrong_secret_gives_one_clear_line() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let secret = "f".repeat(64);
    let out = bucketfs(
        &["uploads", "list", &b],
        &[("AWS_SECRET_ACCESS_KEY", &secret)],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("bucketfs: "), "{err}");
    assert!(err.contains("HTTP 403"), "{err}");
    assert!(!err.contains(&secret), "the secret never appears");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// A session token is a secret too: not in a trace log, whatever the
/// server makes of it.
#[tokio::test]
async fn a_session_token_never_reaches_the_log() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let token = "IQoJb3JpZ2luX2VjEBucketfsSessionTokenNotForLogs0123456789";
    let out = bucketfs(
        &["uploads", "list", &b],
        &[("AWS_SESSION_TOKEN", token), ("BUCKETFS_LOG", "trace")],
    );
    let err = stderr(&out);
    assert!(
        err.contains("TRACE") || err.contains("DEBUG"),
        "trace logging is on: {err}"
    );
    assert!(
        !err.contains(token),
        "the session token is in the log: {err}"
    );
    assert!(!stdout(&out).contains(token));
}

#[tokio::test]
async fn unknown_bucket_gives_one_clear_line() {
    let out = bucketfs(&["uploads", "list", "no-such-bucket-bucketfs"], &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("NoSuchBucket"), "{err}");
}

#[test]
fn secrets_are_not_accepted_on_the_command_line() {
    let out = bucketfs(&["--secret-access-key", "x", "uploads", "list", "b"], &[]);
    assert!(!out.status.success());
    let help = stdout(&bucketfs(&["--help"], &[]));
    assert!(help.contains("AWS_SECRET_ACCESS_KEY"));
    assert!(!help.to_lowercase().contains("--secret"));
}
