#!/usr/bin/env bash
# Run a throw-away single-node Ceph RGW S3 server on loopback for tests.
#
#   scripts/ceph.sh install          install the Debian packages (radosgw ceph-mon ceph-osd) if missing
#   scripts/ceph.sh start STATE_DIR  start a fresh node (data in RAM) in STATE_DIR; print STATE_DIR/env
#   scripts/ceph.sh stop STATE_DIR   stop every daemon started from STATE_DIR (idempotent)
#
# One monitor, one OSD on memstore (objects live in the OSD's memory), one
# radosgw; no manager and no authentication between them (cephx off). Every
# daemon binds to 127.0.0.1 only, and every config, data, socket, pid and log
# file is under STATE_DIR, so several instances can run at once and nothing
# touches /etc/ceph or /var/lib/ceph.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(radosgw ceph-mon ceph-osd)
# The programs the script runs (from radosgw, ceph-mon, ceph-osd, ceph-base, ceph-common).
PROGRAMS=(ceph ceph-mon ceph-osd monmaptool radosgw radosgw-admin)

# A PUBLIC, fixed test key. It only ever grants access to a throw-away RGW
# bound to 127.0.0.1 that this script started; it is not a secret, which is
# why it may appear on command lines. (Access key id: 20 characters, secret:
# 40, as AWS shapes them; the secret is the hex of "bucketfs-ceph-secret".)
TEST_KEY_ID="BUCKETFSTESTCEPHKEY1"
TEST_SECRET="6275636b657466732d636570682d736563726574"
TEST_USER="bucketfs-test"
TEST_BUCKET="bucketfs-test"
TEST_REGION="us-east-1"

# The OSD's capacity (memstore: objects live in its memory, and it takes
# about twice the bytes it stores; measured on 16.2.15). RAM is taken only
# as objects are stored. Tests leave their buckets behind and store objects
# of up to 100 MiB; aborted uploads and overwritten objects hold their RAM
# until RGW's garbage collection (see rgw gc below). Near full (95%) the
# OSD stops taking writes and requests wait, so the cap is generous.
MEMSTORE_BYTES="${BUCKETFS_CEPH_MEMSTORE_BYTES:-$((4 << 30))}"

START_TIMEOUT=60 # seconds, for each step of start
STOP_TIMEOUT=5   # seconds between TERM and KILL

usage() {
    cat >&2 <<EOF
usage: ${0##*/} install
       ${0##*/} start STATE_DIR
       ${0##*/} stop STATE_DIR

  install           install the Debian packages ${PACKAGES[*]} when a program is
                    missing (as root; quiet)
  start STATE_DIR   start a fresh single-node Ceph (monitor, memstore OSD, radosgw) on free
                    127.0.0.1 ports with user '$TEST_USER', a fixed test key and bucket
                    '$TEST_BUCKET'; wait until a signed S3 request succeeds; write and
                    print STATE_DIR/env
  stop STATE_DIR    stop every daemon started from STATE_DIR (TERM, then KILL after
                    ${STOP_TIMEOUT}s); keeps STATE_DIR

Environment: BUCKETFS_CEPH_MEMSTORE_BYTES  the OSD's capacity in RAM (default $((4 << 30)))
EOF
}

missing_programs() {
    local p
    for p in "${PROGRAMS[@]}"; do
        command -v "$p" >/dev/null || printf '%s\n' "$p"
    done
}

cmd_install() {
    [[ -z "$(missing_programs)" ]] && return 0
    [[ $EUID -eq 0 ]] ||
        die "missing $(missing_programs | tr '\n' ' ')- run as root or: sudo apt-get install -y ${PACKAGES[*]}"
    command -v apt-get >/dev/null || die "apt-get not found; install ${PACKAGES[*]} (Ceph) by hand"
    log "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "${PACKAGES[@]}" >&2 || die "apt-get install ${PACKAGES[*]} failed"
    [[ -z "$(missing_programs)" ]] ||
        die "still missing after install: $(missing_programs | tr '\n' ' ')"
}

# The ceph CLI against the instance in $state.
c() {
    timeout 30 ceph -c "$state/ceph.conf" --connect-timeout 20 "$@"
}

log_tail() {
    local f
    for f in "$state"/log/*.log "$state"/log/*.out; do
        [[ -s "$f" ]] || continue
        printf '%s\n' "--- last lines of $f ---" >&2
        tail -n 20 "$f" >&2 2>/dev/null || true
    done
}

# run_q DESCRIPTION CMD...: runs CMD; on failure shows its output and the logs, and dies.
run_q() {
    local what="$1" out
    shift
    if ! out="$("$@" 2>&1)"; then
        printf '%s\n' "$out" >&2
        log_tail
        die "failed: $what"
    fi
}

# A daemon failed to bind its port (it then exits).
port_clash() {
    grep -qs "Address already in use" "$state"/log/*.log "$state"/log/*.out
}

# is_ours PID: PID is a running process started with -c $state/ceph.conf
# (not a recycled pid, nor another instance's daemon).
is_ours() {
    local pid="$1"
    pid_alive "$pid" || return 1
    { tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qxF -- "$state/ceph.conf"
}

# Pids of the daemons (and stray CLI calls) of $state: from the pid files
# STATE_DIR/{mon,osd,rgw}.pid, and any process started with -c STATE_DIR/ceph.conf
# (in case the script died between starting a daemon and recording its pid).
our_pids() {
    local f pid
    {
        for f in "$state"/mon.pid "$state"/osd.pid "$state"/rgw.pid; do
            [[ -f "$f" ]] && cat "$f" 2>/dev/null
        done
        for f in /proc/[0-9]*/cmdline; do
            pid="${f#/proc/}"
            pid="${pid%/cmdline}"
            [[ $pid -ne $$ ]] || continue
            { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qxF -- "$state/ceph.conf" && echo "$pid"
        done
    } | sort -un | while read -r pid; do
        is_ours "$pid" && echo "$pid"
    done
    return 0
}

# stop_pids PID...: TERM to these processes, KILL to those still running
# after STOP_TIMEOUT seconds.
# gone_within TENTHS PID...: true once none of these processes runs, checked
# every 0.1 s for at most TENTHS tenths of a second.
gone_within() {
    local tenths="$1" pid i alive
    shift
    for ((i = 0; i < tenths; i++)); do
        alive=""
        for pid in "$@"; do
            pid_alive "$pid" && alive=1
        done
        [[ -n "$alive" ]] || return 0
        sleep 0.1
    done
    return 1
}

stop_pids() {
    local pid
    [[ $# -gt 0 ]] || return 0
    kill -TERM "$@" 2>/dev/null || true
    gone_within $((STOP_TIMEOUT * 10)) "$@" && return 0
    for pid in "$@"; do
        pid_alive "$pid" || continue
        log "pid $pid ($({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-60)) ignored TERM for ${STOP_TIMEOUT}s; sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
    gone_within 50 "$@" && return 0
    die "processes of $state still running after KILL: $*"
}

# stop_all: stops every daemon of $state, one after the other, each in time:
# radosgw (its shutdown needs the OSD), the OSD (it stops as soon as the
# monitor acknowledges; it waits for a monitor that is gone), the monitor.
# Then any other process started with this config. Removes the pid files.
stop_all() {
    local pids=() pid name f rest=()
    mapfile -t pids < <(our_pids)
    for name in rgw osd mon; do
        f="$state/$name.pid"
        [[ -f "$f" ]] || continue
        pid="$(cat "$f" 2>/dev/null)" || continue
        is_ours "$pid" && stop_pids "$pid"
    done
    for pid in "${pids[@]}"; do
        pid_alive "$pid" && rest+=("$pid")
    done
    stop_pids "${rest[@]}"
    rm -f "$state"/mon.pid "$state"/osd.pid "$state"/rgw.pid
}

# Kills the daemons being started if cmd_start fails half-way.
start_cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        STOP_TIMEOUT=1
        stop_all || true
    fi
}

# write_config MON_PORT RGW_PORT FSID
write_config() {
    local mon="$1" rgw="$2" fsid="$3" s="$state"
    cat >"$s/ceph.conf" <<EOF || die "cannot write $s/ceph.conf"
# Written by ${0##*/} for a throw-away single-node test cluster.
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = $s/keyring
run dir = $s/run
crash dir = $s/crash
log file = $s/log/\$name.log
pid file = $s/run/\$name.pid
mon cluster log file = $s/log/cluster.log
log to syslog = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
# Commit monitor changes at once, not after 1 s each (RGW's first start
# creates pools in a dozen osdmap changes).
paxos propose interval = 0.01
paxos min wait = 0.01

[mon]
mon data = $s/mon
admin socket = $s/run/\$name.asok
# do not shut down when the disk under STATE_DIR is nearly full
mon data avail crit = 0

[osd]
osd data = $s/osd
admin socket = $s/run/\$name.asok
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
# With auth none the OSD may send these mon commands before it has the
# monmap ("wrong fsid") and exit; the script places it in the crush map.
osd crush update on start = false
osd class update on start = false
# on stop, wait at most 1 s (not 5) for a monitor that is already gone
osd mon shutdown timeout = 1

[client.rgw.a]
admin socket = $s/run/\$name.asok
rgw data = $s/rgw
rgw frontends = beast endpoint=127.0.0.1:$rgw
# no rgw dns name: path-style requests only
rgw user max buckets = 0
# lifecycle and resharding threads delay shutdown and do nothing useful here
rgw enable lc threads = false
rgw dynamic resharding = false
# free the RAM of deleted and overwritten objects and aborted uploads within
# minutes, not hours
rgw gc obj min wait = 120
rgw gc processor period = 60
# allow SSE-C over plain http (tests only)
rgw crypt require ssl = false
EOF
}

# SHA-256 of the empty body, for x-amz-content-sha256 (--aws-sigv4 of Debian
# 12's curl, 7.88, does not add it by itself).
EMPTY_SHA256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# s3_request METHOD PATH [CURL ARGS...]: a SigV4-signed request to the RGW.
s3_request() {
    local method="$1" path="$2"
    shift 2
    curl --max-time 5 --aws-sigv4 "aws:amz:$TEST_REGION:s3" \
        --user "$TEST_KEY_ID:$TEST_SECRET" -H "x-amz-content-sha256: $EMPTY_SHA256" \
        -X "$method" "$@" "http://127.0.0.1:$rgw_port$path"
}

# start_daemon NAME CMD...: runs CMD in the background (output in
# log/NAME.out); records its pid in STATE_DIR/NAME.pid.
start_daemon() {
    local name="$1"
    shift
    "$@" >>"$state/log/$name.out" 2>&1 </dev/null &
    echo "$!" >"$state/$name.pid" || die "cannot write $state/$name.pid"
}

daemon_alive() {
    [[ -f "$state/$1.pid" ]] && pid_alive "$(cat "$state/$1.pid")"
}

# wait_for WHAT DAEMON PROBE...: polls PROBE until it succeeds; returns 3 on a
# port clash; dies when DAEMON exits or after START_TIMEOUT seconds.
wait_for() {
    local what="$1" daemon="$2" deadline=$((SECONDS + START_TIMEOUT))
    shift 2
    while ((SECONDS < deadline)); do
        port_clash && return 3
        daemon_alive "$daemon" || {
            port_clash && return 3
            log_tail
            die "ceph $daemon exited while waiting for $what"
        }
        "$@" && return 0
        sleep 0.1
    done
    log_tail
    die "timed out after ${START_TIMEOUT}s waiting for $what"
}

# mon_up: the monitor leads its quorum of one (asked through its admin socket;
# a monitor that cannot bind its port retries for 10 s, logging "Address
# already in use", which wait_for sees first).
mon_up() {
    timeout 5 ceph --admin-daemon "$state/run/mon.a.asok" mon_status 2>/dev/null |
        grep -q '"state": *"leader"'
}

osd_up() {
    c osd stat -f json 2>/dev/null | grep -q '"num_up_osds": *1[,}]'
}

rgw_answers() {
    curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$rgw_port/"
}

bucket_lists() {
    s3_request GET "/$TEST_BUCKET?list-type=2" -sf -o /dev/null
}

# One start attempt on freshly picked ports. Returns 0 when the S3 API
# accepts signed requests on the bucket, 3 on a port clash (daemons
# stopped); dies on other failures.
try_start() {
    stop_all
    rm -rf "$state/ceph.conf" "$state/monmap" "$state/mon" "$state/osd" "$state/rgw" \
        "$state/run" "$state/log" "$state/crash" "$state/env" "$state/env.tmp" ||
        die "cannot clean $state"
    mkdir -p "$state/mon" "$state/osd" "$state/rgw" "$state/run" "$state/log" "$state/crash" ||
        die "cannot create the directories in $state"

    local ports fsid osd_uuid rc=0
    ports="$(free_ports 2)" || die "could not pick free ports"
    read -r mon_port rgw_port <<<"$ports"
    fsid="$(cat /proc/sys/kernel/random/uuid)"
    osd_uuid="$(cat /proc/sys/kernel/random/uuid)"
    write_config "$mon_port" "$rgw_port" "$fsid"
    local conf=(-c "$state/ceph.conf")

    # 1. Monitor.
    run_q "monmaptool" monmaptool --create --fsid "$fsid" \
        --addv a "[v1:127.0.0.1:$mon_port]" "$state/monmap"
    run_q "ceph-mon --mkfs" ceph-mon "${conf[@]}" -i a --mkfs --monmap "$state/monmap"
    start_daemon mon ceph-mon "${conf[@]}" -i a -f
    wait_for "the monitor to form a quorum" mon mon_up || rc=$?
    [[ $rc -eq 0 ]] || return "$rc"

    # 2. OSD 0, placed in the crush map by hand (see ceph.conf).
    local id
    id="$(c osd new "$osd_uuid" 2>"$state/log/osd-new.err")" || {
        port_clash && return 3
        cat "$state/log/osd-new.err" >&2
        log_tail
        die "ceph osd new failed"
    }
    [[ "$id" == 0 ]] || die "ceph osd new gave id '$id', not 0"
    run_q "ceph osd crush add" c osd crush add osd.0 1.0 host=localhost root=default
    run_q "ceph-osd --mkfs" timeout 30 ceph-osd "${conf[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid"
    start_daemon osd ceph-osd "${conf[@]}" -i 0 -f
    wait_for "osd.0 up" osd osd_up || rc=$?
    [[ $rc -eq 0 ]] || return "$rc"

    # 3. RGW user (this creates the zone and the RGW pools), then the gateway.
    run_q "radosgw-admin user create" timeout 60 radosgw-admin "${conf[@]}" user create \
        --uid "$TEST_USER" --display-name "bucketfs tests" \
        --access-key "$TEST_KEY_ID" --secret-key "$TEST_SECRET" --max-buckets 0
    start_daemon rgw radosgw "${conf[@]}" -n client.rgw.a -f
    wait_for "radosgw to answer on 127.0.0.1:$rgw_port" rgw rgw_answers || rc=$?
    [[ $rc -eq 0 ]] || return "$rc"

    # 4. The bucket; then wait until a signed ListObjectsV2 on it succeeds.
    local out
    out="$(s3_request PUT "/$TEST_BUCKET" -sS -H "Content-Length: 0" -w '%{http_code}' -o "$state/log/create-bucket.out")" || true
    [[ "$out" == 200 ]] || {
        cat "$state/log/create-bucket.out" >&2 2>/dev/null || true
        echo >&2
        log_tail
        die "CreateBucket $TEST_BUCKET answered HTTP '$out'"
    }
    wait_for "a signed ListObjectsV2 on $TEST_BUCKET to succeed" rgw bucket_lists || rc=$?
    [[ $rc -eq 0 ]] || {
        s3_request GET "/$TEST_BUCKET?list-type=2" -sS >&2 || true
        return "$rc"
    }
}

# write_env ENDPOINT: writes $state/env atomically and prints it.
write_env() {
    {
        printf 'export AWS_ENDPOINT_URL=%q\n' "$1"
        printf 'export AWS_ACCESS_KEY_ID=%q\n' "$TEST_KEY_ID"
        printf 'export AWS_SECRET_ACCESS_KEY=%q\n' "$TEST_SECRET"
        printf 'export AWS_REGION=%q\n' "$TEST_REGION"
        printf 'export BUCKETFS_TEST_BUCKET=%q\n' "$TEST_BUCKET"
        printf 'export BUCKETFS_TEST_SERVER=%q\n' ceph
        printf 'export CEPH_STATE_DIR=%q\n' "$state"
    } >"$state/env.tmp" || die "cannot write $state/env.tmp"
    mv "$state/env.tmp" "$state/env" || die "cannot write $state/env"
    cat "$state/env"
}

cmd_start() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    mkdir -p "$1" || die "cannot create state dir $1"
    state="$(cd "$1" && pwd)"
    [[ -z "$(missing_programs)" ]] ||
        die "missing $(missing_programs | tr '\n' ' ')- run: $0 install"
    command -v curl >/dev/null || die "curl not found"
    command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"
    [[ "$MEMSTORE_BYTES" =~ ^[0-9]+$ ]] ||
        die "BUCKETFS_CEPH_MEMSTORE_BYTES must be a number of bytes, not '$MEMSTORE_BYTES'"
    [[ -z "$(our_pids)" ]] ||
        die "ceph is already running from $state; run: $0 stop $state"

    mon_port="" rgw_port=""
    trap start_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local t0=$SECONDS attempt rc=3
    for attempt in 1 2 3; do
        rc=0
        try_start || rc=$?
        [[ $rc -eq 3 ]] || break
        log "port clash on attempt $attempt; retrying on other ports"
        stop_all
    done
    [[ $rc -eq 0 ]] || die "ceph could not start: ports kept clashing"

    write_env "http://127.0.0.1:$rgw_port"
    trap - EXIT INT TERM # started: from now on only 'stop' stops it
    log "ceph started in $state (mon 127.0.0.1:$mon_port, s3 127.0.0.1:$rgw_port) in $((SECONDS - t0))s"
}

cmd_stop() {
    [[ $# -eq 1 && -n "$1" ]] || {
        usage
        exit 2
    }
    [[ -d "$1" ]] || return 0
    state="$(cd "$1" && pwd)"
    stop_all
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
