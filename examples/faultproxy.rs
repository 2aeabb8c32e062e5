//! The tests' fault-injecting S3 proxy as a command, for `scripts/bench.sh`
//! (the cost of retries). Not part of the product.
//!
//!   faultproxy UPSTREAM_URL [UPLOAD_PART_FAILURE_SHARE]
//!
//! Prints its own URL on the first line, then serves until stdin closes;
//! the share (0..1, default 0) of UploadParts is split evenly between 500
//! answers, resets after the body, and stalls. On exit it prints its counts
//! and the requests it saw by kind (method, path depth, query names).

#[path = "../tests/common/proxy.rs"]
#[allow(dead_code)]
mod proxy;

use std::io::{BufRead, Write};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(upstream) = args.next() else {
        eprintln!("usage: faultproxy UPSTREAM_URL [UPLOAD_PART_FAILURE_SHARE]");
        std::process::exit(2);
    };
    let share: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let p = proxy::FaultProxy::start(&upstream);
    p.set(proxy::Faults {
        upload_part_500: share / 3.0,
        upload_part_reset: share / 3.0,
        upload_part_stall: share / 3.0,
        seed: 1,
        ..Default::default()
    });
    println!("{}", p.url());
    let _ = std::io::stdout().flush();
    for _ in std::io::stdin().lock().lines() {}
    eprintln!("{:?}", p.stats());
    // Requests by kind: method and the names of the query parameters.
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for h in p.heads() {
        let line = h.lines().next().unwrap_or_default();
        let mut it = line.split(' ');
        let method = it.next().unwrap_or_default();
        let target = it.next().unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut names: Vec<&str> = query
            .split('&')
            .filter(|q| !q.is_empty())
            .map(|q| q.split('=').next().unwrap_or(q))
            .collect();
        names.sort();
        let copy = if h.to_ascii_lowercase().contains("\nx-amz-copy-source:") {
            " copy"
        } else {
            ""
        };
        let depth = path.matches('/').count();
        *kinds
            .entry(format!("{method} depth{depth} ?{}{copy}", names.join("&")))
            .or_default() += 1;
    }
    for (k, n) in kinds {
        eprintln!("{n:>7} {k}");
    }
}
