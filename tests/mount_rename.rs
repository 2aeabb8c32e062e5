//! rename(2) through a real mount on Garage: CopyObject + DeleteObject for
//! files, checked through S3 itself; `mv` of a directory and `rsync -a`.

mod common;

use bucketfs::s3::*;
use common::mount::Mounted;
use common::*;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

const MIB: usize = 1024 * 1024;

fn renameat2(from: &std::path::Path, to: &std::path::Path, flags: u32) -> std::io::Result<()> {
    let f = CString::new(from.as_os_str().as_bytes()).unwrap();
    let t = CString::new(to.as_os_str().as_bytes()).unwrap();
    // SAFETY: two valid C strings; AT_FDCWD with absolute paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// mv of a file: the bytes are at the new key, the old key is gone, the
/// mount shows only the new name; a rename over an existing file replaces
/// it; RENAME_NOREPLACE onto an existing file is EEXIST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_file_moves_the_object() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let big = data(20 * MIB, 1);
    std::fs::write(m.path("a.bin"), &big).unwrap();
    std::fs::create_dir(m.path("sub")).unwrap();
    std::fs::rename(m.path("a.bin"), m.path("sub/b.bin")).unwrap();
    let g = c.get_object(&b, "sub/b.bin", None, None).await.unwrap();
    assert!(g.body[..] == big[..], "bytes at the new key");
    assert!(c
        .head_object(&b, "a.bin", None)
        .await
        .unwrap_err()
        .is_not_found());
    assert!(!m.path("a.bin").exists());
    assert_eq!(std::fs::read(m.path("sub/b.bin")).unwrap(), big);

    // Over an existing file (rsync's final rename).
    std::fs::write(m.path("new.txt"), b"new").unwrap();
    std::fs::write(m.path("old.txt"), b"old contents").unwrap();
    std::fs::rename(m.path("new.txt"), m.path("old.txt")).unwrap();
    let g = c.get_object(&b, "old.txt", None, None).await.unwrap();
    assert_eq!(&g.body[..], b"new");
    assert_eq!(std::fs::metadata(m.path("old.txt")).unwrap().len(), 3);

    // RENAME_NOREPLACE.
    std::fs::write(m.path("x"), b"x").unwrap();
    let e = renameat2(&m.path("x"), &m.path("old.txt"), libc::RENAME_NOREPLACE).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST), "{e}");
    assert_eq!(
        &c.get_object(&b, "old.txt", None, None).await.unwrap().body[..],
        b"new"
    );

    // A file renamed onto a directory: EISDIR; a missing source: ENOENT.
    let e = std::fs::rename(m.path("x"), m.path("sub")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR), "{e}");
    let e = std::fs::rename(m.path("nope"), m.path("y")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");

    assert_eq!(
        keys(&c, &b).await,
        sorted([
            "old.txt".into(),
            dir_key("sub"),
            "sub/b.bin".into(),
            "x".into()
        ]),
        "exactly these objects"
    );
}

/// rename(2) of a directory: every key under it (markers included) is
/// copied on the server to the new prefix and the old keys deleted; no data
/// passes through the daemon. Onto a non-empty directory: ENOTEMPTY; onto
/// an empty one: replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_directory_moves_every_key() {
    let c = client();
    let b = fresh_bucket(&c).await;
    // A prefix-only directory (no markers), made by another client.
    put(&c, &b, "d/p/three", b"333").await;
    let m = Mounted::bucket(&b);
    std::fs::create_dir_all(m.path("d/e")).unwrap();
    std::fs::write(m.path("d/one"), b"1").unwrap();
    std::fs::write(m.path("d/e/two"), b"22").unwrap();
    let big = data(7 * MIB, 3);
    std::fs::write(m.path("d/big"), &big).unwrap();
    std::fs::create_dir(m.path("full")).unwrap();
    std::fs::write(m.path("full/x"), b"x").unwrap();
    let e = std::fs::rename(m.path("d"), m.path("full")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "{e}");
    std::fs::create_dir(m.path("empty")).unwrap();

    let before = m.bytes_written();
    let out = Command::new("mv")
        .arg(m.path("d"))
        .arg(m.path("empty"))
        .output()
        .unwrap();
    // mv into an existing directory moves d inside it; rename over it instead:
    assert!(
        out.status.success(),
        "mv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(m.path("empty/d"), m.path("moved")).unwrap();
    let sent = m.bytes_written() - before;
    assert!(
        sent < MIB as u64,
        "the daemon wrote {sent} bytes: data went through it"
    );
    let k = keys(&c, &b).await;
    assert_eq!(
        k,
        sorted([
            dir_key("empty"),
            dir_key("full"),
            "full/x".into(),
            "moved/big".into(),
            dir_key("moved/e"),
            "moved/e/two".into(),
            "moved/one".into(),
            "moved/p/three".into(),
        ]),
        "exactly the moved keys, markers included"
    );
    assert!(
        c.get_object(&b, "moved/big", None, None)
            .await
            .unwrap()
            .body[..]
            == big[..]
    );
    assert_eq!(std::fs::read(m.path("moved/e/two")).unwrap(), b"22");
    assert_eq!(std::fs::read(m.path("moved/p/three")).unwrap(), b"333");
    assert!(!m.path("d").exists() && !m.path("empty/d").exists());
    // Files under the moved directory still work.
    std::fs::write(m.path("moved/e/new"), b"n").unwrap();
    assert_eq!(
        &c.get_object(&b, "moved/e/new", None, None)
            .await
            .unwrap()
            .body[..],
        b"n"
    );
}

/// rsync -a writes each file under a temporary name and renames it: the
/// bucket ends with exactly the final names and the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_a_leaves_exactly_the_final_names() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let src = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    std::fs::create_dir(src.path().join("nested")).unwrap();
    for i in 0..20 {
        let rel = if i % 2 == 0 {
            format!("f{i:02}")
        } else {
            format!("nested/g{i:02}")
        };
        std::fs::write(src.path().join(&rel), data(1000 + i * 100, i as u64)).unwrap();
        want.push(rel);
    }
    m.run(
        Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", src.path().display()))
            .arg(m.path("dst")),
    );
    let k = keys(&c, &b).await;
    let mut expect: Vec<String> = want.iter().map(|r| format!("dst/{r}")).collect();
    expect.push(dir_key("dst"));
    expect.push(dir_key("dst/nested"));
    expect.sort();
    assert_eq!(k, expect, "no temporary names left");
    for r in &want {
        let g = c
            .get_object(&b, &format!("dst/{r}"), None, None)
            .await
            .unwrap();
        assert!(
            g.body[..] == std::fs::read(src.path().join(r)).unwrap()[..],
            "{r}"
        );
    }
    assert!(
        !m.log().contains("rename of a file still being written"),
        "rsync renames only closed files"
    );
}

/// `cp` of a 30 MiB file inside the mount: GNU cp tries copy_file_range, and
/// the server copies the object (CopyObject); the daemon sends (almost) no
/// bytes. The copy is exact, the source untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_inside_the_mount_copies_on_the_server() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let body = data(30 * MIB, 5);
    put(&c, &b, "src.bin", &body).await;
    let m = Mounted::bucket(&b);
    assert_eq!(
        std::fs::metadata(m.path("src.bin")).unwrap().len(),
        body.len() as u64
    );
    let before = m.bytes_written();
    m.run(
        Command::new("cp")
            .arg(m.path("src.bin"))
            .arg(m.path("copy.bin")),
    );
    let sent = m.bytes_written() - before;
    assert!(
        sent < (MIB as u64),
        "the daemon wrote {sent} bytes for a 30 MiB copy: data went through it\n{}",
        m.log()
    );
    let g = c.get_object(&b, "copy.bin", None, None).await.unwrap();
    assert!(g.body[..] == body[..], "copy differs");
    assert!(c.get_object(&b, "src.bin", None, None).await.unwrap().body[..] == body[..]);
    assert_eq!(std::fs::read(m.path("copy.bin")).unwrap(), body);
}

/// `>>` onto a 6 MiB object: the existing bytes are copied by the server
/// (UploadPartCopy), only the new bytes are sent; Content-Type and metadata
/// stay. `>>` onto a small object re-sends its few bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appending_with_shell_redirection() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let big = data(6 * MIB, 6);
    let mut opts = PutOptions {
        content_type: Some("text/plain".into()),
        ..PutOptions::default()
    };
    opts.metadata.insert("color".into(), "blue".into());
    c.put_object(&b, "big.log", big.clone().into(), None, &opts)
        .await
        .unwrap();
    c.put_object(
        &b,
        "small.log",
        "one\n".into(),
        None,
        &PutOptions::default(),
    )
    .await
    .unwrap();
    let m = Mounted::bucket(&b);
    let before = m.bytes_written();
    m.run(Command::new("sh").arg("-c").arg(format!(
        "printf 'appended\\n' >> '{}' && printf 'two\\n' >> '{}'",
        m.path("big.log").display(),
        m.path("small.log").display()
    )));
    let sent = m.bytes_written() - before;
    assert!(
        sent < (MIB as u64),
        "the daemon wrote {sent} bytes for a 9-byte append"
    );
    // The counter does see what the daemon sends (so the bound above means
    // something): a 2 MiB file written through the mount counts.
    let before = m.bytes_written();
    std::fs::write(m.path("control"), data(2 * MIB, 7)).unwrap();
    assert!(m.bytes_written() - before >= 2 * MIB as u64);
    let g = c.get_object(&b, "big.log", None, None).await.unwrap();
    assert_eq!(g.body.len(), big.len() + 9);
    assert!(g.body[..big.len()] == big[..] && &g.body[big.len()..] == b"appended\n");
    let h = c.head_object(&b, "big.log", None).await.unwrap();
    assert_eq!(h.content_type.as_deref(), Some("text/plain"));
    assert_eq!(meta(&h, "color"), Some("blue"));
    let g = c.get_object(&b, "small.log", None, None).await.unwrap();
    assert_eq!(&g.body[..], b"one\ntwo\n");
    assert_eq!(
        std::fs::read(m.path("small.log")).unwrap(),
        b"one\ntwo\n",
        "the mount shows the new size at once"
    );
}

/// `rsync --inplace -W` rewrites an existing object from offset 0 without
/// O_TRUNC (the object is replaced at close), and `rsync --append` adds
/// only the new tail (an append upload); both end byte-exact, checked by
/// GET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_inplace_and_append() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let src = tempfile::tempdir().unwrap();
    let old = data(3 * MIB, 8);
    let new = data(2 * MIB, 9);
    put(&c, &b, "in", &old).await;
    let head = data(6 * MIB, 10);
    put(&c, &b, "log", &head).await;
    std::fs::write(src.path().join("in"), &new).unwrap();
    let mut grown = head.clone();
    grown.extend_from_slice(b"more lines\n");
    std::fs::write(src.path().join("log"), &grown).unwrap();
    let m = Mounted::bucket(&b);
    m.run(
        Command::new("rsync")
            .args(["--inplace", "-W", "-t"])
            .arg(src.path().join("in"))
            .arg(m.path("in")),
    );
    m.run(
        Command::new("rsync")
            .arg("--append")
            .arg(src.path().join("log"))
            .arg(m.path("log")),
    );
    let g = c.get_object(&b, "in", None, None).await.unwrap();
    assert!(g.body[..] == new[..], "--inplace: {} bytes", g.body.len());
    let g = c.get_object(&b, "log", None, None).await.unwrap();
    assert!(g.body[..] == grown[..], "--append: {} bytes", g.body.len());
}
