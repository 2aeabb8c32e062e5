//! ETags and MD5s: how S3 names an object's bytes.

use md5::{Digest, Md5};

/// MD5 of a body, computed once by whoever holds the bytes.
pub fn md5_of(data: &[u8]) -> [u8; 16] {
    Md5::digest(data).into()
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a string of hex digit pairs, if it is one.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The 16 bytes of a 32-digit hex MD5 (an ETag without quotes), if it is one.
pub fn parse_hex_md5(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    unhex(s)?.try_into().ok()
}

/// The ETag S3 gives a multipart object: MD5 of the concatenated binary part MD5s, then `-N`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = Md5::new();
    for m in part_md5s {
        h.update(m);
    }
    format!("{}-{}", hex(&h.finalize()), part_md5s.len())
}

/// An ETag without its quotes, lowercased.
pub fn bare_etag(etag: &str) -> String {
    etag.trim().trim_matches('"').to_ascii_lowercase()
}

/// An ETag as S3 quotes it: some servers (Ceph RGW) answer copies with a
/// bare one, which a later Complete or comparison would not match.
pub fn quote_etag(etag: &str) -> String {
    let bare = etag.trim().trim_matches('"');
    format!("\"{bare}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_md5_round_trips() {
        let m = md5_of(b"abc");
        assert_eq!(parse_hex_md5(&hex(&m)), Some(m));
        assert_eq!(parse_hex_md5("xyz"), None);
        assert_eq!(parse_hex_md5(&"g".repeat(32)), None);
        assert_eq!(parse_hex_md5(&format!("{}-2", &hex(&m)[..30])), None);
    }

    #[test]
    fn multipart_etag_matches_s3_rule() {
        // Two parts "a" and "b": md5(md5("a") ++ md5("b")) - 2
        let e = multipart_etag(&[md5_of(b"a"), md5_of(b"b")]);
        let mut cat = Vec::new();
        cat.extend_from_slice(&md5_of(b"a"));
        cat.extend_from_slice(&md5_of(b"b"));
        assert_eq!(e, format!("{}-2", hex(&md5_of(&cat))));
    }

    #[test]
    fn quote_etag_quotes_once() {
        assert_eq!(quote_etag("abc"), "\"abc\"");
        assert_eq!(quote_etag("\"abc\""), "\"abc\"");
        assert_eq!(quote_etag(" abc-2 "), "\"abc-2\"");
    }
}
