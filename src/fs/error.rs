//! The filesystem's errors and the one table that maps them to errno.

use crate::s3::S3Error;
use crate::upload::UploadError;

/// Why a filesystem operation failed. Each maps to exactly one errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("already exists")]
    Exists,
    #[error("directory not empty")]
    NotEmpty,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("I/O error: {0}")]
    Io(String),
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    #[error("extended attributes are not supported")]
    NoXattr,
    #[error("read-only mount")]
    ReadOnly,
    #[error("name too long")]
    NameTooLong,
    #[error("name is not valid UTF-8")]
    IllegalName,
    #[error("bad file handle")]
    BadHandle,
    #[error("file too large: {0}")]
    TooLarge(String),
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("cross-device: {0}")]
    CrossDevice(&'static str),
    #[error("out of buffer memory: {0}")]
    NoBuffers(String),
    #[error("the mount is shutting down")]
    ShuttingDown,
    #[error("stale: {0}")]
    Stale(String),
}

impl FsError {
    /// The errno the kernel returns to the program.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::Busy(_) => libc::EBUSY,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::Io(_) => libc::EIO,
            FsError::ShuttingDown => libc::ESHUTDOWN,
            FsError::Stale(_) => libc::ESTALE,
            FsError::NotSupported(_) => libc::EOPNOTSUPP,
            FsError::NoXattr => libc::ENOTSUP,
            FsError::ReadOnly => libc::EROFS,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::IllegalName => libc::EILSEQ,
            FsError::BadHandle => libc::EBADF,
            FsError::TooLarge(_) => libc::EFBIG,
            FsError::Denied(_) => libc::EACCES,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::CrossDevice(_) => libc::EXDEV,
            FsError::NoBuffers(_) => libc::ENOBUFS,
        }
    }
}

impl From<S3Error> for FsError {
    fn from(e: S3Error) -> Self {
        if e.is_not_found() {
            return FsError::NotFound;
        }
        if let S3Error::Changed { .. } = e {
            return FsError::Stale(e.to_string());
        }
        match e.code() {
            Some("AccessDenied") => FsError::Denied(e.to_string()),
            _ => FsError::Io(e.to_string()),
        }
    }
}

impl From<UploadError> for FsError {
    fn from(e: UploadError) -> Self {
        match e {
            UploadError::Failed(m) => FsError::Io(m),
            e @ UploadError::IntoSentPart { .. } => FsError::Invalid(e.to_string()),
            e @ UploadError::TooLarge { .. } => FsError::TooLarge(e.to_string()),
            UploadError::NoMemory(e) => FsError::NoBuffers(e.to_string()),
        }
    }
}

/// Result of a filesystem operation.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        assert_eq!(FsError::NotFound.errno(), libc::ENOENT);
        assert_eq!(FsError::Stale("x".into()).errno(), libc::ESTALE);
        assert_eq!(FsError::NoXattr.errno(), libc::ENOTSUP);
        assert_eq!(FsError::NotSupported("x").errno(), libc::EOPNOTSUPP);
        assert_eq!(FsError::IllegalName.errno(), libc::EILSEQ);
        assert_eq!(FsError::TooLarge("x".into()).errno(), libc::EFBIG);
        let nf = S3Error::from_status(404, String::new());
        assert_eq!(FsError::from(nf).errno(), libc::ENOENT);
        let denied = S3Error::from_status(403, String::new());
        assert_eq!(FsError::from(denied).errno(), libc::EACCES);
        let e = UploadError::IntoSentPart {
            offset: 1,
            part: 1,
            size: 2,
        };
        assert_eq!(FsError::from(e).errno(), libc::EINVAL);
        let e = UploadError::NoMemory(crate::upload::budget::BudgetError::Timeout {
            limit: 1,
            waited: std::time::Duration::from_secs(1),
        });
        assert_eq!(FsError::from(e).errno(), libc::ENOBUFS);
    }
}
