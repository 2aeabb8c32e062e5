//! A file, not a stream: tools that seek back, patch, reopen, fsync or
//! update in place, on a real mount. Every result is checked by the tool's
//! own reader or byte for byte against a local copy, and through S3 itself.

mod common;

use bucketfs::s3::*;
use common::mount::Mounted;
use common::*;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const MIB: usize = 1024 * 1024;

async fn stored(c: &Client, b: &str, key: &str) -> Vec<u8> {
    c.get_object(b, key, None, None)
        .await
        .unwrap()
        .body
        .to_vec()
}

async fn no_uploads_left(c: &Client, b: &str) {
    let ups = c.list_uploads(b, "").await.unwrap();
    assert!(ups.is_empty(), "uploads left: {ups:?}");
}

/// Whether `tool` runs here.
fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_local(dir: &Path, rel: &str, body: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

/// Info-ZIP seeks back to patch each entry's local header, here across
/// parts already sent (entries of 20 MiB): `unzip -t` passes on the mount
/// and on the object fetched through S3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zip_r_writes_an_archive_unzip_accepts() {
    if !have("zip") || !have("unzip") {
        eprintln!("zip or unzip not installed: skipped");
        return;
    }
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let src = tempfile::tempdir().unwrap();
    write_local(src.path(), "tree/big1.bin", &data(20 * MIB, 1));
    write_local(src.path(), "tree/small.txt", b"hello zip\n");
    write_local(src.path(), "tree/sub/big2.bin", &data(17 * MIB + 3, 2));
    for i in 0..20 {
        write_local(
            src.path(),
            &format!("tree/sub/s{i}"),
            &data(1000 + i, i as u64),
        );
    }
    m.run(
        Command::new("zip")
            .args(["-q", "-r", "-0"])
            .arg(m.path("a.zip"))
            .arg("tree")
            .current_dir(src.path()),
    );
    m.run(Command::new("unzip").arg("-tq").arg(m.path("a.zip")));
    let local = src.path().join("fetched.zip");
    std::fs::write(&local, stored(&c, &b, "a.zip").await).unwrap();
    m.run(Command::new("unzip").arg("-tq").arg(&local));
    let listing = m.run(Command::new("unzip").arg("-l").arg(&local));
    assert!(listing.contains("tree/sub/big2.bin"), "{listing}");
    no_uploads_left(&c, &b).await;
}

/// Python's zipfile writes the same pattern through its own code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_zipfile_archive_passes_testzip() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let script = r#"
import os, sys, zipfile
path = sys.argv[1]
with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    for i, n in enumerate([20 << 20, 5, 18 << 20, 1 << 20]):
        z.writestr(f"e{i}", os.urandom(n))
with zipfile.ZipFile(path) as z:
    assert z.testzip() is None, "bad entry"
    print(len(z.namelist()))
"#;
    let out = m.run(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(m.path("p.zip")),
    );
    assert_eq!(out.trim(), "4");
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), stored(&c, &b, "p.zip").await).unwrap();
    let check = "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print('ok')";
    let out = m.run(
        Command::new("python3")
            .args(["-c", check])
            .arg(local.path()),
    );
    assert_eq!(out.trim(), "ok");
}

/// `dd conv=notrunc` into the middle of a 40 MiB object: the object holds
/// the old bytes with the new ones in place, no more and no less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dd_notrunc_patches_the_middle_of_an_object() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let mut want = data(40 * MIB, 5);
    put(&c, &b, "disk.img", &want).await;
    let m = Mounted::bucket(&b);
    let patch = tempfile::NamedTempFile::new().unwrap();
    let p = data(3 * MIB, 6);
    std::fs::write(patch.path(), &p).unwrap();
    m.run(
        Command::new("dd")
            .arg(format!("if={}", patch.path().display()))
            .arg(format!("of={}", m.path("disk.img").display()))
            .args(["bs=1M", "seek=17", "conv=notrunc", "status=none"]),
    );
    want[17 * MIB..20 * MIB].copy_from_slice(&p);
    assert!(
        stored(&c, &b, "disk.img").await == want,
        "bucket bytes differ"
    );
    assert!(std::fs::read(m.path("disk.img")).unwrap() == want);
    no_uploads_left(&c, &b).await;
}

/// `rsync --inplace --no-whole-file` of a 40 MiB file with 3 changed
/// blocks: rsync reads the old file and writes only what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsync_inplace_updates_changed_blocks() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let old = data(40 * MIB, 7);
    put(&c, &b, "big.bin", &old).await;
    let m = Mounted::bucket(&b);
    let src = tempfile::tempdir().unwrap();
    let mut new = old.clone();
    for (i, at) in [100usize, 19 * MIB + 5, 40 * MIB - 10]
        .into_iter()
        .enumerate()
    {
        new[at..at + 7].copy_from_slice(format!("chg{i}!!!").as_bytes());
    }
    std::fs::write(src.path().join("big.bin"), &new).unwrap();
    m.run(
        Command::new("rsync")
            .args(["-I", "--inplace", "--no-whole-file"])
            .arg(src.path().join("big.bin"))
            .arg(m.path("big.bin")),
    );
    assert!(
        stored(&c, &b, "big.bin").await == new,
        "bucket bytes differ"
    );
    no_uploads_left(&c, &b).await;
}

/// sqlite: pages written anywhere, a rollback journal beside the
/// database, fsync per transaction, reads of what was just written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_inserts_pass_the_integrity_check() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let script = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
db.execute("create table t (id integer primary key, v text)")
with db:
    db.executemany("insert into t (v) values (?)", ((f"row {i} " * 8,) for i in range(20000)))
for i in range(200):
    with db:
        db.execute("insert into t (v) values (?)", (f"auto {i}",))
with db:
    db.execute("delete from t where id % 3 = 0")
print(db.execute("pragma integrity_check").fetchone()[0], db.execute("select count(*) from t").fetchone()[0])
db.close()
"#;
    let out = m.run(
        Command::new("python3")
            .args(["-c", script])
            .arg(m.path("db.sqlite")),
    );
    assert_eq!(out.trim(), "ok 13467");
    let local = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(local.path(), stored(&c, &b, "db.sqlite").await).unwrap();
    let check = "import sqlite3, sys; d = sqlite3.connect(sys.argv[1]); print(d.execute('pragma integrity_check').fetchone()[0], d.execute('select count(*) from t').fetchone()[0])";
    let out = m.run(
        Command::new("python3")
            .args(["-c", check])
            .arg(local.path()),
    );
    assert_eq!(out.trim(), "ok 13467");
    let keys = keys(&c, &b).await;
    assert_eq!(keys, vec!["db.sqlite".to_string()], "the journal is gone");
}

/// ffmpeg's `-movflags +faststart`: the output is written, opened again
/// for reading while still open for writing, and shifted forward to make
/// room for the index at the front (read ahead, write behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faststart_pattern_shifts_a_file_through_a_second_open() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let path = m.path("out.mp4");
    let body = data(26 * MIB + 123, 8);
    let moov = data(300_000, 9);
    let w = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    w.write_all_at(&body, 0).unwrap();
    w.write_all_at(&moov, body.len() as u64).unwrap();
    let r = File::open(&path).unwrap();
    // Shift body forward by moov.len(): read ahead one buffer, write behind.
    let shift = moov.len() as u64;
    let chunk = 1 << 20;
    let mut pos = 0u64;
    let mut buf = vec![0u8; chunk];
    let n = r.read_at(&mut buf, pos).unwrap();
    let mut cur = buf[..n].to_vec();
    while pos < body.len() as u64 {
        let next_pos = pos + cur.len() as u64;
        let mut next = vec![0u8; chunk.min(body.len() - next_pos as usize)];
        if !next.is_empty() {
            r.read_exact_at(&mut next, next_pos).unwrap();
        }
        w.write_all_at(&cur, pos + shift).unwrap();
        pos = next_pos;
        cur = next;
    }
    w.write_all_at(&moov, 0).unwrap();
    close(r).unwrap();
    close(w).unwrap();
    let mut want = moov.clone();
    want.extend_from_slice(&body);
    assert!(
        stored(&c, &b, "out.mp4").await == want,
        "bucket bytes differ"
    );
    no_uploads_left(&c, &b).await;
}

/// Found losing data with every call successful: write 20 MiB, fsync,
/// patch the head and append; the object is all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_fsync_keep_what_came_before() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let f = File::create(m.path("f")).unwrap();
    let mut want = data(20 * MIB, 10);
    f.write_all_at(&want, 0).unwrap();
    f.sync_all().unwrap();
    assert!(stored(&c, &b, "f").await == want, "fsync made it durable");
    f.write_all_at(b"HDR!", 0).unwrap();
    f.write_all_at(b"END", 20 * MIB as u64).unwrap();
    want[..4].copy_from_slice(b"HDR!");
    want.extend_from_slice(b"END");
    close(f).unwrap();
    assert!(stored(&c, &b, "f").await == want, "bucket bytes differ");
    no_uploads_left(&c, &b).await;
}

/// Found losing data: a dup's write after the other descriptor's close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dup_writing_after_the_first_close_keeps_every_byte() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let f = File::create(m.path("f")).unwrap();
    let f2 = unsafe { File::from_raw_fd(libc::dup(f.as_raw_fd())) };
    let mut want = data(MIB, 11);
    f.write_all_at(&want, 0).unwrap();
    close(f).unwrap();
    f2.write_all_at(b"X", 0).unwrap();
    want[0] = b'X';
    close(f2).unwrap();
    assert!(stored(&c, &b, "f").await == want, "bucket bytes differ");
}

/// Two opens of one file for writing share it (no EBUSY), and a reader
/// opened meanwhile reads what was written, bytes only in sent parts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_and_a_reader_share_one_file() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let a = File::create(m.path("f")).unwrap();
    let mut want = data(18 * MIB, 12);
    a.write_all_at(&want, 0).unwrap();
    let second = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    second.write_all_at(b"second", 10 * MIB as u64).unwrap();
    want[10 * MIB..10 * MIB + 6].copy_from_slice(b"second");
    let r = File::open(m.path("f")).unwrap();
    let mut got = vec![0u8; 16];
    r.read_exact_at(&mut got, 10 * MIB as u64 - 5).unwrap();
    assert_eq!(&got[..], &want[10 * MIB - 5..10 * MIB + 11]);
    close(second).unwrap();
    close(a).unwrap();
    close(r).unwrap();
    assert!(stored(&c, &b, "f").await == want, "bucket bytes differ");
    no_uploads_left(&c, &b).await;
}

/// truncate of a stored file, shrinking and growing, and posix_fallocate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_fallocate_a_stored_file() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let mut want = data(12 * MIB, 13);
    put(&c, &b, "f", &want).await;
    let m = Mounted::bucket(&b);
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    f.set_len(9 * MIB as u64 + 7).unwrap();
    want.truncate(9 * MIB + 7);
    close(f).unwrap();
    assert!(stored(&c, &b, "f").await == want);
    // Closed: truncate(2) on the path grows it with zeros.
    let path = std::ffi::CString::new(m.path("f").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::truncate(path.as_ptr(), 10 * MIB as i64) }, 0);
    want.resize(10 * MIB, 0);
    assert!(stored(&c, &b, "f").await == want);
    let f = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, 11 * MIB as i64) };
    assert_eq!(
        r,
        0,
        "posix_fallocate: {}",
        std::io::Error::from_raw_os_error(r)
    );
    want.resize(11 * MIB, 0);
    close(f).unwrap();
    assert!(stored(&c, &b, "f").await == want);
}

/// The descriptors of the randomized test, each with how it may be used.
struct Fd {
    file: File,
    read: bool,
    write: bool,
}

/// A randomized mix of write, pwrite, read, mmap read and write, truncate,
/// fsync, dup and close-and-reopen over several descriptors of one new
/// file, checked against a local model after every step. A fixed seed;
/// `BUCKETFS_FUZZ_SEED` adds another (CI passes a fresh one, printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_a_local_model() {
    let mut seeds = vec![18u64];
    if let Some(s) = std::env::var("BUCKETFS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        seeds.push(s);
    }
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    for seed in seeds {
        eprintln!("random operations: seed {seed}");
        random_ops(&c, &b, &m, seed, 2000).await;
    }
}

async fn random_ops(c: &Client, b: &str, m: &Mounted, seed: u64, steps: usize) {
    let key = format!("fuzz-{seed}");
    let path = m.path(&key);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model: Vec<u8> = Vec::new();
    let open = |read: bool, write: bool, create: bool| Fd {
        file: OpenOptions::new()
            .read(read)
            .write(write)
            .create(create)
            .truncate(create)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}\n{}", path.display(), m.log())),
        read,
        write,
    };
    let mut fds = vec![
        open(true, true, true),
        open(false, true, false),
        open(true, false, false),
    ];
    let max = 20 * MIB as u64;
    for step in 0..steps {
        let i = rng.usize(..fds.len());
        let op = rng.u32(..100);
        let what = match op {
            0..=34 if fds[i].write => {
                // Mostly near the end (appends), sometimes anywhere.
                let len = if rng.bool() {
                    rng.usize(1..5000)
                } else {
                    rng.usize(1..700_000)
                };
                let at = if rng.u32(..3) == 0 || model.is_empty() {
                    rng.u64(..max - len as u64)
                } else {
                    (model.len() as u64)
                        .saturating_sub(rng.u64(..2000))
                        .min(max - len as u64)
                };
                let d = data(len, rng.u64(..));
                fds[i].file.write_all_at(&d, at).unwrap_or_else(|e| {
                    panic!("step {step}: pwrite {len} at {at}: {e}\n{}", m.log())
                });
                let end = at as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[at as usize..end].copy_from_slice(&d);
                format!("pwrite {len} at {at}")
            }
            35..=64 if fds[i].read => {
                let at = rng.u64(..model.len() as u64 + 10);
                let len = rng.usize(1..300_000);
                let mut got = vec![0u8; len];
                let mut n = 0;
                loop {
                    let k = fds[i]
                        .file
                        .read_at(&mut got[n..], at + n as u64)
                        .unwrap_or_else(|e| {
                            panic!("step {step}: pread {len} at {at}: {e}\n{}", m.log())
                        });
                    if k == 0 || n + k == len {
                        n += k;
                        break;
                    }
                    n += k;
                }
                let want = model
                    .get(at as usize..(at as usize + len).min(model.len()))
                    .unwrap_or(&[]);
                assert!(
                    got[..n] == *want,
                    "step {step}: pread {len} at {at} differs (fd {i})"
                );
                format!("pread {len} at {at}")
            }
            65..=69 if fds[i].read && fds[i].write && !model.is_empty() => {
                let len = model.len();
                let p = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        fds[i].file.as_raw_fd(),
                        0,
                    )
                };
                assert_ne!(
                    p,
                    libc::MAP_FAILED,
                    "step {step}: mmap: {}",
                    std::io::Error::last_os_error()
                );
                let s = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
                assert!(s[..] == model[..], "step {step}: mapping differs");
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(10_000));
                let d = data(n, rng.u64(..));
                s[at..at + n].copy_from_slice(&d);
                model[at..at + n].copy_from_slice(&d);
                assert_eq!(
                    unsafe { libc::msync(p, len, libc::MS_SYNC) },
                    0,
                    "step {step}: msync: {}",
                    std::io::Error::last_os_error()
                );
                unsafe { libc::munmap(p, len) };
                format!("mmap write {n} at {at}")
            }
            70..=74 if fds[i].write => {
                let to = rng.u64(..max);
                fds[i]
                    .file
                    .set_len(to)
                    .unwrap_or_else(|e| panic!("step {step}: ftruncate {to}: {e}\n{}", m.log()));
                model.resize(to as usize, 0);
                format!("ftruncate {to}")
            }
            75..=79 => {
                fds[i]
                    .file
                    .sync_all()
                    .unwrap_or_else(|e| panic!("step {step}: fsync: {e}\n{}", m.log()));
                if fds[i].write {
                    assert!(
                        stored(c, b, &key).await == model,
                        "step {step}: fsync left other bytes at the key"
                    );
                }
                "fsync".to_string()
            }
            80..=84 if fds.len() < 6 => {
                let d = unsafe { File::from_raw_fd(libc::dup(fds[i].file.as_raw_fd())) };
                let (read, write) = (fds[i].read, fds[i].write);
                fds.push(Fd {
                    file: d,
                    read,
                    write,
                });
                "dup".to_string()
            }
            85..=94 if fds.len() > 1 => {
                let fd = fds.swap_remove(i);
                close(fd.file).unwrap_or_else(|e| panic!("step {step}: close: {e}\n{}", m.log()));
                let (read, write) = match rng.u32(..3) {
                    0 => (true, false),
                    1 => (false, true),
                    _ => (true, true),
                };
                fds.push(open(read, write, false));
                "close and reopen".to_string()
            }
            _ => continue,
        };
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, model.len() as u64, "step {step} ({what}): size");
    }
    for fd in fds {
        close(fd.file).unwrap_or_else(|e| panic!("final close: {e}\n{}", m.log()));
    }
    assert!(
        stored(c, b, &key).await == model,
        "seed {seed}: bucket bytes differ"
    );
    assert!(
        std::fs::read(&path).unwrap() == model,
        "seed {seed}: mount bytes differ"
    );
}

/// A write through a write-only (direct I/O) descriptor drops the pages a
/// read-write descriptor of the same file cached: its next read sees it.
/// (Linux drops them itself for a direct-I/O write; bucketfs's own
/// invalidation after the reply is a second line, so this test passes
/// without it: it pins the behaviour, not who provides it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_descriptor_shows_in_another_ones_cache() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("f"))
        .unwrap();
    rw.write_all_at(&[b'a'; 8192], 0).unwrap();
    let mut got = [0u8; 4];
    rw.read_exact_at(&mut got, 4096).unwrap();
    assert_eq!(&got, b"aaaa", "cached");
    let wo = OpenOptions::new().write(true).open(m.path("f")).unwrap();
    wo.write_all_at(b"bbbb", 4096).unwrap();
    // The invalidation goes out after the write's reply.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        rw.read_exact_at(&mut got, 4096).unwrap();
        if &got == b"bbbb" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "stale page: {got:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    close(wo).unwrap();
    close(rw).unwrap();
    let body = stored(&c, &b, "f").await;
    assert_eq!(&body[4096..4100], b"bbbb");
    assert_eq!(body.len(), 8192);
}

/// rename(2) of a file while a descriptor still writes it (a program
/// renaming its output into place before it is done): what was written
/// before and after the rename ends up at the new key, whole, and nothing
/// stays at the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_while_written_keeps_every_byte_at_its_new_name() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let f = File::create(m.path("out.tmp")).unwrap();
    let mut want = data(11 * MIB, 14);
    f.write_all_at(&want, 0).unwrap();
    std::fs::rename(m.path("out.tmp"), m.path("out.bin")).unwrap();
    let more = data(2 * MIB, 15);
    f.write_all_at(&more, want.len() as u64).unwrap();
    f.write_all_at(b"HEAD", 0).unwrap();
    want.extend_from_slice(&more);
    want[..4].copy_from_slice(b"HEAD");
    close(f).unwrap();
    assert!(
        stored(&c, &b, "out.bin").await == want,
        "bucket bytes differ"
    );
    assert!(c
        .head_object(&b, "out.tmp", None)
        .await
        .unwrap_err()
        .is_not_found());
    no_uploads_left(&c, &b).await;
}
