//! An in-memory [`ObjectStore`]: one bucket held in a map, with S3's rules
//! and fault injection, so the upload engine, the read path and the namespace
//! can be unit-tested without a server.
//!
//! It exists because our integration-test server (Garage) is more lenient
//! than S3: it accepts small non-last parts, copies beyond 5 GiB, parts out of
//! order in CompleteMultipartUpload and more. Code that only ever ran against
//! Garage could therefore break on S3. This store refuses what S3 refuses,
//! with the error code and HTTP status S3 answers, and never panics on any
//! input.
//!
//! It also lets tests make calls fail ([`MemoryStore::fail_nth`],
//! [`MemoryStore::fail_all`], [`MemoryStore::lose_response_nth`]), make them
//! slow ([`MemoryStore::delay`]) and observe them ([`MemoryStore::calls`],
//! [`MemoryStore::peak_in_flight`], [`MemoryStore::peak_bytes_in_flight`]).
//!
//! Keys the real [`Client`](super::Client) refuses to send (empty, or with a
//! `.`/`..` path segment) are refused here with the same
//! [`S3Error::InvalidKey`] ([`rules::check_key`]), so a test cannot pass with
//! a key production could not use. Server-side encryption, ACLs and extra
//! headers in [`PutOptions`] are accepted and ignored: every ETag here is the
//! MD5 form.

#![warn(missing_docs)]

use super::error::S3Error;
use super::http::{bare_etag, hex, md5_of, multipart_etag, Op};
use super::rules::{
    self, MAX_KEYS, MAX_METADATA_SIZE, MAX_OBJECT_SIZE, MAX_PARTS, MAX_SINGLE_SIZE, MIN_PART_SIZE,
};
use super::store::{ObjectStore, StoreFuture};
use super::types::*;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};
use std::ops::{Bound, Range};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// The Content-Type S3 gives an object stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

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

/// Number of [`Op`] variants (the enum is `repr(usize)`, `Bucket` last).
const OPS: usize = Op::Bucket as usize + 1;

/// Source of request ids, so every error of every store is distinguishable in logs.
static REQUEST_SEQ: AtomicU64 = AtomicU64::new(1);

/// The size rules a [`MemoryStore`] enforces. The defaults are S3's
/// ([`rules`]); tests shrink them because multi-gigabyte bodies do not fit in
/// a unit test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Smallest part allowed except the last, checked at CompleteMultipartUpload
    /// (`EntityTooSmall`). S3: 5 MiB.
    pub min_part_size: u64,
    /// Largest body of one PutObject or UploadPart, and largest range of one
    /// UploadPartCopy (`EntityTooLarge`). S3: 5 GiB.
    pub max_body_size: u64,
    /// Largest CopyObject source (`InvalidRequest`). S3: 5 GiB; Garage has no
    /// such limit, which is why this store exists.
    pub max_copy_size: u64,
    /// Largest object a CompleteMultipartUpload may assemble (`EntityTooLarge`). S3: 5 TiB.
    pub max_object_size: u64,
}

impl Default for Limits {
    /// S3's limits.
    fn default() -> Self {
        Limits {
            min_part_size: MIN_PART_SIZE,
            max_body_size: MAX_SINGLE_SIZE,
            max_copy_size: MAX_SINGLE_SIZE,
            max_object_size: MAX_OBJECT_SIZE,
        }
    }
}

/// One stored object, as tests inspect it with [`MemoryStore::object`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// The object's bytes.
    pub body: Bytes,
    /// The quoted ETag: `"<hex md5>"` for a PUT, `"<hex>-N"` for multipart,
    /// the source's for a copy.
    pub etag: String,
    /// The Content-Type ([`DEFAULT_CONTENT_TYPE`] when none was given, as S3 does).
    pub content_type: String,
    /// User metadata, names lowercased (as they come back from HEAD).
    pub metadata: BTreeMap<String, String>,
    /// The storage class asked for; `None` means STANDARD.
    pub storage_class: Option<String>,
    /// Cache-Control and the other [`SYSTEM_HEADERS`] it was given.
    pub headers: Vec<(String, String)>,
    /// SSE-S3 or SSE-KMS asked for (a COPY-directive copy gets none, as on
    /// S3 without a bucket default).
    pub sse: Option<Sse>,
    /// When the object was written.
    pub last_modified: SystemTime,
}

/// What an upload remembers from CreateMultipartUpload for the object it makes.
#[derive(Debug, Clone)]
struct Attrs {
    content_type: String,
    metadata: BTreeMap<String, String>,
    storage_class: Option<String>,
    headers: Vec<(String, String)>,
    sse: Option<Sse>,
}

impl Attrs {
    /// What an object created with `opts` keeps (not validated).
    fn of(opts: &PutOptions) -> Attrs {
        Attrs {
            content_type: opts
                .content_type
                .clone()
                .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string()),
            metadata: opts
                .metadata
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            storage_class: opts.storage_class.clone(),
            headers: opts
                .extra_headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .filter(|(k, _)| SYSTEM_HEADERS.contains(&k.as_str()))
                .collect(),
            sse: opts
                .sse
                .clone()
                .filter(|s| !matches!(s, Sse::Customer { .. })),
        }
    }
}

#[derive(Debug, Clone)]
struct Part {
    body: Bytes,
    md5: [u8; 16],
    etag: String,
}

#[derive(Debug)]
struct Upload {
    key: String,
    attrs: Attrs,
    initiated: SystemTime,
    /// Creation order, to sort uploads initiated in the same clock tick.
    seq: u64,
    parts: BTreeMap<u32, Part>,
}

#[derive(Debug, Default)]
struct Data {
    objects: BTreeMap<String, StoredObject>,
    uploads: HashMap<String, Upload>,
    upload_seq: u64,
}

/// When an injected fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strike {
    /// The call fails without any effect.
    Before,
    /// The call takes effect, then its answer is lost and replaced by the error.
    After,
}

#[derive(Debug, Default)]
struct Faults {
    /// (op, 1-based call number) -> (error code, when).
    nth: HashMap<(usize, u64), (String, Strike)>,
    /// Every call of the op fails with this code.
    all: HashMap<usize, String>,
    /// Every call of the op sleeps this long first.
    delay: HashMap<usize, Duration>,
    /// Every call of the op sleeps this long after acting, before it answers
    /// (a slow answer: the request took effect, the caller does not know yet).
    delay_after: HashMap<usize, Duration>,
}

/// An in-memory bucket implementing [`ObjectStore`] with S3's rules, fault
/// injection and concurrency observation, for unit tests of the layers above
/// the S3 client. All methods take `&self`; share it with `Arc`.
pub struct MemoryStore {
    limits: Limits,
    data: Mutex<Data>,
    faults: Mutex<Faults>,
    calls: [AtomicU64; OPS],
    in_flight: [AtomicUsize; OPS],
    peak_in_flight: [AtomicUsize; OPS],
    bytes_in_flight: AtomicU64,
    peak_bytes_in_flight: AtomicU64,
}

impl Default for MemoryStore {
    /// An empty store with S3's limits.
    fn default() -> Self {
        Self::with_config(Limits::default())
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = lock(&self.data);
        f.debug_struct("MemoryStore")
            .field("limits", &self.limits)
            .field("objects", &d.objects.len())
            .field("uploads", &d.uploads.len())
            .finish()
    }
}

/// Sets `op`'s delay in `delays`; zero removes it.
fn set_delay(delays: &mut HashMap<usize, Duration>, op: Op, d: Duration) {
    if d.is_zero() {
        delays.remove(&(op as usize));
    } else {
        delays.insert(op as usize, d);
    }
}

/// A fault "code" that is no answer at all: the connection breaks after the
/// request was sent (a transport error whose outcome is unknown).
pub const CONNECTION_RESET: &str = "ConnectionReset";

/// Locks, ignoring poisoning: a panicking test thread must not make every
/// later call panic too.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A service error as S3 would send it.
fn service(status: u16, code: &str, message: impl Into<String>) -> S3Error {
    S3Error::Service {
        status,
        code: code.to_string(),
        message: message.into(),
        request_id: format!("MEM{:08}", REQUEST_SEQ.fetch_add(1, Ordering::Relaxed)),
    }
}

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

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
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

/// HEAD answers carry no body, so a client only sees the status: map any
/// service error to what [`S3Error::from_status`] makes of it.
fn as_head_error(e: S3Error) -> S3Error {
    match e {
        S3Error::Service {
            status, request_id, ..
        } => S3Error::from_status(status, request_id),
        other => other,
    }
}

/// A ListObjectsV2 continuation token: where the previous page stopped.
enum Resume {
    /// After this object key.
    Key(String),
    /// After this common prefix and every key under it.
    Prefix(String),
}

fn encode_token(r: &Resume) -> String {
    match r {
        Resume::Key(k) => format!("k{}", hex(k.as_bytes())),
        Resume::Prefix(p) => format!("p{}", hex(p.as_bytes())),
    }
}

fn decode_token(t: &str) -> Option<Resume> {
    let (kind, rest) = (t.get(..1)?, t.get(1..)?);
    if rest.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..rest.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let s = String::from_utf8(bytes).ok()?;
    match kind {
        "k" => Some(Resume::Key(s)),
        "p" => Some(Resume::Prefix(s)),
        _ => None,
    }
}

/// Counts a call as in flight (and its body bytes) until dropped, so a
/// cancelled future is uncounted too.
struct InFlight<'a> {
    store: &'a MemoryStore,
    op: usize,
    bytes: u64,
}

impl<'a> InFlight<'a> {
    fn enter(store: &'a MemoryStore, op: Op, bytes: u64) -> Self {
        let op = op as usize;
        let now = store.in_flight[op].fetch_add(1, Ordering::SeqCst) + 1;
        store.peak_in_flight[op].fetch_max(now, Ordering::SeqCst);
        if bytes > 0 {
            let now = store.bytes_in_flight.fetch_add(bytes, Ordering::SeqCst) + bytes;
            store.peak_bytes_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        InFlight { store, op, bytes }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.store.in_flight[self.op].fetch_sub(1, Ordering::SeqCst);
        if self.bytes > 0 {
            self.store
                .bytes_in_flight
                .fetch_sub(self.bytes, Ordering::SeqCst);
        }
    }
}

impl MemoryStore {
    /// An empty store with S3's limits (5 MiB minimum part, 5 GiB copy).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with a smaller minimum part size and CopyObject limit,
    /// so the rules can be exercised with small bodies. The other limits stay S3's.
    pub fn with_limits(min_part_size: u64, max_copy_size: u64) -> Self {
        Self::with_config(Limits {
            min_part_size,
            max_copy_size,
            ..Limits::default()
        })
    }

    /// An empty store with every limit chosen by the test.
    pub fn with_config(limits: Limits) -> Self {
        MemoryStore {
            limits,
            data: Mutex::new(Data::default()),
            faults: Mutex::new(Faults::default()),
            calls: std::array::from_fn(|_| AtomicU64::new(0)),
            in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
            peak_in_flight: std::array::from_fn(|_| AtomicUsize::new(0)),
            bytes_in_flight: AtomicU64::new(0),
            peak_bytes_in_flight: AtomicU64::new(0),
        }
    }

    /// The limits this store enforces, so tests can size bodies around them.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    // ---- fault injection ----

    /// Makes the `n`-th call (1-based, counted since the store was created,
    /// failed calls included, numbered when the method is called rather than
    /// when its future is first polled) of `op` fail with `code` before it has any
    /// effect. The status is S3's for that code ([`rules::status_for_code`]), so the
    /// error is retryable exactly when S3's would be.
    pub fn fail_nth(&self, op: Op, n: u64, code: &str) {
        lock(&self.faults)
            .nth
            .insert((op as usize, n), (code.to_string(), Strike::Before));
    }

    /// Makes the `n`-th call of `op` take effect and then fail with `code`:
    /// the server did the work but the answer was lost. Tests the engine's
    /// handling of non-idempotent retries (a retried Complete meets `NoSuchUpload`).
    pub fn lose_response_nth(&self, op: Op, n: u64, code: &str) {
        lock(&self.faults)
            .nth
            .insert((op as usize, n), (code.to_string(), Strike::After));
    }

    /// Makes every call of `op` fail with `code`, without effect, until
    /// [`clear_faults`](Self::clear_faults): an outage.
    pub fn fail_all(&self, op: Op, code: &str) {
        lock(&self.faults).all.insert(op as usize, code.to_string());
    }

    /// Removes every injected fault (`fail_nth`, `lose_response_nth`,
    /// `fail_all`); delays stay.
    pub fn clear_faults(&self) {
        let mut f = lock(&self.faults);
        f.nth.clear();
        f.all.clear();
    }

    /// Makes every later call of `op` sleep `d` (tokio time) before acting,
    /// so calls stay in flight long enough for tests to observe concurrency
    /// bounds. `Duration::ZERO` removes the delay. A delayed call needs a
    /// tokio runtime with time enabled (an undelayed one runs on any executor).
    pub fn delay(&self, op: Op, d: Duration) {
        set_delay(&mut lock(&self.faults).delay, op, d);
    }

    /// Makes every later call of `op` act at once but answer `d` later: a
    /// caller cancelled meanwhile never learns that it took effect.
    pub fn delay_answer(&self, op: Op, d: Duration) {
        set_delay(&mut lock(&self.faults).delay_after, op, d);
    }

    // ---- observation ----

    /// How many calls of `op` were made (failed and injected ones included),
    /// so tests can assert how much traffic a behaviour costs.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op as usize].load(Ordering::SeqCst)
    }

    /// Calls of `op` currently running (in their delay or action).
    pub fn in_flight(&self, op: Op) -> usize {
        self.in_flight[op as usize].load(Ordering::SeqCst)
    }

    /// The most calls of `op` ever running at once: proves a concurrency bound.
    pub fn peak_in_flight(&self, op: Op) -> usize {
        self.peak_in_flight[op as usize].load(Ordering::SeqCst)
    }

    /// Body bytes of UploadPart and PutObject calls currently running.
    pub fn bytes_in_flight(&self) -> u64 {
        self.bytes_in_flight.load(Ordering::SeqCst)
    }

    /// The most UploadPart + PutObject body bytes ever held by running calls
    /// at once: proves a memory budget bounds what is buffered.
    pub fn peak_bytes_in_flight(&self) -> u64 {
        self.peak_bytes_in_flight.load(Ordering::SeqCst)
    }

    // ---- inspection (no call is counted, no fault applies) ----

    /// The stored object under `key`, to check what an operation left behind.
    pub fn object(&self, key: &str) -> Option<StoredObject> {
        lock(&self.data).objects.get(key).cloned()
    }

    /// Every key, in S3's listing order (bytes).
    pub fn keys(&self) -> Vec<String> {
        lock(&self.data).objects.keys().cloned().collect()
    }

    /// Every in-progress upload as (key, upload id), sorted by key then
    /// creation: proves nothing was orphaned.
    pub fn uploads(&self) -> Vec<(String, String)> {
        let d = lock(&self.data);
        let mut v: Vec<_> = d
            .uploads
            .iter()
            .map(|(id, u)| (u.key.clone(), u.seq, id.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(k, _, id)| (k, id)).collect()
    }

    /// Stores an object directly, without counting a call or applying
    /// faults: test setup. Returns its ETag. Options are not validated.
    pub fn insert_object(&self, key: &str, body: Bytes, opts: &PutOptions) -> String {
        let etag = quoted(&hex(&md5_of(&body)));
        let attrs = Attrs::of(opts);
        lock(&self.data)
            .objects
            .insert(key.to_string(), Self::stored(body, etag.clone(), attrs));
        etag
    }

    // ---- the machinery every call goes through ----

    fn stored(body: Bytes, etag: String, attrs: Attrs) -> StoredObject {
        StoredObject {
            body,
            etag,
            content_type: attrs.content_type,
            metadata: attrs.metadata,
            storage_class: attrs.storage_class,
            headers: attrs.headers,
            sse: attrs.sse,
            last_modified: SystemTime::now(),
        }
    }

    /// Counts the call now (so the n-th call is the n-th invocation), then,
    /// when polled: marks it in flight, sleeps its delay, applies faults and
    /// runs `act`. No lock is held across the sleep.
    fn call<'a, T, F>(&'a self, op: Op, body_bytes: u64, act: F) -> StoreFuture<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(&'a MemoryStore) -> Result<T, S3Error> + Send + 'a,
    {
        let n = self.calls[op as usize].fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let _in_flight = InFlight::enter(self, op, body_bytes);
            let delay = lock(&self.faults).delay.get(&(op as usize)).copied();
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            let fault = {
                let f = lock(&self.faults);
                f.nth.get(&(op as usize, n)).cloned().or_else(|| {
                    f.all
                        .get(&(op as usize))
                        .map(|c| (c.clone(), Strike::Before))
                })
            };
            let result = match fault {
                None => act(self),
                Some((code, strike)) => {
                    if strike == Strike::After {
                        let _ = act(self);
                    }
                    if code == CONNECTION_RESET {
                        // The connection broke with the request sent: its
                        // outcome is unknown to the caller.
                        Err(S3Error::Transport {
                            kind: super::error::TransportKind::Broken,
                            endpoint: "memory".into(),
                            detail: format!("injected connection reset: call {n} of {op:?}"),
                        })
                    } else {
                        Err(service(
                            rules::status_for_code(&code),
                            &code,
                            format!("injected fault: call {n} of {op:?}"),
                        ))
                    }
                }
            };
            let after = lock(&self.faults).delay_after.get(&(op as usize)).copied();
            if let Some(d) = after {
                tokio::time::sleep(d).await;
            }
            if op == Op::HeadObject {
                result.map_err(as_head_error)
            } else {
                result
            }
        })
    }

    // ---- the operations, synchronous, run by `call` ----

    fn do_put(
        &self,
        key: &str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &PutOptions,
    ) -> Result<String, S3Error> {
        check_key(key)?;
        let attrs = attrs_of(opts)?;
        let size = body.len() as u64;
        if size > self.limits.max_body_size {
            return Err(entity_too_large(size, self.limits.max_body_size));
        }
        let actual = md5_of(&body);
        if md5.is_some_and(|m| m != actual) {
            return Err(bad_digest());
        }
        let etag = quoted(&hex(&actual));
        lock(&self.data)
            .objects
            .insert(key.to_string(), Self::stored(body, etag.clone(), attrs));
        Ok(etag)
    }

    fn do_create(&self, key: &str, opts: &PutOptions) -> Result<String, S3Error> {
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

    fn do_upload_part(
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

    fn do_upload_part_copy(
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

    fn do_complete(
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

    fn do_abort(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        check_key(key)?;
        let mut d = lock(&self.data);
        Self::upload_mut(&mut d, key, upload_id)?;
        d.uploads.remove(upload_id);
        Ok(())
    }

    fn do_list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<PartInfo>, S3Error> {
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

    fn do_list_uploads(&self, prefix: &str) -> Vec<UploadInfo> {
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

    fn do_get(&self, src: Source<'_>, range: Option<Range<u64>>) -> Result<GetResult, S3Error> {
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

    fn do_head(&self, key: &str) -> Result<ObjectHead, S3Error> {
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

    fn do_list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListPage, S3Error> {
        let resume = match token {
            None => None,
            Some(t) => Some(decode_token(t).ok_or_else(|| {
                service(
                    400,
                    "InvalidArgument",
                    "The continuation token provided is incorrect",
                )
            })?),
        };
        let max = max_keys.unwrap_or(MAX_KEYS).min(MAX_KEYS) as usize;
        let mut page = ListPage::default();
        if max == 0 {
            return Ok(page);
        }
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let (after, skip_under) = match &resume {
            None => (None, None),
            Some(Resume::Key(k)) => (Some(k.as_str()), None),
            Some(Resume::Prefix(p)) => (Some(p.as_str()), Some(p.as_str())),
        };
        // Keys under `prefix` are contiguous from `prefix` on, so start at the
        // later of `prefix` and the resume point and stop at the first key
        // outside the prefix.
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let d = lock(&self.data);
        let mut count = 0usize;
        let mut last: Option<Resume> = None;
        let mut truncated = false;
        for (key, o) in d.objects.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if skip_under.is_some_and(|p| key.starts_with(p)) {
                continue;
            }
            let rolled = delimiter.and_then(|delim| {
                key[prefix.len()..]
                    .find(delim)
                    .map(|i| key[..prefix.len() + i + delim.len()].to_string())
            });
            if let (Some(cp), Some(Resume::Prefix(prev))) = (&rolled, &last) {
                if cp == prev {
                    continue;
                }
            }
            if count == max {
                truncated = true;
                break;
            }
            count += 1;
            match rolled {
                Some(cp) => {
                    page.common_prefixes.push(cp.clone());
                    last = Some(Resume::Prefix(cp));
                }
                None => {
                    page.objects.push(ObjectEntry {
                        key: key.clone(),
                        size: o.body.len() as u64,
                        etag: o.etag.clone(),
                        last_modified: Some(o.last_modified),
                        storage_class: Some(
                            o.storage_class
                                .clone()
                                .unwrap_or_else(|| "STANDARD".to_string()),
                        ),
                    });
                    last = Some(Resume::Key(key.clone()));
                }
            }
        }
        if truncated {
            page.next_token = last.as_ref().map(encode_token);
        }
        Ok(page)
    }

    fn do_delete(&self, key: &str) -> Result<(), S3Error> {
        check_key(key)?;
        lock(&self.data).objects.remove(key);
        Ok(())
    }

    fn do_copy(
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

/// The sizes, in turn, of the pieces `get_object_frames` answers in: odd
/// sizes, smaller and larger than a kernel read.
const FRAME_SIZES: [usize; 4] = [100_003, 7, 300_001, 65_536];

impl ObjectStore for MemoryStore {
    fn put_object<'a>(
        &'a self,
        key: &'a str,
        body: Bytes,
        md5: Option<[u8; 16]>,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        let len = body.len() as u64;
        self.call(Op::PutObject, len, move |s| s.do_put(key, body, md5, opts))
    }

    fn create_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        opts: &'a PutOptions,
    ) -> StoreFuture<'a, String> {
        self.call(Op::CreateMultipartUpload, 0, move |s| {
            s.do_create(key, opts)
        })
    }

    fn upload_part<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        body: Bytes,
        md5: [u8; 16],
    ) -> StoreFuture<'a, String> {
        let len = body.len() as u64;
        self.call(Op::UploadPart, len, move |s| {
            s.do_upload_part(key, upload_id, part_number, body, md5)
        })
    }

    fn upload_part_copy<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        part_number: u32,
        src: Source<'a>,
        range: Range<u64>,
    ) -> StoreFuture<'a, String> {
        self.call(Op::UploadPartCopy, 0, move |s| {
            s.do_upload_part_copy(key, upload_id, part_number, src, range)
        })
    }

    fn complete_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
        parts: &'a [(u32, String)],
    ) -> StoreFuture<'a, String> {
        self.call(Op::CompleteMultipartUpload, 0, move |s| {
            s.do_complete(key, upload_id, parts)
        })
    }

    fn abort_multipart_upload<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.call(Op::AbortMultipartUpload, 0, move |s| {
            s.do_abort(key, upload_id)
        })
    }

    fn list_parts<'a>(
        &'a self,
        key: &'a str,
        upload_id: &'a str,
    ) -> StoreFuture<'a, Vec<PartInfo>> {
        self.call(Op::ListParts, 0, move |s| s.do_list_parts(key, upload_id))
    }

    fn list_uploads<'a>(&'a self, prefix: &'a str) -> StoreFuture<'a, Vec<UploadInfo>> {
        self.call(Op::ListMultipartUploads, 0, move |s| {
            Ok(s.do_list_uploads(prefix))
        })
    }

    fn get_object<'a>(
        &'a self,
        src: Source<'a>,
        range: Option<Range<u64>>,
    ) -> StoreFuture<'a, GetResult> {
        self.call(Op::GetObject, 0, move |s| s.do_get(src, range))
    }

    /// Cuts the body into pieces of uneven sizes (as a network delivers
    /// it), so readers meet reads that straddle pieces.
    fn get_object_frames<'a>(&'a self, key: &'a str, range: Range<u64>) -> StoreFuture<'a, Frames> {
        self.call(Op::GetObject, 0, move |s| {
            let got = s.do_get(Source::key(key), Some(range))?;
            let body = got.body;
            let mut frames = Vec::new();
            let mut at = 0;
            for size in FRAME_SIZES.iter().cycle() {
                if at == body.len() {
                    break;
                }
                let end = (at + size).min(body.len());
                frames.push(body.slice(at..end));
                at = end;
            }
            Ok(Frames {
                pieces: frames,
                etag: got.etag,
                object_size: got.object_size,
            })
        })
    }

    fn head_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ObjectHead> {
        self.call(Op::HeadObject, 0, move |s| s.do_head(key))
    }

    fn list_objects_page<'a>(
        &'a self,
        prefix: &'a str,
        delimiter: Option<&'a str>,
        token: Option<&'a str>,
        max_keys: Option<u32>,
    ) -> StoreFuture<'a, ListPage> {
        self.call(Op::ListObjects, 0, move |s| {
            s.do_list(prefix, delimiter, token, max_keys)
        })
    }

    fn delete_object<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.call(Op::DeleteObject, 0, move |s| s.do_delete(key))
    }

    fn copy_object<'a>(
        &'a self,
        src: Source<'a>,
        key: &'a str,
        directive: &'a MetadataDirective,
    ) -> StoreFuture<'a, String> {
        self.call(Op::CopyObject, 0, move |s| s.do_copy(src, key, directive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn opts() -> PutOptions {
        PutOptions::default()
    }

    fn code<T: std::fmt::Debug>(r: Result<T, S3Error>) -> (String, u16) {
        let e = r.expect_err("expected an error");
        (
            e.code().unwrap_or("<none>").to_string(),
            e.status().unwrap_or(0),
        )
    }

    fn body(len: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect::<Vec<u8>>(),
        )
    }

    async fn part(s: &MemoryStore, key: &str, id: &str, n: u32, b: &Bytes) -> String {
        s.upload_part(key, id, n, b.clone(), md5_of(b))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn small_object_round_trip_with_metadata_and_ranges() {
        let s = MemoryStore::new();
        let mut o = opts();
        o.content_type = Some("text/plain".into());
        o.metadata.insert("Mode".into(), "644".into());
        let b = Bytes::from_static(b"hello world");
        let etag = s
            .put_object("dir/a.txt", b.clone(), None, &o)
            .await
            .unwrap();
        assert_eq!(etag, format!("\"{}\"", hex(&md5_of(&b))));

        let h = s.head_object("dir/a.txt").await.unwrap();
        assert_eq!(h.size, 11);
        assert_eq!(h.etag, etag);
        assert_eq!(h.content_type.as_deref(), Some("text/plain"));
        assert_eq!(h.metadata.get("mode").map(String::as_str), Some("644"));
        assert_eq!(s.object("dir/a.txt").unwrap().metadata, h.metadata);

        let g = s.get_object(Source::key("dir/a.txt"), None).await.unwrap();
        assert_eq!(
            (g.body.clone(), g.object_size, g.etag),
            (b.clone(), 11, etag)
        );
        let g = s
            .get_object(Source::key("dir/a.txt"), Some(0..1))
            .await
            .unwrap();
        assert_eq!((&g.body[..], g.object_size), (&b"h"[..], 11));
        let g = s
            .get_object(Source::key("dir/a.txt"), Some(10..11))
            .await
            .unwrap();
        assert_eq!(&g.body[..], b"d");
        let g = s
            .get_object(Source::key("dir/a.txt"), Some(6..1000))
            .await
            .unwrap();
        assert_eq!((&g.body[..], g.object_size), (&b"world"[..], 11));
        assert_eq!(
            code(s.get_object(Source::key("dir/a.txt"), Some(11..12)).await),
            ("InvalidRange".into(), 416)
        );
        assert_eq!(
            code(
                s.get_object(Source::key("dir/a.txt"), Some(u64::MAX - 1..u64::MAX))
                    .await
            ),
            ("InvalidRange".into(), 416)
        );
        assert_eq!(
            code(s.get_object(Source::key("nope"), None).await),
            ("NoSuchKey".into(), 404)
        );
        assert_eq!(code(s.head_object("nope").await), ("NotFound".into(), 404));

        // Default content type, as S3.
        s.put_object("b", Bytes::from_static(b"x"), None, &opts())
            .await
            .unwrap();
        assert_eq!(s.object("b").unwrap().content_type, DEFAULT_CONTENT_TYPE);

        // Delete is idempotent.
        s.delete_object("dir/a.txt").await.unwrap();
        s.delete_object("dir/a.txt").await.unwrap();
        assert_eq!(s.keys(), vec!["b".to_string()]);
    }

    #[tokio::test]
    async fn put_bad_digest_and_bad_input() {
        let s = MemoryStore::new();
        let b = Bytes::from_static(b"data");
        let r = s
            .put_object("k", b.clone(), Some(md5_of(b"other")), &opts())
            .await;
        assert_eq!(code(r), ("BadDigest".into(), 400));
        assert!(s.object("k").is_none());
        assert!(s
            .put_object("k", b.clone(), Some(md5_of(&b)), &opts())
            .await
            .is_ok());

        assert!(matches!(
            s.put_object("", b.clone(), None, &opts()).await,
            Err(S3Error::InvalidKey { .. })
        ));
        assert!(matches!(
            s.get_object(Source::key("a/../b"), None).await,
            Err(S3Error::InvalidKey { .. })
        ));
        let long = "x".repeat(rules::MAX_KEY_LEN + 1);
        assert_eq!(
            code(s.put_object(&long, b.clone(), None, &opts()).await),
            ("KeyTooLongError".into(), 400)
        );
        let mut o = opts();
        o.metadata
            .insert("big".into(), "v".repeat(MAX_METADATA_SIZE));
        assert_eq!(
            code(s.put_object("m", b.clone(), None, &o).await),
            ("MetadataTooLarge".into(), 400)
        );
        let mut o = opts();
        o.storage_class = Some("WARM".into());
        assert_eq!(
            code(s.create_multipart_upload("m", &o).await),
            ("InvalidStorageClass".into(), 400)
        );
        assert!(s.uploads().is_empty());
    }

    #[tokio::test]
    async fn multipart_happy_path_out_of_order() {
        let s = MemoryStore::with_limits(8, MAX_SINGLE_SIZE);
        let mut o = opts();
        o.metadata.insert("k".into(), "v".into());
        let id = s.create_multipart_upload("big", &o).await.unwrap();
        assert_eq!(s.uploads(), vec![("big".to_string(), id.clone())]);
        let (p1, p2, p3) = (body(10, 1), body(8, 2), body(3, 3));
        let e3 = part(&s, "big", &id, 3, &p3).await;
        let e1 = part(&s, "big", &id, 1, &p1).await;
        let e2 = part(&s, "big", &id, 2, &p2).await;
        assert_eq!(e1, format!("\"{}\"", hex(&md5_of(&p1))));

        let listed = s.list_parts("big", &id).await.unwrap();
        let numbers: Vec<u32> = listed.iter().map(|p| p.part_number).collect();
        assert_eq!(numbers, vec![1, 2, 3]);
        assert_eq!(listed[1].size, 8);

        // ETags accepted without quotes and in upper case.
        let parts = vec![(1, e1), (2, bare_etag(&e2).to_uppercase()), (3, e3)];
        let etag = s
            .complete_multipart_upload("big", &id, &parts)
            .await
            .unwrap();
        let expected = multipart_etag(&[md5_of(&p1), md5_of(&p2), md5_of(&p3)]);
        assert_eq!(etag, format!("\"{expected}\""));
        assert!(etag.ends_with("-3\""));

        let obj = s.object("big").unwrap();
        let mut all = p1.to_vec();
        all.extend_from_slice(&p2);
        all.extend_from_slice(&p3);
        assert_eq!(obj.body, Bytes::from(all));
        assert_eq!(obj.etag, etag);
        assert_eq!(obj.metadata.get("k").map(String::as_str), Some("v"));
        assert!(s.uploads().is_empty());
        // The upload is gone: a retried Complete meets NoSuchUpload.
        assert_eq!(
            code(s.complete_multipart_upload("big", &id, &parts).await),
            ("NoSuchUpload".into(), 404)
        );
    }

    #[tokio::test]
    async fn unlisted_parts_are_dropped_and_last_part_may_be_small() {
        let s = MemoryStore::with_limits(4, MAX_SINGLE_SIZE);
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let (a, b, c) = (body(4, 1), body(5, 2), body(1, 3));
        let ea = part(&s, "k", &id, 1, &a).await;
        let _ = part(&s, "k", &id, 2, &b).await;
        let ec = part(&s, "k", &id, 5, &c).await;
        let etag = s
            .complete_multipart_upload("k", &id, &[(1, ea), (5, ec)])
            .await
            .unwrap();
        assert_eq!(
            etag,
            format!("\"{}\"", multipart_etag(&[md5_of(&a), md5_of(&c)]))
        );
        let mut all = a.to_vec();
        all.extend_from_slice(&c);
        assert_eq!(s.object("k").unwrap().body, Bytes::from(all));
    }

    #[tokio::test]
    async fn entity_too_small_for_small_non_last_part() {
        // S3's real limit: a 1-byte first part is refused.
        let s = MemoryStore::new();
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let e1 = part(&s, "k", &id, 1, &body(1, 1)).await;
        let e2 = part(&s, "k", &id, 2, &body(1, 2)).await;
        let r = s
            .complete_multipart_upload("k", &id, &[(1, e1.clone()), (2, e2)])
            .await;
        assert_eq!(code(r), ("EntityTooSmall".into(), 400));
        assert!(s.object("k").is_none());
        assert_eq!(s.uploads().len(), 1, "a refused Complete leaves the upload");
        // A single small part is fine: it is the last one.
        s.complete_multipart_upload("k", &id, &[(1, e1)])
            .await
            .unwrap();
        assert_eq!(s.object("k").unwrap().body.len(), 1);

        // With a small configured limit, exactly the limit passes.
        let s = MemoryStore::with_limits(4, MAX_SINGLE_SIZE);
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let e1 = part(&s, "k", &id, 1, &body(3, 1)).await;
        let e2 = part(&s, "k", &id, 2, &body(4, 2)).await;
        let e3 = part(&s, "k", &id, 3, &body(1, 3)).await;
        let r = s
            .complete_multipart_upload("k", &id, &[(1, e1), (2, e2.clone()), (3, e3.clone())])
            .await;
        assert_eq!(code(r), ("EntityTooSmall".into(), 400));
        s.complete_multipart_upload("k", &id, &[(2, e2), (3, e3)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn complete_rules() {
        let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let e1 = part(&s, "k", &id, 1, &body(2, 1)).await;
        let e2 = part(&s, "k", &id, 2, &body(2, 2)).await;
        let complete = |parts: Vec<(u32, String)>| {
            let s = &s;
            let id = id.clone();
            async move { s.complete_multipart_upload("k", &id, &parts).await }
        };
        assert_eq!(
            code(complete(vec![(2, e2.clone()), (1, e1.clone())]).await),
            ("InvalidPartOrder".into(), 400)
        );
        assert_eq!(
            code(complete(vec![(1, e1.clone()), (1, e1.clone())]).await),
            ("InvalidPartOrder".into(), 400)
        );
        assert_eq!(
            code(complete(vec![(1, e1.clone()), (2, "\"0123\"".into())]).await),
            ("InvalidPart".into(), 400)
        );
        assert_eq!(
            code(complete(vec![(1, e1.clone()), (3, e2.clone())]).await),
            ("InvalidPart".into(), 400)
        );
        assert_eq!(code(complete(vec![]).await), ("MalformedXML".into(), 400));
        let r = s
            .complete_multipart_upload("other", &id, &[(1, e1.clone())])
            .await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
        assert!(s.keys().is_empty());

        let small = MemoryStore::with_config(Limits {
            min_part_size: 1,
            max_object_size: 3,
            ..Limits::default()
        });
        let id2 = small.create_multipart_upload("k", &opts()).await.unwrap();
        let f1 = part(&small, "k", &id2, 1, &body(2, 1)).await;
        let f2 = part(&small, "k", &id2, 2, &body(2, 2)).await;
        let r = small
            .complete_multipart_upload("k", &id2, &[(1, f1), (2, f2)])
            .await;
        assert_eq!(code(r), ("EntityTooLarge".into(), 400));
        complete(vec![(1, e1), (2, e2)]).await.unwrap();
    }

    #[tokio::test]
    async fn upload_part_rules() {
        let s = MemoryStore::new();
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let b = body(4, 0);
        for n in [0, MAX_PARTS + 1] {
            let r = s.upload_part("k", &id, n, b.clone(), md5_of(&b)).await;
            assert_eq!(code(r), ("InvalidArgument".into(), 400), "part {n}");
        }
        part(&s, "k", &id, MAX_PARTS, &b).await;
        let r = s.upload_part("k", &id, 1, Bytes::new(), md5_of(b"")).await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
        let r = s.upload_part("k", &id, 1, b.clone(), md5_of(b"x")).await;
        assert_eq!(code(r), ("BadDigest".into(), 400));
        let r = s.upload_part("other", &id, 1, b.clone(), md5_of(&b)).await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
        let r = s.upload_part("k", "bogus", 1, b.clone(), md5_of(&b)).await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
        let parts = s.list_parts("k", &id).await.unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].part_number, MAX_PARTS);

        let tiny = MemoryStore::with_config(Limits {
            max_body_size: 3,
            ..Limits::default()
        });
        let id = tiny.create_multipart_upload("k", &opts()).await.unwrap();
        let r = tiny.upload_part("k", &id, 1, b.clone(), md5_of(&b)).await;
        assert_eq!(code(r), ("EntityTooLarge".into(), 400));
        let r = tiny.put_object("k", b.clone(), None, &opts()).await;
        assert_eq!(code(r), ("EntityTooLarge".into(), 400));
    }

    #[tokio::test]
    async fn reuploaded_part_wins() {
        let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let old = part(&s, "k", &id, 1, &body(5, 1)).await;
        let new_body = body(6, 2);
        let new = part(&s, "k", &id, 1, &new_body).await;
        let r = s.complete_multipart_upload("k", &id, &[(1, old)]).await;
        assert_eq!(code(r), ("InvalidPart".into(), 400));
        s.complete_multipart_upload("k", &id, &[(1, new)])
            .await
            .unwrap();
        assert_eq!(s.object("k").unwrap().body, new_body);
    }

    #[tokio::test]
    async fn abort_and_list_uploads() {
        let s = MemoryStore::new();
        let a = s.create_multipart_upload("d/b", &opts()).await.unwrap();
        let b = s.create_multipart_upload("d/a", &opts()).await.unwrap();
        let c = s.create_multipart_upload("d/a", &opts()).await.unwrap();
        let _ = s.create_multipart_upload("e", &opts()).await.unwrap();
        assert_ne!(b, c);
        let listed: Vec<(String, String)> = s
            .list_uploads("d/")
            .await
            .unwrap()
            .into_iter()
            .map(|u| (u.key, u.upload_id))
            .collect();
        assert_eq!(
            listed,
            vec![
                ("d/a".to_string(), b.clone()),
                ("d/a".to_string(), c.clone()),
                ("d/b".to_string(), a.clone())
            ]
        );
        part(&s, "d/b", &a, 1, &body(3, 0)).await;
        assert_eq!(
            code(s.abort_multipart_upload("d/a", &a).await),
            ("NoSuchUpload".into(), 404)
        );
        s.abort_multipart_upload("d/b", &a).await.unwrap();
        let b3 = body(3, 0);
        let r = s.upload_part("d/b", &a, 2, b3.clone(), md5_of(&b3)).await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
        assert_eq!(
            code(s.list_parts("d/b", &a).await),
            ("NoSuchUpload".into(), 404)
        );
        assert_eq!(
            code(s.abort_multipart_upload("d/b", &a).await),
            ("NoSuchUpload".into(), 404)
        );
        assert_eq!(s.uploads().len(), 3);
    }

    #[tokio::test]
    async fn listing_with_delimiter_pages_each_entry_once() {
        let s = MemoryStore::new();
        for k in [
            "a", "b/1", "b/2", "b/3", "c", "d/x/1", "d/y", "e", "f/", "f/g", "z",
        ] {
            s.insert_object(k, Bytes::from_static(b"1"), &opts());
        }
        let all = s
            .list_objects_page("", Some("/"), None, None)
            .await
            .unwrap();
        let keys: Vec<_> = all.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, vec!["a", "c", "e", "z"]);
        assert_eq!(all.common_prefixes, vec!["b/", "d/", "f/"]);
        assert!(all.next_token.is_none());

        let mut objects = Vec::new();
        let mut prefixes = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let p = s
                .list_objects_page("", Some("/"), token.as_deref(), Some(2))
                .await
                .unwrap();
            pages += 1;
            assert!(p.objects.len() + p.common_prefixes.len() <= 2);
            objects.extend(p.objects.into_iter().map(|o| o.key));
            prefixes.extend(p.common_prefixes);
            match p.next_token {
                Some(t) => token = Some(t),
                None => break,
            }
            assert!(pages < 20, "listing does not end");
        }
        assert_eq!(objects, vec!["a", "c", "e", "z"]);
        assert_eq!(prefixes, vec!["b/", "d/", "f/"]);
        assert_eq!(pages, 4);

        // Prefix and nested delimiter.
        let p = s
            .list_objects_page("d/", Some("/"), None, None)
            .await
            .unwrap();
        assert_eq!(p.common_prefixes, vec!["d/x/"]);
        assert_eq!(p.objects[0].key, "d/y");
        // No delimiter: everything flat, byte order.
        let p = s
            .list_objects_page("b/", None, None, Some(2))
            .await
            .unwrap();
        assert_eq!(p.objects.len(), 2);
        let t = p.next_token.unwrap();
        let p = s
            .list_objects_page("b/", None, Some(&t), Some(2))
            .await
            .unwrap();
        assert_eq!(p.objects[0].key, "b/3");
        assert!(p.next_token.is_none());
        // Exactly max_keys left: no token.
        let p = s
            .list_objects_page("b/", None, None, Some(3))
            .await
            .unwrap();
        assert!(p.next_token.is_none());
        // Garbage token.
        let r = s.list_objects_page("", None, Some("zz\u{e9}"), None).await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
        let r = s.list_objects_page("", None, Some("k0"), None).await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
    }

    #[tokio::test]
    async fn copy_limit_and_metadata_directive() {
        let s = MemoryStore::with_limits(MIN_PART_SIZE, 4);
        let mut o = opts();
        o.content_type = Some("image/png".into());
        o.metadata.insert("a".into(), "1".into());
        let small = s
            .put_object("small", Bytes::from_static(b"1234"), None, &o)
            .await
            .unwrap();
        s.put_object("large", Bytes::from_static(b"12345"), None, &o)
            .await
            .unwrap();
        let r = s
            .copy_object(Source::key("large"), "dst", &MetadataDirective::Copy)
            .await;
        assert_eq!(code(r), ("InvalidRequest".into(), 400));
        assert!(s.object("dst").is_none());
        let r = s
            .copy_object(Source::key("missing"), "dst", &MetadataDirective::Copy)
            .await;
        assert_eq!(code(r), ("NoSuchKey".into(), 404));

        let e = s
            .copy_object(Source::key("small"), "copy", &MetadataDirective::Copy)
            .await
            .unwrap();
        assert_eq!(e, small);
        let c = s.object("copy").unwrap();
        assert_eq!(c.content_type, "image/png");
        assert_eq!(c.metadata.get("a").map(String::as_str), Some("1"));

        let mut r = opts();
        r.metadata.insert("b".into(), "2".into());
        let e = s
            .copy_object(
                Source::key("small"),
                "repl",
                &MetadataDirective::Replace(r.clone()),
            )
            .await
            .unwrap();
        assert_eq!(e, small);
        let c = s.object("repl").unwrap();
        assert_eq!(c.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(c.metadata.len(), 1);
        assert_eq!(c.metadata.get("b").map(String::as_str), Some("2"));
        assert_eq!(c.body, Bytes::from_static(b"1234"));

        // Copying onto itself needs REPLACE, as on S3.
        let r2 = s
            .copy_object(Source::key("small"), "small", &MetadataDirective::Copy)
            .await;
        assert_eq!(code(r2), ("InvalidRequest".into(), 400));
        s.copy_object(
            Source::key("small"),
            "small",
            &MetadataDirective::Replace(r),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn upload_part_copy_rules() {
        let s = MemoryStore::with_limits(2, 1);
        s.insert_object("src", Bytes::from_static(b"abcdef"), &opts());
        let id = s.create_multipart_upload("dst", &opts()).await.unwrap();
        let r = s
            .upload_part_copy("dst", &id, 1, Source::key("nope"), 0..1)
            .await;
        assert_eq!(code(r), ("NoSuchKey".into(), 404));
        let r = s
            .upload_part_copy("dst", &id, 1, Source::key("src"), 2..7)
            .await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
        let r = s
            .upload_part_copy("dst", &id, 1, Source::key("src"), 3..3)
            .await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
        let r = s
            .upload_part_copy("dst", "bogus", 1, Source::key("src"), 0..1)
            .await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
        let r = s
            .upload_part_copy("dst", &id, 0, Source::key("src"), 0..1)
            .await;
        assert_eq!(code(r), ("InvalidArgument".into(), 400));
        // Part copies are not limited by the CopyObject limit.
        let e1 = s
            .upload_part_copy("dst", &id, 1, Source::key("src"), 0..4)
            .await
            .unwrap();
        assert_eq!(e1, format!("\"{}\"", hex(&md5_of(b"abcd"))));
        let e2 = s
            .upload_part_copy("dst", &id, 2, Source::key("src"), 5..6)
            .await
            .unwrap();
        s.complete_multipart_upload("dst", &id, &[(1, e1), (2, e2)])
            .await
            .unwrap();
        assert_eq!(s.object("dst").unwrap().body, Bytes::from_static(b"abcdf"));
    }

    #[tokio::test]
    async fn fail_nth_fails_exactly_that_call_without_effect() {
        let s = MemoryStore::new();
        s.fail_nth(Op::PutObject, 2, "InternalError");
        s.put_object("one", Bytes::from_static(b"1"), None, &opts())
            .await
            .unwrap();
        let e = s
            .put_object("two", Bytes::from_static(b"2"), None, &opts())
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.status()), (Some("InternalError"), Some(500)));
        assert_eq!(e.retry(), crate::s3::Retry::Yes);
        assert!(s.object("two").is_none(), "the failed call had no effect");
        s.put_object("three", Bytes::from_static(b"3"), None, &opts())
            .await
            .unwrap();
        assert_eq!(s.keys(), vec!["one".to_string(), "three".to_string()]);
        assert_eq!(s.calls(Op::PutObject), 3);
        assert_eq!(s.calls(Op::UploadPart), 0);

        // Non-retryable code gets 400; SlowDown 503.
        s.fail_nth(Op::DeleteObject, 1, "AccessDenied");
        s.fail_nth(Op::DeleteObject, 2, "SlowDown");
        let e = s.delete_object("one").await.unwrap_err();
        assert_eq!((e.status(), e.retry()), (Some(403), crate::s3::Retry::No));
        let e = s.delete_object("one").await.unwrap_err();
        assert_eq!((e.status(), e.retry()), (Some(503), crate::s3::Retry::Yes));
        assert!(s.object("one").is_some());

        // HEAD sees only the status.
        s.fail_nth(Op::HeadObject, 1, "SlowDown");
        let e = s.head_object("one").await.unwrap_err();
        assert_eq!(e.code(), Some("ServiceUnavailable"));

        // fail_all until cleared.
        s.fail_all(Op::GetObject, "ServiceUnavailable");
        for _ in 0..3 {
            assert_eq!(
                code(s.get_object(Source::key("one"), None).await),
                ("ServiceUnavailable".into(), 503)
            );
        }
        s.clear_faults();
        assert!(s.get_object(Source::key("one"), None).await.is_ok());
        assert_eq!(s.calls(Op::GetObject), 4);
    }

    #[tokio::test]
    async fn lost_response_applies_the_effect() {
        let s = MemoryStore::with_limits(1, MAX_SINGLE_SIZE);
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        let e1 = part(&s, "k", &id, 1, &body(3, 0)).await;
        s.lose_response_nth(Op::CompleteMultipartUpload, 1, "InternalError");
        let parts = vec![(1, e1)];
        let r = s.complete_multipart_upload("k", &id, &parts).await;
        assert_eq!(code(r), ("InternalError".into(), 500));
        assert!(s.object("k").is_some());
        let r = s.complete_multipart_upload("k", &id, &parts).await;
        assert_eq!(code(r), ("NoSuchUpload".into(), 404));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delay_shows_parts_in_flight() {
        let s = Arc::new(MemoryStore::new());
        let id = s.create_multipart_upload("k", &opts()).await.unwrap();
        s.delay(Op::UploadPart, Duration::from_millis(400));
        let mut tasks = Vec::new();
        for n in 1..=4u32 {
            let (s, id) = (s.clone(), id.clone());
            tasks.push(tokio::spawn(async move {
                let b = body(1000, n as u8);
                s.upload_part("k", &id, n, b.clone(), md5_of(&b)).await
            }));
        }
        // Wait (bounded) until all four are inside their delay.
        let start = std::time::Instant::now();
        while s.in_flight(Op::UploadPart) < 4 && start.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.in_flight(Op::UploadPart), 4);
        assert_eq!(s.bytes_in_flight(), 4000);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(s.peak_in_flight(Op::UploadPart), 4);
        assert_eq!(s.in_flight(Op::UploadPart), 0);
        assert_eq!(s.peak_bytes_in_flight(), 4000);
        assert_eq!(s.bytes_in_flight(), 0);
        assert_eq!(s.list_parts("k", &id).await.unwrap().len(), 4);

        // A cancelled call leaves the in-flight counts.
        let b = body(10, 9);
        let r = tokio::time::timeout(
            Duration::from_millis(10),
            s.upload_part("k", &id, 5, b.clone(), md5_of(&b)),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(s.in_flight(Op::UploadPart), 0);
        assert_eq!(s.bytes_in_flight(), 0);
        assert_eq!(s.list_parts("k", &id).await.unwrap().len(), 4);
        s.delay(Op::UploadPart, Duration::ZERO);
        part(&s, "k", &id, 5, &b).await;
    }

    #[test]
    fn tokens_round_trip() {
        for r in [Resume::Key("a/é\u{0}".into()), Resume::Prefix("p/".into())] {
            let t = encode_token(&r);
            match (r, decode_token(&t)) {
                (Resume::Key(a), Some(Resume::Key(b)))
                | (Resume::Prefix(a), Some(Resume::Prefix(b))) => {
                    assert_eq!(a, b)
                }
                _ => panic!("token {t} did not round-trip"),
            }
        }
        assert!(matches!(decode_token("k"), Some(Resume::Key(k)) if k.is_empty()));
        for t in ["", "kf", "x00", "k0g", "\u{e9}00", "kff"] {
            assert!(decode_token(t).is_none(), "{t:?}");
        }
    }
}
