//! What the server itself needs for the bench's small-object workloads, with
//! no file system in the way: the requests a mount cannot avoid, sent by
//! bucketfs's own S3 client, as fast as they can go. For `scripts/bench.sh`;
//! not part of the product.
//!
//!   floor BUCKET puts N          N PutObjects of 4 KiB, one after another
//!                                (`cp -r`: each close waits for its PUT)
//!   floor BUCKET rsync N         N times PutObject of a temp name, CopyObject
//!                                to the final name with the attributes,
//!                                DeleteObject of the temp name (`rsync -a`)
//!   floor BUCKET heads PREFIX C  list PREFIX, then HEAD every object, C at
//!                                a time (`ls -l`: mode, owner and mtime live
//!                                in each object's metadata)
//!
//! Runs its requests on a runtime shaped as the mount's (`--io-threads`).
//! Prints the wall seconds. Configured from the environment as the mount is
//! (AWS_ENDPOINT_URL, credentials, AWS_CA_BUNDLE).

use bucketfs::s3::{Client, ConfigOverrides, CopyOptions, MetadataDirective, PutOptions, S3Config};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

fn usage() -> ! {
    eprintln!(
        "usage: floor BUCKET puts N | floor BUCKET rsync N | floor BUCKET heads PREFIX CONCURRENCY"
    );
    std::process::exit(2);
}

fn number(s: Option<String>) -> usize {
    s.and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
}

/// The attributes a mount sends with a file (as `x-amz-meta-*`).
fn attrs(mode: &str) -> PutOptions {
    let metadata: BTreeMap<String, String> = [
        ("mode", mode),
        ("uid", "0"),
        ("gid", "0"),
        ("mtime", "1700000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    PutOptions {
        content_type: Some("application/octet-stream".into()),
        metadata,
        ..PutOptions::default()
    }
}

fn main() -> anyhow::Result<()> {
    // The runtime the mount runs its requests on (`--io-threads` default),
    // and all of the work on its workers, as in the mount.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(bucketfs::mount::default_io_threads())
        .enable_all()
        .build()?
        .block_on(async { tokio::spawn(run()).await? })
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).collect::<Vec<_>>().into_iter();
    let (Some(bucket), Some(what)) = (args.next(), args.next()) else {
        usage()
    };
    let cfg = S3Config::from_env(&ConfigOverrides::default())?;
    let c = Arc::new(Client::new(cfg)?);
    let body = Bytes::from(vec![b'x'; 4096]);
    let run = format!("floor-{:08x}", fastrand::u32(..));
    let t0;
    match what.as_str() {
        "puts" => {
            let n = number(args.next());
            t0 = Instant::now();
            for i in 0..n {
                let key = format!("{run}/f{i:04}");
                c.put_object(&bucket, &key, body.clone(), None, &attrs("33188"))
                    .await?;
            }
        }
        "rsync" => {
            let n = number(args.next());
            t0 = Instant::now();
            for i in 0..n {
                let tmp = format!("{run}/.f{i:04}.XXXXXX");
                let key = format!("{run}/f{i:04}");
                c.put_object(&bucket, &tmp, body.clone(), None, &attrs("33152"))
                    .await?;
                let to = MetadataDirective::Replace(attrs("33188"));
                c.copy_object(&bucket, &tmp, &bucket, &key, &CopyOptions::new(&to))
                    .await?;
                c.delete_object(&bucket, &tmp).await?;
            }
        }
        "heads" => {
            let prefix = args.next().unwrap_or_else(|| usage());
            let conc = number(args.next()).max(1);
            t0 = Instant::now();
            let keys: Vec<String> = c
                .list_objects_all(&bucket, &prefix, Some("/"))
                .await?
                .objects
                .into_iter()
                .map(|o| o.key)
                .collect();
            let sem = Arc::new(tokio::sync::Semaphore::new(conc));
            let mut set = tokio::task::JoinSet::new();
            for k in keys {
                let (c, b, sem) = (c.clone(), bucket.clone(), sem.clone());
                set.spawn(async move {
                    let _p = sem.acquire_owned().await;
                    c.head_object(&b, &k, None).await.map(|_| ())
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
        }
        _ => usage(),
    }
    println!("{:.2}", t0.elapsed().as_secs_f64());
    Ok(())
}
