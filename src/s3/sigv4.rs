//! AWS Signature Version 4 request signing (header form), as pure functions.
//!
//! Nothing here reads the clock, the environment or the network: the signing
//! time comes in through [`SigningParams::time`] (or the request's own
//! `X-Amz-Date` header), so every step is reproducible and is checked against
//! AWS's published vectors in the tests at the bottom of this file.
//!
//! The steps follow AWS's description of SigV4: build the canonical request
//! ([`canonical_request`]), hash it into the string to sign
//! ([`string_to_sign`]), derive the per-day key ([`signing_key`]) and HMAC the
//! string with it ([`signature`]). [`sign`] runs them all and returns the
//! headers to add to the request.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// The algorithm name that opens the string to sign and the `Authorization` value.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// An AWS access key pair, with the session token that temporary (STS)
/// credentials carry.
///
/// `Debug` prints the access key id, which identifies the key in logs, but
/// never the secret or the token, so a credential can be logged by accident
/// without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The public half, sent in every `Authorization` header.
    pub access_key_id: String,
    /// The secret half; only ever used as HMAC key material.
    pub secret_access_key: String,
    /// Token of temporary credentials, sent as `x-amz-security-token`.
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"****")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "****"),
            )
            .finish()
    }
}

/// Payload hash value telling S3 that the body is not covered by the signature.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Hex SHA-256 of the empty string: the payload hash of every body-less request.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Lowercase hex SHA-256 of `data`: the form SigV4 uses for payload hashes
/// (`x-amz-content-sha256`) and for the hashed canonical request.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key).expect("HMAC-SHA256 accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// RFC 3986 percent-encoding as SigV4 wants it: `A-Z a-z 0-9 - _ . ~` pass
/// unchanged, every other byte of the UTF-8 becomes `%XX` (uppercase hex);
/// `/` is left alone when `encode_slash` is false.
///
/// This is the one encoder for object keys in paths (`encode_slash = false`),
/// query names and values (`true`), and the second encoding of
/// [`PathMode::Normalized`]. It differs from form encoding: space is `%20`,
/// never `+`, and `+` itself is `%2B`.
pub fn uri_encode(input: &str, encode_slash: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
        if unreserved || (b == b'/' && !encode_slash) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// How the request path becomes the canonical URI.
///
/// S3 and the other AWS services disagree here, so the caller must say which
/// rules the receiving service applies; signing with the wrong one gives
/// `SignatureDoesNotMatch` for any key with a reserved character or a `.`
/// segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathMode {
    /// S3: the path is used exactly as sent on the wire (it is already encoded
    /// once); no dot-segment removal, no second encoding. Object keys such as
    /// `a/../b` or `x//y` are distinct keys in S3 and must be signed as such.
    S3,
    /// Generic AWS services (what the published test suite assumes): normalize
    /// the path (remove `.`/`..` segments, collapse `//`), then URI-encode each
    /// segment again (double encoding).
    Normalized,
}

/// The parts of an HTTP request that SigV4 covers.
///
/// Borrowed so that the caller's own request representation need not be
/// copied; everything the signer adds comes back from [`sign`].
#[derive(Clone, Copy)]
pub struct SigningRequest<'a> {
    /// HTTP method, as sent (`GET`, `PUT`, ...).
    pub method: &'a str,
    /// The path exactly as it is (or will be) on the wire, percent-encoded,
    /// starting with '/'.
    pub path: &'a str,
    /// Query parameters as decoded (name, value) pairs; the signer encodes and
    /// sorts them. A parameter without value has value "".
    pub query: &'a [(String, String)],
    /// Headers as they will be sent (Host included). Names in any case;
    /// duplicate names are joined with ',' in order; values are trimmed and
    /// inner runs of spaces collapsed, per SigV4. An `Authorization` header
    /// here is ignored.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body, or [`UNSIGNED_PAYLOAD`].
    pub payload_hash: &'a str,
}

/// Who signs, for which region and service, at what time, and under which
/// path rules.
#[derive(Debug, Clone)]
pub struct SigningParams<'a> {
    /// Key pair (and token) the signature is made with.
    pub credentials: &'a Credentials,
    /// Region of the credential scope, e.g. `us-east-1`.
    pub region: &'a str,
    /// Service of the credential scope, e.g. `s3`.
    pub service: &'a str,
    /// Signing time, injected so that signing stays a pure function. Ignored
    /// when the request already carries an `X-Amz-Date` header.
    pub time: SystemTime,
    /// How the path becomes the canonical URI.
    pub path_mode: PathMode,
}

/// Formats `time` as SigV4's basic ISO 8601 UTC timestamp, e.g.
/// `20130524T000000Z`, without any date crate.
///
/// Sub-second parts are truncated toward the past. Times before 1970 are
/// handled too, so no `SystemTime` makes this panic.
pub fn amz_date(time: SystemTime) -> String {
    let secs: i64 = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => {
            let d = e.duration();
            let whole = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            (-whole).saturating_sub(i64::from(d.subsec_nanos() > 0))
        }
    };
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], year starting in March
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The canonical query string: every name and value URI-encoded (slashes
/// too), pairs sorted by encoded name then value, joined as `a=1&b=&c=3`.
///
/// Also a correct wire query string, so callers can send exactly what was
/// signed.
pub fn canonical_query_string(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// The canonical URI of `path` under `mode` (see [`PathMode`]). An empty path
/// means `/`.
pub fn canonical_uri(path: &str, mode: PathMode) -> String {
    match mode {
        PathMode::S3 if path.is_empty() => "/".to_string(),
        PathMode::S3 => path.to_string(),
        PathMode::Normalized => uri_encode(&normalize_path(path), false),
    }
}

/// RFC 3986 dot-segment removal plus collapsing of empty segments; the result
/// always starts with `/` and keeps a trailing `/` (also the one implied by a
/// final `.` or `..`).
fn normalize_path(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/') {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    out.push_str(&kept.join("/"));
    if trailing_slash && !kept.is_empty() {
        out.push('/');
    }
    out
}

fn is_sigv4_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// SigV4 "trimall": strip leading and trailing whitespace and squeeze inner
/// runs to one space. Line breaks of folded (multi-line) values count as
/// whitespace, as the AWS suite expects.
fn trim_all(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for word in value.split(is_sigv4_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Canonical headers as sorted (lowercase name, joined value) pairs.
fn canonical_headers<'h>(
    headers: impl Iterator<Item = (&'h str, &'h str)>,
) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = headers
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), trim_all(value)))
        .filter(|(name, _)| name != "authorization")
        .collect();
    // Stable, so values of a repeated header keep their order.
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut merged: Vec<(String, String)> = Vec::with_capacity(all.len());
    for (name, value) in all {
        match merged.last_mut() {
            Some((last, joined)) if *last == name => {
                joined.push(',');
                joined.push_str(&value);
            }
            _ => merged.push((name, value)),
        }
    }
    merged
}

fn build_canonical_request<'h>(
    req: &SigningRequest<'_>,
    headers: impl Iterator<Item = (&'h str, &'h str)>,
    mode: PathMode,
) -> (String, String) {
    let headers = canonical_headers(headers);
    let signed = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut creq = String::new();
    for part in [
        req.method,
        &canonical_uri(req.path, mode),
        &canonical_query_string(req.query),
    ] {
        creq.push_str(part);
        creq.push('\n');
    }
    for (name, value) in &headers {
        creq.push_str(name);
        creq.push(':');
        creq.push_str(value);
        creq.push('\n');
    }
    creq.push('\n');
    creq.push_str(&signed);
    creq.push('\n');
    creq.push_str(req.payload_hash);
    (creq, signed)
}

/// Builds the canonical request of `req`. Returns (canonical request, signed
/// headers list `a;b;c`).
///
/// Exposed so that a `SignatureDoesNotMatch` can be debugged: S3 returns its
/// own canonical request in the error body, to compare with this one.
pub fn canonical_request(req: &SigningRequest<'_>, mode: PathMode) -> (String, String) {
    let headers = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str()));
    build_canonical_request(req, headers, mode)
}

/// The credential scope `YYYYMMDD/region/service/aws4_request`, which binds a
/// signature (and its derived key) to one day, region and service.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

/// The string to sign: algorithm, timestamp, scope and the hex SHA-256 of the
/// canonical request, one per line.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// Derives the signing key from the secret (`date` is `YYYYMMDD`). It only
/// changes daily, so a caller may cache it per (date, region, service).
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k_date = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, b"aws4_request")
}

/// The hex signature of `string_to_sign` under a key from [`signing_key`].
pub fn signature(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex(&hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The whole header-signing step. Returns the headers the caller must ADD to
/// the request, in order: `x-amz-date` (only when the request has no
/// X-Amz-Date header already; when it has one, that value is used as the
/// signing time), `x-amz-security-token` (only when credentials have a
/// non-empty token and the request does not already carry one), and
/// `authorization`. The added x-amz-date / x-amz-security-token are included
/// in the signed headers, as AWS requires.
pub fn sign(req: &SigningRequest<'_>, params: &SigningParams<'_>) -> Vec<(String, String)> {
    let mut added: Vec<(String, String)> = Vec::with_capacity(3);
    let timestamp = match header_value(req.headers, "x-amz-date") {
        Some(existing) => existing.to_string(),
        None => {
            let now = amz_date(params.time);
            added.push(("x-amz-date".to_string(), now.clone()));
            now
        }
    };
    if let Some(token) = params.credentials.session_token.as_deref() {
        if !token.is_empty() && header_value(req.headers, "x-amz-security-token").is_none() {
            added.push(("x-amz-security-token".to_string(), token.to_string()));
        }
    }
    // A malformed caller-supplied X-Amz-Date yields a signature the server
    // rejects, never a panic.
    let date = timestamp.get(..8).unwrap_or(&timestamp);
    let scope = credential_scope(date, params.region, params.service);
    let headers = req
        .headers
        .iter()
        .chain(added.iter())
        .map(|(n, v)| (n.as_str(), v.as_str()));
    let (creq, signed_headers) = build_canonical_request(req, headers, params.path_mode);
    let key = signing_key(
        &params.credentials.secret_access_key,
        date,
        params.region,
        params.service,
    );
    let sig = signature(&key, &string_to_sign(&timestamp, &scope, &creq));
    added.push((
        "authorization".to_string(),
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={sig}",
            params.credentials.access_key_id
        ),
    ));
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn authorization_of(added: &[(String, String)]) -> &str {
        added
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_str())
            .expect("sign() always returns an authorization header")
    }

    fn signature_of(added: &[(String, String)]) -> &str {
        let auth = authorization_of(added);
        auth.rsplit("Signature=").next().unwrap_or(auth)
    }

    // ---- AWS's generic SigV4 suite (aws-c-auth, via the aws-sigv4 crate) ----

    fn suite_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/sigv4/aws-c-auth"
        ))
    }

    /// Cases of the suite the walker does not run, with the reason.
    const SKIPPED: &[(&str, &str)] = &[
        // The request line is `/example%20space/` and the expected canonical
        // URI is `/example%20space/`, i.e. no second encoding, although
        // aws-c-auth signs this suite with use_double_uri_encode=true (which
        // gives `/example%2520space/`, as `double-url-encode` shows for %3A).
        // The case contradicts the double-encoding rule PathMode::Normalized
        // implements; smithy-rs's aws-sigv4 ignores it for the same reason.
        (
            "get-space-normalized",
            "expects single encoding under double-encode rules",
        ),
        // smithy-rs's own older-format cases: no context.json. They are checked
        // by `smithy_rs_double_encoding_cases` below instead.
        (
            "double-url-encode",
            "no context.json; see smithy_rs_double_encoding_cases",
        ),
        (
            "double-encode-path",
            "no context.json; see smithy_rs_double_encoding_cases",
        ),
    ];

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
            .replace('\r', "")
    }

    /// A request.txt, parsed the way aws-c-auth's own test harness does.
    struct SuiteRequest {
        method: String,
        path: String,
        query: Vec<(String, String)>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    fn percent_decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match (bytes[i], hex) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn parse_request(text: &str) -> SuiteRequest {
        let (head, body) = match text.split_once("\n\n") {
            Some((head, body)) => (head, body),
            None => (text.trim_end_matches('\n'), ""),
        };
        let mut lines = head.split('\n');
        let request_line = lines.next().expect("request line");
        let (method, rest) = request_line.split_once(' ').expect("method");
        let target = rest
            .strip_suffix(" HTTP/1.1")
            .expect("HTTP/1.1 request line");
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(|c: char| c.is_ascii_whitespace()) {
                // Folded continuation: aws-c-auth extends the previous value
                // to the end of this line, line break included.
                let last = headers.last_mut().expect("continuation after a header");
                last.1.push('\n');
                last.1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').expect("header line");
                headers.push((name.to_string(), value.to_string()));
            }
        }
        SuiteRequest {
            method: method.to_string(),
            path: path.to_string(),
            query,
            headers,
            body: body.as_bytes().to_vec(),
        }
    }

    /// The request-target bytes a client must escape to send them (space,
    /// controls, non-ASCII, and the few ASCII characters RFC 3986 forbids).
    fn wire_path(path: &str) -> String {
        let mut out = String::new();
        for &b in path.as_bytes() {
            if b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// `2015-08-30T12:36:00Z` as a SystemTime (the suite's only format).
    fn parse_timestamp(s: &str) -> SystemTime {
        let num = |r: std::ops::Range<usize>| -> i64 { s[r].parse().expect("timestamp digits") };
        let (y, m, d) = (num(0..4), num(5..7), num(8..10));
        // Days from civil (Howard Hinnant), independent of civil_from_days.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
        at(u64::try_from(secs).expect("suite timestamps are after 1970"))
    }

    fn run_suite_case(dir: &Path) {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let ctx: serde_json::Value =
            serde_json::from_str(&read(&dir.join("context.json"))).expect("context.json");
        let text = |key: &str| ctx[key].as_str().unwrap_or_else(|| panic!("{name}: {key}"));
        let flag = |key: &str| ctx[key].as_bool().unwrap_or(false);
        let token = ctx["credentials"]["token"].as_str().map(str::to_string);
        // omit_session_token: the token travels with the request but is not
        // signed. The caller then adds it itself, so sign it without a token.
        let credentials = Credentials {
            access_key_id: ctx["credentials"]["access_key_id"].as_str().unwrap().into(),
            secret_access_key: ctx["credentials"]["secret_access_key"]
                .as_str()
                .unwrap()
                .into(),
            session_token: if flag("omit_session_token") {
                None
            } else {
                token.clone()
            },
        };

        let parsed = parse_request(&read(&dir.join("request.txt")));
        let mut headers = parsed.headers.clone();
        // sign_body: aws-c-auth adds x-amz-content-sha256 with the body hash;
        // otherwise it signs the empty-body hash.
        let payload_hash = if flag("sign_body") {
            let hash = sha256_hex(&parsed.body);
            headers.push(("X-Amz-Content-Sha256".into(), hash.clone()));
            hash
        } else {
            EMPTY_SHA256.to_string()
        };
        // normalize=true: the generic rules, fed the request line's path as
        // aws-c-auth's harness does. normalize=false: S3 rules, which take the
        // path as it goes on the wire (the same bytes, save a raw space).
        let (mode, path) = if flag("normalize") {
            (PathMode::Normalized, parsed.path.clone())
        } else {
            (PathMode::S3, wire_path(&parsed.path))
        };
        let params = SigningParams {
            credentials: &credentials,
            region: text("region"),
            service: text("service"),
            time: parse_timestamp(text("timestamp")),
            path_mode: mode,
        };
        let had_date = header_value(&headers, "x-amz-date").is_some();
        let req = SigningRequest {
            method: &parsed.method,
            path: &path,
            query: &parsed.query,
            headers: &headers,
            payload_hash: &payload_hash,
        };
        let added = sign(&req, &params);

        // Recompute the intermediate steps over the request as signed.
        let mut all_headers = headers.clone();
        all_headers.extend(added.iter().filter(|(n, _)| n != "authorization").cloned());
        let (creq, _) = canonical_request(
            &SigningRequest {
                headers: &all_headers,
                ..req
            },
            mode,
        );
        let expected = |file: &str| read(&dir.join(file)).trim_end().to_string();
        assert_eq!(
            creq,
            expected("header-canonical-request.txt"),
            "{name}: canonical request"
        );
        let date = amz_date(params.time);
        let scope = credential_scope(&date[..8], params.region, params.service);
        assert_eq!(
            string_to_sign(&date, &scope, &creq),
            expected("header-string-to-sign.txt"),
            "{name}: string to sign"
        );
        assert_eq!(
            signature_of(&added),
            expected("header-signature.txt"),
            "{name}: signature"
        );
        let signed_request = expected("header-signed-request.txt");
        let auth_line = signed_request
            .lines()
            .find_map(|l| l.strip_prefix("Authorization:"))
            .expect("signed request has an Authorization line");
        assert_eq!(
            authorization_of(&added),
            auth_line.trim(),
            "{name}: Authorization"
        );

        let added_names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(added_names.contains(&"x-amz-date"), !had_date, "{name}");
        let token_expected = token.is_some() && !flag("omit_session_token");
        assert_eq!(
            added_names.contains(&"x-amz-security-token"),
            token_expected,
            "{name}"
        );
    }

    #[test]
    fn aws_c_auth_header_signing_suite() {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(suite_dir())
            .expect("testdata/sigv4/aws-c-auth")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        let names: Vec<String> = dirs
            .iter()
            .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for (skip, _) in SKIPPED {
            assert!(
                names.iter().any(|n| n == skip),
                "skip list names a missing case {skip}"
            );
        }
        let mut ran = 0;
        for (dir, name) in dirs.iter().zip(&names) {
            if SKIPPED.iter().any(|(s, _)| s == name) {
                continue;
            }
            run_suite_case(dir);
            ran += 1;
        }
        assert_eq!(ran + SKIPPED.len(), names.len());
        assert!(ran >= 35, "only {ran} suite cases ran");
    }

    /// smithy-rs's two older-format cases (no context.json). `double-url-encode`
    /// is fully consistent: Lambda, us-east-2, time from its X-Amz-Date header,
    /// the suite's AKIDEXAMPLE key pair (named in its Authorization line).
    /// In `double-encode-path` the canonical request file carries a different
    /// x-amz-date than the request, so only its canonical URI and the signature
    /// of its signed request (smithy-rs's test credentials) are checked.
    #[test]
    fn smithy_rs_double_encoding_cases() {
        let dir = suite_dir().join("double-url-encode");
        let parsed = parse_request(&read(&dir.join("request.txt")));
        let req = SigningRequest {
            method: &parsed.method,
            path: &parsed.path,
            query: &parsed.query,
            headers: &parsed.headers,
            payload_hash: EMPTY_SHA256,
        };
        let (creq, _) = canonical_request(&req, PathMode::Normalized);
        let expected_creq = read(&dir.join("header-canonical-request.txt"));
        assert_eq!(creq, expected_creq.trim_end());
        let sts = string_to_sign(
            "20210511T154045Z",
            &credential_scope("20210511", "us-east-2", "lambda"),
            &creq,
        );
        assert_eq!(sts, read(&dir.join("header-string-to-sign.txt")).trim_end());
        // The suite's usual example key pair reproduces its signed request.
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let params = SigningParams {
            credentials: &credentials,
            region: "us-east-2",
            service: "lambda",
            time: at(0), // ignored: the request carries X-Amz-Date
            path_mode: PathMode::Normalized,
        };
        let added = sign(&req, &params);
        assert_eq!(added.len(), 1, "only authorization is added: {added:?}");
        let signed_request = read(&dir.join("header-signed-request.txt"));
        let auth_line = signed_request
            .lines()
            .find_map(|l| l.strip_prefix("Authorization:"))
            .unwrap();
        assert_eq!(authorization_of(&added), auth_line.trim());

        let dir = suite_dir().join("double-encode-path");
        let parsed = parse_request(&read(&dir.join("request.txt")));
        let expected_creq = read(&dir.join("header-canonical-request.txt"));
        assert_eq!(
            canonical_uri(&parsed.path, PathMode::Normalized),
            expected_creq.lines().nth(1).unwrap()
        );
        let credentials = Credentials {
            access_key_id: "ANOTREAL".into(),
            secret_access_key: "notrealrnrELgWzOk3IfjzDKtFBhDby".into(),
            session_token: None,
        };
        let added = sign(
            &SigningRequest {
                method: &parsed.method,
                path: &parsed.path,
                query: &parsed.query,
                headers: &parsed.headers,
                payload_hash: EMPTY_SHA256,
            },
            &SigningParams {
                credentials: &credentials,
                region: "us-east-1",
                service: "service",
                time: at(0), // ignored: the request carries X-amz-date
                path_mode: PathMode::Normalized,
            },
        );
        assert_eq!(added.len(), 1, "only authorization is added: {added:?}");
        let signed_request = read(&dir.join("header-signed-request.txt"));
        let auth_line = signed_request
            .lines()
            .find_map(|l| l.strip_prefix("Authorization:"))
            .unwrap();
        assert_eq!(authorization_of(&added), auth_line.trim());
    }

    // ---- AWS's worked S3 examples ----
    // Amazon S3 API Reference, "Signature Calculations for the Authorization
    // Header: Transferring Payload in a Single Chunk (AWS Signature Version 4)"
    // (sig-v4-header-based-auth.html), section "Examples: Signature
    // Calculations". Bucket examplebucket (virtual-hosted), 20130524T000000Z.

    const S3_HOST: &str = "examplebucket.s3.amazonaws.com";
    const S3_EXAMPLE_TIME: u64 = 1_369_353_600; // 2013-05-24T00:00:00Z

    fn s3_example_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// Signs a doc example and checks the canonical request (as printed in
    /// the docs, which include the x-amz-date the signer adds), the hash in
    /// the docs' string to sign, and the signature.
    fn check_s3_example(
        req: SigningRequest<'_>,
        expected_creq: &str,
        expected_creq_hash: &str,
        expected_signature: &str,
    ) {
        let credentials = s3_example_credentials();
        let params = SigningParams {
            credentials: &credentials,
            region: "us-east-1",
            service: "s3",
            time: at(S3_EXAMPLE_TIME),
            path_mode: PathMode::S3,
        };
        let added = sign(&req, &params);
        assert_eq!(added[0], ("x-amz-date".into(), "20130524T000000Z".into()));
        assert_eq!(added.len(), 2);

        let mut headers = req.headers.to_vec();
        headers.push(added[0].clone());
        let (creq, signed) = canonical_request(
            &SigningRequest {
                headers: &headers,
                ..req
            },
            PathMode::S3,
        );
        assert_eq!(creq, expected_creq);
        let sts = string_to_sign(
            "20130524T000000Z",
            "20130524/us-east-1/s3/aws4_request",
            &creq,
        );
        assert_eq!(sts.lines().last(), Some(expected_creq_hash));
        assert_eq!(signature_of(&added), expected_signature);
        assert_eq!(
            authorization_of(&added),
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/\
                 aws4_request, SignedHeaders={signed}, Signature={expected_signature}"
            )
        );
    }

    #[test]
    fn s3_doc_example_get_object() {
        let headers = pairs(&[
            ("Host", S3_HOST),
            ("Range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
        ]);
        check_s3_example(
            SigningRequest {
                method: "GET",
                path: "/test.txt",
                query: &[],
                headers: &headers,
                payload_hash: EMPTY_SHA256,
            },
            "GET\n/test.txt\n\n\
             host:examplebucket.s3.amazonaws.com\n\
             range:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\n\
             host;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        );
    }

    #[test]
    fn s3_doc_example_put_object() {
        let body_hash = sha256_hex(b"Welcome to Amazon S3.");
        assert_eq!(
            body_hash,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let headers = pairs(&[
            ("Host", S3_HOST),
            ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", &body_hash),
        ]);
        // The key `test$file.text` goes on the wire encoded once.
        let path = format!("/{}", uri_encode("test$file.text", false));
        assert_eq!(path, "/test%24file.text");
        check_s3_example(
            SigningRequest {
                method: "PUT",
                path: &path,
                query: &[],
                headers: &headers,
                payload_hash: &body_hash,
            },
            "PUT\n/test%24file.text\n\n\
             date:Fri, 24 May 2013 00:00:00 GMT\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n\
             x-amz-date:20130524T000000Z\n\
             x-amz-storage-class:REDUCED_REDUNDANCY\n\n\
             date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n\
             44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        );
    }

    #[test]
    fn s3_doc_example_get_bucket_lifecycle() {
        let headers = pairs(&[("Host", S3_HOST), ("x-amz-content-sha256", EMPTY_SHA256)]);
        check_s3_example(
            SigningRequest {
                method: "GET",
                path: "/",
                query: &pairs(&[("lifecycle", "")]),
                headers: &headers,
                payload_hash: EMPTY_SHA256,
            },
            "GET\n/\nlifecycle=\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\n\
             host;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        );
    }

    #[test]
    fn s3_doc_example_list_objects() {
        let headers = pairs(&[("Host", S3_HOST), ("x-amz-content-sha256", EMPTY_SHA256)]);
        check_s3_example(
            SigningRequest {
                method: "GET",
                path: "/",
                // Given out of order: the signer sorts.
                query: &pairs(&[("prefix", "J"), ("max-keys", "2")]),
                headers: &headers,
                payload_hash: EMPTY_SHA256,
            },
            "GET\n/\nmax-keys=2&prefix=J\n\
             host:examplebucket.s3.amazonaws.com\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\n\
             host;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        );
    }

    // ---- S3-specific rules ----

    fn s3_canonical_uri(path: &str) -> String {
        let headers = pairs(&[("host", "b.example")]);
        let req = SigningRequest {
            method: "GET",
            path,
            query: &[],
            headers: &headers,
            payload_hash: UNSIGNED_PAYLOAD,
        };
        let (creq, _) = canonical_request(&req, PathMode::S3);
        creq.lines().nth(1).unwrap().to_string()
    }

    #[test]
    fn s3_path_is_signed_as_sent() {
        assert_eq!(s3_canonical_uri("/a/../b"), "/a/../b");
        assert_eq!(s3_canonical_uri("//x"), "//x");
        assert_eq!(s3_canonical_uri("/a/./b/"), "/a/./b/");
        assert_eq!(s3_canonical_uri("/my%20key%2B1"), "/my%20key%2B1");
        assert_eq!(s3_canonical_uri(""), "/");
        // The generic rules would rewrite all of these.
        assert_eq!(canonical_uri("/a/../b", PathMode::Normalized), "/b");
        assert_eq!(canonical_uri("//x", PathMode::Normalized), "/x");
        assert_eq!(
            canonical_uri("/my%20key%2B1", PathMode::Normalized),
            "/my%2520key%252B1"
        );
        assert_eq!(canonical_uri("/a/b/..", PathMode::Normalized), "/a/");
        assert_eq!(canonical_uri("", PathMode::Normalized), "/");
    }

    #[test]
    fn uri_encode_rules() {
        assert_eq!(uri_encode("é", true), "%C3%A9");
        assert_eq!(uri_encode("a b", true), "a%20b");
        assert_eq!(uri_encode("a+b", true), "a%2Bb");
        assert_eq!(uri_encode("~", true), "~");
        assert_eq!(uri_encode("A-Za-z0-9_.~", true), "A-Za-z0-9_.~");
        assert_eq!(uri_encode("a/b", false), "a/b");
        assert_eq!(uri_encode("a/b", true), "a%2Fb");
        assert_eq!(uri_encode("100%", false), "100%25");
        assert_eq!(uri_encode("=&?#*", true), "%3D%26%3F%23%2A");
        assert_eq!(uri_encode("", true), "");
    }

    #[test]
    fn query_string_is_encoded_and_sorted() {
        let q = pairs(&[
            ("b", "2"),
            ("a", "x y"),
            ("a", "+"),
            ("c", ""),
            ("k/é", "v/"),
        ]);
        assert_eq!(
            canonical_query_string(&q),
            "a=%2B&a=x%20y&b=2&c=&k%2F%C3%A9=v%2F"
        );
        assert_eq!(canonical_query_string(&[]), "");
    }

    #[test]
    fn headers_are_lowercased_sorted_joined_and_trimmed() {
        let headers = pairs(&[
            ("X-B", "  two   words "),
            ("host", "h"),
            ("x-b", "second"),
            ("X-A", "\tfolded\n   value"),
            ("Authorization", "ignored"),
        ]);
        let req = SigningRequest {
            method: "GET",
            path: "/",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let (creq, signed) = canonical_request(&req, PathMode::S3);
        assert_eq!(signed, "host;x-a;x-b");
        assert!(creq.contains("\nhost:h\nx-a:folded value\nx-b:two words,second\n\n"));
    }

    #[test]
    fn session_token_is_added_and_signed() {
        let credentials = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "SECRET".into(),
            session_token: Some("TOKEN".into()),
        };
        let headers = pairs(&[("Host", "b.example")]);
        let req = SigningRequest {
            method: "GET",
            path: "/k",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let params = SigningParams {
            credentials: &credentials,
            region: "eu-west-1",
            service: "s3",
            time: at(S3_EXAMPLE_TIME),
            path_mode: PathMode::S3,
        };
        let added = sign(&req, &params);
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-security-token", "authorization"]
        );
        assert_eq!(added[1].1, "TOKEN");
        assert!(authorization_of(&added)
            .contains("SignedHeaders=host;x-amz-date;x-amz-security-token,"));

        // Already carried by the request: not added again, still signed.
        let with_token = pairs(&[
            ("Host", "b.example"),
            ("X-Amz-Security-Token", "TOKEN"),
            ("X-Amz-Date", "20130524T000000Z"),
        ]);
        let again = sign(
            &SigningRequest {
                headers: &with_token,
                ..req
            },
            &params,
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0], added[2], "same request, same signature");

        // An empty token counts as none.
        let empty = Credentials {
            session_token: Some(String::new()),
            ..credentials.clone()
        };
        let added = sign(
            &req,
            &SigningParams {
                credentials: &empty,
                ..params
            },
        );
        assert_eq!(added.len(), 2);
    }

    #[test]
    fn existing_x_amz_date_sets_the_signing_time() {
        let credentials = s3_example_credentials();
        let headers = pairs(&[("host", "h"), ("x-AMZ-date", " 20200101T010203Z ")]);
        let req = SigningRequest {
            method: "GET",
            path: "/",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        };
        let added = sign(
            &req,
            &SigningParams {
                credentials: &credentials,
                region: "r",
                service: "s3",
                time: at(S3_EXAMPLE_TIME),
                path_mode: PathMode::S3,
            },
        );
        assert_eq!(added.len(), 1);
        assert!(authorization_of(&added).contains("/20200101/r/s3/aws4_request,"));
    }

    #[test]
    fn debug_hides_secret_and_token() {
        let credentials = Credentials {
            access_key_id: "AKIDVISIBLE".into(),
            secret_access_key: "very-secret-value".into(),
            session_token: Some("session-token-value".into()),
        };
        let shown = format!("{credentials:?}");
        assert!(shown.contains("AKIDVISIBLE"), "{shown}");
        assert!(!shown.contains("very-secret-value"), "{shown}");
        assert!(!shown.contains("session-token-value"), "{shown}");
        assert!(shown.contains("****"), "{shown}");
        let params = SigningParams {
            credentials: &credentials,
            region: "r",
            service: "s",
            time: at(0),
            path_mode: PathMode::S3,
        };
        assert!(!format!("{params:?}").contains("very-secret-value"));
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let credentials = s3_example_credentials();
        let weird = [
            "",
            "é",
            "20é",
            "x",
            "2013052",
            "\u{1F600}\u{1F600}\u{1F600}",
        ];
        for date in weird {
            for path in ["", "no-slash", "/../..", "/é/%zz/%", "//./..//"] {
                let headers = pairs(&[("X-Amz-Date", date), ("", ""), (" ", "\n")]);
                let query = pairs(&[("", ""), ("é", "%")]);
                for mode in [PathMode::S3, PathMode::Normalized] {
                    let added = sign(
                        &SigningRequest {
                            method: "",
                            path,
                            query: &query,
                            headers: &headers,
                            payload_hash: "",
                        },
                        &SigningParams {
                            credentials: &credentials,
                            region: "",
                            service: "",
                            time: UNIX_EPOCH - Duration::from_secs(1 << 40),
                            path_mode: mode,
                        },
                    );
                    assert_eq!(added.len(), 1);
                }
            }
        }
    }

    #[test]
    fn signing_key_matches_aws_example() {
        // AWS General Reference, "Examples of how to derive a signing key for
        // Signature Version 4": secret wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
        // 20120215, us-east-1, iam.
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20120215",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }

    #[test]
    fn amz_date_formats() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        assert_eq!(amz_date(at(S3_EXAMPLE_TIME)), "20130524T000000Z");
        assert_eq!(
            amz_date(at(S3_EXAMPLE_TIME) + Duration::from_millis(999)),
            "20130524T000000Z"
        );
        assert_eq!(amz_date(at(1_440_938_160)), "20150830T123600Z");
        assert_eq!(amz_date(at(951_827_696)), "20000229T123456Z"); // 2000: leap (÷400)
        assert_eq!(amz_date(at(1_709_251_199)), "20240229T235959Z");
        assert_eq!(amz_date(at(1_483_228_799)), "20161231T235959Z"); // day 366
        assert_eq!(amz_date(at(4_107_542_400)), "21000301T000000Z"); // 2100: not leap
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_secs(1)),
            "19691231T235959Z"
        );
        assert_eq!(
            amz_date(UNIX_EPOCH - Duration::from_millis(500)),
            "19691231T235959Z"
        );
        // Cross-check against the suite's own timestamp parser.
        assert_eq!(
            amz_date(parse_timestamp("2015-08-30T12:36:00Z")),
            "20150830T123600Z"
        );
    }

    #[test]
    fn empty_body_hash_constant() {
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
