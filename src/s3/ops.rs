//! The S3 operations of [`Client`]: each builds its request, sends it
//! through [`Client::send`] and turns the answer into a value.

use super::error::S3Error;
use super::etag::{bare_etag, hex, md5_of, quote_etag};
use super::http::{
    header_str, Answer, Client, Deadline, Op, Request, MAX_PAGES, SERVER_WORK_TIMEOUT,
};
use super::sigv4;
use super::types::*;
use super::xml;
use base64::Engine;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::Method;
use std::collections::BTreeMap;

impl Client {
    // ---- bucket operations (tests and mount validation) ----

    /// CreateBucket (used by tests and the demo).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        let r = Request::new(Op::Bucket, Method::PUT, bucket, None);
        self.send(&r).await.map(|_| ())
    }

    /// HeadBucket: does the bucket exist and may we use it.
    pub async fn head_bucket(&self, bucket: &str) -> Result<(), S3Error> {
        let r = Request::new(Op::Bucket, Method::HEAD, bucket, None);
        match self.send(&r).await {
            Ok(_) => Ok(()),
            // A HEAD answer has no body to name the right region, and not
            // every server sends x-amz-bucket-region: a one-key listing
            // asks again with a body (and corrects the region if need be).
            Err(e) if e.status() == Some(400) => self
                .list_objects_page(bucket, "", None, None, Some(1))
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        }
    }

    // ---- objects ----

    /// PutObject with Content-MD5; checks the returned ETag is that MD5.
    /// `md5` may be passed when the caller already hashed the body.
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<String, S3Error> {
        let md5 = md5.unwrap_or_else(|| md5_of(&body));
        let r = put_headers(
            Request::new(Op::PutObject, Method::PUT, bucket, Some(key)),
            opts,
        )
        .body(body, Some(md5));
        let a = self.send(&r).await?;
        checked_etag(
            || format!("PutObject {key:?}"),
            &a.headers,
            &md5,
            opts.sse.as_ref(),
        )
    }

    /// GetObject of `range` (start..end, end exclusive), or of the whole object.
    /// A pinned source answers 412 PreconditionFailed once replaced.
    pub async fn get_object<'s>(
        &self,
        bucket: &str,
        src: impl Into<Source<'s>>,
        range: Option<std::ops::Range<u64>>,
        sse: Option<&Sse>,
    ) -> Result<GetResult, S3Error> {
        let (a, object_size) = self.get(bucket, src.into(), range, sse, false).await?;
        Ok(GetResult {
            etag: header_str(&a.headers, "etag").unwrap_or_default(),
            object_size,
            body: a.body,
        })
    }

    /// GetObject of a byte range, its body in the pieces it arrived in (no
    /// copy into one buffer).
    pub async fn get_object_frames(
        &self,
        bucket: &str,
        key: &str,
        range: std::ops::Range<u64>,
        sse: Option<&Sse>,
    ) -> Result<Frames, S3Error> {
        let (a, object_size) = self
            .get(bucket, Source::key(key), Some(range), sse, true)
            .await?;
        Ok(Frames {
            etag: header_str(&a.headers, "etag").unwrap_or_default(),
            pieces: a.frames,
            object_size,
        })
    }

    /// A GetObject whose body (or frames) has the length the range asks
    /// for; also returns the object's size.
    async fn get(
        &self,
        bucket: &str,
        src: Source<'_>,
        range: Option<std::ops::Range<u64>>,
        sse: Option<&Sse>,
        frames: bool,
    ) -> Result<(Answer, u64), S3Error> {
        let mut r = Request::new(Op::GetObject, Method::GET, bucket, Some(src.key));
        r.frames = frames;
        if let Some(etag) = src.if_match {
            r = r.header("if-match", quote_etag(etag));
        }
        if let Some(range) = &range {
            if range.end <= range.start {
                return Err(S3Error::Config(format!("empty range {range:?}")));
            }
            r = r.header("range", format!("bytes={}-{}", range.start, range.end - 1));
            r.timeout = Deadline::Scaled(range.end - range.start);
        } else {
            r.timeout = Deadline::Fixed(SERVER_WORK_TIMEOUT);
        }
        let r = sse_headers(r, sse.filter(|s| matches!(s, Sse::Customer { .. })), false);
        let a = self.send(&r).await?;
        let got = a.body.len() as u64 + a.frames.iter().map(|f| f.len() as u64).sum::<u64>();
        let object_size = match header_str(&a.headers, "content-range") {
            Some(cr) => cr
                .rsplit('/')
                .next()
                .and_then(|t| t.trim().parse().ok())
                .ok_or_else(|| S3Error::malformed("GetObject", format!("Content-Range {cr:?}")))?,
            None => got,
        };
        if let Some(range) = range {
            let expect = range.end.min(object_size).saturating_sub(range.start);
            if got != expect {
                return Err(S3Error::malformed(
                    "GetObject",
                    format!("asked for {range:?} of {object_size} bytes, got {got}"),
                ));
            }
        }
        Ok((a, object_size))
    }

    /// HeadObject with user metadata (`x-amz-meta-*`); `sse` is the
    /// customer key an SSE-C object needs to answer.
    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
        sse: Option<&Sse>,
    ) -> Result<ObjectHead, S3Error> {
        let r = Request::new(Op::HeadObject, Method::HEAD, bucket, Some(key));
        let r = sse_headers(r, sse.filter(|s| matches!(s, Sse::Customer { .. })), false);
        let a = self.send(&r).await?;
        let h = &a.headers;
        let size = header_str(h, "content-length")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| S3Error::malformed("HeadObject", "no Content-Length"))?;
        let mut metadata = BTreeMap::new();
        for (name, value) in h {
            if let Some(m) = name.as_str().strip_prefix("x-amz-meta-") {
                if let Ok(v) = value.to_str() {
                    metadata.insert(m.to_string(), v.to_string());
                }
            }
        }
        let system = SYSTEM_HEADERS
            .iter()
            .filter_map(|n| header_str(h, n).map(|v| (n.to_string(), v)))
            .collect();
        let encryption = match header_str(h, "x-amz-server-side-encryption").as_deref() {
            Some("AES256") => Some(Sse::Aes256),
            Some(k) if k.starts_with("aws:kms") => Some(Sse::Kms {
                key_id: header_str(h, "x-amz-server-side-encryption-aws-kms-key-id"),
                dsse: k == "aws:kms:dsse",
            }),
            _ => None,
        };
        Ok(ObjectHead {
            size,
            etag: header_str(h, "etag").unwrap_or_default(),
            last_modified: header_str(h, "last-modified")
                .and_then(|s| httpdate::parse_http_date(&s).ok()),
            content_type: header_str(h, "content-type"),
            storage_class: header_str(h, "x-amz-storage-class"),
            metadata,
            system,
            encryption,
        })
    }

    /// DeleteObject (succeeds when the key is already absent, as S3 does).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), S3Error> {
        let r = Request::new(Op::DeleteObject, Method::DELETE, bucket, Some(key));
        self.send(&r).await.map(|_| ())
    }

    /// CopyObject (up to 5 GiB on S3), keeping or replacing metadata
    /// (`o.directive`); a pinned source must still have its ETag.
    pub async fn copy_object<'s>(
        &self,
        src_bucket: &str,
        src: impl Into<Source<'s>>,
        bucket: &str,
        key: &str,
        o: &CopyOptions<'_>,
    ) -> Result<String, S3Error> {
        let (src, sse) = (src.into(), o.sse);
        let mut r = Request::new(Op::CopyObject, Method::PUT, bucket, Some(key))
            .header("x-amz-copy-source", copy_source(src_bucket, src.key));
        r = source_conditions(sse_headers(r, sse, true), &src);
        r = match o.directive {
            MetadataDirective::Copy => {
                let mut r = r.header("x-amz-metadata-directive", "COPY");
                if let Some(extras) = o.extras {
                    r = placement_headers(r, extras);
                }
                sse_headers(r, sse, false)
            }
            MetadataDirective::Replace(o) => {
                let r = r.header("x-amz-metadata-directive", "REPLACE");
                put_headers(r, o)
            }
        };
        r.error_in_200 = true;
        r.timeout = Deadline::Fixed(SERVER_WORK_TIMEOUT);
        let a = self.send(&r).await?;
        xml::parse_etag_result("CopyObject", "CopyObjectResult", &a.body).map(|e| quote_etag(&e))
    }

    /// One page of ListObjectsV2, keys URL-encoded on the wire so any byte survives.
    pub async fn list_objects_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListPage, S3Error> {
        let v1 = self.cfg.list_v1;
        let mut r = Request::new(Op::ListObjects, Method::GET, bucket, None)
            .query("encoding-type", "url")
            .query("prefix", prefix);
        if !v1 {
            r = r.query("list-type", "2");
        }
        if let Some(d) = delimiter {
            r = r.query("delimiter", d);
        }
        if let Some(t) = token {
            // V1 pages by the last key seen (our token is that key).
            r = r.query(if v1 { "marker" } else { "continuation-token" }, t);
        }
        if let Some(m) = max_keys {
            r = r.query("max-keys", m.to_string());
        }
        let a = self.send(&r).await?;
        if v1 {
            xml::parse_list_objects_v1(&a.body)
        } else {
            xml::parse_list_objects(&a.body)
        }
    }

    /// Every page of a listing. A server that loops is an error, not a hang
    /// ([`paging`](super::paging)).
    pub async fn list_objects_all(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<ListPage, S3Error> {
        let mut all = ListPage::default();
        super::paging::each_page(
            "ListObjectsV2",
            |token| async move {
                self.list_objects_page(bucket, prefix, delimiter, token.as_deref(), None)
                    .await
            },
            |page| {
                all.objects.extend(page.objects);
                all.common_prefixes.extend(page.common_prefixes);
                Ok::<_, S3Error>(())
            },
        )
        .await?;
        Ok(all)
    }

    // ---- multipart ----

    /// CreateMultipartUpload; returns the upload ID. Not retried once the
    /// request may have reached the server (a retry could leave an orphan).
    pub async fn create_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        opts: &PutOptions,
    ) -> Result<String, S3Error> {
        let mut r = put_headers(
            Request::new(Op::CreateMultipartUpload, Method::POST, bucket, Some(key)),
            opts,
        )
        .query("uploads", "");
        r.idempotent = false;
        let a = self.send(&r).await?;
        xml::parse_initiate(&a.body)
    }

    /// UploadPart with Content-MD5; checks the part ETag is that MD5.
    pub async fn upload_part(
        &self,
        bucket: &str,
        key: &str,
        part: PartUpload<'_>,
    ) -> Result<String, S3Error> {
        let PartUpload {
            upload_id,
            number,
            body,
            md5,
            sse,
        } = part;
        let md5 = md5.unwrap_or_else(|| md5_of(&body));
        let r = Request::new(Op::UploadPart, Method::PUT, bucket, Some(key))
            .query("partNumber", number.to_string())
            .query("uploadId", upload_id)
            .body(body, Some(md5));
        let r = sse_headers(r, sse.filter(|s| matches!(s, Sse::Customer { .. })), false);
        let a = self.send(&r).await?;
        checked_etag(
            || format!("UploadPart {key:?} part {number}"),
            &a.headers,
            &md5,
            sse,
        )
    }

    /// UploadPartCopy of a range of the source (or all of it); a pinned
    /// source must still have its ETag. Answers the part's ETag, quoted.
    pub async fn upload_part_copy(
        &self,
        bucket: &str,
        key: &str,
        part: PartCopy<'_>,
    ) -> Result<String, S3Error> {
        let customer = part.sse.filter(|s| matches!(s, Sse::Customer { .. }));
        let mut r = Request::new(Op::UploadPartCopy, Method::PUT, bucket, Some(key))
            .query("partNumber", part.number.to_string())
            .query("uploadId", part.upload_id)
            .header(
                "x-amz-copy-source",
                copy_source(part.src_bucket, part.src.key),
            );
        if let Some(range) = part.range {
            if range.end <= range.start {
                return Err(S3Error::Config(format!("empty copy range {range:?}")));
            }
            r = r.header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        }
        r = source_conditions(r, &part.src);
        r = sse_headers(sse_headers(r, customer, true), customer, false);
        r.error_in_200 = true;
        r.timeout = Deadline::Fixed(SERVER_WORK_TIMEOUT);
        let a = self.send(&r).await?;
        xml::parse_etag_result("UploadPartCopy", "CopyPartResult", &a.body).map(|e| quote_etag(&e))
    }

    /// CompleteMultipartUpload; parts are sorted by number first. A 200 that
    /// carries an `<Error>` is an error.
    pub async fn complete_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<String, S3Error> {
        let mut sorted = parts.to_vec();
        sorted.sort_by_key(|p| p.0);
        let body = Bytes::from(xml::complete_body(&sorted));
        let mut r = Request::new(Op::CompleteMultipartUpload, Method::POST, bucket, Some(key))
            .query("uploadId", upload_id)
            .header("content-type", "application/xml")
            // With its MD5 the XML goes unsigned like every other body: OBS's
            // V4 accepts no signed payload.
            .body(body.clone(), Some(md5_of(&body)));
        r.idempotent = false;
        r.error_in_200 = true;
        r.timeout = Deadline::Fixed(SERVER_WORK_TIMEOUT);
        let a = self.send(&r).await?;
        xml::parse_etag_result(
            "CompleteMultipartUpload",
            "CompleteMultipartUploadResult",
            &a.body,
        )
    }

    /// AbortMultipartUpload.
    pub async fn abort_multipart_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), S3Error> {
        let r = Request::new(Op::AbortMultipartUpload, Method::DELETE, bucket, Some(key))
            .query("uploadId", upload_id);
        self.send(&r).await.map(|_| ())
    }

    /// One page of ListParts, after `marker`.
    pub async fn list_parts_page(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        marker: u32,
        max_parts: Option<u32>,
    ) -> Result<PartsPage, S3Error> {
        let mut r = Request::new(Op::ListParts, Method::GET, bucket, Some(key))
            .query("uploadId", upload_id);
        if marker > 0 {
            r = r.query("part-number-marker", marker.to_string());
        }
        if let Some(m) = max_parts {
            r = r.query("max-parts", m.to_string());
        }
        let a = self.send(&r).await?;
        xml::parse_list_parts(&a.body)
    }

    /// Every part of an upload, following `part-number-marker` pages.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        max_parts: Option<u32>,
    ) -> Result<Vec<PartInfo>, S3Error> {
        let mut parts = Vec::new();
        let mut marker = 0u32;
        loop {
            let page = self
                .list_parts_page(bucket, key, upload_id, marker, max_parts)
                .await?;
            parts.extend(page.parts);
            match page.next_marker {
                None => return Ok(parts),
                Some(m) if m <= marker => {
                    return Err(S3Error::malformed(
                        "ListParts",
                        format!("part-number-marker did not advance ({marker} -> {m})"),
                    ))
                }
                Some(m) => marker = m,
            }
        }
    }

    /// One page of ListMultipartUploads.
    pub async fn list_uploads_page(
        &self,
        bucket: &str,
        prefix: &str,
        marker: Option<&(String, String)>,
        max_uploads: Option<u32>,
    ) -> Result<UploadsPage, S3Error> {
        let mut r = Request::new(Op::ListMultipartUploads, Method::GET, bucket, None)
            .query("uploads", "")
            .query("encoding-type", "url")
            .query("prefix", prefix);
        if let Some((k, u)) = marker {
            r = r.query("key-marker", k.clone());
            if !u.is_empty() {
                r = r.query("upload-id-marker", u.clone());
            }
        }
        if let Some(m) = max_uploads {
            r = r.query("max-uploads", m.to_string());
        }
        let a = self.send(&r).await?;
        xml::parse_list_uploads(&a.body)
    }

    /// Every in-progress upload under `prefix`, following key/upload-id markers.
    pub async fn list_uploads(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<UploadInfo>, S3Error> {
        let mut all = Vec::new();
        let mut marker: Option<(String, String)> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .list_uploads_page(bucket, prefix, marker.as_ref(), None)
                .await?;
            all.extend(page.uploads);
            match page.next {
                None => return Ok(all),
                Some(m) if Some(&m) == marker.as_ref() => {
                    return Err(S3Error::malformed(
                        "ListMultipartUploads",
                        format!("markers repeated: {m:?}"),
                    ))
                }
                Some(m) => marker = Some(m),
            }
        }
        Err(S3Error::malformed("ListMultipartUploads", "too many pages"))
    }
}

/// Whether the server says it stored the object encrypted (a bucket's
/// default encryption too): vendors differ on whether the ETag is then the MD5.
fn answer_says_encrypted(h: &HeaderMap) -> bool {
    h.contains_key("x-amz-server-side-encryption")
        || h.contains_key("x-amz-server-side-encryption-customer-algorithm")
}

/// The ETag of a PutObject or UploadPart answer, checked against the body's
/// MD5. Not judged where the ETag is not an MD5: under SSE-KMS and SSE-C,
/// or when the answer says the object was stored encrypted and its ETag
/// differs (vendors differ); Content-MD5 still made the server verify the body.
pub(super) fn checked_etag(
    what: impl Fn() -> String,
    answer: &HeaderMap,
    md5: &[u8; 16],
    sse: Option<&Sse>,
) -> Result<String, S3Error> {
    let etag = header_str(answer, "etag").unwrap_or_default();
    let expected = hex(md5);
    if bare_etag(&etag) == expected {
        return Ok(etag);
    }
    if !Sse::etag_is_md5(sse) || answer_says_encrypted(answer) {
        tracing::debug!(what = %what(), etag, "ETag not checked: encrypted object");
        return Ok(etag);
    }
    Err(S3Error::EtagMismatch {
        what: what(),
        expected,
        got: etag,
    })
}

pub(super) fn sse_headers<'a>(r: Request<'a>, sse: Option<&Sse>, copy_source: bool) -> Request<'a> {
    let prefix = if copy_source {
        "x-amz-copy-source-server-side-encryption-customer"
    } else {
        "x-amz-server-side-encryption-customer"
    };
    match sse {
        None => r,
        Some(s @ Sse::Aes256) if !copy_source => {
            r.header("x-amz-server-side-encryption", s.algorithm())
        }
        Some(s @ Sse::Kms { key_id, .. }) if !copy_source => {
            let r = r.header("x-amz-server-side-encryption", s.algorithm());
            match key_id {
                Some(id) => r.header("x-amz-server-side-encryption-aws-kms-key-id", id.clone()),
                None => r,
            }
        }
        Some(s @ Sse::Customer { key }) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            r.header(&format!("{prefix}-algorithm"), s.algorithm())
                .header(&format!("{prefix}-key"), b64.encode(key))
                .header(&format!("{prefix}-key-md5"), b64.encode(md5_of(key)))
        }
        Some(_) => r,
    }
}

fn put_headers<'a>(mut r: Request<'a>, o: &PutOptions) -> Request<'a> {
    if let Some(ct) = &o.content_type {
        r = r.header("content-type", ct.clone());
    }
    for (k, v) in &o.metadata {
        r = r.header(&format!("x-amz-meta-{}", k.to_ascii_lowercase()), v.clone());
    }
    let r = placement_headers(r, o);
    sse_headers(r, o.sse.as_ref(), false)
}

/// Storage class, ACL and extra (vendor) headers: what a copy keeps
/// sending even when it copies the metadata.
fn placement_headers<'a>(mut r: Request<'a>, o: &PutOptions) -> Request<'a> {
    if let Some(sc) = &o.storage_class {
        r = r.header("x-amz-storage-class", sc.clone());
    }
    if let Some(acl) = &o.acl {
        r = r.header("x-amz-acl", acl.clone());
    }
    for (k, v) in &o.extra_headers {
        r = r.header(k, v.clone());
    }
    r
}

/// A pinned copy source: `x-amz-copy-source-if-match`.
fn source_conditions<'a>(r: Request<'a>, src: &Source<'_>) -> Request<'a> {
    match src.if_match {
        Some(etag) => r.header("x-amz-copy-source-if-match", quote_etag(etag)),
        None => r,
    }
}

/// The `x-amz-copy-source` value: `/bucket/key`, key URL-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    format!("/{}/{}", bucket, sigv4::uri_encode(key, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The encryption headers each kind of SSE puts on a write.
    #[test]
    fn sse_headers_name_the_kind() {
        let sent = |sse: Sse| {
            let r = Request::new(Op::PutObject, Method::PUT, "b", Some("k"));
            sse_headers(r, Some(&sse), false).headers
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            sent(Sse::Aes256),
            [pair("x-amz-server-side-encryption", "AES256")]
        );
        assert_eq!(
            sent(Sse::Kms {
                key_id: Some("k1".into()),
                dsse: false
            }),
            [
                pair("x-amz-server-side-encryption", "aws:kms"),
                pair("x-amz-server-side-encryption-aws-kms-key-id", "k1")
            ]
        );
        assert_eq!(
            sent(Sse::Kms {
                key_id: None,
                dsse: true
            }),
            [pair("x-amz-server-side-encryption", "aws:kms:dsse")]
        );
    }

    #[test]
    fn etag_check_and_sse_exception() {
        let m = md5_of(b"hello");
        let answer = |etag: &str, extra: Option<(&'static str, &str)>| {
            let mut h = HeaderMap::new();
            h.insert("etag", etag.parse().unwrap());
            if let Some((k, v)) = extra {
                h.insert(k, v.parse().unwrap());
            }
            h
        };
        let good = format!("\"{}\"", hex(&m).to_uppercase());
        assert_eq!(
            checked_etag(String::new, &answer(&good, None), &m, None).unwrap(),
            good
        );
        let bad = answer("\"deadbeef\"", None);
        assert!(checked_etag(String::new, &bad, &m, None).is_err());
        assert!(checked_etag(String::new, &bad, &m, Some(&Sse::Aes256)).is_err());
        let kms = Sse::Kms {
            key_id: None,
            dsse: false,
        };
        assert!(checked_etag(String::new, &bad, &m, Some(&kms)).is_ok());
        // The answer says the object was stored encrypted (a bucket default,
        // a vendor's SSE): an ETag that is not the MD5 is not judged.
        let enc = answer(
            "\"deadbeef\"",
            Some(("x-amz-server-side-encryption", "AES256")),
        );
        assert!(checked_etag(String::new, &enc, &m, None).is_ok());
    }
}
