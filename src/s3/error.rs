//! The one error type of the S3 client, and its retry classification.

use std::fmt;

/// How a transport failure happened; decides whether a retry is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made: the request never reached the server.
    Connect,
    /// The request or its answer took longer than its deadline.
    Timeout,
    /// The connection broke while sending or receiving.
    Broken,
}

/// Everything an S3 call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The server answered with an error (an XML `<Error>` body, or only a status for HEAD).
    #[error("{code}: {message} (HTTP {status}{})", request_id_suffix(.request_id))]
    Service {
        status: u16,
        code: String,
        message: String,
        request_id: String,
    },
    /// No usable answer: connection refused, reset, timed out.
    #[error("{kind:?} error talking to {endpoint}: {detail}")]
    Transport {
        kind: TransportKind,
        endpoint: String,
        detail: String,
    },
    /// A key the client refuses to send because the server would see another one.
    #[error("refusing key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The server's answer could not be understood (malformed XML, missing fields, a loop).
    #[error("malformed answer to {operation}: {detail}")]
    Malformed {
        operation: &'static str,
        detail: String,
    },
    /// The server stored something other than what we sent.
    #[error("ETag mismatch on {what}: sent content with MD5 {expected}, server answered {got}")]
    EtagMismatch {
        what: String,
        expected: String,
        got: String,
    },
    /// Bad configuration (endpoint, credentials, CA bundle).
    #[error("configuration error: {0}")]
    Config(String),
    /// The bucket lives in another region than the one we signed for; the
    /// server named it (AuthorizationHeaderMalformed, PermanentRedirect).
    #[error("the bucket is in region {region:?}: {detail}")]
    WrongRegion { region: String, detail: String },
    /// A local failure around a request (the crash journal could not be written).
    #[error("{0}")]
    Local(String),
    /// The object was replaced while it was being read: a later GET of it
    /// answered another ETag than the first, or another size than at open.
    #[error("{key} changed while being read (was {was}, now {now})")]
    Changed {
        key: String,
        was: String,
        now: String,
    },
}

fn request_id_suffix(id: &str) -> String {
    if id.is_empty() {
        String::new()
    } else {
        format!(", request id {id}")
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Transient: retrying the same request may succeed.
    Yes,
    /// Permanent: the same request will fail the same way.
    No,
}

impl S3Error {
    /// The S3 error code (`NoSuchKey`, `SlowDown`, ...), when the server sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            S3Error::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for "the object/upload/bucket does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code(),
            Some("NoSuchKey" | "NotFound" | "NoSuchUpload" | "NoSuchBucket")
        ) || self.status() == Some(404)
    }

    /// Classifies the error: 5xx, 429/SlowDown, RequestTimeout and broken
    /// connections are transient; everything else is not.
    pub fn retry(&self) -> Retry {
        match self {
            S3Error::Service { status, code, .. } => {
                let transient_code = matches!(
                    code.as_str(),
                    "SlowDown"
                        | "RequestTimeout"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestTimeTooSkewed"
                );
                if *status >= 500 || *status == 429 || transient_code {
                    Retry::Yes
                } else {
                    Retry::No
                }
            }
            S3Error::Transport { .. } => Retry::Yes,
            _ => Retry::No,
        }
    }

    /// True when the request certainly never reached the server, so even a
    /// non-idempotent call may be repeated.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            S3Error::Transport {
                kind: TransportKind::Connect,
                ..
            }
        )
    }

    pub(crate) fn malformed(operation: &'static str, detail: impl fmt::Display) -> Self {
        S3Error::Malformed {
            operation,
            detail: detail.to_string(),
        }
    }

    /// The error a status-only answer (HEAD) maps to.
    pub(crate) fn from_status(status: u16, request_id: String) -> Self {
        let (code, message) = super::rules::code_for_status(status);
        S3Error::Service {
            status,
            code: code.to_string(),
            message: message.to_string(),
            request_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> S3Error {
        S3Error::Service {
            status,
            code: code.into(),
            message: "m".into(),
            request_id: "r".into(),
        }
    }

    #[test]
    fn classification() {
        assert_eq!(service(500, "InternalError").retry(), Retry::Yes);
        assert_eq!(service(503, "SlowDown").retry(), Retry::Yes);
        assert_eq!(service(429, "Whatever").retry(), Retry::Yes);
        assert_eq!(service(400, "RequestTimeout").retry(), Retry::Yes);
        assert_eq!(service(403, "SignatureDoesNotMatch").retry(), Retry::No);
        assert_eq!(service(400, "BadDigest").retry(), Retry::No);
        assert_eq!(service(404, "NoSuchKey").retry(), Retry::No);
        assert!(service(404, "NoSuchUpload").is_not_found());
        let t = S3Error::Transport {
            kind: TransportKind::Connect,
            endpoint: "e".into(),
            detail: "refused".into(),
        };
        assert_eq!(t.retry(), Retry::Yes);
        assert!(t.never_sent());
    }

    #[test]
    fn display_is_one_line_with_code() {
        let e = service(403, "SignatureDoesNotMatch");
        let s = e.to_string();
        assert!(s.starts_with("SignatureDoesNotMatch: m (HTTP 403"), "{s}");
        assert!(!s.contains('\n'));
        assert_eq!(
            S3Error::from_status(404, String::new()).code(),
            Some("NotFound")
        );
    }
}
