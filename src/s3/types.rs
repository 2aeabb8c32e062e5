//! Plain values that cross the S3 client's boundary.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub storage_class: Option<String>,
}

/// One page of ListObjectsV2.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    pub objects: Vec<ObjectEntry>,
    /// Common prefixes (the "directories" under a delimiter), decoded.
    pub common_prefixes: Vec<String>,
    /// Continuation token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// One part of a multipart upload as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    pub part_number: u32,
    pub etag: String,
    pub size: u64,
}

/// One page of ListParts.
#[derive(Debug, Clone, Default)]
pub struct PartsPage {
    pub parts: Vec<PartInfo>,
    /// The part-number-marker for the next page; `None` on the last page.
    pub next_marker: Option<u32>,
}

/// One in-progress multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// One page of ListMultipartUploads.
#[derive(Debug, Clone, Default)]
pub struct UploadsPage {
    pub uploads: Vec<UploadInfo>,
    /// (key-marker, upload-id-marker) for the next page; `None` on the last page.
    pub next: Option<(String, String)>,
}

/// Standard headers an object keeps besides Content-Type, which a copy
/// with REPLACE drops unless it sends them again.
pub const SYSTEM_HEADERS: [&str; 5] = [
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];

/// What HeadObject tells about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: u64,
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub content_type: Option<String>,
    pub storage_class: Option<String>,
    /// `x-amz-meta-*` headers, names lowercased and without the prefix.
    pub metadata: BTreeMap<String, String>,
    /// The [`SYSTEM_HEADERS`] the object has (names lowercased).
    pub system: Vec<(String, String)>,
    /// Its SSE-S3 or SSE-KMS encryption (SSE-C is the mount's own key).
    pub encryption: Option<Sse>,
}

/// A ranged GetObject's body in the pieces it arrived in, and the ETag of
/// the object it came from.
#[derive(Debug, Clone, Default)]
pub struct Frames {
    pub pieces: Vec<bytes::Bytes>,
    pub etag: String,
    /// The whole object's size (from Content-Range).
    pub object_size: u64,
}

/// The bytes of a (ranged) GetObject.
#[derive(Debug, Clone)]
pub struct GetResult {
    pub body: bytes::Bytes,
    /// Total object size, from Content-Range (ranged) or Content-Length.
    pub object_size: u64,
    pub etag: String,
}

/// Server-side encryption that changes what the server's ETag means.
#[derive(Clone, PartialEq, Eq)]
pub enum Sse {
    /// `x-amz-server-side-encryption: AES256` (SSE-S3): ETag stays the MD5.
    Aes256,
    /// `aws:kms` with an optional key id (`aws:kms:dsse` when `dsse`, the
    /// dual-layer kind): ETag is not the MD5.
    Kms { key_id: Option<String>, dsse: bool },
    /// SSE-C: base64 of a 256-bit key the customer holds: ETag is not the MD5.
    Customer { key: [u8; 32] },
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sse::Aes256 => write!(f, "AES256"),
            Sse::Kms { key_id, .. } => write!(f, "{}({key_id:?})", self.algorithm()),
            Sse::Customer { .. } => write!(f, "SSE-C(****)"),
        }
    }
}

impl Sse {
    /// The algorithm its encryption header names
    /// (`x-amz-server-side-encryption`, or the SSE-C `-algorithm` one).
    pub fn algorithm(&self) -> &'static str {
        match self {
            Sse::Aes256 | Sse::Customer { .. } => "AES256",
            Sse::Kms { dsse: false, .. } => "aws:kms",
            Sse::Kms { dsse: true, .. } => "aws:kms:dsse",
        }
    }

    /// Whether the server's ETag of a single PUT or part is still the hex MD5 of the body.
    pub fn etag_is_md5(this: Option<&Sse>) -> bool {
        matches!(this, None | Some(Sse::Aes256))
    }
}

/// Options for objects we create (PutObject, CreateMultipartUpload, CopyObject with REPLACE).
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    pub content_type: Option<String>,
    /// User metadata: names without the `x-amz-meta-` prefix.
    pub metadata: BTreeMap<String, String>,
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    pub acl: Option<String>,
    /// Extra vendor headers, sent as given.
    pub extra_headers: Vec<(String, String)>,
}

/// What CopyObject does with the source's metadata.
#[derive(Debug, Clone)]
pub enum MetadataDirective {
    /// Keep the source's metadata (`x-amz-metadata-directive: COPY`).
    Copy,
    /// Replace it with these options (`REPLACE`).
    Replace(PutOptions),
}

/// The object a read or a copy takes its bytes from: a key of the bucket,
/// optionally pinned to one version by its ETag (GET's `If-Match`, a
/// copy's `x-amz-copy-source-if-match`). A pinned source that another
/// client replaced fails with 412 PreconditionFailed instead of mixing two
/// versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source<'a> {
    pub key: &'a str,
    pub if_match: Option<&'a str>,
}

impl<'a> Source<'a> {
    /// Whatever version is at `key`.
    pub fn key(key: &'a str) -> Self {
        Source {
            key,
            if_match: None,
        }
    }

    /// The version of `key` whose ETag is `etag` (quoted or not).
    pub fn pinned(key: &'a str, etag: &'a str) -> Self {
        Source {
            key,
            if_match: Some(etag),
        }
    }
}

impl<'a, K: AsRef<str> + ?Sized> From<&'a K> for Source<'a> {
    fn from(key: &'a K) -> Self {
        Source::key(key.as_ref())
    }
}

/// What a CopyObject does besides copying the bytes.
#[derive(Debug, Clone, Copy)]
pub struct CopyOptions<'a> {
    /// Keep the source's metadata or replace it.
    pub directive: &'a MetadataDirective,
    /// Encryption of source and copy (SSE-C sends the key for both;
    /// SSE-S3/KMS ask for the copy to be encrypted).
    pub sse: Option<&'a Sse>,
    /// With [`MetadataDirective::Copy`]: storage class, ACL and extra
    /// headers for the copy (it would otherwise get the server's defaults).
    pub extras: Option<&'a PutOptions>,
}

impl<'a> CopyOptions<'a> {
    /// A copy with this directive and nothing else.
    pub fn new(directive: &'a MetadataDirective) -> Self {
        CopyOptions {
            directive,
            sse: None,
            extras: None,
        }
    }
}

/// One UploadPart.
#[derive(Debug, Clone)]
pub struct PartUpload<'a> {
    pub upload_id: &'a str,
    pub number: u32,
    pub body: bytes::Bytes,
    /// The body's MD5 when the caller already has it.
    pub md5: Option<[u8; 16]>,
    pub sse: Option<&'a Sse>,
}

impl<'a> PartUpload<'a> {
    /// Part `number` of `upload_id` holding `body`, its MD5 computed by
    /// the client, no customer key.
    pub fn new(upload_id: &'a str, number: u32, body: bytes::Bytes) -> Self {
        PartUpload {
            upload_id,
            number,
            body,
            md5: None,
            sse: None,
        }
    }
}

/// One UploadPartCopy.
#[derive(Debug, Clone)]
pub struct PartCopy<'a> {
    pub upload_id: &'a str,
    pub number: u32,
    pub src_bucket: &'a str,
    pub src: Source<'a>,
    /// Bytes of the source (end exclusive); the whole source when `None`.
    pub range: Option<std::ops::Range<u64>>,
    /// A customer key (SSE-C) for source and upload.
    pub sse: Option<&'a Sse>,
}
