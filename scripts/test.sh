#!/usr/bin/env bash
# Run all tests: unit tests plus integration tests against a local Garage S3 server.
#
#   scripts/test.sh [CARGO TEST ARGS...]     e.g. scripts/test.sh -- --nocapture
#
# 1. makes sure a python venv with boto3 exists ($BUCKETFS_CACHE/venv) for tests/s3ref.py
# 2. makes sure garage 2.5.0 is built (scripts/garage.sh install; ~12 min the first time)
# 3. starts a throw-away Garage on loopback and exports its endpoint and test key
# 4. runs `cargo test --all-targets "$@"`; its exit code is this script's exit code
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BUCKETFS_REPO"

# 1. Python venv with boto3 for the reference client.
ensure_venv

# 2. Garage binary.
scripts/garage.sh install >/dev/null
export BUCKETFS_GARAGE_SH="$BUCKETFS_REPO/scripts/garage.sh"

# 3. A fresh Garage for this run, stopped however the script ends.
state="$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-garage.XXXXXX")"
# shellcheck disable=SC2317 # called from the trap below
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    "$BUCKETFS_GARAGE_SH" stop "$state" || true
    if [[ $rc -eq 0 ]]; then
        rm -rf "$state"
    else
        log "kept garage state and log in $state"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

scripts/garage.sh start "$state" >/dev/null
# shellcheck source=/dev/null
source "$state/env"
log "garage at $AWS_ENDPOINT_URL (bucket $BUCKETFS_TEST_BUCKET, state $state)"

# 4. The tests.
rc=0
cargo test --all-targets "$@" || rc=$?
exit "$rc"
