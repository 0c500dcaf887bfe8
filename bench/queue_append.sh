#!/usr/bin/env bash
# Append throughput of the replicated queue (issue 4's benchmark): 1 and 3 voters on loopback,
# 2 KiB and 50 KiB messages, through QueueClient with 32 concurrent appenders. Prints one JSON
# line per run with the group-commit factor (entries per fsync), and the raw fsync rate of the
# same disk measured in the same run as the baseline.
#   bench/queue_append.sh [BUILD_DIR]        (default build/release)
set -euo pipefail
build=${1:-build/release}
backstop=$build/cmd/backstop/backstop
loadgen=$build/bench/backstop-queue-loadgen
work=$(mktemp -d "${BACKSTOP_BENCH_DIR:-${TMPDIR:-/tmp}}/queue-append.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_cluster N: starts N voters; sets $endpoints and $http (first voter's admin address).
start_cluster() {
  local n=$1 peers="" ports=() https=()
  for i in $(seq 1 "$n"); do ports+=("$(free_port)"); https+=("$(free_port)"); done
  for i in $(seq 1 "$n"); do peers+="${peers:+, }\"$i@127.0.0.1:${ports[$((i-1))]}\""; done
  endpoints=""
  for i in $(seq 1 "$n"); do
    local dir=$work/c$n-$i
    mkdir -p "$dir"
    cat > "$dir/config.toml" <<TOML
[node]
id = $i
hostname = "q$i.bench"
data_dir = "$dir/data"
roles = ["queue"]
[queue]
listen = "127.0.0.1:${ports[$((i-1))]}"
peers = [$peers]
[http]
listen = "127.0.0.1:${https[$((i-1))]}"
TOML
    "$backstop" --config "$dir/config.toml" > "$dir/log" 2>&1 &
    pids+=($!)
    endpoints+="${endpoints:+,}127.0.0.1:${ports[$((i-1))]}"
  done
  http=127.0.0.1:${https[0]}
  for _ in $(seq 1 200); do
    curl -sf "http://$http/readyz" > /dev/null && return 0
    sleep 0.1
  done
  echo "cluster of $n did not become ready" >&2
  return 1
}

stop_cluster() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

# Raw fsync rate of this disk: 4 KiB write + fdatasync, 2 s.
python3 - "$work" <<'PY'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096 * 1024)
block = b"x" * 4096
n, start = 0, time.monotonic()
while time.monotonic() - start < 2.0:
    os.pwrite(fd, block, (n % 1024) * 4096)
    os.fdatasync(fd)
    n += 1
os.close(fd)
print('{"baseline":"raw fdatasync","fsyncs_per_second":%.1f}' % (n / (time.monotonic() - start)))
PY

for voters in 1 3; do
  for size in 2048 51200; do
    start_cluster "$voters"
    messages=$(( size > 4096 ? 2000 : 10000 ))
    result=$("$loadgen" --endpoints "$endpoints" --messages "$messages" --size "$size" \
               --concurrency 32)
    status=$(curl -s "http://$http/status")
    python3 - "$voters" "$result" "$status" <<'PY'
import json, sys
voters, result, status = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
q = status["queue"]
result["voters"] = voters
result["entries_per_fsync_first_voter"] = round(q["entries_persisted"] / max(q["synced_writes"], 1), 2)
print(json.dumps(result))
PY
    stop_cluster
  done
done
