//! The `bucketfs` command line. The only place that uses anyhow and exits.

use anyhow::Context;
use bucketfs::admin::{self, AbortFilter};
use bucketfs::s3::{Client, ConfigOverrides, PayloadSigning, S3Config};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// Mount an S3-compatible bucket as a directory, and manage its uploads.
///
/// Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
/// AWS_SESSION_TOKEN, else from ~/.aws/credentials (AWS_PROFILE,
/// AWS_SHARED_CREDENTIALS_FILE). They are never accepted on the command line.
#[derive(Parser, Debug)]
#[command(name = "bucketfs", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    s3: S3Args,
    #[command(subcommand)]
    command: Command,
}

/// Where the bucket lives.
#[derive(Args, Debug, Clone)]
struct S3Args {
    /// S3 endpoint, e.g. http://127.0.0.1:3900; repeat it (or separate with
    /// commas) for several nodes of one service, which requests fail over
    /// between [default: AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else AWS S3
    /// of the region]
    #[arg(long, global = true, value_name = "URL")]
    endpoint_url: Vec<String>,
    /// Signing region [default: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1]
    #[arg(long, global = true)]
    region: Option<String>,
    /// Address buckets as http://host/bucket (automatic for IP addresses and localhost)
    #[arg(long, global = true, conflicts_with = "virtual_hosted")]
    force_path_style: bool,
    /// Address buckets as http://bucket.host/ even where path style would be automatic
    #[arg(long, global = true)]
    virtual_hosted: bool,
    /// ListObjects version: 2, or 1 for servers without ListObjectsV2
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    list_type: u8,
    /// How request bodies are signed: `unsigned` sends UNSIGNED-PAYLOAD for bodies
    /// protected by a signed Content-MD5, `signed` hashes every body with SHA-256 too
    #[arg(long, global = true, value_enum, default_value_t = Signing::Unsigned)]
    payload_signing: Signing,
    /// Fixed part of each request's deadline; bodies add their size at
    /// --min-transfer-rate, so a stalled upload is cut off and retried
    #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Attempts per request, the first included (transient errors are retried)
    #[arg(long, global = true, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Slowest transfer a request body may make, per second
    #[arg(long, global = true, default_value = "256KiB", value_parser = parse_size_arg)]
    min_transfer_rate: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Signing {
    Signed,
    Unsigned,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount BUCKET[/PREFIX] at DIR. Files copied in stream to the bucket as
    /// they are written; close() returns once the object is durable.
    Mount(Box<MountArgs>),
    /// In-progress multipart uploads: list them, abort them.
    #[command(subcommand)]
    Uploads(UploadsCmd),
    /// Show the files a mount is writing (bytes written and sent, parts,
    /// rate) and its totals (stored, failed, retries, slow parts sent again, aborted uploads).
    Status(StatusArgs),
}

/// Options of `bucketfs status`.
#[derive(Args, Debug)]
struct StatusArgs {
    /// The mount point
    dir: std::path::PathBuf,
    /// Refresh every second until interrupted
    #[arg(short, long)]
    watch: bool,
    /// The state directory the mount uses (same default as `mount --state-dir`)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let state = a
        .state_dir
        .unwrap_or_else(bucketfs::upload::journal::default_state_dir);
    let dir = absolute_mountpoint(&a.dir)?;
    loop {
        let text = bucketfs::status::query(&state, &dir).map_err(anyhow::Error::msg)?;
        if a.watch {
            // Clear the screen, then draw.
            print!("\x1b[H\x1b[2J{text}");
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(1));
        } else {
            print!("{text}");
            return Ok(());
        }
    }
}

/// Options of `bucketfs mount`.
#[derive(Args, Debug)]
struct MountArgs {
    /// BUCKET or BUCKET/PREFIX
    target: String,
    /// The directory to mount on
    dir: std::path::PathBuf,
    /// Stay attached and log to stderr (otherwise detach once mounted)
    #[arg(short, long)]
    foreground: bool,
    /// Mount read-only
    #[arg(long)]
    read_only: bool,
    /// Size of the first parts; later parts grow (see docs/SEMANTICS.md). At least 5MiB
    #[arg(long, default_value = "8MiB", value_parser = parse_size_arg)]
    part_size: u64,
    /// Largest part the schedule grows to (a part is held whole in memory for its MD5)
    #[arg(long, default_value = "128MiB", value_parser = parse_size_arg)]
    max_part_size: u64,
    /// Parts of one file uploading at once (their MD5s are computed up to four at a time)
    #[arg(long, default_value_t = 8)]
    max_parts_in_flight: usize,
    /// Memory for all buffers: 3/4 for parts being written or sent (writers
    /// wait when it is full), 1/4 for read-ahead. A part must fit in it, so
    /// it caps --max-part-size and with it the largest file (defaults:
    /// 1.03 TiB; see docs/SEMANTICS.md)
    #[arg(long, default_value = "256MiB", value_parser = parse_size_arg)]
    memory_limit: u64,
    /// Owner shown for files and directories [default: the mounting user]
    #[arg(long)]
    uid: Option<u32>,
    /// Group shown for files and directories [default: the mounting user's group]
    #[arg(long)]
    gid: Option<u32>,
    /// Permission bits of files, octal
    #[arg(long, default_value = "644", value_parser = parse_mode)]
    file_mode: u16,
    /// Permission bits of directories, octal
    #[arg(long, default_value = "755", value_parser = parse_mode)]
    dir_mode: u16,
    /// How long listings and attributes are trusted, e.g. 1s, 500ms
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    metadata_ttl: Duration,
    /// Take listed files' attributes from the listing (size, Last-Modified
    /// as mtime, default mode and owner) instead of one HEAD each for
    /// x-amz-meta-* metadata: `ls -l` of a big directory costs a few LISTs.
    /// Mode, owner, mtime and symlinks stored by bucketfs, s3fs or rclone
    /// are then not shown for listed files, so do not use it as an `rsync
    /// -a` target (its quick check compares mtimes)
    #[arg(long)]
    attrs_from_listing: bool,
    /// Read files opened read-only through the kernel's page cache. By
    /// default they are read directly (on kernels that can still mmap such
    /// files, 6.6 and later): bucketfs's own read-ahead already buffers
    /// them, and skipping the page cache saves a copy of every byte read.
    /// The page cache serves a program that reads the same bytes again
    /// within one open
    #[arg(long)]
    page_cache: bool,
    /// Largest read-ahead window of one open file
    #[arg(long, default_value = "64MiB", value_parser = parse_size_arg)]
    max_readahead: u64,
    /// FUSE worker threads (requests are answered from async tasks, so few are needed)
    #[arg(long, default_value_t = 2)]
    fuse_threads: usize,
    /// Threads that run the network side: S3 requests, their TLS, and the
    /// replies of requests answered from async tasks [default: one per 4
    /// cores, at least 1]. Hashing of bodies over 256 KiB runs on threads
    /// of its own. More threads hand work between each other, which costs
    /// CPU: with 2 on 2 cores, `ls -l` of 10,000 files took a third more
    /// CPU than with 1
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,
    /// Where the crash journal and the status socket live [default:
    /// $XDG_STATE_HOME/bucketfs, else ~/.local/state/bucketfs; /var/lib/bucketfs for root or
    /// without HOME]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<std::path::PathBuf>,
    /// At SIGTERM/SIGINT, how long closes in progress may take before what
    /// remains is aborted
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Storage class of every object written (x-amz-storage-class), e.g.
    /// STANDARD_IA; vendors' own headers go through --header
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// Extra header on every PutObject, CreateMultipartUpload and CopyObject,
    /// e.g. x-kss-storage-class:STANDARD_IA (repeatable)
    #[arg(long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Canned ACL of every object written (x-amz-acl), e.g. bucket-owner-full-control
    #[arg(long, value_name = "CANNED")]
    acl: Option<String>,
    /// Server-side encryption: aes256 (SSE-S3), kms[:KEY_ID] (SSE-KMS), or c
    /// (SSE-C: the 32-byte key, base64, comes from BUCKETFS_SSE_C_KEY, never argv)
    #[arg(long, value_name = "MODE", value_parser = parse_sse)]
    sse: Option<SseArg>,
    /// Write the daemon's log here (a background mount has no stderr)
    #[arg(long, value_name = "PATH")]
    log_file: Option<std::path::PathBuf>,
    /// Comma-separated mount options as fstab passes them: ro, rw, allow_other,
    /// allow_root, uid=N, gid=N, file_mode=OCTAL, dir_mode=OCTAL, memory_limit=SIZE,
    /// state_dir=PATH; and any long option as name=value (endpoint_url=URL,
    /// storage_class=CLASS, virtual_hosted, ...)
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
}

/// The mount point as an absolute path without symlinks: the key of its
/// state directory, and what `bucketfs status DIR` looks for. Only the
/// parent is resolved, so a dead mount at DIR does not stop it.
fn absolute_mountpoint(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let abs = std::path::absolute(dir).with_context(|| format!("{}", dir.display()))?;
    let name = abs
        .file_name()
        .with_context(|| format!("{}: not a directory name", dir.display()))?
        .to_owned();
    let parent = abs.parent().unwrap_or(std::path::Path::new("/"));
    let parent = std::fs::canonicalize(parent).with_context(|| format!("{}", parent.display()))?;
    Ok(parent.join(name))
}

/// `--sse` as given; the SSE-C key is read from the environment later.
#[derive(Debug, Clone)]
enum SseArg {
    Aes256,
    Kms(Option<String>),
    Customer,
}

fn parse_sse(s: &str) -> Result<SseArg, String> {
    match s.split_once(':') {
        None if s.eq_ignore_ascii_case("aes256") => Ok(SseArg::Aes256),
        None if s.eq_ignore_ascii_case("kms") => Ok(SseArg::Kms(None)),
        Some((k, id)) if k.eq_ignore_ascii_case("kms") && !id.is_empty() => {
            Ok(SseArg::Kms(Some(id.to_string())))
        }
        None if s.eq_ignore_ascii_case("c") => Ok(SseArg::Customer),
        _ => Err(format!("{s:?}: expected aes256, kms, kms:KEY_ID or c")),
    }
}

/// The encryption of `--sse`; SSE-C's key from BUCKETFS_SSE_C_KEY (base64 of 32 bytes).
fn sse_of(a: &SseArg) -> anyhow::Result<bucketfs::s3::Sse> {
    use base64::Engine;
    Ok(match a {
        SseArg::Aes256 => bucketfs::s3::Sse::Aes256,
        SseArg::Kms(id) => bucketfs::s3::Sse::Kms {
            key_id: id.clone(),
            dsse: false,
        },
        SseArg::Customer => {
            let b64 = std::env::var("BUCKETFS_SSE_C_KEY").map_err(|_| {
                anyhow::anyhow!("--sse c needs the key in BUCKETFS_SSE_C_KEY (base64 of 32 bytes)")
            })?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| anyhow::anyhow!("BUCKETFS_SSE_C_KEY is not base64 of 32 bytes"))?;
            bucketfs::s3::Sse::Customer { key }
        }
    })
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected NAME:VALUE"))?;
    let k = k.trim();
    let valid = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !valid {
        return Err(format!("{k:?} is not a header name"));
    }
    let lower = k.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "authorization" | "host" | "content-length" | "content-md5"
    ) || lower.starts_with("x-amz-content-sha256")
        || lower.starts_with("x-amz-date")
        || lower.starts_with("x-amz-security-token")
    {
        return Err(format!("{k}: bucketfs sets this header itself"));
    }
    if v.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(format!("{k}: a header value cannot hold a line break"));
    }
    Ok((lower, v.trim().to_string()))
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    bucketfs::mount::parse_size(s)
}

fn parse_mode(s: &str) -> Result<u16, String> {
    u16::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?}: not an octal mode"))
}

fn mount(args: MountArgs, s3: &S3Args) -> anyhow::Result<()> {
    use bucketfs::mount as m;
    let (bucket, prefix) = admin::parse_target(&args.target).map_err(anyhow::Error::msg)?;
    let prefix = if prefix.is_empty() || prefix.ends_with('/') {
        prefix
    } else {
        format!("{prefix}/")
    };
    if args.part_size < bucketfs::s3::rules::MIN_PART_SIZE {
        anyhow::bail!("--part-size must be at least 5MiB (S3's smallest part)");
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mountpoint = absolute_mountpoint(&args.dir)?;
    let mut o = m::MountOptions {
        bucket,
        prefix,
        mountpoint,
        foreground: args.foreground,
        read_only: args.read_only,
        allow_other: false,
        allow_root: false,
        uid: args.uid.unwrap_or(uid),
        gid: args.gid.unwrap_or(gid),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        part_size: args.part_size,
        max_part_size: args.max_part_size.max(args.part_size),
        max_parts_in_flight: args.max_parts_in_flight.max(1),
        memory_limit: args.memory_limit,
        fuse_threads: args.fuse_threads.max(1),
        io_threads: args.io_threads.unwrap_or_else(m::default_io_threads).max(1),
        metadata_ttl: args.metadata_ttl,
        attrs_from_listing: args.attrs_from_listing,
        page_cache: args.page_cache,
        max_readahead: args.max_readahead,
        state_dir: args
            .state_dir
            .clone()
            .unwrap_or_else(bucketfs::upload::journal::default_state_dir),
        shutdown_grace: args.shutdown_grace,
        object_defaults: bucketfs::s3::PutOptions {
            storage_class: args.storage_class.clone(),
            acl: args.acl.clone(),
            extra_headers: args.headers.clone(),
            ..Default::default()
        },
        sse: args.sse.as_ref().map(sse_of).transpose()?,
    };
    for spec in &args.options {
        m::apply_o_options(&mut o, spec).map_err(anyhow::Error::msg)?;
    }
    m::plan_memory(o.part_size, o.max_part_size, o.memory_limit).map_err(anyhow::Error::msg)?;
    m::prepare_mountpoint(&o.mountpoint).map_err(anyhow::Error::msg)?;
    // Fork before any thread (the tokio runtime) exists.
    let ready = if o.foreground {
        m::foreground()
    } else {
        m::daemonize().map_err(anyhow::Error::msg)?
    };
    init_logging_to(
        if o.foreground { "info" } else { "warn" },
        args.log_file.as_deref(),
        !o.foreground,
    );
    let client = match client(s3) {
        Ok(c) => c,
        Err(e) => {
            let mut ready = ready;
            ready.report(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    m::serve(client, &o, ready).map_err(anyhow::Error::msg)
}

#[derive(Subcommand, Debug)]
enum UploadsCmd {
    /// Print one line per in-progress upload: `<key> <upload-id> <initiated>`.
    /// Keys are escaped (\n, \t, \\, \u{..}) so a key cannot forge a line;
    /// the last two fields never contain spaces.
    List {
        /// BUCKET or BUCKET/PREFIX
        target: String,
    },
    /// Abort in-progress uploads under BUCKET[/PREFIX]. One of --older-than or
    /// --all is required: a bare abort would kill the live uploads of running mounts.
    Abort {
        /// BUCKET or BUCKET/PREFIX
        target: String,
        /// Only uploads initiated longer ago than this (e.g. 30m, 6h, 7days)
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "all", required_unless_present = "all")]
        older_than: Option<Duration>,
        /// Every upload under the target, including those of running mounts
        #[arg(long)]
        all: bool,
    },
}

fn client(a: &S3Args) -> anyhow::Result<Client> {
    let cfg = S3Config::from_env(&ConfigOverrides {
        endpoint_url: (!a.endpoint_url.is_empty()).then(|| a.endpoint_url.join(",")),
        virtual_hosted: a.virtual_hosted,
        list_v1: a.list_type == 1,
        region: a.region.clone(),
        force_path_style: a.force_path_style,
        payload_signing: Some(match a.payload_signing {
            Signing::Signed => PayloadSigning::Signed,
            Signing::Unsigned => PayloadSigning::UnsignedWithMd5,
        }),
        request_timeout: Some(a.request_timeout),
        min_transfer_rate: Some(a.min_transfer_rate),
        max_attempts: Some(a.max_attempts),
    })?;
    Ok(Client::new(cfg)?)
}

fn init_logging(default: &str) {
    init_logging_to(default, None, false)
}

/// Logs to stderr, or to `file`; a detached daemon without a file logs nowhere.
fn init_logging_to(default: &str, file: Option<&std::path::Path>, detached: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BUCKETFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let opened = file.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("bucketfs: log file {}: {e}", p.display()))
            .ok()
    });
    let _ = match opened {
        Some(f) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        None if detached => builder.with_writer(std::io::sink).try_init(),
        // Colours only for a terminal: not in a file, a pipe or the journal.
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .try_init(),
    };
}

async fn uploads(cmd: UploadsCmd, s3: &S3Args) -> anyhow::Result<()> {
    let client = client(s3)?;
    match cmd {
        UploadsCmd::List { target } => {
            let (bucket, prefix) = admin::parse_target(&target).map_err(anyhow::Error::msg)?;
            let uploads = client.list_uploads(&bucket, &prefix).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for u in &uploads {
                writeln!(out, "{}", admin::upload_line(u))?;
            }
            out.flush()?;
        }
        UploadsCmd::Abort {
            target,
            older_than,
            all,
        } => {
            let (bucket, prefix) = admin::parse_target(&target).map_err(anyhow::Error::msg)?;
            let filter = match (older_than, all) {
                (Some(d), _) => AbortFilter::OlderThan(d),
                (None, true) => AbortFilter::All,
                (None, false) => anyhow::bail!("give --older-than DURATION or --all"),
            };
            let report =
                admin::abort_uploads(&client, &bucket, &prefix, filter, SystemTime::now()).await?;
            println!(
                "aborted {} uploads ({} kept, {} failed)",
                report.aborted,
                report.kept,
                report.failed.len()
            );
            if let Some((key, e)) = report.failed.first() {
                anyhow::bail!(
                    "{} aborts failed; first: {}: {e}",
                    report.failed.len(),
                    admin::escape_key(key)
                );
            }
        }
    }
    Ok(())
}

/// Rewrites the command line of mount(8) helpers and fstab options:
/// - invoked as `mount.bucketfs` or `mount.fuse.bucketfs` (a symlink), or
///   as `bucketfs SOURCE DIR -o ...` (how mount.fuse3 runs a `fuse.bucketfs`
///   type), it is `bucketfs mount SOURCE DIR -o ...`; mount(8)'s `-n`, `-s`,
///   `-v` are ignored, and `-f` (fake) exits at once;
/// - `-o` options that are not fstab's own become long options.
fn normalize_args(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    use std::ffi::OsString;
    let Some(prog) = args.first().cloned() else {
        return args;
    };
    let name = std::path::Path::new(&prog)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let helper = name.starts_with("mount.");
    let first = args.get(1).map(|a| a.to_string_lossy().into_owned());
    let subcommand = matches!(
        first.as_deref(),
        Some("mount" | "uploads" | "status" | "help") | None
    ) || first.as_deref().is_some_and(|f| f.starts_with('-'));
    let mut out = vec![prog];
    let mut rest = args.into_iter().skip(1).peekable();
    if helper || !subcommand {
        out.push(OsString::from("mount"));
    }
    let is_mount = helper || !subcommand || first.as_deref() == Some("mount");
    while let Some(a) = rest.next() {
        let s = a.to_string_lossy().into_owned();
        if helper && matches!(s.as_str(), "-n" | "-s" | "-v") {
            continue;
        }
        if helper && s == "-f" {
            std::process::exit(0);
        }
        if helper && s == "-t" {
            rest.next();
            continue;
        }
        let spec = if is_mount && s == "-o" {
            rest.next().map(|v| v.to_string_lossy().into_owned())
        } else if is_mount && s.starts_with("-o") && s.len() > 2 {
            Some(s[2..].to_string())
        } else {
            None
        };
        match spec {
            Some(spec) => {
                let (keep, long) = bucketfs::mount::o_to_long_options(&spec);
                if !keep.is_empty() {
                    out.push(OsString::from("-o"));
                    out.push(OsString::from(keep));
                }
                out.extend(long.into_iter().map(OsString::from));
            }
            None => out.push(a),
        }
    }
    out
}

fn main() -> ExitCode {
    // Part buffers are allocated and freed by many threads (async workers,
    // the hashing pool); glibc's default of one arena per thread keeps
    // freed buffers in each, so RSS grew with the file. Two arenas keep it
    // flat (the budget, not the allocator, bounds memory).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let cli = Cli::parse_from(normalize_args(std::env::args_os().collect()));
    if let Command::Mount(args) = cli.command {
        // No runtime yet: the mount forks first.
        return match mount(*args, &cli.s3) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bucketfs: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = match cli.command {
        Command::Status(a) => {
            return match status(a) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bucketfs: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => cli,
    };
    init_logging("warn");
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                match cli.command {
                    Command::Uploads(cmd) => uploads(cmd, &cli.s3).await,
                    Command::Mount(_) | Command::Status(_) => {
                        unreachable!("handled before the runtime starts")
                    }
                }
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the S3 error already names its code and message.
            eprintln!("bucketfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_args;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn mount_helpers_and_fstab_options_become_the_mount_command() {
        let want = [
            "/sbin/mount.fuse.bucketfs",
            "mount",
            "b/p",
            "/mnt",
            "-o",
            "rw,nosuid,_netdev",
            "--endpoint-url=http://h:1",
            "--list-type=1",
        ];
        assert_eq!(
            norm(&[
                "/sbin/mount.fuse.bucketfs",
                "b/p",
                "/mnt",
                "-n",
                "-o",
                "rw,nosuid,_netdev,endpoint_url=http://h:1,list_type=1",
                "-t",
                "fuse.bucketfs"
            ]),
            want
        );
        // mount.fuse3 runs the type's program by name: bucketfs SOURCE DIR -o ...
        assert_eq!(
            norm(&["bucketfs", "b", "/mnt", "-oro,storage_class=COLD"]),
            [
                "bucketfs",
                "mount",
                "b",
                "/mnt",
                "-o",
                "ro",
                "--storage-class=COLD"
            ]
        );
        // The ordinary command lines are left alone.
        for args in [
            &["bucketfs", "mount", "b", "/mnt", "-o", "ro"][..],
            &["bucketfs", "uploads", "list", "b"],
            &["bucketfs", "--help"],
            &["bucketfs", "status", "/mnt"],
        ] {
            assert_eq!(norm(args), args);
        }
    }
}
