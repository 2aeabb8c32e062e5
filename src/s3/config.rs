//! Where and as whom the client talks: endpoint, region, addressing style,
//! credentials (environment or the shared credentials file) and TLS roots.

use super::error::S3Error;
use super::sigv4::Credentials;
use reqwest::Url;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How request bodies are covered by the signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadSigning {
    /// `x-amz-content-sha256` is the body's SHA-256 (one more hash pass per byte).
    Signed,
    /// `UNSIGNED-PAYLOAD` for bodies that carry a signed `Content-MD5`, which
    /// still lets the server reject a corrupted body; other bodies stay signed.
    UnsignedWithMd5,
}

/// Everything needed to build a [`super::Client`].
#[derive(Debug, Clone)]
pub struct S3Config {
    pub endpoint: Url,
    /// More endpoints of the same service (every node of a cluster): after
    /// a failed connection or a 5xx, requests go to the next one.
    pub extra_endpoints: Vec<Url>,
    pub region: String,
    /// Bucket in the path (`http://host/bucket/key`) instead of in the host name.
    pub path_style: bool,
    pub credentials: Credentials,
    /// Where the credentials came from when it was the shared credentials
    /// file (path, profile): it is re-read when it changes.
    pub credentials_file: Option<(PathBuf, String)>,
    /// ListObjects V1 (marker) instead of V2, for servers without V2.
    pub list_v1: bool,
    /// Extra PEM roots (`AWS_CA_BUNDLE`), added to the system's.
    pub ca_bundle: Option<PathBuf>,
    pub payload_signing: PayloadSigning,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Fixed part of each request's deadline.
    pub request_timeout: Duration,
    /// Slowest transfer (bytes per second) a body may make before its
    /// request is cut off as stalled and retried.
    pub min_transfer_rate: u64,
}

/// Default fixed part of a request's deadline.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default slowest transfer rate: 256 KiB/s.
pub const MIN_TRANSFER_RATE: u64 = 256 * 1024;

/// Command-line overrides; `None` falls back to the environment.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    /// Bucket in the host name even where path style would be automatic.
    pub virtual_hosted: bool,
    pub list_v1: bool,
    pub payload_signing: Option<PayloadSigning>,
    pub request_timeout: Option<Duration>,
    pub min_transfer_rate: Option<u64>,
    pub max_attempts: Option<u32>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl S3Config {
    /// Refuses an SSE-C key when any endpoint is plain http to another
    /// host: the key rides in a request header, readable by anyone on the
    /// path (S3 itself refuses SSE-C over http).
    pub fn check_encryption(&self, sse: Option<&super::Sse>) -> Result<(), S3Error> {
        let all: Vec<&Url> = std::iter::once(&self.endpoint)
            .chain(&self.extra_endpoints)
            .collect();
        key_only_over_https(&all, sse)
    }

    /// Builds the configuration from overrides, then the standard AWS
    /// environment variables, then `~/.aws/credentials`.
    pub fn from_env(o: &ConfigOverrides) -> Result<Self, S3Error> {
        let region = o
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = o
            .endpoint_url
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let mut endpoints = endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(parse_endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(S3Error::Config("empty endpoint list".into()));
        }
        let endpoint = endpoints.remove(0);
        let path_style = if o.force_path_style {
            true
        } else if o.virtual_hosted {
            false
        } else {
            host_needs_path_style(&endpoint)
        };
        let (credentials, credentials_file) = load_credentials()?;
        Ok(S3Config {
            endpoint,
            extra_endpoints: endpoints,
            region,
            path_style,
            credentials,
            credentials_file,
            list_v1: o.list_v1,
            ca_bundle: env("AWS_CA_BUNDLE").map(PathBuf::from),
            payload_signing: o.payload_signing.unwrap_or(PayloadSigning::UnsignedWithMd5),
            max_attempts: o.max_attempts.unwrap_or(5).max(1),
            request_timeout: o.request_timeout.unwrap_or(REQUEST_TIMEOUT),
            min_transfer_rate: o.min_transfer_rate.unwrap_or(MIN_TRANSFER_RATE).max(1),
        })
    }
}

/// Parses and checks an endpoint URL: http or https, a host, no path.
pub fn parse_endpoint(s: &str) -> Result<Url, S3Error> {
    let url = Url::parse(s).map_err(|e| S3Error::Config(format!("endpoint {s:?}: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(S3Error::Config(format!(
            "endpoint {s:?}: scheme must be http or https"
        )));
    }
    if url.host_str().is_none() {
        return Err(S3Error::Config(format!("endpoint {s:?} has no host")));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(S3Error::Config(format!(
            "endpoint {s:?} must not have a path or query"
        )));
    }
    Ok(url)
}

/// Path-style addressing is the only one that works on a bare IP address or localhost.
pub fn host_needs_path_style(endpoint: &Url) -> bool {
    match endpoint.host_str() {
        Some(h) => {
            let h = h.trim_start_matches('[').trim_end_matches(']');
            h.parse::<IpAddr>().is_ok() || h == "localhost" || h.ends_with(".localhost")
        }
        None => true,
    }
}

/// Credentials from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
/// else from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
/// `~/.aws/credentials`, profile `AWS_PROFILE` or `default`); with the file
/// and profile when they came from the file (it is re-read when it changes).
pub fn load_credentials() -> Result<(Credentials, Option<(PathBuf, String)>), S3Error> {
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok((
            Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: env("AWS_SESSION_TOKEN"),
            },
            None,
        ));
    }
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home_dir().map(|h| h.join(".aws").join("credentials")));
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
    let Some(path) = path else {
        return Err(S3Error::Config(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
        ));
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        S3Error::Config(format!(
            "no credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY unset and {} unreadable ({e})",
            path.display()
        ))
    })?;
    let c = parse_credentials_file(&text, &profile).ok_or_else(|| {
        S3Error::Config(format!(
            "no credentials for profile [{profile}] in {}",
            path.display()
        ))
    })?;
    Ok((c, Some((path, profile))))
}

/// `$HOME`, else the user's home from the password database (mount(8)
/// runs its helpers without HOME).
fn home_dir() -> Option<PathBuf> {
    if let Some(h) = env("HOME") {
        return Some(PathBuf::from(h));
    }
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: getpwuid_r writes into pw and buf, both ours and large enough
    // (ERANGE otherwise, which we treat as "no home").
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::getuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        );
        if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr(pw.pw_dir);
        use std::os::unix::ffi::OsStrExt;
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// Reads one profile of an INI-style AWS credentials file.
pub fn parse_credentials_file(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let name = name.strip_prefix("profile ").unwrap_or(name).trim();
            in_profile = name == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// An SSE-C key may only travel over https, or over plain http to this
/// machine's own loopback (a test server: the key never leaves the host).
fn key_only_over_https(endpoints: &[&Url], sse: Option<&super::Sse>) -> Result<(), S3Error> {
    let loopback = |u: &Url| {
        let h = u.host_str().unwrap_or_default();
        let h = h.trim_start_matches('[').trim_end_matches(']');
        h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
    };
    let plain = endpoints
        .iter()
        .find(|u| u.scheme() != "https" && !loopback(u));
    match (sse, plain) {
        (Some(super::Sse::Customer { .. }), Some(u)) => Err(S3Error::Config(format!(
            "--sse c sends the encryption key with every request: refusing the plain-http endpoint {u} (use https)"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_key_never_goes_over_plain_http() {
        let a = Url::parse("https://a.example").unwrap();
        let b = Url::parse("http://b.example").unwrap();
        let key = super::super::Sse::Customer { key: [7; 32] };
        let e = key_only_over_https(&[&a, &b], Some(&key))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://b.example") && !e.contains("BwcH"), "{e}");
        let aes = super::super::Sse::Aes256;
        assert!(key_only_over_https(&[&a, &b], Some(&aes)).is_ok());
        assert!(key_only_over_https(&[&a, &b], None).is_ok());
        assert!(key_only_over_https(&[&a], Some(&key)).is_ok());
        for local in [
            "http://127.0.0.1:3900",
            "http://[::1]:80",
            "http://localhost:9000",
        ] {
            let l = Url::parse(local).unwrap();
            assert!(
                key_only_over_https(&[&a, &l], Some(&key)).is_ok(),
                "{local}"
            );
        }
    }

    #[test]
    fn credentials_file_profiles() {
        let text = "[default]\naws_access_key_id = AKID\naws_secret_access_key=SECRET\n\n[profile other]\naws_access_key_id=B\naws_secret_access_key = S2\naws_session_token = T\n# comment\n";
        let d = parse_credentials_file(text, "default").unwrap();
        assert_eq!(d.access_key_id, "AKID");
        assert_eq!(d.secret_access_key, "SECRET");
        assert!(d.session_token.is_none());
        let o = parse_credentials_file(text, "other").unwrap();
        assert_eq!(o.session_token.as_deref(), Some("T"));
        assert!(parse_credentials_file(text, "missing").is_none());
    }

    #[test]
    fn addressing_style() {
        for (u, path) in [
            ("http://127.0.0.1:3900", true),
            ("http://[::1]:3900", true),
            ("http://localhost:9000", true),
            ("https://s3.us-east-1.amazonaws.com", false),
            ("https://obs.cn-north-4.myhuaweicloud.com", false),
        ] {
            assert_eq!(
                host_needs_path_style(&parse_endpoint(u).unwrap()),
                path,
                "{u}"
            );
        }
        assert!(parse_endpoint("ftp://x").is_err());
        assert!(parse_endpoint("http://x/base").is_err());
        assert!(parse_endpoint("not a url").is_err());
    }
}
