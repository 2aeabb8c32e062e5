#!/usr/bin/env bash
# Build and run throw-away Garage S3 servers (single nodes or small clusters) on loopback for tests.
#
#   scripts/garage.sh install                   build garage 2.5.0 into the cache if needed; print its path
#   scripts/garage.sh start STATE_DIR           start a fresh server in STATE_DIR; print STATE_DIR/env
#   scripts/garage.sh start-cluster STATE_DIR N start a fresh N-node cluster in STATE_DIR; print STATE_DIR/env
#   scripts/garage.sh stop STATE_DIR            stop the server or every cluster node of STATE_DIR (idempotent)
#   scripts/garage.sh resume STATE_DIR          start a stopped server (or stopped cluster nodes) again
#   scripts/garage.sh kill-node STATE_DIR I     SIGKILL node I (1-based) of a cluster
#   scripts/garage.sh resume-node STATE_DIR I   start node I of a cluster again on its data and ports
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
# seconds for a cluster to become healthy (all nodes connected, layout everywhere);
# also the wait for a resumed cluster node to be reconnected to its peers
CLUSTER_TIMEOUT=60

usage() {
    cat >&2 <<EOF
usage: ${0##*/} install
       ${0##*/} start STATE_DIR
       ${0##*/} start-cluster STATE_DIR N
       ${0##*/} stop STATE_DIR
       ${0##*/} resume STATE_DIR
       ${0##*/} kill-node STATE_DIR I
       ${0##*/} resume-node STATE_DIR I

  install           build garage $GARAGE_VERSION into $GARAGE_ROOT if missing; print the binary path
  start STATE_DIR   start a fresh single-node Garage on free 127.0.0.1 ports with bucket
                    '$TEST_BUCKET' and a fixed test key; write and print STATE_DIR/env
  start-cluster STATE_DIR N
                    start a fresh cluster of N nodes on free 127.0.0.1 ports (node I in
                    STATE_DIR/nodeI/), replication factor min(N, 3), one layout, the same
                    bucket and key as 'start'; wait until it is healthy and S3 answers on
                    every node; write and print STATE_DIR/env, which also exports
                    BUCKETFS_CLUSTER_ENDPOINTS (S3 endpoints of nodes 1..N, comma-separated;
                    AWS_ENDPOINT_URL is node 1's)
  stop STATE_DIR    stop that server, or every node of that cluster (TERM, then KILL); keeps STATE_DIR
  resume STATE_DIR  start a stopped server again with its config, data and ports
                    (tests kill a server mid-upload, then look at what it kept);
                    for a cluster, every node that is not running
  kill-node STATE_DIR I
                    SIGKILL node I (1-based) of a cluster; its data stays on disk. Then makes
                    the running nodes drop their connections to it at once (else their
                    first requests to it may hang for seconds)
  resume-node STATE_DIR I
                    start node I of a cluster again on its config, data and ports; waits
                    until its S3 API answers and it is connected to the running nodes

Environment: BUCKETFS_CACHE (default \$HOME/.cache/bucketfs)
             BUCKETFS_GARAGE_DB (sqlite, the default, or lmdb: Garage's own default,
             faster on small requests but limited to keys of about 470 bytes)
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

random_hex() { # random_hex NBYTES
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# Garage CLI against the instance being started (config set in cmd_start).
g() {
    timeout 20 "$GARAGE_BIN" -c "$config" "$@"
}

# The server logs of $state: its own, or those of its cluster nodes.
log_files() {
    if [[ -d "$state/node1" ]]; then
        printf '%s\n' "$state"/node*/garage.log
    else
        printf '%s\n' "$state/garage.log"
    fi
}

log_tail() {
    local f
    while IFS= read -r f; do
        [[ -f "$f" ]] || continue
        printf '%s\n' "--- last lines of $f ---" >&2
        tail -n 30 "$f" >&2 2>/dev/null || true
    done < <(log_files)
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
    local f
    while IFS= read -r f; do
        grep -q "Address already in use" "$f" 2>/dev/null && return 0
    done < <(log_files)
    return 1
}

kill_server() {
    if [[ -n "${server_pid:-}" ]] && pid_alive "$server_pid"; then
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
    rm -f "$state/garage.pid"
}

# write_config FILE DIR S3_PORT RPC_PORT ADMIN_PORT REPLICATION RPC_SECRET ADMIN_TOKEN METRICS_TOKEN [PEERS]:
# a server config with metadata and data under DIR (mode 600: it holds secrets).
# PEERS: the other nodes of a cluster as "ID@127.0.0.1:PORT" words, for bootstrap_peers.
# db_engine is sqlite unless BUCKETFS_GARAGE_DB says otherwise. Garage's own default, LMDB,
# spends about half the CPU on each small PUT and HEAD, but it cannot store a key of more
# than about 470 bytes (the PUT fails with 503), and the tests need S3's 1,024.
write_config() {
    local file="$1" dir="$2" s3="$3" rpc="$4" admin="$5" replication="$6"
    local rpc_secret="$7" admin_token="$8" metrics_token="$9" peers="${10:-}" p bootstrap=""
    local db_engine="${BUCKETFS_GARAGE_DB:-sqlite}"
    [[ "$db_engine" == sqlite || "$db_engine" == lmdb ]] ||
        die "BUCKETFS_GARAGE_DB must be sqlite or lmdb, not '$db_engine'"
    for p in $peers; do
        bootstrap+="${bootstrap:+, }\"$p\""
    done
    (
        set -e
        umask 077
        cat >"$file" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "$db_engine"
replication_factor = $replication
compression_level = "none"

rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$rpc_secret"
${bootstrap:+bootstrap_peers = [$bootstrap]}

[s3_api]
s3_region = "$TEST_REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$admin_token"
metrics_token = "$metrics_token"
EOF
    ) || die "cannot write $file"
}

# The fixed test key and bucket, created through the node of $config.
setup_key_and_bucket() {
    run_g key import --yes "$TEST_KEY_ID" "$TEST_SECRET" -n "$TEST_KEY_NAME"
    run_g key allow --create-bucket "$TEST_KEY_NAME"
    run_g bucket create "$TEST_BUCKET"
    run_g bucket allow --read --write --owner "$TEST_BUCKET" --key "$TEST_KEY_NAME"
}

# write_env ENDPOINT CONFIG PID [EXTRA LINE...]: writes $state/env atomically and prints it.
write_env() {
    local line
    {
        printf 'export AWS_ENDPOINT_URL=%q\n' "$1"
        printf 'export AWS_ACCESS_KEY_ID=%q\n' "$TEST_KEY_ID"
        printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$TEST_SECRET"
        printf 'export AWS_REGION=%q\n' "$TEST_REGION"
        printf 'export BUCKETFS_TEST_BUCKET=%q\n' "$TEST_BUCKET"
        printf 'export GARAGE_BIN=%q\n' "$GARAGE_BIN"
        printf 'export GARAGE_CONFIG=%q\n' "$2"
        printf 'export GARAGE_PID=%q\n' "$3"
        printf 'export GARAGE_STATE_DIR=%q\n' "$state"
        for line in "${@:4}"; do
            printf '%s\n' "$line"
        done
    } >"$state/env.tmp" || die "cannot write $state/env.tmp"
    mv "$state/env.tmp" "$state/env" || die "cannot write $state/env"
    cat "$state/env"
}

# One start attempt on freshly picked ports. Returns 0 when the S3 API accepts
# signed requests, 3 on a port clash (server killed); dies on other failures.
try_start() {
    # A fresh cluster every time: drop what an earlier run left.
    rm -rf "$state/meta" "$state/data" "$state/env" "$state/garage.pid" ||
        die "cannot clean $state"
    mkdir -p "$state/meta" "$state/data" || die "cannot create $state/meta and $state/data"

    local ports
    ports="$(free_ports 3)" || die "could not pick free ports"
    read -r s3_port rpc_port admin_port <<<"$ports"
    write_config "$config" "$state" "$s3_port" "$rpc_port" "$admin_port" 1 \
        "$(random_hex 32)" "$(random_hex 32)" "$(random_hex 32)"

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
    setup_key_and_bucket

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
    running_here && die "a garage cluster is running from $state; run: $0 stop $state"
    rm -rf "$state"/node* "$state/cluster" || die "cannot clean $state"

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

    write_env "http://127.0.0.1:$s3_port" "$config" "$server_pid"
    log "garage started in $state (pid $server_pid, s3 127.0.0.1:$s3_port) in $((SECONDS - t0))s"
}

# is_garage PID: PID is a running garage process (not a recycled pid).
is_garage() { pid_alive "$1" && grep -qa garage "/proc/$1/cmdline" 2>/dev/null; }

# kill_garage PID WHAT: KILL, then wait up to 5s for it to be gone.
kill_garage() {
    local pid="$1" i
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    if pid_alive "$pid"; then die "$2 (pid $pid) is still running after KILL"; fi
}

# stop_pids PIDFILE...: stops the garage servers of these pid files (TERM to
# all, then KILL to those still running after 5s); removes the pid files.
stop_pids() {
    local f pid i alive
    local pids=()
    for f in "$@"; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f")"
        if is_garage "$pid"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    for ((i = 0; i < 50; i++)); do
        alive=""
        for pid in "${pids[@]}"; do
            pid_alive "$pid" && alive=1
        done
        [[ -n "$alive" ]] || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        pid_alive "$pid" || continue
        log "garage (pid $pid) ignored TERM for 5s; sending KILL"
        kill_garage "$pid" garage
    done
    rm -f "$@"
}

cmd_stop() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    local state="$1"
    local pidfiles=("$state/garage.pid")
    # A cluster: one pid file per node.
    pidfiles+=("$state"/node*/garage.pid)
    stop_pids "${pidfiles[@]}"
}

# Whether a garage server (or cluster node) started from $state is running.
running_here() {
    local f
    for f in "$state/garage.pid" "$state"/node*/garage.pid; do
        [[ -f "$f" ]] && pid_alive "$(cat "$f")" && return 0
    done
    return 1
}

cmd_resume() {
    [[ $# -eq 1 && -n "$1" && -f "$1/env" ]] || {
        usage
        exit 2
    }
    state="$(cd "$1" && pwd)"
    if [[ -f "$state/cluster" ]]; then
        local i n
        local stopped=()
        n="$(cluster_size)"
        for ((i = 1; i <= n; i++)); do
            node_running "$i" || stopped+=("$i")
        done
        [[ ${#stopped[@]} -eq 0 ]] || resume_nodes "${stopped[@]}"
        return 0
    fi
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

# ---- clusters ----
#
# STATE_DIR/cluster holds N; node I (1-based) lives in STATE_DIR/nodeI/ with
# garage.toml, meta/, data/, garage.log, garage.pid, ports ("S3 RPC ADMIN")
# and id ("NODE_ID@127.0.0.1:RPC_PORT").

# Garage CLI against node I of the cluster in $state: gn I ARGS...
gn() {
    local i="$1"
    shift
    timeout 20 "$GARAGE_BIN" -c "$state/node$i/garage.toml" "$@"
}

cluster_size() {
    local n
    n="$(cat "$state/cluster" 2>/dev/null)" || die "$state holds no cluster (no $state/cluster)"
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "bad node count in $state/cluster: '$n'"
    echo "$n"
}

# node_port I s3|rpc|admin
node_port() {
    local s3 rpc admin
    read -r s3 rpc admin <"$state/node$1/ports" || die "no ports of node $1 in $state"
    case "$2" in
    s3) echo "$s3" ;;
    rpc) echo "$rpc" ;;
    admin) echo "$admin" ;;
    *) die "node_port: bad port name '$2'" ;;
    esac
}

node_pid() {
    cat "$state/node$1/garage.pid" 2>/dev/null
}

node_running() {
    local pid
    pid="$(node_pid "$1")" && pid_alive "$pid"
}

# start_node I: runs node I's server in the background (log appended); records its pid.
start_node() {
    local dir="$state/node$1" pid
    "$GARAGE_BIN" -c "$dir/garage.toml" server >>"$dir/garage.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/garage.pid" || die "cannot write $dir/garage.pid"
}

# SIGKILLs every node of the cluster being started (on failure half-way).
kill_cluster() {
    local f pid
    for f in "$state"/node*/garage.pid; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f")"
        if pid_alive "$pid"; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
        rm -f "$f"
    done
}

cluster_cleanup() {
    local rc=$?
    [[ $rc -eq 0 ]] || kill_cluster
}

# node_health I: node I's view of the cluster as "STATUS CONNECTED STORAGE_UP"
# (GetClusterHealth through the admin RPC; needs no admin token).
node_health() {
    gn "$1" json-api GetClusterHealth 2>/dev/null | python3 -c '
import json, sys
h = json.load(sys.stdin)
print(h["status"], h["connectedNodes"], h["storageNodesUp"])'
}

# node_s3_ok I: a signed ListObjectsV2 on node I succeeds.
node_s3_ok() {
    local s3_port
    s3_port="$(node_port "$1" s3)"
    signed_request -sf -o /dev/null
}

# node_answers I: node I answers `garage status`.
node_answers() { gn "$1" status >/dev/null 2>&1; }

# node_sees_all_healthy I: node I reports the cluster healthy with all $n
# nodes connected and up (sets $health; $n is the caller's).
node_sees_all_healthy() {
    local status connected up
    health="$(node_health "$1")" || health=""
    read -r status connected up <<<"$health"
    [[ "$status" == healthy && "$connected" == "$n" && "$up" == "$n" ]]
}

# wait_nodes N TIMEOUT INTERVAL PROBE: for each node I of 1..N in turn,
# polls `PROBE I` every INTERVAL seconds until it succeeds, all within
# TIMEOUT seconds. Returns 0; 3 on a port clash (all nodes killed); 1 with
# $failed set to the node that died or never passed.
wait_nodes() {
    local n="$1" interval="$3" probe="$4" i ok deadline=$((SECONDS + $2))
    for ((i = 1; i <= n; i++)); do
        ok=""
        while ((SECONDS < deadline)); do
            node_running "$i" || break
            port_clash && break
            if "$probe" "$i"; then
                ok=1
                break
            fi
            sleep "$interval"
        done
        if port_clash; then
            kill_cluster
            return 3
        fi
        if [[ -z "$ok" ]]; then
            failed="$i"
            return 1
        fi
    done
}

# One cluster start attempt on freshly picked ports. Returns 0 when the
# cluster is healthy and S3 answers on every node, 3 on a port clash (all
# nodes killed); dies on other failures.
try_start_cluster() {
    local n="$1" i dir
    rm -rf "$state"/node* "$state/env" "$state/cluster" || die "cannot clean $state"

    local ports=()
    read -ra ports <<<"$(free_ports $((3 * n)))" || die "could not pick free ports"
    [[ ${#ports[@]} -eq $((3 * n)) ]] || die "could not pick $((3 * n)) free ports"
    local replication=$((n < 3 ? n : 3))
    local rpc_secret admin_token metrics_token
    rpc_secret="$(random_hex 32)"
    admin_token="$(random_hex 32)"
    metrics_token="$(random_hex 32)"
    for ((i = 1; i <= n; i++)); do
        dir="$state/node$i"
        mkdir -p "$dir/meta" "$dir/data" || die "cannot create $dir/meta and $dir/data"
        local s3="${ports[3 * i - 3]}" rpc="${ports[3 * i - 2]}" admin="${ports[3 * i - 1]}"
        echo "$s3 $rpc $admin" >"$dir/ports" || die "cannot write $dir/ports"
        write_config "$dir/garage.toml" "$dir" "$s3" "$rpc" "$admin" "$replication" \
            "$rpc_secret" "$admin_token" "$metrics_token"
    done
    echo "$n" >"$state/cluster" || die "cannot write $state/cluster"
    for ((i = 1; i <= n; i++)); do
        start_node "$i"
    done

    # 1. Every node answers on RPC.
    local failed rc
    wait_nodes "$n" "$START_TIMEOUT" 0.2 node_answers || {
        rc=$?
        ((rc == 3)) && return 3
        log_tail
        node_running "$failed" || die "garage node $failed exited during startup"
        die "garage node $failed did not answer 'garage status' within ${START_TIMEOUT}s"
    }

    # 2. Connect every node to node 1; one layout with every node in its own zone.
    local ids=() id
    for ((i = 1; i <= n; i++)); do
        id="$(gn "$i" node id -q 2>/dev/null)" || {
            log_tail
            die "garage node id failed on node $i"
        }
        [[ "$id" =~ ^[0-9a-f]{64}@127\.0\.0\.1:[0-9]+$ ]] || die "unexpected node id of node $i: '$id'"
        ids[i]="$id"
        echo "$id" >"$state/node$i/id" || die "cannot write $state/node$i/id"
    done
    config="$state/node1/garage.toml" # for run_g
    for ((i = 2; i <= n; i++)); do
        run_g node connect "${ids[i]}"
    done
    # Garage saves the addresses of its peers (meta/peer_list) only once a
    # minute: a cluster stopped sooner would not find itself again on resume.
    # So each config also names the other nodes as bootstrap_peers (read on
    # the next start; the running servers are not affected).
    local j others
    for ((i = 1; i <= n; i++)); do
        others=""
        for ((j = 1; j <= n; j++)); do
            ((j == i)) || others+=" ${ids[j]}"
        done
        write_config "$state/node$i/garage.toml" "$state/node$i" "${ports[3 * i - 3]}" \
            "${ports[3 * i - 2]}" "${ports[3 * i - 1]}" "$replication" \
            "$rpc_secret" "$admin_token" "$metrics_token" "$others"
    done
    for ((i = 1; i <= n; i++)); do
        run_g layout assign -z "dc$i" -c 10G "${ids[i]%%@*}"
    done
    run_g layout apply --version 1

    # 3. Healthy as seen from every node: all nodes connected and up, every
    # partition with all its copies (so every node also has the layout).
    local health=""
    wait_nodes "$n" "$CLUSTER_TIMEOUT" 0.5 node_sees_all_healthy || {
        rc=$?
        ((rc == 3)) && return 3
        gn "$failed" status >&2 || true
        log_tail
        die "garage cluster not healthy as seen from node $failed within ${CLUSTER_TIMEOUT}s (health: '${health:-}')"
    }

    # 4. Key and bucket, through node 1.
    setup_key_and_bucket

    # 5. S3 accepts signed requests on every node.
    wait_nodes "$n" "$START_TIMEOUT" 0.2 node_s3_ok || {
        rc=$?
        ((rc == 3)) && return 3
        local s3_port
        s3_port="$(node_port "$failed" s3)"
        signed_request -sS >&2 || true
        echo >&2
        log_tail
        die "S3 API of node $failed (127.0.0.1:$s3_port) did not accept a signed request within ${START_TIMEOUT}s"
    }
}

cmd_start_cluster() {
    [[ $# -eq 2 && -n "$1" && "$2" =~ ^[1-9][0-9]*$ ]] || {
        usage
        exit 2
    }
    local n="$2"
    ((n <= 16)) || die "at most 16 nodes"
    mkdir -p "$1" || die "cannot create state dir $1"
    state="$(cd "$1" && pwd)"
    garage_ok || die "garage $GARAGE_VERSION not found at $GARAGE_BIN; run: $0 install"
    command -v curl >/dev/null || die "curl not found"
    command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"
    running_here && die "garage is already running from $state; run: $0 stop $state"
    rm -f "$state/garage.pid" "$state/garage.toml" "$state/garage.log"
    rm -rf "$state/meta" "$state/data"

    trap cluster_cleanup EXIT
    local t0=$SECONDS attempt rc=3 i
    for attempt in 1 2 3; do
        rc=0
        try_start_cluster "$n" || rc=$?
        [[ $rc -eq 3 ]] || break
        log "port clash on attempt $attempt; retrying on other ports"
    done
    [[ $rc -eq 0 ]] || die "garage cluster could not start: ports kept clashing"

    local endpoints=()
    for ((i = 1; i <= n; i++)); do
        endpoints+=("http://127.0.0.1:$(node_port "$i" s3)")
    done
    local joined
    joined="$(
        IFS=,
        echo "${endpoints[*]}"
    )"
    write_env "${endpoints[0]}" "$state/node1/garage.toml" "$(node_pid 1)" \
        "export BUCKETFS_CLUSTER_ENDPOINTS=$joined" \
        "export GARAGE_CLUSTER_NODES=$n"
    log "garage cluster of $n node(s) started in $state (s3 $joined) in $((SECONDS - t0))s"
}

# node_arg STATE_DIR I: sets $state and validates node number I.
node_arg() {
    [[ -n "$1" && -d "$1" && "$2" =~ ^[1-9][0-9]*$ ]] || {
        usage
        exit 2
    }
    state="$(cd "$1" && pwd)"
    local n
    n="$(cluster_size)"
    (($2 <= n)) || die "no node $2 in the $n-node cluster of $state"
}

cmd_kill_node() {
    [[ $# -eq 2 ]] || {
        usage
        exit 2
    }
    node_arg "$1" "$2"
    local i="$2" pid
    pid="$(node_pid "$i")" || return 0
    if is_garage "$pid"; then
        kill_garage "$pid" "garage node $i"
    fi
    rm -f "$state/node$i/garage.pid"
    break_connections_to "$i"
}

# break_connections_to I: makes every running node drop its connection to the
# killed node I now. A Garage node notices that a peer died only when it
# writes twice to its outgoing connection to it (the first write only draws a
# reset); until its next ping, RPCs to the dead peer hang (seen: a GET through
# a surviving node stalled for 7 s). Two RPCs to node I from each running node
# (the admin API's GetNodeInfo, proxied to node I) break it in ~0.3 s.
break_connections_to() {
    local dead="$1" id j n payload
    id="$(cat "$state/node$dead/id" 2>/dev/null)" || return 0
    payload="{\"node\":\"${id%%@*}\",\"body\":null}"
    n="$(cluster_size)"
    for ((j = 1; j <= n; j++)); do
        ((j != dead)) && node_running "$j" || continue
        (
            config="$state/node$j/garage.toml"
            timeout 5 "$GARAGE_BIN" -c "$config" json-api GetNodeInfo "$payload" &
            sleep 0.2
            timeout 5 "$GARAGE_BIN" -c "$config" json-api GetNodeInfo "$payload"
            wait
        ) >/dev/null 2>&1 &
    done
    wait
}

# resume_nodes I...: starts these nodes of the cluster in $state again (all
# first: a lone node has no quorum); then waits until each one's S3 API
# answers and it is connected to every node that runs.
resume_nodes() {
    local i pid deadline health="" status="" connected="" up="" want j n ok
    n="$(cluster_size)"
    for i in "$@"; do
        node_running "$i" && die "garage node $i is already running from $state"
    done
    for i in "$@"; do
        start_node "$i"
    done
    for i in "$@"; do
        pid="$(node_pid "$i")"
        deadline=$((SECONDS + START_TIMEOUT))
        ok=""
        while ((SECONDS < deadline)); do
            pid_alive "$pid" || break
            if node_s3_ok "$i"; then
                ok=1
                break
            fi
            sleep 0.2
        done
        if [[ -n "$ok" ]]; then
            ok=""
            deadline=$((SECONDS + CLUSTER_TIMEOUT))
            while ((SECONDS < deadline)); do
                pid_alive "$pid" || break
                want=0
                for ((j = 1; j <= n; j++)); do
                    node_running "$j" && want=$((want + 1))
                done
                health="$(node_health "$i")" || health=""
                read -r status connected up <<<"$health"
                if [[ -n "${connected:-}" ]] && ((connected >= want)); then
                    ok=1
                    break
                fi
                sleep 0.2
            done
        fi
        if [[ -z "$ok" ]]; then
            log_tail
            for j in "$@"; do
                kill -KILL "$(node_pid "$j")" 2>/dev/null || true
                rm -f "$state/node$j/garage.pid"
            done
            die "garage node $i did not come back in $state"
        fi
        if ((i == 1)) && [[ -f "$state/env" ]]; then
            sed -i "s/^export GARAGE_PID=.*/export GARAGE_PID=$pid/" "$state/env"
        fi
        log "garage node $i resumed in $state (pid $pid, health: $status, $connected nodes connected)"
    done
}

cmd_resume_node() {
    [[ $# -eq 2 ]] || {
        usage
        exit 2
    }
    node_arg "$1" "$2"
    resume_nodes "$2"
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
start-cluster)
    shift
    cmd_start_cluster "$@"
    ;;
kill-node)
    shift
    cmd_kill_node "$@"
    ;;
resume-node)
    shift
    cmd_resume_node "$@"
    ;;
-h | --help | help)
    usage
    ;;
*)
    usage
    exit 2
    ;;
esac
