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
//!
//! This file holds the store, the machinery every call goes through and the
//! [`ObjectStore`] impl; the operations are in `ops.rs`, listing in
//! `list.rs`, fault injection in `faults.rs` and the unit tests in `tests.rs`.

#![warn(missing_docs)]

mod faults;
mod list;
mod ops;
#[cfg(test)]
mod tests;

pub use faults::CONNECTION_RESET;
use faults::{Faults, Strike};

use super::error::S3Error;
use super::etag::{hex, md5_of};
use super::http::Op;
use super::rules::{self, MAX_OBJECT_SIZE, MAX_SINGLE_SIZE, MIN_PART_SIZE};
use super::store::{ObjectStore, StoreFuture};
use super::types::*;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

/// The Content-Type S3 gives an object stored without one.
pub const DEFAULT_CONTENT_TYPE: &str = "binary/octet-stream";

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

fn quoted(etag: &str) -> String {
    format!("\"{etag}\"")
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
        let looping = lock(&self.faults).looping_listings;
        self.call(Op::ListObjects, 0, move |s| {
            if looping {
                let mut page = s.do_list(prefix, delimiter, None, max_keys)?;
                page.next_token = Some(format!("loop-{}", fastrand::u64(..)));
                return Ok(page);
            }
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
