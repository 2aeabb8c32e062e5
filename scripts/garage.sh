#!/usr/bin/env bash
# Build and run throw-away single-node Garage S3 servers on loopback for tests.
#
#   scripts/garage.sh install            build garage 2.5.0 into the cache if needed; print its path
#   scripts/garage.sh start STATE_DIR    start a fresh server in STATE_DIR; print STATE_DIR/env
#   scripts/garage.sh stop STATE_DIR     stop the server started from STATE_DIR (idempotent)
#   scripts/garage.sh resume STATE_DIR   start a stopped server again on its data and ports
#
# The cache is ${BUCKETFS_CACHE:-$HOME/.cache/bucketfs}; the binary lives in $BUCKETFS_CACHE/garage/bin.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GARAGE_VERSION="2.5.0"
GARAGE_ROOT="$BUCKETFS_CACHE/garage"
GARAGE_BIN="$GARAGE_ROOT/bin/garage"

# A PUBLIC, fixed test key. It only ever grants access to a throw-away Garage
# server bound to 127.0.0.1 that this script started; it is not a secret, which
# is why it may appear on command lines. (Key id = "GK" + hex of "bucketfs-tes".)
TEST_KEY_ID="GK6275636b657466732d746573"
TEST_SECRET="ecc91a0766ef8928f468c181aaf4db13768bd727c19172e30e71d423077f2297"
TEST_KEY_NAME="bucketfs-test"
TEST_BUCKET="bucketfs-test"
TEST_REGION="us-east-1"

START_TIMEOUT=30 # seconds, for each of: server answering, S3 accepting signed requests

usage() {
    cat >&2 <<EOF
usage: ${0##*/} install
       ${0##*/} start STATE_DIR
       ${0##*/} stop STATE_DIR
       ${0##*/} resume STATE_DIR

  install           build garage $GARAGE_VERSION into $GARAGE_ROOT if missing; print the binary path
  start STATE_DIR   start a fresh single-node Garage on free 127.0.0.1 ports with bucket
                    '$TEST_BUCKET' and a fixed test key; write and print STATE_DIR/env
  stop STATE_DIR    stop that server (TERM, then KILL); keeps STATE_DIR
  resume STATE_DIR  start a stopped server again with its config, data and ports
                    (tests kill a server mid-upload, then look at what it kept)

Environment: BUCKETFS_CACHE (default \$HOME/.cache/bucketfs)
EOF
}

garage_ok() {
    local version
    [[ -x "$GARAGE_BIN" ]] || return 1
    version="$("$GARAGE_BIN" --version 2>/dev/null)" || return 1
    grep -qE "(^|[^0-9.])v?${GARAGE_VERSION//./\\.}([^0-9.]|$)" <<<"$version"
}

cmd_install() {
    if ! garage_ok; then
        command -v cargo >/dev/null || die "cargo not found; needed to build garage"
        local force=()
        if [[ -e "$GARAGE_BIN" ]]; then
            log "$GARAGE_BIN exists but is not a working garage $GARAGE_VERSION; rebuilding"
            force=(--force)
        fi
        log "building garage $GARAGE_VERSION into $GARAGE_ROOT (takes ~12 minutes on 2 cores)"
        mkdir -p "$GARAGE_ROOT"
        cargo install "garage@$GARAGE_VERSION" --locked --no-default-features \
            --features bundled-libs,lmdb,sqlite --root "$GARAGE_ROOT" "${force[@]}" >&2 ||
            die "cargo install garage@$GARAGE_VERSION failed"
        garage_ok || die "$GARAGE_BIN does not report version $GARAGE_VERSION after install"
    fi
    printf '%s\n' "$GARAGE_BIN"
}

# Prints three distinct free TCP ports on 127.0.0.1 (s3, rpc, admin).
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

random_hex() { # random_hex NBYTES
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# Garage CLI against the instance being started (config set in cmd_start).
g() {
    timeout 20 "$GARAGE_BIN" -c "$config" "$@"
}

log_tail() {
    printf '%s\n' "--- last lines of $state/garage.log ---" >&2
    tail -n 30 "$state/garage.log" >&2 2>/dev/null || true
}

# Runs a garage CLI command; on failure shows its output and the server log, and dies.
run_g() {
    local out
    if ! out="$(g "$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        log_tail
        die "failed: garage $*"
    fi
}

# Kills the server being started if cmd_start fails half-way.
start_cleanup() {
    local rc=$?
    [[ $rc -eq 0 ]] || kill_server
}

# SHA-256 of the empty body. Garage requires an x-amz-content-sha256 header,
# which --aws-sigv4 of Debian 12's curl (7.88) does not add by itself.
EMPTY_SHA256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# signed_request [CURL ARGS...]: a SigV4-signed ListObjectsV2 on the test bucket.
signed_request() {
    curl --max-time 5 --aws-sigv4 "aws:amz:$TEST_REGION:s3" \
        --user "$TEST_KEY_ID:$TEST_SECRET" -H "x-amz-content-sha256: $EMPTY_SHA256" \
        "$@" "http://127.0.0.1:$s3_port/$TEST_BUCKET?list-type=2"
}

# Garage does not exit when its S3 or admin listener cannot bind: it logs
# "... exited with error: ... Address already in use" and keeps running.
port_clash() {
    grep -q "Address already in use" "$state/garage.log" 2>/dev/null
}

kill_server() {
    if [[ -n "${server_pid:-}" ]] && pid_alive "$server_pid"; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    rm -f "$state/garage.pid"
}

# One start attempt on freshly picked ports. Returns 0 when the S3 API accepts
# signed requests, 3 on a port clash (server killed); dies on other failures.
try_start() {
    # A fresh cluster every time: drop what an earlier run left.
    rm -rf "$state/meta" "$state/data" "$state/env" "$state/garage.pid" ||
        die "cannot clean $state"
    mkdir -p "$state/meta" "$state/data" || die "cannot create $state/meta and $state/data"

    local ports
    ports="$(free_ports)" || die "could not pick free ports"
    read -r s3_port rpc_port admin_port <<<"$ports"
    (
        set -e
        umask 077
        cat >"$config" <<EOF
metadata_dir = "$state/meta"
data_dir = "$state/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "$TEST_REGION"
api_bind_addr = "127.0.0.1:$s3_port"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(random_hex 32)"
metrics_token = "$(random_hex 32)"
EOF
    ) || die "cannot write $config"

    "$GARAGE_BIN" -c "$config" server >"$state/garage.log" 2>&1 </dev/null &
    server_pid=$!
    echo "$server_pid" >"$state/garage.pid" || die "cannot write $state/garage.pid"

    # 1. Wait for the node to answer on RPC.
    local deadline=$((SECONDS + START_TIMEOUT)) up=""
    while ((SECONDS < deadline)); do
        pid_alive "$server_pid" || break
        if g status >/dev/null 2>&1; then
            up=1
            break
        fi
        sleep 0.2
    done
    if port_clash; then
        kill_server
        return 3
    fi
    if [[ -z "$up" ]]; then
        log_tail
        pid_alive "$server_pid" || die "garage server exited during startup"
        die "garage did not answer 'garage status' within ${START_TIMEOUT}s"
    fi

    # 2. Layout, key, bucket.
    local node_id
    node_id="$(g node id -q 2>/dev/null)" || {
        log_tail
        die "garage node id failed"
    }
    node_id="${node_id%%@*}"
    [[ "$node_id" =~ ^[0-9a-f]{16,}$ ]] || die "unexpected node id: '$node_id'"

    run_g layout assign -z dc1 -c 10G "$node_id"
    run_g layout apply --version 1
    run_g key import --yes "$TEST_KEY_ID" "$TEST_SECRET" -n "$TEST_KEY_NAME"
    run_g key allow --create-bucket "$TEST_KEY_NAME"
    run_g bucket create "$TEST_BUCKET"
    run_g bucket allow --read --write --owner "$TEST_BUCKET" --key "$TEST_KEY_NAME"

    # 3. Garage may still refuse (403) or not serve the first requests right
    # after setup: wait until a signed ListObjectsV2 on the bucket succeeds.
    local ready=""
    deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        pid_alive "$server_pid" || break
        port_clash && break
        if signed_request -sf -o /dev/null; then
            ready=1
            break
        fi
        sleep 0.2
    done
    if port_clash; then
        kill_server
        return 3
    fi
    if [[ -z "$ready" ]]; then
        signed_request -sS >&2 || true
        echo >&2
        log_tail
        die "S3 API on 127.0.0.1:$s3_port did not accept a signed request within ${START_TIMEOUT}s"
    fi
}

cmd_start() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    mkdir -p "$1" || die "cannot create state dir $1"
    state="$(cd "$1" && pwd)"
    garage_ok || die "garage $GARAGE_VERSION not found at $GARAGE_BIN; run: $0 install"
    command -v curl >/dev/null || die "curl not found"
    command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"

    if [[ -f "$state/garage.pid" ]] && pid_alive "$(cat "$state/garage.pid")"; then
        die "a garage server (pid $(cat "$state/garage.pid")) is already running from $state; run: $0 stop $state"
    fi

    config="$state/garage.toml"
    server_pid=""
    trap start_cleanup EXIT
    local t0=$SECONDS attempt rc=3
    for attempt in 1 2 3; do
        rc=0
        try_start || rc=$?
        [[ $rc -eq 3 ]] || break
        log "port clash on attempt $attempt; retrying on other ports"
    done
    [[ $rc -eq 0 ]] || die "garage could not start: ports kept clashing"

    {
        printf 'export AWS_ENDPOINT_URL=%q\n' "http://127.0.0.1:$s3_port"
        printf 'export AWS_ACCESS_KEY_ID=%q\n' "$TEST_KEY_ID"
        printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$TEST_SECRET"
        printf 'export AWS_REGION=%q\n' "$TEST_REGION"
        printf 'export BUCKETFS_TEST_BUCKET=%q\n' "$TEST_BUCKET"
        printf 'export GARAGE_BIN=%q\n' "$GARAGE_BIN"
        printf 'export GARAGE_CONFIG=%q\n' "$config"
        printf 'export GARAGE_PID=%q\n' "$server_pid"
        printf 'export GARAGE_STATE_DIR=%q\n' "$state"
    } >"$state/env.tmp"
    mv "$state/env.tmp" "$state/env"
    cat "$state/env"
    log "garage started in $state (pid $server_pid, s3 127.0.0.1:$s3_port) in $((SECONDS - t0))s"
}

cmd_stop() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    local state="$1" pid i
    [[ -f "$state/garage.pid" ]] || return 0
    pid="$(cat "$state/garage.pid")"
    if pid_alive "$pid" && grep -qa garage "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "garage (pid $pid) ignored TERM for 5s; sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_alive "$pid" || break
                sleep 0.1
            done
            pid_alive "$pid" && die "garage (pid $pid) is still running after KILL"
        fi
    fi
    rm -f "$state/garage.pid"
}

cmd_resume() {
    [[ $# -eq 1 && -n "$1" && -f "$1/env" ]] || {
        usage
        exit 2
    }
    state="$(cd "$1" && pwd)"
    config="$state/garage.toml"
    if [[ -f "$state/garage.pid" ]] && pid_alive "$(cat "$state/garage.pid")"; then
        die "garage is already running from $state"
    fi
    s3_port="$(sed -n 's/^export AWS_ENDPOINT_URL=http:\/\/127.0.0.1:\([0-9]*\)$/\1/p' "$state/env")"
    [[ -n "$s3_port" ]] || die "no S3 port in $state/env"
    "$GARAGE_BIN" -c "$config" server >>"$state/garage.log" 2>&1 </dev/null &
    server_pid=$!
    echo "$server_pid" >"$state/garage.pid"
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        pid_alive "$server_pid" || break
        if signed_request -sf -o /dev/null; then
            sed -i "s/^export GARAGE_PID=.*/export GARAGE_PID=$server_pid/" "$state/env"
            log "garage resumed in $state (pid $server_pid)"
            return 0
        fi
        sleep 0.2
    done
    log_tail
    kill_server
    die "garage did not come back in $state"
}

case "${1:-}" in
resume)
    shift
    cmd_resume "$@"
    ;;
install)
    shift
    [[ $# -eq 0 ]] || {
        usage
        exit 2
    }
    cmd_install
    ;;
start)
    shift
    cmd_start "$@"
    ;;
stop)
    shift
    cmd_stop "$@"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage
    exit 2
    ;;
esac
