#!/usr/bin/env bash
# A benchmark, not a test: bucketfs against s3fs, rclone mount and direct
# boto3 on one throw-away Garage, in one run, so the ratios compare.
#
#   scripts/bench.sh [--quick] [--only bucketfs,bucketfs-signed,s3fs,rclone,boto3,floor]
#                    [--workloads write,read,cpr,rsync,list,write3g,retries,zip,inplace,sqlite]
#
# Workloads (each in a fresh mount; sources read from the page cache):
#   write 1G   cp of a 1 GiB file into the mount  (boto3: upload_file, 8 MiB parts, 4 threads)
#   read 1G    cat of it to /dev/null             (boto3: download_fileobj, 8 MiB ranges, 4 threads)
#   cp -r      cp -r of 500 files of 4 KiB
#   rsync -a   rsync -a of the same 500 files; then again on a fresh mount
#              ("rsync -a again": must transfer 0 files)
#   list       a directory of 10,000 objects on a fresh mount: ls -l, and find
#              (bucketfs-listing: ls -l again with --attrs-from-listing, no
#              HEAD per object)
#   zip -r     zip -r -0 of a 1 GiB tree (12 files of 80 MiB, 200 of 4 KiB):
#              Info-ZIP seeks back to patch each entry's header
#   inplace    rsync -I --inplace --no-whole-file of the 1 GiB file with 1 MiB
#              changed in its middle, onto the copy the write workload stored;
#              "local rsync --inplace" is the same between two local files
#              (the target: bucketfs <= 1.1 x (read 1G + local rsync)); "server
#              UploadPartCopy of 1G" is what the server takes to copy the
#              unchanged bytes into the new version (Garage copies them), so
#              the floor is the sum of the three
#   sqlite     python's sqlite3 in the mount: 20,000 rows inserted in one
#              transaction, then 2,000 autocommit inserts (a journal and an
#              fsync each)
#   write 3G   bucketfs only: peak RSS against the 1 GiB copy
#   bucketfs-signed: the 1 GiB write again with --payload-signing signed
#   (SHA-256 of every body) against the default UNSIGNED-PAYLOAD + Content-MD5
#   retries    bucketfs only: the 1 GiB write through the tests' fault proxy
#              (examples/faultproxy.rs), without faults and with 20% of
#              UploadParts failing (500, reset, stall in equal shares): the
#              cost of retries
#   floor      the server's own floor for cp -r, rsync -a and ls -l: the
#              requests a mount cannot avoid, sent with no file system in the
#              way by bucketfs's S3 client (examples/floor.rs): 500 PUTs one
#              after another; 500 times PUT, CopyObject, DeleteObject; a
#              listing and 10,000 HEADs, 64 at a time. Not a tool: its rows
#              are not the "fastest", but show their ratio to it.
# BUCKETFS_BENCH_ARGS adds arguments to every bucketfs mount (e.g. to try
# --max-parts-in-flight 8). BUCKETFS_GARAGE_DB=lmdb runs Garage on its own
# default engine instead of the tests' sqlite (see scripts/garage.sh): about
# half the server CPU per small request, so every tool gets faster.
# For each: wall seconds, ratio to the fastest, the daemon's CPU seconds and
# peak RSS (VmHWM), the most bytes of local files it held (sampled from
# /proc/PID/fd every 0.1 s), and whether S3 shows the expected objects.
# Prints one markdown table (paste it into docs/BENCHMARKS.md).
#
# Needs: fuse3, s3fs, rclone (apt-get install fuse3 s3fs rclone rsync), and
# root for the FUSE mounts. --quick uses 256 MiB instead of 1 GiB.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$BUCKETFS_REPO"

only="bucketfs,bucketfs-signed,s3fs,rclone,boto3,floor"
big=$((1024 * 1024 * 1024))
workloads="write,read,cpr,rsync,list,write3g,retries,zip,inplace,sqlite"
while (($#)); do
    case "$1" in
        --quick) big=$((256 * 1024 * 1024)) ;;
        --only) only="$2"; shift ;;
        --workloads) workloads="$2"; shift ;;
        -h | --help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
    shift
done
wants() { [[ ",$only," == *",$1,"* ]]; }
does() { [[ ",$workloads," == *",$1,"* ]]; }
for t in s3fs rclone; do
    if wants "$t" && ! command -v "$t" >/dev/null; then
        die "$t is not installed (apt-get install $t), or leave it out with --only"
    fi
done

log "building bucketfs (release)"
cargo build --release --quiet
if wants floor; then cargo build --release --quiet --example floor; fi
bin="$BUCKETFS_REPO/target/release/bucketfs"
scripts/garage.sh install >/dev/null
ensure_venv
py() { "$BUCKETFS_PYTHON" "$BUCKETFS_REPO/scripts/bench_boto3.py" "$@"; }

work="$(mktemp -d "${TMPDIR:-/tmp}/bucketfs-bench.XXXXXX")"
state="$work/garage"
mnt="$work/mnt"
src="$work/src"
results="$work/results"
mkdir -p "$state" "$mnt" "$src/small"
daemon_pid=""
cleanup() {
    if [[ -n "$daemon_pid" ]]; then
        fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        kill "$daemon_pid" 2>/dev/null || true
    fi
    scripts/garage.sh stop "$state" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

scripts/garage.sh start "$state" >/dev/null
# shellcheck source=/dev/null
source "$state/env"
log "garage at $AWS_ENDPOINT_URL; work dir $work"

log "making the source files"
head -c "$big" /dev/urandom >"$src/big"
if does write3g && wants bucketfs; then
    for _ in 1 2 3; do cat "$src/big"; done >"$src/big3"
fi
for i in $(seq -w 1 500); do head -c 4096 /dev/urandom >"$src/small/f$i"; done
if does zip; then
    mkdir -p "$src/tree/small"
    for i in $(seq -w 1 12); do head -c $((big / 1024 * 80)) /dev/urandom >"$src/tree/f$i"; done
    for i in $(seq -w 1 200); do head -c 4096 /dev/urandom >"$src/tree/small/s$i"; done
    (cd "$src" && zip -q -r -0 "$work/ref.zip" tree)
fi
if does inplace; then
    cp "$src/big" "$src/big.changed"
    head -c $((1024 * 1024)) /dev/urandom | dd of="$src/big.changed" bs=1M seek=$((big / 2 / 1024 / 1024)) conv=notrunc status=none
fi
# A fresh Garage spends ~40% more CPU on its first GiB (it creates its block
# directories): one unmeasured upload first, so whichever tool comes first
# is not penalized.
log "warming Garage up with one unmeasured upload"
py mb bench-warmup
py put bench-warmup warm "$src/big" >/dev/null

mounted() { grep -q " $mnt " /proc/self/mountinfo; }

# start_daemon TOOL BUCKET: mounts BUCKET at $mnt in the foreground (in the
# background of this script) and sets daemon_pid.
start_daemon() {
    local tool="$1" bucket="$2"
    case "$tool" in
        bucketfs*)
            local extra=()
            [[ "$tool" == bucketfs-signed ]] && extra=(--payload-signing signed)
            [[ "$tool" == bucketfs-listing ]] && extra=(--attrs-from-listing)
            [[ "$tool" == bucketfs-proxy* ]] && extra=("${proxy_args[@]}")
            # shellcheck disable=SC2086 # word splitting of the extra arguments is wanted
            "$bin" mount "$bucket" "$mnt" --foreground "${extra[@]}" ${BUCKETFS_BENCH_ARGS:-} 2>"$work/$tool.log" &
            ;;
        s3fs)
            printf '%s:%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$work/s3fs.passwd"
            chmod 600 "$work/s3fs.passwd"
            s3fs "$bucket" "$mnt" -f -o "passwd_file=$work/s3fs.passwd" \
                -o "url=$AWS_ENDPOINT_URL" -o use_path_request_style -o endpoint=us-east-1 \
                2>"$work/$tool.log" &
            ;;
        rclone)
            # rclone cannot add AWS_CA_BUNDLE to its transport (and needs none for http).
            env -u AWS_CA_BUNDLE RCLONE_CONFIG_G_TYPE=s3 RCLONE_CONFIG_G_PROVIDER=Other \
                RCLONE_CONFIG_G_ENDPOINT="$AWS_ENDPOINT_URL" RCLONE_CONFIG_G_REGION=us-east-1 \
                RCLONE_CONFIG_G_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
                RCLONE_CONFIG_G_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" \
                RCLONE_CONFIG_G_FORCE_PATH_STYLE=true \
                rclone mount "g:$bucket" "$mnt" --vfs-cache-mode off 2>"$work/$tool.log" &
            ;;
    esac
    daemon_pid=$!
    local deadline=$((SECONDS + 30))
    until mounted && ls "$mnt" >/dev/null 2>&1; do
        pid_alive "$daemon_pid" || { cat "$work/$tool.log" >&2; die "$tool exited before mounting"; }
        ((SECONDS < deadline)) || die "$tool did not mount within 30 s"
        sleep 0.1
    done
}

stop_daemon() {
    fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while pid_alive "$daemon_pid" && ((SECONDS < deadline)); do sleep 0.1; done
    pid_alive "$daemon_pid" && kill -9 "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
}

# sample PID OUT: until killed, records in OUT the most bytes of regular
# local files (deleted ones too) PID holds open.
sample() {
    local pid="$1" out="$2" max=0 sum fd fds kind blocks bsize
    echo 0 >"$out"
    while pid_alive "$pid"; do
        sum=0 fds=()
        for fd in /proc/"$pid"/fd/*; do
            # 0-2 are the terminal or the log file this script gave it.
            case "${fd##*/}" in 0 | 1 | 2) ;; *) fds+=("$fd") ;; esac
        done
        # One stat for all of them: a process per descriptor took a good
        # part of a core from the daemon being measured (boto3 runs unsampled).
        if ((${#fds[@]})); then
            while IFS='|' read -r kind blocks bsize; do
                [[ "$kind" == regular* ]] && sum=$((sum + blocks * bsize))
            done < <(stat -L -c '%F|%b|%B' "${fds[@]}" 2>/dev/null)
        fi
        if ((sum > max)); then max=$sum; echo "$max" >"$out"; fi
        sleep 0.1
    done
}

cpu_seconds() { # utime + stime of PID, in seconds
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13) / hz }' "/proc/$1/stat"
}
vm_hwm_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

now() { date +%s.%N; }
# Sources come from the page cache (so local disk speed is out of the
# comparison); every workload gets a fresh mount, so nothing of the bucket is
# cached by the kernel or the daemon.
# Each measurement also starts after `sync`: Garage's writes of the previous
# workload are flushed, so no tool pays for another's disk writeback.
warm_sources() {
    cat "$src"/big "$src"/small/* >/dev/null
    if [[ -d "$src/tree" ]]; then cat "$src"/tree/f* >/dev/null; fi
    sync
}

# record WORKLOAD TOOL SECONDS CPU HWM_MIB LOCAL_BYTES CHECK
record() { echo "$*" >>"$results"; }

# mount_run TOOL BUCKET WORKLOAD CHECK_CMD -- COMMAND...: runs COMMAND (in
# $mnt) against a fresh mount and records it.
mount_run() {
    local tool="$1" bucket="$2" workload="$3" check="$4"
    shift 5
    warm_sources
    start_daemon "$tool" "$bucket"
    sample "$daemon_pid" "$work/local" &
    local sampler=$! t0 t1 ok=ok
    t0="$(now)"
    if ! (cd "$mnt" && "$@") >"$work/out" 2>&1; then
        ok="FAILED: $(head -c 100 "$work/out" | tr '\n|' '  ')"
    fi
    t1="$(now)"
    local cpu hwm
    cpu="$(cpu_seconds "$daemon_pid")"
    hwm="$(vm_hwm_mib "$daemon_pid")"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    stop_daemon
    if [[ "$ok" == ok ]] && ! eval "$check"; then ok="wrong objects"; fi
    record "$workload|$tool|$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')|$cpu|$hwm|$(cat "$work/local")|$ok"
    log "$workload $tool: $(tail -n1 "$results")"
}

big_ok() { [[ "$(py size "$1" big)" == "$big" ]]; }
small_ok() { [[ "$(py count "$1" "$2/")" == 500 ]]; }

if wants bucketfs-signed && does write; then
    py mb bench-signed
    mount_run bucketfs-signed bench-signed "write 1G" "big_ok bench-signed" -- cp "$src/big" big
fi

if does retries && wants bucketfs; then
    cargo build --release --quiet --example faultproxy
    for share in 0 0.2; do
        py mb "bench-retries-${share/./}"
        rm -f "$work/pin" "$work/purl"
        mkfifo "$work/pin"
        target/release/examples/faultproxy "$AWS_ENDPOINT_URL" "$share" <"$work/pin" >"$work/purl" 2>"$work/pstats" &
        proxy_pid=$!
        exec 9>"$work/pin"
        until [[ -s "$work/purl" ]]; do sleep 0.1; done
        # Short deadlines cut a stalled part off in seconds; 10 attempts make
        # 20% failures harmless (0.2^10).
        proxy_args=(--endpoint-url "$(head -n1 "$work/purl")" --request-timeout 2s --min-transfer-rate 16MiB --max-attempts 10)
        label_share="$(awk -v s="$share" 'BEGIN { printf "%d", s * 100 }')"
        mount_run "bucketfs-proxy-${label_share}%-parts-fail" "bench-retries-${share/./}" "write 1G via proxy" "big_ok bench-retries-${share/./}" -- cp "$src/big" big
        exec 9>&-
        wait "$proxy_pid" || true
        log "proxy with $share failing: $(cat "$work/pstats")"
    done
fi

if does list; then
    log "storing 10,000 objects for the listing workloads"
    py mb bench-list
    py fill bench-list big/ 10000
fi
lines_ok() { [[ "$(wc -l <"$work/out")" == "$1" ]]; }
changed_ok() { [[ "$(py md5 "$1" big)" == "$(md5sum <"$src/big.changed" | cut -d' ' -f1)" ]]; }
zip_ok() { [[ "$(py size "$1" tree.zip)" == "$(stat -c %s "$work/ref.zip")" ]]; }
db_ok() { [[ "$(py size "$1" "$2")" -gt 100000 ]]; }
sqlite_bulk='import sqlite3; d = sqlite3.connect("bulk.db"); d.execute("create table t (id integer primary key, v text)")
with d: d.executemany("insert into t (v) values (?)", ((f"row {i} " * 8,) for i in range(20000)))
assert d.execute("pragma integrity_check").fetchone()[0] == "ok"'
sqlite_auto='import sqlite3; d = sqlite3.connect("auto.db", isolation_level=None); d.execute("create table t (id integer primary key, v text)")
for i in range(2000): d.execute("insert into t (v) values (?)", (f"row {i} " * 8,))
assert d.execute("pragma integrity_check").fetchone()[0] == "ok"'

sent_nothing() { grep -q "Number of regular files transferred: 0" "$work/out"; }

for tool in bucketfs s3fs rclone; do
    wants "$tool" || continue
    if does list; then
        mount_run "$tool" bench-list "ls -l 10k" "lines_ok 10001" -- ls -l big
        if [[ "$tool" == bucketfs ]]; then
            mount_run bucketfs-listing bench-list "ls -l 10k" "lines_ok 10001" -- ls -l big
        fi
        mount_run "$tool" bench-list "find 10k" "lines_ok 10001" -- find big
    fi
    b="bench-$tool"
    py mb "$b"
    if does write || does read; then
        mount_run "$tool" "$b" "write 1G" "big_ok $b" -- cp "$src/big" big
    fi
    if does read; then
        mount_run "$tool" "$b" "read 1G" true -- sh -c 'cat big >/dev/null'
    fi
    if does cpr; then
        mount_run "$tool" "$b" "cp -r 500x4K" "small_ok $b cpr" -- cp -r "$src/small" cpr
    fi
    if does rsync; then
        mount_run "$tool" "$b" "rsync -a 500x4K" "small_ok $b rs" -- rsync -a "$src/small/" rs/
        # A fresh mount, the same rsync: its quick check must send nothing.
        mount_run "$tool" "$b" "rsync -a again" sent_nothing -- rsync -a --stats "$src/small/" rs/
    fi
    if does zip; then
        mount_run "$tool" "$b" "zip -r 1G tree" "zip_ok $b" -- sh -c "cd '$src' && zip -q -r -0 '$mnt/tree.zip' tree"
    fi
    if does inplace; then
        if ! does write && ! does read; then
            mount_run "$tool" "$b" "write 1G" "big_ok $b" -- cp "$src/big" big
        fi
        mount_run "$tool" "$b" "rsync --inplace 1G, 1M changed" "changed_ok $b" -- rsync -I --inplace --no-whole-file "$src/big.changed" big
    fi
    if does sqlite; then
        mount_run "$tool" "$b" "sqlite 20k rows, 1 transaction" "db_ok $b bulk.db" -- python3 -c "$sqlite_bulk"
        mount_run "$tool" "$b" "sqlite 2k autocommit inserts" "db_ok $b auto.db" -- python3 -c "$sqlite_auto"
    fi
    if [[ "$tool" == bucketfs ]] && does write3g; then
        mount_run "$tool" "$b" "write 3G" "[[ \"\$(py size $b big3)\" == $((3 * big)) ]]" -- cp "$src/big3" big3
    fi
done

# floor_run WORKLOAD ARGS...: the server's floor for WORKLOAD (examples/floor.rs).
floor_run() {
    local workload="$1" secs
    shift
    warm_sources
    if secs="$(target/release/examples/floor "$@" 2>"$work/out")"; then
        record "$workload|server floor|$secs|-|-|0|floor"
    else
        record "$workload|server floor|-|-|-|0|FAILED: $(head -c 100 "$work/out" | tr '\n|' '  ')"
    fi
    log "$workload floor: $(tail -n1 "$results")"
}

if wants floor && { does cpr || does rsync || does list; }; then
    py mb bench-floor
    if does cpr; then floor_run "cp -r 500x4K" bench-floor puts 500; fi
    if does rsync; then floor_run "rsync -a 500x4K" bench-floor rsync 500; fi
    if does list; then floor_run "ls -l 10k" bench-list heads big/ 64; fi
fi

if does inplace; then
    # What rsync --inplace costs between two local files (it reads the whole
    # old file to find what changed): with "read 1G", the target's sum.
    cp "$src/big" "$work/big.local"
    warm_sources
    t0="$(now)"
    rsync -I --inplace --no-whole-file "$src/big.changed" "$work/big.local"
    t1="$(now)"
    record "rsync --inplace 1G, 1M changed|local rsync --inplace|$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')|-|-|0|floor"
    rm -f "$work/big.local"
    # The server's part of the floor: the unchanged bytes copied into the
    # new version by UploadPartCopy (Garage copies the bytes: ~4.4 s/GiB
    # on this VM, where CopyObject takes 0.04 s). The mount's floor is
    # read 1G + local rsync --inplace + this.
    py mb bench-copyfloor
    py put bench-copyfloor big "$src/big" >/dev/null
    record "rsync --inplace 1G, 1M changed|server UploadPartCopy of 1G|$(py copyparts bench-copyfloor big)|-|-|0|floor"
fi

# boto3's read needs its write: either workload runs both.
if wants boto3 && { does write || does read; }; then
    py mb bench-boto3
    warm_sources
    read -r secs cpu rss < <(py put bench-boto3 big "$src/big")
    ok=ok; big_ok bench-boto3 || ok="wrong object"
    record "write 1G|boto3|$secs|$cpu|$((rss / 1024))|0|$ok"
    if does read; then
        warm_sources
        read -r secs cpu rss < <(py get bench-boto3 big)
        record "read 1G|boto3|$secs|$cpu|$((rss / 1024))|0|ok"
    fi
fi

label="$((big / 1024 / 1024)) MiB"
echo
echo "bucketfs $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes'), $(date -u +%Y-%m-%d), $(nproc) cores, one local Garage (${BUCKETFS_GARAGE_DB:-sqlite}); 1G = $label"
echo
echo "| workload | tool | seconds | × fastest | daemon CPU s | peak RSS MiB | local file bytes | S3 check |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'|' '
    { w[NR] = $1; line[NR] = $0; s = $3 + 0
      if ($7 == "ok" && (!($1 in best) || s < best[$1])) best[$1] = s }
    END {
      for (i = 1; i <= NR; i++) {
        split(line[i], f, "|")
        ratio = ((f[7] == "ok" || f[7] == "floor") && best[f[1]] > 0) ? sprintf("%.2f", f[3] / best[f[1]]) : "-"
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], ratio, f[4], f[5], f[6], f[7]
      }
    }' <(sed 's/write 1G|/write 1G|/' "$results" | sort -s -t'|' -k1,1)
