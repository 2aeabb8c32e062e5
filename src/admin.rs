//! The operator's tools behind `bucketfs uploads`: list and abort in-progress
//! multipart uploads of a bucket or prefix.

use crate::s3::{Client, S3Error, UploadInfo};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;

/// Aborts run this many at a time.
const ABORT_CONCURRENCY: usize = 16;

/// Splits `BUCKET[/PREFIX]` into the bucket and the key prefix.
pub fn parse_target(target: &str) -> Result<(String, String), String> {
    let (bucket, prefix) = match target.split_once('/') {
        Some((b, p)) => (b, p),
        None => (target, ""),
    };
    if bucket.is_empty() {
        return Err(format!("{target:?}: expected BUCKET[/PREFIX]"));
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// Prints a key on one line: backslashes and control characters are escaped,
/// so a newline inside a key cannot forge an extra line.
pub fn escape_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One line of `uploads list`: `<key> <upload-id> <initiated, RFC 3339>`.
pub fn upload_line(u: &UploadInfo) -> String {
    format!(
        "{} {} {}",
        escape_key(&u.key),
        u.upload_id,
        humantime::format_rfc3339_seconds(u.initiated)
    )
}

/// Which uploads `uploads abort` takes.
#[derive(Debug, Clone, Copy)]
pub enum AbortFilter {
    /// Every upload under the prefix.
    All,
    /// Uploads initiated longer ago than this.
    OlderThan(Duration),
}

/// The outcome of `uploads abort`.
#[derive(Debug, Default)]
pub struct AbortReport {
    pub aborted: usize,
    pub kept: usize,
    pub failed: Vec<(String, S3Error)>,
}

/// Aborts the uploads under `prefix` that `filter` selects, a few at a time.
/// An upload already gone (NoSuchUpload) counts as aborted.
pub async fn abort_uploads(
    client: &Client,
    bucket: &str,
    prefix: &str,
    filter: AbortFilter,
    now: SystemTime,
) -> Result<AbortReport, S3Error> {
    let uploads = client.list_uploads(bucket, prefix).await?;
    let mut report = AbortReport::default();
    let sem = Arc::new(Semaphore::new(ABORT_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for u in uploads {
        let selected = match filter {
            AbortFilter::All => true,
            AbortFilter::OlderThan(age) => now
                .duration_since(u.initiated)
                .map(|d| d > age)
                .unwrap_or(false),
        };
        if !selected {
            report.kept += 1;
            continue;
        }
        let (c, b, sem) = (client.clone(), bucket.to_string(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await;
            let r = c.abort_multipart_upload(&b, &u.key, &u.upload_id).await;
            (u, r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((u, r)) = joined else { continue };
        match r {
            Ok(()) => report.aborted += 1,
            Err(e) if e.code() == Some("NoSuchUpload") => report.aborted += 1,
            Err(e) => {
                tracing::warn!(key = %escape_key(&u.key), upload_id = %u.upload_id, error = %e, "abort failed");
                report.failed.push((u.key, e));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(parse_target("b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_target("b/p/q/").unwrap(), ("b".into(), "p/q/".into()));
        assert!(parse_target("/p").is_err());
    }

    #[test]
    fn escaping_cannot_forge_lines() {
        assert_eq!(escape_key("a\nb c\\d\t\u{7}é"), "a\\nb c\\\\d\\t\\u{7}é");
        assert!(!escape_key("x\ny\rz").contains(['\n', '\r']));
    }
}
