//! A three-node Garage cluster (replication factor 3, quorum 2 of 3): what
//! one node stores the others serve, and with one node down the cluster still
//! serves reads and takes new objects, which the node has once it is back.

mod common;

use bucketfs::s3::*;
use common::mount::GarageCluster;
use common::*;
use std::time::Instant;

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "bucketfs-test";

/// Stores `body` as a multipart object in parts of `part` bytes; checks the
/// multipart ETag and returns it (bare).
async fn put_multipart(c: &Client, key: &str, body: &[u8], part: usize) -> String {
    let id = c
        .create_multipart_upload(BUCKET, key, &PutOptions::default())
        .await
        .unwrap_or_else(|e| panic!("CreateMultipartUpload {key}: {e}"));
    let mut parts = Vec::new();
    let mut md5s = Vec::new();
    for (k, chunk) in body.chunks(part).enumerate() {
        let n = k as u32 + 1;
        let md5 = md5_of(chunk);
        let etag = c
            .upload_part(
                BUCKET,
                key,
                PartUpload {
                    upload_id: &id,
                    number: n,
                    body: bytes::Bytes::copy_from_slice(chunk),
                    md5: Some(md5),
                    sse: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("UploadPart {key} #{n}: {e}"));
        parts.push((n, etag));
        md5s.push(md5);
    }
    let etag = c
        .complete_multipart_upload(BUCKET, key, &id, &parts)
        .await
        .unwrap_or_else(|e| panic!("CompleteMultipartUpload {key}: {e}"));
    assert_eq!(bare_etag(&etag), multipart_etag(&md5s), "{key}");
    bare_etag(&etag)
}

/// GETs `key` through `c` (node `node`) and checks it byte for byte.
async fn assert_object(c: &Client, node: usize, key: &str, want: &[u8], etag: &str) {
    let g = c
        .get_object(BUCKET, key, None, None)
        .await
        .unwrap_or_else(|e| panic!("GET {key} through node {node}: {e}"));
    assert_eq!(
        g.object_size,
        want.len() as u64,
        "{key} through node {node}"
    );
    assert!(
        g.body[..] == want[..],
        "{key} through node {node}: {} bytes differ from the {} written",
        g.body.len(),
        want.len()
    );
    assert_eq!(bare_etag(&g.etag), etag, "{key} through node {node}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_the_loss_of_one() {
    let t0 = Instant::now();
    let cluster = GarageCluster::start(3);
    let started = t0.elapsed();
    let (c1, c2, c3) = (cluster.client(1), cluster.client(2), cluster.client(3));

    // A 12 MiB multipart object through node 1, read through nodes 2 and 3.
    let big = data(12 * MIB, 1201);
    let big_etag = put_multipart(&c1, "big.bin", &big, 5 * MIB).await;
    assert!(big_etag.ends_with("-3"), "{big_etag}");
    assert_object(&c2, 2, "big.bin", &big, &big_etag).await;
    assert_object(&c3, 3, "big.bin", &big, &big_etag).await;

    let replicated = t0.elapsed();

    // Node 1 dies: nodes 2 and 3 still make a quorum.
    cluster.kill_node(1);
    assert_object(&c2, 2, "big.bin", &big, &big_etag).await;

    let small = data(100_000, 1202);
    let small_etag = c2
        .put_object(
            BUCKET,
            "while-down.txt",
            small.clone().into(),
            None,
            &PutOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("PutObject through node 2 with node 1 down: {e}"));
    let small_etag = bare_etag(&small_etag);
    assert_eq!(small_etag, hex(&md5_of(&small)));

    let multi = data(6 * MIB, 1203);
    let multi_etag = put_multipart(&c2, "while-down.bin", &multi, 5 * MIB).await;
    assert_object(&c3, 3, "while-down.bin", &multi, &multi_etag).await;
    assert_object(&c2, 2, "while-down.txt", &small, &small_etag).await;

    let degraded = t0.elapsed();

    // Node 1 comes back and serves what was written without it.
    cluster.resume_node(1);
    let resumed = t0.elapsed();
    assert_object(&c1, 1, "while-down.txt", &small, &small_etag).await;
    assert_object(&c1, 1, "while-down.bin", &multi, &multi_etag).await;
    assert_object(&c1, 1, "big.bin", &big, &big_etag).await;
    assert_eq!(
        keys(&c1, BUCKET).await,
        ["big.bin", "while-down.bin", "while-down.txt"]
    );

    eprintln!(
        "cluster test: started {:.1}s, replicated {:.1}s, one node down {:.1}s, \
         resumed {:.1}s, done {:.1}s",
        started.as_secs_f64(),
        replicated.as_secs_f64(),
        degraded.as_secs_f64(),
        resumed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// bucketfs on all three nodes (`--endpoint-url` of each): a 96 MiB copy
/// lands byte-exact although node 1 — the one bucketfs talks to — is
/// killed mid-file, and reads through the mount go on without it.
#[test]
fn a_mount_survives_the_loss_of_the_node_it_talks_to() {
    use common::mount::Mounted;
    use md5::{Digest, Md5};
    use std::io::Write;
    let g = GarageCluster::start(3);
    let eps = g.endpoints.join(",");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c2 = g.client(2);
    let m = Mounted::new(
        BUCKET,
        &[
            "--endpoint-url",
            &eps,
            "--request-timeout",
            "3s",
            "--min-transfer-rate",
            "8MiB",
            "--max-attempts",
            "10",
        ],
        &[],
    );
    let body = data(96 * MIB, 96);
    let mut f = std::fs::File::create(m.path("big.bin")).unwrap();
    for (i, chunk) in body.chunks(MIB).enumerate() {
        if i == 32 {
            g.kill_node(1);
        }
        f.write_all(chunk)
            .unwrap_or_else(|e| panic!("write at {i} MiB: {e}\n{}", m.log()));
    }
    f.sync_all()
        .unwrap_or_else(|e| panic!("close with node 1 dead: {e}\n{}", m.log()));
    drop(f);
    let got = rt
        .block_on(c2.get_object(BUCKET, "big.bin", None, None))
        .unwrap();
    assert_eq!(Md5::digest(&got.body), Md5::digest(&body));
    assert!(rt.block_on(c2.list_uploads(BUCKET, "")).unwrap().is_empty());
    assert!(m.log().contains("failing over"), "{}", m.log());
    // Reads through the mount, node 1 still down.
    let back = std::fs::read(m.path("big.bin")).unwrap();
    assert!(back == body, "read back differs");
}
