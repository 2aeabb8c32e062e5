//! S3's XML bodies: serde structs for the answers we read, a writer for the
//! one request body we send (CompleteMultipartUpload), and URL decoding for
//! listings requested with `encoding-type=url`.
//!
//! Every parser returns `S3Error::Malformed` on bad input; none panics.

use super::error::S3Error;
use super::types::{ListPage, ObjectEntry, PartInfo, PartsPage, UploadInfo, UploadsPage};
use serde::Deserialize;
use std::time::SystemTime;

/// `<Error>`: the body of every failed S3 call (and of some 200 answers).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub request_id: String,
    /// Where the bucket really is, on a PermanentRedirect or AuthorizationHeaderMalformed.
    pub region: Option<String>,
}

/// Parses an `<Error>` document; `None` when the body is not one.
pub fn parse_error(body: &[u8]) -> Option<ErrorBody> {
    let text = std::str::from_utf8(body).ok()?;
    if root_element(text)? != "Error" {
        return None;
    }
    quick_xml::de::from_str::<ErrorBody>(text).ok()
}

/// The name of the first element of a document, skipping the XML
/// declaration, comments and the whitespace S3 sends to keep long requests alive.
pub fn root_element(text: &str) -> Option<&str> {
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("<?") {
            rest = &r[r.find("?>")? + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = &r[r.find("-->")? + 3..];
        } else if let Some(r) = rest.strip_prefix('<') {
            let end = r.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
            return Some(&r[..end]);
        } else {
            return None;
        }
    }
}

fn de<'a, T: Deserialize<'a>>(operation: &'static str, body: &'a [u8]) -> Result<T, S3Error> {
    let text = std::str::from_utf8(body).map_err(|e| S3Error::malformed(operation, e))?;
    quick_xml::de::from_str(text).map_err(|e| S3Error::malformed(operation, e))
}

fn time(operation: &'static str, s: &str) -> Result<SystemTime, S3Error> {
    humantime::parse_rfc3339_weak(s.trim())
        .map_err(|e| S3Error::malformed(operation, format!("bad timestamp {s:?}: {e}")))
}

/// Decodes a value S3 encoded because we asked for `encoding-type=url`:
/// `%XX` escapes and `+` for space (AWS writes a literal `+` as `%2B`).
pub fn url_decode(operation: &'static str, s: &str) -> Result<String, S3Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| S3Error::malformed(operation, format!("bad escape in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| {
        S3Error::malformed(operation, format!("key is not UTF-8 after decoding {s:?}"))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateResult {
    upload_id: String,
}

/// Reads the upload ID out of a CreateMultipartUpload answer.
pub fn parse_initiate(body: &[u8]) -> Result<String, S3Error> {
    let r: InitiateResult = de("CreateMultipartUpload", body)?;
    if r.upload_id.is_empty() {
        return Err(S3Error::malformed(
            "CreateMultipartUpload",
            "empty UploadId",
        ));
    }
    Ok(r.upload_id)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EtagResult {
    #[serde(rename = "ETag")]
    etag: String,
}

/// Reads the ETag of CompleteMultipartUploadResult, CopyObjectResult or CopyPartResult,
/// after checking the document is the expected one (not an `<Error>` in a 200).
pub fn parse_etag_result(
    operation: &'static str,
    expected_root: &str,
    body: &[u8],
) -> Result<String, S3Error> {
    let text = std::str::from_utf8(body).map_err(|e| S3Error::malformed(operation, e))?;
    match root_element(text) {
        Some(root) if root == expected_root => {}
        Some(other) => {
            return Err(S3Error::malformed(
                operation,
                format!("expected <{expected_root}>, got <{other}>"),
            ))
        }
        None => return Err(S3Error::malformed(operation, "empty or truncated body")),
    }
    let r: EtagResult = de(operation, body)?;
    Ok(r.etag)
}

/// Builds the CompleteMultipartUpload request body. Parts must already be sorted.
pub fn complete_body(parts: &[(u32, String)]) -> String {
    let mut s = String::with_capacity(64 + parts.len() * 96);
    s.push_str("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (n, etag) in parts {
        s.push_str("<Part><PartNumber>");
        s.push_str(&n.to_string());
        s.push_str("</PartNumber><ETag>");
        s.push_str(&quick_xml::escape::escape(etag.as_str()));
        s.push_str("</ETag></Part>");
    }
    s.push_str("</CompleteMultipartUpload>");
    s
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    encoding_type: Option<String>,
    #[serde(default)]
    next_continuation_token: Option<String>,
    /// V1 listings page by marker instead.
    #[serde(default)]
    next_marker: Option<String>,
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    #[serde(default)]
    last_modified: Option<String>,
    #[serde(rename = "ETag", default)]
    etag: Option<String>,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    storage_class: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

/// Parses one ListObjectsV2 page, decoding keys when the server says it encoded them.
pub fn parse_list_objects(body: &[u8]) -> Result<ListPage, S3Error> {
    parse_list(body, false)
}

/// A page of ListObjects (V1). The token of the next page is its marker:
/// NextMarker when the server gives one (it does with a delimiter), else
/// the last key or prefix of this page.
pub fn parse_list_objects_v1(body: &[u8]) -> Result<ListPage, S3Error> {
    parse_list(body, true)
}

fn parse_list(body: &[u8], v1: bool) -> Result<ListPage, S3Error> {
    const OP: &str = "ListObjectsV2";
    let r: ListBucketResult = de(OP, body)?;
    let encoded = r.encoding_type.as_deref() == Some("url");
    let dec = |s: String| if encoded { url_decode(OP, &s) } else { Ok(s) };
    let mut objects = Vec::with_capacity(r.contents.len());
    for c in r.contents {
        objects.push(ObjectEntry {
            key: dec(c.key)?,
            size: c.size,
            etag: c.etag.unwrap_or_default(),
            last_modified: match c.last_modified {
                Some(t) => Some(time(OP, &t)?),
                None => None,
            },
            storage_class: c.storage_class,
        });
    }
    let common_prefixes = r
        .common_prefixes
        .into_iter()
        .map(|p| dec(p.prefix))
        .collect::<Result<Vec<_>, _>>()?;
    let next_token = match (r.is_truncated, r.next_continuation_token, r.next_marker) {
        (false, _, _) => None,
        (true, Some(t), _) if !t.is_empty() => Some(t),
        (true, _, Some(m)) if !m.is_empty() => Some(dec(m)?),
        (true, _, _) if v1 => {
            let last_key = objects.last().map(|o| o.key.clone());
            let last_prefix = common_prefixes.last().cloned();
            match last_key.max(last_prefix) {
                Some(m) => Some(m),
                None => {
                    return Err(S3Error::malformed(
                        "ListObjects",
                        "IsTruncated is true but the page is empty",
                    ))
                }
            }
        }
        (true, _, _) => {
            return Err(S3Error::malformed(
                OP,
                "IsTruncated is true but no NextContinuationToken was given",
            ))
        }
    };
    Ok(ListPage {
        objects,
        common_prefixes,
        next_token,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    next_part_number_marker: Option<u32>,
    #[serde(default)]
    part: Vec<PartXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PartXml {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    size: u64,
}

/// Parses one ListParts page.
pub fn parse_list_parts(body: &[u8]) -> Result<PartsPage, S3Error> {
    const OP: &str = "ListParts";
    let r: ListPartsResult = de(OP, body)?;
    let parts = r
        .part
        .into_iter()
        .map(|p| PartInfo {
            part_number: p.part_number,
            etag: p.etag,
            size: p.size,
        })
        .collect();
    let next_marker = match (r.is_truncated, r.next_part_number_marker) {
        (false, _) => None,
        (true, Some(m)) => Some(m),
        (true, None) => {
            return Err(S3Error::malformed(
                OP,
                "IsTruncated is true but no NextPartNumberMarker was given",
            ))
        }
    };
    Ok(PartsPage { parts, next_marker })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListUploadsResult {
    #[serde(default)]
    is_truncated: bool,
    #[serde(default)]
    encoding_type: Option<String>,
    #[serde(default)]
    next_key_marker: Option<String>,
    #[serde(default)]
    next_upload_id_marker: Option<String>,
    #[serde(default)]
    upload: Vec<UploadXml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UploadXml {
    key: String,
    upload_id: String,
    initiated: String,
}

/// Parses one ListMultipartUploads page.
pub fn parse_list_uploads(body: &[u8]) -> Result<UploadsPage, S3Error> {
    const OP: &str = "ListMultipartUploads";
    let r: ListUploadsResult = de(OP, body)?;
    // The request always asks for url encoding. Ceph RGW 16 encodes the
    // keys but does not say so (no <EncodingType>): when every key reads
    // as url-encoded (nothing but unreserved bytes, '/' and %XX, at least
    // one %XX), they are taken as encoded.
    let looks_encoded = |k: &str| {
        k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~/%+".contains(&b))
            && url_decode(OP, k).is_ok()
    };
    let silently_encoded = r.encoding_type.is_none()
        && r.upload.iter().all(|u| looks_encoded(&u.key))
        && r.upload.iter().any(|u| u.key.contains('%'));
    let encoded = r.encoding_type.as_deref() == Some("url") || silently_encoded;
    let dec = |s: String| if encoded { url_decode(OP, &s) } else { Ok(s) };
    let mut uploads = Vec::with_capacity(r.upload.len());
    for u in r.upload {
        uploads.push(UploadInfo {
            key: dec(u.key)?,
            upload_id: u.upload_id,
            initiated: time(OP, &u.initiated)?,
        });
    }
    let next = if r.is_truncated {
        match r.next_key_marker {
            Some(k) if !k.is_empty() => {
                Some((dec(k)?, r.next_upload_id_marker.unwrap_or_default()))
            }
            // SeaweedFS lists by upload ID and names only the next one:
            // it pages by upload-id-marker alone (an empty key-marker).
            _ if r
                .next_upload_id_marker
                .as_deref()
                .is_some_and(|m| !m.is_empty()) =>
            {
                Some((String::new(), r.next_upload_id_marker.unwrap_or_default()))
            }
            // No marker at all: the page's last upload is where the next
            // one starts, as ListObjects V1 does without NextMarker.
            _ => match uploads.last() {
                Some(u) => Some((u.key.clone(), u.upload_id.clone())),
                None => {
                    return Err(S3Error::malformed(
                        OP,
                        "IsTruncated is true on an empty page with no NextKeyMarker",
                    ))
                }
            },
        }
    } else {
        None
    };
    Ok(UploadsPage { uploads, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body() {
        let b = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>NoSuchKey</Code><Message>The resource you requested does not exist</Message><Resource>/mybucket/myfoto.jpg</Resource><RequestId>4442587FB7D0A2F9</RequestId></Error>"#;
        let e = parse_error(b).unwrap();
        assert_eq!(e.code, "NoSuchKey");
        assert_eq!(e.request_id, "4442587FB7D0A2F9");
        assert!(parse_error(b"<ListBucketResult></ListBucketResult>").is_none());
        assert!(parse_error(b"").is_none());
        assert!(parse_error(b"\xff\xfe").is_none());
    }

    #[test]
    fn complete_200_with_error_is_detected() {
        // S3 may send whitespace to keep the connection open, then an <Error>.
        let b = b"\n  \n  <?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>x</Message></Error>";
        let r = parse_etag_result(
            "CompleteMultipartUpload",
            "CompleteMultipartUploadResult",
            b,
        );
        assert!(matches!(r, Err(S3Error::Malformed { .. })));
        assert_eq!(parse_error(b).unwrap().code, "InternalError");
        let ok = br#"<?xml version="1.0" encoding="UTF-8"?>
<CompleteMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>http://x/b/k</Location><Bucket>b</Bucket><Key>k</Key><ETag>"3858f62230ac3c915f300c664312c11f-9"</ETag></CompleteMultipartUploadResult>"#;
        assert_eq!(
            parse_etag_result(
                "CompleteMultipartUpload",
                "CompleteMultipartUploadResult",
                ok
            )
            .unwrap(),
            "\"3858f62230ac3c915f300c664312c11f-9\""
        );
        // Truncated answers are errors, never panics.
        for cut in 0..ok.len() {
            let _ = parse_etag_result("C", "CompleteMultipartUploadResult", &ok[..cut]);
        }
    }

    #[test]
    fn list_objects_with_url_encoding() {
        let b = br#"<ListBucketResult><Name>b</Name><Prefix>d%2F</Prefix><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>d/a+b%2Bc%0Aline</Key><LastModified>2009-10-12T17:50:30.000Z</LastModified><ETag>&quot;abc&quot;</ETag><Size>434234</Size><StorageClass>STANDARD</StorageClass></Contents>
<CommonPrefixes><Prefix>d/sub%C3%A9/</Prefix></CommonPrefixes>
<Contents><Key>d/z</Key><Size>0</Size></Contents></ListBucketResult>"#;
        let p = parse_list_objects(b).unwrap();
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[0].key, "d/a b+c\nline");
        assert_eq!(p.objects[0].etag, "\"abc\"");
        assert_eq!(p.objects[0].size, 434234);
        assert!(p.objects[0].last_modified.is_some());
        assert_eq!(p.common_prefixes, vec!["d/subé/".to_string()]);
        // The token is opaque and never decoded.
        assert_eq!(p.next_token.as_deref(), Some("tok+/="));
    }

    #[test]
    fn list_objects_truncated_without_token_is_an_error() {
        let b = b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
        assert!(parse_list_objects(b).is_err());
        let empty = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        let p = parse_list_objects(empty).unwrap();
        assert!(p.objects.is_empty() && p.next_token.is_none());
    }

    #[test]
    fn list_parts_and_uploads() {
        let b = br#"<ListPartsResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId><NextPartNumberMarker>2</NextPartNumberMarker><IsTruncated>true</IsTruncated>
<Part><PartNumber>1</PartNumber><ETag>"e1"</ETag><Size>5242880</Size></Part><Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>1</Size></Part></ListPartsResult>"#;
        let p = parse_list_parts(b).unwrap();
        assert_eq!(p.parts.len(), 2);
        assert_eq!(p.parts[1].size, 1);
        assert_eq!(p.next_marker, Some(2));
        let u = br#"<ListMultipartUploadsResult><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated><NextKeyMarker>a%20b</NextKeyMarker><NextUploadIdMarker>xyz</NextUploadIdMarker>
<Upload><Key>a%20b</Key><UploadId>xyz</UploadId><Initiated>2026-11-25T02:24:50.123Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let p = parse_list_uploads(u).unwrap();
        assert_eq!(p.uploads[0].key, "a b");
        assert_eq!(p.next, Some(("a b".to_string(), "xyz".to_string())));
        // SeaweedFS: only the next upload ID.
        let u = br#"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated><NextUploadIdMarker>id9</NextUploadIdMarker>
<Upload><Key>k1</Key><UploadId>i1</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let p = parse_list_uploads(u).unwrap();
        assert_eq!(p.next, Some((String::new(), "id9".to_string())));
        // Truncated, no markers: the last upload is the marker.
        let u = br#"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated>
<Upload><Key>k1</Key><UploadId>i1</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload>
<Upload><Key>k2</Key><UploadId>i2</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let p = parse_list_uploads(u).unwrap();
        assert_eq!(p.next, Some(("k2".to_string(), "i2".to_string())));
        // Ceph RGW: url-encoded without saying so; and a server that did not encode.
        let u = br#"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>
<Upload><Key>drop/evil%0Afake%20key</Key><UploadId>i1</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload>
<Upload><Key>plain</Key><UploadId>i2</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        let p = parse_list_uploads(u).unwrap();
        assert_eq!(p.uploads[0].key, "drop/evil\nfake key");
        assert_eq!(p.uploads[1].key, "plain");
        let u = br#"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated>
<Upload><Key>100% sure</Key><UploadId>i1</UploadId><Initiated>2026-11-25T02:24:50Z</Initiated></Upload></ListMultipartUploadsResult>"#;
        assert_eq!(parse_list_uploads(u).unwrap().uploads[0].key, "100% sure");
        let empty = br#"<ListMultipartUploadsResult><IsTruncated>true</IsTruncated></ListMultipartUploadsResult>"#;
        assert!(parse_list_uploads(empty).is_err(), "a loop, not a page");
    }

    #[test]
    fn url_decode_rules() {
        assert_eq!(url_decode("t", "a%2Bb+c").unwrap(), "a+b c");
        assert!(url_decode("t", "%zz").is_err());
        assert!(url_decode("t", "%4").is_err());
        assert!(url_decode("t", "%ff").is_err());
    }

    #[test]
    fn complete_body_escapes_etags() {
        let b = complete_body(&[(1, "\"a\"".into()), (2, "\"b\"".into())]);
        assert!(b.contains("<Part><PartNumber>1</PartNumber><ETag>&quot;a&quot;</ETag></Part>"));
        assert!(b.find("<PartNumber>1").unwrap() < b.find("<PartNumber>2").unwrap());
    }

    /// A cheap property test: random byte soup and random cuts of valid
    /// documents never panic any parser.
    #[test]
    fn parsers_never_panic_on_garbage() {
        let docs: [&[u8]; 6] = [
            b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u</UploadId></InitiateMultipartUploadResult>",
            b"<CompleteMultipartUploadResult><Location>l</Location><Key>k</Key><ETag>&quot;abc-2&quot;</ETag></CompleteMultipartUploadResult>",
            b"<Error><Code>InternalError</Code><Message>m</Message><RequestId>r</RequestId></Error>",
            b"<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>a</Key><Size>1</Size></Contents></ListBucketResult>",
            b"<ListPartsResult><IsTruncated>false</IsTruncated><Part><PartNumber>1</PartNumber><ETag>x</ETag><Size>1</Size></Part></ListPartsResult>",
            b"<ListMultipartUploadsResult><IsTruncated>false</IsTruncated><Upload><Key>k</Key><UploadId>u</UploadId><Initiated>2020-01-01T00:00:00Z</Initiated></Upload></ListMultipartUploadsResult>",
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20000 {
            let doc = docs[rng.usize(..docs.len())];
            let mut v = doc.to_vec();
            for _ in 0..rng.usize(0..4) {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            v.truncate(rng.usize(0..=v.len()));
            let _ = parse_list_objects(&v);
            let _ = parse_list_parts(&v);
            let _ = parse_list_uploads(&v);
            let _ = parse_error(&v);
            let _ = parse_initiate(&v);
            let _ = parse_etag_result(
                "CompleteMultipartUpload",
                "CompleteMultipartUploadResult",
                &v,
            );
            let _ = root_element(&String::from_utf8_lossy(&v));
        }
    }

    /// A Complete answer cut anywhere is an error, never an ETag made of a
    /// fragment (the close would otherwise report success on half an answer).
    #[test]
    fn truncated_complete_answers_are_errors() {
        let doc = "<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Location>l</Location><Key>k</Key><ETag>&quot;0123456789abcdef0123456789abcdef-2&quot;</ETag></CompleteMultipartUploadResult>";
        let full = parse_etag_result(
            "CompleteMultipartUpload",
            "CompleteMultipartUploadResult",
            doc.as_bytes(),
        )
        .unwrap();
        assert_eq!(bare(&full), "0123456789abcdef0123456789abcdef-2");
        for n in 0..doc.len() {
            let r = parse_etag_result(
                "CompleteMultipartUpload",
                "CompleteMultipartUploadResult",
                &doc.as_bytes()[..n],
            );
            if let Ok(e) = r {
                assert_eq!(e, full, "prefix of {n} bytes gave {e:?}");
            }
        }
    }

    fn bare(e: &str) -> &str {
        e.trim_matches('"')
    }
}
