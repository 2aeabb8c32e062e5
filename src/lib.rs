//! bucketfs: mount an S3-compatible bucket as a directory.
//!
//! Layers only look down: `s3` (the client, knows nothing of files) is the
//! foundation the filesystem layers are built on; `admin` holds the
//! operator's commands.

pub mod admin;
pub mod fs;
pub mod fuse;
pub mod mount;
pub mod prefetch;
pub mod s3;
pub mod status;
pub mod upload;
