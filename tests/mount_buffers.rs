//! The buffer model through a real mount on Garage: a tiny memory budget
//! with one FUSE thread, writes that seek back, sparse copies, refused
//! writes and the largest-file limit. Objects are checked through S3 itself.

mod common;

use bucketfs::s3::*;
use common::mount::Mounted;
use common::*;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// Polls S3 until no multipart upload is left under `prefix` (release runs
/// after close returns).
async fn no_uploads_left(c: &Client, b: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ups = c.list_uploads(b, prefix).await.unwrap();
        if ups.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "uploads left behind: {ups:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 32 writers at once, one FUSE thread, a write budget of three 5 MiB parts:
/// every writer finishes (no deadlock: requests are answered from tasks and
/// held first parts are sent when memory is short), every object is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_writers_finish_under_a_budget_of_three_parts_with_one_fuse_thread() {
    let c = client();
    let b = fresh_bucket(&c).await;
    // 20 MiB: 15 MiB for writes (three parts), 5 MiB for read-ahead.
    let m = Mounted::new(
        &b,
        &[
            "--fuse-threads",
            "1",
            "--part-size",
            "5MiB",
            "--memory-limit",
            "20MiB",
        ],
        &[],
    );
    let threads: Vec<_> = (0..32u64)
        .map(|i| {
            let path = m.path(&format!("w{i:02}.bin"));
            std::thread::spawn(move || {
                let body = data(11 * MIB + i as usize * 4096, 500 + i);
                let mut f = File::create(&path).unwrap();
                for chunk in body.chunks(MIB) {
                    f.write_all(chunk).unwrap();
                }
                close(f).unwrap();
                body
            })
        })
        .collect();
    let bodies: Vec<Vec<u8>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, body) in bodies.iter().enumerate() {
        let key = format!("w{i:02}.bin");
        let g = c.get_object(&b, &key, None, None).await.unwrap();
        assert!(g.body[..] == body[..], "{key}: bucket bytes differ");
        assert!(bare_etag(&g.etag).ends_with("-3"), "{key}: {}", g.etag);
    }
    assert!(
        m.log()
            .contains("memory short: sending the held first part now"),
        "the budget was short, so held parts were sent early:\n{}",
        m.log()
    );
    no_uploads_left(&c, &b, "").await;
}

/// An MP4-style writer: 20 MiB written, then bytes 8..24 patched before close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_8_to_24_rewritten_before_close_are_stored() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let mut body = data(20 * MIB, 8);
    let f = File::create(m.path("movie.mp4")).unwrap();
    f.write_all_at(&body, 0).unwrap();
    let patch = *b"mdat-size-patch!";
    f.write_all_at(&patch, 8).unwrap();
    body[8..24].copy_from_slice(&patch);
    close(f).unwrap();
    let g = c.get_object(&b, "movie.mp4", None, None).await.unwrap();
    assert!(g.body[..] == body[..], "bucket bytes differ");
    assert!(bare_etag(&g.etag).ends_with("-3"), "{}", g.etag);
}

/// GNU cp --sparse=always seeks over the hole and sets the size with
/// ftruncate: the zeros are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_sparse_always_of_a_file_with_a_hole_is_stored_exactly() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("sparse.img");
    let mut body = vec![0u8; 40 * MIB];
    let head = data(MIB, 1);
    let tail = data(MIB / 2, 2);
    body[..MIB].copy_from_slice(&head);
    body[30 * MIB..30 * MIB + MIB / 2].copy_from_slice(&tail);
    {
        let f = File::create(&src).unwrap();
        f.write_all_at(&head, 0).unwrap();
        f.write_all_at(&tail, 30 * MIB as u64).unwrap();
        f.set_len(40 * MIB as u64).unwrap();
    }
    m.run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&src)
            .arg(m.path("sparse.img")),
    );
    let g = c.get_object(&b, "sparse.img", None, None).await.unwrap();
    assert_eq!(g.body.len(), 40 * MIB);
    assert!(g.body[..] == body[..], "bucket bytes differ");
}

/// Waits until a part of the multipart upload of `key` reached the server.
async fn a_part_reached_the_server(c: &Client, b: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ups = c.list_uploads(b, key).await.unwrap();
        if let Some(u) = ups.first() {
            if !c
                .list_parts(b, &u.key, &u.upload_id, None)
                .await
                .unwrap()
                .is_empty()
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "part 2 never reached the server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A write into a part already sent, in a new file: the bytes written so
/// far are stored as a checkpoint and the write lands; the close stores
/// exactly what was written (checked through S3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_into_a_sent_part_of_a_new_file_lands() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let m = Mounted::bucket(&b);
    let f = File::create(m.path("late.bin")).unwrap();
    let mut want = data(20 * MIB, 3);
    f.write_all_at(&want, 0).unwrap();
    // Part 2 (8..16 MiB) leaves as soon as it is full; wait until the server has it.
    a_part_reached_the_server(&c, &b, "late.bin").await;
    f.write_all_at(b"patched!", 9 * MIB as u64).unwrap();
    want[9 * MIB..9 * MIB + 8].copy_from_slice(b"patched!");
    close(f).unwrap();
    let g = c.get_object(&b, "late.bin", None, None).await.unwrap();
    assert!(g.body[..] == want[..], "bucket bytes differ");
    assert!(m.log().contains("checkpoint"), "{}", m.log());
    no_uploads_left(&c, &b, "late.bin").await;
}

/// The same write in a file replacing an object (O_TRUNC): no checkpoint
/// may go to its key, so the write gets EIO (logged with file and offset),
/// close reports it, and the old object stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_into_a_sent_part_of_an_overwrite_is_eio_and_keeps_the_old_object() {
    let c = client();
    let b = fresh_bucket(&c).await;
    c.put_object(&b, "late.bin", "old".into(), None, &PutOptions::default())
        .await
        .unwrap();
    let m = Mounted::bucket(&b);
    let f = File::create(m.path("late.bin")).unwrap();
    f.write_all_at(&data(20 * MIB, 3), 0).unwrap();
    a_part_reached_the_server(&c, &b, "late.bin").await;
    let e = f.write_all_at(b"too late", 9 * MIB as u64).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = close(f).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let log = m.log();
    assert!(
        log.contains("late.bin") && log.contains(&format!("offset {}", 9 * MIB)),
        "the log names file and offset:\n{log}"
    );
    let g = c.get_object(&b, "late.bin", None, None).await.unwrap();
    assert_eq!(&g.body[..], b"old");
    no_uploads_left(&c, &b, "late.bin").await;
}

/// The largest file follows from --memory-limit: a write past it gets EFBIG
/// and a log line naming the flag to raise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_past_the_largest_file_is_efbig_naming_the_flag() {
    let c = client();
    let b = fresh_bucket(&c).await;
    // 20 MiB: parts of 5 MiB growing to 10 MiB, about 95 GiB in 10,000 parts.
    let m = Mounted::new(&b, &["--part-size", "5MiB", "--memory-limit", "20MiB"], &[]);
    let f = File::create(m.path("huge.bin")).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    let e = f.write_all_at(b"x", 100 << 30).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EFBIG), "{e}");
    assert!(close(f).is_err(), "the file failed");
    let log = m.log();
    assert!(
        log.contains("huge.bin")
            && log.contains("--max-part-size")
            && log.contains("--memory-limit"),
        "{log}"
    );
    assert!(c
        .head_object(&b, "huge.bin", None)
        .await
        .unwrap_err()
        .is_not_found());
}

/// Pages of `f` in the page cache (cachestat(2), Linux 6.5+); None where
/// the kernel has no cachestat or refuses it (EPERM: since 6.14 a reader
/// who could not write the file may not ask).
fn cached_pages(f: &File) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451; // the same on x86_64 and aarch64
    let range = Range { off: 0, len: 0 }; // len 0: to the end
    let mut st = Stat::default();
    // SAFETY: both structs are live, laid out as the kernel's, and the
    // kernel writes only into `st`.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut st as *mut Stat,
            0,
        )
    };
    if r == 0 {
        Some(st.nr_cache)
    } else {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM) => None,
            _ => panic!("cachestat: {e}"),
        }
    }
}

/// The running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let rel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = rel.trim().split(|c: char| !c.is_ascii_digit());
    let v: (u32, u32) = (
        it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
    );
    v >= (major, minor)
}

/// Reads `path` whole through one read-only handle; returns the bytes and
/// how many of its pages the page cache then holds.
fn read_whole(path: &std::path::Path) -> (Vec<u8>, Option<u64>) {
    use std::io::Read;
    let mut f = File::open(path).unwrap();
    let mut got = Vec::new();
    f.read_to_end(&mut got).unwrap();
    let cached = cached_pages(&f);
    (got, cached)
}

/// A file opened read-only is read straight from bucketfs's read-ahead
/// into the reader's buffer: the page cache holds none of it (no second,
/// unbudgeted copy; one memcpy less per byte). It can still be mapped
/// shared and private. `--page-cache` keeps the kernel's page cache, which
/// shows the probe sees cached pages when there are some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_handles_skip_the_page_cache_and_still_map() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let body = data(3 * MIB + 123, 41);
    put(&c, &b, "f", &body).await;

    let m = Mounted::bucket(&b);
    let (got, cached) = read_whole(&m.path("f"));
    assert!(got == body, "bytes read differ");
    // Linux 6.6+ can map direct-I/O files shared, so reads are direct there.
    if kernel_at_least(6, 6) {
        assert!(m.log().contains("direct_reads=true"), "{}", m.log());
        match cached {
            Some(n) => assert_eq!(n, 0, "pages of a direct read in the page cache"),
            None => eprintln!("cachestat(2) unavailable: page cache not checked"),
        }
    } else {
        eprintln!("Linux before 6.6: read-only handles keep the page cache");
    }
    // mmap, shared and private, of a read-only handle.
    let f = File::open(m.path("f")).unwrap();
    for flags in [libc::MAP_SHARED, libc::MAP_PRIVATE] {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh read-only mapping of the whole file, read below
        // within its length and unmapped before `f` closes.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                body.len(),
                libc::PROT_READ,
                flags,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(
                p,
                libc::MAP_FAILED,
                "mmap {flags:#x}: {}",
                std::io::Error::last_os_error()
            );
            let mapped = std::slice::from_raw_parts(p as *const u8, body.len());
            assert!(mapped == &body[..], "mapped bytes differ ({flags:#x})");
            libc::munmap(p, body.len());
        }
    }
    drop(f);
    // A file created O_RDONLY|O_CREAT reads as empty (its handle is a
    // writer's, so it must not be direct: the daemon would refuse the read).
    let new = std::ffi::CString::new(m.path("new").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the descriptor is closed once, below.
    let fd = unsafe { libc::open(new.as_ptr(), libc::O_RDONLY | libc::O_CREAT, 0o644) };
    assert!(
        fd >= 0,
        "open O_RDONLY|O_CREAT: {}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 16];
    // SAFETY: buf is 16 writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let read_err = std::io::Error::last_os_error();
    // SAFETY: fd is open and closed only here.
    assert_eq!(
        unsafe { libc::close(fd) },
        0,
        "close: {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(n, 0, "read of a new O_RDONLY|O_CREAT file: {read_err}");
    assert_eq!(c.head_object(&b, "new", None).await.unwrap().size, 0);
    drop(m);

    let m = Mounted::new(&b, &["--page-cache"], &[]);
    let (got, cached) = read_whole(&m.path("f"));
    assert!(got == body, "bytes read differ with --page-cache");
    assert!(m.log().contains("direct_reads=false"), "{}", m.log());
    if let Some(n) = cached {
        assert!(n > 0, "--page-cache: nothing of the file in the page cache");
    }
}

/// Four threads read one descriptor at once, each its own quarter of the
/// file in 1 MiB reads (through direct I/O, every read reaches bucketfs;
/// with a 4 MiB window the quarters, 10 MiB apart, are four read-ahead
/// streams): every byte comes back exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_threads_reading_one_descriptor_get_exact_bytes() {
    let c = client();
    let b = fresh_bucket(&c).await;
    let body = data(40 * MIB + 77, 43);
    put(&c, &b, "f", &body).await;
    let m = Mounted::new(&b, &["--max-readahead", "4MiB"], &[]);
    let f = File::open(m.path("f")).unwrap();
    let quarter = body.len().div_ceil(4);
    std::thread::scope(|s| {
        for t in 0..4 {
            let (f, body) = (&f, &body);
            s.spawn(move || {
                let (mut at, end) = (t * quarter, ((t + 1) * quarter).min(body.len()));
                let mut buf = vec![0u8; MIB];
                while at < end {
                    let want = (end - at).min(MIB);
                    let n = f.read_at(&mut buf[..want], at as u64).unwrap();
                    assert!(n > 0, "thread {t}: early end at {at}");
                    assert!(
                        buf[..n] == body[at..at + n],
                        "thread {t}: bytes differ at {at}"
                    );
                    at += n;
                }
            });
        }
    });
}
