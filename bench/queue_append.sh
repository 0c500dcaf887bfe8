#!/usr/bin/env bash
# Append throughput of the replicated queue (issue 4's benchmark): 1 and 3 voters on loopback,
# 2 KiB and 50 KiB messages, through QueueClient with 32 concurrent appenders. Prints one JSON
# line per run with the group-commit factor (entries per fsync), and the raw fsync rate of the
# same disk measured in the same run as the baseline.
#   bench/queue_append.sh [BUILD_DIR]        (default build/release)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
build=${1:-build/release}
backstop=$build/cmd/backstop/backstop
loadgen=$build/bench/backstop-queue-loadgen
work=$(mktemp -d "${BACKSTOP_BENCH_DIR:-${TMPDIR:-/tmp}}/queue-append.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

bench_fsync_rate "$work"

for voters in 1 3; do
  for size in 2048 51200; do
    bench_start_queue_cluster "$voters"
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
    bench_stop_queue_cluster
  done
done
