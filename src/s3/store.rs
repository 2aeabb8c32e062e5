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
    /// UploadPartCopy from another key of the bucket.
    fn upload_part_copy<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        src_key: &'a str,
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
        key: &'a str,
        range: Option<Range<u64>>,
    ) -> StoreFuture<'a, GetResult>;
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
        src_key: &'a str,
        key: &'a str,
        directive: &'a MetadataDirective,
    ) -> StoreFuture<'a, String>;
}

/// A [`Client`] bound to one bucket.
#[derive(Clone)]
pub struct BucketClient {
    pub client: Client,
    pub bucket: String,
    /// Encryption that must accompany reads and part uploads (SSE-C).
    pub sse: Option<Sse>,
}

impl ObjectStore for BucketClient {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.client.put_object(&self.bucket, key, body, md5, opts))
    }
    fn create_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.client.create_multipart_upload(&self.bucket, key, opts))
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
            upload_id,
            part_number,
            body,
            Some(md5),
            self.sse.as_ref(),
        ))
    }
    fn upload_part_copy<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        src_key: &'a str,
        range: Range<u64>,
    ) -> StoreFuture<'a, String> {
        Box::pin(self.client.upload_part_copy(
            &self.bucket,
            key,
            upload_id,
            part_number,
            &self.bucket,
            src_key,
            Some(range),
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
        key: &'a str,
        range: Option<Range<u64>>,
    ) -> StoreFuture<'a, GetResult> {
        Box::pin(
            self.client
                .get_object(&self.bucket, key, range, self.sse.as_ref()),
        )
    }
    fn head_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectHead> {
        Box::pin(self.client.head_object(&self.bucket, key))
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
        src_key: &'a str,
        key: &'a str,
        directive: &'a MetadataDirective,
    ) -> StoreFuture<'a, String> {
        Box::pin(
            self.client
                .copy_object(&self.bucket, src_key, &self.bucket, key, directive),
        )
    }
}
