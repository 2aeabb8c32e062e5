//! The only file that speaks HTTP: builds each S3 request, signs it, sends it
//! with retries, and turns answers into values or typed errors.

use super::config::{PayloadSigning, S3Config};
use super::error::{Retry, S3Error, TransportKind};
use super::pace::Pace;
use super::sigv4::{self, Credentials, SigningParams, SigningRequest};
use super::types::*;
use super::xml;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Upper bound on one error body we read (S3 error documents are tiny).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Complete and copies carry tiny bodies but may work for minutes on the server.
const SERVER_WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// Total time one request may spend in retries.
const MAX_RETRY_ELAPSED: Duration = Duration::from_secs(120);
/// Bodies up to this size are hashed on the async worker (a blocking
/// thread's hand-off costs more); larger ones on a blocking thread.
pub const INLINE_HASH_MAX: usize = 256 * 1024;
/// Most pages a listing follows before calling the answer a loop.
const MAX_PAGES: usize = 1_000_000;

/// The S3 operations, for counting requests and naming them in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    PutObject,
    GetObject,
    HeadObject,
    DeleteObject,
    CopyObject,
    ListObjects,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
    ListMultipartUploads,
    Bucket,
}

const OP_COUNT: usize = Op::Bucket as usize + 1;

/// Request counters, shared by every clone of a client.
#[derive(Debug, Default)]
pub struct Counters {
    requests: [AtomicU64; OP_COUNT],
    /// Requests sent again after a transient failure.
    pub retries: AtomicU64,
    /// Body bytes sent (successful or not), to prove server-side copies move no data.
    pub body_bytes_sent: AtomicU64,
    /// UploadParts sent again on another connection while the first
    /// attempt was still unanswered, far slower than its peers.
    pub hedges: AtomicU64,
}

impl Counters {
    /// Requests of one kind sent so far (each attempt counts).
    pub fn requests(&self, op: Op) -> u64 {
        self.requests[op as usize].load(Ordering::Relaxed)
    }
}

/// An S3 client. Cheap to clone; clones share connections and counters.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: Arc<S3Config>,
    counters: Arc<Counters>,
    live: Arc<Live>,
}

/// What a client learns while it runs, shared by its clones.
struct Live {
    /// Every endpoint of the service; `current` indexes the one in use.
    endpoints: RwLock<Vec<Url>>,
    current: AtomicUsize,
    /// Signing region, corrected once from the server's answer.
    region: RwLock<String>,
    region_fixed: AtomicBool,
    creds: CredentialCell,
    /// How long UploadParts take: when to send a slow one again.
    part_pace: Pace,
    /// Hedged attempts in flight (at most [`MAX_HEDGES`]).
    hedging: AtomicUsize,
}

/// How often a credentials file is checked for changes.
const CREDENTIALS_CHECK: Duration = Duration::from_secs(1);

/// Credentials that follow their file: rotated temporary credentials are
/// picked up when the file changes (checked at most once a second).
struct CredentialCell {
    current: RwLock<Credentials>,
    file: Option<(std::path::PathBuf, String)>,
    /// (last check, the file's mtime then)
    seen: std::sync::Mutex<(Instant, Option<SystemTime>)>,
}

impl CredentialCell {
    fn new(c: Credentials, file: Option<(std::path::PathBuf, String)>) -> Self {
        let mtime = file
            .as_ref()
            .and_then(|(p, _)| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        CredentialCell {
            current: RwLock::new(c),
            file,
            seen: std::sync::Mutex::new((Instant::now(), mtime)),
        }
    }

    fn get(&self) -> Credentials {
        if let Some((path, profile)) = &self.file {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.0.elapsed() >= CREDENTIALS_CHECK {
                seen.0 = Instant::now();
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if mtime != seen.1 {
                    seen.1 = mtime;
                    drop(seen);
                    self.reload(path, profile);
                }
            }
        }
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; true when the credentials changed.
    fn reload(&self, path: &std::path::Path, profile: &str) -> bool {
        let fresh = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| super::config::parse_credentials_file(&t, profile));
        let Some(fresh) = fresh else {
            tracing::warn!(file = %path.display(), profile, "credentials file changed but holds no usable credentials; keeping the old ones");
            return false;
        };
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *cur == fresh {
            return false;
        }
        *cur = fresh;
        tracing::info!(file = %path.display(), profile, "credentials re-read");
        true
    }

    /// After an expired-token answer: read the file now.
    fn refresh_now(&self) -> bool {
        match &self.file {
            Some((path, profile)) => self.reload(path, profile),
            None => false,
        }
    }
}

/// What the server answered, read whole.
struct Answer {
    headers: HeaderMap,
    body: Bytes,
    /// The body in the pieces it arrived in, instead of `body`, when the
    /// request asked for them ([`Request::frames`]).
    frames: Vec<Bytes>,
}

/// One request before signing.
struct Request<'a> {
    op: Op,
    method: Method,
    bucket: &'a str,
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// When set, sent as Content-MD5 (and allows UNSIGNED-PAYLOAD).
    md5: Option<[u8; 16]>,
    /// Safe to send twice: the retry loop may repeat it after any transient error.
    idempotent: bool,
    /// The server may answer 200 and still put an `<Error>` in the body.
    error_in_200: bool,
    timeout: Deadline,
    /// Keep a successful body in the pieces it arrived in (no copy into
    /// one buffer): the read path answers FUSE reads from them.
    frames: bool,
}

/// How long one attempt of a request may take.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// The configured base plus the time to move this many bytes at the
    /// slowest rate we accept: a body that stops moving is cut off.
    Scaled(u64),
    /// Server-side work (Complete, copies) that may take minutes.
    Fixed(Duration),
}

impl<'a> Request<'a> {
    fn new(op: Op, method: Method, bucket: &'a str, key: Option<&'a str>) -> Self {
        Request {
            op,
            method,
            bucket,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            body: Bytes::new(),
            md5: None,
            idempotent: true,
            error_in_200: false,
            timeout: Deadline::Scaled(0),
            frames: false,
        }
    }
    fn query(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_string(), v.into()));
        self
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn body(mut self, body: Bytes, md5: Option<[u8; 16]>) -> Self {
        self.timeout = Deadline::Scaled(body.len() as u64);
        self.body = body;
        self.md5 = md5;
        self
    }
}

/// Most hedged attempts of a client in flight at once.
const MAX_HEDGES: usize = 2;

/// One of the [`MAX_HEDGES`] slots, given back when dropped.
struct HedgeSlot<'a>(&'a AtomicUsize);

impl<'a> HedgeSlot<'a> {
    fn take(n: &'a AtomicUsize) -> Option<Self> {
        n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
            (v < MAX_HEDGES).then_some(v + 1)
        })
        .ok()
        .map(|_| HedgeSlot(n))
    }
}

impl Drop for HedgeSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where every attempt of one request goes, and its headers before signing.
#[derive(Clone, Copy)]
struct Target<'a> {
    url: &'a Url,
    host: &'a str,
    path: &'a str,
    headers: &'a [(String, String)],
    payload_hash: &'a str,
}

/// The part number of an UploadPart(Copy), for log lines.
fn part_number<'r>(r: &'r Request<'_>) -> Option<&'r str> {
    r.query
        .iter()
        .find(|(k, _)| k == "partNumber")
        .map(|(_, v)| v.as_str())
}

/// A deadline that scales with the bytes to move, so a stalled body is cut
/// off: `base` plus the bytes at `min_rate` bytes per second.
pub fn timeout_for(base: Duration, min_rate: u64, bytes: u64) -> Duration {
    base + Duration::from_secs_f64(bytes as f64 / min_rate.max(1) as f64)
}

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
fn checked_etag(
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

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn sse_headers<'a>(r: Request<'a>, sse: Option<&Sse>, copy_source: bool) -> Request<'a> {
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

impl Client {
    /// Builds a client: TLS with rustls, the system's roots plus `AWS_CA_BUNDLE`.
    pub fn new(cfg: S3Config) -> Result<Self, S3Error> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .http1_only()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(50))
            .tcp_nodelay(true);
        if let Some(path) = &cfg.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| S3Error::Config(format!("AWS_CA_BUNDLE {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| S3Error::Config(format!("AWS_CA_BUNDLE {}: {e}", path.display())))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| S3Error::Config(format!("HTTP client: {e}")))?;
        let mut endpoints = vec![cfg.endpoint.clone()];
        endpoints.extend(cfg.extra_endpoints.iter().cloned());
        let live = Live {
            endpoints: RwLock::new(endpoints),
            current: AtomicUsize::new(0),
            region: RwLock::new(cfg.region.clone()),
            region_fixed: AtomicBool::new(false),
            creds: CredentialCell::new(cfg.credentials.clone(), cfg.credentials_file.clone()),
            part_pace: Pace::default(),
            hedging: AtomicUsize::new(0),
        };
        Ok(Client {
            http,
            cfg: Arc::new(cfg),
            counters: Arc::new(Counters::default()),
            live: Arc::new(live),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    /// Request counters shared by all clones.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// [`Self::target_at`] of the endpoint in use.
    #[cfg(test)]
    fn target(&self, bucket: &str, key: Option<&str>) -> Result<(Url, String), S3Error> {
        self.target_at(self.endpoint_index(), bucket, key)
    }

    fn endpoint_index(&self) -> usize {
        self.live.current.load(Ordering::Relaxed)
    }

    /// The endpoint requests go to now.
    pub fn endpoint(&self) -> Url {
        let eps = self
            .live
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner());
        eps[self.endpoint_index() % eps.len()].clone()
    }

    /// The region requests are signed for now.
    pub fn region(&self) -> String {
        self.live
            .region
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failure at endpoint `idx`: the next request goes to the next
    /// endpoint (unless another request moved on already).
    fn fail_over(&self, idx: usize, err: &S3Error) {
        let n = self
            .live
            .endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if n < 2 {
            return;
        }
        let next = (idx + 1) % n;
        if self
            .live
            .current
            .compare_exchange(idx, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let eps = self
                .live
                .endpoints
                .read()
                .unwrap_or_else(|e| e.into_inner());
            tracing::warn!(from = %eps[idx], to = %eps[next], error = %err, "endpoint failed; failing over");
        }
    }

    /// Takes the region the server named, once: signs for it from now on
    /// and, on AWS's regional endpoints, talks to that region's endpoint.
    fn fix_region(&self, region: &str) -> bool {
        if region.is_empty()
            || !region
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || self.live.region_fixed.swap(true, Ordering::Relaxed)
        {
            return false;
        }
        let old = std::mem::replace(
            &mut *self.live.region.write().unwrap_or_else(|e| e.into_inner()),
            region.to_string(),
        );
        if old == region {
            return false;
        }
        let mut eps = self
            .live
            .endpoints
            .write()
            .unwrap_or_else(|e| e.into_inner());
        for ep in eps.iter_mut() {
            if ep.host_str() == Some(&format!("s3.{old}.amazonaws.com")) {
                let _ = ep.set_host(Some(&format!("s3.{region}.amazonaws.com")));
            }
        }
        tracing::warn!(from = %old, to = %region, "the server says the bucket is in another region; using it (give --region to skip this)");
        true
    }

    /// URL and Host header value for a bucket and optional key at endpoint
    /// `idx`. Refuses keys the URL layer would rewrite (dot segments), which
    /// would silently address another object.
    fn target_at(
        &self,
        idx: usize,
        bucket: &str,
        key: Option<&str>,
    ) -> Result<(Url, String), S3Error> {
        let ep = {
            let eps = self
                .live
                .endpoints
                .read()
                .unwrap_or_else(|e| e.into_inner());
            eps[idx % eps.len()].clone()
        };
        let ep = &ep;
        let host = ep.host_str().unwrap_or_default();
        let authority_host = if self.cfg.path_style {
            host.to_string()
        } else {
            format!("{bucket}.{host}")
        };
        let authority = match ep.port() {
            Some(p) => format!("{authority_host}:{p}"),
            None => authority_host,
        };
        let mut path = String::from("/");
        if self.cfg.path_style {
            path.push_str(&sigv4::uri_encode(bucket, true));
        }
        if let Some(key) = key {
            if key.is_empty() {
                return Err(S3Error::InvalidKey {
                    key: key.into(),
                    reason: "empty key",
                });
            }
            if self.cfg.path_style {
                path.push('/');
            }
            path.push_str(&sigv4::uri_encode(key, false));
        }
        let url = Url::parse(&format!("{}://{}{}", ep.scheme(), authority, path)).map_err(|e| {
            S3Error::Config(format!("cannot build a URL for bucket {bucket:?}: {e}"))
        })?;
        if url.path() != path {
            return Err(S3Error::InvalidKey {
                key: key.unwrap_or_default().to_string(),
                reason: "a '.' or '..' path segment would be rewritten by URL normalization and address another key",
            });
        }
        Ok((url, authority))
    }

    /// Sends a request, retrying transient failures with exponential backoff
    /// and full jitter, bounded in attempts and total time.
    async fn send(&self, r: &Request<'_>) -> Result<Answer, S3Error> {
        let query = sigv4::canonical_query_string(&r.query);
        let payload_hash = match (r.md5, self.cfg.payload_signing) {
            (Some(_), PayloadSigning::UnsignedWithMd5) => sigv4::UNSIGNED_PAYLOAD.to_string(),
            _ if r.body.is_empty() => sigv4::EMPTY_SHA256.to_string(),
            _ if r.body.len() <= INLINE_HASH_MAX => sigv4::sha256_hex(&r.body),
            // A part's SHA-256 takes milliseconds: off the async workers,
            // which carry every other request meanwhile.
            _ => {
                let body = r.body.clone();
                tokio::task::spawn_blocking(move || sigv4::sha256_hex(&body))
                    .await
                    .map_err(|e| S3Error::malformed("signing", format!("hashing task: {e}")))?
            }
        };
        let mut headers = r.headers.clone();
        headers.push(("x-amz-content-sha256".into(), payload_hash.clone()));
        if let Some(md5) = r.md5 {
            headers.push((
                "content-md5".into(),
                base64::engine::general_purpose::STANDARD.encode(md5),
            ));
        }
        let started = Instant::now();
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let idx = self.endpoint_index();
            let (mut url, host) = self.target_at(idx, r.bucket, r.key)?;
            let path = url.path().to_string();
            if !query.is_empty() {
                url.set_query(Some(&query));
            }
            let target = Target {
                url: &url,
                host: &host,
                path: &path,
                headers: &headers,
                payload_hash: &payload_hash,
            };
            let result = self.hedged(r, target).await;
            let err = match result {
                Ok(a) => return Ok(a),
                Err(e) => e,
            };
            // Answers that a changed setting fixes: sent again at once.
            if let S3Error::WrongRegion { region, .. } = &err {
                if self.fix_region(region) {
                    attempt -= 1;
                    continue;
                }
            }
            if !refreshed
                && matches!(
                    err.code(),
                    Some(
                        "ExpiredToken"
                            | "InvalidToken"
                            | "TokenRefreshRequired"
                            | "InvalidAccessKeyId"
                    )
                )
                && self.live.creds.refresh_now()
            {
                refreshed = true;
                attempt -= 1;
                continue;
            }
            if matches!(err, S3Error::Transport { .. }) || err.status().is_some_and(|s| s >= 500) {
                self.fail_over(idx, &err);
            }
            let may_retry = err.retry() == Retry::Yes
                && (r.idempotent || err.never_sent() || matches!(err, S3Error::Service { .. }));
            if !may_retry
                || attempt >= self.cfg.max_attempts
                || started.elapsed() >= MAX_RETRY_ELAPSED
            {
                if attempt > 1 {
                    tracing::warn!(op = ?r.op, bucket = r.bucket, key = ?r.key, part = ?part_number(r), attempt, error = %err, "giving up");
                }
                return Err(err);
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            let cap = Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5));
            let sleep = Duration::from_micros(fastrand::u64(0..=cap.as_micros() as u64));
            tracing::debug!(op = ?r.op, key = ?r.key, part = ?part_number(r), attempt, ?sleep, error = %err, "retrying");
            tokio::time::sleep(sleep).await;
        }
    }

    /// One attempt; for an UploadPart still unanswered long after its
    /// peers would have been ([`Pace::hedge_after`]), a second one on
    /// another connection, and the first success wins (the loser's
    /// connection is closed). Both carry the same bytes and Content-MD5, so
    /// whichever the server keeps, the part is the same. A server that read
    /// a part whole and never answered held the close for the part's whole
    /// deadline without this.
    async fn hedged(&self, r: &Request<'_>, t: Target<'_>) -> Result<Answer, S3Error> {
        let first = self.attempt(r, t);
        let after = match r.op {
            Op::UploadPart => self.live.part_pace.hedge_after(r.body.len()),
            _ => None,
        };
        let Some(after) = after else {
            return first.await;
        };
        tokio::pin!(first);
        tokio::select! {
            a = &mut first => return a,
            _ = tokio::time::sleep(after) => {}
        }
        // A few at a time: when the link itself is full (more files at once
        // than the pace was learned with), every part is slow, and sending
        // them all twice would only fill it more.
        let Some(_slot) = HedgeSlot::take(&self.live.hedging) else {
            return first.await;
        };
        self.counters.hedges.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            bucket = r.bucket,
            key = ?r.key,
            part = ?part_number(r),
            waited = ?after,
            "UploadPart unanswered far longer than its peers; sending it again on another connection"
        );
        let second = self.attempt(r, t);
        tokio::pin!(second);
        tokio::select! {
            // The first attempt failed: the second may still succeed (if it
            // fails too, the first error is the one reported and retried).
            a = &mut first => match a {
                Ok(a) => Ok(a),
                Err(e) => second.await.map_err(|_| e),
            },
            // The second one answered. A failure is returned at once, for
            // the retry loop to send the part again: waiting for the first,
            // which is already far late, would wait out its deadline.
            b = &mut second => b,
        }
    }

    async fn attempt(&self, r: &Request<'_>, t: Target<'_>) -> Result<Answer, S3Error> {
        let Target {
            url,
            host,
            path,
            headers,
            payload_hash,
        } = t;
        let began = Instant::now();
        self.counters.requests[r.op as usize].fetch_add(1, Ordering::Relaxed);
        let creds = self.live.creds.get();
        let region = self.region();
        let mut signed: Vec<(String, String)> = Vec::with_capacity(headers.len() + 1);
        signed.push(("host".into(), host.to_string()));
        signed.extend(headers.iter().cloned());
        let added = sigv4::sign(
            &SigningRequest {
                method: r.method.as_str(),
                path,
                query: &r.query,
                headers: &signed,
                payload_hash,
            },
            &SigningParams {
                credentials: &creds,
                region: &region,
                service: "s3",
                time: SystemTime::now(),
                path_mode: sigv4::PathMode::S3,
            },
        );
        let mut req = self
            .http
            .request(r.method.clone(), url.clone())
            .timeout(match r.timeout {
                Deadline::Scaled(n) => {
                    timeout_for(self.cfg.request_timeout, self.cfg.min_transfer_rate, n)
                }
                Deadline::Fixed(d) => d,
            });
        for (k, v) in headers.iter().chain(added.iter()) {
            req = req.header(k.as_str(), v.as_str());
        }
        if !r.body.is_empty() || r.method == Method::PUT || r.method == Method::POST {
            self.counters
                .body_bytes_sent
                .fetch_add(r.body.len() as u64, Ordering::Relaxed);
            if r.body.is_empty() {
                // hyper sends no length for an empty body, and HTTP/1.1
                // lets a server refuse that: Ceph RGW answers 411
                // MissingContentLength to every bodiless PUT (an empty
                // file, a directory marker, a copy).
                req = req.header(reqwest::header::CONTENT_LENGTH, "0");
            }
            req = req.body(r.body.clone());
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let request_id = header_str(&headers, "x-amz-request-id").unwrap_or_default();
        let ok = (200..300).contains(&status);
        let mut frames = Vec::new();
        let body = if ok && r.frames {
            let mut resp = resp;
            let mut pieces = Pieces::new(resp.content_length().unwrap_or(0));
            while let Some(f) = resp.chunk().await.map_err(|e| self.transport(e))? {
                pieces.push(f);
            }
            frames = pieces.finish();
            Bytes::new()
        } else if ok {
            resp.bytes().await.map_err(|e| self.transport(e))?
        } else {
            read_capped(resp, MAX_ERROR_BODY).await
        };
        if !ok {
            let parsed = xml::parse_error(&body);
            let named = header_str(&headers, "x-amz-bucket-region")
                .or_else(|| parsed.as_ref().and_then(|e| e.region.clone()));
            let code = parsed.as_ref().map(|e| e.code.as_str()).unwrap_or_default();
            if let Some(region) = named.filter(|_| {
                status == 301
                    || matches!(
                        code,
                        "AuthorizationHeaderMalformed"
                            | "PermanentRedirect"
                            | "IllegalLocationConstraintException"
                    )
            }) {
                return Err(S3Error::WrongRegion {
                    region,
                    detail: format!("{code} (HTTP {status})"),
                });
            }
            return Err(match parsed {
                Some(e) => S3Error::Service {
                    status,
                    code: e.code,
                    message: e.message,
                    request_id: if e.request_id.is_empty() {
                        request_id
                    } else {
                        e.request_id
                    },
                },
                None => S3Error::from_status(status, request_id),
            });
        }
        if r.error_in_200 {
            if let Some(e) = xml::parse_error(&body) {
                // S3 documents a 200 whose body is an error for Complete and copies.
                return Err(S3Error::Service {
                    status: if e.code == "InternalError" {
                        500
                    } else {
                        status
                    },
                    code: e.code,
                    message: e.message,
                    request_id: e.request_id,
                });
            }
        }
        if r.op == Op::UploadPart {
            self.live.part_pace.record(r.body.len(), began.elapsed());
        }
        Ok(Answer {
            headers,
            body,
            frames,
        })
    }

    fn transport(&self, e: reqwest::Error) -> S3Error {
        let kind = if e.is_connect() {
            TransportKind::Connect
        } else if e.is_timeout() {
            TransportKind::Timeout
        } else {
            TransportKind::Broken
        };
        let mut detail = e.to_string();
        let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(s) = src {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            src = s.source();
        }
        S3Error::Transport {
            kind,
            endpoint: self.endpoint().to_string(),
            detail,
        }
    }

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

    /// Every page of a listing. A server that repeats a token is an error, not a loop.
    pub async fn list_objects_all(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> Result<ListPage, S3Error> {
        let mut all = ListPage::default();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .list_objects_page(bucket, prefix, delimiter, token.as_deref(), None)
                .await?;
            all.objects.extend(page.objects);
            all.common_prefixes.extend(page.common_prefixes);
            match page.next_token {
                None => return Ok(all),
                Some(t) if !seen.insert(t.clone()) => {
                    return Err(S3Error::malformed(
                        "ListObjectsV2",
                        format!("continuation token {t:?} repeated"),
                    ))
                }
                Some(t) => token = Some(t),
            }
        }
        Err(S3Error::malformed("ListObjectsV2", "too many pages"))
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

/// A pinned copy source: `x-amz-copy-source-if-match`.
fn source_conditions<'a>(r: Request<'a>, src: &Source<'_>) -> Request<'a> {
    match src.if_match {
        Some(etag) => r.header("x-amz-copy-source-if-match", quote_etag(etag)),
        None => r,
    }
}

/// An ETag as S3 quotes it: some servers (Ceph RGW) answer copies with a
/// bare one, which a later Complete or comparison would not match.
pub fn quote_etag(etag: &str) -> String {
    let bare = etag.trim().trim_matches('"');
    format!("\"{bare}\"")
}

/// The `x-amz-copy-source` value: `/bucket/key`, key URL-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    format!("/{}/{}", bucket, sigv4::uri_encode(key, false))
}

/// A body kept in the pieces the connection delivered, without gathering
/// it into one buffer. Each piece is a slice of hyper's read buffer and
/// keeps that whole buffer alive (up to ~408 KiB): a large piece fills most
/// of its buffer and is kept as it is, but small ones (a slow or far
/// server delivers a few KiB per read) would pin far more memory than
/// they hold, so they are copied together into buffers of at most
/// [`Pieces::GATHER`] bytes, sized to what is left of the body.
struct Pieces {
    kept: Vec<Bytes>,
    small: BytesMut,
    /// Bytes of the body not yet seen (from Content-Length; 0 if unknown).
    left: u64,
}

impl Pieces {
    /// Pieces at least this large are kept as they are.
    const KEEP: usize = 128 * 1024;
    /// Largest buffer small pieces are gathered into.
    const GATHER: usize = 1024 * 1024;

    fn new(content_length: u64) -> Self {
        Pieces {
            kept: Vec::new(),
            small: BytesMut::new(),
            left: content_length,
        }
    }

    fn push(&mut self, piece: Bytes) {
        self.left = self.left.saturating_sub(piece.len() as u64);
        if piece.len() >= Self::KEEP {
            self.flush();
            self.kept.push(piece);
            return;
        }
        if piece.is_empty() {
            return;
        }
        if self.small.capacity() - self.small.len() < piece.len() {
            self.flush();
            let want = (piece.len() as u64 + self.left).min(Self::GATHER as u64) as usize;
            self.small.reserve(want.max(piece.len()));
        }
        self.small.extend_from_slice(&piece);
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.kept.push(self.small.split().freeze());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.kept
    }
}

async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Bytes {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most [`MAX_HEDGES`] hedges at once; a finished one gives its
    /// slot back.
    #[test]
    fn hedges_are_capped_and_slots_come_back() {
        let n = AtomicUsize::new(0);
        let a = HedgeSlot::take(&n).expect("first");
        let b = HedgeSlot::take(&n).expect("second");
        assert!(HedgeSlot::take(&n).is_none(), "a third while two run");
        drop(a);
        let c = HedgeSlot::take(&n).expect("a slot came back");
        drop((b, c));
        assert_eq!(n.load(Ordering::Relaxed), 0);
    }

    /// Large pieces of a body are kept as they are (the very bytes, no
    /// copy); small ones are copied together into buffers of at most 1 MiB,
    /// so a body delivered a few KiB at a time pins no more memory than it
    /// holds; the pieces in order are the body.
    #[test]
    fn small_pieces_are_gathered_large_ones_kept() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut sizes = vec![10_240; 5];
        sizes.extend([200 * 1024, 3, 130 * 1024, 1]);
        sizes.extend(std::iter::repeat_n(4096, 600)); // 2.3 MiB in 4 KiB pieces
        sizes.push(Pieces::KEEP);
        sizes.push(Pieces::KEEP - 1);
        let input: Vec<Bytes> = sizes
            .iter()
            .map(|&n| {
                let mut v = vec![0u8; n];
                rng.fill(&mut v);
                Bytes::from(v)
            })
            .collect();
        let total: usize = sizes.iter().sum();
        let mut p = Pieces::new(total as u64);
        for piece in &input {
            p.push(piece.clone());
            p.push(Bytes::new());
        }
        let out = p.finish();
        let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let expected: Vec<u8> = input.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(joined == expected, "the pieces are the body");
        for b in &out {
            let kept = input
                .iter()
                .any(|i| i.as_ptr() == b.as_ptr() && i.len() == b.len());
            if b.len() >= Pieces::KEEP && input.iter().any(|i| i.as_ptr() == b.as_ptr()) {
                assert!(kept, "a large piece is kept whole");
            } else {
                assert!(!kept, "a small piece is copied ({} bytes)", b.len());
                assert!(b.len() <= Pieces::GATHER, "gathered {} bytes", b.len());
            }
        }
        let kept = out
            .iter()
            .filter(|b| b.len() >= Pieces::KEEP && input.iter().any(|i| i.as_ptr() == b.as_ptr()))
            .count();
        assert_eq!(kept, 3, "200 KiB, 130 KiB and KEEP bytes are kept");
        assert!(out.len() <= 9, "{} pieces: small ones gathered", out.len());
    }

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
    use crate::s3::config::{parse_endpoint, PayloadSigning};

    fn client(endpoint: &str, path_style: bool) -> Client {
        Client::new(S3Config {
            endpoint: parse_endpoint(endpoint).unwrap(),
            region: "us-east-1".into(),
            path_style,
            credentials: sigv4::Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "SECRET".into(),
                session_token: None,
            },
            ca_bundle: None,
            payload_signing: PayloadSigning::UnsignedWithMd5,
            extra_endpoints: Vec::new(),
            credentials_file: None,
            list_v1: false,
            max_attempts: 1,
            request_timeout: crate::s3::config::REQUEST_TIMEOUT,
            min_transfer_rate: crate::s3::config::MIN_TRANSFER_RATE,
        })
        .unwrap()
    }

    #[test]
    fn path_and_virtual_hosted_targets() {
        let c = client("http://127.0.0.1:3900", true);
        let (u, host) = c.target("b", Some("dir/a b+c~é")).unwrap();
        assert_eq!(host, "127.0.0.1:3900");
        assert_eq!(u.path(), "/b/dir/a%20b%2Bc~%C3%A9");
        let c = client("https://s3.eu-west-1.amazonaws.com", false);
        let (u, host) = c.target("my-bucket", Some("k")).unwrap();
        assert_eq!(host, "my-bucket.s3.eu-west-1.amazonaws.com");
        assert_eq!(u.as_str(), "https://my-bucket.s3.eu-west-1.amazonaws.com/k");
    }

    #[test]
    fn dot_segment_keys_are_refused() {
        let c = client("http://127.0.0.1:3900", true);
        for k in ["x/../y", "..", ".", "a/./b", "a/..", "./a"] {
            assert!(
                matches!(c.target("b", Some(k)), Err(S3Error::InvalidKey { .. })),
                "{k}"
            );
        }
        for k in ["a..b", "...", ".hidden", "a/.b/c", "a//b"] {
            assert!(c.target("b", Some(k)).is_ok(), "{k}");
        }
        assert!(c.target("b", Some("")).is_err());
    }

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
