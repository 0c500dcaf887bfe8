#!/usr/bin/env bash
# Issue 11's scale benchmark: a standalone queue-only node grows to BENCH_SCALE_MESSAGES
# (default 1,000,000) 1 KiB messages across 1,000 domains, and backstop-queue-loadgen prints
# the latency curve every 50,000 messages: Append p50/p99 and a Lease probe's p50/p99 (the
# probe's leases run out; nothing is delivered or deleted). Then a Markdown table of the curve,
# and the node's resident memory and data directory size at the end.
#   bench/queue_scale.sh [BUILD_DIR]        (default build/release)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
build=${1:-build/release}
backstop=$build/cmd/backstop/backstop
loadgen=$build/bench/backstop-queue-loadgen
messages=${BENCH_SCALE_MESSAGES:-1000000}
domains=${BENCH_SCALE_DOMAINS:-1000}
every=${BENCH_SCALE_EVERY:-50000}
work=$(mktemp -d "${BACKSTOP_BENCH_DIR:-${TMPDIR:-/tmp}}/queue-scale.XXXXXX")
pids=()
cleanup() { bench_stop_queue_cluster; rm -rf "$work"; }
trap cleanup EXIT

bench_fsync_rate "$work"
bench_start_queue_cluster 1
"$loadgen" --endpoints "$endpoints" --messages "$messages" --domains "$domains" --size 1024 \
    --concurrency 32 --curve-every "$every" | tee "$work/curve.jsonl"
rss_kib=$(awk '/^VmRSS/ {print $2}' "/proc/${pids[0]}/status")
data_bytes=$(du -sb "$work/c1-1/data" | cut -f1)
python3 - "$work/curve.jsonl" "$rss_kib" "$data_bytes" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(json.dumps({"rss_mib": round(int(sys.argv[2]) / 1024, 1),
                  "data_dir_mib": round(int(sys.argv[3]) / 2**20, 1)}))
print()
print("| appended | append p50 ms | append p99 ms | lease p50 ms | lease p99 ms |")
print("|---------:|--------------:|--------------:|-------------:|-------------:|")
for r in rows:
    if "appended" in r:
        print(f"| {r['appended']:,} | {r['append_p50_ms']:.2f} | {r['append_p99_ms']:.2f} "
              f"| {r['lease_p50_ms']:.2f} | {r['lease_p99_ms']:.2f} |")
PY
