//! Where a directory's mode, owner and times are stored.
//!
//! On S3 (and Garage, Ceph RGW, MinIO) they are the `x-amz-meta-*` of the
//! directory's marker, the empty `dir/` object, as s3fs stores them. Some
//! servers keep no metadata on such a key: SeaweedFS makes `dir/` a
//! directory of its filer and drops the metadata (and any body). There the
//! attributes go into an empty object inside the directory,
//! `dir/.bucketfs-directory`, which the mount never shows; it moves with
//! the directory on rename and goes with it on rmdir. A writable mount
//! finds out which kind of server it talks to by storing a marker with
//! metadata under its prefix and reading it back.

use crate::s3::rules::MAX_KEY_LEN;
use crate::s3::{ObjectStore, PutOptions};

/// The name of the object holding a directory's attributes where markers
/// keep none. Hidden from listings; no file can be made with this name.
pub const DIR_ATTRS_NAME: &str = ".bucketfs-directory";

/// Where directory attributes live on this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirAttrs {
    /// On the `dir/` marker itself.
    #[default]
    OnMarker,
    /// In `dir/.bucketfs-directory` (the marker drops metadata).
    InObject,
}

impl DirAttrs {
    /// The key a directory's attributes are stored at, for the directory
    /// whose marker key (ending in `/`) is `dir_key`.
    /// A directory so deep that the object's key would pass S3's 1,024
    /// bytes keeps them on its marker (where such a server drops them).
    pub fn key(self, dir_key: &str) -> String {
        match self {
            DirAttrs::InObject if dir_key.len() + DIR_ATTRS_NAME.len() <= MAX_KEY_LEN => {
                format!("{dir_key}{DIR_ATTRS_NAME}")
            }
            _ => dir_key.to_string(),
        }
    }
}

/// The key of the attributes object of the directory `dir_key` (its
/// marker's when the object's would be too long).
pub fn object_key(dir_key: &str) -> String {
    DirAttrs::InObject.key(dir_key)
}

/// Asks the server whether a marker keeps its metadata: stores a marker
/// with one metadata entry under `prefix`, reads it back and deletes it.
/// Any failure answers "on the marker" (today's behaviour) and is logged.
pub async fn probe(store: &dyn ObjectStore, prefix: &str) -> DirAttrs {
    let key = format!("{prefix}.bucketfs-probe-{:016x}/", fastrand::u64(..));
    let mut opts = PutOptions::default();
    opts.metadata.insert("bucketfs-probe".into(), "1".into());
    let kept = match store
        .put_object(&key, bytes::Bytes::new(), None, &opts)
        .await
    {
        Ok(_) => store
            .head_object(&key)
            .await
            .map(|h| h.metadata.get("bucketfs-probe").is_some_and(|v| v == "1")),
        Err(e) => Err(e),
    };
    let _ = store.delete_object(&key).await;
    match kept {
        Ok(true) => DirAttrs::OnMarker,
        Ok(false) => {
            tracing::info!(
                "this server keeps no metadata on directory markers (SeaweedFS does so): \
                 directory attributes go into DIR/{DIR_ATTRS_NAME}"
            );
            DirAttrs::InObject
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "could not ask whether directory markers keep metadata; assuming they do");
            DirAttrs::OnMarker
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_directory_attributes() {
        assert_eq!(DirAttrs::OnMarker.key("a/b/"), "a/b/");
        assert_eq!(DirAttrs::InObject.key("a/b/"), "a/b/.bucketfs-directory");
        let deep = format!("{}/", "d".repeat(MAX_KEY_LEN - DIR_ATTRS_NAME.len()));
        assert_eq!(DirAttrs::InObject.key(&deep), deep, "too long: the marker");
        let fits = format!("{}/", "d".repeat(MAX_KEY_LEN - DIR_ATTRS_NAME.len() - 1));
        assert_eq!(DirAttrs::InObject.key(&fits).len(), MAX_KEY_LEN);
    }
}
