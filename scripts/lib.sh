# shellcheck shell=bash
# Shared helpers for scripts/*.sh. Source it; do not run it.

# Cache directory shared by the test scripts (garage binary, python venv).
BUCKETFS_CACHE="${BUCKETFS_CACHE:-$HOME/.cache/bucketfs}"

# shellcheck disable=SC2034 # used by the scripts that source this file
# Repository root (the parent of this scripts/ directory).
BUCKETFS_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# pid_alive PID: true when PID is a running (non-zombie) process.
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # A zombie still answers kill -0; treat it as dead.
    # Field 3 of /proc/PID/stat, after the "(comm)" field that may hold spaces.
    state="$(sed -e 's/^.*) //' -e 's/ .*//' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" ]]
}

# ensure_venv: a python venv with boto3 in $BUCKETFS_CACHE/venv (built only
# when missing or broken); exports BUCKETFS_PYTHON and BUCKETFS_S3REF.
ensure_venv() {
    local venv="$BUCKETFS_CACHE/venv"
    if ! "$venv/bin/python" -c 'import boto3' >/dev/null 2>&1; then
        log "creating python venv with boto3 in $venv"
        rm -rf "$venv"
        mkdir -p "$BUCKETFS_CACHE"
        python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check boto3 ||
            die "pip install boto3 failed"
    fi
    export BUCKETFS_PYTHON="$venv/bin/python"
    export BUCKETFS_S3REF="$BUCKETFS_REPO/tests/s3ref.py"
}

# free_ports COUNT: prints COUNT distinct free TCP ports on 127.0.0.1 (they
# may be taken again before they are used: the servers' start scripts retry
# on a clash).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}
