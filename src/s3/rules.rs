//! S3's rules, in one place for the client, the in-memory store and the
//! layers above them: the limits, which keys can be sent, and which HTTP
//! status goes with which error code.

use super::error::S3Error;

/// Smallest part of a multipart upload, except the last one (5 MiB).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Most parts of one multipart upload: part numbers are `1..=MAX_PARTS`.
pub const MAX_PARTS: u32 = 10_000;
/// Largest single request body and copy (5 GiB): one PutObject, one part,
/// one UploadPartCopy range, one CopyObject source.
pub const MAX_SINGLE_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Largest object (5 TiB).
pub const MAX_OBJECT_SIZE: u64 = 5 * 1024 * 1024 * 1024 * 1024;
/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// User-metadata budget: the UTF-8 bytes of all names and values together (2 KiB).
pub const MAX_METADATA_SIZE: usize = 2 * 1024;
/// Entries (keys and common prefixes) of one ListObjectsV2 page: the page
/// size when `max-keys` is not given, and its ceiling.
pub const MAX_KEYS: u32 = 1000;

// The limits fit together: a part may be the smallest or the largest, and
// full-size parts reach the largest object while minimal ones do not.
const _: () = assert!(
    MIN_PART_SIZE < MAX_SINGLE_SIZE
        && MAX_SINGLE_SIZE * MAX_PARTS as u64 >= MAX_OBJECT_SIZE
        && MIN_PART_SIZE * (MAX_PARTS as u64) < MAX_OBJECT_SIZE
);

/// Refuses a key that cannot be sent: an empty one, one with a `.` or `..`
/// path segment (URL normalization would rewrite it and address another
/// key) — both [`S3Error::InvalidKey`], nothing is sent — and one longer than
/// [`MAX_KEY_LEN`] bytes, which S3 refuses with `KeyTooLongError` (400; the
/// error carries no request id).
pub fn check_key(key: &str) -> Result<(), S3Error> {
    check_key_form(key)?;
    if key.len() > MAX_KEY_LEN {
        return Err(S3Error::Service {
            status: 400,
            code: "KeyTooLongError".to_string(),
            message: format!("Your key is too long ({} > {MAX_KEY_LEN} bytes)", key.len()),
            request_id: String::new(),
        });
    }
    Ok(())
}

/// The part of [`check_key`] the client applies before sending: an empty
/// key, or a `.`/`..` segment. Length it leaves to the server (some allow
/// longer keys than S3).
pub fn check_key_form(key: &str) -> Result<(), S3Error> {
    if key.is_empty() {
        return Err(S3Error::InvalidKey {
            key: String::new(),
            reason: "empty key",
        });
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(S3Error::InvalidKey {
            key: key.to_string(),
            reason: DOT_SEGMENT,
        });
    }
    Ok(())
}

/// Why a key with a `.` or `..` segment is refused.
pub const DOT_SEGMENT: &str =
    "a '.' or '..' path segment would be rewritten by URL normalization and address another key";

/// S3's error codes and HTTP statuses, as (status, code, message), read
/// both ways; in each direction the first matching row wins:
///
/// - [`status_for_code`]: the status S3 sends a code with — the first row
///   with that code and an error status (4xx, 5xx);
/// - [`code_for_status`]: what an answer with only a status (HEAD has no
///   body) means — the first row with that status and a message.
///
/// A row without a message only gives its code's status. The last rows only
/// read statuses: 429 is how other servers send SlowDown (S3: 503, above),
/// and a 301 to a HEAD is S3's PermanentRedirect.
const ERRORS: &[(u16, &str, &str)] = &[
    (400, "BadRequest", "bad request"),
    (
        403,
        "AccessDenied",
        "access denied (wrong credentials or no permission)",
    ),
    (403, "SignatureDoesNotMatch", ""),
    (403, "InvalidAccessKeyId", ""),
    (403, "RequestTimeTooSkewed", ""),
    (404, "NotFound", "not found"),
    (404, "NoSuchKey", ""),
    (404, "NoSuchUpload", ""),
    (404, "NoSuchBucket", ""),
    (405, "MethodNotAllowed", "method not allowed"),
    (409, "Conflict", "conflict"),
    (409, "OperationAborted", ""),
    (412, "PreconditionFailed", "precondition failed"),
    (
        416,
        "InvalidRange",
        "the requested range is not satisfiable",
    ),
    (500, "InternalError", "internal server error"),
    (501, "NotImplemented", ""),
    (503, "ServiceUnavailable", "service unavailable"),
    (503, "SlowDown", ""),
    (503, "Throttling", ""),
    (429, "SlowDown", "too many requests"),
    (
        301,
        "PermanentRedirect",
        "the bucket is in another region or endpoint",
    ),
];

/// The HTTP status S3 answers with an error code, so that an error made up
/// from a code alone (an injected fault) is classified (retryable or not) as
/// the real answer would be. Codes the table does not give an error status
/// get 400: unknown ones, and PermanentRedirect, whose 301 is no error status.
pub fn status_for_code(code: &str) -> u16 {
    ERRORS
        .iter()
        .find(|&&(status, c, _)| c == code && status >= 400)
        .map_or(400, |&(status, _, _)| status)
}

/// The error code and message an answer with `status` and no body (HEAD)
/// stands for; `UnknownError` for a status the table does not read.
pub fn code_for_status(status: u16) -> (&'static str, &'static str) {
    ERRORS
        .iter()
        .find(|&&(s, _, message)| s == status && !message.is_empty())
        .map_or(
            ("UnknownError", "unexpected HTTP status"),
            |&(_, code, message)| (code, message),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_s3s() {
        assert_eq!(
            (MIN_PART_SIZE, MAX_SINGLE_SIZE, MAX_OBJECT_SIZE),
            (5 << 20, 5 << 30, 5 << 40)
        );
        assert_eq!(
            (MAX_PARTS, MAX_KEY_LEN, MAX_METADATA_SIZE, MAX_KEYS),
            (10_000, 1024, 2048, 1000)
        );
    }

    fn reason(key: &str) -> &'static str {
        match check_key(key) {
            Err(S3Error::InvalidKey { reason, .. }) => reason,
            other => panic!("{key:?}: {other:?}"),
        }
    }

    #[test]
    fn check_key_refuses_what_cannot_be_sent() {
        assert_eq!(reason(""), "empty key");
        for k in ["x/../y", "..", ".", "a/./b", "a/..", "./a", "a/b/."] {
            assert!(reason(k).starts_with("a '.' or '..' path segment"), "{k}");
            assert!(check_key(k).unwrap_err().to_string().contains(k), "{k}");
        }
        for k in ["a", "a..b", "...", ".hidden", "a/.b/c", "a//b", "/", "é"] {
            assert!(check_key(k).is_ok(), "{k}");
        }
        assert!(check_key(&"x".repeat(MAX_KEY_LEN)).is_ok());
        for long in ["x".repeat(MAX_KEY_LEN + 1), "é".repeat(MAX_KEY_LEN / 2 + 1)] {
            let e = check_key(&long).unwrap_err();
            assert_eq!((e.code(), e.status()), (Some("KeyTooLongError"), Some(400)));
            assert!(
                e.to_string()
                    .contains(&format!("({} > 1024 bytes)", long.len())),
                "{e}"
            );
        }
    }

    #[test]
    fn status_for_code_is_s3s() {
        for (code, status) in [
            ("InternalError", 500),
            ("ServiceUnavailable", 503),
            ("SlowDown", 503),
            ("Throttling", 503),
            ("NoSuchKey", 404),
            ("NoSuchUpload", 404),
            ("NoSuchBucket", 404),
            ("NotFound", 404),
            ("AccessDenied", 403),
            ("SignatureDoesNotMatch", 403),
            ("InvalidAccessKeyId", 403),
            ("RequestTimeTooSkewed", 403),
            ("MethodNotAllowed", 405),
            ("OperationAborted", 409),
            ("Conflict", 409),
            ("PreconditionFailed", 412),
            ("InvalidRange", 416),
            ("NotImplemented", 501),
            ("BadRequest", 400),
            ("BadDigest", 400),
            ("PermanentRedirect", 400),
            ("NoSuchThing", 400),
            ("", 400),
        ] {
            assert_eq!(status_for_code(code), status, "{code}");
        }
    }

    #[test]
    fn code_for_status_reads_bodiless_answers() {
        for (status, code, message) in [
            (
                301,
                "PermanentRedirect",
                "the bucket is in another region or endpoint",
            ),
            (400, "BadRequest", "bad request"),
            (
                403,
                "AccessDenied",
                "access denied (wrong credentials or no permission)",
            ),
            (404, "NotFound", "not found"),
            (405, "MethodNotAllowed", "method not allowed"),
            (409, "Conflict", "conflict"),
            (412, "PreconditionFailed", "precondition failed"),
            (
                416,
                "InvalidRange",
                "the requested range is not satisfiable",
            ),
            (429, "SlowDown", "too many requests"),
            (500, "InternalError", "internal server error"),
            (503, "ServiceUnavailable", "service unavailable"),
            (200, "UnknownError", "unexpected HTTP status"),
            (302, "UnknownError", "unexpected HTTP status"),
            (501, "UnknownError", "unexpected HTTP status"),
            (502, "UnknownError", "unexpected HTTP status"),
        ] {
            assert_eq!(code_for_status(status), (code, message), "{status}");
        }
    }

    #[test]
    fn every_error_status_reads_back_as_itself() {
        // A code read from a 4xx/5xx status has that status, except 429:
        // S3 sends SlowDown with 503.
        for &(status, _, message) in ERRORS {
            if status >= 400 && status != 429 && !message.is_empty() {
                assert_eq!(status_for_code(code_for_status(status).0), status);
            }
        }
    }
}
