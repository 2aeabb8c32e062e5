//! POSIX attributes kept in an object's user metadata, the way s3fs keeps
//! them, so s3fs, rclone and a fresh bucketfs mount read the same values:
//! `x-amz-meta-mode` (the whole `st_mode`, decimal), `x-amz-meta-uid`,
//! `x-amz-meta-gid` (decimal) and `x-amz-meta-mtime` (seconds since the
//! epoch, decimal; with a fraction when the time has one, as rclone writes
//! it — s3fs reads the whole seconds).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const MODE: &str = "mode";
pub const UID: &str = "uid";
pub const GID: &str = "gid";
pub const MTIME: &str = "mtime";
pub const RDEV: &str = "rdev";

/// The attributes found in (or to be written to) user metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PosixMeta {
    /// Permission bits (the file type bits are not kept here).
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    /// The `S_IFMT` bits of a stored mode (read only: writers pass the kind).
    pub file_type: Option<u32>,
    /// Device number of a device node.
    pub rdev: Option<u32>,
}

impl PosixMeta {
    /// Reads what is there; values that do not parse are ignored.
    pub fn parse(meta: &BTreeMap<String, String>) -> PosixMeta {
        let num = |k: &str| meta.get(k).and_then(|v| v.trim().parse::<u32>().ok());
        let mode = num(MODE);
        PosixMeta {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid: num(UID),
            gid: num(GID),
            mtime: meta.get(MTIME).and_then(|v| parse_time(v)),
            file_type: mode.map(|m| m & libc::S_IFMT).filter(|t| *t != 0),
            rdev: num(RDEV),
        }
    }

    /// The attributes a program sets (chmod, chown, utimes), for comparing.
    pub fn attrs(&self) -> (Option<u16>, Option<u32>, Option<u32>, Option<SystemTime>) {
        (self.perm, self.uid, self.gid, self.mtime)
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == PosixMeta::default()
    }

    /// Writes the attributes that are set into `meta`, leaving the rest of it
    /// alone. `file_type` is the `S_IFMT` bits (`libc::S_IFREG`, ...); the
    /// mode is always written for other types than plain files, since it is
    /// what makes them symlinks or FIFOs.
    pub fn write(&self, meta: &mut BTreeMap<String, String>, file_type: u32) {
        let perm = match (self.perm, file_type) {
            (Some(p), _) => Some(p),
            (None, libc::S_IFREG) => None,
            (None, libc::S_IFLNK) => Some(0o777),
            (None, _) => Some(0o644),
        };
        if let Some(p) = perm {
            meta.insert(MODE.into(), (file_type | p as u32).to_string());
        }
        if let Some(r) = self.rdev.filter(|r| *r != 0) {
            meta.insert(RDEV.into(), r.to_string());
        }
        if let Some(u) = self.uid {
            meta.insert(UID.into(), u.to_string());
        }
        if let Some(g) = self.gid {
            meta.insert(GID.into(), g.to_string());
        }
        if let Some(t) = self.mtime {
            meta.insert(MTIME.into(), format_time(t));
        }
    }
}

impl PosixMeta {
    /// Like [`write`](Self::write), and drops a stored mtime this one does
    /// not set (the content changed since: Last-Modified is the mtime).
    pub fn apply(&self, meta: &mut BTreeMap<String, String>, file_type: u32) {
        if self.mtime.is_none() {
            meta.remove(MTIME);
        }
        self.write(meta, file_type);
    }
}

/// `1700000000` or `1700000000.5` or `1700000000.123456789`; `None` for
/// anything else (negative times included).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let mut nanos = 0u32;
    for (i, d) in frac.bytes().take(9).enumerate() {
        nanos += (d - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Whole seconds, with nine fraction digits when the time has a fraction.
pub fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d.subsec_nanos() == 0 => d.as_secs().to_string(),
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        // Before 1970: not representable in s3fs's format; store the epoch.
        Err(_) => "0".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_and_accept_both_writers() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(format_time(t), "1700000000.123456789");
        assert_eq!(parse_time("1700000000.123456789"), Some(t));
        let whole = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(format_time(whole), "1700000000");
        assert_eq!(parse_time("1700000000"), Some(whole)); // s3fs
        assert_eq!(
            parse_time("1700000000.5"),
            Some(whole + Duration::from_millis(500))
        );
        for bad in ["", "-1", "abc", "1.2.3", "1e9", " .5", "12x"] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn attributes_read_as_s3fs_writes_them() {
        let mut m = BTreeMap::new();
        m.insert("mode".into(), "33188".into()); // S_IFREG | 0644
        m.insert("uid".into(), "1000".into());
        m.insert("gid".into(), "oops".into());
        m.insert("mtime".into(), "1600000000".into());
        m.insert("color".into(), "blue".into());
        let p = PosixMeta::parse(&m);
        assert_eq!(p.perm, Some(0o644));
        assert_eq!(p.file_type, Some(libc::S_IFREG));
        assert_eq!(p.uid, Some(1000));
        assert_eq!(p.gid, None);
        assert_eq!(
            p.mtime,
            Some(UNIX_EPOCH + Duration::from_secs(1_600_000_000))
        );

        let mut out = BTreeMap::new();
        out.insert("color".into(), "blue".into());
        PosixMeta {
            perm: Some(0o600),
            gid: Some(5),
            ..p
        }
        .write(&mut out, libc::S_IFREG);
        assert_eq!(out["mode"], (libc::S_IFREG | 0o600).to_string());
        assert_eq!(out["gid"], "5");
        assert_eq!(out["mtime"], "1600000000");
        assert_eq!(out["color"], "blue", "other metadata is kept");
        assert!(PosixMeta::default().is_empty());

        // A symlink as s3fs stores it: the mode says S_IFLNK.
        let mut l = BTreeMap::new();
        PosixMeta::default().write(&mut l, libc::S_IFLNK);
        assert_eq!(l["mode"], (libc::S_IFLNK | 0o777).to_string());
        assert_eq!(PosixMeta::parse(&l).file_type, Some(libc::S_IFLNK));
        let mut f = BTreeMap::new();
        PosixMeta {
            perm: Some(0o600),
            rdev: Some(0x0801),
            ..PosixMeta::default()
        }
        .write(&mut f, libc::S_IFCHR);
        let back = PosixMeta::parse(&f);
        assert_eq!(
            (back.file_type, back.rdev),
            (Some(libc::S_IFCHR), Some(0x0801))
        );
    }
}
