//! A fault-injecting HTTP/1.1 proxy between the S3 client and Garage.
//!
//! One request per client connection: every answer says `Connection: close`,
//! and every forwarded request goes to upstream on a new connection. The
//! request head is forwarded byte-exact (SigV4 signs the `Host` header and
//! more) except for its `Connection` header. Faults are drawn per UploadPart
//! and per GET from a seeded RNG, or applied to every request (`fail_all`).
//!
//! The proxy runs on its own thread and tokio runtime, so sync and async
//! tests can use it alike; dropping it stops it.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request or response head we accept.
const MAX_HEAD: usize = 64 * 1024;
/// How long a stalled request is held at most (the client normally gives up first).
const STALL_HOLD: Duration = Duration::from_secs(600);

/// Every request fails the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAll {
    /// Answer with this status and an S3 `<Error>` body (503 → `SlowDown`,
    /// 500 → `InternalError`, ...). The request is read whole, never forwarded.
    Status(u16),
    /// Accept the connection, then reset it (RST) without reading or answering.
    Reset,
}

/// What goes wrong. The default is nothing.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Chance that an UploadPart is answered `500 InternalError` (body read, not forwarded).
    pub upload_part_500: f64,
    /// Chance that an UploadPart's connection is reset after its body was read (not forwarded).
    pub upload_part_reset: f64,
    /// Chance that an UploadPart stalls: about half its body is read, then
    /// nothing more is read or answered until the client closes.
    pub upload_part_stall: f64,
    /// The next this many UploadParts hang: the body is read whole, and
    /// nothing is answered until the client closes (a server that took a
    /// part and never answered). Counts down as they come.
    pub upload_part_hang_next: u64,
    /// The next this many UploadParts (after any hang above) are answered
    /// `500 InternalError`. Counts down as they come.
    pub upload_part_500_next: u64,
    /// Chance that a GET's answer is cut off: its head and about half its
    /// body are passed on, then the connection is reset.
    pub get_cut: f64,
    /// Seed of the RNG the per-request faults are drawn from (reseeded by `set`).
    pub seed: u64,
    /// Fail every request (a total outage), whatever the probabilities say.
    pub fail_all: Option<FailAll>,
}

/// What the proxy has seen and done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted.
    pub connections: u64,
    /// Request heads read whole (a `FailAll::Reset` connection is reset before that).
    pub requests: u64,
    /// UploadPart requests among them (PUT with `partNumber` and `uploadId`,
    /// no copy source), faulted or not.
    pub upload_parts: u64,
    /// UploadParts answered 500 by the proxy.
    pub injected_500: u64,
    /// UploadParts whose connection the proxy reset.
    pub injected_reset: u64,
    /// UploadParts the proxy stalled.
    pub injected_stall: u64,
    /// UploadParts the proxy read whole and never answered.
    pub injected_hang: u64,
    /// GET requests seen.
    pub gets: u64,
    /// GET answers the proxy cut off mid-body.
    pub injected_cut: u64,
    /// Stalled or hung connections the client has closed. A close with body bytes
    /// still unsent (more than the socket buffers took) cannot reach the
    /// proxy, whose receive window is full: such a stall is only released
    /// when the proxy is dropped or after 10 minutes, and is not counted.
    pub stall_closed: u64,
    /// Connections or requests refused by `fail_all` (a status answer or a reset).
    pub refused: u64,
    /// Requests sent to upstream.
    pub forwarded: u64,
    /// Upstream answer heads passed back to the client.
    pub answered: u64,
    /// Requests the proxy could not parse or does not support (400, 431, 501).
    pub bad_requests: u64,
    /// Upstream connection failures and answers that were cut off or unreadable.
    pub upstream_errors: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    upload_parts: AtomicU64,
    injected_500: AtomicU64,
    injected_reset: AtomicU64,
    injected_stall: AtomicU64,
    injected_hang: AtomicU64,
    gets: AtomicU64,
    injected_cut: AtomicU64,
    stall_closed: AtomicU64,
    refused: AtomicU64,
    forwarded: AtomicU64,
    answered: AtomicU64,
    bad_requests: AtomicU64,
    upstream_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct FaultState {
    faults: Faults,
    rng: fastrand::Rng,
}

struct Shared {
    upstream: SocketAddr,
    state: Mutex<FaultState>,
    counters: Counters,
    /// Request heads seen (the first 10,000), for tests that check what was sent.
    heads: Mutex<Vec<String>>,
}

/// Request heads kept by [`FaultProxy::heads`].
const MAX_HEADS: usize = 10_000;

/// A running proxy; dropping it stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://HOST:PORT`, as in `AWS_ENDPOINT_URL`)
    /// on a free 127.0.0.1 port, without faults.
    pub fn start(upstream: &str) -> FaultProxy {
        let hostport = upstream
            .strip_prefix("http://")
            .unwrap_or_else(|| panic!("proxy upstream must be http://HOST:PORT, got {upstream:?}"))
            .trim_end_matches('/');
        let upstream_addr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .unwrap_or_else(|e| panic!("proxy upstream {upstream:?}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("proxy upstream {upstream:?} resolves to nothing"));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            state: Mutex::new(FaultState {
                faults: Faults::default(),
                rng: fastrand::Rng::with_seed(0),
            }),
            counters: Counters::default(),
            heads: Mutex::new(Vec::new()),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_io()
            .enable_time()
            .build()
            .expect("proxy runtime");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("proxy listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept_loop(listener, sh) => {}
                    }
                });
                // Drops every connection task, stalled ones included.
                rt.shutdown_background();
            })
            .expect("spawn proxy thread");
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The endpoint to give the client: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the faults (and reseeds the RNG with `f.seed`); applies to
    /// requests whose head arrives from now on.
    pub fn set(&self, f: Faults) {
        let mut st = self.shared.state.lock().unwrap();
        st.rng = fastrand::Rng::with_seed(f.seed);
        st.faults = f;
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.state.lock().unwrap().faults.clone()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            connections: g(&c.connections),
            requests: g(&c.requests),
            upload_parts: g(&c.upload_parts),
            injected_500: g(&c.injected_500),
            injected_reset: g(&c.injected_reset),
            injected_stall: g(&c.injected_stall),
            injected_hang: g(&c.injected_hang),
            gets: g(&c.gets),
            injected_cut: g(&c.injected_cut),
            stall_closed: g(&c.stall_closed),
            refused: g(&c.refused),
            forwarded: g(&c.forwarded),
            answered: g(&c.answered),
            bad_requests: g(&c.bad_requests),
            upstream_errors: g(&c.upstream_errors),
        }
    }

    /// The request heads seen so far (request line and headers, as sent).
    pub fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                bump(&shared.counters.connections);
                let sh = shared.clone();
                tokio::spawn(async move {
                    // Errors only end this connection.
                    let _ = serve(sock, &sh).await;
                });
            }
            // EMFILE and the like: back off instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// What happens to one request.
enum Action {
    Forward,
    Status(u16),
    Reset,
    Stall,
    /// Read the whole body, never answer.
    Hang,
    /// Forward, but cut the answer off mid-body.
    Cut,
}

/// One client connection, one request.
async fn serve(mut client: TcpStream, sh: &Shared) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    if sh.state.lock().unwrap().faults.fail_all == Some(FailAll::Reset) {
        bump(&sh.counters.refused);
        return reset(client);
    }
    let (head, mut rest) = match read_head(&mut client).await {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()), // closed before a whole head
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            bump(&sh.counters.bad_requests);
            return respond(&mut client, 431, "RequestHeaderSectionTooLarge", false).await;
        }
        Err(e) => return Err(e),
    };
    let Some(req) = parse_request(&head) else {
        bump(&sh.counters.bad_requests);
        return respond(&mut client, 400, "BadRequest", false).await;
    };
    bump(&sh.counters.requests);
    {
        let mut heads = sh.heads.lock().unwrap();
        if heads.len() < MAX_HEADS {
            heads.push(String::from_utf8_lossy(&head).into_owned());
        }
    }
    let is_head = req.method == b"HEAD";
    let body_len = match req.body {
        BodyLen::Known(n) => n,
        BodyLen::Chunked => {
            bump(&sh.counters.bad_requests);
            return respond(&mut client, 501, "NotImplemented", is_head).await;
        }
        BodyLen::Invalid => {
            bump(&sh.counters.bad_requests);
            return respond(&mut client, 400, "BadRequest", is_head).await;
        }
    };
    if req.expect_continue && body_len > 0 {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }

    // (what to do, whether `fail_all` decided it)
    if req.upload_part {
        bump(&sh.counters.upload_parts);
    }
    let is_get = req.method == b"GET";
    if is_get {
        bump(&sh.counters.gets);
    }
    let (action, refused) = {
        let mut st = sh.state.lock().unwrap();
        match st.faults.fail_all {
            Some(FailAll::Status(s)) => (Action::Status(s), true),
            Some(FailAll::Reset) => (Action::Reset, true),
            None if req.upload_part && st.faults.upload_part_hang_next > 0 => {
                st.faults.upload_part_hang_next -= 1;
                bump(&sh.counters.injected_hang);
                (Action::Hang, false)
            }
            None if req.upload_part && st.faults.upload_part_500_next > 0 => {
                st.faults.upload_part_500_next -= 1;
                bump(&sh.counters.injected_500);
                (Action::Status(500), false)
            }
            None if req.upload_part => {
                let f = &st.faults;
                let (p500, preset, pstall) =
                    (f.upload_part_500, f.upload_part_reset, f.upload_part_stall);
                let x = st.rng.f64();
                let action = if x < p500 {
                    bump(&sh.counters.injected_500);
                    Action::Status(500)
                } else if x < p500 + preset {
                    bump(&sh.counters.injected_reset);
                    Action::Reset
                } else if x < p500 + preset + pstall {
                    bump(&sh.counters.injected_stall);
                    Action::Stall
                } else {
                    Action::Forward
                };
                (action, false)
            }
            None if is_get && st.faults.get_cut > 0.0 => {
                let cut = st.rng.f64() < st.faults.get_cut;
                (if cut { Action::Cut } else { Action::Forward }, false)
            }
            None => (Action::Forward, false),
        }
    };
    if refused {
        bump(&sh.counters.refused);
    }
    match action {
        Action::Forward => forward(client, sh, &req, rest, body_len, false).await,
        Action::Cut => forward(client, sh, &req, rest, body_len, true).await,
        Action::Status(status) => {
            discard(&mut client, &mut rest, body_len).await?;
            respond(&mut client, status, code_for(status), is_head).await
        }
        Action::Reset => {
            discard(&mut client, &mut rest, body_len).await?;
            reset(client)
        }
        Action::Stall => {
            discard(&mut client, &mut rest, body_len / 2).await?;
            if hold(&client).await {
                bump(&sh.counters.stall_closed);
            }
            Ok(())
        }
        Action::Hang => {
            discard(&mut client, &mut rest, body_len).await?;
            if hold(&client).await {
                bump(&sh.counters.stall_closed);
            }
            Ok(())
        }
    }
}

/// Sends the request upstream on a new connection and streams the answer
/// back (`cut`: only about half the answer's body, then a reset).
async fn forward(
    mut client: TcpStream,
    sh: &Shared,
    req: &Request,
    mut rest: Vec<u8>,
    body_len: u64,
    cut: bool,
) -> io::Result<()> {
    let mut up = match TcpStream::connect(sh.upstream).await {
        Ok(s) => s,
        Err(_) => {
            bump(&sh.counters.upstream_errors);
            discard(&mut client, &mut rest, body_len).await?;
            return respond(&mut client, 502, "BadGateway", req.method == b"HEAD").await;
        }
    };
    let _ = up.set_nodelay(true);
    bump(&sh.counters.forwarded);
    // A failed write may mean upstream answered early and closed: its
    // answer is still passed on. A client gone mid-body ends it all.
    let from_buf = (rest.len() as u64).min(body_len) as usize;
    let mut up_ok = up.write_all(&req.upstream_head).await.is_ok()
        && up.write_all(&rest[..from_buf]).await.is_ok();
    let mut left = body_len - from_buf as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        let n = client.read(&mut buf[..n]).await?;
        if n == 0 {
            return Ok(()); // upstream sees a short body and a closed connection
        }
        left -= n as u64;
        if up_ok {
            up_ok = up.write_all(&buf[..n]).await.is_ok();
        }
    }

    // The answer: skip interim 1xx heads (we sent our own 100 Continue).
    let mut pending = Vec::new();
    let (head, rest) = loop {
        let Ok(Some((head, rest))) = read_head_from(&mut up, std::mem::take(&mut pending)).await
        else {
            bump(&sh.counters.upstream_errors);
            return Ok(());
        };
        match status_of(&head) {
            // Whatever followed an interim head starts the next head.
            Some(s) if (100..200).contains(&s) && s != 101 => pending = rest,
            Some(_) => break (head, rest),
            None => {
                bump(&sh.counters.upstream_errors);
                return Ok(());
            }
        }
    };
    client.write_all(&close_head(&head)).await?;
    bump(&sh.counters.answered);
    if cut {
        let half = (content_length(&head).unwrap_or(0) / 2) as usize;
        let first = rest.len().min(half);
        client.write_all(&rest[..first]).await?;
        let mut more = (&mut up).take((half - first) as u64);
        tokio::io::copy(&mut more, &mut client).await?;
        client.flush().await?;
        bump(&sh.counters.injected_cut);
        return reset(client);
    }
    client.write_all(&rest).await?;
    tokio::io::copy(&mut up, &mut client).await?;
    client.shutdown().await
}

/// The Content-Length of a response head.
fn content_length(head: &[u8]) -> Option<u64> {
    head_lines(head)?
        .into_iter()
        .skip(1)
        .filter_map(header)
        .find(|(name, _)| name.eq_ignore_ascii_case(b"content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse().ok())
}

/// Reads from `s` until a blank line ends the head. Returns the head (blank
/// line included) and whatever was read after it; `None` on EOF before a
/// whole head; an `InvalidData` error for a head over `MAX_HEAD`.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    read_head_from(s, Vec::new()).await
}

/// [`read_head`], starting from bytes already read.
async fn read_head_from<S: AsyncRead + Unpin>(
    s: &mut S,
    mut buf: Vec<u8>,
) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut searched = 0;
    loop {
        if let Some(i) = find(&buf[searched..], b"\r\n\r\n") {
            let end = searched + i + 4;
            let rest = buf.split_off(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        searched = buf.len().saturating_sub(3);
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// How the request's body is delimited.
enum BodyLen {
    Known(u64),
    Chunked,
    Invalid,
}

/// What the proxy needs to know of a request.
struct Request {
    method: Vec<u8>,
    body: BodyLen,
    upload_part: bool,
    expect_continue: bool,
    /// The head to send upstream: byte-exact but for `Connection: close`.
    upstream_head: Vec<u8>,
}

/// The lines of a head, without the final blank line; `None` if it is not CRLF-delimited.
fn head_lines(head: &[u8]) -> Option<Vec<&[u8]>> {
    let body = head.strip_suffix(b"\r\n\r\n")?;
    Some(split_crlf(body))
}

fn split_crlf(mut s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(i) = find(s, b"\r\n") {
        out.push(&s[..i]);
        s = &s[i + 2..];
    }
    out.push(s);
    out
}

/// A header line's name and trimmed value; `None` for a continuation or junk line.
fn header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first().is_some_and(|c| *c == b' ' || *c == b'\t') {
        return None;
    }
    let colon = line.iter().position(|&c| c == b':')?;
    Some((&line[..colon], line[colon + 1..].trim_ascii()))
}

fn parse_request(head: &[u8]) -> Option<Request> {
    let lines = head_lines(head)?;
    let (request_line, headers) = lines.split_first()?;
    let mut parts = request_line.split(|&c| c == b' ');
    let method = parts.next().filter(|m| !m.is_empty())?.to_vec();
    let target = parts.next().filter(|t| !t.is_empty())?;
    let version = parts.next()?;
    if parts.next().is_some() || !version.starts_with(b"HTTP/1.") {
        return None;
    }

    let mut content_length: Option<&[u8]> = None;
    let mut lengths_differ = false;
    let mut chunked = false;
    let mut copy_source = false;
    let mut expect_continue = false;
    let mut upstream_head = Vec::with_capacity(head.len() + 32);
    upstream_head.extend_from_slice(request_line);
    upstream_head.extend_from_slice(b"\r\n");
    let mut dropping = false; // inside a (folded) Connection header
    for line in headers {
        let Some((name, value)) = header(line) else {
            if !dropping {
                upstream_head.extend_from_slice(line);
                upstream_head.extend_from_slice(b"\r\n");
            }
            continue;
        };
        dropping = name.eq_ignore_ascii_case(b"connection");
        if dropping {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some_and(|v| v != value) {
                lengths_differ = true;
            }
            content_length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"x-amz-copy-source") {
            copy_source = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
        upstream_head.extend_from_slice(line);
        upstream_head.extend_from_slice(b"\r\n");
    }
    upstream_head.extend_from_slice(b"Connection: close\r\n\r\n");

    let body = if chunked {
        BodyLen::Chunked
    } else if lengths_differ {
        BodyLen::Invalid
    } else {
        match content_length {
            None => BodyLen::Known(0),
            Some(v) => std::str::from_utf8(v)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|s| s.parse().ok())
                .map_or(BodyLen::Invalid, BodyLen::Known),
        }
    };
    let query = target.splitn(2, |&c| c == b'?').nth(1).unwrap_or_default();
    let has_param = |p: &[u8]| {
        query
            .split(|&c| c == b'&')
            .any(|kv| kv.split(|&c| c == b'=').next() == Some(p))
    };
    let upload_part =
        method == b"PUT" && has_param(b"partNumber") && has_param(b"uploadId") && !copy_source;
    Some(Request {
        method,
        body,
        upload_part,
        expect_continue,
        upstream_head,
    })
}

/// The status code of a response head.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = head_lines(head)?.into_iter().next()?;
    let mut parts = line.split(|&c| c == b' ');
    if !parts.next()?.starts_with(b"HTTP/1.") {
        return None;
    }
    std::str::from_utf8(parts.next()?).ok()?.parse().ok()
}

/// A response head with `Connection: close` instead of any Connection or Keep-Alive header.
fn close_head(head: &[u8]) -> Vec<u8> {
    let lines = head_lines(head).unwrap_or_default();
    let mut out = Vec::with_capacity(head.len() + 32);
    let mut dropping = false;
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            match header(line) {
                Some((name, _)) => {
                    dropping = name.eq_ignore_ascii_case(b"connection")
                        || name.eq_ignore_ascii_case(b"keep-alive");
                }
                None if dropping => continue,
                None => {}
            }
            if dropping {
                continue;
            }
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// Reads and throws away `len` body bytes, the buffered `rest` first.
async fn discard(client: &mut TcpStream, rest: &mut Vec<u8>, len: u64) -> io::Result<()> {
    let from_buf = (rest.len() as u64).min(len);
    rest.drain(..from_buf as usize);
    let want = len - from_buf;
    let got = tokio::io::copy(&mut client.take(want), &mut tokio::io::sink()).await?;
    if got < want {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The S3 error code the proxy answers a status with.
fn code_for(status: u16) -> &'static str {
    match status {
        500 => "InternalError",
        503 => "SlowDown",
        429 => "SlowDown",
        502 => "BadGateway",
        501 => "NotImplemented",
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        _ => "InjectedError",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

/// Answers with an S3 `<Error>` document and closes.
async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    code: &str,
    is_head: bool,
) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected</Message><RequestId>proxy</RequestId></Error>"
    );
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: proxy\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut msg = head.into_bytes();
    if !is_head {
        msg.extend_from_slice(body.as_bytes());
    }
    w.write_all(&msg).await?;
    w.shutdown().await
}

/// Closes with RST: zero linger, so the close sends a reset (and never blocks).
fn reset(sock: TcpStream) -> io::Result<()> {
    sock.set_zero_linger()?;
    drop(sock);
    Ok(())
}

/// Holds a stalled connection without reading or answering until the peer
/// closes it (true) or `STALL_HOLD` passes (false). Waits on readiness
/// events, clearing each without reading, so arriving data does not make it spin.
async fn hold(sock: &TcpStream) -> bool {
    let wait = async {
        loop {
            match sock.ready(tokio::io::Interest::READABLE).await {
                Ok(r) if r.is_read_closed() => return,
                Ok(_) => {
                    // Clear the readiness without consuming data.
                    let _ = sock.try_io(tokio::io::Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                Err(_) => return,
            }
        }
    };
    tokio::time::timeout(STALL_HOLD, wait).await.is_ok()
}
