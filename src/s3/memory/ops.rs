//! The object and multipart operations, synchronous, run by
//! [`MemoryStore::call`]: each refuses what S3 refuses, then acts on the data.

use super::{lock, quoted, service, Attrs, Data, MemoryStore, Part, StoredObject, Upload};
use crate::s3::error::S3Error;
use crate::s3::etag::{bare_etag, hex, md5_of, multipart_etag};
use crate::s3::rules::{self, MAX_METADATA_SIZE, MAX_PARTS};
use crate::s3::types::*;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::SystemTime;

/// Storage classes S3 accepts in `x-amz-storage-class`.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

fn no_such_key() -> S3Error {
    service(404, "NoSuchKey", "The specified key does not exist.")
}

fn no_such_upload() -> S3Error {
    service(
        404,
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID may be invalid, \
         or the upload may have been aborted or completed.",
    )
}

fn bad_digest() -> S3Error {
    service(
        400,
        "BadDigest",
        "The Content-MD5 you specified did not match what we received.",
    )
}

fn entity_too_large(size: u64, max: u64) -> S3Error {
    service(
        400,
        "EntityTooLarge",
        format!("Your proposed upload exceeds the maximum allowed size ({size} > {max} bytes)"),
    )
}

/// Refuses the keys [`rules::check_key`] refuses, S3's errors with a
/// request id as this store gives every error.
fn check_key(key: &str) -> Result<(), S3Error> {
    rules::check_key(key).map_err(|e| match e {
        S3Error::Service {
            status,
            code,
            message,
            ..
        } => service(status, &code, message),
        other => other,
    })
}

/// A pinned source whose ETag changed: 412, as S3 answers.
fn check_if_match(o: &StoredObject, src: &Source<'_>, header: &str) -> Result<(), S3Error> {
    match src.if_match {
        Some(want) if bare_etag(want) != bare_etag(&o.etag) => Err(service(
            412,
            "PreconditionFailed",
            format!("At least one of the pre-conditions you specified did not hold ({header})"),
        )),
        _ => Ok(()),
    }
}

fn check_part_number(n: u32) -> Result<(), S3Error> {
    if (1..=MAX_PARTS).contains(&n) {
        Ok(())
    } else {
        Err(service(
            400,
            "InvalidArgument",
            format!(
                "Part number must be an integer between 1 and {MAX_PARTS}, inclusive (got {n})"
            ),
        ))
    }
}

/// Validates [`PutOptions`] as S3 would and turns them into stored attributes.
fn attrs_of(opts: &PutOptions) -> Result<Attrs, S3Error> {
    let size: usize = opts
        .metadata
        .iter()
        .map(|(k, v)| k.len().saturating_add(v.len()))
        .fold(0usize, usize::saturating_add);
    if size > MAX_METADATA_SIZE {
        return Err(service(
            400,
            "MetadataTooLarge",
            format!("Your metadata headers exceed the maximum allowed metadata size ({size} > {MAX_METADATA_SIZE} bytes)"),
        ));
    }
    if let Some(sc) = &opts.storage_class {
        if !STORAGE_CLASSES.contains(&sc.as_str()) {
            return Err(service(
                400,
                "InvalidStorageClass",
                format!("The storage class you specified is not valid: {sc:?}"),
            ));
        }
    }
    Ok(Attrs::of(opts))
}

impl MemoryStore {
    pub(super) fn do_put(
        &self,
        key: &str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<String, S3Error> {
        check_key(key)?;
        let mut attrs = attrs_of(opts)?;
        let size = body.len() as u64;
        if size > self.limits.max_body_size {
            return Err(entity_too_large(size, self.limits.max_body_size));
        }
        let actual = md5_of(&body);
        if md5.is_some_and(|m| m != actual) {
            return Err(bad_digest());
        }
        let (body, actual) = if key.ends_with('/') && lock(&self.faults).markers_drop_metadata {
            attrs.metadata.clear();
            (Bytes::new(), md5_of(b""))
        } else {
            (body, actual)
        };
        let etag = quoted(&hex(&actual));
        lock(&self.data)
            .objects
            .insert(key.to_string(), Self::stored(body, etag.clone(), attrs));
        Ok(etag)
    }

    pub(super) fn do_create(&self, key: &str, opts: &PutOptions) -> Result<String, S3Error> {
        check_key(key)?;
        let attrs = attrs_of(opts)?;
        let mut d = lock(&self.data);
        d.upload_seq += 1;
        let seq = d.upload_seq;
        let id = format!("mem-{seq:08}-{:016x}", fastrand::u64(..));
        d.uploads.insert(
            id.clone(),
            Upload {
                key: key.to_string(),
                attrs,
                initiated: SystemTime::now(),
                seq,
                parts: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// The upload `id`, when it exists and belongs to `key`.
    fn upload_mut<'d>(d: &'d mut Data, key: &str, id: &str) -> Result<&'d mut Upload, S3Error> {
        match d.uploads.get_mut(id) {
            Some(u) if u.key == key => Ok(u),
            _ => Err(no_such_upload()),
        }
    }

    pub(super) fn do_upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        body: Bytes,
        md5: [u8; 16],
    ) -> Result<String, S3Error> {
        check_key(key)?;
        check_part_number(part_number)?;
        if body.is_empty() {
            return Err(service(
                400,
                "InvalidArgument",
                "empty part (Garage rejects a zero-byte part; the engine must never send one)",
            ));
        }
        let size = body.len() as u64;
        if size > self.limits.max_body_size {
            return Err(entity_too_large(size, self.limits.max_body_size));
        }
        let actual = md5_of(&body);
        if md5 != actual {
            return Err(bad_digest());
        }
        let etag = quoted(&hex(&actual));
        let mut d = lock(&self.data);
        let u = Self::upload_mut(&mut d, key, upload_id)?;
        u.parts.insert(
            part_number,
            Part {
                body,
                md5: actual,
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    pub(super) fn do_upload_part_copy(
        &self,
        key: &str,
        upload_id: &str,
        part_number: u32,
        from: Source<'_>,
        range: Range<u64>,
    ) -> Result<String, S3Error> {
        check_key(key)?;
        check_key(from.key)?;
        check_part_number(part_number)?;
        let mut d = lock(&self.data);
        Self::upload_mut(&mut d, key, upload_id)?;
        let src = d.objects.get(from.key).ok_or_else(no_such_key)?;
        check_if_match(src, &from, "x-amz-copy-source-if-match")?;
        let src_size = src.body.len() as u64;
        if range.start >= range.end {
            return Err(service(
                400,
                "InvalidArgument",
                format!(
                    "The x-amz-copy-source-range value must be of the form bytes=first-last \
                     where first and last are the zero-based offsets of the first and last \
                     bytes to copy (got {range:?})"
                ),
            ));
        }
        if range.end > src_size {
            // What S3 answers (not 416): "Range specified is not valid for source object of size".
            return Err(service(
                400,
                "InvalidArgument",
                format!("Range specified is not valid for source object of size: {src_size}"),
            ));
        }
        let len = range.end - range.start;
        if len > self.limits.max_body_size {
            return Err(entity_too_large(len, self.limits.max_body_size));
        }
        // Both ends are within the body's length, so they fit in usize.
        let body = src.body.slice(range.start as usize..range.end as usize);
        let md5 = md5_of(&body);
        let etag = quoted(&hex(&md5));
        let u = Self::upload_mut(&mut d, key, upload_id)?;
        u.parts.insert(
            part_number,
            Part {
                body,
                md5,
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    pub(super) fn do_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<String, S3Error> {
        check_key(key)?;
        let mut d = lock(&self.data);
        let u = Self::upload_mut(&mut d, key, upload_id)?;
        if parts.is_empty() {
            return Err(service(
                400,
                "MalformedXML",
                "The XML you provided was not well-formed or did not validate against our \
                 published schema (no parts)",
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(service(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part number.",
            ));
        }
        let mut chosen: Vec<&Part> = Vec::with_capacity(parts.len());
        for (number, etag) in parts {
            match u.parts.get(number) {
                Some(p) if bare_etag(&p.etag) == bare_etag(etag) => chosen.push(p),
                _ => {
                    return Err(service(
                        400,
                        "InvalidPart",
                        format!(
                            "One or more of the specified parts could not be found. The part may \
                             not have been uploaded, or the specified entity tag may not match \
                             the part's entity tag. (part {number}, ETag {etag:?})"
                        ),
                    ))
                }
            }
        }
        let last = chosen.len() - 1;
        for (i, p) in chosen.iter().enumerate() {
            let size = p.body.len() as u64;
            if i < last && size < self.limits.min_part_size {
                return Err(service(
                    400,
                    "EntityTooSmall",
                    format!(
                        "Your proposed upload is smaller than the minimum allowed object size \
                         (part {} is {size} bytes, minimum {} except the last part)",
                        parts[i].0, self.limits.min_part_size
                    ),
                ));
            }
        }
        let total = chosen
            .iter()
            .map(|p| p.body.len() as u64)
            .fold(0u64, u64::saturating_add);
        if total > self.limits.max_object_size {
            return Err(entity_too_large(total, self.limits.max_object_size));
        }
        let md5s: Vec<[u8; 16]> = chosen.iter().map(|p| p.md5).collect();
        let etag = quoted(&multipart_etag(&md5s));
        let body = if chosen.len() == 1 {
            chosen[0].body.clone()
        } else {
            // `total` is the sum of lengths of bodies in memory, so it fits in usize.
            let mut buf = BytesMut::with_capacity(total as usize);
            for p in &chosen {
                buf.extend_from_slice(&p.body);
            }
            buf.freeze()
        };
        let attrs = u.attrs.clone();
        d.uploads.remove(upload_id);
        d.objects
            .insert(key.to_string(), Self::stored(body, etag.clone(), attrs));
        Ok(etag)
    }

    pub(super) fn do_abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        check_key(key)?;
        let mut d = lock(&self.data);
        Self::upload_mut(&mut d, key, upload_id)?;
        d.uploads.remove(upload_id);
        Ok(())
    }

    pub(super) fn do_list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, S3Error> {
        check_key(key)?;
        let mut d = lock(&self.data);
        let u = Self::upload_mut(&mut d, key, upload_id)?;
        Ok(u.parts
            .iter()
            .map(|(n, p)| PartInfo {
                part_number: *n,
                etag: p.etag.clone(),
                size: p.body.len() as u64,
            })
            .collect())
    }

    pub(super) fn do_list_uploads(&self, prefix: &str) -> Vec<UploadInfo> {
        let d = lock(&self.data);
        let mut v: Vec<(&String, SystemTime, u64, &String)> = d
            .uploads
            .iter()
            .filter(|(_, u)| u.key.starts_with(prefix))
            .map(|(id, u)| (&u.key, u.initiated, u.seq, id))
            .collect();
        v.sort();
        v.into_iter()
            .map(|(key, initiated, _, id)| UploadInfo {
                key: key.clone(),
                upload_id: id.clone(),
                initiated,
            })
            .collect()
    }

    pub(super) fn do_get(
        &self,
        src: Source<'_>,
        range: Option<Range<u64>>,
    ) -> Result<GetResult, S3Error> {
        check_key(src.key)?;
        let d = lock(&self.data);
        let o = d.objects.get(src.key).ok_or_else(no_such_key)?;
        check_if_match(o, &src, "If-Match")?;
        let size = o.body.len() as u64;
        let body = match range {
            None => o.body.clone(),
            Some(r) => {
                if r.start >= r.end || r.start >= size {
                    return Err(service(
                        416,
                        "InvalidRange",
                        format!(
                            "The requested range is not satisfiable (bytes {r:?} of an object of {size} bytes)"
                        ),
                    ));
                }
                // start < size, end clamped to size: both fit in usize.
                o.body.slice(r.start as usize..r.end.min(size) as usize)
            }
        };
        Ok(GetResult {
            body,
            object_size: size,
            etag: o.etag.clone(),
        })
    }

    pub(super) fn do_head(&self, key: &str) -> Result<ObjectHead, S3Error> {
        check_key(key)?;
        let d = lock(&self.data);
        let o = d
            .objects
            .get(key)
            .ok_or_else(|| service(404, "NotFound", "Not Found"))?;
        Ok(ObjectHead {
            size: o.body.len() as u64,
            etag: o.etag.clone(),
            last_modified: Some(o.last_modified),
            content_type: Some(o.content_type.clone()),
            // S3 sends no x-amz-storage-class header for STANDARD.
            storage_class: o.storage_class.clone().filter(|s| s != "STANDARD"),
            metadata: o.metadata.clone(),
            system: o.headers.clone(),
            encryption: o.sse.clone(),
        })
    }

    pub(super) fn do_delete(&self, key: &str) -> Result<(), S3Error> {
        check_key(key)?;
        lock(&self.data).objects.remove(key);
        Ok(())
    }

    pub(super) fn do_copy(
        &self,
        from: Source<'_>,
        key: &str,
        directive: &MetadataDirective,
    ) -> Result<String, S3Error> {
        let src_key = from.key;
        check_key(src_key)?;
        check_key(key)?;
        let replace = match directive {
            MetadataDirective::Copy => None,
            MetadataDirective::Replace(opts) => Some(attrs_of(opts)?),
        };
        let mut d = lock(&self.data);
        let src = d.objects.get(src_key).ok_or_else(no_such_key)?;
        check_if_match(src, &from, "x-amz-copy-source-if-match")?;
        let size = src.body.len() as u64;
        if size > self.limits.max_copy_size {
            return Err(service(
                400,
                "InvalidRequest",
                format!(
                    "The specified copy source is larger than the maximum allowable size for a \
                     copy source: {} (source is {size} bytes)",
                    self.limits.max_copy_size
                ),
            ));
        }
        if src_key == key && replace.is_none() {
            return Err(service(
                400,
                "InvalidRequest",
                "This copy request is illegal because it is trying to copy an object to itself \
                 without changing the object's metadata, storage class, website redirect \
                 location or encryption attributes.",
            ));
        }
        let attrs = replace.unwrap_or_else(|| Attrs {
            content_type: src.content_type.clone(),
            metadata: src.metadata.clone(),
            // Without x-amz-storage-class the copy is STANDARD, as on S3;
            // without encryption headers it gets the bucket's default (none).
            storage_class: None,
            headers: src.headers.clone(),
            sse: None,
        });
        let obj = Self::stored(src.body.clone(), src.etag.clone(), attrs);
        let etag = obj.etag.clone();
        d.objects.insert(key.to_string(), obj);
        Ok(etag)
    }
}
