//! Nothing lost, nothing left behind: copies through a proxy that fails
//! UploadParts, reads through one that cuts GETs off, a total outage, kill
//! -9 and SIGTERM of the daemon mid-file.
//! Every outcome is checked through S3 itself (GET, HEAD, ListMultipartUploads)
//! with a client that talks to Garage directly, never through the proxy.

mod common;

use common::close;
use common::mount::Mounted;
use common::proxy::{FailAll, FaultProxy, Faults};
use md5::{Digest, Md5};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// In-progress uploads of the bucket, asked of Garage directly.
fn uploads(c: &bucketfs::s3::Client, bucket: &str) -> Vec<String> {
    rt().block_on(c.list_uploads(bucket, ""))
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect()
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Opens `path` in the mount and writes 17 MiB: part 1 (8 MiB) is held,
/// part 2 goes out, so the multipart upload exists on the server once
/// `uploads` shows it. The file stays open.
fn start_big_file(path: &Path, c: &bucketfs::s3::Client, bucket: &str) -> std::fs::File {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&common::data(17 * MIB, 7)).unwrap();
    wait_for("the multipart upload to exist", 30, || {
        !uploads(c, bucket).is_empty()
    });
    f
}

fn head_is_absent(c: &bucketfs::s3::Client, bucket: &str, key: &str) -> bool {
    matches!(rt().block_on(c.head_object(bucket, key, None)), Err(e) if e.is_not_found())
}

/// 20 files of 40 MiB through a proxy that fails 20% of UploadParts (500s,
/// resets after the body, stalls): every file lands byte-exact, no upload
/// is left, and the retries show in the log.
#[test]
fn copies_land_byte_exact_through_failing_parts() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let proxy = FaultProxy::start(&common::require_env("AWS_ENDPOINT_URL"));
    proxy.set(Faults {
        upload_part_500: 0.10,
        upload_part_reset: 0.05,
        upload_part_stall: 0.05,
        seed: 2026,
        ..Faults::default()
    });
    let url = proxy.url();
    // Short deadlines so a stalled part is cut off in seconds; enough
    // attempts that 20% failures never exhaust them (0.2^10).
    let m = Mounted::new(
        &bucket,
        &[
            "--endpoint-url",
            &url,
            "--request-timeout",
            "2s",
            "--min-transfer-rate",
            "16MiB",
            "--max-attempts",
            "10",
        ],
        &[],
    );
    let src = tempfile::tempdir().unwrap();
    let mut sums = Vec::new();
    for i in 0..20 {
        let body = common::data(40 * MIB, 100 + i);
        std::fs::write(src.path().join(format!("f{i:02}")), &body).unwrap();
        sums.push(Md5::digest(&body).to_vec());
    }
    // Four cp processes at a time, five files each.
    let mut procs: Vec<_> = (0..4)
        .map(|k| {
            let mut cmd = Command::new("cp");
            for i in (k..20).step_by(4) {
                cmd.arg(src.path().join(format!("f{i:02}")));
            }
            cmd.arg(&m.dir).spawn().unwrap()
        })
        .collect();
    for p in procs.iter_mut() {
        let st = p.wait().unwrap();
        assert!(st.success(), "cp failed\n{}", m.log());
    }
    let stats = proxy.stats();
    let injected = stats.injected_500 + stats.injected_reset + stats.injected_stall;
    assert!(
        stats.injected_500 > 0 && stats.injected_reset > 0 && stats.injected_stall > 0,
        "{stats:?}"
    );
    for (i, sum) in sums.iter().enumerate() {
        let key = format!("f{i:02}");
        let got = rt()
            .block_on(c.get_object(&bucket, &key, None, None))
            .unwrap();
        assert_eq!(&Md5::digest(&got.body).to_vec(), sum, "{key} differs");
    }
    assert!(uploads(&c, &bucket).is_empty(), "uploads left behind");
    let log = m.log();
    assert!(log.contains("retrying"), "no retry logged");
    eprintln!(
        "{} UploadParts, {injected} failed on purpose ({stats:?})",
        stats.upload_parts
    );
}

/// Reads through a proxy that cuts 30% of GET answers off mid-body: `cat`
/// of a 40 MiB object (read-ahead GETs of 1-8 MiB in flight) and reads at
/// scattered offsets return the object's exact bytes; the cuts show as
/// retries in the log, not as errors.
#[test]
fn reads_come_back_exact_through_cut_off_gets() {
    use std::os::unix::fs::FileExt;
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let body = common::data(40 * MIB + 123, 77);
    rt().block_on(common::put(&c, &bucket, "obj.bin", &body));
    let proxy = FaultProxy::start(&common::require_env("AWS_ENDPOINT_URL"));
    proxy.set(Faults {
        get_cut: 0.3,
        seed: 40,
        ..Faults::default()
    });
    let url = proxy.url();
    let m = Mounted::new(
        &bucket,
        &["--endpoint-url", &url, "--max-attempts", "10"],
        &[],
    );
    let out = Command::new("cat").arg(m.path("obj.bin")).output().unwrap();
    assert!(out.status.success(), "cat failed\n{}", m.log());
    assert_eq!(out.stdout.len(), body.len());
    assert!(out.stdout == body, "cat read other bytes");
    let f = std::fs::File::open(m.path("obj.bin")).unwrap();
    for (i, off) in [33 * MIB, 5, 20 * MIB + 7, 40 * MIB]
        .into_iter()
        .enumerate()
    {
        let mut buf = vec![0u8; 300_000];
        let n = f.read_at(&mut buf, off as u64).unwrap();
        assert_eq!(n, 300_000.min(body.len() - off), "read {i}");
        assert!(buf[..n] == body[off..off + n], "read {i} at {off} differs");
    }
    let s = proxy.stats();
    assert!(s.injected_cut > 0, "{s:?}");
    assert!(m.log().contains("retrying"), "no retry logged\n{}", m.log());
}

/// An object replaced by another client while a program reads it: the read
/// that would fetch the new version's bytes fails with ESTALE (and a log
/// line names the key) instead of mixing two versions; reopening reads the
/// new object.
#[test]
fn an_object_replaced_mid_read_gives_estale_not_mixed_bytes() {
    use std::os::unix::fs::FileExt;
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let old = common::data(40 * MIB, 5);
    let put = |body: &Vec<u8>| rt().block_on(common::put(&c, &bucket, "video.mp4", body));
    put(&old);
    let m = Mounted::bucket(&bucket);
    let f = std::fs::File::open(m.path("video.mp4")).unwrap();
    let mut buf = vec![0u8; 128 * 1024];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == old[..buf.len()]);
    let new = common::data(40 * MIB, 6);
    put(&new);
    let e = f.read_exact_at(&mut buf, 30 * MIB as u64).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}\n{}", m.log());
    assert!(m.log().contains("changed while being read"), "{}", m.log());
    drop(f);
    let f = std::fs::File::open(m.path("video.mp4")).unwrap();
    f.read_exact_at(&mut buf, 30 * MIB as u64).unwrap();
    assert!(
        buf[..] == new[30 * MIB..30 * MIB + buf.len()],
        "reopened: the new object"
    );
}

/// Every request fails: close fails, nothing is at the key, and the
/// upload (whose abort failed during the outage) is aborted by the
/// mount once the path recovers.
#[test]
fn an_outage_fails_close_and_the_upload_is_aborted_when_the_path_recovers() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let proxy = FaultProxy::start(&common::require_env("AWS_ENDPOINT_URL"));
    let url = proxy.url();
    let m = Mounted::new(
        &bucket,
        &["--endpoint-url", &url, "--max-attempts", "3"],
        &[],
    );
    let mut f = start_big_file(&m.path("out.bin"), &c, &bucket);
    proxy.set(Faults {
        fail_all: Some(FailAll::Reset),
        ..Faults::default()
    });
    let more = f.write_all(&common::data(8 * MIB, 8));
    let closed = close(f);
    assert!(
        more.is_err() || closed.is_err(),
        "close succeeded during a total outage\n{}",
        m.log()
    );
    if let Err(e) = &closed {
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }
    assert!(head_is_absent(&c, &bucket, "out.bin"));
    assert_eq!(uploads(&c, &bucket), vec!["out.bin".to_string()]);
    proxy.set(Faults::default());
    wait_for("the reaper to abort the upload", 60, || {
        uploads(&c, &bucket).is_empty()
    });
    assert!(head_is_absent(&c, &bucket, "out.bin"));
    assert!(m.log().contains("left-over upload aborted"), "{}", m.log());
}

/// kill -9 mid-file: no object; the next mount (same state directory and
/// mount point) aborts the orphan before it serves.
#[test]
fn after_kill_9_the_next_mount_aborts_the_orphan() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap().to_string();
    let mut m = Mounted::new(&bucket, &["--state-dir", &st], &[]);
    let dir = m.dir.clone();
    let f = start_big_file(&m.path("orphan.bin"), &c, &bucket);
    m.kill();
    drop(f);
    assert!(head_is_absent(&c, &bucket, "orphan.bin"));
    assert_eq!(uploads(&c, &bucket), vec!["orphan.bin".to_string()]);
    let m2 = Mounted::at_with(&bucket, &dir, &["--state-dir", &st]);
    assert!(uploads(&c, &bucket).is_empty(), "{}", m2.log());
    assert!(head_is_absent(&c, &bucket, "orphan.bin"));
    assert!(m2.log().contains("a previous mount left uploads behind"));
}

/// SIGTERM mid-file: the daemon aborts the open file's upload, unmounts
/// and exits 0; no object, no upload; the writer's next call fails.
#[test]
fn sigterm_mid_file_leaves_no_object_and_no_upload() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let mut m = Mounted::new(&bucket, &["--shutdown-grace", "5s"], &[]);
    let mut f = start_big_file(&m.path("cut.bin"), &c, &bucket);
    let log_before = m.log();
    let status = m.terminate(Duration::from_secs(60)).expect("daemon exited");
    assert!(status.success(), "exit {status}\n{log_before}");
    assert!(uploads(&c, &bucket).is_empty());
    assert!(head_is_absent(&c, &bucket, "cut.bin"));
    assert!(!common::mount::is_mounted(&m.dir), "still mounted");
    let later = f.write_all(b"more").and_then(|_| f.flush());
    let closed = close(f);
    assert!(later.is_err() || closed.is_err());
    assert!(head_is_absent(&c, &bucket, "cut.bin"));
}

/// `bucketfs status` shows a file being written, then the totals.
#[test]
fn status_shows_files_being_written_and_totals() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_str().unwrap().to_string();
    let m = Mounted::new(&bucket, &["--state-dir", &st], &[]);
    let status = || {
        m.run(
            Command::new(env!("CARGO_BIN_EXE_bucketfs"))
                .args(["status", "--state-dir", &st])
                .arg(&m.dir),
        )
    };
    let f = start_big_file(&m.path("live.bin"), &c, &bucket);
    let s = status();
    assert!(s.contains("files being written: 1"), "{s}");
    assert!(
        s.contains("live.bin") && s.contains("17.0 MiB written"),
        "{s}"
    );
    close(f).unwrap();
    let s = status();
    assert!(s.contains("files being written: 0"), "{s}");
    assert!(s.contains("1 files stored (17.0 MiB)"), "{s}");
    // The socket is the mounting user's only.
    use std::os::unix::fs::PermissionsExt;
    let sock = std::fs::read_dir(&st)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("control.sock"))
        .find(|p| p.exists())
        .expect("control.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    let bad = Command::new(env!("CARGO_BIN_EXE_bucketfs"))
        .args(["status", "--state-dir", &st, "/nonexistent-mount"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no bucketfs mount"));
}

/// Secrets never reach the log, even at trace level; the mount checks
/// permissions in the kernel and admits other users only when asked.
#[test]
fn trace_logs_hold_no_secret_and_the_mount_is_private() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let m = Mounted::new(&bucket, &[], &[("BUCKETFS_LOG", "trace")]);
    std::fs::write(m.path("small"), b"hello").unwrap();
    std::fs::write(m.path("big"), common::data(17 * MIB, 9)).unwrap();
    assert_eq!(std::fs::read(m.path("small")).unwrap(), b"hello");
    let log = m.log();
    assert!(log.contains("TRACE"), "trace logging is on");
    let secret = common::require_env("AWS_SECRET_ACCESS_KEY");
    assert!(!log.contains(&secret), "the secret key is in the log");
    assert!(!log.contains("Signature="), "a signature is in the log");
    let dir = m.dir.to_string_lossy().to_string();
    let line = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(dir.as_str()))
        .expect("mountinfo line")
        .to_string();
    assert!(line.contains("default_permissions"), "{line}");
    assert!(!line.contains("allow_other"), "{line}");
}

/// A read-write mount needs its journal: an unusable --state-dir stops it
/// with one clear line. A read-only mount starts no upload and goes on.
#[test]
fn the_state_directory_is_required_for_writing_only() {
    let c = common::client();
    let bucket = rt().block_on(common::fresh_bucket(&c));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bucketfs"))
        .args(["mount", &bucket])
        .arg(dir.path())
        .args(["--state-dir", "/proc/bucketfs-cannot-be-here"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("state directory /proc/bucketfs-cannot-be-here"),
        "{err}"
    );
    let m = Mounted::new(
        &bucket,
        &[
            "--read-only",
            "--state-dir",
            "/proc/bucketfs-cannot-be-here",
        ],
        &[],
    );
    assert!(std::fs::read_dir(&m.dir).is_ok());
    assert!(m.log().contains("read-only mount uses a temporary one"));
}
