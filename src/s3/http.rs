//! The only file that speaks HTTP: signs each S3 request, sends it with
//! retries, hedging and endpoint failover, and turns error answers into
//! typed errors. The operations themselves are in `ops.rs`.

use super::body::{read_capped, Pieces};
use super::config::{PayloadSigning, S3Config};
use super::error::{Retry, S3Error, TransportKind};
use super::pace::Pace;
use super::sigv4::{self, Credentials, SigningParams, SigningRequest};
use super::xml;
use base64::Engine;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Upper bound on one error body we read (S3 error documents are tiny).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Complete and copies carry tiny bodies but may work for minutes on the server.
pub(super) const SERVER_WORK_TIMEOUT: Duration = Duration::from_secs(600);
/// Total time one request may spend in retries.
const MAX_RETRY_ELAPSED: Duration = Duration::from_secs(120);
/// Bodies up to this size are hashed on the async worker (a blocking
/// thread's hand-off costs more); larger ones on a blocking thread.
pub const INLINE_HASH_MAX: usize = 256 * 1024;
/// Most pages a listing follows before calling the answer a loop.
pub(super) const MAX_PAGES: usize = 1_000_000;

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
    pub(super) cfg: Arc<S3Config>,
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
pub(super) struct Answer {
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// The body in the pieces it arrived in, instead of `body`, when the
    /// request asked for them ([`Request::frames`]).
    pub(super) frames: Vec<Bytes>,
}

/// One request before signing.
pub(super) struct Request<'a> {
    pub(super) op: Op,
    pub(super) method: Method,
    pub(super) bucket: &'a str,
    pub(super) key: Option<&'a str>,
    pub(super) query: Vec<(String, String)>,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Bytes,
    /// When set, sent as Content-MD5 (and allows UNSIGNED-PAYLOAD).
    md5: Option<[u8; 16]>,
    /// Safe to send twice: the retry loop may repeat it after any transient error.
    pub(super) idempotent: bool,
    /// The server may answer 200 and still put an `<Error>` in the body.
    pub(super) error_in_200: bool,
    pub(super) timeout: Deadline,
    /// Keep a successful body in the pieces it arrived in (no copy into
    /// one buffer): the read path answers FUSE reads from them.
    pub(super) frames: bool,
}

/// How long one attempt of a request may take.
#[derive(Debug, Clone, Copy)]
pub(super) enum Deadline {
    /// The configured base plus the time to move this many bytes at the
    /// slowest rate we accept: a body that stops moving is cut off.
    Scaled(u64),
    /// Server-side work (Complete, copies) that may take minutes.
    Fixed(Duration),
}

impl<'a> Request<'a> {
    pub(super) fn new(op: Op, method: Method, bucket: &'a str, key: Option<&'a str>) -> Self {
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
    pub(super) fn query(mut self, k: &str, v: impl Into<String>) -> Self {
        self.query.push((k.to_string(), v.into()));
        self
    }
    pub(super) fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    pub(super) fn body(mut self, body: Bytes, md5: Option<[u8; 16]>) -> Self {
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

pub(super) fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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
            super::rules::check_key_form(key)?;
            if self.cfg.path_style {
                path.push('/');
            }
            path.push_str(&sigv4::uri_encode(key, false));
        }
        let url = Url::parse(&format!("{}://{}{}", ep.scheme(), authority, path)).map_err(|e| {
            S3Error::Config(format!("cannot build a URL for bucket {bucket:?}: {e}"))
        })?;
        // Whatever else the URL layer would rewrite is refused the same way.
        if url.path() != path {
            return Err(S3Error::InvalidKey {
                key: key.unwrap_or_default().to_string(),
                reason: super::rules::DOT_SEGMENT,
            });
        }
        Ok((url, authority))
    }

    /// Sends a request, retrying transient failures with exponential backoff
    /// and full jitter, bounded in attempts and total time.
    pub(super) async fn send(&self, r: &Request<'_>) -> Result<Answer, S3Error> {
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
}
