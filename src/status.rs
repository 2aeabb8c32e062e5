//! `bucketfs status`: a mount serves a plain-text report on a Unix socket in
//! its state directory (mode 0600 in a 0700 directory, so only the mounting
//! user reaches it); the command finds the socket by mount point, reads the
//! report and prints it, once or every second (`--watch`).

use crate::fs::{Fs, WriterStatus};
use crate::s3::Client;
use crate::upload::journal::{self, Journal};
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The socket's name inside the mount's state directory.
pub const SOCKET: &str = "control.sock";

/// What a report is made of.
pub struct Sources {
    pub fs: Arc<Fs>,
    pub client: Client,
    pub journal: Arc<Journal>,
    pub bucket: String,
    pub prefix: String,
    pub mountpoint: PathBuf,
    pub started: Instant,
}

/// Bytes as a short human string (binary units).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        0
    } else {
        ((done.min(total) as u128 * width as u128) / total as u128) as usize
    };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn writer_line(out: &mut String, w: &WriterStatus) {
    let secs = w.elapsed.as_secs_f64().max(0.001);
    let rate = (w.bytes_sent as f64 / secs) as u64;
    let _ = writeln!(
        out,
        "  {} {:>10} written {:>10} sent  {:>5} parts + {} in flight  {:>10}/s  {:.1}s  {}",
        bar(w.bytes_sent, w.bytes_written, 20),
        human(w.bytes_written),
        human(w.bytes_sent),
        w.parts_sent,
        w.parts_in_flight,
        human(rate),
        secs,
        crate::admin::escape_key(&w.key),
    );
}

/// The report a mount serves.
pub fn report(s: &Sources) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bucketfs {} at {}: bucket {}{}{}, up {}s, pid {}",
        env!("CARGO_PKG_VERSION"),
        s.mountpoint.display(),
        s.bucket,
        if s.prefix.is_empty() { "" } else { ", prefix " },
        crate::admin::escape_key(&s.prefix),
        s.started.elapsed().as_secs(),
        std::process::id()
    );
    let writers = s.fs.writers();
    let _ = writeln!(out, "files being written: {}", writers.len());
    for w in &writers {
        writer_line(&mut out, w);
    }
    let st = s.fs.stats();
    let c = s.client.counters();
    let _ = writeln!(
        out,
        "totals: {} files stored ({}), {} sent, {} failed closes, {} retries, {} slow parts sent again, {} uploads aborted ({} at shutdown, {} left by a crash), {} awaiting abort",
        st.files_stored.load(Ordering::Relaxed),
        human(st.bytes_stored.load(Ordering::Relaxed)),
        human(c.body_bytes_sent.load(Ordering::Relaxed)),
        st.failures.load(Ordering::Relaxed),
        c.retries.load(Ordering::Relaxed),
        c.hedges.load(Ordering::Relaxed),
        st.aborted_at_shutdown.load(Ordering::Relaxed) + s.journal.aborted(),
        st.aborted_at_shutdown.load(Ordering::Relaxed),
        s.journal.aborted(),
        s.journal.doomed().len(),
    );
    out
}

/// Serves reports on the mount's socket until the runtime stops.
pub fn serve(sources: Sources) -> std::io::Result<PathBuf> {
    let path = sources.journal.dir().join(SOCKET);
    if path.as_os_str().len() >= 108 {
        return Err(std::io::Error::other(format!(
            "{} is longer than a Unix socket address may be (give a shorter --state-dir)",
            path.display()
        )));
    }
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let sources = Arc::new(sources);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                // Out of descriptors, say: try again a little later, not in a spin.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            let text = report(&sources);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = conn.write_all(text.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(path)
}

/// Reads the report of the mount at `mountpoint` (the `status` command).
pub fn query(state_dir: &Path, mountpoint: &Path) -> Result<String, String> {
    let (dir, _) = journal::find_mount(state_dir, mountpoint).ok_or_else(|| {
        format!(
            "no bucketfs mount at {} is known in {} (give the --state-dir the mount uses)",
            mountpoint.display(),
            state_dir.display()
        )
    })?;
    let sock = dir.join(SOCKET);
    let mut conn = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| format!("{}: {e} (is the mount running?)", sock.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", sock.display()))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes_and_bars() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
        assert_eq!(human(1536 << 20), "1.5 GiB");
        assert_eq!(bar(0, 0, 4), "[....]");
        assert_eq!(bar(1, 2, 4), "[##..]");
        assert_eq!(bar(9, 2, 4), "[####]");
    }
}
