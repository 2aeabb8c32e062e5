//! The write-through mount on a real Garage: `cp` into the mount, objects
//! checked through S3 itself (GET/HEAD/ListParts), not only through the mount.

mod common;

use bucketfs::s3::*;
use common::mount::{Garage, Mounted};
use common::*;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;
const PART: usize = 8 * MIB;

fn cp(src: &std::path::Path, dst: &std::path::Path) -> std::process::Output {
    Command::new("cp")
        .arg(src)
        .arg(dst)
        .output()
        .expect("run cp")
}

/// Every size class: empty, tiny, just under S3's minimum part, exactly one
/// part (one PUT), one part + 1, 3.5 parts, exactly 4 parts, 100 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_lands_byte_exact_with_the_right_etag_shape() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let src_dir = tempfile::tempdir().unwrap();
    let sizes = [
        0,
        1,
        5 * MIB - 1,
        PART,
        PART + 1,
        PART * 7 / 2,
        4 * PART,
        100 * MIB,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        let body = data(size, 100 + i as u64);
        let name = format!("f{i}-{size}.bin");
        let src = src_dir.path().join(&name);
        std::fs::write(&src, &body).unwrap();
        let out = cp(&src, &m.path(&name));
        assert!(
            out.status.success(),
            "cp {name}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log()
        );

        let g = c.get_object(&b, &name, None, None).await.unwrap();
        assert!(g.body[..] == body[..], "{name}: bucket bytes differ");
        let h = c.head_object(&b, &name, None).await.unwrap();
        let etag = bare_etag(&h.etag);
        let parts = size.div_ceil(PART);
        if parts <= 1 {
            assert_eq!(etag, hex(&md5_of(&body)), "{name}: one PUT, ETag = MD5");
        } else {
            assert!(
                etag.ends_with(&format!("-{parts}")),
                "{name}: {etag} should have {parts} parts"
            );
            let md5s: Vec<[u8; 16]> = body.chunks(PART).map(md5_of).collect();
            assert_eq!(etag, multipart_etag(&md5s), "{name}");
        }
        let back = std::fs::read(m.path(&name)).unwrap();
        assert!(back == body, "{name}: read back through the mount differs");
        let meta = std::fs::metadata(m.path(&name)).unwrap();
        assert_eq!(meta.len(), size as u64);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            meta.blocks(),
            (size as u64).div_ceil(512),
            "{name}: st_blocks"
        );
    }
    assert!(
        c.list_uploads(&b, "").await.unwrap().is_empty(),
        "no upload left behind"
    );
}

/// Parts leave while the file is still open: after 48 MiB at least three
/// parts are on the server (part 1 is held in memory until close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_stream_while_the_writer_holds_the_file() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let body = data(48 * MIB, 7);
    let mut f = std::fs::File::create(m.path("stream.bin")).unwrap();
    f.write_all(&body).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let parts = loop {
        let ups = c.list_uploads(&b, "stream.bin").await.unwrap();
        if let Some(u) = ups.first() {
            let parts = c.list_parts(&b, &u.key, &u.upload_id, None).await.unwrap();
            if parts.len() >= 3 {
                break parts;
            }
        }
        assert!(
            Instant::now() < deadline,
            "parts did not reach the server while the file was open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(parts.iter().all(|p| p.size == PART as u64));
    assert!(
        c.head_object(&b, "stream.bin", None)
            .await
            .unwrap_err()
            .is_not_found(),
        "no object before close"
    );
    drop(f);
    let g = c.get_object(&b, "stream.bin", None, None).await.unwrap();
    assert!(g.body[..] == body[..]);
    assert!(bare_etag(&g.etag).ends_with("-6"), "{}", g.etag);
}

/// A forked child that closes an inherited descriptor must not complete the
/// parent's half-written file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_child_closing_does_not_complete_the_file() {
    use std::os::fd::AsRawFd;
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let first = data(3 * MIB, 1);
    let second = data(2 * MIB, 2);
    let mut f = std::fs::File::create(m.path("forked.bin")).unwrap();
    f.write_all(&first).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe close and _exit.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            libc::close(fd);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        c.head_object(&b, "forked.bin", None)
            .await
            .unwrap_err()
            .is_not_found(),
        "the child's close stored the file"
    );
    f.write_all(&second).unwrap();
    drop(f);
    let g = c.get_object(&b, "forked.bin", None, None).await.unwrap();
    assert!(g.body[..] == [first, second].concat()[..]);
}

/// The server dies mid-file: close fails, so cp reports it, and nothing is at the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_file_fails_close_and_stores_nothing() {
    let g = Garage::start();
    let c = g.client();
    let b = "bucketfs-test";
    let mut m = Mounted::new(b, &[], &[("AWS_ENDPOINT_URL", &g.endpoint)]);
    let mut f = std::fs::File::create(m.path("doomed.bin")).unwrap();
    f.write_all(&data(20 * MIB, 3)).unwrap();
    g.kill();
    let more = f.write_all(&data(20 * MIB, 4));
    let closed = f.sync_all().and(more);
    drop(f);
    assert!(
        closed.is_err(),
        "writing or closing must fail when the server is gone"
    );
    g.resume();
    let e = c.head_object(b, "doomed.bin", None).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    m.unmount();
}

/// close() reports the failure to cp: exit status non-zero, nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_reports_a_dead_server() {
    let g = Garage::start();
    let m = Mounted::new("bucketfs-test", &[], &[("AWS_ENDPOINT_URL", &g.endpoint)]);
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), data(3 * MIB, 9)).unwrap();
    g.kill();
    let out = cp(src.path(), &m.path("small.bin"));
    assert!(!out.status.success(), "cp must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Input/output error"), "{err}");
    g.resume();
    let e = g
        .client()
        .head_object("bucketfs-test", "small.bin", None)
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(m.log().contains("small.bin"), "the log names the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_rmdir_unlink_touch_round_trips() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    std::fs::create_dir(m.path("d")).unwrap();
    let h = c.head_object(&b, "d/", None).await.unwrap();
    assert_eq!(h.size, 0, "mkdir writes a marker");
    std::fs::create_dir(m.path("d/e")).unwrap();
    assert_eq!(
        std::fs::remove_dir(m.path("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    std::fs::remove_dir(m.path("d/e")).unwrap();
    assert!(c
        .head_object(&b, "d/e/", None)
        .await
        .unwrap_err()
        .is_not_found());

    assert!(Command::new("touch")
        .arg(m.path("d/t"))
        .status()
        .unwrap()
        .success());
    let h = c.head_object(&b, "d/t", None).await.unwrap();
    assert_eq!(h.size, 0, "touch creates a 0-byte object");
    std::fs::remove_file(m.path("d/t")).unwrap();
    assert!(c
        .head_object(&b, "d/t", None)
        .await
        .unwrap_err()
        .is_not_found());
    std::fs::remove_dir(m.path("d")).unwrap();
    assert!(c
        .list_objects_all(&b, "", None)
        .await
        .unwrap()
        .objects
        .is_empty());
    assert_eq!(
        std::fs::remove_file(m.path("nope"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ENOENT)
    );
}

/// A directory that exists only as a prefix (no marker) vanishes with its
/// last key: after that key is deleted, rmdir succeeds and the name is gone;
/// a directory made by mkdir stays through its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_only_directory_goes_with_its_last_key() {
    let c = client();
    let b = fresh_bucket(&c).await;
    for k in ["p/only", "q/only"] {
        c.put_object(&b, k, "x".into(), None, &PutOptions::default())
            .await
            .unwrap();
    }
    let m = Mounted::bucket(&b);
    std::fs::create_dir(m.path("made")).unwrap();
    let names = || {
        let mut v: Vec<String> = std::fs::read_dir(&m.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), ["made", "p", "q"]);
    std::fs::remove_file(m.path("p/only")).unwrap();
    std::fs::remove_dir(m.path("p")).unwrap_or_else(|e| panic!("rmdir p: {e}\n{}", m.log()));
    assert!(!m.path("p").exists());
    // Deleted by another client: the prefix is gone once the TTL has passed.
    assert_eq!(names(), ["made", "q"]);
    c.delete_object(&b, "q/only").await.unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SeaweedFS lists an emptied prefix for minutes more (its filer keeps
    // the directory; tests/conformance.rs names this): another client's
    // delete cannot make it go sooner.
    let lingers = std::env::var("BUCKETFS_TEST_SERVER").as_deref() == Ok("seaweedfs");
    let want: &[&str] = if lingers { &["made", "q"] } else { &["made"] };
    assert_eq!(names(), want, "only the mkdir'd directory stays");
    assert!(c.head_object(&b, &dir_key("made"), None).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_with_o_trunc_replaces_the_object() {
    let c = client();
    let b = fresh_bucket(&c).await;
    c.put_object(&b, "f", data(1000, 1).into(), None, &PutOptions::default())
        .await
        .unwrap();
    let m = Mounted::bucket(&b);
    let src = tempfile::NamedTempFile::new().unwrap();
    let new = data(10 * MIB, 2);
    std::fs::write(src.path(), &new).unwrap();
    let out = cp(src.path(), &m.path("f"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g = c.get_object(&b, "f", None, None).await.unwrap();
    assert!(g.body[..] == new[..]);
    // Opening for writing without writing changes nothing.
    drop(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.path("f"))
            .unwrap(),
    );
    assert_eq!(
        c.head_object(&b, "f", None).await.unwrap().size,
        new.len() as u64
    );
}

/// Names: non-UTF-8 is EILSEQ, a key over 1,024 bytes ENAMETOOLONG, xattrs ENOTSUP,
/// ioctls ENOTTY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_xattrs() {
    use std::os::unix::ffi::OsStrExt;
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let bad = m.dir.join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
    assert_eq!(
        std::fs::File::create(&bad).unwrap_err().raw_os_error(),
        Some(libc::EILSEQ)
    );
    let mut deep = m.dir.clone();
    for i in 0..5 {
        deep.push(format!("{i}{}", "d".repeat(200)));
        std::fs::create_dir(&deep).unwrap();
    }
    let e = std::fs::File::create(deep.join("x".repeat(100))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    std::fs::write(m.path("x"), b"x").unwrap();
    let path = std::ffi::CString::new(m.path("x").as_os_str().as_bytes()).unwrap();
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"user.a".as_ptr(),
            b"v".as_ptr().cast(),
            1,
            0,
        )
    };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTSUP)
    );
    // ioctls (here FS_IOC_GETFLAGS, as lsattr asks) are ENOTTY.
    let f = std::fs::File::open(m.path("x")).unwrap();
    let mut attr: libc::c_long = 0;
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), 0x8008_6601, &mut attr) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
}

/// unlink of a file still open for writing: the upload is dropped and
/// nothing reappears at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_while_writing_stores_nothing() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let mut f = std::fs::File::create(m.path("gone.bin")).unwrap();
    f.write_all(&data(30 * MIB, 5)).unwrap();
    std::fs::remove_file(m.path("gone.bin")).unwrap();
    f.write_all(b"more").unwrap();
    drop(f);
    assert!(c
        .head_object(&b, "gone.bin", None)
        .await
        .unwrap_err()
        .is_not_found());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.list_uploads(&b, "").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "upload not aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A second open for writing of a file being written joins it (no
/// EBUSY): both descriptors' writes land in the one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_joins_the_file() {
    use std::os::unix::fs::FileExt;
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let f = std::fs::File::create(m.path("one")).unwrap();
    f.write_all_at(b"ab", 0).unwrap();
    let g = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(0)
        .open(m.path("one"))
        .unwrap();
    g.write_all_at(b"x", 0).unwrap();
    drop(g);
    drop(f);
    let got = c.get_object(&b, "one", None, None).await.unwrap();
    assert_eq!(&got.body[..], b"xb");
}

/// A directory of 2,500 keys lists completely through the mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_directory_lists_completely() {
    let c = client();
    let b = fresh_bucket(&c).await;
    put_many(&c, &b, "big/", 2500, b"x").await;
    let m = Mounted::bucket(&b);
    let names: Vec<String> = std::fs::read_dir(m.path("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2500);
    let ls = Command::new("ls")
        .arg("-l")
        .arg(m.path("big"))
        .output()
        .unwrap();
    assert!(ls.status.success());
    assert_eq!(String::from_utf8_lossy(&ls.stdout).lines().count(), 2501);
}

#[test]
fn background_mount_reports_its_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bucketfs"))
        .args(["mount", "no-such-bucket-bucketfs"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let f = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bucketfs"))
        .args(["mount", "x"])
        .arg(f.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

/// chmod, chown and utimes succeed and show in stat while the mount runs;
/// ftruncate to the current size succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_show_while_mounted() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let p = m.path("attrs");
    let f = std::fs::File::create(&p).unwrap();
    std::io::Write::write_all(&mut &f, b"12345").unwrap();
    f.set_len(5).unwrap();
    drop(f);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&p, Some(1234), Some(4321)).unwrap();
    let old = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let md = std::fs::metadata(&p).unwrap();
    assert_eq!(md.mode() & 0o7777, 0o600);
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    assert_eq!(md.mtime(), 1_000_000_000);
    assert_eq!(md.len(), 5);
    assert_eq!(c.head_object(&b, "attrs", None).await.unwrap().size, 5);
}

/// A file this mount is still writing reads what was written, through a
/// descriptor opened for reading meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_file_being_written_shows_what_was_written() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let mut w = std::fs::File::create(m.path("w")).unwrap();
    w.write_all(b"partial").unwrap();
    assert_eq!(std::fs::read(m.path("w")).unwrap(), b"partial");
    w.write_all(b" and more").unwrap();
    drop(w);
    assert_eq!(std::fs::read(m.path("w")).unwrap(), b"partial and more");
    let got = c.get_object(&b, "w", None, None).await.unwrap();
    assert_eq!(&got.body[..], b"partial and more");
}

/// An overwrite whose upload fails leaves the old object as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_overwrite_keeps_the_old_object() {
    let g = Garage::start();
    let c = g.client();
    let b = "bucketfs-test";
    let old = data(2 * MIB, 1);
    c.put_object(b, "keep", old.clone().into(), None, &PutOptions::default())
        .await
        .unwrap();
    let m = Mounted::new(b, &[], &[("AWS_ENDPOINT_URL", &g.endpoint)]);
    assert_eq!(
        std::fs::metadata(m.path("keep")).unwrap().len(),
        old.len() as u64
    );
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), data(3 * MIB, 2)).unwrap();
    g.kill();
    let out = cp(src.path(), &m.path("keep"));
    assert!(!out.status.success(), "cp must fail");
    g.resume();
    let got = c.get_object(b, "keep", None, None).await.unwrap();
    assert!(got.body[..] == old[..], "the old object is untouched");
}

/// A mount point left dead by a killed daemon is cleared and mounted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_mount_point_is_reused() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let mut first = Mounted::bucket(&b);
    first.kill();
    let e = std::fs::read_dir(&first.dir).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOTCONN),
        "the dead mount is there"
    );
    let second = Mounted::at(&b, &first.dir);
    assert_eq!(
        common::mount::mounts_at(&first.dir),
        1,
        "the dead mount was cleared, not buried"
    );
    std::fs::write(second.path("again"), b"ok").unwrap();
    assert_eq!(
        &c.get_object(&b, "again", None, None).await.unwrap().body[..],
        b"ok"
    );
}

/// Shell redirections: the shell opens the file, dup2()s the descriptor
/// and closes the original before the command writes, so a close on the
/// handle comes first. The writes that follow replace the empty object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_redirections_store_what_was_written() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let dir = m.dir.to_str().unwrap().to_string();
    m.run(Command::new("sh").arg("-c").arg(format!(
        "cd {dir} && echo hi > one && echo more >> one && (echo a; echo b) > two && printf x > three && : > empty"
    )));
    for (k, want) in [
        ("one", &b"hi\nmore\n"[..]),
        ("two", b"a\nb\n"),
        ("three", b"x"),
        ("empty", b""),
    ] {
        let got = c.get_object(&b, k, None, None).await.unwrap();
        assert_eq!(&got.body[..], want, "{k}");
    }
}

/// A mount whose daemon runs in another PID namespace (a daemon in a
/// container: FUSE reports pid 0 for every process of this one), and a
/// writer whose forked child closes its copy of the descriptor: the
/// child's close must not complete the file early (the parent's next
/// write then failed with EIO and the object held half the bytes). The
/// close that completes is the one from the descriptor table that wrote
/// first (FLUSH's lock owner), whatever the pids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_childs_close_completes_nothing_whatever_the_pids() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::in_pid_namespace(&b);
    let script = format!(
        "import os\n\
         fd = os.open({f:?}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
         os.write(fd, b'a')\n\
         child = os.fork()\n\
         if child == 0:\n    os.close(fd)\n    os._exit(0)\n\
         os.waitpid(child, 0)\n\
         os.write(fd, b'b')\n\
         os.close(fd)\n",
        f = m.path("f").display().to_string()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        m.log()
    );
    let got = c.get_object(&b, "f", None, None).await.unwrap();
    assert_eq!(&got.body[..], b"ab");
}

/// Two odd orders of a real program, checked through S3: a shrinking
/// ftruncate of a new file into bytes already sent (a checkpoint, then the
/// cut); and a file whose name another client turns into a directory while
/// it is written (it stores `name/x`, and a listing here shows it) is
/// still stored by its close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shrink_into_sent_bytes_and_a_name_taken_by_a_directory() {
    use std::os::unix::fs::FileExt;
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);

    let f = std::fs::File::create(m.path("cut")).unwrap();
    let written = data(20 * MIB, 21);
    f.write_all_at(&written, 0).unwrap();
    f.set_len(MIB as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let got = c.get_object(&b, "cut", None, None).await.unwrap();
    assert!(
        got.body[..] == written[..MIB],
        "the object is the first MiB"
    );

    let body = data(MIB, 22);
    let f = std::fs::File::create(m.path("taken")).unwrap();
    f.write_all_at(&body, 0).unwrap();
    put(&c, &b, "taken/x", b"x").await;
    std::thread::sleep(Duration::from_millis(1200));
    let names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"taken".to_string()), "{names:?}");
    drop(f);
    let got = c.get_object(&b, "taken", None, None).await.unwrap();
    assert!(got.body[..] == body[..], "the close stored the bytes");
}
