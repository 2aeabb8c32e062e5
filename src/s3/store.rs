//! The seam between the filesystem and S3: the operations the upload engine,
//! the read path and the namespace use. [`Client`] implements it against a
//! real server; `memory::MemoryStore` implements it in memory, with S3's rules
//! and fault injection, for unit tests.

use super::error::S3Error;
use super::http::Client;
use super::types::*;
use bytes::Bytes;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

/// A boxed future, so the trait can be used as `dyn ObjectStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, S3Error>> + Send + 'a>>;

/// The S3 operations bucketfs needs, on one bucket.
pub trait ObjectStore: Send + Sync + 'static {
    /// PutObject with Content-MD5 (computed when `md5` is None); returns the ETag.
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String>;
    /// CreateMultipartUpload; returns the upload ID.
    fn create_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String>;
    /// UploadPart with Content-MD5; returns the part ETag (checked against the MD5).
    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        body: Bytes,
        md5: [u8; 16],
    ) -> StoreFuture<'a, String>;
    /// UploadPartCopy of a byte range of an object of the bucket.
    fn upload_part_copy<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        src: Source<'a>,
        range: Range<u64>,
    ) -> StoreFuture<'a, String>;
    /// CompleteMultipartUpload; returns the object's ETag.
    fn complete_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [(u32, String)],
    ) -> StoreFuture<'a, String>;
    /// AbortMultipartUpload.
    fn abort_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// All parts of an upload.
    fn list_parts<'a>(&'a self, key: &'a str, upload_id: &'a str)
        -> StoreFuture<'a, Vec<PartInfo>>;
    /// All in-progress uploads under a prefix.
    fn list_uploads<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<UploadInfo>>;
    /// GetObject of a byte range (end exclusive) or the whole object.
    fn get_object<'a>(
        &'a self,
        src: Source<'a>,
        range: Option<Range<u64>>,
    ) -> StoreFuture<'a, GetResult>;
    /// GetObject of a byte range, its body in the pieces it arrived in:
    /// the read path answers from them without first copying them into
    /// one buffer. By default, one piece.
    fn get_object_frames<'a>(&'a self, key: &'a str, range: Range<u64>) -> StoreFuture<'a, Frames> {
        Box::pin(async move {
            let g = self.get_object(Source::key(key), Some(range)).await?;
            Ok(Frames {
                pieces: vec![g.body],
                etag: g.etag,
                object_size: g.object_size,
            })
        })
    }
    /// HeadObject.
    fn head_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectHead>;
    /// One page of ListObjectsV2.
    fn list_objects_page<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
        token: Option<&'a str>,
        max_keys: Option<u32>,
    ) -> StoreFuture<'a, ListPage>;
    /// DeleteObject.
    fn delete_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
    /// CopyObject within the bucket.
    fn copy_object<'a>(
        &'a self,
        src: Source<'a>,
        key: &'a str,
        directive: &'a MetadataDirective,
    ) -> StoreFuture<'a, String>;
    /// Whether the ETags of parts and single PUTs are MD5s of the bytes (not
    /// under SSE-KMS or SSE-C): only then can a completed object be checked.
    fn etags_are_md5(&self) -> bool {
        true
    }
}

/// A [`Client`] bound to one bucket.
#[derive(Clone)]
pub struct BucketClient {
    pub client: Client,
    pub bucket: String,
    /// Encryption of every object written, and the key reads need (SSE-C).
    pub sse: Option<Sse>,
    /// What every object this mount writes gets unless the caller says
    /// otherwise: storage class, ACL, vendor headers.
    pub defaults: PutOptions,
}

impl BucketClient {
    /// A client for `bucket` with no encryption and no defaults.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        BucketClient {
            client,
            bucket: bucket.into(),
            sse: None,
            defaults: PutOptions::default(),
        }
    }

    /// `o` with the mount's defaults filled in (storage class, ACL, vendor
    /// headers, encryption).
    fn with_defaults(&self, o: &PutOptions) -> PutOptions {
        let mut m = o.clone();
        if m.storage_class.is_none() {
            m.storage_class = self.defaults.storage_class.clone();
        }
        if m.acl.is_none() {
            m.acl = self.defaults.acl.clone();
        }
        if m.sse.is_none() {
            m.sse = self.sse.clone();
        }
        let mut headers = self.defaults.extra_headers.clone();
        headers.retain(|(k, _)| {
            !o.extra_headers
                .iter()
                .any(|(ok, _)| ok.eq_ignore_ascii_case(k))
        });
        headers.extend(o.extra_headers.iter().cloned());
        m.extra_headers = headers;
        m
    }

    fn customer_key(&self) -> Option<&Sse> {
        self.sse
            .as_ref()
            .filter(|s| matches!(s, Sse::Customer { .. }))
    }
}

impl ObjectStore for BucketClient {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let o = self.with_defaults(opts);
            self.client
                .put_object(&self.bucket, key, body, md5, &o)
                .await
        })
    }
    fn create_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let o = self.with_defaults(opts);
            self.client
                .create_multipart_upload(&self.bucket, key, &o)
                .await
        })
    }
    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        body: Bytes,
        md5: [u8; 16],
    ) -> StoreFuture<'a, String> {
        Box::pin(self.client.upload_part(
            &self.bucket,
            key,
            PartUpload {
                upload_id,
                number: part_number,
                body,
                md5: Some(md5),
                sse: self.sse.as_ref(),
            },
        ))
    }
    fn upload_part_copy<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        src: Source<'a>,
        range: Range<u64>,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.client.upload_part_copy(
            &self.bucket,
            key,
            PartCopy {
                upload_id,
                number: part_number,
                src_bucket: &self.bucket,
                src,
                range: Some(range),
                sse: self.customer_key(),
            },
        ))
    }
    fn complete_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [(u32, String)],
    ) -> StoreFuture<'a, String> {
        Box::pin(
            self.client
                .complete_multipart_upload(&self.bucket, key, upload_id, parts),
        )
    }
    fn abort_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(
            self.client
                .abort_multipart_upload(&self.bucket, key, upload_id),
        )
    }
    fn list_parts<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> StoreFuture<'a, Vec<PartInfo>> {
        Box::pin(self.client.list_parts(&self.bucket, key, upload_id, None))
    }
    fn list_uploads<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<UploadInfo>> {
        Box::pin(self.client.list_uploads(&self.bucket, prefix))
    }
    fn get_object<'a>(
        &'a self,
        src: Source<'a>,
        range: Option<Range<u64>>,
    ) -> StoreFuture<'a, GetResult> {
        Box::pin(
            self.client
                .get_object(&self.bucket, src, range, self.sse.as_ref()),
        )
    }
    fn get_object_frames<'a>(&'a self, key: &'a str, range: Range<u64>) -> StoreFuture<'a, Frames> {
        Box::pin(
            self.client
                .get_object_frames(&self.bucket, key, range, self.sse.as_ref()),
        )
    }
    fn head_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectHead> {
        Box::pin(
            self.client
                .head_object(&self.bucket, key, self.customer_key()),
        )
    }
    fn list_objects_page<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
        token: Option<&'a str>,
        max_keys: Option<u32>,
    ) -> StoreFuture<'a, ListPage> {
        Box::pin(
            self.client
                .list_objects_page(&self.bucket, prefix, delimiter, token, max_keys),
        )
    }
    fn delete_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(self.client.delete_object(&self.bucket, key))
    }
    fn copy_object<'a>(
        &'a self,
        src: Source<'a>,
        key: &'a str,
        directive: &'a MetadataDirective,
    ) -> StoreFuture<'a, String> {
        Box::pin(async move {
            let directive = match directive {
                MetadataDirective::Replace(o) => MetadataDirective::Replace(self.with_defaults(o)),
                MetadataDirective::Copy => MetadataDirective::Copy,
            };
            let o = CopyOptions {
                directive: &directive,
                sse: self.sse.as_ref(),
                extras: Some(&self.defaults),
            };
            self.client
                .copy_object(&self.bucket, src, &self.bucket, key, &o)
                .await
        })
    }
    fn etags_are_md5(&self) -> bool {
        Sse::etag_is_md5(self.sse.as_ref())
    }
}
